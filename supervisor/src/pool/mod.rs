//! The worker pool: slots, their processes and their lifecycle.
//!
//! `Pool` is what everyone else holds. The front listener holds only its dispatch view,
//! [`WorkerSlots`] (an `ArcSwap` snapshot, lock-free, and the slots' atomics), and a read handle
//! on the live configuration (`live_config`); `cli::start` creates the pool once (`Pool::start`,
//! a `OnceLock`), waits for it to be ready, reloads, scales and stops it; the admin socket reads
//! `status()` and restarts workers.
//!
//! Who owns what:
//! - `Pool` owns the live configuration and is its only writer (`reload`, `scale_by`): the
//!   front reads the same `ArcSwap`, so the two never disagree on `pool.workers`.
//! - `Pool` owns the `Registry` (slot handles: slot, command sender, socket, task) and the
//!   monitor task. Dropping the pool closes every command channel, which ends every slot task,
//!   which terminates its processes (tests rely on it; the real pool lives forever).
//! - Each slot task (`task`) owns its processes and is the only writer of its slot's lifecycle.
//! - The spawner thread (`spawn`) forks every worker; it ends with the last slot task.
//! - The monitor (`monitor`) sweeps and publishes gauges and ready counts.
//!
//! Sub-modules: `lifecycle` (the pure state machine and its diagram), `restart` (backoff and
//! budget), `sockets` (binding and port holders), `spawn` (the spawner thread, fork/exec, the
//! `Proc` guard), `task` (the slot task; `task::actions` runs the lifecycle's actions,
//! `task::checks` the heartbeat, startup and recycling checks), `monitor` (sweep, gauges).
//!
//! Heartbeat files: `RUNTIME_DIR/worker-<id>-<generation>.hb`, one per process.
//!
//! In-place upgrade (`crate::upgrade`): `hand_over` ends every slot task with its serving
//! worker released (still running) and returns the slots' state and descriptors;
//! `start_adopting` in the new image takes them over (sockets, worker, counters, provider
//! rows), and `replace_adopted` rolls the adopted workers as `reload` does.

pub mod lifecycle;
pub mod monitor;
pub mod provider_rows;
pub mod restart;
pub mod slot;
pub mod sockets;
pub mod spawn;
pub mod task;
pub mod worker_slots;

pub use slot::{WorkerSlot, WorkerState};
pub use sockets::port_holder;
pub use worker_slots::WorkerSlots;

use crate::fifo::Fifo;
use crate::metrics::SupervisorMetrics;
use crate::shutdown::{self, Shutdown, ShutdownTrigger};
use arc_swap::ArcSwap;
use gateway::Config;
use restart::Reason;
use serde::{Deserialize, Serialize};
use sockets::{BindFailure, SlotSockets};
use std::io;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;
use task::{SlotCmd, SlotTask};
use tokio::sync::{broadcast, mpsc, oneshot, watch, Notify};
use tokio::task::JoinHandle;

/// Capacity of a slot's command channel: ticks are dropped when it is full (see `monitor`),
/// commands from operators are rare.
const SLOT_QUEUE: usize = 32;

/// Lifecycle changes kept for slow `transitions()` receivers.
const TRANSITION_BACKLOG: usize = 256;

/// Everything `Pool::start` needs.
pub struct PoolOptions {
    pub config: Arc<Config>,
    /// The file passed to workers with `--config`.
    pub config_path: PathBuf,
    /// Where heartbeat files go (`worker-<id>-<generation>.hb`).
    pub runtime_dir: PathBuf,
    pub metrics: SupervisorMetrics,
    /// Once triggered, no new worker is started (the caller then calls `stop`).
    pub shutdown: Shutdown,
}

/// Why the pool could not start.
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    #[error("port {port} is already in use{}", holder.as_ref().map(|h| format!(" by {h}")).unwrap_or_default())]
    PortInUse { port: u16, holder: Option<String> },
    #[error("cannot bind 127.0.0.1:{port}: {source}")]
    Bind {
        port: u16,
        #[source]
        source: io::Error,
    },
    #[error("cannot start the spawner thread: {0}")]
    Spawn(#[source] io::Error),
    #[error("runtime directory {}: {source}", path.display())]
    RuntimeDir {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// `providers.shm` (the message names the file).
    #[error("{0}")]
    ProviderTable(#[source] io::Error),
    #[error("the pool must be started inside a tokio runtime")]
    NoRuntime,
    /// `Pool::start` runs once per process; a later call with other options would otherwise
    /// silently get a pool that ignores them.
    #[error("the pool is already running; these options of the later start were not applied: {}", ignored.join(", "))]
    AlreadyStarted { ignored: Vec<&'static str> },
}

impl PoolError {
    /// The process exit code (contract): 4 for an address problem, 1 otherwise.
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::PortInUse { .. } | Self::Bind { .. } => crate::exit::ADDR_IN_USE,
            _ => crate::exit::RUNTIME,
        }
    }
}

impl From<BindFailure> for PoolError {
    fn from(f: BindFailure) -> Self {
        match f {
            BindFailure::InUse { port, holder } => Self::PortInUse { port, holder },
            BindFailure::Other { port, source } => Self::Bind { port, source },
        }
    }
}

/// One worker as `status` / `GET /workers` shows it (contract field names).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerStatus {
    pub id: usize,
    pub pid: Option<u32>,
    pub port: u16,
    pub state: String,
    pub inflight: u32,
    pub served: u64,
    /// Unplanned restarts only; planned replacements are in `replaced`.
    pub restarts: u32,
    /// Planned replacements (reload, recycling, operator restart). Absent from older
    /// supervisors' answers.
    #[serde(default)]
    pub replaced: u32,
    pub rss_bytes: u64,
    pub uptime_ms: Option<u64>,
    pub heartbeat_age_ms: Option<u64>,
}

impl WorkerStatus {
    pub fn of(s: &WorkerSlot) -> Self {
        let pid = s.pid.load(Relaxed);
        let started = s.started_at_ms.load(Relaxed);
        let hb = s.heartbeat_age_ms.load(Relaxed);
        Self {
            id: s.id,
            pid: (pid != 0).then_some(pid),
            port: s.port,
            state: s.state().as_str().into(),
            inflight: s.inflight.load(Relaxed),
            served: s.served.load(Relaxed),
            restarts: s.restarts.load(Relaxed),
            replaced: s.replaced.load(Relaxed),
            rss_bytes: s.rss_bytes.load(Relaxed),
            uptime_ms: (started != 0).then(|| spawn::unix_ms().saturating_sub(started)),
            heartbeat_age_ms: (hb != u64::MAX).then_some(hb),
        }
    }
}

/// State shared by the pool, its slot tasks and its monitor.
pub struct PoolShared {
    /// The current configuration; replaced on reload and scale, by the pool only. The front
    /// listener reads this same `ArcSwap` (`Pool::live_config`).
    pub config: Arc<ArcSwap<Config>>,
    pub config_path: PathBuf,
    pub runtime_dir: PathBuf,
    pub metrics: SupervisorMetrics,
    pub spawner: spawn::Spawner,
    /// The line of requests waiting for room (`Pool::notify_capacity`): a worker became IDLE.
    pub capacity: Arc<Fifo>,
    /// A slot's lifecycle or pid changed; the monitor republishes. `notify_one` keeps a permit,
    /// so a change while the monitor is busy is not lost.
    pub changed: Notify,
    pub shutdown: Shutdown,
    /// Every lifecycle change, for observers (tests, logs); lagging receivers lose the oldest.
    pub transitions: broadcast::Sender<Transition>,
    /// Rows of the pool-wide provider table; `None` if it could not be created.
    pub provider_rows: Option<provider_rows::ProviderRows>,
}

/// One lifecycle change of one slot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transition {
    pub worker: usize,
    pub from: WorkerState,
    pub to: WorkerState,
    /// The event behind it (`lifecycle::Event::as_str`), with the exit status when a process
    /// ended ("exited: signal 9").
    pub reason: String,
    /// The slot's pid after the change (0 when none).
    pub pid: u32,
    pub at: std::time::Instant,
}

/// One slot and the handles that drive it.
struct SlotHandle {
    slot: Arc<WorkerSlot>,
    tx: mpsc::Sender<SlotCmd>,
    /// The slot's sockets (the task holds another reference while it runs).
    sockets: Arc<SlotSockets>,
    /// Taken by `stop` to await the task.
    task: Option<JoinHandle<()>>,
}

/// The slot handles, in id order. A std mutex: held to copy senders or to add and remove slots,
/// never across an await.
#[derive(Default)]
pub struct Registry {
    handles: Mutex<Vec<SlotHandle>>,
    /// Tasks of removed slots, still draining; awaited by `stop`.
    retired: Mutex<Vec<JoinHandle<()>>>,
    /// Sockets of removed slots, by slot id. Kept bound so that scaling back up gets the same
    /// port even while the removed worker still drains on it, and no other program takes it.
    parked: Mutex<std::collections::HashMap<usize, Arc<SlotSockets>>>,
}

impl Registry {
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<SlotHandle>> {
        self.handles.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn senders(&self) -> Vec<(Arc<WorkerSlot>, mpsc::Sender<SlotCmd>)> {
        self.lock()
            .iter()
            .map(|h| (h.slot.clone(), h.tx.clone()))
            .collect()
    }

    pub fn slots(&self) -> Vec<Arc<WorkerSlot>> {
        self.lock().iter().map(|h| h.slot.clone()).collect()
    }
}

/// The worker pool: its processes, their slots and its configuration.
pub struct Pool {
    /// What the dispatcher sees: the slot list and the line waiting for room.
    slots: Arc<WorkerSlots>,
    shared: Arc<PoolShared>,
    registry: Arc<Registry>,
    monitor: Mutex<Option<JoinHandle<()>>>,
    ready: watch::Receiver<(usize, usize)>,
    epoch: watch::Receiver<u64>,
    /// Ends the monitor; dropped with the pool.
    halt: ShutdownTrigger,
    /// Serialises reloads: two concurrent rolls would replace a worker twice. A tokio mutex held
    /// across the awaits of one roll on purpose; nothing on the request path takes it.
    rolling: tokio::sync::Mutex<()>,
    stopped: AtomicBool,
    /// What it was started with, to name what a later `start` would ignore.
    started_with: StartedWith,
}

/// The comparable part of the `PoolOptions` a pool was started with.
struct StartedWith {
    config: Arc<Config>,
    config_path: PathBuf,
    runtime_dir: PathBuf,
}

impl StartedWith {
    /// The options of `opts` that differ from these (metrics and shutdown cannot be compared:
    /// they are handles, and a second caller's are always new ones).
    fn ignored(&self, opts: &PoolOptions) -> Vec<&'static str> {
        let mut out = Vec::new();
        if *self.config != *opts.config {
            out.push("config");
        }
        if self.config_path != opts.config_path {
            out.push("config_path");
        }
        if self.runtime_dir != opts.runtime_dir {
            out.push("runtime_dir");
        }
        out
    }
}

/// The process-wide pool (`start`).
static POOL: OnceLock<Arc<Pool>> = OnceLock::new();
/// Serialises the first `start` calls; `OnceLock::get_or_try_init` is not stable yet.
static STARTING: Mutex<()> = Mutex::new(());

impl Pool {
    /// Binds every worker port, then spawns the workers; the process-wide pool. Any number of
    /// concurrent or later calls with the same options return the same pool and spawn nothing;
    /// a later call with other options gets `AlreadyStarted`, naming them, since they would not
    /// apply. Must run inside a tokio runtime (the slot tasks live there).
    pub fn start(opts: PoolOptions) -> Result<Arc<Pool>, PoolError> {
        Self::start_adopting(opts, None)
    }

    /// `start`, taking over the slots and workers an upgrading image handed over
    /// (`upgrade::HandedPool`): each handed slot keeps its sockets, and its worker is adopted
    /// instead of spawned (one that cannot be is killed and the slot starts fresh).
    pub fn start_adopting(
        opts: PoolOptions,
        handed: Option<crate::upgrade::HandedPool>,
    ) -> Result<Arc<Pool>, PoolError> {
        let existing = |p: &Arc<Pool>| match p.started_with.ignored(&opts) {
            ignored if ignored.is_empty() => Ok(p.clone()),
            ignored => Err(PoolError::AlreadyStarted { ignored }),
        };
        if let Some(p) = POOL.get() {
            return existing(p);
        }
        // Held while binding and creating tasks, all of which is quick and never awaits.
        let _g = STARTING.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(p) = POOL.get() {
            return existing(p);
        }
        let pool = Self::spawn_with(opts, handed)?;
        let _ = POOL.set(pool.clone());
        Ok(pool)
    }

    /// A new, independent pool (what `start` creates once). For in-process tests: each call binds
    /// its own ports and spawns its own workers; dropping the pool ends them.
    pub fn spawn_new(opts: PoolOptions) -> Result<Arc<Pool>, PoolError> {
        Self::spawn_with(opts, None)
    }

    fn spawn_with(
        opts: PoolOptions,
        handed: Option<crate::upgrade::HandedPool>,
    ) -> Result<Arc<Pool>, PoolError> {
        let rt = tokio::runtime::Handle::try_current().map_err(|_| PoolError::NoRuntime)?;
        let n = opts.config.pool.workers as usize;
        let handed = handed.unwrap_or_default();
        let reopen = handed.provider_table;
        let mut handed: std::collections::HashMap<usize, crate::upgrade::HandedSlot> =
            handed.slots.into_iter().map(|s| (s.id, s)).collect();
        // Every port first: a port in use must stop us before any process exists. A handed
        // slot keeps its sockets (its worker listens on them).
        // Ok: the handed sockets; Err: a fresh listener.
        let mut listeners = Vec::with_capacity(n);
        // Handed workers this image will not adopt (killed once a runtime can reap them).
        let mut discard = Vec::new();
        for id in 0..n {
            let adopted = handed.remove(&id).and_then(|h| {
                match SlotSockets::adopted(h.tcp, h.front.clone()) {
                    Ok(s) => Some((s, h)),
                    Err(e) => {
                        // Its worker listens on a socket this image does not have.
                        tracing::warn!(worker = id, "handed socket: {e}; binding anew");
                        discard.extend(h.worker.map(|w| (id, w)));
                        None
                    }
                }
            });
            listeners.push(match adopted {
                Some(s) => Ok(s),
                None => Err(sockets::bind_one(sockets::port_for(
                    opts.config.pool.base_port,
                    id,
                )?)?),
            });
        }
        // Handed slots beyond `pool.workers` (the file changed in between): their sockets are
        // closed, their workers killed.
        for (id, h) in handed.drain() {
            drop(SlotSockets::adopted(h.tcp, h.front));
            discard.extend(h.worker.map(|w| (id, w)));
        }
        for (id, w) in discard {
            tracing::info!(
                worker = id,
                pid = w.pid,
                "upgrade: not adopting this worker; stopping it"
            );
            let pipes = [w.stdout, w.stderr].map(|fd| fd.map(owned_fd));
            // Its guard SIGKILLs and reaps it.
            drop(spawn::Proc::adopt(
                w.pid,
                id,
                w.heartbeat_file,
                pipes,
                Default::default(),
            ));
        }
        std::fs::create_dir_all(&opts.runtime_dir).map_err(|source| PoolError::RuntimeDir {
            path: opts.runtime_dir.clone(),
            source,
        })?;
        // Fatal, not a fallback to per-worker limits: a runtime directory that cannot hold this
        // small file will not hold heartbeats either, and a silently looser limit is worse.
        // After an upgrade, the table the adopted workers have mapped, so limits stay pool-wide.
        let reopened = reopen
            .then(|| {
                provider_rows::ProviderRows::reopen(&opts.runtime_dir)
                    .map_err(|e| tracing::warn!("upgrade: providers.shm: {e}; creating it anew"))
                    .ok()
            })
            .flatten();
        let reopened_table = reopened.is_some();
        let provider_rows = Some(match reopened {
            Some(r) => r,
            None => provider_rows::ProviderRows::create(&opts.runtime_dir)
                .map_err(PoolError::ProviderTable)?,
        });
        let spawner = spawn::Spawner::start(rt).map_err(PoolError::Spawn)?;
        let slots = Arc::new(WorkerSlots::new(Vec::new()));
        let started_with = StartedWith {
            config: opts.config.clone(),
            config_path: opts.config_path.clone(),
            runtime_dir: opts.runtime_dir.clone(),
        };
        let shared = Arc::new(PoolShared {
            config: Arc::new(ArcSwap::new(opts.config)),
            config_path: opts.config_path,
            runtime_dir: opts.runtime_dir,
            metrics: opts.metrics,
            spawner,
            capacity: slots.capacity(),
            changed: Notify::new(),
            shutdown: opts.shutdown,
            transitions: broadcast::channel(TRANSITION_BACKLOG).0,
            provider_rows,
        });
        let registry = Arc::new(Registry::default());
        {
            let mut handles = registry.lock();
            for (id, l) in listeners.into_iter().enumerate() {
                let handle = match l {
                    Ok((sockets, h)) => add_handed_slot(&shared, Arc::new(sockets), h),
                    Err(l) => {
                        let sockets = Arc::new(SlotSockets::new(l, &front_path(&shared, id)));
                        add_slot(&shared, id, sockets)
                    }
                };
                handles.push(handle);
            }
        }
        if let Some(rows) = shared.provider_rows.as_ref().filter(|_| reopened_table) {
            rows.clear_unclaimed();
        }
        let (ready_tx, ready) = watch::channel((0, n));
        let (epoch_tx, epoch) = watch::channel(0u64);
        let (halt, halt_rx) = shutdown::channel();
        let out = monitor::Outputs {
            ready: ready_tx,
            epoch: epoch_tx,
        };
        let monitor = tokio::spawn(monitor::run(shared.clone(), registry.clone(), out, halt_rx));
        slots.store(registry.slots());
        let pool = Pool {
            slots,
            shared,
            registry,
            monitor: Mutex::new(Some(monitor)),
            ready,
            epoch,
            halt,
            rolling: tokio::sync::Mutex::new(()),
            stopped: AtomicBool::new(false),
            started_with,
        };
        Ok(Arc::new(pool))
    }

    /// Lock-free snapshot of the slot list.
    pub fn slots(&self) -> arc_swap::Guard<Arc<Vec<Arc<WorkerSlot>>>> {
        self.slots.load()
    }

    /// The dispatch view, for the front listener.
    pub fn worker_slots(&self) -> Arc<WorkerSlots> {
        self.slots.clone()
    }

    /// The pool-wide provider table (breakers, cool-downs, permits in flight), if it exists.
    pub fn provider_table(&self) -> Option<Arc<gateway::provider_permits::ProviderTable>> {
        self.shared.provider_rows.as_ref().map(|r| r.table())
    }

    /// The live configuration, for readers that must follow every reload and scale (the front
    /// listener). Only the pool stores into it.
    pub fn live_config(&self) -> Arc<ArcSwap<Config>> {
        self.shared.config.clone()
    }

    /// Waits until every slot that is not DEAD is serving (IDLE or busy), or `timeout`; returns
    /// how many are serving.
    pub async fn wait_ready(&self, timeout: Duration) -> usize {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut epoch = self.epoch.clone();
        loop {
            epoch.borrow_and_update();
            let (serving, live) = self.serving();
            if serving == live {
                return serving;
            }
            match tokio::time::timeout_at(deadline, epoch.changed()).await {
                Ok(Ok(())) => {}
                _ => return self.serving().0,
            }
        }
    }

    /// True when every slot is DEAD: nothing will serve until an operator restarts one.
    pub fn all_dead(&self) -> bool {
        self.serving().1 == 0
    }

    /// (serving, not DEAD).
    fn serving(&self) -> (usize, usize) {
        let slots = self.slots();
        let serving = slots
            .iter()
            .filter(|s| s.lifecycle() == WorkerState::Idle)
            .count();
        let live = slots
            .iter()
            .filter(|s| s.lifecycle() != WorkerState::Dead)
            .count();
        (serving, live)
    }

    /// (serving, total slots), updated whenever it changes; for systemd `STATUS=`.
    pub fn ready_counts(&self) -> watch::Receiver<(usize, usize)> {
        self.ready.clone()
    }

    /// The configuration the pool currently runs with.
    pub fn config(&self) -> Arc<Config> {
        self.shared.config.load_full()
    }

    /// Adopts a validated configuration: scales to its `pool.workers`, then replaces the serving
    /// workers one at a time (replacement READY on the same socket, then the old one drains).
    /// A replacement that fails stops the roll; the remaining workers keep their processes, and
    /// the error says which worker failed and why. DEAD slots get a new process with a fresh
    /// budget.
    pub async fn reload(&self, config: Arc<Config>) -> Result<(), String> {
        if self.stopped.load(Relaxed) {
            return Err("the pool is stopping".into());
        }
        let _roll = self.rolling.lock().await;
        let before = self.registry.senders();
        self.shared.config.store(config.clone());
        self.resize(config.pool.workers as usize);
        let keep = config.pool.workers as usize;
        tracing::info!(workers = keep, "reload: rolling workers one at a time");
        let before = before.into_iter().filter(|(s, _)| s.id < keep).collect();
        Self::roll(before, Reason::Reload).await?;
        tracing::info!("reload: done");
        Ok(())
    }

    /// After an in-place upgrade: replaces the adopted workers (the previous binary's) one at
    /// a time with workers of this binary, exactly as a reload rolls them.
    pub async fn replace_adopted(&self) -> Result<(), String> {
        if self.stopped.load(Relaxed) {
            return Err("the pool is stopping".into());
        }
        let _roll = self.rolling.lock().await;
        tracing::info!("upgrade: replacing the adopted workers one at a time");
        Self::roll(self.registry.senders(), Reason::Upgrade).await?;
        tracing::info!("upgrade: every worker runs this binary");
        Ok(())
    }

    /// Replaces the serving process of each slot in turn (replacement READY on the same socket,
    /// then the old one drains); stops at the first that fails, saying which and why.
    async fn roll(
        slots: Vec<(Arc<WorkerSlot>, mpsc::Sender<SlotCmd>)>,
        reason: Reason,
    ) -> Result<(), String> {
        for (slot, tx) in slots {
            let (done, rx) = oneshot::channel();
            if tx
                .send(SlotCmd::Replace {
                    reason,
                    done: Some(done),
                })
                .await
                .is_err()
            {
                continue;
            }
            match rx.await {
                Ok(Ok(())) => tracing::info!(
                    worker = slot.id,
                    reason = reason.as_str(),
                    "worker replaced"
                ),
                Ok(Err(e)) => {
                    return Err(format!(
                        "{e}; the roll stopped, the remaining workers keep their current processes"
                    ));
                }
                Err(_) => {}
            }
        }
        Ok(())
    }

    /// An in-place upgrade's half of the pool: every slot task ends, releasing its serving
    /// worker (which keeps running and serving on its sockets) and terminating the rest within
    /// `grace`. Returns what the next image needs; the descriptors it names stay open as long
    /// as the returned value lives (until the `execve`). The pool serves nothing afterwards.
    pub async fn hand_over(&self, grace: Duration) -> HandedOver {
        self.stopped.store(true, Relaxed);
        let handles: Vec<_> = self
            .registry
            .lock()
            .iter()
            .map(|h| (h.slot.clone(), h.tx.clone(), h.sockets.clone()))
            .collect();
        let mut waits = Vec::new();
        for (slot, tx, sockets) in handles {
            let (done, rx) = oneshot::channel();
            if tx.send(SlotCmd::HandOver { grace, done }).await.is_ok() {
                waits.push((slot, sockets, rx));
            }
        }
        let mut out = HandedOver {
            state: crate::upgrade::HandedPool {
                slots: Vec::new(),
                provider_table: self.shared.provider_rows.is_some(),
                usage: None,
            },
            fds: Vec::new(),
            sockets: Vec::new(),
        };
        for (slot, sockets, rx) in waits {
            let Ok(h) = rx.await else { continue };
            use std::os::fd::AsRawFd;
            let worker = h.worker.map(|w| {
                let [stdout, stderr] = w.pipes;
                let raw = |fd: &Option<std::os::fd::OwnedFd>| fd.as_ref().map(|f| f.as_raw_fd());
                let handed = crate::upgrade::HandedWorker {
                    pid: w.pid,
                    heartbeat_file: w.heartbeat_file,
                    started_at_ms: w.spawned_wall_ms,
                    provider_row: w.provider_row,
                    stdout: raw(&stdout),
                    stderr: raw(&stderr),
                    front_served: slot.front_served.load(Relaxed),
                };
                out.fds.extend(stdout.into_iter().chain(stderr));
                handed
            });
            out.state.slots.push(crate::upgrade::HandedSlot {
                id: slot.id,
                tcp: sockets.tcp.as_raw_fd(),
                front: sockets
                    .front
                    .as_ref()
                    .map(|f| (f.listener.as_raw_fd(), f.path.clone())),
                generation: h.generation,
                restarts: slot.restarts.load(Relaxed),
                replaced: slot.replaced.load(Relaxed),
                served: slot.served.load(Relaxed),
                worker,
            });
            out.sockets.push(sockets);
        }
        self.end_tasks().await;
        out
    }

    /// Manual restart of worker `id` (a rolling replacement when it serves); revives a DEAD
    /// slot with a fresh restart budget.
    pub fn restart_worker(&self, id: usize) -> Result<(), String> {
        if self.stopped.load(Relaxed) {
            return Err("the pool is stopping".into());
        }
        let handles = self.registry.senders();
        let (_, tx) = handles
            .iter()
            .find(|(s, _)| s.id == id)
            .ok_or_else(|| format!("no worker {id}"))?;
        tx.try_send(SlotCmd::Restart)
            .map_err(|e| format!("worker {id} is busy, try again ({e})"))
    }

    /// One worker more or fewer per unit of `delta` (SIGTTIN / SIGTTOU); never below one.
    pub fn scale_by(&self, delta: i32) {
        if self.stopped.load(Relaxed) {
            return;
        }
        let n = self.registry.lock().len() as i64 + i64::from(delta);
        let n = n.clamp(1, i64::from(u16::MAX)) as usize;
        let mut cfg = (*self.shared.config.load_full()).clone();
        cfg.pool.workers = n as u32;
        self.shared.config.store(Arc::new(cfg));
        self.resize(n);
    }

    /// Adds or removes slots at the end until there are `n`. New slots bind their port first
    /// (an error is logged and scaling stops there); removed slots leave the dispatch list at
    /// once and their workers drain within `shutdown_timeout`.
    fn resize(&self, n: usize) {
        let base = self.shared.config.load().pool.base_port;
        let mut handles = self.registry.lock();
        let mut parked = self
            .registry
            .parked
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        while handles.len() < n {
            let id = handles.len();
            let bound = match parked.remove(&id) {
                Some(s) => Ok(s),
                None => sockets::port_for(base, id)
                    .and_then(sockets::bind_one)
                    .map(|l| Arc::new(SlotSockets::new(l, &front_path(&self.shared, id)))),
            };
            match bound {
                Ok(s) => handles.push(add_slot(&self.shared, id, s)),
                Err(e) => {
                    tracing::error!("cannot add worker {id}: {}", PoolError::from(e));
                    break;
                }
            }
        }
        let mut retired = self
            .registry
            .retired
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        while handles.len() > n {
            let h = handles.pop().expect("len > n >= 0");
            tracing::info!(worker = h.slot.id, "removing worker");
            h.slot.draining.store(true, Relaxed);
            // Dropping the sender ends the slot task, which drains its worker gracefully.
            retired.extend(h.task);
            parked.insert(h.slot.id, h.sockets);
        }
        drop((retired, parked));
        let slots: Vec<_> = handles.iter().map(|h| h.slot.clone()).collect();
        drop(handles);
        self.slots.store(slots);
        self.shared.changed.notify_one();
    }

    /// After `stop` or `hand_over` told every slot: waits for the slot tasks (and the retired
    /// ones) to end, then halts and joins the monitor.
    async fn end_tasks(&self) {
        let tasks: Vec<_> = self
            .registry
            .lock()
            .iter_mut()
            .filter_map(|h| h.task.take())
            .collect();
        let retired: Vec<_> = std::mem::take(
            &mut *self
                .registry
                .retired
                .lock()
                .unwrap_or_else(|e| e.into_inner()),
        );
        for t in tasks.into_iter().chain(retired) {
            let _ = t.await;
        }
        self.halt.trigger();
        let monitor = self
            .monitor
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(m) = monitor {
            let _ = m.await;
        }
    }

    /// Stops every worker: no new work, SIGTERM (they finish in-flight requests), SIGKILL what
    /// remains after `grace`, everything reaped, every slot DEAD, heartbeat files removed.
    pub async fn stop(&self, grace: Duration) {
        self.stopped.store(true, Relaxed);
        let senders = self.registry.senders();
        for (s, _) in &senders {
            s.draining.store(true, Relaxed);
        }
        let mut waits = Vec::new();
        for (_, tx) in &senders {
            let (done, rx) = oneshot::channel();
            if tx.send(SlotCmd::Stop { grace, done }).await.is_ok() {
                waits.push(rx);
            }
        }
        for rx in waits {
            let _ = rx.await;
        }
        self.end_tasks().await;
    }

    /// Runs `exec` (an upgrade's `execve`) on the thread every worker was forked from, so that
    /// they survive it (`spawn::Spawner::exec`). Returns only when it failed, with why.
    pub async fn exec(&self, exec: Box<dyn FnOnce() -> String + Send>) -> String {
        self.shared.spawner.exec(exec).await
    }

    /// Subscribes to every lifecycle change from now on.
    pub fn transitions(&self) -> broadcast::Receiver<Transition> {
        self.shared.transitions.subscribe()
    }

    /// Every slot as `status` shows it.
    pub fn status(&self) -> Vec<WorkerStatus> {
        self.slots().iter().map(|s| WorkerStatus::of(s)).collect()
    }
}

/// The pool as `Pool::hand_over` left it: the state for the next image, and what keeps the
/// descriptors it names open.
pub struct HandedOver {
    pub state: crate::upgrade::HandedPool,
    fds: Vec<std::os::fd::OwnedFd>,
    sockets: Vec<Arc<SlotSockets>>,
}

impl HandedOver {
    /// Adds the usage receiver's sockets to what is handed over.
    pub fn keep_usage(&mut self, usage: Option<crate::usage::UsageFds>) {
        use std::os::fd::AsRawFd;
        if let Some(u) = usage {
            self.state.usage = Some(crate::upgrade::HandedUsage {
                listener: u.listener.as_raw_fd(),
                conns: u.conns.iter().map(|c| c.as_raw_fd()).collect(),
            });
            self.fds.push(u.listener);
            self.fds.extend(u.conns);
        }
    }

    /// Kills the released workers: the hand-over cannot go on (the state file could not be
    /// written), and the next image will start fresh ones.
    pub fn abandon(self) {
        for pid in self.state.pids() {
            let _ = nix::sys::signal::killpg(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        drop((self.fds, self.sockets));
    }
}

/// Where slot `id`'s front socket goes.
fn front_path(shared: &PoolShared, id: usize) -> PathBuf {
    shared.runtime_dir.join(format!("worker-{id}.sock"))
}

/// Creates slot `id` on `sockets` and starts its task.
fn add_slot(shared: &Arc<PoolShared>, id: usize, sockets: Arc<SlotSockets>) -> SlotHandle {
    add_slot_with(shared, WorkerSlot::new(id, sockets.port()), sockets, None)
}

/// Creates a slot an upgrading image handed over, on its sockets, with its counters; its
/// worker is adopted by the task.
fn add_handed_slot(
    shared: &Arc<PoolShared>,
    sockets: Arc<SlotSockets>,
    h: crate::upgrade::HandedSlot,
) -> SlotHandle {
    let slot = WorkerSlot::new(h.id, sockets.port());
    slot.restarts.store(h.restarts, Relaxed);
    slot.replaced.store(h.replaced, Relaxed);
    slot.served.store(h.served, Relaxed);
    let adopt = h.worker.map(|w| task::Adopt {
        pid: w.pid,
        heartbeat_file: w.heartbeat_file,
        started_at_ms: w.started_at_ms,
        pipes: [w.stdout, w.stderr].map(|fd| fd.map(owned_fd)),
        provider_row: w
            .provider_row
            .and_then(|r| shared.provider_rows.as_ref().and_then(|t| t.claim(r))),
        front_served: w.front_served,
        generation: h.generation,
    });
    add_slot_with(shared, slot, sockets, adopt)
}

/// Takes ownership of a descriptor named by an upgrade's state file.
pub fn owned_fd(fd: std::os::fd::RawFd) -> std::os::fd::OwnedFd {
    use std::os::fd::FromRawFd;
    // SAFETY: the state file names it as kept open for this image, and each is taken once.
    unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) }
}

fn add_slot_with(
    shared: &Arc<PoolShared>,
    mut slot: WorkerSlot,
    sockets: Arc<SlotSockets>,
    adopt: Option<task::Adopt>,
) -> SlotHandle {
    slot.front_socket = sockets.front.as_ref().map(|f| f.path.clone());
    let slot = Arc::new(slot);
    let (tx, rx) = mpsc::channel(SLOT_QUEUE);
    let task = tokio::spawn(
        SlotTask::new(slot.clone(), shared.clone(), sockets.clone(), rx)
            .adopting(adopt)
            .run(),
    );
    SlotHandle {
        slot,
        tx,
        sockets,
        task: Some(task),
    }
}

#[cfg(test)]
pub(crate) mod tests;
