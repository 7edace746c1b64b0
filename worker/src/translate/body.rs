//! A translated stream as a response body: wraps the provider's `ProxyBody` (which keeps the
//! idle timeout and the attempt's outcome), feeds each upstream chunk to a `StreamTranslator`
//! and yields the client's frames as they come. When the upstream breaks (a transport error, an
//! idle timeout) or the translator ends in an error (an upstream error event, a cut stream), the
//! client gets exactly one error event in its dialect and then an aborted body, never a clean
//! end.

use super::{Api, StreamOptions, StreamTranslator};
use crate::body::{ProxyBody, StreamError};
use crate::providers::Provider;
use bytes::Bytes;
use gateway::relay::{BoxError, Ending};
use gateway::ErrorKind;
use hyper::body::{Body, Frame};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

enum State {
    Streaming,
    /// The error event went out; the relay layer's `Ending` lets hyper flush it, then fails.
    Aborting(Ending),
    Done,
}

/// The provider's stream in `provider` dialect, re-encoded for a `client` dialect.
pub struct TranslateBody {
    /// Built with no SSE dialect: a break comes out as an `Err`, and the error event is this
    /// body's to write, in the client's dialect.
    inner: ProxyBody,
    tr: StreamTranslator,
    /// Reused for every chunk.
    out: String,
    state: State,
}

impl TranslateBody {
    pub fn new(inner: ProxyBody, provider: Api, client: Api, opts: StreamOptions) -> Self {
        Self {
            inner,
            tr: StreamTranslator::new(provider, client, opts),
            out: String::new(),
            state: State::Streaming,
        }
    }

    pub fn provider(&self) -> &Arc<Provider> {
        self.inner.hooks().provider()
    }

    /// The frames written so far, if any; switches to aborting when the translation ended
    /// without its finish (an error event was written).
    fn flush(&mut self) -> Option<Bytes> {
        if self.tr.is_done() && self.tr.usage().is_none() {
            self.state = State::Aborting(Ending::new(
                StreamError::Upstream("the translated stream ended with an error".into()).into(),
            ));
        }
        if self.out.is_empty() {
            return None;
        }
        Some(Bytes::from(std::mem::take(&mut self.out)))
    }
}

impl Body for TranslateBody {
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
                State::Aborting(e) => {
                    let r = e.poll_end(cx);
                    if e.is_done() {
                        this.state = State::Done;
                    }
                    return r;
                }
                State::Streaming => {}
            }
            match Pin::new(&mut this.inner).poll_frame(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Ok(frame))) => {
                    if let Ok(data) = frame.into_data() {
                        this.tr.feed(&data, &mut this.out);
                    }
                    if this.inner.is_end_stream() {
                        this.tr.end(&mut this.out);
                        if this.tr.usage().is_some() {
                            this.state = State::Done;
                        }
                    }
                }
                Poll::Ready(Some(Err(e))) => {
                    let kind = match e.downcast_ref::<StreamError>() {
                        Some(StreamError::Idle(_)) => ErrorKind::GatewayTimeout,
                        _ => ErrorKind::BadGateway,
                    };
                    this.tr.fail(kind, &e.to_string(), &mut this.out);
                }
                Poll::Ready(None) => {
                    this.tr.end(&mut this.out);
                    if this.tr.usage().is_some() {
                        this.state = State::Done;
                    }
                }
            }
            let finished = matches!(this.state, State::Done);
            if let Some(b) = this.flush() {
                return Poll::Ready(Some(Ok(Frame::data(b))));
            }
            if finished {
                return Poll::Ready(None);
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self.state, State::Done)
    }
}
