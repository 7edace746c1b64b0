//! Config unit tests: the shipped file, every validation rule with its located error, unknown keys
//! and durations.

use super::*;
use std::time::Duration;

const MIN: &str = r#"
[[providers]]
name = "demo"
kind = "mock"
models = ["demo"]
"#;

/// Parses `text` and returns its errors, which must exist.
fn errors(text: &str) -> Vec<ConfigError> {
    parse_str(text, "t.toml")
        .expect_err("config should be rejected")
        .0
}

/// The single error about `key`, asserting it is located at `line`.
fn assert_error_at(text: &str, key: &str, line: usize) -> ConfigError {
    let errs = errors(text);
    let e = errs
        .iter()
        .find(|e| e.key == key)
        .unwrap_or_else(|| panic!("no error for {key}; got {errs:#?}"))
        .clone();
    assert_eq!(e.line, Some(line), "wrong line for {key}: {e}");
    assert!(e.to_string().starts_with(&format!("t.toml:{line}:")), "{e}");
    e
}

#[test]
fn shipped_gateway_toml_is_valid_and_matches_defaults() {
    let cfg = parse_str(BUILTIN_CONFIG, "gateway.toml").unwrap();
    let d = Config::default();
    assert_eq!(cfg.server, d.server);
    assert_eq!(cfg.pool, d.pool);
    assert_eq!(cfg.models_cache, d.models_cache);
    assert_eq!(cfg.routing, d.routing);
    assert_eq!(cfg.circuit_breaker, d.circuit_breaker);
    assert_eq!(cfg.health, d.health);
    assert_eq!(cfg.usage, d.usage);
    let demo = cfg.providers.iter().find(|p| p.name == "demo").unwrap();
    assert_eq!(demo.kind, ProviderKind::Mock);
    assert_eq!(demo.models, vec!["demo"]);
    let local = cfg.providers.iter().find(|p| p.name == "local").unwrap();
    assert_eq!(local.base_url, "http://127.0.0.1:11434/v1");
    assert_eq!(local.api_key_env, "", "a local server needs no key");
    assert_eq!(local.missing_key(), None);
    assert!(cfg
        .providers
        .iter()
        .any(|p| p.kind == ProviderKind::Anthropic));
    assert_eq!(cfg.models[0].name, "fast");
}

#[test]
fn durations_parse() {
    let cfg = parse_str(
        &format!("[pool]\nheartbeat_interval = \"250ms\"\nheartbeat_timeout = \"1m 30s\"\n{MIN}"),
        "t",
    )
    .unwrap();
    assert_eq!(cfg.pool.heartbeat_interval, Duration::from_millis(250));
    assert_eq!(cfg.pool.heartbeat_timeout, Duration::from_secs(90));
    let e = &errors("[pool]\nqueue_timeout = \"soon\"\n")[0];
    assert_eq!(e.line, Some(2));
    assert!(
        e.message.contains("soon") || e.message.contains("duration"),
        "{e}"
    );
}

#[test]
fn unknown_key_is_rejected_with_its_line() {
    let e = &errors("[server]\nlisten = \"127.0.0.1:1\"\nlistne = \"x\"\n")[0];
    assert_eq!((e.line, e.column), (Some(3), Some(1)), "{e}");
    assert_eq!(e.key, "server.listne");
    assert!(e.message.contains("unknown field"), "{e}");
    let e = &errors("[poool]\nworkers = 1\n")[0];
    assert_eq!(e.line, Some(1), "{e}");
    assert_eq!(e.key, "poool");
}

#[test]
fn unknown_keys_are_named_by_their_full_path_with_every_other_error() {
    let text = r#"[server]
colour = "blue"

[pool]
workers = 0

[[providers]]
name = "demo"
kind = "mock"
models = ["demo"]

[[providers]]
name = "x"
kind = "nope"
colour = "red"
models = ["m"]
timeouts = { connect = "1s" }

[[models]]
name = "fast"
targets = ["demo/demo"]
extra = 1
"#;
    let errs = errors(text);
    let found: Vec<(String, Option<usize>, Option<usize>)> = errs
        .iter()
        .map(|e| (e.key.clone(), e.line, e.column))
        .collect();
    for (key, line) in [
        ("server.colour", 2),
        ("pool.workers", 5),
        // Unset, so located at its table.
        ("providers[1].base_url", 12),
        ("providers[1].kind", 14),
        ("providers[1].colour", 15),
        ("providers[1].timeouts", 17),
        ("models[0].extra", 22),
    ] {
        assert!(
            found.contains(&(key.to_string(), Some(line), Some(1))),
            "{key} at {line}:1 missing from {found:?}"
        );
    }
    assert_eq!(errs.len(), 7, "{errs:#?}");
    let colour = errs.iter().find(|e| e.key == "server.colour").unwrap();
    assert_eq!(
        colour.to_string().split(", expected").next().unwrap(),
        "t.toml:2:1: server.colour: unknown field `colour`"
    );
    // Reported in file order.
    let lines: Vec<_> = errs.iter().map(|e| e.line).collect();
    let mut sorted = lines.clone();
    sorted.sort();
    assert_eq!(lines, sorted);
}

#[test]
fn unknown_tables_and_dotted_keys_are_blanked_whole() {
    let text = "[poool]\nworkers = 1\nx = 2\n\n[server]\nlisten = \"127.0.0.1:1\"\nsub.deep = 1\n\n[pool]\nworkers = 0\n";
    let errs = errors(text);
    let keys: Vec<_> = errs.iter().map(|e| (e.key.as_str(), e.line)).collect();
    assert_eq!(
        keys,
        [
            ("poool", Some(1)),
            ("server.sub", Some(7)),
            ("pool.workers", Some(10))
        ],
        "{errs:#?}"
    );
}

#[test]
fn a_wrong_type_is_named_by_its_path_after_the_unknown_keys_before_it() {
    let errs = errors("[server]\ncolour = 1\n[pool]\nworkers = \"three\"\n");
    let keys: Vec<_> = errs.iter().map(|e| (e.key.as_str(), e.line)).collect();
    assert_eq!(
        keys,
        [("server.colour", Some(2)), ("pool.workers", Some(4))],
        "{errs:#?}"
    );
}

#[test]
fn workers_at_least_one() {
    assert_error_at(&format!("[pool]\nworkers = 0\n{MIN}"), "pool.workers", 2);
}

#[test]
fn port_range_must_fit() {
    let e = assert_error_at(
        &format!("[pool]\nworkers = 10\nbase_port = 65530\n{MIN}"),
        "pool.base_port",
        3,
    );
    assert!(e.message.contains("65539"), "{e}");
    // base_port 0 means any free ports: always fits.
    parse_str(&format!("[pool]\nworkers = 10\nbase_port = 0\n{MIN}"), "t").unwrap();
}

#[test]
fn provider_names_unique_and_kind_known() {
    let text = r#"
[[providers]]
name = "a"
kind = "mock"
models = ["m"]

[[providers]]
name = "a"
kind = "grok"
base_url = "http://x"
models = ["m"]
"#;
    assert_error_at(text, "providers[1].name", 8);
    let e = assert_error_at(text, "providers[1].kind", 9);
    assert!(
        e.message.contains("grok") && e.message.contains("openai"),
        "{e}"
    );
}

#[test]
fn base_url_must_parse_for_real_providers() {
    let text = "[[providers]]\nname = \"o\"\nkind = \"openai\"\nbase_url = \"not a url\"\nmodels = [\"m\"]\n";
    assert_error_at(text, "providers[0].base_url", 4);
    let missing = "[[providers]]\nname = \"o\"\nkind = \"openai\"\nmodels = [\"m\"]\n";
    // No base_url at all: located at the provider's table.
    let e = &errors(missing)[0];
    assert_eq!(e.key, "providers[0].base_url");
    assert_eq!(e.line, Some(1), "{e}");
}

#[test]
fn alias_targets_must_name_known_provider_models() {
    let text = format!(
        "{MIN}\n[[models]]\nname = \"fast\"\ntargets = [\"demo/demo\", \"nope/x\", \"demo/other\", \"bare\"]\n"
    );
    let errs = errors(&text);
    let keys: Vec<_> = errs.iter().map(|e| e.key.as_str()).collect();
    assert_eq!(
        keys,
        [
            "models[0].targets[1]",
            "models[0].targets[2]",
            "models[0].targets[3]"
        ]
    );
    assert!(errs.iter().all(|e| e.line == Some(9)), "{errs:#?}");
    assert!(errs[0].message.contains("unknown provider `nope`"));
    // A "*" provider serves any model.
    let star = "[[providers]]\nname = \"p\"\nkind = \"mock\"\nmodels = [\"*\"]\n[[models]]\nname = \"a\"\ntargets = [\"p/anything\"]\n";
    parse_str(star, "t").unwrap();
}

#[test]
fn strategy_must_be_known() {
    let e = assert_error_at(
        &format!("[routing]\nstrategy = \"fastest\"\n{MIN}"),
        "routing.strategy",
        2,
    );
    assert!(e.message.contains("round_robin"), "{e}");
}

#[test]
fn max_cooldown_defaults_to_5m_and_must_not_be_zero() {
    assert_eq!(
        parse_str(MIN, "t").unwrap().routing.max_cooldown,
        Duration::from_secs(300)
    );
    assert_error_at(
        &format!("[routing]\nmax_cooldown = \"0s\"\n{MIN}"),
        "routing.max_cooldown",
        2,
    );
    let c = parse_str(&format!("[routing]\nmax_cooldown = \"90s\"\n{MIN}"), "t").unwrap();
    assert_eq!(c.routing.max_cooldown, Duration::from_secs(90));
}

#[test]
fn breaker_rate_in_range() {
    for bad in ["0.0", "1.5", "-0.2"] {
        assert_error_at(
            &format!("[circuit_breaker]\nfailure_rate_threshold = {bad}\n{MIN}"),
            "circuit_breaker.failure_rate_threshold",
            2,
        );
    }
    parse_str(
        &format!("[circuit_breaker]\nfailure_rate_threshold = 1.0\n{MIN}"),
        "t",
    )
    .unwrap();
}

#[test]
fn heartbeat_timeout_longer_than_interval() {
    let text = format!("[pool]\nheartbeat_interval = \"5s\"\nheartbeat_timeout = \"5s\"\n{MIN}");
    assert_error_at(&text, "pool.heartbeat_timeout", 3);
    // Only the interval written: the error points at the [pool] table the user would edit.
    let text = format!("[pool]\nheartbeat_interval = \"10s\"\n{MIN}");
    assert_error_at(&text, "pool.heartbeat_timeout", 1);
}

#[test]
fn non_loopback_listen_needs_a_token() {
    let text = format!("[server]\nlisten = \"0.0.0.0:8080\"\nauth_token_env = \"\"\n{MIN}");
    let e = assert_error_at(&text, "server.listen", 2);
    assert!(e.message.contains("loopback"), "{e}");
    parse_str(&format!("[server]\nlisten = \"0.0.0.0:8080\"\n{MIN}"), "t").unwrap();
}

#[test]
fn every_error_is_reported_at_once() {
    let text = r#"
[pool]
workers = 0
heartbeat_timeout = "1s"
heartbeat_interval = "2s"

[routing]
strategy = "nope"

[[providers]]
name = "x"
kind = "nope"
models = ["m"]
"#;
    let keys: Vec<_> = errors(text).into_iter().map(|e| e.key).collect();
    for k in [
        "pool.workers",
        "pool.heartbeat_timeout",
        "routing.strategy",
        "providers[0].kind",
    ] {
        assert!(keys.iter().any(|x| x == k), "{k} missing from {keys:?}");
    }
}

#[test]
fn missing_file_is_a_clear_error() {
    let src = ConfigSource::File("/nonexistent/gw.toml".into());
    let e = load(&src).unwrap_err();
    assert!(e.to_string().contains("/nonexistent/gw.toml"), "{e}");
    assert!(e.to_string().contains("cannot read"), "{e}");
}

#[test]
fn lookup_order() {
    assert_eq!(
        resolve_source(Some(std::path::Path::new("x.toml"))),
        ConfigSource::File("x.toml".into())
    );
}

#[test]
fn provider_apis_default_by_kind_and_unknown_names_are_located() {
    let text = r#"
[[providers]]
name = "a"
kind = "anthropic"
base_url = "http://x"
models = ["m"]

[[providers]]
name = "o"
kind = "openai"
base_url = "http://x"
models = ["m"]
apis = ["chat", "speech"]
"#;
    let e = assert_error_at(text, "providers[1].apis", 13);
    assert!(
        e.message.contains("`speech`") && e.message.contains("responses"),
        "{e}"
    );
    let ok = text.replace(", \"speech\"", "");
    let cfg = parse_str(&ok, "t.toml").expect("valid");
    let (a, o) = (&cfg.providers[0], &cfg.providers[1]);
    assert!(a.native_api("messages") && !a.native_api("chat"));
    assert!(
        o.native_api("chat") && !o.native_api("responses"),
        "apis listed: only those"
    );
    assert_eq!(a.default_max_tokens, 4096);
    let mut d = ProviderConfig::new("d", ProviderKind::OpenAi, "http://x", &["m"]);
    assert!(["chat", "responses", "completions", "embeddings"]
        .iter()
        .all(|x| d.native_api(x)));
    assert!(!d.native_api("messages"));
    d.kind = ProviderKind::Mock;
    assert!(d.native_api("messages"));
}

#[test]
fn mock_apis_and_zero_default_max_tokens_are_located_errors() {
    let text = "[[providers]]\nname = \"d\"\nkind = \"mock\"\nmodels = [\"m\"]\napis = [\"chat\"]\ndefault_max_tokens = 0\n";
    let e = assert_error_at(text, "providers[0].apis", 5);
    assert!(e.message.contains("mock"), "{e}");
    assert_error_at(text, "providers[0].default_max_tokens", 6);
}

#[test]
fn prices_parse_and_bad_rates_are_named() {
    let cfg = parse_str(
        r#"
[[providers]]
name = "p"
kind = "mock"
models = ["m"]
prices = { "m" = { input = 1.5, output = 2.0, cache_read = 0.5 } }
"#,
        "t.toml",
    )
    .unwrap();
    let price = cfg.providers[0].prices["m"];
    assert_eq!((price.input, price.output), (1.5, 2.0));
    assert_eq!((price.cache_read, price.cache_write), (Some(0.5), None));
    assert_eq!(cfg.usage.ledger, "auto");
    assert_eq!(
        cfg.usage.retention,
        std::time::Duration::from_secs(90 * 86_400)
    );
    let e = parse_str(
        r#"
[[providers]]
name = "p"
kind = "mock"
models = ["m"]
prices = { "m" = { input = -1.0, output = 2.0 } }
"#,
        "t.toml",
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("providers[0].prices.\"m\".input"), "{e}");
    let e = parse_str("[usage]\nledger = \"\"\n", "t.toml")
        .unwrap_err()
        .to_string();
    assert!(e.contains("usage.ledger"), "{e}");
    let e = parse_str(
        "[[providers]]\nname = \"p\"\nkind = \"mock\"\nmodels = [\"m\"]\nprices = { m = { input = 1.0 } }\n",
        "t.toml",
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("output"), "a price needs both rates: {e}");
}

#[test]
fn client_limits_parse_and_a_bad_monthly_usd_is_located() {
    let ok = "[[clients]]\nname = \"desk\"\ntoken_env = \"T\"\nrpm = 10\ntpm = 500\ndaily_tokens = 9000\nmonthly_usd = 2.5\n";
    let cfg = parse_str(ok, "t.toml").expect("valid limits");
    let c = &cfg.clients[0];
    assert_eq!(
        (c.rpm, c.tpm, c.daily_tokens, c.monthly_usd),
        (10, 500, 9000, 2.5)
    );
    let text = "[[clients]]\nname = \"desk\"\ntoken_env = \"T\"\nmonthly_usd = -1.0\n";
    let e = assert_error_at(text, "clients[0].monthly_usd", 4);
    assert!(e.to_string().contains("USD"), "{e}");
    let nan = "[[clients]]\nname = \"desk\"\ntoken_env = \"T\"\nmonthly_usd = nan\n";
    assert_error_at(nan, "clients[0].monthly_usd", 4);
}
