//! A deadline that moves with activity: due `after` past the last `touch`, re-armed lazily.
//!
//! Each frame only records the time (`touch`, one clock read); the timer is created at the first
//! wait and moved only when it fires early, so a fast stream costs no timer-wheel update per
//! frame. The worker uses it for the idle timeout between upstream chunks, the front for the
//! BUSY_BLOCKED mark of a silent worker.

use std::future::Future;
use std::pin::Pin;
use std::task::Context;
use std::time::Duration;
use tokio::time::{Instant, Sleep};

#[derive(Debug)]
pub struct Deadline {
    after: Duration,
    /// The last activity (creation, then each `touch`).
    last: Instant,
    /// Fires at `last + after` or earlier (then moved). Boxed because `Sleep` is `!Unpin`.
    timer: Option<Pin<Box<Sleep>>>,
}

impl Deadline {
    /// Due `after` from now.
    pub fn new(after: Duration) -> Self {
        Self {
            after,
            last: Instant::now(),
            timer: None,
        }
    }

    pub fn after(&self) -> Duration {
        self.after
    }

    /// Activity now: the deadline moves to `after` from now.
    pub fn touch(&mut self) {
        self.last = Instant::now();
    }

    /// True once `after` has really passed since the last activity; otherwise registers `cx`
    /// to be woken at the deadline. Stays true until the next `touch`.
    pub fn poll_expired(&mut self, cx: &mut Context<'_>) -> bool {
        let due = self.last + self.after;
        let t = self
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(due)));
        while t.as_mut().poll(cx).is_ready() {
            if Instant::now() >= due {
                return true;
            }
            t.as_mut().reset(due);
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::task::Waker;

    fn expired(d: &mut Deadline) -> bool {
        d.poll_expired(&mut Context::from_waker(Waker::noop()))
    }

    #[tokio::test(start_paused = true)]
    async fn expires_after_the_last_touch_only() {
        let mut d = Deadline::new(Duration::from_secs(10));
        assert!(!expired(&mut d), "armed at the first wait");
        tokio::time::advance(Duration::from_secs(6)).await;
        d.touch();
        tokio::time::advance(Duration::from_secs(6)).await;
        // The timer fired at 10s, early: it is moved to 16s, not reported.
        assert!(!expired(&mut d));
        tokio::time::advance(Duration::from_secs(3)).await;
        assert!(!expired(&mut d));
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(expired(&mut d), "10s after the touch");
        assert!(expired(&mut d), "stays expired");
        d.touch();
        assert!(!expired(&mut d), "a touch re-arms it");
        tokio::time::advance(Duration::from_secs(10)).await;
        assert!(expired(&mut d));
    }

    #[tokio::test(start_paused = true)]
    async fn wakes_the_waiter_at_the_deadline() {
        let mut d = Deadline::new(Duration::from_millis(500));
        let t0 = Instant::now();
        std::future::poll_fn(|cx| {
            if d.poll_expired(cx) {
                std::task::Poll::Ready(())
            } else {
                std::task::Poll::Pending
            }
        })
        .await;
        assert_eq!(t0.elapsed(), Duration::from_millis(500));
    }
}
