//! The worker's Prometheus series (contract names) and the `/metrics` text.
//!
//! Every per-provider handle is created once at start-up and stored in the provider, so the
//! request path only touches atomics and never the `Family` map's lock.

use crate::breaker::CircuitState;
use crate::endpoint::{Endpoint, EndpointApi};
use crate::translate::Api;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ProviderLabel {
    provider: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TransitionLabels {
    provider: String,
    from: &'static str,
    to: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    provider: String,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TranslatedLabels {
    from: &'static str,
    to: &'static str,
}

/// The three translatable APIs, in the order that indexes `translated` (from * 3 + to).
const APIS: [Api; 3] = [Api::Chat, Api::Messages, Api::Responses];

fn api_index(a: Api) -> usize {
    APIS.iter()
        .position(|x| *x == a)
        .expect("every Api is listed")
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TokenLabels {
    client: String,
    provider: String,
    model: String,
    r#type: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CostLabels {
    client: String,
    provider: String,
    model: String,
}

/// The token and cost counters of one (client, provider, model), created at start-up.
#[derive(Debug, Clone)]
pub struct UsageSeries {
    /// input, output, cache_read, cache_write.
    tokens: [Counter; 4],
    cost: Counter<f64, std::sync::atomic::AtomicU64>,
}

impl UsageSeries {
    pub fn add(&self, t: &gateway::usage::Tokens, cost: Option<f64>) {
        for (c, n) in self
            .tokens
            .iter()
            .zip([t.input, t.output, t.cache_read, t.cache_write])
        {
            c.inc_by(n);
        }
        if let Some(usd) = cost {
            self.cost.inc_by(usd);
        }
    }
}

/// How one attempt at a provider ended; the `outcome` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Response headers 2xx/3xx and, for bodies, a clean end.
    Success,
    /// The provider answered 4xx: the request's fault, not the provider's.
    ClientError,
    /// The provider answered 5xx.
    ServerError,
    /// The provider answered 429 (or 503 with `Retry-After`): it asked us to back off.
    RateLimited,
    /// No connection could be made.
    ConnectError,
    /// Connect, first-byte or idle timeout.
    Timeout,
    /// The body broke after the headers.
    StreamError,
    /// The client went away first.
    Cancelled,
}

impl Outcome {
    const ALL: [Outcome; 8] = [
        Self::Success,
        Self::ClientError,
        Self::ServerError,
        Self::RateLimited,
        Self::ConnectError,
        Self::Timeout,
        Self::StreamError,
        Self::Cancelled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Success => "success",
            Self::ClientError => "client_error",
            Self::ServerError => "server_error",
            Self::RateLimited => "rate_limited",
            Self::ConnectError => "connect_error",
            Self::Timeout => "timeout",
            Self::StreamError => "stream_error",
            Self::Cancelled => "cancelled",
        }
    }

    /// Whether this outcome counts against the provider's availability.
    pub fn is_failure(self) -> bool {
        matches!(
            self,
            Self::ServerError
                | Self::RateLimited
                | Self::ConnectError
                | Self::Timeout
                | Self::StreamError
        )
    }
}

/// One provider's pre-created handles.
#[derive(Debug, Clone)]
pub struct ProviderMetrics {
    outcomes: [Counter; 8],
    pub latency: Histogram,
    /// `gateway_time_to_first_byte_seconds`: from the request's arrival at the worker to the
    /// first byte of the answer passed to the client.
    pub ttfb: Histogram,
    /// 0 closed, 1 open, 2 half-open; written by the breaker's transition hook.
    pub circuit_state: Gauge,
    /// `gateway_circuit_state_changes_total` for each legal edge, in `EDGES` order, created at
    /// start-up so that a transition touches atomics only, never the family's map lock.
    transitions: [Counter; 4],
    /// `gateway_translated_requests_total{from,to}` (shared by every provider), pre-created.
    translated: [Counter; 9],
}

/// The breaker's legal edges.
const EDGES: [(CircuitState, CircuitState); 4] = [
    (CircuitState::Closed, CircuitState::Open),
    (CircuitState::Open, CircuitState::HalfOpen),
    (CircuitState::HalfOpen, CircuitState::Closed),
    (CircuitState::HalfOpen, CircuitState::Open),
];

impl ProviderMetrics {
    pub fn count(&self, outcome: Outcome) {
        self.outcomes[outcome as usize].inc();
    }

    /// Records one breaker transition (the breaker's `TransitionHook`).
    pub fn transition(&self, from: CircuitState, to: CircuitState) {
        self.circuit_state.set(to as i64);
        if let Some(i) = EDGES.iter().position(|e| *e == (from, to)) {
            self.transitions[i].inc();
        }
    }

    /// Counts one request translated from the client's API to the provider's.
    pub fn translated(&self, from: Api, to: Api) {
        self.translated[api_index(from) * 3 + api_index(to)].inc();
    }
}

/// The registry and its families.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    requests: Family<OutcomeLabels, Counter>,
    latency: Family<ProviderLabel, Histogram, fn() -> Histogram>,
    ttfb: Family<ProviderLabel, Histogram, fn() -> Histogram>,
    circuit: Family<ProviderLabel, Gauge>,
    changes: Family<TransitionLabels, Counter>,
    translated: Family<TranslatedLabels, Counter>,
    tokens: Family<TokenLabels, Counter>,
    cost: Family<CostLabels, Counter<f64, std::sync::atomic::AtomicU64>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let requests = Family::<OutcomeLabels, Counter>::default();
        let latency = Family::new_with_constructor(latency_histogram as fn() -> Histogram);
        let circuit = Family::<ProviderLabel, Gauge>::default();
        let ttfb = Family::new_with_constructor(latency_histogram as fn() -> Histogram);
        registry.register(
            "gateway_time_to_first_byte_seconds",
            "Time from a request's arrival at the worker to the first byte of its answer",
            ttfb.clone(),
        );
        registry.register(
            "gateway_provider_requests",
            "Attempts at each provider by outcome",
            requests.clone(),
        );
        registry.register(
            "gateway_provider_latency_seconds",
            "Time from sending a request to a provider until its response headers",
            latency.clone(),
        );
        registry.register(
            "gateway_circuit_state",
            "Circuit breaker state per provider (0 closed, 1 open, 2 half-open)",
            circuit.clone(),
        );
        let changes = Family::<TransitionLabels, Counter>::default();
        registry.register(
            "gateway_circuit_state_changes",
            "Circuit breaker transitions per provider",
            changes.clone(),
        );
        let translated = Family::<TranslatedLabels, Counter>::default();
        registry.register(
            "gateway_translated_requests",
            "Requests translated from the client's API (from) to the provider's (to)",
            translated.clone(),
        );
        let tokens = Family::<TokenLabels, Counter>::default();
        registry.register(
            "gateway_tokens",
            "Tokens used, by client, provider, model and type (input, output, cache_read, cache_write)",
            tokens.clone(),
        );
        let cost = Family::<CostLabels, Counter<f64, std::sync::atomic::AtomicU64>>::default();
        registry.register(
            "gateway_cost_usd",
            "Cost in USD from the providers' prices (requests with no price are not counted)",
            cost.clone(),
        );
        Self {
            registry,
            requests,
            latency,
            ttfb,
            circuit,
            changes,
            translated,
            tokens,
            cost,
        }
    }

    /// Creates (once, at start-up) the usage series of one client, provider and model.
    pub fn usage_series(&self, client: &str, provider: &str, model: &str) -> UsageSeries {
        let tokens = ["input", "output", "cache_read", "cache_write"].map(|t| {
            self.tokens
                .get_or_create(&TokenLabels {
                    client: client.to_string(),
                    provider: provider.to_string(),
                    model: model.to_string(),
                    r#type: t,
                })
                .clone()
        });
        let cost = self
            .cost
            .get_or_create(&CostLabels {
                client: client.to_string(),
                provider: provider.to_string(),
                model: model.to_string(),
            })
            .clone();
        UsageSeries { tokens, cost }
    }

    /// Creates (once, at start-up) the series of `provider`.
    pub fn provider(&self, provider: &str) -> ProviderMetrics {
        let outcomes = Outcome::ALL.map(|o| {
            self.requests
                .get_or_create(&OutcomeLabels {
                    provider: provider.to_string(),
                    outcome: o.as_str(),
                })
                .clone()
        });
        let label = ProviderLabel {
            provider: provider.to_string(),
        };
        ProviderMetrics {
            outcomes,
            latency: self.latency.get_or_create(&label).clone(),
            ttfb: self.ttfb.get_or_create(&label).clone(),
            circuit_state: self.circuit.get_or_create(&label).clone(),
            transitions: EDGES.map(|(from, to)| {
                self.changes
                    .get_or_create(&TransitionLabels {
                        provider: provider.to_string(),
                        from: from.as_str(),
                        to: to.as_str(),
                    })
                    .clone()
            }),
            translated: std::array::from_fn(|i| {
                let name = |a: Api| Endpoint::of_api(a).api_name();
                if i / 3 == i % 3 {
                    // Native: never counted, so not exposed as a series.
                    return Counter::default();
                }
                self.translated
                    .get_or_create(&TranslatedLabels {
                        from: name(APIS[i / 3]),
                        to: name(APIS[i % 3]),
                    })
                    .clone()
            }),
        }
    }

    /// The text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::with_capacity(4096);
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        // This process's trace exporter (`gateway::telemetry`), before the end marker.
        if let Some(t) = gateway::telemetry::metrics_text() {
            let end = out.strip_suffix("# EOF\n").map_or(out.len(), str::len);
            out.insert_str(end, &t);
        }
        out
    }
}

/// Buckets from 5ms to ~41s: provider latencies span local mocks to slow reasoning models.
fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.005, 2.0, 14))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contract_names_are_exposed() {
        let m = Metrics::new();
        let p = m.provider("demo");
        p.count(Outcome::Success);
        p.latency.observe(0.01);
        let text = m.encode();
        assert!(
            text.contains(
                "gateway_provider_requests_total{provider=\"demo\",outcome=\"success\"} 1"
            ),
            "{text}"
        );
        assert!(
            text.contains("gateway_provider_latency_seconds_bucket{"),
            "{text}"
        );
        p.ttfb.observe(0.02);
        let text = m.encode();
        assert!(
            text.contains("gateway_time_to_first_byte_seconds_count{provider=\"demo\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("gateway_circuit_state{provider=\"demo\"} 0"),
            "{text}"
        );
        let u = m.usage_series("desk", "demo", "m");
        let t = gateway::usage::Tokens {
            input: 3,
            output: 4,
            cache_read: 0,
            cache_write: 1,
        };
        u.add(&t, Some(0.5));
        u.add(&t, None);
        let text = m.encode();
        for want in [
            "gateway_tokens_total{client=\"desk\",provider=\"demo\",model=\"m\",type=\"input\"} 6",
            "gateway_tokens_total{client=\"desk\",provider=\"demo\",model=\"m\",type=\"cache_write\"} 2",
            "gateway_cost_usd_total{client=\"desk\",provider=\"demo\",model=\"m\"} 0.5",
        ] {
            assert!(text.contains(want), "{want} in {text}");
        }
        p.transition(CircuitState::Closed, CircuitState::Open);
        p.translated(Api::Messages, Api::Chat);
        let text = m.encode();
        assert!(
            text.contains("gateway_translated_requests_total{from=\"messages\",to=\"chat\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("gateway_circuit_state{provider=\"demo\"} 1"),
            "{text}"
        );
        assert!(
            text.contains(
                "gateway_circuit_state_changes_total{provider=\"demo\",from=\"closed\",to=\"open\"} 1"
            ),
            "{text}"
        );
    }
}
