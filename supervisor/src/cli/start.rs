//! `supervisor start`: the product. Loads the configuration, takes the runtime-directory lock,
//! binds the front port and the worker ports, starts the pool once, serves, prints the ready
//! line, and then runs the main loop: signals, admin commands, systemd watchdog, parent watch.
//!
//! Order matters for "nothing is lost": signal handlers are installed before anything starts, so
//! an early SIGTERM still stops cleanly; the front stops accepting first, drains, and only then
//! are the workers stopped; the `stopped` line is the last thing on stdout. A start that fails
//! before ready prints one `failed` line instead, whatever step failed, and exits with its code.
//!
//! Ephemeral instances (contract "Ephemeral instances"): a front port of 0 with neither a base
//! port nor a runtime directory given explicitly gets free worker ports and a fresh private
//! runtime directory, so any number of sidecars run beside each other and a default instance.

use super::StartArgs;
use crate::control::{self, ControlCommand, ReloadError};
use crate::front::{self, FrontContext};
use crate::instance::{Instance, InstanceError};
use crate::integrate::{sidecar, systemd::Systemd, watch};
use crate::metrics::SupervisorMetrics;
use crate::pool::{Pool, PoolOptions};
use crate::shutdown;
use crate::{admin, exit, runtime_dir};
use gateway::config::{self, Config, ConfigSource};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::mpsc;
use tracing::{error, info, warn};

/// A failure that ends `start` with a specific exit code.
#[derive(Debug)]
struct Fatal {
    code: u8,
    message: String,
    /// Each configuration problem behind `message`, located; already logged one per line.
    problems: Vec<String>,
}

impl Fatal {
    fn new(code: u8, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            problems: Vec::new(),
        }
    }
}

pub fn run(args: StartArgs) -> u8 {
    crate::logging::init(args.log_format);
    // Taken before any thread exists: listenfd unsets LISTEN_* from our environment, and the
    // handoff of an upgrade is removed from it, which is only sound while single-threaded.
    let handoff = match crate::upgrade::take_handoff().transpose() {
        Ok(h) => h,
        Err(e) => return failed(Fatal::new(exit::RUNTIME, e)),
    };
    let activated = if handoff.is_some() {
        None
    } else {
        take_activated_listener()
    };
    // Before anything can replace the binary on disk: workers are spawned from this image.
    if let Err(e) = crate::pool::spawn::pin_self_exe() {
        error!("{e}; the built-in worker cannot be spawned");
    }
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("supervisor")
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            return failed(Fatal::new(
                exit::RUNTIME,
                format!("cannot start the runtime: {e}"),
            ))
        }
    };
    match rt.block_on(serve(args, activated, handoff)) {
        Ok(()) => exit::OK,
        Err(f) => failed(f),
    }
}

/// Logs the failure, prints the `failed` line (a host reading our stdout always gets a line),
/// and returns the exit code.
fn failed(f: Fatal) -> u8 {
    error!("{}", f.message);
    let line = serde_json::json!({"event": "failed", "code": f.code, "error": f.message});
    println!("{line}");
    f.code
}

fn take_activated_listener() -> Option<std::io::Result<std::net::TcpListener>> {
    let mut fds = listenfd::ListenFd::from_env();
    if fds.len() == 0 {
        return None;
    }
    fds.take_tcp_listener(0).transpose()
}

/// A loaded configuration with the command line applied.
struct Effective {
    config: Config,
    /// The file's text, for the workers' snapshot.
    text: String,
    /// Free worker ports and a fresh runtime directory (see the module docs).
    ephemeral: bool,
}

/// Loads the file and applies the command-line overrides (flags override the file).
fn load_config(source: &ConfigSource, args: &StartArgs) -> Result<Effective, Fatal> {
    // The message (also the `failed` line's `error`) carries the first problem, so a host app
    // that reads only stdout learns what to fix; every problem is logged.
    let invalid = |message: String, problems: Vec<String>| {
        for p in &problems {
            error!("{p}");
        }
        let message = match problems.first() {
            Some(first) => format!("{message}: {first}"),
            None => message,
        };
        Fatal {
            code: exit::CONFIG,
            message,
            problems,
        }
    };
    let loaded = config::load(source).map_err(|errs| {
        invalid(
            format!("invalid configuration ({} problem(s))", errs.0.len()),
            errs.0.iter().map(ToString::to_string).collect(),
        )
    })?;
    let mut cfg = loaded.config;
    apply_overrides(&mut cfg, args);
    let ephemeral = is_ephemeral(&cfg, source, &loaded.text, args);
    if ephemeral {
        cfg.pool.base_port = 0;
    }
    let violations = config::validate(&cfg);
    if !violations.is_empty() {
        return Err(invalid(
            "invalid configuration after command-line overrides".into(),
            violations
                .iter()
                .map(|v| format!("{}: {} (after command-line overrides)", v.key, v.message))
                .collect(),
        ));
    }
    Ok(Effective {
        config: cfg,
        text: loaded.text,
        ephemeral,
    })
}

/// Port 0 in front, and neither a base port nor a runtime directory asked for: by flag, or by
/// the key written in a config file (the built-in default's values are not a choice).
fn is_ephemeral(cfg: &Config, source: &ConfigSource, text: &str, args: &StartArgs) -> bool {
    let in_file = |key| source.path().is_some() && config::sets_key(text, "pool", key);
    cfg.server.listen.port() == 0
        && args.base_port.is_none()
        && !in_file("base_port")
        && args.runtime_dir.is_none()
        && cfg.pool.runtime_dir.is_empty()
}

fn apply_overrides(cfg: &mut Config, args: &StartArgs) {
    if let Some(l) = args.listen {
        cfg.server.listen = l;
    }
    if let Some(w) = args.workers {
        cfg.pool.workers = w;
    }
    if let Some(p) = args.base_port {
        cfg.pool.base_port = p;
    }
    if let Some(d) = &args.runtime_dir {
        cfg.pool.runtime_dir = d.clone();
    }
}

/// The token must be present, not just configured, before we listen beyond loopback.
fn check_exposure(cfg: &Config) -> Result<(), Fatal> {
    if cfg.server.listen.ip().is_loopback() {
        return Ok(());
    }
    let var = &cfg.server.auth_token_env;
    if std::env::var(var).is_ok_and(|t| !t.is_empty()) {
        return Ok(());
    }
    Err(Fatal::new(
        exit::CONFIG,
        format!(
            "refusing to listen on non-loopback {} without an auth token: set ${var}",
            cfg.server.listen
        ),
    ))
}

/// Writes the validated text workers will read, atomically.
fn write_snapshot(dir: &Path, text: &str) -> Result<PathBuf, Fatal> {
    let path = dir.join("gateway.toml");
    let tmp = dir.join("gateway.toml.tmp");
    gateway::runtime_file::replace(&path, &tmp, text.as_bytes()).map_err(|e| {
        Fatal::new(
            exit::RUNTIME,
            format!("cannot write {}: {e}", path.display()),
        )
    })?;
    Ok(path)
}

fn bind_front(
    addr: SocketAddr,
    activated: Option<std::io::Result<std::net::TcpListener>>,
) -> Result<tokio::net::TcpListener, Fatal> {
    let std_listener = match activated {
        Some(Ok(l)) => {
            info!("using the inherited front listener (socket activation, or an upgrade's)");
            l
        }
        Some(Err(e)) => {
            return Err(Fatal::new(
                exit::RUNTIME,
                format!("LISTEN_FDS socket unusable: {e}"),
            ))
        }
        None => gateway::net::listen(addr).map_err(|e| {
            let holder = crate::pool::port_holder(addr.port())
                .map(|h| format!(", held by {h}"))
                .unwrap_or_default();
            // Exit 4 covers "in use" and "cannot be bound" alike (contract).
            Fatal::new(
                exit::ADDR_IN_USE,
                format!("cannot bind the front listener on {addr}: {e}{holder}"),
            )
        })?,
    };
    std_listener
        .set_nonblocking(true)
        .and_then(|_| tokio::net::TcpListener::from_std(std_listener))
        .map_err(|e| Fatal::new(exit::RUNTIME, format!("front listener: {e}")))
}

/// Everything the main loop needs.
struct Running {
    source: ConfigSource,
    args: StartArgs,
    /// Owns the running configuration (`Pool::config`); reloads go through it.
    pool: Arc<Pool>,
    /// The configuration every worker was last rolled to completely (with the command-line
    /// overrides applied). A reload equal to it changes nothing. None after a failed roll:
    /// the pool then runs a mix, and the next reload rolls whatever the file says.
    rolled: Option<Arc<Config>>,
    instance: Instance,
    systemd: Systemd,
}

async fn serve(
    args: StartArgs,
    activated: Option<std::io::Result<std::net::TcpListener>>,
    handoff: Option<crate::upgrade::Handoff>,
) -> Result<(), Fatal> {
    let mut signals = Signals::install()?;
    let upgraded = handoff.is_some();
    let (prep, listeners) = prepare(args, activated, handoff)?;
    if let Err(e) = gateway::telemetry::install(&prep.cfg.telemetry, "front") {
        tracing::warn!("{e}; traces are off");
    }
    let (trigger, shutdown) = shutdown::channel();
    let mut prep = prep;
    let handed = prep.handed.take();
    let adopting = handed.as_ref().is_some_and(|h| !h.pids().is_empty());
    let started = launch(&prep, listeners, handed, shutdown)?;
    let Prepared {
        source,
        args,
        cfg,
        instance,
        listen,
        admin_path,
        control_rx,
        parent,
        ..
    } = prep;
    let systemd = Systemd::from_env();
    let mut run = Running {
        source,
        args,
        pool: started.pool.clone(),
        rolled: Some(cfg),
        instance,
        systemd,
    };
    let startup = run.wait_first_ready(&mut signals).await;
    let mut events = None;
    let mut upgrade = None;
    if let Startup::Ready(n) = startup {
        // After an in-place upgrade the host already has its ready line: it gets no second
        // one, and with --events the first line of this image is the upgrade's outcome.
        let line = if upgraded {
            serde_json::json!({
                "event": "upgrade", "ok": true, "version": crate::upgrade::version(),
                "pid": std::process::id(), "generation": crate::upgrade::generation(),
            })
        } else {
            serde_json::json!({
                "event": "ready", "listen": listen.to_string(), "pid": std::process::id(),
                "workers": n, "admin_socket": admin_path.display().to_string(),
            })
        };
        if run.args.events {
            events = crate::events::start(&line)
                .map(|writer| (writer, WorkerEvents::spawn(run.pool.transitions())));
        } else if !upgraded {
            println!("{line}");
        }
        systemd.ready(&format!("{n}/{} workers ready", run.pool.status().len()));
        info!(%listen, upgraded, "ready");
        if adopting {
            // The adopted workers run the previous binary: rolled to this one as a reload
            // rolls them (a failure leaves the rest serving on the previous binary).
            if let Err(e) = run.pool.replace_adopted().await {
                error!("upgrade: {e}");
            }
        }
        upgrade = run.main_loop(&mut signals, control_rx, parent).await;
    }
    if let Some((exe, adopts)) = upgrade {
        // RELOADING=1 now, READY=1 from the new image once it adopted the workers.
        systemd.reloading();
        let (kept, handed) = started.hand_over(trigger, adopts).await;
        if let Some((writer, workers)) = events.take() {
            workers.stop().await;
            let _ = tokio::task::spawn_blocking(move || writer.flush()).await;
        }
        return Err(reexec(&exe, kept, handed, &run.pool, &run.instance).await);
    }
    systemd.stopping();
    started.stop(trigger).await;
    drop(run.instance);
    if startup == Startup::AllDead {
        return Err(Fatal::new(
            exit::RUNTIME,
            "every worker slot is DEAD (restart budget spent) before any served; see the errors above",
        ));
    }
    let stopped = serde_json::json!({"event": "stopped", "code": exit::OK});
    match events {
        Some((writer, workers)) => {
            workers.stop().await;
            // The writer thread may block on a reader that does not read: off the runtime.
            let _ = tokio::task::spawn_blocking(move || writer.finish(stopped)).await;
        }
        None => println!("{stopped}"),
    }
    Ok(())
}

/// Writes the pool's state file, then executes `exe` with the kept listeners, the lock and
/// the pool's descriptors (`upgrade::exec`), on the thread the workers were forked from so they
/// survive it; if that fails, this process's own pinned image, so the old version comes back
/// rather than nothing. Returns only when both failed, with the failure `start` then ends with.
/// A state file that cannot be written costs the workers (killed; the next image starts
/// fresh ones), not the upgrade.
async fn reexec(
    exe: &Path,
    kept: Kept,
    handed: Option<crate::pool::HandedOver>,
    pool: &Pool,
    instance: &Instance,
) -> Fatal {
    use std::os::fd::AsRawFd;
    let (handed, extra) = match handed {
        Some(handed) => {
            let dir = instance.dir().to_path_buf();
            let state = handed.state.clone();
            let written = tokio::task::spawn_blocking(move || state.write(&dir))
                .await
                .unwrap_or_else(|e| Err(e.to_string()));
            match written {
                Ok(()) => {
                    let fds = handed.state.fds();
                    (Some(handed), fds)
                }
                Err(e) => {
                    error!("upgrade: {e}; stopping the workers, the new image starts its own");
                    handed.abandon();
                    (None, Vec::new())
                }
            }
        }
        None => (None, Vec::new()),
    };
    let Some(lock) = instance.lock_fd() else {
        return Fatal::new(
            exit::RUNTIME,
            "upgrade: the runtime-directory lock is not held",
        );
    };
    let handoff = crate::upgrade::Handoff {
        front: kept.front.as_raw_fd(),
        admin: kept.admin.as_raw_fd(),
        lock,
        dir: instance.dir().to_path_buf(),
        created: instance.created(),
        generation: crate::upgrade::generation() + 1,
    };
    info!(exe = %exe.display(), workers = handed.as_ref().map_or(0, |h| h.state.pids().len()), "re-executing in place");
    let run = |exe: PathBuf| {
        let (handoff, extra) = (handoff.clone(), extra.clone());
        Box::new(move || crate::upgrade::exec(&exe, &handoff, &extra)) as Box<_>
    };
    let why = pool.exec(run(exe.to_path_buf())).await;
    error!("upgrade: {why}; executing this binary's own image again");
    let again = match crate::pool::spawn::self_exe_image() {
        Ok(image) => pool.exec(run(image)).await,
        Err(e) => e.to_string(),
    };
    // Kept open until here: the exec needed them.
    drop((kept, handed));
    Fatal::new(
        exit::RUNTIME,
        format!("upgrade: {why}; and re-executing the old image failed too: {again}"),
    )
}

/// Forwards the pool's lifecycle transitions as `worker` events (`--events`); a transition
/// the broadcast lost to lag counts as dropped.
struct WorkerEvents {
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

impl WorkerEvents {
    fn spawn(mut rx: tokio::sync::broadcast::Receiver<crate::pool::Transition>) -> Self {
        use tokio::sync::broadcast::error::{RecvError, TryRecvError};
        let (stop, mut stopped) = tokio::sync::oneshot::channel();
        let task = tokio::spawn(async move {
            loop {
                tokio::select! {
                    r = rx.recv() => match r {
                        Ok(t) => worker_event(&t),
                        Err(RecvError::Lagged(n)) => crate::events::lost(n),
                        Err(RecvError::Closed) => return,
                    },
                    _ = &mut stopped => break,
                }
            }
            // The pool has stopped: what it sent last (the DEAD transitions) is still queued.
            loop {
                match rx.try_recv() {
                    Ok(t) => worker_event(&t),
                    Err(TryRecvError::Lagged(n)) => crate::events::lost(n),
                    Err(_) => return,
                }
            }
        });
        Self { stop, task }
    }

    async fn stop(self) {
        let _ = self.stop.send(());
        let _ = self.task.await;
    }
}

fn worker_event(t: &crate::pool::Transition) {
    crate::events::emit(serde_json::json!({
        "event": "worker", "id": t.worker, "pid": t.pid,
        "from": t.from.as_str(), "to": t.to.as_str(), "reason": t.reason,
    }));
}

/// Everything `start` acquires before the pool starts. All of it can fail, and all of it comes
/// first: after the pool starts, a failure would have to stop workers that may still write
/// heartbeats into the directory being cleaned.
struct Prepared {
    source: ConfigSource,
    args: StartArgs,
    cfg: Arc<Config>,
    /// The runtime-directory lock, held until the end.
    instance: Instance,
    /// The front address actually bound.
    listen: SocketAddr,
    /// The configuration snapshot workers read (`--config`).
    snapshot: PathBuf,
    admin_path: PathBuf,
    control_tx: mpsc::Sender<ControlCommand>,
    control_rx: mpsc::Receiver<ControlCommand>,
    /// `--exit-with-parent`: the parent's pid.
    parent: Option<u32>,
    /// After an in-place upgrade: the slots and workers the previous image handed over.
    handed: Option<crate::upgrade::HandedPool>,
}

/// The bound sockets, which move into the tasks serving them.
struct Listeners {
    front: tokio::net::TcpListener,
    admin: tokio::net::UnixListener,
}

/// Loads the configuration, takes the runtime directory, binds the front and admin sockets and
/// writes the workers' snapshot.
fn prepare(
    args: StartArgs,
    activated: Option<std::io::Result<std::net::TcpListener>>,
    handoff: Option<crate::upgrade::Handoff>,
) -> Result<(Prepared, Listeners), Fatal> {
    let source = config::resolve_source(args.config.config.as_deref());
    let Effective {
        config: cfg,
        text,
        ephemeral,
    } = load_config(&source, &args)?;
    check_exposure(&cfg)?;
    warn_missing_keys(&cfg, None);
    let instance = match &handoff {
        Some(h) => Instance::adopt(&h.dir, h.lock, h.created)
            .map_err(|e| Fatal::new(exit::RUNTIME, format!("upgrade: {e}")))?,
        None => acquire_runtime_dir(&cfg, ephemeral)?,
    };
    let dir = instance.dir().to_path_buf();
    // Before anything is spawned: every child of ours now is a worker of the previous image,
    // and one that is not adopted must not be left running.
    let handed = handoff.as_ref().and_then(|_| {
        let handed = crate::upgrade::HandedPool::take(&dir)
            .map_err(|e| error!("upgrade: {e}; starting every worker fresh"))
            .ok()
            .flatten();
        crate::upgrade::kill_strays(&handed.as_ref().map(|h| h.pids()).unwrap_or_default());
        handed
    });
    let listener = match &handoff {
        Some(h) => bind_front(cfg.server.listen, Some(adopt_fd(h.front)))?,
        None => bind_front(cfg.server.listen, activated)?,
    };
    let listen = listener
        .local_addr()
        .map_err(|e| Fatal::new(exit::RUNTIME, e.to_string()))?;
    let snapshot = write_snapshot(&dir, &text)?;
    let (control_tx, control_rx) = control::channel();
    let admin_path = runtime_dir::admin_socket(&dir);
    // Bound here, not inside the task, so a failure is reported instead of lost.
    let admin_listener = match &handoff {
        Some(h) => adopt_fd(h.admin).and_then(|l: std::os::unix::net::UnixListener| {
            l.set_nonblocking(true)?;
            tokio::net::UnixListener::from_std(l)
        }),
        None => admin::bind(&admin_path),
    }
    .map_err(|e| {
        Fatal::new(
            exit::RUNTIME,
            format!("admin socket {}: {e}", admin_path.display()),
        )
    })?;
    let parent = if args.exit_with_parent {
        Some(
            sidecar::arm(control_tx.clone())
                .map_err(|e| Fatal::new(exit::RUNTIME, format!("--exit-with-parent: {e}")))?,
        )
    } else {
        None
    };
    let prepared = Prepared {
        source,
        args,
        cfg: Arc::new(cfg),
        instance,
        listen,
        snapshot,
        admin_path,
        control_tx,
        control_rx,
        parent,
        handed,
    };
    let listeners = Listeners {
        front: listener,
        admin: admin_listener,
    };
    Ok((prepared, listeners))
}

/// Takes over a listener the previous image handed over, close-on-exec again.
fn adopt_fd<T: std::os::fd::FromRawFd>(fd: std::os::fd::RawFd) -> std::io::Result<T> {
    crate::upgrade::reclaim(fd).map_err(std::io::Error::other)?;
    // SAFETY: the handoff names this fd as a listener the previous image kept open for us;
    // nothing else in this image owns it.
    Ok(unsafe { T::from_raw_fd(fd) })
}

/// Duplicates of the listening sockets: while the tasks serving them stop and drop theirs,
/// these keep the sockets listening (new connections wait in the backlog) for an upgrade.
struct Kept {
    front: std::os::fd::OwnedFd,
    admin: std::os::fd::OwnedFd,
}

/// What runs once `launch` returned, and is stopped in order by `Started::stop`.
struct Started {
    pool: Arc<Pool>,
    front: tokio::task::JoinHandle<()>,
    admin: tokio::task::JoinHandle<()>,
    /// The usage receiver and ledger writer; stopped after the workers, so their last records
    /// land.
    usage: crate::usage::Usage,
    /// Ends when dropped (with `Started`).
    _watch: Option<watch::ConfigWatch>,
    /// `[shared]`'s renewals, settlements and circuit probe; end when dropped.
    _backend: Option<gateway::shared::SharedTask>,
    /// `[shared]`: breaker openings to and from the other hosts; ends when dropped.
    _breakers: Option<gateway::shared::breakers::BreakerTask>,
    /// Taken by `hand_over`.
    kept: Option<Kept>,
}

/// Starts the pool (once per process), then the front listener, the admin socket and the file
/// watch over it; all of them stop on `shutdown`.
fn launch(
    prep: &Prepared,
    listeners: Listeners,
    handed: Option<crate::upgrade::HandedPool>,
    shutdown: shutdown::Shutdown,
) -> Result<Started, Fatal> {
    // Client limit counters: settled by the usage receiver, checked by the front, seeded from
    // the ledger by the ledger thread before it writes anything.
    let limits = front::limits::Book::new(&prep.cfg);
    let (metrics, mut registry) = SupervisorMetrics::new();
    // `[shared]` before any worker: a missing URL variable fails `start`, naming it. The front
    // holds the handle (client leases, the up gauge); `Started` owns its background task.
    let backend = gateway::shared::Shared::start(&prep.cfg.shared)
        .map_err(|e| Fatal::new(exit::CONFIG, format!("[shared]: {e}")))?;
    if backend.is_some() {
        metrics.register_shared(&mut registry);
    }
    let (backend, backend_task) = backend.unzip();
    if let Some(b) = &backend {
        // Budget contributions are this host's: the same name after a restart, another on
        // every host (or instance) with its own ledger.
        b.set_host_id(host_id(prep.instance.dir()));
        // Before the ledger thread seeds the book, so the seed reaches Redis too.
        limits.share(b.clone());
    }
    // The ledger opens (or fails `start`, naming its path) before any worker can send to it.
    let mut handed = handed;
    let handed_usage =
        handed
            .as_mut()
            .and_then(|h| h.usage.take())
            .map(|u| crate::usage::UsageFds {
                listener: crate::pool::owned_fd(u.listener),
                conns: u.conns.into_iter().map(crate::pool::owned_fd).collect(),
            });
    let usage = crate::usage::start_adopting(
        &prep.cfg,
        prep.instance.dir(),
        &metrics,
        &limits,
        handed_usage,
    )
    .map_err(|e| Fatal::new(exit::RUNTIME, e))?;
    let pool = Pool::start_adopting(
        PoolOptions {
            config: prep.cfg.clone(),
            config_path: prep.snapshot.clone(),
            runtime_dir: prep.instance.dir().to_path_buf(),
            metrics: metrics.clone(),
            shutdown: shutdown.clone(),
        },
        handed,
    )
    .map_err(|e| Fatal::new(e.exit_code(), e.to_string()))?;
    let breakers = backend
        .as_ref()
        .zip(pool.provider_table())
        .map(|(b, table)| {
            let live = pool.live_config();
            let view = move || {
                let cfg = live.load();
                gateway::shared::breakers::BreakerView {
                    providers: cfg.providers.iter().map(|p| p.name.clone()).collect(),
                    open_timeout: cfg.circuit_breaker.open_timeout,
                }
            };
            let event = |name: &str, from: u8| {
                let from = match from {
                    gateway::provider_health::HALF_OPEN => "half_open",
                    _ => "closed",
                };
                crate::events::emit(serde_json::json!({
                    "event": "provider", "name": name, "from": from, "to": "open",
                    "reason": "opened on another host",
                }));
            };
            b.sync_breakers(table, view, Box::new(event))
        });
    let dashboard = crate::dashboard::Dashboard::new(pool.worker_slots());
    let access = usage.access();
    dashboard.bind_sources(pool.provider_table(), access.recent());
    let mut ctx = front_context(&pool, metrics, registry, limits, dashboard.clone(), access);
    ctx.backend = backend;
    let dup = |fd: std::os::fd::BorrowedFd<'_>, what: &str| {
        fd.try_clone_to_owned()
            .map_err(|e| Fatal::new(exit::RUNTIME, format!("{what} listener: {e}")))
    };
    use std::os::fd::AsFd;
    let kept = Kept {
        front: dup(listeners.front.as_fd(), "front")?,
        admin: dup(listeners.admin.as_fd(), "admin")?,
    };
    let front = tokio::spawn(front::serve(listeners.front, ctx, shutdown.clone()));
    let admin = tokio::spawn(admin::serve_on(
        listeners.admin,
        pool.clone(),
        prep.listen,
        prep.control_tx.clone(),
        dashboard,
        shutdown.clone(),
    ));
    // Saving the file applies it as SIGHUP would; the built-in config has no file to watch.
    let watch = prep.source.path().and_then(|path| {
        watch::spawn(path, prep.control_tx.clone(), shutdown)
            .map_err(|e| warn!("not watching {} for changes: {e}", path.display()))
            .ok()
    });
    Ok(Started {
        pool,
        front,
        admin,
        usage,
        _watch: watch,
        _backend: backend_task,
        _breakers: breakers,
        kept: Some(kept),
    })
}

impl Started {
    /// The front first (it stops accepting and drains up to `shutdown_timeout`), then the
    /// workers, so an in-flight request is never cut by its worker going away.
    /// The admin socket last, after it finished its open answers (`admin::serve_on`).
    /// The listening sockets close with the tasks, so a client is refused at once rather than
    /// left waiting for a process that is going away.
    async fn stop(self, trigger: shutdown::ShutdownTrigger) {
        let (pool, usage, admin) = self.drain_front(trigger).await;
        // The front's requests (and spans) have ended: their spans go out while the workers
        // stop (each flushes its own).
        let ((), ()) = tokio::join!(
            gateway::telemetry::flush(gateway::telemetry::FLUSH_AT_STOP),
            pool.stop(Duration::from_secs(2))
        );
        usage.stop().await;
        end_admin(admin).await;
    }

    /// An in-place upgrade: as `stop`, but the workers and the usage sockets are handed over
    /// (the workers keep running and sending usage) and the listening sockets stay open (new
    /// connections wait in the backlog); all of it is returned, for the next image.
    /// `adopts`: the new binary takes over running workers; one that does not (an older
    /// version) gets them stopped, as `stop` does, and no state.
    async fn hand_over(
        mut self,
        trigger: shutdown::ShutdownTrigger,
        adopts: bool,
    ) -> (Kept, Option<crate::pool::HandedOver>) {
        let kept = self.kept.take().expect("taken once");
        let (pool, usage, admin) = self.drain_front(trigger).await;
        // The front's spans still queued would die with this image.
        gateway::telemetry::flush(gateway::telemetry::FLUSH_AT_STOP).await;
        let handed = if adopts {
            let mut handed = pool.hand_over(Duration::from_secs(2)).await;
            handed.keep_usage(usage.hand_over().await);
            Some(handed)
        } else {
            pool.stop(Duration::from_secs(2)).await;
            usage.stop().await;
            None
        };
        end_admin(admin).await;
        (kept, handed)
    }

    /// Stops the front: it stops accepting and drains, up to `shutdown_timeout`.
    async fn drain_front(
        self,
        trigger: shutdown::ShutdownTrigger,
    ) -> (Arc<Pool>, crate::usage::Usage, tokio::task::JoinHandle<()>) {
        let grace = self.pool.config().pool.shutdown_timeout;
        trigger.trigger();
        let _ = tokio::time::timeout(grace + Duration::from_secs(1), self.front).await;
        (self.pool, self.usage, self.admin)
    }
}

/// The admin socket ends last, after it finished its open answers (`admin::serve_on`).
async fn end_admin(mut admin: tokio::task::JoinHandle<()>) {
    if tokio::time::timeout(Duration::from_secs(3), &mut admin)
        .await
        .is_err()
    {
        admin.abort();
    }
}

/// This host's name in `[shared]` budget contributions: hostname and runtime directory.
fn host_id(runtime_dir: &std::path::Path) -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    format!("{}:{}", host.trim(), runtime_dir.display())
}

/// What the front listener gets from the pool: its dispatch view and its live configuration
/// (one `ArcSwap`, written by the pool only, so a scale or reload is seen by both at once).
fn front_context(
    pool: &Pool,
    metrics: SupervisorMetrics,
    registry: prometheus_client::registry::Registry,
    limits: Arc<front::limits::Book>,
    dashboard: Arc<crate::dashboard::Dashboard>,
    access: crate::usage::access::AccessLog,
) -> FrontContext {
    FrontContext {
        dashboard,
        slots: pool.worker_slots(),
        config: pool.live_config(),
        metrics,
        registry: Arc::new(registry),
        limits,
        backend: None,
        access,
    }
}

/// Takes the lock on the runtime directory: the configured one, checked private (created if
/// missing), or for an ephemeral instance a fresh one.
fn acquire_runtime_dir(cfg: &Config, ephemeral: bool) -> Result<Instance, Fatal> {
    let held = if ephemeral {
        let dir = runtime_dir::create_ephemeral()
            .map_err(|e| Fatal::new(e.exit_code(), e.to_string()))?;
        Instance::acquire_fresh(&dir)
    } else {
        Instance::acquire(&runtime_dir::resolve_runtime_dir(cfg))
    };
    held.map_err(|e| match e {
        InstanceError::Locked { .. } => Fatal::new(exit::LOCKED, e.to_string()),
        InstanceError::Unsafe(u) => Fatal::new(u.exit_code(), u.to_string()),
        InstanceError::Io { .. } => Fatal::new(exit::RUNTIME, e.to_string()),
    })
}

/// How waiting for the first ready worker ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Startup {
    /// This many workers are IDLE.
    Ready(usize),
    /// SIGTERM or SIGINT arrived first.
    Stopped,
    /// Every slot spent its restart budget without serving: nothing will ever be ready.
    AllDead,
}

/// The signals `start` reacts to; installed first thing so none is missed.
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
    ttin: tokio::signal::unix::Signal,
    ttou: tokio::signal::unix::Signal,
    usr2: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> Result<Self, Fatal> {
        let s = |k: SignalKind| {
            signal(k).map_err(|e| Fatal::new(exit::RUNTIME, format!("signal handler: {e}")))
        };
        Ok(Self {
            term: s(SignalKind::terminate())?,
            int: s(SignalKind::interrupt())?,
            hup: s(SignalKind::hangup())?,
            ttin: s(SignalKind::from_raw(nix::libc::SIGTTIN))?,
            ttou: s(SignalKind::from_raw(nix::libc::SIGTTOU))?,
            usr2: s(SignalKind::user_defined2())?,
        })
    }
}

impl Running {
    /// Waits until every worker is IDLE, or `startup_timeout` passed with at least one IDLE.
    /// Keeps waiting while slots are still restarting; gives up when all of them are DEAD.
    async fn wait_first_ready(&self, signals: &mut Signals) -> Startup {
        let startup = self.pool.config().pool.startup_timeout;
        let mut waited = Duration::ZERO;
        loop {
            tokio::select! {
                n = self.pool.wait_ready(startup) => {
                    if n > 0 {
                        return Startup::Ready(n);
                    }
                    if self.pool.all_dead() {
                        return Startup::AllDead;
                    }
                    waited += startup;
                    warn!(waited = ?waited, "no worker is serving yet; still waiting");
                }
                _ = signals.term.recv() => return Startup::Stopped,
                _ = signals.int.recv() => return Startup::Stopped,
            }
        }
    }

    async fn main_loop(
        &mut self,
        signals: &mut Signals,
        mut control: mpsc::Receiver<ControlCommand>,
        parent: Option<u32>,
    ) -> Option<(PathBuf, bool)> {
        let mut ready_rx = self.pool.ready_counts();
        let watchdog = self.systemd.watchdog_interval();
        // The tick drives the systemd watchdog and the parent check; with neither it is idle.
        let mut tick = tokio::time::interval(watchdog.unwrap_or(Duration::from_millis(500)));
        loop {
            tokio::select! {
                _ = signals.term.recv() => { info!("SIGTERM: stopping"); return None; }
                _ = signals.int.recv() => { info!("SIGINT: stopping"); return None; }
                _ = signals.hup.recv() => { info!("SIGHUP: reloading"); let _ = self.reload().await; }
                _ = signals.ttin.recv() => { info!("SIGTTIN: one worker more"); self.pool.scale_by(1); }
                _ = signals.ttou.recv() => { info!("SIGTTOU: one worker fewer"); self.pool.scale_by(-1); }
                _ = signals.usr2.recv() => {
                    info!("SIGUSR2: upgrading in place");
                    if let Ok((exe, checked)) = self.upgrade().await {
                        return Some((exe, checked.adopts));
                    }
                }
                cmd = control.recv() => match cmd {
                    Some(ControlCommand::Stop) | None => { info!("stop requested"); return None; }
                    Some(ControlCommand::Reload(reply)) => { let r = self.reload().await; let _ = reply.send(r); }
                    Some(ControlCommand::Upgrade(reply)) => {
                        // Answered before the re-exec; the caller then waits for the new image.
                        match self.upgrade().await {
                            Ok((exe, checked)) => { let _ = reply.send(Ok(checked.version)); return Some((exe, checked.adopts)); }
                            Err(why) => { let _ = reply.send(Err(why)); }
                        }
                    }
                },
                changed = ready_rx.changed() => {
                    if changed.is_ok() {
                        let (k, n) = *ready_rx.borrow_and_update();
                        self.systemd.status(&format!("{k}/{n} workers ready"));
                    }
                }
                _ = tick.tick() => {
                    if watchdog.is_some() {
                        self.systemd.watchdog();
                    }
                    if parent.is_some_and(sidecar::parent_gone) {
                        info!("parent process went away; stopping (--exit-with-parent)");
                        return None;
                    }
                }
            }
        }
    }

    /// Re-reads the configuration; applies it when valid, else keeps the old one and logs every
    /// error. Keys that cannot change while running are reported as needing a restart. A roll
    /// that fails is logged and answered as a failure, never as "reloaded".
    async fn reload(&mut self) -> Result<(), ReloadError> {
        self.systemd.reloading();
        let result = self.try_reload().await;
        match &result {
            Ok(()) => {}
            Err(ReloadError::Invalid(problems)) => error!(
                "reload rejected, keeping the running configuration: {} problem(s), listed above",
                problems.len()
            ),
            Err(ReloadError::Failed(why)) => error!("reload failed: {why}"),
        }
        let errors = match &result {
            Ok(()) => Vec::new(),
            Err(ReloadError::Invalid(problems)) => problems.clone(),
            Err(ReloadError::Failed(why)) => vec![why.clone()],
        };
        crate::events::emit(
            serde_json::json!({"event": "reload", "ok": result.is_ok(), "errors": errors}),
        );
        let (ready, total) = *self.pool.ready_counts().borrow();
        self.systemd
            .ready(&format!("{ready}/{total} workers ready"));
        result
    }

    /// Checks the binary now at the supervisor's path (`upgrade::check`) against the running
    /// configuration: its path and version when it passes (the caller then re-executes it). A
    /// binary that fails keeps this image serving, and the answer says why (event `upgrade`,
    /// ok=false; the new image reports ok=true itself).
    async fn upgrade(&mut self) -> Result<(PathBuf, crate::upgrade::Checked), String> {
        let result = match crate::upgrade::exe_path() {
            Ok(exe) => {
                let config = match self.source.path() {
                    Some(p) => p.to_path_buf(),
                    // The built-in configuration: the snapshot holds its text.
                    None => self.instance.dir().join("gateway.toml"),
                };
                crate::upgrade::check(&exe, &config).await.map(|v| (exe, v))
            }
            Err(e) => Err(e),
        };
        match &result {
            Ok((exe, c)) => {
                info!(version = %c.version, exe = %exe.display(), adopts_workers = c.adopts, "new binary passed its checks; upgrading")
            }
            Err(why) => {
                error!("upgrade not done, this binary keeps serving: {why}");
                crate::events::emit(
                    serde_json::json!({"event": "upgrade", "ok": false, "error": why}),
                );
            }
        }
        result
    }

    async fn try_reload(&mut self) -> Result<(), ReloadError> {
        let Effective {
            config: new, text, ..
        } = load_config(&self.source, &self.args).map_err(|f| {
            ReloadError::Invalid(if f.problems.is_empty() {
                vec![f.message]
            } else {
                f.problems
            })
        })?;
        // The validated config, overrides applied: an untouched file, a `touch` or a comment
        // edit must not restart every worker.
        if self.rolled.as_deref() == Some(&new) {
            info!("configuration unchanged; nothing to do");
            return Ok(());
        }
        let old = self.pool.config();
        for key in needs_restart(&old, &new) {
            warn!(key, "changed in the file but needs a restart to apply");
        }
        // From here on a failure leaves the pool on neither the old nor the new configuration.
        self.rolled = None;
        write_snapshot(self.instance.dir(), &text).map_err(|f| ReloadError::Failed(f.message))?;
        warn_missing_keys(&new, Some(&old));
        let new = Arc::new(new);
        self.pool
            .reload(new.clone())
            .await
            .map_err(ReloadError::Failed)?;
        self.rolled = Some(new);
        info!("configuration reloaded");
        Ok(())
    }
}

/// Reports each provider whose key variable is unset, once for the whole pool (its workers stay
/// quiet about it): at start, and after a reload only what the reload changed, so an unchanged
/// file does not repeat it. Workers inherit this environment, so they see the same.
fn warn_missing_keys(cfg: &Config, old: Option<&Config>) {
    for p in &cfg.providers {
        let Some(reason) = p.missing_key() else {
            continue;
        };
        let known = old.is_some_and(|o| {
            o.providers
                .iter()
                .any(|q| q.name == p.name && q.missing_key().as_ref() == Some(&reason))
        });
        if !known {
            warn!(provider = %p.name, "{reason}; provider out of rotation");
        }
    }
}

/// Keys whose new value only takes effect after a restart.
fn needs_restart(old: &Config, new: &Config) -> Vec<&'static str> {
    let mut keys = Vec::new();
    if old.server.listen != new.server.listen {
        keys.push("server.listen");
    }
    if old.pool.runtime_dir != new.pool.runtime_dir {
        keys.push("pool.runtime_dir");
    }
    if old.pool.base_port != new.pool.base_port {
        keys.push("pool.base_port");
    }
    if old.server.auth_token_env != new.server.auth_token_env {
        keys.push("server.auth_token_env");
    }
    // The ledger is opened once, at start.
    if old.usage != new.usage {
        keys.push("usage");
    }
    // Each process installs its exporter once, at start (workers get it when replaced).
    if old.telemetry != new.telemetry {
        keys.push("telemetry");
    }
    keys
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn args(flags: &[&str]) -> StartArgs {
        let argv = ["supervisor", "start"].iter().chain(flags);
        match crate::cli::Cli::try_parse_from(argv).unwrap().command {
            crate::cli::Command::Start(a) => a,
            other => panic!("{other:?}"),
        }
    }

    fn ephemeral(source: &ConfigSource, text: &str, flags: &[&str]) -> bool {
        let a = args(flags);
        let mut cfg = config::parse_str(text, "t").unwrap();
        apply_overrides(&mut cfg, &a);
        is_ephemeral(&cfg, source, text, &a)
    }

    #[test]
    fn port_zero_without_explicit_ports_or_dir_is_ephemeral() {
        let file = ConfigSource::File("g.toml".into());
        let builtin = ConfigSource::Builtin;
        let b = config::BUILTIN_CONFIG;
        let zero = ["--listen", "127.0.0.1:0"];
        // The built-in default writes base_port, but it is nobody's explicit choice.
        assert!(ephemeral(&builtin, b, &zero));
        assert!(!ephemeral(&builtin, b, &[]), "port 8080 is not a sidecar");
        assert!(!ephemeral(&file, b, &zero), "a file that writes base_port");
        assert!(ephemeral(&file, "[pool]\nworkers = 1\n", &zero));
        assert!(!ephemeral(
            &builtin,
            b,
            &["--listen", "127.0.0.1:0", "--base-port", "0"]
        ));
        assert!(!ephemeral(
            &builtin,
            b,
            &["--listen", "127.0.0.1:0", "--runtime-dir", "/x"]
        ));
        assert!(!ephemeral(&file, "[pool]\nruntime_dir = \"/x\"\n", &zero));
    }

    /// SIGTTIN/SIGTTOU change `pool.workers`: the front must read the same configuration as the
    /// pool afterwards, not the one it was started with.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn front_and_pool_read_one_configuration_after_scaling() {
        use crate::pool::tests::{config, fixture};
        let f = fixture(config(1, "ok"));
        let (metrics, registry) = SupervisorMetrics::new();
        let dash = crate::dashboard::Dashboard::new(f.pool.worker_slots());
        let ctx = front_context(
            &f.pool,
            metrics,
            registry,
            Default::default(),
            dash,
            Default::default(),
        );
        f.pool.scale_by(1);
        assert_eq!(f.pool.status().len(), 2);
        assert_eq!(f.pool.config().pool.workers, 2, "the pool's view");
        assert_eq!(ctx.config.load().pool.workers, 2, "the front's view");
        f.pool.scale_by(-1);
        assert_eq!(f.pool.status().len(), 1);
        assert_eq!(ctx.config.load().pool.workers, 1, "the front's view");
        f.pool.stop(Duration::from_secs(5)).await;
    }
}
