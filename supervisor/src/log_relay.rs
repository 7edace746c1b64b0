//! Relaying a worker's stdout and stderr into the supervisor's log: a worker's log records are
//! re-emitted as the supervisor's own records, any other line is relayed as text.
//!
//! Design. A built-in worker is started with `GATEWAY_WORKER_LOG=json` and writes one JSON
//! record per line (tracing-subscriber's JSON format, span list included). A record cannot go
//! back through `tracing`'s macros: they need a static level, target and callsite, and would
//! stamp the supervisor's own time. So the relay writes the finished line itself, in the
//! format the supervisor's subscriber was set up with (`logging::output`): the same JSON shape
//! (`timestamp`, `level`, `target`, `message`, fields flattened) or the same text layout
//! (`TIME LEVEL target: message key=value`), with the worker's own timestamp, level, target,
//! event fields and span fields (the `request` span's `request_id`), plus `worker=ID`. Each
//! line goes out in one write through `logging::write`, as the subscriber's own lines do, so
//! lines never interleave. Filtering is the worker's: it inherits `RUST_LOG` and applies the
//! same default (`info`), so a DEBUG record is there exactly when the supervisor would log
//! DEBUG, and keeps its level.
//!
//! A line that is not such a record (a foreign `pool.worker_command`, a panic message, stdout)
//! is relayed as text through `tracing`, as before, tagged `worker`, `pid` and `stream`.
//!
//! Bounds: one task per stream, off the request path; a line is read with a cap (`MAX_LINE`),
//! and the task writes before it reads again, so a worker that floods its pipe is slowed down
//! by the pipe, never buffered in the supervisor.

use crate::logging::{self, LogFormat};
use crate::pool::spawn::{StderrTail, STDERR_TAIL};
use serde_json::{Map, Value};
use std::fmt::Write as _;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, BufReader};
use tracing::Level;

/// Longest line relayed in one piece; a worker printing megabytes with no newline must not make
/// the supervisor buffer them.
const MAX_LINE: u64 = 16 * 1024;

/// Copies one output stream of a worker into the supervisor's log, line by line; the last
/// lines (as text) go to `tail` for the DEAD report.
pub async fn relay(
    stream: impl AsyncRead + Unpin,
    worker: usize,
    pid: u32,
    name: &'static str,
    tail: Option<StderrTail>,
) {
    let mut reader = BufReader::new(stream);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        match (&mut reader)
            .take(MAX_LINE)
            .read_until(b'\n', &mut buf)
            .await
        {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
        let line = String::from_utf8_lossy(&buf);
        let line = line.trim_end();
        let kept = match Record::parse(line) {
            Some(rec) => {
                if crate::events::enabled() {
                    rec.breaker_event(worker);
                }
                let (format, ansi) = logging::output();
                let out = match format {
                    LogFormat::Json => rec.json(worker),
                    LogFormat::Text => rec.text(worker, ansi),
                };
                logging::write(out.as_bytes());
                tail.is_some()
                    .then(|| rec.text(worker, false).trim_end().to_string())
            }
            None => {
                relay_text(line, worker, pid, name);
                tail.is_some().then(|| line.to_string())
            }
        };
        if let (Some(tail), Some(kept)) = (&tail, kept) {
            let mut t = tail.lock().unwrap_or_else(|e| e.into_inner());
            if t.len() == STDERR_TAIL {
                t.pop_front();
            }
            t.push_back(kept);
        }
    }
}

/// A line that is not a record: logged as text, at the level it names (so filtering the
/// supervisor's log on WARN still shows a foreign worker's errors).
fn relay_text(line: &str, worker: usize, pid: u32, name: &'static str) {
    match line_level(line) {
        Level::ERROR => tracing::error!(target: "worker", worker, pid, stream = name, "{line}"),
        Level::WARN => tracing::warn!(target: "worker", worker, pid, stream = name, "{line}"),
        _ => tracing::info!(target: "worker", worker, pid, stream = name, "{line}"),
    }
}

/// The level of a foreign log line, text (`... ERROR target: ...`) or JSON (`"level":"ERROR"`),
/// from its first 80 bytes; INFO when it names none.
fn line_level(line: &str) -> Level {
    const LEVELS: [(&str, &str, Level); 5] = [
        (" ERROR ", r#""level":"ERROR""#, Level::ERROR),
        (" WARN ", r#""level":"WARN""#, Level::WARN),
        (" INFO ", r#""level":"INFO""#, Level::INFO),
        (" DEBUG ", r#""level":"DEBUG""#, Level::DEBUG),
        (" TRACE ", r#""level":"TRACE""#, Level::TRACE),
    ];
    let head = line.get(..80.min(line.len())).unwrap_or(line);
    // The first level word wins: the message itself may say "ERROR" later on.
    LEVELS
        .iter()
        .filter_map(|(text, json, level)| {
            let at = head.find(text).into_iter().chain(head.find(json)).min()?;
            Some((at, *level))
        })
        .min_by_key(|(at, _)| *at)
        .map_or(Level::INFO, |(_, level)| level)
}

/// One worker log record, as tracing-subscriber's JSON format writes it.
#[derive(Debug)]
struct Record {
    timestamp: String,
    level: Level,
    target: String,
    message: Option<String>,
    /// Span fields (outermost first), then the event's own: an event field wins a name clash.
    fields: Map<String, Value>,
}

/// Keys of a record that are not fields, and `worker`, which the relay sets.
const RESERVED: [&str; 7] = [
    "timestamp",
    "level",
    "target",
    "message",
    "spans",
    "span",
    "worker",
];

impl Record {
    /// `None` unless `line` is a JSON object with a string `timestamp`, a known `level` and a
    /// string `target`: anything else is someone else's text.
    fn parse(line: &str) -> Option<Self> {
        if !line.starts_with('{') {
            return None;
        }
        let mut obj: Map<String, Value> = serde_json::from_str(line).ok()?;
        let text = |v: Option<Value>| match v {
            Some(Value::String(s)) => Some(s),
            _ => None,
        };
        let timestamp = text(obj.remove("timestamp"))?;
        let level = text(obj.remove("level"))?.parse().ok()?;
        let target = text(obj.remove("target"))?;
        let message = obj.remove("message").map(|m| match m {
            Value::String(s) => s,
            other => other.to_string(),
        });
        let mut fields = Map::new();
        if let Some(Value::Array(spans)) = obj.remove("spans") {
            for span in spans {
                if let Value::Object(span) = span {
                    fields.extend(span.into_iter().filter(|(k, _)| k != "name"));
                }
            }
        }
        fields.extend(obj);
        fields.retain(|k, _| !RESERVED.contains(&k.as_str()));
        Some(Self {
            timestamp,
            level,
            target,
            message,
            fields,
        })
    }

    /// A worker's breaker-transition record (the provider hook's `circuit opened` /
    /// `circuit state changed`, with `provider`, `from` and, for the latter, `to`) becomes a
    /// `provider` event.
    fn breaker_event(&self, worker: usize) {
        let field = |k: &str| self.fields.get(k).and_then(Value::as_str);
        let (Some(name), Some(from)) = (field("provider"), field("from")) else {
            return;
        };
        let to = match self.message.as_deref() {
            Some("circuit opened") => "open",
            Some("circuit state changed") => match field("to") {
                Some(to) => to,
                None => return,
            },
            _ => return,
        };
        crate::events::emit(serde_json::json!({
            "event": "provider", "name": name, "from": from, "to": to,
            "reason": crate::events::breaker_reason(from, to), "worker": worker,
        }));
    }

    /// The record as one JSON line, in the shape of the supervisor's own JSON records:
    /// `timestamp`, `level`, `target`, then the message, the fields and `worker`. Written pair
    /// by pair to keep that order (serde_json's maps sort their keys).
    fn json(&self, worker: usize) -> String {
        let mut line = String::with_capacity(256);
        let mut pair = |k: &str, v: Value| {
            line.push(if line.is_empty() { '{' } else { ',' });
            let _ = write!(line, "{}:{v}", Value::from(k));
        };
        pair("timestamp", self.timestamp.as_str().into());
        pair("level", self.level.as_str().into());
        pair("target", self.target.as_str().into());
        if let Some(m) = &self.message {
            pair("message", m.as_str().into());
        }
        for (k, v) in &self.fields {
            pair(k, v.clone());
        }
        pair("worker", worker.into());
        line.push_str("}\n");
        line
    }

    /// The record as one text line, laid out as the supervisor's text records are.
    fn text(&self, worker: usize, ansi: bool) -> String {
        let level = self.level.as_str();
        let mut line = String::with_capacity(128);
        let _ = write!(line, "{} ", printable(&self.timestamp));
        if ansi {
            let colour = match self.level {
                Level::ERROR => "31",
                Level::WARN => "33",
                Level::INFO => "32",
                Level::DEBUG => "34",
                Level::TRACE => "35",
            };
            let _ = write!(line, "\x1b[{colour}m{level:>5}\x1b[0m ");
        } else {
            let _ = write!(line, "{level:>5} ");
        }
        let _ = write!(line, "{}:", printable(&self.target));
        if let Some(m) = &self.message {
            let _ = write!(line, " {}", printable(m));
        }
        for (k, v) in &self.fields {
            let _ = match v {
                Value::String(s) => write!(line, " {}={}", printable(k), printable(s)),
                other => write!(line, " {}={other}", printable(k)),
            };
        }
        let _ = writeln!(line, " worker={worker}");
        line
    }
}

/// `s` as it can be written into a text line: quoted and escaped when it holds a control
/// character, so a worker's value can never start a forged line of its own.
fn printable(s: &str) -> std::borrow::Cow<'_, str> {
    if s.chars().any(char::is_control) {
        format!("{s:?}").into()
    } else {
        s.into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LINE: &str = r#"{"timestamp":"2026-12-02T05:00:00.123456Z","level":"WARN","message":"attempt failed","provider":"up","status":502,"target":"gateway_worker::proxy","spans":[{"request_id":"r-1","name":"request"}]}"#;

    #[test]
    fn a_record_keeps_its_time_level_target_and_fields() {
        let r = Record::parse(LINE).expect("a record");
        assert_eq!(r.level, Level::WARN);
        let v: Value = serde_json::from_str(&r.json(3)).unwrap();
        assert_eq!(v["timestamp"], "2026-12-02T05:00:00.123456Z");
        assert_eq!(v["level"], "WARN");
        assert_eq!(v["target"], "gateway_worker::proxy");
        assert_eq!(v["message"], "attempt failed");
        assert_eq!(v["provider"], "up");
        assert_eq!(v["status"], 502);
        assert_eq!(v["request_id"], "r-1", "span fields survive");
        assert_eq!(v["worker"], 3);
        assert!(v.get("spans").is_none());
        assert_eq!(
            r.text(3, false),
            "2026-12-02T05:00:00.123456Z  WARN gateway_worker::proxy: attempt failed \
             provider=up request_id=r-1 status=502 worker=3\n"
        );
    }

    #[test]
    fn other_lines_are_not_records() {
        for line in [
            "plain text",
            "2026-11-22T04:23:12.709717Z ERROR gateway_worker: boom",
            r#"{"event":"ready"}"#,
            r#"{"timestamp":"t","level":"LOUD","target":"x"}"#,
            r#"{"timestamp":1,"level":"INFO","target":"x"}"#,
            "{not json",
        ] {
            assert!(Record::parse(line).is_none(), "{line}");
        }
    }

    #[test]
    fn a_worker_cannot_forge_a_line_or_the_worker_id() {
        let line = r#"{"timestamp":"t","level":"INFO","target":"x","message":"a\n2026 ERROR forged","worker":9}"#;
        let r = Record::parse(line).unwrap();
        let text = r.text(1, false);
        assert_eq!(text.lines().count(), 1, "{text}");
        assert!(text.ends_with(" worker=1\n"), "{text}");
        let v: Value = serde_json::from_str(&r.json(1)).unwrap();
        assert_eq!(v["worker"], 1);
    }

    #[test]
    fn text_lines_keep_their_level() {
        assert_eq!(
            line_level("2026-11-22T04:23:12.709717Z ERROR gateway_worker: boom"),
            Level::ERROR
        );
        assert_eq!(
            line_level("2026-11-22T04:23:12.709717Z  INFO gateway_worker::server: ERROR in body"),
            Level::INFO
        );
        assert_eq!(
            line_level(r#"{"timestamp":"x","level":"WARN","fields":{}}"#),
            Level::WARN
        );
        assert_eq!(line_level("plain text"), Level::INFO);
        // A multi-byte character at the cut does not panic.
        assert_eq!(line_level(&"é".repeat(100)), Level::INFO);
    }
}
