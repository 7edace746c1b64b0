//! Concurrency leases in Redis: `max_concurrency` for every host together.
//!
//! A limited thing (a provider, a client) is one sorted set, `{prefix}lease:{name}`; each member
//! is one held lease (`{host}:{n}`), scored by its expiry in milliseconds of *Redis's* clock
//! (`TIME` inside the scripts), so hosts with skewed clocks agree. The scripts are atomic:
//! - reserve: drop expired members; if fewer than `limit` remain, add this one -> 1, else 0;
//! - renew: push the expiry of each of this host's members to now + `lease_ttl` (one call for
//!   all of them, every `lease_ttl / 3`, from the background task);
//! - release: ZREM, batched by the background task.
//!
//! A host that dies stops renewing and its members expire within `lease_ttl`; the next reserve
//! anywhere sweeps them. The set's own TTL is kept at least `lease_ttl`, so an idle set vanishes.

use super::{Shared, Unavailable};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{LazyLock, Mutex};

/// Redis time in ms, the key's TTL floor: shared by the scripts.
const NOW_MS: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local function keep(k, ttl)
  if redis.call('PTTL', k) < ttl then redis.call('PEXPIRE', k, ttl) end
end
";

/// KEYS[1] = set, ARGV = member, limit, ttl ms. -> 1 reserved, 0 full.
static RESERVE: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(&format!(
        "{NOW_MS}
local ttl = tonumber(ARGV[3])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[2]) then
  redis.call('ZADD', KEYS[1], now + ttl, ARGV[1])
  keep(KEYS[1], ttl)
  return 1
end
return 0"
    ))
});

/// KEYS[i] = set of ARGV[i + 1] = member, ARGV[1] = ttl ms. -> how many were still held.
static RENEW: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(&format!(
        "{NOW_MS}
local ttl = tonumber(ARGV[1])
local held = 0
for i, k in ipairs(KEYS) do
  if redis.call('ZADD', k, 'XX', 'CH', now + ttl, ARGV[i + 1]) == 1 then
    held = held + 1
    keep(k, ttl)
  end
end
return held"
    ))
});

/// KEYS[i] = set of ARGV[i] = member. -> how many were removed.
static RELEASE: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        "local n = 0
for i, k in ipairs(KEYS) do n = n + redis.call('ZREM', k, ARGV[i]) end
return n",
    )
});

/// This process's name in lease members: random, so a restarted process never renews a lease
/// of its predecessor.
static HOST: LazyLock<String> =
    LazyLock::new(|| format!("{:016x}-{}", fastrand::u64(..), std::process::id()));

/// This process's random name (lease members; budget contributions without a host id).
pub(crate) fn process_name() -> &'static str {
    &HOST
}

/// Released leases waiting for their ZREM beyond this are left to expire by TTL (bounded memory).
const MAX_PENDING: usize = 4096;

/// The leases this process holds (renewed) and has dropped (to ZREM).
/// Lease numbers, unique in this process (several `Shared` in one process never collide).
static NEXT: AtomicU64 = AtomicU64::new(0);

#[derive(Default)]
pub(crate) struct Registry {
    /// Locked only to insert, remove or copy out entries, never across an `.await`; a map is
    /// needed because leases are dropped in any order and renewed all together.
    state: Mutex<State>,
    wake: tokio::sync::Notify,
}

#[derive(Default)]
struct State {
    /// id -> (key, member).
    live: HashMap<u64, (String, String)>,
    pending: Vec<(String, String)>,
}

impl Registry {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) async fn released(&self) {
        self.wake.notified().await
    }
}

/// One held lease; released (in the background) on drop.
pub struct Lease {
    shared: Shared,
    id: u64,
}

impl std::fmt::Debug for Lease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Lease({})", self.id)
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        let reg = &self.shared.inner.leases;
        let mut st = reg.lock();
        if let Some(entry) = st.live.remove(&self.id) {
            if st.pending.len() < MAX_PENDING {
                st.pending.push(entry);
            }
            drop(st);
            reg.wake.notify_one();
        }
    }
}

impl Shared {
    /// Reserves one of `limit` leases on `name` (e.g. `provider:openai`): `Ok(Some)` held,
    /// `Ok(None)` all taken, `Err` Redis unavailable (apply `on_unavailable`). One round trip.
    pub async fn reserve(&self, name: &str, limit: u32) -> Result<Option<Lease>, Unavailable> {
        let key = self.key(&format!("lease:{name}"));
        let id = NEXT.fetch_add(1, Ordering::Relaxed);
        let member = format!("{}:{id}", *HOST);
        let ttl = self.inner.lease_ttl.as_millis() as u64;
        let mut inv = RESERVE.key(&key);
        inv.arg(&member).arg(limit).arg(ttl);
        // Registered before the call: if this future is dropped mid-call, the lease's drop
        // still removes whatever the script may have added.
        self.inner.leases.lock().live.insert(id, (key, member));
        let lease = Lease {
            shared: self.clone(),
            id,
        };
        let got: Result<i64, _> = self.call(&inv).await;
        if got == Ok(1) {
            return Ok(Some(lease));
        }
        // Not added: forget it without a ZREM.
        self.inner.leases.lock().live.remove(&id);
        got.map(|_| None)
    }

    /// Live leases of this process (tests, metrics).
    pub fn leases_held(&self) -> usize {
        self.inner.leases.lock().live.len()
    }

    /// Pushes every live lease's expiry forward, in one script call.
    pub(crate) async fn renew_all(&self) {
        let live: Vec<(String, String)> = self.inner.leases.lock().live.values().cloned().collect();
        if live.is_empty() {
            return;
        }
        let mut inv = RENEW.prepare_invoke();
        inv.arg(self.inner.lease_ttl.as_millis() as u64);
        for (k, m) in &live {
            inv.key(k).arg(m);
        }
        let _: Result<i64, _> = self.call(&inv).await;
    }

    /// ZREMs the dropped leases, in one script call.
    pub(crate) async fn release_pending(&self) {
        let pending = std::mem::take(&mut self.inner.leases.lock().pending);
        if pending.is_empty() {
            return;
        }
        let mut inv = RELEASE.prepare_invoke();
        for (k, m) in &pending {
            inv.key(k).arg(m);
        }
        // A failed release is not retried: the members expire within lease_ttl.
        let _: Result<i64, _> = self.call(&inv).await;
    }
}
