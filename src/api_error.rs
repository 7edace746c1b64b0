//! Gateway errors and their bodies in the caller's dialect.
//!
//! Errors carry a kind; `ApiError::status` and `ApiError::body` are the one place that turns them
//! into a status code and a JSON body, OpenAI-shaped or Anthropic-shaped. Whether to retry is not
//! decided here: the worker decides on the provider's raw status (`proxy::retryable`), the front
//! on whether a worker sent headers at all (`forward::obtain`), before any kind exists.

use http::StatusCode;

/// Which API family the client speaks; decides the error body shape and SSE ping format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    OpenAi,
    Anthropic,
}

impl Dialect {
    /// Anthropic for `/v1/messages*`, OpenAI for everything else.
    pub fn for_path(path: &str) -> Self {
        if path == "/v1/messages" || path.starts_with("/v1/messages/") {
            Self::Anthropic
        } else {
            Self::OpenAi
        }
    }
}

/// What went wrong; each kind has one status code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// 400: malformed JSON, no `model`, a request this gateway cannot serve.
    BadRequest,
    /// 401: missing or wrong token.
    Unauthorized,
    /// 404: unknown model or path.
    NotFound,
    /// 403: a cross-site `Origin` (see `admission`).
    Forbidden,
    /// 405: known path, wrong method.
    MethodNotAllowed,
    /// 408: the request body went silent for longer than `body_read_timeout`.
    RequestTimeout,
    /// 413: body over `max_body_bytes`.
    PayloadTooLarge,
    /// 421: Host not allowed.
    MisdirectedRequest,
    /// 429: a client's concurrency limit exceeded after waiting.
    RateLimited,
    /// 502: the upstream failed.
    BadGateway,
    /// 503: no worker (or provider slot) had room in time, or the queue is full.
    Unavailable,
    /// 504: the upstream timed out.
    GatewayTimeout,
    /// 500: a bug or an internal failure.
    Internal,
}

impl ErrorKind {
    pub fn status(self) -> StatusCode {
        match self {
            Self::BadRequest => StatusCode::BAD_REQUEST,
            Self::Unauthorized => StatusCode::UNAUTHORIZED,
            Self::NotFound => StatusCode::NOT_FOUND,
            Self::Forbidden => StatusCode::FORBIDDEN,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::RequestTimeout => StatusCode::REQUEST_TIMEOUT,
            Self::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Self::MisdirectedRequest => StatusCode::MISDIRECTED_REQUEST,
            Self::RateLimited => StatusCode::TOO_MANY_REQUESTS,
            Self::BadGateway => StatusCode::BAD_GATEWAY,
            Self::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            Self::GatewayTimeout => StatusCode::GATEWAY_TIMEOUT,
            Self::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// OpenAI `error.type` and `error.code`.
    fn openai_type_code(self) -> (&'static str, &'static str) {
        match self {
            Self::BadRequest => ("invalid_request_error", "invalid_request"),
            Self::Unauthorized => ("authentication_error", "invalid_api_key"),
            Self::NotFound => ("invalid_request_error", "not_found"),
            Self::Forbidden => ("permission_error", "origin_not_allowed"),
            Self::MethodNotAllowed => ("invalid_request_error", "method_not_allowed"),
            Self::RequestTimeout => ("invalid_request_error", "request_timeout"),
            Self::PayloadTooLarge => ("invalid_request_error", "request_too_large"),
            Self::MisdirectedRequest => ("invalid_request_error", "host_not_allowed"),
            Self::RateLimited => ("rate_limit_error", "rate_limit_exceeded"),
            Self::BadGateway => ("api_error", "upstream_error"),
            Self::Unavailable => ("api_error", "service_unavailable"),
            Self::GatewayTimeout => ("api_error", "upstream_timeout"),
            Self::Internal => ("api_error", "internal_error"),
        }
    }

    /// Anthropic `error.type`.
    fn anthropic_type(self) -> &'static str {
        match self {
            Self::BadRequest
            | Self::MethodNotAllowed
            | Self::MisdirectedRequest
            | Self::RequestTimeout => "invalid_request_error",
            Self::Unauthorized => "authentication_error",
            Self::Forbidden => "permission_error",
            Self::NotFound => "not_found_error",
            Self::PayloadTooLarge => "request_too_large",
            Self::RateLimited => "rate_limit_error",
            Self::Unavailable => "overloaded_error",
            Self::GatewayTimeout => "timeout_error",
            Self::BadGateway | Self::Internal => "api_error",
        }
    }

    /// The inverse of `status` for a status this gateway itself produces (a worker's answer
    /// relayed by the front); any other status is a bad gateway.
    pub fn from_status(status: u16) -> Self {
        const ALL: [ErrorKind; 13] = [
            ErrorKind::BadRequest,
            ErrorKind::Unauthorized,
            ErrorKind::Forbidden,
            ErrorKind::NotFound,
            ErrorKind::MethodNotAllowed,
            ErrorKind::RequestTimeout,
            ErrorKind::PayloadTooLarge,
            ErrorKind::MisdirectedRequest,
            ErrorKind::RateLimited,
            ErrorKind::BadGateway,
            ErrorKind::Unavailable,
            ErrorKind::GatewayTimeout,
            ErrorKind::Internal,
        ];
        ALL.into_iter()
            .find(|k| k.status() == status)
            .unwrap_or(Self::BadGateway)
    }

    /// The kind to report for an upstream's error status whose body we cannot pass through.
    pub fn from_upstream_status(status: u16) -> Self {
        match status {
            429 => Self::RateLimited,
            503 | 529 => Self::Unavailable,
            504 => Self::GatewayTimeout,
            _ => Self::BadGateway,
        }
    }
}

/// An error to send to a client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{kind:?}: {message}")]
pub struct ApiError {
    pub kind: ErrorKind,
    pub message: String,
    /// Seconds for a `Retry-After` header, for 429 and 503.
    pub retry_after: Option<u64>,
}

impl ApiError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
            retry_after: None,
        }
    }

    pub fn with_retry_after(mut self, secs: u64) -> Self {
        self.retry_after = Some(secs);
        self
    }

    pub fn status(&self) -> StatusCode {
        self.kind.status()
    }

    /// The JSON body in `dialect`.
    pub fn body(&self, dialect: Dialect) -> String {
        let v = match dialect {
            Dialect::OpenAi => {
                let (ty, code) = self.kind.openai_type_code();
                serde_json::json!({"error": {"message": self.message, "type": ty, "code": code}})
            }
            Dialect::Anthropic => serde_json::json!({
                "type": "error",
                "error": {"type": self.kind.anthropic_type(), "message": self.message}
            }),
        };
        v.to_string()
    }

    /// A complete `http::Response` with JSON content type and `Retry-After` when set.
    pub fn to_response<B: From<String>>(&self, dialect: Dialect) -> http::Response<B> {
        let mut b = http::Response::builder()
            .status(self.status())
            .header(http::header::CONTENT_TYPE, "application/json");
        if let Some(s) = self.retry_after {
            b = b.header(http::header::RETRY_AFTER, s.to_string());
        }
        b.body(B::from(self.body(dialect)))
            .expect("static response parts are valid")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_in_both_dialects() {
        let e = ApiError::new(ErrorKind::NotFound, "model `x` not found");
        let o: serde_json::Value = serde_json::from_str(&e.body(Dialect::OpenAi)).unwrap();
        assert_eq!(o["error"]["message"], "model `x` not found");
        assert_eq!(o["error"]["type"], "invalid_request_error");
        assert_eq!(o["error"]["code"], "not_found");
        let a: serde_json::Value = serde_json::from_str(&e.body(Dialect::Anthropic)).unwrap();
        assert_eq!(a["type"], "error");
        assert_eq!(a["error"]["type"], "not_found_error");
        assert_eq!(e.status(), StatusCode::NOT_FOUND);
    }

    #[test]
    fn from_status_inverts_status() {
        for s in [400, 401, 404, 405, 413, 421, 429, 500, 502, 503, 504] {
            assert_eq!(ErrorKind::from_status(s).status(), s);
        }
        assert_eq!(ErrorKind::from_status(418), ErrorKind::BadGateway);
    }

    #[test]
    fn upstream_statuses() {
        assert_eq!(ErrorKind::from_upstream_status(429), ErrorKind::RateLimited);
        assert_eq!(ErrorKind::from_upstream_status(529), ErrorKind::Unavailable);
        assert_eq!(
            ErrorKind::from_upstream_status(504),
            ErrorKind::GatewayTimeout
        );
        assert_eq!(ErrorKind::from_upstream_status(500), ErrorKind::BadGateway);
    }

    #[test]
    fn dialect_by_path() {
        assert_eq!(Dialect::for_path("/v1/messages"), Dialect::Anthropic);
        assert_eq!(
            Dialect::for_path("/v1/messages/count_tokens"),
            Dialect::Anthropic
        );
        assert_eq!(Dialect::for_path("/v1/chat/completions"), Dialect::OpenAi);
        assert_eq!(Dialect::for_path("/v1/messagesx"), Dialect::OpenAi);
    }

    #[test]
    fn retry_after_header() {
        let r: http::Response<String> = ApiError::new(ErrorKind::Unavailable, "busy")
            .with_retry_after(3)
            .to_response(Dialect::OpenAi);
        assert_eq!(r.status(), 503);
        assert_eq!(r.headers()["retry-after"], "3");
    }
}
