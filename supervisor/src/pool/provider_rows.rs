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
    table: Arc<ProviderTable>,
}

impl ProviderRows {
    /// Creates `RUNTIME_DIR/providers.shm`, its space reserved (the error names the file).
    pub fn create(runtime_dir: &Path) -> std::io::Result<Self> {
        let path = runtime_dir.join("providers.shm");
        let table = Arc::new(ProviderTable::create(&path)?);
        Ok(Self {
            path,
            rows: Arc::new(RowAllocator::new(table.clone())),
            table,
        })
    }

    /// The mapped table, for readers of the pool-wide state (the dashboard's provider rows).
    pub fn table(&self) -> Arc<ProviderTable> {
        self.table.clone()
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
}
