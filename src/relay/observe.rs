//! A body wrapper that watches what passes: bytes, frames, the time to the first byte, and how
//! the body ended (complete, failed, or dropped before its end because the client went away).
//! Usage accounting and the access log hook in here as an `Observer`; frames pass unchanged.

use super::BoxError;
use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::time::Instant;

/// What passed so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stats {
    /// Data bytes.
    pub bytes: u64,
    /// Data frames.
    pub frames: u64,
    /// From the wrapper's creation to the first data frame, or to the end of an empty body.
    pub first_byte: Option<Duration>,
}

/// How an observed body ended.
#[derive(Debug)]
pub enum End<'a> {
    /// The inner body ended.
    Complete,
    /// The inner body failed with this error (passed on unchanged).
    Failed(&'a BoxError),
    /// The body was dropped before its end: the client went away.
    Dropped,
}

/// Called as the body passes; both methods run on the connection's task, so they must not block.
pub trait Observer {
    /// One data frame, after `stats` counted it.
    fn frame(&mut self, _data: &Bytes, _stats: &Stats) {}
    /// The end, exactly once.
    fn end(&mut self, end: End<'_>, stats: &Stats);
}

/// `inner` with `observer` watching it.
pub struct Observed<B, O: Observer> {
    inner: B,
    observer: O,
    stats: Stats,
    started: Instant,
    ended: bool,
}

impl<B, O: Observer> Observed<B, O> {
    pub fn new(inner: B, observer: O) -> Self {
        Self {
            inner,
            observer,
            stats: Stats {
                bytes: 0,
                frames: 0,
                first_byte: None,
            },
            started: Instant::now(),
            ended: false,
        }
    }

    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    pub fn observer(&self) -> &O {
        &self.observer
    }

    pub fn inner(&self) -> &B {
        &self.inner
    }

    fn first_byte(&mut self) {
        let started = self.started;
        self.stats
            .first_byte
            .get_or_insert_with(|| started.elapsed());
    }

    fn end(&mut self, end: End<'_>) {
        if !self.ended {
            self.ended = true;
            self.observer.end(end, &self.stats);
        }
    }
}

impl<B, O> Body for Observed<B, O>
where
    B: Body<Data = Bytes, Error = BoxError> + Unpin,
    O: Observer + Unpin,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        if this.ended {
            return Poll::Ready(None);
        }
        let r = Pin::new(&mut this.inner).poll_frame(cx);
        match &r {
            Poll::Ready(Some(Ok(f))) => {
                if let Some(data) = f.data_ref() {
                    this.stats.bytes += data.len() as u64;
                    this.stats.frames += 1;
                    this.first_byte();
                    this.observer.frame(data, &this.stats);
                }
                // hyper may not poll again once the body says it has ended.
                if this.inner.is_end_stream() {
                    this.first_byte();
                    this.end(End::Complete);
                }
            }
            Poll::Ready(Some(Err(e))) => this.end(End::Failed(e)),
            Poll::Ready(None) => {
                this.first_byte();
                this.end(End::Complete);
            }
            Poll::Pending => {}
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        self.ended || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl<B, O: Observer> Drop for Observed<B, O> {
    fn drop(&mut self) {
        self.end(End::Dropped);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, StreamBody};
    use std::sync::{Arc, Mutex};

    type TestBody = http_body_util::combinators::UnsyncBoxBody<Bytes, BoxError>;

    /// What the observer saw: the frames and the end, as text.
    #[derive(Clone, Default)]
    struct Log(Arc<Mutex<Vec<String>>>);

    impl Observer for Log {
        fn frame(&mut self, data: &Bytes, stats: &Stats) {
            let line = format!(
                "frame {} ({} bytes)",
                String::from_utf8_lossy(data),
                stats.bytes
            );
            self.0.lock().unwrap().push(line);
        }
        fn end(&mut self, end: End<'_>, stats: &Stats) {
            let how = match end {
                End::Complete => "complete".to_string(),
                End::Failed(e) => format!("failed: {e}"),
                End::Dropped => "dropped".to_string(),
            };
            let ttfb = stats.first_byte.map(|d| d.as_millis());
            let line = format!("{how} after {} frames, ttfb {ttfb:?}", stats.frames);
            self.0.lock().unwrap().push(line);
        }
    }

    /// A body of `items`, each after 100ms.
    fn slow(items: Vec<Result<&'static str, &'static str>>) -> TestBody {
        let s = futures_util::stream::iter(items).then(|r| async move {
            tokio::time::sleep(Duration::from_millis(100)).await;
            r.map(|s| Frame::data(Bytes::from_static(s.as_bytes())))
                .map_err(BoxError::from)
        });
        TestBody::new(StreamBody::new(s))
    }
    use futures_util::StreamExt;

    async fn drain(b: &mut Observed<TestBody, Log>) -> Option<String> {
        while let Some(f) = b.frame().await {
            if let Err(e) = f {
                return Some(e.to_string());
            }
        }
        None
    }

    #[tokio::test(start_paused = true)]
    async fn counts_and_reports_a_complete_body() {
        let log = Log::default();
        let mut b = Observed::new(slow(vec![Ok("ab"), Ok("cde")]), log.clone());
        assert_eq!(drain(&mut b).await, None);
        assert_eq!(b.stats().bytes, 5);
        drop(b);
        let got = log.0.lock().unwrap().clone();
        assert_eq!(
            got,
            [
                "frame ab (2 bytes)",
                "frame cde (5 bytes)",
                "complete after 2 frames, ttfb Some(100)"
            ],
            "reported once, not again on drop"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_that_errors_midway_is_reported_failed_and_the_error_passes() {
        let log = Log::default();
        let mut b = Observed::new(slow(vec![Ok("ab"), Err("reset")]), log.clone());
        assert_eq!(drain(&mut b).await.as_deref(), Some("reset"));
        drop(b);
        let got = log.0.lock().unwrap().clone();
        assert_eq!(
            got,
            [
                "frame ab (2 bytes)",
                "failed: reset after 1 frames, ttfb Some(100)"
            ]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_dropped_early_is_reported_dropped() {
        let log = Log::default();
        let mut b = Observed::new(slow(vec![Ok("ab"), Ok("cd")]), log.clone());
        assert!(b.frame().await.is_some());
        drop(b);
        let got = log.0.lock().unwrap().clone();
        assert_eq!(
            got,
            [
                "frame ab (2 bytes)",
                "dropped after 1 frames, ttfb Some(100)"
            ]
        );
    }
}
