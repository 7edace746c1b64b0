// Shared by the supervisor crate's integration tests (`mod common;`): a pool of python stand-in
// workers (tests/fixtures/test_worker.py), process inspection helpers and deadline waits.
#![allow(dead_code)]

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};
use supervisor::pool::PoolOptions;

pub const WORKER_PY: &str = include_str!("../fixtures/test_worker.py");

pub fn config(workers: u32, mode: &str) -> gateway::Config {
    let mut c = gateway::Config::default();
    let p = &mut c.pool;
    p.workers = workers;
    p.base_port = 0;
    p.worker_command = vec!["python3".into(), "-c".into(), WORKER_PY.into(), mode.into()];
    p.heartbeat_interval = Duration::from_millis(100);
    p.heartbeat_timeout = Duration::from_secs(1);
    p.shutdown_timeout = Duration::from_secs(5);
    c
}

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

/// Alive and not a zombie.
pub fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            !s.rsplit(')')
                .next()
                .unwrap_or("")
                .trim_start()
                .starts_with('Z')
        })
        .unwrap_or(false)
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

pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
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
