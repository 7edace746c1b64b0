//! What the worker puts on its request span (`gateway::telemetry`): the answer's provider,
//! model and tokens (from the usage observer, when the answer has ended), and the status and
//! attempts (from the handler, once the response head exists).

use crate::metrics::Outcome;
use gateway::telemetry::Facts;
use gateway::usage::Tokens;

/// The answer ended with `outcome`: its provider, served model and tokens; a broken or idle
/// stream makes the span an error.
pub fn answered(
    f: &Facts,
    provider: &str,
    model: &str,
    tokens: &Tokens,
    outcome: Outcome,
    translated: bool,
) {
    f.provider(provider);
    f.response_model(model);
    f.tokens(tokens.input, tokens.output);
    if translated {
        f.translated("translated");
    }
    match outcome {
        Outcome::StreamError => f.error("the provider's stream broke"),
        Outcome::Timeout => f.error("the provider's stream went idle"),
        _ => {}
    }
}

/// The response head went out with `status` after `attempts` provider attempts.
pub fn headers_sent(f: &Facts, status: u16, attempts: u32) {
    f.status(status);
    if attempts > 0 {
        f.attempts(attempts);
    }
}
