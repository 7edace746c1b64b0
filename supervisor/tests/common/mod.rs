// Shared by the supervisor crate's integration tests (`mod common;`): a pool of python stand-in
// workers (tests/fixtures/test_worker.py), process inspection helpers and deadline waits. The
// helpers the in-crate pool tests need too live in `kit.rs`.
#![allow(dead_code)]

mod kit;

#[allow(unused_imports)] // not every test binary uses every helper
pub use kit::{alive, config, wait_until, WORKER_PY};
use std::path::Path;
use std::sync::Arc;
use supervisor::pool::PoolOptions;

pub fn options(cfg: &gateway::Config, dir: &Path) -> PoolOptions {
    PoolOptions {
        config: Arc::new(cfg.clone()),
        config_path: dir.join("gateway.toml"),
        runtime_dir: dir.join("run"),
        metrics: supervisor::metrics::SupervisorMetrics::new().0,
        // Never triggered: these tests stop the pool explicitly.
        shutdown: {
            let (t, s) = supervisor::shutdown::channel();
            std::mem::forget(t);
            s
        },
    }
}

/// Live (non-zombie) child processes of `parent`.
pub fn children(parent: u32) -> Vec<u32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let rest: Vec<&str> = stat
            .rsplit(')')
            .next()
            .unwrap_or("")
            .split_whitespace()
            .collect();
        if rest.first() != Some(&"Z")
            && rest.get(1).and_then(|p| p.parse::<u32>().ok()) == Some(parent)
        {
            out.push(pid);
        }
    }
    out
}

/// SIGKILLs the process groups of `pids` on drop: no worker outlives a failed test.
pub struct KillOnDrop(pub Vec<u32>);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        for &pid in &self.0 {
            let _ = nix::sys::signal::killpg(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}
