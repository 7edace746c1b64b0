//! One provider health for the whole pool (issue #17, part 1), through the real supervisor and
//! three workers: a breaker opened in one worker keeps every worker off the provider, probes run
//! once per pool, a worker SIGKILLed while holding a half-open trial does not leave the breaker
//! stuck, and `/v1/health` says the same on every worker's port.

mod support;

use nix::sys::signal::Signal;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use support::process::{signal, wait_until, PoolConfig, TestEnv};
use support::upstream::{Gate, Script, Upstream};

fn completion() -> serde_json::Value {
    serde_json::json!({"id": "c", "object": "chat.completion", "created": 0, "model": "up",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}})
}

/// Three workers (`PoolConfig`), one OpenAI-kind provider `up` on `up`, the given
/// `[circuit_breaker]` and `[health]` keys. (`front::config` is not used: its `[health]` turns
/// probes off.)
fn config(up: &Upstream, breaker: &str, health: &str) -> String {
    PoolConfig::new(3)
        .health(health)
        .extra(&format!(
            r#"
[[providers]]
name = "up"
kind = "openai"
base_url = "{}"
models = ["up"]

[circuit_breaker]
failure_rate_threshold = 1.0
{breaker}
"#,
            up.url("/v1")
        ))
        .build()
}

/// Each worker's (pid, TCP address), by worker id.
fn workers(env: &TestEnv) -> Vec<(u32, SocketAddr)> {
    let st = env.status_json();
    let mut ws: Vec<_> = st["workers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| {
            (
                w["id"].as_u64().unwrap(),
                w["pid"].as_u64().unwrap_or(0) as u32,
                SocketAddr::from(([127, 0, 0, 1], w["port"].as_u64().unwrap() as u16)),
            )
        })
        .collect();
    ws.sort_by_key(|w| w.0);
    ws.into_iter().map(|(_, pid, a)| (pid, a)).collect()
}

fn chat(addr: SocketAddr) -> u16 {
    support::http::post_chat(addr, "up", false).map_or(0, |r| r.status)
}

fn chats_at_upstream(up: &Upstream) -> usize {
    up.requests()
        .iter()
        .filter(|r| r.path.ends_with("/chat/completions"))
        .count()
}

#[test]
fn a_breaker_opened_in_one_worker_keeps_every_worker_off_the_provider() {
    let up = Upstream::start();
    up.set("/v1/chat/completions", Script::status(500));
    let env = TestEnv::new(&config(
        &up,
        "consecutive_failures = 2\nhalf_open_successes = 1\nopen_timeout = \"4s\"",
        "probe_interval = \"0s\"",
    ));
    let _run = env.start(&[]);
    let ws = workers(&env);
    assert_eq!(ws.len(), 3);
    let opened = Instant::now();
    // Two failures in worker 0 open the breaker.
    assert_eq!(chat(ws[0].1), 500);
    assert_eq!(chat(ws[0].1), 500);
    assert_eq!(chats_at_upstream(&up), 2);
    // Workers 1 and 2 never failed on their own, yet refuse at once: the breaker is the pool's.
    for _ in 0..5 {
        for (_, addr) in &ws {
            assert_eq!(chat(*addr), 503, "an open breaker answers 503");
        }
    }
    assert!(
        opened.elapsed() < Duration::from_secs(4),
        "the check ran past open_timeout; it proved nothing"
    );
    assert_eq!(
        chats_at_upstream(&up),
        2,
        "no worker may send to the provider while its breaker is open"
    );
    // After open_timeout a trial reaches the provider again, from any worker.
    up.set("/v1/chat/completions", Script::json(200, completion()));
    assert!(
        wait_until(Duration::from_secs(10), || chat(ws[2].1) == 200),
        "the breaker never let a trial through after open_timeout"
    );
    assert!(opened.elapsed() >= Duration::from_secs(4), "reopened early");
    // One transition, counted once: by the worker that made it.
    let (_, samples) = support::front::metrics(_run.listen);
    let opens: f64 = samples
        .iter()
        .filter(|s| {
            s.name == "gateway_circuit_state_changes_total"
                && s.labels.iter().any(|(k, v)| k == "to" && v == "open")
        })
        .map(|s| s.value)
        .sum();
    assert_eq!(opens, 1.0, "closed->open counted once for the pool");
}

#[test]
fn probes_run_once_per_pool_per_interval() {
    let up = Upstream::start();
    up.set(
        "/v1/models",
        Script::json(200, serde_json::json!({"object": "list", "data": []})),
    );
    let env = TestEnv::new(&config(
        &up,
        "",
        "probe_interval = \"400ms\"\ncache_ttl = \"100ms\"",
    ));
    let _run = env.start(&[]);
    let probes = || {
        up.requests()
            .iter()
            .filter(|r| r.path.ends_with("/models"))
            .count()
    };
    assert!(
        wait_until(Duration::from_secs(10), || probes() >= 1),
        "no probe reached the provider"
    );
    let (start, t0) = (probes(), Instant::now());
    // A counting window, not synchronisation: 4 s at one round per 400 ms is about 10 rounds
    // for the pool; three workers probing on their own would be about 30.
    std::thread::sleep(Duration::from_secs(4));
    let n = probes() - start;
    let expected = t0.elapsed().as_secs_f64() / 0.4;
    assert!(
        (n as f64) <= expected + 2.0,
        "{n} probes in {:?}: the pool probes more than once per interval",
        t0.elapsed()
    );
    assert!(
        (n as f64) >= expected / 2.0,
        "{n} probes in {:?}: background probes stopped",
        t0.elapsed()
    );
}

#[test]
fn a_worker_sigkilled_during_a_half_open_trial_does_not_wedge_the_breaker() {
    let up = Upstream::start();
    up.set("/v1/chat/completions", Script::status(500));
    let env = TestEnv::new(&config(
        &up,
        "consecutive_failures = 2\nhalf_open_successes = 1\nopen_timeout = \"1s\"",
        "probe_interval = \"0s\"",
    ));
    let _run = env.start(&[]);
    let ws = workers(&env);
    assert_eq!(chat(ws[0].1), 500);
    assert_eq!(chat(ws[0].1), 500);
    // The trial request hangs at the provider, holding the pool's only trial slot.
    let gate = Gate::new();
    up.set(
        "/v1/chat/completions",
        Script::json(200, completion()).wait_headers(&gate),
    );
    let trial_worker = ws[1];
    let trial = std::thread::spawn(move || {
        // Retried until open_timeout has passed and worker 1 is admitted as the trial.
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if chat(trial_worker.1) != 503 {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    });
    assert!(
        up.wait_requests(3, Duration::from_secs(10)),
        "no half-open trial reached the provider"
    );
    // One trial at a time for the whole pool: the other workers refuse meanwhile.
    assert_eq!(chat(ws[0].1), 503);
    assert_eq!(chat(ws[2].1), 503);
    signal(trial_worker.0, Signal::SIGKILL);
    let _ = trial.join();
    up.set("/v1/chat/completions", Script::json(200, completion()));
    assert!(
        wait_until(Duration::from_secs(10), || chat(ws[2].1) == 200),
        "the breaker stayed stuck on the dead worker's trial slot"
    );
    gate.open();
}

#[test]
fn v1_health_agrees_on_every_worker() {
    let up = Upstream::start();
    up.set(
        "/v1/models",
        Script::json(200, serde_json::json!({"object": "list", "data": []})),
    );
    up.set("/v1/chat/completions", Script::status(500));
    let env = TestEnv::new(&config(
        &up,
        "consecutive_failures = 1\nopen_timeout = \"60s\"",
        "probe_interval = \"1h\"\ncache_ttl = \"60s\"",
    ));
    let _run = env.start(&[]);
    let ws = workers(&env);
    let health = |addr| {
        let r = support::http::get(addr, "/v1/health").unwrap();
        assert_eq!(r.status, 200, "{}", r.text());
        r.json()
    };
    // A round done (its success would move an open breaker to half-open early), then the
    // breaker opened from worker 2 only.
    health(ws[0].1);
    assert_eq!(chat(ws[2].1), 500);
    let answers: Vec<_> = ws.iter().map(|(_, a)| health(*a)).collect();
    for (i, a) in answers.iter().enumerate() {
        assert_eq!(a["providers"]["up"]["circuit"], "open", "worker {i}: {a}");
        assert_eq!(a["providers"]["up"]["status"], "healthy", "worker {i}: {a}");
        assert_eq!(
            a["timestamp"], answers[0]["timestamp"],
            "worker {i} answered from another round: {a} vs {}",
            answers[0]
        );
        assert_eq!(a["providers"], answers[0]["providers"], "worker {i}");
    }
}
