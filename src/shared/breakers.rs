//! Breaker openings shared by every host.
//!
//! One task per host (the supervisor's, [`Shared::sync_breakers`]) ticks every [`TICK`] and,
//! in one script call:
//! - **publishes** each opening made on this host since the last tick (a breaker of the pool's
//!   provider table found OPEN in a generation this task has not seen):
//!   `SET {prefix}breaker:{provider} {host}:{generation}:{nonce} PX {rest of the open period}`;
//! - **reads** every configured provider's key with its remaining TTL.
//!
//! An opening it has not seen before, made elsewhere, is applied to the local pool state with
//! `HealthCell::transition(.., OPEN, ..)`, back-dated so it ends when the remote one does;
//! workers see it on their next selection (a load of the state word, no lock, no Redis on the
//! request path). The generation that transition makes is recorded as known, so an applied
//! opening is never published again as new: no feedback loop. Half-open and close stay per
//! host: each host probes and trials the provider itself when the open period ends, and a trial
//! that fails is a new opening, published as such.
//!
//! An opening is therefore out of rotation on every host within two ticks plus a round trip.

use super::{Shared, Unavailable};
use crate::provider_health::{HealthCell, MonoClock, OPEN};
use crate::provider_permits::ProviderTable;
use std::collections::HashMap;
use std::sync::atomic::Ordering::SeqCst;
use std::sync::{Arc, LazyLock};
use std::time::Duration;

/// How often the task publishes and reads.
pub const TICK: Duration = Duration::from_millis(250);

/// KEYS[i] = breaker key; ARGV[i] = token to publish ('' = none), ARGV[n + i] = its PX.
/// -> per key {token or '', pttl}.
static SYNC: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        "local n = #KEYS
local out = {}
for i, k in ipairs(KEYS) do
  if ARGV[i] ~= '' then redis.call('SET', k, ARGV[i], 'PX', tonumber(ARGV[n + i])) end
  local v = redis.call('GET', k)
  if v then out[i] = {v, redis.call('PTTL', k)} else out[i] = {'', 0} end
end
return out",
    )
});

/// What the task needs from the live configuration at each tick.
pub struct BreakerView {
    /// Names of the configured providers.
    pub providers: Vec<String>,
    /// `circuit_breaker.open_timeout`.
    pub open_timeout: Duration,
}

/// Owns the task; aborts it on drop.
pub struct BreakerTask(tokio::task::JoinHandle<()>);

impl Drop for BreakerTask {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Per provider: the last state generation this task knows about (published or applied) and
/// the last token it saw in Redis.
#[derive(Default)]
struct Known {
    generation: Option<u64>,
    token: String,
}

/// Called with (provider, state it left) for each opening applied from another host (the
/// supervisor turns it into a `provider` event).
pub type ApplyHook = Box<dyn Fn(&str, u8) + Send>;

/// The task's state, separate from the timer so that a test can drive ticks.
pub struct Sync {
    shared: Shared,
    table: Arc<ProviderTable>,
    clock: MonoClock,
    known: HashMap<String, Known>,
    on_apply: ApplyHook,
}

impl Shared {
    /// Starts this host's breaker task over `table` (the pool's `providers.shm`); `view` is
    /// read at every tick, so a reload's providers are followed.
    pub fn sync_breakers(
        &self,
        table: Arc<ProviderTable>,
        view: impl Fn() -> BreakerView + Send + 'static,
        on_apply: ApplyHook,
    ) -> BreakerTask {
        let mut sync = Sync::new(self.clone(), table);
        sync.on_apply = on_apply;
        BreakerTask(tokio::spawn(async move {
            let mut tick = tokio::time::interval(TICK);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let _ = sync.tick(&view()).await;
            }
        }))
    }
}

impl Sync {
    pub fn new(shared: Shared, table: Arc<ProviderTable>) -> Self {
        Self {
            shared,
            table,
            clock: MonoClock::new(),
            known: HashMap::new(),
            on_apply: Box::new(|_, _| {}),
        }
    }

    fn cell(&self, provider: &str) -> &HealthCell {
        &self.table.health().cols[ProviderTable::column(provider)]
    }

    /// One publish-and-read; returns how many remote openings it applied.
    pub async fn tick(&mut self, view: &BreakerView) -> Result<usize, Unavailable> {
        if view.providers.is_empty() {
            return Ok(0);
        }
        let timeout_ms = view.open_timeout.as_millis() as u64;
        let mut inv = SYNC.prepare_invoke();
        let mut ttls = Vec::with_capacity(view.providers.len());
        let mut published = Vec::with_capacity(view.providers.len());
        for p in &view.providers {
            inv.key(self.shared.key(&format!("breaker:{p}")));
            let cell = self.cell(p);
            let w = cell.load();
            let known = self.known.get(p).and_then(|k| k.generation);
            // At most the open period: the opening may be stamped a millisecond past this
            // clock's reading (another thread's), and PX never outlasts the period.
            let left = (cell.opened_at_ms.load(SeqCst) + timeout_ms)
                .saturating_sub(self.clock.now_ms())
                .min(timeout_ms);
            if w.state == OPEN && known != Some(w.generation) && left > 0 {
                let token = format!(
                    "{}:{}:{:08x}",
                    self.shared.host_id(),
                    w.generation,
                    fastrand::u32(..)
                );
                inv.arg(&token);
                ttls.push(left);
                published.push(Some((w.generation, token)));
            } else {
                inv.arg("");
                ttls.push(0);
                published.push(None);
            }
        }
        for t in &ttls {
            inv.arg(*t);
        }
        let answer: Vec<(String, i64)> = self.shared.call(&inv).await?;
        let mut applied = 0;
        for ((p, mine), (token, pttl)) in view.providers.iter().zip(published).zip(answer) {
            let mut k = self.known.remove(p).unwrap_or_default();
            if let Some((generation, t)) = mine {
                tracing::info!(provider = %p, "breaker opened here: published to the other hosts");
                k.generation = Some(generation);
                k.token = t;
            }
            if !token.is_empty() && token != k.token && pttl > 0 {
                k.token = token;
                if let Some(g) = self.apply(p, pttl as u64, timeout_ms) {
                    k.generation = Some(g);
                    applied += 1;
                }
            }
            self.known.insert(p.clone(), k);
        }
        Ok(applied)
    }

    /// Opens `provider`'s local breaker, unless it is open already, so that it stays open for
    /// `left_ms`. Returns the generation it made.
    fn apply(&self, provider: &str, left_ms: u64, timeout_ms: u64) -> Option<u64> {
        let cell = self.cell(provider);
        let w = cell.load();
        if w.state == OPEN {
            return None;
        }
        let now = self.clock.now_ms();
        let opened_at = now.saturating_sub(timeout_ms.saturating_sub(left_ms));
        let next = cell.transition(w, OPEN, opened_at)?;
        (self.on_apply)(provider, w.state);
        tracing::warn!(
            provider = %provider,
            open_for_ms = left_ms,
            "breaker opened on another host: provider out of rotation here too"
        );
        Some(next.generation)
    }
}
