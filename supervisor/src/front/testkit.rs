//! Test harness: mock workers on real loopback sockets, a front listener serving over them, and
//! a small client. Used by the front's in-process tests only.
//!
//! A mock worker answers like a gateway worker, steered by request headers:
//! `x-test-wait-ms` (delay before headers), `x-test-chunks` / `x-test-interval-ms` (stream
//! shape), `x-test-status` (answer this status), `x-test-break` (drop the connection mid-stream),
//! `x-test-json` (a 200 JSON answer even to a streaming request).

use super::{serve, FrontContext};
use crate::metrics::SupervisorMetrics;
use crate::pool::{WorkerSlot, WorkerSlots, WorkerState};
use crate::shutdown::{self, ShutdownTrigger};
use arc_swap::ArcSwap;
use bytes::Bytes;
use gateway::Config;
use http::{Request, Response};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

type BoxBody = http_body_util::combinators::UnsyncBoxBody<Bytes, std::io::Error>;

/// One mock worker.
pub struct MockWorker {
    pub port: u16,
    /// Requests it received on /v1/*.
    pub hits: Arc<AtomicUsize>,
    /// When set, /v1/models and /metrics never answer (a stopped worker).
    pub frozen: Arc<AtomicBool>,
    task: JoinHandle<()>,
}

impl Drop for MockWorker {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl MockWorker {
    pub async fn start(id: usize) -> Self {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        let hits = Arc::new(AtomicUsize::new(0));
        let frozen = Arc::new(AtomicBool::new(false));
        let (h, f) = (hits.clone(), frozen.clone());
        let task = tokio::spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            loop {
                let Ok((s, _)) = l.accept().await else { return };
                let (h, f) = (h.clone(), f.clone());
                conns.spawn(async move {
                    let svc = hyper::service::service_fn(move |r| {
                        mock_handle(id, h.clone(), f.clone(), r)
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(s), svc)
                        .await;
                });
            }
        });
        Self {
            port,
            hits,
            frozen,
            task,
        }
    }

    /// A slot pointing at this worker, serving (IDLE).
    pub fn slot(&self, id: usize) -> Arc<WorkerSlot> {
        let s = Arc::new(WorkerSlot::new(id, self.port));
        s.set_lifecycle(WorkerState::Idle);
        s
    }
}

fn header_u64(r: &Request<Incoming>, name: &str) -> Option<u64> {
    r.headers().get(name)?.to_str().ok()?.parse().ok()
}

async fn mock_handle(
    id: usize,
    hits: Arc<AtomicUsize>,
    frozen: Arc<AtomicBool>,
    req: Request<Incoming>,
) -> Result<Response<BoxBody>, Infallible> {
    let path = req.uri().path().to_string();
    if path == "/metrics" || path == "/v1/models" {
        if frozen.load(SeqCst) {
            std::future::pending::<()>().await;
        }
        let body = if path == "/metrics" {
            format!("# HELP gateway_provider_requests Provider requests.\n# TYPE gateway_provider_requests counter\ngateway_provider_requests_total{{provider=\"demo\",outcome=\"ok\"}} {id}\n# EOF\n")
        } else {
            format!("{{\"object\":\"list\",\"data\":[{{\"id\":\"from-worker-{id}\",\"object\":\"model\",\"created\":0,\"owned_by\":\"w\"}}]}}")
        };
        return Ok(full(200, "text/plain", body));
    }
    hits.fetch_add(1, SeqCst);
    if let Some(ms) = header_u64(&req, "x-test-wait-ms") {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    if let Some(st) = header_u64(&req, "x-test-status") {
        return Ok(full(
            st as u16,
            "application/json",
            r#"{"error":{"message":"mock says no"}}"#.into(),
        ));
    }
    if req.headers().contains_key("x-test-json") {
        return Ok(full(
            200,
            "application/json",
            r#"{"not":"a stream"}"#.into(),
        ));
    }
    let chunks = header_u64(&req, "x-test-chunks").unwrap_or(3);
    let every = Duration::from_millis(header_u64(&req, "x-test-interval-ms").unwrap_or(0));
    let breaks = req.headers().contains_key("x-test-break");
    let rid = req.headers().get("x-request-id").cloned();
    let body = req
        .into_body()
        .collect()
        .await
        .map(|c| c.to_bytes())
        .unwrap_or_default();
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    let mut resp = if v["stream"] == true {
        sse(chunks, every, breaks)
    } else {
        full(
            200,
            "application/json",
            serde_json::json!({"worker": id, "model": v["model"]}).to_string(),
        )
    };
    if let Some(r) = rid {
        resp.headers_mut().insert("x-seen-request-id", r);
    }
    Ok(resp)
}

fn full(status: u16, ct: &str, body: String) -> Response<BoxBody> {
    Response::builder()
        .status(status)
        .header("content-type", ct)
        .body(
            Full::new(Bytes::from(body))
                .map_err(|e| match e {})
                .boxed_unsync(),
        )
        .unwrap()
}

fn sse(chunks: u64, every: Duration, breaks: bool) -> Response<BoxBody> {
    let s = futures_util::stream::unfold(0u64, move |i| async move {
        if i > chunks {
            return None;
        }
        if i > 0 && !every.is_zero() {
            tokio::time::sleep(every).await;
        }
        if i == chunks {
            if breaks {
                return Some((Err(std::io::Error::other("mock broke")), i + 1));
            }
            return Some((
                Ok(Frame::data(Bytes::from_static(b"data: [DONE]\n\n"))),
                i + 1,
            ));
        }
        Some((
            Ok(Frame::data(Bytes::from(format!("data: {{\"n\":{i}}}\n\n")))),
            i + 1,
        ))
    });
    Response::builder()
        .header("content-type", "text/event-stream")
        .body(StreamBody::new(s).boxed_unsync())
        .unwrap()
}

/// A front listener over mock workers.
pub struct Harness {
    pub addr: SocketAddr,
    pub slots: Arc<WorkerSlots>,
    pub metrics: SupervisorMetrics,
    pub config: Arc<ArcSwap<Config>>,
    pub workers: Vec<MockWorker>,
    pub trigger: ShutdownTrigger,
    pub task: Option<JoinHandle<()>>,
    pub client: Client<HttpConnector, Full<Bytes>>,
}

/// A configuration for tests: no token variable, short timeouts.
pub fn test_config() -> Config {
    let mut c = gateway::config::parse_str(gateway::config::BUILTIN_CONFIG, "test").unwrap();
    c.server.auth_token_env = String::new();
    c.pool.queue_timeout = Duration::from_secs(5);
    c
}

impl Harness {
    /// `n` mock workers behind a front listener with `cfg`.
    pub async fn start(n: usize, cfg: Config) -> Self {
        let mut workers = Vec::new();
        for i in 0..n {
            workers.push(MockWorker::start(i).await);
        }
        let slots = workers.iter().enumerate().map(|(i, w)| w.slot(i)).collect();
        Self::with_slots(slots, workers, cfg).await
    }

    pub async fn with_slots(
        slots: Vec<Arc<WorkerSlot>>,
        workers: Vec<MockWorker>,
        cfg: Config,
    ) -> Self {
        let slots = Arc::new(WorkerSlots::new(slots));
        let (metrics, registry) = SupervisorMetrics::new();
        let config = Arc::new(ArcSwap::from_pointee(cfg));
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let (trigger, sd) = shutdown::channel();
        let ctx = FrontContext {
            dashboard: crate::dashboard::Dashboard::new(slots.clone()),
            slots: slots.clone(),
            config: config.clone(),
            metrics: metrics.clone(),
            registry: Arc::new(registry),
            limits: Default::default(),
            backend: None,
            access: Default::default(),
        };
        let task = Some(tokio::spawn(serve(l, ctx, sd)));
        let client = Client::builder(TokioExecutor::new()).build(HttpConnector::new());
        Self {
            addr,
            slots,
            metrics,
            config,
            workers,
            trigger,
            task,
            client,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Sends a request; `headers` as pairs.
    pub async fn send(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &str,
    ) -> Response<Incoming> {
        let mut b = Request::builder().method(method).uri(self.url(path));
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        let req = b.body(Full::new(Bytes::from(body.to_string()))).unwrap();
        self.client.request(req).await.expect("front answered")
    }

    pub async fn chat(&self, stream: bool, headers: &[(&str, &str)]) -> Response<Incoming> {
        let body = format!(r#"{{"model":"demo","stream":{stream},"messages":[]}}"#);
        let mut h = vec![("content-type", "application/json")];
        h.extend_from_slice(headers);
        self.send("POST", "/v1/chat/completions", &h, &body).await
    }

    /// Sum of the slots' in-flight counters.
    pub fn inflight(&self) -> u32 {
        self.slots
            .load()
            .iter()
            .map(|s| s.inflight.load(SeqCst))
            .sum()
    }

    /// Waits (deadline loop, not a sleep) until `f` holds.
    pub async fn until(&self, what: &str, mut f: impl FnMut() -> bool) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while !f() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out waiting for {what}"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

/// The whole body as text, and whether it ended cleanly (no error from the connection).
pub async fn read_all(resp: Response<Incoming>) -> (String, bool) {
    let mut body = resp.into_body();
    let mut out = Vec::new();
    loop {
        match body.frame().await {
            Some(Ok(f)) => {
                if let Ok(d) = f.into_data() {
                    out.extend_from_slice(&d);
                }
            }
            Some(Err(_)) => return (String::from_utf8_lossy(&out).into_owned(), false),
            None => return (String::from_utf8_lossy(&out).into_owned(), true),
        }
    }
}

/// The whole body parsed as JSON.
pub async fn json_body(r: Response<Incoming>) -> serde_json::Value {
    let b = r.into_body().collect().await.unwrap().to_bytes();
    serde_json::from_slice(&b).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&b)))
}

pub fn worker_of<B>(r: &Response<B>) -> usize {
    r.headers()["x-gateway-worker"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap()
}
