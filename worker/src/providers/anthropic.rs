//! The `anthropic` kind: the Messages API at `base_url + /v1/messages`, the key in `x-api-key`,
//! and `anthropic-version: 2023-06-01` unless the client chose a version itself.

use http::{HeaderMap, HeaderName, HeaderValue};

pub const DEFAULT_VERSION: &str = "2023-06-01";
static X_API_KEY: HeaderName = HeaderName::from_static("x-api-key");
static ANTHROPIC_VERSION: HeaderName = HeaderName::from_static("anthropic-version");

/// `x-api-key: KEY`, marked sensitive; `None` if the key is not a valid header value.
pub fn auth_header(key: &str) -> Option<(HeaderName, HeaderValue)> {
    let mut v = HeaderValue::try_from(key).ok()?;
    v.set_sensitive(true);
    Some((X_API_KEY.clone(), v))
}

/// Adds `anthropic-version` when the client sent none.
pub fn default_headers(headers: &mut HeaderMap) {
    if !headers.contains_key(&ANTHROPIC_VERSION) {
        headers.insert(
            ANTHROPIC_VERSION.clone(),
            HeaderValue::from_static(DEFAULT_VERSION),
        );
    }
}
