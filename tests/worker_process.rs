//! The worker as a process: the heartbeat file, draining on SIGTERM, and keys that never show
//! up in logs, error bodies or metrics.

mod support;

use gateway::heartbeat::Heartbeat;
use nix::sys::signal::Signal;
use serde_json::json;
use std::time::Duration;
use support::http::{self, Stream, CHAT};
use support::process::wait_until;
use support::upstream::{Script, Upstream};
use support::worker::{
    anthropic_provider, config, openai_config, openai_provider, Worker, MOCK_PROVIDER,
};

/// Waits up to 5 s for `w`'s heartbeat file to satisfy `cond`.
fn heartbeat_shows(w: &Worker, cond: impl Fn(&Heartbeat) -> bool) -> bool {
    wait_until(Duration::from_secs(5), || {
        gateway::heartbeat::read(&w.heartbeat).is_ok_and(|h| cond(&h))
    })
}

/// `openai_config` names `$UP_KEY`; unset, its provider would be out of rotation.
const UP_KEY: &[(&str, &str)] = &[("UP_KEY", "sk-test")];

#[test]
fn heartbeat_appears_and_advances() {
    let up = Upstream::start();
    up.set(CHAT, Script::json(200, json!({})));
    let cfg = openai_config(&up, "");
    // `start` waits for the file: it appears once the worker serves.
    let w = Worker::start(&cfg, UP_KEY);
    let hb = gateway::heartbeat::read(&w.heartbeat).expect("heartbeat is JSON");
    assert_eq!(hb.pid, w.guard.pid());
    assert_eq!(hb.served, 0);
    let first_mtime = std::fs::metadata(&w.heartbeat).unwrap().modified().unwrap();
    let r = http::post_chat(w.addr, "m1", false).unwrap();
    assert_eq!(r.status, 200);
    assert!(
        heartbeat_shows(&w, |h| h.served == 1 && h.inflight == 0),
        "served count never reached the heartbeat"
    );
    assert!(wait_until(Duration::from_secs(5), || {
        std::fs::metadata(&w.heartbeat)
            .and_then(|m| m.modified())
            .is_ok_and(|m| m > first_mtime)
    }));
    // The heartbeat keeps advancing.
    let age = gateway::heartbeat::age(&w.heartbeat).unwrap();
    assert!(age < Duration::from_secs(2), "heartbeat is {age:?} old");
}

#[test]
fn heartbeat_counts_inflight_requests() {
    let (up, gate) = Upstream::gated_sse(CHAT, &["data: {}\n\n"], &["data: [DONE]\n\n"]);
    let cfg = openai_config(&up, "");
    let w = Worker::start(&cfg, UP_KEY);
    let mut s = Stream::chat(w.addr, "m1", true).unwrap();
    s.read_until("data: {}").unwrap();
    assert!(heartbeat_shows(&w, |h| h.inflight == 1));
    gate.open();
    s.read_to_end().unwrap();
    assert!(heartbeat_shows(&w, |h| h.inflight == 0 && h.served == 1));
}

#[test]
fn sigterm_drains_an_inflight_stream_then_exits_0() {
    let (up, gate) = Upstream::gated_sse(
        CHAT,
        &["data: {\"n\":1}\n\n"],
        &["data: {\"n\":2}\n\n", "data: [DONE]\n\n"],
    );
    let cfg = openai_config(&up, "");
    let mut w = Worker::start(&cfg, UP_KEY);
    let mut s = Stream::chat(w.addr, "m1", true).unwrap();
    s.read_until("{\"n\":1}").unwrap();
    w.guard.signal(Signal::SIGTERM);
    // It stops accepting: new connections are refused once the listener is closed.
    assert!(
        wait_until(Duration::from_secs(5), || std::net::TcpStream::connect(
            w.addr
        )
        .is_err()),
        "the worker still accepts connections after SIGTERM"
    );
    assert!(
        w.guard.child.try_wait().unwrap().is_none(),
        "exited before the stream finished"
    );
    gate.open();
    let rest = s.read_to_end().expect("the in-flight stream completes");
    assert!(String::from_utf8_lossy(&rest).ends_with("data: [DONE]\n\n"));
    let st = w
        .guard
        .wait_exit(Duration::from_secs(10))
        .expect("worker exits after draining");
    assert_eq!(st.code(), Some(0), "stderr:\n{}", w.guard.stderr());
}

#[test]
fn sigterm_with_nothing_in_flight_exits_at_once() {
    let cfg = config(MOCK_PROVIDER);
    let mut w = Worker::start(&cfg, &[]);
    w.guard.signal(Signal::SIGINT);
    let st = w
        .guard
        .wait_exit(Duration::from_secs(5))
        .expect("worker exits");
    assert_eq!(st.code(), Some(0));
}

#[test]
fn provider_keys_never_leak() {
    const OPENAI_KEY: &str = "sk-LEAKCHECK-7f3a9c1e5b";
    const ANTHROPIC_KEY: &str = "sk-ant-LEAKCHECK-2d8e4f6a0c";
    let up = Upstream::serving(CHAT, Script::json(500, json!({"error": "boom"})));
    up.set(
        "/v1/embeddings",
        Script::json(200, json!({})).stall_headers(),
    );
    up.set(
        "/v1/responses",
        Script::sse_head().chunk("data: {}\n\n").reset(),
    );
    up.set("/v1/messages", Script::status(200).close_before_headers());
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let providers = openai_provider(
        "up",
        &up.url("/v1"),
        r#"["m1"]"#,
        "OA_KEY",
        "first_byte_timeout = \"200ms\"",
    ) + &openai_provider(
        "dead",
        &format!("http://{dead}/v1"),
        r#"["m2"]"#,
        "OA_KEY",
        "",
    ) + &anthropic_provider("an", &up.url(""), r#"["c1"]"#, "AN_KEY", "")
        // Keep `up`'s breaker closed so that every kind of failure below reaches it.
        + "\n[circuit_breaker]\nconsecutive_failures = 100\nfailure_rate_threshold = 0.99\n";
    let w = Worker::start(
        &config(&providers),
        &[
            ("OA_KEY", OPENAI_KEY),
            ("AN_KEY", ANTHROPIC_KEY),
            ("RUST_LOG", "trace"),
        ],
    );
    let mut bodies = String::new();
    let mut send =
        |path: &str, body: serde_json::Value| match Stream::post_json(w.addr, path, &body) {
            Ok(mut s) => {
                let status = s.status;
                let out = match s.read_to_end() {
                    Ok(b) => b,
                    Err((b, _)) => b,
                };
                bodies.push_str(&format!("{status} {}\n", String::from_utf8_lossy(&out)));
            }
            Err(e) => bodies.push_str(&format!("error {e}\n")),
        };
    send(CHAT, json!({"model": "m1", "messages": []}));
    send("/v1/embeddings", json!({"model": "m1", "input": "x"}));
    send(
        "/v1/responses",
        json!({"model": "m1", "input": "x", "stream": true}),
    );
    send(CHAT, json!({"model": "m2", "messages": []}));
    send("/v1/messages", json!({"model": "c1", "messages": []}));
    send("/v1/messages", json!({"model": "m1", "messages": []}));
    let metrics = http::get(w.addr, "/metrics").unwrap().text();
    // Failed attempts at the only provider are retried (routing.max_attempts), so count the
    // paths rather than the requests: each error really happened upstream.
    for path in [CHAT, "/v1/embeddings", "/v1/responses", "/v1/messages"] {
        assert!(
            up.requests().iter().any(|r| r.path == path),
            "the errors really happened upstream: {path}"
        );
    }
    let reqs = up.requests();
    let bearer = format!("Bearer {OPENAI_KEY}");
    assert!(
        reqs.iter()
            .any(|r| r.header("authorization") == Some(bearer.as_str())),
        "the key was in use"
    );
    assert!(
        reqs.iter()
            .any(|r| r.header("x-api-key") == Some(ANTHROPIC_KEY)),
        "the key was in use"
    );
    assert!(
        bodies.contains("500 ") && bodies.contains("504 ") && bodies.contains("502 "),
        "{bodies}"
    );
    // Stop it and collect everything it logged, up to its last line.
    let mut w = w;
    w.guard.signal(Signal::SIGTERM);
    assert_eq!(
        w.guard
            .wait_exit(Duration::from_secs(10))
            .and_then(|s| s.code()),
        Some(0)
    );
    assert!(wait_until(Duration::from_secs(5), || w
        .guard
        .stderr()
        .contains("all connections finished")));
    let stderr = w.guard.stderr();
    assert!(
        stderr.contains("TRACE") || stderr.contains("DEBUG"),
        "verbose logging was on"
    );
    for key in [OPENAI_KEY, ANTHROPIC_KEY, "LEAKCHECK"] {
        assert!(!stderr.contains(key), "key on stderr:\n{stderr}");
        assert!(!bodies.contains(key), "key in a response:\n{bodies}");
        assert!(!metrics.contains(key), "key in metrics");
    }
}
