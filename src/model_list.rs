//! The OpenAI model list (`GET /v1/models`) and one entry of it (`GET /v1/models/{id}`), built
//! in one place for the front's cache and the workers, so both answer the same objects; and the
//! same list in Anthropic's shape, for requests that carry `anthropic-version`.

use crate::config::ProviderConfig;
use crate::{ApiError, ErrorKind};
use serde_json::{json, Value};
use std::collections::HashSet;

/// The path prefix of `GET /v1/models/{id}`.
const RETRIEVE_PREFIX: &str = "/v1/models/";

/// Model objects in list order; the first entry of an id wins.
#[derive(Debug, Default)]
pub struct ModelList {
    seen: HashSet<String>,
    data: Vec<Value>,
}

impl ModelList {
    /// The configured part: every provider's models except `"*"`, then the alias names.
    pub fn configured<'a>(
        providers: impl IntoIterator<Item = &'a ProviderConfig>,
        aliases: impl IntoIterator<Item = &'a str>,
    ) -> Self {
        let mut list = Self::default();
        for p in providers {
            for m in p.models.iter().filter(|m| *m != "*") {
                list.push(m, &p.name);
            }
        }
        for a in aliases {
            list.push(a, "gateway");
        }
        list
    }

    /// Adds `id` (owned by `owner`) unless it is already listed.
    pub fn push(&mut self, id: &str, owner: &str) {
        if self.seen.insert(id.to_string()) {
            self.data
                .push(json!({"id": id, "object": "model", "created": 0, "owned_by": owner}));
        }
    }

    /// `{"object":"list","data":[...]}`.
    pub fn to_json(&self) -> Value {
        json!({"object": "list", "data": self.data})
    }
}

/// Whether a models request comes from an Anthropic client (its SDKs always send
/// `anthropic-version`): it then gets Anthropic's list and entry shapes and error format.
pub fn anthropic_requested(headers: &http::HeaderMap) -> bool {
    headers.contains_key("anthropic-version")
}

/// One OpenAI model object as Anthropic's `{type, id, display_name, created_at}`.
pub fn anthropic_entry(m: &Value) -> Value {
    let id = m.get("id").and_then(Value::as_str).unwrap_or_default();
    json!({"type": "model", "id": id, "display_name": id, "created_at": "1970-01-01T00:00:00Z"})
}

/// An OpenAI list (`{"data":[...]}`) as Anthropic's page: `{data, has_more, first_id,
/// last_id}`, the whole list on one page.
pub fn anthropic_list(list: &Value) -> Value {
    let data: Vec<Value> = list
        .get("data")
        .and_then(Value::as_array)
        .map(|d| d.iter().map(anthropic_entry).collect())
        .unwrap_or_default();
    let first = data.first().map(|m| m["id"].clone()).unwrap_or(Value::Null);
    let last = data.last().map(|m| m["id"].clone()).unwrap_or(Value::Null);
    json!({"data": data, "has_more": false, "first_id": first, "last_id": last})
}

/// The `{id}` of a `/v1/models/{id}` path, percent-decoded (SDKs escape the `/` of ids such as
/// `meta-llama/Llama-3.1-8B`, or not); `None` for any other path.
pub fn retrieve_id(path: &str) -> Option<String> {
    let raw = path
        .strip_prefix(RETRIEVE_PREFIX)
        .filter(|id| !id.is_empty())?;
    percent_decode(raw)
}

/// The entry `id` of a model list (`{"data":[...]}`), or the 404 to answer in the OpenAI format.
pub fn find(list: &Value, id: &str) -> Result<Value, ApiError> {
    list.get("data")
        .and_then(Value::as_array)
        .and_then(|d| {
            d.iter()
                .find(|m| m.get("id").and_then(Value::as_str) == Some(id))
        })
        .cloned()
        .ok_or_else(|| {
            ApiError::new(
                ErrorKind::NotFound,
                format!("The model `{id}` does not exist or is not served by this gateway"),
            )
        })
}

/// `%XX` escapes decoded; `None` when an escape is malformed or the result is not UTF-8.
fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ProviderKind;

    #[test]
    fn configured_list_and_one_entry() {
        let a = ProviderConfig::new("a", ProviderKind::Mock, "", &["m1", "*", "org/m2"]);
        let b = ProviderConfig::new("b", ProviderKind::Mock, "", &["m1"]);
        let list = ModelList::configured([&a, &b], ["fast"]).to_json();
        let ids: Vec<&str> = list["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["id"].as_str().unwrap())
            .collect();
        assert_eq!(ids, ["m1", "org/m2", "fast"]);
        let m = find(&list, "org/m2").unwrap();
        assert_eq!(
            m,
            json!({"id": "org/m2", "object": "model", "created": 0, "owned_by": "a"})
        );
        assert_eq!(find(&list, "m1").unwrap()["owned_by"], "a");
        let e = find(&list, "nope").unwrap_err();
        assert_eq!(e.kind, ErrorKind::NotFound);
        assert!(e.message.contains("nope"));
    }

    #[test]
    fn anthropic_shapes() {
        let a = ProviderConfig::new("a", ProviderKind::Mock, "", &["m1", "m2"]);
        let list = anthropic_list(&ModelList::configured([&a], ["fast"]).to_json());
        assert_eq!(list["has_more"], false);
        assert_eq!(list["first_id"], "m1");
        assert_eq!(list["last_id"], "fast");
        assert_eq!(
            list["data"][1],
            json!({"type": "model", "id": "m2", "display_name": "m2",
                "created_at": "1970-01-01T00:00:00Z"})
        );
        let mut h = http::HeaderMap::new();
        assert!(!anthropic_requested(&h));
        h.insert("anthropic-version", "2023-06-01".parse().unwrap());
        assert!(anthropic_requested(&h));
    }

    #[test]
    fn retrieve_path() {
        assert_eq!(retrieve_id("/v1/models/demo").as_deref(), Some("demo"));
        assert_eq!(retrieve_id("/v1/models/org/m").as_deref(), Some("org/m"));
        assert_eq!(retrieve_id("/v1/models/org%2Fm").as_deref(), Some("org/m"));
        assert_eq!(retrieve_id("/v1/models/"), None);
        assert_eq!(retrieve_id("/v1/models"), None);
        assert_eq!(retrieve_id("/v1/models/bad%zz"), None);
        assert_eq!(retrieve_id("/v1/models/cut%2"), None);
    }
}
