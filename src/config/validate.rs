//! Semantic checks that serde cannot express. `validate()` collects every problem before
//! returning, so a user fixes the whole file in one pass (Horust, pingora `ServerConf::validate`).

use super::schema::{split_provider_model, Config, ProviderKind, Strategy, API_NAMES};
use std::collections::HashSet;

/// One semantic problem: the key path it concerns and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    pub key: String,
    pub message: String,
}

struct Collector(Vec<Violation>);

impl Collector {
    fn err(&mut self, key: impl Into<String>, message: impl Into<String>) {
        self.0.push(Violation {
            key: key.into(),
            message: message.into(),
        });
    }
}

/// Every violation in `cfg`; empty when the configuration is usable.
pub fn validate(cfg: &Config) -> Vec<Violation> {
    let mut c = Collector(Vec::new());
    check_server(cfg, &mut c);
    check_pool(cfg, &mut c);
    check_routing(cfg, &mut c);
    check_providers(cfg, &mut c);
    check_aliases(cfg, &mut c);
    check_clients(cfg, &mut c);
    check_usage(cfg, &mut c);
    check_telemetry(cfg, &mut c);
    check_shared(cfg, &mut c);
    c.0
}

fn check_server(cfg: &Config, c: &mut Collector) {
    let s = &cfg.server;
    if !s.listen.ip().is_loopback() && s.auth_token_env.trim().is_empty() {
        c.err(
            "server.listen",
            format!(
                "{} is not a loopback address and no auth token is configured; \
                 set server.auth_token_env or listen on 127.0.0.1",
                s.listen
            ),
        );
    }
    if s.max_body_bytes == 0 {
        c.err("server.max_body_bytes", "must be greater than 0");
    }
    if s.stream_ping_interval.is_zero() {
        c.err("server.stream_ping_interval", "must be greater than 0s");
    }
    if s.header_read_timeout.is_zero() {
        c.err("server.header_read_timeout", "must be greater than 0s");
    }
    if s.body_read_timeout.is_zero() {
        c.err("server.body_read_timeout", "must be greater than 0s");
    }
}

fn check_pool(cfg: &Config, c: &mut Collector) {
    let p = &cfg.pool;
    if p.workers < 1 {
        c.err("pool.workers", "must be at least 1");
    }
    if p.base_port != 0 {
        let last = u32::from(p.base_port) + p.workers.saturating_sub(1);
        if last > 65535 {
            c.err(
                "pool.base_port",
                format!(
                    "ports {}..={last} for {} workers do not fit below 65536",
                    p.base_port, p.workers
                ),
            );
        }
    }
    if p.worker_max_inflight < 1 {
        c.err("pool.worker_max_inflight", "must be at least 1");
    }
    if p.worker_threads < 1 {
        c.err("pool.worker_threads", "must be at least 1");
    }
    if p.heartbeat_interval.is_zero() {
        c.err("pool.heartbeat_interval", "must be greater than 0s");
    }
    if p.heartbeat_timeout <= p.heartbeat_interval {
        c.err(
            "pool.heartbeat_timeout",
            format!(
                "must be longer than pool.heartbeat_interval ({} <= {})",
                humantime::format_duration(p.heartbeat_timeout),
                humantime::format_duration(p.heartbeat_interval)
            ),
        );
    }
    if p.startup_timeout.is_zero() {
        c.err("pool.startup_timeout", "must be greater than 0s");
    }
    if p.restart_backoff_initial > p.restart_backoff_max {
        c.err(
            "pool.restart_backoff_initial",
            "must not exceed pool.restart_backoff_max",
        );
    }
    if p.worker_command
        .first()
        .is_some_and(|s| s.trim().is_empty())
    {
        c.err("pool.worker_command", "the program name must not be empty");
    }
}

fn check_routing(cfg: &Config, c: &mut Collector) {
    if let Strategy::Unknown(s) = &cfg.routing.strategy {
        c.err(
            "routing.strategy",
            format!(
                "unknown strategy `{s}`, expected one of {}",
                Strategy::NAMES.join(", ")
            ),
        );
    }
    if cfg.routing.max_attempts < 1 {
        c.err("routing.max_attempts", "must be at least 1");
    }
    if cfg.routing.max_cooldown.is_zero() {
        c.err("routing.max_cooldown", "must be greater than 0s");
    }
    let b = &cfg.circuit_breaker;
    if !(b.failure_rate_threshold > 0.0 && b.failure_rate_threshold <= 1.0) {
        c.err(
            "circuit_breaker.failure_rate_threshold",
            format!("must be in (0, 1], got {}", b.failure_rate_threshold),
        );
    }
    if b.consecutive_failures < 1 {
        c.err("circuit_breaker.consecutive_failures", "must be at least 1");
    }
    if b.half_open_successes < 1 {
        c.err("circuit_breaker.half_open_successes", "must be at least 1");
    }
    if cfg.health.max_concurrent_probes < 1 {
        c.err("health.max_concurrent_probes", "must be at least 1");
    }
    if cfg.health.probe_timeout.is_zero() {
        c.err("health.probe_timeout", "must be greater than 0s");
    }
}

fn check_providers(cfg: &Config, c: &mut Collector) {
    let mut names = HashSet::new();
    for (i, p) in cfg.providers.iter().enumerate() {
        let at = |k: &str| format!("providers[{i}].{k}");
        if p.name.is_empty() || p.name.contains('/') {
            c.err(at("name"), "must be non-empty and must not contain '/'");
        } else if !names.insert(p.name.as_str()) {
            c.err(at("name"), format!("duplicate provider name `{}`", p.name));
        }
        if let ProviderKind::Unknown(k) = &p.kind {
            c.err(
                at("kind"),
                format!(
                    "unknown kind `{k}`, expected one of {}",
                    ProviderKind::NAMES.join(", ")
                ),
            );
        }
        if p.kind != ProviderKind::Mock {
            check_base_url(&p.base_url, &at("base_url"), c);
        }
        if p.models.is_empty() {
            c.err(at("models"), "must list at least one model, or \"*\"");
        }
        if !(p.weight.is_finite() && p.weight > 0.0) {
            c.err(
                at("weight"),
                format!("must be a positive number, got {}", p.weight),
            );
        }
        if p.tokens_per_second
            .is_some_and(|t| !(t.is_finite() && t >= 0.0))
        {
            c.err(at("tokens_per_second"), "must be a non-negative number");
        }
        for (model, price) in &p.prices {
            let rates = [
                ("input", Some(price.input)),
                ("output", Some(price.output)),
                ("cache_read", price.cache_read),
                ("cache_write", price.cache_write),
            ];
            for (k, v) in rates {
                if v.is_some_and(|v| !(v.is_finite() && v >= 0.0)) {
                    c.err(
                        format!("providers[{i}].prices.\"{model}\".{k}"),
                        "must be a non-negative number (USD per million tokens)",
                    );
                }
            }
        }
        if p.kind != ProviderKind::Mock && (p.latency.is_some() || p.tokens_per_second.is_some()) {
            c.err(
                at("kind"),
                "`latency` and `tokens_per_second` apply only to kind = \"mock\"",
            );
        }
        if p.kind == ProviderKind::Mock && !p.apis.is_empty() {
            c.err(
                at("apis"),
                "does not apply to kind = \"mock\", which serves every API",
            );
        }
        for a in p.apis.iter().filter(|a| !API_NAMES.contains(&a.as_str())) {
            c.err(
                at("apis"),
                format!(
                    "unknown api `{a}`, expected one of {}",
                    API_NAMES.join(", ")
                ),
            );
        }
        if p.default_max_tokens == 0 {
            c.err(at("default_max_tokens"), "must be at least 1");
        }
    }
}

fn check_base_url(url: &str, key: &str, c: &mut Collector) {
    match url.parse::<http::Uri>() {
        Ok(u) if matches!(u.scheme_str(), Some("http" | "https")) && u.host().is_some() => {}
        Ok(_) => c.err(
            key,
            format!("`{url}` must be an absolute http:// or https:// URL"),
        ),
        Err(e) => c.err(key, format!("`{url}` is not a valid URL: {e}")),
    }
}

fn check_aliases(cfg: &Config, c: &mut Collector) {
    let mut seen = HashSet::new();
    for (i, a) in cfg.models.iter().enumerate() {
        if a.name.is_empty() {
            c.err(format!("models[{i}].name"), "must not be empty");
        } else if !seen.insert(a.name.as_str()) {
            c.err(
                format!("models[{i}].name"),
                format!("duplicate alias `{}`", a.name),
            );
        }
        if a.targets.is_empty() {
            c.err(
                format!("models[{i}].targets"),
                "must name at least one provider/model",
            );
        }
        for (j, t) in a.targets.iter().enumerate() {
            if let Some(problem) = target_problem(cfg, t) {
                c.err(format!("models[{i}].targets[{j}]"), problem);
            }
        }
    }
}

/// Why an alias target does not name a known `provider/model`, if it does not.
fn target_problem(cfg: &Config, target: &str) -> Option<String> {
    let Some((prov, model)) = split_provider_model(target) else {
        return Some(format!("`{target}` must be written provider/model"));
    };
    let Some(p) = cfg.providers.iter().find(|p| p.name == prov) else {
        return Some(format!("`{target}` names unknown provider `{prov}`"));
    };
    if !p.serves(model) {
        return Some(format!(
            "`{target}`: provider `{prov}` does not serve model `{model}`"
        ));
    }
    None
}

fn check_clients(cfg: &Config, c: &mut Collector) {
    let mut seen = HashSet::new();
    for (i, cl) in cfg.clients.iter().enumerate() {
        if !seen.insert(cl.name.as_str()) {
            c.err(
                format!("clients[{i}].name"),
                format!("duplicate client `{}`", cl.name),
            );
        }
        if cl.token_env.trim().is_empty() {
            c.err(
                format!("clients[{i}].token_env"),
                "must name an environment variable",
            );
        }
        if !(cl.monthly_usd.is_finite() && cl.monthly_usd >= 0.0) {
            c.err(
                format!("clients[{i}].monthly_usd"),
                "must be a finite number of USD, 0 or more (0 = unlimited)",
            );
        }
    }
}

fn check_usage(cfg: &Config, c: &mut Collector) {
    if cfg.usage.ledger.trim().is_empty() {
        c.err(
            "usage.ledger",
            "must be \"auto\", \"off\" or the path of the ledger file",
        );
    }
}

fn check_telemetry(cfg: &Config, c: &mut Collector) {
    let t = &cfg.telemetry;
    let e = t.otlp_endpoint.trim();
    if !e.is_empty() {
        match e.parse::<http::Uri>() {
            Ok(u) if u.scheme_str() == Some("http") && u.host().is_some() => {}
            Ok(_) => c.err(
                "telemetry.otlp_endpoint",
                format!(
                    "`{e}` must be an http:// URL such as \"http://127.0.0.1:4318\", or \"\" (off)"
                ),
            ),
            Err(err) => c.err(
                "telemetry.otlp_endpoint",
                format!("`{e}` is not a URL: {err}"),
            ),
        }
    }
    if t.service_name.trim().is_empty() {
        c.err("telemetry.service_name", "must not be empty");
    }
}

/// `[shared]`: the URL variable itself is checked at start (`gateway::shared::redis_url`), where
/// the environment is the one the processes will run with.
fn check_shared(cfg: &Config, c: &mut Collector) {
    let s = &cfg.shared;
    if s.url_env.trim().is_empty() {
        c.err("shared.url_env", "must name an environment variable");
    }
    if s.lease_ttl < std::time::Duration::from_secs(1) {
        c.err(
            "shared.lease_ttl",
            "must be at least 1s (leases are renewed every lease_ttl/3)",
        );
    }
    if s.key_prefix.contains(char::is_whitespace) {
        c.err("shared.key_prefix", "must not contain whitespace");
    }
}
