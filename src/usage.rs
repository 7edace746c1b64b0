//! One request's usage record: its fields, its wire format between a worker and the supervisor
//! (one message of a Unix `SOCK_SEQPACKET` connection per record), and its cost from a
//! provider's `prices`.
//!
//! The message is a tag byte and the record in `postcard`'s compact serde format. It was one
//! JSON object; decoding that cost the front about 11,000 instructions per request, a tenth of
//! all it spends on one (`bench/path_instr.sh`). A message that starts with `{` is still read as
//! JSON: a worker adopted across an in-place upgrade runs the older binary until it is replaced.
//!
//! A record is sent as one message when the request finishes; a message the kernel accepted is
//! queued at the supervisor's end of the connection, readable even if the worker is SIGKILLed
//! right after.

use crate::config::Price;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The variable naming the supervisor's usage socket, set for every worker it spawns.
pub const SOCKET_ENV: &str = "GATEWAY_USAGE_SOCKET";
/// The variable carrying a worker's slot id, for the record's `worker` field.
pub const WORKER_ID_ENV: &str = "GATEWAY_WORKER_ID";
/// Longest string field kept in a record (a model name is the caller's text).
pub const MAX_FIELD: usize = 256;
/// A message larger than this is not a record (the receiver's buffer size).
pub const MAX_MESSAGE: usize = 8 << 10;

/// Token counts, the Anthropic way: `input` excludes cache reads and writes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tokens {
    pub input: u64,
    pub output: u64,
    pub cache_read: u64,
    pub cache_write: u64,
}

/// How a request's response ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// The whole response reached the client.
    Ok,
    /// The upstream stream broke.
    StreamError,
    /// The upstream went silent past `idle_timeout`.
    Timeout,
    /// The client went away before the end.
    Cancelled,
    /// The answer was an error (status 400 or more), the provider's or the gateway's.
    Error,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::StreamError => "stream_error",
            Self::Timeout => "timeout",
            Self::Cancelled => "cancelled",
            Self::Error => "error",
        }
    }
}

/// One finished request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// Unix time in milliseconds when the request arrived at the worker.
    pub ts_ms: i64,
    pub request_id: String,
    /// The `[[clients]]` name, or "" for the server token or an open gateway.
    pub client: String,
    pub model_asked: String,
    pub model_served: String,
    pub provider: String,
    /// The worker's slot id; `None` for a worker the supervisor did not start.
    pub worker: Option<u32>,
    pub tokens: Tokens,
    /// USD; `None` when the provider has no price for the served model.
    pub cost_usd: Option<f64>,
    pub status: u16,
    pub outcome: Outcome,
    pub duration_ms: u64,
    /// Time to the first response byte; `None` when none came.
    pub ttfb_ms: Option<u64>,
    pub streamed: bool,
    pub translated: bool,
    /// `FROM->TO` (e.g. `messages->chat`) when translated: the access line's label when the
    /// response head could not carry it (a stream that waited with pings).
    #[serde(default)]
    pub translation: Option<String>,
    /// Records this worker could not send since its last sent one (a full socket buffer).
    #[serde(default)]
    pub dropped_before: u64,
}

/// The first byte of a record in the current format.
const POSTCARD: u8 = 1;

/// Why a message is not a record.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("{0}")]
    Postcard(#[from] postcard::Error),
    #[error("{0}")]
    Json(#[from] serde_json::Error),
    #[error("{0} bytes after the record")]
    Trailing(usize),
    #[error("unknown format (first byte {0:#04x})")]
    Format(u8),
    #[error("empty message")]
    Empty,
}

impl Record {
    /// The message: the format's tag, then the record.
    pub fn encode(&self) -> Vec<u8> {
        postcard::to_extend(self, vec![POSTCARD]).expect("a record serializes")
    }

    pub fn decode(message: &[u8]) -> Result<Self, DecodeError> {
        match message.split_first() {
            Some((&POSTCARD, rest)) => match postcard::take_from_bytes(rest)? {
                (r, []) => Ok(r),
                (_, more) => Err(DecodeError::Trailing(more.len())),
            },
            Some((b'{', _)) => Ok(serde_json::from_slice(message)?),
            Some((&b, _)) => Err(DecodeError::Format(b)),
            None => Err(DecodeError::Empty),
        }
    }
}

/// A non-blocking, close-on-exec `SOCK_SEQPACKET` Unix socket: the channel's kind, the same for
/// the supervisor's listening end and each worker's connection.
pub fn seqpacket_socket() -> nix::Result<std::os::fd::OwnedFd> {
    use nix::sys::socket::{socket, AddressFamily, SockFlag, SockType};
    socket(
        AddressFamily::Unix,
        SockType::SeqPacket,
        SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
        None,
    )
}

/// `s` cut to at most `MAX_FIELD` bytes on a character boundary.
pub fn bounded(s: &str) -> String {
    if s.len() <= MAX_FIELD {
        return s.to_string();
    }
    let mut end = MAX_FIELD;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_string()
}

/// The cost of `t` at `model`'s rates in `prices` (USD per million tokens); `None` when the
/// model has no price, so an unknown cost is never counted as $0. Cache rates left out are
/// charged at the input rate.
pub fn cost(prices: &BTreeMap<String, Price>, model: &str, t: &Tokens) -> Option<f64> {
    let p = prices.get(model)?;
    let per = |n: u64, rate: f64| n as f64 * rate / 1_000_000.0;
    Some(
        per(t.input, p.input)
            + per(t.output, p.output)
            + per(t.cache_read, p.cache_read.unwrap_or(p.input))
            + per(t.cache_write, p.cache_write.unwrap_or(p.input)),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> Record {
        Record {
            ts_ms: 1_700_000_000_000,
            request_id: "r1".into(),
            client: "desk".into(),
            model_asked: "fast".into(),
            model_served: "m".into(),
            provider: "p".into(),
            worker: Some(2),
            tokens: Tokens {
                input: 10,
                output: 20,
                cache_read: 3,
                cache_write: 4,
            },
            cost_usd: Some(0.5),
            status: 200,
            outcome: Outcome::StreamError,
            duration_ms: 12,
            ttfb_ms: None,
            streamed: true,
            translated: false,
            translation: None,
            dropped_before: 1,
        }
    }

    #[test]
    fn record_round_trips_through_its_message() {
        let r = record();
        let d = r.encode();
        assert!(d.len() < MAX_MESSAGE);
        assert_eq!(Record::decode(&d).unwrap(), r);
        let with_translation = Record {
            translation: Some("messages->chat".into()),
            ..record()
        };
        let d = with_translation.encode();
        assert_eq!(Record::decode(&d).unwrap(), with_translation);
        assert!(Record::decode(&d[..d.len() - 1]).is_err(), "cut");
        assert!(Record::decode(&[d.as_slice(), b"x"].concat()).is_err());
        assert!(Record::decode(b"").is_err());
        assert!(Record::decode(b"\x07abc").is_err());
        assert!(Record::decode(b"{\"ts_ms\":1}").is_err());
        // An older worker's JSON record (one adopted across an upgrade) is still read.
        let json = serde_json::to_vec(&r).unwrap();
        assert_eq!(Record::decode(&json).unwrap(), r);
    }

    #[test]
    fn cost_uses_each_rate_and_absent_prices_give_none() {
        let mut prices = BTreeMap::new();
        prices.insert(
            "m".to_string(),
            Price {
                input: 1.0,
                output: 2.0,
                cache_read: Some(0.5),
                cache_write: None,
            },
        );
        let t = Tokens {
            input: 1_000_000,
            output: 500_000,
            cache_read: 2_000_000,
            cache_write: 1_000_000,
        };
        // 1 + 1 + 1 (cache reads at 0.5) + 1 (cache writes at the input rate)
        assert_eq!(cost(&prices, "m", &t), Some(4.0));
        assert_eq!(cost(&prices, "other", &t), None);
    }

    #[test]
    fn long_fields_are_cut_on_a_char_boundary() {
        let s = "é".repeat(200);
        let b = bounded(&s);
        assert!(b.len() <= MAX_FIELD && s.starts_with(&b));
        assert_eq!(bounded("short"), "short");
    }
}
