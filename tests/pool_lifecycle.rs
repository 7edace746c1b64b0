//! The pool end to end, through the real `supervisor start` binary: the workers' lifecycle as
//! `supervisor status` shows it, crash loops ending in DEAD while the rest serves, restarts on
//! the same port, a port already in use, the CLI against the admin socket, and no orphan after
//! the supervisor is SIGKILLed.

mod support;

use nix::sys::signal::Signal;
use std::process::Output;
use std::time::Duration;
use support::process::{pid_alive, start_env, wait_until, PoolConfig, TestEnv};

/// The python stand-in worker of the supervisor crate's own tests (see its header for modes).
const TEST_WORKER: &str = include_str!("../supervisor/tests/fixtures/test_worker.py");

/// `workers` workers with a 3 s drain and `pool` extra `[pool]` keys (see `PoolConfig`).
fn config(workers: u32, pool: &str) -> String {
    PoolConfig::new(workers)
        .shutdown_timeout("3s")
        .pool(pool)
        .build()
}

/// `worker_command = [python3, -c, TEST_WORKER, mode]` as a TOML line.
fn python_worker(mode: &str) -> String {
    let cmd = serde_json::json!(["python3", "-c", TEST_WORKER, mode]);
    format!("worker_command = {cmd}")
}

fn cli(env: &TestEnv, args: &[&str]) -> Output {
    env.supervisor(args).output().expect("run supervisor CLI")
}

/// `supervisor status --json`, parsed.
fn status(env: &TestEnv) -> serde_json::Value {
    env.status_json()
}

/// `key` of every worker in `supervisor status`; each must have one.
fn worker_field(env: &TestEnv, key: &str) -> Vec<u64> {
    status(env)["workers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w[key].as_u64().unwrap())
        .collect()
}

/// The pid of every worker in `supervisor status`.
fn worker_pids(env: &TestEnv) -> Vec<u32> {
    worker_field(env, "pid")
        .into_iter()
        .map(|p| p as u32)
        .collect()
}

fn worker(st: &serde_json::Value, id: usize) -> &serde_json::Value {
    &st["workers"][id]
}

#[test]
fn status_shows_every_worker_and_restart_worker_replaces_one() {
    let env = TestEnv::new(&config(2, ""));
    let run = env.start(&[]);
    let st = status(&env);
    assert_eq!(st["listen"], run.listen.to_string());
    let workers = st["workers"].as_array().unwrap();
    assert_eq!(workers.len(), 2);
    for (i, w) in workers.iter().enumerate() {
        assert_eq!(w["id"], i);
        assert_eq!(w["state"], "IDLE", "{st}");
        assert!(
            w["pid"].as_u64().is_some() && w["port"].as_u64().unwrap() > 0,
            "{st}"
        );
        for key in [
            "inflight",
            "served",
            "restarts",
            "rss_bytes",
            "uptime_ms",
            "heartbeat_age_ms",
        ] {
            assert!(w.get(key).is_some(), "missing {key}: {st}");
        }
    }
    let table = String::from_utf8(cli(&env, &["status"]).stdout).unwrap();
    assert!(
        table.contains("STATE") && table.matches("IDLE").count() == 2,
        "{table}"
    );

    let old = worker(&st, 1)["pid"].as_u64().unwrap();
    let port = worker(&st, 1)["port"].clone();
    let out = cli(&env, &["restart-worker", "1"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        wait_until(Duration::from_secs(15), || {
            let st = status(&env);
            let w = worker(&st, 1);
            w["state"] == "IDLE" && w["pid"].as_u64().is_some_and(|p| p != old) && w["port"] == port
        }),
        "worker 1 not replaced: {}",
        status(&env)
    );
    assert!(
        wait_until(Duration::from_secs(10), || !pid_alive(old as u32)),
        "old worker still alive"
    );
    // No such worker is a usage error.
    let out = cli(&env, &["restart-worker", "9"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no worker 9"));
}

#[test]
fn kill_9_worker_comes_back_with_a_new_pid_on_the_same_port() {
    let env = TestEnv::new(&config(2, ""));
    let _run = env.start(&[]);
    let st = status(&env);
    let (old, port) = (
        worker(&st, 0)["pid"].as_u64().unwrap(),
        worker(&st, 0)["port"].clone(),
    );
    support::process::signal(old as u32, Signal::SIGKILL);
    assert!(
        wait_until(Duration::from_secs(15), || {
            let st = status(&env);
            let w = worker(&st, 0);
            w["state"] == "IDLE"
                && w["pid"].as_u64().is_some_and(|p| p != old)
                && w["port"] == port
                && w["restarts"] == 1
        }),
        "{}",
        status(&env)
    );
}

#[test]
fn crash_looping_worker_goes_dead_and_the_supervisor_keeps_serving() {
    let pool = format!("{}\nmax_restarts = 2\n", python_worker("exit0"));
    let env = TestEnv::new(&config(2, &pool));
    let run = env.start(&[]);
    assert!(
        wait_until(Duration::from_secs(20), || worker(&status(&env), 0)
            ["state"]
            == "DEAD"),
        "{}",
        status(&env)
    );
    let st = status(&env);
    assert_eq!(worker(&st, 0)["restarts"], 2);
    assert!(worker(&st, 0)["pid"].is_null());
    assert_eq!(worker(&st, 1)["state"], "IDLE");
    assert!(pid_alive(run.guard.pid()));
    // The DEAD report names the last exit and the worker's last stderr line.
    assert!(
        wait_until(Duration::from_secs(5), || {
            let e = run.guard.stderr();
            e.contains("DEAD") && e.contains("exit status 3") && e.contains("boom")
        }),
        "{}",
        run.guard.stderr()
    );
    assert_eq!(
        support::http::get(run.listen, "/readyz").unwrap().status,
        200
    );
}

#[test]
fn port_in_use_exits_4_naming_the_port() {
    let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = held.local_addr().unwrap().port();
    let env = TestEnv::new(&config(1, "").replace("base_port = 0", &format!("base_port = {port}")));
    let mut guard = support::process::ChildGuard::spawn(env.supervisor(&["start"]));
    let st = guard
        .wait_exit(Duration::from_secs(20))
        .expect("start exits");
    assert_eq!(st.code(), Some(4), "{}", guard.stderr());
    let err = guard.stderr();
    assert!(err.contains(&port.to_string()), "{err}");
    assert!(
        err.contains(&format!("pid {}", std::process::id())),
        "holder not named: {err}"
    );
}

#[test]
fn no_worker_survives_a_sigkilled_supervisor() {
    let env = TestEnv::new(&config(3, ""));
    let run = env.start(&[]);
    let pids = worker_pids(&env);
    assert_eq!(pids.len(), 3);
    assert!(pids.iter().all(|&p| pid_alive(p)));
    run.guard.signal(Signal::SIGKILL);
    assert!(
        wait_until(Duration::from_secs(2), || pids
            .iter()
            .all(|&p| !pid_alive(p))),
        "orphans: {:?}",
        pids.iter().filter(|&&p| pid_alive(p)).collect::<Vec<_>>()
    );
}

#[test]
fn stop_cli_stops_gracefully_and_status_then_names_the_socket() {
    let env = TestEnv::new(&config(2, ""));
    let mut run = env.start(&[]);
    let pids = worker_pids(&env);
    let out = cli(&env, &["stop"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    run.expect_stopped_exit_0();
    assert!(pids.iter().all(|&p| !pid_alive(p)));
    let heartbeats: Vec<_> = std::fs::read_dir(env.runtime_dir())
        .map(|d| {
            d.flatten()
                .filter(|e| e.path().extension().is_some_and(|x| x == "hb"))
                .collect()
        })
        .unwrap_or_default();
    assert!(heartbeats.is_empty(), "{heartbeats:?}");
    // Nothing is running any more: a clear error naming the socket, exit 1.
    let out = cli(&env, &["status"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&env.runtime_dir().join("admin.sock").display().to_string()),
        "{err}"
    );
}

/// Established TCP connections whose local port is one of `ports` (both directions of a
/// loopback connection appear in the table, so this counts the worker's accepted side).
fn established_on(ports: &[u16]) -> usize {
    ["/proc/net/tcp", "/proc/net/tcp6"]
        .iter()
        .filter_map(|f| std::fs::read_to_string(f).ok())
        .flat_map(|t| t.lines().skip(1).map(str::to_owned).collect::<Vec<_>>())
        .filter(|line| {
            let cols: Vec<&str> = line.split_whitespace().collect();
            let local_port = cols
                .get(1)
                .and_then(|a| a.rsplit(':').next())
                .and_then(|p| u16::from_str_radix(p, 16).ok());
            cols.get(3) == Some(&"01") && local_port.is_some_and(|p| ports.contains(&p))
        })
        .count()
}

fn worker_ports(env: &TestEnv) -> Vec<u16> {
    worker_field(env, "port")
        .into_iter()
        .map(|p| p as u16)
        .collect()
}

/// Connected Unix sockets bound at `path` (an accepted connection carries its listener's path in
/// /proc/net/unix; state 03 is connected, 01 the listener itself).
fn connected_on(path: &std::path::Path) -> usize {
    let path = path.display().to_string();
    std::fs::read_to_string("/proc/net/unix")
        .unwrap_or_default()
        .lines()
        .filter(|l| {
            let cols: Vec<&str> = l.split_whitespace().collect();
            cols.get(5) == Some(&"03") && cols.last() == Some(&path.as_str())
        })
        .count()
}

/// Built-in workers get a private Unix socket (fd 4, `LISTEN_FDS=2`) next to their port; the
/// front talks to them over it, never over their ports; the socket is 0600, speaks the same
/// HTTP, and is removed on stop.
#[test]
fn the_front_reaches_builtin_workers_over_their_private_socket() {
    use std::io::{Read, Write};
    use std::os::unix::fs::PermissionsExt;
    let env = TestEnv::new(&config(2, ""));
    let mut run = env.start(&[]);
    let socks: Vec<_> = (0..2)
        .map(|id| env.runtime_dir().join(format!("worker-{id}.sock")))
        .collect();
    for s in &socks {
        let mode = std::fs::metadata(s)
            .expect("socket file")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{}", s.display());
    }
    for pid in worker_pids(&env) {
        let e = start_env(pid);
        assert!(e.iter().any(|kv| kv == "LISTEN_FDS=2"), "{e:?}");
    }
    for _ in 0..20 {
        let r = support::http::post_chat(run.listen, "demo", false).unwrap();
        assert_eq!(r.status, 200, "{}", r.text());
    }
    assert_eq!(
        established_on(&worker_ports(&env)),
        0,
        "the front used the worker ports"
    );
    let mut s = std::os::unix::net::UnixStream::connect(&socks[1]).unwrap();
    s.write_all(b"GET /v1/models HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n")
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    assert!(out.contains("\"demo\""), "{out}");
    let out = cli(&env, &["stop"]);
    assert!(out.status.success());
    run.expect_stopped_exit_0();
    assert!(socks.iter().all(|s| !s.exists()), "sockets left behind");
}

/// Streams held at once through the front share one HTTP/2 connection to their worker instead
/// of one connection each.
#[test]
fn held_streams_share_one_connection_to_their_worker() {
    let slow = PoolConfig::new(1)
        .shutdown_timeout("3s")
        .extra("tokens_per_second = 2")
        .build();
    let env = TestEnv::new(&slow);
    let run = env.start(&[]);
    let sock = env.runtime_dir().join("worker-0.sock");
    let mut streams: Vec<_> = (0..5)
        .map(|_| support::front::open_stream(run.listen, "demo", &[]))
        .collect();
    for s in &mut streams {
        assert!(s.next_chunk().unwrap().is_some(), "the stream started");
    }
    assert_eq!(
        connected_on(&sock),
        1,
        "5 open streams, one HTTP/2 connection to the worker"
    );
}

/// Another worker program (`worker_command`) gets only its port (`LISTEN_FDS=1`), and the
/// front then talks to it over the port.
#[test]
fn a_custom_worker_command_is_reached_over_its_port() {
    let worker = support::process::bin_path("gateway-worker");
    let cmd = serde_json::json!([worker.display().to_string()]);
    let env = TestEnv::new(&config(1, &format!("worker_command = {cmd}")));
    let run = env.start(&[]);
    for pid in worker_pids(&env) {
        let e = start_env(pid);
        assert!(e.iter().any(|kv| kv == "LISTEN_FDS=1"), "{e:?}");
    }
    let r = support::http::post_chat(run.listen, "demo", false).unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(
        established_on(&worker_ports(&env)) > 0,
        "the pooled connection to the worker port"
    );
}
