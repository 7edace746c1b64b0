//! The relay layer: the pieces front and worker compose to pass a response body on, so that each
//! mechanism exists once. A response passes through these stages, in order:
//!
//! 1. `is_stream_response`: is the answer an event stream (the one content-type test)?
//! 2. `Pinging` (only for a stream answered before its upstream had): keep-alive pings while
//!    the answer is awaited, then the answer's stream spliced in, or an error ending.
//! 3. `Relay`: the one relay of a body, with the process's `Hooks` (the front's `Forwarded`
//!    keeps its in-flight accounting there, the worker's `ProxyBody` its attempt outcome). It
//!    keeps a `Deadline` (the worker's idle timeout, the front's BUSY_BLOCKED mark) and ends a
//!    broken stream with an `Ending` (an error event in the client's dialect unless the stream
//!    already ended with one, one yield so that hyper flushes it, then the error that aborts
//!    the connection). `Hooks::frame` sees (and may rewrite) every frame: the front's access
//!    log takes its time to first byte there, the worker's usage accounting reads the tokens.
//!
//! Nothing here spawns a task: every adapter is polled by the connection that sends the body.

pub mod deadline;
pub mod ending;
pub mod pings;
pub mod stream;

pub use deadline::Deadline;
pub use ending::Ending;
pub use pings::{Failed, Pinging};
pub use stream::{Failure, Hooks, Relay};

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

#[doc(hidden)]
pub mod __body {
    pub use bytes::Bytes;
    pub use http_body::{Body, Frame, SizeHint};
}

/// Implements `Body` for a process's response-body enum, so that the dispatch exists once:
/// `body_enum!(MyBody: full Full, A, B)` sends the `Full(Option<Bytes>)` variant as one frame
/// (a complete body) and delegates to every other variant, each holding a
/// `Body<Data = Bytes, Error = BoxError> + Unpin` (boxed or not).
#[macro_export]
macro_rules! body_enum {
    ($name:ident: full $full:ident, $($variant:ident),+ $(,)?) => {
        impl $crate::relay::__body::Body for $name {
            type Data = $crate::relay::__body::Bytes;
            type Error = $crate::relay::BoxError;

            fn poll_frame(
                self: ::std::pin::Pin<&mut Self>,
                cx: &mut ::std::task::Context<'_>,
            ) -> ::std::task::Poll<
                ::std::option::Option<
                    ::std::result::Result<$crate::relay::__body::Frame<Self::Data>, Self::Error>,
                >,
            > {
                use $crate::relay::__body::{Body, Frame};
                match self.get_mut() {
                    Self::$full(b) => {
                        ::std::task::Poll::Ready(b.take().map(|b| Ok(Frame::data(b))))
                    }
                    $(Self::$variant(b) => Body::poll_frame(::std::pin::Pin::new(b), cx),)+
                }
            }

            fn is_end_stream(&self) -> bool {
                use $crate::relay::__body::Body;
                match self {
                    Self::$full(b) => b.is_none(),
                    $(Self::$variant(b) => Body::is_end_stream(b),)+
                }
            }

            fn size_hint(&self) -> $crate::relay::__body::SizeHint {
                use $crate::relay::__body::{Body, SizeHint};
                match self {
                    Self::$full(b) => {
                        SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64))
                    }
                    $(Self::$variant(b) => Body::size_hint(b),)+
                }
            }
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    enum TestBody {
        Full(Option<bytes::Bytes>),
        Other(Box<http_body_util::combinators::UnsyncBoxBody<bytes::Bytes, BoxError>>),
    }
    crate::body_enum!(TestBody: full Full, Other);

    #[tokio::test]
    async fn a_body_enum_sends_full_once_and_delegates() {
        use http_body::Body;
        use http_body_util::BodyExt;
        let b = TestBody::Full(Some("whole".into()));
        assert_eq!(b.size_hint().exact(), Some(5));
        assert_eq!(b.collect().await.unwrap().to_bytes(), "whole");
        let b = TestBody::Full(None);
        assert!(b.is_end_stream());
        let inner = http_body_util::Full::new("inner".into()).map_err(|e| match e {});
        let b = TestBody::Other(Box::new(inner.boxed_unsync()));
        assert!(!b.is_end_stream());
        assert_eq!(b.collect().await.unwrap().to_bytes(), "inner");
    }

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
