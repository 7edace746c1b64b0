//! The three provider APIs as the real servers speak them, for the scriptable upstream: answers
//! (JSON and SSE, text and tool calls, shaped like OpenAI Chat Completions, Anthropic Messages
//! and OpenAI Responses send them, with tool-call arguments split over many chunks and a Chat
//! call's id and name in separate chunks), and the strict request check (`check`) that rejects
//! what each real API rejects, so a translated request must be one the provider accepts.

use super::upstream::Script;
use serde_json::{json, Value};

/// A provider API, named as in `[[providers]] apis`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Api {
    Chat,
    Messages,
    Responses,
}

impl Api {
    pub const ALL: [Api; 3] = [Api::Chat, Api::Messages, Api::Responses];

    pub fn name(self) -> &'static str {
        match self {
            Api::Chat => "chat",
            Api::Messages => "messages",
            Api::Responses => "responses",
        }
    }

    /// The client path of this API at the gateway.
    pub fn client_path(self) -> &'static str {
        match self {
            Api::Chat => "/v1/chat/completions",
            Api::Messages => "/v1/messages",
            Api::Responses => "/v1/responses",
        }
    }

    /// The path the upstream serves it on (OpenAI base URLs end in `/v1`; so does this one).
    pub fn upstream_path(self) -> &'static str {
        self.client_path()
    }

    /// The path a strict upstream knows, if `path` is one.
    pub fn of_path(path: &str) -> Option<Api> {
        Api::ALL.into_iter().find(|a| a.upstream_path() == path)
    }
}

/// What the provider answers.
#[derive(Debug, Clone)]
pub enum Answer {
    Text(String),
    /// One tool call: name and arguments (an object).
    Tool(String, Value),
}

/// Splits `s` into pieces of at most `n` characters (many small chunks, as servers send them).
fn pieces(s: &str, n: usize) -> Vec<String> {
    let chars: Vec<char> = s.chars().collect();
    chars.chunks(n).map(|c| c.iter().collect()).collect()
}

fn data(v: Value) -> String {
    format!("data: {v}\n\n")
}

fn event(name: &str, v: Value) -> String {
    format!("event: {name}\ndata: {v}\n\n")
}

/// The provider's answer in `api`, streamed (SSE) or not (JSON), with model `model`.
pub fn answer(api: Api, model: &str, a: &Answer, stream: bool) -> Script {
    match (api, stream) {
        (Api::Chat, false) => Script::json(200, chat_json(model, a)),
        (Api::Messages, false) => Script::json(200, messages_json(model, a)),
        (Api::Responses, false) => Script::json(200, responses_json(model, a)),
        (api, true) => {
            let frames = sse_frames(api, model, a);
            let refs: Vec<&str> = frames.iter().map(String::as_str).collect();
            Script::sse(&refs)
        }
    }
}

/// The frames of a streamed answer, one string per chunk sent.
pub fn sse_frames(api: Api, model: &str, a: &Answer) -> Vec<String> {
    match api {
        Api::Chat => chat_sse(model, a),
        Api::Messages => messages_sse(model, a),
        Api::Responses => responses_sse(model, a),
    }
}

fn chat_json(model: &str, a: &Answer) -> Value {
    let (message, finish) = match a {
        Answer::Text(t) => (json!({"role": "assistant", "content": t}), "stop"),
        Answer::Tool(name, args) => (
            json!({"role": "assistant", "content": null, "tool_calls": [{
                "id": "call_abc", "type": "function",
                "function": {"name": name, "arguments": args.to_string()}}]}),
            "tool_calls",
        ),
    };
    json!({"id": "chatcmpl-up1", "object": "chat.completion", "created": 1700000000,
        "model": model, "choices": [{"index": 0, "message": message, "finish_reason": finish,
        "logprobs": null}],
        "usage": {"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18}})
}

fn chat_chunk(model: &str, delta: Value, finish: Value) -> String {
    data(
        json!({"id": "chatcmpl-up1", "object": "chat.completion.chunk", "created": 1700000000,
        "model": model, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}),
    )
}

fn chat_sse(model: &str, a: &Answer) -> Vec<String> {
    let mut out = vec![chat_chunk(
        model,
        json!({"role": "assistant", "content": ""}),
        Value::Null,
    )];
    let finish = match a {
        Answer::Text(t) => {
            for p in pieces(t, 4) {
                out.push(chat_chunk(model, json!({"content": p}), Value::Null));
            }
            "stop"
        }
        Answer::Tool(name, args) => {
            // The id first, the name in a later chunk, the arguments in many (as some servers do).
            out.push(chat_chunk(
                model,
                json!({"content": null, "tool_calls": [{"index": 0, "id": "call_abc", "type": "function"}]}),
                Value::Null,
            ));
            out.push(chat_chunk(
                model,
                json!({"tool_calls": [{"index": 0, "function": {"name": name, "arguments": ""}}]}),
                Value::Null,
            ));
            for p in pieces(&args.to_string(), 3) {
                out.push(chat_chunk(
                    model,
                    json!({"tool_calls": [{"index": 0, "function": {"arguments": p}}]}),
                    Value::Null,
                ));
            }
            "tool_calls"
        }
    };
    out.push(chat_chunk(model, json!({}), json!(finish)));
    out.push(data(
        json!({"id": "chatcmpl-up1", "object": "chat.completion.chunk",
        "created": 1700000000, "model": model, "choices": [],
        "usage": {"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18}}),
    ));
    out.push("data: [DONE]\n\n".into());
    out
}

fn messages_json(model: &str, a: &Answer) -> Value {
    let (content, stop) = match a {
        Answer::Text(t) => (json!([{"type": "text", "text": t}]), "end_turn"),
        Answer::Tool(name, args) => (
            json!([{"type": "tool_use", "id": "toolu_abc", "name": name, "input": args}]),
            "tool_use",
        ),
    };
    json!({"id": "msg_up1", "type": "message", "role": "assistant", "model": model,
        "content": content, "stop_reason": stop, "stop_sequence": null,
        "usage": {"input_tokens": 11, "output_tokens": 7}})
}

fn messages_sse(model: &str, a: &Answer) -> Vec<String> {
    let mut out = vec![
        event(
            "message_start",
            json!({"type": "message_start", "message": {"id": "msg_up1", "type": "message",
            "role": "assistant", "model": model, "content": [], "stop_reason": null,
            "stop_sequence": null, "usage": {"input_tokens": 11, "output_tokens": 1}}}),
        ),
        event("ping", json!({"type": "ping"})),
    ];
    let stop = match a {
        Answer::Text(t) => {
            out.push(event(
                "content_block_start",
                json!({"type": "content_block_start",
                "index": 0, "content_block": {"type": "text", "text": ""}}),
            ));
            for p in pieces(t, 4) {
                out.push(event(
                    "content_block_delta",
                    json!({"type": "content_block_delta",
                    "index": 0, "delta": {"type": "text_delta", "text": p}}),
                ));
            }
            "end_turn"
        }
        Answer::Tool(name, args) => {
            out.push(event(
                "content_block_start",
                json!({"type": "content_block_start",
                "index": 0, "content_block": {"type": "tool_use", "id": "toolu_abc",
                "name": name, "input": {}}}),
            ));
            for p in pieces(&args.to_string(), 3) {
                out.push(event(
                    "content_block_delta",
                    json!({"type": "content_block_delta",
                    "index": 0, "delta": {"type": "input_json_delta", "partial_json": p}}),
                ));
            }
            "tool_use"
        }
    };
    out.push(event(
        "content_block_stop",
        json!({"type": "content_block_stop", "index": 0}),
    ));
    out.push(event(
        "message_delta",
        json!({"type": "message_delta",
        "delta": {"stop_reason": stop, "stop_sequence": null}, "usage": {"output_tokens": 7}}),
    ));
    out.push(event("message_stop", json!({"type": "message_stop"})));
    out
}

fn responses_output(a: &Answer) -> Value {
    match a {
        Answer::Text(t) => json!({"type": "message", "id": "msg_up1", "status": "completed",
            "role": "assistant", "content": [{"type": "output_text", "text": t,
            "annotations": []}]}),
        Answer::Tool(name, args) => json!({"type": "function_call", "id": "fc_up1",
            "call_id": "call_abc", "name": name, "arguments": args.to_string(),
            "status": "completed"}),
    }
}

fn responses_json(model: &str, a: &Answer) -> Value {
    json!({"id": "resp_up1", "object": "response", "created_at": 1700000000,
        "status": "completed", "model": model, "output": [responses_output(a)],
        "usage": {"input_tokens": 11, "output_tokens": 7, "total_tokens": 18,
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens_details": {"reasoning_tokens": 0}}})
}

fn responses_sse(model: &str, a: &Answer) -> Vec<String> {
    let mut seq = 0u64;
    let mut ev = |name: &str, mut v: Value| {
        v["type"] = json!(name);
        v["sequence_number"] = json!(seq);
        seq += 1;
        event(name, v)
    };
    let head = json!({"id": "resp_up1", "object": "response", "created_at": 1700000000,
        "status": "in_progress", "model": model, "output": []});
    let mut out = vec![
        ev("response.created", json!({"response": head})),
        ev("response.in_progress", json!({"response": head})),
    ];
    let done_item = responses_output(a);
    match a {
        Answer::Text(t) => {
            out.push(ev(
                "response.output_item.added",
                json!({"output_index": 0,
                "item": {"type": "message", "id": "msg_up1", "status": "in_progress",
                "role": "assistant", "content": []}}),
            ));
            out.push(ev(
                "response.content_part.added",
                json!({"item_id": "msg_up1",
                "output_index": 0, "content_index": 0,
                "part": {"type": "output_text", "text": "", "annotations": []}}),
            ));
            for p in pieces(t, 4) {
                out.push(ev(
                    "response.output_text.delta",
                    json!({"item_id": "msg_up1",
                    "output_index": 0, "content_index": 0, "delta": p}),
                ));
            }
            out.push(ev(
                "response.output_text.done",
                json!({"item_id": "msg_up1",
                "output_index": 0, "content_index": 0, "text": t}),
            ));
            out.push(ev(
                "response.content_part.done",
                json!({"item_id": "msg_up1",
                "output_index": 0, "content_index": 0,
                "part": {"type": "output_text", "text": t, "annotations": []}}),
            ));
        }
        Answer::Tool(name, args) => {
            out.push(ev(
                "response.output_item.added",
                json!({"output_index": 0,
                "item": {"type": "function_call", "id": "fc_up1", "call_id": "call_abc",
                "name": name, "arguments": "", "status": "in_progress"}}),
            ));
            for p in pieces(&args.to_string(), 3) {
                out.push(ev(
                    "response.function_call_arguments.delta",
                    json!({"item_id": "fc_up1",
                    "output_index": 0, "delta": p}),
                ));
            }
            out.push(ev(
                "response.function_call_arguments.done",
                json!({"item_id": "fc_up1",
                "output_index": 0, "arguments": args.to_string()}),
            ));
        }
    }
    out.push(ev(
        "response.output_item.done",
        json!({"output_index": 0, "item": done_item}),
    ));
    let mut done = responses_json(model, a);
    done["status"] = json!("completed");
    out.push(ev("response.completed", json!({"response": done})));
    out
}

/// The error body `api` sends with `status`.
pub fn error(api: Api, status: u16, message: &str) -> Script {
    let body = match api {
        Api::Messages => json!({"type": "error", "error": {"type": "invalid_request_error",
            "message": message}}),
        _ => json!({"error": {"message": message, "type": "invalid_request_error",
            "param": null, "code": null}}),
    };
    Script::json(status, body)
}

const CHAT_KEYS: &[&str] = &[
    "model",
    "messages",
    "stream",
    "stream_options",
    "max_tokens",
    "max_completion_tokens",
    "temperature",
    "top_p",
    "stop",
    "tools",
    "tool_choice",
    "parallel_tool_calls",
    "user",
    "response_format",
    "reasoning_effort",
    "n",
    "seed",
    "metadata",
    "store",
];
const MESSAGES_KEYS: &[&str] = &[
    "model",
    "messages",
    "max_tokens",
    "system",
    "metadata",
    "stop_sequences",
    "stream",
    "temperature",
    "top_p",
    "top_k",
    "tools",
    "tool_choice",
    "thinking",
    "service_tier",
];
const RESPONSES_KEYS: &[&str] = &[
    "model",
    "input",
    "instructions",
    "stream",
    "max_output_tokens",
    "temperature",
    "top_p",
    "tools",
    "tool_choice",
    "parallel_tool_calls",
    "store",
    "text",
    "reasoning",
    "user",
    "safety_identifier",
    "metadata",
    "previous_response_id",
    "include",
    "truncation",
];

/// Whether `body` is a request the real `api` accepts (the checks the real servers make that a
/// translation could get wrong); `Err` names the problem, as the server's 400 would.
pub fn check(api: Api, headers: &http::HeaderMap, body: &[u8]) -> Result<(), String> {
    let v: Value = serde_json::from_slice(body).map_err(|e| format!("invalid JSON: {e}"))?;
    let o = v.as_object().ok_or("the body is not an object")?;
    let known = match api {
        Api::Chat => CHAT_KEYS,
        Api::Messages => MESSAGES_KEYS,
        Api::Responses => RESPONSES_KEYS,
    };
    if let Some(k) = o.keys().find(|k| !known.contains(&k.as_str())) {
        return Err(format!("{k}: Extra inputs are not permitted"));
    }
    if !o.get("model").is_some_and(Value::is_string) {
        return Err("model: Field required".into());
    }
    match api {
        Api::Chat => check_chat(o),
        Api::Messages => {
            if !headers.contains_key("anthropic-version") {
                return Err("anthropic-version: header is required".into());
            }
            if headers.keys().any(|k| k.as_str() == "authorization") {
                return Err("authorization: an OpenAI key sent to Anthropic".into());
            }
            check_messages(o)
        }
        Api::Responses => check_responses(o),
    }
}

fn check_chat(o: &serde_json::Map<String, Value>) -> Result<(), String> {
    let msgs = o["messages"].as_array().ok_or("messages: Field required")?;
    if msgs.is_empty() {
        return Err("messages: must not be empty".into());
    }
    for (i, m) in msgs.iter().enumerate() {
        let role = m["role"].as_str().unwrap_or("");
        if !["system", "developer", "user", "assistant", "tool"].contains(&role) {
            return Err(format!("messages[{i}].role: invalid `{role}`"));
        }
        if role == "tool" && !m["tool_call_id"].is_string() {
            return Err(format!("messages[{i}].tool_call_id: Field required"));
        }
        for (j, c) in m["tool_calls"].as_array().into_iter().flatten().enumerate() {
            if !c["function"]["arguments"].is_string() || !c["id"].is_string() {
                return Err(format!(
                    "messages[{i}].tool_calls[{j}]: id and string arguments required"
                ));
            }
        }
        if let Some(parts) = m["content"].as_array() {
            for (j, p) in parts.iter().enumerate() {
                let t = p["type"].as_str().unwrap_or("");
                if !["text", "image_url"].contains(&t) {
                    return Err(format!("messages[{i}].content[{j}].type: invalid `{t}`"));
                }
            }
        }
    }
    for (i, t) in o
        .get("tools")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .enumerate()
    {
        if t["type"] != "function" || !t["function"]["name"].is_string() {
            return Err(format!(
                "tools[{i}]: {{type: function, function: {{name}}}} required"
            ));
        }
    }
    if o.contains_key("max_tokens") && o.contains_key("max_completion_tokens") {
        return Err("max_tokens and max_completion_tokens are exclusive".into());
    }
    Ok(())
}

fn check_messages(o: &serde_json::Map<String, Value>) -> Result<(), String> {
    if !o.get("max_tokens").is_some_and(Value::is_u64) {
        return Err("max_tokens: Field required".into());
    }
    let msgs = o["messages"].as_array().ok_or("messages: Field required")?;
    let mut prev = "";
    for (i, m) in msgs.iter().enumerate() {
        let role = m["role"].as_str().unwrap_or("");
        if !["user", "assistant"].contains(&role) {
            return Err(format!(
                "messages.{i}.role: Input should be 'user' or 'assistant'"
            ));
        }
        if i == 0 && role != "user" {
            return Err("messages.0: the first message must use the user role".into());
        }
        if role == prev {
            return Err(format!(
                "messages.{i}: roles must alternate between user and assistant"
            ));
        }
        prev = role;
        if let Some(blocks) = m["content"].as_array() {
            for (j, b) in blocks.iter().enumerate() {
                let t = b["type"].as_str().unwrap_or("");
                if !["text", "image", "tool_use", "tool_result", "thinking"].contains(&t) {
                    return Err(format!("messages.{i}.content.{j}.type: invalid `{t}`"));
                }
                if t == "text" && b["text"].as_str().is_none_or(str::is_empty) {
                    return Err(format!(
                        "messages.{i}.content.{j}: text content blocks must be non-empty"
                    ));
                }
                if t == "tool_use" && !b["input"].is_object() {
                    return Err(format!(
                        "messages.{i}.content.{j}.input: an object is required"
                    ));
                }
            }
        }
    }
    for (i, t) in o
        .get("tools")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .enumerate()
    {
        if !t["name"].is_string() || !t["input_schema"].is_object() {
            return Err(format!("tools.{i}: name and input_schema required"));
        }
    }
    Ok(())
}

fn check_responses(o: &serde_json::Map<String, Value>) -> Result<(), String> {
    match o.get("input") {
        Some(Value::String(_)) => {}
        Some(Value::Array(items)) => {
            for (i, it) in items.iter().enumerate() {
                let t = it["type"].as_str().unwrap_or("message");
                if !["message", "function_call", "function_call_output"].contains(&t) {
                    return Err(format!("input[{i}].type: invalid `{t}`"));
                }
                if t != "message" && !it["call_id"].is_string() {
                    return Err(format!("input[{i}].call_id: Field required"));
                }
            }
        }
        _ => return Err("input: Field required".into()),
    }
    for (i, t) in o
        .get("tools")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .enumerate()
    {
        if t["type"] != "function" || !t["name"].is_string() {
            return Err(format!(
                "tools[{i}]: flat {{type: function, name}} required"
            ));
        }
    }
    Ok(())
}
