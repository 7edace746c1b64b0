//! Streams that wait: keep-alive pings, then the worker's stream spliced in.
//!
//! A streaming request that has waited `stream_ping_interval` without a response gets a 200
//! `text/event-stream` answer at once, so the client (and any proxy in between) does not give up.
//! The body then sends a ping in the client's dialect every interval while the same forwarding
//! future keeps running (it is moved into the body, not restarted, so the request keeps its place
//! in the queue). When the worker answers, its headers are dropped (the status is already sent)
//! and its body frames follow. A worker error status, or a final timeout, becomes a dialect error
//! event followed by an aborted stream, so the client never mistakes it for a complete answer.
//!
//! The body is polled by the connection's own task: no extra task exists, and a client that goes
//! away drops the waiting future, its queue place and its in-flight lease with it.

use super::body::{BoxError, FrontBody};
use bytes::Bytes;
use gateway::{sse, ApiError, Dialect, ErrorKind};
use http::{header, HeaderValue, Response, StatusCode};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

pub type ResponseFuture = Pin<Box<dyn Future<Output = Response<FrontBody>> + Send>>;

/// Largest worker error body read to build the error event.
const ERROR_BODY_LIMIT: usize = 64 * 1024;

enum State {
    Waiting(ResponseFuture, tokio::time::Interval),
    Splicing(FrontBody),
    Failed(BoxError),
    Done,
}

/// The 200 SSE response that pings while `fut` waits, then relays its stream.
pub fn ping_response(
    fut: ResponseFuture,
    dialect: Dialect,
    every: Duration,
) -> Response<FrontBody> {
    let mut interval = tokio::time::interval(every);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // `interval` ticks at once: that first tick is the ping the client gets right away.
    let stream =
        futures_util::stream::unfold(State::Waiting(fut, interval), move |st| next(st, dialect));
    let mut resp = Response::new(FrontBody::Stream(
        http_body_util::combinators::UnsyncBoxBody::new(StreamBody::new(stream)),
    ));
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    resp
}

type Item = Result<Frame<Bytes>, BoxError>;

async fn next(st: State, dialect: Dialect) -> Option<(Item, State)> {
    match st {
        State::Waiting(mut fut, mut interval) => {
            tokio::select! {
                resp = &mut fut => Some(first_frame(resp, dialect).await),
                _ = interval.tick() => {
                    Some((Ok(Frame::data(Bytes::from_static(sse::ping(dialect)))), State::Waiting(fut, interval)))
                }
            }
        }
        State::Splicing(mut body) => match body.frame().await {
            Some(Ok(f)) => Some((Ok(f), State::Splicing(body))),
            Some(Err(e)) => Some((Err(e), State::Done)),
            None => None,
        },
        State::Failed(e) => {
            // Let hyper flush the error event (it does on `Pending`) before the abort.
            tokio::task::yield_now().await;
            Some((Err(e), State::Done))
        }
        State::Done => None,
    }
}

/// What to send once the worker (or the queue) answered.
async fn first_frame(resp: Response<FrontBody>, dialect: Dialect) -> (Item, State) {
    let status = resp.status();
    if status.is_success() {
        let mut body = resp.into_body();
        return match body.frame().await {
            Some(Ok(f)) => (Ok(f), State::Splicing(body)),
            Some(Err(e)) => (Err(e), State::Done),
            // An empty success body: nothing to relay, and nothing proves completion either.
            None => failed(
                dialect,
                ApiError::new(ErrorKind::BadGateway, "the worker sent no stream"),
            ),
        };
    }
    let err = error_from(status, resp.into_body()).await;
    failed(dialect, err)
}

fn failed(dialect: Dialect, err: ApiError) -> (Item, State) {
    let frame = Frame::data(Bytes::from(sse::error_event(dialect, &err)));
    (Ok(frame), State::Failed(err.message.into()))
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
