//! Translation glue for one attempt: the client's body re-encoded for a provider of another
//! API, the headers that must not cross, the access-log label, and the provider's successful
//! answer translated back (a stream stage by stage, a JSON answer whole).

use super::upstream::read_capped;
use crate::attempt::Attempt;
use crate::body::{proxy_body, RequestGuard, ResBody, WholeBody};
use crate::metrics::Outcome;
use crate::providers::Provider;
use crate::translate::{self, Api};
use bytes::Bytes;
use gateway::conn_pool::Pooled;
use gateway::headers;
use gateway::{ApiError, ErrorKind};
use http::header::{self, HeaderMap, HeaderValue};
use http::Response;
use std::sync::Arc;
use std::time::SystemTime;

/// A request on its way to a provider of another API.
#[derive(Debug, Clone)]
pub(super) struct Translation {
    /// The client's API.
    pub(super) from: Api,
    /// The provider's API.
    pub(super) to: Api,
    /// The model the client asked for: the translated answer carries it (an alias stays one).
    pub(super) client_model: String,
    /// A Chat client asked for the usage-only chunk.
    pub(super) include_usage: bool,
}

/// Largest translated non-streamed answer read into memory (it must be whole to be decoded).
const MAX_TRANSLATED_BODY: usize = 32 << 20;

/// The client's body decoded in its API and encoded for the provider's, with the alias
/// target's model when there is one and the provider's `default_max_tokens`.
pub(super) fn translated_request(
    client_body: &Bytes,
    rewrite: Option<&str>,
    from: Api,
    to: Api,
    p: &Provider,
) -> Result<(Bytes, Translation), ApiError> {
    let v: serde_json::Value = serde_json::from_slice(client_body)
        .map_err(|e| ApiError::new(ErrorKind::BadRequest, format!("malformed JSON body: {e}")))?;
    let mut req = translate::decode_request(from, &v).map_err(|e| e.to_api_error())?;
    let t = Translation {
        from,
        to,
        client_model: req.model.clone(),
        include_usage: req.include_usage,
    };
    if let Some(m) = rewrite {
        req.model = m.to_string();
    }
    let opts = translate::RequestOptions {
        default_max_tokens: p.config.default_max_tokens,
    };
    let out = translate::encode_request(from, to, &req, &opts).map_err(|e| e.to_api_error())?;
    Ok((
        Bytes::from(serde_json::to_vec(&out).expect("a JSON value serializes")),
        t,
    ))
}

/// Client headers that belong to the client's API, not the provider's: an Anthropic client's
/// `anthropic-*` headers (the provider kind sets its own `anthropic-version`), and
/// `accept-encoding`, because the translator must read the answer uncompressed.
pub(super) fn translated_headers(h: &mut HeaderMap) {
    h.remove(header::ACCEPT_ENCODING);
    let anthropic: Vec<header::HeaderName> = h
        .keys()
        .filter(|k| k.as_str().starts_with("anthropic-"))
        .cloned()
        .collect();
    for k in anthropic {
        h.remove(k);
    }
}

/// Labels a translated answer `FROM->TO` for the front's access log.
pub(super) fn mark_translated(
    mut resp: Response<ResBody>,
    tr: Option<&Translation>,
) -> Response<ResBody> {
    if let Some(v) = tr.and_then(|t| translated_label(t.from, t.to)) {
        resp.headers_mut()
            .insert(gateway::headers::TRANSLATED_HEADER, v);
    }
    resp
}

/// The `FROM->TO` label of a translation.
pub(super) fn translated_label(from: Api, to: Api) -> Option<HeaderValue> {
    HeaderValue::try_from(crate::translate::label(from, to)).ok()
}

/// A provider's successful answer in its API, for a client of another: an event stream goes
/// through `TranslateBody` chunk by chunk; a JSON answer is read whole (bounded) and translated.
pub(super) async fn translated_back(
    resp: Response<Pooled>,
    provider: &Arc<Provider>,
    t: Translation,
    mut attempt: Attempt,
    guard: RequestGuard,
) -> Response<ResBody> {
    let dialect = t.from.dialect();
    let (parts, body) = resp.into_parts();
    let mut headers = headers::client_response(&parts.headers, &provider.secret, false);
    let is = |v: &[u8]| {
        parts
            .headers
            .get(header::CONTENT_TYPE)
            .is_some_and(|c| c.as_bytes().starts_with(v))
    };
    let encoded = parts
        .headers
        .get(header::CONTENT_ENCODING)
        .is_some_and(|v| !v.as_bytes().eq_ignore_ascii_case(b"identity"));
    let bad = |attempt: &mut Attempt, msg: String| {
        let resp = ApiError::new(ErrorKind::BadGateway, msg).to_response(dialect);
        attempt.set_status(resp.status().as_u16());
        attempt.finish(Outcome::ServerError);
        resp
    };
    if encoded {
        let msg = format!(
            "provider `{}` sent a compressed answer, which cannot be translated",
            provider.name()
        );
        return bad(&mut attempt, msg);
    }
    if is(b"text/event-stream") {
        let inner = proxy_body(body, provider.config.idle_timeout, None, attempt, guard);
        let mut opts = translate::StreamOptions::new(t.client_model);
        opts.include_usage = t.include_usage;
        opts.created = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let body = translate::body::TranslateBody::new(inner, t.to, t.from, opts);
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/event-stream"),
        );
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        let mut out = Response::new(ResBody::Translate(Box::new(body)));
        *out.status_mut() = parts.status;
        *out.headers_mut() = headers;
        return out;
    }
    let (raw, cut) = read_capped(body, MAX_TRANSLATED_BODY, provider.config.idle_timeout).await;
    drop(guard);
    // The usage observer reads the provider's own answer, whole.
    let raw = attempt.pass_data(raw, true);
    if cut {
        let msg = format!(
            "provider `{}`: its answer broke off or exceeded {MAX_TRANSLATED_BODY} bytes",
            provider.name()
        );
        return bad(&mut attempt, msg);
    }
    let translated = serde_json::from_slice::<serde_json::Value>(&raw)
        .map_err(|e| translate::TranslateError::Upstream {
            field: String::new(),
            reason: format!("not JSON: {e}"),
        })
        .and_then(|v| translate::translate_response(t.to, t.from, &v, &t.client_model));
    match translated {
        Ok((v, _usage)) => {
            attempt.finish(Outcome::Success);
            headers.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            let bytes = serde_json::to_vec(&v).expect("a JSON value serializes");
            let mut out = Response::new(ResBody::Whole(Box::new(WholeBody::new(
                bytes.into(),
                provider.clone(),
            ))));
            *out.status_mut() = parts.status;
            *out.headers_mut() = headers;
            out
        }
        Err(e) => {
            tracing::warn!(provider = %provider.name(), error = %e, "untranslatable answer");
            let resp = e.to_api_error().to_response(dialect);
            attempt.set_status(resp.status().as_u16());
            attempt.finish(Outcome::ServerError);
            resp
        }
    }
}
