//! `[shared]`: state that several hosts share through Redis or Valkey — concurrency leases
//! (`lease`) and windowed counters for rate limits (`window`).
//!
//! One `Shared` per process (worker or supervisor). Its connection is the `redis` crate's
//! connection manager, which reconnects by itself; on top of it sits a *circuit*:
//!
//! ```text
//!   UP --(a command fails or takes > COMMAND_TIMEOUT)--> DOWN   (one loud error line, up=0)
//!   UP --(the background PING, every PROBE_EVERY, fails)--> DOWN
//!   DOWN --(background PING answers, tried every PROBE_EVERY)--> UP   (one info line, up=1)
//! ```
//!
//! While DOWN no request talks to Redis at all: `Shared::call` answers `Unavailable` at once, and
//! the caller applies `on_unavailable`. So no request ever waits on a dead Redis for longer than
//! one `COMMAND_TIMEOUT`, and only the requests in flight at the moment it died wait that long.
//!
//! The background task (`Shared::start` returns its owner, `SharedTask`) also renews every live
//! lease of this process every `lease_ttl / 3` in one script call, and releases dropped leases in
//! batches, so dropping a lease never blocks or spawns.
//!
//! Every key starts with `key_prefix` and carries a TTL. The URL (which may hold the password) is
//! read from the environment only and never logged: errors name the variable, not its value.

pub mod breakers;
pub mod lease;
pub mod window;

use crate::config::{OnUnavailable, SharedBackend, SharedConfig};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tokio::sync::mpsc;

/// The longest a request waits for one Redis command.
pub const COMMAND_TIMEOUT: Duration = Duration::from_millis(200);
/// While down, how often the background task tries a PING.
pub const PROBE_EVERY: Duration = Duration::from_secs(1);
/// Settlements waiting for Redis; past this they are dropped (and counted): a host's day and
/// month totals are absolute, so the next settlement of that client makes up for them.
pub const SETTLE_QUEUE: usize = 8192;

/// Why `[shared]` could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("shared.backend = \"redis\" but ${0} is not set (shared.url_env names it)")]
    MissingUrl(String),
    #[error("${0} does not hold a usable Redis URL: {1}")]
    BadUrl(String, String),
}

/// A Redis answer that did not come: the circuit is open, the command failed or timed out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unavailable;

impl Unavailable {
    /// The answer to a request under `on_unavailable = "reject"`: 503 with `Retry-After`, in the
    /// caller's dialect (`ApiError::to_response`).
    pub fn to_api_error(self) -> crate::ApiError {
        crate::ApiError::new(
            crate::ErrorKind::Unavailable,
            "the shared backend (Redis) is unavailable and shared.on_unavailable = \"reject\"",
        )
        .with_retry_after(PROBE_EVERY.as_secs().max(1))
    }
}

/// `Unavailable.to_api_error()`.
pub fn unavailable_error() -> crate::ApiError {
    Unavailable.to_api_error()
}

/// A process's handle on the shared backend; cheap to clone.
#[derive(Clone)]
pub struct Shared {
    inner: Arc<Inner>,
}

struct Inner {
    conn: ConnectionManager,
    /// The circuit: false = no request talks to Redis until the background PING succeeds.
    up: AtomicBool,
    prefix: String,
    lease_ttl: Duration,
    on_unavailable: OnUnavailable,
    /// Live leases of this process and released ones waiting for their ZREM.
    leases: lease::Registry,
    /// This host's name in budget contributions (`set_host_id`); stable across restarts.
    host: OnceLock<String>,
    /// Settlements for the settle task (`settle_later`).
    settle_tx: mpsc::Sender<window::Settle>,
    /// Settlements dropped because the queue was full.
    settle_dropped: AtomicU64,
}

/// Owns the background tasks (renewals, releases, the circuit's probe; settlements); aborts
/// them on drop.
pub struct SharedTask(Vec<tokio::task::JoinHandle<()>>);

impl Drop for SharedTask {
    fn drop(&mut self) {
        for t in &self.0 {
            t.abort();
        }
    }
}

/// The Redis URL from the variable `url_env` names. The value is never put in an error.
pub fn redis_url(cfg: &SharedConfig) -> Result<String, StartError> {
    match std::env::var(&cfg.url_env) {
        Ok(v) if !v.trim().is_empty() => Ok(v),
        _ => Err(StartError::MissingUrl(cfg.url_env.clone())),
    }
}

/// `redis://user:secret@host/` -> `redis://user:***@host/`, for the few messages that show where
/// the gateway connects.
pub fn redact(url: &str) -> String {
    let Some(scheme_end) = url.find("://").map(|i| i + 3) else {
        return "***".into();
    };
    let rest = &url[scheme_end..];
    let host_start = rest.find('@').map(|i| i + 1).unwrap_or(0);
    if host_start == 0 {
        return url.into();
    }
    let user = rest[..host_start - 1].split(':').next().unwrap_or("");
    format!("{}{user}:***@{}", &url[..scheme_end], &rest[host_start..])
}

impl Shared {
    /// `None` for `backend = "local"`. Must run inside a tokio runtime. Does not wait for Redis:
    /// a Redis that is down at start is the same as one that goes down later.
    pub fn start(cfg: &SharedConfig) -> Result<Option<(Shared, SharedTask)>, StartError> {
        if cfg.backend == SharedBackend::Local {
            return Ok(None);
        }
        let url = redis_url(cfg)?;
        let bad = |e: redis::RedisError| {
            // The crate's message can quote the URL; say only what kind of error it was.
            StartError::BadUrl(cfg.url_env.clone(), format!("{:?}", e.kind()))
        };
        let client = redis::Client::open(url.as_str()).map_err(bad)?;
        let mc = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(COMMAND_TIMEOUT))
            .set_response_timeout(Some(COMMAND_TIMEOUT))
            .set_number_of_retries(1)
            .set_max_delay(PROBE_EVERY);
        let conn = client.get_connection_manager_lazy(mc).map_err(bad)?;
        let (settle_tx, settle_rx) = mpsc::channel(SETTLE_QUEUE);
        let shared = Shared {
            inner: Arc::new(Inner {
                conn,
                // Optimistic: the first failure opens the circuit, the first PING closes it.
                up: AtomicBool::new(true),
                prefix: cfg.key_prefix.clone(),
                lease_ttl: cfg.lease_ttl,
                on_unavailable: cfg.on_unavailable,
                leases: lease::Registry::default(),
                host: OnceLock::new(),
                settle_tx,
                settle_dropped: AtomicU64::new(0),
            }),
        };
        tracing::info!(redis = %redact(&url), prefix = %cfg.key_prefix, "shared backend: Redis");
        let tasks = vec![
            tokio::spawn(shared.clone().background()),
            tokio::spawn(shared.clone().settler(settle_rx)),
        ];
        Ok(Some((shared, SharedTask(tasks))))
    }

    /// Names this host in budget contributions (`window`): must be the same after a restart
    /// and different on every host (the supervisor uses its hostname and runtime directory).
    /// The first call wins; without one, a per-process name is used.
    pub fn set_host_id(&self, id: String) {
        let _ = self.inner.host.set(id);
    }

    pub fn host_id(&self) -> &str {
        self.inner.host.get().map_or(lease::process_name(), |s| s)
    }

    /// Queues `s` for the settle task; never waits. False (and counted) when the queue is full.
    pub fn settle_later(&self, s: window::Settle) -> bool {
        let ok = self.inner.settle_tx.try_send(s).is_ok();
        if !ok {
            self.inner.settle_dropped.fetch_add(1, Ordering::Relaxed);
        }
        ok
    }

    /// Settlements dropped because the queue was full, since start.
    pub fn settle_dropped(&self) -> u64 {
        self.inner.settle_dropped.load(Ordering::Relaxed)
    }

    /// The settle task: what is queued, merged by client (one round trip per client and
    /// batch), in arrival order. Ends with its owner (`SharedTask`).
    async fn settler(self, mut rx: mpsc::Receiver<window::Settle>) {
        let mut batch = Vec::with_capacity(256);
        while rx.recv_many(&mut batch, 256).await > 0 {
            for s in window::merge(std::mem::take(&mut batch)) {
                // Unavailable: the circuit logged it; the next settlement carries the totals.
                let _ = self.settle(&s).await;
            }
        }
    }

    /// 1 while Redis answers, 0 while the circuit is open (`gateway_shared_backend_up`).
    pub fn is_up(&self) -> bool {
        self.inner.up.load(Ordering::Relaxed)
    }

    pub fn on_unavailable(&self) -> OnUnavailable {
        self.inner.on_unavailable
    }

    pub fn lease_ttl(&self) -> Duration {
        self.inner.lease_ttl
    }

    /// `key_prefix` + `rest`.
    pub fn key(&self, rest: &str) -> String {
        format!("{}{rest}", self.inner.prefix)
    }

    /// Runs one script invocation under the circuit and `COMMAND_TIMEOUT`.
    pub(crate) async fn call<T: redis::FromRedisValue>(
        &self,
        inv: &redis::ScriptInvocation<'_>,
    ) -> Result<T, Unavailable> {
        if !self.is_up() {
            return Err(Unavailable);
        }
        let mut conn = self.inner.conn.clone();
        match tokio::time::timeout(COMMAND_TIMEOUT, inv.invoke_async(&mut conn)).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => {
                self.went_down(&format!("{:?}", e.kind()));
                Err(Unavailable)
            }
            Err(_) => {
                self.went_down("no answer within 200ms");
                Err(Unavailable)
            }
        }
    }

    fn went_down(&self, why: &str) {
        if self.inner.up.swap(false, Ordering::Relaxed) {
            tracing::error!(
                reason = why,
                on_unavailable = ?self.inner.on_unavailable,
                "shared backend (Redis) is unavailable: limits shared with other hosts are not \
                 enforced until it answers again"
            );
        }
    }

    async fn ping(&self) -> bool {
        let mut conn = self.inner.conn.clone();
        let cmd = redis::cmd("PING");
        let ping = cmd.query_async::<String>(&mut conn);
        matches!(tokio::time::timeout(COMMAND_TIMEOUT, ping).await, Ok(Ok(_)))
    }

    /// The background task: the circuit's probe, lease renewals and batched releases.
    async fn background(self) {
        let renew_every = self.inner.lease_ttl / 3;
        let mut renew = tokio::time::interval(renew_every);
        renew.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut probe = tokio::time::interval(PROBE_EVERY);
        probe.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                // Also while up: a process whose requests never touch Redis (no shared limit)
                // still learns of an outage, for the gauge and the log.
                _ = probe.tick() => match (self.is_up(), self.ping().await) {
                    (false, true) => {
                        self.inner.up.store(true, Ordering::Relaxed);
                        tracing::info!("shared backend (Redis) answers again: shared limits apply");
                    }
                    (true, false) => self.went_down("PING failed"),
                    _ => {}
                },
                _ = renew.tick() => self.renew_all().await,
                _ = self.inner.leases.released() => self.release_pending().await,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redact_hides_the_password_only() {
        assert_eq!(
            redact("redis://:s3cret@10.0.0.5:6379/0"),
            "redis://:***@10.0.0.5:6379/0"
        );
        assert_eq!(redact("rediss://me:s3cret@h/"), "rediss://me:***@h/");
        assert_eq!(redact("redis://127.0.0.1:6379"), "redis://127.0.0.1:6379");
        assert!(!redact("garbage s3cret").contains("s3cret"));
    }

    #[test]
    fn a_missing_variable_is_named() {
        let cfg = SharedConfig {
            backend: SharedBackend::Redis,
            url_env: "GATEWAY_TEST_NO_SUCH_REDIS_URL".into(),
            ..SharedConfig::default()
        };
        let e = Shared::start(&cfg).err().expect("an error");
        assert!(
            e.to_string().contains("$GATEWAY_TEST_NO_SUCH_REDIS_URL"),
            "{e}"
        );
    }
}
