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
//! The task also keeps the last [`RECENT`] finished `/v1/*` requests, joined, for the dashboard
//! and `supervisor top` (`dashboard::Recent`): it owns the ring and publishes a copy at most
//! every `SWEEP`, so neither the request path nor the viewers take a lock. For that the
//! front's halves that expect no record come through the task too (written on arrival).
//!
//! Records come with `usage.ledger = "off"` too (they settle the client limits), so the lines
//! carry tokens either way. `AccessLog::default()` (disabled, for tests) writes every line at
//! once, without token fields.

use crate::dashboard::snapshot::RequestRow;
use crate::dashboard::Recent;
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
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
/// How often waiting halves are looked at (and the recent requests published).
const SWEEP: Duration = Duration::from_millis(250);
/// Finished requests the dashboard lists.
pub const RECENT: usize = 50;

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
    recent: Option<Arc<Recent>>,
}

impl AccessLog {
    /// The front's half: joined with its record, or written now when the queue is full or gone
    /// (it then misses the recent requests too).
    pub fn line(&self, line: Line) {
        let Some(tx) = self.tx.as_ref() else {
            return write(&line, None);
        };
        if let Err(e) = tx.try_send(Half::Line(line)) {
            if let Half::Line(l) = e.into_inner() {
                write(&l, None);
            }
        }
    }

    /// The last finished requests, newest first, as the joining task last published them;
    /// `None` when disabled.
    pub fn recent(&self) -> Option<Arc<Recent>> {
        self.recent.clone()
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
    let recent = Arc::new(Recent::default());
    let pending = Pending::publishing(recent.clone());
    let task = tokio::spawn(join(rx, stopped, pending));
    let log = AccessLog {
        tx: Some(tx),
        recent: Some(recent),
    };
    (log, Joiner { stop, task })
}

impl Joiner {
    pub async fn stop(self) {
        let _ = self.stop.send(());
        let _ = self.task.await;
    }
}

/// A front half waiting for its record: since when, and when it arrived as Unix ms.
type Waiting = (Line, Instant, u64);

/// Halves waiting for their partner, and the last finished requests.
#[derive(Default)]
struct Pending {
    lines: HashMap<String, Waiting>,
    records: HashMap<String, (Tokens, Instant)>,
    /// Newest last; at most `RECENT`. Owned by the task, published by `publish`.
    done: VecDeque<(u64, Line, Option<Tokens>)>,
    changed: bool,
    recent: Option<Arc<Recent>>,
}

impl Pending {
    fn publishing(recent: Arc<Recent>) -> Self {
        Self {
            recent: Some(recent),
            ..Default::default()
        }
    }

    fn take(&mut self, half: Half, now: Instant) {
        match half {
            Half::Line(l) => {
                let at_ms = unix_ms();
                if let Some((t, _)) = self.records.remove(&l.request_id) {
                    return self.finish(at_ms, l, Some(t));
                }
                if !l.expects_record || self.lines.len() >= MAX_PENDING {
                    return self.finish(at_ms, l, None);
                }
                let id = l.request_id.clone();
                // A client reusing its request id: the older line goes out alone.
                if let Some((old, _, at)) = self.lines.insert(id, (l, now, at_ms)) {
                    self.finish(at, old, None);
                }
            }
            Half::Record(id, t) => {
                if let Some((l, _, at_ms)) = self.lines.remove(&id) {
                    return self.finish(at_ms, l, Some(t));
                }
                if self.records.len() < MAX_PENDING {
                    self.records.insert(id, (t, now));
                }
            }
        }
    }

    /// Writes the line, and keeps an API request among the recent ones.
    fn finish(&mut self, at_ms: u64, l: Line, t: Option<Tokens>) {
        write(&l, t.as_ref());
        if self.recent.is_none() || !l.path.starts_with("/v1/") {
            return;
        }
        if self.done.len() >= RECENT {
            self.done.pop_front();
        }
        self.done.push_back((at_ms, l, t));
        self.changed = true;
    }

    /// Writes the lines that waited `WAIT`, forgets the records that waited `FORGET`.
    fn sweep(&mut self, now: Instant) {
        let expired: Vec<String> = self
            .lines
            .iter()
            .filter(|(_, (_, at, _))| now.duration_since(*at) >= WAIT)
            .map(|(id, _)| id.clone())
            .collect();
        for id in expired {
            if let Some((l, _, at_ms)) = self.lines.remove(&id) {
                self.finish(at_ms, l, None);
            }
        }
        self.records
            .retain(|_, (_, at)| now.duration_since(*at) < FORGET);
    }

    fn flush(&mut self) {
        let waiting: Vec<Waiting> = self.lines.drain().map(|(_, w)| w).collect();
        for (l, _, at_ms) in waiting {
            self.finish(at_ms, l, None);
        }
        self.publish();
    }

    /// Gives the viewers a copy of the recent requests, newest first, if they changed.
    fn publish(&mut self) {
        let Some(recent) = self.recent.as_ref().filter(|_| self.changed) else {
            return;
        };
        self.changed = false;
        let rows = self
            .done
            .iter()
            .rev()
            .map(|(at, l, t)| row(*at, l, t.as_ref()))
            .collect();
        recent.store(Arc::new(rows));
    }
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// A finished request as the dashboard lists it: the two halves joined as `write` joins them.
fn row(at_ms: u64, l: &Line, t: Option<&Tokens>) -> RequestRow {
    RequestRow {
        at_ms,
        method: l.method.to_string(),
        path: l.path.clone(),
        status: l.status,
        client: l.client.clone(),
        model: l.model.clone(),
        provider: l
            .provider
            .clone()
            .or_else(|| t.map(|t| t.provider.clone()).filter(|p| !p.is_empty())),
        worker: (l.worker >= 0).then_some(l.worker as usize),
        latency_ms: l.duration_us as f64 / 1000.0,
        input_tokens: t.map(|t| t.tokens.input),
        output_tokens: t.map(|t| t.tokens.output),
        cost_usd: t.and_then(|t| t.cost_usd),
        translated: l
            .translated
            .clone()
            .or_else(|| t.and_then(|t| t.translation.clone())),
    }
}

async fn join(mut rx: mpsc::Receiver<Half>, mut stopped: oneshot::Receiver<()>, mut p: Pending) {
    let mut sweep = tokio::time::interval(SWEEP);
    sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            h = rx.recv() => match h {
                Some(h) => p.take(h, Instant::now()),
                None => break,
            },
            _ = sweep.tick() => {
                p.sweep(Instant::now());
                p.publish();
            }
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

    /// The last `RECENT` API requests, joined, newest first; published only when changed.
    #[test]
    fn recent_requests_are_a_bounded_ring_published_newest_first() {
        let recent = Arc::new(Recent::default());
        let mut p = Pending::publishing(recent.clone());
        let now = Instant::now();
        let tokens = Tokens {
            tokens: gateway::usage::Tokens {
                input: 7,
                output: 3,
                ..Default::default()
            },
            cost_usd: Some(0.25),
            provider: "p".into(),
            translation: Some("chat->messages".into()),
        };
        p.take(Half::Record("r0".into(), tokens), now);
        p.take(Half::Line(line("r0")), now);
        let mut probe = line("h");
        probe.path = "/healthz".into();
        probe.expects_record = false;
        p.take(Half::Line(probe), now);
        p.publish();
        let rows = recent.load_full();
        assert_eq!(rows.len(), 1, "only API requests: {rows:?}");
        assert_eq!(rows[0].input_tokens, Some(7));
        assert_eq!(rows[0].output_tokens, Some(3));
        assert_eq!(rows[0].cost_usd, Some(0.25));
        assert_eq!(rows[0].translated.as_deref(), Some("chat->messages"));
        assert_eq!(rows[0].model.as_deref(), Some("m"));
        for i in 0..RECENT + 5 {
            let mut l = line(&format!("n{i}"));
            l.expects_record = false;
            l.status = 400 + i as u16;
            p.take(Half::Line(l), now);
        }
        // A line still waiting for its record is not listed yet.
        p.take(Half::Line(line("late")), now);
        p.publish();
        let rows = recent.load_full();
        assert_eq!(rows.len(), RECENT);
        assert_eq!(rows[0].status, 400 + RECENT as u16 + 4, "newest first");
        let before = Arc::as_ptr(&recent.load_full());
        p.publish();
        assert_eq!(
            before,
            Arc::as_ptr(&recent.load_full()),
            "unchanged: no copy"
        );
        p.sweep(now + WAIT);
        p.publish();
        assert_eq!(
            recent.load_full()[0].input_tokens,
            None,
            "written without tokens"
        );
    }
}
