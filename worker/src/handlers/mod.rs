//! The HTTP surface of a worker: which handler serves which path, with 404 and 405 in the
//! caller's dialect. `App` is the state every handler shares.

mod count_tokens;
mod inference;
mod models;

use crate::body::{Counters, ResBody};
use crate::endpoint::Endpoint;
use crate::health::{self, ProviderHealth};
use crate::metrics::Metrics;
use crate::routing::RouteTable;
use gateway::config::Config;
use gateway::provider_permits::ProviderLimiter;
use gateway::{ApiError, Dialect, ErrorKind};
use http::{header, Method, Request, Response};
use hyper::body::Incoming;
use std::convert::Infallible;
use std::sync::Arc;

pub use models::ProviderModelLists;

/// Shared state of one worker.
pub struct App {
    /// The routing table, fixed for the worker's life: a reload replaces the worker (with its
    /// new configuration) rather than swapping this.
    pub routes: Arc<RouteTable>,
    pub metrics: Metrics,
    /// In-flight and served counts for the heartbeat.
    pub counters: Arc<Counters>,
    pub models: ProviderModelLists,
    /// Provider probes and the `/v1/health*` answers.
    pub health: Arc<ProviderHealth>,
    /// Request bodies larger than this get 413.
    pub max_body_bytes: u64,
    /// `pool.worker_max_inflight`: the most requests the front sends at once.
    pub max_inflight: u32,
    /// Host, Origin, CORS and tokens on the TCP port (`gateway::admission`).
    pub admission: gateway::admission::Admission,
    /// `server.header_read_timeout` and `server.body_read_timeout` (`gateway::read_timeouts`).
    pub header_read_timeout: std::time::Duration,
    pub body_read_timeout: std::time::Duration,
}

impl App {
    pub fn new(
        config: &Config,
        routes: RouteTable,
        metrics: Metrics,
        admission: gateway::admission::Admission,
    ) -> Self {
        let models = ProviderModelLists::new(config, routes.providers.len());
        // The pool's table when the supervisor gave one, else a private one (unit tests).
        let shared = routes
            .limits
            .limiter
            .clone()
            .unwrap_or_else(|| ProviderLimiter::local().expect("a private provider table"));
        let health = Arc::new(ProviderHealth::new(
            config,
            routes.providers.clone(),
            shared,
        ));
        Self {
            health,
            routes: Arc::new(routes),
            metrics,
            counters: Arc::new(Counters::default()),
            models,
            max_body_bytes: config.server.max_body_bytes,
            max_inflight: config.pool.worker_max_inflight,
            admission,
            header_read_timeout: config.server.header_read_timeout,
            body_read_timeout: config.server.body_read_timeout,
        }
    }
}

/// Which listener a request came on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hop {
    /// The worker's TCP port: anyone on the machine can reach it, so it admits requests exactly
    /// as the front does.
    Port,
    /// The supervisor's private Unix socket: only the front connects, after its own admission.
    Front,
}

/// Serves one request: admission on the port, then the route.
pub async fn handle(
    app: Arc<App>,
    hop: Hop,
    req: Request<Incoming>,
) -> Result<Response<ResBody>, Infallible> {
    if hop == Hop::Front {
        return route(app, hop, req).await;
    }
    let dialect = Dialect::for_path(req.uri().path());
    if let Err(refused) = app.admission.admit(&req) {
        return Ok(refused.into_response(dialect));
    }
    let origin = app.admission.access.allowed_origin(req.headers()).cloned();
    let mut resp = route(app.clone(), hop, req).await?;
    app.admission.access.decorate(origin, resp.headers_mut());
    Ok(resp)
}

async fn route(
    app: Arc<App>,
    hop: Hop,
    req: Request<Incoming>,
) -> Result<Response<ResBody>, Infallible> {
    let path = req.uri().path();
    if let Some(endpoint) = Endpoint::from_path(path) {
        if req.method() != Method::POST {
            return Ok(not_allowed(endpoint.dialect(), "POST"));
        }
        return Ok(inference::handle(&app, hop, endpoint, req).await);
    }
    let anthropic = gateway::model_list::anthropic_requested(req.headers());
    Ok(match path {
        "/v1/models" if req.method() == Method::GET => models::list(&app, anthropic).await,
        "/metrics" if req.method() == Method::GET => {
            let mut r = Response::new(ResBody::from(app.metrics.encode()));
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                header::HeaderValue::from_static(
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                ),
            );
            r
        }
        "/v1/models" | "/metrics" => not_allowed(Dialect::OpenAi, "GET"),
        p if p.starts_with("/v1/models/") && req.method() == Method::GET => {
            match gateway::model_list::retrieve_id(p) {
                Some(id) => models::retrieve(&app, &id, anthropic).await,
                None => ApiError::new(ErrorKind::NotFound, format!("no such model path: {p}"))
                    .to_response(Dialect::OpenAi),
            }
        }
        p if p.starts_with("/v1/health") => {
            let resp = if req.method() == Method::GET {
                health::handle(&app.health, p, req.uri().query()).await
            } else {
                health::handle_path(p).then(|| not_allowed(Dialect::OpenAi, "GET"))
            };
            match resp {
                Some(r) => r,
                None => ApiError::new(
                    ErrorKind::NotFound,
                    format!("no such endpoint: {} {path}", req.method()),
                )
                .to_response(Dialect::OpenAi),
            }
        }
        _ => {
            let dialect = Dialect::for_path(path);
            ApiError::new(
                ErrorKind::NotFound,
                format!("no such endpoint: {} {path}", req.method()),
            )
            .to_response(dialect)
        }
    })
}

fn not_allowed(dialect: Dialect, allow: &'static str) -> Response<ResBody> {
    let mut r: Response<ResBody> = ApiError::new(
        ErrorKind::MethodNotAllowed,
        format!("method not allowed; use {allow}"),
    )
    .to_response(dialect);
    r.headers_mut()
        .insert(header::ALLOW, header::HeaderValue::from_static(allow));
    r
}
