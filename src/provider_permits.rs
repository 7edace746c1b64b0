//! Pool-wide provider concurrency: `[[providers]] max_concurrency` holds for the whole pool, not
//! per worker, and survives a worker being SIGKILLed mid-request.
//! A *permit* (`ProviderPermit`) is one held unit of a provider's `max_concurrency`; "slot" is
//! kept for the supervisor's worker slots.
//!
//! Design: a small file in the runtime directory, mapped shared by the supervisor and every
//! worker, holding a table of `AtomicU32` counters: one *column* per provider (by a hash of its
//! name, so old and new workers agree during a rolling reload even if providers were reordered)
//! and one *row* per worker process. A worker only ever changes its own row.
//!
//! - **Acquire**: increment own cell, then sum the column. If the sum is within the limit, go;
//!   otherwise undo and retry later. All operations are `SeqCst`, so of any set of concurrent
//!   acquirers the one that incremented last sees every other increment: the limit can never be
//!   exceeded (two racers may both back off and retry; that costs a retry, never correctness).
//! - **Crash**: the supervisor owns the rows: it gives each spawned process a free row and, when
//!   that process has exited (reaped, so it can no longer write), zeroes the row. Permits held by a
//!   SIGKILLed worker come back at once, with no lease timeouts to tune.
//! - **Waiting** is a jittered sleep-and-retry (2-10 ms): there is no cheap cross-process wake-up
//!   without futexes, and waiting here only happens when a provider is saturated.
//!
//! A hash collision between two provider names merges their counts, which can only make limiting
//! stricter, never looser; with 256 columns and a handful of providers it is unlikely.

use crate::provider_health::HealthRegion;
use nix::sys::mman::{mmap, munmap, MapFlags, ProtFlags};
use std::fs::OpenOptions;
use std::num::NonZeroUsize;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, Ordering::SeqCst};
use std::sync::Arc;
use std::time::Duration;

/// Worker processes that can hold rows at once (slots plus their replacements during rolls).
pub const ROWS: usize = 128;
/// Provider columns.
pub const COLS: usize = 256;
const CELLS: usize = ROWS * COLS;
const PERMIT_BYTES: usize = CELLS * std::mem::size_of::<AtomicU32>();
/// The permit counters, then the pool-wide provider health (`gateway::provider_health`).
const BYTES: usize = PERMIT_BYTES + crate::provider_health::REGION_BYTES;

/// Environment variables through which the supervisor tells a worker where its row is.
pub const ENV_TABLE: &str = "GATEWAY_PROVIDER_TABLE";
pub const ENV_ROW: &str = "GATEWAY_PROVIDER_ROW";

/// The mapped table.
pub struct ProviderTable {
    base: NonNull<AtomicU32>,
}

// SAFETY: the mapping is only accessed through `AtomicU32`, which is Sync; the pointer is valid
// for `CELLS` atomics until `Drop` unmaps it, and `ProviderTable` is never cloned.
unsafe impl Send for ProviderTable {}
// SAFETY: as above.
unsafe impl Sync for ProviderTable {}

impl ProviderTable {
    /// Creates the table file afresh and maps it. Supervisor side.
    ///
    /// The space is reserved for real (`posix_fallocate`), not just sized: a sparse file on a
    /// full filesystem maps fine and then kills whoever first touches a page with SIGBUS.
    pub fn create(path: &Path) -> std::io::Result<Self> {
        let f = crate::runtime_file::create_fresh(path)?;
        nix::fcntl::posix_fallocate(f.as_raw_fd(), 0, BYTES as nix::libc::off_t).map_err(|e| {
            std::io::Error::new(
                std::io::Error::from(e).kind(),
                format!("cannot reserve {BYTES} bytes for {}: {e}", path.display()),
            )
        })?;
        Self::map(&f)
    }

    /// Maps an existing table. Worker side.
    pub fn open(path: &Path) -> std::io::Result<Self> {
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(nix::libc::O_NOFOLLOW)
            .open(path)?;
        if f.metadata()?.len() != BYTES as u64 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "provider table has the wrong size",
            ));
        }
        Self::map(&f)
    }

    fn map(f: &std::fs::File) -> std::io::Result<Self> {
        let len = NonZeroUsize::new(BYTES).expect("non-zero");
        // SAFETY: a fresh shared mapping of a file we just sized to BYTES; no other Rust object
        // aliases it. Zero bytes are valid AtomicU32 values, and mmap returns page-aligned memory.
        let ptr = unsafe {
            mmap(
                None,
                len,
                ProtFlags::PROT_READ | ProtFlags::PROT_WRITE,
                MapFlags::MAP_SHARED,
                f,
                0,
            )?
        };
        Ok(Self { base: ptr.cast() })
    }

    fn cell(&self, col: usize, row: usize) -> &AtomicU32 {
        assert!(col < COLS && row < ROWS);
        // SAFETY: in bounds (asserted), and the mapping lives as long as `self`.
        unsafe { &*self.base.as_ptr().add(col * ROWS + row) }
    }

    /// The pool-wide health region, after the permit cells.
    pub fn health(&self) -> &HealthRegion {
        // SAFETY: the region starts at PERMIT_BYTES (a multiple of 8) inside the mapping, is
        // only accessed through atomics (all-zero bytes are valid), and lives as long as `self`.
        unsafe { &*self.base.as_ptr().add(CELLS).cast::<HealthRegion>() }
    }

    /// The column of a provider name (FNV-1a).
    pub fn column(name: &str) -> usize {
        let mut h: u32 = 0x811c9dc5;
        for b in name.bytes() {
            h = (h ^ u32::from(b)).wrapping_mul(0x01000193);
        }
        h as usize % COLS
    }

    /// Requests of this provider in flight across the pool.
    pub fn total(&self, col: usize) -> u32 {
        (0..ROWS).map(|r| self.cell(col, r).load(SeqCst)).sum()
    }

    /// Takes one permit if the pool-wide total stays within `limit`.
    pub fn try_acquire(&self, col: usize, row: usize, limit: u32) -> bool {
        let mine = self.cell(col, row);
        mine.fetch_add(1, SeqCst);
        if self.total(col) <= limit {
            return true;
        }
        mine.fetch_sub(1, SeqCst);
        false
    }

    pub fn release(&self, col: usize, row: usize) {
        let _ = self
            .cell(col, row)
            .fetch_update(SeqCst, SeqCst, |n| n.checked_sub(1));
    }

    /// Zeroes a row and frees the health slots it held (half-open trials, the probe lease);
    /// the supervisor calls this once the row's process has been reaped.
    pub fn clear_row(&self, row: usize) {
        for c in 0..COLS {
            self.cell(c, row).store(0, SeqCst);
        }
        self.health().clear_row(row);
    }
}

impl Drop for ProviderTable {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly what `map` mapped; no references outlive `self`.
        let _ = unsafe { munmap(self.base.cast(), BYTES) };
    }
}

/// A held permit; released on drop (including when the request future is dropped).
pub struct ProviderPermit {
    table: Arc<ProviderTable>,
    col: usize,
    row: usize,
    /// With `[shared]`: the lease that holds the same unit for every host (released with it).
    lease: Option<crate::shared::lease::Lease>,
}

impl ProviderPermit {
    /// This permit, also holding `lease` (the hosts-wide check after the local one).
    pub fn with_lease(mut self, lease: crate::shared::lease::Lease) -> Self {
        self.lease = Some(lease);
        self
    }
}

impl Drop for ProviderPermit {
    fn drop(&mut self) {
        self.table.release(self.col, self.row);
    }
}

/// A worker's handle on its row.
#[derive(Clone)]
pub struct ProviderLimiter {
    table: Arc<ProviderTable>,
    row: usize,
}

impl ProviderLimiter {
    pub fn new(table: Arc<ProviderTable>, row: usize) -> Self {
        assert!(row < ROWS);
        Self { table, row }
    }

    /// From `GATEWAY_PROVIDER_TABLE` / `GATEWAY_PROVIDER_ROW`, when the supervisor set them.
    pub fn from_env() -> Option<std::io::Result<Self>> {
        let path = std::env::var_os(ENV_TABLE)?;
        let row: usize = std::env::var(ENV_ROW)
            .ok()?
            .parse()
            .ok()
            .filter(|r| *r < ROWS)?;
        Some(ProviderTable::open(Path::new(&path)).map(|t| Self::new(Arc::new(t), row)))
    }

    /// A process-local table (a standalone worker with no supervisor): limits per process.
    pub fn local() -> std::io::Result<Self> {
        let f = tempfile::tempfile()?;
        f.set_len(BYTES as u64)?;
        Ok(Self::new(Arc::new(ProviderTable::map(&f)?), 0))
    }

    pub fn try_acquire(&self, provider: &str, limit: u32) -> Option<ProviderPermit> {
        let col = ProviderTable::column(provider);
        self.table
            .try_acquire(col, self.row, limit)
            .then(|| ProviderPermit {
                table: self.table.clone(),
                col,
                row: self.row,
                lease: None,
            })
    }

    /// Counts one request of a provider without a limit: it never waits, and only shows in the
    /// pool-wide in-flight total (the dashboard's) until dropped.
    pub fn count(&self, provider: &str) -> ProviderPermit {
        let col = ProviderTable::column(provider);
        self.table.cell(col, self.row).fetch_add(1, SeqCst);
        ProviderPermit {
            table: self.table.clone(),
            col,
            row: self.row,
            lease: None,
        }
    }

    /// Waits for a permit until `deadline`; `None` when it passed.
    pub async fn acquire(
        &self,
        provider: &str,
        limit: u32,
        deadline: tokio::time::Instant,
    ) -> Option<ProviderPermit> {
        loop {
            if let Some(g) = self.try_acquire(provider, limit) {
                return Some(g);
            }
            let now = tokio::time::Instant::now();
            if now >= deadline {
                return None;
            }
            let nap = Duration::from_millis(fastrand::u64(2..=10));
            tokio::time::sleep_until((now + nap).min(deadline)).await;
        }
    }

    pub fn total(&self, provider: &str) -> u32 {
        self.table.total(ProviderTable::column(provider))
    }

    /// This process's row (owner of its half-open trial slots and of the probe lease).
    pub fn row(&self) -> usize {
        self.row
    }

    /// The pool-wide health region.
    pub fn health(&self) -> &HealthRegion {
        self.table.health()
    }

    /// A provider's pool-wide health cell.
    pub fn health_cell(&self, provider: &str) -> &crate::provider_health::HealthCell {
        &self.table.health().cols[ProviderTable::column(provider)]
    }
}

/// Supervisor side: hands out rows to processes and reclaims them when the process is reaped.
pub struct RowAllocator {
    table: Arc<ProviderTable>,
    used: std::sync::Mutex<[bool; ROWS]>,
}

impl RowAllocator {
    pub fn new(table: Arc<ProviderTable>) -> Self {
        Self {
            table,
            used: std::sync::Mutex::new([false; ROWS]),
        }
    }

    /// The table the rows belong to.
    pub fn table(&self) -> &Arc<ProviderTable> {
        &self.table
    }

    /// A free, zeroed row.
    pub fn alloc(&self) -> Option<usize> {
        // Short critical section, never held across an await: a bitmap scan of 128 entries.
        let mut used = self.used.lock().unwrap_or_else(|e| e.into_inner());
        let row = used.iter().position(|u| !u)?;
        used[row] = true;
        self.table.clear_row(row);
        Some(row)
    }

    /// Marks `row` as taken without clearing it: the row of a process adopted across an
    /// in-place upgrade, whose held permits are still in it. False when out of range or taken.
    pub fn claim(&self, row: usize) -> bool {
        let mut used = self.used.lock().unwrap_or_else(|e| e.into_inner());
        match used.get_mut(row) {
            Some(u) if !*u => {
                *u = true;
                true
            }
            _ => false,
        }
    }

    /// Zeroes every row not taken: after an in-place upgrade, the rows of processes that
    /// did not survive it (taken rows are those `claim`ed for adopted ones).
    pub fn clear_unused(&self) {
        let used = self.used.lock().unwrap_or_else(|e| e.into_inner());
        for (row, u) in used.iter().enumerate() {
            if !u {
                self.table.clear_row(row);
            }
        }
    }

    /// Returns `row` after its process exited: its held permits are given back.
    pub fn free(&self, row: usize) {
        self.table.clear_row(row);
        let mut used = self.used.lock().unwrap_or_else(|e| e.into_inner());
        used[row] = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limit_holds_across_rows_and_crash_recovery_frees() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("providers.shm");
        let sup = Arc::new(ProviderTable::create(&path).unwrap());
        let rows = RowAllocator::new(sup.clone());
        let (r0, r1) = (rows.alloc().unwrap(), rows.alloc().unwrap());
        let w0 = ProviderLimiter::new(Arc::new(ProviderTable::open(&path).unwrap()), r0);
        let w1 = ProviderLimiter::new(Arc::new(ProviderTable::open(&path).unwrap()), r1);
        let mut held = Vec::new();
        for i in 0..4 {
            let w = if i % 2 == 0 { &w0 } else { &w1 };
            held.push(w.try_acquire("p", 4).expect("within limit"));
        }
        assert!(w0.try_acquire("p", 4).is_none() && w1.try_acquire("p", 4).is_none());
        assert!(
            w0.try_acquire("other", 1).is_some(),
            "providers are independent"
        );
        assert_eq!(w1.total("p"), 4);
        held.pop();
        assert!(w1.try_acquire("p", 4).is_some());
        // w0 "dies" holding 2 permits: the supervisor reclaims its row.
        // Forgetting the guards is what a SIGKILL does: no destructor runs.
        std::mem::forget(std::mem::take(&mut held));
        rows.free(r0);
        // w1 still holds one permit (i = 1, forgotten above as well); w0's two are back.
        assert_eq!(w1.total("p"), 1);
    }

    #[test]
    fn concurrent_acquirers_never_exceed_the_limit() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.shm");
        let sup = Arc::new(ProviderTable::create(&path).unwrap());
        let rows = RowAllocator::new(sup.clone());
        let max_seen = Arc::new(AtomicU32::new(0));
        let inflight = Arc::new(AtomicU32::new(0));
        let refused = Arc::new(AtomicU32::new(0));
        let threads: Vec<_> = (0..6)
            .map(|_| {
                let l = ProviderLimiter::new(
                    Arc::new(ProviderTable::open(&path).unwrap()),
                    rows.alloc().unwrap(),
                );
                let (max_seen, inflight, refused) =
                    (max_seen.clone(), inflight.clone(), refused.clone());
                std::thread::spawn(move || {
                    let mut got = 0;
                    while got < 100 {
                        if let Some(g) = l.try_acquire("p", 3) {
                            let now = inflight.fetch_add(1, SeqCst) + 1;
                            max_seen.fetch_max(now, SeqCst);
                            std::thread::sleep(Duration::from_micros(20));
                            inflight.fetch_sub(1, SeqCst);
                            drop(g);
                            got += 1;
                        } else {
                            // Back off as `acquire` does (shorter, to keep the test quick);
                            // spinning without a pause makes all racers retreat together.
                            refused.fetch_add(1, SeqCst);
                            std::thread::sleep(Duration::from_micros(fastrand::u64(50..300)));
                        }
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert!(max_seen.load(SeqCst) <= 3, "saw {}", max_seen.load(SeqCst));
        assert!(
            refused.load(SeqCst) > 0,
            "the limit was never contended, so the test proved nothing"
        );
        assert_eq!(sup.total(ProviderTable::column("p")), 0);
    }
}
