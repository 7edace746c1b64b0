//! `supervisor check-config`: validate the configuration and print a short summary.
//! Exit 0 when valid; 2 with every error found (file:line:column: key: message) otherwise.

use super::ConfigArg;
use crate::exit;
use gateway::config::{self, Config, ProviderKind};
use std::fmt::Write;

pub fn run(arg: &ConfigArg) -> u8 {
    let source = config::resolve_source(arg.config.as_deref());
    match config::load(&source) {
        Ok(loaded) => {
            print!("{}", summary(&source.display_name(), &loaded.config));
            // An upgrading supervisor asks whether this binary adopts its workers.
            if std::env::var_os(crate::upgrade::QUERY_ENV).is_some() {
                println!("{}", crate::upgrade::ADOPTS_LINE);
            }
            exit::OK
        }
        Err(errors) => {
            eprintln!(
                "error: invalid configuration ({} problem(s)):",
                errors.0.len()
            );
            for e in &errors.0 {
                eprintln!("  {e}");
            }
            exit::CONFIG
        }
    }
}

/// The human summary; key variables are reported as set or not, never their values.
pub fn summary(name: &str, cfg: &Config) -> String {
    let mut s = String::new();
    let p = &cfg.pool;
    let _ = writeln!(s, "configuration {name} is valid");
    let _ = writeln!(s, "listen:    {}", cfg.server.listen);
    let ports = if p.base_port == 0 {
        "any free ports".to_string()
    } else {
        format!(
            "ports {}-{}",
            p.base_port,
            u32::from(p.base_port) + p.workers - 1
        )
    };
    let _ = writeln!(s, "workers:   {} on {ports}", p.workers);
    let _ = writeln!(s, "strategy:  {}", cfg.routing.strategy);
    let _ = writeln!(s, "providers:");
    for pr in &cfg.providers {
        let key = match (&pr.kind, pr.api_key_env.as_str()) {
            (ProviderKind::Mock, _) => "no key needed".to_string(),
            (_, "") => "no key needed".to_string(),
            (_, var) if pr.missing_key().is_none() => format!("key ${var} set"),
            (_, var) => format!("warning: key ${var} is not set; out of rotation"),
        };
        let _ = writeln!(
            s,
            "  {:<12} {:<9} [{}]  ({key})",
            pr.name,
            pr.kind,
            pr.models.join(", ")
        );
    }
    if !cfg.models.is_empty() {
        let _ = writeln!(s, "aliases:");
        for a in &cfg.models {
            let _ = writeln!(s, "  {:<12} -> {}", a.name, a.targets.join(", "));
        }
    }
    s
}
