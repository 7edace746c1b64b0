//! `[[clients]]` rpm, tpm, daily_tokens and monthly_usd end to end, through the real
//! `supervisor start` binary, its workers and the mock provider: the limits hold for the whole
//! pool under concurrency, token limits trip at the request the mock's deterministic usage
//! predicts, a refusal is a 429 with `Retry-After` and an error in the caller's dialect, and the
//! counters survive a reload and (for budgets, through the ledger) a restart.

mod support;

use nix::sys::signal::Signal;
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Barrier};
use std::time::Duration;
use support::front::parse_exposition;
use support::http::{self, chat_body, CHAT};
use support::process::{wait_until, PoolConfig, Running, TestEnv};

const TOKEN_ENV: &str = "LIMITS_DESK_TOKEN";
const TOKEN: &str = "desk-token-for-limits";
const AUTH: (&str, &str) = ("authorization", "Bearer desk-token-for-limits");

/// `workers` workers, the mock `demo` priced at $1 / $2 per 1M input / output tokens, the
/// ledger in the test directory, and client `desk` with `limits` (TOML keys, one per line).
fn config(workers: u32, limits: &str) -> String {
    let extra = format!(
        r#"prices = {{ "demo" = {{ input = 1.0, output = 2.0 }} }}

[usage]
ledger = "{{RUNTIME_DIR}}/../ledger/usage.db"

[[clients]]
name = "desk"
token_env = "{TOKEN_ENV}"
{limits}
"#
    );
    PoolConfig::new(workers).extra(&extra).build()
}

fn start(env: &TestEnv) -> Running {
    let mut cmd = env.supervisor(&["start"]);
    cmd.env(TOKEN_ENV, TOKEN);
    Running::ready(cmd)
}

fn ledger(env: &TestEnv) -> std::path::PathBuf {
    env.dir.path().join("ledger/usage.db")
}

fn ledger_rows(path: &Path) -> usize {
    if !path.exists() {
        return 0;
    }
    let c = rusqlite::Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
        .unwrap();
    c.query_row("SELECT COUNT(*) FROM usage", [], |r| r.get::<_, i64>(0))
        .map_or(0, |n| n as usize)
}

/// One chat request as `desk`.
fn chat(addr: SocketAddr) -> http::Response {
    let body = chat_body("demo", false).to_string();
    http::request(addr, "POST", CHAT, &[AUTH], Some(body.as_bytes())).unwrap()
}

/// A chat request, then (when it passed) a wait until its usage record reached the supervisor:
/// its ledger row, which is written after the record settled into the client's counters.
fn chat_settled(env: &TestEnv, addr: SocketAddr, rows: &mut usize) -> http::Response {
    let r = chat(addr);
    if r.status == 200 {
        *rows += 1;
        let want = *rows;
        assert!(
            wait_until(Duration::from_secs(10), || ledger_rows(&ledger(env))
                >= want),
            "no ledger row for request {want}"
        );
    }
    r
}

/// A 429 from a limit: `Retry-After` within `max` seconds, the OpenAI error shape naming the
/// client and `limit`.
fn assert_limited(r: &http::Response, limit: &str, max: u64) {
    assert_eq!(r.status, 429, "{}", r.text());
    let after: u64 = r
        .header("retry-after")
        .expect("Retry-After on a limit's 429")
        .parse()
        .unwrap();
    assert!((1..=max).contains(&after), "Retry-After {after}");
    let v = r.json();
    assert_eq!(v["error"]["type"], "rate_limit_error", "{v}");
    let msg = v["error"]["message"].as_str().unwrap();
    assert!(
        msg.contains(&format!("client `desk` is over its {limit} limit")),
        "{msg}"
    );
}

/// `gateway_client_limited_total{client="desk",limit}` on the supervisor's /metrics.
fn limited(addr: SocketAddr, limit: &str) -> f64 {
    let r = http::request(addr, "GET", "/metrics", &[AUTH], None).unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    let (_, samples) = parse_exposition(&r.text());
    samples
        .iter()
        .filter(|s| s.name == "gateway_client_limited_total")
        .filter(|s| s.labels.iter().any(|(k, v)| k == "client" && v == "desk"))
        .filter(|s| s.labels.iter().any(|(k, v)| k == "limit" && v == limit))
        .map(|s| s.value)
        .sum()
}

/// Input + output tokens the mock reports for `chat_body("demo", false)`, from a response.
fn tokens_of(r: &http::Response) -> (u64, u64) {
    let u = &r.json()["usage"];
    (
        u["prompt_tokens"].as_u64().unwrap(),
        u["completion_tokens"].as_u64().unwrap(),
    )
}

#[test]
fn rpm_holds_for_the_whole_pool_under_concurrency() {
    let env = TestEnv::new(&config(3, "rpm = 10"));
    let run = start(&env);
    let addr = run.listen;
    let go = Arc::new(Barrier::new(50));
    let answers: Vec<http::Response> = (0..50)
        .map(|_| {
            let go = go.clone();
            std::thread::spawn(move || {
                go.wait();
                chat(addr)
            })
        })
        .collect::<Vec<_>>()
        .into_iter()
        .map(|t| t.join().unwrap())
        .collect();
    let ok: Vec<_> = answers.iter().filter(|r| r.status == 200).collect();
    assert_eq!(ok.len(), 10, "exactly rpm requests pass");
    let workers: std::collections::HashSet<_> = ok
        .iter()
        .filter_map(|r| r.header("x-gateway-worker"))
        .collect();
    assert!(
        workers.len() > 1,
        "the passing requests spread over workers: {workers:?}"
    );
    for r in answers.iter().filter(|r| r.status != 200) {
        assert_limited(r, "rpm", 60);
        assert!(
            r.error_message().contains("(10 per minute)"),
            "{}",
            r.text()
        );
    }
    // On /v1/messages the refusal is in Anthropic's shape.
    let body = json!({"model": "demo", "max_tokens": 16,
                      "messages": [{"role": "user", "content": "hi"}]})
    .to_string();
    let m = http::request(addr, "POST", "/v1/messages", &[AUTH], Some(body.as_bytes())).unwrap();
    assert_eq!(m.status, 429, "{}", m.text());
    assert!(m.header("retry-after").is_some());
    let v: Value = m.json();
    assert_eq!(v["type"], "error", "{v}");
    assert_eq!(v["error"]["type"], "rate_limit_error", "{v}");
    let msg = v["error"]["message"].as_str().unwrap();
    assert!(msg.contains("client `desk` is over its rpm limit"), "{msg}");
    assert_eq!(limited(addr, "rpm"), 41.0);
}

#[test]
fn tpm_trips_at_the_request_after_the_used_tokens_reach_it() {
    // The mock's usage for one request is fixed; the limit is checked on what was used before
    // each request, so request k passes while (k - 1) * per_request < tpm.
    let tpm: u64 = 40;
    let env = TestEnv::new(&config(1, &format!("tpm = {tpm}")));
    let run = start(&env);
    let mut rows = 0;
    let first = chat_settled(&env, run.listen, &mut rows);
    assert_eq!(first.status, 200, "{}", first.text());
    let (i, o) = tokens_of(&first);
    let per = i + o;
    let trip = tpm.div_ceil(per) + 1;
    assert!(
        trip > 2,
        "the test needs several requests to pass (per request: {per})"
    );
    for k in 2..trip {
        let r = chat_settled(&env, run.listen, &mut rows);
        assert_eq!(r.status, 200, "request {k} of {trip}: {}", r.text());
    }
    let r = chat(run.listen);
    assert_limited(&r, "tpm", 60);
    assert!(r.error_message().contains("(40 tokens per minute)"));
    assert_eq!(limited(run.listen, "tpm"), 1.0);
}

#[test]
fn daily_tokens_trip_at_the_right_request_and_a_restart_keeps_the_budget() {
    let daily: u64 = 40;
    let env = TestEnv::new(&config(1, &format!("daily_tokens = {daily}")));
    let mut run = start(&env);
    let mut rows = 0;
    let first = chat_settled(&env, run.listen, &mut rows);
    assert_eq!(first.status, 200, "{}", first.text());
    let (i, o) = tokens_of(&first);
    let trip = daily.div_ceil(i + o) + 1;
    assert!(trip > 2, "per request: {}", i + o);
    for k in 2..trip {
        let r = chat_settled(&env, run.listen, &mut rows);
        assert_eq!(r.status, 200, "request {k} of {trip}: {}", r.text());
    }
    let r = chat(run.listen);
    assert_limited(&r, "daily_tokens", 86_400);

    // Stop, start again on the same ledger: the day's use is read back, the budget stays spent.
    run.guard.signal(Signal::SIGTERM);
    run.expect_stopped_exit_0();
    let run = start(&env);
    let r = chat(run.listen);
    assert_limited(&r, "daily_tokens", 86_400);
}

#[test]
fn monthly_usd_trips_on_the_priced_model() {
    // $1 / $2 per 1M tokens: a request costs (i + 2 o) / 1e6; the budget allows `trip - 1`.
    let env0 = TestEnv::new(&config(1, ""));
    let probe = start(&env0);
    let (i, o) = tokens_of(&chat(probe.listen));
    drop(probe);
    let per = (i + 2 * o) as f64 / 1e6;
    let budget = per * 2.5;
    let env = TestEnv::new(&config(1, &format!("monthly_usd = {budget}")));
    let run = start(&env);
    let mut rows = 0;
    for k in 1..=3 {
        let r = chat_settled(&env, run.listen, &mut rows);
        assert_eq!(r.status, 200, "request {k}: {}", r.text());
    }
    let r = chat(run.listen);
    assert_limited(&r, "monthly_usd", 31 * 86_400);
    assert_eq!(limited(run.listen, "monthly_usd"), 1.0);
}

#[test]
fn a_reload_keeps_the_counters() {
    let env = TestEnv::new(&config(1, "rpm = 3"));
    let run = start(&env);
    for _ in 0..3 {
        assert_eq!(chat(run.listen).status, 200);
    }
    assert_limited(&chat(run.listen), "rpm", 60);
    // A higher limit: only the difference passes, the three already counted still count.
    env.write_config(&config(1, "rpm = 5"));
    let out = env.supervisor(&["reload"]).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for k in 0..2 {
        let r = chat(run.listen);
        assert_eq!(r.status, 200, "request {k} after the reload: {}", r.text());
    }
    let r = chat(run.listen);
    assert_limited(&r, "rpm", 60);
    assert!(
        r.error_message().contains("(5 per minute)"),
        "the new limit applies"
    );
}

#[test]
fn a_workers_own_port_is_no_way_around_the_limits() {
    let env = TestEnv::new(&config(1, "rpm = 1"));
    let run = start(&env);
    let port = env.status_json()["workers"][0]["port"].as_u64().unwrap() as u16;
    let worker: SocketAddr = ([127, 0, 0, 1], port).into();
    for _ in 0..3 {
        let r = chat(worker);
        assert_eq!(r.status, 403, "{}", r.text());
        assert!(
            r.error_message().contains("only the front listener counts"),
            "{}",
            r.text()
        );
    }
    // The front still admits the one request the limit allows: the refusals cost nothing.
    assert_eq!(chat(run.listen).status, 200);
    assert_eq!(chat(run.listen).status, 429);
}
