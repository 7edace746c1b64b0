//! Restart policy: why a process was replaced, how long to wait before the next start
//! (exponential backoff with jitter) and whether the slot still has restart budget.
//!
//! Pure bookkeeping over `Instant`s passed in by the caller, so it is tested without a clock.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Why a worker process was replaced; the `reason` label of `gateway_worker_restarts_total`
/// (failures) or `gateway_worker_replacements_total` (planned).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// The process exited on its own.
    Exit,
    /// Its heartbeat went stale.
    Heartbeat,
    /// It was not READY within `startup_timeout`.
    Startup,
    /// Recycled: resident memory above `max_rss_mb`.
    Rss,
    /// Recycled: served `max_requests` (+ jitter).
    Requests,
    /// Rolled by a config reload.
    Reload,
    /// Restarted by an operator (admin socket / CLI).
    Manual,
    /// Replaced by a worker of the new binary after an in-place upgrade adopted it.
    Upgrade,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Exit => "exit",
            Self::Heartbeat => "heartbeat",
            Self::Startup => "startup",
            Self::Rss => "rss",
            Self::Requests => "requests",
            Self::Reload => "reload",
            Self::Manual => "manual",
            Self::Upgrade => "upgrade",
        }
    }

    /// Failures spend restart budget and grow the backoff; planned replacements do not.
    pub fn is_failure(self) -> bool {
        matches!(self, Self::Exit | Self::Heartbeat | Self::Startup)
    }
}

/// Exponential backoff (x2 per failure) with +-20% jitter, capped at `max`.
#[derive(Debug, Clone)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    /// The un-jittered delay the next failure will wait.
    current: Duration,
}

/// Jitter spreads the restarts of workers that failed together (a shared upstream broke),
/// so they do not all come back in the same instant.
const JITTER: f64 = 0.2;

impl Backoff {
    pub fn new(initial: Duration, max: Duration) -> Self {
        Self {
            initial,
            max: max.max(initial),
            current: initial,
        }
    }

    /// Adopts new bounds (reload) without forgetting where the sequence is.
    pub fn set_bounds(&mut self, initial: Duration, max: Duration) {
        self.initial = initial;
        self.max = max.max(initial);
        self.current = self.current.clamp(self.initial, self.max);
    }

    /// The delay before the next start, and doubles the one after it.
    pub fn next_delay(&mut self) -> Duration {
        let base = self.current;
        self.current = (self.current * 2).min(self.max);
        let factor = 1.0 + JITTER * (fastrand::f64() * 2.0 - 1.0);
        base.mul_f64(factor).min(self.max)
    }

    /// Back to `initial`: the last process ran long enough to count as stable.
    pub fn reset(&mut self) {
        self.current = self.initial;
    }

    /// How long a process must have run for its failure to restart the sequence at `initial`.
    /// Chosen as `max(30 s, 10 x initial)`: like supervisord's `startsecs` but on the other end,
    /// a worker that served for half a minute was healthy, and its crash is a new incident
    /// rather than the next step of a crash loop. The floor of 30 s keeps a crash loop with a slow
    /// start (a worker that dies a few seconds after READY) from resetting its own backoff.
    pub fn stable_after(&self) -> Duration {
        (self.initial * 10).max(Duration::from_secs(30))
    }
}

/// The restart budget: at most `max_restarts` failures within any `window`.
#[derive(Debug, Clone)]
pub struct Budget {
    failures: VecDeque<Instant>,
}

impl Budget {
    pub fn new() -> Self {
        Self {
            failures: VecDeque::new(),
        }
    }

    /// Records a failure at `now`; true when another restart is still allowed, false when this
    /// failure is one more than `max_restarts` within `window` (the slot goes DEAD).
    pub fn record(&mut self, now: Instant, max_restarts: u32, window: Duration) -> bool {
        while let Some(&t) = self.failures.front() {
            if now.duration_since(t) > window {
                self.failures.pop_front();
            } else {
                break;
            }
        }
        self.failures.push_back(now);
        self.failures.len() <= max_restarts as usize
    }

    pub fn reset(&mut self) {
        self.failures.clear();
    }
}

impl Default for Budget {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_with_jitter_and_caps() {
        let ms = Duration::from_millis;
        let mut b = Backoff::new(ms(100), ms(1000));
        let expected = [100u64, 200, 400, 800, 1000, 1000];
        for e in expected {
            let d = b.next_delay();
            let lo = ms(e).mul_f64(0.8);
            let hi = ms(e).mul_f64(1.2).min(ms(1000));
            assert!(d >= lo && d <= hi, "{d:?} not in [{lo:?}, {hi:?}]");
        }
        b.reset();
        assert!(b.next_delay() <= ms(120));
        assert_eq!(b.stable_after(), Duration::from_secs(30));
        assert_eq!(
            Backoff::new(Duration::from_secs(5), Duration::from_secs(60)).stable_after(),
            Duration::from_secs(50)
        );
    }

    #[test]
    fn budget_counts_failures_in_window() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let mut b = Budget::new();
        // max_restarts = 2: two failures are restarted, the third within the window is not.
        assert!(b.record(t0, 2, s(60)));
        assert!(b.record(t0 + s(1), 2, s(60)));
        assert!(!b.record(t0 + s(2), 2, s(60)));
        // Outside the window the old failures no longer count.
        let mut b = Budget::new();
        assert!(b.record(t0, 2, s(10)));
        assert!(b.record(t0 + s(1), 2, s(10)));
        assert!(b.record(t0 + s(30), 2, s(10)));
        b.reset();
        assert!(!b.record(t0 + s(31), 0, s(10)));
        assert!(Reason::Exit.is_failure() && !Reason::Reload.is_failure());
    }
}
