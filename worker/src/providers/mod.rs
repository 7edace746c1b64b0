//! The provider table: one `Provider` per `[[providers]]` entry with its pooled upstream client,
//! its credentials (as sensitive header values, never logged), live statistics and metrics.
//!
//! Kinds: `openai` (any OpenAI-compatible API), `anthropic` (the Messages API) and `mock`
//! (answers in-process). A provider receives requests for the APIs it serves natively
//! (`[[providers]] apis`, by default its kind's), and Chat/Messages/Responses requests for
//! another of those three translated (`route`).

pub mod anthropic;
pub mod mock;
pub mod openai;
pub mod state;

use crate::breaker::{Breaker, BreakerConfig, CircuitState};
use crate::connect::{ClientFactory, UpstreamClient};
use crate::endpoint::{Endpoint, EndpointApi};
use crate::metrics::{Metrics, ProviderMetrics};
use crate::translate::Api;
use gateway::config::{ProviderConfig, ProviderKind};
use http::{HeaderName, HeaderValue};
use state::ProviderState;
use std::sync::Arc;

/// How a provider serves one endpoint (`Provider::route`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    Native,
    /// The client speaks `from`; the provider is sent (and answers in) `to`.
    Translate {
        from: Api,
        to: Api,
    },
}

/// One configured provider.
pub struct Provider {
    pub config: ProviderConfig,
    /// `base_url` without a trailing slash.
    pub base: String,
    /// The upstream URI of each endpoint (`Endpoint::ALL` order) when it parses, built once:
    /// a request without a query string clones one instead of formatting and parsing a URI.
    uris: [Option<http::Uri>; 6],
    /// The credential header sent upstream (`authorization` or `x-api-key`), marked sensitive so
    /// that no `Debug` output shows it.
    pub auth: Option<(HeaderName, HeaderValue)>,
    /// The key itself, to redact wherever the provider sends it back.
    pub secret: gateway::headers::Secret,
    /// Why the provider is out of rotation for good: "$VAR is not set" when its key variable
    /// is unset or empty (`ProviderConfig::missing_key`, read once: the environment is fixed).
    pub missing_key: Option<String>,
    /// `Proxy-Authorization` for a forward proxy with credentials (sensitive too).
    pub proxy_auth: Option<HeaderValue>,
    /// `None` for `mock`, which never opens a connection.
    pub client: Option<UpstreamClient>,
    pub state: ProviderState,
    pub metrics: ProviderMetrics,
    /// This provider's circuit breaker (lock-free; its hook writes `metrics`).
    pub breaker: Arc<Breaker>,
    /// The name as the `x-gateway-provider` value of every answer it gives, built once.
    pub name_header: Option<HeaderValue>,
}

/// The endpoint's path below a `kind` provider's `base_url`: an OpenAI base ends in `/v1`, an
/// Anthropic one is the bare host, whichever APIs `apis` says the provider serves (an
/// OpenAI-compatible server serving Messages, an Anthropic-kind server serving Chat).
fn suffix(kind: &ProviderKind, endpoint: Endpoint) -> String {
    let s = endpoint.upstream_suffix();
    let anthropic_path = s.starts_with("/v1/");
    match kind {
        ProviderKind::OpenAi if anthropic_path => s["/v1".len()..].to_string(),
        ProviderKind::Anthropic if !anthropic_path => format!("/v1{s}"),
        _ => s.to_string(),
    }
}

/// `base` + the endpoint's suffix + `?query`.
fn join_uri(
    base: &str,
    kind: &ProviderKind,
    endpoint: Endpoint,
    query: Option<&str>,
) -> Result<http::Uri, http::Error> {
    let suffix = suffix(kind, endpoint);
    let mut s = String::with_capacity(base.len() + suffix.len() + 1 + query.map_or(0, str::len));
    s.push_str(base);
    s.push_str(&suffix);
    if let Some(q) = query {
        s.push('?');
        s.push_str(q);
    }
    Ok(http::Uri::try_from(s)?)
}

impl std::fmt::Debug for Provider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Deliberately leaves out `auth`.
        f.debug_struct("Provider")
            .field("name", &self.config.name)
            .field("base", &self.base)
            .finish()
    }
}

impl Provider {
    pub fn new(
        config: ProviderConfig,
        factory: &ClientFactory,
        metrics: &Metrics,
        breaker: BreakerConfig,
        table: gateway::provider_permits::ProviderLimiter,
    ) -> Self {
        let key = config.api_key();
        let secret = gateway::headers::Secret::new(key.as_deref());
        let auth = match config.kind {
            ProviderKind::OpenAi => key.and_then(|k| openai::auth_header(&k)),
            ProviderKind::Anthropic => key.and_then(|k| anthropic::auth_header(&k)),
            _ => None,
        };
        let client = match config.kind {
            ProviderKind::Mock => None,
            _ => factory.client(&config.base_url, config.connect_timeout),
        };
        let proxy_auth = match config.kind {
            ProviderKind::Mock => None,
            _ => factory.forward_proxy_auth(&config.base_url),
        };
        let pm = metrics.provider(&config.name);
        let hook_metrics = pm.clone();
        let name = config.name.clone();
        let hook = Arc::new(
            move |from: CircuitState, to: CircuitState, made_here: bool| {
                if !made_here {
                    // Made by another worker: this one's gauge follows, the count is theirs.
                    hook_metrics.circuit_state.set(to as i64);
                    return;
                }
                hook_metrics.transition(from, to);
                // Transitions are rare and operators want to see them; warn when a provider is cut.
                if to == CircuitState::Open {
                    tracing::warn!(provider = %name, from = from.as_str(), "circuit opened");
                } else {
                    tracing::info!(provider = %name, from = from.as_str(), to = to.as_str(), "circuit state changed");
                }
            },
        );
        let base = config.base_url.trim_end_matches('/').to_string();
        let uris = Endpoint::ALL.map(|e| join_uri(&base, &config.kind, e, None).ok());
        Self {
            base,
            uris,
            missing_key: config.missing_key(),
            auth,
            secret,
            proxy_auth,
            client,
            state: ProviderState::default(),
            metrics: pm,
            breaker: Breaker::new(breaker, hook, table, &config.name),
            name_header: HeaderValue::from_str(&config.name).ok(),
            config,
        }
    }

    pub fn name(&self) -> &str {
        &self.config.name
    }

    /// Whether this provider serves `endpoint` natively (`[[providers]] apis`).
    pub fn speaks(&self, endpoint: Endpoint) -> bool {
        !matches!(self.config.kind, ProviderKind::Unknown(_))
            && self.config.native_api(endpoint.api_name())
    }

    /// How this provider can serve `endpoint`: natively, translated to another API it serves
    /// natively (Chat, then Messages, then Responses: the first it serves), or not at all.
    /// Completions, embeddings and count_tokens are never translated.
    pub fn route(&self, endpoint: Endpoint) -> Option<Route> {
        if self.speaks(endpoint) {
            return Some(Route::Native);
        }
        let from = endpoint.api()?;
        [Api::Chat, Api::Messages, Api::Responses]
            .into_iter()
            .find(|to| *to != from && self.speaks(Endpoint::of_api(*to)))
            .map(|to| Route::Translate { from, to })
    }

    /// Adds the provider's credentials and dialect headers to an upstream request.
    pub fn apply_headers(&self, headers: &mut http::HeaderMap) {
        if let Some((name, value)) = &self.auth {
            headers.insert(name.clone(), value.clone());
        }
        if let Some(v) = &self.proxy_auth {
            headers.insert(http::header::PROXY_AUTHORIZATION, v.clone());
        }
        if self.config.kind == ProviderKind::Anthropic {
            anthropic::default_headers(headers);
        }
    }

    /// The upstream URI for `endpoint`, keeping the client's query string.
    pub fn uri(&self, endpoint: Endpoint, query: Option<&str>) -> Result<http::Uri, http::Error> {
        match (query, &self.uris[endpoint as usize]) {
            (None, Some(u)) => Ok(u.clone()),
            _ => join_uri(&self.base, &self.config.kind, endpoint, query),
        }
    }

    /// The models listing URI (`GET`), for providers whose `models` is `"*"`.
    pub fn models_uri(&self) -> Option<http::Uri> {
        let path = match self.config.kind {
            ProviderKind::OpenAi => "/models",
            ProviderKind::Anthropic => "/v1/models",
            _ => return None,
        };
        http::Uri::try_from(format!("{}{path}", self.base)).ok()
    }

    /// The provider's free model-list call with its key headers: the health probe and model
    /// discovery both make it. `None` for kinds with no such call (mock); `Err` for a transport
    /// failure or a non-2xx answer.
    pub async fn get_models(
        &self,
    ) -> Option<Result<http::Response<gateway::conn_pool::Pooled>, String>> {
        let (client, uri) = (self.client.as_ref()?, self.models_uri()?);
        let mut req = http::Request::get(uri).body(Default::default()).ok()?;
        self.apply_headers(req.headers_mut());
        Some(match client.request(req).await {
            Err(e) => Err(crate::error::error_chain(&e)),
            Ok(r) if r.status().is_success() => Ok(r),
            Ok(r) => Err(format!("status {}", r.status())),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each kind's base-URL convention holds for every API it may serve.
    #[test]
    fn paths_follow_the_kinds_base_url_convention() {
        let oa = ProviderKind::OpenAi;
        let an = ProviderKind::Anthropic;
        assert_eq!(suffix(&oa, Endpoint::ChatCompletions), "/chat/completions");
        assert_eq!(suffix(&oa, Endpoint::Messages), "/messages");
        assert_eq!(suffix(&oa, Endpoint::CountTokens), "/messages/count_tokens");
        assert_eq!(suffix(&an, Endpoint::Messages), "/v1/messages");
        assert_eq!(
            suffix(&an, Endpoint::ChatCompletions),
            "/v1/chat/completions"
        );
        assert_eq!(suffix(&an, Endpoint::Responses), "/v1/responses");
    }
}
