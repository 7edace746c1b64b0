//! The three kinds of user, end to end through the real binary: systemd notifications and socket
//! activation, a desktop sidecar's `--exit-with-parent`, and hot reload from the config file.

mod support;

use nix::sys::signal::Signal;
use std::os::unix::net::UnixDatagram;
use std::process::Command;
use std::time::{Duration, Instant};
use support::http;
use support::process::{
    bin_path, descendants, expect_notify, mock_config, pid_alive, start_env, wait_until,
    ChildGuard, TestEnv,
};

#[test]
fn systemd_notify_ready_status_reload_watchdog_stopping() {
    let env = TestEnv::new(&mock_config(2, ""));
    let sock_path = env.dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    let mut cmd = env.supervisor(&["start"]);
    cmd.env("NOTIFY_SOCKET", &sock_path)
        .env("WATCHDOG_USEC", "400000");
    let mut g = ChildGuard::spawn(cmd);
    g.wait_event("ready", Duration::from_secs(20))
        .expect("ready line");
    let mut seen = Vec::new();
    expect_notify(&sock, "READY=1", Duration::from_secs(5), &mut seen);
    assert!(
        seen.iter()
            .any(|m| m.contains("STATUS=") && m.contains("workers ready")),
        "{seen:?}"
    );
    expect_notify(&sock, "WATCHDOG=1", Duration::from_secs(2), &mut seen);
    g.signal(Signal::SIGHUP);
    expect_notify(&sock, "RELOADING=1", Duration::from_secs(5), &mut seen);
    assert!(seen.last().unwrap().contains("MONOTONIC_USEC="), "{seen:?}");
    expect_notify(&sock, "READY=1", Duration::from_secs(20), &mut seen);
    g.signal(Signal::SIGTERM);
    expect_notify(&sock, "STOPPING=1", Duration::from_secs(5), &mut seen);
    let st = g
        .wait_exit(Duration::from_secs(15))
        .expect("exit after SIGTERM");
    assert_eq!(st.code(), Some(0));
}

#[test]
fn no_systemd_variable_reaches_workers() {
    let env = TestEnv::new(&mock_config(1, ""));
    let sock_path = env.dir.path().join("notify.sock");
    let _sock = UnixDatagram::bind(&sock_path).unwrap();
    let mut cmd = env.supervisor(&["start"]);
    cmd.env("NOTIFY_SOCKET", &sock_path)
        .env("WATCHDOG_USEC", "10000000");
    let mut g = ChildGuard::spawn(cmd);
    g.wait_event("ready", Duration::from_secs(20))
        .expect("ready");
    let workers = descendants(g.pid());
    assert!(!workers.is_empty());
    for w in workers {
        let environ = start_env(w);
        for var in ["NOTIFY_SOCKET=", "WATCHDOG_USEC=", "WATCHDOG_PID="] {
            assert!(
                !environ.iter().any(|kv| kv.starts_with(var)),
                "worker {w} has {var}"
            );
        }
    }
}

#[test]
fn socket_activation_serves_on_the_passed_fd() {
    use std::os::fd::AsRawFd;
    use std::os::unix::process::CommandExt;
    let env = TestEnv::new(&mock_config(1, ""));
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let fd = listener.as_raw_fd();
    let mut cmd = env.supervisor(&["start"]);
    cmd.env("LISTEN_FDS", "1");
    // SAFETY: dup2 and fcntl are async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            if fd != 3 {
                nix::unistd::dup2(fd, 3)?;
            }
            let flags = nix::fcntl::fcntl(3, nix::fcntl::FcntlArg::F_GETFD)?;
            let mut flags = nix::fcntl::FdFlag::from_bits_truncate(flags);
            flags.remove(nix::fcntl::FdFlag::FD_CLOEXEC);
            nix::fcntl::fcntl(3, nix::fcntl::FcntlArg::F_SETFD(flags))?;
            Ok(())
        });
    }
    let mut g = ChildGuard::spawn(cmd);
    let ready = g
        .wait_event("ready", Duration::from_secs(20))
        .expect("ready");
    assert_eq!(
        ready["listen"],
        addr.to_string(),
        "the ready line reports the passed socket"
    );
    drop(listener);
    let r = http::post_json(
        addr,
        "/v1/chat/completions",
        &http::chat_body("demo", false),
    )
    .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
}

#[test]
fn exit_with_parent_stops_when_stdin_closes() {
    let env = TestEnv::new(&mock_config(2, ""));
    let mut g = ChildGuard::spawn(env.supervisor(&["start", "--exit-with-parent"]));
    g.wait_event("ready", Duration::from_secs(20))
        .expect("ready");
    let all: Vec<u32> = std::iter::once(g.pid())
        .chain(descendants(g.pid()))
        .collect();
    assert!(all.len() >= 3, "supervisor and 2 workers expected: {all:?}");
    let t = Instant::now();
    g.close_stdin();
    let st = g
        .wait_exit(Duration::from_secs(10))
        .expect("supervisor did not exit after stdin EOF");
    assert_eq!(st.code(), Some(0));
    assert!(
        wait_until(
            Duration::from_secs(2)
                .saturating_sub(t.elapsed())
                .max(Duration::from_millis(100)),
            || all.iter().all(|p| !pid_alive(*p))
        ),
        "processes still alive 2 s after stdin closed: {:?}",
        all.iter().filter(|p| pid_alive(**p)).collect::<Vec<_>>()
    );
    assert!(
        t.elapsed() < Duration::from_secs(2),
        "took {:?}",
        t.elapsed()
    );
}

#[test]
fn exit_with_parent_stops_when_the_parent_is_killed() {
    let env = TestEnv::new(&mock_config(2, ""));
    // An intermediate parent that keeps our stdin open, so only its death can stop the child.
    let mut cmd = Command::new("python3");
    cmd.args([
        "-c",
        "import subprocess,sys; subprocess.Popen(sys.argv[1:]).wait()",
    ])
    .arg(bin_path("supervisor"))
    .args(["start", "--exit-with-parent", "-c"])
    .arg(&env.config_path)
    .env_remove("NOTIFY_SOCKET")
    // The ledger in the test's directory, never the real home.
    .env("XDG_STATE_HOME", env.dir.path().join("state"));
    let mut g = ChildGuard::spawn(cmd);
    let ready = g
        .wait_event("ready", Duration::from_secs(20))
        .expect("ready");
    let sup = ready["pid"].as_u64().unwrap() as u32;
    let all: Vec<u32> = std::iter::once(sup).chain(descendants(sup)).collect();
    assert!(all.len() >= 3, "{all:?}");
    let t = Instant::now();
    g.signal(Signal::SIGKILL);
    assert!(
        wait_until(Duration::from_secs(2), || all
            .iter()
            .all(|p| !pid_alive(*p))),
        "alive 2 s after the parent died: {:?}",
        all.iter().filter(|p| pid_alive(**p)).collect::<Vec<_>>()
    );
    assert!(t.elapsed() < Duration::from_secs(2));
}

#[test]
fn editing_the_config_adds_a_provider_with_no_failed_request() {
    let env = TestEnv::new(&mock_config(2, ""));
    let run = env.start(&[]);
    let addr = run.listen;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let failures = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let (s2, f2) = (stop.clone(), failures.clone());
    let load = std::thread::spawn(move || {
        let mut n = 0;
        while !s2.load(std::sync::atomic::Ordering::Relaxed) {
            match http::post_json(
                addr,
                "/v1/chat/completions",
                &http::chat_body("demo", false),
            ) {
                Ok(r) if r.status == 200 => {}
                Ok(r) => f2
                    .lock()
                    .unwrap()
                    .push(format!("{} {}", r.status, r.text())),
                Err(e) => f2.lock().unwrap().push(e.to_string()),
            }
            n += 1;
        }
        n
    });
    let extra = "\n[[providers]]\nname = \"demo2\"\nkind = \"mock\"\nmodels = [\"demo2\"]\n";
    env.write_config(&mock_config(2, extra));
    let served = wait_until(Duration::from_secs(30), || {
        http::post_json(
            addr,
            "/v1/chat/completions",
            &http::chat_body("demo2", false),
        )
        .is_ok_and(|r| r.status == 200)
    });
    // Keep the load running until every worker has been rolled.
    let rolled = wait_until(Duration::from_secs(30), || {
        (0..6).all(|_| {
            http::post_json(
                addr,
                "/v1/chat/completions",
                &http::chat_body("demo2", false),
            )
            .is_ok_and(|r| r.status == 200)
        })
    });
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let n = load.join().unwrap();
    assert!(
        served && rolled,
        "model demo2 never became servable; stderr:\n{}",
        run.guard.stderr()
    );
    assert!(n > 0);
    assert!(
        failures.lock().unwrap().is_empty(),
        "failed during reload: {:?}",
        failures.lock().unwrap()
    );
}

#[test]
fn invalid_edit_keeps_the_old_config_and_logs_the_line() {
    let env = TestEnv::new(&mock_config(1, ""));
    let run = env.start(&[]);
    std::fs::write(
        &env.config_path,
        "[server]\nlisten = \"127.0.0.1:0\"\nthis is not toml\n",
    )
    .unwrap();
    let want = format!("{}:3:", env.config_path.display());
    assert!(
        wait_until(Duration::from_secs(10), || run
            .guard
            .stderr()
            .contains(&want)),
        "no located error in stderr:\n{}",
        run.guard.stderr()
    );
    let r = http::post_json(
        run.listen,
        "/v1/chat/completions",
        &http::chat_body("demo", false),
    )
    .unwrap();
    assert_eq!(r.status, 200, "old config no longer serving: {}", r.text());
}

#[test]
fn sigttin_and_sigttou_add_and_remove_a_worker() {
    let env = TestEnv::new(&mock_config(2, ""));
    let run = env.start(&[]);
    let serving = |env: &TestEnv| {
        env.status_json()["workers"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|w| w["state"] == "IDLE")
            .count()
    };
    assert_eq!(serving(&env), 2);
    run.guard.signal(Signal::SIGTTIN);
    assert!(
        wait_until(Duration::from_secs(10), || serving(&env) == 3),
        "SIGTTIN did not add a worker: {}",
        env.status_json()
    );
    run.guard.signal(Signal::SIGTTOU);
    assert!(
        wait_until(Duration::from_secs(10), || env.status_json()["workers"]
            .as_array()
            .unwrap()
            .len()
            == 2),
        "SIGTTOU did not remove a worker: {}",
        env.status_json()
    );
    let r = http::post_json(
        run.listen,
        "/v1/chat/completions",
        &http::chat_body("demo", false),
    )
    .unwrap();
    assert_eq!(r.status, 200);
}

#[test]
fn log_format_json_writes_one_json_object_per_stderr_line() {
    let env = TestEnv::new(&mock_config(1, ""));
    let mut run = env.start(&["--log-format", "json"]);
    run.guard.signal(Signal::SIGTERM);
    assert_eq!(
        run.guard
            .wait_exit(Duration::from_secs(15))
            .and_then(|s| s.code()),
        Some(0)
    );
    let stderr = run.guard.stderr();
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(lines.len() >= 3, "too few log lines: {stderr}");
    for l in &lines {
        let v: serde_json::Value =
            serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON log line ({e}): {l}"));
        assert!(v["level"].is_string() && v["timestamp"].is_string(), "{l}");
    }
}

#[test]
fn start_exits_1_when_every_worker_is_dead_before_ready() {
    // A sidecar host must not wait forever for a ready line that can never come.
    let config = support::process::PoolConfig::new(2)
        .pool("worker_command = [\"/bin/false\"]\nmax_restarts = 1")
        .build();
    let env = TestEnv::new(&config);
    let mut g = ChildGuard::spawn(env.supervisor(&["start"]));
    let st = g
        .wait_exit(Duration::from_secs(20))
        .expect("supervisor kept waiting");
    assert_eq!(st.code(), Some(1), "stderr:\n{}", g.stderr());
    while g.next_line(Duration::from_millis(200)).is_some() {}
    assert!(
        !g.stdout_lines.iter().any(|l| l.contains("\"ready\"")),
        "{:?}",
        g.stdout_lines
    );
    // A start that fails before ready prints exactly one `failed` line (contract).
    assert_eq!(g.stdout_lines.len(), 1, "{:?}", g.stdout_lines);
    let last: serde_json::Value = serde_json::from_str(&g.stdout_lines[0]).unwrap();
    assert_eq!(
        (last["event"].as_str(), last["code"].as_u64()),
        (Some("failed"), Some(1))
    );
    assert!(g.stderr().contains("DEAD"), "{}", g.stderr());
}
