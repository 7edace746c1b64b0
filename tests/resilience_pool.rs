//! Pool-wide provider limits through the real supervisor: `max_concurrency` holds across all
//! workers, and the slots a SIGKILLed worker held come back (the supervisor zeroes its row).

mod support;

use nix::sys::signal::Signal;
use std::time::Duration;
use support::front::worker_status;
use support::process::{signal, wait_until, TestEnv};
use support::upstream::{Gate, Script, Upstream};

fn completion() -> serde_json::Value {
    serde_json::json!({"id": "c", "object": "chat.completion", "created": 0, "model": "up",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}})
}

fn config(up: &Upstream) -> String {
    support::front::config(
        3,
        "queue_timeout = \"20s\"",
        "",
        &format!(
            "\n[[providers]]\nname = \"up\"\nkind = \"openai\"\nbase_url = \"{}\"\nmodels = [\"up\"]\nmax_concurrency = 4\n",
            up.url("/v1")
        ),
    )
}

/// Sends `n` concurrent chat requests for model `up`; returns their statuses.
fn burst(addr: std::net::SocketAddr, n: usize) -> Vec<std::thread::JoinHandle<u16>> {
    (0..n)
        .map(|_| {
            std::thread::spawn(move || {
                support::http::request(
                    addr,
                    "POST",
                    "/v1/chat/completions",
                    &[],
                    Some(&support::front::body("up", false)),
                )
                .map_or(0, |r| r.status)
            })
        })
        .collect()
}

#[test]
fn limit_holds_across_three_workers() {
    let up = Upstream::start();
    up.set(
        "/v1/chat/completions",
        Script::json(200, completion()).delay_headers(Duration::from_millis(150)),
    );
    let env = TestEnv::new(&config(&up));
    let run = env.start(&[]);
    let statuses: Vec<u16> = burst(run.listen, 20)
        .into_iter()
        .map(|h| h.join().unwrap())
        .collect();
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    assert!(
        up.max_inflight() <= 4,
        "the provider saw {} at once",
        up.max_inflight()
    );
    assert!(
        up.max_inflight() >= 3,
        "the limit was never reached ({}); the test proved nothing",
        up.max_inflight()
    );
}

#[test]
fn slots_of_a_sigkilled_worker_come_back() {
    let up = Upstream::start();
    let gate = Gate::new();
    up.set(
        "/v1/chat/completions",
        Script::json(200, completion()).wait_headers(&gate),
    );
    let env = TestEnv::new(&config(&up));
    let run = env.start(&[]);
    let held = burst(run.listen, 4);
    assert!(
        up.wait_requests(4, Duration::from_secs(10)),
        "4 requests should reach the provider"
    );
    assert_eq!(up.inflight(), 4);
    // Kill the worker holding the most of them (it holds at least one: 4 requests, 3 workers).
    let status = worker_status(&env);
    let (&victim, &(pid, inflight)) = status.iter().max_by_key(|(_, (_, n))| *n).unwrap();
    assert!(inflight > 0, "no worker holds a request: {status:?}");
    signal(pid, Signal::SIGKILL);
    assert!(
        wait_until(Duration::from_secs(10), || worker_status(&env)
            .get(&victim)
            .is_some_and(|(p, _)| *p != pid && *p != 0)),
        "the killed worker was not replaced"
    );
    // The victim's requests were retried on other workers (the front retries a worker that died
    // before headers); they can only reach the provider if the dead worker's slots came back.
    assert!(
        wait_until(Duration::from_secs(10), || up.inflight() == 4),
        "only {} of 4 requests in flight at the provider: slots of the killed worker leaked",
        up.inflight()
    );
    gate.open();
    let statuses: Vec<u16> = held.into_iter().map(|h| h.join().unwrap()).collect();
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    assert!(
        up.max_inflight() <= 4,
        "the provider saw {} at once",
        up.max_inflight()
    );
}
