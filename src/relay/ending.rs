//! The end of a stream that broke: the error event in the client's dialect, one yield so that it
//! is flushed, then the error that makes hyper abort the connection.
//!
//! hyper drops its unflushed write buffer when a body fails, so an error returned right behind
//! the event would close the connection with the event still unsent. On `Pending` hyper flushes
//! what it holds in the same turn of its connection loop; the wake brings it back for the error.
//! Without the final error a chunked body would end with its last chunk and look complete.

use super::BoxError;
use crate::api_error::{ApiError, Dialect};
use bytes::Bytes;
use http_body::Frame;
use std::task::{Context, Poll};

/// The state after the error event went out (or after the stream already ended with one).
#[derive(Debug)]
pub struct Ending {
    error: Option<BoxError>,
    yielded: bool,
}

impl Ending {
    /// Ends with `error` after one yield; the event, if any, was sent already.
    pub fn new(error: BoxError) -> Self {
        Self {
            error: Some(error),
            yielded: false,
        }
    }

    /// The error event for `err` in `dialect`, and the ending that follows it.
    pub fn with_event(dialect: Dialect, err: &ApiError, error: BoxError) -> (Frame<Bytes>, Self) {
        let event = Bytes::from(crate::sse::error_event(dialect, err));
        (Frame::data(event), Self::new(error))
    }

    /// `Pending` once (with a wake), then the error, then the end.
    pub fn poll_end(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if !self.yielded {
            self.yielded = true;
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        Poll::Ready(self.error.take().map(Err))
    }

    /// The error was reported.
    pub fn is_done(&self) -> bool {
        self.error.is_none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api_error::ErrorKind;
    use std::task::Waker;

    #[test]
    fn event_then_one_pending_then_the_error_then_the_end() {
        let err = ApiError::new(ErrorKind::BadGateway, "broke");
        let (frame, mut end) = Ending::with_event(Dialect::Anthropic, &err, "cut".into());
        let data = frame.into_data().unwrap();
        assert!(data.starts_with(b"event: error\ndata: {"), "{data:?}");
        let mut cx = Context::from_waker(Waker::noop());
        assert!(end.poll_end(&mut cx).is_pending());
        assert!(!end.is_done());
        match end.poll_end(&mut cx) {
            Poll::Ready(Some(Err(e))) => assert_eq!(e.to_string(), "cut"),
            other => panic!("expected the error, got {other:?}"),
        }
        assert!(end.is_done());
        assert!(matches!(end.poll_end(&mut cx), Poll::Ready(None)));
    }
}
