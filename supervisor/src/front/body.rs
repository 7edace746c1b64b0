//! Response bodies of the front listener, and the in-flight guard that rides on them.
//!
//! A forwarded response's body is the worker's body wrapped in [`Forwarded`], which holds the
//! slot lease, the client permit and the request record until the body ends or hyper drops it
//! (the client went away). Dropping them is the whole accounting: the lease gives back the
//! worker's place and wakes waiters, the record counts `gateway_requests_total`, observes the
//! duration and writes the access line. Frames pass through one by one, never buffered. A
//! broken SSE stream gets the front's error event only when the worker's own did not already
//! end it (`sse::LastEvent`), so the client sees exactly one.
//!
//! The wrapper also keeps the BUSY_BLOCKED mark: a timer armed for `blocked_after` past the last
//! response byte. It is re-armed lazily (only when it fires early) so a fast stream costs one
//! clock read per frame, not one timer-wheel update.

use super::auth::{Caller, ClientPermit};
use super::conns::Conn;
use super::dispatch::SlotLease;
use super::Shared;
use bytes::Bytes;
use gateway::{sse, ApiError, Dialect, ErrorKind};
use http::{HeaderValue, Method, Uri};
use http_body_util::combinators::UnsyncBoxBody;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::time::{Instant, Sleep};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Every body the front listener sends.
pub enum FrontBody {
    /// A complete body (errors, supervisor-served endpoints).
    Full(Option<Bytes>),
    /// A worker's response, streamed through with its in-flight accounting.
    Forwarded(Box<Forwarded>),
    /// A stream the front composes itself (keep-alive pings while waiting, then a worker's).
    Stream(UnsyncBoxBody<Bytes, BoxError>),
    /// An answer to a request whose upload was refused, draining the rest of the upload.
    Drain(Box<gateway::upload::Drain<Incoming>>),
}

impl FrontBody {
    pub fn empty() -> Self {
        Self::Full(None)
    }
}

impl From<String> for FrontBody {
    fn from(s: String) -> Self {
        Self::Full(Some(Bytes::from(s)))
    }
}

impl From<Bytes> for FrontBody {
    fn from(b: Bytes) -> Self {
        Self::Full(Some(b))
    }
}

impl Default for FrontBody {
    fn default() -> Self {
        Self::empty()
    }
}

impl Body for FrontBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            Self::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            Self::Forwarded(f) => Pin::new(f.as_mut()).poll_frame(cx),
            Self::Stream(s) => Pin::new(s).poll_frame(cx),
            Self::Drain(d) => Pin::new(d.as_mut()).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Self::Full(b) => b.is_none(),
            Self::Forwarded(f) => f.is_end_stream(),
            Self::Stream(s) => s.is_end_stream(),
            Self::Drain(d) => d.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Self::Full(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            Self::Forwarded(f) => f.inner.size_hint(),
            Self::Stream(s) => s.size_hint(),
            Self::Drain(d) => d.size_hint(),
        }
    }
}

/// One request's record: counted and logged when dropped, i.e. when its response has ended.
/// The optional parts are filled in as the request gets that far, and left out of the access
/// line when it did not.
pub struct RequestRecord {
    pub shared: Arc<Shared>,
    pub start: Instant,
    pub method: Method,
    pub uri: Uri,
    /// The route's metrics label (bounded set).
    pub route: &'static str,
    pub status: u16,
    pub worker: Option<usize>,
    pub request_id: HeaderValue,
    /// Who was admitted (absent when the request was refused before that).
    pub caller: Option<Caller>,
    /// The body's `model`, for inference requests.
    pub model: Option<String>,
    /// The provider that answered, as the worker named it (`x-gateway-provider`).
    pub provider: Option<HeaderValue>,
    /// Provider attempts, as the worker counted them (`x-gateway-attempts`).
    pub attempts: Option<u32>,
    /// `FROM->TO` when the worker translated the request (`x-gateway-translated`).
    pub translated: Option<HeaderValue>,
    /// When the first byte of a worker's body (or its end, if empty) passed to the client.
    pub first_byte: Option<Duration>,
}

impl RequestRecord {
    /// The access log's `client`: a named client's name, `server` for the server token.
    fn client(&self) -> Option<&str> {
        match self.caller.as_ref()? {
            Caller::Client(c) => Some(&c.name),
            Caller::Server => Some("server"),
            Caller::Open => None,
        }
    }
}

impl Drop for RequestRecord {
    fn drop(&mut self) {
        let elapsed = self.start.elapsed();
        self.shared
            .counters
            .inc(&self.shared.metrics, self.route, self.status);
        self.shared
            .metrics
            .request_duration
            .observe(elapsed.as_secs_f64());
        tracing::info!(
            target: "access",
            method = %self.method,
            path = self.uri.path(),
            status = self.status,
            request_id = self.request_id.to_str().unwrap_or("-"),
            client = self.client(),
            worker = self.worker.map_or(-1, |w| w as i64),
            provider = self.provider.as_ref().and_then(|p| p.to_str().ok()),
            model = self.model.as_deref(),
            attempts = self.attempts,
            translated = self.translated.as_ref().and_then(|t| t.to_str().ok()),
            duration_us = elapsed.as_micros() as u64,
            ttfb_us = self.first_byte.map(|d| d.as_micros() as u64),
            "request"
        );
    }
}

/// A worker's response body with the request's accounting attached.
pub struct Forwarded {
    /// Fields drop in declaration order: the worker's body (its connection goes back to the pool
    /// or closes), the lease (the worker's place, and the wake-up of waiters), the client permit,
    /// then the record, so the access line is written once the counters are back.
    inner: Incoming,
    /// The worker connection `inner` arrives on; back to the pool once `inner` has ended.
    conn: Option<Conn>,
    lease: SlotLease,
    _permit: Option<ClientPermit>,
    _record: RequestRecord,
    blocked_after: Duration,
    timer: Option<Pin<Box<Sleep>>>,
    last_byte: Instant,
    /// Set for SSE responses: a broken stream then ends with an error event in this dialect,
    /// unless the worker's stream already ended with one (`events`): the client sees one.
    sse: Option<Dialect>,
    events: sse::LastEvent,
    /// The upstream error to raise after the error event went out.
    pending_error: Option<BoxError>,
    /// Whether the error event was given a chance to be flushed.
    yielded: bool,
    done: bool,
}

impl Forwarded {
    pub fn new(
        inner: Incoming,
        conn: Conn,
        mut lease: SlotLease,
        permit: Option<ClientPermit>,
        record: RequestRecord,
        blocked_after: Duration,
        sse: Option<Dialect>,
    ) -> Self {
        if sse.is_some() {
            lease.mark_streaming();
        }
        // The blocked mark taken while waiting for headers does not survive them.
        lease.set_blocked(false);
        let now = Instant::now();
        let timer = (!blocked_after.is_zero())
            .then(|| Box::pin(tokio::time::sleep_until(now + blocked_after)));
        Self {
            inner,
            conn: Some(conn),
            lease,
            _permit: permit,
            _record: record,
            blocked_after,
            timer,
            last_byte: now,
            sse,
            events: sse::LastEvent::new(),
            pending_error: None,
            yielded: false,
            done: false,
        }
    }

    /// A first byte (or the end) is passing to the client: the time to first byte, once.
    fn first_byte(&mut self) {
        let r = &mut self._record;
        r.first_byte.get_or_insert_with(|| r.start.elapsed());
    }

    /// The worker's body ended cleanly: its connection may carry the next request.
    fn end(&mut self) {
        self.first_byte();
        self.done = true;
        self.timer = None;
        self.lease.set_blocked(false);
        if let Some(c) = self.conn.take() {
            c.give_back();
        }
    }

    /// Polls the silence timer; marks the slot BUSY_BLOCKED once it really expired.
    fn poll_blocked(&mut self, cx: &mut Context<'_>) {
        let Some(t) = self.timer.as_mut() else { return };
        while t.as_mut().poll(cx).is_ready() {
            let due = self.last_byte + self.blocked_after;
            if Instant::now() >= due {
                self.lease.set_blocked(true);
                self.timer = None;
                return;
            }
            t.as_mut().reset(due);
        }
    }
}

impl Body for Forwarded {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        if this.pending_error.is_some() {
            // Yield once first: hyper flushes the error event on `Pending`, whereas an error
            // right behind it would close the connection with the event still unsent.
            if !this.yielded {
                this.yielded = true;
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            this.done = true;
            return Poll::Ready(this.pending_error.take().map(Err));
        }
        if this.done {
            return Poll::Ready(None);
        }
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(f))) => {
                if let (Some(_), Some(data)) = (this.sse, f.data_ref()) {
                    this.events.observe(data);
                }
                this.first_byte();
                if this.inner.is_end_stream() {
                    // hyper may not poll a body again once it says it has ended.
                    this.end();
                    return Poll::Ready(Some(Ok(f)));
                }
                this.last_byte = Instant::now();
                if this.lease.is_blocked() {
                    this.lease.set_blocked(false);
                    let due = this.last_byte + this.blocked_after;
                    this.timer = Some(Box::pin(tokio::time::sleep_until(due)));
                }
                Poll::Ready(Some(Ok(f)))
            }
            Poll::Ready(Some(Err(e))) => match this.sse {
                // A broken stream must not look complete: an error event, then the abort. A
                // worker that saw its provider's stream break sent its own event already.
                Some(_) if this.events.ended_with_error() => {
                    // Still yield once, so hyper flushes that event before the abort.
                    this.pending_error = Some(e.into());
                    this.yielded = true;
                    cx.waker().wake_by_ref();
                    Poll::Pending
                }
                Some(d) => {
                    this.pending_error = Some(e.into());
                    let err = ApiError::new(ErrorKind::BadGateway, "the worker's stream broke");
                    Poll::Ready(Some(Ok(Frame::data(Bytes::from(sse::error_event(
                        d, &err,
                    ))))))
                }
                None => {
                    this.done = true;
                    Poll::Ready(Some(Err(e.into())))
                }
            },
            Poll::Ready(None) => {
                this.end();
                Poll::Ready(None)
            }
            Poll::Pending => {
                this.poll_blocked(cx);
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done || (self.pending_error.is_none() && self.inner.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
