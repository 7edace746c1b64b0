//! End-to-end tests of the worker's resilience: circuit breakers, failover rules, 429
//! cool-downs, the pool-wide provider concurrency table (several real worker processes sharing
//! one table, one of them SIGKILLed), keep-alive pings while a stream waits for a slot, and
//! concurrent, single-flight health probes. Real `gateway-worker` processes, real sockets, the
//! scriptable mock upstream.

mod support;

use gateway::provider_permits::ProviderTable;
use nix::sys::signal::Signal;
use serde_json::json;
use std::time::{Duration, Instant};
use support::http::{self, Stream};
use support::process::wait_until;
use support::upstream::{Gate, Script, Upstream};
use support::worker::{openai_provider, Worker};

const KEY: &str = "sk-resilience-test-key";

/// A whole config with the knobs these tests turn.
struct Cfg {
    strategy: &'static str,
    max_attempts: u32,
    consecutive_failures: u32,
    half_open_successes: u32,
    open_timeout: &'static str,
    queue_timeout: &'static str,
    ping: &'static str,
    cache_ttl: &'static str,
    probe_interval: &'static str,
    providers: String,
}

impl Cfg {
    fn new(providers: String) -> Self {
        Self {
            strategy: "round_robin",
            max_attempts: 3,
            consecutive_failures: 3,
            half_open_successes: 2,
            open_timeout: "60s",
            queue_timeout: "30s",
            ping: "10s",
            cache_ttl: "10s",
            probe_interval: "0s",
            providers,
        }
    }

    fn text(&self) -> String {
        format!(
            r#"
[server]
stream_ping_interval = "{ping}"

[pool]
shutdown_timeout = "10s"
queue_timeout = "{queue}"

[routing]
strategy = "{strategy}"
max_attempts = {attempts}

[circuit_breaker]
failure_rate_threshold = 0.99
consecutive_failures = {consecutive}
half_open_successes = {half_open}
open_timeout = "{open}"

[health]
probe_interval = "{probe}"
probe_timeout = "3s"
cache_ttl = "{ttl}"

{providers}
"#,
            ping = self.ping,
            queue = self.queue_timeout,
            strategy = self.strategy,
            attempts = self.max_attempts,
            consecutive = self.consecutive_failures,
            half_open = self.half_open_successes,
            open = self.open_timeout,
            ttl = self.cache_ttl,
            probe = self.probe_interval,
            providers = self.providers,
        )
    }

    fn start(&self) -> Worker {
        Worker::start(&self.text(), &[("UP_KEY", KEY)])
    }
}

fn provider(name: &str, up: &Upstream, extra: &str) -> String {
    openai_provider(name, &up.url("/v1"), r#"["m1"]"#, "UP_KEY", extra)
}

fn chat(w: &Worker) -> http::Response {
    let b = http::chat_body("m1", false).to_string();
    http::request(
        w.addr,
        "POST",
        "/v1/chat/completions",
        &[],
        Some(b.as_bytes()),
    )
    .unwrap()
}

fn metrics(w: &Worker) -> String {
    http::get(w.addr, "/metrics").unwrap().text()
}

fn circuit_state(w: &Worker, provider: &str) -> Option<i64> {
    let prefix = format!("gateway_circuit_state{{provider=\"{provider}\"}} ");
    metrics(w)
        .lines()
        .find_map(|l| l.strip_prefix(&prefix)?.trim().parse().ok())
}

fn changes(w: &Worker, provider: &str, from: &str, to: &str) -> u64 {
    let prefix = format!(
        "gateway_circuit_state_changes_total{{provider=\"{provider}\",from=\"{from}\",to=\"{to}\"}} "
    );
    metrics(w)
        .lines()
        .find_map(|l| l.strip_prefix(&prefix)?.trim().parse().ok())
        .unwrap_or(0)
}

fn two_upstreams() -> (Upstream, Upstream) {
    let a = Upstream::start();
    let b = Upstream::start();
    b.set(
        "/v1/chat/completions",
        Script::json(200, json!({"from": "b"})),
    );
    (a, b)
}

#[test]
fn failing_provider_opens_its_breaker_while_b_serves_everyone() {
    let (a, b) = two_upstreams();
    a.set(
        "/v1/chat/completions",
        Script::json(503, json!({"error": {"message": "overloaded"}})),
    );
    a.set("/v1/models", Script::json(200, json!({"data": []})));
    b.set("/v1/models", Script::json(500, json!({})));
    let w = Cfg::new(provider("a", &a, "") + &provider("b", &b, "")).start();
    for i in 0..12 {
        let r = chat(&w);
        assert_eq!(r.status, 200, "request {i}: {}", r.text());
        assert_eq!(r.json()["from"], "b");
    }
    // Round robin puts a first every other request; after 3 failures in a row it opened and
    // was skipped from then on.
    assert_eq!(a.request_count(), 3, "a is out of rotation once open");
    assert_eq!(b.request_count(), 12);
    assert_eq!(circuit_state(&w, "a"), Some(1));
    assert_eq!(circuit_state(&w, "b"), Some(0));
    assert_eq!(changes(&w, "a", "closed", "open"), 1);
    let m = metrics(&w);
    assert!(
        m.contains("gateway_provider_requests_total{provider=\"a\",outcome=\"server_error\"} 3"),
        "{m}"
    );

    // A health probe that sees a answer moves it to half-open long before open_timeout (60s);
    // b's failing probe does not open b's closed breaker.
    let h = http::get(w.addr, "/v1/health").unwrap();
    assert_eq!(h.status, 200, "{}", h.text());
    let v = h.json();
    assert_eq!(v["providers"]["a"]["status"], "healthy");
    assert_eq!(v["providers"]["b"]["status"], "unhealthy");
    assert_eq!(
        circuit_state(&w, "a"),
        Some(2),
        "probe moved a to half-open"
    );
    assert_eq!(changes(&w, "a", "open", "half_open"), 1);
    assert_eq!(circuit_state(&w, "b"), Some(0), "a probe alone never opens");
}

#[test]
fn recovered_provider_goes_half_open_then_closed() {
    let (a, b) = two_upstreams();
    a.set("/v1/chat/completions", Script::json(502, json!({})));
    let mut cfg = Cfg::new(provider("a", &a, "") + &provider("b", &b, ""));
    cfg.consecutive_failures = 2;
    cfg.open_timeout = "300ms";
    let w = cfg.start();
    let opened = Instant::now();
    for _ in 0..4 {
        assert_eq!(chat(&w).status, 200);
    }
    assert_eq!(a.request_count(), 2);
    assert_eq!(changes(&w, "a", "closed", "open"), 1);
    // a recovers; the timer (not a request) moves it to half-open after open_timeout.
    a.set(
        "/v1/chat/completions",
        Script::json(200, json!({"from": "a"})),
    );
    assert!(
        wait_until(Duration::from_secs(5), || circuit_state(&w, "a") == Some(2)),
        "never went half-open"
    );
    assert!(opened.elapsed() >= Duration::from_millis(250));
    assert_eq!(a.request_count(), 2, "half-open without any request");
    // Trial requests succeed: half_open_successes = 2 closes it.
    let mut from_a = 0;
    for _ in 0..6 {
        let r = chat(&w);
        assert_eq!(r.status, 200);
        from_a += usize::from(r.json()["from"] == "a");
    }
    assert!(from_a >= 2, "a served {from_a}");
    assert_eq!(circuit_state(&w, "a"), Some(0));
    assert_eq!(changes(&w, "a", "open", "half_open"), 1);
    assert_eq!(changes(&w, "a", "half_open", "closed"), 1);
}

#[test]
fn no_failover_after_the_first_streamed_byte() {
    let (a, b) = two_upstreams();
    a.set(
        "/v1/chat/completions",
        Script::sse_head().chunk("data: {\"n\":1}\n\n").reset(),
    );
    let w = Cfg::new(provider("a", &a, "") + &provider("b", &b, "")).start();
    let body = http::chat_body("m1", true).to_string();
    let mut s = Stream::open(
        w.addr,
        "POST",
        "/v1/chat/completions",
        &[],
        Some(body.as_bytes()),
    )
    .unwrap();
    assert_eq!(s.status, 200);
    let (got, _) = s
        .read_to_end()
        .expect_err("a stream broken after its first byte must not end cleanly");
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("data: {\"n\":1}\n\n"), "{text}");
    assert!(text.contains("upstream_error"), "{text}");
    assert_eq!(a.request_count(), 1);
    assert_eq!(
        b.request_count(),
        0,
        "no failover once bytes reached the client"
    );
}

#[test]
fn rate_limited_provider_cools_for_retry_after() {
    let (a, b) = two_upstreams();
    a.enqueue(
        "/v1/chat/completions",
        Script::json(429, json!({"error": {"message": "slow down"}})).header("retry-after", "2"),
    );
    a.set(
        "/v1/chat/completions",
        Script::json(200, json!({"from": "a"})),
    );
    let w = Cfg::new(provider("a", &a, "") + &provider("b", &b, "")).start();
    let r = chat(&w);
    let limited_at = Instant::now();
    assert_eq!(r.status, 200, "the 429 failed over: {}", r.text());
    assert_eq!(r.json()["from"], "b");
    assert_eq!(a.request_count(), 1);
    // While a cools, everything goes to b, even when round robin puts a first.
    for _ in 0..4 {
        assert_eq!(chat(&w).json()["from"], "b");
    }
    assert!(
        limited_at.elapsed() < Duration::from_millis(1500),
        "too slow to tell"
    );
    assert_eq!(a.request_count(), 1, "a was skipped while cooling");
    // Then a is used again, about 2 s after its 429.
    let back = loop {
        let r = chat(&w);
        assert_eq!(r.status, 200);
        if r.json()["from"] == "a" {
            break limited_at.elapsed();
        }
        assert!(
            limited_at.elapsed() < Duration::from_secs(10),
            "a never came back"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(
        back >= Duration::from_millis(1800) && back < Duration::from_secs(4),
        "a came back after {back:?}"
    );
    assert_eq!(
        circuit_state(&w, "a"),
        Some(0),
        "a 429 cools, it does not open"
    );
}

#[test]
fn client_errors_are_not_retried_and_bad_keys_are_logged() {
    let (a, b) = two_upstreams();
    a.set(
        "/v1/chat/completions",
        Script::json(
            400,
            json!({"error": {"message": "bad temperature", "type": "invalid_request_error", "code": "bad_param"}}),
        ),
    );
    let w = Cfg::new(provider("a", &a, "") + &provider("b", &b, "")).start();
    let r = chat(&w);
    assert_eq!(r.status, 400);
    assert_eq!(
        r.json()["error"]["message"],
        "bad temperature",
        "passed through"
    );
    assert_eq!(b.request_count(), 0, "a 400 is never retried elsewhere");
    assert_eq!(circuit_state(&w, "a"), Some(0));

    let c = Upstream::start();
    c.set(
        "/v1/chat/completions",
        Script::json(401, json!({"error": {"message": "invalid api key"}})),
    );
    let w2 = Cfg::new(provider("c", &c, "")).start();
    for _ in 0..6 {
        let r = chat(&w2);
        assert_eq!(r.status, 401);
        assert_eq!(r.json()["error"]["message"], "invalid api key");
    }
    assert_eq!(c.request_count(), 6, "one attempt each, no retry");
    assert_eq!(
        circuit_state(&w2, "c"),
        Some(0),
        "a bad key is not an outage"
    );
    assert!(wait_until(Duration::from_secs(5), || {
        let e = w2.guard.stderr();
        e.contains("ERROR") && e.contains("$UP_KEY") && e.contains("provider=c")
    }));
    assert!(
        !w2.guard.stderr().contains(KEY),
        "the key itself is never logged"
    );
}

#[test]
fn all_open_fails_fast_with_retry_after() {
    let a = Upstream::start();
    a.set("/v1/chat/completions", Script::json(500, json!({})));
    let mut cfg = Cfg::new(provider("a", &a, ""));
    cfg.consecutive_failures = 3;
    let w = cfg.start();
    // One attempt per request at the only provider (a provider that failed a request is not
    // sent it again), so three requests open its breaker.
    for n in 1..=3 {
        let r = chat(&w);
        assert_eq!(r.status, 500, "the last error keeps its status");
        assert_eq!(a.request_count(), n);
    }
    assert_eq!(circuit_state(&w, "a"), Some(1));
    let t = Instant::now();
    let r = chat(&w);
    assert_eq!(r.status, 503, "{}", r.text());
    let ra: u64 = r.header("retry-after").unwrap().parse().unwrap();
    assert!((55..=60).contains(&ra), "retry-after {ra}");
    assert_eq!(r.json()["error"]["code"], "service_unavailable");
    assert_eq!(
        a.request_count(),
        3,
        "an open breaker sends nothing upstream"
    );
    assert!(t.elapsed() < Duration::from_secs(1), "fails fast");
}

/// `n` workers sharing one provider table, each on its own row.
fn pool(cfg: &str, table: &std::path::Path, n: usize) -> Vec<Worker> {
    (0..n)
        .map(|row| {
            Worker::start(
                cfg,
                &[
                    ("UP_KEY", KEY),
                    ("GATEWAY_PROVIDER_TABLE", table.to_str().unwrap()),
                    ("GATEWAY_PROVIDER_ROW", &row.to_string()),
                ],
            )
        })
        .collect()
}

#[test]
fn pool_wide_provider_limit_holds_across_workers() {
    let up = Upstream::start();
    up.set(
        "/v1/chat/completions",
        Script::json(200, json!({"ok": true})).delay_headers(Duration::from_millis(150)),
    );
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("providers.shm");
    let table = ProviderTable::create(&path).unwrap();
    let cfg = Cfg::new(provider("up", &up, "max_concurrency = 4")).text();
    let workers = pool(&cfg, &path, 3);
    let addrs: Vec<_> = workers.iter().map(|w| w.addr).collect();
    let threads: Vec<_> = (0..20)
        .map(|i| {
            let addr = addrs[i % addrs.len()];
            std::thread::spawn(move || {
                let b = http::chat_body("m1", false).to_string();
                http::request(
                    addr,
                    "POST",
                    "/v1/chat/completions",
                    &[],
                    Some(b.as_bytes()),
                )
                .map(|r| r.status)
            })
        })
        .collect();
    let statuses: Vec<_> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    assert!(
        statuses.iter().all(|s| matches!(s, Ok(200))),
        "{statuses:?}"
    );
    assert_eq!(up.request_count(), 20);
    let max = up.max_inflight();
    assert!(
        max <= 4,
        "the pool-wide limit was exceeded: {max} in flight"
    );
    assert!(
        max >= 2,
        "the requests never overlapped ({max}), so the test proved nothing"
    );
    assert_eq!(
        table.total(ProviderTable::column("up")),
        0,
        "every slot was given back"
    );
}

#[test]
fn slots_of_a_killed_worker_come_back_when_its_row_is_cleared() {
    let up = Upstream::start();
    let gate = Gate::new();
    up.set(
        "/v1/chat/completions",
        Script::json(200, json!({"ok": true})).wait_headers(&gate),
    );
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("providers.shm");
    let table = ProviderTable::create(&path).unwrap();
    let mut cfg = Cfg::new(provider("up", &up, "max_concurrency = 4"));
    cfg.queue_timeout = "1s";
    cfg.max_attempts = 1;
    let workers = pool(&cfg.text(), &path, 3);
    // Worker 0 takes all four slots and holds them.
    let held: Vec<_> = (0..4)
        .map(|_| {
            let b = http::chat_body("m1", false).to_string();
            http::send(
                workers[0].addr,
                "POST",
                "/v1/chat/completions",
                &[],
                Some(b.as_bytes()),
            )
            .unwrap()
        })
        .collect();
    assert!(up.wait_requests(4, Duration::from_secs(5)));
    let col = ProviderTable::column("up");
    assert_eq!(table.total(col), 4);
    // Over the limit: worker 1 waits queue_timeout, then 503 + Retry-After.
    let t = Instant::now();
    let r = chat(&workers[1]);
    assert_eq!(r.status, 503, "{}", r.text());
    assert!(r.header("retry-after").is_some());
    assert!(
        t.elapsed() >= Duration::from_millis(900),
        "it waited: {:?}",
        t.elapsed()
    );
    assert_eq!(up.request_count(), 4);
    // SIGKILL worker 0: its row still counts 4 until the "supervisor" clears it.
    workers[0].guard.signal(Signal::SIGKILL);
    let mut w0 = workers.into_iter();
    let mut dead = w0.next().unwrap();
    assert!(dead.guard.wait_exit(Duration::from_secs(5)).is_some());
    drop(held);
    assert_eq!(
        table.total(col),
        4,
        "a killed worker cannot give its slots back itself"
    );
    table.clear_row(0);
    assert_eq!(table.total(col), 0);
    gate.open();
    let rest: Vec<Worker> = w0.collect();
    for w in &rest {
        for _ in 0..3 {
            let t = Instant::now();
            let r = chat(w);
            assert_eq!(r.status, 200, "{}", r.text());
            assert!(
                t.elapsed() < Duration::from_millis(900),
                "waited for a slot"
            );
        }
    }
}

#[test]
fn waiting_stream_gets_pings_then_the_provider_stream_or_an_error() {
    let up = Upstream::start();
    let gate = Gate::new();
    // The first request holds the only slot until the gate opens.
    up.enqueue(
        "/v1/chat/completions",
        Script::json(200, json!({"first": true})).wait_headers(&gate),
    );
    up.set(
        "/v1/chat/completions",
        Script::sse(&["data: {\"n\":1}\n\n", "data: [DONE]\n\n"]),
    );
    let mut cfg = Cfg::new(provider("up", &up, "max_concurrency = 1"));
    cfg.ping = "200ms";
    cfg.queue_timeout = "20s";
    let w = cfg.start();
    let b = http::chat_body("m1", false).to_string();
    let first = http::send(
        w.addr,
        "POST",
        "/v1/chat/completions",
        &[],
        Some(b.as_bytes()),
    )
    .unwrap();
    assert!(up.wait_requests(1, Duration::from_secs(5)));
    let sb = http::chat_body("m1", true).to_string();
    let mut s = Stream::open(
        w.addr,
        "POST",
        "/v1/chat/completions",
        &[],
        Some(sb.as_bytes()),
    )
    .unwrap();
    assert_eq!(s.status, 200, "answered while still waiting");
    assert!(s
        .header("content-type")
        .unwrap()
        .starts_with("text/event-stream"));
    let pings = s.read_until(": ping\n\n: ping\n\n").unwrap();
    assert_eq!(up.request_count(), 1, "still waiting for the slot");
    gate.open();
    let mut first = Stream::from_stream(first, false).unwrap();
    assert_eq!(first.status, 200);
    first.read_to_end().unwrap();
    let rest = s.read_to_end().expect("the provider's stream ends cleanly");
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&pings),
        String::from_utf8_lossy(&rest)
    );
    assert!(
        all.ends_with("data: {\"n\":1}\n\ndata: [DONE]\n\n"),
        "{all}"
    );

    // Never freed within queue_timeout: pings, then an error event, and no clean end.
    let gate2 = Gate::new();
    up.enqueue(
        "/v1/chat/completions",
        Script::json(200, json!({})).wait_headers(&gate2),
    );
    let mut cfg = Cfg::new(provider("up", &up, "max_concurrency = 1"));
    cfg.ping = "200ms";
    cfg.queue_timeout = "1s";
    let w = cfg.start();
    let _hold = http::send(
        w.addr,
        "POST",
        "/v1/chat/completions",
        &[],
        Some(b.as_bytes()),
    )
    .unwrap();
    assert!(up.wait_requests(3, Duration::from_secs(5)));
    let body = json!({"model": "m1", "stream": true, "messages": []}).to_string();
    let mut s = Stream::open(
        w.addr,
        "POST",
        "/v1/chat/completions",
        &[],
        Some(body.as_bytes()),
    )
    .unwrap();
    assert_eq!(s.status, 200);
    let (got, _) = s
        .read_to_end()
        .expect_err("a stream that never started must not end cleanly");
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with(": ping\n\n"), "{text}");
    assert!(
        text.contains("data: {\"error\"") && text.contains("max_concurrency"),
        "{text}"
    );
    gate2.open();
}

/// `n` providers on one upstream, each with its own base path and model `m{i}`.
fn many(up: &Upstream, n: usize) -> String {
    (0..n)
        .map(|i| {
            openai_provider(
                &format!("p{i}"),
                &up.url(&format!("/p{i}/v1")),
                &format!("[\"m{i}\"]"),
                "UP_KEY",
                "",
            )
        })
        .collect()
}

fn slow_models(up: &Upstream, n: usize) {
    for i in 0..n {
        up.set(
            &format!("/p{i}/v1/models"),
            Script::json(200, json!({"object": "list", "data": []}))
                .delay_headers(Duration::from_secs(1)),
        );
    }
}

#[test]
fn health_probes_run_concurrently() {
    let up = Upstream::start();
    slow_models(&up, 10);
    // p9 answers its probe slowly *and* with an error: that model is unhealthy.
    up.set(
        "/p9/v1/models",
        Script::json(500, json!({})).delay_headers(Duration::from_secs(1)),
    );
    let mut cfg = Cfg::new(format!(
        "{}\n[[models]]\nname = \"fast\"\ntargets = [\"p0/m0\", \"p9/m9\"]\n",
        many(&up, 10)
    ));
    cfg.cache_ttl = "0s";
    let w = cfg.start();
    let t = Instant::now();
    let r = http::get(w.addr, "/v1/health?timeout=30&use_concurrent=true").unwrap();
    let concurrent = t.elapsed();
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert!(concurrent < Duration::from_secs(3), "took {concurrent:?}");
    assert_eq!(v["status"], "degraded");
    assert_eq!(v["concurrent"], true);
    assert_eq!(v["timeout"], 3.0, "capped at health.probe_timeout");
    assert_eq!(v["total_models"], 11);
    assert_eq!(v["healthy_models"], 9);
    assert_eq!(v["models"]["m0"]["status"], "healthy");
    assert_eq!(v["models"]["m0"]["providers"]["p0"], "healthy");
    assert_eq!(v["models"]["m9"]["status"], "unhealthy");
    assert_eq!(v["models"]["fast"]["status"], "degraded");
    assert_eq!(v["models"]["fast"]["healthy_providers"], 1);
    assert_eq!(v["models"]["fast"]["total_providers"], 2);
    assert!(v["execution_time"].as_f64().unwrap() >= 0.9);
    assert!(v["timestamp"].as_f64().unwrap() > 1.7e9);
    assert_eq!(up.request_count(), 10);
    assert_eq!(
        up.requests()[0].header("authorization"),
        Some(&*format!("Bearer {KEY}"))
    );

    let t = Instant::now();
    let r = http::get(w.addr, "/v1/health?use_concurrent=false").unwrap();
    let sequential = t.elapsed();
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["concurrent"], false);
    assert!(sequential > Duration::from_secs(9), "took {sequential:?}");

    let r = http::get(w.addr, "/v1/health/models/m3").unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["status"], "healthy");
    assert_eq!(r.json()["providers"]["p3"], "healthy");
    let r = http::get(w.addr, "/v1/health/models/nope").unwrap();
    assert_eq!(r.status, 404);
    let r = http::get(w.addr, "/v1/health/models").unwrap();
    assert_eq!(r.json()["total_models"], 11);
    assert!(r.json()["models"]["fast"].is_object());

    let r = http::get(w.addr, "/v1/health/performance").unwrap();
    assert_eq!(r.status, 200);
    let p = r.json();
    let (ct, st) = (
        p["concurrent_time"].as_f64().unwrap(),
        p["sequential_time"].as_f64().unwrap(),
    );
    assert!(ct < 3.0 && st > 9.0, "{p}");
    assert!(p["speedup"].as_f64().unwrap() > 3.0, "{p}");
    assert!(p["improvement_percent"].as_f64().unwrap() > 60.0, "{p}");
    assert_eq!(p["total_models"], 11);
    assert_eq!(p["total_providers"], 10);
}

#[test]
fn a_probe_storm_makes_one_probe_round() {
    let up = Upstream::start();
    slow_models(&up, 10);
    let mut cfg = Cfg::new(many(&up, 10));
    cfg.cache_ttl = "60s";
    let w = cfg.start();
    let addr = w.addr;
    let threads: Vec<_> = (0..50)
        .map(|i| {
            std::thread::spawn(move || {
                let path = if i % 5 == 0 {
                    "/v1/health/models"
                } else {
                    "/v1/health"
                };
                http::get(addr, path).map(|r| (r.status, r.json()["status"].clone()))
            })
        })
        .collect();
    for t in threads {
        let (status, health) = t.join().unwrap().unwrap();
        assert_eq!(status, 200);
        assert_eq!(health, "healthy");
    }
    assert_eq!(
        up.request_count(),
        10,
        "one probe per provider for all 50 calls"
    );
    // Within cache_ttl, later calls are answered from the same round.
    let t = Instant::now();
    assert_eq!(http::get(addr, "/v1/health").unwrap().status, 200);
    assert!(t.elapsed() < Duration::from_millis(900));
    assert_eq!(up.request_count(), 10);
}

#[test]
fn waiting_anthropic_stream_reports_a_provider_failure_as_an_error_event() {
    let up = Upstream::start();
    let gate = Gate::new();
    up.enqueue(
        "/v1/messages",
        Script::json(200, json!({"type": "message"})).wait_headers(&gate),
    );
    let mut cfg = Cfg::new(support::worker::anthropic_provider(
        "an",
        &up.url(""),
        r#"["c1"]"#,
        "UP_KEY",
        "max_concurrency = 1",
    ));
    cfg.ping = "200ms";
    let w = cfg.start();
    let b = json!({"model": "c1", "max_tokens": 5, "messages": []}).to_string();
    let first = http::send(w.addr, "POST", "/v1/messages", &[], Some(b.as_bytes())).unwrap();
    assert!(up.wait_requests(1, Duration::from_secs(5)));
    let sb = json!({"model": "c1", "max_tokens": 5, "stream": true, "messages": []}).to_string();
    let mut s = Stream::open(w.addr, "POST", "/v1/messages", &[], Some(sb.as_bytes())).unwrap();
    assert_eq!(s.status, 200);
    s.read_until("event: ping\ndata: {\"type\": \"ping\"}\n\n")
        .unwrap();
    // The slot frees, but the provider then fails: the stream that already started must end
    // with the dialect's error event, never cleanly.
    up.set(
        "/v1/messages",
        Script::json(
            500,
            json!({"type": "error", "error": {"type": "api_error", "message": "upstream exploded"}}),
        ),
    );
    gate.open();
    let mut first = Stream::from_stream(first, false).unwrap();
    assert_eq!(first.status, 200);
    let (got, _) = s
        .read_to_end()
        .expect_err("a failed stream must not end cleanly");
    let text = String::from_utf8_lossy(&got);
    assert!(
        text.contains("event: error\ndata: {") && text.contains("upstream exploded"),
        "{text}"
    );
    assert_eq!(
        up.request_count(),
        2,
        "the held request, then one attempt: a provider that failed is not sent it again"
    );
    drop(first.read_to_end());
}

#[test]
fn background_probes_move_an_open_breaker_to_half_open() {
    let (a, b) = two_upstreams();
    a.set("/v1/chat/completions", Script::json(500, json!({})));
    // a's model list fails at first, so the background probes cannot help it yet.
    a.set("/v1/models", Script::json(500, json!({})));
    b.set("/v1/models", Script::json(200, json!({"data": []})));
    // `nokey` names a key variable that is not set: it is reported, never probed.
    let nokey = openai_provider("nokey", &a.url("/v1"), r#"["m2"]"#, "NO_SUCH_KEY_VAR", "");
    let mut cfg = Cfg::new(provider("a", &a, "") + &provider("b", &b, "") + &nokey);
    cfg.probe_interval = "200ms";
    let w = cfg.start();
    for _ in 0..6 {
        assert_eq!(chat(&w).status, 200);
    }
    assert_eq!(circuit_state(&w, "a"), Some(1));
    // Failing probes keep it open (open_timeout is 60 s); probes keep coming, concurrently.
    assert!(a.wait_requests(a.request_count() + 2, Duration::from_secs(5)));
    assert_eq!(circuit_state(&w, "a"), Some(1));
    assert_eq!(circuit_state(&w, "b"), Some(0));
    // a recovers: the next background probe moves it to half-open, with no request at all.
    let before = a
        .requests()
        .iter()
        .filter(|r| r.path == "/v1/chat/completions")
        .count();
    a.set("/v1/models", Script::json(200, json!({"data": []})));
    assert!(
        wait_until(Duration::from_secs(5), || circuit_state(&w, "a") == Some(2)),
        "the background probe never moved a to half-open"
    );
    let after = a
        .requests()
        .iter()
        .filter(|r| r.path == "/v1/chat/completions")
        .count();
    assert_eq!(before, after, "moved by the probe, not by traffic");
    let v = http::get(w.addr, "/v1/health").unwrap().json();
    assert_eq!(v["providers"]["nokey"]["status"], "unhealthy");
    assert_eq!(
        v["providers"]["nokey"]["error"],
        "$NO_SUCH_KEY_VAR is not set"
    );
    assert_eq!(v["models"]["m2"]["status"], "unhealthy");
    assert_eq!(v["status"], "degraded");
    assert!(
        a.requests()
            .iter()
            .all(|r| r.header("authorization").is_some()),
        "the keyless provider was probed"
    );
}
