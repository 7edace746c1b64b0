//! The supervisor's stderr log end to end: worker records relayed as records (JSON and text),
//! a foreign worker's plain lines still relayed, the access line's fields and the request id on
//! a worker's warnings; and that `cargo install` gives a supervisor that starts.

mod support;

use serde_json::Value;
use std::process::Command;
use std::time::Duration;
use support::http;
use support::process::{bin_path, wait_until, ChildGuard, PoolConfig, Running, TestEnv};
use support::upstream::{Script, Upstream};

/// One worker, fast heartbeats, a mock provider `demo`, `health` keys and `tail` after it.
fn config(health: &str, tail: &str) -> String {
    PoolConfig::new(1)
        .shutdown_timeout("3s")
        .default_restart_backoff()
        .health(health)
        .extra(tail)
        .build()
}

/// `supervisor start ARGS` with `RUST_LOG=rust_log` and `env`, once its ready line is out.
fn start(env: &TestEnv, args: &[&str], rust_log: &str, vars: &[(&str, &str)]) -> Running {
    let mut all = vec!["start"];
    all.extend_from_slice(args);
    let mut cmd = env.supervisor(&all);
    cmd.env("RUST_LOG", rust_log).envs(vars.iter().copied());
    Running::ready(cmd)
}

/// Every stderr line so far, each of which must be one JSON object (`--log-format json`).
fn json_records(run: &Running) -> Vec<Value> {
    run.guard
        .stderr()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

/// Waits (10 s) for a record matching `f` and returns it.
fn wait_record(run: &Running, what: &str, f: impl Fn(&Value) -> bool) -> Value {
    let mut found = None;
    wait_until(Duration::from_secs(10), || {
        found = json_records(run).into_iter().find(&f);
        found.is_some()
    });
    found.unwrap_or_else(|| panic!("no {what} record; stderr:\n{}", run.guard.stderr()))
}

fn is_worker_0(r: &Value) -> bool {
    r["worker"] == 0
}

/// How many RFC 3339 UTC timestamps (`2026-12-02T05:00:00.123Z`) `s` holds.
fn timestamps(s: &str) -> usize {
    let b = s.as_bytes();
    (0..b.len().saturating_sub(10))
        .filter(|&i| {
            let d = |j: usize| b[i + j].is_ascii_digit();
            d(0) && d(1)
                && d(2)
                && d(3)
                && b[i + 4] == b'-'
                && d(5)
                && d(6)
                && b[i + 7] == b'-'
                && d(8)
                && d(9)
                && b[i + 10] == b'T'
        })
        .count()
}

#[test]
fn worker_records_are_json_records_with_their_own_level_target_and_fields() {
    // Probes every 100 ms: the worker's `probe round done` is a DEBUG record.
    let env = TestEnv::new(&config("probe_interval = \"100ms\"", ""));
    let run = start(&env, &["--log-format", "json"], "debug", &[]);

    let listening = wait_record(&run, "worker `listening on`", |r| {
        is_worker_0(r)
            && r["message"]
                .as_str()
                .is_some_and(|m| m.contains("listening on"))
    });
    assert_eq!(listening["target"], "gateway_worker::server", "{listening}");
    assert_eq!(listening["level"], "INFO", "{listening}");
    assert!(
        listening["pid"].is_u64(),
        "the worker's field as a field: {listening}"
    );
    assert!(
        listening.get("stream").is_none(),
        "a record, not a relayed line: {listening}"
    );
    let ts = listening["timestamp"].as_str().expect("its own timestamp");
    assert_eq!(timestamps(ts), 1);
    let message = listening["message"].as_str().unwrap();
    assert_eq!(timestamps(message), 0, "no nested log text: {message}");
    assert!(!message.contains("INFO"), "no nested level: {message}");

    let debug = wait_record(&run, "worker DEBUG", |r| {
        is_worker_0(r) && r["target"] == "gateway_worker::health"
    });
    assert_eq!(
        debug["level"], "DEBUG",
        "a DEBUG record stays DEBUG: {debug}"
    );
    assert!(debug["unhealthy"].is_u64(), "{debug}");

    // No worker record anywhere carries a second timestamp or level in its text.
    for r in json_records(&run).iter().filter(|r| is_worker_0(r)) {
        let m = r["message"].as_str().unwrap_or("");
        assert_eq!(timestamps(m), 0, "{r}");
    }
}

#[test]
fn text_worker_lines_have_one_timestamp_one_level_and_follow_the_filter() {
    let env = TestEnv::new(&config("probe_interval = \"100ms\"", ""));
    // DEBUG only for the worker's health module: the worker must filter exactly like this.
    let run = start(&env, &[], "info,gateway_worker::health=debug", &[]);
    let line = |needle: &str| {
        let mut found = None;
        wait_until(Duration::from_secs(10), || {
            found = run
                .guard
                .stderr()
                .lines()
                .find(|l| l.contains(needle) && l.ends_with(" worker=0"))
                .map(str::to_string);
            found.is_some()
        });
        found.unwrap_or_else(|| panic!("no `{needle}` line; stderr:\n{}", run.guard.stderr()))
    };
    let listening = line("listening on");
    assert_eq!(timestamps(&listening), 1, "{listening}");
    assert!(
        listening.contains(" INFO gateway_worker::server: listening on"),
        "{listening}"
    );
    assert_eq!(listening.matches("INFO").count(), 1, "{listening}");
    assert_eq!(listening.matches("pid=").count(), 1, "{listening}");
    let debug = line("probe round done");
    assert_eq!(timestamps(&debug), 1, "{debug}");
    assert!(
        debug.contains(" DEBUG gateway_worker::health: probe round done"),
        "{debug}"
    );
    // Other DEBUG records were filtered out (the supervisor's own filter says info).
    let stderr = run.guard.stderr();
    for l in stderr.lines().filter(|l| l.contains(" DEBUG ")) {
        assert!(l.contains("gateway_worker::health"), "filtered out: {l}");
    }
}

#[test]
fn a_foreign_workers_plain_stderr_is_still_relayed() {
    const TEST_WORKER: &str = include_str!("../supervisor/tests/fixtures/test_worker.py");
    let script = format!(
        "import sys\nprint('plain line from a foreign worker', file=sys.stderr, flush=True)\n{TEST_WORKER}"
    );
    let cmd = serde_json::json!(["python3", "-c", script, "ok"]);
    let env = TestEnv::new(
        &PoolConfig::new(1)
            .shutdown_timeout("3s")
            .default_restart_backoff()
            .pool(&format!("worker_command = {cmd}\n"))
            .build(),
    );
    let run = start(&env, &["--log-format", "json"], "info", &[]);
    let r = wait_record(&run, "foreign", |r| {
        r["message"] == "plain line from a foreign worker"
    });
    assert_eq!(r["worker"], 0, "{r}");
    assert_eq!(r["stream"], "stderr", "{r}");
}

#[test]
fn the_access_line_names_client_provider_model_attempts_and_times() {
    // The provider's own headers of these names are lies the gateway must not pass on.
    let answer = Script::json(
        200,
        serde_json::json!({"id": "c1", "object": "chat.completion",
                           "usage": {"prompt_tokens": 7, "completion_tokens": 3}}),
    )
    .header("x-gateway-provider", "forged")
    .header("x-gateway-attempts", "99");
    let up = Upstream::serving("/v1/chat/completions", answer);
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    // Round robin starts with `dead` (connection refused), then fails over to `up`.
    let tail = format!(
        r#"
[[providers]]
name = "dead"
kind = "openai"
base_url = "http://{closed}/v1"
api_key_env = "LOGS_UP_KEY"
models = ["m1"]

[[providers]]
name = "up"
kind = "openai"
base_url = "{}"
api_key_env = "LOGS_UP_KEY"
models = ["m1"]

[routing]
strategy = "round_robin"

[[clients]]
name = "desk"
token_env = "LOGS_CLIENT_TOKEN"
"#,
        up.url("/v1")
    );
    let env = TestEnv::new(&config("probe_interval = \"0s\"", &tail));
    let vars = [("LOGS_UP_KEY", "k"), ("LOGS_CLIENT_TOKEN", "desk-token")];
    let run = start(&env, &["--log-format", "json"], "info", &vars);
    let r = http::request(
        run.listen,
        "POST",
        "/v1/chat/completions",
        &[("x-api-key", "desk-token")],
        Some(http::chat_body("m1", false).to_string().as_bytes()),
    )
    .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("x-gateway-provider"), Some("up"));
    assert_eq!(
        r.header("x-gateway-attempts"),
        None,
        "internal to the gateway"
    );
    let id = r.header("x-request-id").expect("x-request-id").to_string();

    let access = run.access_line(&id);
    assert_eq!(access["method"], "POST", "{access}");
    assert_eq!(access["path"], "/v1/chat/completions", "{access}");
    assert_eq!(access["status"], 200, "{access}");
    assert_eq!(access["client"], "desk", "{access}");
    assert_eq!(access["worker"], 0, "{access}");
    assert_eq!(access["provider"], "up", "{access}");
    assert_eq!(access["model"], "m1", "{access}");
    assert_eq!(access["attempts"], 2, "{access}");
    // The worker's usage record's tokens, on the same line (the ledger is on: "auto").
    assert_eq!(access["input_tokens"], 7, "{access}");
    assert_eq!(access["output_tokens"], 3, "{access}");
    let (duration, ttfb) = (access["duration_us"].as_u64(), access["ttfb_us"].as_u64());
    assert!(duration.is_some() && ttfb.is_some(), "{access}");
    assert!(ttfb <= duration, "{access}");

    let warning = wait_record(&run, "attempt failed", |r| {
        is_worker_0(r) && r["message"] == "attempt failed"
    });
    assert_eq!(warning["level"], "WARN", "{warning}");
    assert_eq!(warning["provider"], "dead", "{warning}");
    assert_eq!(warning["request_id"], id.as_str(), "{warning}");
}

/// `cargo install --path supervisor --locked` (debug, offline, into the workspace's target
/// directory so the built artifacts are reused) gives a binary that starts and stops.
#[test]
fn the_installed_supervisor_starts() {
    let target = bin_path("supervisor")
        .parent()
        .and_then(|d| d.parent())
        .expect("target/debug/supervisor")
        .to_path_buf();
    let root = tempfile::tempdir().unwrap();
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut install = Command::new(cargo);
    // The variables cargo sets for this test binary would reach build scripts that watch them
    // (ring's watches CARGO_MANIFEST_DIR) and make the next ordinary build redo them.
    for (k, _) in std::env::vars_os() {
        let k = k.to_string_lossy();
        if k.starts_with("CARGO_PKG_")
            || k.starts_with("CARGO_BIN_")
            || [
                "CARGO_MANIFEST_DIR",
                "CARGO_MANIFEST_PATH",
                "CARGO_CRATE_NAME",
                "CARGO_PRIMARY_PACKAGE",
                "CARGO_TARGET_TMPDIR",
                "CARGO_RUSTC_CURRENT_DIR",
                "OUT_DIR",
            ]
            .contains(&k.as_ref())
        {
            install.env_remove(k.as_ref());
        }
    }
    let out = install
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args([
            "install",
            "--path",
            "supervisor",
            "--locked",
            "--debug",
            "--offline",
        ])
        .arg("--root")
        .arg(root.path())
        .arg("--target-dir")
        .arg(&target)
        .output()
        .expect("run cargo install");
    assert!(
        out.status.success(),
        "cargo install failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let installed = root.path().join("bin/supervisor");
    let env = TestEnv::new(&config("probe_interval = \"0s\"", ""));
    let mut cmd = Command::new(&installed);
    cmd.args(["start", "--listen", "127.0.0.1:0", "-c"])
        .arg(&env.config_path)
        .env_remove("GATEWAY_CONFIG")
        .env_remove("NOTIFY_SOCKET")
        .env_remove("LISTEN_FDS")
        // The ledger in the test's directory, never the real home.
        .env("XDG_STATE_HOME", env.dir.path().join("state"))
        .env("RUST_LOG", "info");
    let mut guard = ChildGuard::spawn(cmd);
    let ready = guard
        .wait_event("ready", Duration::from_secs(20))
        .unwrap_or_else(|| panic!("no ready line; stderr:\n{}", guard.stderr()));
    let listen = ready["listen"].as_str().unwrap().parse().unwrap();
    assert_eq!(http::get(listen, "/healthz").unwrap().status, 200);
    guard.signal(nix::sys::signal::Signal::SIGTERM);
    let mut run = Running {
        guard,
        ready,
        listen,
    };
    run.expect_stopped_exit_0();
}

/// A standalone worker logs text for a person, and a warning from a response body (polled
/// after the handler returned) still names its request.
#[test]
fn a_standalone_worker_logs_text_with_the_request_id_on_body_warnings() {
    use support::worker::{config as worker_config, openai_provider, Worker};
    let up = Upstream::serving(
        "/v1/chat/completions",
        Script::sse_head().chunk("data: {\"n\":1}\n\n").reset(),
    );
    let provider = openai_provider("up", &up.url("/v1"), r#"["m1"]"#, "LOGS_UP_KEY", "");
    let w = Worker::start(&worker_config(&provider), &[("LOGS_UP_KEY", "k")]);
    let body = http::chat_body("m1", true).to_string();
    let mut s = http::Stream::open(
        w.addr,
        "POST",
        "/v1/chat/completions",
        &[("x-request-id", "rid-7")],
        Some(body.as_bytes()),
    )
    .unwrap();
    assert_eq!(s.header("x-gateway-provider"), Some("up"));
    assert_eq!(s.header("x-gateway-attempts"), Some("1"));
    s.read_cut("the upstream reset the stream");
    let mut line = None;
    wait_until(Duration::from_secs(10), || {
        line = w
            .guard
            .stderr()
            .lines()
            .find(|l| l.contains("stream cut short"))
            .map(str::to_string);
        line.is_some()
    });
    let line = line.unwrap_or_else(|| panic!("no warning; stderr:\n{}", w.guard.stderr()));
    assert!(!line.starts_with('{'), "text, not JSON: {line}");
    assert!(line.contains(" WARN request{request_id=rid-7}: "), "{line}");
}

/// A host app that never reads the supervisor's stderr: once the pipe is full, every write to it
/// would block. Lines go through a writer thread with a bounded queue, so requests keep flowing
/// (the lines that do not fit are dropped) and the supervisor still stops cleanly.
#[test]
fn a_stderr_nobody_reads_does_not_stall_requests() {
    let env = TestEnv::new(&config("", ""));
    let mut cmd = env.supervisor(&["start"]);
    // Debug lines too, so the 64 KiB pipe fills after a few requests.
    cmd.env("RUST_LOG", "debug");
    let mut run = Running::ready_from(ChildGuard::spawn_unread_stderr(cmd));
    let started = std::time::Instant::now();
    for i in 0..1500 {
        let r = http::post_chat(run.listen, "demo", false)
            .unwrap_or_else(|e| panic!("request {i} failed after {:?}: {e}", started.elapsed()));
        assert_eq!(r.status, 200, "request {i}: {}", r.text());
    }
    run.guard.signal(nix::sys::signal::Signal::SIGTERM);
    let status = run
        .guard
        .wait_exit(Duration::from_secs(10))
        .expect("the supervisor stops with its stderr unread");
    assert!(status.success(), "{status:?}");
}
