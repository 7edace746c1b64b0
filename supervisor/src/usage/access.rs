//! The access log: one line per request (target `access`), written by one task off the request
//! path, with the front's fields (method, path, status, client, worker, provider, model,
//! attempts, duration, time to first byte) and the worker's usage record's tokens and cost.
//!
//! The two halves arrive separately: the front's when its response body ends (`Line`, from
//! `front::body::RequestRecord`), the record on the usage socket (`Tokens`, from the receiver).
//! They are joined by request id here. The worker sends its record before the answer's last
//! bytes go out, so the record is usually there first and the line is written as soon as the
//! front's half arrives. A front half that expects a record waits for it at most `WAIT`, then is
//! written without tokens; a record whose front half never comes (the front already wrote its
//! line alone) is forgotten after `FORGET`. Both tables are bounded (`MAX_PENDING`), and the
//! queue too: a front half that finds it full is written at once, without tokens.
//!
//! Records come with `usage.ledger = "off"` too (they settle the client limits), so the lines
//! carry tokens either way. `AccessLog::default()` (disabled, for tests) writes every line at
//! once, without token fields.

use std::collections::HashMap;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

/// Halves waiting in the queue to the task.
const QUEUE: usize = 8_192;
/// Halves waiting for their partner, per table.
const MAX_PENDING: usize = 16_384;
/// How long a front half waits for its record.
const WAIT: Duration = Duration::from_secs(1);
/// How long a record waits for its front half.
const FORGET: Duration = Duration::from_secs(10);
/// How often waiting halves are looked at.
const SWEEP: Duration = Duration::from_millis(250);

/// The front's half of an access line.
#[derive(Debug, Clone)]
pub struct Line {
    pub method: http::Method,
    pub path: String,
    pub status: u16,
    pub request_id: String,
    pub client: Option<String>,
    /// -1 when no worker served the request.
    pub worker: i64,
    pub provider: Option<String>,
    pub model: Option<String>,
    pub attempts: Option<u32>,
    pub translated: Option<String>,
    pub duration_us: u64,
    pub ttfb_us: Option<u64>,
    /// A worker answered a model's request: its usage record may follow.
    pub expects_record: bool,
}

/// The worker's half: a usage record's tokens and cost, and what the front's half may lack (a
/// stream that waited with pings sent its head before a provider was chosen, so the head
/// carries neither the provider nor, for a mixed alias, the translation).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Tokens {
    pub tokens: gateway::usage::Tokens,
    pub cost_usd: Option<f64>,
    pub provider: String,
    pub translation: Option<String>,
}

enum Half {
    Line(Line),
    Record(String, Tokens),
}

/// The handle the front and the usage receiver send their halves to; cheap to clone. The
/// default is disabled: lines are written at once.
#[derive(Clone, Default)]
pub struct AccessLog {
    tx: Option<mpsc::Sender<Half>>,
}

impl AccessLog {
    /// The front's half: joined with its record, or written now when none is expected (or the
    /// queue is full or gone).
    pub fn line(&self, line: Line) {
        let Some(tx) = self.tx.as_ref().filter(|_| line.expects_record) else {
            return write(&line, None);
        };
        if let Err(e) = tx.try_send(Half::Line(line)) {
            if let Half::Line(l) = e.into_inner() {
                write(&l, None);
            }
        }
    }

    /// A record's half; dropped when the queue is full (its line then has no tokens).
    pub fn record(&self, request_id: &str, t: Tokens) {
        if let Some(tx) = &self.tx {
            let _ = tx.try_send(Half::Record(request_id.to_string(), t));
        }
    }
}

/// The running joiner; `stop` writes what waits and ends it.
pub struct Joiner {
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

/// Starts the joining task (on the current runtime).
pub fn start() -> (AccessLog, Joiner) {
    let (tx, rx) = mpsc::channel(QUEUE);
    let (stop, stopped) = oneshot::channel();
    let task = tokio::spawn(join(rx, stopped));
    (AccessLog { tx: Some(tx) }, Joiner { stop, task })
}

impl Joiner {
    pub async fn stop(self) {
        let _ = self.stop.send(());
        let _ = self.task.await;
    }
}

/// Halves waiting for their partner.
#[derive(Default)]
struct Pending {
    lines: HashMap<String, (Line, Instant)>,
    records: HashMap<String, (Tokens, Instant)>,
}

impl Pending {
    fn take(&mut self, half: Half, now: Instant) {
        match half {
            Half::Line(l) => {
                if let Some((t, _)) = self.records.remove(&l.request_id) {
                    return write(&l, Some(&t));
                }
                if self.lines.len() >= MAX_PENDING {
                    return write(&l, None);
                }
                let id = l.request_id.clone();
                // A client reusing its request id: the older line goes out alone.
                if let Some((old, _)) = self.lines.insert(id, (l, now)) {
                    write(&old, None);
                }
            }
            Half::Record(id, t) => {
                if let Some((l, _)) = self.lines.remove(&id) {
                    return write(&l, Some(&t));
                }
                if self.records.len() < MAX_PENDING {
                    self.records.insert(id, (t, now));
                }
            }
        }
    }

    /// Writes the lines that waited `WAIT`, forgets the records that waited `FORGET`.
    fn sweep(&mut self, now: Instant) {
        self.lines.retain(|_, (l, at)| {
            let keep = now.duration_since(*at) < WAIT;
            if !keep {
                write(l, None);
            }
            keep
        });
        self.records
            .retain(|_, (_, at)| now.duration_since(*at) < FORGET);
    }

    fn flush(&mut self) {
        for (_, (l, _)) in self.lines.drain() {
            write(&l, None);
        }
    }
}

async fn join(mut rx: mpsc::Receiver<Half>, mut stopped: oneshot::Receiver<()>) {
    let mut p = Pending::default();
    let mut sweep = tokio::time::interval(SWEEP);
    sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            h = rx.recv() => match h {
                Some(h) => p.take(h, Instant::now()),
                None => break,
            },
            _ = sweep.tick() => p.sweep(Instant::now()),
            _ = &mut stopped => {
                // What is queued still joins.
                while let Ok(h) = rx.try_recv() {
                    p.take(h, Instant::now());
                }
                break;
            }
        }
    }
    p.flush();
}

/// The one access line.
fn write(l: &Line, t: Option<&Tokens>) {
    tracing::info!(
        target: "access",
        method = %l.method,
        path = l.path.as_str(),
        status = l.status,
        request_id = l.request_id.as_str(),
        client = l.client.as_deref(),
        worker = l.worker,
        provider = l
            .provider
            .as_deref()
            .or(t.map(|t| t.provider.as_str()).filter(|p| !p.is_empty())),
        model = l.model.as_deref(),
        attempts = l.attempts,
        translated = l
            .translated
            .as_deref()
            .or(t.and_then(|t| t.translation.as_deref())),
        input_tokens = t.map(|t| t.tokens.input),
        output_tokens = t.map(|t| t.tokens.output),
        cache_read_tokens = t.map(|t| t.tokens.cache_read),
        cache_write_tokens = t.map(|t| t.tokens.cache_write),
        cost_usd = t.and_then(|t| t.cost_usd),
        duration_us = l.duration_us,
        ttfb_us = l.ttfb_us,
        "request"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(id: &str) -> Line {
        Line {
            method: http::Method::POST,
            path: "/v1/chat/completions".into(),
            status: 200,
            request_id: id.into(),
            client: None,
            worker: 0,
            provider: Some("p".into()),
            model: Some("m".into()),
            attempts: Some(1),
            translated: None,
            duration_us: 10,
            ttfb_us: Some(5),
            expects_record: true,
        }
    }

    /// Whichever half comes first waits for the other; a line waits at most `WAIT`, a record
    /// at most `FORGET`.
    #[test]
    fn halves_join_in_either_order_and_waiting_is_bounded() {
        let now = Instant::now();
        let mut p = Pending::default();
        p.take(Half::Record("a".into(), Tokens::default()), now);
        p.take(Half::Line(line("a")), now);
        assert!(p.lines.is_empty() && p.records.is_empty());
        p.take(Half::Line(line("b")), now);
        p.take(Half::Record("b".into(), Tokens::default()), now);
        assert!(p.lines.is_empty() && p.records.is_empty());
        p.take(Half::Line(line("c")), now);
        p.take(Half::Record("d".into(), Tokens::default()), now);
        p.sweep(now + WAIT);
        assert!(p.lines.is_empty(), "a line waits at most WAIT");
        assert_eq!(p.records.len(), 1);
        p.sweep(now + FORGET);
        assert!(p.records.is_empty());
    }
}
