//! `/v1/messages/count_tokens` for a model no Anthropic provider serves: an estimate, since only
//! Anthropic has the endpoint. The estimate is ceil(C / 4), C the characters of the request's
//! text as a provider would see it: every string in `system` and `messages` (text, tool inputs
//! and results) plus the JSON of `tools`. It is marked with `x-gateway-token-estimate: chars/4`.

use crate::body::ResBody;
use gateway::{ApiError, Dialect, ErrorKind};
use http::{HeaderValue, Response};
use serde_json::{json, Value};

/// The response header that marks an estimated count, and its value (the formula).
pub const ESTIMATE_HEADER: http::HeaderName =
    http::HeaderName::from_static("x-gateway-token-estimate");

/// Characters in every string (keys excluded) below `v`.
fn chars(v: &Value) -> usize {
    match v {
        Value::String(s) => s.chars().count(),
        Value::Array(a) => a.iter().map(chars).sum(),
        Value::Object(o) => o.values().map(chars).sum(),
        _ => 0,
    }
}

/// The estimated `input_tokens` of a Messages request body.
pub fn estimate(body: &Value) -> u64 {
    let tools = body
        .get("tools")
        .map_or(0, |t| t.to_string().chars().count());
    let c = chars(&body["system"]) + chars(&body["messages"]) + tools;
    c.div_ceil(4) as u64
}

/// The estimated count as Anthropic answers `count_tokens`.
pub fn respond(body: &[u8]) -> Response<ResBody> {
    let v: Value = match serde_json::from_slice(body) {
        Ok(v @ Value::Object(_)) => v,
        _ => {
            return ApiError::new(ErrorKind::BadRequest, "the body must be a JSON object")
                .to_response(Dialect::Anthropic)
        }
    };
    if !v["messages"].is_array() {
        return ApiError::new(ErrorKind::BadRequest, "`messages`: field required")
            .to_response(Dialect::Anthropic);
    }
    let mut r = crate::body::json_response(&json!({"input_tokens": estimate(&v)}));
    r.headers_mut()
        .insert(ESTIMATE_HEADER, HeaderValue::from_static("chars/4"));
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn estimate_is_a_quarter_of_the_characters_rounded_up() {
        let b = json!({"model": "m", "system": [{"type": "text", "text": "abcd"}],
            "messages": [{"role": "user", "content": "hello"}]});
        // "abcd" + "text" (the block type) + "user" + "hello" = 17 characters -> 5.
        assert_eq!(estimate(&b), 5);
        let with_tools = json!({"messages": [], "tools": [{"name": "ab"}]});
        assert_eq!(
            estimate(&with_tools),
            r#"[{"name":"ab"}]"#.len().div_ceil(4) as u64
        );
    }
}
