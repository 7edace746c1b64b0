//! Per-provider circuit breaker, lock-free.
//!
//! ```text
//!            failure rate > threshold, or N failures in a row
//!   CLOSED ─────────────────────────────────────────────────▶ OPEN
//!     ▲                                                       │  open_timeout elapses (timer task),
//!     │ half_open_successes in a row                          │  or a probe sees the provider recover
//!     │                                                       ▼
//!     └──────────────────────────────────────────────── HALF_OPEN ──one failure──▶ OPEN
//!                                                     (admits a few trial requests)
//! ```
//!
//! The failure rate decays: a failure sets `r = r*0.9 + 0.1`, a success halves it (floored at 0),
//! so old failures fade without a window to store. State, rate and counters are atomics: the
//! selection path (`allows`) is a couple of loads; transitions are compare-and-swap, so two workers'
//! threads racing on the same edge produce exactly one transition and one metric increment.
//! A 429 (or a 503 with `Retry-After`) additionally *cools* the provider for that many seconds:
//! it is skipped by selection without the breaker opening, because the provider is healthy but
//! asked us to back off.

use std::sync::atomic::{AtomicU32, AtomicU64, AtomicU8, Ordering::*};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// Breaker states; the numbers are the `gateway_circuit_state` gauge values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum CircuitState {
    Closed = 0,
    Open = 1,
    HalfOpen = 2,
}

impl CircuitState {
    fn from_u8(v: u8) -> Self {
        match v {
            1 => Self::Open,
            2 => Self::HalfOpen,
            _ => Self::Closed,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Closed => "closed",
            Self::Open => "open",
            Self::HalfOpen => "half_open",
        }
    }
}

/// What an attempt's outcome (`metrics::Outcome`) signals to the breaker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    Success,
    /// Connect error, timeout, 5xx, 529: counts against the provider.
    Failure,
    /// 429, or 503 with Retry-After: a failure that also cools the provider for this long.
    RateLimited(Duration),
    /// 400/404/422 and the like: the client's fault, never counted.
    ClientError,
}

/// Default cool-down after a 429 without `Retry-After`.
pub const DEFAULT_COOLDOWN: Duration = Duration::from_secs(5);

/// Classifies an upstream status (and its `Retry-After`, already capped, if any).
pub fn classify(status: u16, retry_after: Option<Duration>) -> Signal {
    match status {
        429 => Signal::RateLimited(retry_after.unwrap_or(DEFAULT_COOLDOWN)),
        503 if retry_after.is_some() => Signal::RateLimited(retry_after.unwrap_or_default()),
        500..=599 => Signal::Failure,
        200..=399 => Signal::Success,
        _ => Signal::ClientError,
    }
}

/// Thresholds, from `[circuit_breaker]`.
#[derive(Debug, Clone, Copy)]
pub struct BreakerConfig {
    pub failure_rate_threshold: f64,
    pub consecutive_failures: u32,
    pub half_open_successes: u32,
    pub open_timeout: Duration,
}

impl From<&gateway::config::CircuitBreakerConfig> for BreakerConfig {
    fn from(c: &gateway::config::CircuitBreakerConfig) -> Self {
        Self {
            failure_rate_threshold: c.failure_rate_threshold,
            consecutive_failures: c.consecutive_failures,
            half_open_successes: c.half_open_successes,
            open_timeout: c.open_timeout,
        }
    }
}

/// Called once per transition, with (from, to): feeds the metrics.
pub type TransitionHook = Arc<dyn Fn(CircuitState, CircuitState) + Send + Sync>;

/// One provider's breaker.
pub struct Breaker {
    cfg: BreakerConfig,
    state: AtomicU8,
    /// Decaying failure rate as f64 bits.
    rate: AtomicU64,
    consecutive: AtomicU32,
    /// Successes in a row while half-open.
    trial_successes: AtomicU32,
    /// Trial requests admitted while half-open and not yet finished.
    trials_inflight: AtomicU32,
    /// Bumped on every transition into OPEN; a timer only acts on the generation it was armed for.
    open_generation: AtomicU64,
    /// Cool-down end, as ms since `epoch`; 0 = none.
    cooldown_until_ms: AtomicU64,
    /// When the breaker last opened, as ms since `epoch`: for the `Retry-After` of a fast 503.
    opened_at_ms: AtomicU64,
    epoch: Instant,
    hook: TransitionHook,
}

impl Breaker {
    pub fn new(cfg: BreakerConfig, hook: TransitionHook) -> Arc<Self> {
        Arc::new(Self {
            cfg,
            state: AtomicU8::new(CircuitState::Closed as u8),
            rate: AtomicU64::new(0f64.to_bits()),
            consecutive: AtomicU32::new(0),
            trial_successes: AtomicU32::new(0),
            trials_inflight: AtomicU32::new(0),
            open_generation: AtomicU64::new(0),
            cooldown_until_ms: AtomicU64::new(0),
            opened_at_ms: AtomicU64::new(0),
            epoch: Instant::now(),
            hook,
        })
    }

    pub fn state(&self) -> CircuitState {
        CircuitState::from_u8(self.state.load(Acquire))
    }

    pub fn failure_rate(&self) -> f64 {
        f64::from_bits(self.rate.load(Relaxed))
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// True while a 429/Retry-After cool-down is running.
    pub fn cooling(&self) -> bool {
        self.now_ms() < self.cooldown_until_ms.load(Relaxed)
    }

    /// What is left of a 429/Retry-After cool-down; zero when none runs.
    pub fn cooldown_remaining(&self) -> Duration {
        let left = self
            .cooldown_until_ms
            .load(Relaxed)
            .saturating_sub(self.now_ms());
        Duration::from_millis(left)
    }

    /// How long until this provider may be selected again: the rest of the open period or of
    /// the cool-down, whichever is longer; zero when it is usable (or half-open).
    pub fn blocked_for(&self) -> Duration {
        let now = self.now_ms();
        let cool = self.cooldown_until_ms.load(Relaxed).saturating_sub(now);
        let open = if self.state() == CircuitState::Open {
            let opened = self.opened_at_ms.load(Acquire);
            (opened + self.cfg.open_timeout.as_millis() as u64).saturating_sub(now)
        } else {
            0
        };
        Duration::from_millis(cool.max(open))
    }

    /// Whether selection may use this provider now. Half-open admits up to
    /// `half_open_successes` concurrent trial requests; call `release_trial` if an admitted
    /// request is abandoned without an outcome.
    pub fn allows(&self) -> bool {
        if self.cooling() {
            return false;
        }
        match self.state() {
            CircuitState::Closed => true,
            CircuitState::Open => false,
            CircuitState::HalfOpen => {
                let max = self.cfg.half_open_successes.max(1);
                self.trials_inflight
                    .fetch_update(AcqRel, Acquire, |n| (n < max).then_some(n + 1))
                    .is_ok()
            }
        }
    }

    /// Gives back a half-open trial slot taken by `allows` that produced no outcome.
    pub fn release_trial(&self) {
        let _ = self
            .trials_inflight
            .fetch_update(AcqRel, Acquire, |n| n.checked_sub(1));
    }

    fn transition(self: &Arc<Self>, from: CircuitState, to: CircuitState) -> bool {
        if self
            .state
            .compare_exchange(from as u8, to as u8, AcqRel, Acquire)
            .is_err()
        {
            return false;
        }
        self.trials_inflight.store(0, Release);
        self.trial_successes.store(0, Release);
        if to == CircuitState::Open {
            self.opened_at_ms.store(self.now_ms(), Release);
            let generation = self.open_generation.fetch_add(1, AcqRel) + 1;
            self.arm_timer(generation);
        }
        if to == CircuitState::Closed {
            self.consecutive.store(0, Release);
            self.rate.store(0f64.to_bits(), Release);
        }
        (self.hook)(from, to);
        true
    }

    /// OPEN -> HALF_OPEN after `open_timeout`, by a timer rather than the next request, so an
    /// idle provider is retried on schedule. The task ends after one sleep; a newer opening makes
    /// it a no-op through the generation check.
    fn arm_timer(self: &Arc<Self>, generation: u64) {
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let weak = Arc::downgrade(self);
        let wait = self.cfg.open_timeout;
        handle.spawn(async move {
            tokio::time::sleep(wait).await;
            if let Some(b) = weak.upgrade() {
                if b.open_generation.load(Acquire) == generation {
                    b.transition(CircuitState::Open, CircuitState::HalfOpen);
                }
            }
        });
    }

    /// Records what an attempt signalled.
    pub fn record(self: &Arc<Self>, signal: Signal) {
        match signal {
            Signal::ClientError => {
                if self.state() == CircuitState::HalfOpen {
                    self.release_trial();
                }
            }
            Signal::Success => self.on_success(),
            Signal::Failure => self.on_failure(),
            Signal::RateLimited(d) => {
                let until = self.now_ms() + d.as_millis() as u64;
                self.cooldown_until_ms.fetch_max(until, AcqRel);
                self.on_failure();
            }
        }
    }

    fn on_success(self: &Arc<Self>) {
        self.consecutive.store(0, Release);
        let _ = self.rate.fetch_update(AcqRel, Acquire, |b| {
            Some((f64::from_bits(b) / 2.0).max(0.0).to_bits())
        });
        if self.state() == CircuitState::HalfOpen {
            self.release_trial();
            let n = self.trial_successes.fetch_add(1, AcqRel) + 1;
            if n >= self.cfg.half_open_successes {
                self.transition(CircuitState::HalfOpen, CircuitState::Closed);
            }
        }
    }

    fn on_failure(self: &Arc<Self>) {
        let rate = self
            .rate
            .fetch_update(AcqRel, Acquire, |b| {
                Some((f64::from_bits(b) * 0.9 + 0.1).to_bits())
            })
            .map(|old| f64::from_bits(old) * 0.9 + 0.1)
            .unwrap_or(1.0);
        let run = self.consecutive.fetch_add(1, AcqRel) + 1;
        match self.state() {
            CircuitState::HalfOpen => {
                self.transition(CircuitState::HalfOpen, CircuitState::Open);
            }
            CircuitState::Closed
                if rate > self.cfg.failure_rate_threshold
                    || run >= self.cfg.consecutive_failures =>
            {
                self.transition(CircuitState::Closed, CircuitState::Open);
            }
            _ => {}
        }
    }

    /// A health probe saw the provider answer: an open breaker moves to half-open early.
    /// A probe alone never opens a closed breaker, and never closes one either.
    pub fn probe_succeeded(self: &Arc<Self>) {
        if self.state() == CircuitState::Open {
            self.transition(CircuitState::Open, CircuitState::HalfOpen);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    fn cfg() -> BreakerConfig {
        BreakerConfig {
            failure_rate_threshold: 0.5,
            consecutive_failures: 5,
            half_open_successes: 3,
            open_timeout: Duration::from_secs(30),
        }
    }

    type Log = Arc<Mutex<Vec<(CircuitState, CircuitState)>>>;

    fn breaker(c: BreakerConfig) -> (Arc<Breaker>, Log) {
        let log = Arc::new(Mutex::new(Vec::new()));
        let l = log.clone();
        (
            Breaker::new(c, Arc::new(move |f, t| l.lock().unwrap().push((f, t)))),
            log,
        )
    }

    #[test]
    fn decaying_rate_arithmetic() {
        let (b, _) = breaker(BreakerConfig {
            failure_rate_threshold: 1.0,
            consecutive_failures: 100,
            ..cfg()
        });
        b.record(Signal::Failure);
        assert!((b.failure_rate() - 0.1).abs() < 1e-12);
        b.record(Signal::Failure);
        assert!((b.failure_rate() - 0.19).abs() < 1e-12);
        b.record(Signal::Success);
        assert!((b.failure_rate() - 0.095).abs() < 1e-12);
        for _ in 0..2000 {
            b.record(Signal::Success);
        }
        assert_eq!(b.failure_rate(), 0.0, "floored at 0, never negative");
    }

    #[test]
    fn opens_on_rate_above_threshold() {
        // 0.1, 0.19, 0.271, 0.3439, 0.40951, 0.468559, 0.5217031 -> the 7th failure crosses 0.5.
        let (b, log) = breaker(BreakerConfig {
            consecutive_failures: 100,
            ..cfg()
        });
        for _ in 0..6 {
            b.record(Signal::Failure);
            b.record(Signal::Failure);
            b.record(Signal::Success); // keeps the run short, so only the rate can open it
        }
        assert_eq!(b.state(), CircuitState::Closed, "rate {}", b.failure_rate());
        let (b2, log2) = breaker(BreakerConfig {
            consecutive_failures: 100,
            ..cfg()
        });
        for i in 1..=7 {
            b2.record(Signal::Failure);
            assert_eq!(
                b2.state() == CircuitState::Open,
                i == 7,
                "after {i} failures, rate {}",
                b2.failure_rate()
            );
            if i == 7 {
                break;
            }
        }
        assert_eq!(
            *log2.lock().unwrap(),
            vec![(CircuitState::Closed, CircuitState::Open)]
        );
        assert!(log.lock().unwrap().is_empty());
    }

    #[test]
    fn opens_on_consecutive_failures() {
        let (b, _) = breaker(BreakerConfig {
            failure_rate_threshold: 1.0,
            consecutive_failures: 3,
            ..cfg()
        });
        b.record(Signal::Failure);
        b.record(Signal::Failure);
        b.record(Signal::Success);
        b.record(Signal::Failure);
        b.record(Signal::Failure);
        assert_eq!(b.state(), CircuitState::Closed);
        b.record(Signal::Failure);
        assert_eq!(b.state(), CircuitState::Open);
        assert!(!b.allows());
    }

    #[test]
    fn client_errors_never_count() {
        let (b, _) = breaker(BreakerConfig {
            consecutive_failures: 1,
            ..cfg()
        });
        for _ in 0..50 {
            b.record(classify(400, None));
            b.record(classify(404, None));
            b.record(classify(422, None));
        }
        assert_eq!(b.state(), CircuitState::Closed);
        assert_eq!(b.failure_rate(), 0.0);
    }

    #[test]
    fn classification() {
        assert_eq!(classify(200, None), Signal::Success);
        assert_eq!(classify(500, None), Signal::Failure);
        assert_eq!(classify(529, None), Signal::Failure);
        assert_eq!(classify(503, None), Signal::Failure);
        assert_eq!(
            classify(503, Some(Duration::from_secs(7))),
            Signal::RateLimited(Duration::from_secs(7))
        );
        assert_eq!(
            classify(429, Some(Duration::from_secs(2))),
            Signal::RateLimited(Duration::from_secs(2))
        );
        assert_eq!(classify(429, None), Signal::RateLimited(DEFAULT_COOLDOWN));
        assert_eq!(classify(401, None), Signal::ClientError);
    }

    #[tokio::test(start_paused = true)]
    async fn open_to_half_open_by_timer_then_closed() {
        let (b, log) = breaker(BreakerConfig {
            consecutive_failures: 1,
            ..cfg()
        });
        b.record(Signal::Failure);
        assert_eq!(b.state(), CircuitState::Open);
        tokio::time::sleep(Duration::from_secs(29)).await;
        assert_eq!(b.state(), CircuitState::Open);
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert_eq!(
            b.state(),
            CircuitState::HalfOpen,
            "the timer, not a request, moves it"
        );
        // Half-open admits at most half_open_successes trials at once.
        assert!(b.allows() && b.allows() && b.allows());
        assert!(!b.allows());
        for _ in 0..3 {
            b.record(Signal::Success);
        }
        assert_eq!(b.state(), CircuitState::Closed);
        use CircuitState::*;
        assert_eq!(
            *log.lock().unwrap(),
            vec![(Closed, Open), (Open, HalfOpen), (HalfOpen, Closed)]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn half_open_failure_reopens_and_rearms() {
        let (b, _) = breaker(BreakerConfig {
            consecutive_failures: 1,
            ..cfg()
        });
        b.record(Signal::Failure);
        tokio::time::sleep(Duration::from_secs(31)).await;
        assert_eq!(b.state(), CircuitState::HalfOpen);
        assert!(b.allows());
        b.record(Signal::Success);
        assert!(b.allows());
        b.record(Signal::Failure);
        assert_eq!(b.state(), CircuitState::Open);
        tokio::time::sleep(Duration::from_secs(29)).await;
        assert_eq!(
            b.state(),
            CircuitState::Open,
            "re-armed from the reopening, not the first opening"
        );
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert_eq!(b.state(), CircuitState::HalfOpen);
    }

    #[tokio::test(start_paused = true)]
    async fn rate_limit_cools_for_retry_after() {
        let (b, _) = breaker(BreakerConfig {
            consecutive_failures: 100,
            failure_rate_threshold: 1.0,
            ..cfg()
        });
        assert_eq!(b.cooldown_remaining(), Duration::ZERO);
        b.record(classify(429, Some(Duration::from_secs(2))));
        assert_eq!(b.state(), CircuitState::Closed);
        assert!(!b.allows(), "cooling");
        assert_eq!(b.cooldown_remaining(), Duration::from_secs(2));
        tokio::time::sleep(Duration::from_millis(1900)).await;
        assert!(!b.allows());
        assert_eq!(b.cooldown_remaining(), Duration::from_millis(100));
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(b.allows(), "back after ~2 s");
        assert_eq!(b.cooldown_remaining(), Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn blocked_for_reports_the_rest_of_the_open_period() {
        let (b, _) = breaker(BreakerConfig {
            consecutive_failures: 1,
            ..cfg()
        });
        assert_eq!(b.blocked_for(), Duration::ZERO);
        b.record(Signal::Failure);
        tokio::time::sleep(Duration::from_secs(10)).await;
        assert_eq!(b.blocked_for(), Duration::from_secs(20));
        b.record(classify(429, Some(Duration::from_secs(60))));
        assert_eq!(
            b.blocked_for(),
            Duration::from_secs(60),
            "the longer of the two"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn probe_moves_open_to_half_open_early_but_never_opens() {
        let (b, _) = breaker(BreakerConfig {
            consecutive_failures: 1,
            ..cfg()
        });
        b.probe_succeeded();
        assert_eq!(b.state(), CircuitState::Closed);
        b.record(Signal::Failure);
        b.probe_succeeded();
        assert_eq!(b.state(), CircuitState::HalfOpen);
    }
}
