//! The documentation cannot drift from the code: every key of the configuration schema appears in
//! the shipped `gateway.toml`, and every key there appears in the user reference
//! (`docs/reference.md`), by its full dotted name.
//!
//! The schema's keys are read from serde itself, not from a list kept by hand: a probe key that no
//! struct has makes `deny_unknown_fields` answer "unknown field …, expected one of …" with every
//! field the struct really has.

use std::collections::BTreeSet;
use std::path::Path;

const PROBE: &str = "zz_not_a_key";

/// The field names serde expects for the table a probe document reaches, or `None` when the
/// document failed for another reason (wrong table shape).
fn expected_fields(doc: &str) -> Option<Vec<String>> {
    let err = toml::from_str::<gateway::Config>(doc).err()?.to_string();
    let at = err.find(&format!("unknown field `{PROBE}`"))?;
    let rest = &err[at..];
    let list = &rest[rest.find("expected")?..];
    let list = list.lines().next().unwrap_or("");
    Some(
        list.split('`')
            .skip(1)
            .step_by(2)
            .map(str::to_string)
            .collect(),
    )
}

/// Every `section.key` of the schema (top-level tables and arrays of tables, one level deep,
/// which is the whole schema today).
fn schema_keys() -> BTreeSet<String> {
    let sections = expected_fields(&format!("{PROBE} = 1\n")).expect("top level lists its tables");
    assert!(
        sections.len() >= 5,
        "suspiciously few sections: {sections:?}"
    );
    let mut keys = BTreeSet::new();
    for s in sections {
        let fields = expected_fields(&format!("[{s}]\n{PROBE} = 1\n"))
            .or_else(|| expected_fields(&format!("[[{s}]]\n{PROBE} = 1\n")))
            .unwrap_or_else(|| panic!("section `{s}` is neither a table nor an array of tables"));
        keys.extend(fields.into_iter().map(|f| format!("{s}.{f}")));
    }
    keys
}

/// Every `section.key` written in `gateway.toml`, set or shown commented out (`# key = …` under
/// a `[section]` or `# [[section]]` header).
fn shipped_keys(text: &str) -> BTreeSet<String> {
    let mut section = String::new();
    let mut keys = BTreeSet::new();
    for line in text.lines() {
        let l = line.trim_start_matches('#').trim();
        if let Some(h) = l.strip_prefix('[') {
            section = h
                .split(']')
                .next()
                .unwrap_or("")
                .trim_matches('[')
                .to_string();
            continue;
        }
        let Some((k, _)) = l.split_once('=') else {
            continue;
        };
        let k = k.trim();
        if !section.is_empty()
            && !k.is_empty()
            && k.chars().all(|c| c.is_ascii_lowercase() || c == '_')
        {
            keys.insert(format!("{section}.{k}"));
        }
    }
    keys
}

fn read(rel: &str) -> String {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join(rel);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

#[test]
fn every_schema_key_is_in_the_shipped_config() {
    let schema = schema_keys();
    let shipped = shipped_keys(&read("gateway.toml"));
    let missing: Vec<_> = schema.difference(&shipped).collect();
    assert!(
        missing.is_empty(),
        "keys of the schema not shown in gateway.toml: {missing:?}"
    );
    let unknown: Vec<_> = shipped.difference(&schema).collect();
    assert!(
        unknown.is_empty(),
        "gateway.toml shows keys the schema does not have: {unknown:?}"
    );
}

#[test]
fn every_shipped_key_is_in_the_reference() {
    let reference = read("docs/reference.md");
    let missing: Vec<_> = shipped_keys(&read("gateway.toml"))
        .into_iter()
        .filter(|k| !reference.contains(&format!("`{k}`")))
        .collect();
    assert!(
        missing.is_empty(),
        "keys of gateway.toml missing from docs/reference.md: {missing:?}"
    );
}

/// The probe itself must see what it claims to: a known key of a known section is found, and a
/// key only the test invents is not.
#[test]
fn the_probe_reads_real_fields() {
    let keys = schema_keys();
    assert!(keys.contains("server.listen"));
    assert!(keys.contains("providers.api_key_env"));
    assert!(keys.contains("clients.token_env"));
    assert!(!keys.iter().any(|k| k.ends_with(PROBE)));
    let shipped = shipped_keys("[a]\nx = 1 # c\n# [[b]]\n# y_z = 2\n# not a key line\n");
    assert_eq!(
        shipped.into_iter().collect::<Vec<_>>(),
        ["a.x".to_string(), "b.y_z".to_string()]
    );
}

/// A clone stands on its own: no file outside `.ci/` points at the steering repository's
/// shared documents beside the clone, which a clone does not have.
#[test]
fn nothing_refers_to_the_steering_documents() {
    fn walk(dir: &Path, hits: &mut Vec<String>) {
        for e in std::fs::read_dir(dir).unwrap().flatten() {
            let p = e.path();
            let name = e.file_name();
            let name = name.to_string_lossy();
            if name.starts_with('.') || name == "target" || name == "__pycache__" {
                continue;
            }
            if p.is_dir() {
                walk(&p, hits);
            } else if let Ok(text) = std::fs::read_to_string(&p) {
                // Spelled in two pieces so this file does not find itself.
                let needle = concat!("../", "shared");
                if text.contains(needle) {
                    hits.push(p.display().to_string());
                }
            }
        }
    }
    let mut hits = Vec::new();
    walk(Path::new(env!("CARGO_MANIFEST_DIR")), &mut hits);
    assert!(
        hits.is_empty(),
        "files referring to the steering documents: {hits:?}"
    );
}
