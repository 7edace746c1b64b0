//! The six inference endpoints: read the JSON body (bounded), peek at `model` and `stream`
//! without building a JSON tree, route, and hand over to the proxy.

use super::App;
use crate::body::{RequestGuard, ResBody};
use crate::endpoint::Endpoint;
use crate::proxy::{self, Forward};
use gateway::upload;
use http::{Request, Response};
use hyper::body::Incoming;

pub async fn handle(app: &App, endpoint: Endpoint, req: Request<Incoming>) -> Response<ResBody> {
    let dialect = endpoint.dialect();
    let guard = RequestGuard::new(&app.counters);
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
