//! The six inference endpoints: read the JSON body (bounded), peek at `model` and `stream`
//! without building a JSON tree, route, and hand over to the proxy. Each request runs in a
//! `request` span carrying its `x-request-id`, so every record logged about it (the proxy's
//! attempt warnings included) names the request; the answer is labelled with the provider that
//! gave it and the attempts it took (`PROVIDER_HEADER`, `ATTEMPTS_HEADER`).

use super::{App, Hop};
use crate::body::{RequestGuard, ResBody};
use crate::endpoint::Endpoint;
use crate::proxy::{self, Forward};
use gateway::headers::{ATTEMPTS_HEADER, CLIENT_HEADER, PEEKED_HEADER, PROVIDER_HEADER};
use gateway::request::RequestHead;
use gateway::upload;
use http::{HeaderValue, Request, Response};
use hyper::body::Incoming;
use tracing::Instrument;

pub async fn handle(
    app: &App,
    hop: Hop,
    endpoint: Endpoint,
    req: Request<Incoming>,
) -> Response<ResBody> {
    let id = req
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok());
    // At ERROR level so that the span exists whenever any record about the request is logged:
    // a span the filter disables would take the request id off the warnings inside it.
    let span = tracing::error_span!("request", request_id = id.map(tracing::field::display));
    let mut trace = None;
    let (mut resp, attempts) =
        crate::attempt::count_attempts(serve(app, hop, endpoint, req, &mut trace))
            .instrument(span)
            .await;
    label(&mut resp, attempts);
    if let Some(f) = trace {
        crate::trace::headers_sent(&f, resp.status().as_u16(), attempts);
    }
    resp
}

/// Sets who answered and after how many attempts; a provider's own headers of these names never
/// pass (it could claim anything).
fn label(resp: &mut Response<ResBody>, attempts: u32) {
    let provider = resp.body().provider().and_then(|p| p.name_header.clone());
    let waiting = matches!(resp.body(), ResBody::Waiting(_));
    let h = resp.headers_mut();
    // `insert` replaces whatever values the name had.
    if let Some(name) = provider {
        h.insert(PROVIDER_HEADER, name);
    } else {
        h.remove(&PROVIDER_HEADER);
    }
    // A stream that went on waiting in its body makes its other attempts after this head.
    if attempts > 0 && !waiting {
        h.insert(ATTEMPTS_HEADER, HeaderValue::from(attempts));
    } else {
        h.remove(&ATTEMPTS_HEADER);
    }
}

async fn serve(
    app: &App,
    hop: Hop,
    endpoint: Endpoint,
    req: Request<Incoming>,
    trace: &mut Option<gateway::telemetry::SharedFacts>,
) -> Response<ResBody> {
    let dialect = endpoint.dialect();
    let mut guard = RequestGuard::new(&app.counters);
    let (parts, body) = req.into_parts();
    // The same bounded read as the front's (`gateway::upload`): a refused upload is drained
    // so the client reads its 413 (a standalone worker faces SDKs directly).
    let bytes = match upload::read_limited(
        body,
        &parts.headers,
        app.max_body_bytes,
        app.body_read_timeout,
    )
    .await
    {
        Ok(b) => b,
        Err(refused) => return refused.into_response(dialect, |d| ResBody::Drain(Box::new(d))),
    };
    // On the private socket the front has parsed the body already and says what it found;
    // anywhere else the same parser as the front's (`gateway::request`), so both agree on what
    // is a 400.
    let peeked = (hop == Hop::Front)
        .then(|| parts.headers.get(PEEKED_HEADER))
        .flatten()
        .and_then(RequestHead::from_header);
    let head = match peeked {
        Some(h) => h,
        None => match gateway::request::peek(&bytes) {
            Ok(h) => h,
            Err(e) => return e.to_response(dialect),
        },
    };
    let model = head.model;
    // The child of the front's span (the hop's `traceparent`); none when telemetry is off.
    let span = gateway::telemetry::RequestSpan::worker(&parts.headers, endpoint, &model);
    *trace = span.as_ref().map(|s| s.share_facts());
    guard.trace(span);
    let table = app.routes.clone();
    let candidates = match table.candidates(&model, endpoint) {
        Ok(c) => c,
        // No provider of the model has `count_tokens` (only the Messages API does), but one
        // serves it translated: the documented estimate.
        Err(e)
            if endpoint == Endpoint::CountTokens
                && e.kind == gateway::ErrorKind::BadRequest
                && table.candidates(&model, Endpoint::Messages).is_ok() =>
        {
            return super::count_tokens::respond(&bytes);
        }
        Err(e) => return e.to_response(dialect),
    };
    let stream = head.stream;
    let header = |name: &str| {
        parts
            .headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
    };
    // Only the front names the client (on its private socket); on the port the header is the
    // caller's own claim and is ignored.
    let client = if hop == Hop::Front {
        header(CLIENT_HEADER.as_str())
    } else {
        ""
    };
    let mut usage = crate::usage::Meta::new(header("x-request-id"), client, &model, stream);
    usage.trace = trace.clone();
    drop(model);
    let fwd = Forward {
        endpoint,
        headers: gateway::headers::upstream_request(&parts.headers),
        query: parts.uri.query().map(str::to_string),
        body: bytes,
        stream,
        usage,
    };
    proxy::forward(table, fwd, candidates, guard).await
}
