//! One attempt on the wire: sending the request to a provider and waiting for its response
//! head (each failure mapped to an outcome and a client error), and reading a provider's error
//! answer (bounded) into the redacted body the client gets.

use super::translated::{translated_headers, Translation};
use super::Forward;
use crate::body::ResBody;
use crate::endpoint::{Endpoint, EndpointApi};
use crate::error::{error_chain, is_timeout};
use crate::metrics::Outcome;
use crate::providers::Provider;
use crate::translate;
use bytes::Bytes;
use gateway::conn_pool::Pooled;
use gateway::headers;
use gateway::{ApiError, Dialect, ErrorKind};
use http::header::{self, HeaderValue};
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use std::time::Duration;

/// Why one attempt failed before any byte reached the client.
pub(super) struct AttemptError {
    pub(super) outcome: Outcome,
    pub(super) error: ApiError,
    /// Whether the request may have reached the provider; if not (a connect error), the
    /// provider may be tried again.
    pub(super) sent: bool,
}

/// Largest upstream error body read, redacted and passed on; the rest is cut.
const MAX_ERROR_BODY: usize = 64 << 10;

/// Reads at most `cap` bytes of `body` within `wait`. The flag says the bytes may be only the
/// head of the body: there was more, the body failed, or the wait ran out.
pub(super) async fn read_capped(mut body: Pooled, cap: usize, wait: Duration) -> (Bytes, bool) {
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
pub(super) async fn error_response(
    resp: Response<Pooled>,
    p: &Provider,
    dialect: Dialect,
    tr: Option<&Translation>,
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
    let body = if let (true, Some(t)) = (is_json, tr) {
        // The provider's error in its dialect, re-said in the client's (after the redaction).
        Bytes::from(translate::translate_error(
            t.to,
            t.from,
            parts.status.as_u16(),
            &bytes,
        ))
    } else if is_json {
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
pub(super) async fn send(
    p: &Provider,
    req: &Forward,
    tr: Option<&Translation>,
    body: Bytes,
) -> Result<Response<Pooled>, AttemptError> {
    let endpoint = tr.map_or(req.endpoint, |t| Endpoint::of_api(t.to));
    let internal = |m: String| AttemptError {
        outcome: Outcome::ConnectError,
        error: ApiError::new(ErrorKind::Internal, m),
        sent: false,
    };
    let client = p
        .client
        .as_ref()
        .ok_or_else(|| internal(format!("provider `{}` has no client", p.name())))?;
    let uri = p.uri(endpoint, req.query.as_deref()).map_err(|e| {
        internal(format!(
            "provider `{}` has an unusable base_url: {e}",
            p.name()
        ))
    })?;
    let mut out = Request::new(Full::new(body));
    *out.method_mut() = http::Method::POST;
    *out.uri_mut() = uri;
    *out.headers_mut() = req.headers.clone();
    if tr.is_some() {
        translated_headers(out.headers_mut());
    }
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
        Ok(Err(e)) => Err(send_failed(p, &e)),
    }
}

/// A send that failed before response headers: a connect error (nothing was sent; timed out or
/// refused) or a failure after the request went out.
fn send_failed(p: &Provider, e: &gateway::conn_pool::SendError) -> AttemptError {
    if e.is_connect() && is_timeout(e) {
        AttemptError {
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
        }
    } else if e.is_connect() {
        AttemptError {
            outcome: Outcome::ConnectError,
            sent: false,
            error: ApiError::new(
                ErrorKind::BadGateway,
                format!(
                    "cannot connect to provider `{}`: {}",
                    p.name(),
                    error_chain(e)
                ),
            ),
        }
    } else {
        AttemptError {
            outcome: Outcome::ServerError,
            sent: true,
            error: ApiError::new(
                ErrorKind::BadGateway,
                format!("provider `{}` failed: {}", p.name(), error_chain(e)),
            ),
        }
    }
}
