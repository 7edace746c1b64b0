//! Test helpers shared by the supervisor crate's integration tests (through `tests/common`) and
//! its in-crate pool tests (`src/pool/tests.rs`, which includes this file with `#[path]`): the
//! python stand-in worker, a pool config that runs it, process inspection and deadline waits.
//! It uses only std, tokio, futures-util and `gateway`, so it compiles in both places.
#![allow(dead_code)]

use futures_util::FutureExt;
use std::future::Future;
use std::time::{Duration, Instant};

/// The python stand-in worker (see its header for the modes).
pub const WORKER_PY: &str = include_str!("../fixtures/test_worker.py");

/// How often the waits below check their condition.
pub const POLL: Duration = Duration::from_millis(20);

/// `workers` python stand-ins running `mode` on free ports, 100 ms heartbeats with a 1 s timeout,
/// and a 5 s drain; every other setting is the default.
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

/// True while /proc shows `pid` and it is not a zombie.
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

/// Checks `cond` until it holds (true) or `timeout` has passed (false), awaiting `pause()`
/// between checks: a deadline, not a bare sleep.
pub async fn poll_until<F: Future<Output = ()>>(
    timeout: Duration,
    mut cond: impl FnMut() -> bool,
    mut pause: impl FnMut() -> F,
) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        pause().await;
    }
}

/// `poll_until` on the calling thread, sleeping it between checks.
pub fn wait_until(timeout: Duration, cond: impl FnMut() -> bool) -> bool {
    let pause = || {
        std::thread::sleep(POLL);
        std::future::ready(())
    };
    // Every pause is already complete, so the loop never yields: one poll runs it to the end.
    poll_until(timeout, cond, pause)
        .now_or_never()
        .expect("a blocking wait never yields")
}

/// `poll_until` in a tokio task, sleeping the task between checks.
pub async fn wait_until_async(timeout: Duration, cond: impl FnMut() -> bool) -> bool {
    poll_until(timeout, cond, || tokio::time::sleep(POLL)).await
}
