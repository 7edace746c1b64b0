//! The supervisor's binary replaced or deleted on disk while it runs (a package upgrade `mv`s a
//! new file over it, an uninstall `rm`s it): workers are still respawned from the image the
//! supervisor runs, and a reload still replaces every worker.

mod support;

use nix::sys::signal::Signal;
use std::path::{Path, PathBuf};
use std::time::Duration;
use support::http::{chat_body, post_json};
use support::process::{bin_path, signal, wait_until, PoolConfig, TestEnv};

fn config(max_requests: u64) -> String {
    PoolConfig::new(2)
        .pool(&format!("max_requests = {max_requests}"))
        .build()
}

fn all_idle(st: &serde_json::Value) -> bool {
    st["workers"]
        .as_array()
        .unwrap()
        .iter()
        .all(|w| w["state"] == "IDLE")
}

fn exe_of(pid: u64) -> PathBuf {
    std::fs::read_link(format!("/proc/{pid}/exe")).expect("read /proc/PID/exe")
}

/// Starts a supervisor from a private copy of the binary, lets `attack` do its worst to that
/// file, then checks a SIGKILLed worker comes back and a changed config rolls every worker.
fn respawns_survive(attack: impl FnOnce(&Path)) {
    let env = TestEnv::new(&config(0));
    let bin_dir = tempfile::tempdir().unwrap();
    let copy = bin_dir.path().join("supervisor");
    // Copied by `cp`, not in-process: a write fd of ours would leak into children another test
    // forks meanwhile, and exec of the copy would then fail with ETXTBSY.
    let st = std::process::Command::new("cp")
        .arg(bin_path("supervisor"))
        .arg(&copy)
        .status()
        .unwrap();
    assert!(st.success());
    let run = env.start_from(&copy, &[]);
    let sup = run.guard.pid() as u64;
    let image = exe_of(sup);

    attack(&copy);

    let before = env.worker_pids();
    signal(before[0] as u32, Signal::SIGKILL);
    assert!(
        wait_until(Duration::from_secs(20), || {
            let st = env.status_json();
            let w = &st["workers"][0];
            w["state"] == "IDLE" && w["pid"].as_u64().is_some_and(|p| p != before[0])
        }),
        "worker 0 not respawned after the binary was replaced: {}\n{}",
        env.status_json(),
        run.guard.stderr()
    );
    let new = env.status_json()["workers"][0]["pid"].as_u64().unwrap();
    // Same image as the supervisor (deleted from disk, so the link says so), and the worker
    // does not keep the supervisor's handle on it.
    assert_eq!(exe_of(new), exe_of(sup));
    assert!(exe_of(sup).to_string_lossy().ends_with("(deleted)"));
    let fds = std::fs::read_dir(format!("/proc/{new}/fd")).unwrap();
    for fd in fds.flatten() {
        let target = std::fs::read_link(fd.path()).unwrap_or_default();
        assert_ne!(target, image, "worker holds the supervisor's exe fd");
        assert_ne!(target, exe_of(sup), "worker holds the supervisor's exe fd");
    }
    let r = post_json(
        run.listen,
        "/v1/chat/completions",
        &chat_body("demo", false),
    )
    .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());

    // A changed configuration replaces every worker, successfully.
    let before = env.worker_pids();
    env.write_config(&config(100_000));
    run.guard.signal(Signal::SIGHUP);
    assert!(
        wait_until(Duration::from_secs(30), || {
            let st = env.status_json();
            let now = env.worker_pids();
            now.len() == 2 && now.iter().all(|p| !before.contains(p)) && all_idle(&st)
        }),
        "not rolled: {}\n{}",
        env.status_json(),
        run.guard.stderr()
    );
    assert!(
        wait_until(Duration::from_secs(10), || run
            .guard
            .stderr()
            .contains("configuration reloaded")),
        "{}",
        run.guard.stderr()
    );
    let r = post_json(
        run.listen,
        "/v1/chat/completions",
        &chat_body("demo", false),
    )
    .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
}

#[test]
fn workers_respawn_after_the_binary_is_deleted() {
    respawns_survive(|bin| std::fs::remove_file(bin).unwrap());
}

#[test]
fn workers_respawn_after_another_file_is_moved_over_the_binary() {
    respawns_survive(|bin| {
        let other = bin.with_file_name("new-supervisor");
        std::fs::write(&other, "#!/bin/sh\nexit 7\n").unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&other, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::rename(&other, bin).unwrap();
    });
}
