//! The slot's checks: READY on the first heartbeat, the startup deadline, and the sweep
//! (reap what `wait` missed, heartbeat staleness, RSS and request-count recycling).

use super::{SlotTask, Sweep, STALE_SWEEPS};
use crate::pool::lifecycle::Event;
use crate::pool::restart::Reason;
use crate::pool::WorkerState;
use std::sync::atomic::Ordering::Relaxed;
use tokio::time::Instant;

impl SlotTask {
    /// The starting process missed `startup_timeout`: a failed start (INIT), or a failed
    /// replacement (DEGRADED, the old process keeps serving).
    pub(super) async fn startup_timed_out(&mut self) {
        let timeout = self.shared.config.load().pool.startup_timeout;
        self.last_exit = Some(format!("not ready within {timeout:?}"));
        if self.slot.lifecycle() == WorkerState::Degraded {
            self.fire(Event::ReplacementFailed).await;
        } else {
            tracing::warn!(
                worker = self.slot.id,
                pid = self.slot.pid.load(Relaxed),
                ?timeout,
                "worker not ready in time"
            );
            self.reason = Reason::Startup;
            self.fire(Event::StartupTimeout).await;
        }
    }

    /// READY when the starting process's heartbeat file exists (the worker creates it once it
    /// serves), then IDLE at once: READY is the announcement, IDLE the dispatchable state.
    pub(super) async fn look_for_first_heartbeat(&mut self) {
        let cfg = self.shared.config.load_full();
        let state = self.slot.lifecycle();
        let starting = match state {
            WorkerState::Init => self.cur.as_ref(),
            WorkerState::Degraded => self.next.as_ref(),
            _ => None,
        };
        let Some(proc) = starting else { return };
        if gateway::heartbeat::age(&proc.heartbeat_file).is_none() {
            return;
        }
        // The per-process request baseline starts when the process starts serving; a
        // replacement gets its own in `promote`, when the front starts sending it work.
        if state == WorkerState::Init {
            if let Some(c) = self.cur.as_mut() {
                c.ready = true;
                c.served_base = self.slot.served.load(Relaxed);
                c.request_limit = request_limit(&cfg);
            }
        } else if let Some(n) = self.next.as_mut() {
            n.ready = true;
        }
        self.fire(Event::FirstHeartbeat).await;
        self.fire(Event::Serving).await;
    }

    /// The safety net, every half heartbeat interval: reap what `wait` has not reported, then
    /// heartbeat staleness, then RSS and request-count recycling, in that order: a dead or hung
    /// worker is replaced as a failure, never "recycled".
    pub(super) async fn sweep(&mut self, sweep: &Sweep) {
        if sweep.rearm {
            self.rearm();
        }
        if self.reap_missed().await {
            return;
        }
        let rss = self
            .cur
            .as_ref()
            .and_then(|c| sweep.rss.get(&c.pid).copied())
            .unwrap_or(0);
        self.slot.rss_bytes.store(rss, Relaxed);
        if !self.cur.as_ref().is_some_and(|c| c.ready) {
            return;
        }
        if self.heartbeat_stale() {
            self.reason = Reason::Heartbeat;
            return self.fire(Event::HeartbeatStale).await;
        }
        if let Some(reason) = self.recycle_reason(rss) {
            self.reason = reason;
            self.fire(Event::Recycle).await;
        }
    }

    /// After a suspend of the supervisor: every deadline starts over, nobody is killed for
    /// the time the whole machine was asleep.
    fn rearm(&mut self) {
        let p = self.shared.config.load_full().pool.clone();
        let now = Instant::now();
        self.rearmed_until = Some(now + p.heartbeat_timeout);
        for proc in self.cur.iter_mut().chain(self.next.iter_mut()) {
            proc.stale_sweeps = 0;
            proc.ready_by = (now + p.startup_timeout).into_std();
        }
    }

    /// `try_wait` on both processes; true when an exit was found (and handled).
    async fn reap_missed(&mut self) -> bool {
        let try_wait = |p: &mut Option<crate::pool::spawn::Proc>| {
            p.as_mut()
                .filter(|c| c.exit.is_none())
                .and_then(|c| c.child.try_wait().ok().flatten())
        };
        if let Some(st) = try_wait(&mut self.cur) {
            self.cur_exited(Ok(st)).await;
            return true;
        }
        if let Some(st) = try_wait(&mut self.next) {
            self.next_exited(Ok(st)).await;
            return true;
        }
        false
    }

    /// Reads the current process's heartbeat age; true once it was stale on `STALE_SWEEPS`
    /// consecutive sweeps (pingora's "N consecutive observations", not one).
    fn heartbeat_stale(&mut self) -> bool {
        let timeout = self.shared.config.load().pool.heartbeat_timeout;
        let state = self.slot.lifecycle();
        let suppressed = self.rearmed_until.is_some_and(|t| Instant::now() < t);
        let Some(cur) = self.cur.as_mut() else {
            return false;
        };
        // A stat of one file in the runtime directory (tmpfs under XDG_RUNTIME_DIR): cheap
        // enough to do on the runtime, like the /proc reads of the RSS sample.
        let age = gateway::heartbeat::age(&cur.heartbeat_file);
        self.slot
            .heartbeat_age_ms
            .store(age.map_or(u64::MAX, |a| a.as_millis() as u64), Relaxed);
        // A vanished file counts as stale: the worker is not proving it runs.
        let stale = !matches!(age, Some(a) if a <= timeout);
        cur.stale_sweeps = if stale && !suppressed {
            cur.stale_sweeps.saturating_add(1)
        } else {
            0
        };
        let serving = matches!(
            state,
            WorkerState::Ready | WorkerState::Idle | WorkerState::Degraded
        );
        if cur.stale_sweeps >= STALE_SWEEPS && serving {
            tracing::warn!(
                worker = self.slot.id,
                pid = cur.pid,
                ?age,
                ?timeout,
                "heartbeat stale"
            );
            self.last_exit = Some(format!("heartbeat stale ({age:?})"));
            return true;
        }
        false
    }

    /// Why the serving process should be replaced now, if it should. Only an IDLE slot is
    /// recycled (one replacement at a time), and not before a failed replacement's backoff.
    fn recycle_reason(&self, rss: u64) -> Option<Reason> {
        let p = &self.shared.config.load().pool;
        let cur = self.cur.as_ref()?;
        if self.slot.lifecycle() != WorkerState::Idle
            || self.slot.draining.load(Relaxed)
            || Instant::now() < self.recycle_not_before
        {
            return None;
        }
        let served = self
            .slot
            .served
            .load(Relaxed)
            .saturating_sub(cur.served_base);
        let reason = if p.max_rss_mb > 0 && rss > p.max_rss_mb * 1024 * 1024 {
            Reason::Rss
        } else if cur.request_limit.is_some_and(|l| served >= l) {
            Reason::Requests
        } else {
            return None;
        };
        tracing::info!(
            worker = self.slot.id,
            pid = cur.pid,
            rss,
            served,
            reason = reason.as_str(),
            "recycling worker"
        );
        Some(reason)
    }
}

/// `max_requests` plus this process's own jitter, so workers started together do not all
/// recycle together; None when off.
pub(super) fn request_limit(cfg: &gateway::Config) -> Option<u64> {
    let p = &cfg.pool;
    (p.max_requests > 0).then(|| p.max_requests + fastrand::u64(0..=p.max_requests_jitter))
}
