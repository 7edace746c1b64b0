//! Anthropic Messages answers (non-streamed): decoded into the pivot, and encoded from it.

use super::pivot::{Output, Response, Stop, Usage};
use super::{count, prefixed, TranslateError};
use serde_json::{json, Value};

pub(super) fn stop_from(reason: &str, sequence: Option<&str>) -> Stop {
    match reason {
        "stop_sequence" => Stop::StopSequence(sequence.map(str::to_string)),
        "max_tokens" | "model_context_window_exceeded" => Stop::MaxTokens,
        "tool_use" => Stop::ToolUse,
        "refusal" => Stop::Refusal,
        // `end_turn`, `pause_turn`.
        _ => Stop::EndTurn,
    }
}

/// `stop_reason` and `stop_sequence`.
pub(super) fn stop_to(stop: &Stop) -> (&'static str, Value) {
    match stop {
        Stop::EndTurn => ("end_turn", Value::Null),
        Stop::StopSequence(s) => ("stop_sequence", json!(s)),
        Stop::MaxTokens => ("max_tokens", Value::Null),
        Stop::ToolUse => ("tool_use", Value::Null),
        Stop::Refusal => ("refusal", Value::Null),
    }
}

pub(super) fn usage_from(u: &Value) -> Usage {
    Usage {
        input: count(u, "input_tokens"),
        output: count(u, "output_tokens"),
        cache_read: count(u, "cache_read_input_tokens"),
        cache_write: count(u, "cache_creation_input_tokens"),
    }
}

pub(super) fn usage_to(u: &Usage) -> Value {
    json!({
        "input_tokens": u.input,
        "output_tokens": u.output,
        "cache_creation_input_tokens": u.cache_write,
        "cache_read_input_tokens": u.cache_read,
    })
}

pub(super) fn decode(body: &Value) -> Result<Response, TranslateError> {
    let blocks = body["content"]
        .as_array()
        .ok_or_else(|| TranslateError::upstream("content", "is missing"))?;
    let mut content = Vec::new();
    for (i, b) in blocks.iter().enumerate() {
        match b["type"].as_str() {
            Some("text") => content.push(Output::Text(
                b["text"].as_str().unwrap_or_default().to_string(),
            )),
            Some("tool_use") => content.push(Output::ToolCall {
                id: b["id"].as_str().unwrap_or_default().to_string(),
                name: b["name"]
                    .as_str()
                    .ok_or_else(|| {
                        TranslateError::upstream(format!("content[{i}].name"), "is missing")
                    })?
                    .to_string(),
                arguments: b
                    .get("input")
                    .map(Value::to_string)
                    .unwrap_or_else(|| "{}".into()),
            }),
            // Thinking and server-tool blocks have no OpenAI equivalent (documented drop).
            _ => {}
        }
    }
    Ok(Response {
        id: body["id"].as_str().unwrap_or_default().to_string(),
        created: 0,
        content,
        stop: stop_from(
            body["stop_reason"].as_str().unwrap_or("end_turn"),
            body["stop_sequence"].as_str(),
        ),
        usage: usage_from(&body["usage"]),
    })
}

pub(super) fn encode(r: &Response, model: &str) -> Result<Value, TranslateError> {
    let mut content = Vec::new();
    for (i, o) in r.content.iter().enumerate() {
        content.push(match o {
            Output::Text(t) | Output::Refusal(t) => json!({"type": "text", "text": t}),
            Output::ToolCall {
                id,
                name,
                arguments,
            } => {
                let input: Value = match serde_json::from_str(if arguments.trim().is_empty() {
                    "{}"
                } else {
                    arguments
                }) {
                    Ok(v @ Value::Object(_)) => v,
                    _ => {
                        return Err(TranslateError::upstream(
                            format!("tool call {i} (`{id}`) arguments"),
                            "are not a JSON object",
                        ))
                    }
                };
                json!({"type": "tool_use", "id": id, "name": name, "input": input})
            }
        });
    }
    let (reason, seq) = stop_to(&r.stop);
    Ok(json!({
        "id": prefixed("msg_", &r.id),
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": reason,
        "stop_sequence": seq,
        "usage": usage_to(&r.usage),
    }))
}
