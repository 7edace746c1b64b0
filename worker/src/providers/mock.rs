//! The `mock` kind: deterministic OpenAI- and Anthropic-shaped replies made in-process, so a
//! fresh install answers with no API key and tests have a provider that never flakes.
//!
//! The reply is "This is a mock reply from PROVIDER to: FIRST WORDS OF THE LAST USER MESSAGE".
//! With `stream: true` it is sent word by word in each API's real event sequence, paced by
//! `tokens_per_second`; `latency` delays the response headers.
//!
//! A request with `tools` gets a call of one of them instead (see `tools`): `tool_calls` in Chat
//! Completions, a `function_call` item in Responses, a `tool_use` block in Messages; streamed,
//! its arguments arrive in several deltas, as providers send them.

mod tools;

use crate::endpoint::Endpoint;
use bytes::Bytes;
use gateway::ApiError;
use serde_json::{json, Value};
use std::collections::VecDeque;
use std::time::{SystemTime, UNIX_EPOCH};

/// How many words of the prompt the reply quotes.
const QUOTED_WORDS: usize = 8;
/// Embedding length when the request names no `dimensions`.
const DEFAULT_DIMENSIONS: usize = 16;

/// A finished mock reply: content type and either one body or the frames of a stream.
pub struct MockReply {
    pub content_type: &'static str,
    pub frames: VecDeque<Bytes>,
    pub stream: bool,
}

/// Builds the reply of `provider` to `body` on `endpoint`; an error for a request the real API
/// would refuse too (a `tool_choice` naming a tool that is not in `tools`).
pub fn reply(
    provider: &str,
    endpoint: Endpoint,
    body: &[u8],
    stream: bool,
) -> Result<MockReply, ApiError> {
    let req: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let tool = tools::choose(endpoint, &req)?.map(|c| Tool {
        // From the request, so that the same request gets the same ids.
        id: format!("{:016x}", fnv1a(body)),
        name: c.name,
        arguments: c.arguments.to_string(),
        input: c.arguments,
    });
    let model = req
        .get("model")
        .and_then(Value::as_str)
        .unwrap_or("mock")
        .to_string();
    let prompt = prompt_text(endpoint, &req);
    let quoted: Vec<&str> = prompt.split_whitespace().take(QUOTED_WORDS).collect();
    let text = format!(
        "This is a mock reply from {provider} to: {}",
        quoted.join(" ")
    );
    let ctx = Ctx {
        id: format!("{:016x}", fnv1a(text.as_bytes())),
        created: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        input_tokens: count_tokens(&req),
        output_tokens: tool.as_ref().map_or(text.split_whitespace().count(), |t| {
            tools::fragments(&t.arguments).len() + 1
        }) as u64,
        words: text.split_inclusive(' ').collect(),
        model,
        text: text.clone(),
        tool,
    };
    let include_usage = req
        .pointer("/stream_options/include_usage")
        .and_then(Value::as_bool)
        == Some(true);
    let one = |v: Value| MockReply {
        content_type: "application/json",
        frames: VecDeque::from([Bytes::from(v.to_string())]),
        stream: false,
    };
    Ok(match (endpoint, stream) {
        (Endpoint::ChatCompletions, false) => one(ctx.chat()),
        (Endpoint::ChatCompletions, true) => sse(ctx.chat_chunks(include_usage)),
        (Endpoint::Completions, false) => one(ctx.completion()),
        (Endpoint::Completions, true) => sse(ctx.completion_chunks(include_usage)),
        (Endpoint::Responses, false) => one(ctx.response("completed", true)),
        (Endpoint::Responses, true) => sse(ctx.response_events()),
        (Endpoint::Messages, false) => one(ctx.message()),
        (Endpoint::Messages, true) => sse(ctx.message_events()),
        (Endpoint::Embeddings, _) => one(embeddings(&req, &ctx)),
        (Endpoint::CountTokens, _) => one(json!({"input_tokens": ctx.input_tokens})),
    })
}

fn sse(frames: VecDeque<Bytes>) -> MockReply {
    MockReply {
        content_type: "text/event-stream",
        frames,
        stream: true,
    }
}

struct Ctx<'a> {
    id: String,
    created: u64,
    model: String,
    text: String,
    words: Vec<&'a str>,
    input_tokens: u64,
    output_tokens: u64,
    /// The tool call that replaces the text, when the request has `tools`.
    tool: Option<Tool>,
}

/// The mock's tool call as it goes on the wire.
struct Tool {
    /// Hex hash of the request: each API's id prefix is put in front.
    id: String,
    name: String,
    /// The arguments as a JSON string, the form the OpenAI APIs send and every API streams.
    arguments: String,
    /// The same arguments as the object Messages sends in `input`.
    input: Value,
}

fn data(v: Value) -> Bytes {
    Bytes::from(format!("data: {v}\n\n"))
}

fn event(name: &str, v: Value) -> Bytes {
    Bytes::from(format!("event: {name}\ndata: {v}\n\n"))
}

impl Ctx<'_> {
    fn usage(&self) -> Value {
        json!({"prompt_tokens": self.input_tokens, "completion_tokens": self.output_tokens,
               "total_tokens": self.input_tokens + self.output_tokens})
    }

    fn chat(&self) -> Value {
        let (message, finish) = match &self.tool {
            None => (
                json!({"role": "assistant", "content": self.text, "refusal": null}),
                "stop",
            ),
            Some(t) => (
                json!({"role": "assistant", "content": null, "refusal": null,
                       "tool_calls": [{"id": format!("call_{}", t.id), "type": "function",
                                       "function": {"name": t.name, "arguments": t.arguments}}]}),
                "tool_calls",
            ),
        };
        json!({"id": format!("chatcmpl-{}", self.id), "object": "chat.completion",
               "created": self.created, "model": self.model, "system_fingerprint": null,
               "choices": [{"index": 0, "logprobs": null, "finish_reason": finish,
                            "message": message}],
               "usage": self.usage()})
    }

    fn chat_chunk(&self, delta: Value, finish: Option<&str>) -> Bytes {
        data(
            json!({"id": format!("chatcmpl-{}", self.id), "object": "chat.completion.chunk",
                    "created": self.created, "model": self.model, "system_fingerprint": null,
                    "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}]}),
        )
    }

    fn chat_chunks(&self, include_usage: bool) -> VecDeque<Bytes> {
        let mut f = VecDeque::with_capacity(self.words.len() + 4);
        let finish = match &self.tool {
            None => {
                f.push_back(self.chat_chunk(json!({"role": "assistant", "content": ""}), None));
                for w in &self.words {
                    f.push_back(self.chat_chunk(json!({"content": w}), None));
                }
                "stop"
            }
            Some(t) => {
                // As OpenAI streams a call: id, type and name once, in the first delta of the
                // call's `index`; then only argument fragments, which the SDKs concatenate.
                f.push_back(self.chat_chunk(
                    json!({"role": "assistant", "content": null, "refusal": null,
                           "tool_calls": [{"index": 0, "id": format!("call_{}", t.id),
                                           "type": "function",
                                           "function": {"name": t.name, "arguments": ""}}]}),
                    None,
                ));
                for piece in tools::fragments(&t.arguments) {
                    f.push_back(self.chat_chunk(
                        json!({"tool_calls": [{"index": 0, "function": {"arguments": piece}}]}),
                        None,
                    ));
                }
                "tool_calls"
            }
        };
        f.push_back(self.chat_chunk(json!({}), Some(finish)));
        if include_usage {
            f.push_back(data(json!({"id": format!("chatcmpl-{}", self.id),
                "object": "chat.completion.chunk", "created": self.created, "model": self.model,
                "choices": [], "usage": self.usage()})));
        }
        f.push_back(Bytes::from_static(b"data: [DONE]\n\n"));
        f
    }

    fn completion(&self) -> Value {
        json!({"id": format!("cmpl-{}", self.id), "object": "text_completion",
               "created": self.created, "model": self.model,
               "choices": [{"index": 0, "text": self.text, "logprobs": null, "finish_reason": "stop"}],
               "usage": self.usage()})
    }

    fn completion_chunks(&self, include_usage: bool) -> VecDeque<Bytes> {
        let chunk = |text: &str, finish: Option<&str>| {
            data(
                json!({"id": format!("cmpl-{}", self.id), "object": "text_completion",
                        "created": self.created, "model": self.model,
                        "choices": [{"index": 0, "text": text, "logprobs": null, "finish_reason": finish}]}),
            )
        };
        let mut f: VecDeque<Bytes> = self.words.iter().map(|w| chunk(w, None)).collect();
        f.push_back(chunk("", Some("stop")));
        if include_usage {
            // As OpenAI does: one last chunk with no choices and the usage.
            f.push_back(data(json!({"id": format!("cmpl-{}", self.id), "object": "text_completion",
                "created": self.created, "model": self.model, "choices": [], "usage": self.usage()})));
        }
        f.push_back(Bytes::from_static(b"data: [DONE]\n\n"));
        f
    }

    /// The one output item of a Responses reply: the message, or the function call.
    fn response_item(&self, done: bool) -> Value {
        let status = if done { "completed" } else { "in_progress" };
        match &self.tool {
            None => {
                let content = if done {
                    json!([{"type": "output_text", "text": self.text, "annotations": []}])
                } else {
                    json!([])
                };
                json!({"type": "message", "id": format!("msg_{}", self.id), "status": status,
                       "role": "assistant", "content": content})
            }
            Some(t) => {
                let arguments = if done { t.arguments.as_str() } else { "" };
                json!({"type": "function_call", "id": format!("fc_{}", t.id),
                       "call_id": format!("call_{}", t.id), "name": t.name,
                       "arguments": arguments, "status": status})
            }
        }
    }

    fn response(&self, status: &str, with_output: bool) -> Value {
        let output = if with_output {
            json!([self.response_item(true)])
        } else {
            json!([])
        };
        json!({"id": format!("resp_{}", self.id), "object": "response", "created_at": self.created,
               "status": status, "model": self.model, "output": output, "error": null,
               "incomplete_details": null, "instructions": null, "parallel_tool_calls": true,
               "tool_choice": "auto", "tools": [], "temperature": 1.0, "top_p": 1.0,
               "metadata": {},
               "usage": {"input_tokens": self.input_tokens, "output_tokens": self.output_tokens,
                         "total_tokens": self.input_tokens + self.output_tokens,
                         "input_tokens_details": {"cached_tokens": 0},
                         "output_tokens_details": {"reasoning_tokens": 0}}})
    }

    fn response_events(&self) -> VecDeque<Bytes> {
        let added = self.response_item(false);
        let item = added["id"].clone();
        let mut seq = 0u64;
        let mut ev = |name: &str, mut v: Value| {
            v["type"] = json!(name);
            v["sequence_number"] = json!(seq);
            seq += 1;
            event(name, v)
        };
        let mut f = VecDeque::with_capacity(self.words.len() + 8);
        f.push_back(ev(
            "response.created",
            json!({"response": self.response("in_progress", false)}),
        ));
        f.push_back(ev(
            "response.output_item.added",
            json!({"output_index": 0, "item": added}),
        ));
        match &self.tool {
            None => {
                let part = json!({"type": "output_text", "text": "", "annotations": []});
                f.push_back(ev(
                    "response.content_part.added",
                    json!({"item_id": item, "output_index": 0, "content_index": 0, "part": part}),
                ));
                for w in &self.words {
                    f.push_back(ev(
                        "response.output_text.delta",
                        json!({"item_id": item, "output_index": 0,
                        "content_index": 0, "delta": w}),
                    ));
                }
                f.push_back(ev(
                    "response.output_text.done",
                    json!({"item_id": item, "output_index": 0,
                    "content_index": 0, "text": self.text}),
                ));
                f.push_back(ev("response.content_part.done", json!({"item_id": item, "output_index": 0,
                    "content_index": 0, "part": {"type": "output_text", "text": self.text, "annotations": []}})));
            }
            Some(t) => {
                for piece in tools::fragments(&t.arguments) {
                    f.push_back(ev(
                        "response.function_call_arguments.delta",
                        json!({"item_id": item, "output_index": 0, "delta": piece}),
                    ));
                }
                f.push_back(ev(
                    "response.function_call_arguments.done",
                    json!({"item_id": item, "output_index": 0, "name": t.name,
                           "arguments": t.arguments}),
                ));
            }
        }
        let full = self.response("completed", true);
        f.push_back(ev(
            "response.output_item.done",
            json!({"output_index": 0, "item": full["output"][0].clone()}),
        ));
        f.push_back(ev("response.completed", json!({"response": full})));
        f
    }

    fn message_head(&self, stop: Option<&str>, content: Value, output_tokens: u64) -> Value {
        json!({"id": format!("msg_{}", self.id), "type": "message", "role": "assistant",
               "model": self.model, "content": content, "stop_reason": stop, "stop_sequence": null,
               "usage": {"input_tokens": self.input_tokens, "output_tokens": output_tokens}})
    }

    /// The stop reason of a Messages reply.
    fn message_stop_reason(&self) -> &'static str {
        if self.tool.is_some() {
            "tool_use"
        } else {
            "end_turn"
        }
    }

    fn message(&self) -> Value {
        let block = match &self.tool {
            None => json!({"type": "text", "text": self.text}),
            Some(t) => json!({"type": "tool_use", "id": format!("toolu_{}", t.id),
                              "name": t.name, "input": t.input}),
        };
        self.message_head(
            Some(self.message_stop_reason()),
            json!([block]),
            self.output_tokens,
        )
    }

    fn message_events(&self) -> VecDeque<Bytes> {
        let mut f = VecDeque::with_capacity(self.words.len() + 6);
        f.push_back(event(
            "message_start",
            json!({"type": "message_start",
            "message": self.message_head(None, json!([]), 1)}),
        ));
        let block_delta = |delta: Value| {
            event(
                "content_block_delta",
                json!({"type": "content_block_delta", "index": 0, "delta": delta}),
            )
        };
        let (block, deltas): (Value, Vec<Bytes>) = match &self.tool {
            None => (
                json!({"type": "text", "text": ""}),
                self.words
                    .iter()
                    .map(|w| block_delta(json!({"type": "text_delta", "text": w})))
                    .collect(),
            ),
            // The input starts empty and is built from `input_json_delta` fragments.
            Some(t) => (
                json!({"type": "tool_use", "id": format!("toolu_{}", t.id), "name": t.name,
                       "input": {}}),
                tools::fragments(&t.arguments)
                    .into_iter()
                    .map(|p| block_delta(json!({"type": "input_json_delta", "partial_json": p})))
                    .collect(),
            ),
        };
        f.push_back(event(
            "content_block_start",
            json!({"type": "content_block_start", "index": 0, "content_block": block}),
        ));
        f.extend(deltas);
        f.push_back(event(
            "content_block_stop",
            json!({"type": "content_block_stop", "index": 0}),
        ));
        f.push_back(event(
            "message_delta",
            json!({"type": "message_delta",
            "delta": {"stop_reason": self.message_stop_reason(), "stop_sequence": null},
            "usage": {"output_tokens": self.output_tokens}}),
        ));
        f.push_back(event("message_stop", json!({"type": "message_stop"})));
        f
    }
}

/// Deterministic unit-length vectors from each input's hash.
fn embeddings(req: &Value, ctx: &Ctx<'_>) -> Value {
    let inputs: Vec<String> = match req.get("input") {
        Some(Value::Array(a)) => a
            .iter()
            .map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_string))
            .collect(),
        Some(Value::String(s)) => vec![s.clone()],
        _ => vec![String::new()],
    };
    let dims = req
        .get("dimensions")
        .and_then(Value::as_u64)
        .map_or(DEFAULT_DIMENSIONS, |d| d.clamp(1, 4096) as usize);
    let base64 = req.get("encoding_format").and_then(Value::as_str) == Some("base64");
    let data: Vec<Value> = inputs
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let mut seed = fnv1a(s.as_bytes()) | 1;
            let mut v: Vec<f32> = (0..dims)
                .map(|_| {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    (seed % 2000) as f32 / 1000.0 - 1.0
                })
                .collect();
            let norm = v
                .iter()
                .map(|x| x * x)
                .sum::<f32>()
                .sqrt()
                .max(f32::EPSILON);
            v.iter_mut().for_each(|x| *x /= norm);
            let embedding = if base64 {
                let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
                json!(base64_encode(&bytes))
            } else {
                json!(v)
            };
            json!({"object": "embedding", "index": i, "embedding": embedding})
        })
        .collect();
    json!({"object": "list", "data": data, "model": ctx.model,
           "usage": {"prompt_tokens": ctx.input_tokens, "total_tokens": ctx.input_tokens}})
}

/// The last user message (chat, messages), the prompt (completions) or the input (responses,
/// embeddings), as plain text.
fn prompt_text(endpoint: Endpoint, req: &Value) -> String {
    let field = match endpoint {
        Endpoint::Completions => req.get("prompt"),
        Endpoint::Responses | Endpoint::Embeddings => req.get("input"),
        _ => req.get("messages"),
    };
    match field {
        Some(Value::Array(items)) if items.iter().any(|m| m.get("role").is_some()) => items
            .iter()
            .rev()
            .find(|m| m.get("role").and_then(Value::as_str) == Some("user"))
            .map(|m| content_text(m.get("content").unwrap_or(&Value::Null)))
            .unwrap_or_default(),
        Some(v) => content_text(v),
        None => String::new(),
    }
}

/// Text of a string, an array of strings, or content parts with `text`.
fn content_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Array(parts) => parts
            .iter()
            .filter_map(|p| p.as_str().or_else(|| p.get("text").and_then(Value::as_str)))
            .collect::<Vec<_>>()
            .join(" "),
        _ => String::new(),
    }
}

/// A deterministic token estimate: whitespace-separated words in every string of the request's
/// prompt fields (messages, system, prompt, input), at least 1.
fn count_tokens(req: &Value) -> u64 {
    fn walk(v: &Value, n: &mut u64) {
        match v {
            Value::String(s) => *n += s.split_whitespace().count() as u64,
            Value::Array(a) => a.iter().for_each(|x| walk(x, n)),
            Value::Object(o) => o
                .iter()
                .filter(|(k, _)| k.as_str() != "role" && k.as_str() != "type")
                .for_each(|(_, x)| walk(x, n)),
            _ => {}
        }
    }
    let mut n = 0;
    for key in ["messages", "system", "prompt", "input"] {
        if let Some(v) = req.get(key) {
            walk(v, &mut n);
        }
    }
    n.max(1)
}

fn fnv1a(b: &[u8]) -> u64 {
    b.iter().fold(0xcbf2_9ce4_8422_2325, |h, &x| {
        (h ^ u64::from(x)).wrapping_mul(0x100_0000_01b3)
    })
}

fn base64_encode(b: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(b.len().div_ceil(3) * 4);
    for c in b.chunks(3) {
        let n = (u32::from(c[0]) << 16)
            | (u32::from(*c.get(1).unwrap_or(&0)) << 8)
            | u32::from(*c.get(2).unwrap_or(&0));
        for (i, shift) in [18, 12, 6, 0].into_iter().enumerate() {
            if i <= c.len() {
                out.push(T[(n >> shift) as usize & 63] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames_text(r: &MockReply) -> String {
        r.frames
            .iter()
            .map(|b| String::from_utf8_lossy(b).into_owned())
            .collect()
    }

    #[test]
    fn chat_reply_has_the_sdk_fields() {
        let body = br#"{"model":"demo","messages":[{"role":"system","content":"be brief"},{"role":"user","content":"hello there mock"}]}"#;
        let r = reply("demo", Endpoint::ChatCompletions, body, false).unwrap();
        let v: Value = serde_json::from_str(&frames_text(&r)).unwrap();
        assert_eq!(v["object"], "chat.completion");
        assert!(v["id"].as_str().unwrap().starts_with("chatcmpl-"));
        assert_eq!(
            v["choices"][0]["message"]["content"],
            "This is a mock reply from demo to: hello there mock"
        );
        assert_eq!(v["choices"][0]["finish_reason"], "stop");
        assert_eq!(v["usage"]["prompt_tokens"], 5);
        assert_eq!(v["model"], "demo");
    }

    #[test]
    fn deterministic() {
        let body = br#"{"model":"demo","messages":[{"role":"user","content":"same words"}]}"#;
        let a = reply("demo", Endpoint::Messages, body, false).unwrap();
        let b = reply("demo", Endpoint::Messages, body, false).unwrap();
        let va: Value = serde_json::from_str(&frames_text(&a)).unwrap();
        let vb: Value = serde_json::from_str(&frames_text(&b)).unwrap();
        assert_eq!(va, vb);
        assert_eq!(va["type"], "message");
        assert_eq!(
            va["content"][0]["text"],
            "This is a mock reply from demo to: same words"
        );
        assert_eq!(va["stop_reason"], "end_turn");
    }

    #[test]
    fn anthropic_stream_event_sequence() {
        let body = br#"{"model":"demo","messages":[{"role":"user","content":[{"type":"text","text":"hi"}]}]}"#;
        let r = reply("demo", Endpoint::Messages, body, true).unwrap();
        assert_eq!(r.content_type, "text/event-stream");
        let names: Vec<String> = r
            .frames
            .iter()
            .map(|f| {
                String::from_utf8_lossy(f)
                    .lines()
                    .next()
                    .unwrap()
                    .trim_start_matches("event: ")
                    .to_string()
            })
            .collect();
        let mut dedup = names.clone();
        dedup.dedup();
        assert_eq!(
            dedup,
            [
                "message_start",
                "content_block_start",
                "content_block_delta",
                "content_block_stop",
                "message_delta",
                "message_stop"
            ]
        );
        let text: String = r
            .frames
            .iter()
            .filter_map(|f| {
                let s = String::from_utf8_lossy(f).into_owned();
                let v: Value =
                    serde_json::from_str(s.lines().nth(1)?.strip_prefix("data: ")?).ok()?;
                v.pointer("/delta/text")
                    .and_then(Value::as_str)
                    .map(str::to_string)
            })
            .collect();
        assert_eq!(text, "This is a mock reply from demo to: hi");
    }

    /// The `data:` payloads of a streamed reply, parsed (`[DONE]` left out).
    fn stream_data(r: &MockReply) -> Vec<Value> {
        r.frames
            .iter()
            .filter_map(|f| {
                let s = String::from_utf8_lossy(f).into_owned();
                let d = s
                    .lines()
                    .find_map(|l| l.strip_prefix("data: "))?
                    .to_string();
                serde_json::from_str(&d).ok()
            })
            .collect()
    }

    const TOOL: &str = r#"{"type":"object","properties":{"city":{"type":"string"},"days":{"type":"integer"}},"required":["city","days"]}"#;

    #[test]
    fn tools_get_a_call_in_each_shape() {
        let want = json!({"city": "example", "days": 1});
        let chat = format!(
            r#"{{"model":"demo","messages":[{{"role":"user","content":"weather?"}}],
                "tools":[{{"type":"function","function":{{"name":"get_weather","parameters":{TOOL}}}}}]}}"#
        );
        let v: Value = serde_json::from_str(&frames_text(
            &reply("demo", Endpoint::ChatCompletions, chat.as_bytes(), false).unwrap(),
        ))
        .unwrap();
        let choice = &v["choices"][0];
        assert_eq!(choice["finish_reason"], "tool_calls");
        assert!(choice["message"]["content"].is_null());
        let call = &choice["message"]["tool_calls"][0];
        assert!(call["id"].as_str().unwrap().starts_with("call_"));
        assert_eq!(call["function"]["name"], "get_weather");
        let args: Value =
            serde_json::from_str(call["function"]["arguments"].as_str().unwrap()).unwrap();
        assert_eq!(args, want);

        let chunks =
            stream_data(&reply("demo", Endpoint::ChatCompletions, chat.as_bytes(), true).unwrap());
        let first = &chunks[0]["choices"][0]["delta"]["tool_calls"][0];
        assert_eq!(first["id"], call["id"]);
        assert_eq!(first["function"]["name"], "get_weather");
        let pieces: Vec<&str> = chunks[1..]
            .iter()
            .filter_map(|c| {
                c.pointer("/choices/0/delta/tool_calls/0/function/arguments")?
                    .as_str()
            })
            .collect();
        assert!(pieces.len() > 1, "{pieces:?}");
        assert_eq!(
            pieces.concat(),
            call["function"]["arguments"].as_str().unwrap()
        );
        assert_eq!(
            chunks.last().unwrap()["choices"][0]["finish_reason"],
            "tool_calls"
        );

        let msgs = format!(
            r#"{{"model":"demo","max_tokens":9,"messages":[{{"role":"user","content":"weather?"}}],
                "tools":[{{"name":"get_weather","description":"d","input_schema":{TOOL}}}]}}"#
        );
        let v: Value = serde_json::from_str(&frames_text(
            &reply("demo", Endpoint::Messages, msgs.as_bytes(), false).unwrap(),
        ))
        .unwrap();
        assert_eq!(v["stop_reason"], "tool_use");
        assert_eq!(v["content"][0]["type"], "tool_use");
        assert!(v["content"][0]["id"]
            .as_str()
            .unwrap()
            .starts_with("toolu_"));
        assert_eq!(v["content"][0]["input"], want);
        let events =
            stream_data(&reply("demo", Endpoint::Messages, msgs.as_bytes(), true).unwrap());
        assert_eq!(events[1]["content_block"]["input"], json!({}));
        let partial: String = events
            .iter()
            .filter_map(|e| e.pointer("/delta/partial_json")?.as_str())
            .collect();
        assert_eq!(serde_json::from_str::<Value>(&partial).unwrap(), want);
        assert_eq!(events[events.len() - 2]["delta"]["stop_reason"], "tool_use");

        let resp = format!(
            r#"{{"model":"demo","input":"weather?",
                "tools":[{{"type":"function","name":"get_weather","parameters":{TOOL}}}]}}"#
        );
        let v: Value = serde_json::from_str(&frames_text(
            &reply("demo", Endpoint::Responses, resp.as_bytes(), false).unwrap(),
        ))
        .unwrap();
        let item = &v["output"][0];
        assert_eq!(item["type"], "function_call");
        assert!(item["call_id"].as_str().unwrap().starts_with("call_"));
        let args: Value = serde_json::from_str(item["arguments"].as_str().unwrap()).unwrap();
        assert_eq!(args, want);
        let events =
            stream_data(&reply("demo", Endpoint::Responses, resp.as_bytes(), true).unwrap());
        let deltas: String = events
            .iter()
            .filter(|e| e["type"] == "response.function_call_arguments.delta")
            .map(|e| e["delta"].as_str().unwrap())
            .collect();
        assert_eq!(deltas, item["arguments"].as_str().unwrap());
        assert_eq!(events.last().unwrap()["response"]["output"][0], *item);
    }

    #[test]
    fn embeddings_and_count_tokens() {
        let r = reply(
            "demo",
            Endpoint::Embeddings,
            br#"{"model":"e","input":["a b","c"],"dimensions":4}"#,
            false,
        )
        .unwrap();
        let v: Value = serde_json::from_str(&frames_text(&r)).unwrap();
        assert_eq!(v["data"].as_array().unwrap().len(), 2);
        assert_eq!(v["data"][1]["embedding"].as_array().unwrap().len(), 4);
        let r = reply(
            "demo",
            Endpoint::Embeddings,
            br#"{"model":"e","input":"x","encoding_format":"base64","dimensions":3}"#,
            false,
        )
        .unwrap();
        let v: Value = serde_json::from_str(&frames_text(&r)).unwrap();
        assert_eq!(v["data"][0]["embedding"].as_str().unwrap().len(), 16);
        let r = reply(
            "demo",
            Endpoint::CountTokens,
            br#"{"model":"m","messages":[{"role":"user","content":"one two three"}]}"#,
            false,
        )
        .unwrap();
        assert_eq!(frames_text(&r), r#"{"input_tokens":3}"#);
        assert_eq!(base64_encode(b"Man"), "TWFu");
        assert_eq!(base64_encode(b"Ma"), "TWE=");
        assert_eq!(base64_encode(b"M"), "TQ==");
    }
}
