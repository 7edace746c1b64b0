//! A streaming response answered before its upstream did: keep-alive pings while the answer is
//! awaited, then the answer's stream.
//!
//! The client has its 200 `text/event-stream` head at once and a ping in its dialect right away,
//! then one every interval, while the future that obtains the real answer keeps running inside
//! this body (moved in, not restarted, so a queued request keeps its place). The future decides
//! what counts as success (`super::is_stream_response` is the rule both processes use) and
//! returns either the body to splice or a `Failed` (the error event to send). A spliced stream
//! that ends before its first frame is a failure too: pings alone never prove an answer. A
//! failure ends as every broken stream does (`Ending`), so the client never mistakes it for a
//! complete answer. Dropping the body (the client left) drops the future and what it holds.

use super::{BoxError, Ending};
use crate::api_error::{ApiError, Dialect, ErrorKind};
use bytes::Bytes;
use http::{header, HeaderValue, Response};
use http_body::{Body, Frame, SizeHint};
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::time::{Instant, Sleep};

/// The shortest ping interval: a zero would spin.
const MIN_INTERVAL: Duration = Duration::from_millis(10);

/// Why the awaited answer is not a stream: the event that says so, and the error to end with.
#[derive(Debug)]
pub struct Failed {
    pub event: Bytes,
    pub error: BoxError,
}

impl Failed {
    /// The error event for `err` in `dialect`.
    pub fn new(dialect: Dialect, err: &ApiError) -> Self {
        Self {
            event: Bytes::from(crate::sse::error_event(dialect, err)),
            error: err.message.clone().into(),
        }
    }
}

enum State<F, B> {
    /// Pinging while the answer is awaited.
    Waiting(F),
    /// The answer's stream, before its first frame.
    First(B),
    /// The answer's stream, passed through.
    Inner(B),
    Ending(Ending),
    Done,
}

/// See the module docs.
pub struct Pinging<F, B> {
    state: State<F, B>,
    dialect: Dialect,
    every: Duration,
    /// `None` until the first ping went out.
    timer: Option<Pin<Box<Sleep>>>,
}

impl<F, B> Pinging<F, B>
where
    F: Future<Output = Result<B, Failed>> + Unpin,
    B: Body<Data = Bytes, Error = BoxError> + Unpin,
{
    pub fn new(fut: F, dialect: Dialect, every: Duration) -> Self {
        Self {
            state: State::Waiting(fut),
            dialect,
            every: every.max(MIN_INTERVAL),
            timer: None,
        }
    }

    /// The 200 event-stream response around `body`, whatever the body type.
    pub fn response<T>(body: T) -> Response<T> {
        let mut r = Response::new(body);
        let h = r.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/event-stream"),
        );
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        r
    }

    fn ping(&mut self) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let at = Instant::now() + self.every;
        match self.timer.as_mut() {
            Some(t) => t.as_mut().reset(at),
            None => self.timer = Some(Box::pin(tokio::time::sleep_until(at))),
        }
        let ping = Bytes::from_static(crate::sse::ping(self.dialect));
        Poll::Ready(Some(Ok(Frame::data(ping))))
    }

    fn fail(&mut self, f: Failed) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.state = State::Ending(Ending::new(f.error));
        Poll::Ready(Some(Ok(Frame::data(f.event))))
    }
}

impl<F, B> Body for Pinging<F, B>
where
    F: Future<Output = Result<B, Failed>> + Unpin,
    B: Body<Data = Bytes, Error = BoxError> + Unpin,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        loop {
            match &mut this.state {
                State::Done => return Poll::Ready(None),
                State::Ending(e) => {
                    let r = e.poll_end(cx);
                    if e.is_done() {
                        this.state = State::Done;
                    }
                    return r;
                }
                State::Inner(b) => return Pin::new(b).poll_frame(cx),
                State::First(b) => {
                    return match Pin::new(&mut *b).poll_frame(cx) {
                        Poll::Ready(Some(Ok(f))) => {
                            let State::First(b) = std::mem::replace(&mut this.state, State::Done)
                            else {
                                unreachable!("matched above")
                            };
                            this.state = State::Inner(b);
                            Poll::Ready(Some(Ok(f)))
                        }
                        Poll::Ready(Some(Err(e))) => {
                            this.state = State::Done;
                            Poll::Ready(Some(Err(e)))
                        }
                        Poll::Ready(None) => {
                            let msg = "the stream ended before any event";
                            let err = ApiError::new(ErrorKind::BadGateway, msg);
                            let f = Failed::new(this.dialect, &err);
                            this.fail(f)
                        }
                        Poll::Pending => Poll::Pending,
                    };
                }
                State::Waiting(fut) => {
                    if this.timer.is_none() {
                        return this.ping();
                    }
                    if let Poll::Ready(answer) = Pin::new(fut).poll(cx) {
                        match answer {
                            Ok(b) => {
                                this.state = State::First(b);
                                continue;
                            }
                            Err(f) => return this.fail(f),
                        }
                    }
                    let timer = this.timer.as_mut().expect("armed above");
                    return match timer.as_mut().poll(cx) {
                        Poll::Ready(()) => this.ping(),
                        Poll::Pending => Poll::Pending,
                    };
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.state {
            State::Inner(b) => b.is_end_stream(),
            State::Done => true,
            _ => false,
        }
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, StreamBody};

    type TestBody = http_body_util::combinators::UnsyncBoxBody<Bytes, BoxError>;
    type Fut = Pin<Box<dyn Future<Output = Result<TestBody, Failed>> + Send>>;

    fn body(items: Vec<Result<&'static str, &'static str>>) -> TestBody {
        let frames = items.into_iter().map(|r| {
            r.map(|s| Frame::data(Bytes::from_static(s.as_bytes())))
                .map_err(BoxError::from)
        });
        TestBody::new(StreamBody::new(futures_util::stream::iter(frames)))
    }

    /// Every frame until the end or an error, as text; `Err` marks the error.
    async fn collect(mut b: Pinging<Fut, TestBody>) -> Vec<Result<String, String>> {
        let mut out = Vec::new();
        while let Some(f) = b.frame().await {
            match f {
                Ok(f) => out.push(Ok(
                    String::from_utf8(f.into_data().unwrap().to_vec()).unwrap()
                )),
                Err(e) => {
                    out.push(Err(e.to_string()));
                    break;
                }
            }
        }
        assert!(b.frame().await.is_none(), "nothing after the end");
        out
    }

    fn after(d: Duration, r: Result<TestBody, Failed>) -> Fut {
        Box::pin(async move {
            tokio::time::sleep(d).await;
            r
        })
    }

    const PING: &str = ": ping\n\n";

    #[tokio::test(start_paused = true)]
    async fn pings_every_interval_then_splices_the_stream() {
        let inner = body(vec![Ok("data: 1\n\n"), Ok("data: 2\n\n")]);
        let fut = after(Duration::from_millis(2500), Ok(inner));
        let got = collect(Pinging::new(fut, Dialect::OpenAi, Duration::from_secs(1))).await;
        let want: Vec<Result<String, String>> = [PING, PING, PING, "data: 1\n\n", "data: 2\n\n"]
            .iter()
            .map(|s| Ok(s.to_string()))
            .collect();
        assert_eq!(
            got, want,
            "one ping at once, one at 1s and 2s, then the stream"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_failure_is_an_error_event_then_the_error() {
        let err = ApiError::new(ErrorKind::Unavailable, "no slot");
        let fut = after(
            Duration::from_millis(10),
            Err(Failed::new(Dialect::Anthropic, &err)),
        );
        let got = collect(Pinging::new(
            fut,
            Dialect::Anthropic,
            Duration::from_secs(1),
        ))
        .await;
        assert_eq!(got.len(), 3, "{got:?}");
        assert_eq!(
            got[0].as_deref(),
            Ok("event: ping\ndata: {\"type\": \"ping\"}\n\n")
        );
        let event = got[1].as_ref().unwrap();
        assert!(event.starts_with("event: error\ndata: {"), "{event}");
        assert!(event.contains("no slot"), "{event}");
        assert_eq!(got[2], Err("no slot".to_string()));
    }

    #[tokio::test(start_paused = true)]
    async fn an_empty_stream_is_a_failure_and_a_broken_one_fails() {
        let fut = after(Duration::ZERO, Ok(body(vec![])));
        let got = collect(Pinging::new(fut, Dialect::OpenAi, Duration::from_secs(1))).await;
        assert_eq!(got.len(), 3, "{got:?}");
        assert!(got[1].as_ref().unwrap().starts_with("data: {\"error\""));
        assert!(got[2].is_err());

        let fut = after(
            Duration::ZERO,
            Ok(body(vec![Ok("data: 1\n\n"), Err("reset")])),
        );
        let got = collect(Pinging::new(fut, Dialect::OpenAi, Duration::from_secs(1))).await;
        assert_eq!(
            got[1..],
            [Ok("data: 1\n\n".to_string()), Err("reset".to_string())]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn dropping_the_body_drops_the_future() {
        struct Flag(std::sync::Arc<std::sync::atomic::AtomicBool>);
        impl Drop for Flag {
            fn drop(&mut self) {
                self.0.store(true, std::sync::atomic::Ordering::SeqCst);
            }
        }
        let dropped = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = Flag(dropped.clone());
        let fut: Fut = Box::pin(async move {
            let _flag = flag;
            std::future::pending::<()>().await;
            unreachable!()
        });
        let mut b = Pinging::new(fut, Dialect::OpenAi, Duration::from_secs(1));
        assert!(b.frame().await.is_some(), "the first ping");
        assert!(!dropped.load(std::sync::atomic::Ordering::SeqCst));
        drop(b);
        assert!(dropped.load(std::sync::atomic::Ordering::SeqCst));
    }
}
