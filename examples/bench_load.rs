//! Load generator for `bench/run.sh`, so the benchmark needs nothing but cargo.
//!
//! ```text
//! bench_load throughput URL CONNS SECS        closed loop: CONNS keep-alive connections, as fast as possible
//! bench_load latency    URL RATE  SECS        open loop at RATE req/s on 8 connections; p50/p99 in µs
//! bench_load streams    URL COUNT HOLD_SECS   hold COUNT concurrent SSE streams; time to first byte
//!                                             (at most $BENCH_OPENING, default 100, opening at once)
//! bench_load sse        URL CONNS SECS        like throughput, but every request streams; counts SSE events
//! bench_load ssecount   URL CONNS COUNT       exactly COUNT streamed requests on CONNS connections, no warm-up
//! ```
//! Every mode POSTs a small chat body to URL (a Messages body when URL ends in `/messages`, a
//! Responses body when it ends in `/responses`) for model `$BENCH_MODEL` (default `bench`; held
//! streams ask for `$BENCH_MODEL-slow`), with `$BENCH_TOKEN` as the bearer token when set, and
//! prints one
//! JSON line with its figures. Errors (non-200, cut bodies) are counted and printed, never hidden.

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

/// How a request streams: not at all, fast (the upstream's chunks back to back), or held (the
/// upstream's slow model, one chunk a second, so the stream stays open).
#[derive(Clone, Copy, PartialEq)]
enum Stream {
    No,
    Fast,
    Held,
}

fn body(url: &str, stream: Stream) -> Full<Bytes> {
    let model = std::env::var("BENCH_MODEL").unwrap_or_else(|_| "bench".into());
    let slow = if stream == Stream::Held { "-slow" } else { "" };
    let on = stream != Stream::No;
    if url.ends_with("/responses") {
        return Full::new(Bytes::from(format!(
            r#"{{"model":"{model}{slow}","stream":{on},"input":"hi"}}"#
        )));
    }
    // Messages requires max_tokens; Chat takes the same messages array.
    let max = if url.ends_with("/messages") {
        r#""max_tokens":16,"#
    } else {
        ""
    };
    Full::new(Bytes::from(format!(
        r#"{{"model":"{model}{slow}",{max}"stream":{on},"messages":[{{"role":"user","content":"hi"}}]}}"#
    )))
}

/// `$BENCH_TOKEN`: the bearer token of a client (e.g. one with limits); none by default.
static TOKEN: std::sync::LazyLock<Option<String>> = std::sync::LazyLock::new(|| {
    std::env::var("BENCH_TOKEN")
        .ok()
        .map(|t| format!("Bearer {t}"))
});

fn request(url: &str, stream: Stream) -> hyper::Request<Full<Bytes>> {
    let mut req = hyper::Request::post(url).header("content-type", "application/json");
    if let Some(t) = TOKEN.as_deref() {
        req = req.header("authorization", t);
    }
    req.body(body(url, stream)).unwrap()
}

/// One request to completion; Ok((latency, SSE events in the body)) only for a 200 with a
/// complete body.
async fn one(c: &Client, url: &str, stream: Stream) -> Result<(Duration, u64), ()> {
    let t = Instant::now();
    let resp = c.request(request(url, stream)).await.map_err(|_| ())?;
    let ok = resp.status() == 200;
    let body = resp.into_body().collect().await.map_err(|_| ())?.to_bytes();
    // Every SSE event ends with a blank line; every dialect here writes `\n\n`.
    let events = body.windows(2).filter(|w| w == b"\n\n").count() as u64;
    if ok {
        Ok((t.elapsed(), events))
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

/// How long a closed loop runs: for a time (after a warm-up request per connection), or for
/// exactly a number of requests (no warm-up, so every request is counted).
#[derive(Clone, Copy)]
enum Until {
    Secs(u64),
    Count(u64),
}

async fn throughput(url: String, conns: usize, until: Until, stream: Stream) {
    let c = client(conns);
    let done = Arc::new(AtomicU64::new(0));
    let events = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let tickets = Arc::new(AtomicU64::new(0));
    let (end, count) = match until {
        Until::Secs(s) => (Instant::now() + Duration::from_secs(s), u64::MAX),
        Until::Count(n) => (Instant::now() + Duration::from_secs(3600), n),
    };
    // Warm-up: open the connections.
    if let Until::Secs(_) = until {
        for _ in 0..conns {
            let _ = one(&c, &url, stream).await;
        }
    }
    let start = Instant::now();
    let tasks: Vec<_> = (0..conns)
        .map(|_| {
            let (c, url, done, events, errors, tickets) = (
                c.clone(),
                url.clone(),
                done.clone(),
                events.clone(),
                errors.clone(),
                tickets.clone(),
            );
            tokio::spawn(async move {
                while Instant::now() < end && tickets.fetch_add(1, Relaxed) < count {
                    match one(&c, &url, stream).await {
                        Ok((_, n)) => {
                            done.fetch_add(1, Relaxed);
                            events.fetch_add(n, Relaxed)
                        }
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
    let mode = if stream == Stream::No {
        "throughput"
    } else {
        "sse"
    };
    println!(
        "{{\"mode\":\"{mode}\",\"rps\":{:.0},\"requests\":{},\"events\":{},\"errors\":{}}}",
        done.load(Relaxed) as f64 / el,
        done.load(Relaxed),
        events.load(Relaxed),
        errors.load(Relaxed)
    );
}

async fn latency(url: String, rate: u64, secs: u64) {
    let c = client(8);
    for _ in 0..8 {
        let _ = one(&c, &url, Stream::No).await;
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
            let _ = tx.send(one(&c, &url, Stream::No).await).await;
        });
    }
    drop(tx);
    let mut lat = Vec::with_capacity(total as usize);
    let mut errors = 0;
    while let Some(r) = rx.recv().await {
        match r {
            Ok((d, _)) => lat.push(d.as_micros() as u64),
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

/// How many streams may be opening at once (from connect to first byte): `$BENCH_OPENING`,
/// default 100. Opening 10,000 at once overflows every accept queue on the way (the listen
/// backlog, capped by `net.core.somaxconn`), and the kernel's SYN retries then add whole seconds
/// to the time to first byte that say nothing about the proxy. 100 stays far under the 1,024
/// backlog of our listeners and of `bench_upstream`, and the direct and proxied runs open alike.
fn opening() -> usize {
    std::env::var("BENCH_OPENING")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&n| n > 0)
        .unwrap_or(100)
}

async fn streams(url: String, count: usize, hold: u64) {
    // One connection per stream, as real clients holding streams would have.
    let ttfb = Arc::new(std::sync::Mutex::new(Vec::with_capacity(count)));
    let errors = Arc::new(AtomicU64::new(0));
    let opened = Arc::new(tokio::sync::Semaphore::new(0));
    let release = Arc::new(tokio::sync::Notify::new());
    let gate = Arc::new(tokio::sync::Semaphore::new(opening()));
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(count);
    for _ in 0..count {
        let (url, ttfb, errors, opened, release, gate) = (
            url.clone(),
            ttfb.clone(),
            errors.clone(),
            opened.clone(),
            release.clone(),
            gate.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let c = client(1);
            // Held from before the connect to the first byte (or the failure); the time to first
            // byte starts once it is taken, so waiting for a turn is not counted.
            let turn = gate.acquire_owned().await.expect("never closed");
            let t = Instant::now();
            let first = async {
                let resp = c.request(request(&url, Stream::Held)).await.ok()?;
                if resp.status() != 200 {
                    return None;
                }
                let mut b = resp.into_body();
                let f = b.frame().await?.ok()?;
                f.data_ref()?;
                Some(b)
            }
            .await;
            drop(turn);
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
    let open_ms = started.elapsed().as_millis();
    println!("{{\"mode\":\"streams_open\",\"count\":{count},\"open_ms\":{open_ms}}}");
    tokio::time::sleep(Duration::from_secs(hold)).await;
    release.notify_waiters();
    for t in tasks {
        let _ = t.await;
    }
    let mut v = ttfb.lock().unwrap().clone();
    v.sort_unstable();
    println!(
        "{{\"mode\":\"streams\",\"held\":{},\"opening\":{},\"open_ms\":{open_ms},\"errors\":{},\"ttfb_p50_us\":{},\"ttfb_p99_us\":{}}}",
        v.len(),
        opening(),
        errors.load(Relaxed),
        pct(&v, 0.5),
        pct(&v, 0.99)
    );
}

fn main() {
    let a: Vec<String> = std::env::args().collect();
    if a.len() < 5 {
        eprintln!(
            "usage: bench_load throughput|latency|streams|sse URL N SECS, or ssecount URL N COUNT \
             (streams: at most $BENCH_OPENING, default 100, opening at once)"
        );
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
            "throughput" => throughput(url, n as usize, Until::Secs(secs), Stream::No).await,
            "sse" => throughput(url, n as usize, Until::Secs(secs), Stream::Fast).await,
            "ssecount" => throughput(url, n as usize, Until::Count(secs), Stream::Fast).await,
            "latency" => latency(url, n, secs).await,
            "streams" => streams(url, n as usize, secs).await,
            m => panic!("unknown mode {m}"),
        }
    });
}
