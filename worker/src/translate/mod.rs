//! Translation between the three client dialects (OpenAI Chat Completions, Anthropic Messages,
//! OpenAI Responses) through one pivot model (`pivot`), for requests, non-streamed responses,
//! streams and error bodies. Pure code: no I/O, no clock, no allocation that grows with a stream
//! (except where noted below for Responses clients).
//!
//! # Design
//! Each dialect has a decoder into the pivot and an encoder from it, per direction:
//! `*_request.rs` (client request -> pivot -> provider request), `*_response.rs` (provider
//! answer and error -> pivot -> client answer), `*_stream.rs` (provider SSE events -> pivot
//! `Event`s -> client SSE frames). Any client dialect reaches any provider dialect through the
//! pivot, so each mapping is written once. `stream::StreamTranslator` runs the SSE parser of the
//! relay layer (`gateway::sse::parse`), a stream decoder and a stream encoder incrementally: every
//! upstream event is turned into client frames as it arrives. When the two dialects are the same,
//! nothing here is used (the request is native).
//!
//! # Mappings
//! - System: Chat `system`/`developer` messages (wherever they are; they are hoisted before the
//!   conversation), Responses `instructions` and `system`/`developer` items, Messages `system`
//!   (string or text blocks). `cache_control` exists only in Messages: it is kept between
//!   Messages and the pivot and dropped toward OpenAI dialects (they cache automatically).
//! - Turns: consecutive turns of one role are merged, empty turns dropped. Chat `role: tool`
//!   messages and Responses `function_call_output` items become `tool_result` blocks of one user
//!   turn, and back. Tool results go first in a Messages user turn, as Anthropic requires.
//! - Parts: text; images as `image_url` (a `data:` URL is base64, anything else a URL) ⇄
//!   Messages `image` with a `base64` or `url` source ⇄ Responses `input_image`.
//! - Tools: `{type:function,function:{name,description,parameters,strict}}` ⇄
//!   `{name,description,input_schema}` ⇄ `{type:function,name,description,parameters,strict}`.
//!   Toward Responses `strict` is always sent (false unless the client said true), since the
//!   Responses API otherwise picks its own default. Tool choice `auto`/`none`/`required`/named ⇄
//!   `auto`/`none`/`any`/`tool`; `parallel_tool_calls: false` ⇄ `disable_parallel_tool_use`.
//!   Tool-call arguments are a JSON string in OpenAI dialects and an object in Messages: an
//!   argument string that is not a JSON object is a 400 naming the call.
//! - Parameters: `max_tokens`/`max_completion_tokens`/`max_output_tokens` ⇄ `max_tokens`; toward
//!   Messages (which requires it) `default_max_tokens` when the client gave none; toward Chat it
//!   is sent as `max_completion_tokens`. `stop` ⇄ `stop_sequences`. `user` (and Responses
//!   `safety_identifier`) ⇄ `metadata.user_id`. `temperature`: OpenAI accepts 0..2, Anthropic
//!   0..1: values above 1 are clamped to 1 toward Messages; `top_p` is 0..1 in all three.
//!   `response_format` ⇄ `text.format` (text, json_object, json_schema).
//! - Reasoning: OpenAI `reasoning_effort` / `reasoning.effort` low/medium/high ⇄ Anthropic
//!   `thinking.budget_tokens` 1024/4096/16384 (a budget maps back to the nearest effort: up to
//!   2048 low, up to 8192 medium, else high); `minimal`/`none` ⇄ `thinking: disabled`. A budget
//!   that does not fit under `max_tokens` is lowered to `max_tokens - 1`, and thinking is left
//!   off when that is under Anthropic's minimum of 1024.
//! - Results: `stop` ⇄ `end_turn`/`stop_sequence` ⇄ `completed`; `length` ⇄ `max_tokens` ⇄
//!   `incomplete: max_output_tokens`; `tool_calls` ⇄ `tool_use` ⇄ completed with function calls;
//!   `content_filter` ⇄ `refusal` ⇄ `incomplete: content_filter`. Usage: input, output, cache
//!   read and cache write; OpenAI's `prompt_tokens`/`input_tokens` include cached tokens
//!   (`cached_tokens`) and cache writes (`cache_write_tokens`), Anthropic's `input_tokens` do
//!   not (`cache_read_input_tokens`, `cache_creation_input_tokens`), and Anthropic's cache writes are
//!   counted into OpenAI's prompt tokens. The response carries the model the client asked for.
//!   Ids keep the provider's id, prefixed as the client's dialect expects (`chatcmpl-`, `msg_`,
//!   `resp_`) when it lacks that prefix.
//! - Errors: a provider error body becomes the client dialect's error body, status kept.
//! - Streams: Chat chunks ⇄ `message_start` / `content_block_*` / `message_delta` /
//!   `message_stop` ⇄ Responses `response.*` events with `sequence_number`. Each tool call is its
//!   own block with its own index; Chat tool-call indexes count tool calls only. A Chat tool call
//!   may bring its id and its name in different chunks: it starts once its name is known (its
//!   arguments are held until then; a call whose name comes before any id gets the id `call_N`,
//!   N its Chat index). A Messages client's `message_start` carries zero usage: the counts
//!   (input, output, cache read and write) come in `message_delta.usage`, which the SDKs merge.
//!   A Responses client gets `response.incomplete` for max tokens and content filtering, as
//!   OpenAI sends it (the SDK's `get_final_response()` then raises, as it does against OpenAI). `function: null`, `content: null`, empty deltas, usage-only
//!   chunks, `ping` events and comments carry no content. A stream that breaks (an upstream
//!   error event, unreadable data, or an end before the finish) ends with one error event in the
//!   client's dialect, never with a clean end. A Chat client gets the usage-only chunk only if it
//!   asked for it (`stream_options.include_usage`); toward a Chat provider it is always asked.
//!
//! # Drops and limits (documented, harmless) and refusals (400 naming the field)
//! - Dropped: Anthropic `thinking`/`redacted_thinking` blocks in the history and thinking deltas
//!   in a stream (no OpenAI equivalent); Chat message `name`; Chat `reasoning_content` deltas;
//!   `cache_control` toward OpenAI dialects; `is_error` of a tool result toward OpenAI dialects;
//!   Chat `seed`, `metadata`, `store`, `service_tier`, `prompt_cache_key`, `prediction`,
//!   `verbosity`, `stream_options` (beyond `include_usage`); Responses `metadata`, `include`,
//!   `truncation`, `service_tier`, `prompt_cache_key`, `text.verbosity`, `reasoning.summary`,
//!   `store: false`, `background: false`; Messages `service_tier`; zero
//!   `frequency_penalty`/`presence_penalty`, `logprobs: false`, `modalities: ["text"]`. The
//!   Responses default `strict: true` for function tools is not carried: a tool without `strict`
//!   is non-strict elsewhere.
//!   Toward a Responses provider `store: false` is always sent (translated requests are never
//!   stored upstream).
//! - Refused with a 400 naming the field: `n > 1`; `previous_response_id`, `store: true`,
//!   `conversation`, `background` and `item_reference` items (a translated provider is
//!   stateless); JSON mode or a schema toward Messages (it has no equivalent); stop sequences
//!   toward Responses (it has none); non-zero penalties, `logit_bias`, `logprobs`, audio, files
//!   and documents, built-in/server tools, images inside tool results toward Chat; any field the
//!   translator does not know (top level and message level; `top_k` among them).
//! - A Chat provider that interleaves the deltas of two tool calls gets each delta forwarded
//!   with its own block index (the SDKs accumulate by index); OpenAI's own servers never do.
//! - Memory: a stream keeps a fixed amount of state plus one small entry per tool call, except
//!   toward a Responses client, whose `*.done` and `response.completed` events repeat the whole
//!   output (the SDK's `get_final_response()` reads them): that text is held, up to
//!   `StreamOptions::max_output_bytes`, past which the stream ends with an error.
//!
//! # API (for the wiring)
//! - `translate_request(from, to, &body, &RequestOptions { default_max_tokens })` -> provider
//!   body or `TranslateError` (`to_api_error()` is the 400, its body in `from.dialect()`).
//! - `translate_response(from, to, &body, client_model)` -> (client body, `Usage`), or a
//!   `TranslateError::Upstream` (a 502).
//! - `translate_error(from, to, status, &body)` -> the client's error body (status kept).
//! - `StreamTranslator::new(provider, client, StreamOptions)`, then `feed(chunk, &mut out)` per
//!   upstream chunk, `end(&mut out)` at a clean upstream end, `fail(kind, message, &mut out)`
//!   when the upstream broke; `usage()` once finished, `is_done()`.
//! - `body_usage(api, &body)` -> the `Usage` of a native non-streamed answer.
//! - `UsageReader::new(api, max_event_bytes)`, `feed(chunk)`, `end()`, `usage()` for native
//!   streams.

pub mod body;
mod chat_request;
mod chat_response;
mod chat_stream;
mod messages_request;
mod messages_response;
mod messages_stream;
pub mod pivot;
mod responses_request;
mod responses_response;
mod responses_stream;
pub mod stream;
#[cfg(test)]
mod tests_request;
#[cfg(test)]
mod tests_response;
#[cfg(test)]
mod tests_roundtrip;
#[cfg(test)]
mod tests_stream;
#[cfg(test)]
mod tests_stream_fixtures;

pub use pivot::Usage;
pub use stream::{StreamOptions, StreamTranslator, UsageReader};

use gateway::{ApiError, Dialect, ErrorKind};
use serde_json::{Map, Value};

/// One of the three APIs, as a client speaks it or a provider serves it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Api {
    /// OpenAI Chat Completions, `/v1/chat/completions`.
    Chat,
    /// Anthropic Messages, `/v1/messages`.
    Messages,
    /// OpenAI Responses, `/v1/responses`.
    Responses,
}

impl Api {
    /// The error-body family of this API.
    pub fn dialect(self) -> Dialect {
        match self {
            Self::Messages => Dialect::Anthropic,
            Self::Chat | Self::Responses => Dialect::OpenAi,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Chat => "Chat Completions",
            Self::Messages => "Messages",
            Self::Responses => "Responses",
        }
    }
}

/// Why a request or a response could not be translated.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TranslateError {
    /// The client's request is malformed at `field` (a 400).
    #[error("`{field}`: {reason}")]
    Invalid { field: String, reason: String },
    /// The client's `field` cannot be expressed toward the provider's API (a 400).
    #[error(
        "`{field}` cannot be translated for a provider that speaks the {target} API: {reason}"
    )]
    Unsupported {
        field: String,
        target: &'static str,
        reason: String,
    },
    /// The provider's answer is malformed at `field` (a 502).
    #[error("the provider's answer is malformed at `{field}`: {reason}")]
    Upstream { field: String, reason: String },
}

impl TranslateError {
    pub(crate) fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::Invalid {
            // The field name may be the client's own unknown key: bounded before it is echoed.
            field: truncate(field.into(), 200),
            reason: reason.into(),
        }
    }

    pub(crate) fn unsupported(
        field: impl Into<String>,
        to: Api,
        reason: impl Into<String>,
    ) -> Self {
        Self::Unsupported {
            field: field.into(),
            target: to.name(),
            reason: reason.into(),
        }
    }

    pub(crate) fn upstream(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::Upstream {
            field: field.into(),
            reason: reason.into(),
        }
    }

    /// The gateway error to answer with: 400 for the client's request, 502 for the provider's
    /// answer. Its body in the caller's dialect is `ApiError::body(api.dialect())`.
    pub fn to_api_error(&self) -> ApiError {
        let kind = match self {
            Self::Invalid { .. } | Self::Unsupported { .. } => ErrorKind::BadRequest,
            Self::Upstream { .. } => ErrorKind::BadGateway,
        };
        ApiError::new(kind, self.to_string())
    }
}

/// What a request translation needs besides the body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestOptions {
    /// The provider's `default_max_tokens`, sent when the target needs a limit and the client
    /// gave none.
    pub default_max_tokens: u64,
}

/// Decodes a client request in `from` and encodes it for a provider speaking `to`.
pub fn translate_request(
    from: Api,
    to: Api,
    body: &Value,
    opts: &RequestOptions,
) -> Result<Value, TranslateError> {
    if from == to {
        return Ok(body.clone());
    }
    let req = decode_request(from, body)?;
    encode_request(from, to, &req, opts)
}

/// A client request as the pivot (public for the wiring's routing and for tests).
pub fn decode_request(from: Api, body: &Value) -> Result<pivot::Request, TranslateError> {
    match from {
        Api::Chat => chat_request::decode(body),
        Api::Messages => messages_request::decode(body),
        Api::Responses => responses_request::decode(body),
    }
}

/// The pivot as a request in `to`; `from` only names fields in errors the way the client wrote
/// them.
pub fn encode_request(
    from: Api,
    to: Api,
    req: &pivot::Request,
    opts: &RequestOptions,
) -> Result<Value, TranslateError> {
    let r = match to {
        Api::Chat => chat_request::encode(req),
        Api::Messages => messages_request::encode(req, opts),
        Api::Responses => responses_request::encode(req),
    };
    r.map_err(|e| rename_field(e, from))
}

/// Encoders name pivot concepts (`stop`, `format`); the client knows its own field names.
fn rename_field(e: TranslateError, from: Api) -> TranslateError {
    match e {
        TranslateError::Unsupported {
            field,
            target,
            reason,
        } => {
            let field = match (field.as_str(), from) {
                ("stop", Api::Messages) => "stop_sequences".to_string(),
                ("format", Api::Chat) => "response_format".to_string(),
                ("format", Api::Responses) => "text.format".to_string(),
                _ => field,
            };
            TranslateError::Unsupported {
                field,
                target,
                reason,
            }
        }
        other => other,
    }
}

/// Decodes a provider's non-streamed answer in `from` and encodes it for a client of `to`, with
/// the model the client asked for. Also returns the usage, for accounting.
pub fn translate_response(
    from: Api,
    to: Api,
    body: &Value,
    client_model: &str,
) -> Result<(Value, Usage), TranslateError> {
    let resp = match from {
        Api::Chat => chat_response::decode(body)?,
        Api::Messages => messages_response::decode(body)?,
        Api::Responses => responses_response::decode(body)?,
    };
    let out = match to {
        Api::Chat => chat_response::encode(&resp, client_model),
        Api::Messages => messages_response::encode(&resp, client_model)?,
        Api::Responses => responses_response::encode(&resp, client_model),
    };
    Ok((out, resp.usage))
}

/// The label of a translation, `FROM->TO` in the APIs' path names (`messages->chat`): the
/// access log's `translated` field, from the response head or from the usage record.
pub fn label(from: Api, to: Api) -> String {
    use crate::endpoint::{Endpoint, EndpointApi};
    format!(
        "{}->{}",
        Endpoint::of_api(from).api_name(),
        Endpoint::of_api(to).api_name()
    )
}

/// The usage a provider's non-streamed answer in `api` reports, read as `translate_response`
/// reads it; `None` when the body has no `usage` object.
/// The usage member of an answer as any of the three APIs writes it, decoded without building a
/// JSON tree: the accounting of every non-streamed answer reads it (`usage::UsageTail`), and a
/// `Value` costs a map and a `String` per key (about 6,000 instructions of the worker's 75,000
/// per request, `bench/path_instr.sh`). Unknown members are skipped; the counts are `Option` so
/// a member that is not a whole number fails the decode, and [`usage_member`] then reads it
/// through `Value` exactly as before (where a non-number counts as 0).
#[derive(serde::Deserialize)]
struct WireUsage {
    prompt_tokens: Option<u64>,
    completion_tokens: Option<u64>,
    prompt_tokens_details: Option<WireDetails>,
    input_tokens: Option<u64>,
    output_tokens: Option<u64>,
    input_tokens_details: Option<WireDetails>,
    cache_read_input_tokens: Option<u64>,
    cache_creation_input_tokens: Option<u64>,
}

#[derive(serde::Deserialize)]
struct WireDetails {
    cached_tokens: Option<u64>,
    cache_write_tokens: Option<u64>,
}

impl WireUsage {
    fn usage(&self, api: Api) -> Usage {
        let n = |v: Option<u64>| v.unwrap_or(0);
        let details = |d: &Option<WireDetails>| {
            d.as_ref()
                .map_or((0, 0), |d| (n(d.cached_tokens), n(d.cache_write_tokens)))
        };
        match api {
            Api::Chat => {
                let (cached, written) = details(&self.prompt_tokens_details);
                Usage::from_openai(
                    n(self.prompt_tokens),
                    cached,
                    written,
                    n(self.completion_tokens),
                )
            }
            Api::Responses => {
                let (cached, written) = details(&self.input_tokens_details);
                Usage::from_openai(n(self.input_tokens), cached, written, n(self.output_tokens))
            }
            Api::Messages => Usage {
                input: n(self.input_tokens),
                output: n(self.output_tokens),
                cache_read: n(self.cache_read_input_tokens),
                cache_write: n(self.cache_creation_input_tokens),
            },
        }
    }
}

/// The usage in `json`, which starts with the value of an answer's `usage` member (anything
/// may follow it); `None` when that value is not an object.
pub fn usage_member(api: Api, json: &[u8]) -> Option<Usage> {
    let json = json.trim_ascii_start();
    // A struct also decodes from an array; the `Value` path would not count one.
    if !json.starts_with(b"{") {
        return None;
    }
    let mut typed = serde_json::Deserializer::from_slice(json).into_iter::<WireUsage>();
    if let Some(Ok(w)) = typed.next() {
        return Some(w.usage(api));
    }
    let v = serde_json::Deserializer::from_slice(json)
        .into_iter::<Value>()
        .next()?
        .ok()?;
    usage_value(api, &v)
}

pub fn body_usage(api: Api, body: &Value) -> Option<Usage> {
    usage_value(api, body.get("usage")?)
}

/// The usage in an answer's `usage` member `u`; `None` when it is not an object.
fn usage_value(api: Api, u: &Value) -> Option<Usage> {
    let u = Some(u).filter(|u| u.is_object())?;
    Some(match api {
        Api::Chat => chat_response::usage_from(u),
        Api::Messages => messages_response::usage_from(u),
        Api::Responses => responses_response::usage_from(u),
    })
}

/// A provider's error body (in `from`) as an error body in the client's dialect `to`; the status
/// stays the provider's. A body that is not a recognisable error, and any 401 or 403, gets a
/// message naming only the status (a provider's body is not trusted to be an error message, and
/// a credentials error may quote the gateway's key).
pub fn translate_error(from: Api, to: Api, status: u16, body: &[u8]) -> String {
    // A credentials error is about the gateway's key, not the client's, and providers quote
    // (part of) the key they got: the message is not passed on.
    let message = if matches!(status, 401 | 403) {
        None
    } else {
        serde_json::from_slice::<Value>(body)
            .ok()
            .and_then(|v| error_message(from, &v))
    }
    .unwrap_or_else(|| format!("the provider answered with status {status}"));
    error_body(to, status, &message)
}

/// The `message` of an error body in either error family.
pub(crate) fn error_message(from: Api, v: &Value) -> Option<String> {
    let _ = from;
    // Both families keep the message at `error.message`; some OpenAI-compatible servers put a
    // bare string at `error`.
    match &v["error"] {
        Value::String(s) => Some(s.clone()),
        e => e["message"].as_str().map(str::to_string),
    }
    .map(|m| truncate(m, 2000))
}

/// An error body in `to`'s dialect for an upstream `status`.
pub(crate) fn error_body(to: Api, status: u16, message: &str) -> String {
    let (anthropic, openai) = match status {
        400 | 422 => ("invalid_request_error", "invalid_request_error"),
        401 => ("authentication_error", "authentication_error"),
        403 => ("permission_error", "permission_error"),
        404 => ("not_found_error", "invalid_request_error"),
        413 => ("request_too_large", "invalid_request_error"),
        429 => ("rate_limit_error", "rate_limit_error"),
        503 | 529 => ("overloaded_error", "server_error"),
        _ => ("api_error", "server_error"),
    };
    let v = match to.dialect() {
        Dialect::Anthropic => serde_json::json!({
            "type": "error", "error": {"type": anthropic, "message": message}
        }),
        Dialect::OpenAi => serde_json::json!({
            "error": {"message": message, "type": openai, "param": null, "code": null}
        }),
    };
    v.to_string()
}

pub(crate) fn truncate(mut s: String, max: usize) -> String {
    if s.len() > max {
        let mut cut = max;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
    }
    s
}

// ---- helpers shared by the decoders ----

/// The body as an object, else a 400.
pub(crate) fn object<'a>(
    v: &'a Value,
    field: &str,
) -> Result<&'a Map<String, Value>, TranslateError> {
    v.as_object()
        .ok_or_else(|| TranslateError::invalid(field, "must be an object"))
}

/// Every non-null field of `obj` must be in `known`; `at` prefixes the field name in errors.
pub(crate) fn check_fields(
    obj: &Map<String, Value>,
    known: &[&str],
    at: &str,
    to_note: &str,
) -> Result<(), TranslateError> {
    for (k, v) in obj {
        if !v.is_null() && !known.contains(&k.as_str()) {
            return Err(TranslateError::invalid(
                join(at, k),
                format!("is not supported when the request is translated {to_note}"),
            ));
        }
    }
    Ok(())
}

pub(crate) fn join(at: &str, k: &str) -> String {
    if at.is_empty() {
        k.to_string()
    } else {
        format!("{at}.{k}")
    }
}

/// An optional string field.
pub(crate) fn opt_str(
    obj: &Map<String, Value>,
    k: &str,
    at: &str,
) -> Result<Option<String>, TranslateError> {
    match obj.get(k) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(TranslateError::invalid(join(at, k), "must be a string")),
    }
}

/// A required string field.
pub(crate) fn req_str(
    obj: &Map<String, Value>,
    k: &str,
    at: &str,
) -> Result<String, TranslateError> {
    opt_str(obj, k, at)?.ok_or_else(|| TranslateError::invalid(join(at, k), "is required"))
}

pub(crate) fn opt_u64(obj: &Map<String, Value>, k: &str) -> Result<Option<u64>, TranslateError> {
    match obj.get(k) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_u64()
            .map(Some)
            .ok_or_else(|| TranslateError::invalid(k, "must be a non-negative integer")),
    }
}

pub(crate) fn opt_f64(obj: &Map<String, Value>, k: &str) -> Result<Option<f64>, TranslateError> {
    match obj.get(k) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_f64()
            .map(Some)
            .ok_or_else(|| TranslateError::invalid(k, "must be a number")),
    }
}

pub(crate) fn opt_bool(
    obj: &Map<String, Value>,
    k: &str,
    at: &str,
) -> Result<Option<bool>, TranslateError> {
    match obj.get(k) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(_) => Err(TranslateError::invalid(join(at, k), "must be a boolean")),
    }
}

/// An array field (absent or null is empty).
pub(crate) fn opt_array<'a>(
    obj: &'a Map<String, Value>,
    k: &str,
    at: &str,
) -> Result<&'a [Value], TranslateError> {
    match obj.get(k) {
        None | Some(Value::Null) => Ok(&[]),
        Some(Value::Array(a)) => Ok(a),
        Some(_) => Err(TranslateError::invalid(join(at, k), "must be an array")),
    }
}

/// Tool-call arguments written as JSON text: must parse to an object.
pub(crate) fn parse_arguments(
    text: &str,
    field: &str,
    call: &str,
) -> Result<Value, TranslateError> {
    if text.trim().is_empty() {
        return Ok(Value::Object(Map::new()));
    }
    match serde_json::from_str::<Value>(text) {
        Ok(v @ Value::Object(_)) => Ok(v),
        Ok(_) => Err(TranslateError::invalid(
            field,
            format!("the arguments of tool call `{call}` are not a JSON object"),
        )),
        Err(e) => Err(TranslateError::invalid(
            field,
            format!("the arguments of tool call `{call}` are not valid JSON: {e}"),
        )),
    }
}

/// `id` with `prefix`, unless it already has it.
pub(crate) fn prefixed(prefix: &str, id: &str) -> String {
    if id.starts_with(prefix) {
        id.to_string()
    } else {
        format!("{prefix}{id}")
    }
}

/// A usage number at `v[k]`, 0 when absent.
pub(crate) fn count(v: &Value, k: &str) -> u64 {
    v[k].as_u64().unwrap_or(0)
}
