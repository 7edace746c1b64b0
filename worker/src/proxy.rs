//! Forwarding one inference request: pick a candidate, take its pool-wide slot, send, and on
//! a retryable failure before any byte reached the client, try another provider (up to
//! `routing.max_attempts` attempts in all). The first answer that is kept goes back to the
//! client: a success streams through `ProxyBody`, an error is read (bounded) and redacted.
//!
//! Selection skips providers whose breaker is open or whose half-open trials are all taken, and
//! providers cooling down after a 429. Untried candidates come first and are tried at once.
//! A provider that failed an attempt after the request reached it (a timeout, a 5xx, a 429) is
//! never tried again for the same request, so a slow or failing provider is not billed twice;
//! only after a connect error (nothing was sent) is it tried again, when no other is usable,
//! after an exponential backoff with jitter (`backoff`).
//!
//! When *every* candidate is blocked before the first attempt: if some are merely cooling
//! (breaker closed), the one whose cool-down ends first still gets the request, because a
//! cool-down is the provider's own advice and it may answer again with its authoritative
//! `Retry-After`; if all are open (or half-open and full), the client gets a 503 at once with
//! `Retry-After` = the shortest remaining open time, so a failing provider is not hammered
//! through the breaker meant to protect it.
//!
//! Retried (elsewhere): connect errors, timeouts, 429, 500, 502, 503, 504, 529. Returned at
//! once: every other status (400/401/403/404/422 are the client's business; a 401/403 is also
//! logged as a bad key). When all attempts fail the client gets the last error with its status
//! and its SDK headers (`Retry-After`, rate limits). A `Retry-After` (seconds or HTTP date)
//! cools the provider for at most `routing.max_cooldown`.
//!
//! Timeouts: `connect_timeout` lives in the connector, `first_byte_timeout` bounds the wait for
//! response headers here, `idle_timeout` is enforced between chunks by `ProxyBody`. A provider
//! with `max_concurrency` makes requests wait for a slot for up to `pool.queue_timeout`; a
//! streaming request that waits longer than `server.stream_ping_interval` gets its 200 at once
//! with keep-alive pings (`WaitingBody`) while the rest of this loop runs inside its body.
//! Header hygiene (`gateway::headers`): the client's credentials, cookies and origin are never
//! forwarded (the provider's own key replaces them); only an allow-list of the provider's
//! headers comes back, and the provider's key is redacted from those and from every error body.

use crate::body::{Attempt, ProxyBody, RequestGuard, ResBody, WaitingBody};
use crate::breaker::{self, CircuitState};
use crate::endpoint::Endpoint;
use crate::metrics::Outcome;
use crate::providers::{mock, Provider};
use crate::routing::{RouteTable, Target};
use bytes::Bytes;
use gateway::config::ProviderKind;
use gateway::headers;
use gateway::provider_slots::SlotGuard;
use gateway::{ApiError, Dialect, ErrorKind};
use http::header::{self, HeaderMap, HeaderValue};
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::time::Instant;

/// The request being forwarded: what every attempt needs. Owned, so that the attempts can go
/// on inside a streaming response's body after the pings started.
pub struct Forward {
    pub endpoint: Endpoint,
    /// The client's headers, already filtered by `gateway::headers::upstream_request`.
    pub headers: HeaderMap,
    pub query: Option<String>,
    pub body: Bytes,
    pub stream: bool,
    /// What the usage record needs from the request (`crate::usage`).
    pub usage: crate::usage::Meta,
}

/// Why one attempt failed before any byte reached the client.
struct AttemptError {
    outcome: Outcome,
    error: ApiError,
    /// Whether the request may have reached the provider; if not (a connect error), the
    /// provider may be tried again.
    sent: bool,
}

/// Largest upstream error body read, redacted and passed on; the rest is cut.
const MAX_ERROR_BODY: usize = 64 << 10;

/// The first wait before retrying the same provider, its growth and its cap.
const BACKOFF_START: Duration = Duration::from_millis(100);
const BACKOFF_FACTOR: f64 = 1.5;
const BACKOFF_CAP: Duration = Duration::from_secs(2);

/// The wait before the `n`th retry (from 0) of the same provider: 100 ms x 1.5^n, ±20 %
/// jitter so that many requests failing together do not come back together, capped at 2 s.
pub fn backoff(n: u32) -> Duration {
    let base = BACKOFF_START.as_secs_f64() * BACKOFF_FACTOR.powi(n.min(32) as i32);
    let jitter = 0.8 + 0.4 * fastrand::f64();
    Duration::from_secs_f64(base * jitter).min(BACKOFF_CAP)
}

/// Statuses worth another attempt (elsewhere, or later at the same provider).
fn retryable(status: u16) -> bool {
    matches!(status, 429 | 500 | 502 | 503 | 504 | 529)
}

/// How far a candidate got within one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tried {
    No,
    /// Every attempt so far failed to connect: nothing was sent, it may be tried again.
    Unreached,
    /// The request reached it (and failed): never again for this request.
    Spent,
}

/// Where a request is in its attempts; moves into a `WaitingBody` when pings start.
struct Run {
    table: Arc<RouteTable>,
    req: Forward,
    candidates: Vec<Target>,
    /// Per candidate: how far it got.
    tried: Vec<Tried>,
    attempts: usize,
    /// Candidate index of the previous attempt.
    prev: Option<usize>,
    /// Retries of the same provider so far (the backoff exponent).
    same_retries: u32,
    /// The error the client gets if no attempt succeeds.
    last: Option<Response<ResBody>>,
    /// When waiting for a provider slot gives up (`pool.queue_timeout` after arrival).
    slot_deadline: Instant,
    /// When a waiting streaming request switches to pings.
    ping_at: Instant,
    /// True once the response head (200 + pings) has been sent.
    in_body: bool,
}

type BoxResponse = Pin<Box<dyn Future<Output = Response<ResBody>> + Send>>;

/// Forwards `req` to the first candidate that answers.
pub async fn forward(
    table: Arc<RouteTable>,
    req: Forward,
    candidates: Vec<Target>,
    guard: RequestGuard,
) -> Response<ResBody> {
    let now = Instant::now();
    let run = Run {
        tried: vec![Tried::No; candidates.len()],
        slot_deadline: now + table.limits.queue_timeout,
        ping_at: now + table.limits.ping_interval,
        table,
        req,
        candidates,
        attempts: 0,
        prev: None,
        same_retries: 0,
        last: None,
        in_body: false,
    };
    attempts(run, guard).await
}

/// A candidate chosen for the next attempt.
struct Pick {
    index: usize,
    /// The half-open trial slot `allows` may have taken for it.
    trial: TrialHold,
}

/// A half-open trial slot taken by `Breaker::allows` for an attempt that has not started yet.
/// Dropped before `disarm` (the slot wait timed out, pings started, or the client went away
/// during a backoff), it gives the slot back; otherwise a half-open breaker could run out of
/// trials with none in flight and stay half-open for good. Once the attempt starts, `Attempt`
/// records an outcome (or `Cancelled`), which releases the slot instead.
struct TrialHold(Option<Arc<Provider>>);

impl TrialHold {
    fn disarm(mut self) {
        self.0 = None;
    }
}

impl Drop for TrialHold {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            if p.breaker.state() == CircuitState::HalfOpen {
                p.breaker.release_trial();
            }
        }
    }
}

/// The next candidate: an untried one the breaker allows, else one it allows that could not be
/// reached so far (a retry); never one the request already reached. `Err` = nothing usable
/// before the first attempt: the 503 to send.
fn pick(r: &Run) -> Result<Option<Pick>, ApiError> {
    let p = |i: usize| &r.table.providers[r.candidates[i].provider];
    let n = r.candidates.len();
    for pass in [Tried::No, Tried::Unreached] {
        for i in (0..n).filter(|i| r.tried[*i] == pass) {
            if p(i).breaker.allows() {
                let half_open = p(i).breaker.state() == CircuitState::HalfOpen;
                return Ok(Some(Pick {
                    index: i,
                    trial: TrialHold(half_open.then(|| p(i).clone())),
                }));
            }
        }
    }
    if r.attempts > 0 {
        return Ok(None);
    }
    // Everything is blocked before the first attempt: see the module docs.
    let least_cooling = (0..n)
        .filter(|i| p(*i).breaker.state() == CircuitState::Closed)
        .min_by_key(|i| p(*i).breaker.blocked_for());
    if let Some(index) = least_cooling {
        // Taken without the breaker's consent (every candidate was cooling): no trial slot.
        return Ok(Some(Pick {
            index,
            trial: TrialHold(None),
        }));
    }
    let wait = (0..n)
        .map(|i| p(i).breaker.blocked_for())
        .min()
        .unwrap_or_default();
    let names: Vec<&str> = (0..n).map(|i| p(i).name()).collect();
    let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    Err(ApiError::new(
        ErrorKind::Unavailable,
        format!(
            "every provider for this model is failing and temporarily out of rotation ({})",
            names.join(", ")
        ),
    )
    .with_retry_after(secs.max(1)))
}

/// The attempt loop. A plain function returning a boxed future (not an `async fn`) because it
/// recurses: when a streaming request starts its pings, the rest of the loop becomes the
/// `WaitingBody`'s future.
fn attempts(mut r: Run, guard: RequestGuard) -> BoxResponse {
    Box::pin(async move {
        let dialect = r.req.endpoint.dialect();
        let max = r.table.max_attempts;
        while r.attempts < max {
            let pick = match pick(&r) {
                Ok(Some(p)) => p,
                Ok(None) => break,
                Err(e) => return e.to_response(dialect),
            };
            let ci = pick.index;
            let target = r.candidates[ci].clone();
            let provider = r.table.providers[target.provider].clone();
            if r.prev == Some(ci) {
                // The same provider again: give it a moment. Another provider is tried at once.
                tokio::time::sleep(backoff(r.same_retries)).await;
                r.same_retries += 1;
            }
            let body = match &target.rewrite {
                Some(model) => match rewrite_model(&r.req.body, model) {
                    Ok(b) => b,
                    Err(e) => return e.to_response(dialect),
                },
                None => r.req.body.clone(),
            };
            // A stream that reports its tokens (the client does not see the chunk it asked for).
            let body = match crate::usage::ask_for_usage(r.req.endpoint, r.req.stream, &body) {
                Some(b) => {
                    r.req.usage.hide_usage_chunk = true;
                    b
                }
                None => body,
            };
            let served = target
                .rewrite
                .as_deref()
                .unwrap_or(&r.req.usage.model_asked);
            let served = served.to_string();
            let slot = match take_slot(&mut r, &provider).await {
                SlotWait::Got(s) => s,
                SlotWait::TimedOut(e) => return e.to_response(dialect),
                SlotWait::StartPings => {
                    // The continuation picks again (the trial slot goes back with `pick`).
                    drop(pick);
                    r.in_body = true;
                    let interval = r.table.limits.ping_interval;
                    let rest = attempts(r, guard);
                    return WaitingBody::response(dialect, interval, rest);
                }
            };
            r.tried[ci] = Tried::Spent;
            r.prev = Some(ci);
            r.attempts += 1;
            // From here the attempt's outcome (or its `Cancelled` on drop) settles the trial.
            pick.trial.disarm();
            if provider.config.kind == ProviderKind::Mock {
                let usage = (&r.req.usage, served.as_str());
                return mock_response(
                    &provider,
                    r.req.endpoint,
                    &body,
                    r.req.stream,
                    slot,
                    guard,
                    usage,
                )
                .await;
            }
            let mut attempt = Attempt::start(provider.clone(), slot);
            let resp = match send(&provider, &r.req, body).await {
                Ok(resp) => resp,
                Err(e) => {
                    attempt.finish(e.outcome);
                    if !e.sent {
                        r.tried[ci] = Tried::Unreached;
                    }
                    tracing::warn!(provider = %provider.name(), error = %e.error.message, "attempt failed");
                    r.last = Some(e.error.to_response(dialect));
                    continue;
                }
            };
            attempt.headers_received();
            let cap = r.table.max_cooldown;
            if judge(&resp, &provider, &mut attempt, cap) == Verdict::Keep {
                if resp.status().is_success() {
                    let o = crate::usage::Observer::new(
                        &r.req.usage,
                        provider.clone(),
                        &served,
                        crate::usage::api_of(r.req.endpoint),
                        is_sse(resp.headers()),
                        resp.status().as_u16(),
                        false,
                    );
                    attempt.observe(o);
                    return stream_back(resp, &provider, dialect, attempt, guard);
                }
                // A 3xx has no outcome yet (a 4xx has one): not the provider's failure.
                attempt.finish(Outcome::ClientError);
                return error_response(resp, &provider, dialect).await;
            }
            tracing::warn!(provider = %provider.name(), status = resp.status().as_u16(), "provider failed; trying another if an attempt is left");
            r.last = Some(error_response(resp, &provider, dialect).await);
        }
        r.last.unwrap_or_else(|| {
            ApiError::new(ErrorKind::BadGateway, "no provider could be tried").to_response(dialect)
        })
    })
}

/// What to do with a provider's response, judged on its head.
#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    /// Send it to the client (a success, or an error that is the client's to see).
    Keep,
    /// A retryable failure: keep it as the last error and try again if an attempt is left.
    Retry,
}

/// Records what the status means (metrics, breaker, cool-down: `Retry-After` capped at
/// `max_cooldown`), logs a rejected key, and decides whether the response is the answer.
/// Successes are recorded when their body ends.
fn judge(
    resp: &Response<Incoming>,
    provider: &Provider,
    attempt: &mut Attempt,
    max_cooldown: Duration,
) -> Verdict {
    let status = resp.status().as_u16();
    if status < 400 {
        return Verdict::Keep;
    }
    let retry_after =
        headers::retry_after(resp.headers(), SystemTime::now()).map(|d| d.min(max_cooldown));
    match breaker::classify(status, retry_after) {
        o @ breaker::Outcome::RateLimited(_) => attempt.finish_as(Outcome::RateLimited, Some(o)),
        _ if status >= 500 => attempt.finish(Outcome::ServerError),
        _ => attempt.finish(Outcome::ClientError),
    }
    if status == 401 || status == 403 {
        log_bad_key(provider, status);
    }
    if retryable(status) {
        Verdict::Retry
    } else {
        Verdict::Keep
    }
}

/// The outcome of waiting for a pool-wide provider slot.
enum SlotWait {
    /// A slot (or `None`: the provider has no limit).
    Got(Option<SlotGuard>),
    /// `queue_timeout` passed: the 503 to send.
    TimedOut(ApiError),
    /// A streaming request has waited `stream_ping_interval`: answer now, wait in the body.
    StartPings,
}

async fn take_slot(r: &mut Run, p: &Provider) -> SlotWait {
    let limit = p.config.max_concurrency;
    let Some(limiter) = r.table.limits.limiter.as_ref().filter(|_| limit > 0) else {
        return SlotWait::Got(None);
    };
    if let Some(g) = limiter.try_acquire(p.name(), limit) {
        return SlotWait::Got(Some(g));
    }
    let pings = r.req.stream && !r.in_body;
    let until = if pings {
        r.slot_deadline.min(r.ping_at)
    } else {
        r.slot_deadline
    };
    if let Some(g) = limiter.acquire(p.name(), limit, until).await {
        return SlotWait::Got(Some(g));
    }
    if pings && Instant::now() < r.slot_deadline {
        return SlotWait::StartPings;
    }
    let wait = r.table.limits.queue_timeout;
    SlotWait::TimedOut(
        ApiError::new(
            ErrorKind::Unavailable,
            format!(
                "provider `{}` is at its max_concurrency ({limit}) and no slot freed within {}",
                p.name(),
                humantime::format_duration(wait)
            ),
        )
        .with_retry_after(1),
    )
}

/// A 401/403 means the key is wrong, revoked or lacks access: loud, naming the variable to
/// fix, never the key.
fn log_bad_key(p: &Provider, status: u16) {
    if p.config.api_key_env.is_empty() {
        tracing::error!(provider = %p.name(), status, "provider rejected the request as unauthorized and no api_key_env is configured");
    } else {
        tracing::error!(
            provider = %p.name(),
            key_env = %p.config.api_key_env,
            status,
            "provider rejected its API key: check the variable ${}",
            p.config.api_key_env
        );
    }
}

/// Reads at most `cap` bytes of `body` within `wait`. The flag says the bytes may be only the
/// head of the body: there was more, the body failed, or the wait ran out.
async fn read_capped(mut body: Incoming, cap: usize, wait: Duration) -> (Bytes, bool) {
    let mut buf = Vec::new();
    let read = async {
        while let Some(frame) = body.frame().await {
            let Ok(frame) = frame else { return true };
            if let Ok(data) = frame.into_data() {
                let room = cap - buf.len();
                if data.len() > room {
                    buf.extend_from_slice(&data[..room]);
                    return true;
                }
                buf.extend_from_slice(&data);
            }
        }
        false
    };
    let cut = tokio::time::timeout(wait, read).await.unwrap_or(true);
    (Bytes::from(buf), cut)
}

/// A provider's error answer (any non-2xx) as the client gets it: read into memory (bounded in
/// size and time, so it can also wait while another attempt is made), the provider's key
/// redacted from the body and the allow-listed headers. A whole JSON body (the provider speaks
/// the caller's dialect) passes on; anything else becomes a gateway error body in the caller's
/// dialect quoting the start of the provider's text. A compressed body cannot be searched for
/// the key, so it is withheld.
async fn error_response(
    resp: Response<Incoming>,
    p: &Provider,
    dialect: Dialect,
) -> Response<ResBody> {
    let (parts, body) = resp.into_parts();
    let wait = p.config.idle_timeout.min(Duration::from_secs(10));
    let (raw, cut) = read_capped(body, MAX_ERROR_BODY, wait).await;
    let encoded = parts
        .headers
        .get(header::CONTENT_ENCODING)
        .is_some_and(|v| !v.as_bytes().eq_ignore_ascii_case(b"identity"));
    let bytes = if encoded {
        Bytes::from_static(b"(compressed body withheld)")
    } else {
        match p.secret.redact(&raw, cut) {
            std::borrow::Cow::Borrowed(_) => raw.clone(),
            std::borrow::Cow::Owned(v) => Bytes::from(v),
        }
    };
    let is_json = !encoded
        && !cut
        && parts
            .headers
            .get(header::CONTENT_TYPE)
            .is_some_and(|v| v.as_bytes().starts_with(b"application/json"))
        && serde_json::from_slice::<serde::de::IgnoredAny>(&bytes).is_ok();
    let body = if is_json {
        bytes
    } else {
        let kind = ErrorKind::from_upstream_status(parts.status.as_u16());
        let text = String::from_utf8_lossy(&bytes[..bytes.len().min(200)]).into_owned();
        let msg = format!(
            "provider `{}` answered {}: {}",
            p.name(),
            parts.status,
            text.trim()
        );
        Bytes::from(ApiError::new(kind, msg).body(dialect))
    };
    let mut out = Response::new(ResBody::full(body));
    *out.status_mut() = parts.status;
    *out.headers_mut() = headers::client_response(&parts.headers, &p.secret, false);
    out.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    out
}

/// Sends one attempt and waits for the response headers.
async fn send(
    p: &Provider,
    req: &Forward,
    body: Bytes,
) -> Result<Response<Incoming>, AttemptError> {
    let internal = |m: String| AttemptError {
        outcome: Outcome::ConnectError,
        error: ApiError::new(ErrorKind::Internal, m),
        sent: false,
    };
    let client = p
        .client
        .as_ref()
        .ok_or_else(|| internal(format!("provider `{}` has no client", p.name())))?;
    let uri = p.uri(req.endpoint, req.query.as_deref()).map_err(|e| {
        internal(format!(
            "provider `{}` has an unusable base_url: {e}",
            p.name()
        ))
    })?;
    let mut out = Request::new(Full::new(body));
    *out.method_mut() = http::Method::POST;
    *out.uri_mut() = uri;
    *out.headers_mut() = req.headers.clone();
    p.apply_headers(out.headers_mut());
    let limit = p.config.first_byte_timeout;
    match tokio::time::timeout(limit, client.request(out)).await {
        Ok(Ok(resp)) => Ok(resp),
        Err(_) => Err(AttemptError {
            outcome: Outcome::Timeout,
            sent: true,
            error: ApiError::new(
                ErrorKind::GatewayTimeout,
                format!(
                    "provider `{}` sent no response within {}",
                    p.name(),
                    humantime::format_duration(limit)
                ),
            ),
        }),
        Ok(Err(e)) if e.is_connect() && is_timeout(&e) => Err(AttemptError {
            outcome: Outcome::Timeout,
            sent: false,
            error: ApiError::new(
                ErrorKind::GatewayTimeout,
                format!(
                    "connecting to provider `{}` timed out after {}",
                    p.name(),
                    humantime::format_duration(p.config.connect_timeout)
                ),
            ),
        }),
        Ok(Err(e)) if e.is_connect() => Err(AttemptError {
            outcome: Outcome::ConnectError,
            sent: false,
            error: ApiError::new(
                ErrorKind::BadGateway,
                format!(
                    "cannot connect to provider `{}`: {}",
                    p.name(),
                    error_chain(&e)
                ),
            ),
        }),
        Ok(Err(e)) => Err(AttemptError {
            outcome: Outcome::ServerError,
            sent: true,
            error: ApiError::new(
                ErrorKind::BadGateway,
                format!("provider `{}` failed: {}", p.name(), error_chain(&e)),
            ),
        }),
    }
}

/// Wraps a provider's successful response for the client: its body streams through unchanged,
/// with the allow-listed headers.
fn stream_back(
    resp: Response<Incoming>,
    provider: &Arc<Provider>,
    dialect: Dialect,
    mut attempt: Attempt,
    guard: RequestGuard,
) -> Response<ResBody> {
    let (mut parts, body) = resp.into_parts();
    parts.headers = headers::client_response(&parts.headers, &provider.secret, true);
    let sse = is_sse(&parts.headers).then_some(dialect);
    if hyper::body::Body::is_end_stream(&body) {
        // An empty body (204, HEAD-like answers) is never polled: it is complete already.
        attempt.finish(Outcome::Success);
    }
    let body = ProxyBody::new(body, provider.config.idle_timeout, sse, attempt, guard);
    Response::from_parts(parts, ResBody::Proxy(Box::new(body)))
}

fn is_sse(h: &HeaderMap) -> bool {
    h.get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"))
}

/// The mock provider's answer, after its configured latency. A request the mock refuses (as the
/// real API would) is the client's error, answered at once and not counted as an attempt.
async fn mock_response(
    provider: &Arc<Provider>,
    endpoint: Endpoint,
    body: &[u8],
    stream: bool,
    slot: Option<SlotGuard>,
    guard: RequestGuard,
    (meta, served): (&crate::usage::Meta, &str),
) -> Response<ResBody> {
    let reply = match mock::reply(provider.name(), endpoint, body, stream) {
        Ok(r) => r,
        Err(e) => return e.to_response(endpoint.dialect()),
    };
    let mut attempt = Attempt::start(provider.clone(), slot);
    attempt.observe(crate::usage::Observer::new(
        meta,
        provider.clone(),
        served,
        crate::usage::api_of(endpoint),
        reply.content_type == "text/event-stream",
        200,
        false,
    ));
    if let Some(d) = provider.config.latency.filter(|d| !d.is_zero()) {
        tokio::time::sleep(d).await;
    }
    attempt.headers_received();
    let content_type = reply.content_type;
    let body = crate::body::MockBody::new(reply, provider.config.tokens_per_second, attempt, guard);
    let mut r = Response::new(ResBody::Mock(body));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(content_type),
    );
    if content_type == "text/event-stream" {
        r.headers_mut().insert(
            header::CACHE_CONTROL,
            header::HeaderValue::from_static("no-cache"),
        );
    }
    r
}

/// Replaces the body's `model` with an alias target's upstream model. Only alias requests pay
/// for this full parse; the common path forwards the client's bytes untouched.
fn rewrite_model(body: &Bytes, model: &str) -> Result<Bytes, ApiError> {
    let mut v: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(body)
        .map_err(|e| ApiError::new(ErrorKind::BadRequest, format!("malformed JSON body: {e}")))?;
    v.insert("model".into(), serde_json::Value::String(model.to_string()));
    Ok(Bytes::from(
        serde_json::to_vec(&v).expect("a JSON map serializes"),
    ))
}

/// Whether a connect error was a timeout (the connector reports it as `TimedOut`).
fn is_timeout(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            if io.kind() == std::io::ErrorKind::TimedOut {
                return true;
            }
        }
        if err.to_string().contains("timed out") {
            return true;
        }
        cur = err.source();
    }
    false
}

/// `error: cause: cause` in one line. Provider errors never contain keys: hyper reports
/// addresses and protocol problems, not request headers.
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(err) = cur {
        let m = err.to_string();
        if !s.contains(&m) {
            s.push_str(": ");
            s.push_str(&m);
        }
        cur = err.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_by_half_with_jitter_and_caps() {
        for _ in 0..200 {
            let d0 = backoff(0).as_secs_f64();
            assert!((0.08..=0.12).contains(&d0), "{d0}");
            let d1 = backoff(1).as_secs_f64();
            assert!((0.12..=0.18).contains(&d1), "{d1}");
            let d3 = backoff(3).as_secs_f64();
            assert!((0.27..=0.405).contains(&d3), "{d3}");
            assert!(backoff(20) <= BACKOFF_CAP);
            assert!(backoff(20) >= Duration::from_millis(1600));
        }
    }

    fn run_for(table: Arc<RouteTable>) -> Run {
        let candidates = table
            .candidates("m", Endpoint::ChatCompletions)
            .expect("m is served");
        let now = Instant::now();
        Run {
            tried: vec![Tried::No; candidates.len()],
            slot_deadline: now,
            ping_at: now,
            table,
            req: Forward {
                endpoint: Endpoint::ChatCompletions,
                headers: HeaderMap::new(),
                query: None,
                body: Bytes::new(),
                stream: false,
                usage: crate::usage::Meta::new("", "", "m", false),
            },
            candidates,
            attempts: 0,
            prev: None,
            same_retries: 0,
            last: None,
            in_body: false,
        }
    }

    fn picked(r: &Run) -> Option<(String, Pick)> {
        let p = pick(r).ok()??;
        let name = r.table.providers[r.candidates[p.index].provider]
            .name()
            .to_string();
        Some((name, p))
    }

    /// Selection skips open and cooling providers, forces the least-cooling one when all are
    /// cooling, fails fast with the remaining open time when all are open, and a pick dropped
    /// before its attempt gives its half-open trial back (the guard fires).
    #[tokio::test(start_paused = true)]
    async fn pick_skips_blocked_providers_and_trials_come_back() {
        use gateway::config::{ProviderConfig, ProviderKind, Strategy};
        let mk =
            |n: &str| ProviderConfig::new(n, ProviderKind::OpenAi, "http://127.0.0.1:1/v1", &["m"]);
        let table = Arc::new(crate::routing::tests::table(
            Strategy::Unknown(String::new()),
            vec![mk("a"), mk("b")],
            vec![],
        ));
        let r = run_for(table.clone());
        let (a, b) = (&table.providers[0].breaker, &table.providers[1].breaker);
        assert_eq!(picked(&r).unwrap().0, "a");
        for _ in 0..5 {
            a.record(breaker::Outcome::Failure);
        }
        assert_eq!(a.state(), CircuitState::Open);
        assert_eq!(picked(&r).unwrap().0, "b", "open a is skipped");
        b.record(breaker::classify(429, Some(Duration::from_secs(10))));
        let (name, p) = picked(&r).unwrap();
        assert_eq!(
            name, "b",
            "all blocked, b only cooling: it still gets the request"
        );
        assert!(p.trial.0.is_none());
        tokio::time::sleep(Duration::from_secs(1)).await;
        for _ in 0..5 {
            b.record(breaker::Outcome::Failure);
        }
        let e = pick(&r).err().expect("all open: fail fast");
        assert_eq!(e.kind, ErrorKind::Unavailable);
        assert_eq!(
            e.retry_after,
            Some(29),
            "a opened first; 29 s of its 30 are left"
        );
        tokio::time::sleep(Duration::from_secs(31)).await;
        assert_eq!(a.state(), CircuitState::HalfOpen);
        // Half-open admits 3 trials (half_open_successes); held picks use them up ...
        let held: Vec<Pick> = (0..3)
            .map(|_| {
                let (name, p) = picked(&r).unwrap();
                assert_eq!(name, "a");
                p
            })
            .collect();
        assert_eq!(picked(&r).unwrap().0, "b", "a's trials are all taken");
        // ... and dropping them unused (e.g. a slot wait that timed out) gives them back.
        drop(held);
        assert_eq!(picked(&r).unwrap().0, "a");
        for _ in 0..3 {
            let (name, p) = picked(&r).unwrap();
            assert_eq!(name, "a");
            p.trial.disarm();
        }
        assert_eq!(
            picked(&r).unwrap().0,
            "b",
            "disarmed trials belong to their attempts now"
        );
    }

    /// Within one request, a provider the request reached is never picked again; one that
    /// could not be reached (a connect error) is, when no other is usable.
    #[tokio::test(start_paused = true)]
    async fn only_unreached_providers_are_picked_again() {
        use gateway::config::{ProviderConfig, ProviderKind, Strategy};
        let mk =
            |n: &str| ProviderConfig::new(n, ProviderKind::OpenAi, "http://127.0.0.1:1/v1", &["m"]);
        let table = Arc::new(crate::routing::tests::table(
            Strategy::Unknown(String::new()),
            vec![mk("a"), mk("b")],
            vec![],
        ));
        let mut r = run_for(table);
        assert_eq!(picked(&r).unwrap().0, "a");
        r.attempts = 1;
        r.tried[0] = Tried::Spent;
        assert_eq!(picked(&r).unwrap().0, "b", "untried first");
        r.attempts = 2;
        r.tried[1] = Tried::Unreached;
        assert_eq!(picked(&r).unwrap().0, "b", "nothing reached b: again");
        r.tried[1] = Tried::Spent;
        assert!(
            pick(&r).unwrap().is_none(),
            "both reached: no more attempts"
        );
    }

    #[test]
    fn retryable_statuses() {
        for s in [429, 500, 502, 503, 504, 529] {
            assert!(retryable(s), "{s}");
        }
        for s in [400, 401, 403, 404, 422, 501] {
            assert!(!retryable(s), "{s}");
        }
    }

    #[test]
    fn alias_rewrite_changes_only_the_model() {
        let b = Bytes::from_static(
            br#"{"model":"fast","stream":true,"messages":[{"role":"user","content":"hi"}]}"#,
        );
        let out = rewrite_model(&b, "gpt-4o-mini").unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["model"], "gpt-4o-mini");
        assert_eq!(v["stream"], true);
        assert_eq!(v["messages"][0]["content"], "hi");
    }
}
