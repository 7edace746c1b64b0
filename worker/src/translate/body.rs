//! A translated stream as a response body: wraps the provider's `ProxyBody` (which keeps the
//! idle timeout and the attempt's outcome), whose hooks feed each upstream chunk to a
//! `StreamTranslator` (so the usage record takes the translator's usage, with no second decoder),
//! and yields the client's frames as they come. When the upstream breaks (a transport error, an
//! idle timeout) or the translator ends in an error (an upstream error event, a cut stream), the
//! client gets exactly one error event in its dialect and then an aborted body, never a clean
//! end.

use super::{Api, StreamOptions, StreamTranslator};
use crate::body::{ProxyBody, StreamError, Translating};
use crate::providers::Provider;
use bytes::Bytes;
use gateway::relay::{BoxError, Ending};
use hyper::body::{Body, Frame};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

/// The largest client-frame buffer a stream keeps between chunks.
const KEEP_OUT_BYTES: usize = 4 << 10;

enum State {
    Streaming,
    /// The error event went out; the relay layer's `Ending` lets hyper flush it, then fails.
    Aborting(Ending),
    Done,
}

/// The provider's stream in `provider` dialect, re-encoded for a `client` dialect. The
/// translator itself runs in the relay's hooks (`crate::body::AttemptHooks::translate`, where
/// the usage observer reads its usage); this body takes the client's frames it wrote.
pub struct TranslateBody {
    /// Built with no SSE dialect: a break comes out as an `Err`, after the hooks wrote the
    /// error event in the client's dialect.
    inner: ProxyBody,
    state: State,
}

impl TranslateBody {
    pub fn new(mut inner: ProxyBody, provider: Api, client: Api, opts: StreamOptions) -> Self {
        inner
            .hooks_mut()
            .translate(StreamTranslator::new(provider, client, opts));
        Self {
            inner,
            state: State::Streaming,
        }
    }

    pub fn provider(&self) -> &Arc<Provider> {
        self.inner.hooks().provider()
    }

    fn translating(&mut self) -> &mut Translating {
        self.inner
            .hooks_mut()
            .translated()
            .expect("a TranslateBody's hooks translate")
    }

    /// The frames written so far, if any; switches to aborting when the translation ended
    /// without its finish (an error event was written).
    fn flush(&mut self) -> Option<Bytes> {
        let t = self.translating();
        let failed = t.tr.is_done() && t.tr.usage().is_none();
        // Copied out, so the buffer keeps its capacity for the next chunk (taking it would make
        // every chunk grow a new one from nothing); a large one is not kept per held stream.
        let out = (!t.out.is_empty()).then(|| Bytes::copy_from_slice(t.out.as_bytes()));
        t.out.clear();
        if t.out.capacity() > KEEP_OUT_BYTES {
            t.out = String::new();
        }
        if failed {
            self.state = State::Aborting(Ending::new(
                StreamError::Upstream("the translated stream ended with an error".into()).into(),
            ));
        }
        out
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
            // The hooks translated the frame (its bytes are in `out`), or ended the translation
            // (a clean end, or a break: its error event is in `out`).
            let ended = match Pin::new(&mut this.inner).poll_frame(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Ok(_))) => this.inner.is_end_stream(),
                Poll::Ready(Some(Err(_))) => false,
                Poll::Ready(None) => true,
            };
            if ended && this.translating().tr.usage().is_some() {
                this.state = State::Done;
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
