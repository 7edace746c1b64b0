//! A scriptable mock upstream (an AI provider stand-in): a real hyper HTTP/1.1 server on
//! 127.0.0.1:0, running on its own Tokio runtime in a background thread so that blocking tests
//! and async tests can both use it.
//!
//! Responses are `Script`s: a status, headers and a list of body `Step`s (a chunk, a delay, a
//! wait for a `Gate` the test opens, a stall, a reset that drops the connection mid-body).
//! Scripts are chosen per path: first a one-shot queue (`enqueue`), then a standing script
//! (`set`), then the `"*"` entries, else a 404. Every request is recorded (method, path with
//! query, headers, body); in-flight requests and the maximum seen are counted; responses whose
//! body was dropped before its end (the peer closed the connection) and closed connections are
//! counted too, with blocking `wait_*` helpers that take a deadline. A `strict` upstream first
//! checks requests on the three model APIs' paths as the real servers do (`dialects::check`)
//! and answers a rejected one with that API's 400 instead of its script.
//!
//! ```ignore
//! let up = Upstream::start();
//! up.set("/v1/chat/completions", Script::json(200, serde_json::json!({"ok": true})));
//! let gate = Gate::new();
//! up.enqueue("/v1/chat/completions", Script::sse_head().chunk("data: 1\n\n").wait(&gate).chunk("data: 2\n\n"));
//! ```

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::{Body, Frame, Incoming};
use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, Notify};

/// A one-way signal from the test to a script (`Step::Wait`). Cloning shares it.
#[derive(Clone, Default)]
pub struct Gate(Arc<(AtomicBool, Notify)>);

impl Gate {
    pub fn new() -> Self {
        Self::default()
    }

    /// Lets every script waiting on this gate (now or later) go on.
    pub fn open(&self) {
        self.0 .0.store(true, Ordering::SeqCst);
        self.0 .1.notify_waiters();
    }

    pub fn is_open(&self) -> bool {
        self.0 .0.load(Ordering::SeqCst)
    }

    async fn wait(&self) {
        loop {
            let notified = self.0 .1.notified();
            if self.is_open() {
                return;
            }
            notified.await;
        }
    }
}

/// One step of a response body.
#[derive(Clone)]
pub enum Step {
    Chunk(Bytes),
    Delay(Duration),
    Wait(Gate),
    /// Never send anything more (until the peer goes away).
    Stall,
    /// Drop the connection here, mid-body (no final chunk).
    Reset,
}

/// A scripted response.
#[derive(Clone)]
pub struct Script {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    /// Waits before the response headers (delays and gates; `Stall` = never send headers).
    pub before_headers: Vec<Step>,
    pub body: Vec<Step>,
}

impl Script {
    /// An empty response with `status`.
    pub fn status(status: u16) -> Self {
        Self {
            status,
            headers: Vec::new(),
            before_headers: Vec::new(),
            body: Vec::new(),
        }
    }

    /// A JSON response (with Content-Length).
    pub fn json(status: u16, v: serde_json::Value) -> Self {
        Self::status(status)
            .header("content-type", "application/json")
            .body_bytes(v.to_string())
    }

    /// An OpenAI chat answer reporting `prompt` input tokens (`cached` of them read from the
    /// cache) and `completion` output tokens.
    pub fn chat_with_usage(model: &str, prompt: u64, cached: u64, completion: u64) -> Self {
        Self::json(
            200,
            serde_json::json!({
                "id": "chatcmpl-up", "object": "chat.completion", "created": 1, "model": model,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"},
                             "finish_reason": "stop"}],
                "usage": {"prompt_tokens": prompt, "completion_tokens": completion,
                          "total_tokens": prompt + completion,
                          "prompt_tokens_details": {"cached_tokens": cached}},
            }),
        )
    }

    /// An OpenAI chat stream as OpenAI sends it with `include_usage`: content, the finish, the
    /// usage-only chunk (no choices), `[DONE]`.
    pub fn chat_stream_with_usage(model: &str, prompt: u64, completion: u64) -> Self {
        let chunk = |choices: serde_json::Value, usage: serde_json::Value| {
            let mut v = serde_json::json!({"id": "chatcmpl-up", "object": "chat.completion.chunk",
                                            "created": 1, "model": model, "choices": choices});
            if !usage.is_null() {
                v["usage"] = usage;
            }
            format!("data: {v}\n\n")
        };
        let text = chunk(
            serde_json::json!([{"index": 0, "delta": {"role": "assistant", "content": "hi"}, "finish_reason": null}]),
            serde_json::Value::Null,
        );
        let stop = chunk(
            serde_json::json!([{"index": 0, "delta": {}, "finish_reason": "stop"}]),
            serde_json::Value::Null,
        );
        let usage = chunk(
            serde_json::json!([]),
            serde_json::json!({"prompt_tokens": prompt, "completion_tokens": completion,
                               "total_tokens": prompt + completion}),
        );
        Self::sse(&[&text, &stop, &usage, "data: [DONE]\n\n"])
    }

    /// An Anthropic Messages stream: `message_start` with the input and cache counts, text,
    /// `message_delta` with the output count, `message_stop`.
    pub fn messages_stream_with_usage(
        model: &str,
        input: u64,
        cache_read: u64,
        output: u64,
    ) -> Self {
        let ev = |name: &str, v: serde_json::Value| format!("event: {name}\ndata: {v}\n\n");
        let frames = [
            ev(
                "message_start",
                serde_json::json!({"type": "message_start", "message": {
                "id": "msg_up", "type": "message", "role": "assistant", "model": model,
                "content": [], "stop_reason": null, "stop_sequence": null,
                "usage": {"input_tokens": input, "cache_read_input_tokens": cache_read,
                          "cache_creation_input_tokens": 0, "output_tokens": 1}}}),
            ),
            ev(
                "content_block_start",
                serde_json::json!({"type": "content_block_start", "index": 0,
                "content_block": {"type": "text", "text": ""}}),
            ),
            ev(
                "content_block_delta",
                serde_json::json!({"type": "content_block_delta", "index": 0,
                "delta": {"type": "text_delta", "text": "hi"}}),
            ),
            ev(
                "content_block_stop",
                serde_json::json!({"type": "content_block_stop", "index": 0}),
            ),
            ev(
                "message_delta",
                serde_json::json!({"type": "message_delta",
                "delta": {"stop_reason": "end_turn", "stop_sequence": null},
                "usage": {"output_tokens": output}}),
            ),
            ev("message_stop", serde_json::json!({"type": "message_stop"})),
        ];
        let refs: Vec<&str> = frames.iter().map(String::as_str).collect();
        Self::sse(&refs)
    }

    /// A `text/event-stream` response with no body steps yet.
    pub fn sse_head() -> Self {
        Self::status(200)
            .header("content-type", "text/event-stream")
            .header("cache-control", "no-cache")
    }

    /// An SSE response sending `frames` (whole `data: ...\n\n` frames) one chunk each.
    pub fn sse(frames: &[&str]) -> Self {
        Self::sse_head().frames(frames)
    }

    /// An SSE response sending `before`, then waiting for `gate`, then sending `after`.
    pub fn sse_gated(before: &[&str], gate: &Gate, after: &[&str]) -> Self {
        Self::sse(before).wait(gate).frames(after)
    }

    /// Appends `frames`, one chunk each.
    pub fn frames(self, frames: &[&str]) -> Self {
        frames
            .iter()
            .fold(self, |s, f| s.chunk(Bytes::copy_from_slice(f.as_bytes())))
    }

    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.to_string(), value.to_string()));
        self
    }

    /// The whole body at once, with a Content-Length header.
    pub fn body_bytes(self, b: impl Into<Bytes>) -> Self {
        let b = b.into();
        self.header("content-length", &b.len().to_string()).chunk(b)
    }

    pub fn chunk(self, b: impl Into<Bytes>) -> Self {
        self.body_step(Step::Chunk(b.into()))
    }

    pub fn delay(self, d: Duration) -> Self {
        self.body_step(Step::Delay(d))
    }

    pub fn wait(self, gate: &Gate) -> Self {
        self.body_step(Step::Wait(gate.clone()))
    }

    pub fn stall(self) -> Self {
        self.body_step(Step::Stall)
    }

    pub fn reset(self) -> Self {
        self.body_step(Step::Reset)
    }

    /// Waits `d` before sending the headers.
    pub fn delay_headers(self, d: Duration) -> Self {
        self.head_step(Step::Delay(d))
    }

    /// Waits for `gate` before sending the headers.
    pub fn wait_headers(self, gate: &Gate) -> Self {
        self.head_step(Step::Wait(gate.clone()))
    }

    /// Closes the connection without any response.
    pub fn close_before_headers(self) -> Self {
        self.head_step(Step::Reset)
    }

    /// Never sends the headers.
    pub fn stall_headers(self) -> Self {
        self.head_step(Step::Stall)
    }

    fn body_step(mut self, step: Step) -> Self {
        self.body.push(step);
        self
    }

    fn head_step(mut self, step: Step) -> Self {
        self.before_headers.push(step);
        self
    }
}

/// One request as the upstream saw it.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    /// Path and query, as sent (absolute-form targets keep scheme and host).
    pub target: String,
    pub path: String,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Recorded {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).expect("request body is JSON")
    }
}

#[derive(Default)]
struct State {
    queued: HashMap<String, VecDeque<Script>>,
    standing: HashMap<String, Script>,
    requests: Vec<Recorded>,
    inflight: usize,
    max_inflight: usize,
    completed: usize,
    aborted: usize,
    connections_opened: usize,
    connections_closed: usize,
    strict: bool,
}

struct Shared {
    state: Mutex<State>,
    changed: Condvar,
}

impl Shared {
    /// Short critical sections only; never held across an await.
    fn update<R>(&self, f: impl FnOnce(&mut State) -> R) -> R {
        let r = f(&mut self.state.lock().unwrap());
        self.changed.notify_all();
        r
    }
}

/// The running mock upstream. Dropping it stops the server and its thread.
pub struct Upstream {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Upstream {
    /// Starts a server on 127.0.0.1 with a free port.
    pub fn start() -> Self {
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            changed: Condvar::new(),
        });
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let sh = shared.clone();
        let thread = std::thread::Builder::new()
            .name("mock-upstream".into())
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                rt.block_on(async move {
                    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
                    addr_tx.send(listener.local_addr().unwrap()).unwrap();
                    serve(listener, sh, stop_rx).await;
                });
                // Cancels connection tasks still running (stalled scripts).
                rt.shutdown_background();
            })
            .expect("spawn upstream thread");
        let addr = addr_rx
            .recv_timeout(Duration::from_secs(10))
            .expect("upstream listening");
        Self {
            addr,
            shared,
            stop: Some(stop_tx),
            thread: Some(thread),
        }
    }

    /// Starts a server that answers `path` with `s` (a standing script, as `set`).
    pub fn serving(path: &str, s: Script) -> Self {
        let up = Self::start();
        up.set(path, s);
        up
    }

    /// Starts a server that answers `path` with an SSE stream: `before`, then a wait for the
    /// returned gate to open, then `after`.
    pub fn gated_sse(path: &str, before: &[&str], after: &[&str]) -> (Self, Gate) {
        let gate = Gate::new();
        let up = Self::serving(path, Script::sse_gated(before, &gate, after));
        (up, gate)
    }

    /// `http://127.0.0.1:PORT` + `path`, for `base_url`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Queues a one-shot response for `path` (`"*"` = any path).
    pub fn enqueue(&self, path: &str, s: Script) {
        self.shared
            .update(|st| st.queued.entry(path.to_string()).or_default().push_back(s));
    }

    /// Sets the response `path` gets whenever its queue is empty (`"*"` = any path).
    pub fn set(&self, path: &str, s: Script) {
        self.shared
            .update(|st| st.standing.insert(path.to_string(), s));
    }

    /// Rejects requests the real API would reject (`dialects::check`) with its 400.
    pub fn strict(&self) {
        self.shared.update(|st| st.strict = true);
    }

    /// Forgets every queued and standing script (recorded requests and counters stay).
    pub fn clear_scripts(&self) {
        self.shared.update(|st| {
            st.queued.clear();
            st.standing.clear();
        });
    }

    /// Every request so far.
    pub fn requests(&self) -> Vec<Recorded> {
        self.shared.state.lock().unwrap().requests.clone()
    }

    pub fn request_count(&self) -> usize {
        self.shared.state.lock().unwrap().requests.len()
    }

    pub fn inflight(&self) -> usize {
        self.shared.state.lock().unwrap().inflight
    }

    pub fn max_inflight(&self) -> usize {
        self.shared.state.lock().unwrap().max_inflight
    }

    /// Responses whose body ended as scripted.
    pub fn completed(&self) -> usize {
        self.shared.state.lock().unwrap().completed
    }

    /// Responses dropped before their end: the peer went away (or a scripted reset).
    pub fn aborted(&self) -> usize {
        self.shared.state.lock().unwrap().aborted
    }

    pub fn connections_closed(&self) -> usize {
        self.shared.state.lock().unwrap().connections_closed
    }

    pub fn connections_opened(&self) -> usize {
        self.shared.state.lock().unwrap().connections_opened
    }

    /// Waits until `cond` holds for the state, at most `timeout`; returns whether it held.
    fn wait(&self, timeout: Duration, cond: impl Fn(&State) -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        let mut st = self.shared.state.lock().unwrap();
        loop {
            if cond(&st) {
                return true;
            }
            let Some(left) = deadline.checked_duration_since(Instant::now()) else {
                return false;
            };
            st = self.shared.changed.wait_timeout(st, left).unwrap().0;
        }
    }

    /// Waits until at least `n` requests arrived.
    pub fn wait_requests(&self, n: usize, timeout: Duration) -> bool {
        self.wait(timeout, |s| s.requests.len() >= n)
    }

    /// Waits until at least `n` responses were dropped before their end.
    pub fn wait_aborted(&self, n: usize, timeout: Duration) -> bool {
        self.wait(timeout, |s| s.aborted >= n)
    }

    /// Waits until at least `n` connections were closed.
    pub fn wait_connections_closed(&self, n: usize, timeout: Duration) -> bool {
        self.wait(timeout, |s| s.connections_closed >= n)
    }

    /// Waits until no request is in flight.
    pub fn wait_idle(&self, timeout: Duration) -> bool {
        self.wait(timeout, |s| s.inflight == 0)
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

async fn serve(
    listener: tokio::net::TcpListener,
    shared: Arc<Shared>,
    mut stop: tokio::sync::oneshot::Receiver<()>,
) {
    loop {
        let (stream, _) = tokio::select! {
            _ = &mut stop => return,
            r = listener.accept() => match r { Ok(x) => x, Err(_) => continue },
        };
        let _ = stream.set_nodelay(true);
        shared.update(|s| s.connections_opened += 1);
        let sh = shared.clone();
        tokio::spawn(async move {
            let svc_shared = sh.clone();
            let svc = hyper::service::service_fn(move |req| respond(svc_shared.clone(), req));
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                .await;
            sh.update(|s| s.connections_closed += 1);
        });
    }
}

/// Counts a response in flight until dropped; `done` marks a scripted end.
struct InflightGuard {
    shared: Arc<Shared>,
    done: bool,
}

impl InflightGuard {
    fn new(shared: Arc<Shared>) -> Self {
        shared.update(|s| {
            s.inflight += 1;
            s.max_inflight = s.max_inflight.max(s.inflight);
        });
        Self {
            shared,
            done: false,
        }
    }
}

impl Drop for InflightGuard {
    fn drop(&mut self) {
        let done = self.done;
        self.shared.update(|s| {
            s.inflight -= 1;
            if done {
                s.completed += 1;
            } else {
                s.aborted += 1;
            }
        });
    }
}

fn pick(st: &mut State, path: &str) -> Option<Script> {
    for key in [path, "*"] {
        if let Some(s) = st.queued.get_mut(key).and_then(VecDeque::pop_front) {
            return Some(s);
        }
    }
    [path, "*"]
        .iter()
        .find_map(|k| st.standing.get(*k).cloned())
}

async fn respond(
    shared: Arc<Shared>,
    req: Request<Incoming>,
) -> Result<Response<ScriptBody>, std::io::Error> {
    let guard = InflightGuard::new(shared.clone());
    let (parts, body) = req.into_parts();
    let body = body
        .collect()
        .await
        .map(|c| c.to_bytes())
        .unwrap_or_default();
    let path = parts.uri.path().to_string();
    let target = parts.uri.to_string();
    let strict = shared.update(|st| st.strict);
    let rejected = super::dialects::Api::of_path(&path)
        .filter(|_| strict)
        .and_then(|api| {
            let e = super::dialects::check(api, &parts.headers, &body).err()?;
            Some(super::dialects::error(api, 400, &e))
        });
    let script = shared.update(|st| {
        st.requests.push(Recorded {
            method: parts.method.to_string(),
            target,
            path: path.clone(),
            headers: parts.headers.clone(),
            body,
        });
        rejected.or_else(|| pick(st, &path))
    });
    let script = script.unwrap_or_else(|| {
        Script::json(404, serde_json::json!({"error": {"message": format!("mock upstream: no script for {path}")}}))
    });
    for step in &script.before_headers {
        match step {
            Step::Delay(d) => tokio::time::sleep(*d).await,
            Step::Wait(g) => g.wait().await,
            // The service future is dropped (and the guard counts an abort) when the peer leaves.
            Step::Stall => std::future::pending::<()>().await,
            // A service error makes hyper close the connection without any response.
            Step::Reset => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::ConnectionReset,
                    "scripted close",
                ))
            }
            Step::Chunk(_) => {}
        }
    }
    let mut resp = Response::builder().status(StatusCode::from_u16(script.status).unwrap());
    for (k, v) in &script.headers {
        resp = resp.header(k, v);
    }
    let (tx, rx) = mpsc::channel(16);
    let steps = script.body.clone();
    tokio::spawn(run_steps(steps, tx));
    Ok(resp
        .body(ScriptBody {
            rx,
            guard: Some(guard),
            reset: None,
            flushed: false,
        })
        .unwrap())
}

/// Feeds the body; ends when the steps end or the body was dropped.
async fn run_steps(steps: Vec<Step>, tx: mpsc::Sender<Result<Bytes, std::io::Error>>) {
    for step in steps {
        match step {
            Step::Chunk(b) => {
                if tx.send(Ok(b)).await.is_err() {
                    return;
                }
            }
            Step::Delay(d) => {
                tokio::select! { _ = tokio::time::sleep(d) => {}, _ = tx.closed() => return }
            }
            Step::Wait(g) => {
                tokio::select! { _ = g.wait() => {}, _ = tx.closed() => return }
            }
            Step::Stall => {
                tx.closed().await;
                return;
            }
            Step::Reset => {
                let _ = tx
                    .send(Err(std::io::Error::new(
                        std::io::ErrorKind::ConnectionReset,
                        "scripted reset",
                    )))
                    .await;
                return;
            }
        }
    }
}

/// The response body: frames from `run_steps`; an `Err` makes hyper drop the connection.
struct ScriptBody {
    rx: mpsc::Receiver<Result<Bytes, std::io::Error>>,
    guard: Option<InflightGuard>,
    /// A scripted reset waiting for one flush.
    reset: Option<std::io::Error>,
    flushed: bool,
}

impl Body for ScriptBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        if self.flushed {
            if let Some(e) = self.reset.take() {
                self.guard.take();
                return Poll::Ready(Some(Err(e)));
            }
        }
        match self.rx.poll_recv(cx) {
            Poll::Ready(Some(Ok(b))) => Poll::Ready(Some(Ok(Frame::data(b)))),
            Poll::Ready(Some(Err(e))) => {
                if !self.flushed {
                    // hyper drops unflushed bytes when a body fails: let it flush the chunks
                    // before the reset (it does right after this Pending), then fail.
                    self.flushed = true;
                    self.reset = Some(e);
                    cx.waker().wake_by_ref();
                    return Poll::Pending;
                }
                // Dropping the guard now counts the reset as an abort.
                self.guard.take();
                Poll::Ready(Some(Err(e)))
            }
            Poll::Ready(None) => {
                if let Some(mut g) = self.guard.take() {
                    g.done = true;
                }
                Poll::Ready(None)
            }
            Poll::Pending => Poll::Pending,
        }
    }
}
