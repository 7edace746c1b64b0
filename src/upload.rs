//! Request bodies read whole, with a bound (the front buffers them so it can retry, the worker
//! to find the `model`), and what becomes of an upload that is refused.
//!
//! A body over `server.max_body_bytes` gets a 413, judged by `Content-Length` first and then
//! while reading (a chunked body announces nothing). The refusal keeps the rest of the upload:
//! most clients (the official SDKs among them) write the whole body before they read anything,
//! and closing a connection with unread data makes the kernel reset it, which throws away the
//! answer the client has not read yet; it would see "connection reset" instead of the 413. So
//! the answer goes out over a [`Drain`] body, which reads and discards the rest of the upload
//! (at most [`DRAIN_BYTES`], for at most [`DRAIN_TIME`]) before the response ends. A client that
//! sent `Expect: 100-continue` is never asked for its body, so there is nothing to drain.

use crate::relay::BoxError;
use crate::{ApiError, ErrorKind};
use bytes::{Bytes, BytesMut};
use http::{header, HeaderMap};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::time::Sleep;

/// Most of a refused upload read and thrown away, and for how long at most.
pub const DRAIN_BYTES: u64 = 64 << 20;
pub const DRAIN_TIME: Duration = Duration::from_secs(10);

/// Why a body was not accepted, with the rest of the upload when it should be drained.
pub struct Refused<B> {
    pub error: ApiError,
    pub upload: Option<B>,
}

impl<B> Refused<B> {
    /// The answer in `dialect`: over a [`Drain`] body (wrapped into the caller's body type by
    /// `drain`) with `Connection: close` when there is an upload to drain, else a plain one.
    pub fn into_response<T: From<String>>(
        self,
        dialect: crate::Dialect,
        drain: impl FnOnce(Drain<B>) -> T,
    ) -> http::Response<T> {
        let Some(upload) = self.upload else {
            return self.error.to_response(dialect);
        };
        let mut r = self
            .error
            .to_response::<String>(dialect)
            .map(|answer| drain(Drain::new(Bytes::from(answer), upload)));
        r.headers_mut().insert(
            header::CONNECTION,
            header::HeaderValue::from_static("close"),
        );
        r
    }
}

impl<B> From<ApiError> for Refused<B> {
    fn from(error: ApiError) -> Self {
        Self {
            error,
            upload: None,
        }
    }
}

/// Reads `body` whole if it is at most `max` bytes; see the module docs for a refusal. A body
/// that sends nothing for `idle` (`server.body_read_timeout`) gets 408 and is not drained: the
/// client stalled, so the connection closes with it.
pub async fn read_limited<B>(
    mut body: B,
    headers: &HeaderMap,
    max: u64,
    idle: Duration,
) -> Result<Bytes, Refused<B>>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: std::fmt::Display,
{
    let too_large = |upload| Refused {
        error: ApiError::new(
            ErrorKind::PayloadTooLarge,
            format!("the request body is larger than {max} bytes"),
        ),
        upload,
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|n| n > max) {
        let expects = headers
            .get(header::EXPECT)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
        return Err(too_large((!expects).then_some(body)));
    }
    let mut buf = BytesMut::new();
    loop {
        let Ok(next) = tokio::time::timeout(idle, body.frame()).await else {
            return Err(Refused::from(ApiError::new(
                ErrorKind::RequestTimeout,
                format!(
                    "the request body sent nothing for {}",
                    humantime::format_duration(idle)
                ),
            )));
        };
        let Some(frame) = next else { break };
        let frame = frame.map_err(|e| {
            ApiError::new(
                ErrorKind::BadRequest,
                format!("cannot read the request body: {e}"),
            )
        })?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        if (buf.len() + data.len()) as u64 > max {
            return Err(too_large(Some(body)));
        }
        if buf.is_empty() && body.is_end_stream() {
            // One frame is the whole body (the common case): no copy.
            return Ok(data);
        }
        buf.extend_from_slice(&data);
    }
    Ok(buf.freeze())
}

/// `answer`, then the rest of `upload` read and discarded (see the module docs).
pub struct Drain<B> {
    answer: Option<Bytes>,
    upload: Option<B>,
    left: u64,
    deadline: Pin<Box<Sleep>>,
}

impl<B> Drain<B> {
    /// Must be created inside a Tokio runtime (it arms the drain deadline).
    pub fn new(answer: Bytes, upload: B) -> Self {
        Self {
            answer: Some(answer),
            upload: Some(upload),
            left: DRAIN_BYTES,
            deadline: Box::pin(tokio::time::sleep(DRAIN_TIME)),
        }
    }
}

impl<B: Body<Data = Bytes> + Unpin> Body for Drain<B> {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        if let Some(a) = this.answer.take() {
            return Poll::Ready(Some(Ok(Frame::data(a))));
        }
        while let Some(up) = this.upload.as_mut() {
            match Pin::new(up).poll_frame(cx) {
                Poll::Ready(Some(Ok(f))) => {
                    let n = f.data_ref().map_or(0, |d| d.len() as u64);
                    this.left = this.left.saturating_sub(n);
                    if this.left == 0 {
                        this.upload = None;
                    }
                }
                // The upload ended or broke: nothing more to wait for.
                Poll::Ready(_) => this.upload = None,
                Poll::Pending => {
                    if this.deadline.as_mut().poll(cx).is_ready() {
                        this.upload = None;
                        break;
                    }
                    return Poll::Pending;
                }
            }
        }
        Poll::Ready(None)
    }

    fn is_end_stream(&self) -> bool {
        self.answer.is_none() && self.upload.is_none()
    }

    /// Never exact, on purpose: hyper stops polling a body once its announced length is
    /// written, and the drain happens after the answer.
    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::StreamExt;
    use http_body_util::{Full, StreamBody};
    use std::convert::Infallible;

    const IDLE: Duration = Duration::from_secs(5);

    /// A body that sends a piece and then goes silent (a chunk size larger than its data) is
    /// given up after `idle`, with 408.
    #[tokio::test(start_paused = true)]
    async fn a_silent_body_times_out() {
        let chunks = futures_util::stream::iter([Ok::<_, Infallible>(Frame::data(
            Bytes::from_static(b"abc"),
        ))])
        .chain(futures_util::stream::pending());
        let r = read_limited(StreamBody::new(chunks), &HeaderMap::new(), 100, IDLE)
            .await
            .err()
            .unwrap();
        assert_eq!(r.error.kind, ErrorKind::RequestTimeout);
        assert!(r.upload.is_none(), "a stalled upload is not drained");
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, v.parse().unwrap());
        }
        h
    }

    #[tokio::test]
    async fn reads_small_bodies_and_refuses_big_ones_keeping_the_upload() {
        let ok = read_limited(
            Full::new(Bytes::from_static(b"hello")),
            &HeaderMap::new(),
            5,
            IDLE,
        )
        .await
        .ok()
        .unwrap();
        assert_eq!(ok, "hello");
        // Declared too large: refused unread, the upload kept for draining ...
        let r = read_limited(
            Full::new(Bytes::new()),
            &headers(&[("content-length", "99")]),
            5,
            IDLE,
        )
        .await
        .err()
        .unwrap();
        assert_eq!(r.error.kind, ErrorKind::PayloadTooLarge);
        assert!(r.upload.is_some());
        // ... unless the client waits for `100 Continue` before sending it.
        let r = read_limited(
            Full::new(Bytes::new()),
            &headers(&[("content-length", "99"), ("expect", "100-Continue")]),
            5,
            IDLE,
        )
        .await
        .err()
        .unwrap();
        assert!(r.upload.is_none());
        // Found too large while reading (no length announced).
        let chunks = futures_util::stream::iter(
            (0..4).map(|_| Ok::<_, Infallible>(Frame::data(Bytes::from_static(b"abc")))),
        );
        let r = read_limited(StreamBody::new(chunks), &HeaderMap::new(), 5, IDLE)
            .await
            .err()
            .unwrap();
        assert_eq!(r.error.kind, ErrorKind::PayloadTooLarge);
        assert!(r.upload.is_some());
    }

    #[tokio::test]
    async fn drain_sends_the_answer_then_consumes_the_upload() {
        let chunks = futures_util::stream::iter(
            (0..3).map(|_| Ok::<_, Infallible>(Frame::data(Bytes::from_static(b"xyz")))),
        );
        let mut d = Drain::new(Bytes::from_static(b"413"), StreamBody::new(chunks));
        let first = d.frame().await.unwrap().unwrap();
        assert_eq!(first.into_data().unwrap(), "413");
        assert!(
            d.frame().await.is_none(),
            "ends once the upload is consumed"
        );
        assert!(d.is_end_stream());
    }

    #[tokio::test(start_paused = true)]
    async fn drain_gives_up_after_its_time() {
        let never = futures_util::stream::pending::<Result<Frame<Bytes>, Infallible>>();
        let mut d = Drain::new(Bytes::from_static(b"413"), StreamBody::new(never));
        d.frame().await.unwrap().unwrap();
        let end = tokio::time::timeout(DRAIN_TIME * 2, d.frame()).await;
        assert!(matches!(end, Ok(None)), "the drain stops at DRAIN_TIME");
    }

    #[test]
    fn a_refusal_with_an_upload_closes_the_connection_after_draining() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        let _g = rt.enter();
        let err = || ApiError::new(ErrorKind::PayloadTooLarge, "too big");
        let plain: http::Response<String> = Refused::<Full<Bytes>>::from(err())
            .into_response(crate::Dialect::OpenAi, |_| unreachable!("nothing to drain"));
        assert_eq!(plain.status(), 413);
        assert!(plain.headers().get(header::CONNECTION).is_none());
        let refused = Refused {
            error: err(),
            upload: Some(Full::new(Bytes::new())),
        };
        let drained = refused.into_response(crate::Dialect::OpenAi, |_d| String::from("drained"));
        assert_eq!(drained.status(), 413);
        assert_eq!(drained.headers()[header::CONNECTION], "close");
        assert_eq!(drained.headers()[header::CONTENT_TYPE], "application/json");
        assert_eq!(drained.body(), "drained");
    }
}
