//! The live dashboard end to end: `GET /dashboard` in headless Chromium against a supervisor
//! with 3 workers under light load (3 workers IDLE, a worker's state after SIGKILL, a non-empty
//! requests chart, a screenshot kept as `target/dashboard.png`); its data endpoints behind the
//! `/v1` token and the Origin rule; the SSE stream.

mod support;

use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::http::{self, Stream};
use support::process::{PoolConfig, Running, TestEnv};

const CHROMIUM: &str = "/usr/bin/chromium";

/// A background client loop: one small chat request every 50 ms until dropped.
struct Load {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Load {
    fn start(addr: std::net::SocketAddr) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                let _ = http::post_chat(addr, "demo", false);
                std::thread::sleep(Duration::from_millis(50));
            }
        });
        Self {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Reads SSE snapshots from `/dashboard/events` until `done` accepts one (deadline 20 s).
fn until_snapshot(
    events: &mut Stream,
    mut done: impl FnMut(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut buf = String::new();
    while Instant::now() < deadline {
        let chunk = events
            .next_chunk()
            .expect("read events")
            .expect("stream open");
        buf.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(i) = buf.find("\n\n") {
            let ev: String = buf.drain(..i + 2).collect();
            if let Some(data) = ev.trim().strip_prefix("data: ") {
                let v: serde_json::Value = serde_json::from_str(data).expect("snapshot JSON");
                if done(&v) {
                    return v;
                }
            }
        }
    }
    panic!("no matching snapshot within 20s; last: {buf}");
}

fn chromium_or_fail() -> Option<PathBuf> {
    let p = PathBuf::from(CHROMIUM);
    if p.exists() {
        return Some(p);
    }
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{CHROMIUM} is missing: .ci/run installs the Debian package chromium");
    }
    eprintln!("skipping: {CHROMIUM} is not installed (apt-get install chromium)");
    None
}

/// Loads the page in headless Chromium; returns the DOM after the first snapshot arrived, and
/// writes a screenshot to `shot` when given.
fn chromium(bin: &PathBuf, url: &str, profile: &std::path::Path, shot: Option<&PathBuf>) -> String {
    let mut cmd = Command::new(bin);
    cmd.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        "--hide-scrollbars",
        "--window-size=1280,860",
        "--virtual-time-budget=5000",
    ])
    .arg(format!("--user-data-dir={}", profile.display()));
    match shot {
        Some(p) => cmd.arg(format!("--screenshot={}", p.display())),
        None => cmd.arg("--dump-dom"),
    };
    let child = support::process::ChildGuard::spawn({
        cmd.arg(url);
        cmd
    });
    let mut child = child;
    let status = child
        .wait_exit(Duration::from_secs(60))
        .expect("chromium ended within 60s");
    assert!(status.success(), "chromium failed: {}", child.stderr());
    let mut dom = String::new();
    while let Some(line) = child.next_line(Duration::from_secs(2)) {
        dom.push_str(&line);
        dom.push('\n');
    }
    dom
}

/// Loads the page again until `ok` accepts its DOM (the first snapshot may arrive after the
/// dump on a busy machine), with a 60 s deadline; returns that DOM.
fn dom_until(
    bin: &PathBuf,
    url: &str,
    profile: &std::path::Path,
    ok: impl Fn(&str) -> bool,
) -> String {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let dom = chromium(bin, url, profile, None);
        if ok(&dom) || Instant::now() > deadline {
            return dom;
        }
    }
}

fn worker_states(dom: &str) -> Vec<(String, String)> {
    // Only the rendered table: the page's script holds the same attribute in a template.
    let table = dom
        .split("<tbody id=\"workers\">")
        .nth(1)
        .and_then(|t| t.split("</tbody>").next())
        .unwrap_or("");
    table
        .split("data-worker=\"")
        .skip(1)
        .map(|rest| {
            let id = rest.split('"').next().unwrap().to_string();
            let state = rest
                .split("data-state=\"")
                .nth(1)
                .and_then(|s| s.split('"').next())
                .unwrap_or("")
                .to_string();
            (id, state)
        })
        .collect()
}

fn chart_points(dom: &str) -> usize {
    dom.split("id=\"reqchart\" data-points=\"")
        .nth(1)
        .and_then(|s| s.split('"').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

#[test]
fn the_page_in_a_real_browser_shows_workers_a_kill_and_the_requests_chart() {
    let Some(bin) = chromium_or_fail() else {
        return;
    };
    // A long restart back-off keeps the killed slot out of IDLE long enough to be seen: longer
    // than a headless Chromium's start and render, which took more than 4 s on a loaded 2-core
    // machine (the replacement was already serving, BUSY, when the page was read).
    let cfg = PoolConfig::new(3)
        .default_restart_backoff()
        .pool("restart_backoff_initial = \"12s\"\nrestart_backoff_max = \"12s\"\n")
        .build();
    let env = TestEnv::new(&cfg);
    let sup: Running = env.start(&[]);
    let addr = sup.listen;
    let _load = Load::start(addr);
    // Watching ourselves keeps the one sampler on, so the page gets a history at once.
    let mut events = Stream::open(addr, "GET", "/dashboard/events", &[], None).unwrap();
    assert_eq!(events.status, 200);
    until_snapshot(&mut events, |s| {
        s["history"]["requests_per_s"].as_array().unwrap().len() >= 3
    });
    let url = format!("http://{addr}/dashboard");
    let profile = env.dir.path().join("chromium");

    let dom = dom_until(&bin, &url, &profile, |d| worker_states(d).len() == 3);
    let states = worker_states(&dom);
    assert_eq!(states.len(), 3, "three worker rows in {dom}");
    assert!(
        states
            .iter()
            .all(|(_, s)| s == "IDLE" || s.starts_with("BUSY")),
        "{states:?}"
    );
    assert!(
        states.iter().filter(|(_, s)| s == "IDLE").count() >= 2,
        "workers IDLE under light load: {states:?}"
    );
    assert!(
        chart_points(&dom) >= 2,
        "the requests chart has points: {dom}"
    );

    let pid = env.worker_pids()[1] as u32;
    support::process::signal(pid, nix::sys::signal::Signal::SIGKILL);
    until_snapshot(&mut events, |s| s["workers"][1]["state"] != "IDLE");
    let dom = dom_until(&bin, &url, &profile, |d| worker_states(d).len() == 3);
    let states = worker_states(&dom);
    assert_ne!(states[1].1, "IDLE", "worker 1 after SIGKILL: {states:?}");
    assert!(!states[1].1.starts_with("BUSY"), "{states:?}");

    // The artifact, once the slot is back.
    until_snapshot(&mut events, |s| s["workers"][1]["state"] == "IDLE");
    let shot = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/dashboard.png");
    chromium(&bin, &url, &profile, Some(&shot));
    assert!(
        std::fs::metadata(&shot).unwrap().len() > 10_000,
        "a real screenshot"
    );
}

#[test]
fn the_data_needs_the_token_and_the_page_does_not() {
    let cfg = PoolConfig::new(1).build().replace(
        "auth_token_env = \"\"",
        "auth_token_env = \"DASH_TEST_TOKEN\"",
    );
    let env = TestEnv::new(&cfg);
    let mut cmd = env.supervisor(&["start"]);
    cmd.env("DASH_TEST_TOKEN", "s3cret-dash");
    let sup = Running::ready(cmd);
    let addr = sup.listen;

    let page = http::get(addr, "/dashboard").unwrap();
    assert_eq!(page.status, 200);
    assert!(page
        .header("content-type")
        .unwrap()
        .starts_with("text/html"));
    let html = page.text();
    assert!(
        html.contains("<canvas") && !html.contains("http://") && !html.contains("https://"),
        "self-contained: no outside resources"
    );
    assert!(!html.contains("s3cret-dash"));

    for path in ["/dashboard/snapshot", "/dashboard/events"] {
        let r = http::request(addr, "GET", path, &[], None).unwrap();
        assert_eq!(r.status, 401, "{path} without the token");
        let r =
            http::request(addr, "GET", path, &[("Authorization", "Bearer nope")], None).unwrap();
        assert_eq!(r.status, 401, "{path} with a wrong token");
    }
    let ok = [("Authorization", "Bearer s3cret-dash")];
    let r = http::request(addr, "GET", "/dashboard/snapshot", &ok, None).unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["workers"].as_array().unwrap().len(), 1);

    // A cross-site page is refused before anything, token or not.
    let evil = [
        ("Authorization", "Bearer s3cret-dash"),
        ("Origin", "https://evil.example"),
    ];
    let r = http::request(addr, "GET", "/dashboard/snapshot", &evil, None).unwrap();
    assert_eq!(r.status, 403);

    let mut events = Stream::open(addr, "GET", "/dashboard/events", &ok, None).unwrap();
    assert_eq!(events.status, 200);
    assert!(events
        .header("content-type")
        .unwrap()
        .starts_with("text/event-stream"));
    let first = until_snapshot(&mut events, |_| true);
    let later = until_snapshot(&mut events, |_| true);
    assert!(
        later["at_ms"].as_u64() > first["at_ms"].as_u64(),
        "a new snapshot each second"
    );
}

/// The `data-*` attribute `key` of the row of `tbody` whose attributes start with `row`.
fn row_attr(dom: &str, tbody: &str, row: &str, key: &str) -> Option<String> {
    let table = dom
        .split(&format!("<tbody id=\"{tbody}\">"))
        .nth(1)?
        .split("</tbody>")
        .next()?;
    let tr = table.split("<tr ").find(|tr| tr.starts_with(row))?;
    let head = tr.split('>').next()?;
    head.split(&format!("{key}=\""))
        .nth(1)?
        .split('"')
        .next()
        .map(str::to_string)
}

#[test]
fn the_page_lists_the_providers_pool_wide_state_and_the_last_requests() {
    let Some(bin) = chromium_or_fail() else {
        return;
    };
    // `slow` holds a stream open (in flight); `down` refuses connections, and one failure
    // opens its breaker for a minute (a cool-down the page shows).
    let extra = r#"
[[providers]]
name = "slow"
kind = "mock"
models = ["slow"]
tokens_per_second = 0.2

[[providers]]
name = "down"
kind = "openai"
base_url = "http://127.0.0.1:1/v1"
models = ["down"]

[circuit_breaker]
consecutive_failures = 1
open_timeout = "60s"
"#;
    let env = TestEnv::new(&PoolConfig::new(2).extra(extra).build());
    let sup: Running = env.start(&[]);
    let addr = sup.listen;
    let r = http::post_chat(addr, "demo", false).unwrap();
    assert_eq!(r.status, 200);
    let r = http::post_chat(addr, "down", false).unwrap();
    assert!(r.status >= 500, "down answers an error: {}", r.status);
    let body = http::chat_body("slow", true).to_string();
    let mut held = Stream::open(addr, "POST", http::CHAT, &[], Some(body.as_bytes())).unwrap();
    assert_eq!(held.status, 200);

    let mut events = Stream::open(addr, "GET", "/dashboard/events", &[], None).unwrap();
    let snap = until_snapshot(&mut events, |s| {
        let p = |name: &str| {
            s["providers"]
                .as_array()
                .and_then(|ps| ps.iter().find(|p| p["name"] == name).cloned())
                .unwrap_or_default()
        };
        let listed = s["requests"]
            .as_array()
            .is_some_and(|rs| rs.iter().any(|r| r["model"] == "demo"));
        p("down")["breaker"] == "open" && p("slow")["inflight"] == 1 && listed
    });
    let names: Vec<&str> = snap["providers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["demo", "slow", "down"], "the configured order");
    let down = &snap["providers"][2];
    let cooldown = down["cooldown_s"].as_f64().unwrap();
    assert!(cooldown > 30.0 && cooldown <= 60.0, "{down}");
    let demo = snap["requests"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["model"] == "demo")
        .unwrap()
        .clone();
    assert_eq!(demo["status"], 200);
    assert_eq!(demo["provider"], "demo");
    assert!(demo["output_tokens"].as_u64().unwrap() > 0, "{demo}");
    assert_eq!(demo["path"], "/v1/chat/completions");

    let url = format!("http://{addr}/dashboard");
    let profile = env.dir.path().join("chromium");
    let shown = |d: &str| {
        row_attr(d, "providers", "data-provider=\"down\"", "data-breaker").as_deref()
            == Some("open")
            && row_attr(d, "providers", "data-provider=\"slow\"", "data-inflight").as_deref()
                == Some("1")
            && row_attr(d, "requests", "data-model=\"demo\"", "data-status").as_deref()
                == Some("200")
    };
    let dom = dom_until(&bin, &url, &profile, shown);
    assert!(
        shown(&dom),
        "the page shows down's open breaker, slow's stream in flight and the demo request: {dom}"
    );
    let _ = held.next_chunk();
}
