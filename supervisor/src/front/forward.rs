//! Forwarding one request to a worker over a pooled connection (`conns`).
//!
//! The request body is already buffered (so it can be sent again); the response body is not
//! (it streams through `body::Forwarded`). A failure before response headers, such as a refused
//! or reset connection from a worker that just died, is retried on another worker, up to
//! [`MAX_ATTEMPTS`] in all; once headers arrived nothing is retried, as bytes may have reached
//! the client.

use super::auth::{Caller, ClientPermit};
use super::body::{forwarded, FrontBody, RequestRecord};
use super::conns::SendError;
use super::dispatch::{SlotLease, StickyKey, Tried};
use super::queue::WaitError;
use super::Shared;
use bytes::Bytes;
use gateway::conn_pool::Pooled;
use gateway::headers::{ATTEMPTS_HEADER, PROVIDER_HEADER, TRANSLATED_HEADER};
use gateway::{headers, ApiError, Config, Dialect, ErrorKind};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, Uri};
use http_body_util::Full;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// Tries per request: the first and up to two retries on other workers.
pub const MAX_ATTEMPTS: usize = 3;

/// The response header naming the worker that served a request.
pub const WORKER_HEADER: HeaderName = HeaderName::from_static("x-gateway-worker");
pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// A request ready to be sent (and re-sent).
pub struct Prepared {
    pub method: Method,
    pub uri: Uri,
    pub headers: HeaderMap,
    pub body: Bytes,
    pub dialect: Dialect,
    pub caller: Caller,
    pub sticky: Option<StickyKey>,
    /// The client asked for a stream (`"stream": true`): long-lived, multiplexed to the worker.
    pub stream: bool,
}

impl Prepared {
    /// Removes hop-by-hop headers and Host; the body length is set from the buffered body.
    pub fn clean_headers(headers: &mut HeaderMap) {
        headers::strip_hop_by_hop(headers);
        headers.remove(header::HOST);
        headers.remove(header::CONTENT_LENGTH);
    }

    /// The request for a worker: an origin-form target (the path and query; `conns` adds the
    /// Host), the cleaned headers, the buffered body.
    fn to_request(&self) -> Request<Full<Bytes>> {
        let uri = self
            .uri
            .path_and_query()
            .map_or_else(|| Uri::from_static("/"), |pq| Uri::from(pq.clone()));
        let mut req = Request::new(Full::new(self.body.clone()));
        *req.method_mut() = self.method.clone();
        *req.uri_mut() = uri;
        *req.headers_mut() = self.headers.clone();
        req
    }
}

/// A worker's response with what must live as long as its body.
struct Upstream {
    /// Its body gives its connection back to the pool when it ends.
    resp: Response<Pooled>,
    lease: SlotLease,
    permit: Option<ClientPermit>,
}

/// Forwards `p` and returns the client's response: the worker's, or an error in dialect. Owns
/// `record`, which ends up either in the streamed body or dropped with the error response.
pub async fn forward_request(
    shared: Arc<Shared>,
    p: Prepared,
    cfg: Arc<Config>,
    deadline: Instant,
    mut record: RequestRecord,
) -> Response<FrontBody> {
    match obtain(&shared, &p, &cfg, deadline).await {
        Ok(up) => wrap(up, record, p.dialect, cfg.pool.blocked_after),
        Err(e) => {
            record.status = e.status().as_u16();
            e.to_response(p.dialect)
        }
    }
}

/// Checks the client's rate limits and budgets, takes its permit, then a worker, and sends;
/// retries before headers.
async fn obtain(
    shared: &Arc<Shared>,
    p: &Prepared,
    cfg: &Config,
    deadline: Instant,
) -> Result<Upstream, ApiError> {
    client_limits(shared, p).await?;
    let permit = client_permit(shared, &p.caller, cfg, deadline).await?;
    let mut tried = Tried::default();
    let mut last = String::new();
    for _ in 0..MAX_ATTEMPTS {
        let mut lease = worker_lease(shared, p, cfg, deadline, tried).await?;
        tried.add(lease.slot.id);
        let req = p.to_request();
        match send(shared, &mut lease, req, p.stream, cfg.pool.blocked_after).await {
            Ok(resp) => {
                lease.mark_served();
                return Ok(Upstream {
                    resp,
                    lease,
                    permit,
                });
            }
            Err(e) => {
                // The worker died or is not accepting: no header came back, so another may try.
                tracing::warn!(worker = lease.slot.id, error = %e, "worker failed before headers; retrying");
                last = e.to_string();
            }
        }
    }
    let msg = format!("no worker answered: {last}");
    Err(ApiError::new(ErrorKind::BadGateway, msg))
}

/// The caller's rpm, tpm, daily_tokens and monthly_usd: a request over one gets 429 at once,
/// before it waits for anything. Only API calls (`POST`) count; health reads do not.
///
/// With `[shared]`: this host's counters first (refusing what they already refuse, with no
/// Redis call), then one script call that checks and counts for every host at once; a request
/// Redis admitted is counted here too. Redis unavailable: this host's counters alone
/// (`on_unavailable = "local"`) or 503 (`"reject"`).
async fn client_limits(shared: &Shared, p: &Prepared) -> Result<(), ApiError> {
    let Caller::Client(c) = &p.caller else {
        return Ok(());
    };
    if c.limits.is_none() || p.method != Method::POST {
        return Ok(());
    }
    let now = super::limits::now_ms();
    let verdict = match &shared.backend {
        None => c.counters.admit(&c.limits, now),
        Some(backend) => match c.counters.check(&c.limits, now) {
            Err(r) => Err(r),
            Ok(()) => {
                let subject = super::limits::subject(&c.name);
                match backend.admit(&subject, &c.limits.shared()).await {
                    Ok(None) => {
                        c.counters.count(now);
                        Ok(())
                    }
                    Ok(Some(r)) => Err(r.into()),
                    Err(gateway::shared::Unavailable) => match backend.on_unavailable() {
                        gateway::config::OnUnavailable::Local => c.counters.admit(&c.limits, now),
                        gateway::config::OnUnavailable::Reject => {
                            return Err(gateway::shared::unavailable_error())
                        }
                    },
                }
            }
        },
    };
    let Err(refused) = verdict else {
        return Ok(());
    };
    let labels = crate::metrics::LimitLabels {
        client: c.name.clone(),
        limit: refused.limit.as_str().into(),
    };
    shared.metrics.client_limited.get_or_create(&labels).inc();
    let msg = refused.message(&c.name, &c.limits);
    Err(ApiError::new(ErrorKind::RateLimited, msg).with_retry_after(refused.retry_after))
}

/// A place within the caller's client limit, waiting for one up to `deadline` (then 429).
async fn client_permit(
    shared: &Arc<Shared>,
    caller: &Caller,
    cfg: &Config,
    deadline: Instant,
) -> Result<Option<ClientPermit>, ApiError> {
    let Caller::Client(c) = caller else {
        return Ok(None);
    };
    if c.max_concurrency == 0 {
        return Ok(None);
    }
    let limited = || {
        let msg = format!("client `{}` is at its concurrency limit", c.name);
        ApiError::new(ErrorKind::RateLimited, msg).with_retry_after(1)
    };
    loop {
        let take = || ClientPermit::try_take(c);
        let line = &c.live.line;
        let waited =
            shared
                .queue
                .wait_for(line, &shared.metrics, cfg.pool.max_queue, deadline, take);
        // The local place first: a host never asks Redis for what it can refuse itself.
        let mut permit = waited.await.map_err(|e| match e {
            WaitError::QueueFull => queue_full(),
            WaitError::TimedOut => limited(),
        })?;
        let Some(backend) = &shared.backend else {
            return Ok(Some(permit));
        };
        match backend
            .reserve(&format!("client:{}", c.name), c.max_concurrency)
            .await
        {
            Ok(Some(lease)) => {
                permit.lease = Some(lease);
                return Ok(Some(permit));
            }
            Err(gateway::shared::Unavailable) => {
                return match backend.on_unavailable() {
                    gateway::config::OnUnavailable::Local => Ok(Some(permit)),
                    gateway::config::OnUnavailable::Reject => {
                        Err(gateway::shared::unavailable_error())
                    }
                }
            }
            // Full on other hosts: give the local place back (waking the next in line) and
            // try again shortly; each try is a Redis round trip.
            Ok(None) => drop(permit),
        }
        let nap = Duration::from_millis(fastrand::u64(10..=30));
        if Instant::now() + nap >= deadline {
            return Err(limited());
        }
        tokio::time::sleep(nap).await;
    }
}

/// A place on a worker with room, waiting for one up to `deadline` (then 503).
async fn worker_lease(
    shared: &Arc<Shared>,
    p: &Prepared,
    cfg: &Config,
    deadline: Instant,
    tried: Tried,
) -> Result<SlotLease, ApiError> {
    let (pool, max) = (&shared.slots, cfg.pool.worker_max_inflight);
    let pick = || shared.dispatch.pick(pool, max, p.sticky, tried);
    let line = pool.capacity_line();
    let waited = shared
        .queue
        .wait_for(line, &shared.metrics, cfg.pool.max_queue, deadline, pick);
    waited.await.map_err(|e| match e {
        WaitError::QueueFull => queue_full(),
        WaitError::TimedOut => {
            let msg = "no worker had room within the queue timeout";
            ApiError::new(ErrorKind::Unavailable, msg).with_retry_after(1)
        }
    })
}

fn queue_full() -> ApiError {
    ApiError::new(
        ErrorKind::Unavailable,
        "too many requests are waiting for a worker",
    )
    .with_retry_after(1)
}

/// Sends one attempt. A request without response headers for `blocked_after` marks its worker
/// BUSY_BLOCKED until the headers arrive (the body wrapper takes over from there).
async fn send(
    shared: &Shared,
    lease: &mut SlotLease,
    req: Request<Full<Bytes>>,
    stream: bool,
    blocked_after: Duration,
) -> Result<Response<Pooled>, SendError> {
    let conns = shared.conns.for_slot(&lease.slot);
    let fut = async {
        if stream {
            conns.send_stream(req).await
        } else {
            conns.send(req).await
        }
    };
    tokio::pin!(fut);
    if !blocked_after.is_zero() {
        tokio::select! {
            r = &mut fut => return r,
            _ = tokio::time::sleep(blocked_after) => lease.set_blocked(true),
        }
    }
    fut.await
}

/// The client's response: the worker's headers (minus hop-by-hop ones, plus the worker id) over
/// the guarded streaming body.
fn wrap(
    up: Upstream,
    mut record: RequestRecord,
    dialect: Dialect,
    blocked_after: Duration,
) -> Response<FrontBody> {
    let (mut parts, body) = up.resp.into_parts();
    headers::strip_hop_by_hop(&mut parts.headers);
    let sse = gateway::relay::is_event_stream(&parts.headers);
    parts
        .headers
        .insert(WORKER_HEADER, HeaderValue::from(up.lease.slot.id));
    // The provider's name goes on to the client; the attempt count is for the access log only.
    record.provider = parts.headers.get(PROVIDER_HEADER).cloned();
    record.attempts = parts
        .headers
        .remove(ATTEMPTS_HEADER)
        .and_then(|v| v.to_str().ok()?.parse().ok());
    record.translated = parts.headers.remove(TRANSLATED_HEADER);
    record.status = parts.status.as_u16();
    record.worker = Some(up.lease.slot.id);
    let guarded = forwarded(
        body,
        up.lease,
        up.permit,
        record,
        blocked_after,
        sse.then_some(dialect),
    );
    Response::from_parts(parts, FrontBody::Forwarded(Box::new(guarded)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_keep_path_and_query() {
        let p = Prepared {
            method: Method::GET,
            uri: "/v1/health/models/x?fresh=1".parse().unwrap(),
            headers: HeaderMap::new(),
            body: Bytes::new(),
            dialect: Dialect::OpenAi,
            caller: Caller::Open,
            sticky: None,
            stream: false,
        };
        let r = p.to_request();
        assert_eq!(r.uri(), "/v1/health/models/x?fresh=1");
        let absolute = Prepared {
            uri: "http://localhost:8080/v1/health?x=1".parse().unwrap(),
            ..p
        };
        assert_eq!(
            absolute.to_request().uri(),
            "/v1/health?x=1",
            "origin-form for the worker"
        );
    }
}
