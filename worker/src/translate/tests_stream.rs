//! Stream translation tests: upstream fixtures built from each provider's documented event
//! sequences, run through every client dialect and checked by accumulators that apply the SDKs'
//! rules (block order and indexes, tool-call indexes, sequence numbers, a clean end); plus the
//! split-invariance property and the broken-upstream cases.

use super::pivot::{Stop, Usage};
use super::stream::{StreamOptions, StreamTranslator, UsageReader};
use super::tests_stream_fixtures::{chat, fixtures, Final};
use super::{chat_response, messages_response, responses_response, Api};
use gateway::sse::parse::Parser;
use serde_json::{json, Value};

const CLIENTS: [Api; 3] = [Api::Chat, Api::Messages, Api::Responses];

fn opts() -> StreamOptions {
    StreamOptions {
        include_usage: true,
        created: 7,
        ..StreamOptions::new("alias-model")
    }
}

fn run(from: Api, to: Api, chunks: &[&[u8]], end: bool) -> (String, Option<Usage>) {
    let mut t = StreamTranslator::new(from, to, opts());
    let mut out = String::new();
    for c in chunks {
        t.feed(c, &mut out);
    }
    if end {
        t.end(&mut out);
    }
    (out, t.usage())
}

fn parse(out: &str) -> Vec<(String, String)> {
    let mut p = Parser::new(1 << 20);
    let mut evs = Vec::new();
    p.feed(out.as_bytes(), &mut evs).unwrap();
    assert!(p.is_between_events(), "output ends mid-event: {out}");
    evs.into_iter().map(|e| (e.event, e.data)).collect()
}

/// The Chat SDK's accumulation: tool calls by `index`, which counts tool calls from 0.
fn accumulate_chat(out: &str) -> Final {
    let mut f = Final::default();
    let mut args: Vec<String> = Vec::new();
    let mut done = false;
    for (ev, data) in parse(out) {
        assert!(!done, "nothing after [DONE]");
        assert_eq!(ev, "", "chat frames have no event type");
        if data == "[DONE]" {
            done = true;
            continue;
        }
        let v: Value = serde_json::from_str(&data).unwrap();
        if v.get("error").is_some() {
            f.error = true;
            continue;
        }
        assert_eq!(v["object"], "chat.completion.chunk");
        assert_eq!(v["model"], "alias-model");
        if v["choices"].as_array().unwrap().is_empty() {
            f.usage = Some(chat_response::usage_from(&v["usage"]));
            continue;
        }
        let c = &v["choices"][0];
        let d = &c["delta"];
        f.text += d["content"].as_str().unwrap_or("");
        f.refusal += d["refusal"].as_str().unwrap_or("");
        for tc in d["tool_calls"].as_array().map(Vec::as_slice).unwrap_or(&[]) {
            let i = tc["index"].as_u64().unwrap() as usize;
            if i == f.calls.len() {
                let id = tc["id"].as_str().expect("a new tool call has an id");
                let name = tc["function"]["name"].as_str().expect("and a name");
                f.calls.push((id.into(), name.into(), Value::Null));
                args.push(String::new());
            }
            assert!(i < f.calls.len(), "tool-call indexes count tool calls");
            args[i] += tc["function"]["arguments"].as_str().unwrap_or("");
        }
        if let Some(r) = c["finish_reason"].as_str() {
            f.stop = Some(chat_response::stop_from(r));
        }
    }
    for (c, a) in f.calls.iter_mut().zip(args) {
        c.2 = serde_json::from_str(&a).unwrap_or(Value::String(a));
    }
    assert_eq!(done, !f.error, "a clean end is [DONE], an error has none");
    f
}

/// The Anthropic SDK's rules: `message_start` first, blocks one at a time with indexes 0, 1, ...,
/// deltas to the open block, `message_stop` last.
fn accumulate_messages(out: &str) -> Final {
    let mut f = Final::default();
    let (mut started, mut stopped, mut open, mut next) = (false, false, None::<u64>, 0u64);
    let mut json_buf = String::new();
    for (ev, data) in parse(out) {
        assert!(!stopped, "nothing after message_stop");
        let v: Value = serde_json::from_str(&data).unwrap();
        assert_eq!(ev, v["type"].as_str().unwrap(), "event name is the type");
        if ev != "error" {
            assert!(
                started || ev == "message_start",
                "message_start comes first"
            );
        }
        match ev.as_str() {
            "message_start" => {
                assert!(!started);
                started = true;
                assert_eq!(v["message"]["model"], "alias-model");
            }
            "content_block_start" => {
                assert_eq!(open, None, "blocks do not overlap");
                assert_eq!(v["index"], next, "block indexes count blocks");
                open = Some(next);
                next += 1;
                let b = &v["content_block"];
                if b["type"] == "tool_use" {
                    f.calls.push((
                        b["id"].as_str().unwrap().into(),
                        b["name"].as_str().unwrap().into(),
                        Value::Null,
                    ));
                    json_buf.clear();
                }
            }
            "content_block_delta" => {
                assert_eq!(
                    Some(v["index"].as_u64().unwrap()),
                    open,
                    "deltas go to the open block"
                );
                let d = &v["delta"];
                match d["type"].as_str().unwrap() {
                    "text_delta" => f.text += d["text"].as_str().unwrap(),
                    "input_json_delta" => json_buf += d["partial_json"].as_str().unwrap(),
                    t => panic!("unexpected delta {t}"),
                }
            }
            "content_block_stop" => {
                assert_eq!(Some(v["index"].as_u64().unwrap()), open);
                open = None;
                if let Some(c) = f.calls.last_mut().filter(|c| c.2.is_null()) {
                    c.2 = if json_buf.is_empty() {
                        json!({})
                    } else {
                        serde_json::from_str(&json_buf).unwrap_or(Value::String(json_buf.clone()))
                    };
                }
            }
            "message_delta" => {
                assert_eq!(open, None);
                f.stop = Some(messages_response::stop_from(
                    v["delta"]["stop_reason"].as_str().unwrap(),
                    v["delta"]["stop_sequence"].as_str(),
                ));
                f.usage = Some(messages_response::usage_from(&v["usage"]));
            }
            "message_stop" => stopped = true,
            "error" => f.error = true,
            t => panic!("unexpected event {t}"),
        }
    }
    assert_eq!(
        stopped, !f.error,
        "a clean end is message_stop, an error has none"
    );
    f
}

/// The Responses SDK's rules: consecutive `sequence_number`s from 0, items by `output_index`,
/// and a `response.completed` (or `.incomplete`) whose output matches what the deltas built.
fn accumulate_responses(out: &str) -> Final {
    let mut f = Final::default();
    let mut items: Vec<Value> = Vec::new();
    let mut finished = false;
    for (seq, (ev, data)) in parse(out).into_iter().enumerate() {
        assert!(!finished, "nothing after the final event");
        let v: Value = serde_json::from_str(&data).unwrap();
        assert_eq!(ev, v["type"].as_str().unwrap());
        assert_eq!(
            v["sequence_number"], seq as u64,
            "sequence numbers are consecutive"
        );
        if seq == 0 && ev != "error" {
            assert_eq!(ev, "response.created");
        }
        let oi = v["output_index"].as_u64().unwrap_or(0) as usize;
        match ev.as_str() {
            "response.output_item.added" => {
                assert_eq!(oi, items.len());
                items.push(v["item"].clone());
            }
            "response.output_text.delta" => f.text += v["delta"].as_str().unwrap(),
            "response.refusal.delta" => f.refusal += v["delta"].as_str().unwrap(),
            "response.function_call_arguments.delta" => {
                assert_eq!(items[oi]["type"], "function_call");
                let a = format!(
                    "{}{}",
                    items[oi]["arguments"].as_str().unwrap(),
                    v["delta"].as_str().unwrap()
                );
                items[oi]["arguments"] = json!(a);
            }
            "response.output_item.done" => {
                if v["item"]["type"] == "function_call" {
                    assert_eq!(v["item"]["arguments"], items[oi]["arguments"]);
                }
                items[oi] = v["item"].clone();
            }
            "response.completed" | "response.incomplete" => {
                finished = true;
                let r = &v["response"];
                assert_eq!(r["model"], "alias-model");
                assert_eq!(
                    r["output"].as_array().unwrap(),
                    &items,
                    "the final output repeats the items"
                );
                for it in &items {
                    if it["type"] == "function_call" {
                        let args = it["arguments"].as_str().unwrap();
                        f.calls.push((
                            it["call_id"].as_str().unwrap().into(),
                            it["name"].as_str().unwrap().into(),
                            serde_json::from_str(args).unwrap_or(json!(args)),
                        ));
                    }
                }
                f.stop = Some(responses_response::stop_from(r, !f.calls.is_empty()));
                f.usage = Some(responses_response::usage_from(&r["usage"]));
            }
            "error" => {
                assert!(
                    v["error"].is_object(),
                    "the SDKs raise on a data object with `error`"
                );
                f.error = true;
            }
            _ => {}
        }
    }
    assert_eq!(finished, !f.error);
    f
}

fn accumulate(to: Api, out: &str) -> Final {
    match to {
        Api::Chat => accumulate_chat(out),
        Api::Messages => accumulate_messages(out),
        Api::Responses => accumulate_responses(out),
    }
}

/// What `want` looks like to a client of `to`.
fn seen_by(to: Api, want: &Final) -> Final {
    let mut w = want.clone();
    if to == Api::Messages {
        w.text = format!("{}{}", w.text, w.refusal);
        w.refusal.clear();
    } else {
        if let Some(Stop::StopSequence(_)) = w.stop {
            w.stop = Some(Stop::EndTurn);
        }
    }
    if w.error {
        w.stop = None;
        w.usage = None;
    }
    w
}

#[test]
fn every_fixture_reaches_every_client_dialect() {
    for (name, from, bytes, want) in fixtures() {
        for to in CLIENTS {
            let (out, usage) = run(from, to, &[bytes.as_bytes()], true);
            let got = accumulate(to, &out);
            assert_eq!(got, seen_by(to, &want), "{name} -> {to:?}:\n{out}");
            assert_eq!(
                usage,
                want.usage.filter(|_| !want.error),
                "{name}: usage for accounting"
            );
        }
    }
}

/// Property: any split of an upstream stream into chunks gives the same client bytes.
#[test]
fn any_split_gives_the_same_client_stream() {
    let mut rng = fastrand::Rng::with_seed(0x7e57);
    for (name, from, bytes, _) in fixtures() {
        let b = bytes.as_bytes();
        for to in CLIENTS {
            let (whole, _) = run(from, to, &[b], true);
            for _ in 0..60 {
                let mut chunks = Vec::new();
                let mut rest = b;
                while !rest.is_empty() {
                    let n = rng.usize(1..=rest.len().min(40));
                    chunks.push(&rest[..n]);
                    rest = &rest[n..];
                }
                assert_eq!(run(from, to, &chunks, true).0, whole, "{name} -> {to:?}");
            }
        }
    }
}

/// A stream cut anywhere before its last event, or failed by the caller, ends with exactly one
/// error event in the client's dialect and never with a clean end.
#[test]
fn a_broken_upstream_ends_with_one_error_never_a_clean_end() {
    for (name, from, bytes, want) in fixtures().into_iter().filter(|f| !f.3.error) {
        for to in CLIENTS {
            let b = bytes.as_bytes();
            // Cut before the final event (Chat's `[DONE]` plus its finish chunk; the others' last event).
            let tail = match from {
                Api::Chat => b
                    .windows(17)
                    .rposition(|w| w == b"\"finish_reason\":\"")
                    .map(|i| b[..i].iter().rposition(|&c| c == b'\n').unwrap())
                    .unwrap(),
                _ => {
                    b[..b.len() - 2]
                        .windows(2)
                        .rposition(|w| w == b"\n\n")
                        .unwrap()
                        + 2
                }
            };
            for cut in [tail, tail / 2, 1] {
                for failed in [false, true] {
                    let mut t = StreamTranslator::new(from, to, opts());
                    let mut out = String::new();
                    t.feed(&b[..cut], &mut out);
                    if failed {
                        t.fail(gateway::ErrorKind::BadGateway, "upstream reset", &mut out);
                    } else {
                        t.end(&mut out);
                    }
                    t.end(&mut out);
                    t.fail(gateway::ErrorKind::BadGateway, "again", &mut out);
                    let got = accumulate(to, &out);
                    assert!(got.error, "{name} -> {to:?} cut at {cut}: {out}");
                    let errors = parse(&out)
                        .iter()
                        .filter(|(e, d)| e == "error" || d.contains("\"error\":{"))
                        .count();
                    assert_eq!(errors, 1, "{name} -> {to:?}: one error event");
                    assert_eq!(t.usage(), None);
                    let _ = &want;
                }
            }
        }
    }
}

#[test]
fn unreadable_upstream_data_is_an_error_not_silence() {
    for from in CLIENTS {
        let mut t = StreamTranslator::new(from, Api::Messages, opts());
        let mut out = String::new();
        t.feed(b"data: {not json\n\n", &mut out);
        assert!(accumulate_messages(&out).error, "{from:?}: {out}");
    }
    // An event over the bound is refused by the SSE parser, and reported.
    let mut t = StreamTranslator::new(
        Api::Chat,
        Api::Responses,
        StreamOptions {
            max_event_bytes: 64,
            ..opts()
        },
    );
    let mut out = String::new();
    t.feed(&[b'x'; 100], &mut out);
    assert!(accumulate_responses(&out).error);
    // The held Responses output is bounded.
    let mut t = StreamTranslator::new(
        Api::Chat,
        Api::Responses,
        StreamOptions {
            max_output_bytes: 8,
            ..opts()
        },
    );
    let mut out = String::new();
    t.feed(
        chat(json!({"content": "more than eight bytes"}), None).as_bytes(),
        &mut out,
    );
    assert!(accumulate_responses(&out).error);
}

#[test]
fn chat_clients_get_the_usage_chunk_only_when_they_asked() {
    let (_, _, bytes, _) = fixtures().remove(7);
    let mut t = StreamTranslator::new(Api::Messages, Api::Chat, StreamOptions::new("m"));
    let mut out = String::new();
    t.feed(bytes.as_bytes(), &mut out);
    assert!(!out.contains("\"usage\""), "{out}");
    assert_eq!(
        t.usage().unwrap().input,
        20,
        "usage is still read for accounting"
    );
}

#[test]
fn usage_reader_reads_native_streams() {
    for (name, from, bytes, want) in fixtures().into_iter().filter(|f| !f.3.error) {
        let mut r = UsageReader::new(from, 1 << 20);
        for c in bytes.as_bytes().chunks(5) {
            r.feed(c);
        }
        assert_eq!(r.usage(), want.usage, "{name}");
    }
    // A Chat stream without `[DONE]`: its usage counts once the stream ends.
    let (_, _, bytes, want) = fixtures().remove(0);
    let mut r = UsageReader::new(Api::Chat, 1 << 20);
    r.feed(bytes.trim_end_matches("data: [DONE]\n\n").as_bytes());
    assert_eq!(r.usage(), None, "the finish is at [DONE]");
    r.end();
    assert_eq!(r.usage(), want.usage);
}

/// A Chat provider interleaving two calls' argument deltas: each delta still reaches its own
/// call (by index, as the SDKs accumulate), in both translated dialects.
#[test]
fn interleaved_chat_tool_deltas_keep_their_own_call() {
    let call = |i: u64, id: &str, name: &str| {
        chat(
            json!({"tool_calls": [{"index": i, "id": id, "type": "function", "function": {"name": name, "arguments": ""}}]}),
            None,
        )
    };
    let args = |i: u64, a: &str| {
        chat(
            json!({"tool_calls": [{"index": i, "function": {"arguments": a}}]}),
            None,
        )
    };
    let bytes = [
        call(0, "call_a", "f"),
        args(0, "{\"a\":"),
        call(1, "call_b", "g"),
        args(1, "{\"b\":"),
        args(0, "1}"),
        args(1, "2}"),
        chat(json!({}), Some("tool_calls")),
        "data: [DONE]\n\n".into(),
    ]
    .concat();
    let (out, _) = run(Api::Chat, Api::Responses, &[bytes.as_bytes()], true);
    let f = accumulate_responses(&out);
    assert_eq!(
        f.calls,
        vec![
            ("call_a".into(), "f".into(), json!({"a": 1})),
            ("call_b".into(), "g".into(), json!({"b": 2}))
        ]
    );
    let (out, _) = run(Api::Chat, Api::Messages, &[bytes.as_bytes()], true);
    let mut bufs = vec![String::new(); 2];
    for (ev, data) in parse(&out) {
        let v: Value = serde_json::from_str(&data).unwrap();
        if ev == "content_block_delta" {
            bufs[v["index"].as_u64().unwrap() as usize] +=
                v["delta"]["partial_json"].as_str().unwrap();
        }
    }
    assert_eq!(bufs, ["{\"a\":1}", "{\"b\":2}"]);
}

/// Hostile upstreams: random corruptions of every fixture never panic, and what the client gets
/// still follows its dialect's rules and ends either cleanly or with one error.
#[test]
fn corrupted_upstreams_still_give_well_formed_client_streams() {
    let mut rng = fastrand::Rng::with_seed(0xbad);
    let junk: &[u8] = b"{}[]\",:0-e\n\r nul";
    for (_, from, bytes, _) in fixtures() {
        for to in CLIENTS {
            for _ in 0..40 {
                let mut b = bytes.clone().into_bytes();
                for _ in 0..rng.usize(1..4) {
                    let i = rng.usize(..b.len());
                    b[i] = junk[rng.usize(..junk.len())];
                }
                let (out, _) = run(from, to, &[&b], true);
                let got = accumulate(to, &out);
                let _ = got;
            }
        }
    }
}

/// Endings that are clean although unusual: a Chat server that omits `[DONE]` after its finish
/// reason; and one that is not: a Responses `response.failed`.
#[test]
fn unusual_endings() {
    let (_, _, bytes, want) = fixtures().remove(0);
    let no_done = bytes.trim_end_matches("data: [DONE]\n\n");
    for to in CLIENTS {
        let (out, usage) = run(Api::Chat, to, &[no_done.as_bytes()], true);
        assert_eq!(accumulate(to, &out), seen_by(to, &want), "-> {to:?}");
        assert_eq!(usage, want.usage);
    }
    let failed = "event: response.created\ndata: {\"type\":\"response.created\",\"response\":{\"id\":\"r\"}}\n\n\
        event: response.failed\ndata: {\"type\":\"response.failed\",\"response\":{\"id\":\"r\",\"status\":\"failed\",\"error\":{\"code\":\"server_error\",\"message\":\"model crashed\"}}}\n\n";
    for to in CLIENTS {
        let (out, usage) = run(Api::Responses, to, &[failed.as_bytes()], true);
        assert!(accumulate(to, &out).error, "-> {to:?}: {out}");
        assert!(out.contains("model crashed"));
        assert_eq!(usage, None);
    }
}

/// The borrowed decoders copy escaped strings (quotes, newlines, `\u` escapes) correctly, and
/// the typed encoders escape them again: the text survives both ways.
#[test]
fn escaped_text_survives_the_typed_paths() {
    let text = "say \"hi\"\nthen \u{e9}\u{1F600} \\ done\t\u{1}\u{1f}";
    let esc = serde_json::to_string(text).unwrap();
    let chat_up = format!(
        "data: {{\"id\":\"c1\",\"choices\":[{{\"index\":0,\"delta\":{{\"content\":{esc}}}}}]}}\n\n\
         data: {{\"id\":\"c1\",\"choices\":[{{\"index\":0,\"delta\":{{}},\"finish_reason\":\"stop\"}}]}}\n\n\
         data: [DONE]\n\n"
    );
    let (out, _) = run(Api::Chat, Api::Messages, &[chat_up.as_bytes()], true);
    assert_eq!(accumulate_messages(&out).text, text, "{out}");
    let ant_up = format!(
        "event: message_start\ndata: {{\"type\":\"message_start\",\"message\":{{\"id\":\"m1\",\"usage\":{{\"input_tokens\":1,\"output_tokens\":0}}}}}}\n\n\
         event: content_block_start\ndata: {{\"type\":\"content_block_start\",\"index\":0,\"content_block\":{{\"type\":\"text\",\"text\":\"\"}}}}\n\n\
         event: content_block_delta\ndata: {{\"type\":\"content_block_delta\",\"index\":0,\"delta\":{{\"type\":\"text_delta\",\"text\":{esc}}}}}\n\n\
         event: content_block_stop\ndata: {{\"type\":\"content_block_stop\",\"index\":0}}\n\n\
         event: message_delta\ndata: {{\"type\":\"message_delta\",\"delta\":{{\"stop_reason\":\"end_turn\"}},\"usage\":{{\"output_tokens\":2}}}}\n\n\
         event: message_stop\ndata: {{\"type\":\"message_stop\"}}\n\n"
    );
    let (out, _) = run(Api::Messages, Api::Chat, &[ant_up.as_bytes()], true);
    assert_eq!(accumulate_chat(&out).text, text, "{out}");
    // Responses as the source (text and argument deltas) and as the target.
    let args = serde_json::to_string(&json!({"q": text})).unwrap();
    let args_esc = serde_json::to_string(&args).unwrap();
    let rs_up = format!(
        "event: response.created\ndata: {{\"type\":\"response.created\",\"response\":{{\"id\":\"r1\"}}}}\n\n\
         event: response.output_item.added\ndata: {{\"type\":\"response.output_item.added\",\"output_index\":0,\"item\":{{\"id\":\"m\",\"type\":\"message\"}}}}\n\n\
         event: response.output_text.delta\ndata: {{\"type\":\"response.output_text.delta\",\"item_id\":\"m\",\"output_index\":0,\"content_index\":0,\"delta\":{esc}}}\n\n\
         event: response.output_item.added\ndata: {{\"type\":\"response.output_item.added\",\"output_index\":1,\"item\":{{\"id\":\"fc\",\"type\":\"function_call\",\"call_id\":\"call_q\",\"name\":\"f\",\"arguments\":\"\"}}}}\n\n\
         event: response.function_call_arguments.delta\ndata: {{\"type\":\"response.function_call_arguments.delta\",\"item_id\":\"fc\",\"output_index\":1,\"delta\":{args_esc}}}\n\n\
         event: response.completed\ndata: {{\"type\":\"response.completed\",\"response\":{{\"id\":\"r1\",\"status\":\"completed\"}}}}\n\n"
    );
    let want_calls = vec![("call_q".to_string(), "f".to_string(), json!({"q": text}))];
    for to in [Api::Chat, Api::Messages] {
        let (out, _) = run(Api::Responses, to, &[rs_up.as_bytes()], true);
        let f = accumulate(to, &out);
        assert_eq!(
            (f.text.as_str(), &f.calls),
            (text, &want_calls),
            "-> {to:?}: {out}"
        );
    }
    let chat_tool_up = format!(
        "data: {{\"id\":\"c1\",\"choices\":[{{\"index\":0,\"delta\":{{\"content\":{esc}}}}}]}}\n\n\
         data: {{\"id\":\"c1\",\"choices\":[{{\"index\":0,\"delta\":{{\"tool_calls\":[{{\"index\":0,\"id\":\"call_q\",\"function\":{{\"name\":\"f\",\"arguments\":{args_esc}}}}}]}}}}]}}\n\n\
         data: {{\"id\":\"c1\",\"choices\":[{{\"index\":0,\"delta\":{{}},\"finish_reason\":\"tool_calls\"}}]}}\n\n\
         data: [DONE]\n\n"
    );
    let (out, _) = run(Api::Chat, Api::Responses, &[chat_tool_up.as_bytes()], true);
    let f = accumulate_responses(&out);
    assert_eq!((f.text.as_str(), &f.calls), (text, &want_calls), "{out}");
}
