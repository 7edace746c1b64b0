//! `supervisor usage`: totals and breakdowns read straight from the ledger file (read-only, so
//! it works with the supervisor running or stopped), as a table, JSON or CSV.

use super::ledger::{self, By, Row};
use crate::cli::ConfigArg;
use crate::exit;
use clap::Args;
use gateway::config;
use std::fmt::Write;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

#[derive(Debug, Clone, Args)]
pub struct UsageArgs {
    #[command(flatten)]
    pub config: ConfigArg,
    /// From this time (inclusive): a date (2026-12-01, UTC midnight), an RFC 3339 UTC time
    /// (2026-12-01T08:00:00Z) or a duration ago (7d, 12h); default: the oldest row.
    #[arg(long, value_name = "WHEN")]
    pub since: Option<String>,
    /// Until this time (exclusive), in the same forms; default: now and later.
    #[arg(long, value_name = "WHEN")]
    pub until: Option<String>,
    /// Break the totals down by these keys (repeat, or comma-separate).
    #[arg(long, value_enum, value_delimiter = ',', num_args = 1..)]
    pub by: Vec<By>,
    /// Print JSON instead of a table.
    #[arg(long, conflicts_with = "csv")]
    pub json: bool,
    /// Print CSV instead of a table.
    #[arg(long)]
    pub csv: bool,
}

pub fn run(a: &UsageArgs) -> u8 {
    let source = config::resolve_source(a.config.config.as_deref());
    let cfg = match config::load(&source) {
        Ok(l) => l.config,
        Err(errors) => {
            for e in &errors.0 {
                eprintln!("error: {e}");
            }
            return exit::CONFIG;
        }
    };
    let now = now_ms();
    let range = (|| {
        let since = a.since.as_deref().map(|w| parse_when(w, now)).transpose()?;
        let until = a.until.as_deref().map(|w| parse_when(w, now)).transpose()?;
        Ok::<_, String>((since.unwrap_or(0), until.unwrap_or(i64::MAX)))
    })();
    let (since, until) = match range {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {e}");
            return exit::CONFIG;
        }
    };
    let path = match ledger::path(&cfg.usage) {
        Ok(Some(p)) => p,
        Ok(None) => {
            eprintln!(
                "error: the usage ledger is off (usage.ledger = \"off\" in {})",
                source.display_name()
            );
            return exit::CONFIG;
        }
        Err(e) => {
            eprintln!("error: {e}");
            return exit::CONFIG;
        }
    };
    let rows = ledger::open_ro(&path).and_then(|c| {
        ledger::summary(&c, since, until, &a.by)
            .map_err(|e| format!("usage ledger {}: {e}", path.display()))
    });
    let rows = match rows {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {e}");
            return exit::RUNTIME;
        }
    };
    let out = if a.json {
        json(&rows, &a.by)
    } else if a.csv {
        csv(&rows, &a.by)
    } else {
        table(&rows, &a.by)
    };
    print!("{out}");
    exit::OK
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Unix milliseconds of WHEN: `YYYY-MM-DD` (UTC midnight), an RFC 3339 UTC time, or a duration
/// before `now_ms`.
pub fn parse_when(w: &str, now_ms: i64) -> Result<i64, String> {
    let ms = |t: SystemTime| {
        t.duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64)
    };
    if w.len() == 10 && w.as_bytes()[4] == b'-' {
        return humantime::parse_rfc3339(&format!("{w}T00:00:00Z"))
            .map(ms)
            .map_err(|e| format!("--since/--until `{w}`: {e}"));
    }
    if let Ok(t) = humantime::parse_rfc3339(w) {
        return Ok(ms(t));
    }
    match humantime::parse_duration(w) {
        Ok(d) => Ok(now_ms - d.min(Duration::from_secs(1 << 40)).as_millis() as i64),
        Err(_) => Err(format!(
            "--since/--until `{w}`: expected a date (2026-12-01), an RFC 3339 UTC time (2026-12-01T08:00:00Z) or a duration ago (7d)"
        )),
    }
}

fn cost_text(c: Option<f64>) -> String {
    c.map_or_else(String::new, |c| format!("{c:.6}"))
}

const COLUMNS: [&str; 7] = [
    "requests",
    "input_tokens",
    "output_tokens",
    "cache_read_tokens",
    "cache_write_tokens",
    "cost_usd",
    "unpriced_requests",
];

fn cells(r: &Row) -> Vec<String> {
    let mut v = r.keys.clone();
    v.extend([
        r.requests.to_string(),
        r.input_tokens.to_string(),
        r.output_tokens.to_string(),
        r.cache_read_tokens.to_string(),
        r.cache_write_tokens.to_string(),
        cost_text(r.cost_usd),
        r.unpriced_requests.to_string(),
    ]);
    v
}

fn header(by: &[By]) -> Vec<String> {
    by.iter()
        .map(|b| b.name().to_string())
        .chain(COLUMNS.iter().map(|c| c.to_string()))
        .collect()
}

fn json(rows: &[Row], by: &[By]) -> String {
    let rows: Vec<serde_json::Value> = rows
        .iter()
        .map(|r| {
            let mut v = serde_json::to_value(r).expect("a row serializes");
            for (b, k) in by.iter().zip(&r.keys) {
                v[b.name()] = serde_json::Value::String(k.clone());
            }
            v
        })
        .collect();
    format!("{}\n", serde_json::json!({ "rows": rows }))
}

fn csv(rows: &[Row], by: &[By]) -> String {
    let field = |s: &str| {
        if s.contains([',', '"', '\n']) {
            format!("\"{}\"", s.replace('"', "\"\""))
        } else {
            s.to_string()
        }
    };
    let mut out = header(by).join(",");
    out.push('\n');
    for r in rows {
        let line: Vec<String> = cells(r).iter().map(|c| field(c)).collect();
        out.push_str(&line.join(","));
        out.push('\n');
    }
    out
}

fn table(rows: &[Row], by: &[By]) -> String {
    let head = header(by);
    let body: Vec<Vec<String>> = rows.iter().map(cells).collect();
    let widths: Vec<usize> = (0..head.len())
        .map(|i| {
            body.iter()
                .map(|r| r[i].chars().count())
                .chain([head[i].len()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for line in std::iter::once(&head).chain(&body) {
        let cols: Vec<String> = line
            .iter()
            .zip(&widths)
            .enumerate()
            .map(|(i, (c, w))| {
                if i < by.len() {
                    format!("{c:<w$}")
                } else {
                    format!("{c:>w$}")
                }
            })
            .collect();
        let _ = writeln!(out, "{}", cols.join("  ").trim_end());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn when_takes_dates_times_and_durations() {
        let day = 86_400_000;
        assert_eq!(parse_when("1970-01-02", 0).unwrap(), day);
        assert_eq!(parse_when("1970-01-02T00:00:01Z", 0).unwrap(), day + 1000);
        assert_eq!(parse_when("7d", 10 * day).unwrap(), 3 * day);
        let e = parse_when("yesterday", 0).unwrap_err();
        assert!(e.contains("yesterday"), "{e}");
    }

    #[test]
    fn outputs_name_the_keys_and_leave_unknown_cost_empty() {
        let r = Row {
            keys: vec!["m,1".into()],
            requests: 2,
            input_tokens: 3,
            output_tokens: 4,
            cache_read_tokens: 0,
            cache_write_tokens: 0,
            cost_usd: None,
            unpriced_requests: 2,
        };
        let by = [By::Model];
        let j: serde_json::Value =
            serde_json::from_str(&json(std::slice::from_ref(&r), &by)).unwrap();
        assert_eq!(j["rows"][0]["model"], "m,1");
        assert!(j["rows"][0]["cost_usd"].is_null());
        assert_eq!(csv(std::slice::from_ref(&r), &by), "model,requests,input_tokens,output_tokens,cache_read_tokens,cache_write_tokens,cost_usd,unpriced_requests\n\"m,1\",2,3,4,0,0,,2\n");
        let t = table(&[r], &by);
        assert!(t.starts_with("model  requests"), "{t}");
    }
}
