//! The process work behind the lifecycle's actions: spawning (current or replacement), the kill
//! ladder, promoting a replacement while the old process drains, the restart backoff, the DEAD
//! report, and the full stop.

use super::{describe, SlotTask, KILL_GRACE};
use crate::pool::lifecycle::Event;
use crate::pool::restart::Reason;
use crate::pool::spawn::{self, Proc};
use std::io;
use std::os::fd::AsRawFd;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;
use tokio::time::Instant;

impl SlotTask {
    /// `Spawn`: a new current process. A spawn failure counts as an exit, so a missing binary
    /// walks the same backoff-then-DEAD path as a crashing one instead of spinning.
    pub(super) async fn spawn_current(&mut self) -> Option<Event> {
        if self.shared.shutdown.is_triggered() {
            // Stopping: a new process would only be killed again.
            return Some(Event::Stop);
        }
        match self.spawn_proc().await {
            Ok(proc) => {
                self.publish(&proc);
                self.cur = Some(proc);
                self.count_new_current();
                None
            }
            Err(e) => {
                tracing::error!(worker = self.slot.id, error = %e, "cannot spawn worker");
                self.last_exit = Some(format!("spawn failed: {e}"));
                self.reason = Reason::Exit;
                Some(Event::Exited)
            }
        }
    }

    /// `SpawnReplacement`: a second process on the same socket; the current one keeps serving.
    pub(super) async fn spawn_replacement(&mut self) -> Option<Event> {
        match self.spawn_proc().await {
            Ok(proc) => {
                tracing::info!(
                    worker = self.slot.id,
                    old = self.slot.pid.load(Relaxed),
                    new = proc.pid,
                    reason = self.reason.as_str(),
                    "starting replacement on the same socket"
                );
                self.next = Some(proc);
                None
            }
            Err(e) => {
                tracing::error!(worker = self.slot.id, error = %e, "cannot spawn replacement");
                Some(Event::ReplacementFailed)
            }
        }
    }

    /// `Kill`: the ladder on the current process (a no-op signal-wise when it already exited),
    /// then the budget decision that `Reaped` carries.
    pub(super) async fn kill_current(&mut self) -> Event {
        let p = self.shared.config.load_full().pool.clone();
        let mut uptime = Duration::ZERO;
        if let Some(mut proc) = self.cur.take() {
            uptime = proc.spawned.elapsed();
            let was_running = proc.exit.is_none();
            let st = proc.terminate(KILL_GRACE).await;
            if was_running {
                // Keep the cause (stale heartbeat, startup timeout) next to how it ended.
                let how = st.map(describe).unwrap_or_else(|| "unknown".into());
                self.last_exit = Some(match self.last_exit.take() {
                    Some(why) if matches!(self.reason, Reason::Heartbeat | Reason::Startup) => {
                        format!("{why}; killed: {how}")
                    }
                    _ => how,
                });
            }
        }
        self.clear_pid();
        // Planned replacements (manual) never spend budget; failures do.
        let budget_left = if self.reason.is_failure() {
            if uptime >= self.backoff.stable_after() {
                self.backoff.reset();
            }
            self.budget
                .record(Instant::now().into_std(), p.max_restarts, p.restart_window)
        } else {
            true
        };
        Event::Reaped { budget_left }
    }

    /// `Promote`: the replacement becomes current; the old process drains in the background.
    pub(super) fn promote(&mut self) {
        let cfg = self.shared.config.load_full();
        let old = self.cur.take();
        self.cur = self.next.take();
        let served = self.slot.served.load(Relaxed);
        if let Some(c) = &mut self.cur {
            // Count requests per process: the slot's counter spans all its processes.
            c.served_base = served;
            c.request_limit = super::checks::request_limit(&cfg);
        }
        if let Some(c) = &self.cur {
            self.publish(c);
            self.count_new_current();
        }
        if let Some(mut old) = old {
            // SIGTERM: the old worker stops accepting, finishes what it has, and exits.
            // One that failed (exited, stalled) has nothing worth waiting for.
            let grace = if self.reason.is_failure() {
                KILL_GRACE
            } else {
                cfg.pool.shutdown_timeout
            };
            tracing::info!(
                worker = self.slot.id,
                pid = old.pid,
                "draining replaced worker"
            );
            self.drains.spawn(async move {
                old.terminate(grace).await;
            });
        }
        if let Some(done) = self.replace_done.take() {
            let _ = done.send(Ok(()));
        }
    }

    /// `KillReplacement`: the replacement failed; the old process keeps serving, and the next
    /// attempt waits out a backoff so a broken binary cannot make us spawn in a loop.
    pub(super) async fn kill_replacement(&mut self) {
        let p = self.shared.config.load_full().pool.clone();
        if let Some(mut n) = self.next.take() {
            let st = n.terminate(KILL_GRACE).await;
            if self.last_exit.is_none() {
                self.last_exit = st.map(describe);
            }
        }
        self.backoff
            .set_bounds(p.restart_backoff_initial, p.restart_backoff_max);
        let delay = self.backoff.next_delay();
        self.recycle_not_before = Instant::now() + delay;
        tracing::warn!(worker = self.slot.id, last_exit = ?self.last_exit, retry_in = ?delay, "replacement failed; the old worker keeps serving");
        if let Some(done) = self.replace_done.take() {
            let why = self.last_exit.as_deref().unwrap_or("no status");
            let _ = done.send(Err(format!(
                "worker {}: replacement failed ({why})",
                self.slot.id
            )));
        }
    }

    /// `ScheduleRestart`: arm the RESTARTING timer. Failures wait the backoff; an operator's
    /// restart does not.
    pub(super) fn schedule_restart(&mut self) {
        let p = self.shared.config.load_full().pool.clone();
        let delay = if self.reason.is_failure() {
            // Bounds follow reloads; the position in the sequence is kept.
            self.backoff
                .set_bounds(p.restart_backoff_initial, p.restart_backoff_max);
            self.backoff.next_delay()
        } else {
            Duration::ZERO
        };
        tracing::warn!(worker = self.slot.id, reason = self.reason.as_str(), last_exit = ?self.last_exit, ?delay, "restarting worker");
        self.restart_at = Some(Instant::now() + delay);
    }

    /// `ReportDead`: loud, once, with what an operator needs to fix it.
    pub(super) fn report_dead(&self) {
        let p = self.shared.config.load_full().pool.clone();
        let tail: Vec<String> = self
            .tail
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .cloned()
            .collect();
        tracing::error!(
            worker = self.slot.id,
            port = self.slot.port,
            last_exit = self.last_exit.as_deref().unwrap_or("unknown"),
            "worker is DEAD: more than {} failures within {:?}; the pool keeps serving with the other workers. \
             Last stderr lines:\n{}",
            p.max_restarts,
            p.restart_window,
            tail.join("\n")
        );
    }

    /// Spawns a process for this slot (not yet current nor replacement: the caller decides).
    async fn spawn_proc(&mut self) -> io::Result<Proc> {
        let cfg = self.shared.config.load_full();
        let p = &cfg.pool;
        self.generation += 1;
        // One heartbeat file per process, not per slot: during a replacement two processes of
        // the slot run at once, and a file left by a dead process must never pass for the
        // first heartbeat of a new one.
        let hb = self
            .shared
            .runtime_dir
            .join(format!("worker-{}-{}.hb", self.slot.id, self.generation));
        gateway::heartbeat::remove(&hb);
        let argv = spawn::worker_argv(&p.worker_command)?;
        let lease = self.shared.provider_rows.as_ref().and_then(|r| r.lease());
        // Only the built-in worker is known to serve the front socket; another program gets
        // the port alone, and the front then connects to the port.
        let front = match &self.sockets.front {
            Some(f) if p.worker_command.is_empty() => Some(f.listener.as_raw_fd()),
            _ => None,
        };
        // Read now, so a reload's new workers get the new tokens; the memfd lives until the fork
        // below has copied it into the child.
        let tokens = gateway::admission::Tokens::from_env(&cfg).to_memfd()?;
        let mut cmd = spawn::command(&spawn::WorkerSpec {
            argv: &argv,
            config_path: &self.shared.config_path,
            heartbeat_file: &hb,
            heartbeat_interval: p.heartbeat_interval,
            listener: self.sockets.tcp.as_raw_fd(),
            front,
            provider_row: lease.as_ref(),
            admission: tokens.as_raw_fd(),
            token_env: gateway::admission::Tokens::env_names(&cfg).collect(),
        })?;
        crate::usage::worker_env(&mut cmd, &self.shared.runtime_dir, self.slot.id);
        // A failed spawn drops the lease here: no process ever had the row.
        let child = self.shared.spawner.spawn(cmd).await?;
        drop(tokens);
        // The startup deadline counts from the fork; time queued at the spawner is not the
        // worker's fault.
        let ready_by = std::time::Instant::now() + p.startup_timeout;
        self.slot.front_served.store(front.is_some(), Relaxed);
        let mut proc = Proc::new(child, self.slot.id, hb, ready_by, self.tail.clone());
        proc.provider_row = lease;
        tracing::info!(
            worker = self.slot.id,
            pid = proc.pid,
            port = self.slot.port,
            "worker spawned"
        );
        Ok(proc)
    }

    /// A new process became the slot's current one. After the slot's first, it took another's
    /// place: a failure (crash, kill, stale heartbeat, failed start) counts as a restart, a
    /// planned replacement (reload, recycle, operator) as replaced, each with its reason.
    fn count_new_current(&self) {
        if self.generation <= 1 {
            return;
        }
        let (count, series) = if self.reason.is_failure() {
            (&self.slot.restarts, &self.shared.metrics.worker_restarts)
        } else {
            (
                &self.slot.replaced,
                &self.shared.metrics.worker_replacements,
            )
        };
        count.fetch_add(1, Relaxed);
        series
            .get_or_create(&crate::metrics::RestartLabels {
                worker: self.slot.id.to_string(),
                reason: self.reason.as_str().into(),
            })
            .inc();
    }

    /// Shows `proc` as the slot's process. Its heartbeat age is unknown until the next sweep:
    /// u64::MAX ("none") rather than the previous process's age.
    fn publish(&self, proc: &Proc) {
        self.slot.pid.store(proc.pid, Relaxed);
        self.slot.started_at_ms.store(proc.spawned_wall_ms, Relaxed);
        self.slot.heartbeat_age_ms.store(u64::MAX, Relaxed);
        self.shared.changed.notify_one();
    }

    /// The slot has no process (RESTARTING, DEAD): nothing to show for pid, uptime, RSS.
    fn clear_pid(&self) {
        self.slot.pid.store(0, Relaxed);
        self.slot.started_at_ms.store(0, Relaxed);
        self.slot.heartbeat_age_ms.store(u64::MAX, Relaxed);
        self.slot.rss_bytes.store(0, Relaxed);
        self.shared.changed.notify_one();
    }

    /// Takes over a worker the previous image handed over: true when it is now the slot's
    /// serving process; otherwise it says why in the log and the caller spawns a fresh one (a
    /// handed worker that is not adopted is killed: its `Proc` guard, or `kill_strays`).
    pub(super) fn adopt_worker(&mut self, a: super::Adopt) -> bool {
        self.generation = a.generation;
        let pid = a.pid;
        match Proc::adopt(
            pid,
            self.slot.id,
            a.heartbeat_file,
            a.pipes,
            self.tail.clone(),
        ) {
            Ok(mut proc) => {
                let cfg = self.shared.config.load_full();
                proc.provider_row = a.provider_row;
                proc.spawned_wall_ms = a.started_at_ms;
                proc.served_base = self.slot.served.load(Relaxed);
                proc.request_limit = super::checks::request_limit(&cfg);
                self.slot.front_served.store(a.front_served, Relaxed);
                self.publish(&proc);
                self.cur = Some(proc);
                tracing::info!(worker = self.slot.id, pid, "worker adopted");
                true
            }
            Err(e) => {
                tracing::warn!(
                    worker = self.slot.id,
                    pid,
                    "cannot adopt the handed worker: {e}; starting this slot fresh"
                );
                false
            }
        }
    }

    /// An in-place upgrade: the serving process is released to the next image (it keeps
    /// serving through the `execve`); a replacement still starting is killed, and processes
    /// draining are given `grace`. A slot with no serving process hands none.
    pub(super) async fn hand_over(&mut self, grace: Duration) -> super::HandedOver {
        use crate::pool::WorkerState as S;
        self.slot.draining.store(true, Relaxed);
        let serving = matches!(self.slot.lifecycle(), S::Idle | S::Degraded)
            && self
                .cur
                .as_ref()
                .is_some_and(|c| c.ready && c.exit.is_none());
        if let Some(mut n) = self.next.take() {
            n.terminate(KILL_GRACE).await;
        }
        let worker = if serving {
            self.cur.take().map(Proc::release)
        } else {
            None
        };
        self.stop_grace = grace;
        self.stop_all().await;
        super::HandedOver {
            worker,
            generation: self.generation,
        }
    }

    /// Stop: DEAD, everything terminated within `grace`.
    pub(super) async fn stop(&mut self, grace: Duration) {
        self.slot.draining.store(true, Relaxed);
        self.stop_grace = grace;
        self.fire(Event::Stop).await;
        // DEAD already (no StopAll ran): old processes may still be draining.
        self.stop_all().await;
    }

    /// SIGTERM to every process of the slot at once, SIGKILL to what remains after the grace;
    /// reaps them all. Idempotent.
    pub(super) async fn stop_all(&mut self) {
        // One deadline for everything: all SIGTERMs go out first, so waiting for each process in
        // turn against the shared deadline takes no longer than waiting for all at once.
        let deadline = Instant::now() + self.stop_grace;
        for proc in self.cur.iter().chain(self.next.iter()) {
            proc.signal(nix::sys::signal::Signal::SIGTERM);
        }
        for mut proc in self.cur.take().into_iter().chain(self.next.take()) {
            proc.terminate(deadline.saturating_duration_since(Instant::now()))
                .await;
        }
        // Draining processes got their SIGTERM when they were replaced.
        let _ = tokio::time::timeout_at(deadline, async {
            while self.drains.join_next().await.is_some() {}
        })
        .await;
        // Aborting a drain drops its `Proc`, whose guard SIGKILLs the group.
        self.drains.shutdown().await;
        // A pending restart must not fire after the stop.
        self.restart_at = None;
        self.clear_pid();
        if let Some(done) = self.replace_done.take() {
            let _ = done.send(Err("stopped".into()));
        }
    }
}
