//! Fills a usage ledger with N synthetic rows spread over the last 90 days (for
//! `bench/ledger.sh`: `supervisor usage` on a ledger of 1,000,000 rows), through the
//! supervisor's own ledger code, so the schema and indexes are the real ones.
//!
//! Usage: ledger_fill PATH N

use gateway::usage::{Outcome, Record, Tokens};
use supervisor::usage::ledger;

fn main() {
    let mut args = std::env::args().skip(1);
    let (Some(path), Some(n)) = (args.next(), args.next()) else {
        eprintln!("usage: ledger_fill PATH N");
        std::process::exit(2);
    };
    let n: u64 = n.parse().expect("N is a number");
    let mut conn = ledger::open_rw(std::path::Path::new(&path)).unwrap_or_else(|e| {
        eprintln!("{e}");
        std::process::exit(1)
    });
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let span = 90 * 86_400_000i64;
    let clients = ["", "desktop", "ci", "notebook"];
    let models = [
        "gpt-4o-mini",
        "gpt-4o",
        "claude-sonnet-4-5",
        "llama3.2",
        "demo",
    ];
    let mut batch = Vec::with_capacity(10_000);
    for i in 0..n {
        let m = models[(i % 5) as usize];
        batch.push(Record {
            ts_ms: now - span + (i as i64 * span / n as i64),
            request_id: format!("bench-{i}"),
            client: clients[(i % 4) as usize].into(),
            model_asked: m.into(),
            model_served: m.into(),
            provider: if m.starts_with("claude") {
                "anthropic"
            } else {
                "openai"
            }
            .into(),
            worker: Some((i % 3) as u32),
            tokens: Tokens {
                input: 100 + i % 900,
                output: 10 + i % 400,
                cache_read: i % 50,
                cache_write: 0,
            },
            cost_usd: (m != "llama3.2").then_some(0.0001 * (i % 7) as f64),
            status: 200,
            outcome: Outcome::Ok,
            duration_ms: 200 + i % 1000,
            ttfb_ms: Some(50 + i % 200),
            streamed: i % 2 == 0,
            translated: false,
            translation: None,
            dropped_before: 0,
        });
        if batch.len() == batch.capacity() {
            ledger::insert(&mut conn, &batch).expect("insert");
            batch.clear();
        }
    }
    ledger::insert(&mut conn, &batch).expect("insert");
}
