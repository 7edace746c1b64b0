//! Forwarding one inference request: try the candidates in order (up to `routing.max_attempts`)
//! until one answers; a connect error, a timeout or a 5xx before any byte reached the client
//! moves on to the next. The first answer that is kept streams back through `ProxyBody`.
//!
//! Timeouts: `connect_timeout` lives in the connector, `first_byte_timeout` bounds the wait for
//! response headers here, `idle_timeout` is enforced between chunks by `ProxyBody`.
//! Header hygiene: hop-by-hop headers are dropped both ways, and the client's credentials are
//! never forwarded; the provider's own key replaces them.

use crate::body::{Attempt, ProxyBody, RequestGuard, ResBody};
use crate::endpoint::Endpoint;
use crate::metrics::Outcome;
use crate::providers::{mock, Provider};
use crate::routing::{RouteTable, Target};
use bytes::Bytes;
use gateway::config::ProviderKind;
use gateway::{ApiError, Dialect, ErrorKind};
use http::header::{self, HeaderMap, HeaderName};
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use std::sync::Arc;

/// The request being forwarded: what every attempt needs.
pub struct Forward<'a> {
    pub endpoint: Endpoint,
    pub parts: &'a http::request::Parts,
    pub body: Bytes,
    pub stream: bool,
}

/// Why one attempt failed before any byte reached the client.
struct AttemptError {
    outcome: Outcome,
    error: ApiError,
}

/// Forwards `req` to the first candidate that answers.
pub async fn forward(
    table: &RouteTable,
    req: Forward<'_>,
    candidates: &[Target],
    guard: RequestGuard,
) -> Response<ResBody> {
    let dialect = req.endpoint.dialect();
    let n = candidates.len().min(table.max_attempts);
    let mut last_error = None;
    for (i, target) in candidates.iter().take(n).enumerate() {
        let provider = &table.providers[target.provider];
        let body = match &target.rewrite {
            Some(model) => match rewrite_model(&req.body, model) {
                Ok(b) => b,
                Err(e) => return e.to_response(dialect),
            },
            None => req.body.clone(),
        };
        if provider.config.kind == ProviderKind::Mock {
            return mock_response(provider, req.endpoint, &body, req.stream, guard).await;
        }
        // The resilience issue hooks in here: a candidate whose breaker is open, that is
        // cooling down after a 429, or that has no pool-wide slot free is skipped before
        // `Attempt::start`, using the atomics in `providers::state`.
        let mut attempt = Attempt::start(provider.clone());
        match send(provider, &req, body).await {
            Ok(resp) => {
                attempt.headers_received();
                let status = resp.status();
                if status.is_server_error() && i + 1 < n {
                    attempt.finish(Outcome::ServerError);
                    tracing::warn!(provider = %provider.name(), %status, "provider failed, trying the next one");
                    continue;
                }
                if status.is_server_error() {
                    attempt.finish(Outcome::ServerError);
                } else if status.is_client_error() {
                    attempt.finish(Outcome::ClientError);
                }
                return stream_back(resp, provider, dialect, attempt, guard);
            }
            Err(e) => {
                attempt.finish(e.outcome);
                tracing::warn!(provider = %provider.name(), error = %e.error.message, "attempt failed");
                last_error = Some(e.error);
            }
        }
    }
    last_error
        .unwrap_or_else(|| ApiError::new(ErrorKind::BadGateway, "no provider could be tried"))
        .to_response(dialect)
}

/// Sends one attempt and waits for the response headers.
async fn send(
    p: &Provider,
    req: &Forward<'_>,
    body: Bytes,
) -> Result<Response<Incoming>, AttemptError> {
    let internal = |m: String| AttemptError {
        outcome: Outcome::ConnectError,
        error: ApiError::new(ErrorKind::Internal, m),
    };
    let client = p
        .client
        .as_ref()
        .ok_or_else(|| internal(format!("provider `{}` has no client", p.name())))?;
    let uri = p.uri(req.endpoint, req.parts.uri.query()).map_err(|e| {
        internal(format!(
            "provider `{}` has an unusable base_url: {e}",
            p.name()
        ))
    })?;
    let mut out = Request::new(Full::new(body));
    *out.method_mut() = http::Method::POST;
    *out.uri_mut() = uri;
    *out.headers_mut() = request_headers(&req.parts.headers);
    p.apply_headers(out.headers_mut());
    let limit = p.config.first_byte_timeout;
    match tokio::time::timeout(limit, client.request(out)).await {
        Ok(Ok(resp)) => Ok(resp),
        Err(_) => Err(AttemptError {
            outcome: Outcome::Timeout,
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
            error: ApiError::new(
                ErrorKind::BadGateway,
                format!("provider `{}` failed: {}", p.name(), error_chain(&e)),
            ),
        }),
    }
}

/// Wraps the provider's response for the client.
fn stream_back(
    resp: Response<Incoming>,
    provider: &Arc<Provider>,
    dialect: Dialect,
    mut attempt: Attempt,
    guard: RequestGuard,
) -> Response<ResBody> {
    let (mut parts, body) = resp.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    let sse = parts
        .headers
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"))
        .then_some(dialect);
    if hyper::body::Body::is_end_stream(&body) {
        // An empty body (204, HEAD-like answers) is never polled: it is complete already.
        attempt.finish(Outcome::Success);
    }
    let body = ProxyBody::new(body, provider.config.idle_timeout, sse, attempt, guard);
    Response::from_parts(parts, ResBody::Proxy(Box::new(body)))
}

/// The mock provider's answer, after its configured latency.
async fn mock_response(
    provider: &Arc<Provider>,
    endpoint: Endpoint,
    body: &[u8],
    stream: bool,
    guard: RequestGuard,
) -> Response<ResBody> {
    let attempt = Attempt::start(provider.clone());
    if let Some(d) = provider.config.latency.filter(|d| !d.is_zero()) {
        tokio::time::sleep(d).await;
    }
    attempt.headers_received();
    let reply = mock::reply(provider.name(), endpoint, body, stream);
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

static X_API_KEY: HeaderName = HeaderName::from_static("x-api-key");
static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");

/// Hop-by-hop headers (RFC 9110 7.6.1) plus `host`, which the client sets from the URI.
fn is_hop_by_hop(name: &HeaderName) -> bool {
    name == header::CONNECTION
        || name == KEEP_ALIVE
        || name == header::TE
        || name == header::TRAILER
        || name == header::TRANSFER_ENCODING
        || name == header::UPGRADE
        || name == header::HOST
        || name.as_str().starts_with("proxy-")
}

/// Names listed in the `Connection` header are hop-by-hop too.
fn connection_listed(headers: &HeaderMap, name: &HeaderName) -> bool {
    headers.get_all(header::CONNECTION).iter().any(|v| {
        v.to_str().is_ok_and(|s| {
            s.split(',')
                .any(|t| t.trim().eq_ignore_ascii_case(name.as_str()))
        })
    })
}

/// The client's headers minus hop-by-hop ones, its credentials and its `content-length` (the
/// body may be rewritten; hyper sets the length from the body).
pub fn request_headers(src: &HeaderMap) -> HeaderMap {
    let has_connection = src.contains_key(header::CONNECTION);
    let mut out = HeaderMap::with_capacity(src.len() + 2);
    for (name, value) in src {
        if is_hop_by_hop(name)
            || name == header::AUTHORIZATION
            || name == X_API_KEY
            || name == header::CONTENT_LENGTH
            || (has_connection && connection_listed(src, name))
        {
            continue;
        }
        out.append(name.clone(), value.clone());
    }
    out
}

/// Removes hop-by-hop headers from a provider's response.
fn strip_hop_by_hop(h: &mut HeaderMap) {
    let listed: Vec<HeaderName> = h
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|s| s.split(','))
        .filter_map(|t| HeaderName::try_from(t.trim()).ok())
        .collect();
    for name in listed {
        h.remove(name);
    }
    for name in [
        header::CONNECTION,
        KEEP_ALIVE.clone(),
        header::TE,
        header::TRAILER,
        header::TRANSFER_ENCODING,
        header::UPGRADE,
    ] {
        h.remove(name);
    }
    h.remove(header::PROXY_AUTHENTICATE);
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
    fn credentials_and_hop_by_hop_headers_are_not_forwarded() {
        let mut h = HeaderMap::new();
        for (k, v) in [
            ("authorization", "Bearer client-secret"),
            ("x-api-key", "client-secret"),
            ("connection", "keep-alive, x-drop-me"),
            ("x-drop-me", "1"),
            ("keep-alive", "timeout=5"),
            ("proxy-authorization", "Basic x"),
            ("transfer-encoding", "chunked"),
            ("host", "127.0.0.1:8080"),
            ("content-length", "10"),
            ("te", "trailers"),
            ("upgrade", "h2c"),
            ("x-request-id", "req-1"),
            ("anthropic-version", "2024-01-01"),
            ("content-type", "application/json"),
        ] {
            h.append(HeaderName::from_static(k), v.parse().unwrap());
        }
        let out = request_headers(&h);
        let mut names: Vec<&str> = out.keys().map(|k| k.as_str()).collect();
        names.sort();
        assert_eq!(names, ["anthropic-version", "content-type", "x-request-id"]);
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
