//! The configuration schema: every section and key of `gateway.toml`, with its default.
//!
//! Defaults live here and only here (each `Default` impl), so the contract's table, the
//! repository's `gateway.toml` and the code cannot drift apart silently: a unit test parses the
//! shipped file and compares it with these defaults where they overlap.
//!
//! `kind` and `strategy` deserialize into enums with an `Unknown` arm instead of failing, so that
//! `validate()` can report them together with every other error rather than stopping at the first.

use serde::{Deserialize, Deserializer};
use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

/// The whole file.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub server: ServerConfig,
    pub pool: PoolConfig,
    pub models_cache: ModelsCacheConfig,
    pub routing: RoutingConfig,
    pub circuit_breaker: CircuitBreakerConfig,
    pub health: HealthConfig,
    pub providers: Vec<ProviderConfig>,
    pub models: Vec<ModelAlias>,
    pub clients: Vec<ClientConfig>,
    pub usage: UsageConfig,
    pub telemetry: TelemetryConfig,
    pub shared: SharedConfig,
}

/// `[server]`: the front listener, in the supervisor.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    /// Name of the environment variable holding the API token; "" = no token.
    pub auth_token_env: String,
    pub max_body_bytes: u64,
    pub allowed_hosts: Vec<String>,
    pub cors_allow_origins: Vec<String>,
    #[serde(with = "humantime_serde")]
    pub stream_ping_interval: Duration,
    /// A client that has not sent its whole request head by then is closed.
    #[serde(with = "humantime_serde")]
    pub header_read_timeout: Duration,
    /// Longest silence while a request body is being read.
    #[serde(with = "humantime_serde")]
    pub body_read_timeout: Duration,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            auth_token_env: "GATEWAY_TOKEN".into(),
            max_body_bytes: 10 * 1024 * 1024,
            allowed_hosts: Vec::new(),
            cors_allow_origins: Vec::new(),
            stream_ping_interval: Duration::from_secs(10),
            header_read_timeout: Duration::from_secs(30),
            body_read_timeout: Duration::from_secs(30),
        }
    }
}

/// `[pool]`: the supervised workers.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct PoolConfig {
    pub workers: u32,
    /// Worker `i` listens on `base_port + i`; 0 = any free ports.
    pub base_port: u16,
    /// Empty = this executable's hidden `worker` subcommand.
    pub worker_command: Vec<String>,
    pub worker_max_inflight: u32,
    pub worker_threads: u32,
    #[serde(with = "humantime_serde")]
    pub queue_timeout: Duration,
    pub max_queue: u32,
    #[serde(with = "humantime_serde")]
    pub heartbeat_interval: Duration,
    #[serde(with = "humantime_serde")]
    pub heartbeat_timeout: Duration,
    #[serde(with = "humantime_serde")]
    pub startup_timeout: Duration,
    #[serde(with = "humantime_serde")]
    pub shutdown_timeout: Duration,
    #[serde(with = "humantime_serde")]
    pub blocked_after: Duration,
    #[serde(with = "humantime_serde")]
    pub restart_backoff_initial: Duration,
    #[serde(with = "humantime_serde")]
    pub restart_backoff_max: Duration,
    pub max_restarts: u32,
    #[serde(with = "humantime_serde")]
    pub restart_window: Duration,
    /// 0 = off.
    pub max_rss_mb: u64,
    /// 0 = off.
    pub max_requests: u64,
    pub max_requests_jitter: u64,
    /// "" = `$XDG_RUNTIME_DIR/gateway`, else a private temporary directory.
    pub runtime_dir: String,
}

impl Default for PoolConfig {
    fn default() -> Self {
        Self {
            workers: 3,
            base_port: 8765,
            worker_command: Vec::new(),
            worker_max_inflight: 256,
            worker_threads: 1,
            queue_timeout: Duration::from_secs(30),
            max_queue: 1024,
            heartbeat_interval: Duration::from_secs(1),
            heartbeat_timeout: Duration::from_secs(5),
            startup_timeout: Duration::from_secs(10),
            shutdown_timeout: Duration::from_secs(30),
            blocked_after: Duration::from_secs(60),
            restart_backoff_initial: Duration::from_millis(100),
            restart_backoff_max: Duration::from_secs(30),
            max_restarts: 5,
            restart_window: Duration::from_secs(60),
            max_rss_mb: 0,
            max_requests: 0,
            max_requests_jitter: 0,
            runtime_dir: String::new(),
        }
    }
}

/// `[models_cache]`: the supervisor's `/v1/models` cache.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ModelsCacheConfig {
    #[serde(with = "humantime_serde")]
    pub ttl: Duration,
    #[serde(with = "humantime_serde")]
    pub min_refresh_interval: Duration,
}

impl Default for ModelsCacheConfig {
    fn default() -> Self {
        Self {
            ttl: Duration::from_secs(300),
            min_refresh_interval: Duration::from_secs(30),
        }
    }
}

/// `[routing]`: how a worker picks among a model's providers.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RoutingConfig {
    pub strategy: Strategy,
    pub max_attempts: u32,
    /// "" = sticky sessions off.
    pub sticky_header: String,
    /// The longest a provider's `Retry-After` may keep it cooling (a hostile or buggy one could
    /// otherwise park itself for days).
    #[serde(with = "humantime_serde")]
    pub max_cooldown: Duration,
}

impl Default for RoutingConfig {
    fn default() -> Self {
        Self {
            strategy: Strategy::Latency,
            max_attempts: 3,
            sticky_header: "x-session-id".into(),
            max_cooldown: Duration::from_secs(300),
        }
    }
}

/// `[circuit_breaker]`: per-provider breaker thresholds.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct CircuitBreakerConfig {
    pub failure_rate_threshold: f64,
    pub consecutive_failures: u32,
    pub half_open_successes: u32,
    #[serde(with = "humantime_serde")]
    pub open_timeout: Duration,
}

impl Default for CircuitBreakerConfig {
    fn default() -> Self {
        Self {
            failure_rate_threshold: 0.5,
            consecutive_failures: 5,
            half_open_successes: 3,
            open_timeout: Duration::from_secs(30),
        }
    }
}

/// `[health]`: background provider probes and the `/v1/health*` cache.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct HealthConfig {
    /// 0s = no background probes.
    #[serde(with = "humantime_serde")]
    pub probe_interval: Duration,
    #[serde(with = "humantime_serde")]
    pub probe_timeout: Duration,
    pub max_concurrent_probes: u32,
    #[serde(with = "humantime_serde")]
    pub cache_ttl: Duration,
}

impl Default for HealthConfig {
    fn default() -> Self {
        Self {
            probe_interval: Duration::from_secs(30),
            probe_timeout: Duration::from_secs(8),
            max_concurrent_probes: 10,
            cache_ttl: Duration::from_secs(10),
        }
    }
}

/// One `[[providers]]` entry.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ProviderConfig {
    pub name: String,
    pub kind: ProviderKind,
    #[serde(default)]
    pub base_url: String,
    /// Name of the environment variable holding the key; keys never live in this file.
    #[serde(default)]
    pub api_key_env: String,
    /// Model names served; `"*"` = any model (discovered from the provider).
    #[serde(default)]
    pub models: Vec<String>,
    #[serde(default = "default_weight")]
    pub weight: f64,
    /// 0 = unlimited; a limit for the whole pool, not per worker.
    #[serde(default)]
    pub max_concurrency: u32,
    #[serde(default = "default_connect_timeout", with = "humantime_serde")]
    pub connect_timeout: Duration,
    #[serde(default = "default_first_byte_timeout", with = "humantime_serde")]
    pub first_byte_timeout: Duration,
    #[serde(default = "default_idle_timeout", with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// `mock` only: delay before the first byte.
    #[serde(default, with = "humantime_serde")]
    pub latency: Option<Duration>,
    /// `mock` only: streaming pace; absent or 0 = as fast as possible.
    #[serde(default)]
    pub tokens_per_second: Option<f64>,
    /// The APIs served natively (`API_NAMES`); empty = the kind's default (`native_apis`).
    #[serde(default)]
    pub apis: Vec<String>,
    /// `max_tokens` sent when a translated request to an API that requires it has none.
    #[serde(default = "default_max_tokens")]
    pub default_max_tokens: u64,
    /// USD per million tokens, per upstream model; a model not listed has no cost.
    #[serde(default)]
    pub prices: std::collections::BTreeMap<String, Price>,
}

/// The names `[[providers]] apis` accepts.
pub const API_NAMES: &[&str] = &["chat", "messages", "responses", "completions", "embeddings"];

fn default_max_tokens() -> u64 {
    4096
}

/// One model's rates in `prices`, USD per million tokens. A cache rate left out is charged at
/// `input`: a cached token is never counted as free when the price list does not say so.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Price {
    pub input: f64,
    pub output: f64,
    #[serde(default)]
    pub cache_read: Option<f64>,
    #[serde(default)]
    pub cache_write: Option<f64>,
}

/// `[usage]`: the supervisor's usage ledger.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct UsageConfig {
    /// "auto" = `$XDG_STATE_HOME/gateway/usage.db` (else `~/.local/state/gateway/usage.db`);
    /// "off"; or a path.
    pub ledger: String,
    /// Rows older than this are deleted; "0s" = kept for ever.
    #[serde(with = "humantime_serde")]
    pub retention: Duration,
}

impl Default for UsageConfig {
    fn default() -> Self {
        Self {
            ledger: "auto".into(),
            retention: Duration::from_secs(90 * 86_400),
        }
    }
}

/// `[telemetry]`: OpenTelemetry traces, exported by the supervisor and by each worker.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct TelemetryConfig {
    /// The OTLP/HTTP collector's base URL (`/v1/traces` is appended); "" = off.
    pub otlp_endpoint: String,
    /// The `service.name` resource attribute of every span.
    pub service_name: String,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        Self {
            otlp_endpoint: String::new(),
            service_name: "gateway-supervisor".into(),
        }
    }
}

fn default_weight() -> f64 {
    1.0
}
fn default_connect_timeout() -> Duration {
    Duration::from_secs(5)
}
fn default_first_byte_timeout() -> Duration {
    Duration::from_secs(60)
}
fn default_idle_timeout() -> Duration {
    Duration::from_secs(120)
}

impl ProviderConfig {
    /// A provider with every optional key at its default; for tests and programmatic configs.
    pub fn new(name: &str, kind: ProviderKind, base_url: &str, models: &[&str]) -> Self {
        Self {
            name: name.into(),
            kind,
            base_url: base_url.into(),
            api_key_env: String::new(),
            models: models.iter().map(|m| m.to_string()).collect(),
            weight: default_weight(),
            max_concurrency: 0,
            connect_timeout: default_connect_timeout(),
            first_byte_timeout: default_first_byte_timeout(),
            idle_timeout: default_idle_timeout(),
            latency: None,
            tokens_per_second: None,
            prices: Default::default(),
            apis: Vec::new(),
            default_max_tokens: default_max_tokens(),
        }
    }

    /// Whether the provider serves `api` (one of `API_NAMES`) natively: as `apis` lists, or by
    /// its kind's default when `apis` is empty (openai: chat, responses, completions,
    /// embeddings; anthropic: messages; mock: all).
    pub fn native_api(&self, api: &str) -> bool {
        if !self.apis.is_empty() {
            return self.apis.iter().any(|a| a == api);
        }
        match self.kind {
            ProviderKind::OpenAi => api != "messages",
            ProviderKind::Anthropic => api == "messages",
            ProviderKind::Mock => true,
            ProviderKind::Unknown(_) => false,
        }
    }

    /// True when `models` contains `"*"`: the provider serves whatever it lists.
    pub fn serves_any_model(&self) -> bool {
        self.models.iter().any(|m| m == "*")
    }

    /// Whether this provider serves `model`: it lists it, or it lists `"*"`.
    pub fn serves(&self, model: &str) -> bool {
        !model.is_empty() && (self.serves_any_model() || self.models.iter().any(|m| m == model))
    }

    /// Why this provider cannot serve anything: its kind sends a key, `api_key_env` names a
    /// variable, and that variable is unset or empty in this process's environment.
    /// `api_key_env = ""` (the default) means no key is needed. Names the variable, never a value.
    pub fn missing_key(&self) -> Option<String> {
        let sends_key = matches!(self.kind, ProviderKind::OpenAi | ProviderKind::Anthropic);
        (sends_key && !self.api_key_env.is_empty() && self.api_key().is_none())
            .then(|| format!("${} is not set", self.api_key_env))
    }

    /// The key from the environment, if the variable is named, set and non-empty.
    /// Never log the returned value.
    pub fn api_key(&self) -> Option<String> {
        if self.api_key_env.is_empty() {
            return None;
        }
        std::env::var(&self.api_key_env)
            .ok()
            .filter(|k| !k.is_empty())
    }
}

/// Splits `provider/model` at the first `/`: provider names never contain one (validated),
/// model names may (`vllm/meta-llama/Llama-3.1-8B`). The one parser of alias targets and of
/// request models that name their provider.
pub fn split_provider_model(s: &str) -> Option<(&str, &str)> {
    s.split_once('/')
}

/// `provider/model` resolved against `providers`: the index of the provider named before the
/// first `/` and the model after it, when that provider serves the model; else `None`.
pub fn resolve_provider_model<'a, 'p>(
    providers: impl IntoIterator<Item = &'p ProviderConfig>,
    s: &'a str,
) -> Option<(usize, &'a str)> {
    let (prov, model) = split_provider_model(s)?;
    let (i, p) = providers
        .into_iter()
        .enumerate()
        .find(|(_, p)| p.name == prov)?;
    p.serves(model).then_some((i, model))
}

/// One `[[models]]` alias: a public name resolving to several `provider/model` targets.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ModelAlias {
    pub name: String,
    pub targets: Vec<String>,
}

/// One `[[clients]]` entry: a named client key with its own pool-wide limits. Every limit's
/// 0 means unlimited.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ClientConfig {
    pub name: String,
    pub token_env: String,
    /// Requests at once; over it a request waits.
    #[serde(default)]
    pub max_concurrency: u32,
    /// Requests per minute (sliding window); over it, 429.
    #[serde(default)]
    pub rpm: u64,
    /// Tokens (input + output, cache included) per minute (sliding window); over it, 429.
    #[serde(default)]
    pub tpm: u64,
    /// Tokens per UTC day; over it, 429.
    #[serde(default)]
    pub daily_tokens: u64,
    /// USD per UTC calendar month, from the providers' `prices`; over it, 429.
    #[serde(default)]
    pub monthly_usd: f64,
}

impl ClientConfig {
    /// Whether any pool-wide limit applies to this client. Only the front listener counts
    /// them, so a worker's own port refuses such a client (`admission::Admission::front_only`).
    pub fn has_limits(&self) -> bool {
        self.max_concurrency != 0
            || self.rpm != 0
            || self.tpm != 0
            || self.daily_tokens != 0
            || self.monthly_usd != 0.0
    }
}

/// Provider kinds. `Unknown` only exists between parsing and `validate()`, which rejects it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ProviderKind {
    OpenAi,
    Anthropic,
    Mock,
    Unknown(String),
}

impl ProviderKind {
    pub const NAMES: &'static [&'static str] = &["openai", "anthropic", "mock"];

    pub fn as_str(&self) -> &str {
        match self {
            Self::OpenAi => "openai",
            Self::Anthropic => "anthropic",
            Self::Mock => "mock",
            Self::Unknown(s) => s,
        }
    }
}

impl fmt::Display for ProviderKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for ProviderKind {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(match String::deserialize(d)?.as_str() {
            "openai" => Self::OpenAi,
            "anthropic" => Self::Anthropic,
            "mock" => Self::Mock,
            other => Self::Unknown(other.to_string()),
        })
    }
}

/// Provider selection strategies. `Unknown` only exists until `validate()` rejects it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Strategy {
    Latency,
    RoundRobin,
    Weighted,
    Availability,
    LeastInflight,
    Unknown(String),
}

impl Strategy {
    pub const NAMES: &'static [&'static str] = &[
        "latency",
        "round_robin",
        "weighted",
        "availability",
        "least_inflight",
    ];

    pub fn as_str(&self) -> &str {
        match self {
            Self::Latency => "latency",
            Self::RoundRobin => "round_robin",
            Self::Weighted => "weighted",
            Self::Availability => "availability",
            Self::LeastInflight => "least_inflight",
            Self::Unknown(s) => s,
        }
    }
}

impl fmt::Display for Strategy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for Strategy {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(match String::deserialize(d)?.as_str() {
            "latency" => Self::Latency,
            "round_robin" => Self::RoundRobin,
            "weighted" => Self::Weighted,
            "availability" => Self::Availability,
            "least_inflight" => Self::LeastInflight,
            other => Self::Unknown(other.to_string()),
        })
    }
}

/// `[shared]`: state shared by several hosts through Redis or Valkey (`gateway::shared`).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct SharedConfig {
    pub backend: SharedBackend,
    /// The environment variable holding the Redis URL (with its password, if any); the URL is
    /// never written in the file and never logged.
    pub url_env: String,
    /// Prepended to every key, so several gateways can share one Redis.
    pub key_prefix: String,
    /// A host that stops renewing loses its leases after this.
    #[serde(with = "humantime_serde")]
    pub lease_ttl: Duration,
    pub on_unavailable: OnUnavailable,
}

impl Default for SharedConfig {
    fn default() -> Self {
        Self {
            backend: SharedBackend::Local,
            url_env: "GATEWAY_REDIS_URL".into(),
            key_prefix: "gateway:".into(),
            lease_ttl: Duration::from_secs(30),
            on_unavailable: OnUnavailable::Local,
        }
    }
}

/// `shared.backend`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SharedBackend {
    /// This host only: no shared state.
    Local,
    /// Redis or Valkey.
    Redis,
}

/// `shared.on_unavailable`: what a request does while Redis cannot be reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnUnavailable {
    /// Fall back to this host's own limits.
    Local,
    /// Answer 503 with `Retry-After`.
    Reject,
}
