//! The supervisor's own Prometheus series (contract names). One `SupervisorMetrics` is created at
//! start and shared by the pool (worker states, restarts, in-flight) and the front (requests,
//! durations, queue depth, models cache). Updating a series is an atomic operation; only
//! rendering `/metrics` walks the registry.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabel {
    pub state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WorkerLabel {
    pub worker: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RestartLabels {
    pub worker: String,
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub path: String,
    pub code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LimitLabels {
    pub client: String,
    pub limit: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabel {
    pub outcome: String,
}

/// Every supervisor series; cheap to clone (each metric is an `Arc` inside).
#[derive(Clone)]
pub struct SupervisorMetrics {
    pub workers: Family<StateLabel, Gauge>,
    /// Unplanned restarts (failure reasons only).
    pub worker_restarts: Family<RestartLabels, Counter>,
    /// Planned replacements (reload, recycling, operator restart).
    pub worker_replacements: Family<RestartLabels, Counter>,
    pub requests: Family<RequestLabels, Counter>,
    pub request_duration: Histogram,
    pub queue_depth: Gauge,
    pub worker_inflight: Family<WorkerLabel, Gauge>,
    pub models_cache_refreshes: Family<OutcomeLabel, Counter>,
    /// Usage records by outcome: written, dropped, failed (`crate::usage`).
    pub usage_records: Family<OutcomeLabel, Counter>,
    /// Requests refused by a `[[clients]]` limit (rpm, tpm, daily_tokens, monthly_usd).
    pub client_limited: Family<LimitLabels, Counter>,
    /// 1 while the `[shared]` Redis answers, 0 while not; registered only with `[shared]`.
    pub shared_backend_up: Gauge,
}

impl SupervisorMetrics {
    /// Creates the series and registers them in a new registry.
    pub fn new() -> (Self, Registry) {
        let m = Self {
            workers: Family::default(),
            worker_restarts: Family::default(),
            worker_replacements: Family::default(),
            requests: Family::default(),
            request_duration: Histogram::new(exponential_buckets(0.0005, 2.0, 16)),
            queue_depth: Gauge::default(),
            worker_inflight: Family::default(),
            models_cache_refreshes: Family::default(),
            usage_records: Family::default(),
            client_limited: Family::default(),
            shared_backend_up: Gauge::default(),
        };
        let mut r = Registry::default();
        r.register("gateway_workers", "Workers by state", m.workers.clone());
        r.register(
            "gateway_worker_restarts",
            "Unplanned worker restarts (exit, heartbeat, startup) by slot and reason",
            m.worker_restarts.clone(),
        );
        r.register(
            "gateway_worker_replacements",
            "Planned worker replacements (reload, rss, requests, manual) by slot and reason",
            m.worker_replacements.clone(),
        );
        r.register(
            "gateway_requests",
            "Front listener requests by path and status",
            m.requests.clone(),
        );
        r.register(
            "gateway_request_duration_seconds",
            "Front listener request duration until the response body ends",
            m.request_duration.clone(),
        );
        r.register(
            "gateway_queue_depth",
            "Requests waiting for a worker with room",
            m.queue_depth.clone(),
        );
        r.register(
            "gateway_worker_inflight",
            "Requests in flight per worker",
            m.worker_inflight.clone(),
        );
        r.register(
            "gateway_models_cache_refreshes",
            "Model list refreshes by outcome",
            m.models_cache_refreshes.clone(),
        );
        r.register(
            "gateway_usage_records",
            "Usage records by outcome (written to the ledger, dropped, failed)",
            m.usage_records.clone(),
        );
        r.register(
            "gateway_client_limited",
            "Requests refused with 429 by a client's rpm, tpm, daily_tokens or monthly_usd limit",
            m.client_limited.clone(),
        );
        (m, r)
    }

    /// Adds `gateway_shared_backend_up` (with `[shared] backend = "redis"` only).
    pub fn register_shared(&self, r: &mut Registry) {
        r.register(
            "gateway_shared_backend_up",
            "1 while the shared backend (Redis) answers, 0 while this host falls back",
            self.shared_backend_up.clone(),
        );
    }
}
