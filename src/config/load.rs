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

/// Unknown keys reported before giving up (each one costs a re-parse).
const MAX_UNKNOWN_KEYS: usize = 100;

/// Parses and validates configuration text; `name` is how errors refer to it.
///
/// Every problem is reported at once, in file order: an unknown key (serde stops at the first
/// one) is recorded with its full path, blanked out of a copy of the text (spaces, so no other
/// position moves) and the copy parsed again; the semantic checks then run on what remains. A
/// problem serde cannot get past (bad syntax, a wrong type) is reported with the unknown keys
/// found before it.
pub fn parse_str(text: &str, name: &str) -> Result<Config, ConfigErrors> {
    let locator = Locator::new(text);
    let located = |offset: Option<usize>, key: String, message: String| {
        let (line, column) = offset.map(|o| line_col(text, o)).unzip();
        ConfigError {
            file: name.into(),
            line,
            column,
            key,
            message,
        }
    };
    let mut errors = Vec::new();
    let mut work = text.to_string();
    let config = loop {
        let e = match toml::from_str::<Config>(&work) {
            Ok(c) => break Some(c),
            Err(e) => e,
        };
        let start = e.span().map(|s| s.start);
        let entry = start.and_then(|o| locator.entry_at(o));
        let message = e.message().trim().to_string();
        let unknown = message.starts_with("unknown field");
        match entry {
            Some(entry)
                if unknown && !entry.ranges.is_empty() && errors.len() < MAX_UNKNOWN_KEYS =>
            {
                errors.push(located(start, entry.path, message));
                for r in entry.ranges {
                    blank(&mut work, r);
                }
            }
            Some(entry) => {
                errors.push(located(start, entry.path, message));
                break None;
            }
            None => {
                // Not a key (a syntax error): show the text the span covers, if it is short.
                let key = e
                    .span()
                    .map(|s| text[s].trim().trim_matches('"').to_string())
                    .filter(|k| !k.is_empty() && !k.contains('\n') && k.len() < 80)
                    .unwrap_or_default();
                errors.push(located(start, key, message));
                break None;
            }
        }
    };
    if let Some(config) = &config {
        for v in validate(config) {
            let offset = locator.span(&v.key).map(|s| s.start);
            errors.push(located(offset, v.key, v.message));
        }
    }
    match config {
        Some(c) if errors.is_empty() => Ok(c),
        _ => {
            // File order; errors without a position (none today) last.
            errors.sort_by_key(|e| (e.line.is_none(), e.line, e.column));
            Err(ConfigErrors(errors))
        }
    }
}

/// Replaces `range` of `text` with spaces, keeping line breaks and every byte offset.
fn blank(text: &mut String, range: std::ops::Range<usize>) {
    let Some(part) = text.get(range.clone()) else {
        return;
    };
    let spaces: String = part
        .chars()
        .map(|c| match c {
            '\n' | '\r' => c.to_string(),
            _ => " ".repeat(c.len_utf8()),
        })
        .collect();
    text.replace_range(range, &spaces);
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
