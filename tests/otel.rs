//! OpenTelemetry traces end to end: the real `supervisor start` with its workers exports to a
//! real OTLP/HTTP receiver started here (hyper on 127.0.0.1:0, decoding the protobuf with
//! `opentelemetry-proto`). A streamed request continuing a client's `traceparent` yields one
//! trace: the front's SERVER span (the client's span its parent) and the worker's span (the
//! front's its parent) with the GenAI attributes, ending after the stream did; a broken stream
//! is an error; a dead collector costs requests nothing and counts its failures.

mod support;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::trace::v1::{status::StatusCode, Span};
use prost::Message;
use std::net::SocketAddr;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use support::http::{self, chat_body, Stream, CHAT};
use support::process::{wait_until, PoolConfig, Running, TestEnv};
use support::upstream::{Script, Upstream};

const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CLIENT_SPAN: &str = "00f067aa0ba902b7";

/// The OTLP/HTTP receiver: every span of every `POST /v1/traces`, with its service name.
struct Receiver {
    addr: SocketAddr,
    spans: Arc<Mutex<Vec<(String, Span)>>>,
    _rt: tokio::runtime::Runtime,
}

impl Receiver {
    fn start() -> Self {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let spans = Arc::new(Mutex::new(Vec::new()));
        let listener = rt
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let addr = listener.local_addr().unwrap();
        let store = spans.clone();
        rt.spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                let store = store.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req| receive(store.clone(), req));
                    let io = hyper_util::rt::TokioIo::new(tcp);
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(io, svc)
                        .await;
                });
            }
        });
        Self {
            addr,
            spans,
            _rt: rt,
        }
    }

    fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Waits (with a deadline) until `n` spans of `TRACE_ID`-like trace `trace` arrived.
    fn wait_spans(&self, trace: &[u8], n: usize) -> Vec<(String, Span)> {
        let of_trace = || -> Vec<(String, Span)> {
            let all = self.spans.lock().unwrap();
            all.iter()
                .filter(|(_, s)| s.trace_id == trace)
                .cloned()
                .collect()
        };
        wait_until(Duration::from_secs(30), || of_trace().len() >= n);
        let got = of_trace();
        assert!(got.len() >= n, "expected {n} spans, got {got:#?}");
        got
    }
}

async fn receive(
    store: Arc<Mutex<Vec<(String, Span)>>>,
    req: ::http::Request<Incoming>,
) -> Result<::http::Response<Full<Bytes>>, hyper::Error> {
    assert_eq!(req.uri().path(), "/v1/traces");
    assert_eq!(
        req.headers().get("content-type").unwrap(),
        "application/x-protobuf"
    );
    let body = req.into_body().collect().await?.to_bytes();
    let msg = ExportTraceServiceRequest::decode(body).expect("an OTLP protobuf");
    let mut out = store.lock().unwrap();
    for rs in msg.resource_spans {
        let service = rs
            .resource
            .iter()
            .flat_map(|r| &r.attributes)
            .find(|kv| kv.key == "service.name")
            .and_then(|kv| kv.value.as_ref()?.value.clone())
            .map(|v| match v {
                Value::StringValue(s) => s,
                other => format!("{other:?}"),
            })
            .unwrap_or_default();
        for ss in rs.scope_spans {
            for s in ss.spans {
                out.push((service.clone(), s));
            }
        }
    }
    Ok(::http::Response::new(Full::new(Bytes::new())))
}

fn hex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

fn attr(s: &Span, key: &str) -> Option<Value> {
    s.attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref()?.value.clone())
}

fn string(s: &Span, key: &str) -> String {
    match attr(s, key) {
        Some(Value::StringValue(v)) => v,
        other => panic!("{key}: {other:?} on {}", s.name),
    }
}

fn int(s: &Span, key: &str) -> i64 {
    match attr(s, key) {
        Some(Value::IntValue(v)) => v,
        other => panic!("{key}: {other:?} on {}", s.name),
    }
}

fn now_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
}

/// A supervisor with 2 workers exporting to `endpoint`, a paced mock `slow` and the upstream.
fn start(endpoint: &str, up: &Upstream) -> (TestEnv, Running) {
    // Export every 100 ms instead of the SDK's 5 s, so the test waits less.
    start_with_delay(endpoint, up, "100")
}

/// `start` with the batch's schedule delay `delay_ms`.
fn start_with_delay(endpoint: &str, up: &Upstream, delay_ms: &str) -> (TestEnv, Running) {
    let base = up.url("");
    let extra = format!(
        r#"
[[providers]]
name = "slow"
kind = "mock"
models = ["slow"]
tokens_per_second = 20

[[providers]]
name = "up"
kind = "openai"
base_url = "{}/v1"
models = ["broken"]

[telemetry]
otlp_endpoint = "{endpoint}"
service_name = "otel-test"
"#,
        base.trim_end_matches('/')
    );
    let env = TestEnv::new(&PoolConfig::new(2).extra(&extra).build());
    let mut cmd: Command = env.supervisor(&["start"]);
    cmd.env("OTEL_BSP_SCHEDULE_DELAY", delay_ms);
    let run = Running::ready(cmd);
    (env, run)
}

#[test]
fn a_streamed_request_is_one_trace_continuing_the_clients() {
    let rx = Receiver::start();
    let up = Upstream::start();
    let (_env, run) = start(&rx.endpoint(), &up);
    let traceparent = format!("00-{TRACE_ID}-{CLIENT_SPAN}-01");
    let body = chat_body("slow", true).to_string();
    let headers = [("traceparent", traceparent.as_str())];
    let mut s = Stream::open(run.listen, "POST", CHAT, &headers, Some(body.as_bytes())).unwrap();
    assert_eq!(s.status, 200);
    let first = s.next_chunk().unwrap().expect("a first chunk");
    let first_at = now_nanos();
    assert!(!first.is_empty());
    let rest = s.read_to_end().unwrap();
    let last_at = now_nanos();
    assert!(String::from_utf8_lossy(&rest).contains("[DONE]"));

    let spans = rx.wait_spans(&hex(TRACE_ID), 2);
    assert_eq!(spans.len(), 2, "one span per process: {spans:#?}");
    let front = &spans
        .iter()
        .find(|(_, s)| s.kind == 2)
        .expect("a SERVER span")
        .1;
    let worker = &spans
        .iter()
        .find(|(_, s)| s.kind == 3)
        .expect("a CLIENT span")
        .1;
    assert!(spans.iter().all(|(svc, _)| svc == "otel-test"));
    assert_eq!(
        front.parent_span_id,
        hex(CLIENT_SPAN),
        "the client's span is the parent"
    );
    assert_eq!(
        worker.parent_span_id, front.span_id,
        "the worker's is the front's child"
    );
    assert_eq!(front.name, "chat slow");
    for s in [front, worker] {
        assert_eq!(string(s, "gen_ai.operation.name"), "chat");
        assert_eq!(string(s, "gen_ai.request.model"), "slow");
        assert_eq!(string(s, "gen_ai.provider.name"), "slow");
        assert_eq!(int(s, "http.response.status_code"), 200);
        assert_eq!(int(s, "gateway.attempts"), 1);
        assert_eq!(attr(s, "gateway.translated"), Some(Value::BoolValue(false)));
        assert_ne!(
            s.status.as_ref().map_or(0, |st| st.code),
            StatusCode::Error as i32
        );
    }
    let w = int(front, "gateway.worker.id");
    assert!((0..2).contains(&w), "worker id {w}");
    assert_eq!(string(worker, "gen_ai.response.model"), "slow");
    assert!(int(worker, "gen_ai.usage.input_tokens") > 0);
    assert!(int(worker, "gen_ai.usage.output_tokens") > 1);
    // The spans end with the stream, not at its first byte: the paced mock (20 tokens/s) took
    // a while between the first chunk the client read and the last.
    assert!(
        last_at - first_at > 100_000_000,
        "the stream took measurable time"
    );
    assert!(
        worker.end_time_unix_nano > first_at,
        "the worker's span outlived the first chunk"
    );
    assert!(front.end_time_unix_nano >= worker.end_time_unix_nano);
    assert!(front.start_time_unix_nano <= worker.start_time_unix_nano);
}

#[test]
fn a_broken_stream_is_an_error_span() {
    let rx = Receiver::start();
    let up = Upstream::start();
    let (_env, run) = start(&rx.endpoint(), &up);
    let first = "data: {\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"broken\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"hi\"},\"finish_reason\":null}]}\n\n";
    up.enqueue("/v1/chat/completions", Script::sse(&[first]).reset());
    let trace = "0af7651916cd43dd8448eb211c80319c";
    let traceparent = format!("00-{trace}-b7ad6b7169203331-01");
    let body = chat_body("broken", true).to_string();
    let headers = [("traceparent", traceparent.as_str())];
    let mut s = Stream::open(run.listen, "POST", CHAT, &headers, Some(body.as_bytes())).unwrap();
    assert_eq!(s.status, 200);
    let _ = s.read_to_end();
    let spans = rx.wait_spans(&hex(trace), 2);
    for (_, s) in &spans {
        let code = s.status.as_ref().map_or(0, |st| st.code);
        assert_eq!(
            code,
            StatusCode::Error as i32,
            "{} is an error: {s:#?}",
            s.name
        );
    }
    let worker = &spans.iter().find(|(_, s)| s.kind == 3).unwrap().1;
    assert_eq!(string(worker, "gen_ai.provider.name"), "up");
    // The provider never sees the trace: it is ours.
    let seen = up.requests();
    assert!(
        seen.iter().all(|r| r.header("traceparent").is_none()),
        "traceparent reached the provider"
    );
}

#[test]
fn a_dead_collector_costs_requests_nothing_but_a_counter() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let up = Upstream::start();
    let (_env, run) = start(&endpoint, &up);
    for _ in 0..5 {
        let r = http::post_chat(run.listen, "demo", true).unwrap();
        assert_eq!(r.status, 200);
    }
    let failures = || -> u64 {
        let page = http::get(run.listen, "/metrics").unwrap().text();
        page.lines()
            .filter(|l| l.starts_with("gateway_otlp_export_failures_total"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .sum()
    };
    assert!(
        wait_until(Duration::from_secs(30), || failures() > 0),
        "the failure counter rose"
    );
    let r = http::post_chat(run.listen, "demo", false).unwrap();
    assert_eq!(r.status, 200);
}

/// A request answered just before a SIGTERM is exported: with a batch delay far longer than
/// the test, only the flush at stop (front and worker) can send its spans.
#[test]
fn spans_of_a_request_just_before_sigterm_are_flushed_at_stop() {
    let rx = Receiver::start();
    let up = Upstream::start();
    let (_env, mut run) = start_with_delay(&rx.endpoint(), &up, "600000");
    let trace = "5b8aa5a2d2c872e8321cf37308d69df2";
    let traceparent = format!("00-{trace}-051581bf3cb55c13-01");
    let body = chat_body("slow", true).to_string();
    let headers = [("traceparent", traceparent.as_str())];
    let mut s = Stream::open(run.listen, "POST", CHAT, &headers, Some(body.as_bytes())).unwrap();
    assert_eq!(s.status, 200);
    let rest = s.read_to_end().unwrap();
    assert!(String::from_utf8_lossy(&rest).contains("[DONE]"));
    run.guard.signal(nix::sys::signal::Signal::SIGTERM);
    run.expect_stopped_exit_0();
    let spans = rx.wait_spans(&hex(trace), 2);
    let kinds: Vec<i32> = spans.iter().map(|(_, s)| s.kind).collect();
    assert!(
        kinds.contains(&2) && kinds.contains(&3),
        "the front's and the worker's span: {kinds:?}"
    );
}
