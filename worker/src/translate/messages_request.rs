//! Anthropic Messages requests: decoded into the pivot, and encoded from it.

use super::chat_request::put;
use super::pivot::{
    merge_turns, Format, Image, Message, Part, Reasoning, Request, Role, Text, Tool, ToolChoice,
};
use super::{
    check_fields, join, object, opt_array, opt_bool, opt_f64, opt_str, opt_u64, req_str, Api,
    RequestOptions, TranslateError,
};
use serde_json::{json, Map, Value};

const KNOWN: &[&str] = &[
    "model",
    "messages",
    "system",
    "max_tokens",
    "metadata",
    "stop_sequences",
    "stream",
    "temperature",
    "top_p",
    "tools",
    "tool_choice",
    "thinking",
    "service_tier",
];

const NOTE: &str = "from Messages";

/// Anthropic's smallest thinking budget.
const MIN_BUDGET: u64 = 1024;

pub(super) fn decode(body: &Value) -> Result<Request, TranslateError> {
    let o = object(body, "body")?;
    check_fields(o, KNOWN, "", NOTE)?;
    let mut req = Request {
        model: req_str(o, "model", "")?,
        stream: opt_bool(o, "stream", "")?.unwrap_or(false),
        max_tokens: opt_u64(o, "max_tokens")?,
        temperature: opt_f64(o, "temperature")?,
        top_p: opt_f64(o, "top_p")?,
        ..Request::default()
    };
    for (i, s) in opt_array(o, "stop_sequences", "")?.iter().enumerate() {
        let s = s.as_str().ok_or_else(|| {
            TranslateError::invalid(format!("stop_sequences[{i}]"), "must be a string")
        })?;
        req.stop.push(s.to_string());
    }
    if let Some(m) = o.get("metadata").filter(|m| !m.is_null()) {
        let m = object(m, "metadata")?;
        check_fields(m, &["user_id"], "metadata", NOTE)?;
        req.user = opt_str(m, "user_id", "metadata")?;
    }
    req.system = match o.get("system") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::String(s)) => vec![Text {
            text: s.clone(),
            cache: false,
        }],
        Some(Value::Array(a)) => a
            .iter()
            .enumerate()
            .map(|(i, b)| match decode_block(b, &format!("system[{i}]"))? {
                Part::Text(t) => Ok(t),
                _ => Err(TranslateError::invalid(
                    format!("system[{i}]"),
                    "must be a text block",
                )),
            })
            .collect::<Result<_, _>>()?,
        Some(_) => {
            return Err(TranslateError::invalid(
                "system",
                "must be a string or an array of text blocks",
            ))
        }
    };
    for (i, t) in opt_array(o, "tools", "")?.iter().enumerate() {
        req.tools.push(decode_tool(t, &format!("tools[{i}]"))?);
    }
    if let Some(tc) = o.get("tool_choice").filter(|v| !v.is_null()) {
        let tc = object(tc, "tool_choice")?;
        req.tool_choice = Some(match tc.get("type").and_then(Value::as_str) {
            Some("auto") => ToolChoice::Auto,
            Some("none") => ToolChoice::None,
            Some("any") => ToolChoice::Required,
            Some("tool") => ToolChoice::Named(req_str(tc, "name", "tool_choice")?),
            _ => {
                return Err(TranslateError::invalid(
                    "tool_choice.type",
                    "must be auto, none, any or tool",
                ))
            }
        });
        if opt_bool(tc, "disable_parallel_tool_use", "tool_choice")? == Some(true) {
            req.parallel_tool_calls = Some(false);
        }
    }
    if let Some(th) = o.get("thinking").filter(|v| !v.is_null()) {
        let th = object(th, "thinking")?;
        req.reasoning = Some(match th.get("type").and_then(Value::as_str) {
            Some("enabled") => {
                Reasoning::Budget(opt_u64(th, "budget_tokens")?.unwrap_or(MIN_BUDGET))
            }
            Some("disabled") => Reasoning::Off,
            _ => {
                return Err(TranslateError::invalid(
                    "thinking.type",
                    "must be enabled or disabled",
                ))
            }
        });
    }
    let mut turns = Vec::new();
    for (i, m) in opt_array(o, "messages", "")?.iter().enumerate() {
        let at = format!("messages[{i}]");
        let mo = object(m, &at)?;
        check_fields(mo, &["role", "content"], &at, NOTE)?;
        let role = match req_str(mo, "role", &at)?.as_str() {
            "user" => Role::User,
            "assistant" => Role::Assistant,
            r => {
                return Err(TranslateError::invalid(
                    join(&at, "role"),
                    format!("unknown role `{r}`"),
                ))
            }
        };
        let parts = decode_content(
            mo.get("content").unwrap_or(&Value::Null),
            &join(&at, "content"),
        )?;
        turns.push(Message { role, parts });
    }
    req.messages = merge_turns(turns);
    Ok(req)
}

fn decode_content(c: &Value, at: &str) -> Result<Vec<Part>, TranslateError> {
    match c {
        Value::String(s) => Ok(vec![Part::Text(Text {
            text: s.clone(),
            cache: false,
        })]),
        Value::Array(a) => {
            let mut parts = Vec::with_capacity(a.len());
            for (i, b) in a.iter().enumerate() {
                let bat = format!("{at}[{i}]");
                // Earlier thinking has no OpenAI equivalent (documented drop).
                if matches!(b["type"].as_str(), Some("thinking" | "redacted_thinking")) {
                    continue;
                }
                parts.push(decode_block(b, &bat)?);
            }
            Ok(parts)
        }
        _ => Err(TranslateError::invalid(
            at,
            "must be a string or an array of blocks",
        )),
    }
}

fn cache_of(o: &Map<String, Value>) -> bool {
    o.get("cache_control").is_some_and(|c| !c.is_null())
}

fn decode_block(b: &Value, at: &str) -> Result<Part, TranslateError> {
    let o = object(b, at)?;
    let cache = cache_of(o);
    match o.get("type").and_then(Value::as_str) {
        Some("text") => Ok(Part::Text(Text {
            text: req_str(o, "text", at)?,
            cache,
        })),
        Some("image") => {
            let sat = join(at, "source");
            let s = object(o.get("source").unwrap_or(&Value::Null), &sat)?;
            let source = match s.get("type").and_then(Value::as_str) {
                Some("base64") => Image::Base64 {
                    media_type: req_str(s, "media_type", &sat)?,
                    data: req_str(s, "data", &sat)?,
                },
                Some("url") => Image::Url(req_str(s, "url", &sat)?),
                _ => {
                    return Err(TranslateError::invalid(
                        join(&sat, "type"),
                        "only base64 and url images can be translated",
                    ))
                }
            };
            Ok(Part::Image { source, cache })
        }
        Some("tool_use") => {
            let arguments = o.get("input").cloned().unwrap_or_else(|| json!({}));
            if !arguments.is_object() {
                return Err(TranslateError::invalid(
                    join(at, "input"),
                    "must be an object",
                ));
            }
            Ok(Part::ToolCall {
                id: req_str(o, "id", at)?,
                name: req_str(o, "name", at)?,
                arguments,
            })
        }
        Some("tool_result") => {
            let content = match o.get("content") {
                None | Some(Value::Null) => Vec::new(),
                Some(c) => decode_content(c, &join(at, "content"))?,
            };
            if content
                .iter()
                .any(|p| matches!(p, Part::ToolCall { .. } | Part::ToolResult { .. }))
            {
                return Err(TranslateError::invalid(
                    join(at, "content"),
                    "holds text and images only",
                ));
            }
            Ok(Part::ToolResult {
                call_id: req_str(o, "tool_use_id", at)?,
                content,
                is_error: opt_bool(o, "is_error", at)?.unwrap_or(false),
            })
        }
        other => Err(TranslateError::invalid(
            join(at, "type"),
            format!("block type `{}` cannot be translated", other.unwrap_or("?")),
        )),
    }
}

fn decode_tool(t: &Value, at: &str) -> Result<Tool, TranslateError> {
    let o = object(t, at)?;
    if let Some(ty) = o.get("type").and_then(Value::as_str) {
        if ty != "custom" {
            return Err(TranslateError::invalid(
                join(at, "type"),
                format!("server tool `{ty}` cannot be translated"),
            ));
        }
    }
    Ok(Tool {
        name: req_str(o, "name", at)?,
        description: opt_str(o, "description", at)?,
        parameters: o
            .get("input_schema")
            .cloned()
            .unwrap_or_else(|| json!({"type": "object"})),
        strict: false,
        cache: cache_of(o),
    })
}

pub(super) fn encode(req: &Request, opts: &RequestOptions) -> Result<Value, TranslateError> {
    if matches!(
        req.format,
        Some(Format::JsonObject | Format::JsonSchema { .. })
    ) {
        return Err(TranslateError::unsupported(
            "format",
            Api::Messages,
            "Messages has no JSON mode or structured output",
        ));
    }
    let mut o = Map::new();
    let max_tokens = req.max_tokens.unwrap_or(opts.default_max_tokens);
    o.insert("model".into(), json!(req.model));
    o.insert("max_tokens".into(), json!(max_tokens));
    if !req.system.is_empty() {
        let plain = req.system.len() == 1 && !req.system[0].cache;
        o.insert(
            "system".into(),
            if plain {
                json!(req.system[0].text)
            } else {
                Value::Array(
                    req.system
                        .iter()
                        .map(|t| text_block(&t.text, t.cache))
                        .collect(),
                )
            },
        );
    }
    let messages: Vec<Value> = req.messages.iter().filter_map(encode_message).collect();
    o.insert("messages".into(), Value::Array(messages));
    if req.stream {
        o.insert("stream".into(), json!(true));
    }
    // OpenAI accepts 0..2, Anthropic 0..1 (documented clamp).
    put(
        &mut o,
        "temperature",
        req.temperature.map(|t| json!(t.min(1.0))),
    );
    put(&mut o, "top_p", req.top_p.map(Value::from));
    if !req.stop.is_empty() {
        o.insert("stop_sequences".into(), json!(req.stop));
    }
    put(
        &mut o,
        "metadata",
        req.user.as_ref().map(|u| json!({"user_id": u})),
    );
    if !req.tools.is_empty() {
        o.insert(
            "tools".into(),
            Value::Array(
                req.tools
                    .iter()
                    .map(|t| {
                        let mut v = json!({"name": t.name, "input_schema": t.parameters});
                        if let Some(d) = &t.description {
                            v["description"] = json!(d);
                        }
                        if t.cache {
                            v["cache_control"] = json!({"type": "ephemeral"});
                        }
                        v
                    })
                    .collect(),
            ),
        );
        let mut choice = match &req.tool_choice {
            None | Some(ToolChoice::Auto) => json!({"type": "auto"}),
            Some(ToolChoice::None) => json!({"type": "none"}),
            Some(ToolChoice::Required) => json!({"type": "any"}),
            Some(ToolChoice::Named(n)) => json!({"type": "tool", "name": n}),
        };
        if req.parallel_tool_calls == Some(false) {
            choice["disable_parallel_tool_use"] = json!(true);
        }
        if req.tool_choice.is_some() || req.parallel_tool_calls == Some(false) {
            o.insert("tool_choice".into(), choice);
        }
    }
    if let Some(r) = &req.reasoning {
        let budget = match r {
            Reasoning::Off => None,
            Reasoning::Effort(e) => Some(e.budget()),
            Reasoning::Budget(b) => Some(*b),
        };
        match budget.map(|b| b.min(max_tokens.saturating_sub(1))) {
            None => {
                o.insert("thinking".into(), json!({"type": "disabled"}));
            }
            Some(b) if b >= MIN_BUDGET => {
                o.insert(
                    "thinking".into(),
                    json!({"type": "enabled", "budget_tokens": b}),
                );
            }
            Some(_) => {}
        }
    }
    Ok(Value::Object(o))
}

fn text_block(text: &str, cache: bool) -> Value {
    let mut v = json!({"type": "text", "text": text});
    if cache {
        v["cache_control"] = json!({"type": "ephemeral"});
    }
    v
}

fn encode_part(p: &Part) -> Option<Value> {
    Some(match p {
        // Anthropic refuses empty text blocks.
        Part::Text(t) if t.text.is_empty() => return None,
        Part::Text(t) => text_block(&t.text, t.cache),
        Part::Image { source, cache } => {
            let src = match source {
                Image::Base64 { media_type, data } => {
                    json!({"type": "base64", "media_type": media_type, "data": data})
                }
                Image::Url(u) => json!({"type": "url", "url": u}),
            };
            let mut v = json!({"type": "image", "source": src});
            if *cache {
                v["cache_control"] = json!({"type": "ephemeral"});
            }
            v
        }
        Part::ToolCall {
            id,
            name,
            arguments,
        } => json!({"type": "tool_use", "id": id, "name": name, "input": arguments}),
        Part::ToolResult {
            call_id,
            content,
            is_error,
        } => {
            let mut v = json!({"type": "tool_result", "tool_use_id": call_id});
            let blocks: Vec<Value> = content.iter().filter_map(encode_part).collect();
            // An empty result (a tool that printed nothing) has no content: empty text blocks
            // are refused.
            if !blocks.is_empty() {
                v["content"] = Value::Array(blocks);
            }
            if *is_error {
                v["is_error"] = json!(true);
            }
            v
        }
    })
}

fn encode_message(m: &Message) -> Option<Value> {
    // Tool results first in a user turn, as Anthropic requires.
    let (results, rest): (Vec<&Part>, Vec<&Part>) = m
        .parts
        .iter()
        .partition(|p| matches!(p, Part::ToolResult { .. }));
    let blocks: Vec<Value> = results
        .into_iter()
        .chain(rest)
        .filter_map(encode_part)
        .collect();
    if blocks.is_empty() {
        return None;
    }
    let role = match m.role {
        Role::User => "user",
        Role::Assistant => "assistant",
    };
    Some(json!({"role": role, "content": blocks}))
}
