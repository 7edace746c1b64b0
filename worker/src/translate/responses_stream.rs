//! OpenAI Responses streams: `response.*` events decoded into pivot events, and pivot events
//! encoded as them, each with its `sequence_number`.
//!
//! The per-chunk events (`response.output_text.delta`, `response.refusal.delta`,
//! `response.function_call_arguments.delta`) are decoded borrowing from the event's text and
//! written directly into the output; the few events of each item and of the
//! response (created, item added and done, completed) take the general `Value` path.

use super::chat_stream::MAX_CALLS;
use super::pivot::{Event, StreamError};
use super::responses_response::{
    call_item, message_item, refusal_part, response_object, stop_from, text_part, usage_from,
};
use super::stream::{cut, push_frame, push_json_str, push_u64, Decode, Encode, Str, StreamOptions};
use gateway::sse::parse;
use gateway::ErrorKind;
use serde::Deserialize;
use serde_json::{json, Value};

/// The fields of an upstream event the decoder reads on its common path, borrowing from the
/// event's text (a string with no escapes is not copied); `response` and `item` are skipped
/// unread.
#[derive(Deserialize)]
struct Head<'a> {
    #[serde(borrow, rename = "type", default)]
    ty: Option<Str<'a>>,
    #[serde(borrow, default)]
    delta: Option<Str<'a>>,
    #[serde(default)]
    output_index: Option<u64>,
    #[serde(borrow, default)]
    item_id: Option<Str<'a>>,
}

/// The events the general path reads; every other event type is not content.
const GENERAL: [&str; 7] = [
    "response.created",
    "response.output_item.added",
    "response.output_item.done",
    "response.completed",
    "response.incomplete",
    "response.failed",
    "error",
];

/// One function call of the upstream's output.
#[derive(Debug)]
struct Call {
    output_index: u64,
    item_id: String,
    call: usize,
    args_seen: bool,
}

#[derive(Debug, Default)]
pub(super) struct Decoder {
    calls: Vec<Call>,
    finished: bool,
}

impl Decoder {
    fn find(&mut self, oi: Option<u64>, id: Option<&str>) -> Option<&mut Call> {
        self.calls.iter_mut().find(|c| {
            Some(c.output_index) == oi || (id.is_some() && Some(c.item_id.as_str()) == id)
        })
    }

    /// The common events, typed. `None`: the event is one the general path reads.
    fn head(&mut self, h: &Head<'_>, ty: &str, out: &mut Vec<Event>) -> Option<()> {
        let delta = h.delta.as_deref().filter(|s| !s.is_empty());
        match ty {
            "response.output_text.delta" => out.extend(delta.map(|d| Event::Text(d.to_string()))),
            "response.refusal.delta" => out.extend(delta.map(|d| Event::Refusal(d.to_string()))),
            "response.function_call_arguments.delta" => {
                if let (Some(d), Some(c)) = (delta, self.find(h.output_index, h.item_id.as_deref()))
                {
                    c.args_seen = true;
                    out.push(Event::ToolArgs {
                        call: c.call,
                        delta: d.to_string(),
                    });
                }
            }
            t if GENERAL.contains(&t) => return None,
            // in_progress, content_part.*, *.done, reasoning, built-in tools: not content.
            _ => {}
        }
        Some(())
    }
}

impl Decode for Decoder {
    fn event(&mut self, ev: &parse::Event, out: &mut Vec<Event>) -> Result<(), StreamError> {
        if self.finished {
            return Ok(());
        }
        // The common events first; an event whose `Head` does not parse (bad JSON, a `delta`
        // that is not a string) takes the general path, which reports what is wrong with it.
        if let Ok(h) = serde_json::from_str::<Head>(&ev.data) {
            if self
                .head(&h, h.ty.as_deref().unwrap_or(&ev.event), out)
                .is_some()
            {
                return Ok(());
            }
        }
        let v: Value = serde_json::from_str(&ev.data)
            .map_err(|e| cut(format!("unreadable upstream event: {e}")))?;
        match v["type"].as_str().unwrap_or(ev.event.as_str()) {
            "response.created" => out.push(Event::Start {
                id: v["response"]["id"].as_str().unwrap_or_default().to_string(),
            }),
            "response.output_item.added" if v["item"]["type"] == "function_call" => {
                if self.calls.len() >= MAX_CALLS {
                    return Err(cut(format!(
                        "more than {MAX_CALLS} tool calls in one answer"
                    )));
                }
                let it = &v["item"];
                let call = self.calls.len();
                let args = it["arguments"].as_str().unwrap_or_default();
                self.calls.push(Call {
                    output_index: v["output_index"].as_u64().unwrap_or(u64::MAX),
                    item_id: it["id"].as_str().unwrap_or_default().to_string(),
                    call,
                    args_seen: !args.is_empty(),
                });
                out.push(Event::ToolStart {
                    call,
                    id: it["call_id"].as_str().unwrap_or_default().to_string(),
                    name: it["name"].as_str().unwrap_or_default().to_string(),
                });
                if !args.is_empty() {
                    out.push(Event::ToolArgs {
                        call,
                        delta: args.to_string(),
                    });
                }
            }
            "response.output_item.done" if v["item"]["type"] == "function_call" => {
                // A server that sends the arguments only whole, at the end.
                let args = v["item"]["arguments"].as_str().unwrap_or_default();
                let (oi, id) = (v["output_index"].as_u64(), v["item_id"].as_str());
                if let Some(c) = self
                    .find(oi, id)
                    .filter(|c| !c.args_seen && !args.is_empty())
                {
                    c.args_seen = true;
                    out.push(Event::ToolArgs {
                        call: c.call,
                        delta: args.to_string(),
                    });
                }
            }
            "response.completed" | "response.incomplete" => {
                self.finished = true;
                let r = &v["response"];
                out.push(Event::Finish {
                    stop: stop_from(r, !self.calls.is_empty()),
                    usage: usage_from(&r["usage"]),
                });
            }
            "response.failed" => out.push(Event::Error(StreamError {
                kind: ErrorKind::BadGateway,
                message: super::truncate(
                    v["response"]["error"]["message"]
                        .as_str()
                        .unwrap_or("the provider's response failed")
                        .to_string(),
                    2000,
                ),
            })),
            "error" => out.push(Event::Error(StreamError {
                kind: ErrorKind::BadGateway,
                message: super::truncate(
                    v["message"]
                        .as_str()
                        .or(v["error"]["message"].as_str())
                        .unwrap_or("the provider reported an error")
                        .to_string(),
                    2000,
                ),
            })),
            // A delta event whose `delta` is not a string: nothing to translate.
            _ => {}
        }
        Ok(())
    }

    fn end(&mut self, _out: &mut Vec<Event>) -> Result<(), StreamError> {
        Ok(())
    }
}

/// A delta event, written directly: `response.output_text.delta` (with `content_index` and
/// `logprobs`), `response.refusal.delta` (with `content_index`),
/// `response.function_call_arguments.delta` (neither).
fn delta_frame(
    out: &mut String,
    ty: &str,
    (item_id, output_index, content_index): (&str, usize, Option<usize>),
    delta: &str,
    logprobs: bool,
    seq: u64,
) {
    out.push_str("event: ");
    out.push_str(ty);
    out.push_str("\ndata: {\"type\":\"");
    out.push_str(ty);
    out.push_str("\",\"item_id\":");
    push_json_str(out, item_id);
    out.push_str(",\"output_index\":");
    push_u64(out, output_index as u64);
    if let Some(ci) = content_index {
        out.push_str(",\"content_index\":");
        push_u64(out, ci as u64);
    }
    out.push_str(",\"delta\":");
    push_json_str(out, delta);
    if logprobs {
        out.push_str(",\"logprobs\":[]");
    }
    out.push_str(",\"sequence_number\":");
    push_u64(out, seq);
    out.push_str("}\n\n");
}

/// A function call of the answer, from its start: its arguments grow in place, and its item is
/// built when its `*.done` events and `response.completed` need it.
struct CallItem {
    id: String,
    call_id: String,
    name: String,
    arguments: String,
    done: bool,
}

impl CallItem {
    fn item(&self) -> Value {
        let status = if self.done {
            "completed"
        } else {
            "in_progress"
        };
        call_item(&self.id, &self.call_id, &self.name, &self.arguments, status)
    }
}

/// An item of the answer's output, repeated in `response.completed`.
enum Item {
    /// A finished message.
    Message(Value),
    Call(CallItem),
}

/// The output item being written.
enum Open {
    /// A message; `parts` are done parts, `part` the open one (is_refusal, text so far).
    Message {
        output_index: usize,
        id: String,
        parts: Vec<Value>,
        part: Option<(bool, String)>,
    },
    Call {
        call: usize,
    },
}

pub(super) struct Encoder {
    id: String,
    model: String,
    created: u64,
    seq: u64,
    started: bool,
    /// The answer's items by output index (the SDK's final response reads them); a call's item
    /// is here from its start, a message's once it is done.
    output: Vec<Item>,
    open: Option<Open>,
    /// Output index by pivot call number.
    calls: Vec<usize>,
    held: usize,
    max_held: usize,
}

impl Encoder {
    pub(super) fn new(opts: &StreamOptions) -> Self {
        Self {
            id: String::new(),
            model: opts.model.clone(),
            created: opts.created,
            seq: 0,
            started: false,
            output: Vec::new(),
            open: None,
            calls: Vec::new(),
            held: 0,
            max_held: opts.max_output_bytes,
        }
    }

    fn next_seq(&mut self) -> u64 {
        self.seq += 1;
        self.seq - 1
    }

    /// One of the few events of an item or of the response, built as a `Value`.
    fn send(&mut self, ty: &'static str, mut v: Value, out: &mut String) {
        v["type"] = json!(ty);
        v["sequence_number"] = json!(self.next_seq());
        push_frame(out, ty, &v);
    }

    fn hold(&mut self, n: usize) -> Result<(), StreamError> {
        self.held += n;
        if self.held > self.max_held {
            return Err(cut(format!(
                "the answer is longer than the {} bytes a translated Responses stream may hold",
                self.max_held
            )));
        }
        Ok(())
    }

    fn start(&mut self, id: &str, out: &mut String) {
        if self.started {
            return;
        }
        self.started = true;
        self.id = super::prefixed("resp_", id);
        let r = response_object(&self.id, self.created, &self.model, Vec::new(), None, None);
        self.send("response.created", json!({"response": r}), out);
        self.send("response.in_progress", json!({"response": r}), out);
    }

    fn close_part(&mut self, out: &mut String) {
        let Some(Open::Message {
            output_index,
            id,
            parts,
            part,
        }) = &mut self.open
        else {
            return;
        };
        let Some((refusal, text)) = part.take() else {
            return;
        };
        let (oi, item_id, ci) = (*output_index, id.clone(), parts.len());
        let p = if refusal {
            refusal_part(&text)
        } else {
            text_part(&text)
        };
        parts.push(p.clone());
        let base = json!({"item_id": item_id, "output_index": oi, "content_index": ci});
        let mut done = base.clone();
        if refusal {
            done["refusal"] = json!(text);
            self.send("response.refusal.done", done, out);
        } else {
            done["text"] = json!(text);
            done["logprobs"] = json!([]);
            self.send("response.output_text.done", done, out);
        }
        let mut pd = base;
        pd["part"] = p;
        self.send("response.content_part.done", pd, out);
    }

    fn close(&mut self, out: &mut String) {
        self.close_part(out);
        match self.open.take() {
            Some(Open::Message {
                output_index,
                id,
                parts,
                ..
            }) => {
                let item = message_item(&id, "completed", parts);
                self.output.push(Item::Message(item.clone()));
                self.send(
                    "response.output_item.done",
                    json!({"output_index": output_index, "item": item}),
                    out,
                );
            }
            Some(Open::Call { call }) => {
                let oi = self.calls[call];
                let Item::Call(c) = &mut self.output[oi] else {
                    unreachable!("a call's output index holds its call")
                };
                c.done = true;
                let item = c.item();
                self.send(
                    "response.function_call_arguments.done",
                    json!({"item_id": item["id"], "output_index": oi, "arguments": item["arguments"]}),
                    out,
                );
                self.send(
                    "response.output_item.done",
                    json!({"output_index": oi, "item": item}),
                    out,
                );
            }
            None => {}
        }
    }

    fn text(&mut self, refusal: bool, t: &str, out: &mut String) -> Result<(), StreamError> {
        self.hold(t.len())?;
        if !matches!(self.open, Some(Open::Message { .. })) {
            self.close(out);
            let output_index = self.output.len();
            let id = format!("msg_{}_{output_index}", self.id.trim_start_matches("resp_"));
            self.send(
                "response.output_item.added",
                json!({"output_index": output_index, "item": message_item(&id, "in_progress", vec![])}),
                out,
            );
            self.open = Some(Open::Message {
                output_index,
                id,
                parts: Vec::new(),
                part: None,
            });
        }
        if matches!(&self.open, Some(Open::Message { part: Some((r, _)), .. }) if *r != refusal) {
            self.close_part(out);
        }
        let Some(Open::Message {
            output_index,
            id,
            parts,
            part,
        }) = &self.open
        else {
            unreachable!()
        };
        let (oi, ci) = (*output_index, parts.len());
        if part.is_none() {
            let p = if refusal {
                refusal_part("")
            } else {
                text_part("")
            };
            let a = json!({"item_id": id, "output_index": oi, "content_index": ci, "part": p});
            self.send("response.content_part.added", a, out);
        }
        let seq = self.next_seq();
        let Some(Open::Message { id, part, .. }) = &mut self.open else {
            unreachable!()
        };
        part.get_or_insert_with(|| (refusal, String::new()))
            .1
            .push_str(t);
        let ty = if refusal {
            "response.refusal.delta"
        } else {
            "response.output_text.delta"
        };
        delta_frame(out, ty, (id, oi, Some(ci)), t, !refusal, seq);
        Ok(())
    }
}

impl Encode for Encoder {
    fn event(&mut self, ev: &Event, out: &mut String) -> Result<(), StreamError> {
        if let Event::Error(e) = ev {
            let err = gateway::ApiError::new(e.kind, e.message.clone());
            let body: Value =
                serde_json::from_str(&err.body(gateway::Dialect::OpenAi)).unwrap_or_default();
            // `code` and `message` as the Responses `error` event has them, and `error` so the
            // OpenAI SDKs raise instead of treating the stream as complete.
            let b = &body["error"];
            self.send(
                "error",
                json!({"code": b["code"], "message": e.message, "param": null, "error": b}),
                out,
            );
            return Ok(());
        }
        self.start(if let Event::Start { id } = ev { id } else { "" }, out);
        match ev {
            Event::Start { .. } | Event::Error(_) => {}
            Event::Text(t) => self.text(false, t, out)?,
            Event::Refusal(t) => self.text(true, t, out)?,
            Event::ToolStart { call, id, name } => {
                self.close(out);
                let oi = self.output.len();
                let c = CallItem {
                    id: format!("fc_{id}"),
                    call_id: id.clone(),
                    name: name.clone(),
                    arguments: String::new(),
                    done: false,
                };
                let item = c.item();
                self.output.push(Item::Call(c));
                if self.calls.len() <= *call {
                    self.calls.resize(*call + 1, usize::MAX);
                }
                self.calls[*call] = oi;
                self.send(
                    "response.output_item.added",
                    json!({"output_index": oi, "item": item}),
                    out,
                );
                self.open = Some(Open::Call { call: *call });
            }
            Event::ToolArgs { call, delta } => {
                self.hold(delta.len())?;
                let oi = *self
                    .calls
                    .get(*call)
                    .filter(|i| **i != usize::MAX)
                    .ok_or_else(|| {
                        cut(format!(
                            "arguments for tool call {call}, which never started"
                        ))
                    })?;
                let seq = self.next_seq();
                let Item::Call(c) = &mut self.output[oi] else {
                    unreachable!("a call's output index holds its call")
                };
                // Appended in place: no copy of the arguments so far per delta.
                c.arguments.push_str(delta);
                let ty = "response.function_call_arguments.delta";
                delta_frame(out, ty, (&c.id, oi, None), delta, false, seq);
            }
            Event::Finish { stop, usage } => {
                self.close(out);
                let output = std::mem::take(&mut self.output)
                    .into_iter()
                    .map(|it| match it {
                        Item::Message(v) => v,
                        Item::Call(c) => c.item(),
                    })
                    .collect();
                let r = response_object(
                    &self.id,
                    self.created,
                    &self.model,
                    output,
                    Some(stop),
                    Some(usage),
                );
                let ty = if r["status"] == "completed" {
                    "response.completed"
                } else {
                    "response.incomplete"
                };
                self.send(ty, json!({"response": r}), out);
            }
        }
        Ok(())
    }
}
