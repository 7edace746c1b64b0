//! Worker choice: which slot gets the next request, read from the pool's lock-free snapshot.
//!
//! Order of preference (pingora-style selection over per-backend atomics):
//! 1. the session's sticky slot, while it has room;
//! 2. an IDLE slot, scanning from a rotating index so several IDLE workers share the load;
//! 3. the least-loaded BUSY / BUSY_STREAMING slot with room, by power of two choices.
//!
//! A choice is a *reservation*: `inflight` is incremented before the request leaves, and undone
//! when the slot turned out to be full in between (two requests racing for the last place).
//! The reservation is returned as a [`SlotLease`] whose drop releases it, so no error path can
//! leak an in-flight count.

use crate::pool::{WorkerSlot, WorkerSlots, WorkerState};
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;

/// Sticky bindings kept at once. Each is one `AtomicU64`, so the table is 32 KiB whatever the
/// number of sessions: a bounded map in the sense that matters.
const STICKY_BUCKETS: usize = 4096;

/// Session → slot bindings without a lock.
///
/// Why a tagged, direct-mapped table rather than a `Mutex<HashMap>`: the lookup is on the request
/// path, and a collision only costs stickiness (the session is re-bound), never correctness.
/// Each bucket holds `tag << 16 | (slot id + 1)`, the tag being the value's hash above the bucket
/// bits, so two sessions sharing a bucket are told apart; 0 means empty.
pub struct StickyTable {
    buckets: Box<[AtomicU64]>,
    hasher: std::collections::hash_map::RandomState,
}

impl Default for StickyTable {
    fn default() -> Self {
        Self {
            buckets: (0..STICKY_BUCKETS).map(|_| AtomicU64::new(0)).collect(),
            hasher: Default::default(),
        }
    }
}

/// Where a session's binding lives and how it is recognised.
#[derive(Clone, Copy, Debug)]
pub struct StickyKey {
    bucket: usize,
    tag: u64,
}

impl StickyTable {
    pub fn key(&self, value: &[u8]) -> StickyKey {
        let h = self.hasher.hash_one(value);
        StickyKey {
            bucket: (h as usize) % STICKY_BUCKETS,
            tag: h >> 16,
        }
    }

    /// The slot id bound to this session, if any.
    pub fn get(&self, k: StickyKey) -> Option<usize> {
        let v = self.buckets[k.bucket].load(Relaxed);
        let id = (v & 0xffff) as usize;
        (v != 0 && v >> 16 == k.tag && id > 0).then(|| id - 1)
    }

    /// Binds (or re-binds) the session to `slot_id`, evicting whatever shared the bucket.
    pub fn bind(&self, k: StickyKey, slot_id: usize) {
        let v = (k.tag << 16) | ((slot_id as u64 + 1) & 0xffff);
        if self.buckets[k.bucket].load(Relaxed) != v {
            self.buckets[k.bucket].store(v, Relaxed);
        }
    }
}

/// A reserved place on a worker: `inflight` was incremented; dropping the lease gives it back,
/// along with the streaming / blocked marks taken meanwhile, and wakes the waiters.
pub struct SlotLease {
    pub slot: Arc<WorkerSlot>,
    slots: Arc<WorkerSlots>,
    streaming: bool,
    blocked: bool,
    served: bool,
}

impl SlotLease {
    /// Marks the response as an open SSE stream (BUSY_STREAMING) until the lease drops.
    pub fn mark_streaming(&mut self) {
        if !self.streaming {
            self.streaming = true;
            self.slot.streaming.fetch_add(1, Relaxed);
        }
    }

    /// Marks the request silent past `blocked_after` (BUSY_BLOCKED), or clears that mark.
    pub fn set_blocked(&mut self, blocked: bool) {
        if blocked != self.blocked {
            self.blocked = blocked;
            if blocked {
                self.slot.blocked.fetch_add(1, Relaxed);
            } else {
                self.slot.blocked.fetch_sub(1, Relaxed);
            }
        }
    }

    pub fn is_blocked(&self) -> bool {
        self.blocked
    }

    /// Counts the request in `served` when the lease ends (a response was obtained).
    pub fn mark_served(&mut self) {
        self.served = true;
    }
}

impl Drop for SlotLease {
    fn drop(&mut self) {
        self.set_blocked(false);
        if self.streaming {
            self.slot.streaming.fetch_sub(1, Relaxed);
        }
        if self.served {
            self.slot.served.fetch_add(1, Relaxed);
        }
        self.slot.inflight.fetch_sub(1, Relaxed);
        self.slots.notify_capacity();
    }
}

/// Picks and reserves slots. One per front listener.
#[derive(Default)]
pub struct Dispatcher {
    /// Where the next IDLE scan starts; rotating spreads requests over several IDLE workers.
    next: AtomicUsize,
    pub sticky: StickyTable,
}

/// Slot ids (below 64) already tried by this request; a retry prefers others.
#[derive(Clone, Copy, Default, Debug)]
pub struct Tried(u64);

impl Tried {
    pub fn add(&mut self, id: usize) {
        self.0 |= 1u64.checked_shl(id as u32).unwrap_or(0);
    }
    fn has(self, id: usize) -> bool {
        self.0 & 1u64.checked_shl(id as u32).unwrap_or(0) != 0
    }
}

impl Dispatcher {
    /// Reserves a place on the best slot with room, or `None` when every slot is full.
    /// Slots in `tried` are used only when no other slot has room.
    pub fn pick(
        &self,
        pool: &Arc<WorkerSlots>,
        max_inflight: u32,
        sticky: Option<StickyKey>,
        tried: Tried,
    ) -> Option<SlotLease> {
        let slots = pool.load();
        let lease = self
            .pick_from(&slots, pool, max_inflight, sticky, |s| !tried.has(s.id))
            .or_else(|| self.pick_from(&slots, pool, max_inflight, sticky, |_| true))?;
        if let Some(k) = sticky {
            self.sticky.bind(k, lease.slot.id);
        }
        Some(lease)
    }

    fn pick_from(
        &self,
        slots: &[Arc<WorkerSlot>],
        pool: &Arc<WorkerSlots>,
        max: u32,
        sticky: Option<StickyKey>,
        allowed: impl Fn(&WorkerSlot) -> bool,
    ) -> Option<SlotLease> {
        if slots.is_empty() {
            return None;
        }
        let ok = |s: &WorkerSlot| allowed(s) && s.has_room(max);
        if let Some(id) = sticky.and_then(|k| self.sticky.get(k)) {
            if let Some(s) = slots.iter().find(|s| s.id == id && ok(s)) {
                if let Some(l) = reserve(s, pool, max) {
                    return Some(l);
                }
            }
        }
        let n = slots.len();
        let start = self.next.fetch_add(1, Relaxed);
        for i in 0..n {
            let s = &slots[(start + i) % n];
            if ok(s) && s.state() == WorkerState::Idle {
                if let Some(l) = reserve(s, pool, max) {
                    return Some(l);
                }
            }
        }
        self.least_loaded(slots, pool, max, &ok)
    }

    /// Power of two choices among the slots with room; a full scan when both samples are full
    /// (with a handful of workers that scan is a few loads).
    fn least_loaded(
        &self,
        slots: &[Arc<WorkerSlot>],
        pool: &Arc<WorkerSlots>,
        max: u32,
        ok: &dyn Fn(&WorkerSlot) -> bool,
    ) -> Option<SlotLease> {
        let n = slots.len();
        let load = |s: &WorkerSlot| s.inflight.load(Relaxed);
        let (a, b) = (&slots[fastrand::usize(..n)], &slots[fastrand::usize(..n)]);
        let sampled = match (ok(a), ok(b)) {
            (true, true) => Some(if load(a) <= load(b) { a } else { b }),
            (true, false) => Some(a),
            (false, true) => Some(b),
            (false, false) => None,
        };
        if let Some(l) = sampled.and_then(|s| reserve(s, pool, max)) {
            return Some(l);
        }
        let mut order: Vec<&Arc<WorkerSlot>> = slots.iter().filter(|s| ok(s)).collect();
        order.sort_by_key(|s| load(s));
        order.into_iter().find_map(|s| reserve(s, pool, max))
    }
}

/// Takes one place on `slot` if it is still below `max`.
fn reserve(slot: &Arc<WorkerSlot>, pool: &Arc<WorkerSlots>, max: u32) -> Option<SlotLease> {
    let prev = slot.inflight.fetch_add(1, Relaxed);
    if prev >= max {
        slot.inflight.fetch_sub(1, Relaxed);
        pool.notify_capacity();
        return None;
    }
    Some(SlotLease {
        slot: slot.clone(),
        slots: pool.clone(),
        streaming: false,
        blocked: false,
        served: false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(n: usize) -> Arc<WorkerSlots> {
        let slots = (0..n)
            .map(|i| {
                let s = Arc::new(WorkerSlot::new(i, 1000 + i as u16));
                s.set_lifecycle(WorkerState::Idle);
                s
            })
            .collect();
        Arc::new(WorkerSlots::new(slots))
    }

    #[test]
    fn idle_first_and_spread() {
        let p = pool(3);
        let d = Dispatcher::default();
        let a = d.pick(&p, 4, None, Tried::default()).unwrap();
        let b = d.pick(&p, 4, None, Tried::default()).unwrap();
        let c = d.pick(&p, 4, None, Tried::default()).unwrap();
        let mut ids = [a.slot.id, b.slot.id, c.slot.id];
        ids.sort();
        assert_eq!(ids, [0, 1, 2], "three idle workers each get one request");
        drop(b);
        let again = d.pick(&p, 4, None, Tried::default()).unwrap();
        assert_eq!(again.slot.state(), WorkerState::Busy);
        assert_eq!(
            again.slot.inflight.load(Relaxed),
            1,
            "the only idle worker was chosen"
        );
    }

    #[test]
    fn full_pool_refuses_and_lease_releases() {
        let p = pool(2);
        let d = Dispatcher::default();
        let a = d.pick(&p, 1, None, Tried::default()).unwrap();
        let _b = d.pick(&p, 1, None, Tried::default()).unwrap();
        assert!(d.pick(&p, 1, None, Tried::default()).is_none());
        let id = a.slot.id;
        drop(a);
        assert_eq!(d.pick(&p, 1, None, Tried::default()).unwrap().slot.id, id);
    }

    #[test]
    fn least_loaded_among_busy() {
        let p = pool(3);
        let slots = p.load();
        slots[0].inflight.store(5, Relaxed);
        slots[1].inflight.store(1, Relaxed);
        slots[2].inflight.store(7, Relaxed);
        let d = Dispatcher::default();
        let l = d.pick(&p, 6, None, Tried::default()).unwrap();
        assert_ne!(l.slot.id, 2, "a full slot is never chosen");
        // Over many picks the lighter of two samples wins: slot 1 (in 5/9 of the sample pairs)
        // beats slot 0 (3/9), which beats slot 2 (1/9).
        drop(l);
        let mut counts = [0usize; 3];
        for _ in 0..3000 {
            counts[d.pick(&p, 100, None, Tried::default()).unwrap().slot.id] += 1;
        }
        assert!(counts[1] > counts[0] && counts[0] > counts[2], "{counts:?}");
        assert!(
            counts[2] > 0,
            "p2c still sends some load to the busiest: {counts:?}"
        );
    }

    #[test]
    fn blocked_and_not_serving_get_no_work() {
        let p = pool(2);
        let slots = p.load();
        slots[0].blocked.store(1, Relaxed);
        slots[0].inflight.store(1, Relaxed);
        slots[1].set_lifecycle(WorkerState::Restarting);
        assert!(Dispatcher::default()
            .pick(&p, 8, None, Tried::default())
            .is_none());
    }

    #[test]
    fn sticky_binds_and_rebinds() {
        let p = pool(3);
        let d = Dispatcher::default();
        let k = d.sticky.key(b"session-a");
        let first = d.pick(&p, 1, Some(k), Tried::default()).unwrap();
        let id = first.slot.id;
        drop(first);
        for _ in 0..5 {
            assert_eq!(
                d.pick(&p, 1, Some(k), Tried::default()).unwrap().slot.id,
                id
            );
        }
        // The bound slot is full: the session moves, and stays on its new slot.
        let hold = d.pick(&p, 1, Some(k), Tried::default()).unwrap();
        let moved = d.pick(&p, 1, Some(k), Tried::default()).unwrap();
        assert_ne!(moved.slot.id, id);
        let new_id = moved.slot.id;
        drop((hold, moved));
        assert_eq!(
            d.pick(&p, 1, Some(k), Tried::default()).unwrap().slot.id,
            new_id
        );
    }

    #[test]
    fn retry_prefers_untried() {
        let p = pool(2);
        let d = Dispatcher::default();
        let mut t = Tried::default();
        t.add(0);
        for _ in 0..4 {
            assert_eq!(d.pick(&p, 4, None, t).unwrap().slot.id, 1);
        }
        t.add(1);
        assert!(
            d.pick(&p, 4, None, t).is_some(),
            "all tried: any slot with room"
        );
    }

    #[test]
    fn lease_undoes_marks() {
        let p = pool(1);
        let mut l = Dispatcher::default()
            .pick(&p, 4, None, Tried::default())
            .unwrap();
        l.mark_streaming();
        l.set_blocked(true);
        l.mark_served();
        let s = l.slot.clone();
        assert_eq!(s.state(), WorkerState::BusyBlocked);
        drop(l);
        assert_eq!(s.state(), WorkerState::Idle);
        assert_eq!(s.served.load(Relaxed), 1);
        assert_eq!(s.blocked.load(Relaxed) + s.streaming.load(Relaxed), 0);
    }
}
