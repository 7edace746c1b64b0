//! The inference endpoints: the paths the front forwards with a JSON body, which dialect each
//! one speaks, which API name (`[[providers]] apis`) serves it, and its GenAI operation. One
//! list for the front's routes, the worker's handlers and the trace spans.

use crate::Dialect;

/// One inference endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    ChatCompletions,
    Completions,
    Embeddings,
    Responses,
    Messages,
    CountTokens,
}

impl Endpoint {
    /// Every endpoint, in declaration order (`self as usize` indexes it).
    pub const ALL: [Endpoint; 6] = [
        Self::ChatCompletions,
        Self::Completions,
        Self::Embeddings,
        Self::Responses,
        Self::Messages,
        Self::CountTokens,
    ];

    /// The endpoint served at `path`, if any.
    pub fn from_path(path: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|e| e.path() == path)
    }

    /// Its path on the front and on a worker.
    pub fn path(self) -> &'static str {
        match self {
            Self::ChatCompletions => "/v1/chat/completions",
            Self::Completions => "/v1/completions",
            Self::Embeddings => "/v1/embeddings",
            Self::Responses => "/v1/responses",
            Self::Messages => "/v1/messages",
            Self::CountTokens => "/v1/messages/count_tokens",
        }
    }

    pub fn dialect(self) -> Dialect {
        match self {
            Self::Messages | Self::CountTokens => Dialect::Anthropic,
            _ => Dialect::OpenAi,
        }
    }

    /// The `[[providers]] apis` name that serves this endpoint natively (`count_tokens` belongs
    /// to the Messages API).
    pub fn api_name(self) -> &'static str {
        match self {
            Self::ChatCompletions => "chat",
            Self::Completions => "completions",
            Self::Embeddings => "embeddings",
            Self::Responses => "responses",
            Self::Messages | Self::CountTokens => "messages",
        }
    }

    /// Its `gen_ai.operation.name` (the GenAI semantic conventions' well-known values).
    pub fn operation(self) -> &'static str {
        match self {
            Self::ChatCompletions | Self::Responses | Self::Messages => "chat",
            Self::Completions => "text_completion",
            Self::Embeddings => "embeddings",
            Self::CountTokens => "count_tokens",
        }
    }

    /// The path below the provider's API root: an OpenAI `base_url` already ends in `/v1`,
    /// an Anthropic one is the bare host.
    pub fn upstream_suffix(self) -> &'static str {
        match self {
            Self::ChatCompletions => "/chat/completions",
            Self::Completions => "/completions",
            Self::Embeddings => "/embeddings",
            Self::Responses => "/responses",
            Self::Messages => "/v1/messages",
            Self::CountTokens => "/v1/messages/count_tokens",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_path_maps_back_to_its_endpoint() {
        for e in Endpoint::ALL {
            assert_eq!(Endpoint::from_path(e.path()), Some(e));
            assert_eq!(Endpoint::ALL[e as usize], e);
        }
        assert_eq!(Endpoint::from_path("/v1/health"), None);
        assert_eq!(Endpoint::from_path("/v1/chat/completions/"), None);
    }
}
