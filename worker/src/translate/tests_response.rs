//! Non-streamed answer and error-body translation tests: every provider dialect to every client
//! dialect, stop reasons both ways, usage with cache reads and writes, and the client's model.

use super::pivot::{Stop, Usage};
use super::{
    body_usage, chat_response, messages_response, responses_response, translate_error,
    translate_response, usage_member, Api, TranslateError,
};
use serde_json::{json, Value};

fn chat_answer(finish: &str) -> Value {
    json!({
        "id": "chatcmpl-9", "object": "chat.completion", "created": 1700000000, "model": "gpt-4o-2024",
        "choices": [{"index": 0, "finish_reason": finish, "message": {
            "role": "assistant", "content": "Checking.", "refusal": null,
            "tool_calls": [
                {"id": "call_a", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}},
                {"id": "call_b", "type": "function", "function": {"name": "get_time", "arguments": "{}"}}
            ]}}],
        "usage": {"prompt_tokens": 100, "completion_tokens": 20, "total_tokens": 120, "prompt_tokens_details": {"cached_tokens": 30}}
    })
}

fn messages_answer(reason: &str) -> Value {
    json!({
        "id": "msg_9", "type": "message", "role": "assistant", "model": "claude-x",
        "content": [
            {"type": "thinking", "thinking": "hmm", "signature": "s"},
            {"type": "text", "text": "Checking."},
            {"type": "tool_use", "id": "call_a", "name": "get_weather", "input": {"city": "Paris"}},
            {"type": "tool_use", "id": "call_b", "name": "get_time", "input": {}}
        ],
        "stop_reason": reason, "stop_sequence": null,
        "usage": {"input_tokens": 70, "output_tokens": 20, "cache_read_input_tokens": 30, "cache_creation_input_tokens": 5}
    })
}

fn responses_answer(status: &str, reason: Option<&str>) -> Value {
    json!({
        "id": "resp_9", "object": "response", "created_at": 1700000000, "status": status, "model": "gpt-5",
        "incomplete_details": reason.map(|r| json!({"reason": r})),
        "output": [
            {"type": "reasoning", "id": "rs_1", "summary": []},
            {"type": "message", "id": "msg_1", "role": "assistant", "content": [{"type": "output_text", "text": "Checking.", "annotations": []}]},
            {"type": "function_call", "id": "fc_1", "call_id": "call_a", "name": "get_weather", "arguments": "{\"city\":\"Paris\"}"},
            {"type": "function_call", "id": "fc_2", "call_id": "call_b", "name": "get_time", "arguments": "{}"}
        ],
        "usage": {"input_tokens": 100, "input_tokens_details": {"cached_tokens": 30}, "output_tokens": 20, "total_tokens": 120}
    })
}

/// Text, the two calls (id, name, parsed arguments), the stop and the usage, read back in `api`.
fn read(api: Api, v: &Value) -> (String, Vec<(String, String, Value)>, Stop, Usage) {
    let r = match api {
        Api::Chat => chat_response::decode(v),
        Api::Messages => messages_response::decode(v),
        Api::Responses => responses_response::decode(v),
    }
    .unwrap();
    let mut text = String::new();
    let mut calls = Vec::new();
    for o in r.content {
        match o {
            super::pivot::Output::Text(t) | super::pivot::Output::Refusal(t) => text += &t,
            super::pivot::Output::ToolCall {
                id,
                name,
                arguments,
            } => calls.push((id, name, serde_json::from_str(&arguments).unwrap())),
        }
    }
    (text, calls, r.stop, r.usage)
}

#[test]
fn every_provider_answer_reaches_every_client() {
    let calls = vec![
        (
            "call_a".to_string(),
            "get_weather".to_string(),
            json!({"city": "Paris"}),
        ),
        ("call_b".to_string(), "get_time".to_string(), json!({})),
    ];
    let openai_usage = Usage {
        input: 70,
        output: 20,
        cache_read: 30,
        cache_write: 0,
    };
    let anthropic_usage = Usage {
        input: 70,
        output: 20,
        cache_read: 30,
        cache_write: 5,
    };
    let answers = [
        (Api::Chat, chat_answer("tool_calls"), openai_usage),
        (Api::Messages, messages_answer("tool_use"), anthropic_usage),
        (
            Api::Responses,
            responses_answer("completed", None),
            openai_usage,
        ),
    ];
    for (from, body, usage) in answers {
        for to in [Api::Chat, Api::Messages, Api::Responses] {
            let (out, u) = translate_response(from, to, &body, "my-alias").unwrap();
            assert_eq!(u, usage, "{from:?}: usage for accounting");
            assert_eq!(
                out["model"], "my-alias",
                "{from:?} -> {to:?}: the client's model"
            );
            let (text, got_calls, stop, got_usage) = read(to, &out);
            assert_eq!(text, "Checking.");
            assert_eq!(got_calls, calls, "{from:?} -> {to:?}");
            assert_eq!(stop, Stop::ToolUse);
            // Cache reads and writes survive every dialect (OpenAI counts both inside its prompt
            // tokens and names them in the details).
            assert_eq!(got_usage, usage, "{from:?} -> {to:?}: {out}");
        }
    }
    let (m, _) = translate_response(Api::Chat, Api::Messages, &chat_answer("stop"), "a").unwrap();
    assert_eq!(
        m["usage"],
        json!({"input_tokens": 70, "output_tokens": 20, "cache_read_input_tokens": 30, "cache_creation_input_tokens": 0})
    );
    assert_eq!(m["id"], "msg_chatcmpl-9");
    let (c, _) =
        translate_response(Api::Messages, Api::Chat, &messages_answer("end_turn"), "a").unwrap();
    assert_eq!(
        c["usage"],
        json!({"prompt_tokens": 105, "completion_tokens": 20, "total_tokens": 125, "prompt_tokens_details": {"cached_tokens": 30, "cache_write_tokens": 5}})
    );
    assert_eq!(c["id"], "chatcmpl-msg_9");
    assert_eq!(c["object"], "chat.completion");
    let (r, _) = translate_response(
        Api::Messages,
        Api::Responses,
        &messages_answer("end_turn"),
        "a",
    )
    .unwrap();
    assert_eq!(r["usage"]["input_tokens"], 105);
    assert_eq!(r["output"][0]["type"], "message");
    assert_eq!(r["output"][1]["type"], "function_call");
}

#[test]
fn stop_reasons_both_ways() {
    let chat = [
        ("stop", Stop::EndTurn),
        ("length", Stop::MaxTokens),
        ("tool_calls", Stop::ToolUse),
        ("content_filter", Stop::Refusal),
    ];
    for (s, stop) in chat {
        assert_eq!(chat_response::stop_from(s), stop);
        assert_eq!(chat_response::stop_to(&stop), s);
    }
    let ant = [
        ("end_turn", Stop::EndTurn),
        ("max_tokens", Stop::MaxTokens),
        ("tool_use", Stop::ToolUse),
        ("refusal", Stop::Refusal),
    ];
    for (s, stop) in ant {
        assert_eq!(messages_response::stop_from(s, None), stop);
        assert_eq!(messages_response::stop_to(&stop).0, s);
    }
    let seq = messages_response::stop_from("stop_sequence", Some("END"));
    assert_eq!(seq, Stop::StopSequence(Some("END".into())));
    assert_eq!(
        messages_response::stop_to(&seq),
        ("stop_sequence", json!("END"))
    );
    assert_eq!(chat_response::stop_to(&seq), "stop");
    // Anthropic -> Chat, and Responses statuses, through whole answers.
    for (reason, finish) in [
        ("end_turn", "stop"),
        ("stop_sequence", "stop"),
        ("max_tokens", "length"),
        ("refusal", "content_filter"),
        ("pause_turn", "stop"),
    ] {
        let mut a = messages_answer(reason);
        a["content"] = json!([{"type": "text", "text": "x"}]);
        let (c, _) = translate_response(Api::Messages, Api::Chat, &a, "m").unwrap();
        assert_eq!(c["choices"][0]["finish_reason"], finish, "{reason}");
    }
    for (status, reason, want) in [
        ("incomplete", Some("max_output_tokens"), "max_tokens"),
        ("incomplete", Some("content_filter"), "refusal"),
    ] {
        let mut r = responses_answer(status, reason);
        r["output"] =
            json!([{"type": "message", "content": [{"type": "output_text", "text": "x"}]}]);
        let (m, _) = translate_response(Api::Responses, Api::Messages, &r, "m").unwrap();
        assert_eq!(m["stop_reason"], want);
        let (back, _) = translate_response(Api::Messages, Api::Responses, &m, "m").unwrap();
        assert_eq!(
            (
                back["status"].clone(),
                back["incomplete_details"]["reason"].clone()
            ),
            (json!(status), json!(reason))
        );
    }
}

#[test]
fn refusals_and_odd_answers() {
    let refusal = json!({"id": "c", "created": 1, "choices": [{"index": 0, "finish_reason": "stop",
        "message": {"role": "assistant", "content": null, "refusal": "I can't."}}], "usage": {}});
    let (r, _) = translate_response(Api::Chat, Api::Responses, &refusal, "m").unwrap();
    assert_eq!(
        r["output"][0]["content"][0],
        json!({"type": "refusal", "refusal": "I can't."})
    );
    let (back, _) = translate_response(Api::Responses, Api::Chat, &r, "m").unwrap();
    assert_eq!(back["choices"][0]["message"]["refusal"], "I can't.");
    assert_eq!(back["choices"][0]["message"]["content"], Value::Null);
    // Invalid arguments from an OpenAI provider cannot become Anthropic's `input` object: a 502
    // naming the call, not a silently emptied tool call.
    let mut bad = chat_answer("tool_calls");
    bad["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"] = json!("{\"city\":");
    let e = translate_response(Api::Chat, Api::Messages, &bad, "m").unwrap_err();
    assert!(
        matches!(&e, TranslateError::Upstream { field, .. } if field.contains("call_a")),
        "{e}"
    );
    assert_eq!(e.to_api_error().status(), 502);
    // Not an answer at all.
    assert!(translate_response(Api::Messages, Api::Chat, &json!({"hello": 1}), "m").is_err());
    assert!(translate_response(Api::Chat, Api::Messages, &json!([]), "m").is_err());
}

#[test]
fn provider_errors_in_the_callers_dialect() {
    let openai = br#"{"error":{"message":"Rate limit reached","type":"requests","param":null,"code":"rate_limit_exceeded"}}"#;
    let a: Value =
        serde_json::from_str(&translate_error(Api::Chat, Api::Messages, 429, openai)).unwrap();
    assert_eq!(
        a,
        json!({"type": "error", "error": {"type": "rate_limit_error", "message": "Rate limit reached"}})
    );
    let anthropic =
        br#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#;
    for to in [Api::Chat, Api::Responses] {
        let o: Value =
            serde_json::from_str(&translate_error(Api::Messages, to, 529, anthropic)).unwrap();
        assert_eq!(o["error"]["message"], "Overloaded");
        assert_eq!(o["error"]["type"], "server_error");
    }
    let o: Value = serde_json::from_str(&translate_error(Api::Messages, Api::Chat, 400, br#"{"type":"error","error":{"type":"invalid_request_error","message":"max_tokens: too big"}}"#)).unwrap();
    assert_eq!(o["error"]["type"], "invalid_request_error");
    // A credentials error may quote the gateway's key: not passed on.
    let k = br#"{"error":{"message":"Incorrect API key provided: sk-proj-abcd****wxyz","type":"invalid_request_error","code":"invalid_api_key"}}"#;
    let o = translate_error(Api::Chat, Api::Messages, 401, k);
    assert!(
        !o.contains("sk-") && o.contains("authentication_error"),
        "{o}"
    );
    // A body that is not an error is not echoed.
    let o = translate_error(
        Api::Chat,
        Api::Messages,
        502,
        b"<html>secret proxy page</html>",
    );
    assert!(!o.contains("secret") && o.contains("502"), "{o}");
}

/// Hostile providers: corrupted answers give a value or an error, never a panic.
#[test]
fn corrupted_answers_never_panic() {
    let mut rng = fastrand::Rng::with_seed(0x5eed);
    let junk = [
        json!(null),
        json!(3),
        json!("s"),
        json!([]),
        json!({}),
        json!([{}]),
        json!(-5),
    ];
    for (from, body) in [
        (Api::Chat, chat_answer("stop")),
        (Api::Messages, messages_answer("tool_use")),
        (Api::Responses, responses_answer("completed", None)),
    ] {
        for _ in 0..1000 {
            let mut b = body.clone();
            // Corrupt one node along a random path.
            let mut at = &mut b;
            loop {
                let n = match at {
                    Value::Object(o) => o.len(),
                    Value::Array(a) => a.len(),
                    _ => 0,
                };
                if n == 0 || rng.u8(..3) == 0 {
                    *at = junk[rng.usize(..junk.len())].clone();
                    break;
                }
                let i = rng.usize(..n);
                at = match at {
                    Value::Object(o) => o.values_mut().nth(i).unwrap(),
                    Value::Array(a) => &mut a[i],
                    _ => unreachable!(),
                };
            }
            for to in [Api::Chat, Api::Messages, Api::Responses] {
                let _ = translate_response(from, to, &b, "m");
            }
        }
    }
}

/// The typed read of a usage member gives what the `Value` read gives, for each API, for odd
/// members too (a float or a string count, null details, an array, trailing bytes).
#[test]
fn usage_member_agrees_with_the_value_read() {
    let members = [
        r#"{"prompt_tokens":10,"completion_tokens":4,"prompt_tokens_details":{"cached_tokens":3,"cache_write_tokens":2}}"#,
        r#"{"input_tokens":7,"output_tokens":5,"input_tokens_details":{"cached_tokens":1},"x":[{"y":"z"}]}"#,
        r#"{"input_tokens":7,"output_tokens":5,"cache_read_input_tokens":2,"cache_creation_input_tokens":9}"#,
        r#"{"prompt_tokens":1.5,"completion_tokens":"4"}"#,
        r#"{"prompt_tokens":-3,"completion_tokens":2,"prompt_tokens_details":null}"#,
        r#"{"input_tokens":2,"input_tokens_details":7}"#,
        r#"{}"#,
        r#"[1,2]"#,
        r#"null"#,
        r#"7"#,
    ];
    for api in [Api::Chat, Api::Messages, Api::Responses] {
        for m in members {
            let body: Value = serde_json::from_str(&format!(r#"{{"usage":{m}}}"#)).unwrap();
            let want = body_usage(api, &body);
            let got = usage_member(api, format!(" {m} , \"more\": 1}}").as_bytes());
            assert_eq!(got, want, "{api:?} {m}");
        }
    }
    assert_eq!(
        usage_member(Api::Chat, br#"{"prompt_tokens":"#),
        None,
        "cut"
    );
}
