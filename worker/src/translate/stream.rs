//! The incremental stream translator: provider SSE bytes -> `gateway::sse::parse` events ->
//! pivot `Event`s (a dialect's decoder) -> client SSE frames (a dialect's encoder), one upstream
//! event at a time; and the usage reader, which runs a decoder alone on a native stream.

use super::pivot::{Event, StreamError, Usage};
use super::{chat_stream, messages_stream, responses_stream, Api};
use gateway::sse::parse::{self, Parser};
use gateway::ErrorKind;
use std::borrow::Cow;

/// Decodes one provider dialect's events into pivot events.
pub(super) trait Decode: Send {
    /// One upstream event; pivot events are pushed to `out`.
    fn event(&mut self, ev: &parse::Event, out: &mut Vec<Event>) -> Result<(), StreamError>;
    /// The upstream ended cleanly (no more bytes): push the finish if the dialect allows an end
    /// here, else an error saying the stream was cut.
    fn end(&mut self, out: &mut Vec<Event>) -> Result<(), StreamError>;
    /// The tokens reported so far, before any finish (Anthropic's `message_start` gives the
    /// input at once): what a stream that breaks still counts. Dialects that report usage only
    /// at their end have none.
    fn usage_so_far(&self) -> Usage {
        Usage::default()
    }
}

/// Encodes pivot events as one client dialect's SSE frames.
pub(super) trait Encode: Send {
    fn event(&mut self, ev: &Event, out: &mut String) -> Result<(), StreamError>;
}

/// A string field of an upstream event, borrowed from the event's text when it has no escapes.
/// `#[serde(borrow)]` on an `Option<Cow<str>>` does not borrow (serde's `Cow` impl always copies;
/// only a field that is itself a `Cow` takes the borrowing path), so the `Cow` is wrapped: use
/// `Option<Str<'a>>` with `#[serde(borrow)]`.
#[derive(serde::Deserialize, Debug)]
pub(super) struct Str<'a>(#[serde(borrow)] pub Cow<'a, str>);

impl std::ops::Deref for Str<'_> {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

/// Appends one SSE frame (`event:` line when `event` is not empty) whose data is `v`, serialised
/// straight into `out`: no intermediate `Value` or `String`, so an encoder's common events (text
/// and argument deltas) cost one write each. Serialised JSON has no raw newline, so the data is
/// one `data:` line, as `gateway::sse::parse::frame` would write it.
pub(super) fn push_frame(out: &mut String, event: &str, v: &impl serde::Serialize) {
    if !event.is_empty() {
        out.push_str("event: ");
        out.push_str(event);
        out.push('\n');
    }
    out.push_str("data: ");
    append_json(out, v);
    out.push_str("\n\n");
}

/// Appends `s` as a JSON string, quoted and escaped by `serde_json`: the encoders write their
/// per-chunk frames (text and argument deltas) directly, static parts as they are and only the
/// text through the serialiser.
pub(super) fn push_json_str(out: &mut String, s: &str) {
    append_json(out, s);
}

/// Appends `n` in decimal (`serde_json`'s integer writer).
pub(super) fn push_u64(out: &mut String, n: u64) {
    append_json(out, &n);
}

/// Appends `v` as `serde_json` writes it, straight into `out`'s buffer: no intermediate
/// `String`, and only the appended bytes are checked as UTF-8 (not the frames already in `out`).
fn append_json<T: serde::Serialize + ?Sized>(out: &mut String, v: &T) {
    let mut buf = std::mem::take(out).into_bytes();
    let start = buf.len();
    serde_json::to_writer(&mut buf, v).expect("an event serializes");
    std::str::from_utf8(&buf[start..]).expect("serde_json writes UTF-8");
    // SAFETY: `buf[..start]` was a `String` and `buf[start..]` was just checked: two valid
    // UTF-8 sequences one after the other are valid UTF-8.
    *out = unsafe { String::from_utf8_unchecked(buf) };
}

pub(super) fn cut(message: impl Into<String>) -> StreamError {
    StreamError {
        kind: ErrorKind::BadGateway,
        message: message.into(),
    }
}

/// What a stream translation needs besides the bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamOptions {
    /// The model the client asked for (an alias stays an alias).
    pub model: String,
    /// A Chat Completions client asked for the usage-only chunk.
    pub include_usage: bool,
    /// Unix seconds for `created` / `created_at` (the caller's clock; this module has none).
    pub created: u64,
    /// The bound on one upstream SSE line or event (`gateway::sse::parse::Parser::new`).
    pub max_event_bytes: usize,
    /// Toward a Responses client only: the bound on the output text held for its `*.done` and
    /// `response.completed` events (see the module docs).
    pub max_output_bytes: usize,
}

impl StreamOptions {
    pub fn new(model: impl Into<String>) -> Self {
        Self {
            model: model.into(),
            include_usage: false,
            created: 0,
            max_event_bytes: 1 << 20,
            max_output_bytes: 16 << 20,
        }
    }
}

fn decoder(api: Api) -> Box<dyn Decode> {
    match api {
        Api::Chat => Box::<chat_stream::Decoder>::default(),
        Api::Messages => Box::<messages_stream::Decoder>::default(),
        Api::Responses => Box::<responses_stream::Decoder>::default(),
    }
}

fn encoder(api: Api, opts: &StreamOptions) -> Box<dyn Encode> {
    match api {
        Api::Chat => Box::new(chat_stream::Encoder::new(opts)),
        Api::Messages => Box::new(messages_stream::Encoder::new(opts)),
        Api::Responses => Box::new(responses_stream::Encoder::new(opts)),
    }
}

/// Translates one provider stream into one client stream; see the module docs. Feed it every
/// upstream chunk, then call `end` (clean upstream end) or `fail` (the upstream broke); each call
/// appends the client's frames to `out`. After the finish or one error, everything is ignored.
pub struct StreamTranslator {
    parser: Parser,
    decoder: Box<dyn Decode>,
    encoder: Box<dyn Encode>,
    /// Scratch buffers, reused for every chunk so a stream allocates them once.
    sse: Vec<parse::Event>,
    pivot: Vec<Event>,
    usage: Option<Usage>,
    done: bool,
}

impl StreamTranslator {
    /// A translator from a `provider` stream to a `client` stream.
    pub fn new(provider: Api, client: Api, opts: StreamOptions) -> Self {
        Self {
            parser: Parser::new(opts.max_event_bytes),
            decoder: decoder(provider),
            encoder: encoder(client, &opts),
            sse: Vec::new(),
            pivot: Vec::new(),
            usage: None,
            done: false,
        }
    }

    /// One chunk of upstream bytes.
    pub fn feed(&mut self, chunk: &[u8], out: &mut String) {
        if self.done {
            return;
        }
        self.sse.clear();
        if let Err(e) = self.parser.feed(chunk, &mut self.sse) {
            // The events completed before the bad one still go out first.
            let err = cut(format!("unreadable upstream stream: {e}"));
            self.drain_sse(out);
            return self.fail_with(err, out);
        }
        self.drain_sse(out);
    }

    fn drain_sse(&mut self, out: &mut String) {
        let events = std::mem::take(&mut self.sse);
        for ev in &events {
            if self.done {
                break;
            }
            self.pivot.clear();
            let r = self.decoder.event(ev, &mut self.pivot);
            self.emit(out);
            if let Err(e) = r {
                self.fail_with(e, out);
            }
        }
        self.sse = events;
    }

    fn emit(&mut self, out: &mut String) {
        let pivot = std::mem::take(&mut self.pivot);
        for ev in &pivot {
            if self.done {
                break;
            }
            if let Event::Finish { usage, .. } = ev {
                self.usage = Some(*usage);
            }
            match self.encoder.event(ev, out) {
                Ok(()) => self.done = matches!(ev, Event::Finish { .. } | Event::Error(_)),
                Err(e) => self.fail_with(e, out),
            }
        }
        self.pivot = pivot;
    }

    /// The upstream ended without a transport error. A stream that had not finished (cut in the
    /// middle of an event, or before the dialect's last event) ends with an error, never cleanly.
    pub fn end(&mut self, out: &mut String) {
        if self.done {
            return;
        }
        if !self.parser.is_between_events() {
            return self.fail_with(
                cut("the upstream stream was cut in the middle of an event"),
                out,
            );
        }
        self.pivot.clear();
        let r = self.decoder.end(&mut self.pivot);
        self.emit(out);
        if let Err(e) = r {
            self.fail_with(e, out);
        }
        if !self.done {
            self.fail_with(cut("the upstream stream ended before its finish"), out);
        }
    }

    /// The upstream broke (a reset, a timeout): one error event in the client's dialect.
    pub fn fail(&mut self, kind: ErrorKind, message: &str, out: &mut String) {
        self.fail_with(
            StreamError {
                kind,
                message: message.to_string(),
            },
            out,
        );
    }

    fn fail_with(&mut self, err: StreamError, out: &mut String) {
        if self.done {
            return;
        }
        self.done = true;
        // An encoder cannot fail on an error event; if it did there is nothing better to send.
        let _ = self.encoder.event(&Event::Error(err), out);
    }

    /// The usage of the finished stream (None until its finish arrived).
    pub fn usage(&self) -> Option<Usage> {
        self.usage
    }

    /// True after the finish or an error: nothing more will be written.
    pub fn is_done(&self) -> bool {
        self.done
    }

    /// For a stream that broke: the finish's usage if it came, else the tokens reported before
    /// the break (`UsageReader::usage_before_break`).
    pub fn usage_before_break(&self) -> Option<Usage> {
        self.usage.or_else(|| {
            let u = self.decoder.usage_so_far();
            (u != Usage::default()).then_some(u)
        })
    }
}

/// Reads the usage out of a native (untranslated) stream with the same decoders, for accounting.
pub struct UsageReader {
    parser: Parser,
    decoder: Box<dyn Decode>,
    sse: Vec<parse::Event>,
    pivot: Vec<Event>,
    usage: Option<Usage>,
}

impl UsageReader {
    pub fn new(api: Api, max_event_bytes: usize) -> Self {
        Self {
            parser: Parser::new(max_event_bytes),
            decoder: decoder(api),
            sse: Vec::new(),
            pivot: Vec::new(),
            usage: None,
        }
    }

    /// One chunk of the stream, as it passes through to the client.
    pub fn feed(&mut self, chunk: &[u8]) {
        self.sse.clear();
        if self.parser.feed(chunk, &mut self.sse).is_err() {
            return;
        }
        for ev in &self.sse {
            self.pivot.clear();
            let _ = self.decoder.event(ev, &mut self.pivot);
            for p in &self.pivot {
                if let Event::Finish { usage, .. } = p {
                    self.usage = Some(*usage);
                }
            }
        }
    }

    /// The stream ended: a Chat stream that gave its finish reason but no `[DONE]` still counts.
    pub fn end(&mut self) {
        self.pivot.clear();
        let _ = self.decoder.end(&mut self.pivot);
        for p in &self.pivot {
            if let Event::Finish { usage, .. } = p {
                self.usage = Some(*usage);
            }
        }
    }

    /// The stream's usage once its finish was seen. A Chat stream's finish comes at `[DONE]`
    /// (its usage-only chunk follows the finish reason).
    pub fn usage(&self) -> Option<Usage> {
        self.usage
    }

    /// A stream that broke: the finish's usage if it came, else the tokens reported before the
    /// break; `None` when nothing was reported.
    pub fn usage_before_break(&self) -> Option<Usage> {
        self.usage.or_else(|| {
            let u = self.decoder.usage_so_far();
            (u != Usage::default()).then_some(u)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::Str;
    use std::borrow::Cow;

    /// The direct writers give exactly what serde_json gives.
    #[test]
    fn json_appended_after_other_frames_matches_serde_json() {
        let mut rng = fastrand::Rng::with_seed(0x15);
        let alphabet: Vec<char> = "ab \"\\/\n\r\t\u{8}\u{c}\u{0}\u{1}\u{1f}\u{7f}\u{e9}\u{1F600}"
            .chars()
            .collect();
        for _ in 0..2000 {
            let s: String = (0..rng.usize(0..12))
                .map(|_| alphabet[rng.usize(..alphabet.len())])
                .collect();
            let mut out = String::from("x");
            super::push_json_str(&mut out, &s);
            assert_eq!(out[1..], serde_json::to_string(&s).unwrap(), "{s:?}");
            let n = rng.u64(..) >> rng.u32(0..64);
            let mut out = String::new();
            super::push_u64(&mut out, n);
            assert_eq!(out, n.to_string());
        }
    }

    /// What the typed decoders rely on: a string with no escapes is not copied.
    #[test]
    fn strings_without_escapes_are_borrowed() {
        #[derive(serde::Deserialize)]
        struct T<'a> {
            #[serde(borrow, default)]
            a: Option<Str<'a>>,
            #[serde(borrow, default)]
            b: Option<Str<'a>>,
            #[serde(borrow, default)]
            c: Option<Str<'a>>,
            #[serde(borrow, default)]
            plain: Option<Cow<'a, str>>,
        }
        let t: T = serde_json::from_str(r#"{"a":"plain","b":"esc\"aped","plain":"x"}"#).unwrap();
        assert!(matches!(t.a.unwrap().0, Cow::Borrowed("plain")));
        assert!(matches!(t.b.unwrap().0, Cow::Owned(s) if s == "esc\"aped"));
        assert!(t.c.is_none());
        // Why `Str` exists: the same attribute on a bare `Option<Cow>` copies.
        assert!(matches!(t.plain.unwrap(), Cow::Owned(_)));
    }
}
