//! Waiting instead of failing: a request that finds no room waits for capacity, bounded in count
//! (`pool.max_queue`) and in time (`pool.queue_timeout`).
//!
//! Waiters stand in a first-come, first-served line (`crate::fifo::Fifo`): the pool's line for a
//! place on a worker, each client's own line for its concurrency permits. Every release of room
//! (a request finishing, a worker becoming IDLE, a client permit returned) wakes the head of
//! the line, which takes the room and passes the turn on; nobody overtakes a waiter. The count
//! of waiters across every line is the `max_queue` bound and the `gateway_queue_depth` gauge.

use crate::fifo::Fifo;
use crate::metrics::SupervisorMetrics;
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

    /// Returns `try_take()`'s value as soon as it is `Some`: at once when there is room and
    /// nobody is waiting in `line`, else in turn, after the waiters ahead, until `deadline`.
    pub async fn wait_for<T>(
        &self,
        line: &Fifo,
        metrics: &SupervisorMetrics,
        max_queue: u32,
        deadline: Instant,
        mut try_take: impl FnMut() -> Option<T>,
    ) -> Result<T, WaitError> {
        if line.is_empty() {
            if let Some(v) = try_take() {
                return Ok(v);
            }
        }
        let _ticket = self.enter(max_queue, metrics)?;
        // Joined before the check below: a release after this point wakes us (or is stored).
        let place = line.join();
        let sleep = tokio::time::sleep_until(deadline);
        tokio::pin!(sleep);
        loop {
            // Only the head looks for room; the others would be overtaking it. Leaving (by
            // return or drop) passes the turn to the next waiter.
            if place.is_head() {
                if let Some(v) = try_take() {
                    return Ok(v);
                }
            }
            tokio::select! {
                _ = place.woken() => {}
                _ = &mut sleep => return Err(WaitError::TimedOut),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Duration;

    fn metrics() -> SupervisorMetrics {
        SupervisorMetrics::new().0
    }

    /// Takes one unit of `room` if there is one.
    fn take(room: &AtomicU32) -> Option<()> {
        room.fetch_update(Relaxed, Relaxed, |n| n.checked_sub(1))
            .ok()
            .map(|_| ())
    }

    /// Waits (with a deadline) until `n` requests are queued.
    async fn until_waiting(q: &WaitQueue, n: u32) {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while q.waiting() != n {
            assert!(std::time::Instant::now() < deadline, "never {n} waiting");
            tokio::task::yield_now().await;
        }
    }

    struct Setup {
        line: Arc<Fifo>,
        q: Arc<WaitQueue>,
        m: SupervisorMetrics,
        room: Arc<AtomicU32>,
    }

    impl Setup {
        fn new() -> Self {
            Self {
                line: Arc::new(Fifo::default()),
                q: Arc::new(WaitQueue::default()),
                m: metrics(),
                room: Arc::new(AtomicU32::new(0)),
            }
        }

        /// A waiter that records `id` in `order` once it got room.
        fn waiter(
            &self,
            id: usize,
            order: &Arc<std::sync::Mutex<Vec<usize>>>,
            checks: &Arc<AtomicU32>,
        ) -> tokio::task::JoinHandle<Result<(), WaitError>> {
            let (line, q, m, room) = (
                self.line.clone(),
                self.q.clone(),
                self.m.clone(),
                self.room.clone(),
            );
            let (order, checks) = (order.clone(), checks.clone());
            tokio::spawn(async move {
                let deadline = Instant::now() + Duration::from_secs(30);
                let r = q
                    .wait_for(&line, &m, 10, deadline, || {
                        checks.fetch_add(1, Relaxed);
                        take(&room)
                    })
                    .await;
                order.lock().unwrap().push(id);
                r
            })
        }

        fn release_one(&self) {
            self.room.fetch_add(1, Relaxed);
            self.line.release();
        }
    }

    #[tokio::test]
    async fn wakes_on_capacity_not_polling() {
        let s = Setup::new();
        let order = Arc::new(std::sync::Mutex::new(Vec::new()));
        let checks = Arc::new(AtomicU32::new(0));
        let h = s.waiter(0, &order, &checks);
        until_waiting(&s.q, 1).await;
        assert_eq!(s.m.queue_depth.get(), 1);
        for _ in 0..100 {
            tokio::task::yield_now().await;
        }
        let before = checks.load(Relaxed);
        assert!(
            before <= 2,
            "no polling while nothing changes: {before} checks"
        );
        s.release_one();
        assert_eq!(h.await.unwrap(), Ok(()));
        assert_eq!(s.q.waiting(), 0);
        assert_eq!(s.m.queue_depth.get(), 0);
    }

    /// Waiters get room in the order they arrived, one release each, and a newcomer that
    /// arrives while others wait queues behind them instead of taking the next room.
    #[tokio::test]
    async fn serves_in_arrival_order_and_nobody_overtakes() {
        let s = Setup::new();
        let order = Arc::new(std::sync::Mutex::new(Vec::new()));
        let checks = Arc::new(AtomicU32::new(0));
        let mut handles = Vec::new();
        for id in 0..4 {
            handles.push(s.waiter(id, &order, &checks));
            until_waiting(&s.q, id as u32 + 1).await;
        }
        s.release_one();
        let done = |n: usize| {
            let order = order.clone();
            async move {
                let deadline = std::time::Instant::now() + Duration::from_secs(10);
                while order.lock().unwrap().len() < n {
                    assert!(std::time::Instant::now() < deadline, "never {n} served");
                    tokio::task::yield_now().await;
                }
            }
        };
        done(1).await;
        // Room appears while three wait: a newcomer must not take it.
        s.room.fetch_add(1, Relaxed);
        handles.push(s.waiter(4, &order, &checks));
        until_waiting(&s.q, 4).await;
        s.line.release();
        for n in 2..=5 {
            done(n).await;
            if n < 5 {
                s.release_one();
            }
        }
        for h in handles {
            assert_eq!(h.await.unwrap(), Ok(()));
        }
        assert_eq!(*order.lock().unwrap(), [0, 1, 2, 3, 4]);
        assert_eq!(s.q.waiting(), 0);
    }

    /// A burst of room (a worker coming up) is taken by as many waiters as it has places,
    /// with a single release: each taker passes the turn on.
    #[tokio::test]
    async fn one_release_serves_a_burst() {
        let s = Setup::new();
        let order = Arc::new(std::sync::Mutex::new(Vec::new()));
        let checks = Arc::new(AtomicU32::new(0));
        let handles: Vec<_> = (0..3).map(|id| s.waiter(id, &order, &checks)).collect();
        until_waiting(&s.q, 3).await;
        s.room.store(3, Relaxed);
        s.line.release();
        for h in handles {
            let r = tokio::time::timeout(Duration::from_secs(10), h).await;
            assert_eq!(r.expect("served").unwrap(), Ok(()));
        }
    }

    /// The head giving up (deadline) hands its turn to the next waiter.
    #[tokio::test]
    async fn a_head_that_times_out_passes_its_turn() {
        let s = Setup::new();
        let (line, q, m, room) = (s.line.clone(), s.q.clone(), s.m.clone(), s.room.clone());
        let head = tokio::spawn(async move {
            let deadline = Instant::now() + Duration::from_millis(300);
            q.wait_for(&line, &m, 10, deadline, || None::<()>).await
        });
        until_waiting(&s.q, 1).await;
        let order = Arc::new(std::sync::Mutex::new(Vec::new()));
        let checks = Arc::new(AtomicU32::new(0));
        let next = s.waiter(1, &order, &checks);
        until_waiting(&s.q, 2).await;
        // Room is there but only the head may look, and it cannot take any.
        room.store(1, Relaxed);
        s.line.release();
        assert_eq!(head.await.unwrap(), Err(WaitError::TimedOut));
        let r = tokio::time::timeout(Duration::from_secs(10), next).await;
        assert_eq!(r.expect("the next waiter got the turn").unwrap(), Ok(()));
    }

    #[tokio::test]
    async fn times_out_and_refuses_when_full() {
        let line = Fifo::default();
        let q = WaitQueue::default();
        let m = metrics();
        let deadline = Instant::now() + Duration::from_millis(200);
        let r: Result<(), _> = q.wait_for(&line, &m, 1, deadline, || None).await;
        assert_eq!(r, Err(WaitError::TimedOut));
        let r0: Result<(), _> = q.wait_for(&line, &m, 0, deadline, || None).await;
        assert_eq!(r0, Err(WaitError::QueueFull));
        assert_eq!((q.waiting(), m.queue_depth.get(), line.len()), (0, 0, 0));
    }
}
