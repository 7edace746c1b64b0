//! OpenAI Responses answers (non-streamed): decoded into the pivot, and encoded from it.

use super::pivot::{Output, Response, Stop, Usage};
use super::{count, prefixed, TranslateError};
use serde_json::{json, Value};

pub(super) fn usage_from(u: &Value) -> Usage {
    Usage::from_openai(
        count(u, "input_tokens"),
        count(&u["input_tokens_details"], "cached_tokens"),
        count(&u["input_tokens_details"], "cache_write_tokens"),
        count(u, "output_tokens"),
    )
}

pub(super) fn usage_to(u: &Usage) -> Value {
    json!({
        "input_tokens": u.openai_prompt(),
        "input_tokens_details": {"cached_tokens": u.cache_read, "cache_write_tokens": u.cache_write},
        "output_tokens": u.output,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": u.openai_prompt() + u.output,
    })
}

/// The stop reason of a finished response object.
pub(super) fn stop_from(resp: &Value, had_tool_call: bool) -> Stop {
    match (
        resp["status"].as_str(),
        resp["incomplete_details"]["reason"].as_str(),
    ) {
        (Some("incomplete"), Some("content_filter")) => Stop::Refusal,
        (Some("incomplete"), _) => Stop::MaxTokens,
        _ if had_tool_call => Stop::ToolUse,
        _ => Stop::EndTurn,
    }
}

/// `status` and `incomplete_details`.
pub(super) fn status_to(stop: &Stop) -> (&'static str, Value) {
    match stop {
        Stop::MaxTokens => ("incomplete", json!({"reason": "max_output_tokens"})),
        Stop::Refusal => ("incomplete", json!({"reason": "content_filter"})),
        _ => ("completed", Value::Null),
    }
}

pub(super) fn decode(body: &Value) -> Result<Response, TranslateError> {
    let items = body["output"]
        .as_array()
        .ok_or_else(|| TranslateError::upstream("output", "is missing"))?;
    let mut content = Vec::new();
    for (i, it) in items.iter().enumerate() {
        match it["type"].as_str() {
            Some("message") => {
                for p in it["content"].as_array().map(Vec::as_slice).unwrap_or(&[]) {
                    match p["type"].as_str() {
                        Some("output_text") => content.push(Output::Text(
                            p["text"].as_str().unwrap_or_default().to_string(),
                        )),
                        Some("refusal") => content.push(Output::Refusal(
                            p["refusal"].as_str().unwrap_or_default().to_string(),
                        )),
                        _ => {}
                    }
                }
            }
            Some("function_call") => content.push(Output::ToolCall {
                id: it["call_id"]
                    .as_str()
                    .ok_or_else(|| {
                        TranslateError::upstream(format!("output[{i}].call_id"), "is missing")
                    })?
                    .to_string(),
                name: it["name"]
                    .as_str()
                    .ok_or_else(|| {
                        TranslateError::upstream(format!("output[{i}].name"), "is missing")
                    })?
                    .to_string(),
                arguments: it["arguments"].as_str().unwrap_or("{}").to_string(),
            }),
            // Reasoning and built-in tool items have no equivalent elsewhere (documented drop).
            _ => {}
        }
    }
    let had_tool = content.iter().any(|c| matches!(c, Output::ToolCall { .. }));
    Ok(Response {
        id: body["id"].as_str().unwrap_or_default().to_string(),
        created: body["created_at"].as_u64().unwrap_or(0),
        stop: stop_from(body, had_tool),
        content,
        usage: usage_from(&body["usage"]),
    })
}

/// The response object; also the payload of the stream's `response.completed`.
pub(super) fn response_object(
    id: &str,
    created: u64,
    model: &str,
    output: Vec<Value>,
    stop: Option<&Stop>,
    usage: Option<&Usage>,
) -> Value {
    let (status, incomplete) = match stop {
        Some(s) => status_to(s),
        None => ("in_progress", Value::Null),
    };
    json!({
        "id": prefixed("resp_", id),
        "object": "response",
        "created_at": created,
        "status": status,
        "error": null,
        "incomplete_details": incomplete,
        "instructions": null,
        "model": model,
        "output": output,
        "parallel_tool_calls": true,
        "tool_choice": "auto",
        "tools": [],
        "metadata": {},
        "usage": usage.map(usage_to),
    })
}

pub(super) fn message_item(id: &str, status: &str, content: Vec<Value>) -> Value {
    json!({"type": "message", "id": id, "status": status, "role": "assistant", "content": content})
}

pub(super) fn call_item(
    id: &str,
    call_id: &str,
    name: &str,
    arguments: &str,
    status: &str,
) -> Value {
    json!({"type": "function_call", "id": id, "call_id": call_id, "name": name, "arguments": arguments, "status": status})
}

pub(super) fn text_part(text: &str) -> Value {
    json!({"type": "output_text", "text": text, "annotations": []})
}

pub(super) fn refusal_part(text: &str) -> Value {
    json!({"type": "refusal", "refusal": text})
}

pub(super) fn encode(r: &Response, model: &str) -> Value {
    let mut output = Vec::new();
    let mut parts = Vec::new();
    let msg_id = |n: usize| format!("msg_{}_{n}", r.id);
    for o in &r.content {
        match o {
            Output::Text(t) => parts.push(text_part(t)),
            Output::Refusal(t) => parts.push(refusal_part(t)),
            Output::ToolCall {
                id,
                name,
                arguments,
            } => {
                if !parts.is_empty() {
                    output.push(message_item(
                        &msg_id(output.len()),
                        "completed",
                        std::mem::take(&mut parts),
                    ));
                }
                output.push(call_item(
                    &format!("fc_{id}"),
                    id,
                    name,
                    arguments,
                    "completed",
                ));
            }
        }
    }
    if !parts.is_empty() {
        output.push(message_item(&msg_id(output.len()), "completed", parts));
    }
    response_object(
        &r.id,
        r.created,
        model,
        output,
        Some(&r.stop),
        Some(&r.usage),
    )
}
