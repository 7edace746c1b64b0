//! Response bodies of the front listener, and the in-flight guard that rides on them.
//!
//! A forwarded response's body is the worker's body relayed by [`Forwarded`] (the relay layer's
//! `Relay` with the front's `Accounting` hooks), which holds the slot lease, the client permit
//! and the request record until the body ends or hyper drops it (the client went away).
//! Dropping them is the whole accounting: the lease gives back the worker's place and wakes
//! waiters, the record counts `gateway_requests_total`, observes the duration and writes the
//! access line. Frames pass through one by one, never buffered. A
//! broken SSE stream gets the front's error event only when the worker's own did not already
//! end it (`sse::LastEvent`), so the client sees exactly one.
//!
//! The hooks also keep the BUSY_BLOCKED mark: the relay's deadline, due `blocked_after` past
//! the last response byte (re-armed lazily, so a fast stream costs one clock read per frame).

use super::auth::{Caller, ClientPermit};
use super::counters::RequestMeters;
use super::dispatch::SlotLease;
use super::waiting::Waiting;
use bytes::Bytes;
use gateway::conn_pool::Pooled;
use gateway::relay::{BoxError, Deadline, Failure, Hooks, Relay};
use gateway::{ApiError, Dialect, ErrorKind};
use http::{HeaderValue, Method, Uri};
use hyper::body::{Frame, Incoming};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// Every body the front listener sends.
pub enum FrontBody {
    /// A complete body (errors, supervisor-served endpoints).
    Full(Option<Bytes>),
    /// A worker's response, streamed through with its in-flight accounting.
    Forwarded(Box<Forwarded>),
    /// A stream answered while its request still waits: keep-alive pings, then a worker's.
    Waiting(Box<Waiting>),
    /// An answer to a request whose upload was refused, draining the rest of the upload.
    Drain(Box<gateway::upload::Drain<Incoming>>),
    /// The dashboard's SSE stream of snapshots.
    Events(Box<crate::dashboard::EventStream>),
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

// The dispatch to the variants is the relay layer's, shared with the worker.
gateway::body_enum!(FrontBody: full Full, Forwarded, Waiting, Drain, Events);

/// One request's record: counted and logged when dropped, i.e. when its response has ended.
/// The optional parts are filled in as the request gets that far, and left out of the access
/// line when it did not.
pub struct RequestRecord {
    pub meters: Arc<RequestMeters>,
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
    /// The request's trace span (`[telemetry]` on, inference requests), ended with the record.
    pub trace: Option<gateway::telemetry::RequestSpan>,
}

impl RequestRecord {
    /// Puts what the request learnt on its span and ends it.
    fn trace_end(&self, t: gateway::telemetry::RequestSpan) {
        let f = t.facts();
        f.status(self.status);
        fn text(v: &Option<HeaderValue>) -> Option<&str> {
            v.as_ref()?.to_str().ok()
        }
        if let Some(p) = text(&self.provider) {
            f.provider(p);
        }
        if let Some(t) = text(&self.translated) {
            f.translated(t);
        }
        if let Some(w) = self.worker {
            f.worker(w);
        }
        if let Some(n) = self.attempts {
            f.attempts(n);
        }
    }

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
        self.meters
            .finished(self.route, self.status, elapsed, self.first_byte);
        if let Some(t) = self.trace.take() {
            self.trace_end(t);
        }
        let text =
            |v: &Option<HeaderValue>| v.as_ref().and_then(|v| v.to_str().ok()).map(str::to_string);
        // A worker's answer to a model's request: its usage record comes on the socket.
        let expects_record = self.worker.is_some() && self.model.is_some();
        let line = crate::usage::access::Line {
            method: self.method.clone(),
            path: self.uri.path().to_string(),
            status: self.status,
            request_id: self.request_id.to_str().unwrap_or("-").to_string(),
            client: self.client().map(str::to_string),
            worker: self.worker.map_or(-1, |w| w as i64),
            provider: text(&self.provider),
            model: self.model.take(),
            attempts: self.attempts,
            translated: text(&self.translated),
            duration_us: elapsed.as_micros() as u64,
            ttfb_us: self.first_byte.map(|d| d.as_micros() as u64),
            expects_record,
        };
        self.meters.access.line(line);
    }
}

/// A worker's response body with the request's accounting attached: the relay layer's `Relay`
/// with the front's hooks.
pub type Forwarded = Relay<Pooled, Accounting>;

/// What a forwarded body holds until it ends or hyper drops it.
///
/// Fields drop in declaration order, after the worker's body (the relay drops that first; its
/// connection went back to the pool when it ended, or closes with it): the lease (the worker's place, and the
/// wake-up of waiters), the client permit, then the record, so the access line is written once
/// the counters are back.
pub struct Accounting {
    lease: SlotLease,
    _permit: Option<ClientPermit>,
    record: RequestRecord,
}

/// The relay of a worker's response `inner` to the client. `sse` is the client's dialect for a
/// stream: a broken one then ends with an error event, unless the worker's own already did.
pub fn forwarded(
    inner: Pooled,
    mut lease: SlotLease,
    permit: Option<ClientPermit>,
    record: RequestRecord,
    blocked_after: Duration,
    sse: Option<Dialect>,
) -> Forwarded {
    if sse.is_some() {
        lease.mark_streaming();
    }
    // The blocked mark taken while waiting for headers does not survive them.
    lease.set_blocked(false);
    let blocked = (!blocked_after.is_zero()).then(|| Deadline::new(blocked_after));
    let hooks = Accounting {
        lease,
        _permit: permit,
        record,
    };
    Relay::new(inner, hooks, blocked, sse)
}

impl Accounting {
    /// A first byte (or the end) is passing to the client: the time to first byte, once.
    fn first_byte(&mut self) {
        let r = &mut self.record;
        r.first_byte.get_or_insert_with(|| r.start.elapsed());
    }
}

impl Hooks for Accounting {
    fn frame(&mut self, f: Frame<Bytes>, _last: bool) -> Frame<Bytes> {
        self.first_byte();
        // Bytes flow again: the worker is not blocked (a no-op when it was not marked).
        self.lease.set_blocked(false);
        f
    }

    /// The worker's body ended cleanly (its connection is back in the pool already).
    fn end(&mut self) {
        self.first_byte();
        self.lease.set_blocked(false);
    }

    fn failed(&mut self, err: BoxError) -> Failure {
        if let Some(t) = &self.record.trace {
            t.facts().error("the worker's stream broke");
        }
        let event = ApiError::new(ErrorKind::BadGateway, "the worker's stream broke");
        Failure { event, error: err }
    }

    /// Silent for `blocked_after`: the slot is BUSY_BLOCKED until bytes flow again.
    fn deadline(&mut self) -> Option<Failure> {
        self.lease.set_blocked(true);
        None
    }
}
