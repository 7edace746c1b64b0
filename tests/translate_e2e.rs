//! Translation end to end: real worker and supervisor processes in front of a strict scripted
//! upstream speaking each provider API (`support::dialects`): every cell of the client API x
//! provider API table, streamed and not, text and tool calls; the translated request the
//! provider got; translation 400s; translated upstream errors; cross-dialect failover; a broken
//! translated stream; the metric and the access log's `translated` field.

mod support;

use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::time::Duration;
use support::dialects::{self, Answer, Api};
use support::http::{self, Stream};
use support::process::{Running, TestEnv};
use support::upstream::{Script, Upstream};
use support::worker::{self, Worker};

/// The model each provider API is served under (one provider per API, one upstream for all).
fn model_of(api: Api) -> &'static str {
    match api {
        Api::Chat => "m-chat",
        Api::Messages => "m-msg",
        Api::Responses => "m-resp",
    }
}

/// Three providers on `up`, each serving one API natively: `p-chat` (openai, apis = chat),
/// `p-resp` (openai, apis = responses), `p-msg` (anthropic).
fn providers(up: &Upstream) -> String {
    let v1 = up.url("/v1");
    format!(
        "{}{}{}",
        worker::openai_provider("p-chat", &v1, r#"["m-chat"]"#, "", r#"apis = ["chat"]"#),
        worker::openai_provider(
            "p-resp",
            &v1,
            r#"["m-resp"]"#,
            "",
            r#"apis = ["responses"]"#
        ),
        worker::anthropic_provider(
            "p-msg",
            &up.url(""),
            r#"["m-msg"]"#,
            "",
            "default_max_tokens = 777"
        ),
    )
}

/// A client request in `api` for `model` saying "hi", with tools when `tools`.
fn client_body(api: Api, model: &str, stream: bool, tools: bool) -> Value {
    let schema = json!({"type": "object", "properties": {"city": {"type": "string"}}});
    let mut b = match api {
        Api::Chat => json!({"model": model, "messages": [{"role": "user", "content": "hi"}]}),
        Api::Messages => json!({"model": model, "max_tokens": 100,
            "messages": [{"role": "user", "content": "hi"}]}),
        Api::Responses => json!({"model": model, "input": "hi"}),
    };
    if stream {
        b["stream"] = json!(true);
    }
    if tools {
        b["tools"] = match api {
            Api::Chat => json!([{"type": "function", "function": {"name": "weather",
                "description": "d", "parameters": schema}}]),
            Api::Messages => {
                json!([{"name": "weather", "description": "d", "input_schema": schema}])
            }
            Api::Responses => json!([{"type": "function", "name": "weather",
                "description": "d", "parameters": schema}]),
        };
    }
    b
}

/// What a client got: the text, the tool calls (name, arguments parsed), the model, the
/// finish as the dialect says it.
#[derive(Debug, Default, PartialEq)]
struct Got {
    text: String,
    tools: Vec<(String, Value)>,
    model: String,
    finish: String,
}

fn parse_args(s: &str) -> Value {
    serde_json::from_str(s).unwrap_or_else(|e| panic!("arguments are not JSON ({e}): {s:?}"))
}

/// A non-streamed answer in `api`, read as that API's SDK reads it.
fn read_json(api: Api, v: &Value) -> Got {
    let mut g = Got {
        model: v["model"].as_str().unwrap_or_default().into(),
        ..Got::default()
    };
    match api {
        Api::Chat => {
            let m = &v["choices"][0]["message"];
            g.text = m["content"].as_str().unwrap_or_default().into();
            for c in m["tool_calls"].as_array().into_iter().flatten() {
                let f = &c["function"];
                g.tools.push((
                    f["name"].as_str().unwrap().into(),
                    parse_args(f["arguments"].as_str().unwrap()),
                ));
            }
            g.finish = v["choices"][0]["finish_reason"].as_str().unwrap().into();
        }
        Api::Messages => {
            for b in v["content"].as_array().unwrap() {
                match b["type"].as_str().unwrap() {
                    "text" => g.text.push_str(b["text"].as_str().unwrap()),
                    "tool_use" => g
                        .tools
                        .push((b["name"].as_str().unwrap().into(), b["input"].clone())),
                    t => panic!("unexpected block {t}: {v}"),
                }
            }
            g.finish = v["stop_reason"].as_str().unwrap().into();
        }
        Api::Responses => {
            for it in v["output"].as_array().unwrap() {
                match it["type"].as_str().unwrap() {
                    "message" => {
                        for c in it["content"].as_array().unwrap() {
                            g.text.push_str(c["text"].as_str().unwrap());
                        }
                    }
                    "function_call" => g.tools.push((
                        it["name"].as_str().unwrap().into(),
                        parse_args(it["arguments"].as_str().unwrap()),
                    )),
                    t => panic!("unexpected item {t}: {v}"),
                }
            }
            g.finish = v["status"].as_str().unwrap().into();
        }
    }
    g
}

/// The `(event name, data)` pairs of an SSE body; comments and blank lines skipped.
fn sse_events(body: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for frame in body.split("\n\n") {
        let (mut name, mut data) = (String::new(), Vec::new());
        for line in frame.lines() {
            if let Some(n) = line.strip_prefix("event:") {
                name = n.trim().into();
            } else if let Some(d) = line.strip_prefix("data:") {
                data.push(d.trim_start().to_string());
            }
        }
        if !data.is_empty() {
            out.push((name, data.join("\n")));
        }
    }
    out
}

/// A streamed answer in `api`, accumulated as that API's SDK does (text deltas, tool arguments
/// by index); panics unless the stream ends as the dialect's clean end says.
fn read_sse(api: Api, body: &str) -> Got {
    let mut g = Got::default();
    let mut tools: BTreeMap<u64, (String, String)> = BTreeMap::new();
    let mut ended = false;
    for (name, data) in sse_events(body) {
        assert!(!ended, "events after the end: {body}");
        if data == "[DONE]" {
            assert_eq!(api, Api::Chat, "{body}");
            ended = true;
            continue;
        }
        let v: Value = serde_json::from_str(&data).unwrap_or_else(|e| panic!("{e}: {data}"));
        assert_ne!(name, "error", "an error event: {body}");
        assert!(v.get("error").is_none(), "an error: {body}");
        match api {
            Api::Chat => {
                g.model = v["model"].as_str().unwrap().into();
                let Some(c) = v["choices"].get(0) else {
                    continue;
                };
                let d = &c["delta"];
                if let Some(t) = d["content"].as_str() {
                    g.text.push_str(t);
                }
                for tc in d["tool_calls"].as_array().into_iter().flatten() {
                    let e = tools.entry(tc["index"].as_u64().unwrap()).or_default();
                    if let Some(n) = tc["function"]["name"].as_str() {
                        e.0.push_str(n);
                    }
                    if let Some(a) = tc["function"]["arguments"].as_str() {
                        e.1.push_str(a);
                    }
                }
                if let Some(f) = c["finish_reason"].as_str() {
                    g.finish = f.into();
                }
            }
            Api::Messages => {
                assert_eq!(v["type"].as_str(), Some(name.as_str()), "{data}");
                match name.as_str() {
                    "message_start" => g.model = v["message"]["model"].as_str().unwrap().into(),
                    "content_block_start" if v["content_block"]["type"] == "tool_use" => {
                        let e = tools.entry(v["index"].as_u64().unwrap()).or_default();
                        e.0 = v["content_block"]["name"].as_str().unwrap().into();
                    }
                    "content_block_delta" => {
                        let d = &v["delta"];
                        match d["type"].as_str().unwrap() {
                            "text_delta" => g.text.push_str(d["text"].as_str().unwrap()),
                            "input_json_delta" => tools
                                .get_mut(&v["index"].as_u64().unwrap())
                                .expect("a delta of a started tool block")
                                .1
                                .push_str(d["partial_json"].as_str().unwrap()),
                            t => panic!("unexpected delta {t}"),
                        }
                    }
                    "message_delta" => {
                        g.finish = v["delta"]["stop_reason"].as_str().unwrap().into()
                    }
                    "message_stop" => ended = true,
                    _ => {}
                }
            }
            Api::Responses => {
                assert_eq!(v["type"].as_str(), Some(name.as_str()), "{data}");
                match name.as_str() {
                    "response.created" => g.model = v["response"]["model"].as_str().unwrap().into(),
                    "response.output_text.delta" => g.text.push_str(v["delta"].as_str().unwrap()),
                    "response.output_item.added" if v["item"]["type"] == "function_call" => {
                        let e = tools
                            .entry(v["output_index"].as_u64().unwrap())
                            .or_default();
                        e.0 = v["item"]["name"].as_str().unwrap().into();
                    }
                    "response.function_call_arguments.delta" => tools
                        .get_mut(&v["output_index"].as_u64().unwrap())
                        .expect("a delta of an added call")
                        .1
                        .push_str(v["delta"].as_str().unwrap()),
                    "response.completed" => {
                        g.finish = v["response"]["status"].as_str().unwrap().into();
                        ended = true;
                    }
                    _ => {}
                }
            }
        }
    }
    assert!(ended, "no clean end: {body}");
    g.tools = tools
        .into_values()
        .map(|(n, a)| (n, parse_args(&a)))
        .collect();
    g
}

/// The finish each client API reports for a text answer and for a tool call.
fn finish(api: Api, tool: bool) -> &'static str {
    match (api, tool) {
        (Api::Chat, false) => "stop",
        (Api::Chat, true) => "tool_calls",
        (Api::Messages, false) => "end_turn",
        (Api::Messages, true) => "tool_use",
        (Api::Responses, _) => "completed",
    }
}

fn post(addr: std::net::SocketAddr, api: Api, body: &Value) -> http::Response {
    http::post_json(addr, api.client_path(), body).expect("answered")
}

/// Every cell of the table, streamed and not, with a text answer and with a tool call whose
/// arguments arrive split over many chunks: the client gets its own dialect with the model it
/// asked for, the provider got a request its strict API accepts on its own path (Anthropic with
/// the provider's `default_max_tokens` when the client gave none), the answer is labelled
/// `FROM->TO`, and `gateway_translated_requests_total` counts each translated cell.
#[test]
fn every_cell_streamed_and_not_with_text_and_tool_calls() {
    let up = Upstream::start();
    up.strict();
    let w = Worker::start(&worker::config(&providers(&up)), &[]);
    let args = json!({"city": "Paris", "days": [1, 2], "note": "a \"quoted\" word"});
    for client in Api::ALL {
        for provider in Api::ALL {
            for stream in [false, true] {
                for tool in [false, true] {
                    let cell = format!(
                        "{} -> {} stream={stream} tool={tool}",
                        client.name(),
                        provider.name()
                    );
                    let a = if tool {
                        Answer::Tool("weather".into(), args.clone())
                    } else {
                        Answer::Text("Hello there, from far away!".into())
                    };
                    let upstream_model = model_of(provider);
                    up.enqueue(
                        provider.upstream_path(),
                        dialects::answer(provider, upstream_model, &a, stream),
                    );
                    let before = up.request_count();
                    let r = post(
                        w.addr,
                        client,
                        &client_body(client, upstream_model, stream, tool),
                    );
                    assert_eq!(r.status, 200, "{cell}: {}", r.text());
                    let reqs = up.requests();
                    assert_eq!(reqs.len(), before + 1, "{cell}");
                    let sent = &reqs[before];
                    assert_eq!(sent.path, provider.upstream_path(), "{cell}");
                    let p = format!("p-{}", &provider.name()[..provider.name().len().min(4)]);
                    let p = if provider == Api::Messages {
                        "p-msg".into()
                    } else {
                        p
                    };
                    assert_eq!(r.header("x-gateway-provider"), Some(p.as_str()), "{cell}");
                    let native = client == provider;
                    let label = format!("{}->{}", client.name(), provider.name());
                    assert_eq!(
                        r.header("x-gateway-translated"),
                        (!native).then_some(label.as_str()),
                        "{cell}"
                    );
                    if provider == Api::Messages && client != Api::Messages {
                        assert_eq!(sent.json()["max_tokens"], 777, "{cell}: default_max_tokens");
                    }
                    if tool && !native {
                        let t = &sent.json()["tools"][0];
                        let name = t["name"].as_str().or(t["function"]["name"].as_str());
                        assert_eq!(name, Some("weather"), "{cell}: {t}");
                    }
                    let got = if stream {
                        assert_eq!(
                            r.header("content-type"),
                            Some("text/event-stream"),
                            "{cell}"
                        );
                        read_sse(client, &r.text())
                    } else {
                        read_json(client, &r.json())
                    };
                    let want = match &a {
                        Answer::Text(t) => Got {
                            text: t.clone(),
                            ..Got::default()
                        },
                        Answer::Tool(n, a) => Got {
                            tools: vec![(n.clone(), a.clone())],
                            ..Got::default()
                        },
                    };
                    assert_eq!(got.text, want.text, "{cell}: {}", r.text());
                    assert_eq!(got.tools, want.tools, "{cell}: {}", r.text());
                    assert_eq!(got.model, upstream_model, "{cell}");
                    assert_eq!(got.finish, finish(client, tool), "{cell}");
                }
            }
        }
    }
    let m = http::get(w.addr, "/metrics").unwrap().text();
    for client in Api::ALL {
        for provider in Api::ALL.into_iter().filter(|p| *p != client) {
            let line = format!(
                "gateway_translated_requests_total{{from=\"{}\",to=\"{}\"}} 4",
                client.name(),
                provider.name()
            );
            assert!(m.contains(&line), "{line} in:\n{m}");
        }
    }
    assert!(!m.contains("from=\"chat\",to=\"chat\""), "{m}");
}

/// A field the provider's API cannot express is the client's 400 in its own dialect, naming
/// the field, and no provider is contacted.
#[test]
fn an_untranslatable_field_is_a_400_naming_it_before_any_provider() {
    let up = Upstream::start();
    up.strict();
    let w = Worker::start(&worker::config(&providers(&up)), &[]);
    let mut b = client_body(Api::Chat, "m-msg", false, false);
    b["n"] = json!(2);
    let r = post(w.addr, Api::Chat, &b);
    assert_eq!(r.status, 400, "{}", r.text());
    assert_eq!(
        r.json()["error"]["type"],
        "invalid_request_error",
        "{}",
        r.text()
    );
    assert!(r.error_message().contains("`n`"), "{}", r.text());
    let mut b = client_body(Api::Messages, "m-resp", false, false);
    b["stop_sequences"] = json!(["END"]);
    let r = post(w.addr, Api::Messages, &b);
    assert_eq!(r.status, 400, "{}", r.text());
    assert_eq!(r.json()["type"], "error", "Anthropic shape: {}", r.text());
    assert!(r.error_message().contains("stop_sequences"), "{}", r.text());
    // Stored responses cannot be served statelessly by a translated provider.
    let mut b = client_body(Api::Responses, "m-chat", true, false);
    b["previous_response_id"] = json!("resp_123");
    let r = post(w.addr, Api::Responses, &b);
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(
        r.error_message().contains("previous_response_id"),
        "{}",
        r.text()
    );
    assert_eq!(up.request_count(), 0, "no provider was contacted");
}

/// A provider's error in its API reaches the client in the client's, with the status kept.
#[test]
fn an_upstream_error_is_translated_with_its_status() {
    let up = Upstream::start();
    let w = Worker::start(&worker::config(&providers(&up)), &[]);
    up.enqueue(
        "/v1/messages",
        dialects::error(Api::Messages, 422, "prompt is too long for this model"),
    );
    let r = post(
        w.addr,
        Api::Chat,
        &client_body(Api::Chat, "m-msg", false, false),
    );
    assert_eq!(r.status, 422, "{}", r.text());
    let v = r.json();
    assert!(
        v.get("type").is_none(),
        "OpenAI shape, not Anthropic's: {v}"
    );
    assert_eq!(
        v["error"]["message"], "prompt is too long for this model",
        "{v}"
    );
    up.enqueue(
        "/v1/chat/completions",
        dialects::error(Api::Chat, 404, "The model `m-chat` does not exist"),
    );
    let r = post(
        w.addr,
        Api::Messages,
        &client_body(Api::Messages, "m-chat", true, false),
    );
    assert_eq!(r.status, 404, "{}", r.text());
    let v = r.json();
    assert_eq!(v["type"], "error", "Anthropic shape: {v}");
    assert_eq!(
        v["error"]["message"], "The model `m-chat` does not exist",
        "{v}"
    );
}

/// An upstream stream that breaks mid-answer ends the translated stream with exactly one
/// error event in the client's dialect and an aborted body, never the dialect's clean end.
#[test]
fn a_broken_translated_stream_ends_with_one_error_event() {
    let up = Upstream::start();
    let w = Worker::start(&worker::config(&providers(&up)), &[]);
    let frames = dialects::sse_frames(Api::Chat, "m-chat", &Answer::Text("Hello there".into()));
    let head: Vec<&str> = frames[..3].iter().map(String::as_str).collect();
    up.enqueue("/v1/chat/completions", Script::sse(&head).reset());
    let mut s = Stream::post_json(
        w.addr,
        "/v1/messages",
        &client_body(Api::Messages, "m-chat", true, false),
    )
    .unwrap();
    assert_eq!(s.status, 200);
    let (body, _err) = s.read_cut("a broken stream is cut");
    let events = sse_events(&body);
    let errors: Vec<_> = events.iter().filter(|(n, _)| n == "error").collect();
    assert_eq!(errors.len(), 1, "{body}");
    assert!(!body.contains("message_stop"), "{body}");
    assert!(
        body.contains("Hell"),
        "the text before the break went out: {body}"
    );
    let (_, data) = errors[0];
    let v: Value = serde_json::from_str(data).unwrap();
    assert_eq!(v["type"], "error", "{v}");
}

/// An alias mixing kinds fails over across dialects before the first byte: the native OpenAI
/// target answers 503, the Anthropic one answers, translated, and the client sees one answer.
#[test]
fn an_alias_fails_over_across_dialects() {
    let flaky = Upstream::start();
    flaky.set(
        "/v1/chat/completions",
        dialects::error(Api::Chat, 503, "overloaded"),
    );
    let up = Upstream::start();
    up.strict();
    let tail = format!(
        "{}{}\n[[models]]\nname = \"fast\"\ntargets = [\"flaky/gpt\", \"p-msg/m-msg\"]\n",
        worker::openai_provider("flaky", &flaky.url("/v1"), r#"["gpt"]"#, "", ""),
        providers(&up)
    );
    let w = Worker::start(&worker::config(&tail), &[]);
    up.set(
        "/v1/messages",
        dialects::answer(
            Api::Messages,
            "m-msg",
            &Answer::Text("from claude".into()),
            true,
        ),
    );
    let r = post(
        w.addr,
        Api::Chat,
        &client_body(Api::Chat, "fast", true, false),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("x-gateway-provider"), Some("p-msg"));
    assert_eq!(r.header("x-gateway-attempts"), Some("2"));
    assert_eq!(r.header("x-gateway-translated"), Some("chat->messages"));
    let got = read_sse(Api::Chat, &r.text());
    assert_eq!(got.text, "from claude");
    assert_eq!(got.model, "fast", "the alias stays the alias");
    assert_eq!(flaky.request_count(), 1);
    assert_eq!(up.requests()[0].json()["model"], "m-msg");
}

fn supervisor_config(up: &Upstream) -> String {
    format!(
        r#"
[server]
listen = "127.0.0.1:0"
auth_token_env = ""

[pool]
workers = 1
base_port = 0
runtime_dir = "{{RUNTIME_DIR}}"
heartbeat_interval = "200ms"
heartbeat_timeout = "2s"
startup_timeout = "10s"
shutdown_timeout = "3s"

[health]
probe_interval = "0s"
{}
"#,
        providers(up)
    )
}

/// Through the supervisor: an Anthropic client reaches an OpenAI-compatible provider, streamed
/// and not; the front keeps `x-gateway-translated` for its access log (`translated`) and does
/// not pass it on.
#[test]
fn through_the_supervisor_with_the_access_log() {
    let up = Upstream::start();
    up.strict();
    let env = TestEnv::new(&supervisor_config(&up));
    let mut cmd = env.supervisor(&["start", "--log-format", "json"]);
    cmd.env("RUST_LOG", "info");
    let run = Running::ready(cmd);
    for stream in [false, true] {
        let a = Answer::Text("over the front".into());
        up.enqueue(
            "/v1/chat/completions",
            dialects::answer(Api::Chat, "m-chat", &a, stream),
        );
        let r = post(
            run.listen,
            Api::Messages,
            &client_body(Api::Messages, "m-chat", stream, false),
        );
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(
            r.header("x-gateway-translated"),
            None,
            "internal to the gateway"
        );
        assert_eq!(r.header("x-gateway-provider"), Some("p-chat"));
        let got = if stream {
            read_sse(Api::Messages, &r.text())
        } else {
            read_json(Api::Messages, &r.json())
        };
        assert_eq!(got.text, "over the front");
        let id = r.header("x-request-id").unwrap().to_string();
        let access = run.access_line(&id);
        assert_eq!(access["translated"], "messages->chat", "{access}");
    }
}

/// `GET /v1/models` with `anthropic-version` answers in Anthropic's list shape, from a worker
/// and from the front; without it, OpenAI's. One entry likewise.
#[test]
fn models_in_the_anthropic_shape_when_asked_by_an_anthropic_client() {
    let up = Upstream::start();
    let w = Worker::start(&worker::config(&providers(&up)), &[]);
    let env = TestEnv::new(&supervisor_config(&up));
    let run = env.start(&[]);
    let av = [("anthropic-version", "2023-06-01")];
    for addr in [w.addr, run.listen] {
        let r = http::request(addr, "GET", "/v1/models", &av, None).unwrap();
        assert_eq!(r.status, 200, "{}", r.text());
        let v = r.json();
        assert_eq!(v["has_more"], false, "{v}");
        assert_eq!(v["first_id"], "m-chat", "{v}");
        assert_eq!(v["data"][1]["type"], "model", "{v}");
        assert_eq!(v["data"][1]["id"], "m-resp", "{v}");
        assert!(v["data"][1]["display_name"].is_string(), "{v}");
        assert!(v.get("object").is_none(), "{v}");
        let v = http::get(addr, "/v1/models").unwrap().json();
        assert_eq!(v["object"], "list", "OpenAI's shape: {v}");
        let r = http::request(addr, "GET", "/v1/models/m-msg", &av, None).unwrap();
        assert_eq!(r.json()["type"], "model", "{}", r.text());
        let r = http::request(addr, "GET", "/v1/models/nope", &av, None).unwrap();
        assert_eq!(r.status, 404);
        assert_eq!(r.json()["type"], "error", "Anthropic's error: {}", r.text());
    }
}

/// `count_tokens` is forwarded to an Anthropic provider and estimated (chars/4, marked by
/// `x-gateway-token-estimate`) for a model only other APIs serve.
#[test]
fn count_tokens_answers_for_every_model() {
    let up = Upstream::start();
    let w = Worker::start(&worker::config(&providers(&up)), &[]);
    up.enqueue(
        "/v1/messages/count_tokens",
        Script::json(200, json!({"input_tokens": 42})),
    );
    let body =
        |m: &str| json!({"model": m, "messages": [{"role": "user", "content": "hello world!"}]});
    let r = http::post_json(w.addr, "/v1/messages/count_tokens", &body("m-msg")).unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["input_tokens"], 42, "native");
    assert_eq!(r.header("x-gateway-token-estimate"), None);
    let r = http::post_json(w.addr, "/v1/messages/count_tokens", &body("m-chat")).unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("x-gateway-token-estimate"), Some("chars/4"));
    // "user" + "hello world!" = 16 characters.
    assert_eq!(r.json()["input_tokens"], 4, "{}", r.text());
    assert_eq!(up.request_count(), 1, "the estimate asks no provider");
    let r = http::post_json(w.addr, "/v1/messages/count_tokens", &body("nope")).unwrap();
    assert_eq!(r.status, 404, "an unknown model stays a 404");
}

/// A candidate whose API cannot express the request is skipped before it is contacted, and a
/// later candidate that serves it answers; only when no candidate can serve it is it the
/// client's 400 naming the field. (Native candidates come first, so the skip matters between
/// translated ones: a Messages client's `stop_sequences` has no Responses equivalent but is
/// Chat's `stop`.)
#[test]
fn an_untranslatable_candidate_is_skipped_for_one_that_serves_it() {
    let up = Upstream::start();
    up.strict();
    let tail = format!(
        "{}\n[[models]]\nname = \"mix\"\ntargets = [\"p-resp/m-resp\", \"p-chat/m-chat\"]\n\
         \n[[models]]\nname = \"anth\"\ntargets = [\"p-msg/m-msg\", \"p-chat/m-chat\"]\n\
         \n[[models]]\nname = \"none\"\ntargets = [\"p-msg/m-msg\", \"p-resp/m-resp\"]\n",
        providers(&up)
    );
    let w = Worker::start(&worker::config(&tail), &[]);
    for stream in [false, true] {
        up.enqueue(
            "/v1/chat/completions",
            dialects::answer(
                Api::Chat,
                "m-chat",
                &Answer::Text("via chat".into()),
                stream,
            ),
        );
        let mut b = client_body(Api::Messages, "mix", stream, false);
        b["stop_sequences"] = json!(["END"]);
        let r = post(w.addr, Api::Messages, &b);
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.header("x-gateway-provider"), Some("p-chat"));
        assert_eq!(
            r.header("x-gateway-attempts"),
            Some("1"),
            "a skip is no attempt"
        );
        assert_eq!(r.header("x-gateway-translated"), Some("messages->chat"));
        let got = if stream {
            read_sse(Api::Messages, &r.text())
        } else {
            read_json(Api::Messages, &r.json())
        };
        assert_eq!(got.text, "via chat");
        assert_eq!(got.model, "mix");
    }
    // The alias of the issue: an Anthropic candidate and a Chat one, for a Chat client's `n: 2`.
    up.enqueue(
        "/v1/chat/completions",
        dialects::answer(Api::Chat, "m-chat", &Answer::Text("native".into()), false),
    );
    let mut b = client_body(Api::Chat, "anth", false, false);
    b["n"] = json!(2);
    let r = post(w.addr, Api::Chat, &b);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("x-gateway-provider"), Some("p-chat"));
    let reqs = up.requests();
    assert_eq!(reqs.len(), 3, "only the Chat candidate was contacted");
    assert!(reqs.iter().all(|r| r.path == "/v1/chat/completions"));
    assert_eq!(reqs[0].json()["stop"], json!(["END"]));
    assert_eq!(reqs[2].json()["n"], 2);
    // No candidate can express `n: 2`: the 400 names it, and nothing was contacted.
    let mut b = client_body(Api::Chat, "none", true, false);
    b["n"] = json!(2);
    let r = post(w.addr, Api::Chat, &b);
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(r.error_message().contains("`n`"), "{}", r.text());
    assert_eq!(up.request_count(), 3);
}

/// A translated stream that waited for a provider permit (its 200 went out with keep-alive
/// pings before the provider was settled) is still labelled `x-gateway-translated`: the front's
/// access log says `translated`.
#[test]
fn a_translated_stream_that_waited_for_a_permit_is_still_labelled() {
    let up = Upstream::start();
    let config = format!(
        r#"
[server]
listen = "127.0.0.1:0"
auth_token_env = ""
stream_ping_interval = "200ms"

[pool]
workers = 1
base_port = 0
runtime_dir = "{{RUNTIME_DIR}}"
heartbeat_interval = "200ms"
heartbeat_timeout = "2s"
startup_timeout = "10s"
shutdown_timeout = "3s"
queue_timeout = "20s"

[health]
probe_interval = "0s"
{}"#,
        worker::openai_provider(
            "p-chat",
            &up.url("/v1"),
            r#"["m-chat"]"#,
            "",
            "apis = [\"chat\"]\nmax_concurrency = 1"
        )
    );
    let env = TestEnv::new(&config);
    let mut cmd = env.supervisor(&["start", "--log-format", "json"]);
    cmd.env("RUST_LOG", "info");
    let run = Running::ready(cmd);
    // The first request holds the provider's one permit until the gate opens.
    let gate = support::upstream::Gate::new();
    up.enqueue(
        "/v1/chat/completions",
        dialects::answer(Api::Chat, "m-chat", &Answer::Text("first".into()), false)
            .wait_headers(&gate),
    );
    up.enqueue(
        "/v1/chat/completions",
        dialects::answer(
            Api::Chat,
            "m-chat",
            &Answer::Text("after the wait".into()),
            true,
        ),
    );
    let first = {
        let b = client_body(Api::Messages, "m-chat", false, false);
        let addr = run.listen;
        std::thread::spawn(move || post(addr, Api::Messages, &b))
    };
    assert!(up.wait_requests(1, Duration::from_secs(10)));
    let mut s = Stream::post_json(
        run.listen,
        "/v1/messages",
        &client_body(Api::Messages, "m-chat", true, false),
    )
    .unwrap();
    assert_eq!(s.status, 200);
    let id = s.header("x-request-id").unwrap().to_string();
    s.read_until("event: ping").unwrap();
    gate.open();
    let body = s.read_to_end().expect("a clean end");
    let got = read_sse(Api::Messages, &String::from_utf8_lossy(&body));
    assert_eq!(got.text, "after the wait");
    assert_eq!(first.join().unwrap().status, 200);
    let access = run.access_line(&id);
    assert_eq!(access["translated"], "messages->chat", "{access}");
    // Its head went out before the provider was chosen; the line names it from the usage record.
    assert_eq!(access["provider"], "p-chat", "{access}");
}
