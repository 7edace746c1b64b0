//! Starting the worker binary: `--listen` when no socket is inherited, `LISTEN_PID` for
//! another process, exit codes for bad configs and busy ports, HTTP proxies from the
//! environment, and cancellation of an upstream request still waiting for headers.

mod support;

use serde_json::json;
use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;
use support::http::{self, CHAT};
use support::process::{bin_path, wait_until, ChildGuard};
use support::upstream::{Script, Upstream};
use support::worker::{config, openai_provider, Worker, MOCK_PROVIDER};

/// `gateway-worker` with `unset` removed from its environment.
fn bare_worker_cmd(unset: &[&str]) -> Command {
    let mut cmd = Command::new(bin_path("gateway-worker"));
    for v in unset {
        cmd.env_remove(v);
    }
    cmd
}

fn worker_cmd(cfg: &std::path::Path) -> Command {
    let mut cmd = bare_worker_cmd(&[
        "LISTEN_FDS",
        "LISTEN_PID",
        "GATEWAY_CONFIG",
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "ALL_PROXY",
    ]);
    cmd.arg("--config").arg(cfg);
    cmd
}

/// The address from the worker's "listening on ADDR" log line.
fn serving_addr(g: &ChildGuard) -> Option<SocketAddr> {
    let err = g.stderr();
    let line = err.lines().find(|l| l.contains("listening on "))?;
    let at = line.find("listening on ")? + "listening on ".len();
    line[at..].split_whitespace().next()?.parse().ok()
}

/// Spawns `cmd` and waits up to 20 s for its "listening on" line; the guard and the address.
fn spawn_serving(cmd: Command) -> (ChildGuard, SocketAddr) {
    let g = ChildGuard::spawn(cmd);
    assert!(
        wait_until(Duration::from_secs(20), || serving_addr(&g).is_some()),
        "stderr:\n{}",
        g.stderr()
    );
    let addr = serving_addr(&g).unwrap();
    (g, addr)
}

#[test]
fn binds_listen_without_an_inherited_socket() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("gateway.toml");
    std::fs::write(&cfg, config(MOCK_PROVIDER)).unwrap();
    // LISTEN_FDS meant for another process must be left alone.
    let mut cmd = worker_cmd(&cfg);
    cmd.args(["--listen", "127.0.0.1:0"])
        .env("LISTEN_FDS", "1")
        .env("LISTEN_PID", "1");
    let (_g, addr) = spawn_serving(cmd);
    assert_ne!(addr.port(), 0);
    let r = http::post_chat(addr, "demo", false).unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
}

#[test]
fn exit_codes_for_bad_config_and_busy_port() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[pool]\nworkers = 0\nbogus = 1\n").unwrap();
    let mut g = ChildGuard::spawn(worker_cmd(&bad));
    let st = g.wait_exit(Duration::from_secs(20)).expect("exits");
    assert_eq!(st.code(), Some(2), "stderr:\n{}", g.stderr());
    // The exit may be seen before the stderr reader has collected everything.
    assert!(
        wait_until(Duration::from_secs(5), || g.stderr().contains("bogus")),
        "the error names the key:\n{}",
        g.stderr()
    );

    let good = dir.path().join("good.toml");
    std::fs::write(&good, config(MOCK_PROVIDER)).unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let mut cmd = worker_cmd(&good);
    cmd.arg("--listen")
        .arg(taken.local_addr().unwrap().to_string());
    let mut g = ChildGuard::spawn(cmd);
    let st = g.wait_exit(Duration::from_secs(20)).expect("exits");
    assert_eq!(st.code(), Some(4), "stderr:\n{}", g.stderr());
}

#[test]
fn http_proxy_from_the_environment_and_no_proxy() {
    // The mock upstream plays the forward proxy: it sees absolute-form request targets.
    let proxy = Upstream::serving(CHAT, Script::json(200, json!({"via": "proxy"})));
    let direct = Upstream::serving(CHAT, Script::json(200, json!({"via": "direct"})));
    let providers = openai_provider("far", "http://api.example.test/v1", r#"["m1"]"#, "K", "")
        + &openai_provider("near", &direct.url("/v1"), r#"["m2"]"#, "K", "");
    let proxy_url = format!("http://user:pw@{}", proxy.addr);
    let w = Worker::start(
        &config(&providers),
        &[
            ("HTTP_PROXY", proxy_url.as_str()),
            ("NO_PROXY", "127.0.0.1,localhost"),
            ("K", "sk-proxied"),
        ],
    );
    let r = http::post_chat(w.addr, "m1", false).unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["via"], "proxy");
    let got = &proxy.requests()[0];
    assert_eq!(got.target, "http://api.example.test/v1/chat/completions");
    assert_eq!(got.header("host"), Some("api.example.test"));
    assert_eq!(got.header("authorization"), Some("Bearer sk-proxied"));
    assert_eq!(
        got.header("proxy-authorization"),
        Some("Basic dXNlcjpwdw==")
    );
    // NO_PROXY: loopback goes direct.
    let r = http::post_chat(w.addr, "m2", false).unwrap();
    assert_eq!(r.json()["via"], "direct");
    assert_eq!(proxy.request_count(), 1);
}

#[test]
fn client_leaving_before_headers_cancels_the_upstream_request() {
    let up = Upstream::serving(CHAT, Script::json(200, json!({})).stall_headers());
    let cfg = config(&openai_provider("up", &up.url("/v1"), r#"["m1"]"#, "K", ""));
    // With `$K` unset the provider would be out of rotation and never called.
    let w = Worker::start(&cfg, &[("K", "sk-test")]);
    let body = http::chat_body("m1", false).to_string();
    let conn = http::send(w.addr, "POST", CHAT, &[], Some(body.as_bytes())).unwrap();
    assert!(up.wait_requests(1, Duration::from_secs(5)));
    assert_eq!(up.inflight(), 1);
    drop(conn);
    assert!(
        up.wait_aborted(1, Duration::from_secs(5)),
        "upstream request still waiting after the client left"
    );
    assert!(up.wait_connections_closed(1, Duration::from_secs(5)));
}

#[test]
fn multi_threaded_runtime_serves_too() {
    let cfg = format!("[pool]\nworker_threads = 2\nshutdown_timeout = \"5s\"\n{MOCK_PROVIDER}");
    let mut w = Worker::start(&cfg, &[]);
    let threads = std::fs::read_dir(format!("/proc/{}/task", w.guard.pid()))
        .unwrap()
        .count();
    assert!(
        threads >= 3,
        "main thread plus two runtime workers, got {threads}"
    );
    for stream in [false, true] {
        let r = http::post_chat(w.addr, "demo", stream).unwrap();
        assert_eq!(r.status, 200, "{}", r.text());
    }
    w.guard.signal(nix::sys::signal::Signal::SIGTERM);
    assert_eq!(
        w.guard.wait_exit(Duration::from_secs(10)).unwrap().code(),
        Some(0)
    );
}

#[test]
fn https_providers_speak_tls() {
    // A plain-HTTP server behind an https:// base_url: the worker must attempt a TLS handshake
    // (and fail it), not send cleartext.
    let up = Upstream::serving(CHAT, Script::json(200, json!({"cleartext": true})));
    let cfg = config(&openai_provider(
        "tls",
        &format!("https://{}/v1", up.addr),
        r#"["m1"]"#,
        "K",
        "",
    ));
    let w = Worker::start(&cfg, &[("K", "sk-tls")]);
    let r = http::post_chat(w.addr, "m1", false).unwrap();
    assert_eq!(r.status, 502, "{}", r.text());
    let msg = r.error_message();
    eprintln!("{msg}");
    assert!(msg.contains("cannot connect to provider `tls`"), "{msg}");
    assert_eq!(
        up.request_count(),
        0,
        "no cleartext request reached the server"
    );
}

#[test]
fn builtin_config_when_none_is_given() {
    let cwd = tempfile::tempdir().unwrap();
    let mut cmd = bare_worker_cmd(&[
        "LISTEN_FDS",
        "LISTEN_PID",
        "GATEWAY_CONFIG",
        "OPENAI_API_KEY",
        "ANTHROPIC_API_KEY",
    ]);
    cmd.args(["--listen", "127.0.0.1:0"])
        .current_dir(cwd.path());
    let (g, addr) = spawn_serving(cmd);
    // The built-in gateway.toml serves the `demo` mock with no key.
    let r = http::post_json(
        addr,
        "/v1/messages",
        &json!({"model": "demo", "max_tokens": 5,
        "messages": [{"role": "user", "content": "first run"}]}),
    )
    .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.json()["content"][0]["text"],
        "This is a mock reply from demo to: first run"
    );
    assert!(
        g.stderr().contains("$OPENAI_API_KEY is not set"),
        "{}",
        g.stderr()
    );
}
