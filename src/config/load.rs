//! Finding, reading and parsing the configuration, then validating it with located errors.
//!
//! Lookup order (contract): `-c FILE`, else `$GATEWAY_CONFIG`, else `./gateway.toml` if present,
//! else the built-in default, which is the repository's `gateway.toml` compiled in.

use super::error::{ConfigError, ConfigErrors};
use super::locate::{line_col, Locator};
use super::schema::Config;
use super::validate::validate;
use std::path::{Path, PathBuf};

/// The repository's `gateway.toml`, compiled into every binary.
pub const BUILTIN_CONFIG: &str = include_str!("../../gateway.toml");

/// Where a configuration came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigSource {
    File(PathBuf),
    Builtin,
}

impl ConfigSource {
    /// How errors name this source.
    pub fn display_name(&self) -> String {
        match self {
            Self::File(p) => p.display().to_string(),
            Self::Builtin => "<built-in gateway.toml>".into(),
        }
    }

    pub fn path(&self) -> Option<&Path> {
        match self {
            Self::File(p) => Some(p),
            Self::Builtin => None,
        }
    }
}

/// A validated configuration and where it came from.
#[derive(Debug, Clone)]
pub struct LoadedConfig {
    pub config: Config,
    pub source: ConfigSource,
    /// The text that was parsed; the supervisor hands workers a snapshot of exactly this.
    pub text: String,
}

/// Applies the lookup order. `cli` is the `-c` flag.
pub fn resolve_source(cli: Option<&Path>) -> ConfigSource {
    if let Some(p) = cli {
        return ConfigSource::File(p.to_path_buf());
    }
    if let Some(p) = std::env::var_os("GATEWAY_CONFIG").filter(|v| !v.is_empty()) {
        return ConfigSource::File(PathBuf::from(p));
    }
    let local = Path::new("gateway.toml");
    if local.is_file() {
        return ConfigSource::File(local.to_path_buf());
    }
    ConfigSource::Builtin
}

/// Whether `[table] key` is written in `text`, as opposed to left to its default. For choices
/// that depend on whether the user asked for a value at all (ephemeral instances).
pub fn sets_key(text: &str, table: &str, key: &str) -> bool {
    text.parse::<toml::Table>()
        .ok()
        .and_then(|t| t.get(table)?.as_table()?.get(key).map(|_| ()))
        .is_some()
}

/// Reads, parses and validates the configuration from `source`.
pub fn load(source: &ConfigSource) -> Result<LoadedConfig, ConfigErrors> {
    let name = source.display_name();
    let text = match source {
        ConfigSource::Builtin => BUILTIN_CONFIG.to_string(),
        ConfigSource::File(p) => std::fs::read_to_string(p).map_err(|e| {
            ConfigErrors::single(&name, format!("cannot read configuration file: {e}"))
        })?,
    };
    let config = parse_str(&text, &name)?;
    Ok(LoadedConfig {
        config,
        source: source.clone(),
        text,
    })
}

/// Parses and validates configuration text; `name` is how errors refer to it.
pub fn parse_str(text: &str, name: &str) -> Result<Config, ConfigErrors> {
    let config: Config = toml::from_str(text).map_err(|e| {
        let (line, column) = e.span().map(|s| line_col(text, s.start)).unzip();
        // The span of an unknown or mistyped key points at the key itself.
        let key = e
            .span()
            .map(|s| text[s].trim().trim_matches('"').to_string())
            .filter(|k| !k.is_empty() && !k.contains('\n') && k.len() < 80)
            .unwrap_or_default();
        let message = e.message().trim().to_string();
        ConfigErrors(vec![ConfigError {
            file: name.into(),
            line,
            column,
            key,
            message,
        }])
    })?;
    let violations = validate(&config);
    if violations.is_empty() {
        return Ok(config);
    }
    let locator = Locator::new(text);
    Err(ConfigErrors(
        violations
            .into_iter()
            .map(|v| {
                let (line, column) = locator
                    .span(&v.key)
                    .map(|s| line_col(text, s.start))
                    .unzip();
                ConfigError {
                    file: name.into(),
                    line,
                    column,
                    key: v.key,
                    message: v.message,
                }
            })
            .collect(),
    ))
}

#[cfg(test)]
mod sets_key_tests {
    use super::sets_key;

    #[test]
    fn only_a_written_key_counts() {
        let text = "[pool]\nworkers = 2\nbase_port = 0\n";
        assert!(sets_key(text, "pool", "base_port"));
        assert!(!sets_key(text, "pool", "runtime_dir"));
        assert!(!sets_key("[server]\nbase_port = 1\n", "pool", "base_port"));
        assert!(!sets_key("not toml [", "pool", "base_port"));
    }
}
