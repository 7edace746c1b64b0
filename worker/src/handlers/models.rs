//! `GET /v1/models` and `/v1/models/{id}`: the configured models and aliases, plus what
//! providers with `models = "*"` list themselves, cached for `models_cache.ttl`. One request at
//! a time refreshes a provider's list (an atomic flag); the others serve the stale list
//! meanwhile, or none if there is none.

use super::App;
use crate::body::ResBody;
use crate::providers::Provider;
use arc_swap::ArcSwapOption;
use gateway::config::Config;
use gateway::model_list::{self, ModelList};
use gateway::Dialect;
use http::Response;
use http_body_util::{BodyExt, Limited};
use serde_json::Value;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Largest model list accepted from a provider.
const MAX_LIST_BYTES: usize = 8 << 20;

struct Cached {
    at: Instant,
    ids: Vec<String>,
}

/// Discovered model lists, one entry per provider (indexed like the route table).
pub struct ProviderModelLists {
    ttl: Duration,
    timeout: Duration,
    lists: Vec<ArcSwapOption<Cached>>,
    refreshing: Vec<AtomicBool>,
}

impl ProviderModelLists {
    pub fn new(config: &Config, providers: usize) -> Self {
        Self {
            ttl: config.models_cache.ttl,
            timeout: config.health.probe_timeout,
            lists: (0..providers).map(|_| ArcSwapOption::empty()).collect(),
            refreshing: (0..providers).map(|_| AtomicBool::new(false)).collect(),
        }
    }

    /// The provider's list: fresh from the cache, refreshed by this caller, or stale.
    async fn get(&self, i: usize, p: &Provider) -> Option<Arc<Cached>> {
        let cur = self.lists[i].load_full();
        if cur.as_ref().is_some_and(|c| c.at.elapsed() < self.ttl) {
            return cur;
        }
        if self.refreshing[i].swap(true, Ordering::AcqRel) {
            return cur;
        }
        // Clears the flag even if this future is dropped mid-fetch.
        struct Release<'a>(&'a AtomicBool);
        impl Drop for Release<'_> {
            fn drop(&mut self) {
                self.0.store(false, Ordering::Release);
            }
        }
        let _release = Release(&self.refreshing[i]);
        match tokio::time::timeout(self.timeout, fetch(p)).await {
            Ok(Ok(ids)) => {
                let fresh = Arc::new(Cached {
                    at: Instant::now(),
                    ids,
                });
                self.lists[i].store(Some(fresh.clone()));
                Some(fresh)
            }
            Ok(Err(e)) => {
                tracing::warn!(provider = %p.name(), error = %e, "listing models failed");
                cur
            }
            Err(_) => {
                tracing::warn!(provider = %p.name(), "listing models timed out");
                cur
            }
        }
    }
}

/// Asks a provider for its model ids.
async fn fetch(p: &Provider) -> Result<Vec<String>, String> {
    let Some(resp) = p.get_models().await else {
        return Ok(Vec::new());
    };
    let resp = resp?;
    let body = Limited::new(resp.into_body(), MAX_LIST_BYTES)
        .collect()
        .await
        .map_err(|e| e.to_string())?;
    let v: Value = serde_json::from_slice(&body.to_bytes()).map_err(|e| e.to_string())?;
    Ok(v.get("data")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|m| m.get("id")?.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default())
}

/// The configured models and aliases (the shared builder), then what `"*"` providers list.
async fn build(app: &App) -> ModelList {
    let table = &app.routes;
    let mut list = ModelList::configured(
        table.providers.iter().map(|p| &p.config),
        table.alias_names.iter().map(String::as_str),
    );
    for (i, p) in table.providers.iter().enumerate() {
        if p.config.serves_any_model() {
            if let Some(c) = app.models.get(i, p).await {
                for id in &c.ids {
                    list.push(id, p.name());
                }
            }
        }
    }
    list
}

/// `GET /v1/models`: the OpenAI list format, or Anthropic's for an Anthropic client.
pub async fn list(app: &App, anthropic: bool) -> Response<ResBody> {
    let list = build(app).await.to_json();
    if anthropic {
        return crate::body::json_response(&model_list::anthropic_list(&list));
    }
    crate::body::json_response(&list)
}

/// `GET /v1/models/{id}`: that entry of the list, or 404, in the client's format.
pub async fn retrieve(app: &App, id: &str, anthropic: bool) -> Response<ResBody> {
    match model_list::find(&build(app).await.to_json(), id) {
        Ok(m) if anthropic => crate::body::json_response(&model_list::anthropic_entry(&m)),
        Ok(m) => crate::body::json_response(&m),
        Err(e) if anthropic => e.to_response(Dialect::Anthropic),
        Err(e) => e.to_response(Dialect::OpenAi),
    }
}
