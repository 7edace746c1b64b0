//! The front listener end to end, beyond forwarding: `/v1/models` with every worker stopped,
//! tokens, Host, body size and client limits, sticky routing, CORS, a strictly parsed
//! `/metrics`, and in-flight accounting across a thousand client disconnects.

mod support;

use nix::sys::signal::Signal;
use std::collections::HashSet;
use std::io::Write;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use support::front::*;
use support::http::{self, Stream};
use support::process::{descendants, signal, wait_until, TestEnv};

#[test]
fn models_answer_fast_while_every_worker_is_stopped() {
    // A short ttl: every call finds the list stale and asks for a refresh that cannot finish.
    let tail = "[models_cache]\nttl = \"50ms\"\nmin_refresh_interval = \"50ms\"";
    // A long heartbeat timeout: the stopped workers are not replaced during the test.
    let text = config(2, "", "", tail)
        .replace("heartbeat_timeout = \"2s\"", "heartbeat_timeout = \"30s\"");
    let env = TestEnv::new(&text);
    let run = env.start(&[]);
    assert_eq!(http::get(run.listen, "/v1/models").unwrap().status, 200);
    let workers = descendants(run.guard.pid());
    assert!(!workers.is_empty());
    struct Cont(Vec<u32>);
    impl Drop for Cont {
        fn drop(&mut self) {
            self.0.iter().for_each(|p| signal(*p, Signal::SIGCONT));
        }
    }
    let _cont = Cont(workers.clone());
    workers.iter().for_each(|p| signal(*p, Signal::SIGSTOP));
    let mut times = Vec::new();
    for _ in 0..5 {
        let t = Instant::now();
        let r = http::get(run.listen, "/v1/models").unwrap();
        times.push(t.elapsed());
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(r.status, 200);
        let ids: Vec<String> = r.json()["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["id"].as_str().unwrap().into())
            .collect();
        assert!(ids.contains(&"demo".to_string()), "{ids:?}");
    }
    times.sort();
    assert!(
        times[2] < Duration::from_millis(100),
        "/v1/models took {times:?}"
    );
}

#[test]
fn auth_host_size_and_client_limits() {
    std::env::set_var("FRONT_E2E_SERVER_TOKEN", "server-secret");
    std::env::set_var("FRONT_E2E_CLIENT_TOKEN", "client-secret");
    let tail = "[[clients]]\nname = \"desk\"\ntoken_env = \"FRONT_E2E_CLIENT_TOKEN\"\nmax_concurrency = 1\n";
    let server = "auth_token_env = \"FRONT_E2E_SERVER_TOKEN\"\nmax_body_bytes = 2000\nallowed_hosts = [\"gw.test\"]";
    let text =
        config(2, "queue_timeout = \"800ms\"", "", tail).replace("auth_token_env = \"\"\n", "");
    let env = TestEnv::new(&text.replace("[server]\n", &format!("[server]\n{server}\n")));
    let run = env.start(&[]);
    let addr = run.listen;
    assert_eq!(chat(addr, "demo", &[]).status, 401);
    assert_eq!(
        chat(addr, "demo", &[("authorization", "Bearer wrong")]).status,
        401
    );
    assert_eq!(
        chat(addr, "demo", &[("authorization", "Bearer server-secret")]).status,
        200
    );
    assert_eq!(
        chat(addr, "demo", &[("x-api-key", "client-secret")]).status,
        200
    );
    // 413: over max_body_bytes.
    let big = serde_json::json!({"model": "demo", "pad": "x".repeat(4000)}).to_string();
    let r = http::request(
        addr,
        "POST",
        "/v1/chat/completions",
        &[("x-api-key", "server-secret")],
        Some(big.as_bytes()),
    )
    .unwrap();
    assert_eq!(r.status, 413);
    // 421: a Host that is not ours (raw request: the helper always sends the real address).
    assert_eq!(raw_host_status(addr, "evil.example"), 421);
    assert_eq!(raw_host_status(addr, "gw.test:8080"), 200);
    // 429: the client's one place is taken, the second request waits, then is refused.
    let mut hold = open_stream(addr, "slow", &[("x-api-key", "client-secret")]);
    hold.next_chunk().unwrap();
    let r = chat(addr, "demo", &[("x-api-key", "client-secret")]);
    assert_eq!(r.status, 429, "{}", r.text());
    assert_eq!(
        chat(addr, "demo", &[("x-api-key", "server-secret")]).status,
        200,
        "others are not limited"
    );
}

fn raw_host_status(addr: SocketAddr, host: &str) -> u16 {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    let b = body("demo", false);
    let head = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\nx-api-key: server-secret\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
        b.len()
    );
    s.write_all(head.as_bytes()).unwrap();
    s.write_all(&b).unwrap();
    Stream::from_stream(s, false).unwrap().status
}

#[test]
fn sticky_sessions_and_cors_preflight() {
    let (_env, run) = start(3, "", "cors_allow_origins = [\"tauri://localhost\"]", "");
    let addr = run.listen;
    for session in ["s-one", "s-two", "s-three", "s-four"] {
        let first = worker_of(&chat(addr, "demo", &[("x-session-id", session)]).headers);
        for _ in 0..5 {
            assert_eq!(
                worker_of(&chat(addr, "demo", &[("x-session-id", session)]).headers),
                first,
                "{session}"
            );
        }
    }
    let pre = [
        ("origin", "tauri://localhost"),
        ("access-control-request-method", "POST"),
    ];
    let r = http::request(addr, "OPTIONS", "/v1/chat/completions", &pre, None).unwrap();
    assert_eq!(r.status, 204);
    assert_eq!(
        r.header("access-control-allow-origin"),
        Some("tauri://localhost")
    );
    let r = chat(addr, "demo", &[("origin", "tauri://localhost")]);
    assert_eq!(
        r.header("access-control-allow-origin"),
        Some("tauri://localhost")
    );
}

#[test]
fn metrics_is_valid_prometheus_text_with_the_contract_names() {
    let (_env, run) = start(2, "", "", "");
    for _ in 0..4 {
        assert_eq!(chat(run.listen, "demo", &[]).status, 200);
    }
    let _ = http::get(run.listen, "/v1/models").unwrap();
    let (types, samples) = metrics(run.listen);
    let has = |name: &str| {
        samples.iter().any(|s| s.name == name)
            || types.contains_key(name)
            || name
                .strip_suffix("_total")
                .is_some_and(|f| types.get(f).map(String::as_str) == Some("counter"))
    };
    for name in [
        "gateway_workers",
        "gateway_worker_restarts_total",
        "gateway_requests_total",
        "gateway_request_duration_seconds",
        "gateway_queue_depth",
        "gateway_worker_inflight",
        "gateway_models_cache_refreshes_total",
    ] {
        assert!(has(name), "{name} missing from /metrics");
    }
    let chat_ok = samples.iter().find(|s| {
        s.name == "gateway_requests_total"
            && s.labels
                .contains(&("path".into(), "/v1/chat/completions".into()))
            && s.labels.contains(&("code".into(), "200".into()))
    });
    assert_eq!(chat_ok.map(|s| s.value), Some(4.0));
    let worker_ids: HashSet<&str> = samples
        .iter()
        .filter(|s| !s.name.starts_with("gateway_worker"))
        .filter_map(|s| {
            s.labels
                .iter()
                .find(|(k, _)| k == "worker")
                .map(|(_, v)| v.as_str())
        })
        .collect();
    assert!(!worker_ids.is_empty(), "worker series carry a worker label");
}

#[test]
fn inflight_returns_to_zero_after_a_thousand_disconnects() {
    let (_env, run) = start(2, "", "", "");
    let addr = run.listen;
    for _ in 0..1000 {
        let mut s = open_stream(addr, "slow", &[]);
        assert_eq!(s.status, 200);
        let _ = s.next_chunk();
        drop(s);
    }
    let settled = wait_until(Duration::from_secs(20), || {
        gauge_sum(&metrics(addr).1, "gateway_worker_inflight") == 0.0
    });
    let (_, samples) = metrics(addr);
    assert!(
        settled,
        "in flight after disconnects: {}",
        gauge_sum(&samples, "gateway_worker_inflight")
    );
}
