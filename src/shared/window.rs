//! Windowed counters for rate limits (rpm, tpm) shared by every host.
//!
//! A window is `window_secs` long and numbered from Redis's own clock (`TIME`), so every host puts
//! a request in the same window whatever its clock says. One counter per (subject, limit,
//! window): `{prefix}rate:{subject}:{limit}:{window_id}`, expiring two windows after its first
//! count, so nothing accumulates.
//!
//! API (one round trip each):
//! - [`Shared::window_add`]`(subject, limit, window, amount, max)`: adds `amount` to the current
//!   window's count unless that would pass `max` (`max == 0`: no ceiling, always add). Returns a
//!   [`Count`]: whether it was added, the total after, the window id and the seconds until the
//!   window ends (a `Retry-After` for a refusal).
//! - [`Shared::window_adjust`]`(subject, limit, window, window_id, delta)`: settles a count in a
//!   given window (e.g. tpm: reserve an estimate, then add `real - estimate`, negative allowed),
//!   returning the new total.

use super::{Shared, Unavailable};
use std::sync::LazyLock;
use std::time::Duration;

/// KEYS[1] = counter key stem; ARGV = window secs, amount, max.
/// -> {added 0/1, total, window id, seconds left}.
static ADD: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        "local now = tonumber(redis.call('TIME')[1])
local win = tonumber(ARGV[1])
local add = tonumber(ARGV[2])
local max = tonumber(ARGV[3])
local id = math.floor(now / win)
local k = KEYS[1] .. ':' .. id
local left = (id + 1) * win - now
local cur = tonumber(redis.call('GET', k) or '0')
if max > 0 and cur + add > max then return {0, cur, id, left} end
local n = redis.call('INCRBY', k, add)
if redis.call('TTL', k) < 0 then redis.call('EXPIRE', k, win * 2) end
return {1, n, id, left}",
    )
});

/// KEYS[1] = counter key stem; ARGV = window secs, window id, delta. -> total.
static ADJUST: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        "local k = KEYS[1] .. ':' .. ARGV[2]
local n = redis.call('INCRBY', k, tonumber(ARGV[3]))
if redis.call('TTL', k) < 0 then redis.call('EXPIRE', k, tonumber(ARGV[1]) * 2) end
return n",
    )
});

/// The answer of [`Shared::window_add`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Count {
    /// False: adding would have passed `max`; nothing was added.
    pub added: bool,
    /// The window's count after this call.
    pub total: i64,
    /// The window's number (Redis time / window length), for `window_adjust`.
    pub window_id: i64,
    /// Time until this window ends.
    pub left: Duration,
}

impl Shared {
    fn window_key(&self, subject: &str, limit: &str) -> String {
        self.key(&format!("rate:{subject}:{limit}"))
    }

    /// Check-and-add in the current window; see the module docs.
    pub async fn window_add(
        &self,
        subject: &str,
        limit: &str,
        window: Duration,
        amount: u64,
        max: u64,
    ) -> Result<Count, Unavailable> {
        let mut inv = ADD.key(self.window_key(subject, limit));
        inv.arg(window.as_secs().max(1)).arg(amount).arg(max);
        let (added, total, window_id, left): (i64, i64, i64, u64) = self.call(&inv).await?;
        Ok(Count {
            added: added == 1,
            total,
            window_id,
            left: Duration::from_secs(left),
        })
    }

    /// Adds `delta` (may be negative) to window `window_id`'s count; returns the new total.
    pub async fn window_adjust(
        &self,
        subject: &str,
        limit: &str,
        window: Duration,
        window_id: i64,
        delta: i64,
    ) -> Result<i64, Unavailable> {
        let mut inv = ADJUST.key(self.window_key(subject, limit));
        inv.arg(window.as_secs().max(1)).arg(window_id).arg(delta);
        self.call(&inv).await
    }
}
