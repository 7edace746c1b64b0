//! Streams that wait: keep-alive pings, then the worker's stream spliced in.
//!
//! A streaming request that has waited `stream_ping_interval` without a response gets a 200
//! `text/event-stream` answer at once, so the client (and any proxy in between) does not give up.
//! The body then sends a ping in the client's dialect every interval while the same forwarding
//! future keeps running (it is moved into the body, not restarted, so the request keeps its place
//! in the queue). When the worker answers with an event stream, its headers are dropped (the
//! status is already sent) and its body frames follow. A worker error status, a success that is
//! not an event stream, an empty stream, or a final timeout becomes a dialect error event
//! followed by an aborted stream, so the client never mistakes it for a complete answer. The
//! mechanism is the relay layer's `Pinging`, shared with the worker; this module only decides
//! what a worker's answer means.
//!
//! The body is polled by the connection's own task: no extra task exists, and a client that goes
//! away drops the waiting future, its queue place and its in-flight lease with it.

use super::body::FrontBody;
use gateway::relay::{self, Failed, Pinging};
use gateway::{ApiError, Dialect, ErrorKind};
use http::{header, Response, StatusCode};
use http_body_util::BodyExt;
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

pub type ResponseFuture = Pin<Box<dyn Future<Output = Response<FrontBody>> + Send>>;

/// The forwarding future, settled into the stream to splice or the error event to send.
pub type Waiting =
    Pinging<Pin<Box<dyn Future<Output = Result<FrontBody, Failed>> + Send>>, FrontBody>;

/// Largest worker error body read to build the error event.
const ERROR_BODY_LIMIT: usize = 64 * 1024;

/// The 200 SSE response that pings while `fut` waits, then relays its stream.
pub fn ping_response(
    fut: ResponseFuture,
    dialect: Dialect,
    every: Duration,
) -> Response<FrontBody> {
    let settled = Box::pin(async move { settle(fut.await, dialect).await });
    Waiting::response(FrontBody::Waiting(Box::new(Pinging::new(
        settled, dialect, every,
    ))))
}

/// What to relay once the worker (or the queue) answered: its stream when it is one
/// (`relay::is_stream_response`), else the error it stands for.
async fn settle(resp: Response<FrontBody>, dialect: Dialect) -> Result<FrontBody, Failed> {
    if relay::is_stream_response(&resp) {
        return Ok(resp.into_body());
    }
    let status = resp.status();
    let err = if status.is_success() {
        let ct = resp.headers().get(header::CONTENT_TYPE);
        let ct = ct
            .and_then(|v| v.to_str().ok())
            .unwrap_or("no content type");
        let msg = format!("the worker answered {status} with {ct} instead of an event stream");
        ApiError::new(ErrorKind::BadGateway, msg)
    } else {
        error_from(status, resp.into_body()).await
    };
    Err(Failed::new(dialect, &err))
}
/// The error a non-2xx answer stands for: its status's kind, with the message from its body.
async fn error_from(status: StatusCode, body: FrontBody) -> ApiError {
    let kind = ErrorKind::from_status(status.as_u16());
    let bytes = http_body_util::Limited::new(body, ERROR_BODY_LIMIT)
        .collect()
        .await
        .map(|c| c.to_bytes())
        .unwrap_or_default();
    let message = serde_json::from_slice::<serde_json::Value>(&bytes)
        .ok()
        .and_then(|v| v.pointer("/error/message")?.as_str().map(str::to_owned))
        .unwrap_or_else(|| format!("the request failed with status {status}"));
    ApiError::new(kind, message)
}
