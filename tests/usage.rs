//! Usage end to end, through the real `supervisor start` binary, its workers, the mock provider
//! and a real HTTP upstream on 127.0.0.1: every finished request lands in the SQLite ledger with
//! the tokens the upstream reported and its cost, a Chat stream's client sees exactly what it
//! asked for, a broken stream still leaves its row, a SIGKILLed worker loses no record of a
//! finished request, and `supervisor usage` sums the rows. Also the front's private usage
//! headers: a caller's claims count for nothing, and a worker's private socket takes the front's
//! peek of the body where its port does not.

mod support;

use nix::sys::signal::Signal;
use std::path::{Path, PathBuf};
use std::time::Duration;
use support::http::{self, chat_body, Stream, CHAT};
use support::process::{signal, wait_until, ChildGuard, Running, TestEnv};
use support::upstream::{Script, Upstream};

fn config(workers: u32, up: &Upstream) -> String {
    config_with(workers, up, "{RUNTIME_DIR}/../ledger/usage.db", "")
}

/// The test configuration with its `usage.ledger` and extra tables.
fn config_with(workers: u32, up: &Upstream, ledger: &str, extra: &str) -> String {
    let base = up.url("");
    let base = base.trim_end_matches('/');
    format!(
        r#"
[server]
listen = "127.0.0.1:0"
auth_token_env = ""

[pool]
workers = {workers}
base_port = 0
runtime_dir = "{{RUNTIME_DIR}}"
heartbeat_interval = "200ms"
heartbeat_timeout = "2s"
startup_timeout = "10s"
shutdown_timeout = "3s"
restart_backoff_initial = "50ms"

[health]
probe_interval = "0s"

[usage]
ledger = "{ledger}"

[[providers]]
name = "demo"
kind = "mock"
models = ["demo", "demo-free"]
prices = {{ "demo" = {{ input = 1.0, output = 2.0 }} }}

[[providers]]
name = "up"
kind = "openai"
base_url = "{base}/v1"
models = ["up-model", "free", "broken"]
prices = {{ "up-model" = {{ input = 3.0, output = 5.0, cache_read = 0.5 }} }}

[[providers]]
name = "claude"
kind = "anthropic"
base_url = "{base}"
models = ["claude-x"]
prices = {{ "claude-x" = {{ input = 1.0, output = 1.0, cache_read = 0.1 }} }}
{extra}
"#
    )
}

fn ledger_path(env: &TestEnv) -> PathBuf {
    env.dir.path().join("ledger/usage.db")
}

/// One ledger row, as the test reads it.
#[derive(Debug)]
struct Row {
    model: String,
    provider: String,
    input: i64,
    output: i64,
    cache_read: i64,
    cost: Option<f64>,
    outcome: String,
    streamed: bool,
    worker: Option<i64>,
    request_id: String,
    client: String,
    status: i64,
}

fn rows(path: &Path) -> Vec<Row> {
    if !path.exists() {
        return Vec::new();
    }
    let c = rusqlite::Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
        .unwrap();
    let mut st = c
        .prepare(
            "SELECT model_served, provider, input_tokens, output_tokens, cache_read_tokens,
                    cost_usd, outcome, streamed, worker, request_id, client, status
             FROM usage ORDER BY id",
        )
        .unwrap();
    st.query_map([], |r| {
        Ok(Row {
            model: r.get(0)?,
            provider: r.get(1)?,
            input: r.get(2)?,
            output: r.get(3)?,
            cache_read: r.get(4)?,
            cost: r.get(5)?,
            outcome: r.get(6)?,
            streamed: r.get(7)?,
            worker: r.get(8)?,
            request_id: r.get(9)?,
            client: r.get(10)?,
            status: r.get(11)?,
        })
    })
    .unwrap()
    .collect::<Result<_, _>>()
    .unwrap()
}

/// Waits (with a deadline: batches are written every 500 ms) until the ledger has `n` rows.
fn wait_rows(path: &Path, n: usize) -> Vec<Row> {
    let ok = wait_until(Duration::from_secs(10), || rows(path).len() >= n);
    let got = rows(path);
    assert!(ok, "expected {n} ledger rows, got {}: {got:#?}", got.len());
    got
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-12
}

#[test]
fn requests_land_in_the_ledger_with_tokens_cost_and_the_stream_the_client_asked_for() {
    let up = Upstream::start();
    let env = TestEnv::new(&config(2, &up));
    let run: Running = env.start(&[]);
    let ledger = ledger_path(&env);

    // 1. The mock, not streamed: its reported usage is what the row must hold.
    let r = http::post_chat(run.listen, "demo", false).unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    let usage = r.json()["usage"].clone();
    let (mock_in, mock_out) = (
        usage["prompt_tokens"].as_i64().unwrap(),
        usage["completion_tokens"].as_i64().unwrap(),
    );
    assert!(mock_in > 0 && mock_out > 0, "{usage}");

    // 2. The mock, streamed, the client not asking for usage: no usage chunk reaches it.
    let r = http::post_chat(run.listen, "demo", true).unwrap();
    assert_eq!(r.status, 200);
    let text = r.text();
    assert!(text.contains("[DONE]"), "{text}");
    assert!(
        !text.contains("\"usage\""),
        "the client did not ask for usage: {text}"
    );

    // 3. The mock, streamed, the client asking: it gets its usage chunk.
    let mut asked = chat_body("demo", true);
    asked["stream_options"] = serde_json::json!({"include_usage": true});
    let r = http::post_json(run.listen, CHAT, &asked).unwrap();
    assert!(r.text().contains("\"usage\""), "asked for: {}", r.text());

    // 4. A real upstream, not streamed, with cached tokens.
    up.enqueue(
        "/v1/chat/completions",
        Script::chat_with_usage("up-model", 11, 3, 7),
    );
    let r = http::post_chat(run.listen, "up-model", false).unwrap();
    assert_eq!(r.status, 200, "{}", r.text());

    // 5. A real upstream, streamed: the gateway asks it for usage, the client does not see it.
    up.enqueue(
        "/v1/chat/completions",
        Script::chat_stream_with_usage("up-model", 13, 4),
    );
    let r = http::post_chat(run.listen, "up-model", true).unwrap();
    assert_eq!(r.status, 200);
    let text = r.text();
    assert!(text.contains("\"hi\"") && text.contains("[DONE]"), "{text}");
    assert!(!text.contains("\"usage\""), "{text}");
    let sent = up.requests().last().unwrap().json();
    assert_eq!(sent["stream_options"]["include_usage"], true, "{sent}");

    // 6. An Anthropic stream: message_start (input, cache read) + message_delta (output).
    up.enqueue(
        "/v1/messages",
        Script::messages_stream_with_usage("claude-x", 20, 4, 9),
    );
    let body = serde_json::json!({"model": "claude-x", "max_tokens": 50, "stream": true,
                                  "messages": [{"role": "user", "content": "hi"}]});
    let r = http::post_json(run.listen, "/v1/messages", &body).unwrap();
    assert_eq!(r.status, 200, "{}", r.text());

    // 7. A model with no price.
    up.enqueue(
        "/v1/chat/completions",
        Script::chat_with_usage("free", 5, 0, 5),
    );
    assert_eq!(
        http::post_chat(run.listen, "free", false).unwrap().status,
        200
    );

    let rows = wait_rows(&ledger, 7);
    let demo: Vec<&Row> = rows.iter().filter(|r| r.model == "demo").collect();
    assert_eq!(demo.len(), 3);
    for r in &demo {
        assert_eq!((r.input, r.output), (mock_in, mock_out), "{r:?}");
        let want = (mock_in as f64 * 1.0 + mock_out as f64 * 2.0) / 1e6;
        assert!(close(r.cost.unwrap(), want), "{r:?}");
        assert_eq!(r.outcome, "ok");
        assert_eq!(r.provider, "demo");
        assert!(r.worker.is_some(), "{r:?}");
        assert!(!r.request_id.is_empty());
    }
    assert_eq!(demo.iter().filter(|r| r.streamed).count(), 2);
    let up_rows: Vec<&Row> = rows.iter().filter(|r| r.model == "up-model").collect();
    assert_eq!(
        (up_rows[0].input, up_rows[0].cache_read, up_rows[0].output),
        (8, 3, 7)
    );
    assert!(close(
        up_rows[0].cost.unwrap(),
        (8.0 * 3.0 + 3.0 * 0.5 + 7.0 * 5.0) / 1e6
    ));
    assert_eq!(
        (up_rows[1].input, up_rows[1].output),
        (13, 4),
        "{:?}",
        up_rows[1]
    );
    assert!(up_rows[1].streamed);
    let claude = rows.iter().find(|r| r.model == "claude-x").unwrap();
    assert_eq!(
        (claude.input, claude.cache_read, claude.output),
        (20, 4, 9),
        "{claude:?}"
    );
    let free = rows.iter().find(|r| r.model == "free").unwrap();
    assert_eq!(free.cost, None, "no price, no cost (not $0)");
    assert_eq!((free.input, free.output), (5, 5));

    // `supervisor usage --by model --json` sums the same rows, read-only beside the writer.
    let out = env
        .supervisor(&["usage", "--by", "model", "--json"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let by: std::collections::HashMap<String, serde_json::Value> = v["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["model"].as_str().unwrap().to_string(), r.clone()))
        .collect();
    assert_eq!(by["demo"]["requests"], 3);
    assert_eq!(by["demo"]["input_tokens"], 3 * mock_in);
    assert_eq!(by["up-model"]["input_tokens"], 8 + 13);
    assert_eq!(by["up-model"]["output_tokens"], 7 + 4);
    assert!(by["free"]["cost_usd"].is_null(), "{}", by["free"]);
    assert_eq!(by["free"]["unpriced_requests"], 1);

    // The supervisor's counter of written records.
    let m = http::get(run.listen, "/metrics").unwrap().text();
    assert!(
        m.lines()
            .any(|l| l == "gateway_usage_records_total{outcome=\"written\"} 7"),
        "{m}"
    );
}

#[test]
fn a_broken_stream_leaves_a_row_with_its_outcome() {
    let up = Upstream::start();
    let env = TestEnv::new(&config(1, &up));
    let run = env.start(&[]);
    let first = "data: {\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"broken\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"hi\"},\"finish_reason\":null}]}\n\n";
    up.enqueue("/v1/chat/completions", Script::sse(&[first]).reset());
    let mut s = Stream::chat(run.listen, "broken", true).unwrap();
    assert_eq!(s.status, 200);
    let _ = s.read_to_end();
    let rows = wait_rows(&ledger_path(&env), 1);
    assert_eq!(rows[0].model, "broken");
    assert_eq!(rows[0].outcome, "stream_error", "{:?}", rows[0]);
    assert!(rows[0].streamed);
}

/// A stream that breaks after its `message_start` keeps the input tokens it reported.
#[test]
fn a_broken_anthropic_stream_keeps_the_tokens_counted_before_the_break() {
    let up = Upstream::start();
    let env = TestEnv::new(&config(1, &up));
    let run = env.start(&[]);
    let start = "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"m\",\"type\":\"message\",\"role\":\"assistant\",\"model\":\"claude-x\",\"content\":[],\"usage\":{\"input_tokens\":21,\"cache_read_input_tokens\":2,\"output_tokens\":1}}}\n\n";
    up.enqueue("/v1/messages", Script::sse(&[start]).reset());
    let body = serde_json::json!({"model": "claude-x", "max_tokens": 50, "stream": true,
                                  "messages": [{"role": "user", "content": "hi"}]});
    let mut s = Stream::post_json(run.listen, "/v1/messages", &body).unwrap();
    assert_eq!(s.status, 200);
    let _ = s.read_to_end();
    let rows = wait_rows(&ledger_path(&env), 1);
    assert_eq!(rows[0].outcome, "stream_error", "{:?}", rows[0]);
    assert_eq!(
        (rows[0].input, rows[0].cache_read, rows[0].output),
        (21, 2, 1)
    );
    // Priced (1 USD per million input, output and cache read at 0.1).
    assert!(
        close(rows[0].cost.unwrap(), (21.0 + 1.0 + 0.2) / 1e6),
        "{:?}",
        rows[0]
    );
}

/// Error answers leave one row each: the provider's 4xx passed on, a 5xx after the last
/// attempt, with their status, no tokens and no cost.
#[test]
fn error_answers_leave_a_row_with_their_status_and_no_cost() {
    let up = Upstream::start();
    let env = TestEnv::new(&config(1, &up));
    let run = env.start(&[]);
    let err = serde_json::json!({"error": {"message": "bad", "type": "invalid_request_error"}});
    up.enqueue("/v1/chat/completions", Script::json(400, err.clone()));
    assert_eq!(
        http::post_chat(run.listen, "up-model", false)
            .unwrap()
            .status,
        400
    );
    up.enqueue("/v1/chat/completions", Script::json(503, err));
    assert_eq!(
        http::post_chat(run.listen, "up-model", true)
            .unwrap()
            .status,
        503
    );
    let rows = wait_rows(&ledger_path(&env), 2);
    assert_eq!(rows.len(), 2, "{rows:#?}");
    let statuses: Vec<i64> = rows.iter().map(|r| r.status).collect();
    assert_eq!(statuses, [400, 503]);
    for r in &rows {
        assert_eq!(
            (r.outcome.as_str(), r.provider.as_str()),
            ("error", "up"),
            "{r:?}"
        );
        assert_eq!((r.input, r.output, r.cost), (0, 0, None), "{r:?}");
        assert_eq!(r.model, "up-model");
    }
}

#[test]
fn a_worker_killed_right_after_its_responses_loses_no_record() {
    let up = Upstream::start();
    let env = TestEnv::new(&config(1, &up));
    let run = env.start(&[]);
    for _ in 0..5 {
        let r = http::post_chat(run.listen, "demo", false).unwrap();
        assert_eq!(r.status, 200);
    }
    let pid = env.status_json()["workers"][0]["pid"].as_u64().unwrap() as u32;
    signal(pid, Signal::SIGKILL);
    let rows = wait_rows(&ledger_path(&env), 5);
    assert!(rows.iter().all(|r| r.model == "demo" && r.outcome == "ok"));
    drop(run);
}

/// `supervisor start` with `vars` set, waiting for its ready line.
fn start_with(env: &TestEnv, vars: &[(&str, &str)]) -> ChildGuard {
    let mut cmd = env.supervisor(&["start"]);
    for (k, v) in vars {
        cmd.env(k, v);
    }
    let mut g = ChildGuard::spawn(cmd);
    g.wait_event("ready", Duration::from_secs(20))
        .unwrap_or_else(|| panic!("no ready line; stderr:\n{}", g.stderr()));
    g
}

/// The front's private headers (the client's name, what it read from the body) are the front's
/// own: a caller's claims of them change nothing, and none reaches the provider.
#[test]
fn the_row_names_the_client_the_front_admitted_never_a_claimed_one() {
    let up = Upstream::start();
    let clients = "[[clients]]\nname = \"desk\"\ntoken_env = \"USAGE_TEST_DESK\"\n";
    let env = TestEnv::new(&config_with(
        1,
        &up,
        "{RUNTIME_DIR}/../ledger/usage.db",
        clients,
    ));
    let mut g = start_with(&env, &[("USAGE_TEST_DESK", "desk-token-0123456789")]);
    let addr: std::net::SocketAddr = {
        let st = env.status_json();
        st["listen"].as_str().unwrap().parse().unwrap()
    };
    up.set(CHAT, Script::chat_with_usage("up-model", 3, 0, 4));
    let body = chat_body("up-model", false).to_string();
    let r = http::request(
        addr,
        "POST",
        CHAT,
        &[
            ("authorization", "Bearer desk-token-0123456789"),
            ("x-gateway-client", "someone-else"),
            ("x-gateway-peeked", "1unknown-model"),
        ],
        Some(body.as_bytes()),
    )
    .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(
        r.header("content-type").unwrap_or("").contains("json"),
        "the body's `stream: false` holds, not the claimed one"
    );
    let rows = wait_rows(&ledger_path(&env), 1);
    assert_eq!(rows[0].client, "desk", "{:?}", rows[0]);
    assert!(!rows[0].streamed, "{:?}", rows[0]);
    let sent = up.requests();
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].json()["model"], "up-model");
    for private in ["x-gateway-client", "x-gateway-peeked"] {
        assert_eq!(
            sent[0].header(private),
            None,
            "{private} reached the provider"
        );
    }
    g.signal(Signal::SIGTERM);
    assert!(g.wait_exit(Duration::from_secs(20)).is_some());
}

/// On its private socket a worker takes the front's word on the body (`x-gateway-peeked`) and
/// does not parse it again; on its port the same claim counts for nothing and the body is
/// parsed. The body here is not JSON, so a worker that parsed it would answer 400.
#[test]
fn a_pooled_worker_takes_the_fronts_peek_and_its_port_does_not() {
    use std::io::{Read, Write};
    let up = Upstream::start();
    let env = TestEnv::new(&config(1, &up));
    let mut g = start_with(&env, &[]);
    up.set(CHAT, Script::chat_with_usage("up-model", 3, 0, 4));
    let body = b"not json: only the front's peek names the model";
    let head = format!(
        "POST {CHAT} HTTP/1.1\r\nhost: localhost\r\ncontent-type: application/json\r\n\
         content-length: {}\r\nx-gateway-peeked: 0up-model\r\nconnection: close\r\n\r\n",
        body.len()
    );
    // As the front does: the worker's private socket in the runtime dir.
    let sock = env.runtime_dir().join("worker-0.sock");
    let mut s = std::os::unix::net::UnixStream::connect(&sock).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(head.as_bytes()).unwrap();
    s.write_all(body).unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    let sent = up.requests();
    assert_eq!(sent.len(), 1);
    assert_eq!(&sent[0].body[..], body, "the body went on as it came");
    assert_eq!(sent[0].header("x-gateway-peeked"), None);

    let port = env.status_json()["workers"][0]["port"].as_u64().unwrap() as u16;
    let r = http::request(
        ([127, 0, 0, 1], port).into(),
        "POST",
        CHAT,
        &[
            ("content-type", "application/json"),
            ("x-gateway-peeked", "0up-model"),
        ],
        Some(body),
    )
    .unwrap();
    assert_eq!(r.status, 400, "{}", r.text());
    assert_eq!(up.request_count(), 1, "nothing more reached the provider");
    g.signal(Signal::SIGTERM);
    assert!(g.wait_exit(Duration::from_secs(20)).is_some());
}

#[test]
fn a_ledger_that_cannot_be_opened_fails_start_naming_its_path() {
    let up = Upstream::start();
    let env = TestEnv::new(&config_with(
        1,
        &up,
        "{RUNTIME_DIR}/../blocker/usage.db",
        "",
    ));
    // A file where the ledger's directory would be.
    std::fs::write(env.dir.path().join("blocker"), "not a directory").unwrap();
    let mut g = ChildGuard::spawn(env.supervisor(&["start"]));
    let failed = g
        .wait_event("failed", Duration::from_secs(20))
        .unwrap_or_else(|| panic!("no failed line; stderr:\n{}", g.stderr()));
    assert_eq!(failed["code"], 1, "{failed}");
    let msg = failed["error"].as_str().unwrap();
    assert!(msg.contains("blocker/usage.db"), "{msg}");
    let st = g.wait_exit(Duration::from_secs(10)).expect("exits");
    assert_eq!(st.code(), Some(1));
}

#[test]
fn a_supervisor_killed_while_writing_leaves_a_ledger_that_opens_clean() {
    let up = Upstream::start();
    let env = TestEnv::new(&config(2, &up));
    let run = env.start(&[]);
    let addr = run.listen;
    let ledger = ledger_path(&env);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load: Vec<_> = (0..4)
        .map(|_| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                    let _ = http::post_chat(addr, "demo", false);
                }
            })
        })
        .collect();
    // Batches are being written: kill the supervisor in the middle of them.
    wait_rows(&ledger, 50);
    signal(run.guard.pid(), Signal::SIGKILL);
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    for t in load {
        t.join().unwrap();
    }
    let c = rusqlite::Connection::open(&ledger).unwrap();
    let check: String = c
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(check, "ok");
    let out = env.supervisor(&["usage", "--json"]).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(v["rows"][0]["requests"].as_i64().unwrap() >= 50, "{v}");
    drop(run);
}

#[test]
fn a_burst_of_concurrent_requests_is_written_whole() {
    let up = Upstream::start();
    let env = TestEnv::new(&config(2, &up));
    let run = env.start(&[]);
    let addr = run.listen;
    let threads: Vec<_> = (0..32)
        .map(|_| {
            std::thread::spawn(move || {
                for _ in 0..25 {
                    let r = http::post_chat(addr, "demo", false).unwrap();
                    assert_eq!(r.status, 200);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let rows = wait_rows(&ledger_path(&env), 800);
    assert_eq!(rows.len(), 800);
    let m = http::get(run.listen, "/metrics").unwrap().text();
    assert!(
        !m.lines().any(
            |l| l.starts_with("gateway_usage_records_total{outcome=\"dropped\"}")
                && !l.ends_with(" 0")
        ),
        "{m}"
    );
}

/// A translated stream (a Chat client, an Anthropic provider) is counted from its translator's
/// usage: the row has the tokens of a finished stream, and those reported before a break.
#[test]
fn a_translated_stream_is_counted_finished_or_broken() {
    let up = Upstream::start();
    let env = TestEnv::new(&config(1, &up));
    let run = env.start(&[]);
    let start = "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"m\",\"type\":\"message\",\"role\":\"assistant\",\"model\":\"claude-x\",\"content\":[],\"usage\":{\"input_tokens\":21,\"cache_read_input_tokens\":2,\"output_tokens\":1}}}\n\n";
    let rest = [
        "event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n",
        "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"hi\"}}\n\n",
        "event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":0}\n\n",
        "event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\"},\"usage\":{\"output_tokens\":7}}\n\n",
        "event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n",
    ];
    let whole: Vec<&str> = std::iter::once(start).chain(rest).collect();
    up.enqueue("/v1/messages", Script::sse(&whole));
    up.enqueue("/v1/messages", Script::sse(&[start]).reset());
    let body = serde_json::json!({"model": "claude-x", "stream": true,
                                  "messages": [{"role": "user", "content": "hi"}]});
    for _ in 0..2 {
        let mut s = Stream::post_json(run.listen, CHAT, &body).unwrap();
        assert_eq!(s.status, 200);
        let _ = s.read_to_end();
    }
    let rows = wait_rows(&ledger_path(&env), 2);
    let got: Vec<_> = rows
        .iter()
        .map(|r| (r.outcome.as_str(), r.input, r.cache_read, r.output))
        .collect();
    assert_eq!(
        got,
        [("ok", 21, 2, 7), ("stream_error", 21, 2, 1)],
        "{rows:#?}"
    );
}
