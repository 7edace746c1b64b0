//! Attacks on admission (issue #12): a worker's TCP port used to get around the front's token
//! and Host check, token variables inherited by workers, cross-site `text/plain` POSTs that
//! spend credits in no-token mode, and connections held forever by a partial head or body.
//! Every test runs the real binaries and talks raw HTTP/1.1 to them.

mod support;

use serde_json::json;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;
use support::front::body;
use support::http::Stream;
use support::process::{start_env, Running, TestEnv};
use support::upstream::{Script, Upstream};
use support::worker::{Worker, MOCK_PROVIDER};

const SERVER_TOKEN: &str = "adm-server-secret";
const CLIENT_TOKEN: &str = "adm-client-secret";
const CHAT: &str = "/v1/chat/completions";

/// A supervisor config: `server` keys, one worker per `workers`, the mock `demo` provider, the
/// client `desk` whose token is `$ADM_CLIENT_TOKEN`, and `tail`.
fn config(workers: u32, server: &str, tail: &str) -> String {
    format!(
        r#"
[server]
listen = "127.0.0.1:0"
{server}

[pool]
workers = {workers}
base_port = 0
runtime_dir = "{{RUNTIME_DIR}}"
heartbeat_interval = "200ms"
heartbeat_timeout = "2s"
startup_timeout = "10s"
shutdown_timeout = "3s"

[health]
probe_interval = "0s"

{MOCK_PROVIDER}

[[clients]]
name = "desk"
token_env = "ADM_CLIENT_TOKEN"
{tail}
"#
    )
}

/// `supervisor start` with the token variables set (in its environment only), up to ready.
fn start(env: &TestEnv, vars: &[(&str, &str)]) -> Running {
    let mut cmd = env.supervisor(&["start"]);
    cmd.env_remove("ADM_SERVER_TOKEN")
        .env_remove("ADM_CLIENT_TOKEN");
    cmd.envs(vars.iter().copied());
    Running::ready(cmd)
}

/// Each worker's (pid, TCP port), from `supervisor status --json`.
fn workers(env: &TestEnv) -> Vec<(u32, u16)> {
    env.status_json()["workers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| {
            (
                w["pid"].as_u64().unwrap() as u32,
                w["port"].as_u64().unwrap() as u16,
            )
        })
        .collect()
}

/// Sends one request by hand (so Host is exactly `host`) and returns the status and body.
fn raw(
    addr: SocketAddr,
    method: &str,
    path: &str,
    host: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n");
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    if !body.is_empty() {
        head.push_str(&format!("content-length: {}\r\n", body.len()));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes()).unwrap();
    s.write_all(body).unwrap();
    let mut st = Stream::from_stream(s, method == "HEAD").unwrap();
    let status = st.status;
    let text = String::from_utf8_lossy(&st.read_to_end().unwrap_or_default()).into_owned();
    (status, text)
}

fn chat_json() -> Vec<u8> {
    body("demo", false)
}

/// The token check, the Host check and the accepted case, on one port.
fn assert_admits_like_the_front(addr: SocketAddr) {
    let ct = ("content-type", "application/json");
    let bearer = format!("Bearer {SERVER_TOKEN}");
    let server = ("authorization", bearer.as_str());
    let client = ("x-api-key", CLIENT_TOKEN);
    let good = addr.to_string();
    let (s, b) = raw(addr, "POST", CHAT, &good, &[ct], &chat_json());
    assert_eq!(s, 401, "{addr}: no token: {b}");
    let (s, _) = raw(
        addr,
        "POST",
        CHAT,
        &good,
        &[ct, ("x-api-key", "wrong")],
        &chat_json(),
    );
    assert_eq!(s, 401, "{addr}: wrong token");
    assert_eq!(raw(addr, "GET", "/v1/health", &good, &[], b"").0, 401);
    for (method, path) in [("GET", "/v1/health"), ("GET", "/metrics"), ("POST", CHAT)] {
        let body: &[u8] = if method == "POST" { &chat_json() } else { b"" };
        let (s, b) = raw(addr, method, path, "evil.com", &[ct, server], body);
        assert_eq!(s, 421, "{addr} {path} with Host evil.com: {b}");
    }
    let (s, b) = raw(addr, "POST", CHAT, &good, &[ct, server], &chat_json());
    assert_eq!(s, 200, "{addr}: server token: {b}");
    let (s, b) = raw(addr, "POST", CHAT, "localhost", &[ct, client], &chat_json());
    assert_eq!(s, 200, "{addr}: client token: {b}");
    assert_eq!(raw(addr, "GET", "/v1/health", &good, &[server], b"").0, 200);
    assert_eq!(raw(addr, "GET", "/metrics", &good, &[], b"").0, 200);
}

#[test]
fn a_worker_port_is_no_way_around_the_fronts_admission() {
    let env = TestEnv::new(&config(2, r#"auth_token_env = "ADM_SERVER_TOKEN""#, ""));
    let run = start(
        &env,
        &[
            ("ADM_SERVER_TOKEN", SERVER_TOKEN),
            ("ADM_CLIENT_TOKEN", CLIENT_TOKEN),
        ],
    );
    assert_admits_like_the_front(run.listen);
    let ws = workers(&env);
    assert_eq!(ws.len(), 2);
    for (pid, port) in ws {
        assert_admits_like_the_front(SocketAddr::from(([127, 0, 0, 1], port)));
        // ... without holding a token variable.
        let environ = start_env(pid);
        assert!(!environ.is_empty(), "read /proc/{pid}/environ");
        for kv in &environ {
            assert!(
                !kv.starts_with("ADM_SERVER_TOKEN=") && !kv.starts_with("ADM_CLIENT_TOKEN="),
                "worker {pid} inherited a token variable: {}",
                kv.split('=').next().unwrap()
            );
            assert!(
                !kv.contains(SERVER_TOKEN) && !kv.contains(CLIENT_TOKEN),
                "worker {pid} has a token in its environment"
            );
        }
    }
}

/// A `worker_command` worker is reached over its TCP port, which admits requests itself: the
/// front's forwarded requests (the client's token, a loopback Host) must still get through,
/// and the worker gets the tokens without the variables.
#[test]
fn the_front_reaches_a_custom_worker_command_through_its_admission() {
    let bin = support::process::bin_path("gateway-worker");
    let env = TestEnv::new(&config(1, r#"auth_token_env = "ADM_SERVER_TOKEN""#, ""));
    let text = std::fs::read_to_string(&env.config_path).unwrap().replace(
        "[pool]\n",
        &format!("[pool]\nworker_command = [\"{}\"]\n", bin.display()),
    );
    std::fs::write(&env.config_path, text).unwrap();
    let run = start(
        &env,
        &[
            ("ADM_SERVER_TOKEN", SERVER_TOKEN),
            ("ADM_CLIENT_TOKEN", CLIENT_TOKEN),
        ],
    );
    assert_admits_like_the_front(run.listen);
    let (pid, port) = workers(&env)[0];
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap();
    assert!(
        String::from_utf8_lossy(&cmdline).starts_with(&bin.display().to_string()),
        "the worker is the configured program"
    );
    assert!(start_env(pid).iter().all(|kv| !kv.contains(SERVER_TOKEN)));
    assert_admits_like_the_front(SocketAddr::from(([127, 0, 0, 1], port)));
}

#[test]
fn a_standalone_worker_admits_like_the_front() {
    let cfg = format!(
        "[server]\nauth_token_env = \"ADM_SERVER_TOKEN\"\n{}\n[[clients]]\nname = \"desk\"\ntoken_env = \"ADM_CLIENT_TOKEN\"\n",
        support::worker::config(MOCK_PROVIDER)
    );
    let w = Worker::start(
        &cfg,
        &[
            ("ADM_SERVER_TOKEN", SERVER_TOKEN),
            ("ADM_CLIENT_TOKEN", CLIENT_TOKEN),
        ],
    );
    assert_admits_like_the_front(w.addr);
}

/// A page on another site POSTs `text/plain` JSON (no preflight) to the port.
fn cross_site(addr: SocketAddr, origin: &str) -> (u16, String) {
    raw(
        addr,
        "POST",
        CHAT,
        &addr.to_string(),
        &[("content-type", "text/plain"), ("origin", origin)],
        &json!({"model": "m1", "messages": [{"role": "user", "content": "spend"}]})
            .to_string()
            .into_bytes(),
    )
}

#[test]
fn cross_site_requests_are_refused_before_any_provider_in_no_token_mode() {
    let up = Upstream::serving(
        CHAT,
        Script::json(
            200,
            json!({"id": "x1", "object": "chat.completion", "choices": []}),
        ),
    );
    let provider = format!(
        "[[providers]]\nname = \"up\"\nkind = \"openai\"\nbase_url = \"{}\"\napi_key_env = \"\"\nmodels = [\"m1\"]\n",
        up.url("/v1")
    );
    let env = TestEnv::new(&config(
        1,
        "auth_token_env = \"\"\ncors_allow_origins = [\"tauri://localhost\"]",
        &provider,
    ));
    let run = start(&env, &[]);
    let port = workers(&env)[0].1;
    let worker = SocketAddr::from(([127, 0, 0, 1], port));
    for addr in [run.listen, worker] {
        for origin in [
            "https://evil.example",
            "null",
            "http://localhost.evil.example",
        ] {
            let (s, b) = cross_site(addr, origin);
            assert_eq!(s, 403, "{addr} Origin {origin}: {b}");
            assert!(b.contains("\"error\""), "an error body: {b}");
        }
    }
    assert_eq!(up.request_count(), 0, "no provider was contacted");
    let mut served = 0;
    for addr in [run.listen, worker] {
        for origin in [
            "http://localhost:3000",
            "http://127.0.0.1:5173",
            "tauri://localhost",
        ] {
            let (s, b) = cross_site(addr, origin);
            assert_eq!(s, 200, "{addr} Origin {origin}: {b}");
            served += 1;
        }
    }
    assert_eq!(up.request_count(), served);
}

/// Writes `sent` and waits until the server closes the connection. Panics if it is still
/// open after `within`.
fn assert_closed(addr: SocketAddr, sent: &[u8], within: Duration, what: &str) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.write_all(sent).unwrap();
    s.set_read_timeout(Some(within)).unwrap();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            // EOF, or a reset: closed either way.
            Ok(0) => return,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return,
            // A 408 before the close is fine; keep reading to the end.
            Ok(_) => {}
            Err(e) => panic!("{what} on {addr}: still open after {within:?} ({e})"),
        }
    }
}

#[test]
fn stalled_heads_and_bodies_are_closed_after_the_configured_timeouts() {
    let env = TestEnv::new(&config(
        1,
        "auth_token_env = \"\"\nheader_read_timeout = \"1s\"\nbody_read_timeout = \"1s\"",
        "",
    ));
    let run = start(&env, &[]);
    let port = workers(&env)[0].1;
    let worker = SocketAddr::from(([127, 0, 0, 1], port));
    // Generous: the point is "closed", not how fast.
    let within = Duration::from_secs(20);
    for addr in [run.listen, worker] {
        assert_closed(addr, b"", within, "a silent connection");
        assert_closed(addr, b"PO", within, "two bytes of a request line");
        assert_closed(
            addr,
            format!(
                "POST {CHAT} HTTP/1.1\r\nHost: localhost\r\ncontent-type: application/json\r\n"
            )
            .as_bytes(),
            within,
            "half a request head",
        );
        assert_closed(
            addr,
            format!(
                "POST {CHAT} HTTP/1.1\r\nHost: localhost\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n100\r\n{{\"model\":"
            )
            .as_bytes(),
            within,
            "a chunk larger than its data",
        );
        // A normal request still works with these timeouts.
        let (s, b) = raw(
            addr,
            "POST",
            CHAT,
            "localhost",
            &[("content-type", "application/json")],
            &chat_json(),
        );
        assert_eq!(s, 200, "{addr}: {b}");
    }
}
