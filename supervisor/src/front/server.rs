//! Accepting connections and routing each request.
//!
//! Each connection is served by its own task (HTTP/1.1 keep-alive, or HTTP/2 when the client
//! speaks it), all owned by a `JoinSet` in `run`. On shutdown, `run` stops accepting, asks every
//! connection to finish gracefully (in-flight requests complete, idle keep-alives close), waits
//! up to `pool.shutdown_timeout`, then aborts what is left.
//!
//! Per request the order is admission (`gateway::admission`: Host 421, CORS preflight, Origin
//! 403, token on `/v1/*` 401), then the route: a supervisor endpoint, or a forwarded one (body ≤
//! `max_body_bytes` else 413, JSON with a `model` else 400, then a worker). A connection whose
//! first request head does not arrive within `server.header_read_timeout` is closed, and a body
//! silent for `server.body_read_timeout` gets 408 (`gateway::read_timeouts`, `gateway::upload`).

use super::auth::Caller;
use super::body::{FrontBody, RequestRecord};
use super::forward::{forward_request, Prepared, REQUEST_ID};
use super::{waiting, FrontContext, Settings, Shared};
use crate::shutdown::Shutdown;
use bytes::Bytes;
use gateway::endpoint::Endpoint;
use gateway::model_list;
use gateway::read_timeouts::{first_head_within, HeadSeen};
use gateway::upload::{self, Refused};
use gateway::{ApiError, Config, Dialect, ErrorKind};
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use std::convert::Infallible;
use std::sync::Arc;
use tokio::task::JoinSet;
use tokio::time::Instant;

/// Where a request goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Route {
    /// An inference endpoint (POST, JSON body) to a worker; its path is the metrics `path`.
    Inference(Endpoint),
    /// A GET to a worker; the label is also the metrics `path`.
    Forward(&'static str),
    Models,
    /// `GET /v1/models/{id}`; the id is read from the path when answering.
    Model,
    Healthz,
    Readyz,
    Metrics,
    /// `GET /dashboard`: the page (no data, no token).
    Dashboard,
    /// `GET /dashboard/snapshot` and `/dashboard/events`: its data, behind the `/v1` token.
    DashboardSnapshot,
    DashboardEvents,
    Unknown,
}

fn route(method: &Method, path: &str) -> Route {
    let get = |r| {
        if method == Method::GET || method == Method::HEAD {
            r
        } else {
            Route::Unknown
        }
    };
    let fwd_get = |label| get(Route::Forward(label));
    if let Some(e) = Endpoint::from_path(path) {
        return if method == Method::POST {
            Route::Inference(e)
        } else {
            Route::Unknown
        };
    }
    match path {
        "/v1/health" => fwd_get("/v1/health"),
        "/v1/health/models" => fwd_get("/v1/health/models"),
        "/v1/health/performance" => fwd_get("/v1/health/performance"),
        "/v1/models" => get(Route::Models),
        "/healthz" => get(Route::Healthz),
        "/readyz" => get(Route::Readyz),
        "/metrics" => get(Route::Metrics),
        "/dashboard" | "/dashboard/" => get(Route::Dashboard),
        "/dashboard/snapshot" => get(Route::DashboardSnapshot),
        "/dashboard/events" => get(Route::DashboardEvents),
        p if p.starts_with("/v1/models/") && p.len() > "/v1/models/".len() => get(Route::Model),
        p if p.starts_with("/v1/health/models/") && p.len() > "/v1/health/models/".len() => {
            fwd_get("/v1/health/models/{model}")
        }
        _ => Route::Unknown,
    }
}

impl Route {
    fn label(self) -> &'static str {
        match self {
            Route::Inference(e) => e.path(),
            Route::Forward(label) => label,
            Route::Models => "/v1/models",
            Route::Model => "/v1/models/{id}",
            Route::Healthz => "/healthz",
            Route::Readyz => "/readyz",
            Route::Metrics => "/metrics",
            Route::Dashboard => "/dashboard",
            Route::DashboardSnapshot => "/dashboard/snapshot",
            Route::DashboardEvents => "/dashboard/events",
            Route::Unknown => "other",
        }
    }
}

/// The accept loop; see the module docs for the shutdown sequence.
pub async fn run(listener: tokio::net::TcpListener, ctx: FrontContext, mut shutdown: Shutdown) {
    let bound = listener
        .local_addr()
        .unwrap_or_else(|_| ctx.config.load().server.listen);
    let shared = Arc::new(Shared::new(ctx, bound));
    shared
        .dashboard
        .bind_front(Arc::downgrade(&shared), shutdown.clone());
    let refresher = tokio::spawn(super::models_cache::ModelListCache::run_refresher(
        shared.clone(),
    ));
    // Closes worker connections left idle after a burst (see `conns`); ends with `run`.
    let pruner = tokio::spawn({
        let shared = shared.clone();
        async move {
            let mut every = tokio::time::interval(super::conns::IDLE_TIMEOUT / 3);
            loop {
                every.tick().await;
                shared.conns.prune();
            }
        }
    });
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder.http1().timer(TokioTimer::new());
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            _ = shutdown.wait() => break,
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let _ = stream.set_nodelay(true);
                    // Per connection, so a reload applies to the connections after it.
                    let limit = shared.config.load().server.header_read_timeout;
                    let mut b = builder.clone();
                    b.http1().header_read_timeout(limit);
                    conns.spawn(connection(stream, shared.clone(), b, limit, shutdown.clone()));
                }
                Err(e) => {
                    // EMFILE and friends: back off briefly instead of spinning on the error.
                    tracing::warn!(error = %e, "front listener accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            },
        }
    }
    drop(listener);
    let grace = shared.config.load().pool.shutdown_timeout;
    let drained =
        tokio::time::timeout(grace, async { while conns.join_next().await.is_some() {} }).await;
    if drained.is_err() {
        tracing::warn!(
            open = conns.len(),
            "front listener: connections still open after the grace period"
        );
        conns.shutdown().await;
    }
    refresher.abort();
    pruner.abort();
    let _ = refresher.await;
    let _ = pruner.await;
}

/// Serves one connection until it closes; on shutdown, finishes in-flight requests first.
async fn connection(
    stream: tokio::net::TcpStream,
    shared: Arc<Shared>,
    builder: auto::Builder<TokioExecutor>,
    head_limit: std::time::Duration,
    mut shutdown: Shutdown,
) {
    let seen = HeadSeen::default();
    let svc = {
        let seen = seen.clone();
        hyper::service::service_fn(move |req| {
            seen.mark();
            handle(shared.clone(), req)
        })
    };
    let conn = builder.serve_connection(TokioIo::new(stream), svc);
    tokio::pin!(conn);
    tokio::select! {
        r = first_head_within(conn.as_mut(), &seen, head_limit) => {
            match r {
                Some(Ok(())) => {}
                Some(Err(e)) => tracing::debug!(error = %e, "front connection ended with an error"),
                None => tracing::debug!("no request head within header_read_timeout; closed"),
            }
            return;
        }
        _ = shutdown.wait() => {
            // Accepted just before the stop: its first request may already sit unread in the
            // socket, and closing it now would reset the client (an upgrade promises no failed
            // request). hyper reads it at the first poll; that request is then finished.
            if !seen.any() && !seen.first_or_end(conn.as_mut(), FIRST_HEAD_AT_STOP).await {
                return;
            }
            conn.as_mut().graceful_shutdown()
        }
    }
    let _ = conn.await;
}

/// How long a connection that has sent nothing yet gets, once the front stops, to show its
/// first request head: its bytes are normally in the socket already.
const FIRST_HEAD_AT_STOP: std::time::Duration = std::time::Duration::from_millis(500);

/// One request, start to response headers.
async fn handle(
    shared: Arc<Shared>,
    req: Request<Incoming>,
) -> Result<Response<FrontBody>, Infallible> {
    let start = Instant::now();
    let cfg = shared.config.load_full();
    let settings = shared.settings(&cfg);
    let request_id = match req.headers().get(REQUEST_ID) {
        Some(v) => v.clone(),
        None => shared.ids.next(),
    };
    let route = route(req.method(), req.uri().path());
    let origin = settings
        .admission
        .access
        .allowed_origin(req.headers())
        .cloned();
    let record = RequestRecord {
        meters: shared.meters.clone(),
        start,
        method: req.method().clone(),
        uri: req.uri().clone(),
        route: route.label(),
        // Until a response exists: the client went away first (nginx's 499).
        status: 499,
        worker: None,
        request_id: request_id.clone(),
        caller: None,
        model: None,
        provider: None,
        attempts: None,
        translated: None,
        first_byte: None,
        trace: None,
    };
    // Boxed: hyper keeps one service-future slot per connection for the connection's whole life
    // (idle keep-alives and held streams included), sized for the largest future. Unboxed,
    // this chain is about 5.6 KB; boxed, it is allocated only while a request is being routed.
    let mut resp = Box::pin(respond(
        &shared,
        cfg,
        &settings,
        req,
        route,
        request_id.clone(),
        record,
    ))
    .await;
    settings
        .admission
        .access
        .decorate(origin, resp.headers_mut());
    resp.headers_mut().entry(REQUEST_ID).or_insert(request_id);
    Ok(resp)
}

/// Answers locally and counts the request with its status.
fn local(mut record: RequestRecord, resp: Response<FrontBody>) -> Response<FrontBody> {
    record.status = resp.status().as_u16();
    resp
}

async fn respond(
    shared: &Arc<Shared>,
    cfg: Arc<Config>,
    settings: &Settings,
    req: Request<Incoming>,
    route: Route,
    request_id: HeaderValue,
    mut record: RequestRecord,
) -> Response<FrontBody> {
    let dialect = Dialect::for_path(req.uri().path());
    let caller = match admit(settings, &req, dialect) {
        Ok(c) => c,
        Err(resp) => return local(record, *resp),
    };
    record.caller = Some(caller.clone());
    let endpoint = match route {
        Route::Inference(e) => Some(e),
        Route::Forward(_) => None,
        _ => {
            let resp = answer_locally(shared, &cfg, settings, &req, route, dialect).await;
            return local(record, resp);
        }
    };
    let mut ctx = ForwardCtx {
        shared,
        cfg,
        dialect,
        caller,
        request_id,
        record,
    };
    match ctx.prepare(req, endpoint).await {
        Ok(p) => ctx.run(p).await,
        // A refused upload is drained so the client reads its answer (see `gateway::upload`).
        Err(refused) => {
            let resp = refused.into_response(dialect, |d| FrontBody::Drain(Box::new(d)));
            local(ctx.record, resp)
        }
    }
}

/// Admission (`gateway::admission`, the same as on every worker port). Returns who is calling,
/// or the response that ends the request.
fn admit(
    settings: &Settings,
    req: &Request<Incoming>,
    dialect: Dialect,
) -> Result<Caller, Box<Response<FrontBody>>> {
    match settings.admission.admit(req) {
        Ok(c) => Ok(settings.auth.caller(c)),
        Err(refused) => Err(Box::new(refused.into_response(dialect))),
    }
}

/// The endpoints the supervisor serves itself, and 404 for unknown routes.
async fn answer_locally(
    shared: &Shared,
    cfg: &Config,
    settings: &Settings,
    req: &Request<Incoming>,
    route: Route,
    dialect: Dialect,
) -> Response<FrontBody> {
    match route {
        Route::Healthz => text(StatusCode::OK, "ok\n"),
        Route::Readyz => readyz(shared, cfg),
        Route::Metrics => {
            let mut r = Response::new(FrontBody::from(super::metrics_page::render(shared).await));
            let ct = HeaderValue::from_static(super::metrics_page::CONTENT_TYPE);
            r.headers_mut().insert(header::CONTENT_TYPE, ct);
            r
        }
        Route::Dashboard | Route::DashboardSnapshot | Route::DashboardEvents => {
            dashboard(shared, settings, req, route).await
        }
        Route::Models => {
            let body = shared.models.get(cfg, &settings.floor_models);
            json(
                StatusCode::OK,
                models_for(req, body, model_list::anthropic_list),
            )
        }
        Route::Model => {
            let found = model_list::retrieve_id(req.uri().path())
                .ok_or_else(|| ApiError::new(ErrorKind::NotFound, "malformed model id"))
                .and_then(|id| shared.models.retrieve(cfg, &settings.floor_models, &id));
            match found {
                Ok(body) => json(
                    StatusCode::OK,
                    models_for(req, body, model_list::anthropic_entry),
                ),
                Err(e) if model_list::anthropic_requested(req.headers()) => {
                    e.to_response(Dialect::Anthropic)
                }
                Err(e) => e.to_response(Dialect::OpenAi),
            }
        }
        Route::Unknown | Route::Inference(_) | Route::Forward(_) => {
            let msg = format!("no route for {} {}", req.method(), req.uri().path());
            ApiError::new(ErrorKind::NotFound, msg).to_response(dialect)
        }
    }
}

/// A cached OpenAI-shaped models body as the client wants it: unchanged, or through `shape`
/// (`gateway::model_list`) for a request carrying `anthropic-version`.
fn models_for<B>(
    req: &Request<B>,
    body: Bytes,
    shape: fn(&serde_json::Value) -> serde_json::Value,
) -> Bytes {
    if !model_list::anthropic_requested(req.headers()) {
        return body;
    }
    match serde_json::from_slice::<serde_json::Value>(&body) {
        Ok(v) => Bytes::from(shape(&v).to_string()),
        Err(_) => body,
    }
}

/// The dashboard's page, or its data once the `/v1` token checks out (admission proper, the
/// Host, Origin and CORS rules, has already run: it is the same for every route).
async fn dashboard(
    shared: &Shared,
    settings: &Settings,
    req: &Request<Incoming>,
    route: Route,
) -> Response<FrontBody> {
    use crate::dashboard::{page, EventStream};
    if route == Route::Dashboard {
        let mut r = Response::new(FrontBody::from(Bytes::from_static(page::HTML.as_bytes())));
        let h = r.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/html; charset=utf-8"),
        );
        h.insert(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(page::CSP),
        );
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        return r;
    }
    if settings.admission.tokens.check(req.headers()).is_none() {
        return gateway::admission::Refusal::Token.into_response(Dialect::OpenAi);
    }
    let d = &shared.dashboard;
    if route == Route::DashboardSnapshot {
        return json(StatusCode::OK, d.snapshot().await);
    }
    let stream = EventStream::new(d.subscribe(), EventStream::shutdown_of(d));
    let mut r = Response::new(FrontBody::Events(Box::new(stream)));
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

fn text(status: StatusCode, s: &'static str) -> Response<FrontBody> {
    let mut r = Response::new(FrontBody::from(Bytes::from_static(s.as_bytes())));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    r
}

fn json(status: StatusCode, body: Bytes) -> Response<FrontBody> {
    let mut r = Response::new(FrontBody::from(body));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

fn readyz(shared: &Shared, cfg: &Config) -> Response<FrontBody> {
    let max = cfg.pool.worker_max_inflight;
    if shared.slots.load().iter().any(|s| s.has_room(max)) {
        text(StatusCode::OK, "ready\n")
    } else {
        text(StatusCode::SERVICE_UNAVAILABLE, "no worker has room\n")
    }
}

/// The parts of a request bound for a worker.
struct ForwardCtx<'a> {
    shared: &'a Arc<Shared>,
    cfg: Arc<Config>,
    dialect: Dialect,
    caller: Caller,
    request_id: HeaderValue,
    record: RequestRecord,
}

impl ForwardCtx<'_> {
    /// Buffers and checks an inference endpoint's body; returns the prepared request.
    async fn prepare(
        &mut self,
        req: Request<Incoming>,
        endpoint: Option<Endpoint>,
    ) -> Result<Prepared, Refused<Incoming>> {
        let (parts, body) = req.into_parts();
        let (body, stream, peeked) = if endpoint.is_some() {
            let max = self.cfg.server.max_body_bytes;
            let idle = self.cfg.server.body_read_timeout;
            let bytes = upload::read_limited(body, &parts.headers, max, idle).await?;
            // 400 here, so a malformed request never occupies a worker.
            let head = gateway::request::peek(&bytes).map_err(Refused::from)?;
            let stream = head.stream;
            let peeked = head.to_header();
            self.record.model = Some(head.model.into_owned());
            (bytes, stream, peeked)
        } else {
            (Bytes::new(), false, None)
        };
        let sticky_name = &self.cfg.routing.sticky_header;
        let sticky = (!sticky_name.is_empty())
            .then(|| parts.headers.get(sticky_name.as_str()))
            .flatten()
            .map(|v| self.shared.dispatch.sticky.key(v.as_bytes()));
        let mut headers = parts.headers;
        Prepared::clean_headers(&mut headers);
        // One trace per request: the client's `traceparent` is continued, and the worker's span
        // becomes this one's child (no-op when `[telemetry]` is off).
        if let (Some(e), Some(model)) = (endpoint, &self.record.model) {
            self.record.trace = gateway::telemetry::RequestSpan::front(&headers, e, model);
        }
        if let Some(t) = &self.record.trace {
            t.inject(&mut headers);
        }
        headers.insert(REQUEST_ID, self.request_id.clone());
        // The worker's usage record names the client, and the worker need not parse the body
        // again; a caller's own such headers never pass.
        headers.remove(gateway::headers::CLIENT_HEADER);
        headers.remove(gateway::headers::PEEKED_HEADER);
        if let Some(v) = peeked {
            headers.insert(gateway::headers::PEEKED_HEADER, v);
        }
        if let Caller::Client(c) = &self.caller {
            if let Ok(v) = http::HeaderValue::from_str(&c.name) {
                headers.insert(gateway::headers::CLIENT_HEADER, v);
            }
        }
        let p = Prepared {
            method: parts.method,
            uri: parts.uri,
            headers,
            body,
            dialect: self.dialect,
            caller: self.caller.clone(),
            sticky,
            stream,
        };
        Ok(p)
    }

    /// Forwards; a stream that waits past `stream_ping_interval` switches to the ping response.
    async fn run(self, p: Prepared) -> Response<FrontBody> {
        let stream = p.stream;
        let deadline = self.record.start + self.cfg.pool.queue_timeout;
        let every = self.cfg.server.stream_ping_interval;
        let fut = forward_request(self.shared.clone(), p, self.cfg, deadline, self.record);
        if !stream || every.is_zero() {
            return fut.await;
        }
        let mut fut: waiting::ResponseFuture = Box::pin(fut);
        tokio::select! {
            r = &mut fut => r,
            _ = tokio::time::sleep(every) => waiting::ping_response(fut, self.dialect, every),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes() {
        let r = |m: Method, p| route(&m, p);
        assert_eq!(
            r(Method::POST, "/v1/chat/completions"),
            Route::Inference(Endpoint::ChatCompletions)
        );
        assert_eq!(r(Method::GET, "/v1/chat/completions"), Route::Unknown);
        assert_eq!(
            r(Method::GET, "/v1/health/models/gpt-4o"),
            Route::Forward("/v1/health/models/{model}")
        );
        assert_eq!(r(Method::GET, "/v1/health/models/"), Route::Unknown);
        assert_eq!(r(Method::GET, "/v1/models"), Route::Models);
        assert_eq!(r(Method::GET, "/v1/models/org/m"), Route::Model);
        assert_eq!(r(Method::GET, "/v1/models/"), Route::Unknown);
        assert_eq!(r(Method::POST, "/v1/models/demo"), Route::Unknown);
        assert_eq!(r(Method::GET, "/nope"), Route::Unknown);
        assert_eq!(
            r(Method::POST, "/v1/messages/count_tokens").label(),
            "/v1/messages/count_tokens"
        );
    }
}
