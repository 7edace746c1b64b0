//! OpenAI Chat Completions streams: chunks decoded into pivot events, and pivot events encoded
//! as chunks.

use super::chat_response::{stop_from, stop_to, usage_from, usage_to};
use super::pivot::{Event, Stop, StreamError, Usage};
use super::prefixed;
use super::stream::{cut, push_frame, push_json_str, push_u64, Decode, Encode, Str, StreamOptions};
use gateway::sse::parse::{self, frame};
use gateway::{ApiError, Dialect, ErrorKind};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

/// One upstream chunk, decoded borrowing from the event's text (a string with no escapes is not
/// copied). `usage` and `error` come once per stream at most, so they stay general `Value`s.
#[derive(Deserialize)]
struct Chunk<'a> {
    #[serde(borrow, default)]
    id: Option<Str<'a>>,
    #[serde(default)]
    error: Option<Value>,
    #[serde(default)]
    usage: Option<Value>,
    #[serde(borrow, default)]
    choices: Option<Vec<Choice<'a>>>,
}

#[derive(Deserialize)]
struct Choice<'a> {
    #[serde(default)]
    index: Option<u64>,
    #[serde(borrow, default)]
    delta: Option<Delta<'a>>,
    #[serde(borrow, default)]
    finish_reason: Option<Str<'a>>,
}

#[derive(Deserialize)]
struct Delta<'a> {
    #[serde(borrow, default)]
    content: Option<Str<'a>>,
    #[serde(borrow, default)]
    refusal: Option<Str<'a>>,
    #[serde(borrow, default)]
    tool_calls: Option<Vec<ToolCallDelta<'a>>>,
}

/// A tool-call delta: `function` may be null or absent, `index` absent (some servers).
#[derive(Deserialize)]
struct ToolCallDelta<'a> {
    #[serde(default)]
    index: Option<u64>,
    #[serde(borrow, default)]
    id: Option<Str<'a>>,
    #[serde(borrow, default)]
    function: Option<FunctionDelta<'a>>,
}

#[derive(Deserialize)]
struct FunctionDelta<'a> {
    #[serde(borrow, default)]
    name: Option<Str<'a>>,
    #[serde(borrow, default)]
    arguments: Option<Str<'a>>,
}

/// An outgoing chunk with one choice; `delta` is typed for the common events.
#[derive(Serialize)]
struct ChunkOut<'a, D> {
    id: &'a str,
    object: &'static str,
    created: u64,
    model: &'a str,
    choices: [ChoiceOut<'a, D>; 1],
}

#[derive(Serialize)]
struct ChoiceOut<'a, D> {
    index: u32,
    delta: D,
    finish_reason: Option<&'a str>,
    logprobs: Option<()>,
}

/// More tool calls than this in one answer is treated as a broken stream (it bounds our state).
pub(super) const MAX_CALLS: usize = 128;
/// Arguments held for a call whose name has not come yet.
const MAX_PENDING: usize = 64 << 10;

/// One tool call as it assembles: its id and name may come in different chunks.
#[derive(Debug, Default)]
struct Call {
    id: Option<String>,
    name: Option<String>,
    /// The pivot's call number once started.
    started: Option<usize>,
    /// Arguments seen before the name.
    pending: String,
}

#[derive(Debug, Default)]
pub(super) struct Decoder {
    started: bool,
    /// By Chat tool-call index.
    calls: Vec<Call>,
    next_call: usize,
    finish: Option<Stop>,
    usage: Usage,
    finished: bool,
}

impl Decoder {
    fn finish(&mut self, out: &mut Vec<Event>) {
        self.finished = true;
        let stop = self.finish.clone().unwrap_or(if self.next_call > 0 {
            Stop::ToolUse
        } else {
            Stop::EndTurn
        });
        out.push(Event::Finish {
            stop,
            usage: self.usage,
        });
    }

    fn tool_delta(
        &mut self,
        tc: &ToolCallDelta<'_>,
        pos: usize,
        out: &mut Vec<Event>,
    ) -> Result<(), StreamError> {
        // Some servers omit `index`: a delta with an id is a new call, else it continues the last.
        let idx = match tc.index {
            Some(i) => i as usize,
            None if tc.id.is_some() => self.calls.len().max(pos),
            None => self.calls.len().saturating_sub(1),
        };
        if idx >= MAX_CALLS {
            return Err(cut(format!(
                "more than {MAX_CALLS} tool calls in one answer"
            )));
        }
        if self.calls.len() <= idx {
            self.calls.resize_with(idx + 1, Call::default);
        }
        let call = &mut self.calls[idx];
        if let Some(id) = tc.id.as_deref().filter(|s| !s.is_empty()) {
            call.id.get_or_insert_with(|| id.to_string());
        }
        // `function` may be null or absent.
        let f = tc.function.as_ref();
        if let Some(n) = f.and_then(|f| f.name.as_deref()).filter(|s| !s.is_empty()) {
            call.name.get_or_insert_with(|| n.to_string());
        }
        let args = f.and_then(|f| f.arguments.as_deref()).unwrap_or("");
        match call.started {
            Some(c) => {
                if !args.is_empty() {
                    out.push(Event::ToolArgs {
                        call: c,
                        delta: args.to_string(),
                    });
                }
            }
            None => {
                call.pending.push_str(args);
                if call.pending.len() > MAX_PENDING {
                    return Err(cut("tool-call arguments arrived without a tool name"));
                }
                if let Some(name) = call.name.clone() {
                    let c = self.next_call;
                    self.next_call += 1;
                    call.started = Some(c);
                    let id = call.id.clone().unwrap_or_else(|| format!("call_{idx}"));
                    out.push(Event::ToolStart { call: c, id, name });
                    if !call.pending.is_empty() {
                        out.push(Event::ToolArgs {
                            call: c,
                            delta: std::mem::take(&mut call.pending),
                        });
                    }
                }
            }
        }
        Ok(())
    }
}

impl Decode for Decoder {
    fn usage_so_far(&self) -> Usage {
        self.usage
    }

    fn event(&mut self, ev: &parse::Event, out: &mut Vec<Event>) -> Result<(), StreamError> {
        if self.finished {
            return Ok(());
        }
        if ev.data.trim() == "[DONE]" {
            self.finish(out);
            return Ok(());
        }
        let v: Chunk = serde_json::from_str(&ev.data)
            .map_err(|e| cut(format!("unreadable upstream chunk: {e}")))?;
        if let Some(e) = v.error.as_ref().filter(|e| !e.is_null()) {
            let message = e["message"]
                .as_str()
                .or(e.as_str())
                .unwrap_or("the provider reported an error");
            out.push(Event::Error(StreamError {
                kind: ErrorKind::BadGateway,
                message: super::truncate(message.to_string(), 2000),
            }));
            return Ok(());
        }
        if !self.started {
            self.started = true;
            out.push(Event::Start {
                id: v.id.as_deref().unwrap_or_default().to_string(),
            });
        }
        if let Some(u) = v.usage.as_ref().filter(|u| u.is_object()) {
            self.usage = usage_from(u);
        }
        // One choice is asked for; others (a server ignoring n) are not ours.
        let Some(choice) = v
            .choices
            .as_ref()
            .and_then(|c| c.iter().find(|c| c.index.unwrap_or(0) == 0))
        else {
            return Ok(());
        };
        if let Some(d) = &choice.delta {
            if let Some(t) = d.content.as_deref().filter(|s| !s.is_empty()) {
                out.push(Event::Text(t.to_string()));
            }
            if let Some(t) = d.refusal.as_deref().filter(|s| !s.is_empty()) {
                out.push(Event::Refusal(t.to_string()));
            }
            if let Some(tcs) = &d.tool_calls {
                for (pos, tc) in tcs.iter().enumerate() {
                    self.tool_delta(tc, pos, out)?;
                }
            }
        }
        if let Some(r) = choice.finish_reason.as_deref() {
            self.finish = Some(stop_from(r));
        }
        Ok(())
    }

    fn end(&mut self, out: &mut Vec<Event>) -> Result<(), StreamError> {
        // Some servers omit `[DONE]`; a finish reason already seen makes the end clean.
        if !self.finished && self.finish.is_some() {
            self.finish(out);
        }
        Ok(())
    }
}

pub(super) struct Encoder {
    id: String,
    model: String,
    created: u64,
    include_usage: bool,
    started: bool,
}

impl Encoder {
    pub(super) fn new(opts: &StreamOptions) -> Self {
        Self {
            id: String::new(),
            model: opts.model.clone(),
            created: opts.created,
            include_usage: opts.include_usage,
            started: false,
        }
    }

    fn chunk(&self, delta: impl Serialize, finish: Option<&str>, out: &mut String) {
        let v = ChunkOut {
            id: &self.id,
            object: "chat.completion.chunk",
            created: self.created,
            model: &self.model,
            choices: [ChoiceOut {
                index: 0,
                delta,
                finish_reason: finish,
                logprobs: None,
            }],
        };
        push_frame(out, "", &v);
    }

    /// A chunk whose delta is `{"content": s}`, or `{"tool_calls": [{"index": call,
    /// "function": {"arguments": s}}]}` when `call` is given, written directly: the common
    /// chunks, in the shape `chunk` writes.
    fn delta(&self, call: Option<usize>, s: &str, out: &mut String) {
        out.push_str("data: {\"id\":");
        push_json_str(out, &self.id);
        out.push_str(",\"object\":\"chat.completion.chunk\",\"created\":");
        push_u64(out, self.created);
        out.push_str(",\"model\":");
        push_json_str(out, &self.model);
        out.push_str(",\"choices\":[{\"index\":0,\"delta\":");
        match call {
            None => out.push_str("{\"content\":"),
            Some(c) => {
                out.push_str("{\"tool_calls\":[{\"index\":");
                push_u64(out, c as u64);
                out.push_str(",\"function\":{\"arguments\":");
            }
        }
        push_json_str(out, s);
        out.push_str(if call.is_some() { "}}]}" } else { "}" });
        out.push_str(",\"finish_reason\":null,\"logprobs\":null}]}\n\n");
    }

    fn start(&mut self, id: &str, out: &mut String) {
        if !self.started {
            self.started = true;
            self.id = prefixed("chatcmpl-", id);
            self.chunk(json!({"role": "assistant", "content": ""}), None, out);
        }
    }
}

impl Encode for Encoder {
    fn event(&mut self, ev: &Event, out: &mut String) -> Result<(), StreamError> {
        if let Event::Error(e) = ev {
            out.push_str(&gateway::sse::error_event(
                Dialect::OpenAi,
                &ApiError::new(e.kind, e.message.clone()),
            ));
            return Ok(());
        }
        self.start(if let Event::Start { id } = ev { id } else { "" }, out);
        match ev {
            Event::Start { .. } | Event::Error(_) => {}
            Event::Text(t) => self.delta(None, t, out),
            Event::Refusal(t) => self.chunk(json!({"refusal": t}), None, out),
            Event::ToolStart { call, id, name } => self.chunk(json!({"tool_calls": [{
                "index": call, "id": id, "type": "function", "function": {"name": name, "arguments": ""}
            }]}), None, out),
            Event::ToolArgs { call, delta } => self.delta(Some(*call), delta, out),
            Event::Finish { stop, usage } => {
                self.chunk(json!({}), Some(stop_to(stop)), out);
                if self.include_usage {
                    let v = json!({
                        "id": self.id, "object": "chat.completion.chunk", "created": self.created,
                        "model": self.model, "choices": [], "usage": usage_to(usage),
                    });
                    out.push_str(&frame("", &v.to_string()));
                }
                out.push_str(&frame("", "[DONE]"));
            }
        }
        Ok(())
    }
}
