//! In-process tests of what the front decides before and besides forwarding: tokens, client
//! limits, Host, body size, CORS, sticky sessions, the supervisor-served endpoints, reloads,
//! HTTP/2 and graceful stop.

use super::testkit::*;
use crate::pool::WorkerState;
use http_body_util::BodyExt;
use std::sync::atomic::Ordering::SeqCst;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

#[tokio::test]
async fn tokens_and_client_limits() {
    let mut cfg = test_config();
    std::env::set_var("FRONT_TEST_TOKEN_A", "s3cret");
    std::env::set_var("FRONT_TEST_CLIENT_A", "cli-key");
    cfg.server.auth_token_env = "FRONT_TEST_TOKEN_A".into();
    cfg.pool.queue_timeout = Duration::from_millis(300);
    cfg.clients.push(gateway::config::ClientConfig {
        name: "desk".into(),
        token_env: "FRONT_TEST_CLIENT_A".into(),
        max_concurrency: 1,
        ..Default::default()
    });
    let h = Harness::start(2, cfg).await;
    assert_eq!(h.chat(false, &[]).await.status(), 401);
    let wrong = h.chat(false, &[("authorization", "Bearer nope")]).await;
    assert_eq!(wrong.status(), 401);
    assert_eq!(
        json_body(wrong).await["error"]["type"],
        "authentication_error"
    );
    let anth = h.send("POST", "/v1/messages", &[], "{}").await;
    assert_eq!(anth.status(), 401);
    let anth = json_body(anth).await;
    assert_eq!(anth["type"], "error", "401 in the Anthropic dialect");
    assert_eq!(anth["error"]["type"], "authentication_error");
    assert_eq!(
        h.chat(false, &[("authorization", "Bearer s3cret")])
            .await
            .status(),
        200
    );
    assert_eq!(
        h.chat(false, &[("x-api-key", "s3cret")]).await.status(),
        200
    );
    assert_eq!(
        h.send("GET", "/healthz", &[], "").await.status(),
        200,
        "health needs no token"
    );
    // The client may have one request at a time; a second waits, then gets 429.
    let key = [("x-api-key", "cli-key")];
    let hold = h
        .chat(
            true,
            &[
                key[0],
                ("x-test-chunks", "1000"),
                ("x-test-interval-ms", "20"),
            ],
        )
        .await;
    assert_eq!(hold.status(), 200);
    let limited = h.chat(false, &key).await;
    assert_eq!(limited.status(), 429);
    drop(hold);
    h.until("released", || h.inflight() == 0).await;
    assert_eq!(h.chat(false, &key).await.status(), 200);
}

#[tokio::test]
async fn host_check_sizes_and_bad_requests() {
    let mut cfg = test_config();
    cfg.server.allowed_hosts = vec!["gw.example".into()];
    cfg.server.max_body_bytes = 1000;
    let h = Harness::start(1, cfg).await;
    let evil = h.chat(false, &[("host", "evil.example")]).await;
    assert_eq!(evil.status(), 421);
    assert_eq!(
        h.chat(false, &[("host", "gw.example:80")]).await.status(),
        200
    );
    assert_eq!(
        h.chat(false, &[("host", "localhost:1234")]).await.status(),
        200
    );
    let big = format!(r#"{{"model":"demo","pad":"{}"}}"#, "x".repeat(2000));
    let r = h.send("POST", "/v1/chat/completions", &[], &big).await;
    assert_eq!(r.status(), 413);
    let r = h
        .send("POST", "/v1/chat/completions", &[], "{not json")
        .await;
    assert_eq!(r.status(), 400);
    let r = h
        .send("POST", "/v1/chat/completions", &[], r#"{"messages":[]}"#)
        .await;
    assert_eq!(r.status(), 400);
    assert_eq!(json_body(r).await["error"]["type"], "invalid_request_error");
    let r = h.send("GET", "/v1/nothing", &[], "").await;
    assert_eq!(r.status(), 404);
    assert_eq!(
        h.workers[0].hits.load(SeqCst),
        2,
        "bad requests never reach a worker"
    );
}

#[tokio::test]
async fn chunked_body_over_the_limit_is_413() {
    let mut cfg = test_config();
    cfg.server.max_body_bytes = 1000;
    let h = Harness::start(1, cfg).await;
    let chunks = futures_util::stream::iter((0..20).map(|_| {
        Ok::<_, std::convert::Infallible>(hyper::body::Frame::data(bytes::Bytes::from(vec![
            b' ';
            100
        ])))
    }));
    let req = http::Request::post(h.url("/v1/chat/completions"))
        .body(http_body_util::StreamBody::new(chunks))
        .unwrap();
    let c = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build(hyper_util::client::legacy::connect::HttpConnector::new());
    let r = c.request(req).await.unwrap();
    assert_eq!(r.status(), 413);
}

#[tokio::test]
async fn cors_preflight_and_origin_header() {
    let mut cfg = test_config();
    cfg.server.cors_allow_origins = vec!["tauri://localhost".into()];
    let h = Harness::start(1, cfg).await;
    let pre = [
        ("origin", "tauri://localhost"),
        ("access-control-request-method", "POST"),
    ];
    let r = h.send("OPTIONS", "/v1/chat/completions", &pre, "").await;
    assert_eq!(r.status(), 204);
    assert_eq!(
        r.headers()["access-control-allow-origin"],
        "tauri://localhost"
    );
    assert!(r.headers().contains_key("access-control-allow-methods"));
    let r = h.chat(false, &[("origin", "tauri://localhost")]).await;
    assert_eq!(
        r.headers()["access-control-allow-origin"],
        "tauri://localhost"
    );
    let r = h.chat(false, &[("origin", "https://evil.example")]).await;
    assert!(!r.headers().contains_key("access-control-allow-origin"));
}

#[tokio::test]
async fn sticky_sessions_stay_on_one_worker() {
    let h = Harness::start(3, test_config()).await;
    for session in ["alpha", "beta", "gamma"] {
        let first = h.chat(false, &[("x-session-id", session)]).await;
        let w = worker_of(&first);
        let _ = json_body(first).await;
        for _ in 0..6 {
            let r = h.chat(false, &[("x-session-id", session)]).await;
            assert_eq!(worker_of(&r), w, "session {session}");
            let _ = json_body(r).await;
        }
    }
}

#[tokio::test]
async fn models_list_never_waits_on_workers() {
    let mut cfg = test_config();
    cfg.models_cache.min_refresh_interval = Duration::from_millis(0);
    cfg.models_cache.ttl = Duration::from_millis(0);
    let h = Harness::start(2, cfg).await;
    for w in &h.workers {
        w.frozen.store(true, SeqCst);
    }
    // Every worker hangs: the configured floor list comes back anyway, without waiting.
    let r = tokio::time::timeout(Duration::from_secs(1), h.send("GET", "/v1/models", &[], ""))
        .await
        .expect("answered while workers hang");
    let v = json_body(r).await;
    let ids: Vec<String> = v["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap().to_string())
        .collect();
    assert!(
        ids.contains(&"demo".to_string()) && ids.contains(&"fast".to_string()),
        "{ids:?}"
    );
    for w in &h.workers {
        w.frozen.store(false, SeqCst);
    }
    // Once a refresh succeeds, the workers' list is served.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let v = json_body(h.send("GET", "/v1/models", &[], "").await).await;
        if v["data"][0]["id"]
            .as_str()
            .unwrap_or("")
            .starts_with("from-worker-")
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the worker list never arrived: {v}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn metrics_page_merges_workers_and_skips_silent_ones() {
    let h = Harness::start(3, test_config()).await;
    h.workers[2].frozen.store(true, SeqCst);
    let _ = json_body(h.chat(false, &[]).await).await;
    let r = h.send("GET", "/metrics", &[], "").await;
    assert_eq!(r.status(), 200);
    let text =
        String::from_utf8(r.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap();
    assert_eq!(
        text.matches("# TYPE gateway_provider_requests counter")
            .count(),
        1,
        "{text}"
    );
    assert!(text.contains(
        "gateway_provider_requests_total{worker=\"0\",provider=\"demo\",outcome=\"ok\"} 0"
    ));
    assert!(text.contains("gateway_provider_requests_total{worker=\"1\","));
    assert!(
        !text.contains("worker=\"2\",provider"),
        "the frozen worker is skipped"
    );
    assert!(
        text.contains("gateway_requests_total{path=\"/v1/chat/completions\",code=\"200\"} 1"),
        "{text}"
    );
    assert!(text.contains("gateway_worker_inflight{worker=\"0\"}"));
    assert!(text.ends_with("# EOF\n"));
}

#[tokio::test]
async fn health_ready_and_graceful_stop() {
    let mut h = Harness::start(1, test_config()).await;
    assert_eq!(h.send("GET", "/readyz", &[], "").await.status(), 200);
    h.slots.load()[0].set_lifecycle(WorkerState::Restarting);
    assert_eq!(h.send("GET", "/readyz", &[], "").await.status(), 503);
    h.slots.load()[0].set_lifecycle(WorkerState::Idle);
    // A request in flight at shutdown still completes.
    let pending = h.chat(false, &[("x-test-wait-ms", "200")]);
    let stop = async {
        h.until("in flight", || h.inflight() == 1).await;
        h.trigger.trigger();
    };
    let (r, ()) = tokio::join!(pending, stop);
    assert_eq!(r.status(), 200);
    let _ = json_body(r).await;
    tokio::time::timeout(Duration::from_secs(5), h.task.take().unwrap())
        .await
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn reload_applies_to_the_next_request() {
    let h = Harness::start(1, test_config()).await;
    assert_eq!(
        h.chat(false, &[]).await.status(),
        200,
        "open: no token configured"
    );
    std::env::set_var("FRONT_TEST_TOKEN_RELOAD", "after-reload");
    let mut cfg = test_config();
    cfg.server.auth_token_env = "FRONT_TEST_TOKEN_RELOAD".into();
    h.config.store(Arc::new(cfg));
    assert_eq!(
        h.chat(false, &[]).await.status(),
        401,
        "the reloaded token applies at once"
    );
    assert_eq!(
        h.chat(false, &[("authorization", "Bearer after-reload")])
            .await
            .status(),
        200
    );
}

#[tokio::test]
async fn http2_prior_knowledge_is_served() {
    let h = Harness::start(1, test_config()).await;
    let c = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .http2_only(true)
        .build(hyper_util::client::legacy::connect::HttpConnector::new());
    let req = http::Request::post(h.url("/v1/chat/completions"))
        .body(http_body_util::Full::new(bytes::Bytes::from_static(
            br#"{"model":"demo"}"#,
        )))
        .unwrap();
    let r = c.request(req).await.unwrap();
    assert_eq!(r.version(), http::Version::HTTP_2);
    assert_eq!(r.status(), 200);
    assert_eq!(json_body(r).await["model"], "demo");
}

/// A client that uploads its whole (oversized) body before reading, as most SDKs do, still
/// reads the 413: the front drains the upload instead of closing on it, which would reset the
/// connection and lose the answer.
#[tokio::test]
async fn an_oversized_upload_written_in_full_still_reads_its_413() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut cfg = test_config();
    cfg.server.max_body_bytes = 1000;
    let h = Harness::start(1, cfg).await;
    let body_len = 8 << 20;
    let mut s = tokio::net::TcpStream::connect(h.addr).await.unwrap();
    let head = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: localhost\r\ncontent-type: application/json\r\ncontent-length: {body_len}\r\n\r\n"
    );
    s.write_all(head.as_bytes()).await.unwrap();
    let chunk = vec![b' '; 64 << 10];
    let mut sent = 0;
    while sent < body_len {
        if s.write_all(&chunk).await.is_err() {
            break;
        }
        sent += chunk.len();
    }
    assert_eq!(sent, body_len, "the upload was cut off before it ended");
    let mut out = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out)).await;
    let text = String::from_utf8_lossy(&out);
    assert!(read.is_ok(), "the connection was not closed: {text}");
    assert!(text.starts_with("HTTP/1.1 413"), "{read:?}: {text}");
    assert!(text.contains("\"error\""), "{text}");
}
