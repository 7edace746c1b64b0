//! Response bodies: one enum instead of a boxed trait object, so the request path allocates no
//! box per response.
//!
//! `ProxyBody` passes the provider's frames through as they arrive (never collecting them),
//! enforces the idle timeout between chunks, and makes sure a stream that breaks never ends
//! cleanly: an SSE stream gets the dialect's error event and then an `Err` frame, which makes
//! hyper abort the connection instead of writing the final chunk; other bodies just get the
//! `Err`. Dropping it (the client went away) drops the upstream body and so the upstream
//! connection at once. `MockBody` paces a mock provider's frames. `WaitingBody` is a streaming
//! response answered before its provider slot was free: keep-alive pings while the rest of the
//! attempts run inside it, then the provider's stream (or an error event and an abort).
//! `Attempt` is the per-attempt guard: provider in-flight count, outcome (metrics, routing
//! statistics, circuit breaker) and the pool-wide provider slot, all released when it drops;
//! starting one counts it for the request's attempt total (`count_attempts`).

use crate::breaker::{self, CircuitState};
use crate::metrics::Outcome;
use crate::providers::mock::MockReply;
use crate::providers::Provider;
use bytes::Bytes;
use gateway::provider_slots::SlotGuard;
use gateway::{ApiError, Dialect, ErrorKind};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use std::cell::Cell;
use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::time::Sleep;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Why a stream was cut short; the error the body reports to hyper.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    #[error("upstream stream broke: {0}")]
    Upstream(String),
    #[error("upstream sent nothing for {0:?}")]
    Idle(Duration),
}

/// The worker-wide counters the heartbeat reports.
#[derive(Debug, Default)]
pub struct Counters {
    pub inflight: AtomicU64,
    pub served: AtomicU64,
}

/// Counts one request in flight until dropped, which is when its response body has ended or
/// the client went away.
#[derive(Debug)]
pub struct RequestGuard(Arc<Counters>);

impl RequestGuard {
    pub fn new(c: &Arc<Counters>) -> Self {
        c.inflight.fetch_add(1, Ordering::Relaxed);
        Self(c.clone())
    }
}

impl Drop for RequestGuard {
    fn drop(&mut self) {
        self.0.inflight.fetch_sub(1, Ordering::Relaxed);
        self.0.served.fetch_add(1, Ordering::Relaxed);
    }
}

/// One attempt at a provider: counted in the provider's `inflight` until dropped; records its
/// outcome exactly once (`Cancelled` if nobody did before the drop), in the metrics, the
/// routing statistics and the provider's circuit breaker. It also owns the pool-wide provider
/// slot, if one was taken, so the slot is held exactly as long as the response body.
pub struct Attempt {
    pub provider: Arc<Provider>,
    started: Instant,
    done: bool,
    _slot: Option<SlotGuard>,
    /// Reads the answer's usage and sends its record when the outcome is recorded.
    usage: Option<Box<crate::usage::Observer>>,
}

tokio::task_local! {
    /// Attempts started by the request whose handler scoped this (see `count_attempts`).
    static ATTEMPTS: Cell<u32>;
}

/// Runs `fut` (a request's attempt loop) and returns its output with the number of attempts it
/// started. Counted where every attempt begins (`Attempt::start`), so the attempt loop needs no
/// bookkeeping of its own for the access log. Attempts that run later inside a `WaitingBody`
/// (after the 200 and its pings went out) are outside the scope and not counted: their
/// response head, which would carry the count, is gone already.
pub async fn count_attempts<F: Future>(fut: F) -> (F::Output, u32) {
    ATTEMPTS
        .scope(Cell::new(0), async {
            let out = fut.await;
            (out, ATTEMPTS.with(Cell::get))
        })
        .await
}

impl Attempt {
    pub fn start(provider: Arc<Provider>, slot: Option<SlotGuard>) -> Self {
        provider.state.inflight.fetch_add(1, Ordering::Relaxed);
        // Outside a handler's scope (unit tests, a `WaitingBody`) there is nothing to count.
        let _ = ATTEMPTS.try_with(|n| n.set(n.get() + 1));
        Self {
            provider,
            started: Instant::now(),
            done: false,
            _slot: slot,
            usage: None,
        }
    }

    /// Accounts this attempt's answer (`crate::usage`): its record goes out with the outcome.
    pub fn observe(&mut self, o: crate::usage::Observer) {
        self.usage = Some(Box::new(o));
    }

    /// A frame on its way to the client, seen by the usage observer (which may hide the Chat
    /// usage chunk the client did not ask for); `last` = nothing follows.
    fn pass(&mut self, frame: Frame<Bytes>, last: bool) -> Frame<Bytes> {
        match frame.into_data() {
            Ok(data) => Frame::data(self.pass_data(data, last)),
            Err(frame) => frame,
        }
    }

    fn pass_data(&mut self, data: Bytes, last: bool) -> Bytes {
        match &mut self.usage {
            Some(o) => o.chunk(data, last),
            None => data,
        }
    }

    /// Response headers arrived: feeds the latency statistics.
    pub fn headers_received(&self) {
        let d = self.started.elapsed();
        self.provider.state.record_latency(d);
        self.provider.metrics.latency.observe(d.as_secs_f64());
    }

    /// Records `outcome`, with its default meaning for the breaker.
    pub fn finish(&mut self, outcome: Outcome) {
        let b = match outcome {
            Outcome::Success => Some(breaker::Outcome::Success),
            Outcome::ClientError => Some(breaker::Outcome::ClientError),
            Outcome::RateLimited => Some(breaker::Outcome::RateLimited(breaker::DEFAULT_COOLDOWN)),
            Outcome::ServerError
            | Outcome::ConnectError
            | Outcome::Timeout
            | Outcome::StreamError => Some(breaker::Outcome::Failure),
            Outcome::Cancelled => None,
        };
        self.finish_as(outcome, b);
    }

    /// Records `outcome` in the metrics and `b` in the breaker; `None` = no verdict (the client
    /// left), which only gives back a half-open trial slot.
    pub fn finish_as(&mut self, outcome: Outcome, b: Option<breaker::Outcome>) {
        if self.done {
            return;
        }
        self.done = true;
        if let Some(o) = self.usage.take() {
            o.finish(outcome);
        }
        self.provider.metrics.count(outcome);
        self.provider.state.record_outcome(outcome.is_failure());
        match b {
            Some(o) => self.provider.breaker.record(o),
            None => {
                if self.provider.breaker.state() == CircuitState::HalfOpen {
                    self.provider.breaker.release_trial();
                }
            }
        }
    }
}

impl Drop for Attempt {
    fn drop(&mut self) {
        self.finish(Outcome::Cancelled);
        self.provider.state.inflight.fetch_sub(1, Ordering::Relaxed);
    }
}

enum ProxyState {
    Streaming,
    /// The error event has been sent; after one `Pending` (so that hyper flushes the event),
    /// the next poll reports the error.
    Aborting {
        yielded: bool,
        err: Option<StreamError>,
    },
    Done,
}

/// A provider's response body on its way to the client.
///
/// The idle timer is lazy: a body that is there with its headers (most non-streamed answers)
/// never creates one, and a stream records when each frame came instead of re-arming a timer
/// per frame; the timer, created at the first wait, is only moved when it fires early.
pub struct ProxyBody {
    inner: Incoming,
    idle: Duration,
    /// When the headers or the last frame arrived.
    last: tokio::time::Instant,
    /// Fires at `last + idle` or earlier (then re-armed). Boxed because `Sleep` is `!Unpin`.
    timer: Option<Pin<Box<Sleep>>>,
    /// `Some` for `text/event-stream` responses: the dialect of the error event.
    sse: Option<Dialect>,
    state: ProxyState,
    attempt: Attempt,
    _request: RequestGuard,
    /// The request's span: the body is polled by hyper, outside the handler that entered it.
    span: tracing::Span,
}

impl ProxyBody {
    pub fn new(
        inner: Incoming,
        idle: Duration,
        sse: Option<Dialect>,
        attempt: Attempt,
        request: RequestGuard,
    ) -> Self {
        Self {
            inner,
            idle,
            last: tokio::time::Instant::now(),
            timer: None,
            sse,
            state: ProxyState::Streaming,
            attempt,
            _request: request,
            span: tracing::Span::current(),
        }
    }

    /// Polls the idle timer (creating it at the first wait); true once `idle` has really passed
    /// since the last frame. A timer that fires early (frames came meanwhile) is moved.
    fn idle_expired(&mut self, cx: &mut Context<'_>) -> bool {
        let due = self.last + self.idle;
        let t = self
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(due)));
        while t.as_mut().poll(cx).is_ready() {
            if tokio::time::Instant::now() >= due {
                return true;
            }
            t.as_mut().reset(due);
        }
        false
    }

    fn fail(
        &mut self,
        err: StreamError,
        outcome: Outcome,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.attempt.finish(outcome);
        tracing::warn!(parent: &self.span, provider = %self.attempt.provider.name(), error = %err, "stream cut short");
        match self.sse {
            Some(dialect) => {
                let kind = match err {
                    StreamError::Idle(_) => ErrorKind::GatewayTimeout,
                    StreamError::Upstream(_) => ErrorKind::BadGateway,
                };
                let event =
                    gateway::sse::error_event(dialect, &ApiError::new(kind, err.to_string()));
                self.state = ProxyState::Aborting {
                    yielded: false,
                    err: Some(err),
                };
                Poll::Ready(Some(Ok(Frame::data(Bytes::from(event)))))
            }
            None => {
                self.state = ProxyState::Done;
                Poll::Ready(Some(Err(err.into())))
            }
        }
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        match &mut this.state {
            ProxyState::Done => return Poll::Ready(None),
            ProxyState::Aborting { yielded, err } => {
                if !*yielded {
                    // hyper drops its unflushed write buffer when a body fails, so first let it
                    // flush the error event: it does so right after this `Pending` in the same
                    // turn of its connection loop, and the wake brings it back for the error.
                    *yielded = true;
                    cx.waker().wake_by_ref();
                    return Poll::Pending;
                }
                let e = err
                    .take()
                    .unwrap_or(StreamError::Upstream("aborted".into()));
                this.state = ProxyState::Done;
                return Poll::Ready(Some(Err(e.into())));
            }
            ProxyState::Streaming => {}
        }
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                let end = this.inner.is_end_stream();
                let frame = this.attempt.pass(frame, end);
                if end {
                    // hyper stops polling a body that says it has ended, so this is the end.
                    this.attempt.finish(Outcome::Success);
                    this.state = ProxyState::Done;
                } else {
                    this.last = tokio::time::Instant::now();
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => {
                let msg = crate::proxy::error_chain(&e);
                this.fail(StreamError::Upstream(msg), Outcome::StreamError)
            }
            Poll::Ready(None) => {
                this.attempt.finish(Outcome::Success);
                this.state = ProxyState::Done;
                Poll::Ready(None)
            }
            Poll::Pending => {
                if this.idle_expired(cx) {
                    this.fail(StreamError::Idle(this.idle), Outcome::Timeout)
                } else {
                    Poll::Pending
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self.state {
            ProxyState::Streaming => self.inner.is_end_stream(),
            ProxyState::Aborting { .. } => false,
            ProxyState::Done => true,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self.state {
            ProxyState::Streaming => self.inner.size_hint(),
            _ => SizeHint::default(),
        }
    }
}

/// A paced stream of mock frames.
pub struct MockBody {
    frames: VecDeque<Bytes>,
    /// Pause between frames; `None` = as fast as possible.
    interval: Option<Duration>,
    timer: Option<Pin<Box<Sleep>>>,
    attempt: Attempt,
    _request: RequestGuard,
}

impl MockBody {
    pub fn new(
        reply: MockReply,
        tokens_per_second: Option<f64>,
        attempt: Attempt,
        request: RequestGuard,
    ) -> Self {
        let interval = tokens_per_second
            .filter(|t| *t > 0.0 && reply.stream)
            .map(|t| Duration::from_secs_f64(1.0 / t));
        Self {
            frames: reply.frames,
            interval,
            timer: None,
            attempt,
            _request: request,
        }
    }
}

impl Body for MockBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        if let Some(t) = this.timer.as_mut() {
            if t.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
        }
        match this.frames.pop_front() {
            Some(f) => {
                let f = this.attempt.pass_data(f, this.frames.is_empty());
                if this.frames.is_empty() {
                    // hyper may never poll again once `is_end_stream` says so.
                    this.attempt.finish(Outcome::Success);
                } else if let Some(iv) = this.interval {
                    let at = tokio::time::Instant::now() + iv;
                    match this.timer.as_mut() {
                        Some(t) => t.as_mut().reset(at),
                        None => this.timer = Some(Box::pin(tokio::time::sleep_until(at))),
                    }
                }
                Poll::Ready(Some(Ok(Frame::data(f))))
            }
            None => {
                this.attempt.finish(Outcome::Success);
                Poll::Ready(None)
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.frames.is_empty()
    }

    fn size_hint(&self) -> SizeHint {
        if self.interval.is_none() && self.frames.len() == 1 {
            SizeHint::with_exact(self.frames[0].len() as u64)
        } else {
            SizeHint::default()
        }
    }
}

type BoxResponse = Pin<Box<dyn Future<Output = http::Response<ResBody>> + Send>>;

enum WaitState {
    /// Pinging while the attempts run.
    Waiting(BoxResponse),
    /// The provider's stream.
    Inner(ResBody),
    /// As in `ProxyBody`: the error event went out; one `Pending` to flush it, then the error.
    Aborting {
        yielded: bool,
    },
    Done,
}

/// A streaming response whose 200 was sent while it still waited for a provider slot:
/// keep-alive pings in the caller's dialect every `interval` (the first at once, so the client
/// has its headers) while `fut` (the rest of the attempts) runs inside this body; then the
/// provider's stream, or, if the attempts ended in anything but a 200 event stream, the
/// dialect's error event and an aborted body, so the stream never ends as if complete.
/// Dropping it (the client left) drops `fut`, and with it any slot or upstream request.
pub struct WaitingBody {
    state: WaitState,
    dialect: Dialect,
    interval: Duration,
    /// `None` until the first ping went out.
    ping: Option<Pin<Box<Sleep>>>,
}

impl WaitingBody {
    /// The 200 event-stream response that waits in its body.
    pub fn response(
        dialect: Dialect,
        interval: Duration,
        fut: BoxResponse,
    ) -> http::Response<ResBody> {
        // The rest of the attempts run in this body, polled outside the request's span: they
        // keep it, so their warnings still name the request.
        let fut = Box::pin(tracing::Instrument::in_current_span(fut));
        let body = Self {
            state: WaitState::Waiting(fut),
            dialect,
            interval: interval.max(Duration::from_millis(10)),
            ping: None,
        };
        let mut r = http::Response::new(ResBody::Waiting(Box::new(body)));
        let h = r.headers_mut();
        h.insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("text/event-stream"),
        );
        h.insert(
            http::header::CACHE_CONTROL,
            http::HeaderValue::from_static("no-cache"),
        );
        r
    }

    fn ping_frame(&mut self) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let at = tokio::time::Instant::now() + self.interval;
        match self.ping.as_mut() {
            Some(t) => t.as_mut().reset(at),
            None => self.ping = Some(Box::pin(tokio::time::sleep_until(at))),
        }
        Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(
            gateway::sse::ping(self.dialect),
        )))))
    }

    /// The attempts produced `resp`: stream it if it is an event stream, else report it.
    fn settle(&mut self, resp: http::Response<ResBody>) -> Option<Bytes> {
        let sse = resp
            .headers()
            .get(http::header::CONTENT_TYPE)
            .is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"));
        if resp.status() == http::StatusCode::OK && sse {
            self.state = WaitState::Inner(resp.into_body());
            return None;
        }
        let status = resp.status();
        // Our own errors and providers' buffered errors are whole JSON bodies in the dialect.
        let json = match resp.into_body() {
            ResBody::Full(Some(b))
                if serde_json::from_slice::<serde::de::IgnoredAny>(&b).is_ok() =>
            {
                Some(String::from_utf8_lossy(&b).into_owned())
            }
            _ => None,
        };
        let event = match json {
            Some(j) => gateway::sse::error_frame(self.dialect, &j),
            None => {
                let kind = ErrorKind::from_upstream_status(status.as_u16());
                let msg = format!("the provider answered {status} instead of an event stream");
                gateway::sse::error_event(self.dialect, &ApiError::new(kind, msg))
            }
        };
        self.state = WaitState::Aborting { yielded: false };
        Some(Bytes::from(event))
    }
}

impl Body for WaitingBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        loop {
            match &mut this.state {
                WaitState::Done => return Poll::Ready(None),
                WaitState::Inner(b) => return Pin::new(b).poll_frame(cx),
                WaitState::Aborting { yielded } => {
                    if !*yielded {
                        *yielded = true;
                        cx.waker().wake_by_ref();
                        return Poll::Pending;
                    }
                    this.state = WaitState::Done;
                    return Poll::Ready(Some(Err(StreamError::Upstream(
                        "no stream after waiting for the provider".into(),
                    )
                    .into())));
                }
                WaitState::Waiting(fut) => {
                    if this.ping.is_none() {
                        return this.ping_frame();
                    }
                    if let Poll::Ready(resp) = fut.as_mut().poll(cx) {
                        match this.settle(resp) {
                            Some(event) => return Poll::Ready(Some(Ok(Frame::data(event)))),
                            None => continue,
                        }
                    }
                    let timer = this.ping.as_mut().expect("armed above");
                    return match timer.as_mut().poll(cx) {
                        Poll::Ready(()) => this.ping_frame(),
                        Poll::Pending => Poll::Pending,
                    };
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.state {
            WaitState::Inner(b) => b.is_end_stream(),
            WaitState::Done => true,
            _ => false,
        }
    }
}

/// Every response body the worker sends.
pub enum ResBody {
    Full(Option<Bytes>),
    Proxy(Box<ProxyBody>),
    Mock(MockBody),
    Waiting(Box<WaitingBody>),
    /// A refused upload's answer, draining the upload after it (`gateway::upload`).
    Drain(Box<gateway::upload::Drain<Incoming>>),
}

impl ResBody {
    pub fn full(b: impl Into<Bytes>) -> Self {
        Self::Full(Some(b.into()))
    }

    /// The provider whose answer this body carries; `None` for the worker's own answers
    /// (errors, a stream still waiting for its provider).
    pub fn provider(&self) -> Option<&Arc<Provider>> {
        match self {
            Self::Proxy(p) => Some(&p.attempt.provider),
            Self::Mock(m) => Some(&m.attempt.provider),
            Self::Full(_) | Self::Waiting(_) | Self::Drain(_) => None,
        }
    }
}

impl From<String> for ResBody {
    fn from(s: String) -> Self {
        Self::full(s)
    }
}

impl Body for ResBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            Self::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            Self::Proxy(p) => Pin::new(p.as_mut()).poll_frame(cx),
            Self::Mock(m) => Pin::new(m).poll_frame(cx),
            Self::Waiting(w) => Pin::new(w.as_mut()).poll_frame(cx),
            Self::Drain(d) => Pin::new(d.as_mut()).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Self::Full(b) => b.is_none(),
            Self::Proxy(p) => p.is_end_stream(),
            Self::Mock(m) => m.is_end_stream(),
            Self::Waiting(w) => w.is_end_stream(),
            Self::Drain(d) => d.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Self::Full(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            Self::Proxy(p) => p.size_hint(),
            Self::Mock(m) => m.size_hint(),
            Self::Waiting(_) => SizeHint::default(),
            Self::Drain(d) => d.size_hint(),
        }
    }
}
