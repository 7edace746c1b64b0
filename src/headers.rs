//! Header hygiene on the way to and from a provider: hop-by-hop stripping (including the names
//! a `Connection` header lists), which of a client's headers may go upstream, which of a
//! provider's may come back, and the redaction of a provider's key from anything sent back.
//!
//! The response side is an allow-list, not a deny-list: a provider is treated as hostile, and
//! any header it invents (or one that echoes the request) stays behind. What passes is what the
//! official SDKs read: rate-limit and retry advice, request ids, and the content headers.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use std::borrow::Cow;
use std::time::{Duration, SystemTime};

/// What replaces a provider's key wherever it shows up.
pub const REDACTED: &str = "[redacted]";

static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static X_API_KEY: HeaderName = HeaderName::from_static("x-api-key");

/// Removes the hop-by-hop headers of RFC 9110 7.6.1 (and the legacy `Keep-Alive` and every
/// `Proxy-*` header: they are for a proxy on this hop), plus every header the `Connection`
/// header names. `Host` is the caller's business (it stays on a request).
pub fn strip_hop_by_hop(h: &mut HeaderMap) {
    let listed = connection_listed(h);
    remove_where(h, |k| hop_by_hop(k) || listed.contains(k));
}

/// Hop-by-hop by its name alone.
fn hop_by_hop(k: &HeaderName) -> bool {
    *k == header::CONNECTION
        || *k == KEEP_ALIVE
        || *k == header::TE
        || *k == header::TRAILER
        || *k == header::TRANSFER_ENCODING
        || *k == header::UPGRADE
        || k.as_str().starts_with("proxy-")
}

/// The names a `Connection` header lists (usually none: no allocation then).
fn connection_listed(h: &HeaderMap) -> Vec<HeaderName> {
    h.get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|s| s.split(','))
        .filter_map(|t| HeaderName::try_from(t.trim()).ok())
        .collect()
}

/// Removes the headers whose names `doomed` picks. One pass over the names, then a removal for
/// each found: most requests carry none or two of the dozen names the callers rule out, and a
/// removal is a hash lookup whether or not the name is there (16 of them per request were about
/// 2 % of a worker's instructions, `bench/path_instr.sh`).
fn remove_where(h: &mut HeaderMap, doomed: impl Fn(&HeaderName) -> bool) {
    let found: Vec<HeaderName> = h.keys().filter(|k| doomed(k)).cloned().collect();
    for name in found {
        h.remove(name);
    }
}

/// The client's headers as they may go to a provider: no hop-by-hop headers, no `Host` and
/// `Content-Length` (the client sets them from the URI and the possibly rewritten body), and
/// nothing of the client's identity: its token (`Authorization`, `x-api-key`; the provider's
/// key is set by the worker), its cookies, and where it came from (`Origin`, `Referer`).
pub fn upstream_request(src: &HeaderMap) -> HeaderMap {
    let mut out = src.clone();
    let listed = connection_listed(src);
    remove_where(&mut out, |k| {
        hop_by_hop(k)
            || listed.contains(k)
            || *k == header::HOST
            || *k == header::CONTENT_LENGTH
            || *k == header::AUTHORIZATION
            || *k == X_API_KEY
            || *k == header::COOKIE
            || *k == header::ORIGIN
            || *k == header::REFERER
            // The front's internal client name and body facts are for the worker, never for a
            // provider.
            || *k == CLIENT_HEADER
            || *k == PEEKED_HEADER
            // The trace is ours (`telemetry`): its ids and vendor state are not a provider's
            // business.
            || *k == crate::telemetry::TRACEPARENT
            || *k == crate::telemetry::TRACESTATE
    });
    out
}

/// Whether a provider's response header may reach the client. `Content-Length` and
/// `Content-Encoding` are decided by the caller (only a body passed on unchanged keeps them).
fn safe_response_header(name: &HeaderName) -> bool {
    let n = name.as_str();
    matches!(
        n,
        "content-type"
            | "cache-control"
            | "retry-after"
            | "retry-after-ms"
            | "x-should-retry"
            | "request-id"
            | "x-request-id"
    ) || [
        "x-ratelimit-",
        "anthropic-ratelimit-",
        "openai-",
        "anthropic-",
    ]
    .iter()
    .any(|p| n.starts_with(p))
}

/// The headers the front and its workers exchange over the private hop. A provider's response
/// never brings them (`client_response` passes only allow-listed names), and the front removes
/// any a caller sent.
///
/// Response header naming the provider whose answer this is (contract: every forwarded response).
pub const PROVIDER_HEADER: HeaderName = HeaderName::from_static("x-gateway-provider");
/// Response header with the provider attempts a request took; the front reads it for its access
/// log and does not pass it on.
pub const ATTEMPTS_HEADER: HeaderName = HeaderName::from_static("x-gateway-attempts");
/// Response header `FROM->TO` (`chat->messages`) on a translated answer; the front reads it for
/// its access log (`translated`) and does not pass it on.
pub const TRANSLATED_HEADER: HeaderName = HeaderName::from_static("x-gateway-translated");
/// Request header by which the front names the `[[clients]]` client to the worker; the worker
/// reads it only on the front's private socket, and it never goes upstream.
pub const CLIENT_HEADER: HeaderName = HeaderName::from_static("x-gateway-client");

/// Request header by which the front hands the worker what it read from the body
/// (`gateway::request::RequestHead::to_header`), so the worker does not parse the body again;
/// read only on the front's private socket, never sent upstream.
pub const PEEKED_HEADER: HeaderName = HeaderName::from_static("x-gateway-peeked");

/// Where a provider's own `x-request-id` goes: `x-request-id` is the gateway's id for the
/// request (the one in its access log), so the provider's, which its support asks for, is kept
/// under this name instead of competing with it.
pub const UPSTREAM_REQUEST_ID: HeaderName = HeaderName::from_static("x-upstream-request-id");

/// Response headers the worker adds to a provider's answer on its way to the client.
const ADDED_RESPONSE_HEADERS: usize = 3;

/// A provider's response headers as the client may see them: only the allow-listed names
/// (`safe_response_header`), every value with the provider's key redacted, and the content
/// length and encoding only when `body_unchanged` (the body is passed on byte for byte). The
/// provider's `x-request-id` comes back as [`UPSTREAM_REQUEST_ID`].
pub fn client_response(src: &HeaderMap, secret: &Secret, body_unchanged: bool) -> HeaderMap {
    // Room for what the worker adds afterwards (`x-gateway-provider`, `x-gateway-attempts`,
    // `x-gateway-translated`): filled past its capacity, a `HeaderMap` reallocates and rehashes,
    // which was 1,200 instructions of every forwarded response (`bench/path_instr.sh`). No more
    // than that: room for 8 counted the same (69,957 against 70,010 instructions a request)
    // with a map twice the size, over 1 KB. CORS headers (a browser's request) may still grow
    // it.
    let mut out = HeaderMap::with_capacity(src.len() + ADDED_RESPONSE_HEADERS);
    for (name, value) in src {
        let content = name == header::CONTENT_LENGTH || name == header::CONTENT_ENCODING;
        if (content && !body_unchanged) || (!content && !safe_response_header(name)) {
            continue;
        }
        let name = if name.as_str() == "x-request-id" {
            UPSTREAM_REQUEST_ID
        } else {
            name.clone()
        };
        out.append(name, secret.redact_value(value));
    }
    out
}

/// A `Retry-After` value as a wait from `now`: delta seconds, or an HTTP date (RFC 9110
/// 10.2.3: IMF-fixdate, or the obsolete RFC 850 and asctime forms); a date already past is a
/// zero wait. `None` when absent or unreadable. Callers cap it (`routing.max_cooldown`).
pub fn retry_after(h: &HeaderMap, now: SystemTime) -> Option<Duration> {
    let v = h.get(header::RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = httpdate::parse_http_date(v).ok()?;
    Some(at.duration_since(now).unwrap_or_default())
}

/// A provider's key, kept to find it in what the provider sends back. Its `Debug` never shows
/// it.
#[derive(Clone, Default)]
pub struct Secret(Option<Box<[u8]>>);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() {
            "Secret(set)"
        } else {
            "Secret(none)"
        })
    }
}

impl Secret {
    /// `None` or an empty key: nothing to redact.
    pub fn new(key: Option<&str>) -> Self {
        Self(key.filter(|k| !k.is_empty()).map(|k| k.as_bytes().into()))
    }

    pub fn is_set(&self) -> bool {
        self.0.is_some()
    }

    /// `bytes` with every occurrence of the key replaced by `[redacted]`; borrowed when there is
    /// none. With `truncated` (the bytes are the head of a longer body), a tail that could be
    /// the start of the key goes too, so that a cut never leaves part of it behind.
    pub fn redact<'a>(&self, bytes: &'a [u8], truncated: bool) -> Cow<'a, [u8]> {
        let Some(key) = self.0.as_deref() else {
            return Cow::Borrowed(bytes);
        };
        let mut out: Option<Vec<u8>> = None;
        let mut rest = 0;
        let mut i = 0;
        while i + key.len() <= bytes.len() {
            if &bytes[i..i + key.len()] == key {
                let o = out.get_or_insert_with(|| Vec::with_capacity(bytes.len()));
                o.extend_from_slice(&bytes[rest..i]);
                o.extend_from_slice(REDACTED.as_bytes());
                i += key.len();
                rest = i;
            } else {
                i += 1;
            }
        }
        let mut end = bytes.len();
        if truncated {
            // The longest tail (after the last replacement) that is a proper prefix of the key.
            let tail = &bytes[rest..];
            if let Some(n) = (1..key.len().min(tail.len() + 1))
                .rev()
                .find(|n| tail.ends_with(&key[..*n]))
            {
                end -= n;
            }
        }
        match out {
            None if end == bytes.len() => Cow::Borrowed(bytes),
            None => Cow::Owned(bytes[..end].to_vec()),
            Some(mut o) => {
                o.extend_from_slice(&bytes[rest..end.max(rest)]);
                Cow::Owned(o)
            }
        }
    }

    /// `value` with the key redacted (the same value when it holds none).
    pub fn redact_value(&self, value: &HeaderValue) -> HeaderValue {
        match self.redact(value.as_bytes(), false) {
            Cow::Borrowed(_) => value.clone(),
            // The replacement is printable ASCII put in place of bytes that were valid.
            Cow::Owned(v) => {
                HeaderValue::from_bytes(&v).unwrap_or_else(|_| HeaderValue::from_static(REDACTED))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(HeaderName::from_static(k), v.parse().unwrap());
        }
        h
    }

    fn names(h: &HeaderMap) -> Vec<&str> {
        let mut n: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        n.sort();
        n
    }

    #[test]
    fn hop_by_hop_headers_and_connection_listed_ones_go() {
        let mut h = map(&[
            ("connection", "keep-alive, X-Drop-Me"),
            ("x-drop-me", "1"),
            ("keep-alive", "timeout=5"),
            ("proxy-connection", "keep-alive"),
            ("proxy-authorization", "Basic x"),
            ("proxy-authenticate", "Basic"),
            ("proxy-anything", "1"),
            ("transfer-encoding", "chunked"),
            ("te", "trailers"),
            ("trailer", "x-t"),
            ("upgrade", "h2c"),
            ("host", "h"),
            ("x-keep", "1"),
        ]);
        strip_hop_by_hop(&mut h);
        assert_eq!(names(&h), ["host", "x-keep"]);
    }

    #[test]
    fn the_clients_identity_never_goes_upstream() {
        let h = map(&[
            ("authorization", "Bearer client-secret"),
            ("x-api-key", "client-secret"),
            ("cookie", "session=1"),
            ("origin", "http://127.0.0.1:3000"),
            ("referer", "http://127.0.0.1:3000/page"),
            ("connection", "x-drop-me"),
            ("x-drop-me", "1"),
            ("host", "127.0.0.1:8080"),
            ("content-length", "10"),
            ("x-gateway-client", "desk"),
            ("x-gateway-peeked", "0m"),
            (
                "traceparent",
                "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            ),
            ("tracestate", "v=1"),
            ("te", "trailers"),
            ("x-request-id", "req-1"),
            ("anthropic-version", "2024-01-01"),
            ("content-type", "application/json"),
        ]);
        let out = upstream_request(&h);
        assert_eq!(
            names(&out),
            ["anthropic-version", "content-type", "x-request-id"]
        );
    }

    /// The worker's labels fit in the map `client_response` built: adding them never grows it.
    #[test]
    fn the_workers_labels_fit_without_growing_the_map() {
        for src in [
            map(&[
                ("content-type", "application/json"),
                ("content-length", "9"),
            ]),
            map(&[("content-type", "text/event-stream")]),
            map(&[]),
        ] {
            let mut out = client_response(&src, &Secret::new(None), true);
            let cap = out.capacity();
            for name in [
                "x-gateway-provider",
                "x-gateway-attempts",
                "x-gateway-translated",
            ] {
                out.insert(HeaderName::from_static(name), "1".parse().unwrap());
            }
            assert_eq!(out.capacity(), cap, "{:?}", names(&out));
        }
    }

    #[test]
    fn only_safe_response_headers_come_back_with_the_key_redacted() {
        let key = Secret::new(Some("sk-live-123"));
        let h = map(&[
            ("content-type", "application/json"),
            ("content-length", "42"),
            ("content-encoding", "gzip"),
            ("retry-after", "7"),
            ("x-ratelimit-remaining-requests", "9"),
            ("anthropic-ratelimit-tokens-reset", "soon"),
            ("openai-processing-ms", "12"),
            ("x-request-id", "up-1"),
            ("request-id", "up-2"),
            ("anthropic-echo", "Bearer sk-live-123"),
            ("x-echo-key", "sk-live-123"),
            ("set-cookie", "a=b"),
            ("www-authenticate", "Bearer sk-live-123"),
            ("server", "evil"),
        ]);
        let passed = client_response(&h, &key, true);
        assert_eq!(
            names(&passed),
            [
                "anthropic-echo",
                "anthropic-ratelimit-tokens-reset",
                "content-encoding",
                "content-length",
                "content-type",
                "openai-processing-ms",
                "request-id",
                "retry-after",
                "x-ratelimit-remaining-requests",
                "x-upstream-request-id",
            ]
        );
        assert_eq!(passed["x-upstream-request-id"], "up-1");
        assert_eq!(passed["anthropic-echo"], "Bearer [redacted]");
        let rebuilt = client_response(&h, &key, false);
        assert!(!rebuilt.contains_key("content-length"));
        assert!(!rebuilt.contains_key("content-encoding"));
    }

    #[test]
    fn retry_after_reads_seconds_and_http_dates() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let ra = |v: &str| retry_after(&map(&[("retry-after", v)]), now);
        assert_eq!(ra("7"), Some(Duration::from_secs(7)));
        assert_eq!(ra(" 999999 "), Some(Duration::from_secs(999_999)));
        let later = httpdate::fmt_http_date(now + Duration::from_secs(30));
        assert_eq!(ra(&later), Some(Duration::from_secs(30)));
        let past = httpdate::fmt_http_date(now - Duration::from_secs(30));
        assert_eq!(ra(&past), Some(Duration::ZERO), "a past date: no wait");
        // 1_700_000_000 is Tue, 14 Nov 2023 22:13:20 GMT; the obsolete forms are read too.
        assert_eq!(
            ra("Tuesday, 14-Nov-23 22:13:50 GMT"),
            Some(Duration::from_secs(30))
        );
        assert_eq!(ra("soon"), None);
        assert_eq!(ra("-5"), None);
        assert_eq!(retry_after(&HeaderMap::new(), now), None);
    }

    #[test]
    fn redaction_replaces_every_occurrence_and_cut_prefixes() {
        let key = Secret::new(Some("sk-abc"));
        let r = |b: &str, t: bool| String::from_utf8(key.redact(b.as_bytes(), t).into_owned());
        assert_eq!(r("no key here", false).unwrap(), "no key here");
        assert!(matches!(key.redact(b"clean", false), Cow::Borrowed(_)));
        assert_eq!(
            r(
                "{\"k\":\"sk-abc\",\"again\":\"Bearer sk-abcsk-abc\"}",
                false
            )
            .unwrap(),
            "{\"k\":\"[redacted]\",\"again\":\"Bearer [redacted][redacted]\"}"
        );
        assert_eq!(
            r("ssk-ab", false).unwrap(),
            "ssk-ab",
            "whole bodies keep tails"
        );
        assert_eq!(r("x sk-ab", true).unwrap(), "x ", "a cut key goes entirely");
        assert_eq!(r("x sk-abc s", true).unwrap(), "x [redacted] ");
        assert_eq!(r("x sk-abc", true).unwrap(), "x [redacted]");
        let none = Secret::new(Some(""));
        assert!(!none.is_set());
        assert_eq!(&*none.redact(b"sk-abc", true), b"sk-abc");
        assert_eq!(format!("{key:?}"), "Secret(set)");
    }
}
