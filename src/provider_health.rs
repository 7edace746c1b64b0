//! Pool-wide provider health: the region of the provider table (`gateway::provider_permits`,
//! `providers.shm`) after the permit counters. One [`HealthCell`] per provider column holds that
//! provider's breaker state, cool-down deadline and latest probe result for the whole pool, plus
//! one lease word that elects the worker that probes.
//!
//! Everything is atomics, no lock: the request path reads a state word; transitions are
//! compare-exchange on that word, which also carries a generation, so of several workers racing
//! on an edge exactly one makes it (and counts it). Times are milliseconds of `CLOCK_MONOTONIC`,
//! the same in every process of the host ([`MonoClock`]).
//!
//! - **Half-open trials** are `TRIAL_SLOTS` owner words, each `(generation << 32) | (row + 1)`:
//!   a slot of an older generation is free, so a transition frees every slot without touching
//!   them. The supervisor clears a reaped worker's slots with its permit row
//!   ([`HealthCell::clear_row`]), so a worker SIGKILLed during a trial never leaves the breaker stuck.
//! - **The probe lease** is `((row + 1) << 48) | expiry_ms`; the holder renews it every probe
//!   interval, another worker takes it only once it expired or its holder was reaped.
//! - **Probe results** are small seqlocked records (one writer at a time, by compare-exchange on
//!   the sequence word; readers retry a few times and otherwise treat the record as absent).
//!
//! Columns are a hash of the provider name, so a collision merges two providers' health; with
//! 256 columns and a handful of providers that is unlikely, and it errs towards caution.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::SeqCst};
use std::time::Duration;

/// Half-open trial slots per provider; `half_open_successes` above this is capped.
pub const TRIAL_SLOTS: usize = 8;
/// Bytes of probe error text kept in the shared record.
pub const ERROR_BYTES: usize = 120;
const ERROR_WORDS: usize = ERROR_BYTES / 8;

/// Breaker state values in the state word (also the `gateway_circuit_state` gauge values).
pub const CLOSED: u8 = 0;
pub const OPEN: u8 = 1;
pub const HALF_OPEN: u8 = 2;

/// One provider's pool-wide health. Zero bytes are a closed breaker with no history.
#[repr(C)]
pub struct HealthCell {
    /// `(generation << 8) | state`.
    state: AtomicU64,
    /// When the breaker last opened (monotonic ms).
    pub opened_at_ms: AtomicU64,
    /// End of a 429/Retry-After cool-down (monotonic ms); 0 = none.
    pub cooldown_until_ms: AtomicU64,
    /// Decaying failure rate, f64 bits.
    pub rate: AtomicU64,
    pub consecutive: AtomicU32,
    _pad: AtomicU32,
    /// `(generation << 32) | successes` of the current half-open period.
    trial_successes: AtomicU64,
    trials: [AtomicU64; TRIAL_SLOTS],
    probe: ProbeRecord,
}

/// The whole health region.
#[repr(C)]
pub struct HealthRegion {
    lease: AtomicU64,
    pub cols: [HealthCell; crate::provider_permits::COLS],
}

pub const REGION_BYTES: usize = std::mem::size_of::<HealthRegion>();

/// A state word, decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StateWord {
    pub state: u8,
    pub generation: u64,
}

impl StateWord {
    fn pack(self) -> u64 {
        (self.generation << 8) | u64::from(self.state)
    }
    fn unpack(w: u64) -> Self {
        Self {
            state: (w & 0xff) as u8,
            generation: w >> 8,
        }
    }
}

impl HealthCell {
    pub fn load(&self) -> StateWord {
        StateWord::unpack(self.state.load(SeqCst))
    }

    /// The one place a breaker changes state (locally decided or, later, applied from another
    /// host): `from` -> `to` if the word is still `from`. On success returns the new word; the
    /// caller that gets `Some` owns the transition (metric, log, timer).
    pub fn transition(&self, from: StateWord, to: u8, now_ms: u64) -> Option<StateWord> {
        let next = StateWord {
            state: to,
            generation: from.generation + 1,
        };
        self.state
            .compare_exchange(from.pack(), next.pack(), SeqCst, SeqCst)
            .ok()?;
        if to == OPEN {
            self.opened_at_ms.store(now_ms, SeqCst);
        }
        if to == CLOSED {
            self.consecutive.store(0, SeqCst);
            self.rate.store(0f64.to_bits(), SeqCst);
        }
        Some(next)
    }

    /// Takes a half-open trial slot of generation `g` for `row`, if fewer than `max` are held.
    pub fn try_trial(&self, g: u64, row: usize, max: u32) -> bool {
        let mine = (g << 32) | (row as u64 + 1);
        let max = (max.max(1) as usize).min(TRIAL_SLOTS);
        for slot in &self.trials[..max] {
            let v = slot.load(SeqCst);
            let free = v == 0 || (v >> 32) != (g & 0xffff_ffff);
            if free && slot.compare_exchange(v, mine, SeqCst, SeqCst).is_ok() {
                return true;
            }
        }
        false
    }

    /// Gives back one trial slot of generation `g` held by `row` (none held: nothing happens).
    pub fn release_trial(&self, g: u64, row: usize) {
        let mine = (g << 32) | (row as u64 + 1);
        for slot in &self.trials {
            if slot.compare_exchange(mine, 0, SeqCst, SeqCst).is_ok() {
                return;
            }
        }
    }

    /// Counts one trial success in half-open generation `g`; returns the count so far.
    pub fn trial_success(&self, g: u64) -> u32 {
        let g = g & 0xffff_ffff;
        let old = self
            .trial_successes
            .fetch_update(SeqCst, SeqCst, |w| {
                Some(if w >> 32 == g { w + 1 } else { (g << 32) | 1 })
            })
            .unwrap_or(0);
        if old >> 32 == g {
            (old & 0xffff_ffff) as u32 + 1
        } else {
            1
        }
    }

    /// Trial slots held now in generation `g` (for tests and diagnostics).
    pub fn trials_held(&self, g: u64) -> usize {
        self.trials
            .iter()
            .filter(|s| {
                let v = s.load(SeqCst);
                v != 0 && v >> 32 == (g & 0xffff_ffff)
            })
            .count()
    }

    /// Frees whatever `row` held here; the supervisor calls this once that process is reaped.
    fn clear_row(&self, row: usize) {
        for slot in &self.trials {
            let v = slot.load(SeqCst);
            if v & 0xffff_ffff == row as u64 + 1 {
                let _ = slot.compare_exchange(v, 0, SeqCst, SeqCst);
            }
        }
        self.probe.clear_row(row);
    }

    pub fn probe(&self) -> &ProbeRecord {
        &self.probe
    }

    /// What is left of the open period (`open_timeout_ms` from when it opened) of word `w`;
    /// zero when `w` is not open or the period is over (the next request makes it half-open).
    pub fn open_left_ms(&self, w: StateWord, open_timeout_ms: u64, now_ms: u64) -> u64 {
        if w.state != OPEN {
            return 0;
        }
        let opened = self.opened_at_ms.load(SeqCst);
        (opened + open_timeout_ms).saturating_sub(now_ms)
    }

    /// What is left of a 429/Retry-After cool-down; zero when none runs.
    pub fn cooldown_left_ms(&self, now_ms: u64) -> u64 {
        self.cooldown_until_ms.load(SeqCst).saturating_sub(now_ms)
    }
}

impl HealthRegion {
    /// Takes or renews the probe lease for `row` until `now + ttl`; false while another live
    /// worker holds it.
    pub fn try_lease(&self, row: usize, now_ms: u64, ttl: Duration) -> bool {
        let mine = row as u64 + 1;
        let next = (mine << 48) | ((now_ms + ttl.as_millis() as u64) & LEASE_MS);
        let cur = self.lease.load(SeqCst);
        let (owner, until) = (cur >> 48, cur & LEASE_MS);
        if owner != 0 && owner != mine && until > now_ms {
            return false;
        }
        self.lease
            .compare_exchange(cur, next, SeqCst, SeqCst)
            .is_ok()
    }

    /// The row holding the probe lease now, if any.
    pub fn lease_holder(&self, now_ms: u64) -> Option<usize> {
        let cur = self.lease.load(SeqCst);
        let (owner, until) = (cur >> 48, cur & LEASE_MS);
        (owner != 0 && until > now_ms).then(|| owner as usize - 1)
    }

    /// Frees everything `row` held: trial slots, the probe lease, a half-written probe record.
    pub fn clear_row(&self, row: usize) {
        let cur = self.lease.load(SeqCst);
        if cur >> 48 == row as u64 + 1 {
            let _ = self.lease.compare_exchange(cur, 0, SeqCst, SeqCst);
        }
        for c in &self.cols {
            c.clear_row(row);
        }
    }
}

const LEASE_MS: u64 = (1 << 48) - 1;

/// A provider's latest probe result, as the pool sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct SharedProbe {
    /// When the round that produced it finished (monotonic ms).
    pub at_ms: u64,
    /// The same instant as Unix ms, for `/v1/health`'s `timestamp`.
    pub unix_ms: u64,
    pub healthy: bool,
    pub latency_us: u64,
    pub error: Option<String>,
    /// The round's duration, timeout and mode.
    pub took_us: u64,
    pub timeout_ms: u64,
    pub concurrent: bool,
}

/// Seqlocked probe record: `seq` even = stable, odd = being written by row `writer - 1`.
#[repr(C)]
pub struct ProbeRecord {
    seq: AtomicU64,
    writer: AtomicU64,
    at_ms: AtomicU64,
    unix_ms: AtomicU64,
    /// bit 0 healthy, bit 1 concurrent, bit 2 has error, bits 8.. error length.
    flags: AtomicU64,
    latency_us: AtomicU64,
    took_us: AtomicU64,
    timeout_ms: AtomicU64,
    error: [AtomicU64; ERROR_WORDS],
}

impl ProbeRecord {
    /// Publishes `p` as `row`; skipped (false) when another writer is mid-write.
    pub fn write(&self, row: usize, p: &SharedProbe) -> bool {
        let s = self.seq.load(SeqCst);
        if s % 2 == 1 || self.seq.compare_exchange(s, s + 1, SeqCst, SeqCst).is_err() {
            return false;
        }
        self.writer.store(row as u64 + 1, SeqCst);
        let err = p.error.as_deref().unwrap_or("");
        let mut n = err.len().min(ERROR_BYTES);
        while !err.is_char_boundary(n) {
            n -= 1;
        }
        let mut buf = [0u8; ERROR_BYTES];
        buf[..n].copy_from_slice(&err.as_bytes()[..n]);
        for (w, chunk) in self.error.iter().zip(buf.chunks(8)) {
            w.store(
                u64::from_le_bytes(chunk.try_into().expect("8 bytes")),
                SeqCst,
            );
        }
        let flags = u64::from(p.healthy)
            | (u64::from(p.concurrent) << 1)
            | (u64::from(p.error.is_some()) << 2)
            | ((n as u64) << 8);
        self.flags.store(flags, SeqCst);
        self.at_ms.store(p.at_ms, SeqCst);
        self.unix_ms.store(p.unix_ms, SeqCst);
        self.latency_us.store(p.latency_us, SeqCst);
        self.took_us.store(p.took_us, SeqCst);
        self.timeout_ms.store(p.timeout_ms, SeqCst);
        self.writer.store(0, SeqCst);
        self.seq.store(s + 2, SeqCst);
        true
    }

    /// The record, or `None` when nothing was ever written (or a write is in progress).
    pub fn read(&self) -> Option<SharedProbe> {
        for _ in 0..64 {
            let s = self.seq.load(SeqCst);
            if s == 0 {
                return None;
            }
            if s % 2 == 1 {
                std::hint::spin_loop();
                continue;
            }
            let flags = self.flags.load(SeqCst);
            let mut buf = [0u8; ERROR_BYTES];
            for (w, chunk) in self.error.iter().zip(buf.chunks_mut(8)) {
                chunk.copy_from_slice(&w.load(SeqCst).to_le_bytes());
            }
            let p = SharedProbe {
                at_ms: self.at_ms.load(SeqCst),
                unix_ms: self.unix_ms.load(SeqCst),
                healthy: flags & 1 == 1,
                concurrent: flags & 2 == 2,
                latency_us: self.latency_us.load(SeqCst),
                took_us: self.took_us.load(SeqCst),
                timeout_ms: self.timeout_ms.load(SeqCst),
                error: (flags & 4 == 4).then(|| {
                    let n = ((flags >> 8) as usize).min(ERROR_BYTES);
                    String::from_utf8_lossy(&buf[..n]).into_owned()
                }),
            };
            if self.seq.load(SeqCst) == s {
                return Some(p);
            }
        }
        None
    }

    /// A writer SIGKILLed mid-write left the record odd: make it writable again (its content
    /// is rewritten by the next round, and it reads as absent until then).
    fn clear_row(&self, row: usize) {
        let s = self.seq.load(SeqCst);
        if s % 2 == 1 && self.writer.load(SeqCst) == row as u64 + 1 {
            self.writer.store(0, SeqCst);
            // Even but with no valid content would be wrong: step to odd+1 only after zeroing
            // `at_ms`, so the record reads as an old result that `cache_ttl` discards.
            self.at_ms.store(0, SeqCst);
            let _ = self.seq.compare_exchange(s, s + 1, SeqCst, SeqCst);
        }
    }
}

/// `CLOCK_MONOTONIC` milliseconds, shared by every process of the host, read through a tokio
/// `Instant` taken at construction so that tests with a paused tokio clock drive it too.
#[derive(Debug, Clone, Copy)]
pub struct MonoClock {
    epoch: tokio::time::Instant,
    epoch_ms: u64,
}

impl MonoClock {
    pub fn new() -> Self {
        let mut ts = nix::libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: a valid out-pointer; CLOCK_MONOTONIC always exists on Linux.
        unsafe { nix::libc::clock_gettime(nix::libc::CLOCK_MONOTONIC, &mut ts) };
        Self {
            epoch: tokio::time::Instant::now(),
            epoch_ms: ts.tv_sec as u64 * 1000 + ts.tv_nsec as u64 / 1_000_000,
        }
    }

    pub fn now_ms(&self) -> u64 {
        self.epoch_ms + self.epoch.elapsed().as_millis() as u64
    }
}

impl Default for MonoClock {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn region() -> Box<HealthRegion> {
        // SAFETY: zero bytes are valid for every atomic in the region.
        unsafe { Box::new(std::mem::zeroed()) }
    }

    #[test]
    fn one_transition_per_edge_and_generation() {
        let r = region();
        let c = &r.cols[3];
        let w = c.load();
        assert_eq!(w.state, CLOSED);
        let opened = c.transition(w, OPEN, 10).expect("first wins");
        assert!(c.transition(w, OPEN, 11).is_none(), "a stale word loses");
        assert_eq!(c.opened_at_ms.load(SeqCst), 10);
        assert_eq!(c.load(), opened);
    }

    #[test]
    fn trial_slots_are_bounded_per_generation_and_freed_with_the_row() {
        let r = region();
        let c = &r.cols[0];
        assert!(c.try_trial(5, 1, 2) && c.try_trial(5, 2, 2));
        assert!(!c.try_trial(5, 3, 2), "two at most");
        assert!(c.try_trial(6, 3, 2), "a new generation frees the old slots");
        r.clear_row(2);
        assert_eq!(c.trials_held(5), 0, "row 2's slot freed with its row");
        assert_eq!(c.trials_held(6), 1);
        c.release_trial(5, 3);
        assert_eq!(
            c.trials_held(6),
            1,
            "a release of another generation frees nothing"
        );
        c.release_trial(6, 3);
        assert_eq!(c.trials_held(6), 0);
        assert_eq!(c.trial_success(6), 1);
        assert_eq!(c.trial_success(6), 2);
        assert_eq!(c.trial_success(7), 1, "counts restart with the generation");
    }

    #[test]
    fn lease_is_exclusive_until_expiry_or_reaping() {
        let r = region();
        let ttl = Duration::from_millis(100);
        assert!(r.try_lease(1, 1000, ttl));
        assert!(!r.try_lease(2, 1050, ttl));
        assert!(r.try_lease(1, 1050, ttl), "the holder renews");
        assert!(r.try_lease(2, 1151, ttl), "expired");
        assert_eq!(r.lease_holder(1160), Some(2));
        r.clear_row(2);
        assert_eq!(r.lease_holder(1160), None);
    }

    #[test]
    fn probe_record_round_trips_and_truncates_on_a_char_boundary() {
        let r = region();
        let rec = r.cols[1].probe();
        assert!(rec.read().is_none());
        let long = "é".repeat(100);
        let p = SharedProbe {
            at_ms: 5,
            unix_ms: 6,
            healthy: false,
            latency_us: 7,
            error: Some(long),
            took_us: 8,
            timeout_ms: 9,
            concurrent: true,
        };
        assert!(rec.write(0, &p));
        let got = rec.read().unwrap();
        assert_eq!(got.error.as_deref().unwrap().len(), ERROR_BYTES);
        assert_eq!((got.at_ms, got.healthy, got.concurrent), (5, false, true));
    }
}
