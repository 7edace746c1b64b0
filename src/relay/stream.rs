//! The relay of one response body: frames pass through as they arrive (never collected), a
//! deadline watches the silences between them, and a stream that breaks never ends cleanly.
//!
//! What the process does at each point is its `Hooks`: the front keeps its in-flight accounting
//! and BUSY_BLOCKED mark there, the worker its attempt outcome and idle timeout. The mechanism
//! is the same for both:
//! - a frame after which the inner body says it has ended is the end (hyper may not poll again);
//! - a failure of an SSE body becomes an error event in the client's dialect, then an `Ending`
//!   (one yield so that hyper flushes it, then the error that aborts the connection); when the
//!   stream already ended with an error event (`sse::LastEvent`, e.g. the worker's own, passed
//!   through the front) no second one is added, so the client sees exactly one;
//! - a failure of any other body is passed on as the error at once;
//! - an expired deadline is the hooks' call: fail (the worker's idle timeout) or only note it
//!   (the front's mark); a noted deadline is not reported again until the next frame.
//!
//! Dropping the relay (the client went away) drops the inner body first, then the hooks.

use super::{BoxError, Deadline, Ending};
use crate::api_error::{ApiError, Dialect};
use crate::sse::LastEvent;
use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use std::pin::Pin;
use std::task::{Context, Poll};

/// Why a relayed body fails: the event the client gets (SSE only) and the error that ends it.
#[derive(Debug)]
pub struct Failure {
    pub event: ApiError,
    pub error: BoxError,
}

/// What a process does as a relayed body passes; every method runs on the connection's task.
pub trait Hooks {
    /// A frame is passing to the client; what is returned goes on (`last` = the inner body
    /// ended with it). The default passes it unchanged; the worker's usage accounting removes the
    /// usage-only chunk a client did not ask for.
    fn frame(&mut self, frame: Frame<Bytes>, _last: bool) -> Frame<Bytes> {
        frame
    }
    /// The inner body ended cleanly.
    fn end(&mut self) {}
    /// The inner body failed with `err`.
    fn failed(&mut self, err: BoxError) -> Failure;
    /// The deadline expired: `Some` fails the body, `None` only notes it.
    fn deadline(&mut self) -> Option<Failure>;
}

/// See the module docs.
pub struct Relay<B, H> {
    /// Declared first: dropped before the hooks (the front gives its worker's place back only
    /// after the worker's body is gone).
    inner: B,
    hooks: H,
    deadline: Option<Deadline>,
    /// The deadline expired and the hooks noted it; cleared by the next frame.
    noted: bool,
    /// `Some` for an SSE body: the dialect of the error event.
    sse: Option<Dialect>,
    events: LastEvent,
    ending: Option<Ending>,
    done: bool,
}

impl<B, H> Relay<B, H>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
    H: Hooks,
{
    pub fn new(inner: B, hooks: H, deadline: Option<Deadline>, sse: Option<Dialect>) -> Self {
        Self {
            inner,
            hooks,
            deadline,
            noted: false,
            sse,
            events: LastEvent::new(),
            ending: None,
            done: false,
        }
    }

    pub fn hooks(&self) -> &H {
        &self.hooks
    }

    pub fn hooks_mut(&mut self) -> &mut H {
        &mut self.hooks
    }

    fn end(&mut self) {
        self.done = true;
        self.deadline = None;
        self.hooks.end();
    }

    fn fail(
        &mut self,
        f: Failure,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.deadline = None;
        match self.sse {
            Some(_) if self.events.ended_with_error() => {
                // The stream's own error event is there: only make sure it is flushed.
                self.ending = Some(Ending::new(f.error));
                self.poll_ending(cx)
            }
            Some(dialect) => {
                let (event, ending) = Ending::with_event(dialect, &f.event, f.error);
                self.ending = Some(ending);
                Poll::Ready(Some(Ok(event)))
            }
            None => {
                self.done = true;
                Poll::Ready(Some(Err(f.error)))
            }
        }
    }

    fn poll_ending(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let Some(e) = self.ending.as_mut() else {
            return Poll::Ready(None);
        };
        let r = e.poll_end(cx);
        if e.is_done() {
            self.ending = None;
            self.done = true;
        }
        r
    }
}

impl<B, H> Body for Relay<B, H>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
    H: Hooks + Unpin,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        if this.ending.is_some() {
            return this.poll_ending(cx);
        }
        if this.done {
            return Poll::Ready(None);
        }
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(f))) => {
                if let (Some(_), Some(data)) = (this.sse, f.data_ref()) {
                    this.events.observe(data);
                }
                let last = this.inner.is_end_stream();
                let f = this.hooks.frame(f, last);
                if last {
                    this.end();
                } else if let Some(d) = this.deadline.as_mut() {
                    d.touch();
                    this.noted = false;
                }
                Poll::Ready(Some(Ok(f)))
            }
            Poll::Ready(Some(Err(e))) => {
                let f = this.hooks.failed(e.into());
                this.fail(f, cx)
            }
            Poll::Ready(None) => {
                this.end();
                Poll::Ready(None)
            }
            Poll::Pending => {
                let Some(d) = this.deadline.as_mut() else {
                    return Poll::Pending;
                };
                if this.noted || !d.poll_expired(cx) {
                    return Poll::Pending;
                }
                match this.hooks.deadline() {
                    Some(f) => this.fail(f, cx),
                    None => {
                        this.noted = true;
                        Poll::Pending
                    }
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done || (self.ending.is_none() && self.inner.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        if self.done || self.ending.is_some() {
            SizeHint::default()
        } else {
            self.inner.size_hint()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api_error::ErrorKind;
    use futures_util::StreamExt;
    use http_body_util::{BodyExt, StreamBody};
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    type TestBody = http_body_util::combinators::UnsyncBoxBody<Bytes, BoxError>;

    /// A body of `items`, each after `every`.
    fn paced(every: Duration, items: Vec<Result<&'static str, &'static str>>) -> TestBody {
        let s = futures_util::stream::iter(items).then(move |r| async move {
            tokio::time::sleep(every).await;
            r.map(|s| Frame::data(Bytes::from_static(s.as_bytes())))
                .map_err(BoxError::from)
        });
        TestBody::new(StreamBody::new(s))
    }

    /// Hooks that log what they were told; `fail_on_deadline` acts like the worker's idle
    /// timeout, otherwise like the front's BUSY_BLOCKED mark.
    #[derive(Default)]
    struct Log {
        seen: Arc<Mutex<Vec<String>>>,
        fail_on_deadline: bool,
    }

    impl Log {
        fn push(&self, s: impl Into<String>) {
            self.seen.lock().unwrap().push(s.into());
        }
    }

    impl Hooks for Log {
        fn frame(&mut self, f: Frame<Bytes>, _last: bool) -> Frame<Bytes> {
            let data = f.data_ref().unwrap();
            self.push(format!(
                "frame {}",
                String::from_utf8_lossy(data).trim_end()
            ));
            f
        }
        fn end(&mut self) {
            self.push("end");
        }
        fn failed(&mut self, err: BoxError) -> Failure {
            self.push(format!("failed {err}"));
            Failure {
                event: ApiError::new(ErrorKind::BadGateway, "stream broke"),
                error: err,
            }
        }
        fn deadline(&mut self) -> Option<Failure> {
            self.push("deadline");
            self.fail_on_deadline.then(|| Failure {
                event: ApiError::new(ErrorKind::GatewayTimeout, "idle"),
                error: "idle".into(),
            })
        }
    }

    /// What the client gets: frames as text, then `Err(..)` if the body failed.
    async fn client(b: &mut Relay<TestBody, Log>) -> Vec<Result<String, String>> {
        let mut out = Vec::new();
        while let Some(f) = b.frame().await {
            match f {
                Ok(f) => out.push(Ok(String::from_utf8_lossy(&f.into_data().unwrap()).into())),
                Err(e) => {
                    out.push(Err(e.to_string()));
                    break;
                }
            }
        }
        assert!(b.frame().await.is_none(), "nothing after the end");
        out
    }

    fn log_of(b: &Relay<TestBody, Log>) -> Vec<String> {
        b.hooks().seen.lock().unwrap().clone()
    }

    const S: Duration = Duration::from_secs(1);

    #[tokio::test(start_paused = true)]
    async fn a_complete_body_passes_unchanged_and_ends_once() {
        let inner = paced(S, vec![Ok("data: 1\n\n"), Ok("data: 2\n\n")]);
        let mut b = Relay::new(
            inner,
            Log::default(),
            Some(Deadline::new(S * 5)),
            Some(Dialect::OpenAi),
        );
        let got = client(&mut b).await;
        assert_eq!(got, [Ok("data: 1\n\n".into()), Ok("data: 2\n\n".into())]);
        assert_eq!(log_of(&b), ["frame data: 1", "frame data: 2", "end"]);
    }

    #[tokio::test(start_paused = true)]
    async fn an_sse_body_that_errors_midway_ends_with_one_error_event_then_the_error() {
        let inner = paced(S, vec![Ok("data: 1\n\n"), Err("reset")]);
        let mut b = Relay::new(inner, Log::default(), None, Some(Dialect::Anthropic));
        let got = client(&mut b).await;
        assert_eq!(got.len(), 3, "{got:?}");
        let event = got[1].as_ref().unwrap();
        assert!(event.starts_with("event: error\ndata: {"), "{event}");
        assert!(event.contains("stream broke"), "{event}");
        assert_eq!(got[2], Err("reset".to_string()));
        assert_eq!(log_of(&b), ["frame data: 1", "failed reset"]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_stream_that_already_ended_with_an_error_event_gets_no_second_one() {
        let own = "event: error\ndata: {\"type\":\"error\"}\n\n";
        let inner = paced(S, vec![Ok(own), Err("reset")]);
        let mut b = Relay::new(inner, Log::default(), None, Some(Dialect::Anthropic));
        let got = client(&mut b).await;
        assert_eq!(got, [Ok(own.to_string()), Err("reset".to_string())]);
    }

    #[tokio::test(start_paused = true)]
    async fn other_bodies_fail_at_once() {
        let inner = paced(S, vec![Ok("{\"a\":"), Err("reset")]);
        let mut b = Relay::new(inner, Log::default(), None, None);
        let got = client(&mut b).await;
        assert_eq!(got, [Ok("{\"a\":".to_string()), Err("reset".to_string())]);
    }

    #[tokio::test(start_paused = true)]
    async fn an_expired_deadline_can_fail_the_body() {
        let inner = paced(S * 10, vec![Ok("data: 1\n\n")]);
        let hooks = Log {
            fail_on_deadline: true,
            ..Log::default()
        };
        let t0 = tokio::time::Instant::now();
        let mut b = Relay::new(
            inner,
            hooks,
            Some(Deadline::new(S * 3)),
            Some(Dialect::OpenAi),
        );
        let got = client(&mut b).await;
        assert_eq!(t0.elapsed(), S * 3);
        assert_eq!(got.len(), 2, "{got:?}");
        assert!(got[0].as_ref().unwrap().contains("idle"));
        assert_eq!(got[1], Err("idle".to_string()));
        assert_eq!(log_of(&b), ["deadline"]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_noted_deadline_is_reported_once_per_silence() {
        let inner = paced(S * 10, vec![Ok("data: 1\n\n"), Ok("data: 2\n\n")]);
        let mut b = Relay::new(
            inner,
            Log::default(),
            Some(Deadline::new(S * 3)),
            Some(Dialect::OpenAi),
        );
        let got = client(&mut b).await;
        assert_eq!(got.len(), 2, "{got:?}");
        let want = [
            "deadline",
            "frame data: 1",
            "deadline",
            "frame data: 2",
            "end",
        ];
        assert_eq!(log_of(&b), want);
    }

    #[tokio::test(start_paused = true)]
    async fn dropping_it_drops_the_inner_body_before_the_hooks() {
        struct Tell(Arc<Mutex<Vec<String>>>, &'static str);
        impl Drop for Tell {
            fn drop(&mut self) {
                self.0.lock().unwrap().push(format!("drop {}", self.1));
            }
        }
        impl Hooks for Tell {
            fn failed(&mut self, err: BoxError) -> Failure {
                Failure {
                    event: ApiError::new(ErrorKind::BadGateway, "x"),
                    error: err,
                }
            }
            fn deadline(&mut self) -> Option<Failure> {
                None
            }
        }
        let order = Arc::new(Mutex::new(Vec::new()));
        let inner_tell = Tell(order.clone(), "inner");
        let inner = futures_util::stream::once(async move {
            let _t = inner_tell;
            std::future::pending::<Result<Frame<Bytes>, BoxError>>().await
        });
        let inner = TestBody::new(StreamBody::new(Box::pin(inner)));
        let mut b = Relay::new(inner, Tell(order.clone(), "hooks"), None, None);
        let mut cx = Context::from_waker(std::task::Waker::noop());
        assert!(Pin::new(&mut b).poll_frame(&mut cx).is_pending());
        drop(b);
        assert_eq!(*order.lock().unwrap(), ["drop inner", "drop hooks"]);
    }
}
