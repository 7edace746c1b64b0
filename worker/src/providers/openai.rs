//! The `openai` kind: any OpenAI-compatible API. Paths are appended to `base_url` (which ends in
//! `/v1`), and the key goes in `Authorization: Bearer`.

use http::header::AUTHORIZATION;
use http::{HeaderName, HeaderValue};

/// `Authorization: Bearer KEY`, marked sensitive; `None` if the key is not a valid header value.
pub fn auth_header(key: &str) -> Option<(HeaderName, HeaderValue)> {
    let mut v = HeaderValue::try_from(format!("Bearer {key}")).ok()?;
    v.set_sensitive(true);
    Some((AUTHORIZATION, v))
}
