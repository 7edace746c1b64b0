//! One attempt's bookkeeping: the guard that counts it in flight, records its outcome once
//! (metrics, routing statistics, circuit breaker) and holds its pool-wide provider permit, and
//! the per-request count of attempts started (`count_attempts`).

use crate::breaker::{self, CircuitState};
use crate::metrics::Outcome;
use crate::providers::Provider;
use bytes::Bytes;
use gateway::provider_permits::ProviderPermit;
use hyper::body::Frame;
use std::cell::Cell;
use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

/// One attempt at a provider: counted in the provider's `inflight` until dropped; records its
/// outcome exactly once (`Cancelled` if nobody did before the drop), in the metrics, the
/// routing statistics and the provider's circuit breaker. It also owns the pool-wide provider
/// permit, if one was taken, so the permit is held exactly as long as the response body.
pub struct Attempt {
    pub provider: Arc<Provider>,
    started: Instant,
    done: bool,
    _permit: Option<ProviderPermit>,
    /// Reads the answer's usage and sends its record when the outcome is recorded.
    usage: Option<Box<crate::usage::Observer>>,
}

tokio::task_local! {
    /// Attempts started by the request whose handler scoped this (see `count_attempts`).
    static ATTEMPTS: Cell<u32>;
}

/// Runs `fut` (a request's attempt loop) and returns its output with the number of attempts it
/// started. Counted where every attempt begins (`Attempt::start`), so the attempt loop needs no
/// bookkeeping of its own for the access log. Attempts that run later inside a `Pinging` body
/// (after the 200 and its pings went out) are outside the scope and not counted: their
/// response head, which would carry the count, is gone already.
pub async fn count_attempts<F: Future>(fut: F) -> (F::Output, u32) {
    ATTEMPTS
        .scope(Cell::new(0), async {
            let out = fut.await;
            (out, ATTEMPTS.with(Cell::get))
        })
        .await
}

impl Attempt {
    pub fn start(provider: Arc<Provider>, permit: Option<ProviderPermit>) -> Self {
        provider.state.inflight.fetch_add(1, Ordering::Relaxed);
        // Outside a handler's scope (unit tests, a `Pinging` body) there is nothing to count.
        let _ = ATTEMPTS.try_with(|n| n.set(n.get() + 1));
        Self {
            provider,
            started: Instant::now(),
            done: false,
            _permit: permit,
            usage: None,
        }
    }

    /// Accounts this attempt's answer (`crate::usage`): its record goes out with the outcome.
    pub fn observe(&mut self, o: crate::usage::Observer) {
        self.usage = Some(Box::new(o));
    }

    /// A translated stream's usage so far, for its record (`Observer::give_usage`).
    pub fn give_usage(
        &mut self,
        usage: Option<crate::translate::Usage>,
        before_break: Option<crate::translate::Usage>,
    ) {
        if let Some(o) = &mut self.usage {
            o.give_usage(usage, before_break);
        }
    }

    /// The client gets `status` instead of the provider's answer (it could not be passed on):
    /// the usage record says so.
    pub fn set_status(&mut self, status: u16) {
        if let Some(o) = &mut self.usage {
            o.set_status(status);
        }
    }

    /// A frame on its way to the client, seen by the usage observer (which may hide the Chat
    /// usage chunk the client did not ask for); `last` = nothing follows.
    pub fn pass(&mut self, frame: Frame<Bytes>, last: bool) -> Frame<Bytes> {
        match frame.into_data() {
            Ok(data) => Frame::data(self.pass_data(data, last)),
            Err(frame) => frame,
        }
    }

    pub fn pass_data(&mut self, data: Bytes, last: bool) -> Bytes {
        match &mut self.usage {
            Some(o) => o.chunk(data, last),
            None => data,
        }
    }

    /// Response headers arrived: feeds the latency statistics.
    pub fn headers_received(&self) {
        let d = self.started.elapsed();
        self.provider.state.record_latency(d);
        self.provider.metrics.latency.observe(d.as_secs_f64());
    }

    /// Records `outcome`, with its default meaning for the breaker.
    pub fn finish(&mut self, outcome: Outcome) {
        let b = match outcome {
            Outcome::Success => Some(breaker::Signal::Success),
            Outcome::ClientError => Some(breaker::Signal::ClientError),
            Outcome::RateLimited => Some(breaker::Signal::RateLimited(breaker::DEFAULT_COOLDOWN)),
            Outcome::ServerError
            | Outcome::ConnectError
            | Outcome::Timeout
            | Outcome::StreamError => Some(breaker::Signal::Failure),
            Outcome::Cancelled => None,
        };
        self.finish_as(outcome, b);
    }

    /// Records `outcome` in the metrics and `b` in the breaker; `None` = no verdict (the client
    /// left), which only gives back a half-open trial slot.
    pub fn finish_as(&mut self, outcome: Outcome, b: Option<breaker::Signal>) {
        if self.done {
            return;
        }
        self.done = true;
        if let Some(o) = self.usage.take() {
            o.finish(outcome);
        }
        self.provider.metrics.count(outcome);
        self.provider.state.record_outcome(outcome.is_failure());
        match b {
            Some(o) => self.provider.breaker.record(o),
            None => {
                if self.provider.breaker.state() == CircuitState::HalfOpen {
                    self.provider.breaker.release_trial();
                }
            }
        }
    }
}

impl Drop for Attempt {
    fn drop(&mut self) {
        self.finish(Outcome::Cancelled);
        self.provider.state.inflight.fetch_sub(1, Ordering::Relaxed);
    }
}
