//! A fast upstream for `bench/run.sh` and `bench/translate.sh`: an OpenAI-compatible server
//! answering every POST with a small fixed chat completion, or, when the body asks for
//! `"stream": true`, with an SSE stream of `BENCH_CHUNKS` chunks (default 5) spaced
//! `BENCH_CHUNK_MS` apart (default 0); a model whose name contains `bench-slow` streams one chunk
//! a second. A POST to a path ending in `/messages` speaks Anthropic's Messages API instead: the
//! same `BENCH_CHUNKS` text deltas between `message_start` + `content_block_start` (one write) and
//! `content_block_stop` + `message_delta` + `message_stop` (one write). A POST to a path ending in
//! `/responses` speaks OpenAI's Responses API: `BENCH_CHUNKS` `response.output_text.delta` events
//! between `response.created` .. `response.content_part.added` (one write) and
//! `response.output_text.done` .. `response.completed` (one write). GET /models lists one
//! model. Usage: `bench_upstream [ADDR]` (default 127.0.0.1:0); prints the bound address.

use bytes::Bytes;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use hyper::{Request, Response};
use std::convert::Infallible;
use std::time::Duration;

const REPLY: &str = r#"{"id":"chatcmpl-bench","object":"chat.completion","created":0,"model":"bench","choices":[{"index":0,"message":{"role":"assistant","content":"ok"},"finish_reason":"stop"}],"usage":{"prompt_tokens":1,"completion_tokens":1,"total_tokens":2}}"#;

const MESSAGES_REPLY: &str = r#"{"id":"msg_bench","type":"message","role":"assistant","model":"bench","content":[{"type":"text","text":"ok"}],"stop_reason":"end_turn","stop_sequence":null,"usage":{"input_tokens":1,"output_tokens":1}}"#;

const MESSAGES_HEAD: &str = "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_bench\",\"type\":\"message\",\"role\":\"assistant\",\"model\":\"bench\",\"content\":[],\"stop_reason\":null,\"stop_sequence\":null,\"usage\":{\"input_tokens\":1,\"output_tokens\":0}}}\n\nevent: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n";

const MESSAGES_TAIL: &str = "event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":0}\n\nevent: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\",\"stop_sequence\":null},\"usage\":{\"output_tokens\":1}}\n\nevent: message_stop\ndata: {\"type\":\"message_stop\"}\n\n";

const RESPONSES_REPLY: &str = r#"{"id":"resp_bench","object":"response","created_at":0,"status":"completed","model":"bench","output":[{"type":"message","id":"msg_bench","status":"completed","role":"assistant","content":[{"type":"output_text","text":"ok","annotations":[]}]}],"usage":{"input_tokens":1,"output_tokens":1,"total_tokens":2}}"#;

const RESPONSES_HEAD: &str = "event: response.created\ndata: {\"type\":\"response.created\",\"sequence_number\":0,\"response\":{\"id\":\"resp_bench\",\"object\":\"response\",\"created_at\":0,\"status\":\"in_progress\",\"model\":\"bench\",\"output\":[]}}\n\n\
event: response.in_progress\ndata: {\"type\":\"response.in_progress\",\"sequence_number\":1,\"response\":{\"id\":\"resp_bench\",\"object\":\"response\",\"created_at\":0,\"status\":\"in_progress\",\"model\":\"bench\",\"output\":[]}}\n\n\
event: response.output_item.added\ndata: {\"type\":\"response.output_item.added\",\"sequence_number\":2,\"output_index\":0,\"item\":{\"type\":\"message\",\"id\":\"msg_bench\",\"status\":\"in_progress\",\"role\":\"assistant\",\"content\":[]}}\n\n\
event: response.content_part.added\ndata: {\"type\":\"response.content_part.added\",\"sequence_number\":3,\"item_id\":\"msg_bench\",\"output_index\":0,\"content_index\":0,\"part\":{\"type\":\"output_text\",\"text\":\"\",\"annotations\":[]}}\n\n";

/// The end of a Responses stream whose deltas used sequence numbers up to `seq - 1`. The done
/// events repeat no text (a real server repeats it; it is the same for every case here).
fn responses_tail(seq: u64) -> String {
    format!(
        "event: response.output_text.done\ndata: {{\"type\":\"response.output_text.done\",\"sequence_number\":{},\"item_id\":\"msg_bench\",\"output_index\":0,\"content_index\":0,\"text\":\"\"}}\n\n\
event: response.content_part.done\ndata: {{\"type\":\"response.content_part.done\",\"sequence_number\":{},\"item_id\":\"msg_bench\",\"output_index\":0,\"content_index\":0,\"part\":{{\"type\":\"output_text\",\"text\":\"\",\"annotations\":[]}}}}\n\n\
event: response.output_item.done\ndata: {{\"type\":\"response.output_item.done\",\"sequence_number\":{},\"output_index\":0,\"item\":{{\"type\":\"message\",\"id\":\"msg_bench\",\"status\":\"completed\",\"role\":\"assistant\",\"content\":[]}}}}\n\n\
event: response.completed\ndata: {{\"type\":\"response.completed\",\"sequence_number\":{},\"response\":{{\"id\":\"resp_bench\",\"object\":\"response\",\"created_at\":0,\"status\":\"completed\",\"model\":\"bench\",\"output\":[],\"usage\":{{\"input_tokens\":1,\"output_tokens\":1,\"total_tokens\":2}}}}}}\n\n",
        seq,
        seq + 1,
        seq + 2,
        seq + 3
    )
}

type Body = http_body_util::combinators::BoxBody<Bytes, Infallible>;

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

async fn handle(req: Request<hyper::body::Incoming>) -> Result<Response<Body>, Infallible> {
    if req.method() == hyper::Method::GET {
        let body = r#"{"object":"list","data":[{"id":"bench","object":"model","created":0,"owned_by":"bench"}]}"#;
        return Ok(json(body));
    }
    let messages = req.uri().path().ends_with("/messages");
    let responses = req.uri().path().ends_with("/responses");
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let wants_stream = memchr_stream(&body);
    if !wants_stream {
        return Ok(json(if messages {
            MESSAGES_REPLY
        } else if responses {
            RESPONSES_REPLY
        } else {
            REPLY
        }));
    }
    // Model "bench-slow" holds the stream open: one chunk a second for ~17 minutes.
    let slow = body.windows(10).any(|w| w == b"bench-slow");
    let (chunks, gap) = if slow {
        (1000, Duration::from_secs(1))
    } else {
        (
            env_u64("BENCH_CHUNKS", 5),
            Duration::from_millis(env_u64("BENCH_CHUNK_MS", 0)),
        )
    };
    // Frame i of n+2 for Messages and Responses (head, n deltas, tail); of n+1 for Chat (n
    // chunks, [DONE]).
    let last = chunks + u64::from(messages || responses);
    let stream = futures_util::stream::unfold(0u64, move |i| async move {
        if i > last {
            return None;
        }
        if i > 0 && !gap.is_zero() {
            tokio::time::sleep(gap).await;
        }
        let data = if responses {
            match i {
                0 => RESPONSES_HEAD.to_string(),
                i if i == last => responses_tail(i + 3),
                i => format!(
                    "event: response.output_text.delta\ndata: {{\"type\":\"response.output_text.delta\",\"sequence_number\":{},\"item_id\":\"msg_bench\",\"output_index\":0,\"content_index\":0,\"delta\":\"w{} \",\"logprobs\":[]}}\n\n",
                    i + 3,
                    i - 1
                ),
            }
        } else if messages {
            match i {
                0 => MESSAGES_HEAD.to_string(),
                i if i == last => MESSAGES_TAIL.to_string(),
                i => format!(
                    "event: content_block_delta\ndata: {{\"type\":\"content_block_delta\",\"index\":0,\"delta\":{{\"type\":\"text_delta\",\"text\":\"w{} \"}}}}\n\n",
                    i - 1
                ),
            }
        } else if i == chunks {
            "data: [DONE]\n\n".to_string()
        } else {
            format!(
                "data: {{\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"created\":0,\"model\":\"bench\",\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"w{i} \"}},\"finish_reason\":null}}]}}\n\n"
            )
        };
        Some((Ok::<_, Infallible>(Frame::data(Bytes::from(data))), i + 1))
    });
    Ok(Response::builder()
        .header("content-type", "text/event-stream")
        .body(BodyExt::boxed(StreamBody::new(stream)))
        .unwrap())
}

fn memchr_stream(body: &[u8]) -> bool {
    body.windows(13).any(|w| w == b"\"stream\":true")
        || body.windows(14).any(|w| w == b"\"stream\": true")
}

fn json(s: &'static str) -> Response<Body> {
    Response::builder()
        .header("content-type", "application/json")
        .body(BodyExt::boxed(Full::new(Bytes::from_static(s.as_bytes()))))
        .unwrap()
}

fn main() {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:0".into());
    let threads = env_u64("BENCH_THREADS", 1) as usize;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(&addr).await.expect("bind");
        println!("{}", listener.local_addr().unwrap());
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            let _ = tcp.set_nodelay(true);
            tokio::spawn(async move {
                let io = hyper_util::rt::TokioIo::new(tcp);
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(io, hyper::service::service_fn(handle))
                    .await;
            });
        }
    });
}
