//! The SQLite usage ledger: where it lives, its schema and indexes, batched inserts, bounded
//! retention deletes, and the read-side queries (`summary`, and the per-client totals that
//! client budgets can start from). Only the ledger thread (`super::writer`) writes.

use gateway::config::UsageConfig;
use gateway::usage::Record;
use rusqlite::{params, Connection, OpenFlags};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// Rows deleted per retention statement: bounded, so neither memory nor a lock grows with the
/// backlog.
pub const PRUNE_BATCH: usize = 5_000;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS usage (
    id INTEGER PRIMARY KEY,
    ts_ms INTEGER NOT NULL,
    request_id TEXT NOT NULL,
    client TEXT NOT NULL,
    model_asked TEXT NOT NULL,
    model_served TEXT NOT NULL,
    provider TEXT NOT NULL,
    worker INTEGER,
    input_tokens INTEGER NOT NULL,
    output_tokens INTEGER NOT NULL,
    cache_read_tokens INTEGER NOT NULL,
    cache_write_tokens INTEGER NOT NULL,
    cost_usd REAL,
    status INTEGER NOT NULL,
    outcome TEXT NOT NULL,
    duration_ms INTEGER NOT NULL,
    ttfb_ms INTEGER,
    streamed INTEGER NOT NULL,
    translated INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS usage_ts ON usage (ts_ms);
CREATE INDEX IF NOT EXISTS usage_client_ts ON usage (client, ts_ms);
";

/// The ledger file `usage.ledger` names; `None` when it is "off". "auto" is
/// `$XDG_STATE_HOME/gateway/usage.db`, else `~/.local/state/gateway/usage.db`.
pub fn path(cfg: &UsageConfig) -> Result<Option<PathBuf>, String> {
    match cfg.ledger.as_str() {
        "off" => Ok(None),
        "auto" => {
            let state = std::env::var_os("XDG_STATE_HOME")
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
                .or_else(|| {
                    std::env::var_os("HOME")
                        .filter(|v| !v.is_empty())
                        .map(|h| PathBuf::from(h).join(".local/state"))
                })
                .ok_or("usage.ledger = \"auto\" needs $XDG_STATE_HOME or $HOME")?;
            Ok(Some(state.join("gateway").join("usage.db")))
        }
        p => Ok(Some(PathBuf::from(p))),
    }
}

/// Opens (creating) the ledger for writing: its directory created 0700, the file 0600, WAL mode,
/// the schema in place. Errors name the path.
pub fn open_rw(path: &Path) -> Result<Connection, String> {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    let at = |e: &dyn std::fmt::Display| format!("usage ledger {}: {e}", path.display());
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| at(&e))?;
    }
    // Created here with 0600 so SQLite never creates it with the umask's mode; its -wal and
    // -shm files take this file's mode.
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| at(&e))?;
    let conn = Connection::open(path).map_err(|e| at(&e))?;
    conn.pragma_update(None, "journal_mode", "WAL")
        .map_err(|e| at(&e))?;
    // In WAL mode NORMAL loses nothing committed when the process dies (only on power loss).
    conn.pragma_update(None, "synchronous", "NORMAL")
        .map_err(|e| at(&e))?;
    conn.busy_timeout(std::time::Duration::from_secs(5))
        .map_err(|e| at(&e))?;
    conn.execute_batch(SCHEMA).map_err(|e| at(&e))?;
    Ok(conn)
}

/// Opens the ledger read-only (works beside a running writer: WAL readers do not block it).
pub fn open_ro(path: &Path) -> Result<Connection, String> {
    if !path.exists() {
        return Err(format!("no usage ledger at {}", path.display()));
    }
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|e| format!("usage ledger {}: {e}", path.display()))?;
    conn.busy_timeout(std::time::Duration::from_secs(5))
        .map_err(|e| format!("usage ledger {}: {e}", path.display()))?;
    Ok(conn)
}

/// Inserts `batch` in one transaction.
pub fn insert(conn: &mut Connection, batch: &[Record]) -> rusqlite::Result<()> {
    let tx = conn.transaction()?;
    {
        let mut st = tx.prepare_cached(
            "INSERT INTO usage (ts_ms, request_id, client, model_asked, model_served, provider,
                 worker, input_tokens, output_tokens, cache_read_tokens, cache_write_tokens,
                 cost_usd, status, outcome, duration_ms, ttfb_ms, streamed, translated)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18)",
        )?;
        for r in batch {
            let n = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
            st.execute(params![
                r.ts_ms,
                r.request_id,
                r.client,
                r.model_asked,
                r.model_served,
                r.provider,
                r.worker,
                n(r.tokens.input),
                n(r.tokens.output),
                n(r.tokens.cache_read),
                n(r.tokens.cache_write),
                r.cost_usd,
                r.status,
                r.outcome.as_str(),
                n(r.duration_ms),
                r.ttfb_ms.map(n),
                r.streamed,
                r.translated,
            ])?;
        }
    }
    tx.commit()
}

/// Deletes at most `PRUNE_BATCH` rows older than `before_ms`; returns how many went.
pub fn prune_batch(conn: &Connection, before_ms: i64) -> rusqlite::Result<usize> {
    conn.execute(
        "DELETE FROM usage WHERE id IN (SELECT id FROM usage WHERE ts_ms < ?1 LIMIT ?2)",
        params![before_ms, PRUNE_BATCH as i64],
    )
}

/// A breakdown key of `supervisor usage --by`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum By {
    Client,
    Model,
    Provider,
    Day,
}

impl By {
    pub fn name(self) -> &'static str {
        match self {
            Self::Client => "client",
            Self::Model => "model",
            Self::Provider => "provider",
            Self::Day => "day",
        }
    }

    /// What the rows are grouped (and ordered) by.
    fn group(self) -> &'static str {
        match self {
            Self::Client => "client",
            // The model that was billed: the provider's, after aliases.
            Self::Model => "model_served",
            Self::Provider => "provider",
            // The UTC day as an integer (days since 1970-01-01), printed as a date by `summary`.
            Self::Day => "ts_ms / 86400000",
        }
    }
}

/// One line of a summary.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Row {
    /// The `--by` values, in the order asked.
    #[serde(skip)]
    pub keys: Vec<String>,
    pub requests: i64,
    pub input_tokens: i64,
    pub output_tokens: i64,
    pub cache_read_tokens: i64,
    pub cache_write_tokens: i64,
    /// USD of the requests with a price; `None` when none had one.
    pub cost_usd: Option<f64>,
    /// Requests whose model had no price (not in `cost_usd`).
    pub unpriced_requests: i64,
}

/// Totals for `since_ms <= ts < until_ms`, grouped by `by` (one total row, zero for an empty
/// range, when `by` is empty), ordered by the keys.
///
/// One scan summed into a hash map by key, not SQL's `GROUP BY`: SQLite sorts every row of the
/// range for that (a temporary B-tree, 1.6 s for a 1M-row ledger by client and day), while the
/// groups are few (clients x models x days).
pub fn summary(
    conn: &Connection,
    since_ms: i64,
    until_ms: i64,
    by: &[By],
) -> rusqlite::Result<Vec<Row>> {
    use rusqlite::types::ValueRef;
    use std::fmt::Write;
    if by.is_empty() {
        // No groups: SQLite's own sums, with no row leaving it.
        return conn.query_row(
            "SELECT COUNT(*), COALESCE(SUM(input_tokens), 0), COALESCE(SUM(output_tokens), 0),
                    COALESCE(SUM(cache_read_tokens), 0), COALESCE(SUM(cache_write_tokens), 0),
                    SUM(cost_usd), COALESCE(SUM(cost_usd IS NULL), 0)
             FROM usage WHERE ts_ms >= ?1 AND ts_ms < ?2",
            params![since_ms, until_ms],
            |r| {
                Ok(vec![Row {
                    keys: Vec::new(),
                    requests: r.get(0)?,
                    input_tokens: r.get(1)?,
                    output_tokens: r.get(2)?,
                    cache_read_tokens: r.get(3)?,
                    cache_write_tokens: r.get(4)?,
                    cost_usd: r.get(5)?,
                    unpriced_requests: r.get(6)?,
                }])
            },
        );
    }
    let keys = by
        .iter()
        .map(|b| format!("{}, ", b.group()))
        .collect::<String>();
    let sql = format!(
        "SELECT {keys} input_tokens, output_tokens, cache_read_tokens, cache_write_tokens, cost_usd
         FROM usage WHERE ts_ms >= ?1 AND ts_ms < ?2"
    );
    let mut st = conn.prepare(&sql)?;
    let n = by.len();
    // A group's key: each part as its length (u32) and its bytes, so any text is one part.
    let mut groups: HashMap<Vec<u8>, Row> = HashMap::new();
    let mut key = Vec::with_capacity(64);
    let mut day = String::new();
    let mut rows = st.query(params![since_ms, until_ms])?;
    while let Some(r) = rows.next()? {
        key.clear();
        for i in 0..n {
            let part: &[u8] = match r.get_ref(i)? {
                ValueRef::Text(t) => t,
                ValueRef::Integer(d) => {
                    let (y, m, dd) = gateway::calendar::civil_from_days(d);
                    day.clear();
                    let _ = write!(day, "{y:04}-{m:02}-{dd:02}");
                    day.as_bytes()
                }
                _ => b"",
            };
            key.extend_from_slice(&(part.len() as u32).to_le_bytes());
            key.extend_from_slice(part);
        }
        let g = match groups.get_mut(key.as_slice()) {
            Some(g) => g,
            None => groups.entry(key.clone()).or_insert_with(Row::zero),
        };
        g.requests += 1;
        g.input_tokens += r.get::<_, i64>(n)?;
        g.output_tokens += r.get::<_, i64>(n + 1)?;
        g.cache_read_tokens += r.get::<_, i64>(n + 2)?;
        g.cache_write_tokens += r.get::<_, i64>(n + 3)?;
        match r.get::<_, Option<f64>>(n + 4)? {
            Some(c) => g.cost_usd = Some(g.cost_usd.unwrap_or(0.0) + c),
            None => g.unpriced_requests += 1,
        }
    }
    let mut out: Vec<Row> = groups
        .into_iter()
        .map(|(k, mut row)| {
            row.keys = split_key(&k);
            row
        })
        .collect();
    out.sort_by(|a, b| a.keys.cmp(&b.keys));
    Ok(out)
}

/// The parts of a `summary` group key.
fn split_key(mut k: &[u8]) -> Vec<String> {
    let mut parts = Vec::new();
    while k.len() >= 4 {
        let len = u32::from_le_bytes([k[0], k[1], k[2], k[3]]) as usize;
        let end = (4 + len).min(k.len());
        parts.push(String::from_utf8_lossy(&k[4..end]).into_owned());
        k = &k[end..];
    }
    parts
}

impl Row {
    fn zero() -> Self {
        Row {
            keys: Vec::new(),
            requests: 0,
            input_tokens: 0,
            output_tokens: 0,
            cache_read_tokens: 0,
            cache_write_tokens: 0,
            cost_usd: None,
            unpriced_requests: 0,
        }
    }
}

/// A client's tokens (input + output + cache) and cost since `since_ms`: what `daily_tokens`
/// and `monthly_usd` can start from at start-up (served by the `usage_client_ts` index).
pub fn client_totals(
    conn: &Connection,
    client: &str,
    since_ms: i64,
) -> rusqlite::Result<(i64, f64)> {
    conn.query_row(
        "SELECT COALESCE(SUM(input_tokens + output_tokens + cache_read_tokens + cache_write_tokens), 0),
                COALESCE(SUM(cost_usd), 0.0)
         FROM usage WHERE client = ?1 AND ts_ms >= ?2",
        params![client, since_ms],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use gateway::usage::{Outcome, Tokens};

    pub(crate) fn rec(
        ts_ms: i64,
        client: &str,
        model: &str,
        input: u64,
        cost: Option<f64>,
    ) -> Record {
        Record {
            ts_ms,
            request_id: format!("r{ts_ms}"),
            client: client.into(),
            model_asked: model.into(),
            model_served: model.into(),
            provider: "p".into(),
            worker: Some(0),
            tokens: Tokens {
                input,
                output: 1,
                cache_read: 0,
                cache_write: 0,
            },
            cost_usd: cost,
            status: 200,
            outcome: Outcome::Ok,
            duration_ms: 5,
            ttfb_ms: Some(1),
            streamed: false,
            translated: false,
            translation: None,
            dropped_before: 0,
        }
    }

    #[test]
    fn rows_are_summed_by_key_and_unpriced_requests_have_no_cost() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/usage.db");
        let mut conn = open_rw(&path).unwrap();
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&path), 0o600);
        assert_eq!(mode(path.parent().unwrap()), 0o700);
        insert(
            &mut conn,
            &[
                rec(1_000, "a", "m", 10, Some(0.25)),
                rec(2_000, "b", "m", 20, Some(0.5)),
                rec(3_000, "a", "free", 5, None),
                rec(9_000, "a", "m", 100, Some(1.0)),
            ],
        )
        .unwrap();
        let ro = open_ro(&path).unwrap();
        let rows = summary(&ro, 0, 5_000, &[By::Model]).unwrap();
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].keys, vec!["free"]);
        assert_eq!(
            (
                rows[0].requests,
                rows[0].cost_usd,
                rows[0].unpriced_requests
            ),
            (1, None, 1)
        );
        assert_eq!(rows[1].keys, vec!["m"]);
        assert_eq!(
            (rows[1].requests, rows[1].input_tokens, rows[1].cost_usd),
            (2, 30, Some(0.75))
        );
        let total = summary(&ro, 0, i64::MAX, &[]).unwrap();
        assert_eq!(total[0].requests, 4);
        let by2 = summary(&ro, 0, i64::MAX, &[By::Client, By::Day]).unwrap();
        assert_eq!(by2[0].keys, vec!["a", "1970-01-01"]);
        assert_eq!(
            client_totals(&ro, "a", 2_000).unwrap(),
            (5 + 1 + 100 + 1, 1.0)
        );
        assert!(ro.execute("DELETE FROM usage", []).is_err(), "read-only");
    }

    #[test]
    fn retention_deletes_in_bounded_batches() {
        let dir = tempfile::tempdir().unwrap();
        let mut conn = open_rw(&dir.path().join("u.db")).unwrap();
        let old: Vec<Record> = (0..PRUNE_BATCH as i64 + 10)
            .map(|i| rec(i, "a", "m", 1, None))
            .collect();
        insert(&mut conn, &old).unwrap();
        insert(&mut conn, &[rec(1_000_000, "a", "m", 1, None)]).unwrap();
        assert_eq!(prune_batch(&conn, 500_000).unwrap(), PRUNE_BATCH);
        assert_eq!(prune_batch(&conn, 500_000).unwrap(), 10);
        assert_eq!(prune_batch(&conn, 500_000).unwrap(), 0);
        assert_eq!(summary(&conn, 0, i64::MAX, &[]).unwrap()[0].requests, 1);
    }

    #[test]
    fn auto_and_off_paths() {
        let off = UsageConfig {
            ledger: "off".into(),
            ..Default::default()
        };
        assert_eq!(path(&off).unwrap(), None);
        let p = UsageConfig {
            ledger: "/x/y.db".into(),
            ..Default::default()
        };
        assert_eq!(path(&p).unwrap(), Some(PathBuf::from("/x/y.db")));
    }
}
