//! Issue #12: a runtime directory another local user could control is refused (exit 2, naming
//! path, owner and mode) before anything is written into it, and a runtime directory too small
//! for `providers.shm` fails cleanly (exit 1, ENOSPC) instead of dying of SIGBUS.

mod support;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;
use support::process::{ChildGuard, PoolConfig, TestEnv};

/// Runs `cmd` (a `supervisor start`) to its exit; returns the exit code, stdout lines, stderr.
fn run_to_exit(cmd: Command) -> (Option<i32>, Vec<String>, String) {
    let mut g = ChildGuard::spawn(cmd);
    let st = g
        .wait_exit(Duration::from_secs(20))
        .unwrap_or_else(|| panic!("start did not exit; stderr:\n{}", g.stderr()));
    while g.next_line(Duration::from_millis(200)).is_some() {}
    (st.code(), g.stdout_lines.clone(), g.stderr())
}

/// Asserts exactly one stdout line, `{"event":"failed","code":code,...}`.
fn assert_failed_line(lines: &[String], code: u64, stderr: &str) {
    assert_eq!(lines.len(), 1, "stdout {lines:?}; stderr:\n{stderr}");
    let v: serde_json::Value = serde_json::from_str(&lines[0]).expect("stdout line is JSON");
    assert_eq!(v["event"], "failed", "{v}");
    assert_eq!(v["code"].as_u64(), Some(code), "{v}");
    assert!(v["error"].as_str().is_some_and(|e| !e.is_empty()), "{v}");
}

/// A refused start: exit 2, the failed line, stderr naming the path, the owner and the mode.
fn assert_refused(env: &TestEnv, dir: &Path, owner: &str, mode: &str) {
    let (code, lines, stderr) = run_to_exit(env.supervisor(&["start"]));
    assert_eq!(code, Some(2), "stderr:\n{stderr}");
    assert_failed_line(&lines, 2, &stderr);
    for want in [&dir.display().to_string(), owner, mode] {
        assert!(stderr.contains(want), "stderr lacks {want:?}:\n{stderr}");
    }
}

fn runtime_config() -> String {
    PoolConfig::new(1).build()
}

fn mode_of(p: &Path) -> u32 {
    std::fs::symlink_metadata(p).unwrap().mode() & 0o7777
}

/// This user's name, as the refusal names the owner.
fn my_name() -> String {
    nix::unistd::User::from_uid(nix::unistd::getuid())
        .unwrap()
        .expect("a passwd entry")
        .name
}

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

#[test]
fn world_writable_runtime_dir_is_refused_and_left_alone() {
    let env = TestEnv::new(&runtime_config());
    let dir = env.runtime_dir();
    std::fs::create_dir(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
    assert_refused(&env, &dir, &my_name(), "0777");
    assert_eq!(
        mode_of(&dir),
        0o777,
        "the directory was chmodded, not refused"
    );
    assert!(!dir.join("gateway.toml").exists(), "snapshot written");
    assert!(!dir.join("supervisor.lock").exists(), "lock written");
}

#[test]
fn symlinked_runtime_dir_is_refused() {
    let env = TestEnv::new(&runtime_config());
    let real = env.dir.path().join("real");
    std::fs::create_dir(&real).unwrap();
    std::fs::set_permissions(&real, std::fs::Permissions::from_mode(0o700)).unwrap();
    let dir = env.runtime_dir();
    std::os::unix::fs::symlink(&real, &dir).unwrap();
    assert_refused(&env, &dir, &my_name(), "symlink");
    let left: Vec<_> = std::fs::read_dir(&real).unwrap().flatten().collect();
    assert!(
        left.is_empty(),
        "files written through the symlink: {left:?}"
    );
}

#[test]
fn runtime_dir_owned_by_another_user_is_refused() {
    if !is_root() {
        eprintln!("SKIP runtime_dir_owned_by_another_user_is_refused: needs root to chown");
        return;
    }
    let env = TestEnv::new(&runtime_config());
    let dir = env.runtime_dir();
    std::fs::create_dir(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
    let nobody = nix::unistd::User::from_name("nobody")
        .unwrap()
        .expect("user nobody");
    nix::unistd::chown(&dir, Some(nobody.uid), Some(nobody.gid)).unwrap();
    assert_refused(&env, &dir, "nobody", "0700");
    assert!(!dir.join("gateway.toml").exists(), "snapshot written");
}

#[test]
fn non_root_user_gets_exit_2_for_a_dir_it_does_not_own() {
    if !is_root() {
        eprintln!(
            "SKIP non_root_user_gets_exit_2_for_a_dir_it_does_not_own: needs root to switch user"
        );
        return;
    }
    let env = TestEnv::new(&runtime_config());
    // The user must be able to read the config, so the failure can only be the runtime dir.
    std::fs::set_permissions(env.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(&env.config_path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let dir = env.runtime_dir();
    std::fs::create_dir(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
    let base = env.supervisor(&["start"]);
    let mut cmd = Command::new("setpriv");
    cmd.args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .arg(base.get_program())
        .args(base.get_args());
    for (k, v) in base.get_envs() {
        match v {
            Some(v) => cmd.env(k, v),
            None => cmd.env_remove(k),
        };
    }
    let (code, lines, stderr) = run_to_exit(cmd);
    assert_eq!(code, Some(2), "stderr:\n{stderr}");
    assert_failed_line(&lines, 2, &stderr);
    for want in [&dir.display().to_string(), "root", "0700"] {
        assert!(stderr.contains(want), "stderr lacks {want:?}:\n{stderr}");
    }
}

#[test]
fn status_does_not_trust_an_admin_socket_in_a_loose_dir() {
    let env = TestEnv::new(&runtime_config());
    let dir = env.runtime_dir();
    std::fs::create_dir(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
    // Someone else's socket where ours would be.
    let planted = std::os::unix::net::UnixListener::bind(dir.join("admin.sock")).unwrap();
    planted.set_nonblocking(true).unwrap();
    for args in [
        vec!["status", "--json"],
        vec!["stop"],
        vec!["reload"],
        vec!["restart-worker", "0"],
    ] {
        let out = env.supervisor(&args).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(
            stderr.contains(&dir.display().to_string()) && stderr.contains("0777"),
            "{args:?}: {stderr}"
        );
        assert!(
            planted.accept().is_err(),
            "{args:?} connected to the planted socket"
        );
    }
}

/// Unmounts the test's tmpfs even when the test fails.
struct Mount(PathBuf);

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

#[test]
fn tiny_runtime_fs_fails_with_enospc_and_leaves_nothing() {
    let env = TestEnv::new(&runtime_config());
    let dir = env.runtime_dir();
    std::fs::create_dir(&dir).unwrap();
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=64k,mode=0700", "tmpfs"])
        .arg(&dir)
        .status()
        .is_ok_and(|s| s.success());
    if !mounted {
        eprintln!("SKIP tiny_runtime_fs_fails_with_enospc_and_leaves_nothing: cannot mount a tmpfs (needs root)");
        return;
    }
    let _mount = Mount(dir.clone());
    let (code, lines, stderr) = run_to_exit(env.supervisor(&["start"]));
    assert_eq!(code, Some(1), "stderr:\n{stderr}");
    assert_failed_line(&lines, 1, &stderr);
    assert!(
        stderr.contains(&dir.join("providers.shm").display().to_string())
            && stderr.contains("ENOSPC"),
        "stderr:\n{stderr}"
    );
    let left: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert!(left.is_empty(), "runtime files left behind: {left:?}");
}
