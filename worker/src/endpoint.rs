//! The inference endpoints (`gateway::endpoint`, shared with the front and the trace spans) and,
//! here, the translatable API each one speaks.

use crate::translate::Api;
pub use gateway::endpoint::Endpoint;

/// An endpoint's translatable API, and back.
pub trait EndpointApi: Sized {
    /// The translatable API of this endpoint; `None` for the endpoints that are never
    /// translated (completions, embeddings, count_tokens).
    fn api(self) -> Option<Api>;
    /// The endpoint a provider serving `api` answers on.
    fn of_api(api: Api) -> Self;
}

impl EndpointApi for Endpoint {
    fn api(self) -> Option<Api> {
        match self {
            Self::ChatCompletions => Some(Api::Chat),
            Self::Messages => Some(Api::Messages),
            Self::Responses => Some(Api::Responses),
            _ => None,
        }
    }

    fn of_api(api: Api) -> Self {
        match api {
            Api::Chat => Self::ChatCompletions,
            Api::Messages => Self::Messages,
            Api::Responses => Self::Responses,
        }
    }
}
