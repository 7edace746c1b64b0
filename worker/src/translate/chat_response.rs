//! OpenAI Chat Completions answers (non-streamed): decoded into the pivot, and encoded from it.

use super::pivot::{Output, Response, Stop, Usage};
use super::{count, prefixed, TranslateError};
use serde_json::{json, Value};

pub(super) fn stop_from(reason: &str) -> Stop {
    match reason {
        "length" => Stop::MaxTokens,
        "tool_calls" | "function_call" => Stop::ToolUse,
        "content_filter" => Stop::Refusal,
        _ => Stop::EndTurn,
    }
}

pub(super) fn stop_to(stop: &Stop) -> &'static str {
    match stop {
        Stop::EndTurn | Stop::StopSequence(_) => "stop",
        Stop::MaxTokens => "length",
        Stop::ToolUse => "tool_calls",
        Stop::Refusal => "content_filter",
    }
}

pub(super) fn usage_from(u: &Value) -> Usage {
    Usage::from_openai(
        count(u, "prompt_tokens"),
        count(&u["prompt_tokens_details"], "cached_tokens"),
        count(&u["prompt_tokens_details"], "cache_write_tokens"),
        count(u, "completion_tokens"),
    )
}

pub(super) fn usage_to(u: &Usage) -> Value {
    json!({
        "prompt_tokens": u.openai_prompt(),
        "completion_tokens": u.output,
        "total_tokens": u.openai_prompt() + u.output,
        "prompt_tokens_details": {"cached_tokens": u.cache_read, "cache_write_tokens": u.cache_write},
    })
}

pub(super) fn decode(body: &Value) -> Result<Response, TranslateError> {
    let choice = &body["choices"][0];
    let m = &choice["message"];
    if !m.is_object() {
        return Err(TranslateError::upstream("choices[0].message", "is missing"));
    }
    let mut content = Vec::new();
    if let Some(t) = m["content"].as_str().filter(|t| !t.is_empty()) {
        content.push(Output::Text(t.to_string()));
    }
    if let Some(r) = m["refusal"].as_str().filter(|t| !t.is_empty()) {
        content.push(Output::Refusal(r.to_string()));
    }
    for (j, c) in m["tool_calls"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or(&[])
        .iter()
        .enumerate()
    {
        let f = &c["function"];
        let name = f["name"].as_str().ok_or_else(|| {
            TranslateError::upstream(
                format!("choices[0].message.tool_calls[{j}].function.name"),
                "is missing",
            )
        })?;
        content.push(Output::ToolCall {
            id: c["id"]
                .as_str()
                .map(str::to_string)
                .unwrap_or_else(|| format!("call_{j}")),
            name: name.to_string(),
            arguments: f["arguments"].as_str().unwrap_or("{}").to_string(),
        });
    }
    Ok(Response {
        id: body["id"].as_str().unwrap_or_default().to_string(),
        created: body["created"].as_u64().unwrap_or(0),
        content,
        stop: stop_from(choice["finish_reason"].as_str().unwrap_or("stop")),
        usage: usage_from(&body["usage"]),
    })
}

pub(super) fn encode(r: &Response, model: &str) -> Value {
    let text: String = r
        .content
        .iter()
        .filter_map(|o| match o {
            Output::Text(t) => Some(t.as_str()),
            _ => None,
        })
        .collect();
    let refusal: String = r
        .content
        .iter()
        .filter_map(|o| match o {
            Output::Refusal(t) => Some(t.as_str()),
            _ => None,
        })
        .collect();
    let calls: Vec<Value> = r.content.iter().filter_map(|o| match o {
        Output::ToolCall { id, name, arguments } => Some(json!({"id": id, "type": "function", "function": {"name": name, "arguments": arguments}})),
        _ => None,
    }).collect();
    let mut message = json!({
        "role": "assistant",
        "content": if text.is_empty() && (!calls.is_empty() || !refusal.is_empty()) { Value::Null } else { json!(text) },
        "refusal": if refusal.is_empty() { Value::Null } else { json!(refusal) },
    });
    if !calls.is_empty() {
        message["tool_calls"] = Value::Array(calls);
    }
    json!({
        "id": prefixed("chatcmpl-", &r.id),
        "object": "chat.completion",
        "created": r.created,
        "model": model,
        "choices": [{"index": 0, "message": message, "finish_reason": stop_to(&r.stop), "logprobs": null}],
        "usage": usage_to(&r.usage),
    })
}
