//! OpenTelemetry traces over OTLP/HTTP (`[telemetry]`), for the supervisor's front and for each
//! worker: one process-wide exporter, and the request span both request paths hold.
//!
//! Off (`otlp_endpoint = ""`) costs nothing: [`install`] builds no exporter and every span
//! constructor returns `None` after one atomic load, so no span, attribute or header is built.
//!
//! On, each process exports its own spans: the SDK's batch span processor (a bounded queue; a
//! full queue drops spans, it never waits) on its own thread, which wakes only when a batch is
//! full or its delay passed, never once per span (the async-runtime variant woke its task for
//! every span: about 10 % more CPU per request in `bench/otel.sh`); each batch goes out through
//! `opentelemetry-otlp`'s protobuf-over-HTTP exporter on a hyper client, run as a task on the
//! process's tokio runtime. An export that fails
//! (a dead collector) only counts in [`export_failures`] (`gateway_otlp_export_failures_total`).
//!
//! One trace per request: the front's span (kind SERVER) continues the client's W3C
//! `traceparent` when there is one, and its own context goes to the worker in `traceparent` on
//! the private hop ([`RequestSpan::inject`]); the worker's span (kind CLIENT, as the GenAI
//! conventions have it for a call to a model provider) is its child. A [`RequestSpan`] ends
//! when it is dropped, which both processes do when the response body ends (stream end, not
//! first byte); what the request learnt on the way is gathered in its [`Facts`] (atomics, no
//! lock), which the worker's usage observer fills in from another owner.

use http::{HeaderMap, HeaderName, HeaderValue};
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::{Span as _, SpanKind, Status, TraceContextExt, Tracer as _};
use opentelemetry::{Context, KeyValue};
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{SdkTracer, SdkTracerProvider, SpanData, SpanExporter};
use opentelemetry_sdk::Resource;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use crate::config::TelemetryConfig;

/// The process's tracer, once [`install`] has run with an endpoint.
static TRACER: OnceLock<SdkTracer> = OnceLock::new();
/// Keeps the provider (and so its batch processor) alive for the process's life.
static PROVIDER: OnceLock<SdkTracerProvider> = OnceLock::new();
/// Exports that failed (collector down, refused, timed out).
static EXPORT_FAILURES: AtomicU64 = AtomicU64::new(0);

/// Spans waiting for export at most; past that new spans are dropped, never waited for.
const MAX_QUEUE: usize = 2048;
/// How long one export may take before it counts as failed.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(5);

/// The W3C trace-context header, continued from the client and sent on the front-worker hop.
pub const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
pub const TRACESTATE: HeaderName = HeaderName::from_static("tracestate");

/// Why telemetry could not start.
#[derive(Debug, thiserror::Error)]
#[error("telemetry.otlp_endpoint `{endpoint}`: {reason}")]
pub struct InstallError {
    endpoint: String,
    reason: String,
}

/// Starts this process's exporter when `cfg.otlp_endpoint` is set; `role` (`front`, `worker`)
/// goes into the resource. Must run inside the tokio runtime that will carry the exports. A
/// second call is ignored (the first configuration stays until the process exits).
pub fn install(cfg: &TelemetryConfig, role: &'static str) -> Result<bool, InstallError> {
    let endpoint = cfg.otlp_endpoint.trim();
    if endpoint.is_empty() || TRACER.get().is_some() {
        return Ok(TRACER.get().is_some());
    }
    let url = format!("{}/v1/traces", endpoint.trim_end_matches('/'));
    let err = |reason: String| InstallError {
        endpoint: endpoint.to_string(),
        reason,
    };
    use opentelemetry_otlp::WithExportConfig;
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
        .with_endpoint(url)
        .with_timeout(EXPORT_TIMEOUT)
        .build()
        .map_err(|e| err(e.to_string()))?;
    let rt = tokio::runtime::Handle::try_current()
        .map_err(|_| err("telemetry needs the tokio runtime".into()))?;
    let batch = opentelemetry_sdk::trace::BatchConfigBuilder::default()
        .with_max_queue_size(MAX_QUEUE)
        .build();
    let counting = Counting {
        inner: Arc::new(exporter),
        rt,
    };
    let processor = opentelemetry_sdk::trace::BatchSpanProcessor::builder(counting)
        .with_batch_config(batch)
        .build();
    let resource = Resource::builder()
        .with_service_name(cfg.service_name.clone())
        .with_attribute(KeyValue::new("gateway.process", role))
        .build();
    let provider = SdkTracerProvider::builder()
        .with_span_processor(processor)
        .with_resource(resource)
        .build();
    let tracer = opentelemetry::trace::TracerProvider::tracer(&provider, "gateway-supervisor");
    let _ = PROVIDER.set(provider);
    let _ = TRACER.set(tracer);
    Ok(true)
}

/// How long a graceful stop waits for the spans still queued to go out.
pub const FLUSH_AT_STOP: Duration = Duration::from_secs(1);

/// Exports the spans still queued, waiting at most `bound`; the graceful stop of the front and
/// of each worker calls it after its last request ended, so a request answered just before a
/// SIGTERM is not lost with the batch (which would otherwise wait up to its 5 s delay). Does
/// nothing when telemetry is off. The SDK's flush blocks its caller, so it runs on a thread of
/// its own, which ends when the processor's thread answered (after at most one export's
/// timeout); a collector slower than `bound` only costs that export.
pub async fn flush(bound: Duration) {
    let Some(provider) = PROVIDER.get() else {
        return;
    };
    let provider = provider.clone();
    let (tx, rx) = tokio::sync::oneshot::channel();
    let spawned = std::thread::Builder::new()
        .name("otlp-flush".into())
        .spawn(move || {
            let _ = tx.send(provider.force_flush());
        });
    if spawned.is_err() {
        return;
    }
    match tokio::time::timeout(bound, rx).await {
        Ok(Ok(Ok(()))) => {}
        Ok(Ok(Err(e))) => tracing::warn!("telemetry: flushing spans at stop: {e}"),
        Ok(Err(_)) => {}
        Err(_) => tracing::warn!(
            "telemetry: spans not flushed within {} ms at stop",
            bound.as_millis()
        ),
    }
}

/// Exports that failed since the process started.
pub fn export_failures() -> u64 {
    EXPORT_FAILURES.load(Ordering::Relaxed)
}

/// `gateway_otlp_export_failures_total` as an OpenMetrics family, when telemetry is on (each
/// process reports its own exporter's; the front's page labels the workers' with `worker`).
pub fn metrics_text() -> Option<String> {
    enabled().then(|| {
        format!(
            "# HELP gateway_otlp_export_failures OTLP trace exports that failed (collector down, refused, timed out).\n\
             # TYPE gateway_otlp_export_failures counter\n\
             gateway_otlp_export_failures_total {}\n",
            export_failures()
        )
    })
}

/// Whether spans are being made.
pub fn enabled() -> bool {
    TRACER.get().is_some()
}

/// `gen_ai.operation.name` of an inference path; `None` for paths that get no span.
pub fn operation(path: &str) -> Option<&'static str> {
    Some(match path {
        "/v1/chat/completions" | "/v1/responses" | "/v1/messages" => "chat",
        "/v1/completions" => "text_completion",
        "/v1/embeddings" => "embeddings",
        "/v1/messages/count_tokens" => "count_tokens",
        _ => return None,
    })
}

/// The OTLP exporter, counting its failures. The batch processor's thread calls `export` and
/// blocks on it; the HTTP request itself runs as a task on the process's runtime (`rt`), where
/// the hyper client's connections live.
#[derive(Debug)]
struct Counting {
    inner: Arc<opentelemetry_otlp::SpanExporter>,
    rt: tokio::runtime::Handle,
}

impl SpanExporter for Counting {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let inner = self.inner.clone();
        let r = match self
            .rt
            .spawn(async move { inner.export(batch).await })
            .await
        {
            Ok(r) => r,
            Err(e) => Err(opentelemetry_sdk::error::OTelSdkError::InternalFailure(
                format!("export task: {e}"),
            )),
        };
        if r.is_err() {
            EXPORT_FAILURES.fetch_add(1, Ordering::Relaxed);
        }
        r
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &Resource) {
        // Called while the provider is built, before any export holds a clone.
        if let Some(e) = Arc::get_mut(&mut self.inner) {
            e.set_resource(resource);
        }
    }
}

/// What a request learnt on its way, set by whoever learnt it and put on the span at its end.
/// Atomics and write-once cells: the worker's usage observer and its response body are
/// different owners, and the request path takes no lock.
#[derive(Debug, Default)]
pub struct Facts {
    provider: OnceLock<String>,
    response_model: OnceLock<String>,
    /// `u64::MAX` = unknown.
    input_tokens: AtomicU64,
    output_tokens: AtomicU64,
    status: AtomicU32,
    attempts: AtomicU32,
    /// `gateway.worker.id` + 1; 0 = none.
    worker: AtomicU64,
    translated: OnceLock<String>,
    error: OnceLock<String>,
    has_tokens: AtomicBool,
}

impl Facts {
    pub fn provider(&self, name: &str) {
        let _ = self.provider.set(name.to_string());
    }
    pub fn response_model(&self, model: &str) {
        let _ = self.response_model.set(model.to_string());
    }
    pub fn tokens(&self, input: u64, output: u64) {
        self.input_tokens.store(input, Ordering::Relaxed);
        self.output_tokens.store(output, Ordering::Relaxed);
        self.has_tokens.store(true, Ordering::Relaxed);
    }
    pub fn status(&self, status: u16) {
        self.status.store(status.into(), Ordering::Relaxed);
    }
    pub fn attempts(&self, n: u32) {
        self.attempts.store(n, Ordering::Relaxed);
    }
    pub fn worker(&self, id: usize) {
        self.worker.store(id as u64 + 1, Ordering::Relaxed);
    }
    /// `FROM->TO`, when the request was translated.
    pub fn translated(&self, how: &str) {
        let _ = self.translated.set(how.to_string());
    }
    /// The request failed after its head (a broken stream): the span's status is Error.
    pub fn error(&self, msg: &str) {
        let _ = self.error.set(msg.to_string());
    }

    fn attributes(&self) -> Vec<KeyValue> {
        let mut a = Vec::with_capacity(9);
        if let Some(p) = self.provider.get() {
            a.push(KeyValue::new("gen_ai.provider.name", p.clone()));
        }
        if let Some(m) = self.response_model.get() {
            a.push(KeyValue::new("gen_ai.response.model", m.clone()));
        }
        if self.has_tokens.load(Ordering::Relaxed) {
            let n = |v: &AtomicU64| v.load(Ordering::Relaxed) as i64;
            a.push(KeyValue::new(
                "gen_ai.usage.input_tokens",
                n(&self.input_tokens),
            ));
            a.push(KeyValue::new(
                "gen_ai.usage.output_tokens",
                n(&self.output_tokens),
            ));
        }
        match self.status.load(Ordering::Relaxed) {
            0 => {}
            s => a.push(KeyValue::new("http.response.status_code", i64::from(s))),
        }
        match self.attempts.load(Ordering::Relaxed) {
            0 => {}
            n => a.push(KeyValue::new("gateway.attempts", i64::from(n))),
        }
        match self.worker.load(Ordering::Relaxed) {
            0 => {}
            w => a.push(KeyValue::new("gateway.worker.id", w as i64 - 1)),
        }
        let translated = self.translated.get();
        a.push(KeyValue::new("gateway.translated", translated.is_some()));
        if let Some(t) = translated {
            a.push(KeyValue::new("gateway.translation", t.clone()));
        }
        a
    }
}

/// One request's span in this process; ends (and goes to the exporter's queue) when dropped.
pub struct RequestSpan {
    span: opentelemetry_sdk::trace::Span,
    facts: Arc<Facts>,
}

impl std::fmt::Debug for RequestSpan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RequestSpan").finish_non_exhaustive()
    }
}

impl RequestSpan {
    /// The front's span for a request to `path` (a SERVER span), continuing the client's
    /// `traceparent` in `headers` if any; `None` when telemetry is off or the path is not an
    /// inference endpoint.
    pub fn front(headers: &HeaderMap, path: &str, model: &str) -> Option<Self> {
        Self::start(headers, path, model, SpanKind::Server)
    }

    /// The worker's span, the child of the front's (from the hop's `traceparent`).
    pub fn worker(headers: &HeaderMap, path: &str, model: &str) -> Option<Self> {
        Self::start(headers, path, model, SpanKind::Client)
    }

    fn start(headers: &HeaderMap, path: &str, model: &str, kind: SpanKind) -> Option<Self> {
        let tracer = TRACER.get()?;
        let op = operation(path)?;
        let parent = TraceContextPropagator::new().extract(&Headers(headers));
        let span = tracer
            .span_builder(format!("{op} {model}"))
            .with_kind(kind)
            .with_attributes([
                KeyValue::new("gen_ai.operation.name", op),
                KeyValue::new("gen_ai.request.model", model.to_string()),
                KeyValue::new("url.path", path.to_string()),
            ])
            .start_with_context(tracer, &parent);
        Some(Self {
            span,
            facts: Arc::default(),
        })
    }

    /// Sets `traceparent` (and `tracestate`) in `headers` to this span's context, replacing any
    /// the client sent: the next hop's span is this one's child.
    pub fn inject(&self, headers: &mut HeaderMap) {
        headers.remove(TRACEPARENT);
        headers.remove(TRACESTATE);
        let cx = Context::new().with_remote_span_context(self.span.span_context().clone());
        TraceContextPropagator::new().inject_context(&cx, &mut HeadersMut(headers));
    }

    /// What the request learns on its way, for the span's attributes at its end.
    pub fn facts(&self) -> &Arc<Facts> {
        &self.facts
    }
}

impl Drop for RequestSpan {
    fn drop(&mut self) {
        self.span.set_attributes(self.facts.attributes());
        if let Some(e) = self.facts.error.get() {
            self.span.set_status(Status::error(e.clone()));
        }
        self.span.end();
    }
}

struct Headers<'a>(&'a HeaderMap);

impl Extractor for Headers<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }
    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(HeaderName::as_str).collect()
    }
}

struct HeadersMut<'a>(&'a mut HeaderMap);

impl Injector for HeadersMut<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(k), Ok(v)) = (HeaderName::try_from(key), HeaderValue::try_from(value)) {
            self.0.insert(k, v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn off_builds_nothing() {
        let h = HeaderMap::new();
        assert!(!enabled());
        assert!(RequestSpan::front(&h, "/v1/chat/completions", "m").is_none());
        assert_eq!(operation("/v1/embeddings"), Some("embeddings"));
        assert_eq!(operation("/v1/health"), None);
    }
}
