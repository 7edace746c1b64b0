//! The front listener end to end, through the real `supervisor start` binary and its workers:
//! forwarding, IDLE-first dispatch, queueing and 503s, keep-alive pings, and a worker killed
//! under load.

mod support;

use nix::sys::signal::Signal;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::front::*;
use support::http;
use support::process::{signal, wait_until};

#[test]
fn chat_plain_and_streamed_through_the_front() {
    let (_env, run) = start(2, "", "", "");
    let r = chat(run.listen, "demo", &[]);
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.header("x-request-id").is_some());
    worker_of(&r.headers);
    let v = r.json();
    assert!(
        v["choices"][0]["message"]["content"]
            .as_str()
            .unwrap()
            .contains("mock reply"),
        "{v}"
    );

    let mut s = open_stream(run.listen, "demo", &[]);
    assert_eq!(s.status, 200);
    assert!(s
        .header("content-type")
        .unwrap()
        .starts_with("text/event-stream"));
    let all = String::from_utf8(s.read_to_end().expect("a complete stream")).unwrap();
    assert!(all.contains("data: [DONE]"), "{all}");
}

#[test]
fn an_idle_worker_takes_the_next_request() {
    let (_env, run) = start(3, "", "", "");
    let mut a = open_stream(run.listen, "slow", &[]);
    let mut b = open_stream(run.listen, "slow", &[]);
    a.next_chunk().unwrap();
    b.next_chunk().unwrap();
    let busy = [worker_of(&a.headers), worker_of(&b.headers)];
    assert_ne!(
        busy[0], busy[1],
        "two idle workers share the first two streams"
    );
    for _ in 0..5 {
        let r = chat(run.listen, "demo", &[]);
        assert_eq!(r.status, 200);
        let w = worker_of(&r.headers);
        assert!(
            !busy.contains(&w),
            "worker {w} is streaming; the idle one should serve"
        );
    }
}

#[test]
fn requests_queue_then_succeed() {
    let (_env, run) = start(
        2,
        "worker_max_inflight = 1\nqueue_timeout = \"20s\"",
        "",
        "",
    );
    let addr = run.listen;
    // Six 400 ms requests for two places: four wait their turn, none fails.
    let handles: Vec<_> = (0..6)
        .map(|_| std::thread::spawn(move || chat(addr, "lazy", &[]).status))
        .collect();
    let queued = wait_until(Duration::from_secs(5), || {
        gauge_sum(&metrics(addr).1, "gateway_queue_depth") >= 1.0
    });
    let statuses: Vec<u16> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    assert!(queued, "requests should have waited in the queue");
    assert_eq!(statuses, vec![200; 6]);
}

#[test]
fn queue_timeout_and_full_queue_answer_503() {
    let pool = "worker_max_inflight = 1\nqueue_timeout = \"1500ms\"\nmax_queue = 1";
    let (_env, run) = start(1, pool, "", "");
    let addr = run.listen;
    let mut hold = open_stream(addr, "slow", &[]);
    hold.next_chunk().unwrap();
    let waiter = std::thread::spawn(move || chat(addr, "demo", &[]));
    assert!(
        wait_until(Duration::from_secs(5), || gauge_sum(
            &metrics(addr).1,
            "gateway_queue_depth"
        ) == 1.0),
        "the second request should be waiting"
    );
    let t = Instant::now();
    let full = chat(addr, "demo", &[]);
    assert_eq!(full.status, 503);
    assert!(full.header("retry-after").is_some());
    assert!(
        t.elapsed() < Duration::from_millis(1500),
        "a full queue refuses at once"
    );
    let timed_out = waiter.join().unwrap();
    assert_eq!(timed_out.status, 503, "{}", timed_out.text());
    assert!(timed_out.header("retry-after").is_some());
}

#[test]
fn a_waiting_stream_receives_pings() {
    let (_env, run) = start(
        1,
        "worker_max_inflight = 1",
        "stream_ping_interval = \"100ms\"",
        "",
    );
    let addr = run.listen;
    let holder = std::thread::spawn(move || {
        let mut s = open_stream(addr, "slow", &[]);
        let _ = s.next_chunk();
        std::thread::sleep(Duration::from_millis(1000));
    });
    assert!(wait_until(Duration::from_secs(5), || gauge_sum(
        &metrics(addr).1,
        "gateway_worker_inflight"
    ) == 1.0));
    let mut s = open_stream(addr, "demo", &[]);
    assert_eq!(s.status, 200);
    let first = s.next_chunk().unwrap().unwrap();
    assert!(
        String::from_utf8_lossy(&first).starts_with(": ping"),
        "{}",
        String::from_utf8_lossy(&first)
    );
    let rest = String::from_utf8(s.read_to_end().expect("clean end after the wait")).unwrap();
    assert!(rest.contains("data: [DONE]"), "{rest}");
    holder.join().unwrap();
}

#[test]
fn killing_a_worker_fails_no_request() {
    let (env, run) = start(3, "", "", "");
    let addr = run.listen;
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    // `lazy` answers after 400 ms, so requests are always in flight on every worker, including
    // the one killed: those must be retried elsewhere, not failed.
    let loops: Vec<_> = (0..9)
        .map(|_| {
            let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
            std::thread::spawn(move || {
                while !stop.load(SeqCst) {
                    match http::request(
                        addr,
                        "POST",
                        "/v1/chat/completions",
                        &[],
                        Some(&body("lazy", false)),
                    ) {
                        Ok(r) if r.status == 200 => ok.fetch_add(1, SeqCst),
                        other => {
                            eprintln!("failed: {other:?}");
                            failed.fetch_add(1, SeqCst)
                        }
                    };
                }
            })
        })
        .collect();
    let mut stream = open_stream(addr, "slow", &[]);
    stream.next_chunk().unwrap();
    let victim = worker_of(&stream.headers);
    // Kill it while it also has non-streamed requests in flight (the stream plus at least one).
    let mut pid = 0;
    let busy = wait_until(Duration::from_secs(10), || {
        let (p, inflight) = worker_status(&env)[&victim];
        pid = p;
        inflight >= 2
    });
    assert!(
        busy,
        "worker {victim} never had requests in flight besides the stream"
    );
    assert!(wait_until(Duration::from_secs(10), || ok.load(SeqCst) > 12));
    signal(pid, Signal::SIGKILL);
    let cut = stream.read_to_end();
    assert!(
        cut.is_err(),
        "a stream on the killed worker must not end cleanly"
    );
    let before = ok.load(SeqCst);
    assert!(wait_until(Duration::from_secs(10), || ok.load(SeqCst) > before + 24));
    stop.store(true, SeqCst);
    for l in loops {
        l.join().unwrap();
    }
    assert_eq!(
        failed.load(SeqCst),
        0,
        "requests failed while a worker died"
    );
}
