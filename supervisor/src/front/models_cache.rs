//! `GET /v1/models` without waiting on a worker.
//!
//! The answer always comes from memory: the last list fetched from a worker while it is fresh
//! (`ttl`), that same list when stale (while a refresh runs or after one failed), or, before any
//! list was fetched, the floor list built from the configuration (provider models except `"*"`,
//! plus alias names). A stale or missing list only *requests* a refresh: at most one per
//! `min_refresh_interval`, carried out by the cache's own background task one at a time
//! (single-flight), from one IDLE worker, with a short timeout. So a pool of stopped workers
//! never delays this endpoint.

use super::Shared;
use crate::metrics::OutcomeLabel;
use crate::pool::WorkerState;
use arc_swap::ArcSwapOption;
use bytes::Bytes;
use gateway::model_list::{self, ModelList};
use gateway::Config;
use gateway::{ApiError, ErrorKind};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::Instant;

/// How long a refresh may take from a worker before it counts as failed.
pub const REFRESH_TIMEOUT: Duration = Duration::from_secs(2);
/// Largest model list accepted from a worker.
const MAX_LIST_BYTES: usize = 4 * 1024 * 1024;
const NEVER: u64 = u64::MAX;

/// A list fetched from a worker.
struct Fetched {
    body: Bytes,
    at: Instant,
}

/// The cache. Request handlers only read it and nudge the refresher.
pub struct ModelListCache {
    current: ArcSwapOption<Fetched>,
    /// When the last refresh was requested, in ms since `epoch`; `NEVER` before the first.
    last_request_ms: AtomicU64,
    epoch: Instant,
    /// Capacity 1: a refresh already queued absorbs further nudges.
    nudge: mpsc::Sender<()>,
    /// Taken once by the refresher task.
    nudged: Mutex<Option<mpsc::Receiver<()>>>,
}

impl Default for ModelListCache {
    fn default() -> Self {
        let (tx, rx) = mpsc::channel(1);
        Self {
            current: ArcSwapOption::empty(),
            last_request_ms: AtomicU64::new(NEVER),
            epoch: Instant::now(),
            nudge: tx,
            nudged: Mutex::new(Some(rx)),
        }
    }
}

/// The floor list: configured models (without `"*"`) and alias names, OpenAI list format (the
/// builder the workers use too).
pub fn floor_list(cfg: &Config) -> Bytes {
    let list = ModelList::configured(&cfg.providers, cfg.models.iter().map(|a| a.name.as_str()));
    Bytes::from(list.to_json().to_string())
}

impl ModelListCache {
    /// The list to answer with now; asks for a refresh when it is stale or missing.
    pub fn get(&self, cfg: &Config, floor: &Bytes) -> Bytes {
        let cur = self.current.load();
        if let Some(f) = cur.as_ref() {
            if f.at.elapsed() < cfg.models_cache.ttl {
                return f.body.clone();
            }
        }
        self.request_refresh(cfg.models_cache.min_refresh_interval);
        cur.as_ref()
            .map_or_else(|| floor.clone(), |f| f.body.clone())
    }

    /// `GET /v1/models/{id}`: that entry of the list `get` would answer, or the 404 to send.
    pub fn retrieve(&self, cfg: &Config, floor: &Bytes, id: &str) -> Result<Bytes, ApiError> {
        let body = self.get(cfg, floor);
        // Only lists that parse are stored (`refresh_once`), and the floor always does.
        let list: serde_json::Value = serde_json::from_slice(&body)
            .map_err(|_| ApiError::new(ErrorKind::Internal, "the model list is not JSON"))?;
        model_list::find(&list, id).map(|m| Bytes::from(m.to_string()))
    }

    /// Nudges the refresher, at most once per `min_interval`.
    fn request_refresh(&self, min_interval: Duration) {
        let now = self.epoch.elapsed().as_millis() as u64;
        let last = self.last_request_ms.load(Relaxed);
        if last != NEVER && now.saturating_sub(last) < min_interval.as_millis() as u64 {
            return;
        }
        // Only the request that wins the swap nudges; the others saw a refresh underway.
        if self
            .last_request_ms
            .compare_exchange(last, now, Relaxed, Relaxed)
            .is_ok()
        {
            let _ = self.nudge.try_send(());
        }
    }

    /// Runs the refresher until the channel closes or the task is aborted by its owner.
    pub async fn run_refresher(shared: Arc<Shared>) {
        let rx = shared.models.nudged.lock().expect("not poisoned").take();
        let Some(mut rx) = rx else { return };
        while rx.recv().await.is_some() {
            let outcome = match refresh_once(&shared).await {
                Ok(()) => "ok",
                Err(RefreshError::NoIdleWorker) => "no_worker",
                Err(RefreshError::Failed(e)) => {
                    tracing::debug!(
                        error = e,
                        "models cache refresh failed; serving the old list"
                    );
                    "error"
                }
            };
            shared
                .metrics
                .models_cache_refreshes
                .get_or_create(&OutcomeLabel {
                    outcome: outcome.into(),
                })
                .inc();
        }
    }
}

/// Why a refresh did not produce a list; the first is its own metric outcome.
enum RefreshError {
    NoIdleWorker,
    Failed(&'static str),
}

impl From<&'static str> for RefreshError {
    fn from(e: &'static str) -> Self {
        Self::Failed(e)
    }
}

/// Fetches the list from one IDLE worker (contract: never from a busy one; the stale list or
/// the configured floor is served meanwhile).
async fn refresh_once(shared: &Shared) -> Result<(), RefreshError> {
    let max = shared.config.load().pool.worker_max_inflight;
    let slot = shared
        .slots
        .load()
        .iter()
        .find(|s| s.state() == WorkerState::Idle && s.has_room(max))
        .cloned()
        .ok_or(RefreshError::NoIdleWorker)?;
    let fetch = shared.conns.get(&slot, "/v1/models", MAX_LIST_BYTES);
    let body = tokio::time::timeout(REFRESH_TIMEOUT, fetch)
        .await
        .map_err(|_| "timed out")??;
    let v: serde_json::Value = serde_json::from_slice(&body).map_err(|_| "not JSON")?;
    if !v.get("data").is_some_and(|d| d.is_array()) {
        return Err(RefreshError::Failed("not a model list"));
    }
    shared.models.current.store(Some(Arc::new(Fetched {
        body,
        at: Instant::now(),
    })));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn floor_from_config() {
        let cfg = gateway::config::parse_str(gateway::config::BUILTIN_CONFIG, "t").unwrap();
        let v: serde_json::Value = serde_json::from_slice(&floor_list(&cfg)).unwrap();
        assert_eq!(v["object"], "list");
        let ids: Vec<&str> = v["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["id"].as_str().unwrap())
            .collect();
        assert!(
            ids.contains(&"demo") && ids.contains(&"gpt-4o") && ids.contains(&"fast"),
            "{ids:?}"
        );
        assert!(!ids.contains(&"*"));
        assert_eq!(v["data"][0]["object"], "model");
    }

    #[tokio::test]
    async fn refresh_requests_are_rate_limited() {
        let c = ModelListCache::default();
        let mut rx = c.nudged.lock().unwrap().take().unwrap();
        let mut cfg = Config::default();
        cfg.models_cache.min_refresh_interval = Duration::from_secs(3600);
        let floor = Bytes::from_static(b"floor");
        assert_eq!(c.get(&cfg, &floor), floor);
        assert_eq!(c.get(&cfg, &floor), floor);
        assert!(rx.try_recv().is_ok());
        assert!(
            rx.try_recv().is_err(),
            "one nudge within min_refresh_interval"
        );
        // With no minimum interval, each stale read may ask again.
        cfg.models_cache.min_refresh_interval = Duration::ZERO;
        c.get(&cfg, &floor);
        assert!(rx.try_recv().is_ok());
    }
}
