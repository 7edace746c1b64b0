//! OpenTelemetry traces over OTLP/HTTP (`[telemetry]`), for the supervisor's front and for each
//! worker: one process-wide exporter, and the request span both request paths hold.
//!
//! Off (`otlp_endpoint = ""`) costs nothing: [`install`] builds no exporter and every span
//! constructor returns `None` after one atomic load, so no span, attribute or header is built.
//!
//! On, a span is a fixed record ([`RequestSpan`]: ids, kind, two timestamps, the static
//! operation and path, the request's model and its [`Facts`]); ending it moves the record into
//! a bounded queue (`std::sync::mpsc::sync_channel`, [`MAX_QUEUE`]): a full queue drops the span
//! and counts it (`gateway_otlp_spans_dropped_total`), it never waits. One exporter task per
//! process, on its tokio runtime, sleeps until a batch is full (the span that fills it wakes the
//! task: one wake per batch, not per span) or its delay passed, encodes the batch straight into
//! one OTLP `ExportTraceServiceRequest` protobuf (written field by field into a buffer sized
//! beforehand; the resource and scope are encoded once at install with `opentelemetry-proto`'s
//! types; encoded records go back for new spans to reuse), 64 spans between yields so a
//! batch never holds the runtime more than some tens of microseconds, and POSTs it with hyper.
//! A task, not a thread: a worker runs a single-threaded runtime, and glibc gives a process with
//! one thread lock-free `malloc`/`free` and syscalls without cancellation points; the exporter
//! thread this was until 2026-12 made every allocation and syscall of the worker dearer, which
//! cost more than the encoding (`bench/RESULTS.md`, 2026-12-04). An
//! export that fails (a dead collector) only counts in [`export_failures`]
//! (`gateway_otlp_export_failures_total`). The `opentelemetry` crates give the ids' and the
//! trace context's types, the SDK's random id generator and the `tracestate` parser; the
//! `traceparent` header is read and written here under the SDK propagator's rules (a unit test
//! holds the two to the same answers), because the propagator alone cost more than the rest.
//!
//! Why not the SDK's pipeline (used until h-otel): per span, the SDK builds a `Span` with its
//! attributes as `KeyValue`s of owned `String`s (plus a `format!`ed name), moves a ~400-byte
//! `SpanData` through its channel, batches them in a `Vec`, then converts each into
//! `opentelemetry-proto` structs (cloning every string again) before prost encodes them; the
//! allocations are made on the runtime's threads and freed on the exporter's. Measured with
//! `bench/span_cost.sh` (a request's two spans, made and exported as the request paths do, at
//! 20,000 requests a second): the SDK pipeline 29,350 instructions per request (callgrind), of
//! which its propagator 8,600; this pipeline 6,050 with the hand-read `traceparent` (13,800 with
//! the propagator); CPU per request about 6.6 µs against 2.9 µs (getrusage, loaded machine).
//! Numbers and the end-to-end bench: `bench/RESULTS.md`, section h-otel.
//!
//! One trace per request: the front's span (kind SERVER) continues the client's W3C
//! `traceparent` when there is one, and its own context goes to the worker in `traceparent` on
//! the private hop ([`RequestSpan::inject`]); the worker's span (kind CLIENT, as the GenAI
//! conventions have it for a call to a model provider) is its child. As the SDK's default
//! (parent-based) sampler did, a parent that is not sampled (flags `00`) makes a span that is
//! propagated but never exported. A [`RequestSpan`] ends when it is dropped, which both
//! processes do when the response body ends (stream end, not first byte); what the request
//! learnt on the way is gathered in its [`Facts`] (atomics, no lock), which the worker's usage
//! observer fills in from another owner.
//!
//! The batching keeps the SDK's environment variables: `OTEL_BSP_SCHEDULE_DELAY` (ms, 5000),
//! `OTEL_BSP_MAX_QUEUE_SIZE` (8192 here; the SDK's default is 2048), `OTEL_BSP_MAX_EXPORT_BATCH_SIZE` (512) and
//! `OTEL_BSP_EXPORT_TIMEOUT` (ms, 5000).

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue};
use http_body_util::{BodyExt, Full};
use opentelemetry::trace::{SpanContext, SpanId, TraceFlags, TraceId, TraceState};
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, InstrumentationScope, KeyValue};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_sdk::trace::{IdGenerator, RandomIdGenerator};
use prost::encoding::{encode_key, encode_varint, encoded_len_varint, WireType};
use smallvec::SmallVec;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::config::TelemetryConfig;
use crate::endpoint::Endpoint;

/// The process's span pipeline, once [`install`] has run with an endpoint.
static PIPELINE: OnceLock<Pipeline> = OnceLock::new();

/// Spans waiting for export at most; past that new spans are dropped, never waited for. Four
/// times the SDK's 2048: at 8,000 spans a second (a saturated front on 2 cores) 2048 is a
/// quarter-second, and an exporter kept off a busy CPU that long dropped 0.4-3.8 % of
/// the spans in `bench/otel.sh`. A slot is one pointer; a queued span's record is about 450
/// bytes, so a full queue holds about 3.7 MB.
pub const MAX_QUEUE: usize = 8192;
/// Spans in one export request at most; the span that fills a batch wakes the exporter.
const MAX_BATCH: usize = 512;
/// How long a span may wait for a batch to fill before it goes out anyway.
const SCHEDULE_DELAY: Duration = Duration::from_secs(5);
/// How long one export may take before it counts as failed.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(5);
/// The instrumentation scope of every span.
const SCOPE: &str = "gateway-supervisor";

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

/// How the exporter batches: the SDK's defaults, tuned by its `OTEL_BSP_*` variables.
#[derive(Debug, Clone, Copy)]
struct Batching {
    max_queue: usize,
    max_batch: usize,
    delay: Duration,
    timeout: Duration,
}

impl Batching {
    fn from_env() -> Self {
        let var = |name: &str| std::env::var(name).ok()?.trim().parse::<u64>().ok();
        let ms = |name: &str, default: Duration| var(name).map_or(default, Duration::from_millis);
        let max_queue = var("OTEL_BSP_MAX_QUEUE_SIZE").map_or(MAX_QUEUE, |n| n.max(1) as usize);
        Self {
            max_queue,
            max_batch: var("OTEL_BSP_MAX_EXPORT_BATCH_SIZE")
                .map_or(MAX_BATCH, |n| n.max(1) as usize)
                .min(max_queue),
            delay: ms("OTEL_BSP_SCHEDULE_DELAY", SCHEDULE_DELAY),
            timeout: ms("OTEL_BSP_EXPORT_TIMEOUT", EXPORT_TIMEOUT),
        }
    }
}

/// Starts this process's exporter when `cfg.otlp_endpoint` is set; `role` (`front`, `worker`)
/// goes into the resource. Must run inside the tokio runtime that will carry the exports. A
/// second call is ignored (the first configuration stays until the process exits).
pub fn install(cfg: &TelemetryConfig, role: &'static str) -> Result<bool, InstallError> {
    let endpoint = cfg.otlp_endpoint.trim();
    if endpoint.is_empty() || PIPELINE.get().is_some() {
        return Ok(PIPELINE.get().is_some());
    }
    let err = |reason: String| InstallError {
        endpoint: endpoint.to_string(),
        reason,
    };
    let url: http::Uri = format!("{}/v1/traces", endpoint.trim_end_matches('/'))
        .parse()
        .map_err(|e: http::uri::InvalidUri| err(e.to_string()))?;
    if url.scheme_str() != Some("http") || url.host().is_none() {
        return Err(err("not a plain http:// URL".into()));
    }
    let rt = tokio::runtime::Handle::try_current()
        .map_err(|_| err("telemetry needs the tokio runtime".into()))?;
    let (pipeline, queue) = Pipeline::new(Batching::from_env(), &cfg.service_name, role);
    if PIPELINE.set(pipeline).is_err() {
        return Ok(true);
    }
    let pipeline = PIPELINE.get().expect("just set");
    Exporter::spawn(pipeline, queue, url, &rt);
    Ok(true)
}

/// How long a graceful stop waits for the spans still queued to go out.
pub const FLUSH_AT_STOP: Duration = Duration::from_secs(1);

/// Exports the spans still queued, waiting at most `bound`; the graceful stop of the front and
/// of each worker calls it after its last request ended (and the upgrade before its execve),
/// so a request answered just before a SIGTERM is not lost with the batch (which would
/// otherwise wait up to its 5 s delay). Does nothing when telemetry is off. The exporter
/// task does the work and answers; a collector slower than `bound` only costs that export.
pub async fn flush(bound: Duration) {
    if let Some(p) = PIPELINE.get() {
        p.flush(bound).await;
    }
}

/// Exports that failed since the process started.
pub fn export_failures() -> u64 {
    PIPELINE
        .get()
        .map_or(0, |p| p.failures.load(Ordering::Relaxed))
}

/// Spans dropped since the process started because the export queue was full.
pub fn spans_dropped() -> u64 {
    PIPELINE
        .get()
        .map_or(0, |p| p.dropped.load(Ordering::Relaxed))
}

/// `gateway_otlp_export_failures_total` and `gateway_otlp_spans_dropped_total` as OpenMetrics
/// families, when telemetry is on (each process reports its own exporter's; the front's page
/// labels the workers' with `worker`).
pub fn metrics_text() -> Option<String> {
    enabled().then(|| {
        format!(
            "# HELP gateway_otlp_export_failures OTLP trace exports that failed (collector down, refused, timed out).\n\
             # TYPE gateway_otlp_export_failures counter\n\
             gateway_otlp_export_failures_total {}\n\
             # HELP gateway_otlp_spans_dropped Spans dropped because the export queue was full.\n\
             # TYPE gateway_otlp_spans_dropped counter\n\
             gateway_otlp_spans_dropped_total {}\n",
            export_failures(),
            spans_dropped()
        )
    })
}

/// Whether spans are being made.
pub fn enabled() -> bool {
    PIPELINE.get().is_some()
}

/// The producers' side of the pipeline: the bounded queue, the exporter task to wake, the
/// counters.
struct Pipeline {
    queue: SyncSender<Arc<Record>>,
    /// Spans in the queue; the one that makes it `batching.max_batch` wakes the exporter.
    queued: AtomicUsize,
    /// Flush requests (each answered once its spans went out); a handful at most at a stop.
    flushes: SyncSender<Flushed>,
    /// Wakes the exporter task; a wake while it is busy is kept for its next wait.
    wake: tokio::sync::Notify,
    batching: Batching,
    /// The `ResourceSpans.resource` and `ScopeSpans.scope` fields, encoded once.
    resource_field: Vec<u8>,
    scope_field: Vec<u8>,
    /// Per endpoint (`Endpoint::ALL` order), its `gen_ai.operation.name` and `url.path`
    /// attributes, encoded once: they are the same for every span of that path.
    route_attributes: [Vec<u8>; Endpoint::ALL.len()],
    failures: AtomicU64,
    dropped: AtomicU64,
    ids: RandomIdGenerator,
    /// Records the exporter has encoded, for new spans to reuse (at most `max_batch`, about
    /// 230 KB): freed a batch at a time, records overflow malloc's per-thread cache (7 blocks a
    /// size) into its bins; reusing them saved 500 instructions a span in a worker.
    spare: crossbeam_channel::Receiver<Arc<Record>>,
}

/// A flush waiting for its spans to go out.
type Flushed = tokio::sync::oneshot::Sender<()>;

/// The exporter's side of the queue.
struct Queue {
    spans: Receiver<Arc<Record>>,
    flushes: Receiver<Flushed>,
    /// Where encoded records go back to [`Pipeline::start`]; a full list frees them instead.
    spare: crossbeam_channel::Sender<Arc<Record>>,
}

impl Queue {
    /// Empties `batch` (encoded): back to the spares go the records nobody else holds (a usage
    /// observer's facts can outlive the export); the rest, and those past a full list, are
    /// freed here.
    fn recycle(&self, batch: &mut Vec<Arc<Record>>) {
        for mut r in batch.drain(..) {
            if Arc::get_mut(&mut r).is_some() {
                let _ = self.spare.try_send(r);
            }
        }
    }
}

impl Pipeline {
    fn new(batching: Batching, service: &str, role: &'static str) -> (Self, Queue) {
        let (queue, spans) = std::sync::mpsc::sync_channel(batching.max_queue);
        // A stop flushes once per process; a few places are plenty, and a full one is skipped.
        let (flushes, flush_rx) = std::sync::mpsc::sync_channel(4);
        let (spare_tx, spare) = crossbeam_channel::bounded(batching.max_batch);
        let string = |key: &str, value: &str| KeyValue {
            key: key.into(),
            value: Some(AnyValue {
                value: Some(any_value::Value::StringValue(value.into())),
            }),
            ..Default::default()
        };
        let resource = Resource {
            attributes: vec![
                string("service.name", service),
                string("gateway.process", role),
            ],
            ..Default::default()
        };
        let scope = InstrumentationScope {
            name: SCOPE.into(),
            ..Default::default()
        };
        let (mut resource_field, mut scope_field) = (Vec::new(), Vec::new());
        prost::encoding::message::encode(1, &resource, &mut resource_field);
        prost::encoding::message::encode(1, &scope, &mut scope_field);
        let route_attributes = Endpoint::ALL.map(|e| {
            let (path, op) = (e.path(), e.operation());
            let mut buf = [0u8; 256];
            let mut out = Out {
                buf: &mut buf,
                at: 0,
            };
            attribute(&mut out, "gen_ai.operation.name", Value::Str(op.as_bytes()));
            attribute(&mut out, "url.path", Value::Str(path.as_bytes()));
            out.written().to_vec()
        });
        let pipeline = Self {
            queue,
            queued: AtomicUsize::new(0),
            flushes,
            wake: tokio::sync::Notify::new(),
            batching,
            resource_field,
            scope_field,
            route_attributes,
            failures: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            ids: RandomIdGenerator::default(),
            spare,
        };
        let queue = Queue {
            spans,
            flushes: flush_rx,
            spare: spare_tx,
        };
        (pipeline, queue)
    }

    /// A new span for a request to `endpoint`, the child of `headers`' `traceparent` if any.
    fn start(
        &'static self,
        headers: &HeaderMap,
        endpoint: Endpoint,
        model: &str,
        kind: Kind,
    ) -> RequestSpan {
        let parent = parse_traceparent(headers).unwrap_or(SpanContext::NONE);
        let (trace_id, flags, state, parent_id) = if parent.is_valid() {
            let state = parent.trace_state().clone();
            (
                parent.trace_id(),
                parent.trace_flags(),
                state,
                parent.span_id(),
            )
        } else {
            let id = self.ids.new_trace_id();
            (id, TraceFlags::SAMPLED, TraceState::NONE, SpanId::INVALID)
        };
        let cx = SpanContext::new(trace_id, self.ids.new_span_id(), flags, false, state);
        let fresh = Record {
            cx,
            parent: parent_id,
            kind,
            start: now_nanos(),
            end: AtomicU64::new(0),
            endpoint,
            model: Text::new(model),
            facts: Facts::default(),
        };
        // A spare is unique (the exporter only gives back records nobody else holds); the old
        // contents drop here, which frees nothing unless a name was longer than [`Text`] holds.
        let record = match self.spare.try_recv() {
            Ok(mut r) => match Arc::get_mut(&mut r) {
                Some(slot) => {
                    *slot = fresh;
                    r
                }
                None => Arc::new(fresh),
            },
            Err(_) => Arc::new(fresh),
        };
        RequestSpan {
            pipeline: self,
            record: Some(record),
        }
    }

    /// Queues an ended span; a full queue drops it and counts it, never waits.
    fn push(&self, record: Arc<Record>) {
        // Counted before it is sent, so the exporter (which subtracts what it took) never sees
        // fewer than it took.
        let queued = self.queued.fetch_add(1, Ordering::Relaxed) + 1;
        match self.queue.try_send(record) {
            Ok(()) => {
                if queued == self.batching.max_batch {
                    self.wake();
                }
            }
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                self.queued.fetch_sub(1, Ordering::Relaxed);
                self.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    fn wake(&self) {
        // `notify_one` keeps a permit when the task is not waiting (it is exporting): the
        // wake is never lost until the delay.
        self.wake.notify_one();
    }

    async fn flush(&self, bound: Duration) {
        let (tx, rx) = tokio::sync::oneshot::channel();
        if self.flushes.try_send(tx).is_err() {
            return;
        }
        self.wake();
        match tokio::time::timeout(bound, rx).await {
            Ok(_) => {}
            Err(_) => tracing::warn!(
                "telemetry: spans not flushed within {} ms at stop",
                bound.as_millis()
            ),
        }
    }

    /// Appends `records` to `spans` as `ScopeSpans.spans` fields, each written in place: the
    /// buffer grows by the span's bound, the span is written after a two-byte length that is
    /// filled in once it is known, and the rest is cut.
    fn encode_spans(&self, records: &[Arc<Record>], spans: &mut Vec<u8>) {
        for r in records {
            let route = &self.route_attributes[r.endpoint as usize];
            let at = spans.len();
            let state = state_header(&r.cx);
            spans.resize(at + 3 + r.bound(route.len(), &state), 0);
            let mut out = Out {
                buf: &mut spans[at + 3..],
                at: 0,
            };
            r.encode(&mut out, route, &state);
            let n = out.at;
            spans.truncate(at + 3 + n);
            spans[at] = 2 << 3 | WireType::LengthDelimited as u8;
            if (0x80..0x4000).contains(&n) {
                // Every span but a freak: at least ~150 bytes, below 16 KiB.
                spans[at + 1] = n as u8 | 0x80;
                spans[at + 2] = (n >> 7) as u8;
            } else {
                let mut len = Vec::new();
                encode_varint(n as u64, &mut len);
                spans.splice(at + 1..at + 3, len);
            }
        }
    }

    /// The encoded `spans` as one OTLP `ExportTraceServiceRequest`: its resource, its scope,
    /// its spans. (Copied once: writing the head into room left before the spans saved the copy
    /// but cost as much in a new buffer per batch, which hyper keeps until the POST ends.)
    fn frame(&self, spans: &[u8]) -> Vec<u8> {
        let scope_spans = self.scope_field.len() + spans.len();
        let resource_spans =
            self.resource_field.len() + 1 + encoded_len_varint(scope_spans as u64) + scope_spans;
        let mut out =
            Vec::with_capacity(1 + encoded_len_varint(resource_spans as u64) + resource_spans);
        encode_key(1, WireType::LengthDelimited, &mut out);
        encode_varint(resource_spans as u64, &mut out);
        out.extend_from_slice(&self.resource_field);
        encode_key(2, WireType::LengthDelimited, &mut out);
        encode_varint(scope_spans as u64, &mut out);
        out.extend_from_slice(&self.scope_field);
        out.extend_from_slice(spans);
        out
    }
}

/// The OTLP span kinds the gateway makes (`Span.SpanKind`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Server = 2,
    Client = 3,
}

/// A span, live or ended: everything its OTLP form needs, in one allocation shared by the
/// span's owner, any [`SharedFacts`] handle and, once ended, the queue (which so moves a
/// pointer); it is encoded by the exporter, never on the request's path. Its strings are
/// held inline ([`Text`]), so a span allocates nothing else.
#[derive(Debug)]
struct Record {
    cx: SpanContext,
    /// `SpanId::INVALID` for a root span.
    parent: SpanId,
    kind: Kind,
    /// Unix nanoseconds.
    start: u64,
    /// Set by the end (the owner's drop), before the record is queued.
    end: AtomicU64,
    /// The path's endpoint (its operation, `url.path`).
    endpoint: Endpoint,
    model: Text,
    facts: Facts,
}

/// A short string held inline up to 48 bytes (model and provider names), on the heap past that.
#[derive(Debug, Default)]
struct Text(SmallVec<[u8; 48]>);

impl Text {
    fn new(s: &str) -> Self {
        Self(SmallVec::from_slice(s.as_bytes()))
    }

    fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

/// `Span.flags`: the trace flags, and that the parent's remoteness is known (bit 8) and, when
/// there is a parent, remote (bit 9: a client's or the other process's span).
const FLAGS_HAS_IS_REMOTE: u32 = 0x100;
const FLAGS_IS_REMOTE: u32 = 0x200;
/// `Status.StatusCode.STATUS_CODE_ERROR`.
const STATUS_ERROR: u64 = 2;

impl Record {
    /// At least the size of [`Record::encode`]'s output: fields and attribute keys take well
    /// under 1 KiB (about 600 bytes at most), plus the variable strings.
    fn bound(&self, route_attributes: usize, state: &str) -> usize {
        let f = &self.facts;
        let text = |t: &OnceLock<Text>| t.get().map_or(0, |t| t.as_bytes().len());
        1024 + route_attributes
            + state.len()
            + 2 * self.model.as_bytes().len()
            + text(&f.provider)
            + text(&f.response_model)
            + text(&f.translated)
            + f.error.get().map_or(0, String::len)
    }

    /// The OTLP `Span` message's fields (field numbers of `trace/v1/trace.proto`);
    /// `route_attributes` are this span's path's, encoded at install. `out` holds at least
    /// [`Record::bound`] bytes.
    fn encode(&self, out: &mut Out<'_>, route_attributes: &[u8], state: &str) {
        bytes_field(out, 1, &self.cx.trace_id().to_bytes());
        bytes_field(out, 2, &self.cx.span_id().to_bytes());
        if !state.is_empty() {
            bytes_field(out, 3, state.as_bytes());
        }
        if self.parent != SpanId::INVALID {
            bytes_field(out, 4, &self.parent.to_bytes());
        }
        // The name, `{operation} {model}`, written in place.
        let (op, model) = (self.endpoint.operation(), self.model.as_bytes());
        length_delimited(out, 5, op.len() + 1 + model.len());
        out.bytes(op.as_bytes());
        out.byte(b' ');
        out.bytes(model);
        key(out, 6, WireType::Varint);
        varint(out, self.kind as u64);
        key(out, 7, WireType::SixtyFourBit);
        out.bytes(&self.start.to_le_bytes());
        key(out, 8, WireType::SixtyFourBit);
        out.bytes(&self.end.load(Ordering::Relaxed).to_le_bytes());
        out.bytes(route_attributes);
        attribute(out, "gen_ai.request.model", Value::Str(model));
        self.facts.encode_attributes(out);
        if let Some(e) = self.facts.error.get() {
            // Status { message = 2, code = 3 }.
            length_delimited(
                out,
                15,
                1 + encoded_len_varint(e.len() as u64) + e.len() + 2,
            );
            bytes_field(out, 2, e.as_bytes());
            key(out, 3, WireType::Varint);
            varint(out, STATUS_ERROR);
        }
        let mut flags = u32::from(self.cx.trace_flags().to_u8()) | FLAGS_HAS_IS_REMOTE;
        if self.parent != SpanId::INVALID {
            flags |= FLAGS_IS_REMOTE;
        }
        key(out, 16, WireType::ThirtyTwoBit);
        out.bytes(&flags.to_le_bytes());
    }
}

/// A cursor writing into a slice sized beforehand ([`Record::bound`]): a byte costs a store and
/// a bounds check against a length in a register, where a `Vec` push reloads and checks its
/// capacity (a third of a span's encoding, measured).
struct Out<'a> {
    buf: &'a mut [u8],
    at: usize,
}

impl Out<'_> {
    #[inline(always)]
    fn byte(&mut self, b: u8) {
        self.buf[self.at] = b;
        self.at += 1;
    }

    #[inline(always)]
    fn bytes(&mut self, b: &[u8]) {
        self.buf[self.at..self.at + b.len()].copy_from_slice(b);
        self.at += b.len();
    }

    fn written(&self) -> &[u8] {
        &self.buf[..self.at]
    }
}

/// An attribute's value (`AnyValue`: string = 1, bool = 2, int = 3); a string as its UTF-8
/// bytes.
enum Value<'a> {
    Str(&'a [u8]),
    Int(i64),
    Bool(bool),
}

/// One `Span.attributes` (field 9) entry, `KeyValue { key = 1, value = 2 }`.
///
/// Inlined: the key is a literal at every call, so its length folds into constants and its copy
/// into a few moves.
#[inline(always)]
fn attribute(out: &mut Out<'_>, key_name: &str, value: Value<'_>) {
    let any = match value {
        Value::Str(s) => 1 + encoded_len_varint(s.len() as u64) + s.len(),
        Value::Int(i) => 1 + encoded_len_varint(i as u64),
        Value::Bool(_) => 2,
    };
    let kv = 1
        + encoded_len_varint(key_name.len() as u64)
        + key_name.len()
        + 1
        + encoded_len_varint(any as u64)
        + any;
    length_delimited(out, 9, kv);
    bytes_field(out, 1, key_name.as_bytes());
    length_delimited(out, 2, any);
    match value {
        Value::Str(s) => bytes_field(out, 1, s),
        Value::Int(i) => {
            key(out, 3, WireType::Varint);
            // int64 is encoded as its two's complement, as prost does.
            varint(out, i as u64);
        }
        Value::Bool(b) => {
            key(out, 2, WireType::Varint);
            out.byte(u8::from(b));
        }
    }
}

/// A varint (LEB128): one byte for the values below 128, every key and almost every length
/// here.
#[inline(always)]
fn varint(out: &mut Out<'_>, mut n: u64) {
    while n >= 0x80 {
        out.byte(n as u8 | 0x80);
        n >>= 7;
    }
    out.byte(n as u8);
}

/// A field's key (`tag << 3 | wire type`).
#[inline(always)]
fn key(out: &mut Out<'_>, tag: u32, wire: WireType) {
    varint(out, u64::from(tag << 3 | wire as u32));
}

/// A length-delimited field's key and length; its `len` bytes follow.
#[inline(always)]
fn length_delimited(out: &mut Out<'_>, tag: u32, len: usize) {
    key(out, tag, WireType::LengthDelimited);
    varint(out, len as u64);
}

#[inline(always)]
fn bytes_field(out: &mut Out<'_>, tag: u32, bytes: &[u8]) {
    length_delimited(out, tag, bytes.len());
    out.bytes(bytes);
}

fn now_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// The collector's connections: kept alive, a few at most (one export is in flight at a time).
const COLLECTOR_LIMITS: crate::conn_pool::Limits = crate::conn_pool::Limits {
    max_idle: 2,
    idle_timeout: Duration::from_secs(30),
};

/// Connects to the collector over plain TCP (`otlp_endpoint` is an `http://` URL).
struct Collector {
    /// `host:port`, the port defaulted to 80.
    addr: String,
}

impl crate::conn_pool::Connect for Collector {
    async fn connect(&self) -> Result<crate::conn_pool::Fresh, crate::relay::BoxError> {
        let s = tokio::net::TcpStream::connect(self.addr.as_str()).await?;
        let _ = s.set_nodelay(true);
        let io = hyper_util::rt::TokioIo::new(s);
        let sender = crate::conn_pool::start_http1(io, "collector").await?;
        Ok(crate::conn_pool::Fresh::Http1(sender))
    }
}

/// Spans encoded between two yields of the exporter task: about 100,000 instructions, some tens
/// of microseconds of the runtime.
const ENCODE_CHUNK: usize = 64;

/// The exporter task: takes batches off the queue, encodes and POSTs them.
struct Exporter {
    pipeline: &'static Pipeline,
    queue: Queue,
    url: http::Uri,
    pool: Arc<crate::conn_pool::Pool>,
    collector: Collector,
    batch: Vec<Arc<Record>>,
    /// The batch's encoded spans, kept from batch to batch.
    spans: Vec<u8>,
}

impl Exporter {
    /// Starts the exporter task of `pipeline`, exporting to `url`, on `rt`. The task lives as
    /// long as the runtime (the pipeline is a static, its queue never disconnects).
    fn spawn(
        pipeline: &'static Pipeline,
        queue: Queue,
        url: http::Uri,
        rt: &tokio::runtime::Handle,
    ) {
        let Some(dest) = crate::conn_pool::Dest::of(&url, false) else {
            // `install` checked the URL; without a host there is nothing to export to.
            return;
        };
        let authority = url.authority().expect("a destination has an authority");
        let addr = format!(
            "{}:{}",
            authority.host(),
            authority.port_u16().unwrap_or(80)
        );
        let exporter = Self {
            pipeline,
            queue,
            url,
            pool: crate::conn_pool::Pool::new(dest, COLLECTOR_LIMITS),
            collector: Collector { addr },
            batch: Vec::with_capacity(pipeline.batching.max_batch),
            spans: Vec::new(),
        };
        rt.spawn(exporter.run());
    }

    async fn run(mut self) {
        let b = self.pipeline.batching;
        let mut deadline = tokio::time::Instant::now() + b.delay;
        loop {
            // Woken by the span that fills a batch, by a flush, or by the delay.
            tokio::select! {
                _ = self.pipeline.wake.notified() => {}
                _ = tokio::time::sleep_until(deadline) => {}
            }
            let flushes: Vec<Flushed> = self.queue.flushes.try_iter().collect();
            if !flushes.is_empty() || tokio::time::Instant::now() >= deadline {
                while self.export_batch().await == b.max_batch {}
                deadline = tokio::time::Instant::now() + b.delay;
                for f in flushes {
                    let _ = f.send(());
                }
            } else {
                while self.pipeline.queued.load(Ordering::Relaxed) >= b.max_batch
                    && self.export_batch().await > 0
                {}
            }
        }
    }

    /// Exports up to one batch of what is queued; returns how many spans it took.
    async fn export_batch(&mut self) -> usize {
        let max = self.pipeline.batching.max_batch;
        self.batch.extend(self.queue.spans.try_iter().take(max));
        let n = self.batch.len();
        if n == 0 {
            return 0;
        }
        self.pipeline.queued.fetch_sub(n, Ordering::Relaxed);
        self.spans.clear();
        for chunk in self.batch.chunks(ENCODE_CHUNK) {
            self.pipeline.encode_spans(chunk, &mut self.spans);
            tokio::task::yield_now().await;
        }
        let body = self.pipeline.frame(&self.spans);
        self.queue.recycle(&mut self.batch);
        let timeout = self.pipeline.batching.timeout;
        if !post(&self.pool, &self.collector, &self.url, timeout, body).await {
            self.pipeline.failures.fetch_add(1, Ordering::Relaxed);
        }
        n
    }
}

/// POSTs one request body to `url`; whether the collector took it (a 2xx within `timeout`).
async fn post(
    pool: &Arc<crate::conn_pool::Pool>,
    collector: &Collector,
    url: &http::Uri,
    timeout: Duration,
    body: Vec<u8>,
) -> bool {
    let req = http::Request::post(url.clone())
        .header(http::header::CONTENT_TYPE, "application/x-protobuf")
        .body(Full::new(Bytes::from(body)));
    let Ok(req) = req else {
        return false;
    };
    let sent = async {
        let res = pool.send(req, collector).await.ok()?;
        let ok = res.status().is_success();
        res.into_body().collect().await.ok()?;
        Some(ok)
    };
    matches!(tokio::time::timeout(timeout, sent).await, Ok(Some(true)))
}

/// One request's span in this process; ends (and goes to the exporter's queue) when dropped.
pub struct RequestSpan {
    pipeline: &'static Pipeline,
    /// `Some` until the drop moves it into the queue.
    record: Option<Arc<Record>>,
}

impl std::fmt::Debug for RequestSpan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RequestSpan").finish_non_exhaustive()
    }
}

impl RequestSpan {
    /// The front's span for a request to `endpoint` (a SERVER span), continuing the client's
    /// `traceparent` in `headers` if any; `None` when telemetry is off.
    pub fn front(headers: &HeaderMap, endpoint: Endpoint, model: &str) -> Option<Self> {
        Some(
            PIPELINE
                .get()?
                .start(headers, endpoint, model, Kind::Server),
        )
    }

    /// The worker's span, the child of the front's (from the hop's `traceparent`).
    pub fn worker(headers: &HeaderMap, endpoint: Endpoint, model: &str) -> Option<Self> {
        Some(
            PIPELINE
                .get()?
                .start(headers, endpoint, model, Kind::Client),
        )
    }

    fn record(&self) -> &Record {
        self.record
            .as_ref()
            .expect("a span's record lives until its drop")
    }

    /// Sets `traceparent` (and `tracestate`) in `headers` to this span's context, replacing any
    /// the client sent: the next hop's span is this one's child.
    pub fn inject(&self, headers: &mut HeaderMap) {
        headers.remove(TRACESTATE);
        let cx = &self.record().cx;
        headers.insert(TRACEPARENT, format_traceparent(cx));
        if let Ok(v) = HeaderValue::try_from(state_header(cx)) {
            if !v.is_empty() {
                headers.insert(TRACESTATE, v);
            }
        }
    }

    /// What the request learns on its way, for the span's attributes at its end.
    pub fn facts(&self) -> &Facts {
        &self.record().facts
    }

    /// The facts, for another owner that learns some of them (the worker's usage observer).
    pub fn share_facts(&self) -> SharedFacts {
        SharedFacts(Arc::clone(
            self.record
                .as_ref()
                .expect("a span's record lives until its drop"),
        ))
    }
}

impl Drop for RequestSpan {
    fn drop(&mut self) {
        if let Some(r) = self.record.take() {
            // A span whose parent is not sampled is propagated, never exported.
            if r.cx.is_sampled() {
                r.end.store(now_nanos(), Ordering::Relaxed);
                self.pipeline.push(r);
            }
        }
    }
}

/// A span's [`Facts`] held by an owner other than the span's. What it sets before the span is
/// exported goes on the span, even after the span ended (the worker's usage observer may finish
/// just after the response body that ends the span).
#[derive(Clone)]
pub struct SharedFacts(Arc<Record>);

impl std::ops::Deref for SharedFacts {
    type Target = Facts;
    fn deref(&self) -> &Facts {
        &self.0.facts
    }
}

impl std::fmt::Debug for SharedFacts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedFacts").finish_non_exhaustive()
    }
}

/// What a request learnt on its way, set by whoever learnt it and put on the span at its end.
/// Atomics and write-once cells: the worker's usage observer and its response body are
/// different owners, and the request path takes no lock. Names are held inline ([`Text`]);
/// only an error message (rare) allocates.
#[derive(Debug, Default)]
pub struct Facts {
    provider: OnceLock<Text>,
    response_model: OnceLock<Text>,
    /// `u64::MAX` = unknown.
    input_tokens: AtomicU64,
    output_tokens: AtomicU64,
    status: AtomicU32,
    attempts: AtomicU32,
    /// `gateway.worker.id` + 1; 0 = none.
    worker: AtomicU64,
    translated: OnceLock<Text>,
    error: OnceLock<String>,
    has_tokens: AtomicBool,
}

impl Facts {
    pub fn provider(&self, name: &str) {
        let _ = self.provider.set(Text::new(name));
    }
    pub fn response_model(&self, model: &str) {
        let _ = self.response_model.set(Text::new(model));
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
        let _ = self.translated.set(Text::new(how));
    }
    /// The request failed after its head (a broken stream): the span's status is Error.
    pub fn error(&self, msg: &str) {
        let _ = self.error.set(msg.to_string());
    }

    /// This request's attributes as OTLP `Span.attributes` fields.
    fn encode_attributes(&self, out: &mut Out<'_>) {
        if let Some(p) = self.provider.get() {
            attribute(out, "gen_ai.provider.name", Value::Str(p.as_bytes()));
        }
        if let Some(m) = self.response_model.get() {
            attribute(out, "gen_ai.response.model", Value::Str(m.as_bytes()));
        }
        if self.has_tokens.load(Ordering::Relaxed) {
            let n = |v: &AtomicU64| Value::Int(v.load(Ordering::Relaxed) as i64);
            attribute(out, "gen_ai.usage.input_tokens", n(&self.input_tokens));
            attribute(out, "gen_ai.usage.output_tokens", n(&self.output_tokens));
        }
        match self.status.load(Ordering::Relaxed) {
            0 => {}
            s => attribute(out, "http.response.status_code", Value::Int(s.into())),
        }
        match self.attempts.load(Ordering::Relaxed) {
            0 => {}
            n => attribute(out, "gateway.attempts", Value::Int(n.into())),
        }
        match self.worker.load(Ordering::Relaxed) {
            0 => {}
            w => attribute(out, "gateway.worker.id", Value::Int((w - 1) as i64)),
        }
        let translated = self.translated.get();
        attribute(out, "gateway.translated", Value::Bool(translated.is_some()));
        if let Some(t) = translated {
            attribute(out, "gateway.translation", Value::Str(t.as_bytes()));
        }
    }
}

// The W3C `traceparent` (`VERSION-TRACEID-SPANID-FLAGS`, lowercase hex) read and written by
// hand, under the rules of the SDK's `TraceContextPropagator` (the unit tests hold the two to
// the same answers): the propagator's `Vec` of parts, `Context` and `format!` of the ids were
// about 8,600 of the 13,800 instructions a request's two spans cost in callgrind
// (`bench/span_cost.sh`), more than everything else the pipeline does.

/// The client's (or the front's) span context from `traceparent` and `tracestate`; `None`
/// when there is none or it is malformed (a new trace then starts).
fn parse_traceparent(headers: &HeaderMap) -> Option<SpanContext> {
    let v = headers.get(TRACEPARENT)?.as_bytes().trim_ascii();
    if v.len() < 55 || v[2] != b'-' || v[35] != b'-' || v[52] != b'-' {
        return None;
    }
    let mut version = [0u8; 1];
    if !unhex(&v[..2], &mut version) {
        return None;
    }
    let version = version[0];
    // Version ff is invalid; 00 has exactly four fields; a later version may append fields.
    if version == 0xff || (version == 0 && v.len() != 55) || (v.len() > 55 && v[55] != b'-') {
        return None;
    }
    let (mut trace, mut span, mut flags) = ([0u8; 16], [0u8; 8], [0u8; 1]);
    if !(unhex(&v[3..35], &mut trace)
        && unhex(&v[36..52], &mut span)
        && unhex(&v[53..55], &mut flags))
    {
        return None;
    }
    // Flags other than sampled are accepted and cleared, as the W3C recommendation says.
    let flags = TraceFlags::new(flags[0]) & TraceFlags::SAMPLED;
    let state = headers
        .get(TRACESTATE)
        .and_then(|v| v.to_str().ok())
        .map_or(TraceState::NONE, |s| s.parse().unwrap_or_default());
    let cx = SpanContext::new(
        TraceId::from_bytes(trace),
        SpanId::from_bytes(span),
        flags,
        true,
        state,
    );
    cx.is_valid().then_some(cx)
}

/// Decodes `hex` (two digits per byte of `out`); whether every digit was lowercase hex. One
/// check at the end, not one per byte: the loop is branch-free.
fn unhex(hex: &[u8], out: &mut [u8]) -> bool {
    let mut bad = 0;
    for (o, pair) in out.iter_mut().zip(hex.chunks_exact(2)) {
        let (hi, lo) = (
            HEX_VALUE[usize::from(pair[0])],
            HEX_VALUE[usize::from(pair[1])],
        );
        bad |= hi | lo;
        *o = hi << 4 | lo;
    }
    bad < 16
}

/// Each byte's value as a lowercase hex digit, 0xff for the rest (uppercase is not valid in a
/// `traceparent`): a table, because a match per character was most of the header's parse.
const HEX_VALUE: [u8; 256] = {
    let mut t = [0xff; 256];
    let mut i = 0;
    while i < 10 {
        t[b'0' as usize + i] = i as u8;
        i += 1;
    }
    let mut i = 0;
    while i < 6 {
        t[b'a' as usize + i] = 10 + i as u8;
        i += 1;
    }
    t
};

/// `cx`'s `tracestate`, "" for none (most requests), then built without the SDK's `String`s.
fn state_header(cx: &SpanContext) -> String {
    let state = cx.trace_state();
    if *state == TraceState::NONE {
        String::new()
    } else {
        state.header()
    }
}

/// `cx` as a version-00 `traceparent`.
fn format_traceparent(cx: &SpanContext) -> HeaderValue {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = [0u8; 55];
    let mut put = |at: usize, bytes: &[u8]| {
        for (i, b) in bytes.iter().enumerate() {
            out[at + 2 * i] = HEX[usize::from(b >> 4)];
            out[at + 2 * i + 1] = HEX[usize::from(b & 0xf)];
        }
    };
    put(0, &[0]);
    put(3, &cx.trace_id().to_bytes());
    put(36, &cx.span_id().to_bytes());
    put(53, &[(cx.trace_flags() & TraceFlags::SAMPLED).to_u8()]);
    out[2] = b'-';
    out[35] = b'-';
    out[52] = b'-';
    HeaderValue::from_bytes(&out).expect("hex digits and dashes")
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use opentelemetry_proto::tonic::trace::v1::Span;
    use prost::Message;
    use std::time::Instant;

    #[test]
    fn off_builds_nothing() {
        let h = HeaderMap::new();
        assert!(!enabled());
        assert!(RequestSpan::front(&h, Endpoint::ChatCompletions, "m").is_none());
    }

    fn batching(max_queue: usize, delay: Duration) -> Batching {
        Batching {
            max_queue,
            max_batch: max_queue.min(MAX_BATCH),
            delay,
            timeout: Duration::from_secs(5),
        }
    }

    /// A pipeline of its own (no exporter task yet), for the life of the test process.
    fn pipeline(b: Batching) -> (&'static Pipeline, Queue) {
        let (p, q) = Pipeline::new(b, "svc", "front");
        (Box::leak(Box::new(p)), q)
    }

    fn client_headers(traceparent: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(TRACEPARENT, HeaderValue::from_str(traceparent).unwrap());
        h.insert(TRACESTATE, HeaderValue::from_static("vendor=x"));
        h
    }

    fn decode(body: &[u8]) -> (ExportTraceServiceRequest, Vec<Span>) {
        let msg = ExportTraceServiceRequest::decode(body).expect("an OTLP protobuf");
        let spans = msg
            .resource_spans
            .iter()
            .flat_map(|rs| &rs.scope_spans)
            .flat_map(|ss| ss.spans.clone())
            .collect();
        (msg, spans)
    }

    fn attr(s: &Span, key: &str) -> Option<any_value::Value> {
        s.attributes
            .iter()
            .find(|kv| kv.key == key)
            .and_then(|kv| kv.value.as_ref()?.value.clone())
    }

    #[test]
    fn a_full_queue_drops_and_counts_never_waits() {
        let (p, q) = pipeline(batching(2, Duration::from_secs(600)));
        let h = HeaderMap::new();
        let spans: Vec<_> = (0..3)
            .map(|_| p.start(&h, Endpoint::ChatCompletions, "m", Kind::Server))
            .collect();
        drop(spans);
        assert_eq!(p.dropped.load(Ordering::Relaxed), 1);
        assert_eq!(q.spans.try_iter().count(), 2);
    }

    #[test]
    fn a_batch_round_trips_through_the_otlp_decoder() {
        let (p, q) = pipeline(batching(16, Duration::from_secs(600)));
        let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
        let client = client_headers(&format!("00-{trace}-00f067aa0ba902b7-01"));
        let front = p.start(&client, Endpoint::ChatCompletions, "gpt-x", Kind::Server);
        let mut hop = HeaderMap::new();
        front.inject(&mut hop);
        let worker = p.start(&hop, Endpoint::ChatCompletions, "gpt-x", Kind::Client);
        let f = front.facts();
        f.provider("openai");
        f.status(200);
        f.attempts(2);
        f.worker(0);
        f.translated("anthropic->openai");
        let w = worker.facts();
        w.response_model("gpt-x-2026");
        w.tokens(12, 3400);
        w.error("the provider's stream broke");
        drop(worker);
        drop(front);
        let batch: Vec<Arc<Record>> = q.spans.try_iter().collect();
        let body = encode(p, &batch);
        let (msg, spans) = decode(&body);
        let rs = &msg.resource_spans[0];
        let resource: Vec<_> = rs
            .resource
            .as_ref()
            .unwrap()
            .attributes
            .iter()
            .map(|kv| kv.key.as_str())
            .collect();
        assert_eq!(resource, ["service.name", "gateway.process"]);
        assert_eq!(rs.scope_spans[0].scope.as_ref().unwrap().name, SCOPE);
        let (w, f) = (&spans[0], &spans[1]);
        let str_value = |s: &str| Some(any_value::Value::StringValue(s.into()));
        let int_value = |i: i64| Some(any_value::Value::IntValue(i));
        assert_eq!(f.trace_id, hex(trace));
        assert_eq!(w.trace_id, f.trace_id);
        assert_eq!(f.parent_span_id, hex("00f067aa0ba902b7"));
        assert_eq!(w.parent_span_id, f.span_id);
        assert_eq!(f.trace_state, "vendor=x");
        assert_eq!((f.kind, w.kind), (2, 3));
        assert_eq!(f.name, "chat gpt-x");
        assert!(f.start_time_unix_nano <= w.start_time_unix_nano);
        assert!(w.end_time_unix_nano <= f.end_time_unix_nano);
        assert_eq!(f.flags, 0x301);
        assert_eq!(attr(f, "gen_ai.operation.name"), str_value("chat"));
        assert_eq!(attr(f, "gen_ai.request.model"), str_value("gpt-x"));
        assert_eq!(attr(f, "url.path"), str_value("/v1/chat/completions"));
        assert_eq!(attr(f, "gen_ai.provider.name"), str_value("openai"));
        assert_eq!(attr(f, "http.response.status_code"), int_value(200));
        assert_eq!(attr(f, "gateway.attempts"), int_value(2));
        assert_eq!(attr(f, "gateway.worker.id"), int_value(0));
        assert_eq!(
            attr(f, "gateway.translated"),
            Some(any_value::Value::BoolValue(true))
        );
        assert_eq!(
            attr(f, "gateway.translation"),
            str_value("anthropic->openai")
        );
        assert_eq!(f.status, None);
        assert_eq!(attr(w, "gen_ai.response.model"), str_value("gpt-x-2026"));
        assert_eq!(attr(w, "gen_ai.usage.input_tokens"), int_value(12));
        assert_eq!(attr(w, "gen_ai.usage.output_tokens"), int_value(3400));
        assert_eq!(
            attr(w, "gateway.translated"),
            Some(any_value::Value::BoolValue(false))
        );
        let status = w.status.as_ref().unwrap();
        assert_eq!(
            (status.code, status.message.as_str()),
            (2, "the provider's stream broke")
        );
    }

    #[test]
    fn facts_shared_past_the_end_and_long_names_reach_the_span() {
        let (p, q) = pipeline(batching(16, Duration::from_secs(600)));
        // Longer than `Text`'s inline 48 bytes: held on the heap, encoded the same.
        let model = "accounts/fireworks/models/llama-v3p1-405b-instruct-long-context";
        let span = p.start(&HeaderMap::new(), Endpoint::Messages, model, Kind::Client);
        let observer = span.share_facts();
        drop(span);
        // The usage observer finishing after the body that ended the span.
        observer.provider("anthropic");
        observer.tokens(7, 9);
        drop(observer);
        let batch: Vec<Arc<Record>> = q.spans.try_iter().collect();
        let (_, spans) = decode(&encode(p, &batch));
        let s = &spans[0];
        let str_value = |v: &str| Some(any_value::Value::StringValue(v.into()));
        assert_eq!(s.name, format!("chat {model}"));
        assert_eq!(attr(s, "gen_ai.request.model"), str_value(model));
        assert_eq!(attr(s, "url.path"), str_value("/v1/messages"));
        assert_eq!(attr(s, "gen_ai.provider.name"), str_value("anthropic"));
        assert_eq!(
            attr(s, "gen_ai.usage.output_tokens"),
            Some(any_value::Value::IntValue(9))
        );
        assert!(s.end_time_unix_nano >= s.start_time_unix_nano && s.start_time_unix_nano > 0);
    }

    /// Every string at its longest: a span past 16 KiB (its length no longer fits the two bytes
    /// reserved for it) and a tracestate, all within the bound, beside an ordinary span.
    #[test]
    fn a_span_of_any_size_is_written_within_its_bound() {
        let (p, q) = pipeline(batching(16, Duration::from_secs(600)));
        let model = "m".repeat(20_000);
        let mut h = client_headers("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01");
        let state = (0..32).map(|i| format!("v{i}=x{i}")).collect::<Vec<_>>();
        h.insert(TRACESTATE, HeaderValue::from_str(&state.join(",")).unwrap());
        let big = p.start(&h, Endpoint::ChatCompletions, &model, Kind::Server);
        let f = big.facts();
        f.provider(&"p".repeat(300));
        f.response_model(&"r".repeat(300));
        f.translated(&"t".repeat(300));
        f.tokens(u64::MAX >> 1, 1);
        f.status(599);
        f.attempts(u32::MAX);
        f.worker(usize::MAX >> 1);
        f.error(&"e".repeat(5_000));
        drop(big);
        drop(p.start(&HeaderMap::new(), Endpoint::Embeddings, "e", Kind::Server));
        let batch: Vec<Arc<Record>> = q.spans.try_iter().collect();
        let (_, spans) = decode(&encode(p, &batch));
        assert_eq!(spans.len(), 2);
        assert_eq!(spans[0].name, format!("chat {model}"));
        assert_eq!(spans[0].trace_state, state.join(","));
        assert_eq!(spans[0].status.as_ref().unwrap().message, "e".repeat(5_000));
        assert_eq!(
            attr(&spans[0], "gateway.attempts"),
            Some(any_value::Value::IntValue(u32::MAX.into()))
        );
        assert_eq!(spans[1].name, "embeddings e");
    }

    /// An exported record comes back for the next span, which starts clean: nothing of the last
    /// span's name or facts reaches it. A record whose facts another owner still holds is not
    /// given back.
    #[test]
    fn a_recycled_record_carries_nothing_of_its_last_span() {
        let (p, q) = pipeline(batching(16, Duration::from_secs(600)));
        let first = p.start(&HeaderMap::new(), Endpoint::Messages, "first", Kind::Client);
        first.facts().provider("anthropic");
        first.facts().tokens(1, 2);
        first.facts().error("the provider's stream broke");
        drop(first);
        let mut batch: Vec<Arc<Record>> = q.spans.try_iter().collect();
        let used = Arc::as_ptr(&batch[0]);
        q.recycle(&mut batch);
        let second = p.start(
            &HeaderMap::new(),
            Endpoint::Embeddings,
            "second",
            Kind::Server,
        );
        let ptr = |s: &RequestSpan| Arc::as_ptr(s.record.as_ref().unwrap());
        assert_eq!(ptr(&second), used, "the spare was reused");
        drop(second);
        let batch: Vec<Arc<Record>> = q.spans.try_iter().collect();
        let (_, spans) = decode(&encode(p, &batch));
        assert_eq!(spans[0].name, "embeddings second");
        assert_eq!(attr(&spans[0], "gen_ai.provider.name"), None);
        assert_eq!(attr(&spans[0], "gen_ai.usage.input_tokens"), None);
        assert!(spans[0].status.is_none(), "{:?}", spans[0].status);

        let mut batch = batch;
        let held = p.start(&HeaderMap::new(), Endpoint::Messages, "held", Kind::Client);
        let observer = held.share_facts();
        drop(held);
        batch.extend(q.spans.try_iter());
        let (a, b) = (Arc::as_ptr(&batch[0]), Arc::as_ptr(&batch[1]));
        q.recycle(&mut batch);
        let next = p.start(&HeaderMap::new(), Endpoint::Messages, "next", Kind::Client);
        assert_eq!(ptr(&next), a, "the free record came back");
        let after = p.start(&HeaderMap::new(), Endpoint::Messages, "after", Kind::Client);
        assert_ne!(ptr(&after), b, "the held one did not");
        drop(observer);
    }

    #[test]
    fn a_new_trace_is_a_root_and_an_unsampled_parent_is_propagated_not_exported() {
        let (p, q) = pipeline(batching(16, Duration::from_secs(600)));
        let root = p.start(&HeaderMap::new(), Endpoint::Embeddings, "e", Kind::Server);
        let mut hop = HeaderMap::new();
        root.inject(&mut hop);
        assert!(hop[TRACEPARENT].to_str().unwrap().ends_with("-01"));
        drop(root);
        let unsampled = client_headers("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00");
        let s = p.start(&unsampled, Endpoint::Embeddings, "e", Kind::Server);
        let mut hop = HeaderMap::new();
        s.inject(&mut hop);
        assert!(hop[TRACEPARENT]
            .to_str()
            .unwrap()
            .starts_with("00-0af7651916cd43dd8448eb211c80319c-"));
        assert!(hop[TRACEPARENT].to_str().unwrap().ends_with("-00"));
        drop(s);
        let batch: Vec<Arc<Record>> = q.spans.try_iter().collect();
        let (_, spans) = decode(&encode(p, &batch));
        assert_eq!(spans.len(), 1, "only the sampled root");
        assert!(spans[0].parent_span_id.is_empty());
        assert_eq!(spans[0].flags, 0x101);
        assert_eq!(spans[0].name, "embeddings e");
    }

    #[test]
    fn traceparent_follows_the_sdk_propagator() {
        use opentelemetry::propagation::{Extractor, TextMapPropagator};
        use opentelemetry::trace::TraceContextExt;
        struct Get<'a>(&'a HeaderMap);
        impl Extractor for Get<'_> {
            fn get(&self, key: &str) -> Option<&str> {
                self.0.get(key).and_then(|v| v.to_str().ok())
            }
            fn keys(&self) -> Vec<&str> {
                self.0.keys().map(HeaderName::as_str).collect()
            }
        }
        let t = "4bf92f3577b34da6a3ce929d0e0e4736";
        // (Where the two differ on purpose: the SDK also takes ids shorter than the 32 and 16
        // digits the recommendation fixes, such as a 15-digit span id; this parser refuses them.)
        let cases = [
            format!("00-{t}-00f067aa0ba902b7-01"),
            format!("00-{t}-00f067aa0ba902b7-00"),
            format!("00-{t}-00f067aa0ba902b7-03"),
            format!(" 00-{t}-00f067aa0ba902b7-01 "),
            format!("01-{t}-00f067aa0ba902b7-01-extra"),
            format!("01-{t}-00f067aa0ba902b7-01"),
            format!("00-{t}-00f067aa0ba902b7-01-extra"),
            format!("ff-{t}-00f067aa0ba902b7-01"),
            format!("00-{}-00f067aa0ba902b7-01", t.to_uppercase()),
            format!("00-{t}-00F067AA0BA902B7-01"),
            format!("00-{}-00f067aa0ba902b7-01", "0".repeat(32)),
            format!("00-{t}-0000000000000000-01"),
            format!("00-{t}-00f067aa0ba902b7-0g"),
            format!("00_{t}-00f067aa0ba902b7-01"),
            String::new(),
        ];
        let mut short = HeaderMap::new();
        short.insert(
            TRACEPARENT,
            HeaderValue::from_str(&format!("00-{t}-00f067aa0ba902b-01")).unwrap(),
        );
        assert!(parse_traceparent(&short).is_none());
        for tp in cases {
            let mut h = HeaderMap::new();
            if let Ok(v) = HeaderValue::from_str(&tp) {
                h.insert(TRACEPARENT, v);
            }
            h.insert(TRACESTATE, HeaderValue::from_static("a=1,b=2"));
            let sdk = opentelemetry_sdk::propagation::TraceContextPropagator::new()
                .extract(&Get(&h))
                .span()
                .span_context()
                .clone();
            let ours = parse_traceparent(&h).unwrap_or(SpanContext::NONE);
            assert_eq!(ours.is_valid(), sdk.is_valid(), "{tp:?}");
            if sdk.is_valid() {
                assert_eq!(ours, sdk, "{tp:?}");
                assert_eq!(
                    format_traceparent(&ours).to_str().unwrap(),
                    tp.trim()
                        .get(..55)
                        .unwrap()
                        .replacen("01-", "00-", 1)
                        .replace("-03", "-01")
                );
            }
        }
    }

    /// `batch` as the exporter would POST it.
    fn encode(p: &Pipeline, batch: &[Arc<Record>]) -> Vec<u8> {
        let mut spans = Vec::new();
        p.encode_spans(batch, &mut spans);
        p.frame(&spans)
    }

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    /// A real OTLP/HTTP receiver on 127.0.0.1:0 counting the spans it decodes.
    async fn receiver() -> (std::net::SocketAddr, Arc<AtomicUsize>) {
        let (addr, spans, _) = slow_receiver(Duration::ZERO).await;
        (addr, spans)
    }

    /// `receiver`, answering each export `delay` after it arrived; also counts the exports
    /// that arrived (before their answer).
    async fn slow_receiver(
        delay: Duration,
    ) -> (std::net::SocketAddr, Arc<AtomicUsize>, Arc<AtomicUsize>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let spans = Arc::new(AtomicUsize::new(0));
        let arrived = Arc::new(AtomicUsize::new(0));
        let (seen, came) = (spans.clone(), arrived.clone());
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let (seen, came) = (seen.clone(), came.clone());
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(
                        move |req: http::Request<hyper::body::Incoming>| {
                            let (seen, came) = (seen.clone(), came.clone());
                            async move {
                                let body = req.into_body().collect().await?.to_bytes();
                                came.fetch_add(1, Ordering::SeqCst);
                                tokio::time::sleep(delay).await;
                                seen.fetch_add(decode(&body).1.len(), Ordering::SeqCst);
                                Ok::<_, hyper::Error>(http::Response::new(Full::new(Bytes::new())))
                            }
                        },
                    );
                    let io = hyper_util::rt::TokioIo::new(tcp);
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(io, svc)
                        .await;
                });
            }
        });
        (addr, spans, arrived)
    }

    /// A pipeline of its own batching `max_batch` spans (600 s delay: only a full batch or a
    /// flush sends), its exporter task posting to `addr`.
    fn exporting(addr: std::net::SocketAddr, max_batch: usize) -> &'static Pipeline {
        let (p, q) = pipeline(Batching {
            max_batch,
            ..batching(64, Duration::from_secs(600))
        });
        let url = format!("http://{addr}/v1/traces").parse().unwrap();
        Exporter::spawn(p, q, url, &tokio::runtime::Handle::current());
        p
    }

    /// `n` worker spans started and ended.
    fn end_spans(p: &'static Pipeline, n: usize) {
        for _ in 0..n {
            drop(p.start(&HeaderMap::new(), Endpoint::Messages, "c", Kind::Client));
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn flush_sends_what_is_queued() {
        let (addr, received) = receiver().await;
        // A delay far longer than the test: only the flush can send these spans.
        let p = exporting(addr, 64);
        end_spans(p, 3);
        p.flush(Duration::from_secs(10)).await;
        assert_eq!(received.load(Ordering::SeqCst), 3);
        assert_eq!(p.failures.load(Ordering::Relaxed), 0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_full_batch_goes_out_without_waiting_for_the_delay() {
        let (addr, received) = receiver().await;
        let p = exporting(addr, 4);
        end_spans(p, 4);
        let deadline = Instant::now() + Duration::from_secs(10);
        while received.load(Ordering::SeqCst) < 4 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(received.load(Ordering::SeqCst), 4);
    }

    /// A flush asked for while the exporter waits for an export's answer is not lost until the
    /// delay (when the exporter was a thread, that wait parked it too and ate the wake-up once).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_flush_during_an_export_is_not_lost() {
        let (addr, received, arrived) = slow_receiver(Duration::from_millis(300)).await;
        let p = exporting(addr, 4);
        end_spans(p, 5);
        // The first four are at the receiver, waiting 300 ms for its answer; the flush comes
        // meanwhile.
        let deadline = Instant::now() + Duration::from_secs(10);
        while arrived.load(Ordering::SeqCst) == 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(arrived.load(Ordering::SeqCst), 1, "the full batch went out");
        let asked = Instant::now();
        p.flush(Duration::from_secs(10)).await;
        assert!(
            asked.elapsed() < Duration::from_secs(5),
            "{:?}",
            asked.elapsed()
        );
        assert_eq!(received.load(Ordering::SeqCst), 5);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_dead_collector_counts_a_failure() {
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = closed.local_addr().unwrap();
        drop(closed);
        let p = exporting(addr, 64);
        end_spans(p, 1);
        p.flush(Duration::from_secs(10)).await;
        assert_eq!(p.failures.load(Ordering::Relaxed), 1);
    }
}
