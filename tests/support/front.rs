//! Helpers for tests that go through the front listener (`front_*.rs`, `chaos.rs`, …): a test
//! configuration with three mock providers, request shortcuts over the blocking client, the
//! admin status, and a strict parser for the Prometheus text exposition.

use crate::support::http::{self, chat_body, Stream};
use crate::support::process::{Running, TestEnv};
use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;

/// A test configuration: `workers` workers, extra `[pool]` and `[server]` keys, and three mock
/// providers: `demo` (fast), `slow` (streams at 2 words/s, so a stream stays open ~8 s) and
/// `lazy` (headers after 400 ms).
pub fn config(workers: u32, pool: &str, server: &str, tail: &str) -> String {
    format!(
        r#"
[server]
listen = "127.0.0.1:0"
auth_token_env = ""
{server}

[pool]
workers = {workers}
base_port = 0
runtime_dir = "{{RUNTIME_DIR}}"
heartbeat_interval = "200ms"
heartbeat_timeout = "2s"
startup_timeout = "10s"
shutdown_timeout = "3s"
restart_backoff_initial = "50ms"
restart_backoff_max = "1s"
{pool}

[health]
probe_interval = "0s"

[[providers]]
name = "demo"
kind = "mock"
models = ["demo"]

[[providers]]
name = "slow"
kind = "mock"
models = ["slow"]
tokens_per_second = 2.0

[[providers]]
name = "lazy"
kind = "mock"
models = ["lazy"]
latency = "400ms"
{tail}
"#
    )
}

pub fn start(workers: u32, pool: &str, server: &str, tail: &str) -> (TestEnv, Running) {
    let env = TestEnv::new(&config(workers, pool, server, tail));
    let run = env.start(&[]);
    (env, run)
}

pub fn body(model: &str, stream: bool) -> Vec<u8> {
    chat_body(model, stream).to_string().into_bytes()
}

pub fn chat(addr: SocketAddr, model: &str, headers: &[(&str, &str)]) -> http::Response {
    http::request(
        addr,
        "POST",
        "/v1/chat/completions",
        headers,
        Some(&body(model, false)),
    )
    .expect("front answered")
}

pub fn open_stream(addr: SocketAddr, model: &str, headers: &[(&str, &str)]) -> Stream {
    Stream::open(
        addr,
        "POST",
        "/v1/chat/completions",
        headers,
        Some(&body(model, true)),
    )
    .expect("stream opened")
}

pub fn worker_of(headers: &[(String, String)]) -> u64 {
    let v = headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("x-gateway-worker"));
    v.expect("x-gateway-worker header").1.parse().unwrap()
}

/// `supervisor status --json`: worker id → (pid, in flight); pid 0 when the slot has none.
pub fn worker_status(env: &TestEnv) -> HashMap<u64, (u32, u64)> {
    env.status_json()["workers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| {
            let id = w["id"].as_u64().unwrap();
            (
                id,
                (
                    // `null` while the slot has no process (RESTARTING, DEAD): reported as 0.
                    w["pid"].as_u64().unwrap_or(0) as u32,
                    w["inflight"].as_u64().unwrap(),
                ),
            )
        })
        .collect()
}

/// One sample of a strictly parsed exposition.
#[derive(Debug)]
pub struct Sample {
    pub name: String,
    pub labels: Vec<(String, String)>,
    pub value: f64,
}

/// A strict parser for the text exposition: every line must be a descriptor, a sample or the
/// final `# EOF`; names and labels must be well formed; each family is declared once and its
/// samples follow it without another family in between. Returns (family → type, samples).
pub fn parse_exposition(text: &str) -> (HashMap<String, String>, Vec<Sample>) {
    let valid_name = |n: &str| {
        !n.is_empty()
            && n.chars().enumerate().all(|(i, c)| {
                c.is_ascii_alphabetic() || c == '_' || c == ':' || (i > 0 && c.is_ascii_digit())
            })
    };
    let mut types = HashMap::new();
    let mut closed: HashSet<String> = HashSet::new();
    let mut current: Option<String> = None;
    let mut samples = Vec::new();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        lines.last(),
        Some(&"# EOF"),
        "the exposition ends with # EOF"
    );
    for (i, line) in lines.iter().enumerate() {
        if *line == "# EOF" {
            assert_eq!(i, lines.len() - 1, "# EOF only at the end");
            continue;
        }
        if let Some(rest) = line.strip_prefix("# ") {
            let mut it = rest.splitn(3, ' ');
            let (kind, name) = (it.next().unwrap(), it.next().unwrap_or(""));
            assert!(
                matches!(kind, "HELP" | "TYPE" | "UNIT"),
                "bad descriptor line {line:?}"
            );
            assert!(valid_name(name), "bad family name in {line:?}");
            if current.as_deref() != Some(name) {
                assert!(!closed.contains(name), "family {name} appears twice");
                if let Some(c) = current.take() {
                    closed.insert(c);
                }
                current = Some(name.to_string());
            }
            if kind == "TYPE" {
                let t = it.next().unwrap_or("");
                assert!(
                    matches!(
                        t,
                        "counter"
                            | "gauge"
                            | "histogram"
                            | "summary"
                            | "info"
                            | "stateset"
                            | "unknown"
                            | "gaugehistogram"
                    ),
                    "bad type in {line:?}"
                );
                assert!(
                    types.insert(name.to_string(), t.to_string()).is_none(),
                    "TYPE twice for {name}"
                );
            }
            continue;
        }
        let s = parse_sample(line);
        assert!(valid_name(&s.name), "bad sample name in {line:?}");
        let fam = current
            .as_deref()
            .unwrap_or_else(|| panic!("sample before any family: {line:?}"));
        let suffix = s
            .name
            .strip_prefix(fam)
            .unwrap_or_else(|| panic!("sample {} outside family {fam}", s.name));
        assert!(
            matches!(
                suffix,
                "" | "_total" | "_bucket" | "_sum" | "_count" | "_created" | "_info"
            ),
            "sample {} does not belong to family {fam}",
            s.name
        );
        samples.push(s);
    }
    (types, samples)
}

pub fn parse_sample(line: &str) -> Sample {
    let name_end = line
        .find(['{', ' '])
        .unwrap_or_else(|| panic!("no value in {line:?}"));
    let name = line[..name_end].to_string();
    let mut rest = &line[name_end..];
    let mut labels = Vec::new();
    if let Some(r) = rest.strip_prefix('{') {
        let mut r = r;
        loop {
            if let Some(after) = r.strip_prefix('}') {
                rest = after;
                break;
            }
            let eq = r
                .find("=\"")
                .unwrap_or_else(|| panic!("bad label in {line:?}"));
            let key = &r[..eq];
            assert!(
                !key.is_empty() && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
                "bad label name in {line:?}"
            );
            let mut value = String::new();
            let mut chars = r[eq + 2..].char_indices();
            let end = loop {
                match chars.next() {
                    Some((_, '\\')) => match chars.next() {
                        Some((_, 'n')) => value.push('\n'),
                        Some((_, c @ ('\\' | '"'))) => value.push(c),
                        other => panic!("bad escape {other:?} in {line:?}"),
                    },
                    Some((j, '"')) => break eq + 2 + j + 1,
                    Some((_, c)) => value.push(c),
                    None => panic!("unterminated label value in {line:?}"),
                }
            };
            labels.push((key.to_string(), value));
            r = &r[end..];
            r = r.strip_prefix(',').unwrap_or(r);
        }
    }
    let mut parts = rest
        .strip_prefix(' ')
        .unwrap_or_else(|| panic!("no space before value in {line:?}"))
        .split(' ');
    let v = parts.next().unwrap();
    let value = match v {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        "NaN" => f64::NAN,
        _ => v
            .parse()
            .unwrap_or_else(|_| panic!("bad value {v:?} in {line:?}")),
    };
    if let Some(ts) = parts.next() {
        ts.parse::<f64>()
            .unwrap_or_else(|_| panic!("bad timestamp in {line:?}"));
    }
    assert!(parts.next().is_none(), "trailing fields in {line:?}");
    Sample {
        name,
        labels,
        value,
    }
}

pub fn metrics(addr: SocketAddr) -> (HashMap<String, String>, Vec<Sample>) {
    let r = http::get(addr, "/metrics").unwrap();
    assert_eq!(r.status, 200);
    parse_exposition(&r.text())
}

pub fn gauge_sum(samples: &[Sample], name: &str) -> f64 {
    samples
        .iter()
        .filter(|s| s.name == name)
        .map(|s| s.value)
        .sum()
}
