//! Cheap counters of finished `/v1/*` requests for the dashboard: totals, 5xx errors, and
//! latency / time-to-first-byte histograms in power-of-two buckets. All atomics, written once
//! per request from `RequestRecord`'s drop; no lock, no allocation on the request path.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

/// Bucket `i` holds durations below `BASE_US << i` (the last one everything above).
pub const BUCKETS: usize = 24;
const BASE_US: u64 = 250;

/// A histogram of durations in [`BUCKETS`] power-of-two buckets.
#[derive(Default)]
pub struct Buckets([AtomicU64; BUCKETS]);

impl Buckets {
    pub fn observe(&self, d: Duration) {
        let us = d.as_micros() as u64;
        let i = (0..BUCKETS - 1)
            .find(|i| us < BASE_US << i)
            .unwrap_or(BUCKETS - 1);
        self.0[i].fetch_add(1, Relaxed);
    }

    pub fn counts(&self) -> Counts {
        Counts(std::array::from_fn(|i| self.0[i].load(Relaxed)))
    }
}

/// A copy of a histogram's counts; subtracting two gives the histogram of the interval between.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts(pub [u64; BUCKETS]);

impl Counts {
    pub fn since(&self, earlier: &Counts) -> Counts {
        Counts(std::array::from_fn(|i| {
            self.0[i].saturating_sub(earlier.0[i])
        }))
    }

    /// The `q` quantile in milliseconds (the upper bound of its bucket), `None` when empty.
    pub fn quantile_ms(&self, q: f64) -> Option<f64> {
        let total: u64 = self.0.iter().sum();
        if total == 0 {
            return None;
        }
        let rank = ((total as f64) * q).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (i, n) in self.0.iter().enumerate() {
            seen += n;
            if seen >= rank {
                return Some((BASE_US << i) as f64 / 1000.0);
            }
        }
        None
    }
}

/// The request counters the dashboard samples.
#[derive(Default)]
pub struct Tally {
    pub requests: AtomicU64,
    /// Requests answered 5xx (the gateway's or an upstream's failure).
    pub errors: AtomicU64,
    pub latency: Buckets,
    pub ttfb: Buckets,
}

impl Tally {
    /// Counts one finished request of `route`; only the API routes count, so the dashboard
    /// watching itself (or probes of `/healthz`) does not show up as traffic.
    pub fn finished(&self, route: &str, status: u16, elapsed: Duration, ttfb: Option<Duration>) {
        if !route.starts_with("/v1/") {
            return;
        }
        self.requests.fetch_add(1, Relaxed);
        if status >= 500 {
            self.errors.fetch_add(1, Relaxed);
        }
        self.latency.observe(elapsed);
        if let Some(t) = ttfb {
            self.ttfb.observe(t);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_over_an_interval() {
        let t = Tally::default();
        t.finished("/healthz", 200, Duration::from_secs(9), None);
        assert_eq!(t.requests.load(Relaxed), 0, "only API routes count");
        let before = t.latency.counts();
        for _ in 0..98 {
            t.finished("/v1/chat/completions", 200, Duration::from_millis(1), None);
        }
        t.finished(
            "/v1/chat/completions",
            502,
            Duration::from_millis(100),
            None,
        );
        t.finished(
            "/v1/chat/completions",
            502,
            Duration::from_millis(100),
            None,
        );
        let d = t.latency.counts().since(&before);
        assert_eq!(
            d.quantile_ms(0.5),
            Some(2.0),
            "1 ms falls below the 2 ms bound"
        );
        assert_eq!(d.quantile_ms(0.99), Some(128.0));
        assert_eq!(t.errors.load(Relaxed), 2);
        assert_eq!(Counts::default().quantile_ms(0.5), None);
    }
}
