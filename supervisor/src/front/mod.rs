//! The front listener: the one port clients talk to.
//!
//! `serve` accepts connections (HTTP/1.1 keep-alive and HTTP/2), checks Host, CORS and tokens,
//! answers `/healthz`, `/readyz`, `/metrics` and `/v1/models` itself, and hands every API request
//! to a worker with room, waiting in a bounded queue when none has any. Modules:
//!
//! - `server`: accept loop, graceful stop, routing of one request;
//! - `dispatch`: which worker (IDLE first, then power of two choices; sticky sessions);
//! - `queue`: waiting for room, bounded in count and time;
//! - `conns`: keep-alive connections to the workers, pooled per slot;
//! - `forward`: sending to a worker, retries before headers, response wrapping;
//! - `waiting`: keep-alive pings for streams that wait, then the worker's stream spliced in;
//! - `body`: response bodies and the in-flight guard riding on them;
//! - `limits`: the clients' rpm, tpm, daily_tokens and monthly_usd counters (pool-wide);
//! - `auth`: who the caller is and its client limits (admission itself, the Host check, the
//!   Origin rule, CORS and tokens, is `gateway::admission`, shared with the workers);
//! - `models_cache`, `metrics_page`: the two endpoints with state of their own;
//! - `counters`: cached metric handles and request ids.
//!
//! Nothing on the request path takes a lock: the pool is an `ArcSwap` snapshot with per-slot
//! atomics, configuration is an `ArcSwap`, and everything derived from a configuration
//! (`Settings`) is rebuilt once per reload and swapped in.

pub mod auth;
pub mod body;
pub mod conns;
pub mod counters;
pub mod dispatch;
pub mod forward;
pub mod limits;
pub mod metrics_page;
pub mod models_cache;
pub mod queue;
pub mod server;
pub mod waiting;

#[cfg(test)]
mod testkit;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_endpoints;

use crate::metrics::SupervisorMetrics;
use crate::pool::WorkerSlots;
use crate::shutdown::Shutdown;
use arc_swap::ArcSwap;
use bytes::Bytes;
use gateway::Config;
use prometheus_client::registry::Registry;
use std::net::SocketAddr;
use std::sync::Arc;

/// What the front listener needs from the rest of the supervisor.
pub struct FrontContext {
    /// The pool's dispatch view (`Pool::worker_slots`).
    pub slots: Arc<WorkerSlots>,
    /// The live configuration, read per request, so a reload applies to the next request. The
    /// pool's own (`Pool::live_config`): the pool writes it, the front only reads it.
    pub config: Arc<ArcSwap<Config>>,
    pub metrics: SupervisorMetrics,
    pub registry: Arc<Registry>,
    /// The clients' limit counters, shared with the usage receiver that settles them.
    pub limits: Arc<limits::Book>,
    /// The live view's data source (`crate::dashboard`), shared with the admin socket.
    pub dashboard: Arc<crate::dashboard::Dashboard>,
    /// `[shared]` with Redis: hosts-wide client leases; `None` = this host only.
    pub backend: Option<gateway::shared::Shared>,
    /// Where the access lines go (joined with the usage records' tokens).
    pub access: crate::usage::access::AccessLog,
}

/// Serves `listener` until `shutdown`, then stops accepting and lets in-flight requests finish
/// for up to `pool.shutdown_timeout` before returning.
pub async fn serve(listener: tokio::net::TcpListener, ctx: FrontContext, shutdown: Shutdown) {
    server::run(listener, ctx, shutdown).await
}

/// Everything derived from one configuration; rebuilt when the configuration changes (that is
/// also when token variables are re-read), never per request.
pub struct Settings {
    /// The configuration this was built from; compared by pointer to notice a reload.
    pub source: Arc<Config>,
    pub auth: auth::AuthTable,
    pub admission: gateway::admission::Admission,
    /// The `/v1/models` answer when no list was ever fetched: configured models and aliases.
    pub floor_models: Bytes,
}

impl Settings {
    /// `previous`: the settings being replaced, whose clients hand over their live state.
    fn new(
        cfg: Arc<Config>,
        bound: SocketAddr,
        previous: Option<&Settings>,
        book: &limits::Book,
    ) -> Self {
        let tokens = gateway::admission::Tokens::from_env(&cfg);
        Self {
            auth: auth::AuthTable::new(&cfg, &tokens, previous.map(|p| &p.auth), book),
            admission: gateway::admission::Admission {
                access: gateway::admission::AccessPolicy::new(&cfg, &[cfg.server.listen, bound]),
                tokens,
                // The front counts every client's limits (`front::limits`, `auth`).
                front_only: Vec::new(),
            },
            floor_models: models_cache::floor_list(&cfg),
            source: cfg,
        }
    }
}

/// State shared by every connection of the front listener.
pub struct Shared {
    pub slots: Arc<WorkerSlots>,
    pub config: Arc<ArcSwap<Config>>,
    pub metrics: SupervisorMetrics,
    pub registry: Arc<Registry>,
    /// Pooled connections to the workers.
    pub conns: conns::WorkerConns,
    pub dispatch: dispatch::Dispatcher,
    pub queue: queue::WaitQueue,
    pub models: models_cache::ModelListCache,
    /// Counters of finished requests; shared with every response body still streaming.
    pub meters: Arc<counters::RequestMeters>,
    pub ids: counters::RequestIds,
    pub dashboard: Arc<crate::dashboard::Dashboard>,
    /// The address actually bound (accepted as a Host besides the configured one).
    pub bound: SocketAddr,
    /// Every client's rpm / tpm / budget counters, by name, for the supervisor's life.
    pub limits: Arc<limits::Book>,
    /// `FrontContext::backend`.
    pub backend: Option<gateway::shared::Shared>,
    settings: ArcSwap<Settings>,
}

impl Shared {
    pub fn new(ctx: FrontContext, bound: SocketAddr) -> Self {
        let cfg = ctx.config.load_full();
        let meters = Arc::new(counters::RequestMeters::new(
            ctx.metrics.clone(),
            ctx.dashboard.tally.clone(),
            ctx.access.clone(),
        ));
        Self {
            settings: ArcSwap::from_pointee(Settings::new(cfg, bound, None, &ctx.limits)),
            limits: ctx.limits,
            slots: ctx.slots,
            config: ctx.config,
            metrics: ctx.metrics,
            registry: ctx.registry,
            backend: ctx.backend,
            conns: Default::default(),
            dispatch: Default::default(),
            queue: Default::default(),
            models: Default::default(),
            meters,
            ids: Default::default(),
            dashboard: ctx.dashboard,
            bound,
        }
    }

    /// The settings of `cfg` while they are current, rebuilt once after a reload.
    ///
    /// A rebuild always uses the *current* configuration, whatever `cfg` the request loaded: a
    /// request that read the old one just before a reload must not swap old settings back in.
    /// The compare-and-swap makes racing rebuilds agree on one result.
    pub fn settings(&self, cfg: &Arc<Config>) -> Arc<Settings> {
        let cur = self.settings.load_full();
        if Arc::ptr_eq(&cur.source, cfg) {
            return cur;
        }
        let current = self.config.load_full();
        if Arc::ptr_eq(&cur.source, &current) {
            // `cfg` is older than the settings: they already describe the newer configuration.
            return cur;
        }
        let fresh = Arc::new(Settings::new(current, self.bound, Some(&cur), &self.limits));
        let prev = self.settings.compare_and_swap(&cur, fresh.clone());
        if Arc::ptr_eq(&prev, &cur) {
            fresh
        } else {
            arc_swap::Guard::into_inner(prev)
        }
    }
}

#[cfg(test)]
mod settings_tests {
    use super::*;

    fn shared(cfg: Arc<Config>) -> Shared {
        let (metrics, registry) = SupervisorMetrics::new();
        let slots = Arc::new(WorkerSlots::new(vec![]));
        let ctx = FrontContext {
            dashboard: crate::dashboard::Dashboard::new(slots.clone()),
            slots,
            config: Arc::new(ArcSwap::new(cfg)),
            metrics,
            registry: Arc::new(registry),
            limits: Default::default(),
            backend: None,
            access: Default::default(),
        };
        Shared::new(ctx, "127.0.0.1:8080".parse().unwrap())
    }

    /// A request that loaded the configuration just before a reload must not put settings of
    /// the old configuration back: that would reset every client's in-flight count each time
    /// old and new requests alternate.
    #[test]
    fn a_stale_request_never_swaps_old_settings_back_in() {
        let a = Arc::new(Config::default());
        let s = shared(a.clone());
        assert!(Arc::ptr_eq(&s.settings(&a).source, &a));
        let b = Arc::new(Config::default());
        s.config.store(b.clone());
        let new = s.settings(&b);
        assert!(Arc::ptr_eq(&new.source, &b));
        let stale = s.settings(&a);
        assert!(
            Arc::ptr_eq(&stale, &new),
            "the old configuration's request gets the new settings, not a rebuild of the old"
        );
        assert!(Arc::ptr_eq(&s.settings(&b), &new), "and they stay");
    }
}
