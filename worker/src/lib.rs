//! `gateway-worker`: one AI gateway process serving one port, usable with unmodified OpenAI and
//! Anthropic SDKs.
//!
//! `run(config, listener, heartbeat, shutdown)` is the whole daemon, so tests can start it
//! in-process; `cli::run` adds the command line, logging, the runtime, the inherited socket and
//! signals. A request goes `server` -> `handlers` -> `routing` (candidates and strategy) ->
//! `proxy` (breaker and cool-down checks, the pool-wide provider permit, attempts, timeouts,
//! failover) -> `body` (streaming back) or `providers::mock`. `breaker` is the per-provider
//! circuit breaker; `health` probes providers in the background and serves `/v1/health*`.

mod attempt;
mod body;
pub mod breaker;
pub mod cli;
mod connect;
mod endpoint;
mod error;
mod handlers;
mod health;
mod heartbeat;
mod listen;
mod metrics;
mod providers;
mod proxy;
mod routing;
mod server;
mod trace;
/// Dialect translation; not yet on the request path (the wiring is a later step).
#[doc(hidden)]
pub mod translate;
mod usage;

pub use error::WorkerError;
pub use heartbeat::HeartbeatConfig;

use gateway::config::Config;
use std::future::Future;
use std::sync::Arc;

/// Serves `listener` with `config` until `shutdown` completes, then lets in-flight requests
/// finish for up to `pool.shutdown_timeout`. Must run inside a Tokio runtime (with time and IO).
/// Writes the heartbeat file when `heartbeat` is given. Tokens come from the variables the
/// configuration names.
pub async fn run(
    config: Config,
    listener: tokio::net::TcpListener,
    heartbeat: Option<HeartbeatConfig>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), WorkerError> {
    let tokens = gateway::admission::Tokens::from_env(&config);
    run_with_front(config, tokens, listener, None, heartbeat, shutdown).await
}

/// `run` with the token set given, also serving `front` (the supervisor's private Unix socket,
/// when it passed one) with the same handlers. The TCP port admits requests as the front does
/// (`gateway::admission`); `front` skips that, since only the front, which already admitted
/// them, can connect to it.
pub async fn run_with_front(
    config: Config,
    tokens: gateway::admission::Tokens,
    listener: tokio::net::TcpListener,
    front: Option<tokio::net::UnixListener>,
    heartbeat: Option<HeartbeatConfig>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), WorkerError> {
    let metrics = metrics::Metrics::new();
    usage::init(&config, &metrics);
    if let Err(e) = gateway::telemetry::install(&config.telemetry, "worker") {
        tracing::warn!("{e}; traces are off");
    }
    let factory = connect::ClientFactory::from_env();
    let limiter = provider_limiter()?;
    let providers = config
        .providers
        .iter()
        .map(|p| {
            Arc::new(providers::Provider::new(
                p.clone(),
                &factory,
                &metrics,
                (&config.circuit_breaker).into(),
                limiter.clone(),
            ))
        })
        .collect();
    // Under the supervisor (which hands out the provider table) the supervisor reports missing
    // keys once for the pool; a standalone worker is the whole gateway and says it itself.
    if std::env::var_os(gateway::provider_permits::ENV_TABLE).is_none() {
        for p in &config.providers {
            if let Some(reason) = p.missing_key() {
                tracing::warn!(provider = %p.name, "{reason}; provider out of rotation");
            }
        }
    }
    let mut table = routing::RouteTable::new(&config, providers);
    table.limits.limiter = Some(limiter);
    // Owned here like `_probes`: renewals stop when the server has stopped.
    let (shared, _shared_task) =
        match gateway::shared::Shared::start(&config.shared).map_err(WorkerError::Shared)? {
            Some((s, t)) => (Some(s), Some(t)),
            None => (None, None),
        };
    table.limits.shared = shared;
    let bound = listener.local_addr().map_err(WorkerError::Runtime)?;
    let admission = gateway::admission::Admission {
        access: gateway::admission::AccessPolicy::new(&config, &[bound]),
        tokens,
        // Client limits are counted in the front only; this port must not bypass them.
        front_only: config
            .clients
            .iter()
            .filter(|c| c.has_limits())
            .map(|c| c.name.clone())
            .collect(),
    };
    let app = Arc::new(handlers::App::new(&config, table, metrics, admission));
    // Owned here: dropped (and the task aborted) when the server has stopped.
    let _probes = app.health.spawn();
    server::serve(
        app,
        server::Listeners {
            tcp: listener,
            front,
        },
        heartbeat,
        config.pool.shutdown_timeout,
        shutdown,
    )
    .await;
    // Every request has ended, so has its span: send what the batch still holds.
    gateway::telemetry::flush(gateway::telemetry::FLUSH_AT_STOP).await;
    Ok(())
}

/// The pool-wide provider permit table the supervisor passes through the environment, else a
/// private one (a standalone worker limits providers for itself).
fn provider_limiter() -> Result<gateway::provider_permits::ProviderLimiter, WorkerError> {
    use gateway::provider_permits::{ProviderLimiter, ENV_ROW, ENV_TABLE};
    match ProviderLimiter::from_env() {
        Some(Ok(l)) => Ok(l),
        Some(Err(e)) => Err(WorkerError::ProviderTable(e)),
        None => {
            if std::env::var_os(ENV_TABLE).is_some() {
                // The table without a usable row: a supervisor bug, not something to paper over.
                return Err(WorkerError::ProviderTable(std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    format!("${ENV_TABLE} is set but ${ENV_ROW} is missing or out of range"),
                )));
            }
            ProviderLimiter::local().map_err(WorkerError::ProviderTable)
        }
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use http_body_util::{BodyExt, Full};
    use hyper_util::rt::TokioIo;

    const CONFIG: &str = r#"
[pool]
shutdown_timeout = "5s"
[[providers]]
name = "demo"
kind = "mock"
models = ["demo"]
"#;

    /// The library entry serves in-process and returns once `shutdown` completes.
    #[test]
    fn run_serves_in_process_until_shutdown() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let config = gateway::config::parse_str(CONFIG, "test").unwrap();
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
            let client = async move {
                let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
                let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
                    .await
                    .unwrap();
                let conn = tokio::spawn(conn);
                let body =
                    r#"{"model":"demo","messages":[{"role":"user","content":"in process"}]}"#;
                let req = http::Request::post("/v1/chat/completions")
                    .header("host", "localhost")
                    .body(Full::new(Bytes::from_static(body.as_bytes())))
                    .unwrap();
                let resp = send.send_request(req).await.unwrap();
                assert_eq!(resp.status(), 200);
                let bytes = resp.into_body().collect().await.unwrap().to_bytes();
                let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
                assert_eq!(
                    v["choices"][0]["message"]["content"],
                    "This is a mock reply from demo to: in process"
                );
                drop(send);
                let _ = conn.await;
                stop.send(()).unwrap();
            };
            let server = crate::run(config, listener, None, async move {
                let _ = stopped.await;
            });
            let (res, ()) = tokio::time::timeout(std::time::Duration::from_secs(20), async {
                tokio::join!(server, client)
            })
            .await
            .expect("served and stopped in time");
            res.unwrap();
        });
    }
}
