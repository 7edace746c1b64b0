//! Stopping and reloading through signals, end to end: SIGTERM lets an in-flight request finish
//! before the workers go; SIGHUP with a broken file keeps the old workers; SIGHUP with a good one
//! rolls every worker, one at a time, with no failed request.

mod support;

use nix::sys::signal::Signal;
use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::sync::Arc;
use std::time::Duration;
use support::http::{chat_body, post_json};
use support::process::{pid_alive, wait_until, PoolConfig, TestEnv};

/// `workers` workers, the built-in restart backoff, and a second mock provider `lazy` that
/// answers after 1.5 s.
fn config(workers: u32) -> String {
    PoolConfig::new(workers)
        .default_restart_backoff()
        .extra(
            r#"
[[providers]]
name = "lazy"
kind = "mock"
models = ["lazy"]
latency = "1500ms""#,
        )
        .build()
}

fn status(env: &TestEnv) -> serde_json::Value {
    env.status_json()
}

use support::process::worker_pids as pids;

#[test]
fn sigterm_lets_the_in_flight_request_finish_then_stops_everything() {
    let env = TestEnv::new(&config(1));
    let mut run = env.start(&[]);
    let workers = pids(&status(&env));
    let addr = run.listen;
    let request = std::thread::spawn(move || {
        post_json(addr, "/v1/chat/completions", &chat_body("lazy", false))
    });
    assert!(
        wait_until(Duration::from_secs(5), || status(&env)["workers"][0]
            ["inflight"]
            == 1),
        "request never in flight"
    );
    run.guard.signal(Signal::SIGTERM);
    let resp = request
        .join()
        .unwrap()
        .expect("in-flight request completes");
    assert_eq!(resp.status, 200, "{}", resp.text());
    run.expect_stopped_exit_0();
    assert!(workers.iter().all(|&p| !pid_alive(p as u32)));
}

#[test]
fn sighup_with_a_bad_config_keeps_running_and_a_good_one_rolls_all_workers() {
    let env = TestEnv::new(&config(2));
    let run = env.start(&[]);
    let before = pids(&status(&env));

    env.write_config(&config(2).replace("workers = 2", "workers = \"many\""));
    run.guard.signal(Signal::SIGHUP);
    assert!(
        wait_until(Duration::from_secs(10), || run
            .guard
            .stderr()
            .contains("expected u32")),
        "the config error was not logged:\n{}",
        run.guard.stderr()
    );
    let st = status(&env);
    assert_eq!(pids(&st), before, "workers changed on an invalid config");
    assert!(st["workers"]
        .as_array()
        .unwrap()
        .iter()
        .all(|w| w["state"] == "IDLE"));

    // A client keeps sending requests through the whole roll; none may fail.
    let stop = Arc::new(AtomicBool::new(false));
    let addr = run.listen;
    let client = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let (mut ok, mut failed) = (0, Vec::new());
            while !stop.load(SeqCst) {
                match post_json(addr, "/v1/chat/completions", &chat_body("demo", false)) {
                    Ok(r) if r.status == 200 => ok += 1,
                    Ok(r) => failed.push(format!("{} {}", r.status, r.text())),
                    Err(e) => failed.push(e.to_string()),
                }
            }
            (ok, failed)
        })
    };
    env.write_config(&config(3));
    run.guard.signal(Signal::SIGHUP);
    let rolled = wait_until(Duration::from_secs(30), || {
        let st = status(&env);
        let now = pids(&st);
        now.len() == 3
            && now.iter().all(|p| !before.contains(p))
            && st["workers"]
                .as_array()
                .unwrap()
                .iter()
                .all(|w| w["state"] == "IDLE")
    });
    stop.store(true, SeqCst);
    let (ok, failed) = client.join().unwrap();
    assert!(
        rolled,
        "not rolled: {}\n{}",
        status(&env),
        run.guard.stderr()
    );
    assert!(
        failed.is_empty(),
        "{} of {} requests failed during the roll: {failed:?}",
        failed.len(),
        ok + failed.len()
    );
    assert!(ok > 0);
    assert!(wait_until(Duration::from_secs(10), || before
        .iter()
        .all(|&p| !pid_alive(p as u32))));
}
