//! Request translation tests: a fixture for every mapping in both directions, and the refusals
//! that name the field (the properties are in `tests_roundtrip`).

use super::{translate_request, Api, RequestOptions, TranslateError};
use serde_json::{json, Value};

pub(super) const OPTS: RequestOptions = RequestOptions {
    default_max_tokens: 4096,
};

pub(super) fn tr(from: Api, to: Api, body: Value) -> Value {
    translate_request(from, to, &body, &OPTS).unwrap_or_else(|e| panic!("{from:?} -> {to:?}: {e}"))
}

fn err(from: Api, to: Api, body: Value) -> TranslateError {
    translate_request(from, to, &body, &OPTS).expect_err("must be refused")
}

fn field(e: &TranslateError) -> &str {
    match e {
        TranslateError::Invalid { field, .. }
        | TranslateError::Unsupported { field, .. }
        | TranslateError::Upstream { field, .. } => field,
    }
}

pub(super) fn chat_conversation() -> Value {
    json!({
        "model": "claude-alias",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "developer", "content": [{"type": "text", "text": "Use tools."}]},
            {"role": "user", "content": [
                {"type": "text", "text": "Weather and time?"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBO"}},
                {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}}
            ]},
            {"role": "assistant", "content": null, "tool_calls": [
                {"id": "call_a", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}},
                {"id": "call_b", "type": "function", "function": {"name": "get_time", "arguments": "{}"}}
            ]},
            {"role": "tool", "tool_call_id": "call_a", "content": "sunny"},
            {"role": "tool", "tool_call_id": "call_b", "content": "noon"},
            {"role": "user", "content": "Thanks"}
        ],
        "tools": [{"type": "function", "function": {"name": "get_weather", "description": "Weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}],
        "tool_choice": "required",
        "parallel_tool_calls": false,
        "stop": "END",
        "temperature": 1.5,
        "top_p": 0.9,
        "user": "u-1",
        "reasoning_effort": "medium",
        "stream": true,
        "stream_options": {"include_usage": true}
    })
}

#[test]
fn chat_to_messages() {
    let m = tr(Api::Chat, Api::Messages, chat_conversation());
    assert_eq!(
        m["system"],
        json!([{"type": "text", "text": "Be brief."}, {"type": "text", "text": "Use tools."}])
    );
    assert_eq!(
        m["max_tokens"], 4096,
        "default_max_tokens when the client gave none"
    );
    assert_eq!(m["temperature"], 1.0, "clamped to Anthropic's range");
    assert_eq!(m["top_p"], 0.9);
    assert_eq!(m["stop_sequences"], json!(["END"]));
    assert_eq!(m["metadata"], json!({"user_id": "u-1"}));
    assert_eq!(
        m["tool_choice"],
        json!({"type": "any", "disable_parallel_tool_use": true})
    );
    assert_eq!(
        m["tools"],
        json!([{"name": "get_weather", "description": "Weather", "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}}}])
    );
    assert_eq!(
        m["thinking"],
        json!({"type": "enabled", "budget_tokens": 4095}),
        "medium is 4096, lowered under max_tokens"
    );
    assert_eq!(m["stream"], true);
    let msgs = m["messages"].as_array().unwrap();
    assert_eq!(
        msgs.len(),
        3,
        "tool results and the next user text merge into one user turn: {msgs:?}"
    );
    assert_eq!(
        msgs[0]["content"][1],
        json!({"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBO"}})
    );
    assert_eq!(
        msgs[0]["content"][2],
        json!({"type": "image", "source": {"type": "url", "url": "https://example.com/a.png"}})
    );
    assert_eq!(
        msgs[1],
        json!({"role": "assistant", "content": [
            {"type": "tool_use", "id": "call_a", "name": "get_weather", "input": {"city": "Paris"}},
            {"type": "tool_use", "id": "call_b", "name": "get_time", "input": {}}
        ]})
    );
    assert_eq!(
        msgs[2],
        json!({"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "call_a", "content": [{"type": "text", "text": "sunny"}]},
            {"type": "tool_result", "tool_use_id": "call_b", "content": [{"type": "text", "text": "noon"}]},
            {"type": "text", "text": "Thanks"}
        ]})
    );
    // The client's max tokens win over the default, under either Chat name.
    let mut c = chat_conversation();
    c["max_tokens"] = json!(100);
    assert_eq!(tr(Api::Chat, Api::Messages, c)["max_tokens"], 100);
}

pub(super) fn claude_code_request() -> Value {
    json!({
        "model": "gpt-alias",
        "system": [{"type": "text", "text": "You are Claude Code.", "cache_control": {"type": "ephemeral"}}, {"type": "text", "text": "Second."}],
        "messages": [
            {"role": "user", "content": "List files"},
            {"role": "assistant", "content": [
                {"type": "thinking", "thinking": "hmm", "signature": "s"},
                {"type": "text", "text": "Running ls."},
                {"type": "tool_use", "id": "toolu_1", "name": "Bash", "input": {"command": "ls"}}
            ]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "toolu_1", "content": "a.txt", "is_error": true},
                {"type": "image", "source": {"type": "base64", "media_type": "image/jpeg", "data": "/9j/"}, "cache_control": {"type": "ephemeral"}}
            ]}
        ],
        "tools": [{"name": "Bash", "description": "Run", "input_schema": {"type": "object", "properties": {"command": {"type": "string"}}}}],
        "tool_choice": {"type": "tool", "name": "Bash", "disable_parallel_tool_use": true},
        "metadata": {"user_id": "user_abc"},
        "max_tokens": 32000,
        "thinking": {"type": "enabled", "budget_tokens": 16384},
        "stop_sequences": ["\n\nHuman:"],
        "temperature": 1,
        "stream": true
    })
}

#[test]
fn messages_to_chat() {
    let c = tr(Api::Messages, Api::Chat, claude_code_request());
    let msgs = c["messages"].as_array().unwrap();
    assert_eq!(
        msgs[0],
        json!({"role": "system", "content": [{"type": "text", "text": "You are Claude Code."}, {"type": "text", "text": "Second."}]}),
        "cache_control dropped"
    );
    assert_eq!(msgs[1], json!({"role": "user", "content": "List files"}));
    assert_eq!(
        msgs[2],
        json!({"role": "assistant", "content": "Running ls.", "tool_calls": [
        {"id": "toolu_1", "type": "function", "function": {"name": "Bash", "arguments": "{\"command\":\"ls\"}"}}]}),
        "thinking dropped"
    );
    assert_eq!(
        msgs[3],
        json!({"role": "tool", "tool_call_id": "toolu_1", "content": "a.txt"})
    );
    assert_eq!(
        msgs[4],
        json!({"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:image/jpeg;base64,/9j/"}}]})
    );
    assert_eq!(
        c["tools"],
        json!([{"type": "function", "function": {"name": "Bash", "description": "Run", "parameters": {"type": "object", "properties": {"command": {"type": "string"}}}}}])
    );
    assert_eq!(
        c["tool_choice"],
        json!({"type": "function", "function": {"name": "Bash"}})
    );
    assert_eq!(c["parallel_tool_calls"], false);
    assert_eq!(c["user"], "user_abc");
    assert_eq!(c["max_completion_tokens"], 32000);
    assert_eq!(c["reasoning_effort"], "high");
    assert_eq!(c["stop"], json!(["\n\nHuman:"]));
    assert_eq!(
        c["stream_options"],
        json!({"include_usage": true}),
        "usage is always asked for"
    );
}

#[test]
fn messages_and_chat_to_responses_and_back() {
    let r = tr(
        Api::Chat,
        Api::Responses,
        json!({
            "model": "m", "messages": [{"role": "system", "content": "Sys"}, {"role": "user", "content": "Hi"}],
            "max_tokens": 50, "response_format": {"type": "json_schema", "json_schema": {"name": "out", "schema": {"type": "object"}, "strict": true}},
            "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}, "strict": true}}],
            "tool_choice": {"type": "function", "function": {"name": "f"}}, "reasoning_effort": "low", "user": "u"
        }),
    );
    assert_eq!(
        r,
        json!({
            "model": "m", "instructions": "Sys", "store": false, "max_output_tokens": 50, "user": "u",
            "input": [{"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Hi"}]}],
            "text": {"format": {"type": "json_schema", "name": "out", "schema": {"type": "object"}, "strict": true}},
            "tools": [{"type": "function", "name": "f", "parameters": {"type": "object"}, "strict": true}],
            "tool_choice": {"type": "function", "name": "f"}, "reasoning": {"effort": "low"}
        })
    );
    let mut cc = claude_code_request();
    cc.as_object_mut().unwrap().remove("stop_sequences");
    let r = tr(Api::Messages, Api::Responses, cc);
    let input = r["input"].as_array().unwrap();
    assert_eq!(
        input[0]["role"], "system",
        "two system blocks stay two parts"
    );
    assert_eq!(
        input[2],
        json!({"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "Running ls.", "annotations": []}]})
    );
    assert_eq!(
        input[3],
        json!({"type": "function_call", "call_id": "toolu_1", "name": "Bash", "arguments": "{\"command\":\"ls\"}"})
    );
    assert_eq!(
        input[4],
        json!({"type": "function_call_output", "call_id": "toolu_1", "output": "a.txt"})
    );
    assert_eq!(
        input[5],
        json!({"type": "message", "role": "user", "content": [{"type": "input_image", "image_url": "data:image/jpeg;base64,/9j/", "detail": "auto"}]})
    );
    // Responses -> Messages and Chat.
    let body = json!({
        "model": "m", "instructions": "Sys", "max_output_tokens": 10, "store": false,
        "input": [
            {"role": "user", "content": "Hi"},
            {"type": "message", "role": "user", "content": [{"type": "input_image", "image_url": "https://x/y.png"}]},
            {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{\"a\":1}"},
            {"type": "function_call_output", "call_id": "c1", "output": "ok"}
        ],
        "tools": [{"type": "function", "name": "f", "parameters": {"type": "object"}}],
        "tool_choice": "auto", "parallel_tool_calls": false, "reasoning": {"effort": "high", "summary": "auto"}
    });
    let m = tr(Api::Responses, Api::Messages, body.clone());
    assert_eq!(m["system"], "Sys");
    assert_eq!(m["max_tokens"], 10);
    assert_eq!(
        m["tool_choice"],
        json!({"type": "auto", "disable_parallel_tool_use": true})
    );
    assert_eq!(
        m["thinking"],
        Value::Null,
        "a 16384 budget does not fit under max_tokens 10: thinking is left off"
    );
    assert_eq!(
        m["messages"][0]["content"],
        json!([{"type": "text", "text": "Hi"}, {"type": "image", "source": {"type": "url", "url": "https://x/y.png"}}])
    );
    assert_eq!(
        m["messages"][1]["content"],
        json!([{"type": "tool_use", "id": "c1", "name": "f", "input": {"a": 1}}])
    );
    assert_eq!(
        m["messages"][2]["content"],
        json!([{"type": "tool_result", "tool_use_id": "c1", "content": [{"type": "text", "text": "ok"}]}])
    );
    let c = tr(Api::Responses, Api::Chat, body);
    assert_eq!(
        c["messages"][3],
        json!({"role": "tool", "tool_call_id": "c1", "content": "ok"})
    );
    assert_eq!(c["reasoning_effort"], "high");
}

#[test]
fn reasoning_budgets_and_efforts() {
    for (effort, budget) in [("low", 1024), ("medium", 4096), ("high", 16384)] {
        let m = tr(
            Api::Chat,
            Api::Messages,
            json!({"model": "m", "messages": [], "reasoning_effort": effort, "max_tokens": 20000}),
        );
        assert_eq!(
            m["thinking"],
            json!({"type": "enabled", "budget_tokens": budget})
        );
        let c = tr(
            Api::Messages,
            Api::Chat,
            json!({"model": "m", "messages": [], "max_tokens": 20000, "thinking": {"type": "enabled", "budget_tokens": budget}}),
        );
        assert_eq!(c["reasoning_effort"], effort);
    }
    // A budget over max_tokens is lowered under it.
    let m = tr(
        Api::Chat,
        Api::Messages,
        json!({"model": "m", "messages": [], "reasoning_effort": "high", "max_tokens": 5000}),
    );
    assert_eq!(m["thinking"]["budget_tokens"], 4999);
    let m = tr(
        Api::Responses,
        Api::Messages,
        json!({"model": "m", "input": "x", "reasoning": {"effort": "minimal"}}),
    );
    assert_eq!(m["thinking"], json!({"type": "disabled"}));
}

#[test]
fn json_mode_where_expressible() {
    let c = tr(
        Api::Responses,
        Api::Chat,
        json!({"model": "m", "input": "x", "text": {"format": {"type": "json_object"}}}),
    );
    assert_eq!(c["response_format"], json!({"type": "json_object"}));
    let e = err(
        Api::Chat,
        Api::Messages,
        json!({"model": "m", "messages": [], "response_format": {"type": "json_object"}}),
    );
    assert_eq!(field(&e), "response_format");
    assert!(matches!(
        e,
        TranslateError::Unsupported {
            target: "Messages",
            ..
        }
    ));
    let e = err(
        Api::Responses,
        Api::Messages,
        json!({"model": "m", "input": "x", "text": {"format": {"type": "json_schema", "name": "n", "schema": {}}}}),
    );
    assert_eq!(field(&e), "text.format");
    // Plain text format is harmless anywhere.
    tr(
        Api::Chat,
        Api::Messages,
        json!({"model": "m", "messages": [], "response_format": {"type": "text"}}),
    );
}

#[test]
fn refusals_name_the_field() {
    let cases = [
        (
            Api::Chat,
            Api::Messages,
            json!({"model": "m", "messages": [], "n": 2}),
            "n",
        ),
        (
            Api::Chat,
            Api::Messages,
            json!({"model": "m", "messages": [{"role": "assistant", "audio": {"id": "a"}}]}),
            "messages[0].audio",
        ),
        (
            Api::Messages,
            Api::Chat,
            json!({"model": "m", "max_tokens": 1, "messages": [{"role": "user", "content": "x", "extra": 1}]}),
            "messages[0].extra",
        ),
        (
            Api::Chat,
            Api::Messages,
            json!({"model": "m", "messages": [], "unheard_of": true}),
            "unheard_of",
        ),
        (
            Api::Chat,
            Api::Messages,
            json!({"model": "m", "messages": [], "tool_choice": {"type": "function"}}),
            "tool_choice",
        ),
        (
            Api::Responses,
            Api::Chat,
            json!({"model": "m", "input": "x", "tool_choice": {"type": "function"}}),
            "tool_choice",
        ),
        (
            Api::Responses,
            Api::Chat,
            json!({"model": "m", "input": "x", "previous_response_id": "resp_1"}),
            "previous_response_id",
        ),
        (
            Api::Responses,
            Api::Messages,
            json!({"model": "m", "input": "x", "store": true}),
            "store",
        ),
        (
            Api::Responses,
            Api::Messages,
            json!({"model": "m", "input": [{"type": "item_reference", "id": "x"}]}),
            "input[0].type",
        ),
        (
            Api::Chat,
            Api::Messages,
            json!({"model": "m", "messages": [{"role": "assistant", "tool_calls": [{"id": "call_9", "type": "function", "function": {"name": "f", "arguments": "{bad"}}]}]}),
            "messages[0].tool_calls[0].function.arguments",
        ),
        (
            Api::Responses,
            Api::Messages,
            json!({"model": "m", "input": [{"type": "function_call", "call_id": "c", "name": "f", "arguments": "[1]"}]}),
            "input[0].arguments",
        ),
        (
            Api::Chat,
            Api::Messages,
            json!({"model": "m", "messages": [], "frequency_penalty": 0.5}),
            "frequency_penalty",
        ),
        (
            Api::Chat,
            Api::Messages,
            json!({"model": "m", "messages": [], "logit_bias": {"1": 2}}),
            "logit_bias",
        ),
        (
            Api::Messages,
            Api::Chat,
            json!({"model": "m", "messages": [], "max_tokens": 1, "top_k": 5}),
            "top_k",
        ),
        (
            Api::Messages,
            Api::Chat,
            json!({"model": "m", "messages": [], "max_tokens": 1, "tools": [{"type": "web_search_20250305", "name": "web_search"}]}),
            "tools[0].type",
        ),
        (
            Api::Messages,
            Api::Responses,
            json!({"model": "m", "messages": [], "max_tokens": 1, "stop_sequences": ["x"]}),
            "stop_sequences",
        ),
        (
            Api::Chat,
            Api::Responses,
            json!({"model": "m", "messages": [], "stop": ["x"]}),
            "stop",
        ),
        (
            Api::Responses,
            Api::Chat,
            json!({"model": "m", "input": "x", "tools": [{"type": "web_search"}]}),
            "tools[0].type",
        ),
        (
            Api::Messages,
            Api::Chat,
            json!({"model": "m", "max_tokens": 1, "messages": [{"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t", "content": [{"type": "image", "source": {"type": "url", "url": "https://x"}}]}]}]}),
            "tool_result.content",
        ),
    ];
    for (from, to, body, want) in cases {
        let e = err(from, to, body);
        assert_eq!(field(&e), want, "{e}");
        let api = e.to_api_error();
        assert_eq!(api.status(), 400);
        assert!(
            api.body(from.dialect()).contains(want),
            "the body names the field: {}",
            api.body(from.dialect())
        );
    }
    let e = err(
        Api::Chat,
        Api::Messages,
        json!({"model": "m", "messages": [{"role": "assistant", "tool_calls": [{"id": "call_9", "type": "function", "function": {"name": "f", "arguments": "{bad"}}]}]}),
    );
    assert!(e.to_string().contains("call_9"), "names the call: {e}");
    // A huge unknown key is not echoed whole.
    let key = "k".repeat(10_000);
    let e = err(
        Api::Chat,
        Api::Messages,
        json!({"model": "m", "messages": [], key: 1}),
    );
    assert!(e.to_api_error().message.len() < 1000);
    // Native requests are not touched.
    let body = json!({"model": "m", "messages": [], "n": 3, "whatever": 1});
    assert_eq!(tr(Api::Chat, Api::Chat, body.clone()), body);
}

#[test]
fn empty_turns_and_tool_settings_without_tools() {
    // An empty assistant turn between two user turns: the user turns merge, as Anthropic needs.
    let m = tr(
        Api::Chat,
        Api::Messages,
        json!({"model": "m", "messages": [
            {"role": "user", "content": "a"},
            {"role": "assistant", "content": [{"type": "text", "text": ""}]},
            {"role": "user", "content": "b"}
        ]}),
    );
    assert_eq!(
        m["messages"],
        json!([{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}])
    );
    // A tool that printed nothing: a result without content.
    let m = tr(
        Api::Chat,
        Api::Messages,
        json!({"model": "m", "messages": [
            {"role": "assistant", "tool_calls": [{"id": "c", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
            {"role": "tool", "tool_call_id": "c", "content": ""}
        ]}),
    );
    assert_eq!(
        m["messages"][1]["content"],
        json!([{"type": "tool_result", "tool_use_id": "c"}])
    );
    // OpenAI refuses tool settings without tools; they mean nothing then.
    for to in [Api::Chat, Api::Responses] {
        let o = tr(
            Api::Messages,
            to,
            json!({"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "x"}],
            "tool_choice": {"type": "auto", "disable_parallel_tool_use": true}}),
        );
        assert!(
            o.get("tool_choice").is_none() && o.get("parallel_tool_calls").is_none(),
            "{o}"
        );
    }
}
