//! Usage accounting in the worker: reads the tokens of every answer as it passes through (the
//! translation core's readers, in the provider's dialect; a translated stream's translator gives
//! its usage instead, so its events are decoded once), hides the usage-only Chat chunk from a
//! client that did not ask for it, and sends one `gateway::usage::Record` per finished request to
//! the supervisor as one message on a Unix `SOCK_SEQPACKET` connection, off the request path: a
//! non-blocking `send` that, when the connection's buffer is full, drops the record and counts
//! it instead of waiting.
//!
//! The observer rides in the response's `Attempt` (`crate::body`), which already ends exactly
//! once per answer; the record is sent then, before the last bytes reach the client, so a worker
//! killed right after a response finished has already queued its record at the supervisor's end
//! of the connection, where it stays readable after the worker is gone.

use crate::endpoint::Endpoint;
use crate::metrics::{Metrics, Outcome, UsageSeries};
use crate::providers::Provider;
use crate::translate::{self, Api, UsageReader};
use bytes::Bytes;
use gateway::config::Config;
use gateway::usage::{self as record, Record, Tokens};
use gateway::ConfigMap;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// Largest SSE event the usage reader accepts (a bigger one is not read for usage).
const MAX_EVENT_BYTES: usize = 4 << 20;
/// Most bytes kept of a non-streamed body: from its last `"usage"` key on (a usage object with
/// every provider's details is well under this).
const MAX_USAGE_TAIL: usize = 4 << 10;
/// The label of models that no configured model or price names (bounded cardinality).
const OTHER: &str = "other";

/// What the request knows before any attempt: kept in `proxy::Forward`.
#[derive(Debug, Clone)]
pub struct Meta {
    pub request_id: String,
    pub client: String,
    pub model_asked: String,
    pub streamed: bool,
    /// The gateway added `stream_options.include_usage`: the client must not see that chunk.
    pub hide_usage_chunk: bool,
    pub started: Instant,
    pub ts_ms: i64,
    /// The request's trace facts (`[telemetry]` on): the answer's provider, model and tokens.
    pub trace: Option<gateway::telemetry::SharedFacts>,
}

impl Meta {
    /// Moves the strings out (for the one observer of the kept answer): no copy per answer.
    pub fn take(&mut self) -> Self {
        Self {
            request_id: std::mem::take(&mut self.request_id),
            client: std::mem::take(&mut self.client),
            model_asked: std::mem::take(&mut self.model_asked),
            trace: self.trace.clone(),
            ..*self
        }
    }

    pub fn new(request_id: &str, client: &str, model_asked: &str, streamed: bool) -> Self {
        let ts_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64);
        Self {
            request_id: record::bounded(request_id),
            client: record::bounded(client),
            model_asked: record::bounded(model_asked),
            streamed,
            hide_usage_chunk: false,
            started: Instant::now(),
            ts_ms,
            trace: None,
        }
    }
}

/// A streamed Chat (or legacy completions) request's body with `stream_options.include_usage = true` when the client
/// did not ask for usage itself, so the stream reports its tokens; `None` = send it unchanged.
/// Other endpoints and non-streamed requests report usage anyway.
pub fn ask_for_usage(endpoint: Endpoint, stream: bool, body: &Bytes) -> Option<Bytes> {
    if !matches!(endpoint, Endpoint::ChatCompletions | Endpoint::Completions) || !stream {
        return None;
    }
    let mut v: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(body).ok()?;
    let opts = v
        .entry("stream_options")
        .or_insert_with(|| serde_json::Value::Object(Default::default()));
    let opts = opts.as_object_mut()?;
    if opts.get("include_usage").and_then(|b| b.as_bool()) == Some(true) {
        return None;
    }
    opts.insert("include_usage".into(), serde_json::Value::Bool(true));
    Some(Bytes::from(
        serde_json::to_vec(&v).expect("a JSON map serializes"),
    ))
}

/// The translation core's dialect for reading an endpoint's answers; `None` = no usage to read.
pub fn api_of(endpoint: Endpoint) -> Option<Api> {
    match endpoint {
        // Legacy completions and embeddings report usage as Chat does.
        Endpoint::ChatCompletions | Endpoint::Completions | Endpoint::Embeddings => Some(Api::Chat),
        Endpoint::Messages => Some(Api::Messages),
        Endpoint::Responses => Some(Api::Responses),
        Endpoint::CountTokens => None,
    }
}

/// The key a JSON answer's usage member starts with.
const KEY: &[u8] = b"\"usage\"";

/// Finds a JSON answer's `usage` member while its frames pass, without copying the body: only
/// the bytes from the last `"usage"` key on are kept (at most `MAX_USAGE_TAIL`), and the last
/// few bytes of each frame, for a key split across two frames. Providers put the member at the
/// top level (usually last); a key inside a string is escaped (`\"usage\"`), so it is not seen.
#[derive(Default)]
struct UsageTail {
    /// From the last key on, when `found`.
    tail: Vec<u8>,
    found: bool,
    /// The stream's last `SPLIT` bytes (`last_len` of them so far): where a split key starts.
    last: [u8; SPLIT],
    last_len: usize,
}

/// The most bytes of a key that can be in the frame before the one where it ends.
const SPLIT: usize = KEY.len() - 1;

impl UsageTail {
    fn feed(&mut self, data: &[u8]) {
        let head = &data[..data.len().min(SPLIT)];
        let n = self.last_len;
        let mut window = [0u8; 2 * SPLIT];
        window[..n].copy_from_slice(&self.last[..n]);
        window[n..n + head.len()].copy_from_slice(head);
        let split = find(&window[..n + head.len()], KEY).filter(|i| *i < n);
        let room = |t: &Vec<u8>| MAX_USAGE_TAIL.saturating_sub(t.len());
        if let Some(j) = rfind(data, KEY) {
            // The last key of all (a later one wins over one split before it).
            self.tail.clear();
            self.tail
                .extend_from_slice(&data[j..data.len().min(j + MAX_USAGE_TAIL)]);
            self.found = true;
        } else if let Some(i) = split {
            self.tail.clear();
            self.tail.extend_from_slice(&self.last[i..n]);
            let r = room(&self.tail);
            self.tail.extend_from_slice(&data[..data.len().min(r)]);
            self.found = true;
        } else if self.found {
            let r = room(&self.tail);
            self.tail.extend_from_slice(&data[..data.len().min(r)]);
        }
        // The new last bytes: of this frame, topped up with the old ones if it is short.
        if data.len() >= SPLIT {
            self.last.copy_from_slice(&data[data.len() - SPLIT..]);
            self.last_len = SPLIT;
        } else {
            let mut both = [0u8; 2 * SPLIT];
            both[..n].copy_from_slice(&self.last[..n]);
            both[n..n + data.len()].copy_from_slice(data);
            let total = n + data.len();
            let keep = total.min(SPLIT);
            self.last[..keep].copy_from_slice(&both[total - keep..total]);
            self.last_len = keep;
        }
    }

    /// The usage of the answer's last `"usage"` member, when a whole value follows its key.
    fn usage(&self, api: Api) -> Option<translate::Usage> {
        if !self.found {
            return None;
        }
        let rest = self.tail.strip_prefix(KEY)?.trim_ascii_start();
        translate::usage_member(api, rest.strip_prefix(b":")?)
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn rfind(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).rposition(|w| w == needle)
}

/// How the answer is read.
enum Reader {
    Stream(Box<UsageReader>),
    /// A translated stream: its translator decodes the provider's events already and gives
    /// their usage (`Observer::give_usage`), so they are not decoded twice.
    Given {
        usage: Option<translate::Usage>,
        before_break: Option<translate::Usage>,
    },
    /// A non-streamed body, scanned for its usage member.
    Body {
        api: Api,
        tail: UsageTail,
    },
    None,
}

/// Watches one answer on its way to the client; `finish` sends its record.
pub struct Observer {
    meta: Meta,
    provider: Arc<Provider>,
    model_served: String,
    status: u16,
    /// The translation `(from, to)` when the answer is translated.
    translation: Option<(Api, Api)>,
    reader: Reader,
    hide: Option<HideUsageChunk>,
    first_byte: Option<u64>,
}

impl Observer {
    /// `api` is the dialect of the bytes observed (the provider's); `sse` whether they are a
    /// `text/event-stream`.
    pub fn new(
        meta: Meta,
        provider: Arc<Provider>,
        model_served: &str,
        api: Option<Api>,
        sse: bool,
        status: u16,
        translation: Option<(Api, Api)>,
    ) -> Self {
        let translated = translation.is_some();
        let reader = match api {
            Some(_) if sse && translated => Reader::Given {
                usage: None,
                before_break: None,
            },
            Some(api) if sse => Reader::Stream(Box::new(UsageReader::new(api, MAX_EVENT_BYTES))),
            Some(api) => Reader::Body {
                api,
                tail: UsageTail::default(),
            },
            None => Reader::None,
        };
        let hide = (meta.hide_usage_chunk && sse && api == Some(Api::Chat) && !translated)
            .then(HideUsageChunk::default);
        Self {
            meta,
            provider,
            model_served: record::bounded(model_served),
            status,
            translation,
            reader,
            hide,
            first_byte: None,
        }
    }

    /// One chunk on its way to the client (`last` = nothing follows); returns what the client
    /// gets.
    pub fn chunk(&mut self, data: Bytes, last: bool) -> Bytes {
        if self.first_byte.is_none() {
            self.first_byte = Some(self.meta.started.elapsed().as_millis() as u64);
        }
        match &mut self.reader {
            Reader::Stream(r) => r.feed(&data),
            Reader::Body { tail, .. } => tail.feed(&data),
            Reader::Given { .. } | Reader::None => {}
        }
        match &mut self.hide {
            Some(h) => h.filter(data, last),
            None => data,
        }
    }

    /// A translated stream's usage so far: `usage` once its finish came, else `before_break`,
    /// what a stream that breaks still counts (see `UsageReader`). Ignored by other readers.
    pub fn give_usage(
        &mut self,
        usage: Option<translate::Usage>,
        before_break: Option<translate::Usage>,
    ) {
        if let Reader::Given {
            usage: u,
            before_break: b,
        } = &mut self.reader
        {
            (*u, *b) = (usage, before_break);
        }
    }

    /// The client gets `status` instead of the provider's (its answer could not be passed on).
    pub fn set_status(&mut self, status: u16) {
        self.status = status;
    }

    /// The answer ended with `outcome`: counts the tokens and sends the record. A stream that
    /// broke counts what it reported before the break.
    pub fn finish(self, outcome: Outcome) {
        let Observer {
            meta,
            provider,
            model_served,
            status,
            translation,
            mut reader,
            first_byte,
            ..
        } = self;
        let translated = translation.is_some();
        let usage = match &mut reader {
            Reader::Stream(r) if outcome == Outcome::Success => {
                r.end();
                r.usage()
            }
            Reader::Stream(r) => r.usage_before_break(),
            Reader::Given { usage, .. } if outcome == Outcome::Success => *usage,
            Reader::Given { before_break, .. } => *before_break,
            Reader::Body { api, tail } => (outcome == Outcome::Success)
                .then(|| tail.usage(*api))
                .flatten(),
            Reader::None => None,
        };
        let tokens = usage.map_or_else(Tokens::default, |u| Tokens {
            input: u.input,
            output: u.output,
            cache_read: u.cache_read,
            cache_write: u.cache_write,
        });
        if let Some(f) = &meta.trace {
            let (p, m) = (provider.name(), &model_served);
            crate::trace::answered(f, p, m, &tokens, outcome, translated);
        }
        let outcome = match outcome {
            _ if status >= 400 => record::Outcome::Error,
            Outcome::Success => record::Outcome::Ok,
            Outcome::Timeout => record::Outcome::Timeout,
            Outcome::Cancelled => record::Outcome::Cancelled,
            Outcome::StreamError => record::Outcome::StreamError,
            // A 3xx passed on as it is.
            _ => record::Outcome::Ok,
        };
        let ended = Ended {
            status,
            outcome,
            tokens,
            ttfb_ms: first_byte,
            translation: translation.map(|(from, to)| translate::label(from, to)),
        };
        send_record(meta, &provider, model_served, ended);
    }
}

/// How a request ended, for its record.
struct Ended {
    status: u16,
    outcome: record::Outcome,
    tokens: Tokens,
    ttfb_ms: Option<u64>,
    /// `FROM->TO` when translated.
    translation: Option<String>,
}

/// The record of a request that got an error answer without a provider's body to observe (all
/// attempts failed, a permit wait timed out, the request could not be encoded for the provider):
/// status `status`, no tokens, no cost. `provider` is the last one chosen for it.
pub fn error_record(meta: &Meta, provider: &Arc<Provider>, served: &str, status: u16) {
    let ended = Ended {
        status,
        // A 3xx passed on as it is.
        outcome: if status >= 400 {
            record::Outcome::Error
        } else {
            record::Outcome::Ok
        },
        tokens: Tokens::default(),
        ttfb_ms: None,
        translation: None,
    };
    send_record(meta.clone(), provider, record::bounded(served), ended);
}

/// Counts the tokens and cost in the metrics and sends the record.
fn send_record(meta: Meta, provider: &Arc<Provider>, model_served: String, e: Ended) {
    if let Some(ms) = e.ttfb_ms {
        provider.metrics.ttfb.observe(ms as f64 / 1000.0);
    }
    let Some(g) = global() else {
        return;
    };
    // No tokens, no cost: an answer that used none is not a $0 request.
    let cost = (e.tokens != Tokens::default())
        .then(|| record::cost(&provider.config.prices, &model_served, &e.tokens))
        .flatten();
    if let Some(s) = g.series(provider.name(), &meta.client, &model_served) {
        s.add(&e.tokens, cost);
    }
    let rec = Record {
        ts_ms: meta.ts_ms,
        duration_ms: meta.started.elapsed().as_millis() as u64,
        request_id: meta.request_id,
        client: meta.client,
        model_asked: meta.model_asked,
        model_served,
        provider: provider.name().to_string(),
        worker: g.worker,
        tokens: e.tokens,
        cost_usd: cost,
        status: e.status,
        outcome: e.outcome,
        ttfb_ms: e.ttfb_ms,
        streamed: meta.streamed,
        translated: e.translation.is_some(),
        translation: e.translation,
        dropped_before: 0,
    };
    g.send(rec);
}

/// Removes the usage-only chunk (`"choices": []` with `usage`) from a Chat stream whose client
/// did not ask for it. Works on whole events: a chunk's incomplete last event waits for the
/// next chunk (streams send whole events per chunk, so nothing is held in practice).
#[derive(Default)]
struct HideUsageChunk {
    pending: Vec<u8>,
}

impl HideUsageChunk {
    fn filter(&mut self, data: Bytes, last: bool) -> Bytes {
        if self.pending.is_empty() && ends_with_event(&data) && !mentions_usage(&data) {
            return data;
        }
        self.pending.extend_from_slice(&data);
        let cut = if last {
            self.pending.len()
        } else {
            match find_last_boundary(&self.pending) {
                Some(i) => i,
                None => return Bytes::new(),
            }
        };
        let rest = self.pending.split_off(cut);
        let whole = std::mem::replace(&mut self.pending, rest);
        let mut out = Vec::with_capacity(whole.len());
        for ev in split_events(&whole) {
            if !is_usage_only(ev) {
                out.extend_from_slice(ev);
            }
        }
        Bytes::from(out)
    }
}

fn mentions_usage(b: &[u8]) -> bool {
    b.windows(7).any(|w| w == b"\"usage\"")
}

fn ends_with_event(b: &[u8]) -> bool {
    b.ends_with(b"\n\n") || b.ends_with(b"\r\n\r\n")
}

/// The index just past the last blank line that ends an event.
fn find_last_boundary(b: &[u8]) -> Option<usize> {
    (1..b.len())
        .rev()
        .find(|&i| b[i] == b'\n' && (b[i - 1] == b'\n' || (i >= 3 && &b[i - 3..=i] == b"\r\n\r\n")))
        .map(|i| i + 1)
}

/// Whole events (each with its terminating blank line).
fn split_events(b: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut start = 0;
    let mut i = 0;
    std::iter::from_fn(move || {
        while i < b.len() {
            i += 1;
            let end = &b[..i];
            if end.ends_with(b"\n\n") || end.ends_with(b"\r\n\r\n") {
                let ev = &b[start..i];
                start = i;
                return Some(ev);
            }
        }
        (start < b.len()).then(|| {
            let ev = &b[start..];
            start = b.len();
            ev
        })
    })
}

fn is_usage_only(ev: &[u8]) -> bool {
    if !mentions_usage(ev) {
        return false;
    }
    let text = String::from_utf8_lossy(ev);
    let data: String = text
        .lines()
        .filter_map(|l| l.strip_prefix("data:"))
        .map(str::trim_start)
        .collect::<Vec<_>>()
        .join("\n");
    let Ok(v) = serde_json::from_str::<serde_json::Value>(&data) else {
        return false;
    };
    v["usage"].is_object() && v["choices"].as_array().is_some_and(|c| c.is_empty())
}

/// The worker-wide sender and metric handles, set up once at start (`init`).
struct Global {
    /// The connection to the supervisor; `None` = a standalone worker: metrics only.
    socket: Option<OwnedFd>,
    worker: Option<u32>,
    dropped: AtomicU64,
    /// provider -> client -> model -> series, created at start so the request path takes no
    /// lock of the metrics family.
    series: ConfigMap<String, ConfigMap<String, ConfigMap<String, UsageSeries>>>,
}

static GLOBAL: OnceLock<Global> = OnceLock::new();

fn global() -> Option<&'static Global> {
    GLOBAL.get()
}

/// Sets up the sender (from `GATEWAY_USAGE_SOCKET`) and the token and cost series of every
/// configured provider, client and model. Later calls (in-process tests) keep the first.
pub fn init(config: &Config, metrics: &Metrics) {
    GLOBAL.get_or_init(|| {
        let socket = std::env::var_os(record::SOCKET_ENV).and_then(|p| match connect(p.as_ref()) {
            Ok(fd) => Some(fd),
            Err(e) => {
                tracing::error!(socket = %std::path::Path::new(&p).display(), error = %e,
                    "cannot connect to the supervisor's usage socket; usage records are not sent");
                None
            }
        });
        let worker = std::env::var(record::WORKER_ID_ENV)
            .ok()
            .and_then(|v| v.parse().ok());
        let mut clients: Vec<&str> = config.clients.iter().map(|c| c.name.as_str()).collect();
        clients.push("");
        let mut series = ConfigMap::default();
        for p in &config.providers {
            let mut models: Vec<&str> = p
                .models
                .iter()
                .map(String::as_str)
                .filter(|m| *m != "*")
                .chain(p.prices.keys().map(String::as_str))
                .collect();
            models.push(OTHER);
            let per_client: ConfigMap<String, ConfigMap<String, UsageSeries>> = clients
                .iter()
                .map(|c| {
                    let m = models
                        .iter()
                        .map(|m| (m.to_string(), metrics.usage_series(c, &p.name, m)))
                        .collect();
                    (c.to_string(), m)
                })
                .collect();
            series.insert(p.name.clone(), per_client);
        }
        Global {
            socket,
            worker,
            dropped: AtomicU64::new(0),
            series,
        }
    });
}

/// A non-blocking `SOCK_SEQPACKET` connection to `path`.
fn connect(path: &std::path::Path) -> std::io::Result<OwnedFd> {
    use nix::sys::socket::{self as so, UnixAddr};
    let fd = record::seqpacket_socket()?;
    so::connect(fd.as_raw_fd(), &UnixAddr::new(path)?)?;
    Ok(fd)
}

impl Global {
    fn series(&self, provider: &str, client: &str, model: &str) -> Option<&UsageSeries> {
        let by_model = self.series.get(provider)?.get(client)?;
        by_model.get(model).or_else(|| by_model.get(OTHER))
    }

    /// One non-blocking `send`; a full buffer (or a supervisor gone) drops the record and
    /// counts it, to be reported with the next record that gets through.
    fn send(&self, mut rec: Record) {
        use nix::sys::socket::{send, MsgFlags};
        let Some(fd) = &self.socket else {
            return;
        };
        rec.dropped_before = self.dropped.swap(0, Ordering::Relaxed);
        let flags = MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_NOSIGNAL;
        if let Err(e) = send(fd.as_raw_fd(), &rec.encode(), flags) {
            self.dropped
                .fetch_add(rec.dropped_before + 1, Ordering::Relaxed);
            tracing::debug!(error = %e, request_id = %rec.request_id, "usage record dropped");
        }
    }
}

#[cfg(test)]
mod tests {
    /// The answer's usage is found whatever surrounds it and wherever the frames split it, and
    /// an answer without one has none; only a bounded tail is kept.
    #[test]
    fn the_usage_member_is_found_across_frames() {
        let body: &[u8] = br#"{"id":"x","choices":[{"message":{"content":"say \"usage\": no","x":[1,{"y":null}]}}],"usage":{"prompt_tokens":3,"completion_tokens":4},"z":true}"#;
        let scan = |frames: &[&[u8]]| {
            let mut t = UsageTail::default();
            for f in frames {
                t.feed(f);
                assert!(t.tail.len() <= MAX_USAGE_TAIL);
            }
            t.usage(Api::Chat)
        };
        for cut in 0..=body.len() {
            for cut2 in [cut, (cut + 3).min(body.len())] {
                let u = scan(&[&body[..cut], &body[cut..cut2], &body[cut2..]])
                    .unwrap_or_else(|| panic!("cut at {cut}/{cut2}"));
                assert_eq!((u.input, u.output), (3, 4), "cut at {cut}/{cut2}");
            }
        }
        assert!(scan(&[br#"{"choices":[]}"#]).is_none());
        assert!(scan(&[b"not json"]).is_none());
        let big = vec![b' '; 3 * MAX_USAGE_TAIL];
        assert!(scan(&[br#"{"usage":"#, &big, b"{}}"]).is_none(), "bounded");
    }

    use super::*;

    fn events(chunks: &[&str], hide: &mut HideUsageChunk) -> String {
        let mut out = Vec::new();
        for (i, c) in chunks.iter().enumerate() {
            let last = i + 1 == chunks.len();
            out.extend_from_slice(&hide.filter(Bytes::from(c.to_string()), last));
        }
        String::from_utf8(out).unwrap()
    }

    const TEXT: &str = "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"hi\"}}]}\n\n";
    const USAGE: &str =
        "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":2}}\n\n";
    const DONE: &str = "data: [DONE]\n\n";

    #[test]
    fn the_usage_only_chunk_is_hidden_whatever_the_chunking() {
        let whole = format!("{TEXT}{USAGE}{DONE}");
        let expected = format!("{TEXT}{DONE}");
        // Every split point of the stream into two chunks.
        for cut in 0..=whole.len() {
            let mut h = HideUsageChunk::default();
            let got = events(&[&whole[..cut], &whole[cut..]], &mut h);
            assert_eq!(got, expected, "cut at {cut}");
        }
        let mut h = HideUsageChunk::default();
        assert_eq!(events(&[TEXT, USAGE, DONE], &mut h), expected);
    }

    #[test]
    fn usage_on_a_chunk_with_choices_is_kept() {
        let ev =
            "data: {\"choices\":[{\"index\":0,\"delta\":{}}],\"usage\":{\"prompt_tokens\":1}}\n\n";
        let mut h = HideUsageChunk::default();
        assert_eq!(events(&[ev, DONE], &mut h), format!("{ev}{DONE}"));
    }

    #[test]
    fn include_usage_is_added_only_when_missing() {
        let b = Bytes::from_static(br#"{"model":"m","stream":true,"stream_options":{"x":1}}"#);
        let out = ask_for_usage(Endpoint::ChatCompletions, true, &b).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["stream_options"]["include_usage"], true);
        assert_eq!(v["stream_options"]["x"], 1);
        assert!(ask_for_usage(Endpoint::ChatCompletions, true, &out).is_none());
        assert!(ask_for_usage(Endpoint::ChatCompletions, false, &b).is_none());
        assert!(ask_for_usage(Endpoint::Messages, true, &b).is_none());
    }
}

#[cfg(test)]
mod send_tests {
    use super::*;

    fn record() -> Record {
        Record {
            ts_ms: 1,
            request_id: "r".into(),
            client: String::new(),
            model_asked: "m".into(),
            model_served: "m".into(),
            provider: "p".into(),
            worker: None,
            tokens: Tokens::default(),
            cost_usd: None,
            status: 200,
            outcome: record::Outcome::Ok,
            duration_ms: 1,
            ttfb_ms: None,
            streamed: false,
            translated: false,
            translation: None,
            dropped_before: 0,
        }
    }

    /// A record that finds the connection's buffer full is counted, never waited for, and the
    /// count travels with the next record that gets through (the supervisor adds it to
    /// `dropped`).
    #[test]
    fn unsent_records_are_counted_and_reported_with_the_next() {
        use nix::sys::socket::{recv, socketpair, AddressFamily, MsgFlags, SockFlag, SockType};
        let (tx, rx) = socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_NONBLOCK,
        )
        .unwrap();
        let g = Global {
            socket: Some(tx),
            worker: None,
            dropped: AtomicU64::new(0),
            series: ConfigMap::default(),
        };
        // Fill the buffer: sends go on until one is dropped, and none of them waits.
        let mut sent = 0;
        while g.dropped.load(Ordering::Relaxed) == 0 {
            g.send(record());
            sent += 1;
            assert!(sent < 1_000_000, "the buffer never filled");
        }
        g.send(record());
        assert_eq!(g.dropped.load(Ordering::Relaxed), 2);
        let mut buf = vec![0; record::MAX_MESSAGE];
        let mut last = None;
        while let Ok(n) = recv(rx.as_raw_fd(), &mut buf, MsgFlags::MSG_DONTWAIT) {
            last = Some(Record::decode(&buf[..n]).unwrap());
        }
        assert_eq!(last.unwrap().dropped_before, 0);
        g.send(record());
        let n = recv(rx.as_raw_fd(), &mut buf, MsgFlags::MSG_DONTWAIT).unwrap();
        assert_eq!(Record::decode(&buf[..n]).unwrap().dropped_before, 2);
        assert_eq!(g.dropped.load(Ordering::Relaxed), 0);
    }
}
