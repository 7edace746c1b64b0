//! Server-sent events, the one SSE module of the relay layer: reading them incrementally
//! (`parse`, re-exported here), the frames the gateway itself emits (keep-alive pings while a
//! streaming request waits for a slot, and the error event that ends a stream which broke, so
//! that a broken stream never looks complete to the client), and `LastEvent`, which tells a relay
//! whether a stream it passes on already ended with such an event, so that it does not add a
//! second one.

pub mod parse;

pub use parse::{frame, Event, Parser, SseError};

use crate::api_error::{ApiError, Dialect};

/// A keep-alive frame: an SSE comment for OpenAI clients, a `ping` event for Anthropic ones.
pub fn ping(dialect: Dialect) -> &'static [u8] {
    match dialect {
        Dialect::OpenAi => b": ping\n\n",
        Dialect::Anthropic => b"event: ping\ndata: {\"type\": \"ping\"}\n\n",
    }
}

/// The frame that reports `err` inside an already-started stream. OpenAI SDKs raise on a `data:`
/// object with an `error` member; Anthropic SDKs raise on `event: error`.
pub fn error_event(dialect: Dialect, err: &ApiError) -> String {
    error_frame(dialect, &err.body(dialect))
}

/// The error frame around an error body that is already JSON in `dialect` (a provider's own
/// error, passed through).
pub fn error_frame(dialect: Dialect, json: &str) -> String {
    match dialect {
        Dialect::OpenAi => format!("data: {json}\n\n"),
        Dialect::Anthropic => format!("event: error\ndata: {json}\n\n"),
    }
}

/// Follows the events of a stream passed through chunk by chunk, remembering only whether the
/// last complete event is an error event (`error_frame`: an `event: error` line first, or a
/// first `data:` line holding an object with an `error` member) with nothing after it. Constant
/// memory: it keeps the first bytes of the current event's first line and a few flags.
#[derive(Debug, Default)]
pub struct LastEvent {
    /// The first bytes of the current event's first line.
    head: [u8; 16],
    head_len: usize,
    /// Still in the current event's first line.
    first_line: bool,
    /// Bytes seen in the current line (`\r` aside).
    line_bytes: bool,
    /// The current event has some content.
    started: bool,
    /// The last complete event was an error event.
    last_was_error: bool,
}

impl LastEvent {
    pub fn new() -> Self {
        Self {
            first_line: true,
            ..Self::default()
        }
    }

    pub fn observe(&mut self, chunk: &[u8]) {
        for &b in chunk {
            match b {
                b'\r' => {}
                b'\n' if !self.line_bytes => {
                    // An empty line ends the event (if there was one).
                    if self.started {
                        self.last_was_error = self.head_is_error();
                    }
                    self.started = false;
                    self.first_line = true;
                    self.head_len = 0;
                }
                b'\n' => {
                    self.line_bytes = false;
                    self.first_line = false;
                }
                _ => {
                    self.started = true;
                    self.line_bytes = true;
                    if self.first_line && self.head_len < self.head.len() {
                        self.head[self.head_len] = b;
                        self.head_len += 1;
                    }
                }
            }
        }
    }

    fn head_is_error(&self) -> bool {
        let h = &self.head[..self.head_len];
        h.starts_with(b"event: error") || h.starts_with(b"data: {\"error\"")
    }

    /// The stream so far ends with a complete error event.
    pub fn ended_with_error(&self) -> bool {
        self.last_was_error && !self.started
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api_error::ErrorKind;

    #[test]
    fn frames() {
        assert_eq!(ping(Dialect::OpenAi), b": ping\n\n");
        let e = ApiError::new(ErrorKind::BadGateway, "upstream reset");
        let a = error_event(Dialect::Anthropic, &e);
        assert!(a.starts_with("event: error\ndata: {"));
        assert!(a.ends_with("\n\n"));
        let o = error_event(Dialect::OpenAi, &e);
        assert!(o.starts_with("data: {\"error\""));
    }

    #[test]
    fn last_event_sees_an_error_event_at_the_end_across_chunk_cuts() {
        let e = ApiError::new(ErrorKind::BadGateway, "upstream reset");
        for dialect in [Dialect::OpenAi, Dialect::Anthropic] {
            let stream = format!(
                "data: {{\"choices\":[]}}\n\nevent: ping\ndata: {{}}\n\n{}",
                error_event(dialect, &e)
            );
            let b = stream.as_bytes();
            // Every cut into two chunks gives the same answer.
            for cut in 0..=b.len() {
                let mut t = LastEvent::new();
                t.observe(&b[..cut]);
                t.observe(&b[cut..]);
                assert!(t.ended_with_error(), "{dialect:?} cut at {cut}");
            }
            let mut t = LastEvent::new();
            t.observe(b);
            t.observe(b"data: {\"choices\":[]}\n\n");
            assert!(!t.ended_with_error(), "an event after the error");
            let mut t = LastEvent::new();
            t.observe(b);
            t.observe(b"data: {\"cho");
            assert!(!t.ended_with_error(), "a partial event after the error");
        }
        let mut t = LastEvent::new();
        t.observe(b"data: {\"choices\":[]}\r\n\r\n");
        assert!(!t.ended_with_error());
        t.observe(b"data: {\"error\":{\"message\":\"x\"}}");
        assert!(!t.ended_with_error(), "not complete yet");
        t.observe(b"\r\n\r\n");
        assert!(t.ended_with_error());
        let mut t = LastEvent::new();
        t.observe(b"data: {\"text\":\"event: error\"}\n\n");
        assert!(!t.ended_with_error(), "only the first line's start counts");
    }
}
