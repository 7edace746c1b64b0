//! Waiting instead of failing: a request that finds no room waits for capacity, bounded in count
//! (`pool.max_queue`) and in time (`pool.queue_timeout`).
//!
//! The queue is not a data structure: it is a counter of waiters (the bound and the
//! `gateway_queue_depth` gauge) plus the pool's capacity `Notify`. Every release of room (a
//! request finishing, a worker becoming IDLE, a client permit returned) calls
//! `Pool::notify_capacity`, which wakes the waiters; each re-tries its pick. The `Notified`
//! future is created and enabled *before* the re-check, so a release between the check and the
//! sleep is never lost. Waiters race on wake-up, so the order is close to, not exactly, FIFO.

use crate::metrics::SupervisorMetrics;
use crate::pool::Pool;
use std::sync::atomic::{AtomicU32, Ordering::Relaxed};
use tokio::time::Instant;

/// Why waiting ended without room.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WaitError {
    /// `max_queue` requests were already waiting: refused at once.
    QueueFull,
    /// The deadline passed.
    TimedOut,
}

/// The waiter count shared by every kind of wait (worker room, client permits).
#[derive(Default)]
pub struct WaitQueue {
    waiters: AtomicU32,
}

/// One place in the queue; leaving (by any path, including cancellation) frees it.
struct Ticket<'a> {
    queue: &'a WaitQueue,
    metrics: &'a SupervisorMetrics,
}

impl Drop for Ticket<'_> {
    fn drop(&mut self) {
        self.queue.waiters.fetch_sub(1, Relaxed);
        self.metrics.queue_depth.dec();
    }
}

impl WaitQueue {
    /// Requests waiting right now.
    pub fn waiting(&self) -> u32 {
        self.waiters.load(Relaxed)
    }

    fn enter<'a>(
        &'a self,
        max: u32,
        metrics: &'a SupervisorMetrics,
    ) -> Result<Ticket<'a>, WaitError> {
        let prev = self.waiters.fetch_add(1, Relaxed);
        metrics.queue_depth.inc();
        let t = Ticket {
            queue: self,
            metrics,
        };
        if prev >= max {
            return Err(WaitError::QueueFull);
        }
        Ok(t)
    }

    /// Returns `try_take()`'s value as soon as it is `Some`: at once when there is room, else after
    /// waiting in the queue for a capacity wake-up, until `deadline`.
    pub async fn wait_for<T>(
        &self,
        pool: &Pool,
        metrics: &SupervisorMetrics,
        max_queue: u32,
        deadline: Instant,
        mut try_take: impl FnMut() -> Option<T>,
    ) -> Result<T, WaitError> {
        if let Some(v) = try_take() {
            return Ok(v);
        }
        let _ticket = self.enter(max_queue, metrics)?;
        let sleep = tokio::time::sleep_until(deadline);
        tokio::pin!(sleep);
        loop {
            let notified = pool.capacity_changed();
            tokio::pin!(notified);
            // Registered before the re-check: a release after this point wakes us.
            notified.as_mut().enable();
            if let Some(v) = try_take() {
                return Ok(v);
            }
            tokio::select! {
                _ = &mut notified => {}
                _ = &mut sleep => return try_take().ok_or(WaitError::TimedOut),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicBool;
    use std::sync::Arc;
    use std::time::Duration;

    fn metrics() -> SupervisorMetrics {
        SupervisorMetrics::new().0
    }

    #[tokio::test]
    async fn wakes_on_capacity_not_polling() {
        let pool = Arc::new(Pool::from_slots(vec![]));
        let q = Arc::new(WaitQueue::default());
        let m = metrics();
        let room = Arc::new(AtomicBool::new(false));
        let calls = Arc::new(AtomicU32::new(0));
        let (p2, q2, m2, r2, c2) = (
            pool.clone(),
            q.clone(),
            m.clone(),
            room.clone(),
            calls.clone(),
        );
        let h = tokio::spawn(async move {
            let deadline = Instant::now() + Duration::from_secs(30);
            q2.wait_for(&p2, &m2, 10, deadline, || {
                c2.fetch_add(1, Relaxed);
                r2.load(Relaxed).then_some(7)
            })
            .await
        });
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(q.waiting(), 1);
        assert_eq!(m.queue_depth.get(), 1);
        let before = calls.load(Relaxed);
        assert!(
            before <= 2,
            "no polling while nothing changes: {before} checks"
        );
        room.store(true, Relaxed);
        pool.notify_capacity();
        assert_eq!(h.await.unwrap(), Ok(7));
        assert_eq!(q.waiting(), 0);
        assert_eq!(m.queue_depth.get(), 0);
    }

    #[tokio::test]
    async fn times_out_and_refuses_when_full() {
        let pool = Pool::from_slots(vec![]);
        let q = WaitQueue::default();
        let m = metrics();
        let deadline = Instant::now() + Duration::from_millis(200);
        let r: Result<(), _> = q.wait_for(&pool, &m, 1, deadline, || None).await;
        assert_eq!(r, Err(WaitError::TimedOut));
        let r0: Result<(), _> = q.wait_for(&pool, &m, 0, deadline, || None).await;
        assert_eq!(r0, Err(WaitError::QueueFull));
        assert_eq!((q.waiting(), m.queue_depth.get()), (0, 0));
    }
}
