//! `start --events` through the real binary: worker state changes, reloads and breaker
//! transitions arrive on stdout as JSON lines between `ready` and `stopped`, and a host that
//! stops reading stdout never slows the supervisor down: events are dropped and counted in
//! `stopped`.

mod support;

use nix::sys::signal::Signal;
use serde_json::Value;
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};
use support::http::post_chat;
use support::process::{descendants, signal, ChildGuard, PoolConfig, Running, TestEnv};
use support::upstream::{Script, Upstream};
use support::worker::openai_provider;

/// Reads stdout lines until an event satisfies `want`; returns every event read, that one last.
fn events_until(
    guard: &mut ChildGuard,
    timeout: Duration,
    want: impl Fn(&Value) -> bool,
) -> Vec<Value> {
    let deadline = Instant::now() + timeout;
    let mut seen = Vec::new();
    loop {
        let left = deadline
            .checked_duration_since(Instant::now())
            .unwrap_or_else(|| panic!("timed out; events so far: {seen:#?}\n{}", guard.stderr()));
        let Some(line) = guard.next_line(left) else {
            panic!(
                "no matching event; events so far: {seen:#?}\n{}",
                guard.stderr()
            );
        };
        let v: Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("{line:?}: {e}"));
        let done = want(&v);
        seen.push(v);
        if done {
            return seen;
        }
    }
}

fn start_with_events(env: &TestEnv, vars: &[(&str, &str)]) -> Running {
    let mut cmd = env.supervisor(&["start", "--events"]);
    cmd.envs(vars.iter().copied());
    Running::ready(cmd)
}

#[test]
fn a_killed_worker_and_reloads_are_reported_as_events() {
    let env = TestEnv::new(&PoolConfig::new(2).build());
    let mut run = start_with_events(&env, &[]);
    let status = env.status_json();
    let victim = status["workers"][0]["pid"].as_u64().unwrap() as u32;
    signal(victim, Signal::SIGKILL);
    let seen = events_until(&mut run.guard, Duration::from_secs(20), |v| {
        v["event"] == "worker" && v["id"] == 0 && v["to"] == "IDLE"
    });
    let mine: Vec<&Value> = seen.iter().filter(|v| v["id"] == 0).collect();
    let states: Vec<&str> = mine.iter().map(|v| v["to"].as_str().unwrap()).collect();
    assert_eq!(
        states,
        ["UNHEALTHY", "RESTARTING", "INIT", "READY", "IDLE"],
        "{seen:#?}"
    );
    assert_eq!(mine[0]["from"], "IDLE");
    assert_eq!(mine[0]["pid"], victim);
    assert!(
        mine[0]["reason"].as_str().unwrap().contains("signal 9"),
        "{seen:#?}"
    );
    assert_ne!(mine[4]["pid"], victim, "a new process serves");

    // An unchanged file reloads fine; a broken one is reported with its problems.
    let out = env.supervisor(&["reload"]).output().unwrap();
    assert!(out.status.success());
    let seen = events_until(&mut run.guard, Duration::from_secs(10), |v| {
        v["event"] == "reload"
    });
    let ok = seen.last().unwrap();
    assert_eq!(ok["ok"], true, "{ok}");
    assert_eq!(ok["errors"], serde_json::json!([]));
    env.write_config("[pool]\nworkers = \"many\"\n");
    let out = env.supervisor(&["reload"]).output().unwrap();
    assert!(!out.status.success());
    let seen = events_until(&mut run.guard, Duration::from_secs(10), |v| {
        v["event"] == "reload"
    });
    let bad = seen.last().unwrap();
    assert_eq!(bad["ok"], false, "{bad}");
    assert!(
        bad["errors"][0].as_str().unwrap().contains("workers"),
        "{bad}"
    );

    run.guard.signal(Signal::SIGTERM);
    let seen = events_until(&mut run.guard, Duration::from_secs(20), |v| {
        v["event"] == "stopped"
    });
    let stopped = seen.last().unwrap();
    assert_eq!(stopped["dropped"], 0, "{stopped}");
    assert!(
        seen.iter()
            .any(|v| v["event"] == "worker" && v["to"] == "DEAD"),
        "the stop's own transitions come before stopped: {seen:#?}"
    );
    assert_eq!(
        run.guard
            .wait_exit(Duration::from_secs(10))
            .and_then(|s| s.code()),
        Some(0)
    );
}

#[test]
fn a_breaker_opening_is_a_provider_event() {
    let up = Upstream::serving("/v1/chat/completions", Script::status(500));
    let cfg = PoolConfig::new(1)
        .extra(&format!(
            "{}\n[circuit_breaker]\nconsecutive_failures = 2\nopen_timeout = \"60s\"\n",
            openai_provider("flaky", &up.url("/v1"), r#"["m1"]"#, "FLAKY_KEY", "")
        ))
        .build();
    let env = TestEnv::new(&cfg);
    let mut run = start_with_events(&env, &[("FLAKY_KEY", "k")]);
    for _ in 0..3 {
        let r = post_chat(run.listen, "m1", false).unwrap();
        assert_ne!(r.status, 200, "{}", r.text());
    }
    let seen = events_until(&mut run.guard, Duration::from_secs(10), |v| {
        v["event"] == "provider"
    });
    let ev = seen.last().unwrap();
    assert_eq!(ev["name"], "flaky", "{ev}");
    assert_eq!(ev["from"], "closed", "{ev}");
    assert_eq!(ev["to"], "open", "{ev}");
    assert!(ev["reason"].as_str().is_some_and(|r| !r.is_empty()), "{ev}");
    assert_eq!(ev["worker"], 0, "{ev}");
    run.guard.signal(Signal::SIGTERM);
    events_until(&mut run.guard, Duration::from_secs(20), |v| {
        v["event"] == "stopped"
    });
}

/// Kills the supervisor and its workers when the test ends, whatever happened.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        for d in descendants(self.0.id()).into_iter().rev() {
            signal(d, Signal::SIGKILL);
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `POST path` on the admin socket; the status code.
fn admin_post(sock: &str, path: &str) -> u16 {
    let mut s = UnixStream::connect(sock).expect("connect admin socket");
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    write!(
        s,
        "POST {path} HTTP/1.1\r\nHost: admin\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).unwrap();
    answer
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("admin answer {answer:?}"))
}

#[test]
fn a_reader_that_stops_reading_slows_nothing_and_stopped_counts_the_dropped() {
    let env = TestEnv::new(&PoolConfig::new(2).build());
    let log = std::fs::File::create(env.dir.path().join("stderr.log")).unwrap();
    let mut cmd = env.supervisor(&["start", "--events"]);
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::from(log));
    let mut child = KillOnDrop(cmd.spawn().unwrap());
    let mut stdout = child.0.stdout.take().unwrap();
    let stderr = || std::fs::read_to_string(env.dir.path().join("stderr.log")).unwrap();

    // The ready line, read byte by byte so that nothing after it is consumed.
    let mut ready = Vec::new();
    let mut b = [0u8; 1];
    while ready.last() != Some(&b'\n') {
        assert_eq!(
            stdout.read(&mut b).unwrap(),
            1,
            "stdout closed: {}",
            stderr()
        );
        ready.push(b[0]);
    }
    let ready: Value = serde_json::from_slice(&ready).unwrap();
    assert_eq!(ready["event"], "ready");
    let listen = ready["listen"].as_str().unwrap().parse().unwrap();
    let admin = ready["admin_socket"].as_str().unwrap().to_string();
    // From here on nobody reads stdout. The smallest pipe fills after a few dozen lines.
    nix::fcntl::fcntl(stdout.as_raw_fd(), nix::fcntl::FcntlArg::F_SETPIPE_SZ(4096)).unwrap();

    // Far more events than the pipe and the supervisor's queue hold: reloads (one event
    // each) and worker restarts (five each), while requests keep being served.
    for i in 0..400 {
        assert_eq!(
            admin_post(&admin, "/reload"),
            200,
            "reload {i}: {}",
            stderr()
        );
    }
    let pids = env.worker_pids();
    signal(pids[0] as u32, Signal::SIGKILL);
    for i in 0..200 {
        let r = post_chat(listen, "demo", false)
            .unwrap_or_else(|e| panic!("request {i}: {e}\n{}", stderr()));
        assert_eq!(r.status, 200, "request {i}: {}", r.text());
    }
    // The killed worker came back although its events could not be written.
    assert!(
        support::process::wait_until(Duration::from_secs(20), || {
            let st = env.status_json();
            st["workers"]
                .as_array()
                .unwrap()
                .iter()
                .all(|w| w["state"] == "IDLE")
                && !env.worker_pids().contains(&pids[0])
        }),
        "{}",
        stderr()
    );

    // Stop, then drain: `stopped` is the last line and counts what was dropped.
    signal(child.0.id(), Signal::SIGTERM);
    let mut rest = String::new();
    stdout.read_to_string(&mut rest).unwrap();
    let last = rest.lines().last().expect("a last line");
    let stopped: Value = serde_json::from_str(last).unwrap();
    assert_eq!(stopped["event"], "stopped", "{last}");
    let dropped = stopped["dropped"].as_u64().unwrap();
    assert!(dropped > 0, "{last}");
    let delivered = rest.lines().count() as u64 - 1;
    assert!(
        delivered + dropped >= 400,
        "every reload was delivered or counted: {delivered} + {dropped}"
    );
    for l in rest.lines() {
        serde_json::from_str::<Value>(l).unwrap_or_else(|e| panic!("{l:?}: {e}"));
    }
    let st = child.0.wait().unwrap();
    assert_eq!(st.code(), Some(0), "{}", stderr());
}
