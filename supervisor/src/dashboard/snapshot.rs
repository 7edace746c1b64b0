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
    /// `closed`, `open` or `half-open`: the worst state any worker reports.
    pub breaker: String,
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
        "\n{:<20} {:<10} {:>8} {:>8} {:>10} {:>10}",
        "PROVIDER", "BREAKER", "REQUESTS", "ERRORS", "LATENCY", "TOKENS"
    );
    for p in &s.providers {
        let _ = writeln!(
            out,
            "{:<20} {:<10} {:>8} {:>8} {:>10} {:>10}",
            p.name,
            p.breaker,
            p.requests,
            p.errors,
            ms(p.latency_ms),
            p.tokens
        );
    }
    out
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
