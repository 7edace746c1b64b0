//! The supervisor's half of the pool-wide provider limits (`gateway::provider_permits`): it creates
//! the shared table in the runtime directory, gives every worker process a row of its own, and
//! zeroes that row once the process is dead, so slots held by a worker killed mid-request come
//! back at once.

use gateway::provider_permits::{ProviderTable, RowAllocator, ENV_ROW, ENV_TABLE};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// The table and its row allocator.
pub struct ProviderRows {
    path: PathBuf,
    rows: Arc<RowAllocator>,
}

impl ProviderRows {
    /// Creates `RUNTIME_DIR/providers.shm`, its space reserved (the error names the file).
    pub fn create(runtime_dir: &Path) -> std::io::Result<Self> {
        let path = runtime_dir.join("providers.shm");
        let table = Arc::new(ProviderTable::create(&path)?);
        Ok(Self {
            path,
            rows: Arc::new(RowAllocator::new(table)),
        })
    }

    /// The table itself (the supervisor's breaker sync with other hosts reads and writes its
    /// health region).
    pub fn table(&self) -> Arc<ProviderTable> {
        self.rows.table().clone()
    }

    /// Maps the table an upgrading image left in `runtime_dir` (its adopted workers have it
    /// mapped and hold permits in it), rather than a new one beside it.
    pub fn reopen(runtime_dir: &Path) -> std::io::Result<Self> {
        let path = runtime_dir.join("providers.shm");
        let table = Arc::new(ProviderTable::open(&path)?);
        Ok(Self {
            path,
            rows: Arc::new(RowAllocator::new(table)),
        })
    }

    /// The lease of an adopted process's `row`, which keeps what it holds; None when that row
    /// is out of range or already leased.
    pub fn claim(&self, row: usize) -> Option<RowLease> {
        self.rows.claim(row).then(|| RowLease {
            rows: self.rows.clone(),
            row,
            table: self.path.clone(),
        })
    }

    /// Once every adopted row was claimed: zeroes the others (processes that did not survive
    /// the upgrade may have left permits in them).
    pub fn clear_unclaimed(&self) {
        self.rows.clear_unused();
    }

    /// A row for a new process, or `None` when all rows are taken (then the worker limits
    /// per process, and says so in its log).
    pub fn lease(&self) -> Option<RowLease> {
        let row = self.rows.alloc()?;
        Some(RowLease {
            rows: self.rows.clone(),
            row,
            table: self.path.clone(),
        })
    }
}

/// One process's row; zeroed and freed on drop. Drop it only once the process can no longer
/// write to the table (reaped, or `free_when_dead`).
pub struct RowLease {
    rows: Arc<RowAllocator>,
    row: usize,
    table: PathBuf,
}

impl RowLease {
    /// The environment that tells the worker where its row is.
    pub fn env(&self) -> [(&'static str, String); 2] {
        [
            (ENV_TABLE, self.table.display().to_string()),
            (ENV_ROW, self.row.to_string()),
        ]
    }

    /// The row, for the next image after an in-place upgrade: not freed here, the process
    /// goes on using it.
    pub fn hand_over(self) -> usize {
        let row = self.row;
        std::mem::forget(self);
        row
    }

    /// For a process that was SIGKILLed but not reaped: a SIGKILLed process may still run user
    /// code for a moment on another CPU, so wait (bounded) until /proc shows it dead or a zombie
    /// before giving the row back. The task owns the lease and ends by itself.
    pub fn free_when_dead(self, pid: u32) {
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        rt.spawn(async move {
            for _ in 0..500 {
                if !alive(pid) {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            drop(self);
        });
    }
}

impl Drop for RowLease {
    fn drop(&mut self) {
        self.rows.free(self.row);
    }
}

/// True while `pid` exists and is not a zombie.
fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rfind(')')
            .and_then(|i| stat.get(i + 2..i + 3))
            .is_some_and(|s| s != "Z"),
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leases_are_distinct_and_freed_rows_are_zeroed() {
        let dir = tempfile::tempdir().unwrap();
        let rows = ProviderRows::create(dir.path()).unwrap();
        let a = rows.lease().unwrap();
        let b = rows.lease().unwrap();
        assert_ne!(a.row, b.row);
        let table = ProviderTable::open(&dir.path().join("providers.shm")).unwrap();
        let col = ProviderTable::column("p");
        assert!(table.try_acquire(col, a.row, 1));
        assert!(
            !table.try_acquire(col, b.row, 1),
            "pool-wide limit of 1 is held by a"
        );
        let freed = a.row;
        drop(a);
        assert_eq!(
            table.total(col),
            0,
            "a's slot came back when its lease was dropped"
        );
        assert_eq!(rows.lease().unwrap().row, freed, "the row is reused");
        assert_eq!(b.env()[1].1, b.row.to_string());
    }

    #[test]
    fn a_reopened_table_keeps_the_claimed_rows_permits_and_zeroes_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let rows = ProviderRows::create(dir.path()).unwrap();
        let (a, b) = (rows.lease().unwrap(), rows.lease().unwrap());
        let table = ProviderTable::open(&dir.path().join("providers.shm")).unwrap();
        let col = ProviderTable::column("p");
        assert!(table.try_acquire(col, a.row, 5));
        assert!(table.try_acquire(col, b.row, 5));
        // The next image: a's process was adopted, b's did not survive.
        let (a_row, b_row) = (a.hand_over(), b.hand_over());
        let next = ProviderRows::reopen(dir.path()).unwrap();
        let kept = next.claim(a_row).expect("a free row");
        assert!(next.claim(a_row).is_none(), "claimed once");
        next.clear_unclaimed();
        assert_eq!(table.total(col), 1, "a's permit is kept, b's is gone");
        assert_ne!(next.lease().unwrap().row, a_row);
        let _ = b_row;
        drop(kept);
        assert_eq!(table.total(col), 0);
    }
}
