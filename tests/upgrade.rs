//! `supervisor upgrade` and SIGUSR2 through the real binary, run from a copy so that the test can
//! put another file at the supervisor's path. A new binary that cannot run, or exits at once,
//! is refused before anything irreversible: the old image keeps serving with the same pid and
//! workers, `upgrade` exits non-zero naming the binary and why, and `--events` reports
//! `{"event":"upgrade","ok":false}`.

mod support;

use nix::sys::signal::Signal;
use serde_json::Value;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use support::http::post_chat;
use support::process::{bin_path, PoolConfig, Running, TestEnv};

/// A copy of the supervisor binary in the test's directory.
fn copy_supervisor(env: &TestEnv) -> PathBuf {
    let bin = env.dir.path().join("bin").join("supervisor");
    std::fs::create_dir_all(bin.parent().unwrap()).unwrap();
    std::fs::copy(bin_path("supervisor"), &bin).unwrap();
    bin
}

/// Puts a new file at `bin` (the running image is unlinked, never written: ETXTBSY).
fn replace(bin: &Path, text: &str, mode: u32) {
    std::fs::remove_file(bin).unwrap();
    std::fs::write(bin, text).unwrap();
    std::fs::set_permissions(bin, std::fs::Permissions::from_mode(mode)).unwrap();
}

fn next_upgrade_event(run: &mut Running) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let left = deadline
            .checked_duration_since(Instant::now())
            .expect("an upgrade event within 30s");
        let line = run.guard.next_line(left).expect("an upgrade event");
        let v: Value = serde_json::from_str(&line).unwrap();
        if v["event"] == "upgrade" {
            return v;
        }
    }
}

fn assert_serving(run: &Running, env: &TestEnv, pids: &[u64]) {
    let r = post_chat(run.listen, "demo", false).unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(env.worker_pids(), pids, "the workers were not touched");
    assert_eq!(
        run.ready["pid"].as_u64(),
        Some(u64::from(run.guard.pid())),
        "same process"
    );
}

#[test]
fn a_new_binary_that_cannot_start_is_refused_and_the_old_one_keeps_serving() {
    let env = TestEnv::new(&PoolConfig::new(2).build());
    let bin = copy_supervisor(&env);
    let mut run = env.start_from(&bin, &["--events"]);
    let pids = env.worker_pids();
    let upgrade = || env.supervisor(&["upgrade"]).output().unwrap();

    // Not executable.
    replace(&bin, "#!/bin/sh\necho 'supervisor 9.9.9'\n", 0o644);
    let out = upgrade();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains(&*bin.to_string_lossy()),
        "names the binary: {err}"
    );
    assert!(err.contains("ermission denied"), "{err}");
    let ev = next_upgrade_event(&mut run);
    assert_eq!(ev["ok"], false, "{ev}");
    assert!(
        ev["error"].as_str().unwrap().contains("ermission denied"),
        "{ev}"
    );
    assert_serving(&run, &env, &pids);

    // Exits at once.
    replace(&bin, "#!/bin/sh\necho 'cannot start' >&2\nexit 1\n", 0o755);
    let out = upgrade();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("cannot start"), "{err}");
    assert_eq!(next_upgrade_event(&mut run)["ok"], false);
    assert_serving(&run, &env, &pids);

    // SIGUSR2 takes the same path.
    run.guard.signal(Signal::SIGUSR2);
    let ev = next_upgrade_event(&mut run);
    assert_eq!(ev["ok"], false, "{ev}");
    assert!(
        ev["error"].as_str().unwrap().contains("cannot start"),
        "{ev}"
    );
    assert_serving(&run, &env, &pids);

    // A binary that rejects the running configuration.
    replace(
        &bin,
        "#!/bin/sh\n[ \"$1\" = --version ] && { echo 'supervisor 9.9.9'; exit 0; }\necho 'unknown key pool.x' >&2\nexit 2\n",
        0o755,
    );
    let out = upgrade();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("check-config") && err.contains("unknown key"),
        "{err}"
    );
    assert_eq!(next_upgrade_event(&mut run)["ok"], false);
    assert_serving(&run, &env, &pids);

    run.guard.signal(Signal::SIGTERM);
    run.expect_stopped_exit_0();
}
