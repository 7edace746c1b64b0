//! `Pool::start` is process-wide (a `OnceLock`): any number of concurrent calls get the same pool
//! and exactly `pool.workers` processes are spawned. Its own test binary, because the pool it
//! creates lives until the process exits.

mod common;

use common::*;
use std::sync::{Arc, Barrier};
use std::time::Duration;
use supervisor::pool::{Pool, PoolError};

#[test]
fn fifty_concurrent_starts_spawn_exactly_n_workers() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(3, "ok");
    // 50 OS threads released together, each entering the runtime: real concurrency, not tasks
    // taking turns on two runtime threads.
    let barrier = Arc::new(Barrier::new(50));
    let threads: Vec<_> = (0..50)
        .map(|_| {
            let (barrier, handle, opts) = (
                barrier.clone(),
                rt.handle().clone(),
                options(&cfg, dir.path()),
            );
            std::thread::spawn(move || {
                let _rt = handle.enter();
                barrier.wait();
                Pool::start(opts).expect("start")
            })
        })
        .collect();
    let pools: Vec<Arc<Pool>> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    let first = &pools[0];
    assert!(
        pools.iter().all(|p| Arc::ptr_eq(p, first)),
        "start returned different pools"
    );
    let _guard = KillOnDrop(Vec::new());
    assert_eq!(rt.block_on(first.wait_ready(Duration::from_secs(20))), 3);
    let pids: Vec<u32> = first.status().iter().filter_map(|w| w.pid).collect();
    let _guard = KillOnDrop(pids.clone());
    let mut kids = children(std::process::id());
    kids.sort();
    let mut want = pids.clone();
    want.sort();
    assert_eq!(kids, want, "processes spawned vs slots");
    // A later call with the same options also returns the same pool and spawns nothing.
    let (again, other) = {
        let _rt = rt.handle().enter();
        (
            Pool::start(options(&cfg, dir.path())).unwrap(),
            Pool::start(options(&config(5, "ok"), dir.path())),
        )
    };
    assert!(Arc::ptr_eq(&again, first));
    // One with other options is refused, naming what it would have ignored, and spawns nothing.
    match other {
        Err(PoolError::AlreadyStarted { ignored }) => assert_eq!(ignored, ["config"]),
        Err(e) => panic!("unexpected error: {e}"),
        Ok(_) => panic!("a start with other options was silently given the running pool"),
    }
    assert_eq!(children(std::process::id()).len(), 3);
    rt.block_on(first.stop(Duration::from_secs(5)));
    assert!(pids.iter().all(|&p| !alive(p)));
}
