//! OpenAI Chat Completions requests: decoded into the pivot, and encoded from it.

use super::pivot::{
    merge_turns, Effort, Format, Image, Message, Part, Reasoning, Request, Role, Text, Tool,
    ToolChoice,
};
use super::{
    check_fields, join, object, opt_array, opt_bool, opt_f64, opt_str, opt_u64, parse_arguments,
    req_str, Api, TranslateError,
};
use serde_json::{json, Map, Value};

const KNOWN: &[&str] = &[
    "model",
    "messages",
    "stream",
    "stream_options",
    "n",
    "max_tokens",
    "max_completion_tokens",
    "temperature",
    "top_p",
    "stop",
    "user",
    "safety_identifier",
    "tools",
    "tool_choice",
    "parallel_tool_calls",
    "response_format",
    "reasoning_effort",
    "seed",
    "metadata",
    "store",
    "service_tier",
    "prompt_cache_key",
    "prediction",
    "verbosity",
    "frequency_penalty",
    "presence_penalty",
    "logprobs",
    "modalities",
];

const NOTE: &str = "from Chat Completions";

pub(super) fn decode(body: &Value) -> Result<Request, TranslateError> {
    let o = object(body, "body")?;
    check_fields(o, KNOWN, "", NOTE)?;
    refuse_lossy(o)?;
    let mut req = Request {
        model: req_str(o, "model", "")?,
        stream: opt_bool(o, "stream", "")?.unwrap_or(false),
        max_tokens: opt_u64(o, "max_completion_tokens")?.or(opt_u64(o, "max_tokens")?),
        temperature: opt_f64(o, "temperature")?,
        top_p: opt_f64(o, "top_p")?,
        user: opt_str(o, "user", "")?.or(opt_str(o, "safety_identifier", "")?),
        parallel_tool_calls: opt_bool(o, "parallel_tool_calls", "")?,
        stop: decode_stop(o.get("stop"))?,
        ..Request::default()
    };
    if let Some(so) = o.get("stream_options").and_then(Value::as_object) {
        req.include_usage = opt_bool(so, "include_usage", "stream_options")?.unwrap_or(false);
    }
    if let Some(e) = opt_str(o, "reasoning_effort", "")? {
        req.reasoning = Some(Effort::parse(&e).ok_or_else(|| {
            TranslateError::invalid("reasoning_effort", format!("unknown effort `{e}`"))
        })?);
    }
    for (i, t) in opt_array(o, "tools", "")?.iter().enumerate() {
        req.tools.push(decode_tool(t, &format!("tools[{i}]"))?);
    }
    req.tool_choice = o
        .get("tool_choice")
        .map(decode_tool_choice)
        .transpose()?
        .flatten();
    req.format = o
        .get("response_format")
        .map(decode_format)
        .transpose()?
        .flatten();
    let mut turns = Vec::new();
    for (i, m) in opt_array(o, "messages", "")?.iter().enumerate() {
        decode_message(m, &format!("messages[{i}]"), &mut req.system, &mut turns)?;
    }
    req.messages = merge_turns(turns);
    Ok(req)
}

/// Fields we accept only at their neutral values, since dropping anything else changes the answer.
fn refuse_lossy(o: &Map<String, Value>) -> Result<(), TranslateError> {
    if opt_u64(o, "n")?.unwrap_or(1) > 1 {
        return Err(TranslateError::invalid(
            "n",
            "n > 1 cannot be translated: the provider returns one choice",
        ));
    }
    for k in ["frequency_penalty", "presence_penalty"] {
        if opt_f64(o, k)?.unwrap_or(0.0) != 0.0 {
            return Err(TranslateError::invalid(
                k,
                "has no equivalent at this provider",
            ));
        }
    }
    if opt_bool(o, "logprobs", "")?.unwrap_or(false) {
        return Err(TranslateError::invalid(
            "logprobs",
            "has no equivalent at this provider",
        ));
    }
    if let Some(m) = o.get("modalities").and_then(Value::as_array) {
        if m.iter().any(|x| x != "text") {
            return Err(TranslateError::invalid(
                "modalities",
                "only text can be translated",
            ));
        }
    }
    Ok(())
}

fn decode_stop(v: Option<&Value>) -> Result<Vec<String>, TranslateError> {
    match v {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::String(s)) => Ok(vec![s.clone()]),
        Some(Value::Array(a)) => a
            .iter()
            .map(|s| {
                s.as_str()
                    .map(str::to_string)
                    .ok_or_else(|| TranslateError::invalid("stop", "must be strings"))
            })
            .collect(),
        Some(_) => Err(TranslateError::invalid(
            "stop",
            "must be a string or an array",
        )),
    }
}

fn decode_tool(t: &Value, at: &str) -> Result<Tool, TranslateError> {
    let o = object(t, at)?;
    if o.get("type").and_then(Value::as_str) != Some("function") {
        return Err(TranslateError::invalid(
            join(at, "type"),
            "only `function` tools can be translated",
        ));
    }
    let fat = join(at, "function");
    let f = object(o.get("function").unwrap_or(&Value::Null), &fat)?;
    Ok(Tool {
        name: req_str(f, "name", &fat)?,
        description: opt_str(f, "description", &fat)?,
        parameters: f
            .get("parameters")
            .cloned()
            .unwrap_or_else(|| json!({"type": "object", "properties": {}})),
        strict: opt_bool(f, "strict", &fat)?.unwrap_or(false),
        cache: false,
    })
}

pub(super) fn decode_tool_choice(v: &Value) -> Result<Option<ToolChoice>, TranslateError> {
    Ok(Some(match v {
        Value::Null => return Ok(None),
        Value::String(s) => match s.as_str() {
            "auto" => ToolChoice::Auto,
            "none" => ToolChoice::None,
            "required" => ToolChoice::Required,
            _ => {
                return Err(TranslateError::invalid(
                    "tool_choice",
                    format!("unknown choice `{s}`"),
                ))
            }
        },
        Value::Object(o) => {
            // Chat nests the name in `function`; Responses has it flat. (Indexing the `Value`,
            // not the map: a missing key is null there, where the map would panic.)
            let name = v["function"]["name"]
                .as_str()
                .or(o.get("name").and_then(Value::as_str));
            match (o.get("type").and_then(Value::as_str), name) {
                (Some("function"), Some(n)) => ToolChoice::Named(n.to_string()),
                _ => {
                    return Err(TranslateError::invalid(
                        "tool_choice",
                        "only a named function can be translated",
                    ))
                }
            }
        }
        _ => {
            return Err(TranslateError::invalid(
                "tool_choice",
                "must be a string or an object",
            ))
        }
    }))
}

/// Chat `response_format`; Responses `text.format` is the same without the `json_schema` nest.
pub(super) fn decode_format(v: &Value) -> Result<Option<Format>, TranslateError> {
    let at = "response_format";
    let o = match v {
        Value::Null => return Ok(None),
        v => object(v, at)?,
    };
    Ok(Some(match o.get("type").and_then(Value::as_str) {
        Some("text") => Format::Text,
        Some("json_object") => Format::JsonObject,
        Some("json_schema") => {
            let s = o.get("json_schema").and_then(Value::as_object).unwrap_or(o);
            Format::JsonSchema {
                name: opt_str(s, "name", at)?.unwrap_or_else(|| "response".into()),
                schema: s.get("schema").cloned().unwrap_or(Value::Null),
                strict: opt_bool(s, "strict", at)?,
                description: opt_str(s, "description", at)?,
            }
        }
        _ => {
            return Err(TranslateError::invalid(
                join(at, "type"),
                "must be text, json_object or json_schema",
            ))
        }
    }))
}

fn decode_message(
    m: &Value,
    at: &str,
    system: &mut Vec<Text>,
    turns: &mut Vec<Message>,
) -> Result<(), TranslateError> {
    let o = object(m, at)?;
    // `name` is dropped (documented); `audio` or a legacy `function_call` is not harmless.
    const MESSAGE: &[&str] = &[
        "role",
        "content",
        "name",
        "tool_calls",
        "tool_call_id",
        "refusal",
    ];
    check_fields(o, MESSAGE, at, NOTE)?;
    let role = req_str(o, "role", at)?;
    let content = o.get("content").unwrap_or(&Value::Null);
    match role.as_str() {
        "system" | "developer" => {
            system_text(decode_parts(content, &join(at, "content"))?, at, system)?
        }
        "user" => turns.push(Message {
            role: Role::User,
            parts: decode_parts(content, &join(at, "content"))?,
        }),
        "assistant" => {
            let mut parts = decode_parts(content, &join(at, "content"))?;
            if let Some(r) = opt_str(o, "refusal", at)? {
                parts.push(Part::Text(Text {
                    text: r,
                    cache: false,
                }));
            }
            for (j, c) in opt_array(o, "tool_calls", at)?.iter().enumerate() {
                parts.push(decode_call(c, &format!("{at}.tool_calls[{j}]"))?);
            }
            turns.push(Message {
                role: Role::Assistant,
                parts,
            });
        }
        "tool" => {
            let call_id = req_str(o, "tool_call_id", at)?;
            let content = decode_parts(content, &join(at, "content"))?;
            turns.push(Message {
                role: Role::User,
                parts: vec![Part::ToolResult {
                    call_id,
                    content,
                    is_error: false,
                }],
            });
        }
        other => {
            return Err(TranslateError::invalid(
                join(at, "role"),
                format!("role `{other}` cannot be translated"),
            ))
        }
    }
    Ok(())
}

fn decode_call(c: &Value, at: &str) -> Result<Part, TranslateError> {
    let o = object(c, at)?;
    let id = req_str(o, "id", at)?;
    let fat = join(at, "function");
    let f = object(o.get("function").unwrap_or(&Value::Null), &fat)?;
    let name = req_str(f, "name", &fat)?;
    let args = opt_str(f, "arguments", &fat)?.unwrap_or_default();
    let arguments = parse_arguments(&args, &join(&fat, "arguments"), &id)?;
    Ok(Part::ToolCall {
        id,
        name,
        arguments,
    })
}

/// `content` as a string, null, or an array of text / image / refusal parts.
fn decode_parts(content: &Value, at: &str) -> Result<Vec<Part>, TranslateError> {
    match content {
        Value::Null => Ok(Vec::new()),
        Value::String(s) if s.is_empty() => Ok(Vec::new()),
        Value::String(s) => Ok(vec![Part::Text(Text {
            text: s.clone(),
            cache: false,
        })]),
        Value::Array(a) => a
            .iter()
            .enumerate()
            .map(|(i, p)| decode_part(p, &format!("{at}[{i}]")))
            .collect(),
        _ => Err(TranslateError::invalid(
            at,
            "must be a string or an array of parts",
        )),
    }
}

fn decode_part(p: &Value, at: &str) -> Result<Part, TranslateError> {
    let o = object(p, at)?;
    match o.get("type").and_then(Value::as_str) {
        Some("text") => Ok(Part::Text(Text {
            text: req_str(o, "text", at)?,
            cache: false,
        })),
        Some("refusal") => Ok(Part::Text(Text {
            text: req_str(o, "refusal", at)?,
            cache: false,
        })),
        Some("image_url") => {
            let url = match o.get("image_url") {
                Some(Value::String(s)) => s.clone(),
                Some(Value::Object(u)) => req_str(u, "url", &join(at, "image_url"))?,
                _ => {
                    return Err(TranslateError::invalid(
                        join(at, "image_url"),
                        "is required",
                    ))
                }
            };
            Ok(Part::Image {
                source: Image::from_url(&url),
                cache: false,
            })
        }
        other => Err(TranslateError::invalid(
            join(at, "type"),
            format!("part type `{}` cannot be translated", other.unwrap_or("?")),
        )),
    }
}

pub(super) fn encode(req: &Request) -> Result<Value, TranslateError> {
    let mut messages = Vec::new();
    if !req.system.is_empty() {
        messages.push(json!({"role": "system", "content": text_content(&req.system)}));
    }
    for m in &req.messages {
        match m.role {
            Role::User => encode_user(m, &mut messages)?,
            Role::Assistant => messages.push(encode_assistant(m)),
        }
    }
    let mut o = Map::new();
    o.insert("model".into(), json!(req.model));
    o.insert("messages".into(), Value::Array(messages));
    if req.stream {
        o.insert("stream".into(), json!(true));
        // Asked always: usage is read from every stream (the client sees it only if it asked).
        o.insert("stream_options".into(), json!({"include_usage": true}));
    }
    put(
        &mut o,
        "max_completion_tokens",
        req.max_tokens.map(Value::from),
    );
    put(&mut o, "temperature", req.temperature.map(Value::from));
    put(&mut o, "top_p", req.top_p.map(Value::from));
    if !req.stop.is_empty() {
        o.insert("stop".into(), json!(req.stop));
    }
    put(&mut o, "user", req.user.clone().map(Value::from));
    if !req.tools.is_empty() {
        let tools: Vec<Value> = req
            .tools
            .iter()
            .map(|t| {
                let mut f = json!({"name": t.name, "parameters": t.parameters});
                if let Some(d) = &t.description {
                    f["description"] = json!(d);
                }
                if t.strict {
                    f["strict"] = json!(true);
                }
                json!({"type": "function", "function": f})
            })
            .collect();
        o.insert("tools".into(), Value::Array(tools));
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
                ToolChoice::Named(n) => json!({"type": "function", "function": {"name": n}}),
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
        "response_format",
        req.format.as_ref().map(|f| match f {
            Format::Text => json!({"type": "text"}),
            Format::JsonObject => json!({"type": "json_object"}),
            Format::JsonSchema {
                name,
                schema,
                strict,
                description,
            } => {
                let mut s = json!({"name": name, "schema": schema});
                if let Some(st) = strict {
                    s["strict"] = json!(st);
                }
                if let Some(d) = description {
                    s["description"] = json!(d);
                }
                json!({"type": "json_schema", "json_schema": s})
            }
        }),
    );
    put(
        &mut o,
        "reasoning_effort",
        req.reasoning.as_ref().map(|r| json!(effort_of(r))),
    );
    Ok(Value::Object(o))
}

/// The OpenAI effort for the pivot's reasoning (shared with the Responses encoder).
pub(super) fn effort_of(r: &Reasoning) -> &'static str {
    match r {
        Reasoning::Off => "minimal",
        Reasoning::Effort(e) => e.as_str(),
        Reasoning::Budget(b) => Effort::for_budget(*b).as_str(),
    }
}

pub(super) fn put(o: &mut Map<String, Value>, k: &str, v: Option<Value>) {
    if let Some(v) = v {
        o.insert(k.into(), v);
    }
}

/// A string for one plain text, else an array of text parts.
fn text_content(texts: &[Text]) -> Value {
    match texts {
        [one] => json!(one.text),
        many => Value::Array(
            many.iter()
                .map(|t| json!({"type": "text", "text": t.text}))
                .collect(),
        ),
    }
}

fn encode_user(m: &Message, out: &mut Vec<Value>) -> Result<(), TranslateError> {
    let mut rest = Vec::new();
    for p in &m.parts {
        match p {
            Part::ToolResult {
                call_id, content, ..
            } => {
                let mut texts = Vec::new();
                for c in content {
                    match c {
                        Part::Text(t) => texts.push(t.clone()),
                        _ => {
                            return Err(TranslateError::unsupported(
                                "tool_result.content",
                                Api::Chat,
                                "a tool message holds text only",
                            ))
                        }
                    }
                }
                let content = if texts.is_empty() {
                    json!("")
                } else {
                    text_content(&texts)
                };
                out.push(json!({"role": "tool", "tool_call_id": call_id, "content": content}));
            }
            other => rest.push(other),
        }
    }
    if rest.is_empty() {
        return Ok(());
    }
    let content = match rest.as_slice() {
        [Part::Text(t)] => json!(t.text),
        parts => Value::Array(
            parts
                .iter()
                .map(|p| match p {
                    Part::Text(t) => json!({"type": "text", "text": t.text}),
                    Part::Image { source, .. } => {
                        json!({"type": "image_url", "image_url": {"url": source.to_url()}})
                    }
                    _ => Value::Null,
                })
                .collect(),
        ),
    };
    out.push(json!({"role": "user", "content": content}));
    Ok(())
}

fn encode_assistant(m: &Message) -> Value {
    let texts: Vec<Text> = m
        .parts
        .iter()
        .filter_map(|p| match p {
            Part::Text(t) => Some(t.clone()),
            _ => None,
        })
        .collect();
    let calls: Vec<Value> = m
        .parts
        .iter()
        .filter_map(|p| match p {
            Part::ToolCall {
                id,
                name,
                arguments,
            } => Some(json!({
                "id": id, "type": "function",
                "function": {"name": name, "arguments": arguments.to_string()}
            })),
            _ => None,
        })
        .collect();
    let mut v = json!({"role": "assistant", "content": if texts.is_empty() { Value::Null } else { text_content(&texts) }});
    if !calls.is_empty() {
        v["tool_calls"] = Value::Array(calls);
    }
    v
}

/// The parts of a system or developer message (at `at`) added to `system`: text only, in Chat
/// and in Responses alike.
pub(super) fn system_text(
    parts: Vec<Part>,
    at: &str,
    system: &mut Vec<Text>,
) -> Result<(), TranslateError> {
    for p in parts {
        match p {
            Part::Text(t) => system.push(t),
            _ => {
                return Err(TranslateError::invalid(
                    join(at, "content"),
                    "a system message holds text only",
                ))
            }
        }
    }
    Ok(())
}
