//! Anthropic Messages streams: `message_start` / `content_block_*` / `message_delta` /
//! `message_stop` decoded into pivot events, and pivot events encoded as them.

use super::chat_stream::MAX_CALLS;
use super::messages_response::{stop_from, stop_to, usage_from};
use super::pivot::{Event, Stop, StreamError, Usage};
use super::prefixed;
use super::stream::{cut, push_frame, push_json_str, push_u64, Decode, Encode, Str, StreamOptions};
use gateway::sse::parse;
use gateway::{ApiError, Dialect, ErrorKind};
use serde::Deserialize;
use serde_json::{json, Value};

/// The common event, `content_block_delta`, decoded borrowing from the event's text; every other
/// event (a few per stream) takes the general `Value` path.
#[derive(Deserialize)]
struct Head<'a> {
    #[serde(borrow, rename = "type", default)]
    ty: Option<Str<'a>>,
    #[serde(borrow, default)]
    delta: Option<BlockDelta<'a>>,
}

#[derive(Deserialize)]
struct BlockDelta<'a> {
    #[serde(borrow, rename = "type", default)]
    ty: Option<Str<'a>>,
    #[serde(borrow, default)]
    text: Option<Str<'a>>,
    #[serde(borrow, default)]
    partial_json: Option<Str<'a>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Block {
    Text,
    Tool(usize),
    /// Thinking and server-tool blocks: not translated (documented drop).
    Other,
}

#[derive(Debug, Default)]
pub(super) struct Decoder {
    block: Option<Block>,
    calls: usize,
    stop: Option<Stop>,
    usage: Usage,
    finished: bool,
}

/// Anthropic's error types, as the gateway's kinds.
fn kind_of(ty: Option<&str>) -> ErrorKind {
    match ty {
        Some("overloaded_error") => ErrorKind::Unavailable,
        Some("rate_limit_error") => ErrorKind::RateLimited,
        Some("timeout_error") => ErrorKind::GatewayTimeout,
        _ => ErrorKind::BadGateway,
    }
}

impl Decoder {
    fn block_delta(&self, d: &BlockDelta<'_>, out: &mut Vec<Event>) {
        match (d.ty.as_deref(), self.block) {
            (Some("text_delta"), _) => {
                if let Some(t) = d.text.as_deref().filter(|t| !t.is_empty()) {
                    out.push(Event::Text(t.to_string()));
                }
            }
            (Some("input_json_delta"), Some(Block::Tool(call))) => {
                if let Some(j) = d.partial_json.as_deref().filter(|t| !t.is_empty()) {
                    out.push(Event::ToolArgs {
                        call,
                        delta: j.to_string(),
                    });
                }
            }
            // thinking_delta, signature_delta, citations_delta: no equivalent.
            _ => {}
        }
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
        // The common event first; a `Head` that does not parse takes the general path, which
        // reports what is wrong with it.
        if let Ok(head) = serde_json::from_str::<Head>(&ev.data) {
            if let (Some(d), "content_block_delta") =
                (&head.delta, head.ty.as_deref().unwrap_or(&ev.event))
            {
                self.block_delta(d, out);
                return Ok(());
            }
        }
        let v: Value = serde_json::from_str(&ev.data)
            .map_err(|e| cut(format!("unreadable upstream event: {e}")))?;
        let ty = v["type"].as_str().unwrap_or(ev.event.as_str());
        match ty {
            "message_start" => {
                self.usage = usage_from(&v["message"]["usage"]);
                out.push(Event::Start {
                    id: v["message"]["id"].as_str().unwrap_or_default().to_string(),
                });
            }
            "content_block_start" => {
                let cb = &v["content_block"];
                self.block = Some(match cb["type"].as_str() {
                    Some("text") => {
                        if let Some(t) = cb["text"].as_str().filter(|t| !t.is_empty()) {
                            out.push(Event::Text(t.to_string()));
                        }
                        Block::Text
                    }
                    Some("tool_use") => {
                        if self.calls >= MAX_CALLS {
                            return Err(cut(format!(
                                "more than {MAX_CALLS} tool calls in one answer"
                            )));
                        }
                        let call = self.calls;
                        self.calls += 1;
                        out.push(Event::ToolStart {
                            call,
                            id: cb["id"].as_str().unwrap_or_default().to_string(),
                            name: cb["name"].as_str().unwrap_or_default().to_string(),
                        });
                        if cb["input"].as_object().is_some_and(|o| !o.is_empty()) {
                            out.push(Event::ToolArgs {
                                call,
                                delta: cb["input"].to_string(),
                            });
                        }
                        Block::Tool(call)
                    }
                    _ => Block::Other,
                });
            }
            "content_block_delta" => {
                // Only one whose delta is not the shape above: nothing we can translate.
            }
            "content_block_stop" => self.block = None,
            "message_delta" => {
                if let Some(r) = v["delta"]["stop_reason"].as_str() {
                    self.stop = Some(stop_from(r, v["delta"]["stop_sequence"].as_str()));
                }
                let u = &v["usage"];
                // message_delta usage is cumulative; fields it leaves out keep message_start's.
                let n = |k: &str, old: u64| u[k].as_u64().unwrap_or(old);
                self.usage = Usage {
                    input: n("input_tokens", self.usage.input),
                    output: n("output_tokens", self.usage.output),
                    cache_read: n("cache_read_input_tokens", self.usage.cache_read),
                    cache_write: n("cache_creation_input_tokens", self.usage.cache_write),
                };
            }
            "message_stop" => {
                self.finished = true;
                out.push(Event::Finish {
                    stop: self.stop.clone().unwrap_or_default(),
                    usage: self.usage,
                });
            }
            "error" => {
                let e = &v["error"];
                out.push(Event::Error(StreamError {
                    kind: kind_of(e["type"].as_str()),
                    message: super::truncate(
                        e["message"]
                            .as_str()
                            .unwrap_or("the provider reported an error")
                            .to_string(),
                        2000,
                    ),
                }));
            }
            // `ping` and anything new: not content.
            _ => {}
        }
        Ok(())
    }

    fn end(&mut self, _out: &mut Vec<Event>) -> Result<(), StreamError> {
        // Only `message_stop` ends a Messages stream cleanly; the translator reports the rest.
        Ok(())
    }
}

pub(super) struct Encoder {
    model: String,
    started: bool,
    /// The open block's index, and the call it belongs to (None: text).
    open: Option<(usize, Option<usize>)>,
    next_index: usize,
    /// Block index by pivot call number.
    call_blocks: Vec<usize>,
}

impl Encoder {
    pub(super) fn new(opts: &StreamOptions) -> Self {
        Self {
            model: opts.model.clone(),
            started: false,
            open: None,
            next_index: 0,
            call_blocks: Vec::new(),
        }
    }

    fn send(out: &mut String, v: Value) {
        push_frame(out, v["type"].as_str().unwrap_or_default(), &v);
    }

    /// A `content_block_delta` (`text_delta`, or `input_json_delta` when `json`), written
    /// directly: the common event.
    fn delta(out: &mut String, index: usize, json: bool, s: &str) {
        out.push_str(
            "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":",
        );
        push_u64(out, index as u64);
        out.push_str(if json {
            ",\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":"
        } else {
            ",\"delta\":{\"type\":\"text_delta\",\"text\":"
        });
        push_json_str(out, s);
        out.push_str("}}\n\n");
    }

    fn start(&mut self, id: &str, out: &mut String) {
        if self.started {
            return;
        }
        self.started = true;
        Self::send(
            out,
            json!({"type": "message_start", "message": {
                "id": prefixed("msg_", id), "type": "message", "role": "assistant", "model": self.model,
                "content": [], "stop_reason": null, "stop_sequence": null,
                // Providers of other dialects report input tokens at the end: in message_delta.
                "usage": {"input_tokens": 0, "output_tokens": 0},
            }}),
        );
    }

    fn close(&mut self, out: &mut String) {
        if let Some((index, _)) = self.open.take() {
            Self::send(out, json!({"type": "content_block_stop", "index": index}));
        }
    }

    fn open(&mut self, call: Option<usize>, block: Value, out: &mut String) -> usize {
        self.close(out);
        let index = self.next_index;
        self.next_index += 1;
        self.open = Some((index, call));
        Self::send(
            out,
            json!({"type": "content_block_start", "index": index, "content_block": block}),
        );
        index
    }

    fn text(&mut self, t: &str, out: &mut String) {
        let index = match self.open {
            Some((i, None)) => i,
            _ => self.open(None, json!({"type": "text", "text": ""}), out),
        };
        Self::delta(out, index, false, t);
    }
}

impl Encode for Encoder {
    fn event(&mut self, ev: &Event, out: &mut String) -> Result<(), StreamError> {
        if let Event::Error(e) = ev {
            out.push_str(&gateway::sse::error_event(
                Dialect::Anthropic,
                &ApiError::new(e.kind, e.message.clone()),
            ));
            return Ok(());
        }
        self.start(if let Event::Start { id } = ev { id } else { "" }, out);
        match ev {
            Event::Start { .. } | Event::Error(_) => {}
            // Messages has no refusal text: it is text (the stop reason says `refusal`).
            Event::Text(t) | Event::Refusal(t) => self.text(t, out),
            Event::ToolStart { call, id, name } => {
                let index = self.open(
                    Some(*call),
                    json!({"type": "tool_use", "id": id, "name": name, "input": {}}),
                    out,
                );
                if self.call_blocks.len() <= *call {
                    self.call_blocks.resize(*call + 1, usize::MAX);
                }
                self.call_blocks[*call] = index;
            }
            Event::ToolArgs { call, delta } => {
                let index = *self
                    .call_blocks
                    .get(*call)
                    .filter(|i| **i != usize::MAX)
                    .ok_or_else(|| {
                        cut(format!(
                            "arguments for tool call {call}, which never started"
                        ))
                    })?;
                Self::delta(out, index, true, delta);
            }
            Event::Finish { stop, usage } => {
                self.close(out);
                let (reason, seq) = stop_to(stop);
                Self::send(
                    out,
                    json!({"type": "message_delta",
                    "delta": {"stop_reason": reason, "stop_sequence": seq},
                    "usage": {
                        "input_tokens": usage.input, "output_tokens": usage.output,
                        "cache_creation_input_tokens": usage.cache_write,
                        "cache_read_input_tokens": usage.cache_read,
                    }}),
                );
                Self::send(out, json!({"type": "message_stop"}));
            }
        }
        Ok(())
    }
}
