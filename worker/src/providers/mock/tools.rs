//! Which tool the mock calls, and with what arguments: picks a tool from the request's `tools`
//! and `tool_choice` (in the Chat Completions, Responses or Messages shape) and builds its
//! arguments from the tool's JSON schema, so tool calling can be tried with no provider.

use crate::endpoint::Endpoint;
use gateway::{ApiError, ErrorKind};
use serde_json::{json, Map, Value};

/// How deep the argument builder follows nested schemas and `$ref`s; a recursive schema ends
/// in `null` there instead of looping.
const MAX_DEPTH: usize = 8;
/// The placeholder for a string.
const EXAMPLE: &str = "example";

/// The one tool call the mock answers with.
#[derive(Debug, PartialEq)]
pub struct ToolCall {
    pub name: String,
    /// A JSON object built from the tool's schema.
    pub arguments: Value,
}

/// The tool call `req` asks for on `endpoint`, or `None` for a text answer: no tools, a
/// `tool_choice` of none, or (under `auto`) a conversation that ends with a tool result, so
/// that an agent loop against the mock ends after one call. A `tool_choice` naming a tool that
/// is not in `tools` is the client's error, as it is for the real APIs.
pub fn choose(endpoint: Endpoint, req: &Value) -> Result<Option<ToolCall>, ApiError> {
    // (name, schema) of every tool the model could call; provider-run tools (Anthropic's
    // `web_search`, OpenAI's built-in ones) have no schema to answer and are skipped.
    let tools: Vec<(&str, &Value)> = req
        .get("tools")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|t| tool_entry(endpoint, t))
        .collect();
    let Some(&first) = tools.first() else {
        return Ok(None);
    };
    let (name, schema) = match choice(endpoint, req.get("tool_choice")) {
        Choice::None => return Ok(None),
        Choice::Auto if ends_with_tool_result(endpoint, req) => return Ok(None),
        Choice::Auto | Choice::Any => first,
        Choice::Named(n) => *tools.iter().find(|(t, _)| *t == n).ok_or_else(|| {
            ApiError::new(
                ErrorKind::BadRequest,
                format!("tool_choice names tool `{n}`, which is not in `tools`"),
            )
        })?,
    };
    Ok(Some(ToolCall {
        name: name.to_string(),
        arguments: arguments(schema),
    }))
}

/// A callable tool's name and parameter schema in `endpoint`'s shape.
fn tool_entry(endpoint: Endpoint, t: &Value) -> Option<(&str, &Value)> {
    let (f, schema_key) = match endpoint {
        // {type:"function", function:{name, parameters}}
        Endpoint::ChatCompletions if t.get("type")? == "function" => {
            (t.get("function")?, "parameters")
        }
        // {type:"function", name, parameters}
        Endpoint::Responses if t.get("type")? == "function" => (t, "parameters"),
        // {name, description, input_schema}; `type` is absent or "custom" for client tools.
        Endpoint::Messages if t.get("input_schema").is_some() => (t, "input_schema"),
        _ => return None,
    };
    let name = f.get("name")?.as_str()?;
    Some((name, f.get(schema_key).unwrap_or(&Value::Null)))
}

#[derive(Debug, PartialEq)]
enum Choice<'a> {
    None,
    /// The model decides; the mock calls the first tool unless a tool result came last.
    Auto,
    /// A call is required (`required`, `any`): the first tool.
    Any,
    Named(&'a str),
}

/// `tool_choice` in `endpoint`'s shape; absent or unrecognised means `auto`, the APIs' default.
fn choice(endpoint: Endpoint, c: Option<&Value>) -> Choice<'_> {
    let Some(c) = c else {
        return Choice::Auto;
    };
    let ty = c.as_str().or_else(|| c.get("type").and_then(Value::as_str));
    let named = match endpoint {
        Endpoint::ChatCompletions => c.pointer("/function/name"),
        _ => c.get("name"),
    };
    match (ty, named.and_then(Value::as_str)) {
        (Some("none"), _) => Choice::None,
        (Some("required" | "any"), _) => Choice::Any,
        (Some("function" | "tool"), Some(n)) => Choice::Named(n),
        _ => Choice::Auto,
    }
}

/// Whether the conversation's last turn hands back a tool's result.
fn ends_with_tool_result(endpoint: Endpoint, req: &Value) -> bool {
    let key = if endpoint == Endpoint::Responses {
        "input"
    } else {
        "messages"
    };
    let Some(last) = req
        .get(key)
        .and_then(Value::as_array)
        .and_then(|a| a.last())
    else {
        return false;
    };
    let is = |v: &Value, k: &str, want: &str| v.get(k).and_then(Value::as_str) == Some(want);
    match endpoint {
        Endpoint::ChatCompletions => is(last, "role", "tool"),
        Endpoint::Responses => is(last, "type", "function_call_output"),
        _ => last
            .get("content")
            .and_then(Value::as_array)
            .is_some_and(|parts| parts.iter().any(|p| is(p, "type", "tool_result"))),
    }
}

/// Arguments that satisfy `schema`: its required properties (none when `required` is absent)
/// with a placeholder value each.
pub fn arguments(schema: &Value) -> Value {
    match placeholder(schema, schema, 0) {
        v @ Value::Object(_) => v,
        // A tool's parameters are an object; anything else (or no schema) gets no arguments.
        _ => json!({}),
    }
}

/// A value of `schema`: its `const`, its first `enum` value, or one per `type`. `root` resolves
/// local `$ref`s (`#/$defs/…`, as pydantic writes them).
fn placeholder(schema: &Value, root: &Value, depth: usize) -> Value {
    if depth > MAX_DEPTH {
        return Value::Null;
    }
    if let Some(r) = schema.get("$ref").and_then(Value::as_str) {
        return match r.strip_prefix('#').and_then(|p| root.pointer(p)) {
            Some(s) => placeholder(s, root, depth + 1),
            None => Value::Null,
        };
    }
    if let Some(c) = schema.get("const") {
        return c.clone();
    }
    if let Some(v) = schema
        .get("enum")
        .and_then(Value::as_array)
        .and_then(|e| e.first())
    {
        return v.clone();
    }
    for key in ["anyOf", "oneOf", "allOf"] {
        if let Some(s) = schema
            .get(key)
            .and_then(Value::as_array)
            .and_then(|a| a.first())
        {
            return placeholder(s, root, depth + 1);
        }
    }
    match schema_type(schema) {
        Some("object") => {
            let props = schema.get("properties").and_then(Value::as_object);
            let mut out = Map::new();
            for name in schema
                .get("required")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                let Some(name) = name.as_str() else { continue };
                let sub = props.and_then(|p| p.get(name)).unwrap_or(&Value::Null);
                out.insert(name.to_string(), placeholder(sub, root, depth + 1));
            }
            Value::Object(out)
        }
        Some("array") => match schema.get("items") {
            Some(items) if items.is_object() => json!([placeholder(items, root, depth + 1)]),
            _ => json!([]),
        },
        Some(t @ ("integer" | "number")) => number(schema, t == "integer"),
        Some("boolean") => Value::Bool(true),
        Some("null") => Value::Null,
        // "string", and a property with no schema: a string is the likeliest to be accepted.
        _ => json!(EXAMPLE),
    }
}

/// The schema's `type`: the first non-null one of a list; `object` when only `properties` say so.
fn schema_type(schema: &Value) -> Option<&str> {
    match schema.get("type") {
        Some(Value::String(t)) => Some(t),
        Some(Value::Array(ts)) => ts.iter().filter_map(Value::as_str).find(|t| *t != "null"),
        _ if schema.get("properties").is_some() => Some("object"),
        _ => None,
    }
}

/// 1, moved into `minimum`..=`maximum` when the schema bounds it.
fn number(schema: &Value, integer: bool) -> Value {
    let bound = |k| schema.get(k).and_then(Value::as_f64);
    let mut n = 1.0_f64;
    if let Some(min) = bound("minimum") {
        n = n.max(min);
    }
    if let Some(max) = bound("maximum") {
        n = n.min(max);
    }
    if integer {
        json!(n.ceil() as i64)
    } else {
        json!(n)
    }
}

/// `s` in pieces of a few characters (at least two pieces when it has two characters), the
/// way providers stream a tool call's arguments.
pub fn fragments(s: &str) -> Vec<&str> {
    let n = s.chars().count();
    let size = n.div_ceil(2).clamp(1, 8);
    let mut out = Vec::with_capacity(n / size + 1);
    let mut start = 0;
    for (i, (at, _)) in s.char_indices().enumerate() {
        if i > 0 && i % size == 0 {
            out.push(&s[start..at]);
            start = at;
        }
    }
    if start < s.len() {
        out.push(&s[start..]);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tools_req(endpoint: Endpoint, tool_choice: Option<Value>) -> Value {
        let schema = |p: &str| json!({"type": "object", "properties": {p: {"type": "string"}}, "required": [p]});
        let tools = match endpoint {
            Endpoint::ChatCompletions => json!([
                {"type": "function", "function": {"name": "get_weather", "parameters": schema("city")}},
                {"type": "function", "function": {"name": "get_time", "parameters": schema("zone")}}]),
            Endpoint::Responses => json!([
                {"type": "web_search"},
                {"type": "function", "name": "get_weather", "parameters": schema("city")},
                {"type": "function", "name": "get_time", "parameters": schema("zone")}]),
            _ => json!([
                {"type": "web_search_20250305", "name": "web_search"},
                {"name": "get_weather", "description": "d", "input_schema": schema("city")},
                {"name": "get_time", "input_schema": schema("zone")}]),
        };
        let mut req = json!({"model": "demo", "tools": tools,
                             "messages": [{"role": "user", "content": "hi"}], "input": "hi"});
        if let Some(c) = tool_choice {
            req["tool_choice"] = c;
        }
        req
    }

    fn chosen(endpoint: Endpoint, tool_choice: Option<Value>) -> Option<String> {
        choose(endpoint, &tools_req(endpoint, tool_choice))
            .unwrap()
            .map(|c| c.name)
    }

    #[test]
    fn tool_choice_selects_the_tool_in_each_shape() {
        let weather = Some("get_weather".to_string());
        let time = Some("get_time".to_string());
        for e in [Endpoint::ChatCompletions, Endpoint::Responses] {
            assert_eq!(
                chosen(e, None),
                weather,
                "{e:?} default: the first function tool"
            );
            assert_eq!(chosen(e, Some(json!("auto"))), weather);
            assert_eq!(chosen(e, Some(json!("required"))), weather);
            assert_eq!(chosen(e, Some(json!("none"))), None);
        }
        let named = json!({"type": "function", "function": {"name": "get_time"}});
        assert_eq!(chosen(Endpoint::ChatCompletions, Some(named)), time);
        let named = json!({"type": "function", "name": "get_time"});
        assert_eq!(chosen(Endpoint::Responses, Some(named)), time);

        let m = Endpoint::Messages;
        assert_eq!(chosen(m, None), weather, "server tools are skipped");
        assert_eq!(chosen(m, Some(json!({"type": "auto"}))), weather);
        assert_eq!(chosen(m, Some(json!({"type": "any"}))), weather);
        assert_eq!(chosen(m, Some(json!({"type": "none"}))), None);
        assert_eq!(
            chosen(m, Some(json!({"type": "tool", "name": "get_time"}))),
            time
        );

        let call = choose(m, &tools_req(m, None)).unwrap().unwrap();
        assert_eq!(call.arguments, json!({"city": "example"}));
        assert_eq!(
            choose(m, &json!({"messages": []})).unwrap(),
            None,
            "no tools"
        );
    }

    #[test]
    fn a_named_tool_that_is_missing_is_a_bad_request() {
        let c = json!({"type": "tool", "name": "launch"});
        let err = choose(Endpoint::Messages, &tools_req(Endpoint::Messages, Some(c))).unwrap_err();
        assert_eq!(err.kind, ErrorKind::BadRequest);
        assert!(err.message.contains("`launch`"), "{}", err.message);
    }

    #[test]
    fn a_tool_result_last_gets_text_under_auto_and_a_call_when_forced() {
        let mut req = tools_req(Endpoint::ChatCompletions, None);
        req["messages"] = json!([{"role": "user", "content": "hi"},
            {"role": "assistant", "content": null, "tool_calls": []},
            {"role": "tool", "tool_call_id": "call_1", "content": "sunny"}]);
        assert_eq!(choose(Endpoint::ChatCompletions, &req).unwrap(), None);
        req["tool_choice"] = json!("required");
        assert!(choose(Endpoint::ChatCompletions, &req).unwrap().is_some());

        let mut req = tools_req(Endpoint::Messages, None);
        req["messages"] = json!([{"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "toolu_1", "content": "sunny"}]}]);
        assert_eq!(choose(Endpoint::Messages, &req).unwrap(), None);

        let mut req = tools_req(Endpoint::Responses, None);
        req["input"] =
            json!([{"type": "function_call_output", "call_id": "call_1", "output": "x"}]);
        assert_eq!(choose(Endpoint::Responses, &req).unwrap(), None);
    }

    #[test]
    fn arguments_hold_a_placeholder_per_required_property() {
        let schema = json!({
            "type": "object",
            "properties": {
                "s": {"type": "string"}, "i": {"type": "integer"}, "n": {"type": "number"},
                "b": {"type": "boolean"}, "e": {"enum": ["c", "f"]}, "k": {"const": 7},
                "a": {"type": "array", "items": {"type": "integer"}}, "bare": {"type": "array"},
                "opt": {"type": ["string", "null"]},
                "lo": {"type": "integer", "minimum": 3}, "hi": {"type": "number", "maximum": 0.5},
                "o": {"type": "object", "properties": {"x": {"type": "boolean"}, "y": {"type": "string"}},
                      "required": ["x"]},
                "r": {"$ref": "#/$defs/Unit"},
                "u": {"anyOf": [{"type": "integer"}, {"type": "null"}]},
                "optional": {"type": "string"}
            },
            "required": ["s", "i", "n", "b", "e", "k", "a", "bare", "opt", "lo", "hi", "o", "r", "u"],
            "$defs": {"Unit": {"type": "string", "enum": ["kg"]}}
        });
        assert_eq!(
            arguments(&schema),
            json!({"s": "example", "i": 1, "n": 1.0, "b": true, "e": "c", "k": 7, "a": [1],
                   "bare": [], "opt": "example", "lo": 3, "hi": 0.5, "o": {"x": true},
                   "r": "kg", "u": 1})
        );
    }

    #[test]
    fn arguments_without_required_or_schema_are_empty() {
        let no_required = json!({"type": "object", "properties": {"a": {"type": "string"}}});
        assert_eq!(arguments(&no_required), json!({}));
        assert_eq!(arguments(&Value::Null), json!({}));
        let recursive = json!({"$ref": "#/$defs/N", "$defs": {"N": {"type": "object",
            "properties": {"next": {"$ref": "#/$defs/N"}}, "required": ["next"]}}});
        let v = arguments(&recursive);
        assert!(v["next"]["next"].is_object(), "followed, then cut off: {v}");
    }

    #[test]
    fn fragments_split_and_rejoin() {
        assert_eq!(fragments("{}"), ["{", "}"]);
        let s = r#"{"city":"Zürich","days":3}"#;
        let f = fragments(s);
        assert!(f.len() > 2, "{f:?}");
        assert_eq!(f.concat(), s);
        assert!(fragments("").is_empty());
    }
}
