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
//! so old failures fade without a window to store. State, rate, counters, cool-down and the
//! half-open trial slots are one state for the whole pool, atomics in the provider table's health
//! region (`gateway::provider_health`): the selection path (`allows`) is a couple of loads;
//! transitions are compare-and-swap on a state word with a generation, so two workers racing on
//! the same edge produce exactly one transition and one metric increment, and a breaker opened
//! by one worker is seen by the others on their next selection.
//! A 429 (or a 503 with `Retry-After`) additionally *cools* the provider for that many seconds:
//! it is skipped by selection without the breaker opening, because the provider is healthy but
//! asked us to back off.

use gateway::provider_health::{HealthCell, MonoClock, StateWord, HALF_OPEN, OPEN};
use gateway::provider_permits::{ProviderLimiter, ProviderTable};
use std::sync::atomic::{AtomicU8, Ordering::*};
use std::sync::Arc;
use std::time::Duration;

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

/// Called on every state change this worker sees, with (from, to, made_here): `made_here` is
/// true in the one worker that made the transition (it counts it and logs it); the others only
/// update their gauge when they first observe the new state.
pub type TransitionHook = Arc<dyn Fn(CircuitState, CircuitState, bool) + Send + Sync>;

/// One provider's breaker: this worker's handle on the pool-wide state in the provider table's
/// health region (`gateway::provider_health`). Every transition goes through
/// `HealthCell::transition`, a compare-exchange on the shared state word.
pub struct Breaker {
    cfg: BreakerConfig,
    table: ProviderLimiter,
    col: usize,
    /// The state this worker last reported to its hook (for the gauge).
    seen: AtomicU8,
    clock: MonoClock,
    hook: TransitionHook,
}

impl Breaker {
    /// `table` is the pool's provider table (the worker's own row in it), `provider` the name
    /// whose column holds the state.
    pub fn new(
        cfg: BreakerConfig,
        hook: TransitionHook,
        table: ProviderLimiter,
        provider: &str,
    ) -> Arc<Self> {
        let b = Arc::new(Self {
            cfg,
            col: ProviderTable::column(provider),
            table,
            seen: AtomicU8::new(CircuitState::Closed as u8),
            clock: MonoClock::new(),
            hook,
        });
        // A worker started (or reloaded) while the breaker is open arms its own timer too, so
        // the open period ends on schedule whichever worker opened it.
        let w = b.cell().load();
        if w.state == OPEN {
            b.arm_timer(w.generation);
        }
        b.observe(w.state);
        b
    }

    fn cell(&self) -> &HealthCell {
        &self.table.health().cols[self.col]
    }

    /// Reports a state this worker has not reported yet (made by another worker) to the hook.
    fn observe(&self, state: u8) {
        let old = self.seen.swap(state, AcqRel);
        if old != state {
            (self.hook)(
                CircuitState::from_u8(old),
                CircuitState::from_u8(state),
                false,
            );
        }
    }

    /// The current word; an open period past its `open_timeout` moves to half-open here, so the
    /// breaker never stays open because the worker whose timer would have moved it died.
    fn word(self: &Arc<Self>) -> StateWord {
        let w = self.cell().load();
        if w.state == OPEN && self.open_left(w) == 0 {
            self.transition(w, CircuitState::HalfOpen);
            let w = self.cell().load();
            self.observe(w.state);
            return w;
        }
        self.observe(w.state);
        w
    }

    fn open_left(&self, w: StateWord) -> u64 {
        self.cell().open_left_ms(
            w,
            self.cfg.open_timeout.as_millis() as u64,
            self.clock.now_ms(),
        )
    }

    pub fn state(self: &Arc<Self>) -> CircuitState {
        CircuitState::from_u8(self.word().state)
    }

    pub fn failure_rate(&self) -> f64 {
        f64::from_bits(self.cell().rate.load(Relaxed))
    }

    /// True while a 429/Retry-After cool-down is running.
    pub fn cooling(&self) -> bool {
        self.clock.now_ms() < self.cell().cooldown_until_ms.load(Relaxed)
    }

    /// What is left of a 429/Retry-After cool-down; zero when none runs.
    pub fn cooldown_remaining(&self) -> Duration {
        Duration::from_millis(self.cell().cooldown_left_ms(self.clock.now_ms()))
    }

    /// How long until this provider may be selected again: the rest of the open period or of
    /// the cool-down, whichever is longer; zero when it is usable (or half-open).
    pub fn blocked_for(self: &Arc<Self>) -> Duration {
        let open = self.open_left(self.word());
        Duration::from_millis(open).max(self.cooldown_remaining())
    }

    /// Whether selection may use this provider now. Half-open admits up to
    /// `half_open_successes` concurrent trial requests for the whole pool; call
    /// `release_trial` if an admitted request is abandoned without an outcome.
    pub fn allows(self: &Arc<Self>) -> bool {
        if self.cooling() {
            return false;
        }
        let w = self.word();
        match CircuitState::from_u8(w.state) {
            CircuitState::Closed => true,
            CircuitState::Open => false,
            CircuitState::HalfOpen => {
                self.cell()
                    .try_trial(w.generation, self.table.row(), self.cfg.half_open_successes)
            }
        }
    }

    /// Gives back a half-open trial slot taken by `allows` that produced no outcome.
    pub fn release_trial(self: &Arc<Self>) {
        let w = self.cell().load();
        if w.state == HALF_OPEN {
            self.cell().release_trial(w.generation, self.table.row());
        }
    }

    fn transition(self: &Arc<Self>, from: StateWord, to: CircuitState) -> bool {
        let Some(next) = self.cell().transition(from, to as u8, self.clock.now_ms()) else {
            return false;
        };
        self.seen.store(to as u8, Release);
        if to == CircuitState::Open {
            self.arm_timer(next.generation);
        }
        (self.hook)(CircuitState::from_u8(from.state), to, true);
        true
    }

    /// OPEN -> HALF_OPEN after `open_timeout`, by a timer rather than the next request, so an
    /// idle provider is retried on schedule. The task ends after one sleep; a newer transition
    /// makes it a no-op through the generation in the state word.
    fn arm_timer(self: &Arc<Self>, generation: u64) {
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let weak = Arc::downgrade(self);
        let wait = Duration::from_millis(self.open_left(self.cell().load()));
        handle.spawn(async move {
            tokio::time::sleep(wait).await;
            if let Some(b) = weak.upgrade() {
                let w = b.cell().load();
                if w.state == OPEN && w.generation == generation {
                    b.transition(w, CircuitState::HalfOpen);
                }
                b.observe(b.cell().load().state);
            }
        });
    }

    /// Records what an attempt signalled.
    pub fn record(self: &Arc<Self>, signal: Signal) {
        match signal {
            Signal::ClientError => self.release_trial(),
            Signal::Success => self.on_success(),
            Signal::Failure => self.on_failure(),
            Signal::RateLimited(d) => {
                let until = self.clock.now_ms() + d.as_millis() as u64;
                self.cell().cooldown_until_ms.fetch_max(until, AcqRel);
                self.on_failure();
            }
        }
    }

    fn on_success(self: &Arc<Self>) {
        let cell = self.cell();
        cell.consecutive.store(0, Release);
        let _ = cell.rate.fetch_update(AcqRel, Acquire, |b| {
            Some((f64::from_bits(b) / 2.0).max(0.0).to_bits())
        });
        let w = self.word();
        if w.state == HALF_OPEN {
            cell.release_trial(w.generation, self.table.row());
            if cell.trial_success(w.generation) >= self.cfg.half_open_successes {
                self.transition(w, CircuitState::Closed);
            }
        }
    }

    fn on_failure(self: &Arc<Self>) {
        let cell = self.cell();
        let rate = cell
            .rate
            .fetch_update(AcqRel, Acquire, |b| {
                Some((f64::from_bits(b) * 0.9 + 0.1).to_bits())
            })
            .map(|old| f64::from_bits(old) * 0.9 + 0.1)
            .unwrap_or(1.0);
        let run = cell.consecutive.fetch_add(1, AcqRel) + 1;
        let w = self.word();
        match CircuitState::from_u8(w.state) {
            CircuitState::HalfOpen => {
                self.transition(w, CircuitState::Open);
            }
            CircuitState::Closed
                if rate > self.cfg.failure_rate_threshold
                    || run >= self.cfg.consecutive_failures =>
            {
                self.transition(w, CircuitState::Open);
            }
            _ => {}
        }
    }

    /// A health probe saw the provider answer: an open breaker moves to half-open early.
    /// A probe alone never opens a closed breaker, and never closes one either.
    pub fn probe_succeeded(self: &Arc<Self>) {
        let w = self.word();
        if w.state == OPEN {
            self.transition(w, CircuitState::HalfOpen);
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
            Breaker::new(
                c,
                Arc::new(move |f, t, here| {
                    if here {
                        l.lock().unwrap().push((f, t))
                    }
                }),
                ProviderLimiter::local().unwrap(),
                "p",
            ),
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
