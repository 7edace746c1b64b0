//! Routing: from a request's model name to an ordered list of (provider, upstream model)
//! candidates. `candidates` resolves the name (aliases first, then providers listing the model,
//! then providers serving `"*"`), keeps those that speak the endpoint's dialect, and
//! `strategy::order` puts the strategy's pick first and the rest after it, so failover can walk
//! the list. The table is an immutable snapshot behind an `ArcSwap`: selection takes no lock.
//! The candidates stay in the list whatever their breaker says; `proxy` skips the ones that are
//! open or cooling as it walks it, so that the skip and the attempt see the same moment.

pub mod strategy;

use crate::endpoint::Endpoint;
use crate::providers::Provider;
use gateway::config::{Config, Strategy};
use gateway::provider_slots::ProviderLimiter;
use gateway::{ApiError, ErrorKind};
use std::collections::HashMap;
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;
use std::time::Duration;

/// One place a request may go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// Index into `RouteTable::providers`.
    pub provider: usize,
    /// The model to put in the body, when it differs from the requested name (alias targets).
    pub rewrite: Option<Arc<str>>,
}

/// The routing snapshot.
pub struct RouteTable {
    pub providers: Vec<Arc<Provider>>,
    /// Alias names in configuration order, for `/v1/models`.
    pub alias_names: Vec<String>,
    /// Alias name -> its targets, in configuration order.
    aliases: HashMap<String, Vec<Target>>,
    /// Model name -> providers listing it explicitly.
    exact: HashMap<String, Vec<Target>>,
    /// Providers whose `models` contains `"*"`.
    wildcard: Vec<Target>,
    pub strategy: Strategy,
    pub max_attempts: usize,
    /// `routing.max_cooldown`: the cap on a provider's `Retry-After`.
    pub max_cooldown: Duration,
    /// The round-robin position.
    pub rr: AtomicUsize,
    /// Pool-wide provider slots and how long to wait for them.
    pub limits: Limits,
}

/// Waiting for a provider's `max_concurrency` slot.
pub struct Limits {
    /// The pool-wide slot table; `None` = no limits enforced (unit tests).
    pub limiter: Option<ProviderLimiter>,
    /// `pool.queue_timeout`: the longest wait for a slot.
    pub queue_timeout: Duration,
    /// `server.stream_ping_interval`: a streaming request waiting longer gets pings.
    pub ping_interval: Duration,
}

impl RouteTable {
    pub fn new(config: &Config, providers: Vec<Arc<Provider>>) -> Self {
        let index: HashMap<&str, usize> = providers
            .iter()
            .enumerate()
            .map(|(i, p)| (p.name(), i))
            .collect();
        let mut exact: HashMap<String, Vec<Target>> = HashMap::new();
        let mut wildcard = Vec::new();
        for (i, p) in providers.iter().enumerate() {
            for m in &p.config.models {
                let t = Target {
                    provider: i,
                    rewrite: None,
                };
                if m == "*" {
                    wildcard.push(t);
                } else {
                    exact.entry(m.clone()).or_default().push(t);
                }
            }
        }
        let aliases = config
            .models
            .iter()
            .map(|a| {
                let targets = a
                    .targets
                    .iter()
                    .filter_map(|t| {
                        let (prov, model) = t.split_once('/')?;
                        let provider = *index.get(prov)?;
                        let rewrite = (model != a.name).then(|| Arc::from(model));
                        Some(Target { provider, rewrite })
                    })
                    .collect();
                (a.name.clone(), targets)
            })
            .collect();
        Self {
            providers,
            alias_names: config.models.iter().map(|a| a.name.clone()).collect(),
            aliases,
            exact,
            wildcard,
            strategy: config.routing.strategy.clone(),
            max_attempts: config.routing.max_attempts.max(1) as usize,
            max_cooldown: config.routing.max_cooldown,
            rr: AtomicUsize::new(0),
            limits: Limits {
                limiter: None,
                queue_timeout: config.pool.queue_timeout,
                ping_interval: config.server.stream_ping_interval,
            },
        }
    }

    /// Every target `model` resolves to, before the dialect filter.
    fn resolve(&self, model: &str) -> Vec<Target> {
        if let Some(t) = self.aliases.get(model) {
            return t.clone();
        }
        let mut out = self.exact.get(model).cloned().unwrap_or_default();
        for w in &self.wildcard {
            if !out.iter().any(|t| t.provider == w.provider) {
                out.push(w.clone());
            }
        }
        out
    }

    /// The ordered candidates for `model` on `endpoint`: the strategy's pick first.
    /// Errors: 404 for an unknown model, 400 when no provider of the model speaks this API.
    pub fn candidates(&self, model: &str, endpoint: Endpoint) -> Result<Vec<Target>, ApiError> {
        let all = self.resolve(model);
        if all.is_empty() {
            return Err(ApiError::new(
                ErrorKind::NotFound,
                format!("The model `{model}` does not exist or is not served by this gateway"),
            ));
        }
        let mut ok: Vec<Target> = all
            .iter()
            .filter(|t| self.providers[t.provider].speaks(endpoint))
            .cloned()
            .collect();
        if ok.is_empty() {
            let names: Vec<&str> = all
                .iter()
                .map(|t| self.providers[t.provider].name())
                .collect();
            let api = match endpoint.dialect() {
                gateway::Dialect::Anthropic => "the Anthropic Messages API",
                gateway::Dialect::OpenAi => "the OpenAI API",
            };
            return Err(ApiError::new(
                ErrorKind::BadRequest,
                format!(
                    "model `{model}` is served only by provider(s) {} which do not speak {api}; \
                     use the other API for this model",
                    names.join(", ")
                ),
            ));
        }
        strategy::order(self, &mut ok);
        Ok(ok)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::connect::ClientFactory;
    use crate::metrics::Metrics;
    use gateway::config::{ModelAlias, ProviderConfig, ProviderKind};

    pub(crate) fn table(
        strategy: Strategy,
        providers: Vec<ProviderConfig>,
        aliases: Vec<ModelAlias>,
    ) -> RouteTable {
        let factory =
            ClientFactory::new(hyper_util::client::proxy::matcher::Matcher::builder().build());
        let metrics = Metrics::new();
        let mut config = Config::default();
        config.routing.strategy = strategy;
        config.models = aliases;
        let ps = providers
            .into_iter()
            .map(|p| {
                Arc::new(Provider::new(
                    p,
                    &factory,
                    &metrics,
                    (&config.circuit_breaker).into(),
                ))
            })
            .collect();
        RouteTable::new(&config, ps)
    }

    fn names(t: &RouteTable, c: &[Target]) -> Vec<String> {
        c.iter()
            .map(|x| t.providers[x.provider].name().to_string())
            .collect()
    }

    #[test]
    fn resolves_models_aliases_and_wildcards_by_dialect() {
        let t = table(
            Strategy::RoundRobin,
            vec![
                ProviderConfig::new(
                    "oa",
                    ProviderKind::OpenAi,
                    "http://127.0.0.1:1/v1",
                    &["gpt"],
                ),
                ProviderConfig::new(
                    "an",
                    ProviderKind::Anthropic,
                    "http://127.0.0.1:1",
                    &["claude"],
                ),
                ProviderConfig::new("any", ProviderKind::OpenAi, "http://127.0.0.1:1/v1", &["*"]),
                ProviderConfig::new("demo", ProviderKind::Mock, "", &["demo"]),
            ],
            vec![ModelAlias {
                name: "fast".into(),
                targets: vec!["oa/gpt".into(), "demo/demo".into()],
            }],
        );
        let c = t.candidates("gpt", Endpoint::ChatCompletions).unwrap();
        let mut n = names(&t, &c);
        n.sort();
        assert_eq!(n, ["any", "oa"]);
        let c = t.candidates("fast", Endpoint::ChatCompletions).unwrap();
        assert_eq!(c.len(), 2);
        assert!(c.iter().all(|x| x.rewrite.is_some()));
        // Anthropic dialect: only the mock target of the alias.
        let c = t.candidates("fast", Endpoint::Messages).unwrap();
        assert_eq!(names(&t, &c), ["demo"]);
        assert_eq!(c[0].rewrite.as_deref(), Some("demo"));
        assert_eq!(t.candidates("claude", Endpoint::Messages).unwrap().len(), 1);
        // An OpenAI-only model on the Anthropic API: a clear 400, not a 404.
        let e = t.candidates("gpt", Endpoint::CountTokens).unwrap_err();
        assert_eq!(e.kind, ErrorKind::BadRequest);
        // Unknown model with a wildcard provider: the wildcard takes it (OpenAI) ...
        assert_eq!(
            names(&t, &t.candidates("whatever", Endpoint::Embeddings).unwrap()),
            ["any"]
        );
        // ... but not on the Anthropic API.
        assert_eq!(
            t.candidates("whatever", Endpoint::Messages)
                .unwrap_err()
                .kind,
            ErrorKind::BadRequest
        );
    }

    #[test]
    fn unknown_model_is_404() {
        let t = table(
            Strategy::Latency,
            vec![ProviderConfig::new(
                "demo",
                ProviderKind::Mock,
                "",
                &["demo"],
            )],
            vec![],
        );
        assert_eq!(
            t.candidates("nope", Endpoint::Messages).unwrap_err().kind,
            ErrorKind::NotFound
        );
    }
}
