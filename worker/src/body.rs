//! Response bodies: one enum instead of a boxed trait object, so the request path allocates no
//! box per response.
//!
//! `ProxyBody` (the relay layer's `Relay` with the attempt as its hooks) passes the provider's
//! frames through as they arrive (never collecting them), enforces the idle timeout between
//! chunks, and makes sure a stream that breaks never ends cleanly: an SSE stream gets the
//! dialect's error event (unless the provider's own ended it) and then an `Err` frame, which
//! makes hyper abort the connection instead of writing the final chunk; other bodies just get
//! the `Err`. Dropping it (the client went away) drops the upstream body and so the upstream
//! connection at once. `MockBody` paces a mock provider's frames. A streaming
//! response answered before its provider permit was free is `gateway::relay::Pinging`
//! (`waiting_response`): keep-alive pings while the rest of the attempts run inside it, then the
//! provider's stream (or an error event and an abort).

use crate::attempt::Attempt;
use crate::metrics::Outcome;
use crate::providers::mock::MockReply;
use crate::providers::Provider;
use bytes::Bytes;
use gateway::conn_pool::Pooled;
use gateway::relay::{self, BoxError, Deadline, Failed, Failure, Hooks, Pinging, Relay};
use gateway::{ApiError, Dialect, ErrorKind};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::time::Sleep;

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
/// It also owns the request's trace span (`[telemetry]` on), which so ends with the response.
#[derive(Debug)]
pub struct RequestGuard(Arc<Counters>, Option<Box<gateway::telemetry::RequestSpan>>);

impl RequestGuard {
    pub fn new(c: &Arc<Counters>) -> Self {
        c.inflight.fetch_add(1, Ordering::Relaxed);
        Self(c.clone(), None)
    }

    /// Ends `span` when the response has ended.
    pub fn trace(&mut self, span: Option<gateway::telemetry::RequestSpan>) {
        // Boxed: a span is large, and the guard rides in every response body.
        self.1 = span.map(Box::new);
    }
}

impl Drop for RequestGuard {
    fn drop(&mut self) {
        self.0.inflight.fetch_sub(1, Ordering::Relaxed);
        self.0.served.fetch_add(1, Ordering::Relaxed);
    }
}

/// A provider's response body on its way to the client: the relay layer's `Relay` with the
/// attempt's hooks.
///
/// The idle deadline is lazy (`Deadline`): a body that is there with its headers (most
/// non-streamed answers) never creates a timer, and a stream only records when each frame came.
pub type ProxyBody = Relay<Pooled, AttemptHooks>;

/// What a provider's body holds until it ends: the attempt (its outcome is recorded when the
/// body ends or breaks) and the request's in-flight count.
pub struct AttemptHooks {
    attempt: Attempt,
    _request: RequestGuard,
    /// `idle`, for the error that reports it.
    idle: Duration,
    /// The request's span: the body is polled by hyper, outside the handler that entered it.
    span: tracing::Span,
    /// A translated stream's translator (`crate::translate::body`): it runs here, on each frame
    /// as the relay passes it, so the usage observer gets the translator's usage (instead of
    /// decoding the provider's events a second time) before the relay ends the attempt.
    translate: Option<Box<Translating>>,
}

/// A translator and the client frames it wrote that the body has not taken yet.
pub struct Translating {
    pub tr: crate::translate::StreamTranslator,
    pub out: String,
}

/// The relay of a provider's body `inner`: at most `idle` between frames; `sse` is the client's
/// dialect for a stream, whose breaking then ends with an error event.
pub fn proxy_body(
    inner: Pooled,
    idle: Duration,
    sse: Option<Dialect>,
    attempt: Attempt,
    request: RequestGuard,
) -> ProxyBody {
    let hooks = AttemptHooks {
        attempt,
        _request: request,
        idle,
        span: tracing::Span::current(),
        translate: None,
    };
    Relay::new(inner, hooks, Some(Deadline::new(idle)), sse)
}

impl AttemptHooks {
    /// The provider whose answer this is.
    pub fn provider(&self) -> &Arc<Provider> {
        &self.attempt.provider
    }

    /// Makes this a translated stream: each frame goes through `tr`, and the relay passes on
    /// empty frames; the client's frames are `translated().out`.
    pub fn translate(&mut self, tr: crate::translate::StreamTranslator) {
        self.translate = Some(Box::new(Translating {
            tr,
            out: String::new(),
        }));
    }

    pub fn translated(&mut self) -> Option<&mut Translating> {
        self.translate.as_deref_mut()
    }

    /// The translator's usage, for the observer, before the attempt ends.
    fn give_usage(&mut self) {
        if let Some(t) = &self.translate {
            self.attempt
                .give_usage(t.tr.usage(), t.tr.usage_before_break());
        }
    }

    fn fail(&mut self, err: StreamError, outcome: Outcome) -> Failure {
        let kind = match err {
            StreamError::Idle(_) => ErrorKind::GatewayTimeout,
            StreamError::Upstream(_) => ErrorKind::BadGateway,
        };
        // A translated stream's error event, in the client's dialect, is the translator's.
        if let Some(t) = &mut self.translate {
            t.tr.fail(kind, &err.to_string(), &mut t.out);
            self.give_usage();
        }
        self.attempt.finish(outcome);
        tracing::warn!(parent: &self.span, provider = %self.attempt.provider.name(), error = %err, "stream cut short");
        Failure {
            event: ApiError::new(kind, err.to_string()),
            error: err.into(),
        }
    }
}

impl Hooks for AttemptHooks {
    fn frame(&mut self, frame: Frame<Bytes>, last: bool) -> Frame<Bytes> {
        let Some(t) = &mut self.translate else {
            return self.attempt.pass(frame, last);
        };
        // Trailers have no place in the client's stream.
        if let Some(data) = frame.data_ref() {
            t.tr.feed(data, &mut t.out);
        }
        // The last frame's end comes with the relay's `end`, which follows.
        self.give_usage();
        self.attempt.pass(Frame::data(Bytes::new()), last)
    }

    fn end(&mut self) {
        if let Some(t) = &mut self.translate {
            t.tr.end(&mut t.out);
            self.give_usage();
        }
        self.attempt.finish(Outcome::Success);
    }

    fn failed(&mut self, err: BoxError) -> Failure {
        let msg = crate::error::error_chain(err.as_ref());
        self.fail(StreamError::Upstream(msg), Outcome::StreamError)
    }

    fn deadline(&mut self) -> Option<Failure> {
        Some(self.fail(StreamError::Idle(self.idle), Outcome::Timeout))
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

/// The rest of the attempts, settled into the stream to splice or the error event to send.
pub type Waiting = Pinging<Pin<Box<dyn Future<Output = Result<ResBody, Failed>> + Send>>, ResBody>;

/// A streaming response whose 200 goes out while `fut` (the rest of the attempts) still waits
/// for a provider permit: keep-alive pings in the caller's dialect every `interval`, then the
/// provider's stream if the attempts ended in one (`relay::is_stream_response`), else the
/// dialect's error event and an aborted body. Dropping it (the client left) drops `fut`, and
/// with it any permit or upstream request.
pub fn waiting_response(
    dialect: Dialect,
    interval: Duration,
    fut: BoxResponse,
) -> http::Response<ResBody> {
    // The rest of the attempts run in this body, polled outside the request's span: they keep
    // it, so their warnings still name the request.
    let fut = tracing::Instrument::in_current_span(fut);
    let settled = Box::pin(async move { settle(dialect, fut.await) });
    Waiting::response(ResBody::Waiting(Box::new(Pinging::new(
        settled, dialect, interval,
    ))))
}

/// The attempts produced `resp`: its stream, or the error event that reports it.
fn settle(dialect: Dialect, resp: http::Response<ResBody>) -> Result<ResBody, Failed> {
    if relay::is_stream_response(&resp) {
        return Ok(resp.into_body());
    }
    let status = resp.status();
    // Our own errors and providers' buffered errors are whole JSON bodies in the dialect.
    let json = match resp.into_body() {
        ResBody::Full(Some(b)) if serde_json::from_slice::<serde::de::IgnoredAny>(&b).is_ok() => {
            Some(String::from_utf8_lossy(&b).into_owned())
        }
        _ => None,
    };
    let event = match json {
        Some(j) => gateway::sse::error_frame(dialect, &j),
        None => {
            let kind = ErrorKind::from_upstream_status(status.as_u16());
            let msg = format!("the provider answered {status} instead of an event stream");
            gateway::sse::error_event(dialect, &ApiError::new(kind, msg))
        }
    };
    let error: BoxError =
        StreamError::Upstream("no stream after waiting for the provider".into()).into();
    Err(Failed {
        event: Bytes::from(event),
        error,
    })
}

/// Every response body the worker sends.
pub enum ResBody {
    Full(Option<Bytes>),
    /// A provider's answer read whole (a translated JSON answer), labelled with its provider.
    Whole(Box<WholeBody>),
    Proxy(Box<ProxyBody>),
    Mock(MockBody),
    Waiting(Box<Waiting>),
    /// A provider's stream translated into the client's API (`translate::body`).
    Translate(Box<crate::translate::body::TranslateBody>),
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
            Self::Proxy(p) => Some(&p.hooks().attempt.provider),
            Self::Mock(m) => Some(&m.attempt.provider),
            Self::Translate(t) => Some(t.provider()),
            Self::Whole(w) => Some(&w.provider),
            Self::Full(_) | Self::Waiting(_) | Self::Drain(_) => None,
        }
    }
}

impl From<String> for ResBody {
    fn from(s: String) -> Self {
        Self::full(s)
    }
}

/// A 200 JSON response (health, model lists, token counts).
pub(crate) fn json_response(v: &serde_json::Value) -> http::Response<ResBody> {
    let mut r = http::Response::new(ResBody::from(v.to_string()));
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::header::HeaderValue::from_static("application/json"),
    );
    r
}

// The dispatch to the variants is the relay layer's, shared with the front.
gateway::body_enum!(ResBody: full Full, Whole, Proxy, Mock, Waiting, Translate, Drain);

/// A provider's answer read whole (a translated JSON answer), labelled with its provider so the
/// response still names who answered.
pub struct WholeBody {
    bytes: Option<Bytes>,
    pub provider: Arc<Provider>,
}

impl WholeBody {
    pub fn new(bytes: Bytes, provider: Arc<Provider>) -> Self {
        Self {
            bytes: Some(bytes),
            provider,
        }
    }
}

impl Body for WholeBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        Poll::Ready(self.get_mut().bytes.take().map(|b| Ok(Frame::data(b))))
    }

    fn is_end_stream(&self) -> bool {
        self.bytes.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.bytes.as_ref().map_or(0, |b| b.len() as u64))
    }
}
