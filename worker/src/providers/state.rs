//! Per-provider live statistics, kept in atomics so that routing reads them without a lock.
//!
//! Everything here is updated by the proxy when an attempt starts and when its outcome is
//! known, and read by `routing::strategy` on every request. The circuit breaker and 429
//! cool-downs live in `crate::breaker` (one per provider, `Provider::breaker`); the pool-wide
//! concurrency permits in `gateway::provider_permits`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Weight of the newest observation in the moving averages. 0.2 reacts within ~5 requests but
/// one slow outlier does not flip the ranking.
const EWMA_ALPHA: f64 = 0.2;

/// Live statistics of one provider inside this worker.
#[derive(Debug, Default)]
pub struct ProviderState {
    /// Attempts in flight: from sending the request until the response body ends or is dropped.
    pub inflight: AtomicU64,
    /// Moving average of the time to response headers, in microseconds; 0 = never measured,
    /// which the latency strategy treats as "try it", so a new provider gets explored.
    pub ewma_latency_us: AtomicU64,
    /// Moving average of failures (0.0..=1.0) stored as `f64` bits.
    failure_rate_bits: AtomicU64,
    /// Attempts whose outcome was recorded.
    pub attempts: AtomicU64,
}

impl ProviderState {
    /// The moving failure rate in `0.0..=1.0`.
    pub fn failure_rate(&self) -> f64 {
        f64::from_bits(self.failure_rate_bits.load(Ordering::Relaxed))
    }

    /// Folds one time-to-headers measurement into the latency average.
    pub fn record_latency(&self, d: Duration) {
        let sample = d.as_micros().min(u64::MAX as u128) as u64;
        // A racing update may be lost; the average stays an average, which is all routing needs,
        // and a CAS loop on the request path would cost more than it buys.
        let old = self.ewma_latency_us.load(Ordering::Relaxed);
        let new = if old == 0 {
            sample.max(1)
        } else {
            ((1.0 - EWMA_ALPHA) * old as f64 + EWMA_ALPHA * sample as f64).max(1.0) as u64
        };
        self.ewma_latency_us.store(new, Ordering::Relaxed);
    }

    /// Folds one outcome into the failure rate.
    pub fn record_outcome(&self, failed: bool) {
        self.attempts.fetch_add(1, Ordering::Relaxed);
        let old = self.failure_rate();
        let x = if failed { 1.0 } else { 0.0 };
        let new = (1.0 - EWMA_ALPHA) * old + EWMA_ALPHA * x;
        self.failure_rate_bits
            .store(new.to_bits(), Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn averages_move_towards_samples() {
        let s = ProviderState::default();
        assert_eq!(s.ewma_latency_us.load(Ordering::Relaxed), 0);
        s.record_latency(Duration::from_millis(10));
        assert_eq!(s.ewma_latency_us.load(Ordering::Relaxed), 10_000);
        s.record_latency(Duration::from_millis(20));
        assert_eq!(s.ewma_latency_us.load(Ordering::Relaxed), 12_000);
        assert_eq!(s.failure_rate(), 0.0);
        s.record_outcome(true);
        assert!((s.failure_rate() - 0.2).abs() < 1e-9);
        s.record_outcome(false);
        assert!((s.failure_rate() - 0.16).abs() < 1e-9);
    }
}
