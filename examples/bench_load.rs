//! Load generator for `bench/run.sh`, so the benchmark needs nothing but cargo.
//!
//! ```text
//! bench_load throughput URL CONNS SECS        closed loop: CONNS keep-alive connections, as fast as possible
//! bench_load latency    URL RATE  SECS        open loop at RATE req/s on 8 connections; p50/p99 in µs
//! bench_load streams    URL COUNT HOLD_SECS   hold COUNT concurrent SSE streams; time to first byte
//! ```
//! Every mode POSTs a small chat body to URL and prints one JSON line with its figures. Errors
//! (non-200, cut bodies) are counted and printed, never hidden.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

type Client = hyper_util::client::legacy::Client<
    hyper_util::client::legacy::connect::HttpConnector,
    Full<Bytes>,
>;

fn client(max_idle: usize) -> Client {
    let mut conn = hyper_util::client::legacy::connect::HttpConnector::new();
    conn.set_nodelay(true);
    hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .pool_max_idle_per_host(max_idle)
        .build(conn)
}

fn body(stream: bool) -> Full<Bytes> {
    // Streams use the upstream's slow model so they stay open while held.
    let model = if stream { "bench-slow" } else { "bench" };
    Full::new(Bytes::from(format!(
        r#"{{"model":"{model}","stream":{stream},"messages":[{{"role":"user","content":"hi"}}]}}"#
    )))
}

fn request(url: &str, stream: bool) -> hyper::Request<Full<Bytes>> {
    hyper::Request::post(url)
        .header("content-type", "application/json")
        .body(body(stream))
        .unwrap()
}

/// One request to completion; Ok(latency) only for a 200 with a complete body.
async fn one(c: &Client, url: &str, stream: bool) -> Result<Duration, ()> {
    let t = Instant::now();
    let resp = c.request(request(url, stream)).await.map_err(|_| ())?;
    let ok = resp.status() == 200;
    resp.into_body().collect().await.map_err(|_| ())?;
    if ok {
        Ok(t.elapsed())
    } else {
        Err(())
    }
}

fn pct(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

async fn throughput(url: String, conns: usize, secs: u64) {
    let c = client(conns);
    let done = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let end = Instant::now() + Duration::from_secs(secs);
    // Warm-up: open the connections.
    for _ in 0..conns {
        let _ = one(&c, &url, false).await;
    }
    let start = Instant::now();
    let tasks: Vec<_> = (0..conns)
        .map(|_| {
            let (c, url, done, errors) = (c.clone(), url.clone(), done.clone(), errors.clone());
            tokio::spawn(async move {
                while Instant::now() < end {
                    match one(&c, &url, false).await {
                        Ok(_) => done.fetch_add(1, Relaxed),
                        Err(_) => errors.fetch_add(1, Relaxed),
                    };
                }
            })
        })
        .collect();
    for t in tasks {
        let _ = t.await;
    }
    let el = start.elapsed().as_secs_f64();
    println!(
        "{{\"mode\":\"throughput\",\"rps\":{:.0},\"requests\":{},\"errors\":{}}}",
        done.load(Relaxed) as f64 / el,
        done.load(Relaxed),
        errors.load(Relaxed)
    );
}

async fn latency(url: String, rate: u64, secs: u64) {
    let c = client(8);
    for _ in 0..8 {
        let _ = one(&c, &url, false).await;
    }
    let total = rate * secs;
    let gap = Duration::from_secs_f64(1.0 / rate as f64);
    let mut tick = tokio::time::interval(gap);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let (tx, mut rx) = tokio::sync::mpsc::channel(total as usize + 1);
    for _ in 0..total {
        tick.tick().await;
        let (c, url, tx) = (c.clone(), url.clone(), tx.clone());
        tokio::spawn(async move {
            let _ = tx.send(one(&c, &url, false).await).await;
        });
    }
    drop(tx);
    let mut lat = Vec::with_capacity(total as usize);
    let mut errors = 0;
    while let Some(r) = rx.recv().await {
        match r {
            Ok(d) => lat.push(d.as_micros() as u64),
            Err(_) => errors += 1,
        }
    }
    lat.sort_unstable();
    println!(
        "{{\"mode\":\"latency\",\"p50_us\":{},\"p99_us\":{},\"requests\":{},\"errors\":{errors}}}",
        pct(&lat, 0.50),
        pct(&lat, 0.99),
        lat.len()
    );
}

async fn streams(url: String, count: usize, hold: u64) {
    // One connection per stream, as real clients holding streams would have.
    let ttfb = Arc::new(std::sync::Mutex::new(Vec::with_capacity(count)));
    let errors = Arc::new(AtomicU64::new(0));
    let opened = Arc::new(tokio::sync::Semaphore::new(0));
    let release = Arc::new(tokio::sync::Notify::new());
    let mut tasks = Vec::with_capacity(count);
    for _ in 0..count {
        let (url, ttfb, errors, opened, release) = (
            url.clone(),
            ttfb.clone(),
            errors.clone(),
            opened.clone(),
            release.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let c = client(1);
            let t = Instant::now();
            let first = async {
                let resp = c.request(request(&url, true)).await.ok()?;
                if resp.status() != 200 {
                    return None;
                }
                let mut b = resp.into_body();
                let f = b.frame().await?.ok()?;
                f.data_ref()?;
                Some(b)
            }
            .await;
            match first {
                Some(b) => {
                    ttfb.lock().unwrap().push(t.elapsed().as_micros() as u64);
                    opened.add_permits(1);
                    let notified = release.notified();
                    notified.await;
                    drop(b);
                }
                None => {
                    errors.fetch_add(1, Relaxed);
                    opened.add_permits(1);
                }
            }
        }));
    }
    let _ = opened.acquire_many(count as u32).await.map(|p| p.forget());
    println!("{{\"mode\":\"streams_open\",\"count\":{count}}}");
    tokio::time::sleep(Duration::from_secs(hold)).await;
    release.notify_waiters();
    for t in tasks {
        let _ = t.await;
    }
    let mut v = ttfb.lock().unwrap().clone();
    v.sort_unstable();
    println!(
        "{{\"mode\":\"streams\",\"held\":{},\"errors\":{},\"ttfb_p50_us\":{},\"ttfb_p99_us\":{}}}",
        v.len(),
        errors.load(Relaxed),
        pct(&v, 0.5),
        pct(&v, 0.99)
    );
}

fn main() {
    let a: Vec<String> = std::env::args().collect();
    if a.len() < 5 {
        eprintln!("usage: bench_load throughput|latency|streams URL N SECS");
        std::process::exit(2);
    }
    let (mode, url) = (a[1].clone(), a[2].clone());
    let n: u64 = a[3].parse().expect("N");
    let secs: u64 = a[4].parse().expect("SECS");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        match mode.as_str() {
            "throughput" => throughput(url, n as usize, secs).await,
            "latency" => latency(url, n, secs).await,
            "streams" => streams(url, n as usize, secs).await,
            m => panic!("unknown mode {m}"),
        }
    });
}
