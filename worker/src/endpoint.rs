//! The inference endpoints the worker serves, which dialect each one speaks and which API name
//! (`[[providers]] apis`) serves it.

use crate::translate::Api;
use gateway::Dialect;

/// One inference endpoint (the paths the front forwards with a JSON body).
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
        Some(match path {
            "/v1/chat/completions" => Self::ChatCompletions,
            "/v1/completions" => Self::Completions,
            "/v1/embeddings" => Self::Embeddings,
            "/v1/responses" => Self::Responses,
            "/v1/messages" => Self::Messages,
            "/v1/messages/count_tokens" => Self::CountTokens,
            _ => return None,
        })
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

    /// The translatable API of this endpoint; `None` for the endpoints that are never
    /// translated (completions, embeddings, count_tokens).
    pub fn api(self) -> Option<Api> {
        match self {
            Self::ChatCompletions => Some(Api::Chat),
            Self::Messages => Some(Api::Messages),
            Self::Responses => Some(Api::Responses),
            _ => None,
        }
    }

    /// The endpoint a provider serving `api` answers on.
    pub fn of_api(api: Api) -> Self {
        match api {
            Api::Chat => Self::ChatCompletions,
            Api::Messages => Self::Messages,
            Api::Responses => Self::Responses,
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
