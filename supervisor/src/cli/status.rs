//! `supervisor status`: the workers of a running supervisor, from its admin socket, as a table
//! or (`--json`) as the contract's JSON object.

use super::control::{admin_socket, request};
use super::TargetArgs;
use crate::admin::StatusReport;
use crate::exit;
use crate::pool::WorkerStatus;
use std::fmt::Write;
use std::time::Duration;

#[derive(Debug, Clone, clap::Args)]
pub struct StatusArgs {
    #[command(flatten)]
    pub target: TargetArgs,
    /// Print `{"listen":…,"workers":[…]}` instead of a table.
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: &StatusArgs) -> u8 {
    let socket = match admin_socket(&args.target) {
        Ok(s) => s,
        Err(code) => return code,
    };
    let resp = match request(&socket, "GET", "/workers", Duration::from_secs(10)) {
        Ok(r) if r.status == 200 => r,
        Ok(r) => {
            eprintln!("error: admin socket answered {}: {}", r.status, r.body);
            return exit::RUNTIME;
        }
        Err(e) => {
            eprintln!("error: {e}");
            return exit::RUNTIME;
        }
    };
    let report: StatusReport = match serde_json::from_str(&resp.body) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: unexpected status from {}: {e}", socket.display());
            return exit::RUNTIME;
        }
    };
    if args.json {
        println!("{}", serde_json::to_string(&report).expect("serializes"));
    } else {
        print!("{}", table(&report));
    }
    exit::OK
}

/// The human table.
pub fn table(report: &StatusReport) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "listen: {}", report.listen);
    let _ = writeln!(
        s,
        "{:>3} {:>8} {:>6} {:<15} {:>9} {:>8} {:>8} {:>8} {:>9} {:>9} {:>9}",
        "ID",
        "PID",
        "PORT",
        "STATE",
        "IN FLIGHT",
        "SERVED",
        "RESTARTS",
        "REPLACED",
        "RSS",
        "UPTIME",
        "HEARTBEAT"
    );
    for w in &report.workers {
        let _ = writeln!(s, "{}", row(w));
    }
    s
}

fn row(w: &WorkerStatus) -> String {
    let opt = |v: Option<String>| v.unwrap_or_else(|| "-".into());
    format!(
        "{:>3} {:>8} {:>6} {:<15} {:>9} {:>8} {:>8} {:>8} {:>9} {:>9} {:>9}",
        w.id,
        opt(w.pid.map(|p| p.to_string())),
        w.port,
        w.state,
        w.inflight,
        w.served,
        w.restarts,
        w.replaced,
        if w.rss_bytes == 0 {
            "-".into()
        } else {
            format!("{:.1}M", w.rss_bytes as f64 / 1048576.0)
        },
        opt(w.uptime_ms.map(|ms| short(Duration::from_millis(ms)))),
        opt(w
            .heartbeat_age_ms
            .map(|ms| format!("{:.1}s", ms as f64 / 1000.0))),
    )
}

/// "42s", "3m12s", "5h03m".
fn short(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_shows_every_column() {
        let w = WorkerStatus {
            id: 1,
            pid: Some(4242),
            port: 8766,
            state: "IDLE".into(),
            inflight: 2,
            served: 17,
            restarts: 3,
            replaced: 5,
            rss_bytes: 10 * 1048576,
            uptime_ms: Some(200_000),
            heartbeat_age_ms: Some(500),
        };
        let dead = WorkerStatus {
            id: 2,
            pid: None,
            state: "DEAD".into(),
            uptime_ms: None,
            heartbeat_age_ms: None,
            rss_bytes: 0,
            ..w.clone()
        };
        let t = table(&StatusReport {
            listen: "127.0.0.1:8080".into(),
            workers: vec![w, dead],
            version: "0.1.0".into(),
            generation: 0,
        });
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 4, "{t}");
        assert!(lines[1].contains("RESTARTS") && lines[1].contains("REPLACED"));
        for want in [
            "4242", "8766", "IDLE", "17", " 3 ", " 5 ", "10.0M", "3m20s", "0.5s",
        ] {
            assert!(lines[2].contains(want), "{want} missing in {}", lines[2]);
        }
        assert!(
            lines[3].contains("DEAD") && lines[3].contains(" - "),
            "{}",
            lines[3]
        );
    }
}
