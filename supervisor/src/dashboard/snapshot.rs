//! The one snapshot both views show (`GET /dashboard/snapshot`, the SSE stream, the admin
//! socket's `GET /snapshot` behind `supervisor top`), and how its provider rows are read from
//! the workers' metrics text.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Everything the dashboard and `supervisor top` show, at one instant.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Snapshot {
    /// Unix ms when it was taken.
    pub at_ms: u64,
    pub workers: Vec<WorkerRow>,
    pub providers: Vec<ProviderRow>,
    pub totals: Totals,
    pub history: History,
    /// The last finished `/v1/*` requests, newest first (at most `usage::access::RECENT`).
    #[serde(default)]
    pub requests: Vec<RequestRow>,
}

/// One finished request: the front's half of its access line joined with its usage record.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct RequestRow {
    /// Unix ms when it finished.
    pub at_ms: u64,
    pub method: String,
    pub path: String,
    pub status: u16,
    pub client: Option<String>,
    pub model: Option<String>,
    pub provider: Option<String>,
    pub worker: Option<usize>,
    /// Until the response body ended.
    pub latency_ms: f64,
    pub input_tokens: Option<u64>,
    pub output_tokens: Option<u64>,
    pub cost_usd: Option<f64>,
    /// `FROM->TO` when a worker translated it.
    pub translated: Option<String>,
}

/// One worker slot, from the pool's atomics.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct WorkerRow {
    pub id: usize,
    pub pid: Option<u32>,
    pub state: String,
    pub inflight: u32,
    pub served: u64,
    pub restarts: u32,
    pub rss_bytes: u64,
    /// `None` before the first heartbeat.
    pub heartbeat_age_ms: Option<u64>,
}

/// One provider, summed over the workers that answered the scrape.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct ProviderRow {
    pub name: String,
    /// `closed`, `open` or `half-open`: the pool-wide breaker (`providers.shm`), else the
    /// worst state any worker reports.
    pub breaker: String,
    /// Seconds until the provider may be chosen again: the rest of the open period or of a
    /// 429/Retry-After cool-down, whichever is longer; 0 when usable.
    #[serde(default)]
    pub cooldown_s: f64,
    /// Requests holding one of its permits across the pool now.
    #[serde(default)]
    pub inflight: u32,
    pub requests: u64,
    /// Attempts whose outcome was not `success`.
    pub errors: u64,
    /// Mean upstream latency so far, ms (`None` before any).
    pub latency_ms: Option<f64>,
    pub tokens: u64,
    pub cost_usd: f64,
}

/// Pool-wide numbers.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Totals {
    pub requests: u64,
    pub errors: u64,
    /// Over the last second sampled (0 when no sampler ran yet).
    pub requests_per_s: f64,
    pub errors_per_s: f64,
    /// Over the sampled window (up to the last minute), else since start.
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    pub ttfb_p50_ms: Option<f64>,
    pub ttfb_p99_ms: Option<f64>,
    pub tokens: u64,
    pub tokens_per_s: f64,
    pub cost_usd: f64,
}

/// Per-second rates, oldest first, over the last [`super::HISTORY_SECONDS`] at most.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct History {
    pub requests_per_s: Vec<f64>,
    pub errors_per_s: Vec<f64>,
}

/// Adds one worker's metrics text to the provider rows (keyed by provider name).
pub fn add_worker_metrics(rows: &mut BTreeMap<String, ProviderAcc>, text: &str) {
    for line in text.lines() {
        if line.starts_with('#') {
            continue;
        }
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let Ok(v) = value.parse::<f64>() else {
            continue;
        };
        let (name, labels) = series.split_once('{').unwrap_or((series, ""));
        let Some(provider) = label(labels, "provider") else {
            continue;
        };
        let acc = rows.entry(provider.to_string()).or_default();
        match name {
            "gateway_provider_requests_total" => {
                acc.requests += v as u64;
                if label(labels, "outcome") != Some("success") {
                    acc.errors += v as u64;
                }
            }
            "gateway_provider_latency_seconds_sum" => acc.latency_sum += v,
            "gateway_provider_latency_seconds_count" => acc.latency_count += v as u64,
            "gateway_circuit_state" => acc.breaker = acc.breaker.max(v as u8),
            "gateway_tokens_total" => acc.tokens += v as u64,
            "gateway_cost_usd_total" => acc.cost_usd += v,
            _ => {}
        }
    }
}

/// A provider's sums while the workers' texts are read.
#[derive(Debug, Default)]
pub struct ProviderAcc {
    requests: u64,
    errors: u64,
    latency_sum: f64,
    latency_count: u64,
    /// `gateway_circuit_state`: 0 closed, 1 open, 2 half-open.
    breaker: u8,
    tokens: u64,
    cost_usd: f64,
}

impl ProviderAcc {
    pub fn into_row(self, name: String) -> ProviderRow {
        // Open is worse than half-open: order 0 < 2 < 1 for "worst".
        let breaker = match self.breaker {
            0 => "closed",
            2 => "half-open",
            _ => "open",
        };
        ProviderRow {
            name,
            breaker: breaker.into(),
            cooldown_s: 0.0,
            inflight: 0,
            requests: self.requests,
            errors: self.errors,
            latency_ms: (self.latency_count > 0)
                .then(|| self.latency_sum * 1000.0 / self.latency_count as f64),
            tokens: self.tokens,
            cost_usd: self.cost_usd,
        }
    }
}

/// The value of label `key` in `a="x",b="y"`, for values without escaped quotes.
fn label<'a>(labels: &'a str, key: &str) -> Option<&'a str> {
    let mut rest = labels;
    while let Some(eq) = rest.find("=\"") {
        let k = rest[..eq].trim_start_matches([',', ' ']);
        let after = &rest[eq + 2..];
        let end = after.find('"')?;
        if k == key {
            return Some(&after[..end]);
        }
        rest = &after[end + 1..];
    }
    None
}

/// The snapshot as plain text, for `supervisor top` with a non-TTY stdout.
pub fn plain_text(s: &Snapshot) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let t = &s.totals;
    let ms = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.1}ms"));
    let _ = writeln!(
        out,
        "requests {} ({:.1}/s)  errors {} ({:.1}/s)  p50 {}  p99 {}  ttfb p50 {}  tokens {} ({:.1}/s)  cost ${:.4}",
        t.requests, t.requests_per_s, t.errors, t.errors_per_s, ms(t.p50_ms), ms(t.p99_ms),
        ms(t.ttfb_p50_ms), t.tokens, t.tokens_per_s, t.cost_usd
    );
    let _ = writeln!(
        out,
        "\n{:<4} {:<8} {:<15} {:>8} {:>8} {:>8} {:>10} {:>10}",
        "ID", "PID", "STATE", "INFLIGHT", "SERVED", "RESTARTS", "RSS", "HEARTBEAT"
    );
    for w in &s.workers {
        let _ = writeln!(
            out,
            "{:<4} {:<8} {:<15} {:>8} {:>8} {:>8} {:>10} {:>10}",
            w.id,
            w.pid.map_or("-".into(), |p| p.to_string()),
            w.state,
            w.inflight,
            w.served,
            w.restarts,
            format!("{}M", w.rss_bytes / (1 << 20)),
            w.heartbeat_age_ms.map_or("-".into(), |a| format!("{a}ms")),
        );
    }
    let _ = writeln!(
        out,
        "\n{:<20} {:<10} {:>8} {:>8} {:>8} {:>8} {:>10} {:>10}",
        "PROVIDER", "BREAKER", "COOLDOWN", "INFLIGHT", "REQUESTS", "ERRORS", "LATENCY", "TOKENS"
    );
    for p in &s.providers {
        let _ = writeln!(
            out,
            "{:<20} {:<10} {:>8} {:>8} {:>8} {:>8} {:>10} {:>10}",
            p.name,
            p.breaker,
            cooldown(p.cooldown_s),
            p.inflight,
            p.requests,
            p.errors,
            ms(p.latency_ms),
            p.tokens
        );
    }
    let _ = writeln!(out, "\n{}", request_header());
    for r in &s.requests {
        let _ = writeln!(out, "{}", request_line(r));
    }
    out
}

/// A cool-down for a table cell: `-` when none.
pub fn cooldown(s: f64) -> String {
    if s > 0.0 {
        format!("{s:.1}s")
    } else {
        "-".into()
    }
}

/// `HH:MM:SS` (UTC) of Unix ms.
pub fn clock(at_ms: u64) -> String {
    let s = at_ms / 1000 % 86_400;
    format!("{:02}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60)
}

/// The head of the request list's columns.
pub fn request_header() -> String {
    format!(
        "{:<8} {:<10} {:<16} {:<14} {:<12} {:>6} {:>10} {:>11} {:>9} {:<10}",
        "TIME",
        "CLIENT",
        "MODEL",
        "PROVIDER",
        "TRANSLATED",
        "STATUS",
        "LATENCY",
        "TOKENS",
        "COST",
        "PATH"
    )
}

/// One request as a line of the plain table (and of `top`'s list).
pub fn request_line(r: &RequestRow) -> String {
    let opt = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
    let tokens = match (r.input_tokens, r.output_tokens) {
        (Some(i), Some(o)) => format!("{i}/{o}"),
        _ => "-".into(),
    };
    format!(
        "{:<8} {:<10} {:<16} {:<14} {:<12} {:>6} {:>10} {:>11} {:>9} {:<10}",
        clock(r.at_ms),
        opt(&r.client),
        opt(&r.model),
        opt(&r.provider),
        opt(&r.translated),
        r.status,
        format!("{:.1}ms", r.latency_ms),
        tokens,
        r.cost_usd.map_or("-".into(), |c| format!("${c:.4}")),
        r.path,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn provider_rows_from_worker_metrics() {
        let w0 = "# TYPE gateway_provider_requests counter\n\
            gateway_provider_requests_total{provider=\"demo\",outcome=\"success\"} 3\n\
            gateway_provider_requests_total{provider=\"demo\",outcome=\"upstream_error\"} 1\n\
            gateway_provider_latency_seconds_sum{provider=\"demo\"} 0.4\n\
            gateway_provider_latency_seconds_count{provider=\"demo\"} 4\n\
            gateway_circuit_state{provider=\"demo\"} 0\n\
            gateway_tokens_total{client=\"a\",provider=\"demo\",model=\"m\",type=\"input\"} 6\n\
            gateway_cost_usd_total{client=\"a\",provider=\"demo\",model=\"m\"} 0.5\n# EOF\n";
        let w1 = "gateway_circuit_state{provider=\"demo\"} 1\n";
        let mut rows = BTreeMap::new();
        add_worker_metrics(&mut rows, w0);
        add_worker_metrics(&mut rows, w1);
        let row = rows.remove("demo").unwrap().into_row("demo".into());
        assert_eq!(row.requests, 4);
        assert_eq!(row.errors, 1);
        assert_eq!(row.breaker, "open");
        assert_eq!(row.tokens, 6);
        assert!((row.latency_ms.unwrap() - 100.0).abs() < 1e-9);
        assert!((row.cost_usd - 0.5).abs() < 1e-9);
    }
}
