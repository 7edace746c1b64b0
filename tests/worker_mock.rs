//! The `mock` provider through the real worker binary: replies parse with the shapes the
//! official OpenAI and Anthropic SDKs read, streams follow each API's event sequence, and the
//! text is deterministic.

mod support;

use serde_json::{json, Value};
use std::time::{Duration, Instant};
use support::http::{self, Stream};
use support::worker::{config, Worker, MOCK_PROVIDER};

fn demo_worker(extra: &str) -> Worker {
    Worker::start(&config(&format!("{MOCK_PROVIDER}{extra}\n")), &[])
}

fn post(w: &Worker, path: &str, body: Value) -> Value {
    let r = http::post_json(w.addr, path, &body).unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r
        .header("content-type")
        .unwrap()
        .starts_with("application/json"));
    r.json()
}

/// The `data:` payloads of an SSE body, with their `event:` names.
fn sse_events(body: &str) -> Vec<(Option<String>, String)> {
    body.split("\n\n")
        .filter(|f| !f.trim().is_empty())
        .map(|f| {
            let mut event = None;
            let mut data = String::new();
            for line in f.lines() {
                if let Some(e) = line.strip_prefix("event: ") {
                    event = Some(e.to_string());
                } else if let Some(d) = line.strip_prefix("data: ") {
                    data.push_str(d);
                }
            }
            (event, data)
        })
        .collect()
}

fn stream(w: &Worker, path: &str, body: Value) -> String {
    let mut s = Stream::post_json(w.addr, path, &body).unwrap();
    assert_eq!(s.status, 200);
    assert!(s
        .header("content-type")
        .unwrap()
        .starts_with("text/event-stream"));
    String::from_utf8(s.read_to_end().expect("clean end")).unwrap()
}

const EXPECTED: &str = "This is a mock reply from demo to: hello there gateway";

#[test]
fn openai_chat_shapes() {
    let w = demo_worker("");
    let v = post(&w, "/v1/chat/completions", http::chat_body("demo", false));
    assert!(v["id"].as_str().unwrap().starts_with("chatcmpl-"));
    assert_eq!(v["object"], "chat.completion");
    assert!(v["created"].is_u64());
    assert_eq!(v["model"], "demo");
    assert_eq!(v["choices"][0]["index"], 0);
    assert_eq!(v["choices"][0]["message"]["role"], "assistant");
    assert_eq!(v["choices"][0]["message"]["content"], EXPECTED);
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
    let u = &v["usage"];
    assert_eq!(
        u["total_tokens"].as_u64().unwrap(),
        u["prompt_tokens"].as_u64().unwrap() + u["completion_tokens"].as_u64().unwrap()
    );

    let mut body = http::chat_body("demo", true);
    body["stream_options"] = json!({"include_usage": true});
    let text = stream(&w, "/v1/chat/completions", body);
    assert!(text.ends_with("data: [DONE]\n\n"));
    let events = sse_events(&text);
    let mut content = String::new();
    let mut finish = None;
    let mut usage = None;
    for (_, data) in &events[..events.len() - 1] {
        let c: Value = serde_json::from_str(data).unwrap();
        assert_eq!(c["object"], "chat.completion.chunk");
        assert_eq!(c["id"], v["id"]);
        if let Some(ch) = c["choices"].as_array().unwrap().first() {
            content.push_str(ch["delta"]["content"].as_str().unwrap_or(""));
            if !ch["finish_reason"].is_null() {
                finish = Some(ch["finish_reason"].clone());
            }
        } else {
            usage = Some(c["usage"].clone());
        }
    }
    assert_eq!(content, EXPECTED, "the stream carries the same text");
    assert_eq!(finish, Some(json!("stop")));
    assert_eq!(
        usage.unwrap()["completion_tokens"],
        v["usage"]["completion_tokens"]
    );
    assert!(events.len() > 5, "word by word");
}

#[test]
fn openai_completions_embeddings_responses_shapes() {
    let w = demo_worker("");
    let v = post(
        &w,
        "/v1/completions",
        json!({"model": "demo", "prompt": "hello there gateway"}),
    );
    assert_eq!(v["object"], "text_completion");
    assert_eq!(v["choices"][0]["text"], EXPECTED);
    assert!(v["usage"]["prompt_tokens"].is_u64());
    let text = stream(
        &w,
        "/v1/completions",
        json!({"model": "demo", "prompt": "hello there gateway", "stream": true}),
    );
    let joined: String = sse_events(&text)
        .iter()
        .filter(|(_, d)| d != "[DONE]")
        .map(|(_, d)| {
            serde_json::from_str::<Value>(d).unwrap()["choices"][0]["text"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(joined, EXPECTED);

    let v = post(
        &w,
        "/v1/embeddings",
        json!({"model": "demo", "input": ["a", "b"]}),
    );
    assert_eq!(v["object"], "list");
    assert_eq!(v["data"][1]["object"], "embedding");
    assert_eq!(v["data"][1]["index"], 1);
    assert!(v["data"][0]["embedding"]
        .as_array()
        .unwrap()
        .iter()
        .all(Value::is_f64));
    assert!(v["usage"]["prompt_tokens"].is_u64());

    let v = post(
        &w,
        "/v1/responses",
        json!({"model": "demo", "input": "hello there gateway"}),
    );
    assert_eq!(v["object"], "response");
    assert_eq!(v["status"], "completed");
    assert_eq!(v["output"][0]["type"], "message");
    assert_eq!(v["output"][0]["content"][0]["type"], "output_text");
    assert_eq!(v["output"][0]["content"][0]["text"], EXPECTED);
    assert!(v["usage"]["input_tokens"].is_u64());
    let text = stream(
        &w,
        "/v1/responses",
        json!({"model": "demo", "input": [{"role": "user", "content": "hello there gateway"}], "stream": true}),
    );
    let events = sse_events(&text);
    assert_eq!(events[0].0.as_deref(), Some("response.created"));
    assert_eq!(
        events.last().unwrap().0.as_deref(),
        Some("response.completed")
    );
    let delta: String = events
        .iter()
        .filter(|(e, _)| e.as_deref() == Some("response.output_text.delta"))
        .map(|(_, d)| {
            serde_json::from_str::<Value>(d).unwrap()["delta"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(delta, EXPECTED);
    for (e, d) in &events {
        assert_eq!(
            serde_json::from_str::<Value>(d).unwrap()["type"].as_str(),
            e.as_deref(),
            "type matches the event"
        );
    }
}

#[test]
fn anthropic_shapes() {
    let w = demo_worker("");
    let body = json!({"model": "demo", "max_tokens": 100, "messages": [{"role": "user", "content": "hello there gateway"}]});
    let v = post(&w, "/v1/messages", body.clone());
    assert!(v["id"].as_str().unwrap().starts_with("msg_"));
    assert_eq!(v["type"], "message");
    assert_eq!(v["role"], "assistant");
    assert_eq!(v["content"][0]["type"], "text");
    assert_eq!(v["content"][0]["text"], EXPECTED);
    assert_eq!(v["stop_reason"], "end_turn");
    assert!(v["usage"]["input_tokens"].is_u64() && v["usage"]["output_tokens"].is_u64());

    let mut sbody = body.clone();
    sbody["stream"] = json!(true);
    let events = sse_events(&stream(&w, "/v1/messages", sbody));
    let names: Vec<&str> = events.iter().map(|(e, _)| e.as_deref().unwrap()).collect();
    assert_eq!(names[..2], ["message_start", "content_block_start"]);
    assert_eq!(
        names[names.len() - 3..],
        ["content_block_stop", "message_delta", "message_stop"]
    );
    assert!(names[2..names.len() - 3]
        .iter()
        .all(|n| *n == "content_block_delta"));
    let mut text = String::new();
    for (e, d) in &events {
        let v: Value = serde_json::from_str(d).unwrap();
        assert_eq!(v["type"].as_str(), e.as_deref());
        if let Some(t) = v.pointer("/delta/text").and_then(Value::as_str) {
            text.push_str(t);
        }
    }
    assert_eq!(text, EXPECTED);
    let start: Value = serde_json::from_str(&events[0].1).unwrap();
    assert_eq!(start["message"]["type"], "message");
    let delta: Value = serde_json::from_str(&events[events.len() - 2].1).unwrap();
    assert_eq!(delta["delta"]["stop_reason"], "end_turn");

    let v = post(
        &w,
        "/v1/messages/count_tokens",
        json!({"model": "demo", "messages": [{"role": "user", "content": "one two three"}]}),
    );
    assert_eq!(v, json!({"input_tokens": 3}));
}

#[test]
fn latency_and_pace_are_honoured() {
    let w = demo_worker("latency = \"300ms\"\ntokens_per_second = 50.0");
    let t = Instant::now();
    let mut s = Stream::chat(w.addr, "demo", true).unwrap();
    assert!(
        t.elapsed() >= Duration::from_millis(300),
        "headers came before the configured latency"
    );
    let first = s.next_chunk().unwrap().unwrap();
    assert!(String::from_utf8_lossy(&first).starts_with("data: "));
    let all = s.read_to_end().unwrap();
    // 13 frames after the first at 50/s: at least 200ms of pacing.
    assert!(
        t.elapsed() >= Duration::from_millis(500),
        "stream was not paced: {:?}",
        t.elapsed()
    );
    assert!(String::from_utf8_lossy(&all).ends_with("data: [DONE]\n\n"));
}

#[test]
fn models_lists_the_mock() {
    let w = demo_worker("");
    let v = http::get(w.addr, "/v1/models").unwrap().json();
    assert_eq!(v["object"], "list");
    assert_eq!(v["data"][0]["id"], "demo");
    assert_eq!(v["data"][0]["object"], "model");
}

/// A standalone worker faces SDKs directly: an oversized upload written in full still reads its
/// 413 in the caller's dialect, instead of a connection reset.
#[test]
fn an_oversized_upload_written_in_full_reads_its_413() {
    let w = Worker::start(
        &config(&format!("[server]\nmax_body_bytes = 1000\n{MOCK_PROVIDER}")),
        &[],
    );
    let len = 8 << 20;
    let (sent, answer) = http::upload_then_read(w.addr, "/v1/messages", len);
    assert_eq!(sent, len, "the upload was cut off: {answer:?}");
    let text = answer.expect("the answer was read, not reset");
    assert!(text.starts_with("HTTP/1.1 413"), "{text}");
    assert!(
        text.contains("\"request_too_large\""),
        "Anthropic dialect: {text}"
    );
}

/// A weather tool's parameters: two required properties and one optional.
fn weather_schema() -> Value {
    json!({"type": "object",
           "properties": {"city": {"type": "string"}, "unit": {"enum": ["c", "f"]},
                          "days": {"type": "integer"}},
           "required": ["city", "unit"]})
}

/// Arguments that parse as a JSON object holding the schema's required properties.
fn assert_weather_args(args: &Value) {
    assert_eq!(args["city"], "example", "{args}");
    assert_eq!(args["unit"], "c", "first enum value: {args}");
    assert!(
        args.get("days").is_none(),
        "optional properties are left out: {args}"
    );
}

#[test]
fn openai_chat_with_tools_answers_a_tool_call() {
    let w = demo_worker("");
    let mut body = http::chat_body("demo", false);
    body["tools"] = json!([
        {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object"}}},
        {"type": "function", "function": {"name": "get_weather", "parameters": weather_schema()}}]);
    body["tool_choice"] = json!({"type": "function", "function": {"name": "get_weather"}});
    let v = post(&w, "/v1/chat/completions", body.clone());
    let choice = &v["choices"][0];
    assert_eq!(choice["finish_reason"], "tool_calls");
    assert!(choice["message"]["content"].is_null());
    let call = &choice["message"]["tool_calls"][0];
    assert!(call["id"].as_str().unwrap().starts_with("call_"));
    assert_eq!(call["type"], "function");
    assert_eq!(call["function"]["name"], "get_weather");
    let args = call["function"]["arguments"].as_str().unwrap();
    assert_weather_args(&serde_json::from_str(args).unwrap());

    body["stream"] = json!(true);
    let text = stream(&w, "/v1/chat/completions", body.clone());
    assert!(text.ends_with("data: [DONE]\n\n"));
    let events = sse_events(&text);
    let chunks: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|(_, d)| serde_json::from_str(d).unwrap())
        .collect();
    let head = &chunks[0]["choices"][0]["delta"]["tool_calls"][0];
    assert_eq!(head["index"], 0);
    assert!(head["id"].as_str().unwrap().starts_with("call_"));
    assert_eq!(head["type"], "function");
    assert_eq!(head["function"]["name"], "get_weather");
    let pieces: Vec<&str> = chunks
        .iter()
        .filter_map(|c| {
            c.pointer("/choices/0/delta/tool_calls/0/function/arguments")?
                .as_str()
        })
        .filter(|p| !p.is_empty())
        .collect();
    assert!(pieces.len() > 1, "arguments in one delta: {pieces:?}");
    assert_weather_args(&serde_json::from_str(&pieces.concat()).unwrap());
    assert_eq!(
        chunks.last().unwrap()["choices"][0]["finish_reason"],
        "tool_calls"
    );

    body["stream"] = json!(false);
    body["tool_choice"] = json!("none");
    let v = post(&w, "/v1/chat/completions", body.clone());
    assert_eq!(v["choices"][0]["message"]["content"], EXPECTED);

    body["tool_choice"] = json!({"type": "function", "function": {"name": "launch"}});
    let r = http::post_json(w.addr, "/v1/chat/completions", &body).unwrap();
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(r.error_message().contains("`launch`"), "{}", r.text());
}

#[test]
fn anthropic_with_tools_answers_tool_use() {
    let w = demo_worker("");
    let mut body = json!({"model": "demo", "max_tokens": 100,
        "messages": [{"role": "user", "content": "hello there gateway"}],
        "tools": [{"name": "get_weather", "description": "the weather", "input_schema": weather_schema()}]});
    let v = post(&w, "/v1/messages", body.clone());
    assert_eq!(v["stop_reason"], "tool_use");
    let block = &v["content"][0];
    assert_eq!(block["type"], "tool_use");
    assert!(block["id"].as_str().unwrap().starts_with("toolu_"));
    assert_eq!(block["name"], "get_weather");
    assert_weather_args(&block["input"]);

    body["stream"] = json!(true);
    let events = sse_events(&stream(&w, "/v1/messages", body.clone()));
    let names: Vec<&str> = events.iter().map(|(e, _)| e.as_deref().unwrap()).collect();
    assert_eq!(names[..2], ["message_start", "content_block_start"]);
    assert_eq!(
        names[names.len() - 3..],
        ["content_block_stop", "message_delta", "message_stop"]
    );
    let data: Vec<Value> = events
        .iter()
        .map(|(_, d)| serde_json::from_str(d).unwrap())
        .collect();
    let start = &data[1]["content_block"];
    assert_eq!(start["type"], "tool_use");
    assert!(start["id"].as_str().unwrap().starts_with("toolu_"));
    assert_eq!(start["name"], "get_weather");
    assert_eq!(start["input"], json!({}));
    let pieces: Vec<&str> = data[2..data.len() - 3]
        .iter()
        .map(|d| {
            assert_eq!(d["type"], "content_block_delta");
            assert_eq!(d["delta"]["type"], "input_json_delta");
            d["delta"]["partial_json"].as_str().unwrap()
        })
        .collect();
    assert!(pieces.len() > 1, "input in one delta: {pieces:?}");
    assert_weather_args(&serde_json::from_str(&pieces.concat()).unwrap());
    assert_eq!(data[data.len() - 2]["delta"]["stop_reason"], "tool_use");

    body["stream"] = json!(false);
    body["tool_choice"] = json!({"type": "none"});
    let v = post(&w, "/v1/messages", body);
    assert_eq!(v["content"][0]["text"], EXPECTED);
    assert_eq!(v["stop_reason"], "end_turn");
}

#[test]
fn responses_with_tools_answer_a_function_call() {
    let w = demo_worker("");
    let mut body = json!({"model": "demo", "input": "hello there gateway", "tool_choice": "required",
        "tools": [{"type": "function", "name": "get_weather", "parameters": weather_schema()}]});
    let v = post(&w, "/v1/responses", body.clone());
    let item = &v["output"][0];
    assert_eq!(item["type"], "function_call");
    assert_eq!(item["name"], "get_weather");
    assert!(item["call_id"].as_str().unwrap().starts_with("call_"));
    assert_weather_args(&serde_json::from_str(item["arguments"].as_str().unwrap()).unwrap());

    body["stream"] = json!(true);
    let events = sse_events(&stream(&w, "/v1/responses", body));
    let deltas: Vec<String> = events
        .iter()
        .filter(|(e, _)| e.as_deref() == Some("response.function_call_arguments.delta"))
        .map(|(_, d)| {
            serde_json::from_str::<Value>(d).unwrap()["delta"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert!(deltas.len() > 1, "arguments in one delta: {deltas:?}");
    assert_weather_args(&serde_json::from_str(&deltas.concat()).unwrap());
    let (name, last) = events.last().unwrap();
    assert_eq!(name.as_deref(), Some("response.completed"));
    let done: Value = serde_json::from_str(last).unwrap();
    let streamed = &done["response"]["output"][0];
    assert_eq!(streamed["type"], "function_call");
    assert_eq!(
        streamed["arguments"].as_str(),
        Some(deltas.concat().as_str())
    );
}
