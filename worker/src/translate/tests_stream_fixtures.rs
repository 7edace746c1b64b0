//! Upstream stream fixtures for the stream tests, built from each provider's documented event
//! sequences, with what every client must end up with.

use super::pivot::{Stop, Usage};
use super::Api;
use gateway::sse::parse::frame;
use serde_json::{json, Value};
/// What a client ends up with, in pivot terms.
#[derive(Debug, Clone, PartialEq, Default)]
pub(super) struct Final {
    pub(super) text: String,
    pub(super) refusal: String,
    pub(super) calls: Vec<(String, String, Value)>,
    pub(super) stop: Option<Stop>,
    pub(super) usage: Option<Usage>,
    pub(super) error: bool,
}

pub(super) fn chat(delta: Value, finish: Option<&str>) -> String {
    frame("", &json!({"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": "gpt",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}).to_string())
}

pub(super) fn chat_usage(prompt: u64, cached: u64, completion: u64) -> String {
    frame("", &json!({"id": "chatcmpl-1", "object": "chat.completion.chunk", "choices": [],
        "usage": {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion,
            "prompt_tokens_details": {"cached_tokens": cached}}}).to_string())
}

pub(super) fn ant(v: Value) -> String {
    frame(v["type"].as_str().unwrap(), &v.to_string())
}

pub(super) fn ant_start() -> String {
    ant(
        json!({"type": "message_start", "message": {"id": "msg_1", "type": "message", "role": "assistant", "content": [],
        "model": "claude", "stop_reason": null, "stop_sequence": null,
        "usage": {"input_tokens": 20, "output_tokens": 1, "cache_read_input_tokens": 6, "cache_creation_input_tokens": 3}}}),
    )
}

pub(super) fn ant_text_block(index: u64, parts: &[&str]) -> String {
    let mut s = ant(
        json!({"type": "content_block_start", "index": index, "content_block": {"type": "text", "text": ""}}),
    );
    s += "event: ping\ndata: {\"type\": \"ping\"}\n\n";
    for p in parts {
        s += &ant(
            json!({"type": "content_block_delta", "index": index, "delta": {"type": "text_delta", "text": p}}),
        );
    }
    s + &ant(json!({"type": "content_block_stop", "index": index}))
}

pub(super) fn ant_tool_block(index: u64, id: &str, name: &str, parts: &[&str]) -> String {
    let mut s = ant(
        json!({"type": "content_block_start", "index": index, "content_block": {"type": "tool_use", "id": id, "name": name, "input": {}}}),
    );
    for p in parts {
        s += &ant(
            json!({"type": "content_block_delta", "index": index, "delta": {"type": "input_json_delta", "partial_json": p}}),
        );
    }
    s + &ant(json!({"type": "content_block_stop", "index": index}))
}

pub(super) fn ant_end(reason: &str) -> String {
    ant(
        json!({"type": "message_delta", "delta": {"stop_reason": reason, "stop_sequence": null}, "usage": {"output_tokens": 9}}),
    ) + &ant(json!({"type": "message_stop"}))
}

pub(super) fn rs(v: Value) -> String {
    frame(v["type"].as_str().unwrap(), &v.to_string())
}

pub(super) fn rs_text_item(oi: u64, ty: &str, parts: &[&str]) -> String {
    let id = format!("msg_{oi}");
    let mut s = rs(
        json!({"type": "response.output_item.added", "output_index": oi, "item": {"id": id, "type": "message", "role": "assistant", "content": []}}),
    );
    for p in parts {
        s += &rs(
            json!({"type": ty, "item_id": id, "output_index": oi, "content_index": 0, "delta": p}),
        );
    }
    s + &rs(
        json!({"type": "response.output_item.done", "output_index": oi, "item": {"id": id, "type": "message"}}),
    )
}

pub(super) fn rs_call_item(oi: u64, call_id: &str, name: &str, parts: &[&str]) -> String {
    let id = format!("fc_{oi}");
    let mut s = rs(
        json!({"type": "response.output_item.added", "output_index": oi,
        "item": {"id": id, "type": "function_call", "call_id": call_id, "name": name, "arguments": ""}}),
    );
    for p in parts {
        s += &rs(
            json!({"type": "response.function_call_arguments.delta", "item_id": id, "output_index": oi, "delta": p}),
        );
    }
    s + &rs(
        json!({"type": "response.output_item.done", "output_index": oi,
        "item": {"id": id, "type": "function_call", "call_id": call_id, "name": name, "arguments": parts.concat()}}),
    )
}

pub(super) fn rs_start() -> String {
    rs(
        json!({"type": "response.created", "response": {"id": "resp_1", "status": "in_progress", "output": []}}),
    ) + &rs(json!({"type": "response.in_progress", "response": {"id": "resp_1"}}))
}

pub(super) fn rs_end(status: &str, reason: Option<&str>) -> String {
    let ty = if status == "completed" {
        "response.completed"
    } else {
        "response.incomplete"
    };
    rs(
        json!({"type": ty, "response": {"id": "resp_1", "status": status, "incomplete_details": reason.map(|r| json!({"reason": r})),
        "usage": {"input_tokens": 29, "input_tokens_details": {"cached_tokens": 6}, "output_tokens": 9, "total_tokens": 38}}}),
    )
}

pub(super) const PARIS: &[&str] = &["{\"ci", "ty\": \"Par", "is\"}"];
pub(super) const CET: &[&str] = &["{\"tz\":", "\"CET\"}"];

pub(super) fn want(text: &str, calls: &[(&str, &str, Value)], stop: Stop, usage: Usage) -> Final {
    Final {
        text: text.into(),
        calls: calls
            .iter()
            .map(|(i, n, a)| (i.to_string(), n.to_string(), a.clone()))
            .collect(),
        stop: Some(stop),
        usage: Some(usage),
        ..Final::default()
    }
}

/// Every fixture: a name, the upstream dialect, its bytes, and what any client must end up with.
pub(super) fn fixtures() -> Vec<(&'static str, Api, String, Final)> {
    let cu = Usage {
        input: 23,
        output: 9,
        cache_read: 6,
        cache_write: 0,
    };
    let au = Usage {
        input: 20,
        output: 9,
        cache_read: 6,
        cache_write: 3,
    };
    let paris = || json!({"city": "Paris"});
    let cet = || json!({"tz": "CET"});
    let tool = |id: &'static str, name: &'static str, args: &[&str]| -> Vec<String> {
        let mut v = vec![chat(
            json!({"tool_calls": [{"index": if id == "call_a" { 0 } else { 1 }, "id": id, "type": "function", "function": {"name": name, "arguments": ""}}]}),
            None,
        )];
        for a in args {
            v.push(chat(json!({"tool_calls": [{"index": if id == "call_a" { 0 } else { 1 }, "function": {"arguments": a}}]}), None));
        }
        v
    };
    let role = chat(
        json!({"role": "assistant", "content": "", "refusal": null}),
        None,
    );
    let done =
        |finish: &str| chat(json!({}), Some(finish)) + &chat_usage(29, 6, 9) + "data: [DONE]\n\n";
    let mut a_calls = tool("call_a", "get_weather", PARIS);
    a_calls.extend(tool("call_b", "get_time", CET));
    let text_then_tool = want(
        "Let me look.",
        &[("call_a", "get_weather", paris())],
        Stop::ToolUse,
        cu,
    );
    let mut refusal = want("", &[], Stop::Refusal, cu);
    refusal.refusal = "I can't help with that.".into();
    let mut a_refusal = refusal.clone();
    a_refusal.usage = Some(au);
    let mut error = Final {
        text: "Hel".into(),
        error: true,
        ..Final::default()
    };
    let two = [
        ("call_a", "get_weather", paris()),
        ("call_b", "get_time", cet()),
    ];
    vec![
        ("chat text", Api::Chat, [role.clone(), chat(json!({"content": "Hello"}), None), chat(json!({"content": " world"}), None), done("stop")].concat(), want("Hello world", &[], Stop::EndTurn, cu)),
        ("chat two parallel tools", Api::Chat, [role.clone(), a_calls.concat(), done("tool_calls")].concat(), want("", &two, Stop::ToolUse, cu)),
        ("chat text then tool", Api::Chat, [role.clone(), chat(json!({"content": "Let me look."}), None), tool("call_a", "get_weather", PARIS).concat(), done("tool_calls")].concat(), text_then_tool.clone()),
        ("chat refusal", Api::Chat, [role.clone(), chat(json!({"refusal": "I can't help with that."}), None), done("content_filter")].concat(), refusal.clone()),
        ("chat max tokens", Api::Chat, [role.clone(), chat(json!({"content": "Long"}), None), done("length")].concat(), want("Long", &[], Stop::MaxTokens, cu)),
        ("chat error mid-stream", Api::Chat, [role.clone(), chat(json!({"content": "Hel"}), None), "data: {\"error\":{\"message\":\"overloaded\",\"type\":\"server_error\"}}\n\n".into()].concat(), error.clone()),
        ("chat odd splits", Api::Chat, [
            ": keep-alive\n\n".to_string(),
            chat(json!({"role": "assistant", "content": null}), None),
            chat(json!({}), None),
            chat(json!({"tool_calls": [{"index": 0, "id": "call_a", "type": "function", "function": null}]}), None),
            chat(json!({"content": null, "tool_calls": [{"index": 0, "function": {"arguments": "{\"ci"}}]}), None),
            chat(json!({"tool_calls": [{"index": 0, "function": {"name": "get_weather"}}]}), None),
            chat(json!({"tool_calls": [{"index": 0, "function": {"arguments": "ty\": \"Paris\"}"}}]}), None),
            chat(json!({"tool_calls": [{"index": 1, "id": "call_b", "function": {"name": "get_time", "arguments": "{\"tz\":\"CET\"}"}}]}), None),
            chat(json!({"content": null}), Some("tool_calls")),
            chat_usage(29, 6, 9),
            "data: [DONE]\n\n".into(),
        ].concat(), want("", &two, Stop::ToolUse, cu)),
        ("messages text", Api::Messages, [ant_start(), ant_text_block(0, &["Hello", " world"]), ant_end("end_turn")].concat(), want("Hello world", &[], Stop::EndTurn, au)),
        ("messages two parallel tools", Api::Messages, [ant_start(), ant_tool_block(0, "call_a", "get_weather", PARIS), ant_tool_block(1, "call_b", "get_time", CET), ant_end("tool_use")].concat(), want("", &two, Stop::ToolUse, au)),
        ("messages text then tool", Api::Messages, [ant_start(), ant_text_block(0, &["Let me look."]), ant_tool_block(1, "call_a", "get_weather", PARIS), ant_end("tool_use")].concat(), Final { usage: Some(au), ..text_then_tool.clone() }),
        ("messages refusal", Api::Messages, [ant_start(), ant_text_block(0, &["I can't help with that."]), ant_end("refusal")].concat(), Final { text: "I can't help with that.".into(), ..want("", &[], Stop::Refusal, au) }),
        ("messages max tokens", Api::Messages, [ant_start(), ant_text_block(0, &["Long"]), ant_end("max_tokens")].concat(), want("Long", &[], Stop::MaxTokens, au)),
        ("messages error mid-stream", Api::Messages, [ant_start(), ant(json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}})),
            ant(json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hel"}})),
            ant(json!({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}))].concat(), error.clone()),
        ("messages thinking is dropped", Api::Messages, [ant_start(),
            ant(json!({"type": "content_block_start", "index": 0, "content_block": {"type": "thinking", "thinking": ""}})),
            ant(json!({"type": "content_block_delta", "index": 0, "delta": {"type": "thinking_delta", "thinking": "hmm"}})),
            ant(json!({"type": "content_block_delta", "index": 0, "delta": {"type": "signature_delta", "signature": "sig"}})),
            ant(json!({"type": "content_block_stop", "index": 0})),
            ant_text_block(1, &["Hello world"]), ant_end("end_turn")].concat(), want("Hello world", &[], Stop::EndTurn, au)),
        ("responses text", Api::Responses, [rs_start(), rs_text_item(0, "response.output_text.delta", &["Hello", " world"]), rs_end("completed", None)].concat(), want("Hello world", &[], Stop::EndTurn, cu)),
        ("responses two parallel tools", Api::Responses, [rs_start(), rs_call_item(0, "call_a", "get_weather", PARIS), rs_call_item(1, "call_b", "get_time", CET), rs_end("completed", None)].concat(), want("", &two, Stop::ToolUse, cu)),
        ("responses text then tool", Api::Responses, [rs_start(), rs_text_item(0, "response.output_text.delta", &["Let me look."]), rs_call_item(1, "call_a", "get_weather", PARIS), rs_end("completed", None)].concat(), text_then_tool),
        ("responses refusal", Api::Responses, [rs_start(), rs_text_item(0, "response.refusal.delta", &["I can't help ", "with that."]), rs_end("incomplete", Some("content_filter"))].concat(), refusal),
        ("responses max tokens", Api::Responses, [rs_start(), rs_text_item(0, "response.output_text.delta", &["Long"]), rs_end("incomplete", Some("max_output_tokens"))].concat(), want("Long", &[], Stop::MaxTokens, cu)),
        // Events that are not content, around the ones that are: reasoning items and their
        // deltas, content parts, annotations, an event type nobody knows with an object `delta`,
        // arguments sent only whole in `output_item.done`, and a delta with no call.
        ("responses events that are not content", Api::Responses, [rs_start(),
            rs(json!({"type": "response.output_item.added", "output_index": 0, "item": {"id": "rs_0", "type": "reasoning", "summary": []}})),
            rs(json!({"type": "response.reasoning_summary_text.delta", "item_id": "rs_0", "output_index": 0, "summary_index": 0, "delta": "thinking"})),
            rs(json!({"type": "response.output_item.done", "output_index": 0, "item": {"id": "rs_0", "type": "reasoning", "summary": []}})),
            rs(json!({"type": "response.output_item.added", "output_index": 1, "item": {"id": "msg_1", "type": "message", "role": "assistant", "content": []}})),
            rs(json!({"type": "response.content_part.added", "item_id": "msg_1", "output_index": 1, "content_index": 0, "part": {"type": "output_text", "text": "", "annotations": []}})),
            rs(json!({"type": "response.output_text.delta", "item_id": "msg_1", "output_index": 1, "content_index": 0, "delta": "Let me look."})),
            rs(json!({"type": "response.output_text.annotation.added", "item_id": "msg_1", "output_index": 1, "content_index": 0, "annotation_index": 0, "annotation": {"type": "url_citation", "url": "https://example.com"}})),
            rs(json!({"type": "response.future_thing.delta", "item_id": "msg_1", "output_index": 1, "delta": {"nested": ["not", "a", "string"]}})),
            rs(json!({"type": "response.output_text.delta", "item_id": "msg_1", "output_index": 1, "content_index": 0, "delta": ""})),
            rs(json!({"type": "response.output_text.done", "item_id": "msg_1", "output_index": 1, "content_index": 0, "text": "Let me look."})),
            rs(json!({"type": "response.content_part.done", "item_id": "msg_1", "output_index": 1, "content_index": 0, "part": {"type": "output_text", "text": "Let me look.", "annotations": []}})),
            rs(json!({"type": "response.output_item.done", "output_index": 1, "item": {"id": "msg_1", "type": "message"}})),
            rs(json!({"type": "response.function_call_arguments.delta", "item_id": "fc_nobody", "output_index": 9, "delta": "{}"})),
            rs(json!({"type": "response.output_item.added", "output_index": 2, "item": {"id": "fc_2", "type": "function_call", "call_id": "call_a", "name": "get_weather", "arguments": ""}})),
            rs(json!({"type": "response.output_item.done", "output_index": 2, "item": {"id": "fc_2", "type": "function_call", "call_id": "call_a", "name": "get_weather", "arguments": PARIS.concat()}})),
            rs_end("completed", None)].concat(), want("Let me look.", &[("call_a", "get_weather", paris())], Stop::ToolUse, cu)),
        ("responses error mid-stream", Api::Responses, [rs_start(), rs(json!({"type": "response.output_item.added", "output_index": 0, "item": {"id": "m", "type": "message"}})),
            rs(json!({"type": "response.output_text.delta", "item_id": "m", "output_index": 0, "content_index": 0, "delta": "Hel"})),
            rs(json!({"type": "error", "code": "server_error", "message": "boom", "param": null}))].concat(), { error.usage = None; error }),
    ]
}
