//! A cheap OTLP/HTTP sink for `bench/otel.sh` and `bench/span_cost.sh`: answers 200 to every
//! `POST /v1/traces` on 127.0.0.1, reads and discards the body (no protobuf decoding: the
//! decoding receiver is `tests/otel.rs`, where correctness is checked), and counts requests and
//! bytes. One thread, so its CPU is small next to what it measures. Prints its address on the
//! first line of stdout; writes `requests N bytes B` to COUNT_FILE on every request.
//! Usage: `otlp_sink [COUNT_FILE]`.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, Response};
use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

#[derive(Default)]
struct Seen {
    requests: AtomicU64,
    bytes: AtomicU64,
}

async fn sink(
    seen: Arc<Seen>,
    count_file: Option<Arc<str>>,
    req: Request<hyper::body::Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let ok = req.uri().path() == "/v1/traces";
    let n = match req.into_body().collect().await {
        Ok(b) => b.to_bytes().len() as u64,
        Err(_) => 0,
    };
    if ok {
        let r = seen.requests.fetch_add(1, Ordering::Relaxed) + 1;
        let b = seen.bytes.fetch_add(n, Ordering::Relaxed) + n;
        if let Some(f) = count_file {
            // A few dozen batches a second at most: a small write per batch is no load.
            let _ = tokio::fs::write(&*f, format!("requests {r} bytes {b}\n")).await;
        }
    }
    let mut res = Response::new(Full::new(Bytes::new()));
    if !ok {
        *res.status_mut() = hyper::StatusCode::NOT_FOUND;
    }
    Ok(res)
}

fn main() {
    let count_file: Option<Arc<str>> = std::env::args().nth(1).map(Into::into);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        if let Some(f) = &count_file {
            std::fs::write(&**f, "requests 0 bytes 0\n").unwrap();
        }
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        println!("{}", listener.local_addr().unwrap());
        let seen = Arc::new(Seen::default());
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            let (seen, count_file) = (seen.clone(), count_file.clone());
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req| {
                    sink(seen.clone(), count_file.clone(), req)
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(tcp), svc)
                    .await;
            });
        }
    });
}
