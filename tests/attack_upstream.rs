//! End-to-end tests against a hostile or failing provider: one that echoes its key back (in
//! headers, in a JSON error, in a text 500), one that hangs or fails, one whose `Retry-After`
//! is huge or an HTTP date, one whose stream breaks mid-way. Through a real `gateway-worker`
//! process, and through the supervisor's front where the front adds something of its own.

mod support;

use serde_json::json;
use std::net::SocketAddr;
use std::time::{Duration, SystemTime};
use support::front;
use support::http::{self, Stream, CHAT};
use support::process::{ChildGuard, TestEnv};
use support::upstream::{Script, Upstream};
use support::worker::{config, openai_provider, Worker};

const KEY: &str = "sk-attack-0123456789abcdef";
const CLIENT_TOKEN: &str = "client-token-must-stay-home";
const COOKIE: &str = "session=cookie-must-stay-home";

/// Provider `name` at `up`'s `/v1` serving `m1` with the key from `$UP_KEY`.
fn provider(name: &str, up: &Upstream, extra: &str) -> String {
    openai_provider(name, &up.url("/v1"), r#"["m1"]"#, "UP_KEY", extra)
}

/// A worker over `providers`, routing round robin, with the key set.
fn worker(providers: &str) -> Worker {
    let cfg = format!(
        "[routing]\nstrategy = \"round_robin\"\n{}",
        config(providers)
    );
    Worker::start(&cfg, &[("UP_KEY", KEY)])
}

/// The client's identity, which must never reach a provider.
const CLIENT_HEADERS: &[(&str, &str)] = &[
    ("Authorization", "Bearer client-token-must-stay-home"),
    ("x-api-key", CLIENT_TOKEN),
    ("Cookie", COOKIE),
    ("Origin", "http://127.0.0.1:5173"),
    ("Referer", "http://127.0.0.1:5173/app"),
];

fn chat_with(addr: SocketAddr, stream: bool) -> http::Response {
    let b = http::chat_body("m1", stream).to_string();
    http::request(addr, "POST", CHAT, CLIENT_HEADERS, Some(b.as_bytes())).unwrap()
}

/// Chat requests the upstream received (health probes go to `/v1/models`).
fn chats(up: &Upstream) -> usize {
    up.requests()
        .iter()
        .filter(|r| r.path == "/v1/chat/completions")
        .count()
}

/// Panics if the key shows anywhere in what the client got.
fn assert_no_key(r: &http::Response, what: &str) {
    for (k, v) in &r.headers {
        assert!(!v.contains(KEY), "{what}: the key in header {k}: {v}");
    }
    assert!(
        !r.text().contains(KEY),
        "{what}: the key in the body: {}",
        r.text()
    );
}

/// The provider's echoes of its own key: in a header the client must not get at all, in an
/// allow-listed header whose value must be redacted, and in bodies; with SDK headers alongside.
fn hostile_scripts(up: &Upstream) {
    let echo = |s: Script| {
        s.header("x-echo-key", KEY)
            .header("www-authenticate", &format!("Bearer key={KEY}"))
            .header("set-cookie", &format!("k={KEY}"))
            .header("openai-echo", &format!("Bearer {KEY}"))
            .header("x-ratelimit-remaining-requests", "7")
            .header("retry-after", "3")
            .header("x-request-id", "up-req-1")
    };
    up.enqueue(
        CHAT,
        echo(Script::json(
            401,
            json!({"error": {"message": format!("Incorrect API key provided: {KEY}"), "type": "invalid_request_error"}}),
        )),
    );
    up.enqueue(
        CHAT,
        echo(
            Script::status(500)
                .header("content-type", "text/plain")
                .body_bytes(format!("boom: Authorization was Bearer {KEY}")),
        ),
    );
    up.enqueue(CHAT, echo(Script::json(200, json!({"from": "up"}))));
}

/// The three answers of `hostile_scripts`, as the client sees them, plus what the provider saw.
fn check_hostile_answers(addr: SocketAddr, up: &Upstream) {
    let r = chat_with(addr, false);
    assert_eq!(r.status, 401, "{}", r.text());
    assert_no_key(&r, "the 401");
    assert!(r.error_message().contains("[redacted]"), "{}", r.text());
    assert_eq!(r.header("openai-echo"), Some("Bearer [redacted]"));
    for (name, want) in [
        ("x-ratelimit-remaining-requests", "7"),
        ("retry-after", "3"),
        ("x-upstream-request-id", "up-req-1"),
    ] {
        assert_eq!(r.header(name), Some(want), "SDK header {name} passes");
    }
    // The gateway's own request id is never replaced by the provider's.
    assert_ne!(r.header("x-request-id"), Some("up-req-1"));
    assert_eq!(r.header("x-echo-key"), None);
    assert_eq!(r.header("set-cookie"), None);

    let r = chat_with(addr, false);
    assert_eq!(r.status, 500, "{}", r.text());
    assert_no_key(&r, "the text 500");
    assert!(r.error_message().contains("boom"), "{}", r.text());

    let r = chat_with(addr, false);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_no_key(&r, "the 200");
    assert_eq!(r.json()["from"], "up");
    assert_eq!(r.header("x-ratelimit-remaining-requests"), Some("7"));

    let seen = up.requests();
    let chats: Vec<_> = seen.iter().filter(|r| r.path == CHAT).collect();
    assert_eq!(chats.len(), 3, "one attempt each");
    let bearer = format!("Bearer {KEY}");
    for r in chats {
        assert_eq!(r.header("authorization"), Some(bearer.as_str()), "our key");
        for h in ["cookie", "origin", "referer", "x-api-key"] {
            assert_eq!(r.header(h), None, "the client's {h} reached the provider");
        }
        for (k, v) in &r.headers {
            let v = v.to_str().unwrap_or("");
            assert!(
                !v.contains(CLIENT_TOKEN) && !v.contains(COOKIE),
                "the client's identity in {k}"
            );
        }
    }
}

#[test]
fn the_providers_key_never_reaches_a_worker_client_nor_the_clients_identity_the_provider() {
    let up = Upstream::start();
    hostile_scripts(&up);
    let w = worker(&provider("up", &up, ""));
    check_hostile_answers(w.addr, &up);
}

#[test]
fn a_compressed_error_body_which_cannot_be_searched_is_withheld() {
    // The bytes are not really gzip: what matters is that the gateway cannot read them, so it
    // must not pass them on (a client would decompress them and could find the key).
    let up = Upstream::serving(
        CHAT,
        Script::status(401)
            .header("content-type", "application/json")
            .header("content-encoding", "gzip")
            .body_bytes(format!("{{\"error\":{{\"message\":\"{KEY}\"}}}}")),
    );
    let w = worker(&provider("up", &up, ""));
    let r = chat_with(w.addr, false);
    assert_eq!(r.status, 401, "{}", r.text());
    assert_no_key(&r, "the compressed 401");
    assert_eq!(r.header("content-encoding"), None, "{}", r.text());
    assert!(r.error_message().contains("withheld"), "{}", r.text());
}

/// `supervisor start` over `tail` (extra config) with the key in its environment.
fn supervisor(tail: &str) -> (TestEnv, ChildGuard, SocketAddr) {
    let env = TestEnv::new(&front::config(1, "", "", tail));
    let mut cmd = env.supervisor(&["start"]);
    cmd.env("UP_KEY", KEY);
    let mut guard = ChildGuard::spawn(cmd);
    let ready = guard
        .wait_event("ready", Duration::from_secs(20))
        .unwrap_or_else(|| panic!("no ready line; stderr:\n{}", guard.stderr()));
    let listen = ready["listen"].as_str().unwrap().parse().unwrap();
    (env, guard, listen)
}

#[test]
fn the_providers_key_never_reaches_a_front_client_nor_the_clients_identity_the_provider() {
    let up = Upstream::start();
    hostile_scripts(&up);
    let (_env, _sup, addr) = supervisor(&provider("up", &up, ""));
    check_hostile_answers(addr, &up);
}

#[test]
fn a_hung_provider_is_sent_the_request_once() {
    let up = Upstream::serving(CHAT, Script::json(200, json!({})).stall_headers());
    let w = worker(&provider("up", &up, "first_byte_timeout = \"400ms\""));
    let r = chat_with(w.addr, false);
    assert_eq!(r.status, 504, "{}", r.text());
    assert_eq!(chats(&up), 1, "a timed-out provider is not billed again");
}

#[test]
fn a_failing_provider_is_sent_the_request_once_and_the_next_provider_gets_it() {
    let up = Upstream::start();
    up.enqueue(CHAT, Script::json(500, json!({"error": {"message": "x"}})));
    up.enqueue(CHAT, Script::json(503, json!({"error": {"message": "y"}})));
    let w = worker(&provider("up", &up, ""));
    assert_eq!(chat_with(w.addr, false).status, 500);
    assert_eq!(
        chats(&up),
        1,
        "a 500 is not sent again to the same provider"
    );
    assert_eq!(chat_with(w.addr, false).status, 503);
    assert_eq!(chats(&up), 2, "nor a 503");

    let a = Upstream::serving(CHAT, Script::json(502, json!({})));
    let b = Upstream::serving(CHAT, Script::json(200, json!({"from": "b"})));
    let w = worker(&(provider("a", &a, "") + &provider("b", &b, "")));
    let r = chat_with(w.addr, false);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["from"], "b");
    assert_eq!((chats(&a), chats(&b)), (1, 1));
}

#[test]
fn a_connect_error_still_fails_over() {
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let b = Upstream::serving(CHAT, Script::json(200, json!({"from": "b"})));
    let providers = openai_provider(
        "dead",
        &format!("http://{dead}/v1"),
        r#"["m1"]"#,
        "UP_KEY",
        "",
    ) + &provider("b", &b, "");
    let w = worker(&providers);
    for _ in 0..2 {
        let r = chat_with(w.addr, false);
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.json()["from"], "b");
    }
}

/// `providers.NAME` of the worker's `/v1/health`.
fn health_of(addr: SocketAddr, name: &str) -> serde_json::Value {
    let h = http::get(addr, "/v1/health").unwrap();
    assert_eq!(h.status, 200, "{}", h.text());
    h.json()["providers"][name].clone()
}

#[test]
fn a_huge_retry_after_cools_for_at_most_max_cooldown() {
    let up = Upstream::serving(
        CHAT,
        Script::json(429, json!({"error": {"message": "slow"}})).header("retry-after", "999999"),
    );
    let w = worker(&provider("up", &up, ""));
    assert_eq!(chat_with(w.addr, false).status, 429);
    let p = health_of(w.addr, "up");
    assert_eq!(p["cooling"], true, "{p}");
    let left = p["cooldown_remaining_s"]
        .as_u64()
        .unwrap_or_else(|| panic!("no cooldown_remaining_s: {p}"));
    assert!(
        (1..=300).contains(&left),
        "capped at the default max_cooldown of 5m: {left}"
    );
}

#[test]
fn an_http_date_retry_after_cools_the_provider() {
    let a = Upstream::start();
    let at = httpdate::fmt_http_date(SystemTime::now() + Duration::from_secs(60));
    a.enqueue(
        CHAT,
        Script::json(503, json!({"error": {"message": "down"}})).header("retry-after", &at),
    );
    a.set(CHAT, Script::json(200, json!({"from": "a"})));
    let b = Upstream::serving(CHAT, Script::json(200, json!({"from": "b"})));
    let w = worker(&(provider("a", &a, "") + &provider("b", &b, "")));
    let r = chat_with(w.addr, false);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["from"], "b", "the 503 failed over");
    // Round robin puts a first every other request: while it cools, b serves them all.
    for _ in 0..4 {
        assert_eq!(chat_with(w.addr, false).json()["from"], "b");
    }
    assert_eq!(chats(&a), 1, "a is not asked again while it cools");
    let left = health_of(w.addr, "a")["cooldown_remaining_s"]
        .as_u64()
        .expect("cooldown_remaining_s");
    assert!((1..=60).contains(&left), "{left}");
}

/// An SSE stream of two chunks, then a reset mid-body.
fn breaking_stream() -> Upstream {
    Upstream::serving(
        CHAT,
        Script::sse(&[
            "data: {\"choices\":[{\"delta\":{\"content\":\"he\"}}]}\n\n",
            "data: {\"choices\":[{\"delta\":{\"content\":\"llo\"}}]}\n\n",
        ])
        .reset(),
    )
}

/// Reads a stream that must break and returns how many error events it carried.
fn error_events(addr: SocketAddr) -> (usize, String) {
    let b = http::chat_body("m1", true).to_string();
    let mut s = Stream::open(addr, "POST", CHAT, &[], Some(b.as_bytes())).unwrap();
    assert_eq!(s.status, 200);
    let (text, _) = s.read_cut("a broken stream never ends cleanly");
    (text.matches("data: {\"error\"").count(), text)
}

#[test]
fn a_broken_stream_gets_exactly_one_error_event_from_the_worker() {
    let up = breaking_stream();
    let w = worker(&provider("up", &up, ""));
    let (n, text) = error_events(w.addr);
    assert!(text.contains("llo"), "{text}");
    assert_eq!(n, 1, "{text}");
}

#[test]
fn a_broken_stream_gets_exactly_one_error_event_through_the_front() {
    let up = breaking_stream();
    let (_env, _sup, addr) = supervisor(&provider("up", &up, ""));
    let (n, text) = error_events(addr);
    assert!(text.contains("llo"), "{text}");
    assert_eq!(n, 1, "{text}");
}

/// A provider that reports its own failure in the stream (an OpenAI error object), then resets.
fn stream_with_its_own_error_then_a_reset() -> Upstream {
    Upstream::serving(
        CHAT,
        Script::sse(&[
            "data: {\"choices\":[{\"delta\":{\"content\":\"he\"}}]}\n\n",
            "data: {\"error\":{\"message\":\"overloaded mid-stream\",\"type\":\"server_error\"}}\n\n",
        ])
        .reset(),
    )
}

#[test]
fn a_stream_that_carried_its_own_error_event_gets_no_second_one() {
    let up = stream_with_its_own_error_then_a_reset();
    let w = worker(&provider("up", &up, ""));
    let (n, text) = error_events(w.addr);
    assert!(text.contains("overloaded mid-stream"), "{text}");
    assert_eq!(n, 1, "from the worker: {text}");
    let (_env, _sup, addr) = supervisor(&provider("up", &up, ""));
    let (n, text) = error_events(addr);
    assert!(text.contains("overloaded mid-stream"), "{text}");
    assert_eq!(n, 1, "through the front: {text}");
}

#[test]
fn headers_named_in_connection_reach_neither_the_worker_nor_the_provider_through_the_front() {
    let up = Upstream::serving(CHAT, Script::json(200, json!({"from": "up"})));
    let (_env, _sup, addr) = supervisor(&provider("up", &up, ""));
    let b = http::chat_body("m1", false).to_string();
    // Sent next to the helper's own `Connection: close`: a list header may come on several lines.
    let headers = [
        ("Connection", "x-hop-secret, X-Hop-Other"),
        ("x-hop-secret", "hop-secret-value"),
        ("x-hop-other", "hop-other-value"),
        ("x-end-to-end", "kept"),
    ];
    let r = http::request(addr, "POST", CHAT, &headers, Some(b.as_bytes())).unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    let seen = up.requests();
    let chats: Vec<_> = seen.iter().filter(|r| r.path == CHAT).collect();
    assert_eq!(chats.len(), 1);
    let got = chats[0];
    // The front must drop them itself: it also drops `Connection`, so the worker could no
    // longer tell that they were meant for the first hop only.
    for h in ["x-hop-secret", "x-hop-other", "connection"] {
        assert_eq!(
            got.header(h),
            None,
            "{h} reached the provider: {:?}",
            got.headers
        );
    }
    assert_eq!(
        got.header("x-end-to-end"),
        Some("kept"),
        "other headers pass"
    );
}
