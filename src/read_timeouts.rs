//! How long a client may take to send its request (`server.header_read_timeout`,
//! `server.body_read_timeout`), on the front and on every worker port alike.
//!
//! hyper's HTTP/1 `header_read_timeout` covers a head once hyper reads one, but before that the
//! server still has to tell HTTP/1 from HTTP/2 by the first bytes, and that wait has no limit:
//! a client that connects and sends nothing, or half a request line, would be held forever.
//! [`first_head_within`] closes a connection whose first request head has not arrived within the
//! limit. The body side is in `upload::read_limited`: the longest silence between two pieces of
//! a request body.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;

/// Told by a connection's service when a request arrived (its head was read whole).
#[derive(Clone, Default)]
pub struct HeadSeen(Arc<Seen>);

/// One allocation per connection: the wake-up and whether any head came.
#[derive(Default)]
struct Seen {
    arrived: Notify,
    any: std::sync::atomic::AtomicBool,
}

impl HeadSeen {
    /// Marks that a request head arrived; cheap, called for every request.
    pub fn mark(&self) {
        self.0.any.store(true, std::sync::atomic::Ordering::Relaxed);
        // notify_one keeps a permit when no one waits yet, so a mark is never lost.
        self.0.arrived.notify_one();
    }

    /// Whether any request head arrived on the connection so far.
    pub fn any(&self) -> bool {
        self.0.any.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Runs `conn` until its first request head arrived (true), it ended (false: do not poll
    /// it again), or `limit` passed (true).
    pub async fn first_or_end<F: Future>(&self, conn: Pin<&mut F>, limit: Duration) -> bool {
        tokio::select! {
            _ = conn => false,
            _ = tokio::time::timeout(limit, self.0.arrived.notified()) => true,
        }
    }
}

/// Runs `conn` to its end, but gives up on it (returns `None`, and the caller drops it, which
/// closes the socket) if no request head was seen within `limit`.
pub async fn first_head_within<F: Future>(
    mut conn: Pin<&mut F>,
    seen: &HeadSeen,
    limit: Duration,
) -> Option<F::Output> {
    tokio::select! {
        r = conn.as_mut() => return Some(r),
        t = tokio::time::timeout(limit, seen.0.arrived.notified()) => {
            if t.is_err() {
                return None;
            }
        }
    }
    Some(conn.await)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_connection_without_a_head_is_given_up_and_one_with_a_head_runs_on() {
        let seen = HeadSeen::default();
        let never = std::pin::pin!(std::future::pending::<()>());
        assert_eq!(
            first_head_within(never, &seen, Duration::from_secs(1)).await,
            None
        );
        let seen = HeadSeen::default();
        let s2 = seen.clone();
        let conn = std::pin::pin!(async move {
            tokio::time::sleep(Duration::from_millis(500)).await;
            s2.mark();
            // Well past the limit: the head came in time, so the connection may live on.
            tokio::time::sleep(Duration::from_secs(10)).await;
            7
        });
        assert_eq!(
            first_head_within(conn, &seen, Duration::from_secs(1)).await,
            Some(7)
        );
    }
}
