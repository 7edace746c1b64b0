//! OpenAI Responses requests: decoded into the pivot, and encoded from it.

use super::chat_request::{decode_format, decode_tool_choice, effort_of, put, system_text};
use super::pivot::{
    merge_turns, Effort, Format, Image, Message, Part, Request, Role, Text, Tool, ToolChoice,
};
use super::{
    check_fields, join, object, opt_array, opt_bool, opt_f64, opt_str, opt_u64, parse_arguments,
    req_str, Api, TranslateError,
};
use serde_json::{json, Map, Value};

const KNOWN: &[&str] = &[
    "model",
    "input",
    "instructions",
    "stream",
    "max_output_tokens",
    "temperature",
    "top_p",
    "user",
    "safety_identifier",
    "tools",
    "tool_choice",
    "parallel_tool_calls",
    "text",
    "reasoning",
    "store",
    "metadata",
    "include",
    "truncation",
    "service_tier",
    "prompt_cache_key",
    "stream_options",
    "background",
];

const NOTE: &str = "from Responses";

pub(super) fn decode(body: &Value) -> Result<Request, TranslateError> {
    let o = object(body, "body")?;
    // Stateful features first: their message is clearer than "unknown field".
    if o.get("previous_response_id").is_some_and(|v| !v.is_null()) {
        return Err(TranslateError::invalid(
            "previous_response_id",
            "a translated provider is stateless: send the whole conversation in `input`",
        ));
    }
    if o.get("conversation").is_some_and(|v| !v.is_null()) {
        return Err(TranslateError::invalid(
            "conversation",
            "a translated provider is stateless: send the whole conversation in `input`",
        ));
    }
    check_fields(o, KNOWN, "", NOTE)?;
    if opt_bool(o, "store", "")? == Some(true) {
        return Err(TranslateError::invalid(
            "store",
            "a translated provider cannot store responses: send `store: false`",
        ));
    }
    if opt_bool(o, "background", "")? == Some(true) {
        return Err(TranslateError::invalid(
            "background",
            "a translated provider cannot run in the background",
        ));
    }
    let mut req = Request {
        model: req_str(o, "model", "")?,
        stream: opt_bool(o, "stream", "")?.unwrap_or(false),
        max_tokens: opt_u64(o, "max_output_tokens")?,
        temperature: opt_f64(o, "temperature")?,
        top_p: opt_f64(o, "top_p")?,
        user: opt_str(o, "user", "")?.or(opt_str(o, "safety_identifier", "")?),
        parallel_tool_calls: opt_bool(o, "parallel_tool_calls", "")?,
        ..Request::default()
    };
    if let Some(i) = opt_str(o, "instructions", "")? {
        req.system.push(Text {
            text: i,
            cache: false,
        });
    }
    for (i, t) in opt_array(o, "tools", "")?.iter().enumerate() {
        req.tools.push(decode_tool(t, &format!("tools[{i}]"))?);
    }
    req.tool_choice = o
        .get("tool_choice")
        .map(decode_tool_choice)
        .transpose()?
        .flatten();
    if let Some(t) = o.get("text").filter(|v| !v.is_null()) {
        let t = object(t, "text")?;
        check_fields(t, &["format", "verbosity"], "text", NOTE)?;
        req.format = t.get("format").map(decode_format).transpose()?.flatten();
    }
    if let Some(r) = o.get("reasoning").filter(|v| !v.is_null()) {
        let r = object(r, "reasoning")?;
        check_fields(
            r,
            &["effort", "summary", "generate_summary"],
            "reasoning",
            NOTE,
        )?;
        if let Some(e) = opt_str(r, "effort", "reasoning")? {
            req.reasoning = Some(Effort::parse(&e).ok_or_else(|| {
                TranslateError::invalid("reasoning.effort", format!("unknown effort `{e}`"))
            })?);
        }
    }
    let mut turns = Vec::new();
    match o.get("input") {
        None | Some(Value::Null) => {}
        Some(Value::String(s)) => turns.push(Message {
            role: Role::User,
            parts: vec![Part::Text(Text {
                text: s.clone(),
                cache: false,
            })],
        }),
        Some(Value::Array(items)) => {
            for (i, it) in items.iter().enumerate() {
                decode_item(it, &format!("input[{i}]"), &mut req.system, &mut turns)?;
            }
        }
        Some(_) => {
            return Err(TranslateError::invalid(
                "input",
                "must be a string or an array of items",
            ))
        }
    }
    req.messages = merge_turns(turns);
    Ok(req)
}

fn decode_tool(t: &Value, at: &str) -> Result<Tool, TranslateError> {
    let o = object(t, at)?;
    if o.get("type").and_then(Value::as_str) != Some("function") {
        return Err(TranslateError::invalid(
            join(at, "type"),
            "only `function` tools can be translated",
        ));
    }
    Ok(Tool {
        name: req_str(o, "name", at)?,
        description: opt_str(o, "description", at)?,
        parameters: o
            .get("parameters")
            .cloned()
            .unwrap_or_else(|| json!({"type": "object", "properties": {}})),
        strict: opt_bool(o, "strict", at)?.unwrap_or(false),
        cache: false,
    })
}

fn decode_item(
    it: &Value,
    at: &str,
    system: &mut Vec<Text>,
    turns: &mut Vec<Message>,
) -> Result<(), TranslateError> {
    let o = object(it, at)?;
    let ty = o.get("type").and_then(Value::as_str).unwrap_or("message");
    match ty {
        "message" => {
            let role = req_str(o, "role", at)?;
            let parts = decode_parts(
                o.get("content").unwrap_or(&Value::Null),
                &join(at, "content"),
            )?;
            match role.as_str() {
                "system" | "developer" => system_text(parts, at, system)?,
                "user" => turns.push(Message {
                    role: Role::User,
                    parts,
                }),
                "assistant" => turns.push(Message {
                    role: Role::Assistant,
                    parts,
                }),
                r => {
                    return Err(TranslateError::invalid(
                        join(at, "role"),
                        format!("unknown role `{r}`"),
                    ))
                }
            }
        }
        "function_call" => {
            let id = req_str(o, "call_id", at)?;
            let args = opt_str(o, "arguments", at)?.unwrap_or_default();
            let arguments = parse_arguments(&args, &join(at, "arguments"), &id)?;
            turns.push(Message {
                role: Role::Assistant,
                parts: vec![Part::ToolCall {
                    id,
                    name: req_str(o, "name", at)?,
                    arguments,
                }],
            });
        }
        "function_call_output" => {
            let content = match o.get("output") {
                Some(Value::String(s)) if s.is_empty() => Vec::new(),
                Some(Value::String(s)) => vec![Part::Text(Text {
                    text: s.clone(),
                    cache: false,
                })],
                Some(v @ Value::Array(_)) => decode_parts(v, &join(at, "output"))?,
                _ => {
                    return Err(TranslateError::invalid(
                        join(at, "output"),
                        "must be a string or an array",
                    ))
                }
            };
            turns.push(Message {
                role: Role::User,
                parts: vec![Part::ToolResult {
                    call_id: req_str(o, "call_id", at)?,
                    content,
                    is_error: false,
                }],
            });
        }
        // Earlier reasoning has no equivalent elsewhere (documented drop).
        "reasoning" => {}
        "item_reference" => {
            return Err(TranslateError::invalid(
                join(at, "type"),
                "a translated provider is stateless: item references cannot be resolved",
            ))
        }
        other => {
            return Err(TranslateError::invalid(
                join(at, "type"),
                format!("item type `{other}` cannot be translated"),
            ))
        }
    }
    Ok(())
}

fn decode_parts(c: &Value, at: &str) -> Result<Vec<Part>, TranslateError> {
    match c {
        Value::Null => Ok(Vec::new()),
        Value::String(s) => Ok(vec![Part::Text(Text {
            text: s.clone(),
            cache: false,
        })]),
        Value::Array(a) => a
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let pat = format!("{at}[{i}]");
                let po = object(p, &pat)?;
                match po.get("type").and_then(Value::as_str) {
                    Some("input_text" | "output_text") => Ok(Part::Text(Text {
                        text: req_str(po, "text", &pat)?,
                        cache: false,
                    })),
                    Some("refusal") => Ok(Part::Text(Text {
                        text: req_str(po, "refusal", &pat)?,
                        cache: false,
                    })),
                    Some("input_image") => match opt_str(po, "image_url", &pat)? {
                        Some(u) => Ok(Part::Image {
                            source: Image::from_url(&u),
                            cache: false,
                        }),
                        None => Err(TranslateError::invalid(
                            join(&pat, "image_url"),
                            "only images given by URL can be translated (no file_id)",
                        )),
                    },
                    other => Err(TranslateError::invalid(
                        join(&pat, "type"),
                        format!("part type `{}` cannot be translated", other.unwrap_or("?")),
                    )),
                }
            })
            .collect(),
        _ => Err(TranslateError::invalid(
            at,
            "must be a string or an array of parts",
        )),
    }
}

pub(super) fn encode(req: &Request) -> Result<Value, TranslateError> {
    if !req.stop.is_empty() {
        return Err(TranslateError::unsupported(
            "stop",
            Api::Responses,
            "Responses has no stop sequences",
        ));
    }
    let mut o = Map::new();
    o.insert("model".into(), json!(req.model));
    let mut input = Vec::new();
    match req.system.as_slice() {
        [] => {}
        [one] => { o.insert("instructions".into(), json!(one.text)); }
        many => input.push(json!({"type": "message", "role": "system",
            "content": many.iter().map(|t| json!({"type": "input_text", "text": t.text})).collect::<Vec<_>>()})),
    }
    for m in &req.messages {
        encode_message(m, &mut input);
    }
    o.insert("input".into(), Value::Array(input));
    // Translated requests are never stored upstream (documented).
    o.insert("store".into(), json!(false));
    if req.stream {
        o.insert("stream".into(), json!(true));
    }
    put(&mut o, "max_output_tokens", req.max_tokens.map(Value::from));
    put(&mut o, "temperature", req.temperature.map(Value::from));
    put(&mut o, "top_p", req.top_p.map(Value::from));
    put(&mut o, "user", req.user.clone().map(Value::from));
    if !req.tools.is_empty() {
        o.insert("tools".into(), Value::Array(req.tools.iter().map(|t| {
            let mut v = json!({"type": "function", "name": t.name, "parameters": t.parameters, "strict": t.strict});
            if let Some(d) = &t.description { v["description"] = json!(d); }
            v
        }).collect()));
    }
    // OpenAI refuses `tool_choice` and `parallel_tool_calls` without `tools` (a client of
    // another dialect may send them anyway): they mean nothing then, so they are not sent.
    let has_tools = !req.tools.is_empty();
    put(
        &mut o,
        "tool_choice",
        req.tool_choice
            .as_ref()
            .filter(|_| has_tools)
            .map(|c| match c {
                ToolChoice::Auto => json!("auto"),
                ToolChoice::None => json!("none"),
                ToolChoice::Required => json!("required"),
                ToolChoice::Named(n) => json!({"type": "function", "name": n}),
            }),
    );
    put(
        &mut o,
        "parallel_tool_calls",
        req.parallel_tool_calls
            .filter(|_| has_tools)
            .map(Value::from),
    );
    put(
        &mut o,
        "text",
        req.format.as_ref().map(|f| {
            json!({"format": match f {
                Format::Text => json!({"type": "text"}),
                Format::JsonObject => json!({"type": "json_object"}),
                Format::JsonSchema { name, schema, strict, description } => {
                    let mut s = json!({"type": "json_schema", "name": name, "schema": schema});
                    if let Some(st) = strict { s["strict"] = json!(st); }
                    if let Some(d) = description { s["description"] = json!(d); }
                    s
                }
            }})
        }),
    );
    put(
        &mut o,
        "reasoning",
        req.reasoning
            .as_ref()
            .map(|r| json!({"effort": effort_of(r)})),
    );
    Ok(Value::Object(o))
}

fn encode_message(m: &Message, input: &mut Vec<Value>) {
    // Consecutive text and images of one turn share one message item; tool calls and results
    // are items of their own, in order.
    let mut content: Vec<Value> = Vec::new();
    let (role, text_type) = match m.role {
        Role::User => ("user", "input_text"),
        Role::Assistant => ("assistant", "output_text"),
    };
    let flush = |content: &mut Vec<Value>, input: &mut Vec<Value>| {
        if !content.is_empty() {
            input
                .push(json!({"type": "message", "role": role, "content": std::mem::take(content)}));
        }
    };
    for p in &m.parts {
        match p {
            Part::Text(t) if m.role == Role::Assistant => {
                content.push(json!({"type": text_type, "text": t.text, "annotations": []}))
            }
            Part::Text(t) => content.push(json!({"type": text_type, "text": t.text})),
            Part::Image { source, .. } => content.push(
                json!({"type": "input_image", "image_url": source.to_url(), "detail": "auto"}),
            ),
            Part::ToolCall {
                id,
                name,
                arguments,
            } => {
                flush(&mut content, input);
                input.push(json!({"type": "function_call", "call_id": id, "name": name, "arguments": arguments.to_string()}));
            }
            Part::ToolResult {
                call_id,
                content: c,
                ..
            } => {
                flush(&mut content, input);
                let output = match c.as_slice() {
                    [] => json!(""),
                    [Part::Text(t)] => json!(t.text),
                    parts => Value::Array(parts.iter().map(|p| match p {
                        Part::Image { source, .. } => json!({"type": "input_image", "image_url": source.to_url(), "detail": "auto"}),
                        Part::Text(t) => json!({"type": "input_text", "text": t.text}),
                        _ => Value::Null,
                    }).collect()),
                };
                input.push(
                    json!({"type": "function_call_output", "call_id": call_id, "output": output}),
                );
            }
        }
    }
    flush(&mut content, input);
}
