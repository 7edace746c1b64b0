//! Request properties: a request translated A -> B -> A keeps its meaning, and corrupted
//! requests are answered with an error, never a panic.

use super::pivot::{
    Effort, Image, Message, Part, Reasoning, Request, Role, Text, Tool, ToolChoice,
};
use super::tests_request::{chat_conversation, claude_code_request, tr, OPTS};
use super::{decode_request, encode_request, translate_request, Api};
use serde_json::{json, Value};

/// A random conversation of what all three dialects express.
fn random_request(rng: &mut fastrand::Rng) -> Request {
    let word = |rng: &mut fastrand::Rng| {
        ["alpha", "beta", "gamma", "δέλτα", "{\"q\":1}"][rng.usize(..5)].to_string()
    };
    let text = |rng: &mut fastrand::Rng| {
        Part::Text(Text {
            text: word(rng),
            cache: false,
        })
    };
    let mut messages = Vec::new();
    let mut call_no = 0;
    for turn in 0..rng.usize(1..6) {
        let mut parts = Vec::new();
        if turn % 2 == 0 {
            let pending: Vec<usize> = (0..call_no).collect();
            if turn > 0 {
                for c in pending.iter().skip(call_no.saturating_sub(2)) {
                    parts.push(Part::ToolResult {
                        call_id: format!("call_{c}"),
                        content: vec![text(rng)],
                        is_error: false,
                    });
                }
            }
            for _ in 0..rng.usize(1..3) {
                parts.push(match rng.usize(..3) {
                    0 => Part::Image {
                        source: Image::Url("https://example.com/i.png".into()),
                        cache: false,
                    },
                    1 => Part::Image {
                        source: Image::Base64 {
                            media_type: "image/png".into(),
                            data: "iVBO".into(),
                        },
                        cache: false,
                    },
                    _ => text(rng),
                });
            }
            messages.push(Message {
                role: Role::User,
                parts,
            });
        } else {
            if rng.bool() {
                parts.push(text(rng));
            }
            for _ in 0..rng.usize(usize::from(parts.is_empty())..3) {
                parts.push(Part::ToolCall {
                    id: format!("call_{call_no}"),
                    name: word(rng),
                    arguments: json!({"n": call_no, "s": word(rng)}),
                });
                call_no += 1;
            }
            messages.push(Message {
                role: Role::Assistant,
                parts,
            });
        }
    }
    let tools = (0..rng.usize(..3))
        .map(|i| Tool {
            name: format!("tool_{i}"),
            description: rng.bool().then(|| word(rng)),
            parameters: json!({"type": "object", "properties": {"n": {"type": "integer"}}}),
            strict: false,
            cache: false,
        })
        .collect::<Vec<_>>();
    let has_tools = !tools.is_empty();
    Request {
        model: "some-model".into(),
        system: (0..rng.usize(..3))
            .map(|_| Text {
                text: word(rng),
                cache: false,
            })
            .collect(),
        messages,
        tool_choice: has_tools.then(|| {
            [
                ToolChoice::Auto,
                ToolChoice::None,
                ToolChoice::Required,
                ToolChoice::Named("tool_0".into()),
            ][rng.usize(..4)]
            .clone()
        }),
        parallel_tool_calls: (has_tools && rng.bool()).then_some(false),
        tools,
        max_tokens: Some(rng.u64(20000..40000)),
        temperature: rng.bool().then(|| f64::from(rng.u8(0..=10)) / 10.0),
        top_p: rng.bool().then_some(0.5),
        user: rng.bool().then(|| "user-7".into()),
        reasoning: rng.bool().then(|| {
            [
                Reasoning::Off,
                Reasoning::Effort(Effort::Low),
                Reasoning::Effort(Effort::Medium),
                Reasoning::Effort(Effort::High),
            ][rng.usize(..4)]
            .clone()
        }),
        stream: rng.bool(),
        ..Request::default()
    }
}

/// Property: a request written in A, translated to B and back to A, decodes to the same pivot.
#[test]
fn a_to_b_to_a_keeps_the_meaning() {
    let mut rng = fastrand::Rng::with_seed(0xab0a);
    let apis = [Api::Chat, Api::Messages, Api::Responses];
    for _ in 0..300 {
        let p = random_request(&mut rng);
        // `include_usage` is the Chat client's option about its own stream, not part of what the
        // provider is asked (toward Chat it is always set), so it is left out of the comparison.
        let decode = |api: Api, body: &Value| Request {
            include_usage: false,
            ..decode_request(api, body).unwrap()
        };
        for a in apis {
            let body_a = encode_request(a, a, &p, &OPTS).unwrap();
            let pa = decode(a, &body_a);
            // (Messages writes an effort as its budget, so reasoning is compared by the round trip only.)
            let same = |r: &Request| Request {
                reasoning: None,
                ..r.clone()
            };
            assert_eq!(
                same(&pa),
                same(&p),
                "{a:?} encodes and decodes the pivot unchanged: {body_a}"
            );
            for b in apis.into_iter().filter(|b| *b != a) {
                let body_b = tr(a, b, body_a.clone());
                let back = tr(b, a, body_b.clone());
                assert_eq!(decode(a, &back), pa, "{a:?} -> {b:?} -> {a:?} via {body_b}");
            }
        }
    }
}

/// Replaces one random node of `v` with a random value.
fn mutate(v: &mut Value, rng: &mut fastrand::Rng) {
    let children = match v {
        Value::Array(a) if !a.is_empty() => a.len(),
        Value::Object(o) if !o.is_empty() => o.len(),
        _ => 0,
    };
    if children == 0 || rng.u8(..4) == 0 {
        *v = [
            json!(null),
            json!(7),
            json!(-1),
            json!("x"),
            json!([]),
            json!({}),
            json!([{}]),
            json!({"type": "function"}),
            json!(1e300),
        ][rng.usize(..9)]
        .clone();
        return;
    }
    let i = rng.usize(..children);
    match v {
        Value::Array(a) => mutate(&mut a[i], rng),
        Value::Object(o) => mutate(o.values_mut().nth(i).unwrap(), rng),
        _ => {}
    }
}

/// Hostile clients: random corruptions of the fixtures are answered with a value or an error,
/// never a panic.
#[test]
fn corrupted_requests_never_panic() {
    let mut rng = fastrand::Rng::with_seed(0xf00d);
    let apis = [Api::Chat, Api::Messages, Api::Responses];
    let seeds = [
        (Api::Chat, chat_conversation()),
        (Api::Messages, claude_code_request()),
    ];
    for (from, body) in seeds {
        for _ in 0..2000 {
            let mut b = body.clone();
            for _ in 0..rng.usize(1..4) {
                mutate(&mut b, &mut rng);
            }
            for to in apis {
                let _ = translate_request(from, to, &b, &OPTS);
            }
        }
    }
    for _ in 0..2000 {
        let mut b = json!({"model": "m", "input": [{"type": "function_call", "call_id": "c", "name": "f", "arguments": "{}"},
            {"type": "function_call_output", "call_id": "c", "output": [{"type": "input_text", "text": "t"}]},
            {"role": "user", "content": [{"type": "input_image", "image_url": "https://x"}]}],
            "text": {"format": {"type": "json_schema", "name": "n", "schema": {}}}, "reasoning": {"effort": "low"},
            "tools": [{"type": "function", "name": "f"}], "tool_choice": {"type": "function", "name": "f"}});
        mutate(&mut b, &mut rng);
        for to in apis {
            let _ = translate_request(Api::Responses, to, &b, &OPTS);
        }
    }
}
