//! The relay layer: the pieces front and worker compose to pass a response body on, so that each
//! mechanism exists once. A response passes through these stages, in order:
//!
//! 1. `is_stream_response`: is the answer an event stream (the one content-type test)?
//! 2. `Pinging` (only for a stream answered before its upstream had): keep-alive pings while
//!    the answer is awaited, then the answer's stream spliced in, or an error ending.
//! 3. The body wrapper of the process (`Forwarded` on the front, `ProxyBody` in the worker),
//!    which keeps a `Deadline` (the worker's idle timeout, the front's BUSY_BLOCKED mark) and
//!    ends a broken stream with an `Ending` (an error event in the client's dialect, one yield so
//!    that hyper flushes it, then the error that aborts the connection).
//! 4. `Observed`: counts bytes, frames and the time to the first byte, and reports the end
//!    (complete, failed, dropped) to an `Observer`: the hook for usage accounting and logs.
//!
//! Nothing here spawns a task: every adapter is polled by the connection that sends the body.

pub mod deadline;
pub mod ending;
pub mod observe;
pub mod pings;

pub use deadline::Deadline;
pub use ending::Ending;
pub use observe::{End, Observed, Observer, Stats};
pub use pings::{Failed, Pinging};

use http::{header, HeaderMap, Response};

/// The error type of every body the gateway sends.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The response's content type is `text/event-stream` (parameters allowed).
pub fn is_event_stream(h: &HeaderMap) -> bool {
    h.get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"))
}

/// What may be spliced into a stream whose 200 `text/event-stream` head already went out: a
/// success status with an event-stream body. Anything else (an error status, or a JSON body
/// from an upstream that ignored `"stream": true`) would corrupt the stream, so it is reported
/// as an error event instead.
pub fn is_stream_response<B>(r: &Response<B>) -> bool {
    r.status().is_success() && is_event_stream(r.headers())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_content_type_test() {
        let mut r = Response::new(());
        assert!(!is_stream_response(&r), "no content type");
        let h = r.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            "text/event-stream; charset=utf-8".parse().unwrap(),
        );
        assert!(is_stream_response(&r));
        *r.status_mut() = http::StatusCode::BAD_GATEWAY;
        assert!(!is_stream_response(&r), "an error status");
        assert!(is_event_stream(r.headers()));
        let mut h = HeaderMap::new();
        h.insert(header::CONTENT_TYPE, "application/json".parse().unwrap());
        assert!(!is_event_stream(&h));
    }
}
