//! The six inference endpoints: read the JSON body (bounded), peek at `model` and `stream`
//! without building a JSON tree, route, and hand over to the proxy.

use super::App;
use crate::body::{RequestGuard, ResBody};
use crate::endpoint::Endpoint;
use crate::proxy::{self, Forward};
use gateway::{ApiError, ErrorKind};
use http::{Request, Response};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;

pub async fn handle(app: &App, endpoint: Endpoint, req: Request<Incoming>) -> Response<ResBody> {
    let dialect = endpoint.dialect();
    let guard = RequestGuard::new(&app.counters);
    let (parts, body) = req.into_parts();
    let too_large = || {
        ApiError::new(
            ErrorKind::PayloadTooLarge,
            format!("request body is larger than {} bytes", app.max_body_bytes),
        )
    };
    let declared = parts
        .headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|n| n > app.max_body_bytes) {
        return too_large().to_response(dialect);
    }
    let limit = usize::try_from(app.max_body_bytes).unwrap_or(usize::MAX);
    let bytes = match Limited::new(body, limit).collect().await {
        Ok(c) => c.to_bytes(),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => {
            return too_large().to_response(dialect)
        }
        Err(e) => {
            return ApiError::new(
                ErrorKind::BadRequest,
                format!("cannot read the request body: {e}"),
            )
            .to_response(dialect)
        }
    };
    // The same parser as the front's (`gateway::request`), so both agree on what is a 400.
    let head = match gateway::request::peek(&bytes) {
        Ok(h) => h,
        Err(e) => return e.to_response(dialect),
    };
    let model = head.model;
    let table = app.routes.load_full();
    let candidates = match table.candidates(&model, endpoint) {
        Ok(c) => c,
        Err(e) => return e.to_response(dialect),
    };
    let stream = head.stream;
    drop(model);
    let fwd = Forward {
        endpoint,
        headers: proxy::request_headers(&parts.headers),
        query: parts.uri.query().map(str::to_string),
        body: bytes,
        stream,
    };
    proxy::forward(table, fwd, candidates, guard).await
}
