//! Forwarding one inference request: pick a candidate, take its pool-wide permit, send, and on
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
//! with `max_concurrency` makes requests wait for a permit for up to `pool.queue_timeout`; a
//! streaming request that waits longer than `server.stream_ping_interval` gets its 200 at once
//! with keep-alive pings (`body::waiting_response`) while the rest of this loop runs inside its
//! body; that head carries `x-gateway-translated` when every candidate still in play would
//! translate the same way (the provider that serves is only known later).
//! A candidate whose API cannot express the request (a translation 400) is skipped before it
//! is contacted, without counting as an attempt; the client gets that 400 only when no other
//! candidate serves the request.
//! Header hygiene (`gateway::headers`): the client's credentials, cookies and origin are never
//! forwarded (the provider's own key replaces them); only an allow-list of the provider's
//! headers comes back, and the provider's key is redacted from those and from every error body.
//!
//! `upstream` sends one attempt and reads an error answer; `translated` is the glue for a
//! provider of another API; `crate::attempt` is the per-attempt guard.

mod translated;
mod upstream;

use crate::attempt::Attempt;
use crate::body::{proxy_body, RequestGuard, ResBody};
use crate::breaker::{self, CircuitState};
use crate::endpoint::Endpoint;
use crate::metrics::Outcome;
use crate::providers::{mock, Provider, Route};
use crate::routing::{RouteTable, Target};
use bytes::Bytes;
use gateway::config::OnUnavailable;
use gateway::config::ProviderKind;
use gateway::conn_pool::Pooled;
use gateway::headers;
use gateway::provider_permits::ProviderPermit;
use gateway::shared::Unavailable;
use gateway::{ApiError, Dialect, ErrorKind};
use http::header::{self, HeaderMap};
use http::Response;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::time::Instant;
use translated::{
    mark_translated, translated_back, translated_label, translated_request, Translation,
};
use upstream::{error_response, send};

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

/// Where a request is in its attempts; moves into a `body::waiting_response` when pings start.
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
    /// When waiting for a provider permit gives up (`pool.queue_timeout` after arrival).
    permit_deadline: Instant,
    /// When a waiting streaming request switches to pings.
    ping_at: Instant,
    /// True once the response head (200 + pings) has been sent.
    in_body: bool,
    /// The provider last chosen and the model it serves: an error answer's usage record.
    chosen: Option<(Arc<Provider>, String)>,
}

impl Run {
    /// An error answer the client gets without a provider's body to observe: its usage record
    /// (when a provider was chosen) goes out now.
    fn failed(&self, resp: Response<ResBody>) -> Response<ResBody> {
        if let Some((p, served)) = &self.chosen {
            crate::usage::error_record(&self.req.usage, p, served, resp.status().as_u16());
        }
        resp
    }
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
        permit_deadline: now + table.limits.queue_timeout,
        ping_at: now + table.limits.ping_interval,
        table,
        req,
        candidates,
        attempts: 0,
        prev: None,
        same_retries: 0,
        last: None,
        in_body: false,
        chosen: None,
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
    // Skipped candidates (their API cannot express the request) are never picked again.
    let open = || (0..n).filter(|i| r.tried[*i] != Tried::Spent);
    if r.attempts > 0 || open().next().is_none() {
        return Ok(None);
    }
    // Everything is blocked before the first attempt: see the module docs.
    let least_cooling = open()
        .filter(|i| p(*i).breaker.state() == CircuitState::Closed)
        .min_by_key(|i| p(*i).breaker.blocked_for());
    if let Some(index) = least_cooling {
        // Taken without the breaker's consent (every candidate was cooling): no trial slot.
        return Ok(Some(Pick {
            index,
            trial: TrialHold(None),
        }));
    }
    let wait = open()
        .map(|i| p(i).breaker.blocked_for())
        .min()
        .unwrap_or_default();
    let names: Vec<&str> = open().map(|i| p(i).name()).collect();
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
/// `body::waiting_response`'s future.
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
            let served = target
                .rewrite
                .as_deref()
                .unwrap_or(&r.req.usage.model_asked)
                .to_string();
            r.chosen = Some((provider.clone(), served.clone()));
            let (body, tr) = match upstream_body(&r.req, &target, &provider) {
                Ok(b) => b,
                // This candidate cannot take the request (a field its API cannot express):
                // skipped before it is contacted, and not an attempt. The client gets this 400,
                // naming the field, only if no later candidate serves the request.
                Err(e) => {
                    r.tried[ci] = Tried::Spent;
                    if r.last.is_none() {
                        r.last = Some(e.to_response(dialect));
                    }
                    continue;
                }
            };
            // A native stream that reports its tokens (the client does not see the chunk it did
            // not ask for). A translated stream's usage follows the client's own request.
            let body = match tr
                .is_none()
                .then(|| crate::usage::ask_for_usage(r.req.endpoint, r.req.stream, &body))
                .flatten()
            {
                Some(b) => {
                    r.req.usage.hide_usage_chunk = true;
                    b
                }
                None => body,
            };
            let permit = match take_permit(&mut r, &provider).await {
                PermitWait::Got(s) => s,
                PermitWait::TimedOut(e) => return r.failed(e.to_response(dialect)),
                PermitWait::StartPings => {
                    // The continuation picks again (the trial slot goes back with `pick`).
                    drop(pick);
                    r.in_body = true;
                    let interval = r.table.limits.ping_interval;
                    let label = waiting_label(&r);
                    let rest = attempts(r, guard);
                    let mut resp = crate::body::waiting_response(dialect, interval, rest);
                    if let Some(v) = label {
                        resp.headers_mut().insert(headers::TRANSLATED_HEADER, v);
                    }
                    return resp;
                }
            };
            r.tried[ci] = Tried::Spent;
            r.prev = Some(ci);
            r.attempts += 1;
            // From here the attempt's outcome (or its `Cancelled` on drop) settles the trial.
            pick.trial.disarm();
            if provider.config.kind == ProviderKind::Mock {
                let usage = (&mut r.req.usage, served.as_str());
                return mock_response(
                    &provider,
                    r.req.endpoint,
                    &body,
                    r.req.stream,
                    permit,
                    guard,
                    usage,
                )
                .await;
            }
            let mut attempt = Attempt::start(provider.clone(), permit);
            let resp = match send(&provider, &r.req, tr.as_ref(), body).await {
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
                let success = resp.status().is_success();
                if success {
                    // Usage is read from the provider's own answer, in the provider's API.
                    let api = tr
                        .as_ref()
                        .map(|t| t.to)
                        .or(crate::usage::api_of(r.req.endpoint));
                    // The answer is kept: its observer takes the request's strings.
                    attempt.observe(crate::usage::Observer::new(
                        r.req.usage.take(),
                        provider.clone(),
                        &served,
                        api,
                        gateway::relay::is_event_stream(resp.headers()),
                        resp.status().as_u16(),
                        tr.as_ref().map(|t| (t.from, t.to)),
                    ));
                }
                let out = kept(resp, &provider, dialect, tr, attempt, guard).await;
                // A success's record goes out when its body ends; an error answer's now.
                return if success { out } else { r.failed(out) };
            }
            tracing::warn!(provider = %provider.name(), status = resp.status().as_u16(), "provider failed; trying another if an attempt is left");
            let out = error_response(resp, &provider, dialect, tr.as_ref()).await;
            r.last = Some(mark_translated(out, tr.as_ref()));
        }
        let last = r.last.take().unwrap_or_else(|| {
            ApiError::new(ErrorKind::BadGateway, "no provider could be tried").to_response(dialect)
        });
        r.failed(last)
    })
}

/// The `x-gateway-translated` label of a head sent before its provider is settled (pings while
/// waiting for a permit): the translation every candidate still in play would make, when they
/// agree; `None` when they are native or mixed (then which one serves is not known yet).
fn waiting_label(r: &Run) -> Option<header::HeaderValue> {
    let mut routes = (0..r.candidates.len())
        .filter(|i| r.tried[*i] != Tried::Spent)
        .map(|i| {
            r.table.providers[r.candidates[i].provider]
                .route(r.req.endpoint)
                .unwrap_or(Route::Native)
        });
    let first = routes.next()?;
    match first {
        Route::Translate { from, to } if routes.all(|x| x == first) => translated_label(from, to),
        _ => None,
    }
}

/// The body sent to the provider: translated for a provider of another API, else the client's
/// bytes (with an alias target's model). `Err` is the client's 400, naming the field.
fn upstream_body(
    req: &Forward,
    target: &Target,
    provider: &Provider,
) -> Result<(Bytes, Option<Translation>), ApiError> {
    match provider.route(req.endpoint).unwrap_or(Route::Native) {
        Route::Translate { from, to } => {
            let (b, t) =
                translated_request(&req.body, target.rewrite.as_deref(), from, to, provider)?;
            Ok((b, Some(t)))
        }
        Route::Native => match &target.rewrite {
            Some(model) => Ok((rewrite_model(&req.body, model)?, None)),
            None => Ok((req.body.clone(), None)),
        },
    }
}

/// The answer that is kept, as the client gets it: a success streamed (or translated) back, an
/// error read and redacted; a translated one labelled for the access log.
async fn kept(
    resp: Response<Pooled>,
    provider: &Arc<Provider>,
    dialect: Dialect,
    tr: Option<Translation>,
    mut attempt: Attempt,
    guard: RequestGuard,
) -> Response<ResBody> {
    if let Some(t) = &tr {
        provider.metrics.translated(t.from, t.to);
    }
    let out = if resp.status().is_success() {
        match &tr {
            Some(t) => translated_back(resp, provider, t.clone(), attempt, guard).await,
            None => return stream_back(resp, provider, dialect, attempt, guard),
        }
    } else {
        // A 3xx has no outcome yet (a 4xx has one): not the provider's failure.
        attempt.finish(Outcome::ClientError);
        error_response(resp, provider, dialect, tr.as_ref()).await
    };
    mark_translated(out, tr.as_ref())
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
    resp: &Response<Pooled>,
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
        o @ breaker::Signal::RateLimited(_) => attempt.finish_as(Outcome::RateLimited, Some(o)),
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

/// The outcome of waiting for a pool-wide provider permit.
enum PermitWait {
    /// A permit (a count only when the provider has no limit; `None` without a table).
    Got(Option<ProviderPermit>),
    /// `queue_timeout` passed: the 503 to send.
    TimedOut(ApiError),
    /// A streaming request has waited `stream_ping_interval`: answer now, wait in the body.
    StartPings,
}

async fn take_permit(r: &mut Run, p: &Provider) -> PermitWait {
    let limit = p.config.max_concurrency;
    let Some(limiter) = r.table.limits.limiter.as_ref() else {
        return PermitWait::Got(None);
    };
    if limit == 0 {
        // No limit: counted only, for the pool-wide in flight the dashboard shows.
        return PermitWait::Got(Some(limiter.count(p.name())));
    }
    let pings = r.req.stream && !r.in_body;
    let until = if pings {
        r.permit_deadline.min(r.ping_at)
    } else {
        r.permit_deadline
    };
    let shared = r.table.limits.shared.as_ref();
    loop {
        // The local permit first: a host never asks Redis for what it can refuse itself.
        let local = match limiter.try_acquire(p.name(), limit) {
            Some(g) => Some(g),
            None => limiter.acquire(p.name(), limit, until).await,
        };
        let Some(local) = local else { break };
        let Some(shared) = shared else {
            return PermitWait::Got(Some(local));
        };
        match shared
            .reserve(&format!("provider:{}", p.name()), limit)
            .await
        {
            Ok(Some(lease)) => return PermitWait::Got(Some(local.with_lease(lease))),
            Err(Unavailable) => match shared.on_unavailable() {
                OnUnavailable::Local => return PermitWait::Got(Some(local)),
                OnUnavailable::Reject => {
                    return PermitWait::TimedOut(gateway::shared::unavailable_error())
                }
            },
            // Full on other hosts: give the local unit back while waiting, so this host's
            // other requests are not held up by a wait for room elsewhere.
            Ok(None) => drop(local),
        }
        let now = Instant::now();
        if now >= until {
            break;
        }
        // Each retry is a Redis round trip, so back off more than the local 2-10 ms.
        let nap = Duration::from_millis(fastrand::u64(10..=30));
        tokio::time::sleep_until((now + nap).min(until)).await;
    }
    if pings && Instant::now() < r.permit_deadline {
        return PermitWait::StartPings;
    }
    let wait = r.table.limits.queue_timeout;
    PermitWait::TimedOut(
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

/// Wraps a provider's successful response for the client: its body streams through unchanged,
/// with the allow-listed headers.
fn stream_back(
    resp: Response<Pooled>,
    provider: &Arc<Provider>,
    dialect: Dialect,
    mut attempt: Attempt,
    guard: RequestGuard,
) -> Response<ResBody> {
    let (mut parts, body) = resp.into_parts();
    parts.headers = headers::client_response(&parts.headers, &provider.secret, true);
    let sse = gateway::relay::is_event_stream(&parts.headers).then_some(dialect);
    if hyper::body::Body::is_end_stream(&body) {
        // An empty body (204, HEAD-like answers) is never polled: it is complete already.
        attempt.finish(Outcome::Success);
    }
    let body = proxy_body(body, provider.config.idle_timeout, sse, attempt, guard);
    Response::from_parts(parts, ResBody::Proxy(Box::new(body)))
}

/// The mock provider's answer, after its configured latency. A request the mock refuses (as the
/// real API would) is the client's error, answered at once and not counted as an attempt.
async fn mock_response(
    provider: &Arc<Provider>,
    endpoint: Endpoint,
    body: &[u8],
    stream: bool,
    permit: Option<ProviderPermit>,
    guard: RequestGuard,
    (meta, served): (&mut crate::usage::Meta, &str),
) -> Response<ResBody> {
    let reply = match mock::reply(provider.name(), endpoint, body, stream) {
        Ok(r) => r,
        Err(e) => {
            let resp = e.to_response(endpoint.dialect());
            crate::usage::error_record(meta, provider, served, resp.status().as_u16());
            return resp;
        }
    };
    let mut attempt = Attempt::start(provider.clone(), permit);
    attempt.observe(crate::usage::Observer::new(
        meta.take(),
        provider.clone(),
        served,
        crate::usage::api_of(endpoint),
        reply.content_type == "text/event-stream",
        200,
        None,
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

#[cfg(test)]
mod tests;
