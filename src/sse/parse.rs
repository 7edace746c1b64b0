//! Server-sent events read incrementally, and written back: the one SSE codec of the relay layer.
//!
//! `Parser` follows the WHATWG event-stream rules as the SDKs' own parsers do: lines end in LF,
//! CRLF or a lone CR (a CR at the end of one chunk and an LF at the start of the next are one line
//! end); `:` lines are comments; `field: value` loses one leading space; several `data:` lines join
//! with `\n`; a blank line dispatches the event; an event with no data is not dispatched; a UTF-8
//! byte-order mark at the very start is skipped. It keeps only the current line and the current
//! event, both bounded by `max_event_bytes`, so memory does not grow with the length of a stream,
//! and a peer that never ends a line gets an error instead of our memory.
//!
//! Bytes are gathered per line before decoding, so a multi-byte character split across chunks is
//! decoded whole; invalid UTF-8 is replaced (U+FFFD), as browsers and the SDKs do.

use std::fmt;

/// One dispatched event.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Event {
    /// The `event:` field; empty means the default type, `message`.
    pub event: String,
    /// The `data:` lines joined with `\n`.
    pub data: String,
    /// The last `id:` seen in this event, if any.
    pub id: Option<String>,
    /// A `retry:` field made of digits only.
    pub retry: Option<u64>,
}

/// What the parser refuses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SseError {
    /// A line or an event grew past the bound without ending.
    TooLarge { limit: usize },
}

impl fmt::Display for SseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::TooLarge { limit } => {
                write!(f, "server-sent event larger than {limit} bytes")
            }
        }
    }
}

impl std::error::Error for SseError {}

/// Incremental event-stream parser; see the module docs.
#[derive(Debug)]
pub struct Parser {
    /// Bytes of the line not yet ended.
    line: Vec<u8>,
    /// The event being built.
    pending: Event,
    /// True once a `data:` line was seen for `pending` (an empty `data:` still counts).
    has_data: bool,
    /// The previous chunk ended in CR: an LF first in the next one belongs to it.
    after_cr: bool,
    /// Nothing has been read yet (a byte-order mark may come).
    at_start: bool,
    max_event_bytes: usize,
}

impl Parser {
    /// A parser whose lines and events may not exceed `max_event_bytes`.
    pub fn new(max_event_bytes: usize) -> Self {
        Self {
            line: Vec::new(),
            pending: Event::default(),
            has_data: false,
            after_cr: false,
            at_start: true,
            max_event_bytes,
        }
    }

    /// Feeds one chunk; every event it completes is pushed to `out`, in order.
    pub fn feed(&mut self, mut chunk: &[u8], out: &mut Vec<Event>) -> Result<(), SseError> {
        if chunk.is_empty() {
            // Keeps `after_cr`: an empty chunk between a CR and its LF changes nothing.
            return Ok(());
        }
        if self.at_start {
            if let Some(rest) = self.skip_bom(chunk) {
                chunk = rest;
            } else {
                return Ok(());
            }
        }
        if self.after_cr && chunk.first() == Some(&b'\n') {
            chunk = &chunk[1..];
        }
        self.after_cr = false;
        while let Some(i) = memchr::memchr2(b'\n', b'\r', chunk) {
            if self.line.is_empty() {
                // The whole line is in this chunk (the common case): read in place, no copy.
                self.check_size(i)?;
                self.end_line(&chunk[..i], out);
            } else {
                self.extend_line(&chunk[..i])?;
                let line = std::mem::take(&mut self.line);
                self.end_line(&line, out);
                // Its buffer is kept for the next line split across chunks.
                self.line = line;
                self.line.clear();
            }
            let cr = chunk[i] == b'\r';
            chunk = &chunk[i + 1..];
            if cr {
                match chunk.first() {
                    Some(b'\n') => chunk = &chunk[1..],
                    None => self.after_cr = true,
                    Some(_) => {}
                }
            }
        }
        self.extend_line(chunk)
    }

    /// True when the stream so far ended exactly between events: nothing is half-read. A stream
    /// that stops while this is false was cut off in the middle of an event.
    pub fn is_between_events(&self) -> bool {
        self.line.is_empty() && !self.has_data && self.pending.event.is_empty()
    }

    /// Handles a possible UTF-8 BOM at the start; returns the rest of the chunk, or `None` while
    /// the chunk is a strict prefix of the BOM (kept in `line` until it is decided).
    fn skip_bom<'a>(&mut self, chunk: &'a [u8]) -> Option<&'a [u8]> {
        const BOM: &[u8] = b"\xEF\xBB\xBF";
        let have = self.line.len();
        let need = BOM.len() - have;
        let take = need.min(chunk.len());
        if BOM[have..have + take] != chunk[..take] {
            // Not a BOM after all: whatever was held back is ordinary line content.
            self.at_start = false;
            return Some(chunk);
        }
        if take < need {
            self.line.extend_from_slice(&chunk[..take]);
            return None;
        }
        self.line.clear();
        self.at_start = false;
        Some(&chunk[take..])
    }

    /// `more` bytes added to the line held and the event's data stay within the bound.
    fn check_size(&self, more: usize) -> Result<(), SseError> {
        if self.line.len() + self.pending.data.len() + more > self.max_event_bytes {
            return Err(SseError::TooLarge {
                limit: self.max_event_bytes,
            });
        }
        Ok(())
    }

    fn extend_line(&mut self, bytes: &[u8]) -> Result<(), SseError> {
        self.check_size(bytes.len())?;
        self.line.extend_from_slice(bytes);
        Ok(())
    }

    /// One whole line (without its end).
    fn end_line(&mut self, line: &[u8], out: &mut Vec<Event>) {
        self.at_start = false;
        if line.is_empty() {
            if self.has_data {
                out.push(std::mem::take(&mut self.pending));
            } else {
                self.pending = Event::default();
            }
            self.has_data = false;
            return;
        }
        // Borrowed when the line is valid UTF-8 (always, from a sane server); `from_utf8` checks
        // that much faster than the lossy decoder, which only runs on invalid bytes.
        let line = match std::str::from_utf8(line) {
            Ok(s) => std::borrow::Cow::Borrowed(s),
            Err(_) => String::from_utf8_lossy(line),
        };
        if line.starts_with(':') {
            return;
        }
        let (field, value) = match line.split_once(':') {
            Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
            None => (&*line, ""),
        };
        match field {
            "event" => self.pending.event = value.to_string(),
            "data" => {
                if self.has_data {
                    self.pending.data.push('\n');
                }
                self.pending.data.push_str(value);
                self.has_data = true;
            }
            "id" if !value.contains('\0') => self.pending.id = Some(value.to_string()),
            "retry" if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) => {
                self.pending.retry = value.parse().ok();
            }
            _ => {}
        }
    }
}

/// Writes one event as a frame: an `event:` line when it has a type, one `data:` line per line of
/// `data`, and the blank line that dispatches it.
pub fn frame(event: &str, data: &str) -> String {
    let mut s = String::with_capacity(event.len() + data.len() + 16);
    if !event.is_empty() {
        s.push_str("event: ");
        s.push_str(event);
        s.push('\n');
    }
    for line in data.split('\n') {
        s.push_str("data: ");
        s.push_str(line);
        s.push('\n');
    }
    s.push('\n');
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_all(chunks: &[&[u8]]) -> Vec<Event> {
        let mut p = Parser::new(1 << 20);
        let mut out = Vec::new();
        for c in chunks {
            p.feed(c, &mut out).unwrap();
        }
        out
    }

    fn ev(event: &str, data: &str) -> Event {
        Event {
            event: event.into(),
            data: data.into(),
            ..Default::default()
        }
    }

    #[test]
    fn events_comments_and_multi_line_data() {
        let got = parse_all(&[
            b": ping\n\nevent: message_start\ndata: {\"a\":1}\n\ndata: one\ndata: two\n\n",
        ]);
        assert_eq!(
            got,
            vec![ev("message_start", "{\"a\":1}"), ev("", "one\ntwo")]
        );
    }

    #[test]
    fn line_ends_lf_crlf_and_lone_cr_even_across_chunks() {
        let want = vec![ev("", "a"), ev("", "b"), ev("", "c")];
        assert_eq!(parse_all(&[b"data: a\r\n\r\ndata: b\r\rdata: c\n\n"]), want);
        // CR ends one chunk, LF starts the next: one line end, not two (two would dispatch early,
        // which is harmless here, so check with a multi-line event where it is not).
        let got = parse_all(&[b"data: x\r", b"", b"\ndata: y\r", b"\n\r", b"\n"]);
        assert_eq!(got, vec![ev("", "x\ny")]);
    }

    #[test]
    fn field_rules() {
        let got = parse_all(&[b"data:no-space\nid: 7\nretry: 1500\nretry: x\nbogus: 1\ndata\n\n"]);
        assert_eq!(
            got,
            vec![Event {
                event: String::new(),
                data: "no-space\n".into(),
                id: Some("7".into()),
                retry: Some(1500),
            }]
        );
        // An event type with no data is not dispatched, and does not leak into the next event.
        assert_eq!(
            parse_all(&[b"event: ping\n\ndata: d\n\n"]),
            vec![ev("", "d")]
        );
    }

    #[test]
    fn bom_is_skipped_only_at_the_start_even_split() {
        assert_eq!(
            parse_all(&[b"\xEF\xBB", b"\xBFdata: a\n\n"]),
            vec![ev("", "a")]
        );
        // Two bytes of a BOM and then something else: they were line content (a field nobody
        // knows), and what follows is parsed as usual.
        assert_eq!(
            parse_all(&[b"\xEF\xBB", b"X: 1\ndata: a\n\n"]),
            vec![ev("", "a")]
        );
    }

    #[test]
    fn utf8_split_across_chunks_is_decoded_whole() {
        let s = "data: h\u{e9}llo \u{1F600}\n\n".as_bytes();
        for cut in 0..s.len() {
            assert_eq!(
                parse_all(&[&s[..cut], &s[cut..]]),
                vec![ev("", "h\u{e9}llo \u{1F600}")]
            );
        }
    }

    #[test]
    fn a_line_that_never_ends_is_refused() {
        let mut p = Parser::new(64);
        let mut out = Vec::new();
        let e = p.feed(&[b'x'; 100], &mut out).unwrap_err();
        assert_eq!(e, SseError::TooLarge { limit: 64 });
        let mut p = Parser::new(64);
        for _ in 0..10 {
            if p.feed(b"data: 0123456789\n", &mut out).is_err() {
                return;
            }
        }
        panic!("an event growing line by line must hit the bound too");
    }

    #[test]
    fn knows_when_it_is_cut_mid_event() {
        let mut p = Parser::new(1024);
        let mut out = Vec::new();
        assert!(p.is_between_events());
        p.feed(b"data: {\"partial\"", &mut out).unwrap();
        assert!(!p.is_between_events());
        p.feed(b"}\n", &mut out).unwrap();
        assert!(!p.is_between_events(), "data read but not dispatched");
        p.feed(b"\n", &mut out).unwrap();
        assert!(p.is_between_events());
        assert_eq!(out.len(), 1);
    }

    #[test]
    fn frame_round_trips() {
        let f = frame("content_block_delta", "{\"x\":1}\nsecond");
        assert_eq!(
            f,
            "event: content_block_delta\ndata: {\"x\":1}\ndata: second\n\n"
        );
        assert_eq!(
            parse_all(&[f.as_bytes()]),
            vec![ev("content_block_delta", "{\"x\":1}\nsecond")]
        );
        assert_eq!(frame("", "[DONE]"), "data: [DONE]\n\n");
    }

    /// Property: any split of a valid stream into chunks yields the same events.
    #[test]
    fn any_split_gives_the_same_events() {
        let stream: &[u8] = b"\xEF\xBB\xBF: hi\r\nevent: a\r\ndata: 1\r\n\r\ndata: {\"t\":\"\xC3\xA9\"}\n\nid: 3\ndata: x\rdata: y\r\r: c\nevent: done\ndata: [DONE]\n\n";
        let want = parse_all(&[stream]);
        assert_eq!(want.len(), 4);
        let mut rng = fastrand::Rng::with_seed(0x55e);
        for _ in 0..2000 {
            let mut chunks = Vec::new();
            let mut rest = stream;
            while !rest.is_empty() {
                let n = rng.usize(1..=rest.len().min(7));
                chunks.push(&rest[..n]);
                rest = &rest[n..];
            }
            assert_eq!(parse_all(&chunks), want, "split {chunks:?}");
        }
    }
}
