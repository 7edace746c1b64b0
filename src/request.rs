//! The one parser on the request path that both the front and the workers run: pulling `model`
//! and `stream` out of a JSON body without building a DOM. serde skips every other field without
//! allocating, and `model` borrows from the body unless it contains escapes.

use crate::api_error::{ApiError, ErrorKind};
use std::borrow::Cow;

/// The two fields routing needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestHead<'a> {
    pub model: Cow<'a, str>,
    pub stream: bool,
}

impl<'a> RequestHead<'a> {
    /// As the front's `x-gateway-peeked` header: `1` or `0` for `stream`, then the model. `None`
    /// when the model cannot be a header value (a control character); the worker then parses
    /// the body itself.
    pub fn to_header(&self) -> Option<http::HeaderValue> {
        let mut v = Vec::with_capacity(1 + self.model.len());
        v.push(if self.stream { b'1' } else { b'0' });
        v.extend_from_slice(self.model.as_bytes());
        // Takes the buffer as it is (validated, not copied).
        http::HeaderValue::from_maybe_shared(bytes::Bytes::from(v)).ok()
    }

    /// The head a `to_header` value carries; `None` for anything else.
    pub fn from_header(v: &'a http::HeaderValue) -> Option<Self> {
        let (stream, model) = v.as_bytes().split_first()?;
        let stream = match stream {
            b'1' => true,
            b'0' => false,
            _ => return None,
        };
        let model = std::str::from_utf8(model).ok().filter(|m| !m.is_empty())?;
        Some(Self {
            model: Cow::Borrowed(model),
            stream,
        })
    }
}

#[derive(serde::Deserialize)]
struct Peek<'a> {
    #[serde(borrow, default)]
    model: Option<Model<'a>>,
    #[serde(default)]
    stream: Option<bool>,
}

/// serde borrows a `Cow<str>` only when it is the field itself, not inside an `Option`; the
/// newtype restores the borrow (found by the `ordinary_bodies` test: the model was always copied).
#[derive(serde::Deserialize)]
struct Model<'a>(#[serde(borrow)] Cow<'a, str>);

/// Parses `body`: 400 for malformed JSON (including invalid UTF-8 anywhere, and a `stream` that
/// is not a boolean) or a missing or empty `model`.
pub fn peek(body: &[u8]) -> Result<RequestHead<'_>, ApiError> {
    let bad = |e: &dyn std::fmt::Display| {
        ApiError::new(ErrorKind::BadRequest, format!("malformed JSON body: {e}"))
    };
    // serde does not validate the UTF-8 of strings it skips, so a body with broken bytes inside
    // an ignored field would pass and be forwarded; JSON must be UTF-8 (RFC 8259), and checking
    // it up front costs a fraction of the parse (found by the mutation fuzz test below).
    let text = std::str::from_utf8(body).map_err(|e| bad(&e))?;
    let p: Peek = serde_json::from_str(text).map_err(|e| bad(&e))?;
    match p.model {
        Some(Model(model)) if !model.is_empty() => Ok(RequestHead {
            model,
            stream: p.stream.unwrap_or(false),
        }),
        _ => Err(ApiError::new(
            ErrorKind::BadRequest,
            "the request body has no `model`",
        )),
    }
}

#[cfg(test)]
mod tests {
    //! Randomized (fuzz-style) checks of `peek` against `serde_json::Value` as the oracle. The
    //! seeds are fixed so CI is reproducible; `GATEWAY_FUZZ_CASES` raises the case count for a
    //! longer local run.
    use super::*;
    use serde_json::{json, Value};

    #[test]
    fn the_peeked_header_round_trips() {
        for (model, stream) in [("demo", true), ("org/m:1 é", false)] {
            let h = RequestHead {
                model: Cow::Borrowed(model),
                stream,
            };
            let v = h.to_header().unwrap();
            assert_eq!(RequestHead::from_header(&v), Some(h));
        }
        let newline = RequestHead {
            model: Cow::Borrowed("a\nb"),
            stream: false,
        };
        assert_eq!(
            newline.to_header(),
            None,
            "the worker parses such a body itself"
        );
        for bad in ["", "1", "2demo", "true"] {
            let v = http::HeaderValue::from_static(bad);
            assert_eq!(RequestHead::from_header(&v), None, "{bad:?}");
        }
    }

    #[test]
    fn ordinary_bodies() {
        let h = peek(br#"{"model":"demo","stream":true,"messages":[]}"#).unwrap();
        assert_eq!((h.model.as_ref(), h.stream), ("demo", true));
        assert!(
            matches!(h.model, Cow::Borrowed(_)),
            "no allocation for a plain model name"
        );
        let h = peek(br#"{"messages":[{"model":"inner"}],"model":"a\u00e9b"}"#).unwrap();
        assert_eq!(h.model, "aéb");
        assert!(!h.stream);
        for bad in [
            &b""[..],
            b"{",
            b"[]",
            b"{\"model\":\"\"}",
            b"{\"model\":3}",
            b"{\"stream\":true}",
            b"{\"model\":\"m\",\"stream\":\"yes\"}",
            b"null",
            b"\xff\xfe",
        ] {
            let e = peek(bad).unwrap_err();
            assert_eq!(
                e.kind,
                ErrorKind::BadRequest,
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    fn cases() -> usize {
        std::env::var("GATEWAY_FUZZ_CASES")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(20_000)
    }

    fn random_string(rng: &mut fastrand::Rng) -> String {
        let alphabet = [
            'a',
            'Z',
            '0',
            ' ',
            '"',
            '\\',
            '/',
            '\n',
            'é',
            '\u{0}',
            '\u{1F600}',
            '{',
            '}',
        ];
        (0..rng.usize(0..12))
            .map(|_| alphabet[rng.usize(..alphabet.len())])
            .collect()
    }

    fn random_value(rng: &mut fastrand::Rng, depth: u32) -> Value {
        match rng.u8(0..if depth > 3 { 5 } else { 7 }) {
            0 => Value::Null,
            1 => Value::Bool(rng.bool()),
            2 => json!(rng.i64(..)),
            3 => json!(rng.f64() * 1e300),
            4 => Value::String(random_string(rng)),
            5 => Value::Array(
                (0..rng.usize(0..4))
                    .map(|_| random_value(rng, depth + 1))
                    .collect(),
            ),
            _ => Value::Object(
                (0..rng.usize(0..4))
                    .map(|_| (random_string(rng), random_value(rng, depth + 1)))
                    .collect(),
            ),
        }
    }

    /// The oracle: what `peek` must answer, computed through a full DOM.
    fn expected(body: &[u8]) -> Option<(String, bool)> {
        let v: Value = serde_json::from_slice(body).ok()?;
        let o = v.as_object()?;
        let model = o.get("model").map(|m| m.as_str().map(str::to_string));
        let stream = match o.get("stream") {
            None | Some(Value::Null) => Some(false),
            Some(Value::Bool(b)) => Some(*b),
            Some(_) => None,
        };
        match (model, stream) {
            (Some(Some(m)), Some(s)) if !m.is_empty() => Some((m, s)),
            _ => None,
        }
    }

    #[test]
    fn fuzz_structured_bodies_agree_with_the_dom() {
        let mut rng = fastrand::Rng::with_seed(0x5eed_0001);
        let mut accepted = 0;
        for i in 0..cases() {
            let mut obj = serde_json::Map::new();
            for _ in 0..rng.usize(0..5) {
                obj.insert(random_string(&mut rng), random_value(&mut rng, 0));
            }
            match rng.u8(0..4) {
                0 => {}
                1 => {
                    obj.insert("model".into(), Value::String(random_string(&mut rng)));
                }
                2 => {
                    obj.insert("model".into(), random_value(&mut rng, 2));
                }
                _ => {
                    obj.insert("model".into(), json!("demo"));
                    obj.insert("stream".into(), random_value(&mut rng, 3));
                }
            }
            let body = serde_json::to_vec(&Value::Object(obj)).unwrap();
            let got = peek(&body).ok().map(|h| (h.model.into_owned(), h.stream));
            let want = expected(&body);
            assert_eq!(got, want, "case {i}: {}", String::from_utf8_lossy(&body));
            accepted += usize::from(got.is_some());
        }
        assert!(
            accepted > cases() / 10,
            "the generator rarely produced a valid request"
        );
    }

    #[test]
    fn fuzz_mutated_bodies_never_panic_and_never_disagree() {
        let mut rng = fastrand::Rng::with_seed(0x5eed_0002);
        let base = br#"{"model":"gpt-4o","stream":true,"messages":[{"role":"user","content":"hi \"there\""}]}"#;
        for i in 0..cases() {
            let mut b = base.to_vec();
            for _ in 0..rng.usize(1..6) {
                let at = rng.usize(..b.len().max(1));
                match rng.u8(0..4) {
                    0 if !b.is_empty() => {
                        b.remove(at.min(b.len() - 1));
                    }
                    1 => b.insert(at.min(b.len()), rng.u8(..)),
                    2 if !b.is_empty() => {
                        let last = b.len() - 1;
                        b[at.min(last)] = rng.u8(..);
                    }
                    _ => b.truncate(at),
                }
            }
            let got = peek(&b).ok().map(|h| (h.model.into_owned(), h.stream));
            assert_eq!(
                got,
                expected(&b),
                "case {i}: {:?}",
                String::from_utf8_lossy(&b)
            );
        }
    }

    #[test]
    fn fuzz_raw_bytes_never_panic() {
        let mut rng = fastrand::Rng::with_seed(0x5eed_0003);
        for _ in 0..cases() {
            let b: Vec<u8> = (0..rng.usize(0..64)).map(|_| rng.u8(..)).collect();
            assert_eq!(peek(&b).is_ok(), expected(&b).is_some());
        }
    }
}
