//! The lifecycle task: one per slot, the only writer of that slot's lifecycle state, and the
//! owner of its processes (the current one, a replacement while DEGRADED, and old ones draining).
//!
//! It waits on events, never polls for them: the child's exit (`Child::wait`, or for a worker
//! adopted across an in-place upgrade its pidfd, `spawn::Waiter`; a crash is known at once), the INIT deadline, the restart backoff, and commands on its bounded channel
//! (restart, replace, sweep tick, stop). The pool's sweep (`monitor`) sends a tick every half
//! heartbeat interval, the safety net: `try_wait`, heartbeat age, RSS and request-count recycling.
//!
//! The one place that polls is the wait for a starting worker's *first* heartbeat (every 25 ms,
//! only while a process is in INIT or a replacement is starting): a `stat` of one file in the
//! runtime directory is cheaper than an inotify watch, and 25 ms is what READY may lag.
//!
//! Every state change goes through `lifecycle::next`; the actions it returns are run by
//! `actions` (process work: spawn, kill ladder, promote, stop) and the periodic checks live in
//! `checks` (first heartbeat, startup deadline, sweep).

mod actions;
mod checks;

use super::lifecycle::{self, Action, Event};
use super::restart::{Backoff, Budget, Reason};
use super::sockets::SlotSockets;
use super::spawn::{Proc, StderrTail};
use super::{PoolShared, WorkerSlot, WorkerState};
use std::collections::HashMap;
use std::io;
use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinSet;
use tokio::time::Instant;

/// Grace between SIGTERM and SIGKILL when a failed worker is killed (not on a full stop, where
/// the caller's grace applies): a hung worker is not going to finish anything.
pub const KILL_GRACE: Duration = Duration::from_secs(2);

/// Stale heartbeats needed before a worker is UNHEALTHY: one sweep could race a worker that is
/// just about to write. Two sweeps half an interval apart keep detection within the contract's
/// `heartbeat_timeout` plus one interval.
const STALE_SWEEPS: u8 = 2;

/// How often the first heartbeat of a starting process is looked for (see module docs).
const FIRST_HEARTBEAT_POLL: Duration = Duration::from_millis(25);

/// Replies to a reload's replace request: Ok once the replacement serves.
pub type ReplaceReply = oneshot::Sender<Result<(), String>>;

/// A request to a slot task.
pub enum SlotCmd {
    /// Manual restart; revives a DEAD slot with a fresh budget.
    Restart,
    /// Replace the serving process without dropping a request (reload).
    Replace {
        reason: Reason,
        done: Option<ReplaceReply>,
    },
    /// The pool's periodic sweep.
    Tick(Arc<Sweep>),
    /// Terminate everything within `grace`, then end the task.
    Stop {
        grace: Duration,
        done: oneshot::Sender<()>,
    },
    /// An in-place upgrade: release the serving process to the next image (it keeps running),
    /// terminate the others within `grace`, then end the task.
    HandOver {
        grace: Duration,
        done: oneshot::Sender<HandedOver>,
    },
}

/// What a slot task hands to the next image.
pub struct HandedOver {
    /// The serving process, released (still running); None when the slot had none serving.
    pub worker: Option<super::spawn::Released>,
    /// Processes spawned so far.
    pub generation: u64,
}

/// A worker the previous image handed over, taken over instead of spawning a first process.
pub struct Adopt {
    pub pid: u32,
    pub heartbeat_file: std::path::PathBuf,
    pub started_at_ms: u64,
    /// stdout, stderr.
    pub pipes: [Option<std::os::fd::OwnedFd>; 2],
    pub provider_row: Option<super::provider_rows::RowLease>,
    pub front_served: bool,
    /// The slot's process count in the previous image.
    pub generation: u64,
}

/// What the sweep measured for every slot at once.
#[derive(Debug, Default)]
pub struct Sweep {
    /// The supervisor itself did not run for a while (suspend): re-arm deadlines, kill nothing.
    pub rearm: bool,
    /// Resident bytes by pid.
    pub rss: HashMap<u32, u64>,
}

pub struct SlotTask {
    slot: Arc<WorkerSlot>,
    shared: Arc<PoolShared>,
    /// The slot's sockets; every process of the slot gets the port as fd 3 (and the built-in
    /// worker the front socket as fd 4).
    sockets: Arc<SlotSockets>,
    cmds: mpsc::Receiver<SlotCmd>,
    /// The process the slot's state describes.
    cur: Option<Proc>,
    /// The replacement starting next to `cur` while DEGRADED.
    next: Option<Proc>,
    /// Old processes finishing their in-flight requests after a replacement took over.
    drains: JoinSet<()>,
    backoff: Backoff,
    budget: Budget,
    /// When RESTARTING ends.
    restart_at: Option<Instant>,
    /// Why the current process is being replaced; labels the restart and decides the budget.
    reason: Reason,
    /// Answer for the reload waiting on the current replacement.
    replace_done: Option<ReplaceReply>,
    /// A failed replacement is retried no earlier than this.
    recycle_not_before: Instant,
    /// Until then staleness is ignored: the supervisor was just resumed from a suspend.
    rearmed_until: Option<Instant>,
    /// Grace of the stop in progress.
    stop_grace: Duration,
    /// Processes spawned so far; names heartbeat files and tells restarts from the first start.
    generation: u64,
    tail: StderrTail,
    /// "exit status 3" / "signal 9" / "spawn failed: ..." of the last process that ended.
    last_exit: Option<String>,
    /// Ticks while a process is starting (see module docs). A persistent interval rather than
    /// a fresh sleep per loop turn, so that other events cannot keep postponing the check.
    first_heartbeat_poll: tokio::time::Interval,
    /// The worker to take over at the start instead of spawning one (in-place upgrade).
    adopt: Option<Adopt>,
}

impl SlotTask {
    pub fn new(
        slot: Arc<WorkerSlot>,
        shared: Arc<PoolShared>,
        sockets: Arc<SlotSockets>,
        cmds: mpsc::Receiver<SlotCmd>,
    ) -> Self {
        let cfg = shared.config.load();
        let backoff = Backoff::new(
            cfg.pool.restart_backoff_initial,
            cfg.pool.restart_backoff_max,
        );
        Self {
            slot,
            shared,
            sockets,
            cmds,
            cur: None,
            next: None,
            drains: JoinSet::new(),
            backoff,
            budget: Budget::new(),
            restart_at: None,
            reason: Reason::Exit,
            replace_done: None,
            recycle_not_before: Instant::now(),
            rearmed_until: None,
            stop_grace: KILL_GRACE,
            generation: 0,
            tail: Default::default(),
            last_exit: None,
            first_heartbeat_poll: {
                let mut i = tokio::time::interval(FIRST_HEARTBEAT_POLL);
                i.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
                i
            },
            adopt: None,
        }
    }

    /// Takes over `adopt` at the start instead of spawning a first process.
    pub fn adopting(mut self, adopt: Option<Adopt>) -> Self {
        self.adopt = adopt;
        self
    }

    /// Runs the slot until it is stopped or the pool is dropped.
    pub async fn run(mut self) {
        let adopted = match self.adopt.take() {
            Some(a) => self.adopt_worker(a),
            None => false,
        };
        if adopted {
            self.fire(Event::Adopted).await;
            self.fire(Event::Serving).await;
        } else if let Some(ev) = self.act(Action::Spawn).await {
            self.fire(ev).await;
        }
        loop {
            let startup = self.startup_deadline();
            tokio::select! {
                st = Proc::exited(&mut self.cur) => self.cur_exited(st).await,
                st = Proc::exited(&mut self.next) => self.next_exited(st).await,
                _ = sleep_until(startup) => self.startup_timed_out().await,
                _ = sleep_until(self.restart_at) => {
                    self.restart_at = None;
                    self.fire(Event::BackoffElapsed).await;
                }
                _ = self.first_heartbeat_poll.tick(), if startup.is_some() => self.look_for_first_heartbeat().await,
                Some(_) = self.drains.join_next(), if !self.drains.is_empty() => {}
                cmd = self.cmds.recv() => match cmd {
                    Some(SlotCmd::Stop { grace, done }) => {
                        self.stop(grace).await;
                        let _ = done.send(());
                        return;
                    }
                    Some(SlotCmd::HandOver { grace, done }) => {
                        let handed = self.hand_over(grace).await;
                        let _ = done.send(handed);
                        return;
                    }
                    // The slot was removed (scale down) or the pool dropped: drain and end.
                    None => {
                        let grace = self.shared.config.load().pool.shutdown_timeout;
                        self.stop(grace).await;
                        return;
                    }
                    Some(cmd) => self.command(cmd).await,
                },
            }
        }
    }

    /// The INIT deadline of whichever process is starting, if any.
    fn startup_deadline(&self) -> Option<Instant> {
        match self.slot.lifecycle() {
            WorkerState::Init => self
                .cur
                .as_ref()
                .filter(|p| !p.ready)
                .map(|p| p.ready_by.into()),
            WorkerState::Degraded => self.next.as_ref().map(|p| p.ready_by.into()),
            _ => None,
        }
    }

    /// Feeds `event` through the transition table and runs the resulting actions, following up
    /// with the events those actions produce (a kill produces `Reaped`).
    async fn fire(&mut self, event: Event) {
        let mut event = event;
        loop {
            let from = self.slot.lifecycle();
            let (to, actions) = match lifecycle::next(from, event) {
                Ok(t) => t,
                Err(e) => {
                    tracing::warn!(worker = self.slot.id, "{e}; ignored");
                    return;
                }
            };
            if to != from {
                self.slot.set_lifecycle(to);
                tracing::info!(worker = self.slot.id, pid = self.slot.pid.load(Relaxed), %from, %to, ?event, "worker state");
                self.shared.changed.notify_one();
                let _ = self.shared.transitions.send(super::Transition {
                    worker: self.slot.id,
                    from,
                    to,
                    reason: self.reason_of(event),
                    pid: self.slot.pid.load(Relaxed),
                    at: std::time::Instant::now(),
                });
                if to == WorkerState::Idle {
                    self.shared.capacity.release();
                }
                self.answer_revive(from, to);
            }
            let mut follow = None;
            for a in actions {
                if let Some(f) = self.act(a).await {
                    follow = Some(f);
                }
            }
            match follow {
                Some(f) => event = f,
                None => return,
            }
        }
    }

    /// Why a transition happened: the event, and how the process ended when that is the cause.
    fn reason_of(&self, event: Event) -> String {
        match (event, &self.last_exit) {
            (
                Event::Exited
                | Event::StartupTimeout
                | Event::HeartbeatStale
                | Event::ReplacementFailed
                | Event::Reaped { budget_left: false },
                Some(exit),
            ) => format!("{}: {exit}", event.as_str()),
            _ => event.as_str().to_string(),
        }
    }

    /// Answers a reload waiting on a slot it started over (revived from DEAD, or restarted while
    /// starting): Ok once the new process serves, the failure as soon as it fails to start. A replacement's answer is given by `promote` and
    /// `kill_replacement` instead, so none is pending when a replacement reaches IDLE.
    fn answer_revive(&mut self, from: WorkerState, to: WorkerState) {
        let outcome = match (from, to) {
            // Not (DEGRADED, IDLE): that is a failed replacement, answered by kill_replacement.
            (WorkerState::Ready, WorkerState::Idle) => Ok(()),
            (WorkerState::Init, WorkerState::Unhealthy | WorkerState::Dead) => Err(format!(
                "worker {}: did not start ({})",
                self.slot.id,
                self.last_exit.as_deref().unwrap_or("no status")
            )),
            _ => return,
        };
        if let Some(done) = self.replace_done.take() {
            let _ = done.send(outcome);
        }
    }

    /// Runs one action; returns the event it produced, if any. Each action is one method in
    /// `actions`, so this stays a table a reader can hold next to `lifecycle::next`.
    async fn act(&mut self, action: Action) -> Option<Event> {
        match action {
            Action::Spawn => self.spawn_current().await,
            Action::SpawnReplacement => self.spawn_replacement().await,
            Action::Kill => Some(self.kill_current().await),
            Action::Promote => {
                self.promote();
                None
            }
            Action::KillReplacement => {
                self.kill_replacement().await;
                None
            }
            Action::ScheduleRestart => {
                self.schedule_restart();
                None
            }
            Action::ReportDead => {
                self.report_dead();
                None
            }
            Action::ResetBudget => {
                // A revived slot starts its crash accounting from scratch.
                self.budget.reset();
                self.backoff.reset();
                None
            }
            Action::StopAll => {
                self.stop_all().await;
                None
            }
        }
    }

    async fn cur_exited(&mut self, st: io::Result<ExitStatus>) {
        let Some(proc) = self.cur.as_mut() else {
            return;
        };
        let st = st.unwrap_or_else(|_| ExitStatus::from_raw(0));
        proc.exit = Some(st);
        self.last_exit = Some(describe(st));
        tracing::warn!(worker = self.slot.id, pid = proc.pid, status = %describe(st), "worker exited");
        self.reason = Reason::Exit;
        self.fire(Event::Exited).await;
    }

    async fn next_exited(&mut self, st: io::Result<ExitStatus>) {
        let Some(proc) = self.next.as_mut() else {
            return;
        };
        let st = st.unwrap_or_else(|_| ExitStatus::from_raw(0));
        proc.exit = Some(st);
        self.last_exit = Some(describe(st));
        self.fire(Event::ReplacementFailed).await;
    }

    async fn command(&mut self, cmd: SlotCmd) {
        match cmd {
            SlotCmd::Restart => {
                tracing::info!(worker = self.slot.id, state = %self.slot.lifecycle(), "manual restart");
                self.reason = Reason::Manual;
                self.fire(Event::Restart).await;
            }
            // After an upgrade only adopted processes are replaced: the others already run the
            // new binary (spawned by this image).
            SlotCmd::Replace {
                reason: Reason::Upgrade,
                done,
            } if !self.cur.as_ref().is_some_and(Proc::is_adopted) => {
                if let Some(d) = done {
                    let _ = d.send(Ok(()));
                }
            }
            SlotCmd::Replace { reason, done } => match self.slot.lifecycle() {
                WorkerState::Idle => {
                    self.reason = reason;
                    self.replace_done = done;
                    self.fire(Event::Recycle).await;
                }
                // A DEAD slot gets another chance with the new configuration. The reload hears
                // how that first start went (`answer_revive`), not a success in advance.
                WorkerState::Dead => {
                    self.reason = reason;
                    self.replace_done = done;
                    self.fire(Event::Restart).await;
                }
                // Starting a process that read the configuration before this one: start over
                // (RESTARTING right away, no backoff: planned), and answer once the new process
                // serves or fails. Set after the kill, which is not the new process failing.
                WorkerState::Init | WorkerState::Ready => {
                    self.reason = reason;
                    self.fire(Event::Restart).await;
                    self.replace_done = done;
                }
                // RESTARTING: whatever process starts next reads the new configuration.
                // DEGRADED: a recycle is under way; its replacement serves.
                _ => {
                    if let Some(d) = done {
                        let _ = d.send(Ok(()));
                    }
                }
            },
            SlotCmd::Tick(sweep) => self.sweep(&sweep).await,
            SlotCmd::Stop { .. } | SlotCmd::HandOver { .. } => unreachable!("handled by run"),
        }
    }
}

/// "exit status 3" or "signal 9 (SIGKILL)".
pub fn describe(st: ExitStatus) -> String {
    match (st.code(), st.signal()) {
        (Some(c), _) => format!("exit status {c}"),
        (None, Some(s)) => match nix::sys::signal::Signal::try_from(s) {
            Ok(sig) => format!("signal {s} ({sig})"),
            Err(_) => format!("signal {s}"),
        },
        _ => "unknown".into(),
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
