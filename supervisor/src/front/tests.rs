//! In-process tests of the front listener over real sockets: mock workers on loopback ports, the
//! real `serve`, a real HTTP client. See `testkit` for the mock workers' steering headers.

use super::testkit::*;
use crate::pool::{WorkerSlot, WorkerState};
use http_body_util::BodyExt;
use std::sync::atomic::Ordering::SeqCst;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

#[tokio::test]
async fn forwards_plain_and_streamed_chat() {
    let h = Harness::start(2, test_config()).await;
    let r = h.chat(false, &[]).await;
    assert_eq!(r.status(), 200);
    assert!(r.headers().contains_key("x-request-id"));
    let seen = r.headers()["x-seen-request-id"].clone();
    assert_eq!(
        r.headers()["x-request-id"],
        seen,
        "the worker got the same request id"
    );
    let w = worker_of(&r);
    let v = json_body(r).await;
    assert_eq!(v["model"], "demo");
    assert_eq!(v["worker"], w);

    let r = h.chat(true, &[("x-request-id", "abc-1")]).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-request-id"], "abc-1");
    assert!(r.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    let (text, clean) = read_all(r).await;
    assert!(clean);
    assert!(
        text.contains("data: {\"n\":2}") && text.ends_with("data: [DONE]\n\n"),
        "{text}"
    );
    h.until("in-flight back to 0", || h.inflight() == 0).await;
    let served: u64 = h.slots.load().iter().map(|s| s.served.load(SeqCst)).sum();
    assert_eq!(served, 2);
}

#[tokio::test]
async fn idle_worker_gets_the_next_request() {
    let h = Harness::start(3, test_config()).await;
    let slow = [("x-test-chunks", "1000"), ("x-test-interval-ms", "20")];
    let a = h.chat(true, &slow).await;
    let b = h.chat(true, &slow).await;
    let (wa, wb) = (worker_of(&a), worker_of(&b));
    assert_ne!(wa, wb, "two idle workers share the first two streams");
    let states: Vec<WorkerState> = h.slots.load().iter().map(|s| s.state()).collect();
    assert_eq!(
        states
            .iter()
            .filter(|s| **s == WorkerState::BusyStreaming)
            .count(),
        2,
        "{states:?}"
    );
    for _ in 0..5 {
        let c = h.chat(false, &[]).await;
        let wc = worker_of(&c);
        assert!(
            wc != wa && wc != wb,
            "the idle worker {wc} should serve, not {wa} or {wb}"
        );
        let _ = json_body(c).await;
    }
    drop((a, b));
    h.until("streams released", || h.inflight() == 0).await;
}

#[tokio::test]
async fn queued_requests_wait_then_succeed() {
    let mut cfg = test_config();
    cfg.pool.worker_max_inflight = 1;
    let h = Arc::new(Harness::start(1, cfg).await);
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let h = h.clone();
        tasks.push(tokio::spawn(async move {
            let r = h.chat(false, &[("x-test-wait-ms", "50")]).await;
            (r.status(), json_body(r).await)
        }));
    }
    h.until("some requests queue", || h.metrics.queue_depth.get() > 0)
        .await;
    for t in tasks {
        let (st, v) = t.await.unwrap();
        assert_eq!(st, 200, "{v}");
    }
    assert_eq!(h.metrics.queue_depth.get(), 0);
    assert_eq!(h.workers[0].hits.load(SeqCst), 4);
}

#[tokio::test]
async fn queue_timeout_and_full_queue_give_503() {
    let mut cfg = test_config();
    cfg.pool.worker_max_inflight = 1;
    cfg.pool.queue_timeout = Duration::from_millis(300);
    cfg.pool.max_queue = 1;
    let h = Arc::new(Harness::start(1, cfg).await);
    let hold = h
        .chat(
            true,
            &[("x-test-chunks", "1000"), ("x-test-interval-ms", "20")],
        )
        .await;
    let h2 = h.clone();
    let waiter = tokio::spawn(async move { h2.chat(false, &[]).await });
    h.until("one waiter", || h.metrics.queue_depth.get() == 1)
        .await;
    let t = Instant::now();
    let full = h.chat(false, &[]).await;
    assert_eq!(full.status(), 503);
    assert!(full.headers().contains_key("retry-after"));
    assert!(
        t.elapsed() < Duration::from_millis(300),
        "a full queue refuses at once"
    );
    assert_eq!(
        json_body(full).await["error"]["code"],
        "service_unavailable"
    );
    let timed_out = waiter.await.unwrap();
    assert_eq!(timed_out.status(), 503);
    assert!(timed_out.headers().contains_key("retry-after"));
    drop(hold);
    h.until("released", || h.inflight() == 0).await;
    assert_eq!(h.chat(false, &[]).await.status(), 200);
}

/// A streaming chat (with `headers`) that has to wait, with pings every 50ms, while a slow plain
/// chat holds the only slot of the only worker; with the harness, which must outlive the read.
async fn waiting_chat(
    headers: &[(&str, &str)],
) -> (Harness, http::Response<hyper::body::Incoming>) {
    let mut cfg = test_config();
    cfg.pool.worker_max_inflight = 1;
    cfg.server.stream_ping_interval = Duration::from_millis(50);
    let h = Harness::start(1, cfg).await;
    let hold = h.chat(false, &[("x-test-wait-ms", "400")]);
    let waiting = async {
        h.until("holder in flight", || h.inflight() == 1).await;
        h.chat(true, headers).await
    };
    let (held, r) = tokio::join!(hold, waiting);
    assert_eq!(held.status(), 200);
    (h, r)
}

#[tokio::test]
async fn waiting_stream_gets_pings_then_the_stream() {
    let (_h, r) = waiting_chat(&[]).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "text/event-stream");
    let (text, clean) = read_all(r).await;
    assert!(clean, "{text}");
    assert!(text.starts_with(": ping\n\n"), "{text}");
    assert!(text.ends_with("data: [DONE]\n\n"), "{text}");
}

#[tokio::test]
async fn a_waiting_stream_answered_with_json_ends_with_an_error_event() {
    let (_h, r) = waiting_chat(&[("x-test-json", "1")]).await;
    assert_eq!(r.status(), 200);
    let (text, clean) = read_all(r).await;
    assert!(!clean, "JSON is no stream: {text}");
    assert!(text.starts_with(": ping\n\n"), "{text}");
    assert!(
        !text.contains("a stream\"}"),
        "the JSON is not spliced in: {text}"
    );
    assert!(text.contains("data: {\"error\""), "{text}");
    assert!(text.contains("instead of an event stream"), "{text}");
}

#[tokio::test]
async fn waiting_stream_timeout_is_an_error_event() {
    let mut cfg = test_config();
    cfg.pool.worker_max_inflight = 1;
    cfg.pool.queue_timeout = Duration::from_millis(300);
    cfg.server.stream_ping_interval = Duration::from_millis(50);
    let h = Harness::start(1, cfg).await;
    let _hold = h
        .chat(
            true,
            &[("x-test-chunks", "1000"), ("x-test-interval-ms", "20")],
        )
        .await;
    let r = h
        .send(
            "POST",
            "/v1/messages",
            &[],
            r#"{"model":"demo","stream":true}"#,
        )
        .await;
    assert_eq!(r.status(), 200);
    let (text, clean) = read_all(r).await;
    assert!(!clean, "a timed-out stream must not end cleanly");
    assert!(
        text.starts_with("event: ping\ndata: {\"type\": \"ping\"}\n\n"),
        "{text}"
    );
    assert!(text.contains("event: error\ndata: {"), "{text}");
}

#[tokio::test]
async fn broken_worker_stream_ends_with_an_error() {
    let h = Harness::start(1, test_config()).await;
    let r = h
        .chat(true, &[("x-test-break", "1"), ("x-test-interval-ms", "20")])
        .await;
    let (text, clean) = read_all(r).await;
    assert!(!clean, "{text}");
    assert!(text.contains("data: {\"error\""), "{text}");
    h.until("released", || h.inflight() == 0).await;
}

#[tokio::test]
async fn dead_workers_are_retried_elsewhere() {
    // Slot 0: a port nobody listens on (refused). Slot 1: accepts, then closes before headers.
    let refused = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let closer = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let closer_port = closer.local_addr().unwrap().port();
    let closer_task = tokio::spawn(async move {
        loop {
            let Ok((s, _)) = closer.accept().await else {
                return;
            };
            drop(s);
        }
    });
    let good = MockWorker::start(2).await;
    let mk = |id, port| {
        let s = Arc::new(WorkerSlot::new(id, port));
        s.set_lifecycle(WorkerState::Idle);
        s
    };
    let slots = vec![mk(0, refused), mk(1, closer_port), good.slot(2)];
    let h = Harness::with_slots(slots, vec![good], test_config()).await;
    for _ in 0..20 {
        let r = h.chat(false, &[]).await;
        assert_eq!(r.status(), 200);
        assert_eq!(worker_of(&r), 2);
        let _ = json_body(r).await;
    }
    closer_task.abort();
}

#[tokio::test]
async fn inflight_returns_to_zero_after_client_disconnects() {
    let h = Harness::start(2, test_config()).await;
    for _ in 0..100 {
        let r = h
            .chat(
                true,
                &[("x-test-chunks", "100000"), ("x-test-interval-ms", "1")],
            )
            .await;
        let mut body = r.into_body();
        let _ = body.frame().await;
        drop(body);
    }
    h.until("all disconnects accounted", || h.inflight() == 0)
        .await;
    let streaming: u32 = h
        .slots
        .load()
        .iter()
        .map(|s| s.streaming.load(SeqCst))
        .sum();
    assert_eq!(streaming, 0);
}

#[tokio::test]
async fn silent_requests_mark_the_worker_blocked() {
    let mut cfg = test_config();
    cfg.pool.blocked_after = Duration::from_millis(100);
    let h = Harness::start(1, cfg).await;
    let slot = h.slots.load()[0].clone();
    let req = h.chat(false, &[("x-test-wait-ms", "600")]);
    let watch = async {
        h.until("BUSY_BLOCKED", || slot.state() == WorkerState::BusyBlocked)
            .await;
        assert!(!slot.has_room(256), "a blocked worker gets no new work");
    };
    let (r, ()) = tokio::join!(req, watch);
    assert_eq!(r.status(), 200);
    let _ = json_body(r).await;
    h.until("IDLE again", || slot.state() == WorkerState::Idle)
        .await;
}

#[tokio::test]
async fn waiting_stream_with_a_worker_error_ends_with_an_error_event() {
    let mut cfg = test_config();
    cfg.server.stream_ping_interval = Duration::from_millis(50);
    let h = Harness::start(1, cfg).await;
    // The worker takes 300 ms, then refuses: the client already has its 200 and pings.
    let slow_fail = [("x-test-wait-ms", "300"), ("x-test-status", "503")];
    let body = r#"{"model":"demo","stream":true}"#;
    let r = h
        .send("POST", "/v1/chat/completions", &slow_fail, body)
        .await;
    assert_eq!(r.status(), 200);
    let (text, clean) = read_all(r).await;
    assert!(!clean, "{text}");
    assert!(text.starts_with(": ping\n\n"), "{text}");
    assert!(
        text.contains(r#""message":"mock says no""#),
        "the worker's message is relayed: {text}"
    );
    assert!(!text.contains("[DONE]"));
    h.until("released", || h.inflight() == 0).await;
}

#[tokio::test]
async fn a_waiter_that_hangs_up_leaves_the_queue() {
    use tokio::io::AsyncWriteExt;
    let mut cfg = test_config();
    cfg.pool.worker_max_inflight = 1;
    cfg.pool.queue_timeout = Duration::from_secs(60);
    let h = Harness::start(1, cfg).await;
    let _hold = h
        .chat(
            true,
            &[("x-test-chunks", "1000"), ("x-test-interval-ms", "20")],
        )
        .await;
    let mut s = tokio::net::TcpStream::connect(h.addr).await.unwrap();
    let body = r#"{"model":"demo"}"#;
    let head = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: localhost\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(head.as_bytes()).await.unwrap();
    h.until("queued", || h.metrics.queue_depth.get() == 1).await;
    drop(s);
    h.until("the waiter left with its client", || {
        h.metrics.queue_depth.get() == 0
    })
    .await;
}

#[tokio::test]
async fn a_silent_stream_marks_the_worker_blocked_until_bytes_flow() {
    let mut cfg = test_config();
    cfg.pool.blocked_after = Duration::from_millis(100);
    let h = Harness::start(1, cfg).await;
    let slot = h.slots.load()[0].clone();
    let r = h
        .chat(
            true,
            &[("x-test-chunks", "3"), ("x-test-interval-ms", "400")],
        )
        .await;
    assert_eq!(r.status(), 200);
    let mut body = r.into_body();
    let first = body.frame().await.unwrap().unwrap();
    assert!(first.is_data());
    // Headers and a first chunk arrived: streaming, not blocked, until the silence lasts.
    assert_eq!(slot.state(), WorkerState::BusyStreaming);
    let read = async {
        let mut n = 1;
        while let Some(f) = body.frame().await {
            f.unwrap();
            n += 1;
        }
        n
    };
    let watch = h.until("BUSY_BLOCKED between chunks", || {
        slot.state() == WorkerState::BusyBlocked
    });
    let (n, ()) = tokio::join!(read, watch);
    assert!(n >= 4, "every chunk arrives: {n}");
    h.until("IDLE again", || slot.state() == WorkerState::Idle)
        .await;
}
