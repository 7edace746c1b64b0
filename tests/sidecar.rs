//! Issue #13: ephemeral (sidecar) instances run beside each other and beside a default instance,
//! each in a fresh private runtime directory that `--runtime-dir` reaches and that is removed on
//! stop; a `start` that fails before ready prints exactly one `failed` line with its exit code.

mod support;

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;
use support::process::{ChildGuard, PoolConfig, Running, TestEnv};

/// The test pool config without `base_port` and `runtime_dir`: what a sidecar host ships.
fn sidecar_config() -> String {
    let text = PoolConfig::new(1).build();
    let stripped = text
        .replace("base_port = 0\n", "")
        .replace("runtime_dir = \"{RUNTIME_DIR}\"\n", "");
    assert!(!stripped.contains("base_port") && !stripped.contains("runtime_dir"));
    stripped
}

/// `supervisor start` with `XDG_RUNTIME_DIR=xdg`, waiting for the ready line.
fn start_in(env: &TestEnv, xdg: &Path, extra: &[&str]) -> Running {
    let mut args = vec!["start"];
    args.extend_from_slice(extra);
    let mut cmd = env.supervisor(&args);
    cmd.env("XDG_RUNTIME_DIR", xdg);
    let mut guard = ChildGuard::spawn(cmd);
    let ready = guard
        .wait_event("ready", Duration::from_secs(30))
        .unwrap_or_else(|| panic!("no ready line; stderr:\n{}", guard.stderr()));
    let listen = ready["listen"].as_str().unwrap().parse().unwrap();
    Running {
        guard,
        ready,
        listen,
    }
}

fn runtime_dir_of(r: &Running) -> PathBuf {
    let sock = PathBuf::from(r.ready["admin_socket"].as_str().expect("admin_socket"));
    sock.parent().unwrap().to_path_buf()
}

#[test]
fn ephemeral_instances_run_beside_each_other_and_a_default_one() {
    let xdg = tempfile::tempdir().unwrap();
    // The default instance: $XDG_RUNTIME_DIR/gateway, free worker ports.
    let default_env =
        TestEnv::new(&sidecar_config().replace("[pool]\n", "[pool]\nbase_port = 0\n"));
    let mut default = start_in(&default_env, xdg.path(), &[]);
    assert_eq!(runtime_dir_of(&default), xdg.path().join("gateway"));

    let env = TestEnv::new(&sidecar_config());
    let mut sidecars: Vec<Running> = (0..3)
        .map(|_| {
            start_in(
                &env,
                xdg.path(),
                &["--listen", "127.0.0.1:0", "--exit-with-parent"],
            )
        })
        .collect();
    let dirs: Vec<PathBuf> = sidecars.iter().map(runtime_dir_of).collect();
    for (i, d) in dirs.iter().enumerate() {
        assert_ne!(
            d,
            &xdg.path().join("gateway"),
            "sidecar {i} uses the default dir"
        );
        assert!(!dirs[..i].contains(d), "two sidecars share {}", d.display());
        let meta = std::fs::symlink_metadata(d).unwrap();
        assert!(meta.is_dir());
        assert_eq!(meta.mode() & 0o777, 0o700, "{}", d.display());
        assert_eq!(meta.uid(), nix::unistd::getuid().as_raw());
    }
    for (r, d) in sidecars.iter().zip(&dirs) {
        let dir = d.to_str().unwrap();
        let out = env
            .supervisor(&["status", "--json", "--runtime-dir", dir])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "status --runtime-dir {}: {}",
            d.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(v["listen"].as_str(), Some(r.listen.to_string().as_str()));
    }
    for (r, d) in sidecars.iter_mut().zip(&dirs) {
        r.guard.signal(nix::sys::signal::Signal::SIGTERM);
        r.expect_stopped_exit_0();
        assert!(!d.exists(), "{} left behind after stop", d.display());
    }
    default.guard.signal(nix::sys::signal::Signal::SIGTERM);
    default.expect_stopped_exit_0();
}

/// Runs `supervisor start` to its exit and asserts exit `code` with exactly one `failed` line.
fn assert_fails_with(env: &TestEnv, extra: &[&str], code: i32) -> String {
    let mut args = vec!["start"];
    args.extend_from_slice(extra);
    let mut g = ChildGuard::spawn(env.supervisor(&args));
    let st = g
        .wait_exit(Duration::from_secs(20))
        .unwrap_or_else(|| panic!("start did not exit; stderr:\n{}", g.stderr()));
    while g.next_line(Duration::from_millis(200)).is_some() {}
    let stderr = g.stderr();
    assert_eq!(st.code(), Some(code), "stderr:\n{stderr}");
    assert_eq!(g.stdout_lines.len(), 1, "{:?}\n{stderr}", g.stdout_lines);
    let v: serde_json::Value = serde_json::from_str(&g.stdout_lines[0]).unwrap();
    assert_eq!(v["event"], "failed", "{v}");
    assert_eq!(v["code"].as_i64(), Some(code as i64), "{v}");
    v["error"].as_str().expect("error text").to_string()
}

#[test]
fn failed_start_prints_one_failed_line_with_its_code() {
    let bad = TestEnv::new(&PoolConfig::new(1).pool("worker_threads = \"many\"").build());
    assert_fails_with(&bad, &[], 2);

    let env = TestEnv::new(&PoolConfig::new(1).build());
    let mut first = env.start(&[]);
    let err = assert_fails_with(&env, &[], 3);
    assert!(err.contains(&first.guard.pid().to_string()), "{err}");
    first.guard.signal(nix::sys::signal::Signal::SIGTERM);
    first.expect_stopped_exit_0();

    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let err = assert_fails_with(&env, &["--listen", &addr], 4);
    assert!(err.contains(&addr), "{err}");
    assert!(!env.runtime_dir().exists(), "runtime dir left after exit 4");

    // A worker port in use fails after the runtime files exist; they go too.
    let port = taken.local_addr().unwrap().port().to_string();
    let err = assert_fails_with(&env, &["--base-port", &port], 4);
    assert!(err.contains(&port), "{err}");
    assert!(!env.runtime_dir().exists(), "runtime dir left after exit 4");
}

#[test]
fn start_help_names_the_token_variable() {
    let env = TestEnv::new(&PoolConfig::new(1).build());
    let out = env.supervisor(&["start", "--help"]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    assert!(text.contains("GATEWAY_TOKEN"), "{text}");
    assert!(text.contains("--runtime-dir"), "{text}");
}
