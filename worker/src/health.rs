//! Provider health: concurrent probes, the background probe task and the `/v1/health*`
//! endpoints.
//!
//! A probe is the provider's free model-list call (OpenAI `GET {base_url}/models`, Anthropic
//! `GET {base_url}/v1/models`, with its key headers; a mock is healthy at once), bounded by
//! `health.probe_timeout`. A *round* probes every provider, concurrently (at most
//! `max_concurrent_probes` at once, by a semaphore, so one slow provider never delays the
//! others) or one after another (`use_concurrent=false`, and the sequential half of
//! `/performance`).
//!
//! Rounds are single-flight: the current round is an `Arc<OnceCell<Arc<Round>>>` in a mutex held
//! only to look at or replace that handle, never across an `.await`. Every caller awaits the
//! same cell, so fifty concurrent `/v1/health` calls make one round, and a round younger than
//! `health.cache_ttl` is served as it is. If the caller driving a round goes away, another
//! waiter takes over (`OnceCell::get_or_init`), so a round is never orphaned.
//!
//! Probes and their results are the pool's: only the holder of the probe lease in the provider
//! table (`gateway::provider_health`) runs the background rounds, every round is published to
//! the table, and `/v1/health` answers from the pool's latest round while it is younger than
//! `cache_ttl`, so every worker answers the same.
//!
//! A successful probe moves an open breaker to half-open early (`Breaker::probe_succeeded`); a
//! failed probe never opens a closed one (only real traffic does).

use crate::body::{json_response, ResBody};
use crate::breaker::CircuitState;
use crate::providers::Provider;
use gateway::config::{resolve_provider_model, Config, ProviderKind};
use gateway::provider_health::{MonoClock, SharedProbe};
use gateway::provider_permits::ProviderLimiter;
use gateway::{ApiError, Dialect, ErrorKind};
use http::Response;
use serde_json::{json, Map, Value};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};
use tokio::sync::{OnceCell, Semaphore};

/// One provider's probe result.
#[derive(Debug, Clone)]
pub struct ProbeResult {
    pub healthy: bool,
    pub error: Option<String>,
    pub latency: Duration,
}

/// One probe round over every provider.
#[derive(Debug)]
pub struct Round {
    /// When it finished (monotonic ms, comparable across the pool; for the cache).
    at_ms: u64,
    timestamp: SystemTime,
    /// Indexed like `ProviderHealth::providers`.
    results: Vec<ProbeResult>,
    took: Duration,
    concurrent: bool,
    timeout: Duration,
}

type RoundCell = Arc<OnceCell<Arc<Round>>>;

/// The health prober of one worker.
pub struct ProviderHealth {
    providers: Vec<Arc<Provider>>,
    /// Model names (configured models, then aliases) and the providers serving each.
    models: Vec<(String, Vec<usize>)>,
    probe_timeout: Duration,
    max_concurrent: usize,
    cache_ttl: Duration,
    interval: Duration,
    /// The latest (or running) concurrent round of this worker. Locked only to clone or
    /// replace the handle.
    round: Mutex<Option<RoundCell>>,
    /// The pool's provider table: the probe lease and every provider's latest probe result.
    shared: ProviderLimiter,
    clock: MonoClock,
}

impl ProviderHealth {
    pub fn new(config: &Config, providers: Vec<Arc<Provider>>, shared: ProviderLimiter) -> Self {
        let mut models: Vec<(String, Vec<usize>)> = Vec::new();
        for (i, p) in providers.iter().enumerate() {
            for m in p.config.models.iter().filter(|m| *m != "*") {
                match models.iter_mut().find(|(n, _)| n == m) {
                    Some((_, ps)) => ps.push(i),
                    None => models.push((m.clone(), vec![i])),
                }
            }
        }
        for a in &config.models {
            let mut ps: Vec<usize> = a
                .targets
                .iter()
                .filter_map(|t| {
                    resolve_provider_model(providers.iter().map(|p| &p.config), t).map(|(i, _)| i)
                })
                .collect();
            ps.dedup();
            match models.iter_mut().find(|(n, _)| *n == a.name) {
                Some((_, existing)) => *existing = ps,
                None => models.push((a.name.clone(), ps)),
            }
        }
        Self {
            providers,
            models,
            probe_timeout: config.health.probe_timeout,
            max_concurrent: config.health.max_concurrent_probes.max(1) as usize,
            cache_ttl: config.health.cache_ttl,
            interval: config.health.probe_interval,
            round: Mutex::new(None),
            shared,
            clock: MonoClock::new(),
        }
    }

    /// Starts the background probe task (none when `probe_interval` is 0). The returned guard
    /// owns it and aborts it when dropped. Every worker runs the task, but only the holder of
    /// the pool's probe lease probes: the pool probes once per interval. The holder renews the
    /// lease each tick; if it dies the supervisor frees its lease when it reaps it, or the lease
    /// runs out (two intervals plus a probe timeout), and the next worker to tick takes over.
    pub fn spawn(self: &Arc<Self>) -> Option<ProbeTask> {
        if self.interval.is_zero() {
            return None;
        }
        let me = self.clone();
        Some(ProbeTask(tokio::spawn(async move {
            let mut tick = tokio::time::interval(me.interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let ttl = me.interval * 2 + me.probe_timeout;
            loop {
                tick.tick().await;
                let (row, now) = (me.shared.row(), me.clock.now_ms());
                if !me.shared.health().try_lease(row, now, ttl) {
                    continue;
                }
                let r = me.concurrent(me.probe_timeout, true).await;
                let bad = r.results.iter().filter(|p| !p.healthy).count();
                tracing::debug!(unhealthy = bad, took = ?r.took, "probe round done");
            }
        })))
    }

    /// The round to join: the running one, a cached one younger than `cache_ttl` (unless
    /// `fresh`), or a new one.
    fn current(&self, fresh: bool) -> RoundCell {
        // Held only to look at and swap the handle; nothing awaits under it.
        let mut slot = self.round.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = slot.as_ref() {
            match c.get() {
                None => return c.clone(),
                Some(r) if !fresh && self.young(r.at_ms) => return c.clone(),
                Some(_) => {}
            }
        }
        let c = RoundCell::default();
        *slot = Some(c.clone());
        c
    }

    fn young(&self, at_ms: u64) -> bool {
        self.clock.now_ms().saturating_sub(at_ms) < self.cache_ttl.as_millis() as u64
    }

    /// A concurrent round: the pool's latest (whichever worker probed) if younger than
    /// `cache_ttl` and not `fresh`, else this worker's running or new one, shared with every
    /// concurrent caller and published to the pool.
    pub async fn concurrent(&self, timeout: Duration, fresh: bool) -> Arc<Round> {
        if !fresh {
            if let Some(r) = self.shared_round().filter(|r| self.young(r.at_ms)) {
                return Arc::new(r);
            }
        }
        let cell = self.current(fresh);
        cell.get_or_init(|| async {
            let r = self.run(true, timeout).await;
            self.publish(&r);
            Arc::new(r)
        })
        .await
        .clone()
    }

    /// Writes a round's results into the pool's table.
    fn publish(&self, r: &Round) {
        let unix_ms = r
            .timestamp
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        for (p, res) in self.providers.iter().zip(&r.results) {
            self.shared.health_cell(p.name()).probe().write(
                self.shared.row(),
                &SharedProbe {
                    at_ms: r.at_ms,
                    unix_ms,
                    healthy: res.healthy,
                    latency_us: res.latency.as_micros() as u64,
                    error: res.error.clone(),
                    took_us: r.took.as_micros() as u64,
                    timeout_ms: r.timeout.as_millis() as u64,
                    concurrent: r.concurrent,
                },
            );
        }
    }

    /// The pool's latest results for this worker's providers, as one round (as old as its
    /// oldest result); `None` while any provider has none.
    fn shared_round(&self) -> Option<Round> {
        let probes = self
            .providers
            .iter()
            .map(|p| self.shared.health_cell(p.name()).probe().read())
            .collect::<Option<Vec<_>>>()?;
        let oldest = probes.iter().min_by_key(|p| p.at_ms)?;
        Some(Round {
            at_ms: oldest.at_ms,
            timestamp: SystemTime::UNIX_EPOCH + Duration::from_millis(oldest.unix_ms),
            took: Duration::from_micros(oldest.took_us),
            concurrent: oldest.concurrent,
            timeout: Duration::from_millis(oldest.timeout_ms),
            results: probes
                .iter()
                .map(|p| ProbeResult {
                    healthy: p.healthy,
                    error: p.error.clone(),
                    latency: Duration::from_micros(p.latency_us),
                })
                .collect(),
        })
    }

    /// Probes every provider now.
    pub async fn run(&self, concurrent: bool, timeout: Duration) -> Round {
        let started = Instant::now();
        let timeout = timeout.min(self.probe_timeout);
        let results = if concurrent {
            let sem = Semaphore::new(self.max_concurrent);
            let sem = &sem;
            futures_util::future::join_all(self.providers.iter().map(|p| async move {
                // The semaphore is never closed, so acquiring cannot fail.
                let _permit = sem.acquire().await.ok();
                probe(p, timeout).await
            }))
            .await
        } else {
            let mut out = Vec::with_capacity(self.providers.len());
            for p in &self.providers {
                out.push(probe(p, timeout).await);
            }
            out
        };
        Round {
            at_ms: self.clock.now_ms(),
            timestamp: SystemTime::now(),
            results,
            took: started.elapsed(),
            concurrent,
            timeout,
        }
    }

    fn model_json(&self, round: &Round, providers: &[usize]) -> (Value, &'static str) {
        let mut map = Map::new();
        let mut healthy = 0;
        for &i in providers {
            let ok = round.results[i].healthy;
            healthy += usize::from(ok);
            map.insert(
                self.providers[i].name().to_string(),
                Value::from(if ok { "healthy" } else { "unhealthy" }),
            );
        }
        let status = if healthy == providers.len() && healthy > 0 {
            "healthy"
        } else if healthy > 0 {
            "degraded"
        } else {
            "unhealthy"
        };
        let v = json!({
            "status": status,
            "providers": map,
            "healthy_providers": healthy,
            "total_providers": providers.len(),
        });
        (v, status)
    }

    /// `{models, healthy_models, total_models}` plus the overall status.
    fn models_json(&self, round: &Round) -> (Map<String, Value>, usize, &'static str) {
        let mut models = Map::new();
        let (mut healthy, mut some) = (0, 0);
        for (name, ps) in &self.models {
            let (v, status) = self.model_json(round, ps);
            healthy += usize::from(status == "healthy");
            some += usize::from(status != "unhealthy");
            models.insert(name.clone(), v);
        }
        let overall = if healthy == self.models.len() {
            "healthy"
        } else if some > 0 {
            "degraded"
        } else {
            "unhealthy"
        };
        (models, healthy, overall)
    }

    fn providers_json(&self, round: &Round) -> Map<String, Value> {
        self.providers
            .iter()
            .zip(&round.results)
            .map(|(p, r)| {
                let circuit = p.breaker.state();
                let v = json!({
                    "status": if r.healthy { "healthy" } else { "unhealthy" },
                    "circuit": circuit.as_str(),
                    "cooling": p.breaker.cooling(),
                    "cooldown_remaining_s": whole_secs_up(p.breaker.cooldown_remaining()),
                    "latency_ms": r.latency.as_secs_f64() * 1000.0,
                    "error": r.error,
                });
                (p.name().to_string(), v)
            })
            .collect()
    }
}

/// Owns the background probe task; aborts it when dropped (with the server).
pub struct ProbeTask(tokio::task::JoinHandle<()>);

impl Drop for ProbeTask {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Probes one provider, bounded by `timeout`.
async fn probe(p: &Provider, timeout: Duration) -> ProbeResult {
    let started = Instant::now();
    let res = match (&p.config.kind, &p.missing_key) {
        (ProviderKind::Mock, _) => Ok(()),
        // A provider whose key variable is unset cannot serve anything: say so without a
        // network call (a fresh install lists providers it has no keys for).
        (_, Some(reason)) => Err(reason.clone()),
        _ => tokio::time::timeout(timeout, list_models(p))
            .await
            .unwrap_or_else(|_| {
                Err(format!(
                    "no answer within {}",
                    humantime::format_duration(timeout)
                ))
            }),
    };
    if res.is_ok() {
        p.breaker.probe_succeeded();
    } else if p.breaker.state() == CircuitState::Closed {
        tracing::debug!(provider = %p.name(), "probe failed; the breaker stays closed until requests fail");
    }
    ProbeResult {
        healthy: res.is_ok(),
        error: res.err(),
        latency: started.elapsed(),
    }
}

/// The provider's model-list call; success is any 2xx.
async fn list_models(p: &Provider) -> Result<(), String> {
    match p.get_models().await {
        Some(r) => r.map(drop),
        None => Err(format!(
            "provider kind {:?} cannot be probed",
            p.config.kind
        )),
    }
}

/// Whole seconds, rounded up: a cool-down with 300 ms left still shows 1, never 0.
fn whole_secs_up(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

fn unix_secs(t: SystemTime) -> f64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// `timeout` (seconds) and `use_concurrent` from the query string.
fn parse_query(
    query: Option<&str>,
    default_timeout: Duration,
) -> Result<(Duration, bool), ApiError> {
    let mut timeout = default_timeout;
    let mut concurrent = true;
    for pair in query.unwrap_or("").split('&').filter(|s| !s.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        match k {
            "timeout" => {
                let secs: f64 = v
                    .parse()
                    .ok()
                    .filter(|s: &f64| s.is_finite() && *s > 0.0 && *s <= 3600.0)
                    .ok_or_else(|| {
                        ApiError::new(
                            ErrorKind::BadRequest,
                            format!("`timeout` must be a number of seconds, got `{v}`"),
                        )
                    })?;
                timeout = Duration::from_secs_f64(secs);
            }
            "use_concurrent" => {
                concurrent = match v {
                    "true" | "1" | "" => true,
                    "false" | "0" => false,
                    _ => {
                        return Err(ApiError::new(
                            ErrorKind::BadRequest,
                            format!("`use_concurrent` must be true or false, got `{v}`"),
                        ))
                    }
                }
            }
            _ => {}
        }
    }
    Ok((timeout, concurrent))
}

/// Whether `path` is one of the health endpoints.
pub fn handle_path(path: &str) -> bool {
    path.strip_prefix("/v1/health").is_some_and(|sub| {
        sub.is_empty() || sub == "/performance" || sub == "/models" || sub.starts_with("/models/")
    })
}

/// Serves `GET /v1/health`, `/v1/health/models`, `/v1/health/models/{model}` and
/// `/v1/health/performance`; `None` for any other path.
pub async fn handle(
    health: &ProviderHealth,
    path: &str,
    query: Option<&str>,
) -> Option<Response<ResBody>> {
    if !handle_path(path) {
        return None;
    }
    let sub = &path["/v1/health".len()..];
    let (timeout, concurrent) = match parse_query(query, health.probe_timeout) {
        Ok(x) => x,
        Err(e) => return Some(e.to_response(Dialect::OpenAi)),
    };
    if sub == "/performance" {
        return Some(performance(health, timeout).await);
    }
    let round = if concurrent {
        health.concurrent(timeout, false).await
    } else {
        // A diagnostic of the sequential path: always a fresh pass, never cached.
        Arc::new(health.run(false, timeout).await)
    };
    let (models, healthy, overall) = health.models_json(&round);
    let total = models.len();
    let timestamp = unix_secs(round.timestamp);
    Some(match sub {
        "" => json_response(&json!({
            "status": overall,
            "timestamp": timestamp,
            "models": models,
            "healthy_models": healthy,
            "total_models": total,
            "providers": health.providers_json(&round),
            "execution_time": round.took.as_secs_f64(),
            "concurrent": round.concurrent,
            "timeout": round.timeout.as_secs_f64(),
        })),
        "/models" => json_response(&json!({
            "status": overall,
            "timestamp": timestamp,
            "models": models,
            "healthy_models": healthy,
            "total_models": total,
        })),
        _ => {
            let name = &sub["/models/".len()..];
            match models.get(name) {
                Some(m) => {
                    let mut m = m.clone();
                    m["model"] = Value::from(name);
                    m["timestamp"] = Value::from(timestamp);
                    json_response(&m)
                }
                None => ApiError::new(
                    ErrorKind::NotFound,
                    format!("The model `{name}` is not served by this gateway"),
                )
                .to_response(Dialect::OpenAi),
            }
        }
    })
}

/// Times one concurrent and one sequential probe pass.
async fn performance(health: &ProviderHealth, timeout: Duration) -> Response<ResBody> {
    let c = health.run(true, timeout).await;
    let s = health.run(false, timeout).await;
    let (ct, st) = (c.took.as_secs_f64(), s.took.as_secs_f64());
    let speedup = if ct > 0.0 { st / ct } else { 0.0 };
    let improvement = if st > 0.0 {
        (st - ct) / st * 100.0
    } else {
        0.0
    };
    let (_, healthy_models, _) = health.models_json(&c);
    json_response(&json!({
        "concurrent_time": ct,
        "sequential_time": st,
        "speedup": speedup,
        "improvement_percent": improvement,
        "total_models": health.models.len(),
        "healthy_models": healthy_models,
        "total_providers": health.providers.len(),
        "healthy_providers": c.results.iter().filter(|r| r.healthy).count(),
        "max_concurrent_probes": health.max_concurrent,
        "timestamp": unix_secs(c.timestamp),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_parsing() {
        let d = Duration::from_secs(8);
        assert_eq!(parse_query(None, d).unwrap(), (d, true));
        assert_eq!(
            parse_query(Some("timeout=30&use_concurrent=false"), d).unwrap(),
            (Duration::from_secs(30), false)
        );
        assert_eq!(
            parse_query(Some("timeout=0.5"), d).unwrap(),
            (Duration::from_millis(500), true)
        );
        assert!(parse_query(Some("timeout=abc"), d).is_err());
        assert!(parse_query(Some("timeout=-1"), d).is_err());
        assert!(parse_query(Some("use_concurrent=maybe"), d).is_err());
    }
}
