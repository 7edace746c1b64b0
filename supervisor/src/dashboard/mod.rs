//! The live view's one data source: a [`Snapshot`] of workers, providers and request rates,
//! taken once a second by ONE sampler task while anyone watches, shared by every viewer.
//!
//! ```text
//!  /dashboard/events (SSE) ─┐ subscribe           ┌─ Tally (atomics, RequestRecord::drop)
//!  /dashboard/snapshot ─────┼─ touch ─► sampler ──┼─ WorkerSlots (atomics)
//!  admin GET /snapshot ─────┘    (1/s)  │         ├─ providers.shm (breakers, cool-downs, permits)
//!                                       │         ├─ workers' /metrics (≤500 ms, skipped if slow)
//!                                       │         └─ Recent (the access joiner's last requests)
//!                                       └─► watch channel: the latest JSON, one value (bounded)
//! ```
//!
//! Provider rows: one per configured provider (and any other a worker still reports, during
//! a reload). Breaker state, cool-down and in flight are the pool-wide state every worker
//! shares in `providers.shm`, read here from the pool's own mapping (`Pool::provider_table`);
//! requests, errors, latency, tokens and cost are summed from the workers' metrics.
//!
//! Cost: with nobody watching there is no task at all; each request pays four relaxed atomic
//! adds in `Tally`. The sampler starts on the first subscriber or one-shot request and ends
//! [`LINGER`] after the last SSE subscriber left and the last one-shot request was made, or
//! on shutdown. Twenty dashboards share one sample and one serialisation per second.

pub mod page;
pub mod snapshot;
pub mod tally;

pub use snapshot::Snapshot;

use crate::front::Shared;
use crate::pool::WorkerSlots;
use crate::shutdown::Shutdown;
use bytes::Bytes;
use gateway::provider_health::{MonoClock, HALF_OPEN, OPEN};
use gateway::provider_permits::ProviderTable;
use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, OnceLock, Weak};
use std::time::Duration;
use tally::{Counts, Tally};
use tokio::sync::watch;
use tokio::time::Instant;

/// How much rate history a snapshot carries (one point per second).
pub const HISTORY_SECONDS: usize = 300;
/// The window of the latency quantiles, in samples.
const QUANTILE_WINDOW: usize = 60;
/// How long the sampler outlives its last viewer (a `top` polling once a second keeps it on).
pub const LINGER: Duration = Duration::from_secs(5);
const TICK: Duration = Duration::from_secs(1);

/// The last finished requests, newest first, as the access log's joining task publishes them
/// (`usage::access`); the sampler reads it once a second.
pub type Recent = arc_swap::ArcSwap<Vec<snapshot::RequestRow>>;

/// The hub: counters written on the request path, and the sampler's latest snapshot.
pub struct Dashboard {
    slots: Arc<WorkerSlots>,
    /// Written by every finished request (`front::counters::RequestMeters`).
    pub tally: Arc<Tally>,
    /// The front listener's state (for scraping workers) and its shutdown; set once by the
    /// front when it starts. Weak: the front owns itself, the dashboard only looks.
    front: OnceLock<(Weak<Shared>, Shutdown)>,
    /// The latest snapshot as JSON; `None` while no sampler runs.
    latest: watch::Sender<Option<Bytes>>,
    /// Whether the sampler task exists. Set by whoever spawns it, cleared by it as it ends.
    running: AtomicBool,
    /// Unix ms of the last one-shot request (`snapshot`), which keeps the sampler for [`LINGER`].
    touched_ms: AtomicU64,
    /// The moment `touched_ms` counts from.
    epoch: Instant,
    /// The pool-wide provider table (`Pool::provider_table`); set once at start.
    table: OnceLock<Arc<ProviderTable>>,
    /// The last requests (`AccessLog::recent`); set once at start.
    recent: OnceLock<Arc<Recent>>,
    /// The clock of `providers.shm`'s deadlines.
    clock: MonoClock,
}

impl Dashboard {
    pub fn new(slots: Arc<WorkerSlots>) -> Arc<Self> {
        Arc::new(Self {
            slots,
            tally: Default::default(),
            front: OnceLock::new(),
            latest: watch::Sender::new(None),
            running: AtomicBool::new(false),
            touched_ms: AtomicU64::new(0),
            epoch: Instant::now(),
            table: OnceLock::new(),
            recent: OnceLock::new(),
            clock: MonoClock::new(),
        })
    }

    /// Called once at start: the pool's provider table and the access log's recent requests.
    pub fn bind_sources(&self, table: Option<Arc<ProviderTable>>, recent: Option<Arc<Recent>>) {
        if let Some(t) = table {
            let _ = self.table.set(t);
        }
        if let Some(r) = recent {
            let _ = self.recent.set(r);
        }
    }

    /// Called once by the front listener: where to scrape workers, and when to stop.
    pub fn bind_front(&self, shared: Weak<Shared>, shutdown: Shutdown) {
        let _ = self.front.set((shared, shutdown));
    }

    /// A stream of snapshots (one a second) for an SSE viewer; it keeps the sampler running.
    pub fn subscribe(self: &Arc<Self>) -> watch::Receiver<Option<Bytes>> {
        let rx = self.latest.subscribe();
        self.ensure_running();
        rx
    }

    /// The latest snapshot as JSON (taken now when no sampler has run yet). Keeps the sampler
    /// running for [`LINGER`], so the next call a second later has rates.
    pub async fn snapshot(self: &Arc<Self>) -> Bytes {
        self.touched_ms
            .store(self.epoch.elapsed().as_millis() as u64, Relaxed);
        self.ensure_running();
        if let Some(b) = self.latest.borrow().clone() {
            return b;
        }
        let mut history = Samples::default();
        let s = self.sample(&mut history).await;
        Bytes::from(serde_json::to_vec(&s).unwrap_or_default())
    }

    fn ensure_running(self: &Arc<Self>) {
        if !self.running.swap(true, Relaxed) {
            tokio::spawn(self.clone().run());
        }
    }

    fn wanted(&self) -> bool {
        let idle_ms =
            (self.epoch.elapsed().as_millis() as u64).saturating_sub(self.touched_ms.load(Relaxed));
        self.latest.receiver_count() > 0 || idle_ms < LINGER.as_millis() as u64
    }

    /// The sampler: one snapshot a second until nobody wants them (or shutdown).
    async fn run(self: Arc<Self>) {
        let mut shutdown = self.front.get().map(|(_, s)| s.clone());
        let mut history = Samples::default();
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = async { match shutdown.as_mut() { Some(s) => s.wait().await, None => std::future::pending().await } } => break,
            }
            let s = self.sample(&mut history).await;
            let json = Bytes::from(serde_json::to_vec(&s).unwrap_or_default());
            self.latest.send_replace(Some(json));
            if self.wanted() {
                continue;
            }
            // Nobody watches: end, unless a viewer arrived between the check and the flag (it
            // then saw `running` set and spawned nothing, so this task carries on for it).
            self.latest.send_replace(None);
            self.running.store(false, Relaxed);
            if !self.wanted() || self.running.swap(true, Relaxed) {
                return;
            }
        }
        self.latest.send_replace(None);
        self.running.store(false, Relaxed);
    }

    /// Takes one snapshot, appending to `history`.
    async fn sample(&self, history: &mut Samples) -> Snapshot {
        let slots = self.slots.load();
        let workers = slots.iter().map(|s| worker_row(s)).collect();
        let mut acc = BTreeMap::new();
        let mut open_timeout_ms = 0;
        let mut order = Vec::new();
        if let Some(shared) = self.front.get().and_then(|(w, _)| w.upgrade()) {
            let cfg = shared.config.load();
            open_timeout_ms = cfg.circuit_breaker.open_timeout.as_millis() as u64;
            for p in &cfg.providers {
                acc.entry(p.name.clone())
                    .or_insert_with(snapshot::ProviderAcc::default);
                order.push(p.name.clone());
            }
            drop(cfg);
            let scrapes = slots
                .iter()
                .map(|s| crate::front::metrics_page::scrape(&shared, s));
            for (_, text) in futures_util::future::join_all(scrapes)
                .await
                .into_iter()
                .flatten()
            {
                snapshot::add_worker_metrics(&mut acc, &text);
            }
        }
        let mut providers: Vec<_> = acc.into_iter().map(|(n, a)| a.into_row(n)).collect();
        // Configured ones in the configuration's order, then any other a worker reported.
        providers.sort_by_key(|p| {
            order
                .iter()
                .position(|n| *n == p.name)
                .unwrap_or(usize::MAX)
        });
        if let Some(table) = self.table.get() {
            let now = self.clock.now_ms();
            for p in &mut providers {
                pool_wide(p, table, open_timeout_ms, now);
            }
        }
        let requests = self
            .recent
            .get()
            .map(|r| r.load_full().to_vec())
            .unwrap_or_default();
        let now = Sample {
            at: Instant::now(),
            requests: self.tally.requests.load(Relaxed),
            errors: self.tally.errors.load(Relaxed),
            tokens: providers.iter().map(|p| p.tokens).sum(),
            latency: self.tally.latency.counts(),
            ttfb: self.tally.ttfb.counts(),
        };
        let cost_usd = providers.iter().map(|p| p.cost_usd).sum();
        let (totals, hist) = history.push(now, cost_usd);
        Snapshot {
            at_ms: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64),
            workers,
            providers,
            totals,
            history: hist,
            requests,
        }
    }
}

/// Fills a provider row's pool-wide state from `providers.shm`: the breaker (an open period
/// that is over reads as half-open, which the next request makes it), what is left of the open
/// period or the cool-down, and the permits held across the pool.
fn pool_wide(p: &mut snapshot::ProviderRow, table: &ProviderTable, open_timeout_ms: u64, now: u64) {
    let col = ProviderTable::column(&p.name);
    let cell = &table.health().cols[col];
    let w = cell.load();
    let open_left = cell.open_left_ms(w, open_timeout_ms, now);
    p.breaker = match w.state {
        OPEN if open_left > 0 => "open",
        OPEN | HALF_OPEN => "half-open",
        _ => "closed",
    }
    .into();
    p.cooldown_s = open_left.max(cell.cooldown_left_ms(now)) as f64 / 1000.0;
    p.inflight = table.total(col);
}

fn worker_row(s: &crate::pool::WorkerSlot) -> snapshot::WorkerRow {
    let pid = s.pid.load(Relaxed);
    let age = s.heartbeat_age_ms.load(Relaxed);
    snapshot::WorkerRow {
        id: s.id,
        pid: (pid != 0).then_some(pid),
        state: s.state().as_str().to_string(),
        inflight: s.inflight.load(Relaxed),
        served: s.served.load(Relaxed),
        restarts: s.restarts.load(Relaxed),
        rss_bytes: s.rss_bytes.load(Relaxed),
        heartbeat_age_ms: (age != u64::MAX).then_some(age),
    }
}

/// The counters at one sample.
#[derive(Clone, Copy)]
struct Sample {
    at: Instant,
    requests: u64,
    errors: u64,
    tokens: u64,
    latency: Counts,
    ttfb: Counts,
}

/// The sampler's ring of samples: at most `HISTORY_SECONDS + 1`, about 100 KB.
#[derive(Default)]
struct Samples(VecDeque<Sample>);

impl Samples {
    /// Adds `now`; returns the totals and the per-second rate history.
    fn push(&mut self, now: Sample, cost_usd: f64) -> (snapshot::Totals, snapshot::History) {
        if self.0.len() > HISTORY_SECONDS {
            self.0.pop_front();
        }
        self.0.push_back(now);
        let rate = |a: &Sample, b: &Sample, f: fn(&Sample) -> u64| {
            let secs = b.at.duration_since(a.at).as_secs_f64().max(1e-3);
            f(b).saturating_sub(f(a)) as f64 / secs
        };
        let pairs = || self.0.iter().zip(self.0.iter().skip(1));
        let history = snapshot::History {
            requests_per_s: pairs().map(|(a, b)| rate(a, b, |s| s.requests)).collect(),
            errors_per_s: pairs().map(|(a, b)| rate(a, b, |s| s.errors)).collect(),
        };
        let base =
            (self.0.len() > 1).then(|| self.0[self.0.len().saturating_sub(QUANTILE_WINDOW + 1)]);
        let lat = base.map_or(now.latency, |b| now.latency.since(&b.latency));
        let ttfb = base.map_or(now.ttfb, |b| now.ttfb.since(&b.ttfb));
        let prev = (self.0.len() > 1).then(|| self.0[self.0.len() - 2]);
        let per_s = |f: fn(&Sample) -> u64| prev.map_or(0.0, |p| rate(&p, &now, f));
        let totals = snapshot::Totals {
            requests: now.requests,
            errors: now.errors,
            requests_per_s: per_s(|s| s.requests),
            errors_per_s: per_s(|s| s.errors),
            p50_ms: lat.quantile_ms(0.5),
            p99_ms: lat.quantile_ms(0.99),
            ttfb_p50_ms: ttfb.quantile_ms(0.5),
            ttfb_p99_ms: ttfb.quantile_ms(0.99),
            tokens: now.tokens,
            tokens_per_s: per_s(|s| s.tokens),
            cost_usd,
        };
        (totals, history)
    }
}

/// The SSE body of `GET /dashboard/events`: one `data:` event per snapshot, ending on
/// shutdown (so an open dashboard never holds up a graceful stop).
pub struct EventStream(futures_util::stream::BoxStream<'static, Bytes>);

impl EventStream {
    pub fn new(rx: watch::Receiver<Option<Bytes>>, shutdown: Option<Shutdown>) -> Self {
        let state = (rx, shutdown, true);
        let s =
            futures_util::stream::unfold(state, |(mut rx, mut shutdown, mut first)| async move {
                loop {
                    if !first {
                        let stop = async {
                            match shutdown.as_mut() {
                                Some(s) => s.wait().await,
                                None => std::future::pending().await,
                            }
                        };
                        tokio::select! {
                            r = rx.changed() => if r.is_err() { return None },
                            _ = stop => return None,
                        }
                    }
                    first = false;
                    let latest = rx.borrow_and_update().clone();
                    if let Some(json) = latest {
                        let text = std::str::from_utf8(&json).unwrap_or("{}");
                        let frame = Bytes::from(gateway::sse::frame("", text));
                        return Some((frame, (rx, shutdown, first)));
                    }
                }
            });
        Self(Box::pin(s))
    }

    pub fn shutdown_of(d: &Dashboard) -> Option<Shutdown> {
        d.front.get().map(|(_, s)| s.clone())
    }
}

impl hyper::body::Body for EventStream {
    type Data = Bytes;
    type Error = gateway::relay::BoxError;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, Self::Error>>> {
        use futures_util::StreamExt;
        self.0
            .poll_next_unpin(cx)
            .map(|o| o.map(|b| Ok(hyper::body::Frame::data(b))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Breaker, cool-down and in flight come from the pool-wide table every worker writes.
    #[test]
    fn provider_rows_read_the_pool_wide_table() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("providers.shm");
        let table = ProviderTable::create(&path).unwrap();
        let worker = gateway::provider_permits::ProviderLimiter::new(
            Arc::new(ProviderTable::open(&path).unwrap()),
            3,
        );
        let row = |name: &str| snapshot::ProviderRow {
            name: name.into(),
            breaker: "closed".into(),
            ..Default::default()
        };
        let now = 1_000_000;
        let (mut a, mut b) = (row("a"), row("b"));
        pool_wide(&mut a, &table, 30_000, now);
        assert_eq!(
            (a.breaker.as_str(), a.cooldown_s, a.inflight),
            ("closed", 0.0, 0)
        );

        let held = [worker.count("a"), worker.count("a")];
        let cell = worker.health_cell("a");
        cell.transition(cell.load(), OPEN, now - 10_000).unwrap();
        worker
            .health_cell("b")
            .cooldown_until_ms
            .store(now + 1_500, Relaxed);
        pool_wide(&mut a, &table, 30_000, now);
        pool_wide(&mut b, &table, 30_000, now);
        assert_eq!(a.breaker, "open");
        assert!((a.cooldown_s - 20.0).abs() < 1e-9, "{}", a.cooldown_s);
        assert_eq!(a.inflight, 2);
        assert_eq!(
            (b.breaker.as_str(), b.cooldown_s, b.inflight),
            ("closed", 1.5, 0)
        );

        pool_wide(&mut a, &table, 30_000, now + 30_000);
        assert_eq!(a.breaker, "half-open", "an open period that is over");
        assert_eq!(a.cooldown_s, 0.0);
        drop(held);
        pool_wide(&mut a, &table, 30_000, now);
        assert_eq!(a.inflight, 0, "released with the requests");
    }

    #[tokio::test(start_paused = true)]
    async fn one_sampler_while_watched_none_when_idle() {
        let d = Dashboard::new(Arc::new(WorkerSlots::new(vec![])));
        assert!(!d.running.load(Relaxed), "no task before anyone watches");
        let mut a = d.subscribe();
        let _b = d.subscribe();
        assert!(d.running.load(Relaxed));
        a.changed().await.unwrap();
        d.tally
            .finished("/v1/chat/completions", 200, Duration::from_millis(3), None);
        a.changed().await.unwrap();
        let s: Snapshot = serde_json::from_slice(a.borrow().as_ref().unwrap()).unwrap();
        assert_eq!(s.totals.requests, 1);
        assert_eq!(s.history.requests_per_s.len(), 1);
        drop(a);
        drop(_b);
        // The sampler lingers for LINGER after the last watcher, then ends: wait for that,
        // with a deadline well past it.
        let deadline = tokio::time::Instant::now() + LINGER + TICK * 20;
        while d.running.load(Relaxed) && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(TICK).await;
        }
        assert!(
            !d.running.load(Relaxed),
            "the sampler ends once nobody watches"
        );
        assert!(d.latest.borrow().is_none());
    }
}
