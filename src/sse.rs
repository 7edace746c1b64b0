//! Server-sent-event frames the gateway itself emits: keep-alive pings while a streaming request
//! waits for a slot, and the error event that ends a stream which broke, so that a broken stream
//! never looks complete to the client.

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
}
