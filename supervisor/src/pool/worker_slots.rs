//! The dispatch view of the pool: the worker slots and the line of requests waiting for room.
//!
//! This is all the front listener needs from the pool, so it holds this and not the `Pool`;
//! its tests build one over slots of their own (`WorkerSlots::new`) with no processes behind.
//! The pool replaces the slot list when it is resized; every reader gets a lock-free snapshot.

use super::WorkerSlot;
use crate::fifo::Fifo;
use arc_swap::ArcSwap;
use std::sync::Arc;

pub struct WorkerSlots {
    /// The slot list; replaced (never mutated) when the pool is resized.
    list: ArcSwap<Vec<Arc<WorkerSlot>>>,
    /// Requests waiting for room, in arrival order; its head is woken whenever a slot may have
    /// gained room (a request finished, a worker became IDLE).
    capacity: Arc<Fifo>,
}

impl WorkerSlots {
    pub fn new(slots: Vec<Arc<WorkerSlot>>) -> Self {
        Self {
            list: ArcSwap::from_pointee(slots),
            capacity: Arc::new(Fifo::default()),
        }
    }

    /// Lock-free snapshot of the slot list.
    pub fn load(&self) -> arc_swap::Guard<Arc<Vec<Arc<WorkerSlot>>>> {
        self.list.load()
    }

    /// Replaces the slot list (resize), and lets a waiting request look at the new one.
    pub fn store(&self, slots: Vec<Arc<WorkerSlot>>) {
        self.list.store(Arc::new(slots));
        self.notify_capacity();
    }

    /// A slot may have gained room: wakes the first waiting request, which takes the room and
    /// passes the turn on (see `crate::fifo`).
    pub fn notify_capacity(&self) {
        self.capacity.release();
    }

    /// The line of requests waiting for a place on a worker.
    pub fn capacity_line(&self) -> &Fifo {
        &self.capacity
    }

    /// The line itself, for the slot tasks that wake it when their worker becomes IDLE.
    pub(super) fn capacity(&self) -> Arc<Fifo> {
        self.capacity.clone()
    }
}
