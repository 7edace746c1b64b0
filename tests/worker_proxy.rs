//! End-to-end tests of the worker as a proxy: the real `gateway-worker` binary between the
//! blocking test client and the scriptable mock upstream. Round trips in both dialects,
//! unbuffered streaming, broken streams, the three timeouts, client disconnects, failover,
//! alias rewrites and provider headers.

mod support;

use serde_json::json;
use std::time::{Duration, Instant};
use support::http::{self, Stream, CHAT};
use support::upstream::{Gate, Script, Upstream};
use support::worker::{anthropic_provider, config, openai_config, openai_provider, Worker};

const KEY: &str = "sk-up-test-key";

fn openai_worker(up: &Upstream, extra: &str) -> Worker {
    Worker::start(&openai_config(up, extra), &[("UP_KEY", KEY)])
}

/// A worker with the anthropic provider `an` at `up` serving `claude-x`, key `key`.
fn anthropic_worker(up: &Upstream, key: &str) -> Worker {
    let provider = anthropic_provider("an", &up.url(""), r#"["claude-x"]"#, "AN_KEY", "");
    Worker::start(&config(&provider), &[("AN_KEY", key)])
}

/// An openai provider `name` at `up`'s `/v1` serving `m1`, key from `$UP_KEY`.
fn m1_provider(name: &str, up: &Upstream) -> String {
    openai_provider(name, &up.url("/v1"), r#"["m1"]"#, "UP_KEY", "")
}

/// A worker routing round robin over `providers`.
fn round_robin_worker(providers: &str) -> Worker {
    let cfg = config(&format!(
        "[routing]\nstrategy = \"round_robin\"\n{providers}"
    ));
    Worker::start(&cfg, &[("UP_KEY", KEY)])
}

/// The `m1` chat request (not streamed), whole response.
fn chat(w: &Worker) -> http::Response {
    http::post_chat(w.addr, "m1", false).unwrap()
}

/// The `m1` chat request, the response's status and headers.
fn open_chat(w: &Worker, stream: bool) -> Stream {
    Stream::chat(w.addr, "m1", stream).unwrap()
}

#[test]
fn openai_round_trip_replaces_client_credentials() {
    let up = Upstream::serving(
        CHAT,
        Script::json(200, json!({"id": "x1", "object": "chat.completion"})),
    );
    let w = openai_worker(&up, "");
    let r = http::request(
        w.addr,
        "POST",
        "/v1/chat/completions?trace=1",
        &[
            ("authorization", "Bearer client-secret"),
            ("x-api-key", "client-secret"),
            ("x-request-id", "req-42"),
            // The front's word on the body counts only on its private socket: on the port
            // the body is parsed (model m1, not this claim), and the header goes no further.
            ("x-gateway-peeked", "1not-a-model"),
        ],
        Some(http::chat_body("m1", false).to_string().as_bytes()),
    )
    .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["id"], "x1");
    let reqs = up.requests();
    assert_eq!(reqs.len(), 1);
    let got = &reqs[0];
    assert_eq!(got.method, "POST");
    assert_eq!(got.target, "/v1/chat/completions?trace=1");
    assert_eq!(got.header("authorization"), Some("Bearer sk-up-test-key"));
    assert_eq!(
        got.header("x-api-key"),
        None,
        "client credentials must not be forwarded"
    );
    assert_eq!(got.header("x-request-id"), Some("req-42"));
    assert_eq!(got.header("connection"), None);
    assert_eq!(got.header("x-gateway-peeked"), None);
    assert_eq!(
        got.json(),
        http::chat_body("m1", false),
        "body forwarded unchanged"
    );
}

#[test]
fn anthropic_round_trip_headers_and_version() {
    let up = Upstream::serving(
        "/v1/messages",
        Script::json(200, json!({"type": "message", "content": []})),
    );
    let w = anthropic_worker(&up, "sk-ant-test");
    let body = json!({"model": "claude-x", "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]});
    let b = body.to_string();
    let r = http::request(
        w.addr,
        "POST",
        "/v1/messages",
        &[("x-api-key", "client-key")],
        Some(b.as_bytes()),
    )
    .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["type"], "message");
    let r = http::request(
        w.addr,
        "POST",
        "/v1/messages",
        &[
            ("anthropic-version", "2024-10-22"),
            ("authorization", "Bearer client"),
        ],
        Some(b.as_bytes()),
    )
    .unwrap();
    assert_eq!(r.status, 200);
    let reqs = up.requests();
    assert_eq!(reqs.len(), 2);
    assert_eq!(reqs[0].path, "/v1/messages");
    assert_eq!(reqs[0].header("x-api-key"), Some("sk-ant-test"));
    assert_eq!(
        reqs[0].header("anthropic-version"),
        Some("2023-06-01"),
        "default version"
    );
    assert_eq!(
        reqs[1].header("anthropic-version"),
        Some("2024-10-22"),
        "the client's version wins"
    );
    assert_eq!(reqs[1].header("authorization"), None);
    assert_eq!(reqs[1].header("x-api-key"), Some("sk-ant-test"));
}

#[test]
fn stream_is_unbuffered_openai() {
    let up = Upstream::start();
    let gate = Gate::new();
    up.enqueue(
        CHAT,
        Script::sse_gated(
            &["data: {\"n\":1}\n\n"],
            &gate,
            &["data: {\"n\":2}\n\n", "data: [DONE]\n\n"],
        ),
    );
    let w = openai_worker(&up, "");
    let mut s = open_chat(&w, true);
    assert_eq!(s.status, 200);
    assert!(s
        .header("content-type")
        .unwrap()
        .starts_with("text/event-stream"));
    s.set_read_timeout(Duration::from_secs(10));
    let first = s.read_until("{\"n\":1}").unwrap();
    // The upstream cannot have sent chunk 2: it waits for the gate the test opens only now.
    assert!(!gate.is_open());
    assert!(!String::from_utf8_lossy(&first).contains("\"n\":2"));
    gate.open();
    let rest = s.read_to_end().expect("stream ends cleanly");
    let rest = String::from_utf8_lossy(&rest);
    assert!(
        rest.contains("{\"n\":2}") && rest.ends_with("data: [DONE]\n\n"),
        "{rest}"
    );
}

#[test]
fn stream_round_trip_anthropic() {
    let up = Upstream::start();
    let events = [
        "event: message_start\ndata: {\"type\":\"message_start\"}\n\n",
        "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"delta\":{\"text\":\"hi\"}}\n\n",
        "event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n",
    ];
    up.set("/v1/messages", Script::sse(&events));
    let w = anthropic_worker(&up, "k");
    let body = json!({"model": "claude-x", "stream": true, "messages": [{"role": "user", "content": "hi"}]});
    let mut s = Stream::post_json(w.addr, "/v1/messages", &body).unwrap();
    assert_eq!(s.status, 200);
    let all = s.read_to_end().expect("clean end");
    assert_eq!(String::from_utf8_lossy(&all), events.concat());
}

#[test]
fn mid_stream_reset_is_an_error_not_a_clean_end() {
    let up = Upstream::serving(
        CHAT,
        Script::sse_head().chunk("data: {\"n\":1}\n\n").reset(),
    );
    up.set(
        "/v1/messages",
        Script::sse_head()
            .chunk("event: message_start\ndata: {}\n\n")
            .reset(),
    );
    let providers = m1_provider("up", &up)
        + &anthropic_provider("an", &up.url(""), r#"["claude-x"]"#, "UP_KEY", "");
    let w = Worker::start(&config(&providers), &[("UP_KEY", KEY)]);

    let mut s = open_chat(&w, true);
    assert_eq!(s.status, 200);
    let (text, err) = s.read_cut("a broken stream must not end cleanly");
    assert!(text.starts_with("data: {\"n\":1}\n\n"), "{text}");
    assert!(
        text.contains("data: {\"error\":"),
        "OpenAI error event expected: {text}"
    );
    assert!(!text.contains("[DONE]"));
    eprintln!("client saw: {err}");

    let body = json!({"model": "claude-x", "stream": true, "messages": []});
    let mut s = Stream::post_json(w.addr, "/v1/messages", &body).unwrap();
    let (text, _) = s.read_cut("a broken stream must not end cleanly");
    assert!(text.starts_with("event: message_start\n"), "{text}");
    let data = text
        .split("event: error\ndata: ")
        .nth(1)
        .unwrap_or_else(|| panic!("Anthropic error event expected: {text}"));
    let v: serde_json::Value = serde_json::from_str(data.trim()).unwrap();
    assert_eq!(v["type"], "error");
    assert_eq!(v["error"]["type"], "api_error");
}

#[test]
fn non_stream_body_cut_is_an_abort() {
    let up = Upstream::serving(
        CHAT,
        Script::status(200)
            .header("content-type", "application/json")
            .header("content-length", "100")
            .chunk("{\"id\":")
            .reset(),
    );
    let w = openai_worker(&up, "");
    let mut s = open_chat(&w, false);
    assert_eq!(s.status, 200);
    s.read_cut("a cut body must not look complete");
}

#[test]
fn first_byte_timeout_gives_504() {
    let up = Upstream::serving(CHAT, Script::json(200, json!({})).stall_headers());
    let w = openai_worker(&up, "first_byte_timeout = \"300ms\"");
    let r = chat(&w);
    assert_eq!(r.status, 504, "{}", r.text());
    let v = r.json();
    assert_eq!(v["error"]["code"], "upstream_timeout");
    assert!(r.error_message().contains("no response within"), "{v}");
}

#[test]
fn idle_timeout_breaks_the_stream_with_an_error_event() {
    let up = Upstream::serving(
        CHAT,
        Script::sse_head().chunk("data: {\"n\":1}\n\n").stall(),
    );
    let w = openai_worker(&up, "idle_timeout = \"300ms\"");
    let mut s = open_chat(&w, true);
    assert_eq!(s.status, 200);
    s.set_read_timeout(Duration::from_secs(10));
    let (text, _) = s.read_cut("an idle stream must not end cleanly");
    assert!(text.starts_with("data: {\"n\":1}\n\n"), "{text}");
    assert!(
        text.contains("upstream_timeout") && text.contains("sent nothing"),
        "{text}"
    );
    // The worker let go of the stalled upstream response too.
    assert!(up.wait_aborted(1, Duration::from_secs(5)));
}

/// A listening socket whose accept queue is full, so connects to it hang (SYNs are dropped):
/// a loopback stand-in for an unreachable host.
fn black_hole() -> (
    std::os::fd::OwnedFd,
    std::net::SocketAddr,
    Vec<std::net::TcpStream>,
) {
    use nix::sys::socket::*;
    let fd = socket(
        AddressFamily::Inet,
        SockType::Stream,
        SockFlag::empty(),
        None,
    )
    .unwrap();
    bind(
        std::os::fd::AsRawFd::as_raw_fd(&fd),
        &SockaddrIn::new(127, 0, 0, 1, 0),
    )
    .unwrap();
    listen(&fd, Backlog::new(0).unwrap()).unwrap();
    let addr: SockaddrIn = getsockname(std::os::fd::AsRawFd::as_raw_fd(&fd)).unwrap();
    let addr = std::net::SocketAddr::from(std::net::SocketAddrV4::new(addr.ip(), addr.port()));
    let mut fill = Vec::new();
    for _ in 0..4 {
        if let Ok(s) = std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)) {
            fill.push(s);
        }
    }
    (fd, addr, fill)
}

#[test]
fn connect_timeout_gives_504() {
    let (_fd, addr, _fill) = black_hole();
    // Confirm the stand-in: a fresh connect really hangs.
    assert!(std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(300)).is_err());
    let cfg = config(&openai_provider(
        "slow",
        &format!("http://{addr}/v1"),
        r#"["m1"]"#,
        "UP_KEY",
        "connect_timeout = \"300ms\"\nfirst_byte_timeout = \"30s\"",
    ));
    let w = Worker::start(&cfg, &[("UP_KEY", KEY)]);
    let t = Instant::now();
    let r = chat(&w);
    assert_eq!(r.status, 504, "{}", r.text());
    let msg = r.error_message();
    assert!(
        msg.contains("connecting to provider `slow` timed out"),
        "{msg}"
    );
    assert!(
        t.elapsed() < Duration::from_secs(20),
        "the connect timeout, not the first-byte one"
    );
}

/// `connect_timeout` bounds the TLS handshake too: a server that accepts the TCP connection and
/// then says nothing gets the connect error, not the first-byte timeout.
#[test]
fn a_silent_tls_handshake_is_a_connect_timeout() {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    // Accepts and holds every connection open without a byte (ends with the test process).
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for s in l.incoming().flatten() {
            held.push(s);
        }
    });
    let cfg = config(&openai_provider(
        "mute",
        &format!("https://{addr}/v1"),
        r#"["m1"]"#,
        "UP_KEY",
        "connect_timeout = \"300ms\"\nfirst_byte_timeout = \"30s\"",
    ));
    let w = Worker::start(&cfg, &[("UP_KEY", KEY)]);
    let t = Instant::now();
    let r = chat(&w);
    assert_eq!(r.status, 504, "{}", r.text());
    let msg = r.error_message();
    assert!(
        msg.contains("connecting to provider `mute` timed out"),
        "{msg}"
    );
    assert!(
        t.elapsed() < Duration::from_secs(20),
        "the connect timeout, not the first-byte one"
    );
}

#[test]
fn client_disconnect_cancels_the_upstream_request() {
    let up = Upstream::serving(
        CHAT,
        Script::sse_head().chunk("data: {\"n\":1}\n\n").stall(),
    );
    let w = openai_worker(&up, "");
    let mut s = open_chat(&w, true);
    s.read_until("{\"n\":1}").unwrap();
    assert_eq!(up.inflight(), 1);
    assert_eq!(up.aborted(), 0);
    drop(s);
    assert!(
        up.wait_aborted(1, Duration::from_secs(5)),
        "the upstream response was not cancelled after the client left"
    );
    assert!(
        up.wait_connections_closed(1, Duration::from_secs(5)),
        "upstream connection still open"
    );
    assert!(up.wait_idle(Duration::from_secs(1)));
    // The worker is still healthy afterwards.
    up.set(CHAT, Script::json(200, json!({"ok": true})));
    let r = chat(&w);
    assert_eq!(r.status, 200);
}

#[test]
fn failover_on_5xx_and_connect_error_before_any_byte() {
    let a = Upstream::start();
    let b = Upstream::start();
    a.set(CHAT, Script::json(503, json!({"error": "busy"})));
    b.set(CHAT, Script::json(200, json!({"from": "b"})));
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let w = round_robin_worker(&(m1_provider("a", &a) + &m1_provider("b", &b)));
    for _ in 0..2 {
        let r = chat(&w);
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.json()["from"], "b");
    }
    assert_eq!(
        a.request_count(),
        1,
        "round robin tried a once, then failed over to b"
    );
    assert_eq!(b.request_count(), 2);

    // A refused connection fails over as well; with no candidate left, the last error is sent.
    let providers = openai_provider(
        "dead",
        &format!("http://{closed}/v1"),
        r#"["m1", "m2"]"#,
        "UP_KEY",
        "",
    ) + &m1_provider("b", &b);
    let w2 = round_robin_worker(&providers);
    let r = chat(&w2);
    assert_eq!(r.status, 200, "{}", r.text());
    let r = http::post_json(w2.addr, CHAT, &json!({"model": "m2", "messages": []})).unwrap();
    assert_eq!(r.status, 502, "{}", r.text());
    assert!(r
        .error_message()
        .contains("cannot connect to provider `dead`"));
}

#[test]
fn last_candidate_5xx_passes_through_with_its_headers() {
    let up = Upstream::serving(
        CHAT,
        Script::json(429, json!({"error": {"message": "slow down"}})).header("retry-after", "7"),
    );
    up.set(
        "/v1/embeddings",
        Script::json(503, json!({"error": {"message": "down"}})).header("retry-after", "3"),
    );
    let w = openai_worker(&up, "");
    let r = chat(&w);
    assert_eq!(r.status, 429);
    assert_eq!(r.header("retry-after"), Some("7"));
    let body = json!({"model": "m1", "input": "x"});
    let r = http::post_json(w.addr, "/v1/embeddings", &body).unwrap();
    assert_eq!(r.status, 503);
    assert_eq!(r.header("retry-after"), Some("3"));
    assert_eq!(up.request_count(), 2);
}

#[test]
fn alias_rewrites_the_model_for_the_upstream() {
    let up = Upstream::serving(CHAT, Script::json(200, json!({"ok": true})));
    let cfg = config(&format!(
        "{}\n[[models]]\nname = \"fast\"\ntargets = [\"up/real-model\"]\n",
        openai_provider("up", &up.url("/v1"), r#"["real-model"]"#, "UP_KEY", "")
    ));
    let w = Worker::start(&cfg, &[("UP_KEY", KEY)]);
    let body = json!({"model": "fast", "temperature": 0.5, "messages": [{"role": "user", "content": "hé \"quoted\""}]});
    let r = http::post_json(w.addr, CHAT, &body).unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    let reqs = up.requests();
    let sent = reqs[0].json();
    assert_eq!(sent["model"], "real-model");
    assert_eq!(sent["temperature"], 0.5);
    assert_eq!(sent["messages"], body["messages"]);
    assert_eq!(
        reqs[0].header("authorization"),
        Some("Bearer sk-up-test-key")
    );
}

#[test]
fn client_errors_in_the_callers_dialect() {
    let up = Upstream::start();
    let w = openai_worker(&up, "");
    let r = http::request(w.addr, "POST", CHAT, &[], Some(b"{not json")).unwrap();
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["error"]["type"], "invalid_request_error");
    let r = http::post_json(w.addr, CHAT, &json!({"messages": []})).unwrap();
    assert_eq!(r.status, 400);
    assert!(r.error_message().contains("model"));
    let r = http::post_json(w.addr, "/v1/messages", &json!({"messages": []})).unwrap();
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["type"], "error");
    let r = http::post_json(w.addr, CHAT, &json!({"model": "nope"})).unwrap();
    assert_eq!(r.status, 404);
    assert_eq!(r.json()["error"]["code"], "not_found");
    let r = http::post_json(w.addr, "/v1/messages", &json!({"model": "nope"})).unwrap();
    assert_eq!(r.status, 404);
    assert_eq!(r.json()["error"]["type"], "not_found_error");
    // An OpenAI-only model on count_tokens gets the estimate now
    // (translate_e2e covers it); a malformed count_tokens body is a 400 in the Anthropic shape.
    let r = http::post_json(
        w.addr,
        "/v1/messages/count_tokens",
        &json!({"model": "m1", "messages": "not a list"}),
    )
    .unwrap();
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["type"], "error");
    assert!(r.error_message().contains("messages"), "{}", r.text());
    let r = http::get(w.addr, CHAT).unwrap();
    assert_eq!(r.status, 405);
    assert_eq!(r.header("allow"), Some("POST"));
    let r = http::get(w.addr, "/v1/nothing").unwrap();
    assert_eq!(r.status, 404);
    assert_eq!(r.json()["error"]["code"], "not_found");
    let r = http::get(w.addr, "/v1/messages/nothing").unwrap();
    assert_eq!(r.status, 404);
    assert_eq!(r.json()["type"], "error");
    assert_eq!(
        up.request_count(),
        0,
        "no client error reached the provider"
    );
}

#[test]
fn models_lists_configured_aliases_and_discovered_with_cache() {
    let up = Upstream::serving(
        "/v1/models",
        Script::json(
            200,
            json!({"object": "list", "data": [{"id": "disc-1"}, {"id": "disc-2"}]}),
        ),
    );
    let providers = openai_provider("any", &up.url("/v1"), r#"["*"]"#, "UP_KEY", "")
        + &m1_provider("fixed", &up);
    let cfg = config(&format!(
        "{providers}\n[[models]]\nname = \"fast\"\ntargets = [\"fixed/m1\"]\n"
    ));
    let w = Worker::start(&cfg, &[("UP_KEY", KEY)]);
    for _ in 0..2 {
        let r = http::get(w.addr, "/v1/models").unwrap();
        assert_eq!(r.status, 200);
        let v = r.json();
        assert_eq!(v["object"], "list");
        let ids: Vec<&str> = v["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["id"].as_str().unwrap())
            .collect();
        assert_eq!(ids, ["m1", "fast", "disc-1", "disc-2"]);
    }
    assert_eq!(up.request_count(), 1, "the discovered list is cached");
    let reqs = up.requests();
    assert_eq!(
        reqs[0].header("authorization"),
        Some("Bearer sk-up-test-key")
    );
}

#[test]
fn metrics_use_the_contract_names() {
    let up = Upstream::start();
    up.set(CHAT, Script::json(200, json!({})));
    let w = openai_worker(&up, "");
    let r = chat(&w);
    assert_eq!(r.status, 200);
    let m = http::get(w.addr, "/metrics").unwrap();
    assert_eq!(m.status, 200);
    let t = m.text();
    assert!(
        t.contains("gateway_provider_requests_total{provider=\"up\",outcome=\"success\"} 1"),
        "{t}"
    );
    assert!(
        t.contains("gateway_provider_latency_seconds_count{provider=\"up\"} 1"),
        "{t}"
    );
    assert!(
        t.contains("gateway_circuit_state{provider=\"up\"} 0"),
        "{t}"
    );
}

#[test]
fn upstream_closing_before_headers_gives_502_or_fails_over() {
    let a = Upstream::start();
    let b = Upstream::start();
    a.set(CHAT, Script::status(200).close_before_headers());
    b.set(CHAT, Script::json(200, json!({"from": "b"})));
    let w = openai_worker(&a, "");
    let r = chat(&w);
    assert_eq!(r.status, 502, "{}", r.text());
    assert_eq!(r.json()["error"]["code"], "upstream_error");

    let w = round_robin_worker(&(m1_provider("a", &a) + &m1_provider("b", &b)));
    let r = chat(&w);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["from"], "b");
}

#[test]
fn concurrent_streams_are_all_in_flight_at_once() {
    let (up, gate) = Upstream::gated_sse(CHAT, &["data: {\"n\":1}\n\n"], &["data: [DONE]\n\n"]);
    let w = openai_worker(&up, "");
    let mut streams: Vec<Stream> = (0..3)
        .map(|_| {
            let mut s = open_chat(&w, true);
            s.read_until("{\"n\":1}").unwrap();
            s
        })
        .collect();
    assert_eq!(up.inflight(), 3);
    assert_eq!(up.max_inflight(), 3);
    gate.open();
    for s in &mut streams {
        assert!(String::from_utf8_lossy(&s.read_to_end().unwrap()).ends_with("data: [DONE]\n\n"));
    }
    assert!(up.wait_idle(Duration::from_secs(5)));
    assert_eq!(up.completed(), 3);
    assert_eq!(up.aborted(), 0);
}

/// Token series are labelled with the served model when a provider names it, and `other` when
/// none does (a `*` provider serves any name: the label set stays bounded); every answer's time
/// to first byte is observed per provider.
#[test]
fn token_series_label_unnamed_models_other_and_ttfb_is_observed() {
    let up = Upstream::start();
    let providers =
        m1_provider("up", &up) + &openai_provider("any", &up.url("/v1"), r#"["*"]"#, "UP_KEY", "");
    let w = Worker::start(&config(&providers), &[("UP_KEY", KEY)]);
    up.enqueue(CHAT, Script::chat_with_usage("m1", 5, 0, 2));
    assert_eq!(chat(&w).status, 200);
    up.enqueue(CHAT, Script::chat_with_usage("whatever-7", 11, 0, 3));
    assert_eq!(
        http::post_chat(w.addr, "whatever-7", false).unwrap().status,
        200
    );
    let t = http::get(w.addr, "/metrics").unwrap().text();
    for want in [
        "gateway_tokens_total{client=\"\",provider=\"up\",model=\"m1\",type=\"input\"} 5",
        "gateway_tokens_total{client=\"\",provider=\"any\",model=\"other\",type=\"input\"} 11",
        "gateway_tokens_total{client=\"\",provider=\"any\",model=\"other\",type=\"output\"} 3",
        "gateway_time_to_first_byte_seconds_count{provider=\"up\"} 1",
        "gateway_time_to_first_byte_seconds_count{provider=\"any\"} 1",
    ] {
        assert!(t.lines().any(|l| l == want), "{want} in {t}");
    }
    assert!(!t.contains("whatever-7"), "{t}");
}
