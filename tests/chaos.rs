//! Chaos through the real supervisor: workers SIGKILLed and SIGSTOPped under load, upstreams
//! that reset or stall, and slowloris clients. Short enough for CI (about 25 s in all).

mod support;

use nix::sys::signal::Signal;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use support::front::{body, chat, open_stream, worker_of, worker_status};
use support::http::Stream;
use support::process::{signal, wait_until, TestEnv};
use support::upstream::{Script, Upstream};

/// Runs `n` threads sending non-stream requests until `stop`; returns (ok, failures).
fn request_loop(
    addr: std::net::SocketAddr,
    n: usize,
    stop: Arc<AtomicBool>,
) -> Vec<std::thread::JoinHandle<(u64, Vec<String>)>> {
    (0..n)
        .map(|_| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let (mut ok, mut failed) = (0, Vec::new());
                while !stop.load(Relaxed) {
                    match support::http::request(
                        addr,
                        "POST",
                        "/v1/chat/completions",
                        &[],
                        Some(&body("demo", false)),
                    ) {
                        Ok(r) if r.status == 200 => ok += 1,
                        Ok(r) => failed.push(format!("{} {}", r.status, r.text())),
                        Err(e) => failed.push(e.to_string()),
                    }
                }
                (ok, failed)
            })
        })
        .collect()
}

fn join_loop(handles: Vec<std::thread::JoinHandle<(u64, Vec<String>)>>) -> (u64, Vec<String>) {
    handles
        .into_iter()
        .map(|h| h.join().unwrap())
        .fold((0, Vec::new()), |(a, mut f), (ok, fl)| {
            f.extend(fl);
            (a + ok, f)
        })
}

/// One stream's life: which worker, when it opened and ended, and whether it ended cleanly.
struct StreamRun {
    worker: u64,
    opened: Instant,
    ended: Instant,
    clean: bool,
}

#[test]
fn random_worker_killed_every_second_loses_no_request() {
    let (env, run) = support::front::start(3, "", "", "");
    let addr = run.listen;
    let stop = Arc::new(AtomicBool::new(false));
    let load = request_loop(addr, 4, stop.clone());
    // Streams opened throughout, each reading to its end on its own thread.
    let streams = Arc::new(Mutex::new(Vec::<StreamRun>::new()));
    let (s_stop, s_runs) = (stop.clone(), streams.clone());
    let opener = std::thread::spawn(move || {
        let mut readers = Vec::new();
        while !s_stop.load(Relaxed) {
            let runs = s_runs.clone();
            readers.push(std::thread::spawn(move || {
                let opened = Instant::now();
                let mut s = open_stream(addr, "slow", &[]);
                assert_eq!(s.status, 200);
                let worker = worker_of(&s.headers);
                let clean = match s.read_to_end() {
                    Ok(b) => String::from_utf8_lossy(&b).contains("[DONE]"),
                    Err(_) => false,
                };
                runs.lock().unwrap().push(StreamRun {
                    worker,
                    opened,
                    ended: Instant::now(),
                    clean,
                });
            }));
            std::thread::sleep(Duration::from_millis(300));
        }
        for r in readers {
            r.join().unwrap();
        }
    });
    let mut kills = Vec::new();
    for _ in 0..10 {
        std::thread::sleep(Duration::from_secs(1));
        let status = worker_status(&env);
        let alive: Vec<_> = status.iter().filter(|(_, (pid, _))| *pid != 0).collect();
        if alive.is_empty() {
            continue;
        }
        let (&id, &(pid, _)) = alive[fastrand::usize(..alive.len())];
        kills.push((id, Instant::now()));
        signal(pid, Signal::SIGKILL);
    }
    stop.store(true, Relaxed);
    let (ok, failed) = join_loop(load);
    opener.join().unwrap();
    assert!(
        ok > 50,
        "too few requests ran ({ok}) for the test to mean anything"
    );
    assert!(
        failed.is_empty(),
        "{} of {} requests failed: {:?}",
        failed.len(),
        ok + failed.len() as u64,
        &failed[..failed.len().min(5)]
    );
    let runs = streams.lock().unwrap();
    // A killed stream ends within milliseconds *after* its worker's kill; `margin` only absorbs
    // the moments where open/dispatch and the last bytes race with the signal.
    let margin = Duration::from_millis(50);
    let t0 = runs
        .iter()
        .map(|r| r.opened)
        .min()
        .unwrap_or_else(Instant::now);
    let ms = |t: Instant| t.saturating_duration_since(t0).as_millis();
    let dump: Vec<_> = runs
        .iter()
        .map(|r| (r.worker, ms(r.opened), ms(r.ended), r.clean))
        .collect();
    let kill_dump: Vec<_> = kills.iter().map(|(w, t)| (*w, ms(*t))).collect();
    let killed_between = |r: &StreamRun, from: Instant, to: Instant| {
        kills
            .iter()
            .any(|(w, t)| *w == r.worker && *t > from && *t < to)
    };
    let mut hit = 0;
    for r in runs.iter() {
        if r.clean {
            assert!(
                !killed_between(r, r.opened + margin, r.ended.checked_sub(margin).unwrap_or(r.ended)),
                "a stream on worker {} ended cleanly although its worker was killed while it was open\n\
                 streams (worker, opened, ended, clean): {dump:?}\nkills: {kill_dump:?}",
                r.worker
            );
        } else {
            assert!(
                killed_between(r, r.opened, r.ended + margin),
                "a stream on worker {} broke with no kill of its worker\nstreams: {dump:?}\nkills: {kill_dump:?}",
                r.worker
            );
            hit += 1;
        }
    }
    assert!(
        hit > 0,
        "no stream was on a killed worker; the test proved nothing\nstreams: {dump:?}"
    );
    assert!(runs.iter().any(|r| r.clean), "no stream completed at all");
}

#[test]
fn a_stopped_worker_is_replaced_and_no_request_fails() {
    let (env, run) = support::front::start(2, "", "", "");
    let before = worker_status(&env);
    let (pid0, _) = before[&0];
    let stop = Arc::new(AtomicBool::new(false));
    let load = request_loop(run.listen, 3, stop.clone());
    // Stop the worker only once the load is really flowing through both slots.
    let served = |env: &TestEnv| -> Vec<u64> {
        env.status_json()["workers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|w| w["served"].as_u64().unwrap_or(0))
            .collect()
    };
    assert!(
        wait_until(Duration::from_secs(10), || served(&env)
            .iter()
            .all(|n| *n >= 5)),
        "the load never reached both workers: {:?}",
        served(&env)
    );
    signal(pid0, Signal::SIGSTOP);
    // heartbeat_timeout is 2 s with 200 ms beats: replaced well within 6 s.
    let replaced = wait_until(Duration::from_secs(6), || {
        worker_status(&env)
            .get(&0)
            .is_some_and(|(pid, _)| *pid != pid0 && *pid != 0)
    });
    // Traffic keeps flowing to both slots afterwards.
    let after = Instant::now();
    let mut seen = std::collections::HashSet::new();
    while seen.len() < 2 && after.elapsed() < Duration::from_secs(5) {
        seen.insert(worker_of(&chat(run.listen, "demo", &[]).headers));
    }
    stop.store(true, Relaxed);
    let (ok, failed) = join_loop(load);
    signal(pid0, Signal::SIGKILL);
    assert!(replaced, "the stopped worker was not replaced");
    assert!(ok > 10);
    assert!(
        failed.is_empty(),
        "requests failed: {:?}",
        &failed[..failed.len().min(5)]
    );
    assert_eq!(
        seen.len(),
        2,
        "traffic did not reach both slots after the replacement"
    );
}

#[test]
fn slowloris_clients_do_not_starve_others() {
    use std::io::Write;
    let (_env, run) = support::front::start(1, "", "", "");
    let mut slow: Vec<std::net::TcpStream> = (0..200)
        .map(|_| {
            let mut s = std::net::TcpStream::connect(run.listen).unwrap();
            s.write_all(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
                .unwrap();
            s
        })
        .collect();
    for i in 0..20 {
        for s in slow.iter_mut() {
            let _ = s.write_all(b"a");
        }
        let t = Instant::now();
        let r = chat(run.listen, "demo", &[]);
        assert_eq!(r.status, 200, "request {i}: {}", r.text());
        assert!(
            t.elapsed() < Duration::from_secs(2),
            "request {i} took {:?}",
            t.elapsed()
        );
    }
}

fn upstream_config(up: &Upstream) -> String {
    support::front::config(
        1,
        "",
        "",
        &format!(
            "\n[[providers]]\nname = \"up\"\nkind = \"openai\"\nbase_url = \"{}\"\nmodels = [\"up\"]\n\
             first_byte_timeout = \"500ms\"\nidle_timeout = \"500ms\"\n\n[routing]\nmax_attempts = 1\n",
            up.url("/v1")
        ),
    )
}

#[test]
fn upstream_resets_and_stalls_never_look_complete() {
    let up = Upstream::start();
    let env = TestEnv::new(&upstream_config(&up));
    let run = env.start(&[]);
    let chunk = "data: {\"choices\":[{\"delta\":{\"content\":\"x\"}}]}\n\n";
    // Reset after one chunk.
    up.enqueue("/v1/chat/completions", Script::sse(&[chunk]).reset());
    let mut s = open_stream(run.listen, "up", &[]);
    assert_eq!(s.status, 200);
    let cut = s.read_to_end();
    assert!(
        cut.as_ref()
            .map_or(true, |b| String::from_utf8_lossy(b).contains("error")),
        "a reset stream ended cleanly: {:?}",
        cut.map(|b| String::from_utf8_lossy(&b).into_owned())
    );
    // Stall after one chunk: the idle timeout ends it with an error, not a clean end.
    up.enqueue("/v1/chat/completions", Script::sse(&[chunk]).stall());
    let mut s = open_stream(run.listen, "up", &[]);
    let t = Instant::now();
    let stalled = s.read_to_end();
    assert!(t.elapsed() < Duration::from_secs(5));
    // A cut body (Err) is right; a complete one must at least carry the error event.
    if let Ok(b) = stalled {
        assert!(
            String::from_utf8_lossy(&b).contains("error"),
            "stalled stream ended cleanly"
        );
    }
    // No headers at all: 504 within the first-byte timeout.
    up.enqueue("/v1/chat/completions", Script::status(200).stall_headers());
    let t = Instant::now();
    let r = chat(run.listen, "up", &[]);
    assert_eq!(r.status, 504, "{}", r.text());
    assert!(t.elapsed() < Duration::from_secs(5));
    // And the gateway still serves afterwards.
    let mut s = Stream::open(
        run.listen,
        "POST",
        "/v1/chat/completions",
        &[],
        Some(&body("demo", false)),
    )
    .unwrap();
    assert_eq!(s.status, 200);
    assert!(s.read_to_end().is_ok());
}
