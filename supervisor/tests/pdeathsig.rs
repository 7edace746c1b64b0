//! Workers die with the supervisor and only with it. `PR_SET_PDEATHSIG` fires when the *thread*
//! that forked the child exits, so the pool forks from its own long-lived spawner thread: a pool
//! started from a tokio blocking-pool thread must keep its workers when that thread retires, and
//! they must die when the supervisor process is SIGKILLed.

mod common;

use common::*;
use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime};
use supervisor::pool::Pool;

fn thread_exists(tid: i32) -> bool {
    Path::new(&format!("/proc/self/task/{tid}")).exists()
}

#[test]
fn worker_survives_the_blocking_thread_that_started_the_pool() {
    // Blocking-pool threads retire after 100 ms idle (tokio's default is 10 s).
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_keep_alive(Duration::from_millis(100))
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let opts = options(&config(1, "ok"), dir.path());
    let handle = rt.handle().clone();
    let (pool, tid) = rt
        .block_on(async {
            tokio::task::spawn_blocking(move || {
                let _rt = handle.enter();
                (
                    Pool::spawn_new(opts).unwrap(),
                    nix::unistd::gettid().as_raw(),
                )
            })
            .await
        })
        .unwrap();
    assert_eq!(rt.block_on(pool.wait_ready(Duration::from_secs(15))), 1);
    let pid = pool.status()[0].pid.unwrap();
    let _guard = KillOnDrop(vec![pid]);
    assert!(
        wait_until(Duration::from_secs(5), || !thread_exists(tid)),
        "blocking thread did not retire"
    );
    let retired = SystemTime::now();
    // Still alive and still heart-beating after the thread that asked for it is gone.
    let hb = std::fs::read_dir(dir.path().join("run"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "hb"))
        .unwrap();
    assert!(
        wait_until(Duration::from_secs(3), || std::fs::metadata(&hb)
            .and_then(|m| m.modified())
            .is_ok_and(|m| m > retired + Duration::from_millis(200))),
        "worker stopped heart-beating after the blocking thread exited"
    );
    assert!(alive(pid));
    assert_eq!(pool.status()[0].pid, Some(pid));
    assert_eq!(pool.status()[0].state, "IDLE");

    // Control: the same thing done naively (fork from the blocking thread) loses the child when
    // that thread retires, which is what the test above would catch.
    let (child, tid) = rt
        .block_on(async {
            tokio::task::spawn_blocking(|| {
                let mut cmd = Command::new("sleep");
                cmd.arg("30");
                // SAFETY: prctl is async-signal-safe and allocates nothing.
                unsafe {
                    cmd.pre_exec(|| {
                        nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)
                            .map_err(std::io::Error::from)
                    });
                }
                (cmd.spawn().unwrap(), nix::unistd::gettid().as_raw())
            })
            .await
        })
        .unwrap();
    let naive = child.id();
    let _guard2 = KillOnDrop(vec![naive]);
    assert!(wait_until(Duration::from_secs(5), || !thread_exists(tid)));
    assert!(
        wait_until(Duration::from_secs(2), || !alive(naive)),
        "control child survived its thread"
    );
    assert!(alive(pid), "pool worker died with an unrelated thread");
    rt.block_on(pool.stop(Duration::from_secs(5)));
}

/// Entry point of the child "supervisor" used below; does nothing unless asked to.
#[test]
#[ignore = "helper: run by workers_die_when_the_supervisor_is_sigkilled"]
fn child_supervisor() {
    let Some(dir) = std::env::var_os("GW_PDEATH_DIR") else {
        return;
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let pool =
        rt.block_on(async { Pool::spawn_new(options(&config(2, "ok"), Path::new(&dir))).unwrap() });
    assert_eq!(rt.block_on(pool.wait_ready(Duration::from_secs(15))), 2);
    let pids: Vec<String> = pool
        .status()
        .iter()
        .filter_map(|w| w.pid)
        .map(|p| p.to_string())
        .collect();
    println!("PIDS {}", pids.join(" "));
    // Wait to be killed (bounded, in case the parent test died).
    std::thread::sleep(Duration::from_secs(60));
}

#[test]
fn workers_die_when_the_supervisor_is_sigkilled() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "child_supervisor",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("GW_PDEATH_DIR", dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let _sup_guard = KillOnDrop(vec![]);
    let sup = child.id();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let pids: Vec<u32> = loop {
        match lines.next() {
            // libtest prints "test child_supervisor ... " before it, on the same line.
            Some(Ok(l)) if l.contains("PIDS ") => {
                break l
                    .split("PIDS ")
                    .nth(1)
                    .unwrap()
                    .split_whitespace()
                    .map(|p| p.parse().unwrap())
                    .collect()
            }
            Some(Ok(_)) => continue,
            other => {
                let _ = child.kill();
                panic!("child supervisor ended without reporting pids: {other:?}");
            }
        }
    };
    let _guard = KillOnDrop(pids.clone());
    assert_eq!(pids.len(), 2);
    assert!(pids.iter().all(|&p| alive(p)));
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(sup as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let _ = child.wait();
    assert!(
        wait_until(Duration::from_secs(2), || pids.iter().all(|&p| !alive(p))),
        "workers survived the supervisor: {:?}",
        pids.iter().filter(|&&p| alive(p)).collect::<Vec<_>>()
    );
}
