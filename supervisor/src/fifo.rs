//! A first-come, first-served line of waiters for one kind of room: places on the workers, or
//! one client's concurrency permits.
//!
//! Why not `Notify::notify_waiters`: waking every waiter on each release makes them race for
//! the room, so a request that has waited 20 s can lose to one that arrived a moment ago, again
//! and again. Here the order is exact:
//!
//! - `release()` says "room may have appeared" and wakes the head of the line only;
//! - only the head tries to take room. On success it leaves, and leaving wakes the next head
//!   (more room may remain: a worker that came up brings `worker_max_inflight` places at once);
//!   on failure it keeps its place and waits for the next release;
//! - a waiter that leaves without room (deadline, client gone) wakes the next head if it was
//!   the head, so a wake-up never leaves with it;
//! - newcomers try the room directly only while nobody is waiting (`is_empty`); otherwise they
//!   join the back of the line, so nobody is overtaken.
//!
//! A wake-up between "tried and failed" and "asleep" is not lost: each waiter has its own
//! `Notify`, whose `notify_one` stores a permit when nobody is polling it yet.

use std::collections::VecDeque;
use std::sync::atomic::{fence, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::Notify;

/// One line of waiters.
#[derive(Default)]
pub struct Fifo {
    /// The waiters in arrival order. A mutex because a waiter can leave from the middle (its
    /// deadline passed, its client went away); every critical section is a few pointer moves
    /// and never spans an `.await`.
    line: Mutex<VecDeque<Arc<Notify>>>,
    /// `line.len()`, readable without the lock: releases with nobody waiting (the common case,
    /// once per finished request) cost one atomic load.
    len: AtomicUsize,
}

impl std::fmt::Debug for Fifo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fifo").field("len", &self.len()).finish()
    }
}

/// A place in the line; dropping it leaves the line (see the module docs).
pub struct Place<'a> {
    fifo: &'a Fifo,
    me: Arc<Notify>,
}

impl Fifo {
    /// Whether nobody is waiting. A newcomer may take room directly only then.
    pub fn is_empty(&self) -> bool {
        self.len.load(Ordering::SeqCst) == 0
    }

    /// Room may have appeared: wakes the head of the line.
    pub fn release(&self) {
        // Pairs with the fence in `join`: either this load sees the new waiter, or the new
        // waiter's check (after its fence) sees the room freed before this call.
        fence(Ordering::SeqCst);
        if self.len.load(Ordering::Relaxed) == 0 {
            return;
        }
        if let Some(head) = self.lock().front() {
            head.notify_one();
        }
    }

    /// Joins the back of the line. Check for room *after* joining (when at the head), so a
    /// release in between is never missed.
    pub fn join(&self) -> Place<'_> {
        let me = Arc::new(Notify::new());
        self.lock().push_back(me.clone());
        self.len.fetch_add(1, Ordering::SeqCst);
        fence(Ordering::SeqCst);
        Place { fifo: self, me }
    }

    /// Waiters right now.
    pub fn len(&self) -> usize {
        self.len.load(Ordering::Relaxed)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<Arc<Notify>>> {
        // A panic while holding this lock leaves the line consistent (every change is one
        // push or remove), so a poisoned lock is still usable.
        self.line.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Place<'_> {
    /// Whether this waiter is first in line: only the head may take room.
    pub fn is_head(&self) -> bool {
        self.fifo
            .lock()
            .front()
            .is_some_and(|h| Arc::ptr_eq(h, &self.me))
    }

    /// Completes at the next wake-up addressed to this waiter (one stored while it was not
    /// listening counts).
    pub async fn woken(&self) {
        self.me.notified().await
    }
}

impl Drop for Place<'_> {
    fn drop(&mut self) {
        let mut line = self.fifo.lock();
        let Some(i) = line.iter().position(|w| Arc::ptr_eq(w, &self.me)) else {
            return;
        };
        line.remove(i);
        self.fifo.len.fetch_sub(1, Ordering::SeqCst);
        if i == 0 {
            // The head leaves, with room taken or not: the next one gets its turn to look.
            if let Some(next) = line.front() {
                next.notify_one();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn only_the_head_is_woken_and_leaving_passes_the_turn() {
        let f = Fifo::default();
        assert!(f.is_empty());
        let a = f.join();
        let b = f.join();
        let c = f.join();
        assert_eq!(f.len(), 3);
        assert!(a.is_head() && !b.is_head() && !c.is_head());
        f.release();
        tokio::time::timeout(Duration::from_secs(5), a.woken())
            .await
            .expect("the head is woken");
        let not_b = tokio::time::timeout(Duration::from_millis(50), b.woken()).await;
        assert!(not_b.is_err(), "a release wakes the head only");
        // The middle one leaves (its deadline passed): nobody is woken for that.
        drop(b);
        assert!(tokio::time::timeout(Duration::from_millis(50), c.woken())
            .await
            .is_err());
        // The head leaves: the next one is woken without a release.
        drop(a);
        assert!(c.is_head());
        tokio::time::timeout(Duration::from_secs(5), c.woken())
            .await
            .expect("leaving head passes the turn on");
        drop(c);
        assert!(f.is_empty());
        f.release(); // nobody waiting: nothing to do, nothing stored
        let d = f.join();
        assert!(tokio::time::timeout(Duration::from_millis(50), d.woken())
            .await
            .is_err());
    }

    #[tokio::test]
    async fn a_release_before_listening_is_kept() {
        let f = Fifo::default();
        let a = f.join();
        f.release();
        tokio::time::timeout(Duration::from_secs(5), a.woken())
            .await
            .expect("the stored wake-up counts");
    }
}
