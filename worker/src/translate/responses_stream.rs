//! OpenAI Responses streams: `response.*` events decoded into pivot events, and pivot events
//! encoded as them, each with its `sequence_number`.

use super::chat_stream::MAX_CALLS;
use super::pivot::{Event, StreamError};
use super::responses_response::{
    call_item, message_item, refusal_part, response_object, stop_from, text_part, usage_from,
};
use super::stream::{cut, Decode, Encode, StreamOptions};
use gateway::sse::parse::{self, frame};
use gateway::ErrorKind;
use serde_json::{json, Value};

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
    fn find(&mut self, v: &Value) -> Option<&mut Call> {
        let oi = v["output_index"].as_u64();
        let id = v["item_id"].as_str();
        self.calls.iter_mut().find(|c| {
            Some(c.output_index) == oi || (id.is_some() && Some(c.item_id.as_str()) == id)
        })
    }
}

impl Decode for Decoder {
    fn event(&mut self, ev: &parse::Event, out: &mut Vec<Event>) -> Result<(), StreamError> {
        if self.finished {
            return Ok(());
        }
        let v: Value = serde_json::from_str(&ev.data)
            .map_err(|e| cut(format!("unreadable upstream event: {e}")))?;
        let text = |k: &str| v[k].as_str().filter(|s| !s.is_empty()).map(str::to_string);
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
            "response.output_text.delta" => out.extend(text("delta").map(Event::Text)),
            "response.refusal.delta" => out.extend(text("delta").map(Event::Refusal)),
            "response.function_call_arguments.delta" => {
                if let (Some(d), Some(c)) = (text("delta"), self.find(&v)) {
                    c.args_seen = true;
                    out.push(Event::ToolArgs {
                        call: c.call,
                        delta: d,
                    });
                }
            }
            "response.output_item.done" if v["item"]["type"] == "function_call" => {
                // A server that sends the arguments only whole, at the end.
                let args = v["item"]["arguments"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string();
                if let Some(c) = self.find(&v).filter(|c| !c.args_seen && !args.is_empty()) {
                    c.args_seen = true;
                    out.push(Event::ToolArgs {
                        call: c.call,
                        delta: args,
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
            _ => {}
        }
        Ok(())
    }

    fn end(&mut self, _out: &mut Vec<Event>) -> Result<(), StreamError> {
        Ok(())
    }
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
    /// Finished items, repeated in `response.completed` (the SDK's final response reads it).
    output: Vec<Value>,
    open: Option<Open>,
    /// Output index by pivot call number; a call's item lives in `output` from its start.
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

    fn send(&mut self, ty: &str, mut v: Value, out: &mut String) {
        v["type"] = json!(ty);
        v["sequence_number"] = json!(self.seq);
        self.seq += 1;
        out.push_str(&frame(ty, &v.to_string()));
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
                self.output.push(item.clone());
                self.send(
                    "response.output_item.done",
                    json!({"output_index": output_index, "item": item}),
                    out,
                );
            }
            Some(Open::Call { call }) => {
                let oi = self.calls[call];
                self.output[oi]["status"] = json!("completed");
                let item = self.output[oi].clone();
                self.send("response.function_call_arguments.done",
                    json!({"item_id": item["id"], "output_index": oi, "arguments": item["arguments"]}), out);
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
            self.send("response.output_item.added", json!({"output_index": output_index, "item": message_item(&id, "in_progress", vec![])}), out);
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
        }) = &mut self.open
        else {
            unreachable!()
        };
        let base = json!({"item_id": id.clone(), "output_index": *output_index, "content_index": parts.len()});
        let added = part.is_none();
        part.get_or_insert_with(|| (refusal, String::new()))
            .1
            .push_str(t);
        if added {
            let mut a = base.clone();
            a["part"] = if refusal {
                refusal_part("")
            } else {
                text_part("")
            };
            self.send("response.content_part.added", a, out);
        }
        let mut d = base;
        d["delta"] = json!(t);
        if refusal {
            self.send("response.refusal.delta", d, out);
        } else {
            d["logprobs"] = json!([]);
            self.send("response.output_text.delta", d, out);
        }
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
                let item = call_item(&format!("fc_{id}"), id, name, "", "in_progress");
                self.output.push(item.clone());
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
                let item = &mut self.output[oi];
                // Appended in place: no copy of the arguments so far per delta.
                if let Value::String(args) = &mut item["arguments"] {
                    args.push_str(delta);
                }
                let item_id = item["id"].clone();
                self.send(
                    "response.function_call_arguments.delta",
                    json!({"item_id": item_id, "output_index": oi, "delta": delta}),
                    out,
                );
            }
            Event::Finish { stop, usage } => {
                self.close(out);
                let r = response_object(
                    &self.id,
                    self.created,
                    &self.model,
                    std::mem::take(&mut self.output),
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
