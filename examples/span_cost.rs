//! The CPU one request's two spans cost, without the rest of the request path: makes N
//! request-span pairs through `gateway::telemetry` exactly as the front and the worker do
//! (front span continuing nothing, `inject` into the hop's headers, the worker's span from them,
//! the facts both set, the end at drop), exports them to the OTLP/HTTP endpoint given (run
//! `otlp_sink` for one that discards), flushes, and prints this process's CPU time (user + system,
//! all threads: the request threads and the exporter) per request. Spans are made on the
//! runtime's worker threads, in tasks, as the servers make them.
//! The requests are paced at RATE a second (in 1 ms ticks), as a server below saturation makes
//! them: unpaced, any exporter's bounded queue overflows and dropped spans cost almost nothing,
//! which would flatter it. Compare the `sink:` bytes with the spans made to see that none was
//! dropped.
//! Usage: `span_cost ENDPOINT|off [N] [RATE]` (N = 100000 pairs, RATE = 20000 a second).

use gateway::config::TelemetryConfig;
use gateway::endpoint::Endpoint;
use gateway::telemetry::{self, RequestSpan};
use http::HeaderMap;
use std::time::{Duration, Instant};

fn cpu_ns() -> u64 {
    let mut ru = std::mem::MaybeUninit::<libc_rusage::rusage>::uninit();
    // SAFETY: getrusage fills the struct it is given.
    unsafe { libc_rusage::getrusage(0, ru.as_mut_ptr()) };
    let ru = unsafe { ru.assume_init() };
    let t = |tv: libc_rusage::timeval| tv.tv_sec as u64 * 1_000_000_000 + tv.tv_usec as u64 * 1000;
    t(ru.ru_utime) + t(ru.ru_stime)
}

/// `getrusage` without a libc crate dependency (glibc x86_64/aarch64 layout; only the two
/// leading time fields are read).
mod libc_rusage {
    #[repr(C)]
    #[derive(Clone, Copy)]
    pub struct timeval {
        pub tv_sec: i64,
        pub tv_usec: i64,
    }
    #[repr(C)]
    pub struct rusage {
        pub ru_utime: timeval,
        pub ru_stime: timeval,
        pub rest: [i64; 14],
    }
    extern "C" {
        pub fn getrusage(who: i32, usage: *mut rusage) -> i32;
    }
}

fn one_request() {
    let client = HeaderMap::new();
    let front = RequestSpan::front(&client, Endpoint::ChatCompletions, "bench-model");
    let mut hop = HeaderMap::new();
    if let Some(f) = &front {
        f.inject(&mut hop);
        let facts = f.facts();
        facts.worker(1);
        facts.attempts(1);
        facts.status(200);
        facts.provider("bench-provider");
    }
    let worker = RequestSpan::worker(&hop, Endpoint::ChatCompletions, "bench-model");
    if let Some(w) = &worker {
        let facts = w.facts();
        facts.status(200);
        facts.attempts(1);
        facts.provider("bench-provider");
        facts.response_model("bench-model-2026");
        facts.tokens(12, 34);
    }
    drop(worker);
    drop(front);
}

fn main() {
    let mut args = std::env::args().skip(1);
    let endpoint = args
        .next()
        .expect("usage: span_cost ENDPOINT|off [N] [RATE]");
    let n: u64 = args.next().map_or(100_000, |s| s.parse().unwrap());
    let rate: u64 = args.next().map_or(20_000, |s| s.parse().unwrap());
    let tasks: u64 = 4;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let cfg = TelemetryConfig {
            otlp_endpoint: if endpoint == "off" {
                String::new()
            } else {
                format!("http://{endpoint}")
            },
            service_name: "span-cost".into(),
        };
        telemetry::install(&cfg, "bench").expect("telemetry");
        // Warm up (the exporter's connection, the allocator's arenas), then measure.
        for _ in 0..1000 {
            one_request();
        }
        telemetry::flush(Duration::from_secs(5)).await;
        let (c0, w0) = (cpu_ns(), Instant::now());
        let per = n / tasks;
        // Requests per task per 1 ms tick.
        let per_tick = (rate / tasks / 1000).max(1);
        let mut set = tokio::task::JoinSet::new();
        for _ in 0..tasks {
            set.spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_millis(1));
                let mut made = 0;
                while made < per {
                    tick.tick().await;
                    for _ in 0..per_tick.min(per - made) {
                        one_request();
                    }
                    made += per_tick;
                }
            });
        }
        while set.join_next().await.is_some() {}
        let f0 = Instant::now();
        telemetry::flush(Duration::from_secs(30)).await;
        let (c1, w1) = (cpu_ns(), Instant::now());
        let done = per * tasks;
        println!(
            "requests {done} cpu_ns_per_request {} wall_ms {} flush_ms {} export_failures {} spans_dropped {}",
            (c1 - c0) / done,
            (w1 - w0).as_millis(),
            (w1 - f0).as_millis(),
            telemetry::export_failures(),
            telemetry::spans_dropped()
        );
    });
}
