//! Forwarding one request to a worker over a pooled loopback connection.
//!
//! The request body is already buffered (so it can be sent again); the response body is not (it
//! streams through [`Forwarded`]). A failure before response headers, such as a refused or reset
//! connection from a worker that just died, is retried on another worker, up to
//! [`MAX_ATTEMPTS`] in all; once headers arrived nothing is retried, as bytes may have reached
//! the client.

use super::auth::{Caller, ClientPermit};
use super::body::{Forwarded, FrontBody, RequestRecord};
use super::dispatch::{SlotLease, StickyKey, Tried};
use super::queue::WaitError;
use super::Shared;
use bytes::Bytes;
use gateway::{ApiError, Config, Dialect, ErrorKind};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{Method, Request, Response, Uri};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::{TokioExecutor, TokioTimer};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// Tries per request: the first and up to two retries on other workers.
pub const MAX_ATTEMPTS: usize = 3;

/// The response header naming the worker that served a request.
pub const WORKER_HEADER: HeaderName = HeaderName::from_static("x-gateway-worker");
pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

pub type UpstreamClient = Client<HttpConnector, Full<Bytes>>;

/// One client for every worker port: keep-alive connections pooled per port.
pub fn upstream_client() -> UpstreamClient {
    let mut conn = HttpConnector::new();
    conn.set_nodelay(true);
    // Loopback: a connect that takes longer than this is a worker that is not accepting.
    conn.set_connect_timeout(Some(Duration::from_secs(2)));
    Client::builder(TokioExecutor::new())
        .pool_timer(TokioTimer::new())
        .pool_idle_timeout(Duration::from_secs(30))
        .pool_max_idle_per_host(1024)
        .build(conn)
}

/// Distinct worker ports remembered at most; past it the list starts over (ports are fixed per
/// slot, so this only matters if a pool is resized very many times).
const MAX_AUTHORITIES: usize = 1024;

/// `127.0.0.1:PORT` authorities, built once per port, so that addressing a worker clones a
/// `Bytes` instead of formatting and parsing a URI on every request.
#[derive(Default)]
pub struct Authorities(arc_swap::ArcSwap<Vec<(u16, Authority)>>);

impl Authorities {
    pub fn get(&self, port: u16) -> Authority {
        if let Some((_, a)) = self.0.load().iter().find(|(p, _)| *p == port) {
            return a.clone();
        }
        let a = Authority::from_maybe_shared(Bytes::from(format!("127.0.0.1:{port}")))
            .expect("an IPv4 address and a port make a valid authority");
        self.0.rcu(|cur| {
            let mut v = if cur.len() >= MAX_AUTHORITIES {
                Vec::new()
            } else {
                (**cur).clone()
            };
            if !v.iter().any(|(p, _)| *p == port) {
                v.push((port, a.clone()));
            }
            v
        });
        a
    }
}

/// A request ready to be sent (and re-sent).
pub struct Prepared {
    pub method: Method,
    pub uri: Uri,
    pub headers: HeaderMap,
    pub body: Bytes,
    pub dialect: Dialect,
    pub caller: Caller,
    pub sticky: Option<StickyKey>,
}

/// Headers that belong to one connection, not to the request (RFC 9110 §7.6.1), plus Host,
/// which the client sets for the worker's address.
fn strip_hop_by_hop(h: &mut HeaderMap) {
    for name in [
        header::CONNECTION,
        header::TE,
        header::TRAILER,
        header::TRANSFER_ENCODING,
        header::UPGRADE,
        header::PROXY_AUTHORIZATION,
        header::PROXY_AUTHENTICATE,
    ] {
        h.remove(name);
    }
    h.remove("keep-alive");
}

impl Prepared {
    /// Removes hop-by-hop headers and Host; the body length is set from the buffered body.
    pub fn clean_headers(headers: &mut HeaderMap) {
        strip_hop_by_hop(headers);
        headers.remove(header::HOST);
        headers.remove(header::CONTENT_LENGTH);
    }

    fn to_request(&self, authority: Authority) -> Request<Full<Bytes>> {
        let mut parts = http::uri::Parts::default();
        parts.scheme = Some(Scheme::HTTP);
        parts.authority = Some(authority);
        parts.path_and_query = Some(
            self.uri
                .path_and_query()
                .cloned()
                .unwrap_or_else(|| PathAndQuery::from_static("/")),
        );
        let uri = Uri::from_parts(parts).expect("scheme, authority and path make a valid uri");
        let mut req = Request::new(Full::new(self.body.clone()));
        *req.method_mut() = self.method.clone();
        *req.uri_mut() = uri;
        *req.headers_mut() = self.headers.clone();
        req
    }
}

/// A worker's response with what must live as long as its body.
struct Upstream {
    resp: Response<Incoming>,
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

/// Takes the client permit, then a worker, and sends; retries before headers.
async fn obtain(
    shared: &Arc<Shared>,
    p: &Prepared,
    cfg: &Config,
    deadline: Instant,
) -> Result<Upstream, ApiError> {
    let permit = client_permit(shared, &p.caller, cfg, deadline).await?;
    let mut tried = Tried::default();
    let mut last = String::new();
    for _ in 0..MAX_ATTEMPTS {
        let mut lease = worker_lease(shared, p, cfg, deadline, tried).await?;
        tried.add(lease.slot.id);
        let req = p.to_request(shared.authorities.get(lease.slot.port));
        match send(shared, &mut lease, req, cfg.pool.blocked_after).await {
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
    let take = || ClientPermit::try_take(c);
    let line = &c.live.line;
    let waited = shared
        .queue
        .wait_for(line, &shared.metrics, cfg.pool.max_queue, deadline, take);
    waited.await.map(Some).map_err(|e| match e {
        WaitError::QueueFull => queue_full(),
        WaitError::TimedOut => {
            let msg = format!("client `{}` is at its concurrency limit", c.name);
            ApiError::new(ErrorKind::RateLimited, msg).with_retry_after(1)
        }
    })
}

/// A place on a worker with room, waiting for one up to `deadline` (then 503).
async fn worker_lease(
    shared: &Arc<Shared>,
    p: &Prepared,
    cfg: &Config,
    deadline: Instant,
    tried: Tried,
) -> Result<SlotLease, ApiError> {
    let (pool, max) = (&shared.pool, cfg.pool.worker_max_inflight);
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
    blocked_after: Duration,
) -> Result<Response<Incoming>, hyper_util::client::legacy::Error> {
    let fut = shared.client.request(req);
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
    strip_hop_by_hop(&mut parts.headers);
    let sse = parts
        .headers
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"));
    parts
        .headers
        .insert(WORKER_HEADER, HeaderValue::from(up.lease.slot.id));
    record.status = parts.status.as_u16();
    record.worker = Some(up.lease.slot.id);
    let guarded = Forwarded::new(
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
    fn authorities_are_built_once_per_port() {
        let a = Authorities::default();
        assert_eq!(a.get(8765).as_str(), "127.0.0.1:8765");
        assert_eq!(a.get(8766).as_str(), "127.0.0.1:8766");
        assert_eq!(a.get(8765).as_str(), "127.0.0.1:8765");
        assert_eq!(a.0.load().len(), 2);
    }

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
        };
        let r = p.to_request(Authorities::default().get(9000));
        assert_eq!(r.uri(), "http://127.0.0.1:9000/v1/health/models/x?fresh=1");
    }
}
