//! Per-request bookkeeping that must stay cheap: the `gateway_requests_total{path,code}` counter
//! handles, the request meters every response body holds, and request ids.
//!
//! `Family::get_or_create` takes a read lock and needs owned label strings; doing that per request
//! would put a lock and two allocations on the hot path. The route labels form a fixed set and
//! almost every status is one of a dozen, so each (route, status) counter handle is looked up once
//! and kept in a `OnceLock` table; rare statuses fall back to the family.

use crate::dashboard::tally::Tally;
use crate::metrics::{RequestLabels, SupervisorMetrics};
use http::HeaderValue;
use prometheus_client::metrics::counter::Counter;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

/// Every `path` label the front uses: the routes, and `other` for everything unknown (so a
/// scanner cannot grow the series without bound).
pub const ROUTE_LABELS: &[&str] = &[
    "/v1/chat/completions",
    "/v1/completions",
    "/v1/embeddings",
    "/v1/responses",
    "/v1/messages",
    "/v1/messages/count_tokens",
    "/v1/health",
    "/v1/health/models",
    "/v1/health/models/{model}",
    "/v1/health/performance",
    "/v1/models",
    "/v1/models/{id}",
    "/healthz",
    "/readyz",
    "/metrics",
    "/dashboard",
    "/dashboard/snapshot",
    "/dashboard/events",
    "other",
];

/// The statuses with a cached handle; 499 = the client went away before any response.
const CODES: [u16; 14] = [
    200, 204, 400, 401, 403, 404, 413, 421, 429, 499, 500, 502, 503, 504,
];

/// Cached counter handles, `[route][code]`.
pub struct RequestCounters {
    table: Vec<[OnceLock<Counter>; CODES.len()]>,
}

impl Default for RequestCounters {
    fn default() -> Self {
        Self {
            table: ROUTE_LABELS.iter().map(|_| Default::default()).collect(),
        }
    }
}

impl RequestCounters {
    /// Counts one request of `route` (one of [`ROUTE_LABELS`]) answered with `code`.
    pub fn inc(&self, m: &SupervisorMetrics, route: &'static str, code: u16) {
        let labels = || RequestLabels {
            path: route.to_string(),
            code: code.to_string(),
        };
        let r = ROUTE_LABELS.iter().position(|l| *l == route);
        let c = CODES.iter().position(|c| *c == code);
        match (r, c) {
            (Some(r), Some(c)) => {
                self.table[r][c]
                    .get_or_init(|| m.requests.get_or_create(&labels()).clone())
                    .inc();
            }
            _ => {
                m.requests.get_or_create(&labels()).inc();
            }
        }
    }
}

/// What counting one finished request needs: the counter handles and the duration histogram.
/// Every response body holds this (through its `RequestRecord`), not the whole front state.
pub struct RequestMeters {
    counters: RequestCounters,
    metrics: SupervisorMetrics,
    /// The dashboard's counters (`crate::dashboard::tally`).
    tally: Arc<Tally>,
    /// Where each finished request's access line goes.
    pub access: crate::usage::access::AccessLog,
}

impl RequestMeters {
    pub fn new(
        metrics: SupervisorMetrics,
        tally: Arc<Tally>,
        access: crate::usage::access::AccessLog,
    ) -> Self {
        Self {
            counters: RequestCounters::default(),
            metrics,
            tally,
            access,
        }
    }

    /// Counts one request of `route` answered with `code` after `elapsed` (`ttfb`: its first
    /// byte, when a worker's body was relayed).
    pub fn finished(
        &self,
        route: &'static str,
        code: u16,
        elapsed: Duration,
        ttfb: Option<Duration>,
    ) {
        self.counters.inc(&self.metrics, route, code);
        self.metrics.request_duration.observe(elapsed.as_secs_f64());
        self.tally.finished(route, code, elapsed, ttfb);
    }
}

/// Request ids: a random per-process prefix and a counter; unique enough to join log lines, and
/// much cheaper than a UUID.
pub struct RequestIds {
    prefix: u32,
    next: AtomicU64,
}

impl Default for RequestIds {
    fn default() -> Self {
        Self {
            prefix: fastrand::u32(..),
            next: AtomicU64::new(1),
        }
    }
}

impl RequestIds {
    /// `PREFIX-N` in lowercase hex, formatted into a stack buffer: `format!` into a `String`
    /// and a copy into the header value were about 1,300 instructions per request.
    pub fn next(&self) -> HeaderValue {
        use std::io::Write as _;
        let n = self.next.fetch_add(1, Relaxed);
        const LEN: usize = 8 + 1 + 16;
        let mut buf = [0u8; LEN];
        let mut rest = &mut buf[..];
        write!(rest, "{:08x}-{n:x}", self.prefix).expect("25 bytes hold two hex numbers");
        let len = LEN - rest.len();
        HeaderValue::from_bytes(&buf[..len]).expect("hex digits and '-' are header bytes")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every forwarded inference path has its row (the others are counted slower, per call).
    #[test]
    fn every_endpoint_is_a_route_label() {
        for e in gateway::endpoint::Endpoint::ALL {
            assert!(ROUTE_LABELS.contains(&e.path()), "{}", e.path());
        }
    }

    #[test]
    fn request_ids_are_the_prefix_and_the_count_in_hex() {
        let ids = RequestIds {
            prefix: 0x0a1b2c3d,
            next: AtomicU64::new(0),
        };
        for n in [0u64, 1, 0xf, 0x10, 0xdead_beef, u64::MAX] {
            ids.next.store(n, Relaxed);
            assert_eq!(ids.next(), format!("0a1b2c3d-{n:x}").as_str());
        }
    }

    #[test]
    fn counts_through_the_cache_and_the_family() {
        let (m, _r) = SupervisorMetrics::new();
        let c = RequestCounters::default();
        c.inc(&m, "/v1/models", 200);
        c.inc(&m, "/v1/models", 200);
        c.inc(&m, "other", 418);
        let get = |p: &str, code: &str| {
            m.requests
                .get_or_create(&RequestLabels {
                    path: p.into(),
                    code: code.into(),
                })
                .get()
        };
        assert_eq!(get("/v1/models", "200"), 2);
        assert_eq!(get("other", "418"), 1);
    }

    #[test]
    fn ids_are_unique() {
        let ids = RequestIds::default();
        assert_ne!(ids.next(), ids.next());
    }
}
