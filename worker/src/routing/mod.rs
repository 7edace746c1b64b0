//! Routing: from a request's model name to an ordered list of (provider, upstream model)
//! candidates. `candidates` resolves the name (aliases first, then `provider/model` naming a
//! provider that serves that model, then providers listing the model, then providers serving
//! `"*"`), keeps those that serve the endpoint's API natively or by translation and have their
//! key, and `strategy::order` puts the strategy's pick first and the rest after it, so failover
//! can walk the list; providers serving the API natively come before translated ones. The table is an immutable snapshot behind an `ArcSwap`: selection takes no lock.
//! A provider whose key variable is unset is out of rotation for the life of the process (the
//! environment does not change), so it is dropped here; the candidates stay in the list whatever
//! their breaker says, and `proxy` skips the ones that are open or cooling as it walks it, so
//! that the skip and the attempt see the same moment.

pub mod strategy;

use crate::endpoint::Endpoint;
use crate::providers::Provider;
use gateway::config::{resolve_provider_model, Config, Strategy};
use gateway::provider_permits::ProviderLimiter;
use gateway::ConfigMap;
use gateway::{ApiError, ErrorKind};
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
    aliases: ConfigMap<String, Vec<Target>>,
    /// Model name -> providers listing it explicitly.
    exact: ConfigMap<String, Vec<Target>>,
    /// Providers whose `models` contains `"*"`.
    wildcard: Vec<Target>,
    pub strategy: Strategy,
    pub max_attempts: usize,
    /// `routing.max_cooldown`: the cap on a provider's `Retry-After`.
    pub max_cooldown: Duration,
    /// The round-robin position.
    pub rr: AtomicUsize,
    /// Pool-wide provider permits and how long to wait for them.
    pub limits: Limits,
}

/// Waiting for a provider's `max_concurrency` permit.
pub struct Limits {
    /// The pool-wide permit table; `None` = no limits enforced (unit tests).
    pub limiter: Option<ProviderLimiter>,
    /// With `[shared]`: the hosts-wide leases, taken after the local permit.
    pub shared: Option<gateway::shared::Shared>,
    /// `pool.queue_timeout`: the longest wait for a permit.
    pub queue_timeout: Duration,
    /// `server.stream_ping_interval`: a streaming request waiting longer gets pings.
    pub ping_interval: Duration,
}

impl RouteTable {
    pub fn new(config: &Config, providers: Vec<Arc<Provider>>) -> Self {
        let mut exact: ConfigMap<String, Vec<Target>> = ConfigMap::default();
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
                        let (provider, model) =
                            resolve_provider_model(providers.iter().map(|p| &p.config), t)?;
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
                shared: None,
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
        // `local/llama3.2`: that provider only, with the bare name upstream. A name whose
        // prefix is no provider serving the rest (`meta-llama/Llama-3.1-8B`) is a plain name.
        if let Some((provider, m)) =
            resolve_provider_model(self.providers.iter().map(|p| &p.config), model)
        {
            return vec![Target {
                provider,
                rewrite: Some(Arc::from(m)),
            }];
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
    /// Errors: 404 for an unknown model, 400 when no provider of the model speaks this API, 503
    /// naming the variables when every provider that does is missing its key.
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
            .filter(|t| self.providers[t.provider].route(endpoint).is_some())
            .cloned()
            .collect();
        if ok.is_empty() {
            let names: Vec<&str> = all
                .iter()
                .map(|t| self.providers[t.provider].name())
                .collect();
            return Err(ApiError::new(
                ErrorKind::BadRequest,
                format!(
                    "model `{model}` is served only by provider(s) {} which do not serve the `{}` API \
                     (see `apis` in [[providers]]); use another API for this model",
                    names.join(", "),
                    endpoint.api_name()
                ),
            ));
        }
        let missing: Vec<String> = ok
            .iter()
            .filter_map(|t| {
                let p = &self.providers[t.provider];
                Some(format!("`{}` ({})", p.name(), p.missing_key.as_deref()?))
            })
            .collect();
        ok.retain(|t| self.providers[t.provider].missing_key.is_none());
        if ok.is_empty() {
            // 503, not 401: the caller's credentials are fine; the gateway lacks a provider key.
            return Err(ApiError::new(
                ErrorKind::Unavailable,
                format!(
                    "model `{model}` cannot be served: provider(s) {} out of rotation; \
                     set the variable in the gateway's environment and restart it",
                    missing.join(", ")
                ),
            ));
        }
        strategy::order(self, &mut ok);
        // Native providers first, each group in the strategy's order: a translation costs
        // fidelity (documented drops), so it is the fallback when a native provider exists.
        let native = |t: &Target| {
            self.providers[t.provider].route(endpoint) == Some(crate::providers::Route::Native)
        };
        ok.sort_by_key(|t| !native(t));
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
                    gateway::provider_permits::ProviderLimiter::local().unwrap(),
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
        // Anthropic dialect: the mock target serves it natively and comes first; the OpenAI
        // target follows, translated (Messages -> Chat).
        let c = t.candidates("fast", Endpoint::Messages).unwrap();
        assert_eq!(names(&t, &c), ["demo", "oa"]);
        assert_eq!(c[0].rewrite.as_deref(), Some("demo"));
        assert_eq!(
            t.providers[c[1].provider].route(Endpoint::Messages),
            Some(crate::providers::Route::Translate {
                from: crate::translate::Api::Messages,
                to: crate::translate::Api::Chat
            })
        );
        // Native first, then the wildcard OpenAI provider, translated.
        assert_eq!(
            names(&t, &t.candidates("claude", Endpoint::Messages).unwrap()),
            ["an", "any"]
        );
        // An OpenAI-only model on count_tokens (never translated): a clear 400, not a 404,
        // naming the API.
        let e = t.candidates("gpt", Endpoint::CountTokens).unwrap_err();
        assert_eq!(e.kind, ErrorKind::BadRequest);
        assert!(e.message.contains("`messages`"), "{}", e.message);
        // Unknown model with a wildcard provider: the wildcard takes it (OpenAI) ...
        assert_eq!(
            names(&t, &t.candidates("whatever", Endpoint::Embeddings).unwrap()),
            ["any"]
        );
        // ... and on the Anthropic API too, translated.
        assert_eq!(
            names(&t, &t.candidates("whatever", Endpoint::Messages).unwrap()),
            ["any"]
        );
    }

    #[test]
    fn provider_prefix_names_that_provider_and_sends_the_bare_model() {
        let t = table(
            Strategy::RoundRobin,
            vec![
                ProviderConfig::new(
                    "local",
                    ProviderKind::OpenAi,
                    "http://127.0.0.1:1/v1",
                    &["llama3.2"],
                ),
                ProviderConfig::new("any", ProviderKind::OpenAi, "http://127.0.0.1:1/v1", &["*"]),
            ],
            vec![],
        );
        let c = t
            .candidates("local/llama3.2", Endpoint::ChatCompletions)
            .unwrap();
        assert_eq!(names(&t, &c), ["local"]);
        assert_eq!(c[0].rewrite.as_deref(), Some("llama3.2"));
        let c = t
            .candidates("any/org/m", Endpoint::ChatCompletions)
            .unwrap();
        assert_eq!(names(&t, &c), ["any"]);
        assert_eq!(c[0].rewrite.as_deref(), Some("org/m"));
        // No provider prefix, or one that does not serve the rest: a plain model name.
        for plain in ["meta-llama/Llama-3.1-8B", "local/other"] {
            let c = t.candidates(plain, Endpoint::ChatCompletions).unwrap();
            assert_eq!(names(&t, &c), ["any"], "{plain}");
            assert_eq!(c[0].rewrite, None);
        }
    }

    #[test]
    fn a_provider_without_its_key_is_skipped_and_alone_is_a_503_naming_the_variable() {
        let mut nokey = ProviderConfig::new(
            "nokey",
            ProviderKind::OpenAi,
            "http://127.0.0.1:1/v1",
            &["m"],
        );
        nokey.api_key_env = "GW_UNIT_SURELY_UNSET_KEY".into();
        let free = ProviderConfig::new(
            "free",
            ProviderKind::OpenAi,
            "http://127.0.0.1:1/v1",
            &["m", "f"],
        );
        let t = table(
            Strategy::RoundRobin,
            vec![nokey.clone(), free],
            vec![ModelAlias {
                name: "fast".into(),
                targets: vec!["nokey/m".into(), "free/f".into()],
            }],
        );
        for _ in 0..3 {
            let c = t.candidates("m", Endpoint::ChatCompletions).unwrap();
            assert_eq!(names(&t, &c), ["free"]);
            let c = t.candidates("fast", Endpoint::ChatCompletions).unwrap();
            assert_eq!(names(&t, &c), ["free"]);
        }
        let e = t
            .candidates("nokey/m", Endpoint::ChatCompletions)
            .unwrap_err();
        assert_eq!(e.kind, ErrorKind::Unavailable);
        assert!(
            e.message.contains("$GW_UNIT_SURELY_UNSET_KEY is not set"),
            "{}",
            e.message
        );
        // `api_key_env = ""`: no key needed, in rotation.
        nokey.api_key_env.clear();
        let t = table(Strategy::RoundRobin, vec![nokey], vec![]);
        assert_eq!(
            t.candidates("m", Endpoint::ChatCompletions).unwrap().len(),
            1
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
