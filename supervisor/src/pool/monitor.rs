//! The pool's sweep and status publisher: one task for the whole pool.
//!
//! Every half heartbeat interval it samples the RSS of every worker pid, detects that the
//! supervisor itself was suspended, and sends each slot task a `Tick`. On every tick and every
//! lifecycle change (slot tasks poke `PoolShared::changed`) it republishes the state gauges, the
//! in-flight gauges and the ready counts.
//!
//! Suspend guard: the monotonic clock stops while the machine sleeps but heartbeat mtimes are
//! wall-clock, so after a resume every heartbeat looks old. A sweep that ran much later than
//! planned (by either clock: more than two periods plus `heartbeat_timeout`) tells the slots to
//! re-arm their deadlines instead of killing workers that were asleep with us.

use super::task::{SlotCmd, Sweep};
use super::{PoolShared, Registry, WorkerState};
use crate::metrics::{StateLabel, WorkerLabel};
use crate::shutdown::Shutdown;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use sysinfo::{ProcessRefreshKind, ProcessesToUpdate, System};
use tokio::sync::watch;
use tokio::time::{Instant, MissedTickBehavior};

/// What the monitor publishes.
pub struct Outputs {
    /// (serving, total) for systemd STATUS.
    pub ready: watch::Sender<(usize, usize)>,
    /// Bumped on every publish; `wait_ready` re-checks on it.
    pub epoch: watch::Sender<u64>,
}

/// The sweep period for a heartbeat interval.
pub fn period(heartbeat_interval: Duration) -> Duration {
    (heartbeat_interval / 2).max(Duration::from_millis(10))
}

pub async fn run(
    shared: Arc<PoolShared>,
    registry: Arc<Registry>,
    out: Outputs,
    mut halt: Shutdown,
) {
    let mut current = period(shared.config.load().pool.heartbeat_interval);
    let mut ticker = tokio::time::interval(current);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut sys = System::new();
    let mut last = (Instant::now(), SystemTime::now());
    loop {
        tokio::select! {
            _ = halt.wait() => {
                publish(&shared, &registry, &out);
                return;
            }
            _ = ticker.tick() => {
                let hb_timeout = shared.config.load().pool.heartbeat_timeout;
                let mono = last.0.elapsed();
                let wall = last.1.elapsed().unwrap_or_default();
                last = (Instant::now(), SystemTime::now());
                let rearm = suspended(mono.max(wall), current, hb_timeout);
                if rearm {
                    tracing::warn!(late = ?mono.max(wall), "the supervisor did not run for a while (suspend?); re-arming worker deadlines");
                }
                sweep(&mut sys, &registry, rearm);
                // Follow a reloaded heartbeat interval.
                let want = period(shared.config.load().pool.heartbeat_interval);
                if want != current {
                    current = want;
                    ticker = tokio::time::interval(current);
                    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
                    ticker.reset();
                }
            }
            _ = shared.changed.notified() => {}
        }
        publish(&shared, &registry, &out);
    }
}

/// The suspend guard's test: the sweep ran more than two periods plus `heartbeat_timeout` after
/// the previous one. Two periods absorb a busy runtime; adding the timeout means a delay the
/// heartbeats themselves could not survive.
pub fn suspended(since_last: Duration, period: Duration, heartbeat_timeout: Duration) -> bool {
    since_last > period * 2 + heartbeat_timeout
}

/// Samples RSS and sends every slot its tick.
fn sweep(sys: &mut System, registry: &Registry, rearm: bool) {
    let slots = registry.senders();
    let pids: Vec<sysinfo::Pid> = slots
        .iter()
        .map(|(s, _)| s.pid.load(Relaxed))
        .filter(|&p| p != 0)
        .map(sysinfo::Pid::from_u32)
        .collect();
    // Only the workers' pids, memory only: a few small /proc reads per worker, served from
    // kernel memory without disk I/O, so it stays on the runtime rather than paying for a
    // blocking-pool hop twice a second.
    sys.refresh_processes_specifics(
        ProcessesToUpdate::Some(&pids),
        true,
        ProcessRefreshKind::nothing().with_memory(),
    );
    let rss = pids
        .iter()
        .filter_map(|p| sys.process(*p).map(|pr| (p.as_u32(), pr.memory())))
        .collect();
    let tick = Arc::new(Sweep { rearm, rss });
    for (_, tx) in slots {
        // Bounded channel: a slot busy with a kill ladder skips a tick rather than queueing them;
        // a rearm is not lost because the next late sweep repeats it.
        let _ = tx.try_send(SlotCmd::Tick(tick.clone()));
    }
}

/// Gauges and ready counts from the slots' atomics.
fn publish(shared: &PoolShared, registry: &Registry, out: &Outputs) {
    let slots = registry.slots();
    let mut counts = [0i64; WorkerState::ALL.len()];
    let mut serving = 0;
    for s in &slots {
        let st = s.state();
        counts[st as usize] += 1;
        if s.lifecycle() == WorkerState::Idle {
            serving += 1;
        }
        shared
            .metrics
            .worker_inflight
            .get_or_create(&WorkerLabel {
                worker: s.id.to_string(),
            })
            .set(i64::from(s.inflight.load(Relaxed)));
    }
    for st in WorkerState::ALL {
        shared
            .metrics
            .workers
            .get_or_create(&StateLabel {
                state: st.as_str().into(),
            })
            .set(counts[st as usize]);
    }
    out.ready.send_if_modified(|v| {
        let new = (serving, slots.len());
        let changed = *v != new;
        *v = new;
        changed
    });
    out.epoch.send_modify(|e| *e += 1);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suspend_is_a_sweep_far_later_than_planned() {
        let ms = Duration::from_millis;
        assert_eq!(period(Duration::from_secs(1)), ms(500));
        assert_eq!(period(ms(4)), ms(10));
        // On time, or late by a busy runtime: not a suspend.
        assert!(!suspended(ms(500), ms(500), Duration::from_secs(5)));
        assert!(!suspended(ms(5900), ms(500), Duration::from_secs(5)));
        // Later than two periods plus the heartbeat timeout: the machine slept.
        assert!(suspended(ms(6100), ms(500), Duration::from_secs(5)));
    }
}
