//! The accept loop: serves HTTP/1.1 and HTTP/2 (prior knowledge) connections on the listener,
//! runs the heartbeat on the same runtime, and on shutdown stops accepting, lets in-flight
//! requests finish for up to the grace period, then returns.

use crate::handlers::{self, App};
use crate::heartbeat::{self, HeartbeatConfig};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;

/// Serves until `shutdown` completes, then drains for at most `grace`.
pub async fn serve(
    app: Arc<App>,
    listener: TcpListener,
    heartbeat: Option<HeartbeatConfig>,
    grace: Duration,
    shutdown: impl Future<Output = ()>,
) {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder.http1().timer(TokioTimer::new()).keep_alive(true);
    let graceful = GracefulShutdown::new();
    // Dropped when this function returns, which stops the heartbeat with the server.
    let _heartbeat = heartbeat.map(|h| heartbeat::spawn(h, app.counters.clone()));
    if let Ok(addr) = listener.local_addr() {
        // bench/run.sh and the tests read the address from this line.
        tracing::info!(pid = std::process::id(), "listening on {addr}");
    }
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            biased;
            () = &mut shutdown => break,
            accepted = listener.accept() => {
                let stream = match accepted {
                    Ok((s, _)) => s,
                    Err(e) => {
                        // EMFILE and friends: back off instead of spinning on the error.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let app = app.clone();
                let svc = service_fn(move |req| handlers::handle(app.clone(), req));
                let conn = builder.serve_connection(TokioIo::new(stream), svc).into_owned();
                // The connection task is owned by `graceful` (which signals and counts it) and,
                // past the grace period, by the runtime, whose shutdown cancels it.
                let conn = graceful.watch(conn);
                tokio::spawn(async move {
                    if let Err(e) = conn.await {
                        tracing::debug!(error = %e, "connection ended with an error");
                    }
                });
            }
        }
    }
    drop(listener);
    let open = graceful.count();
    tracing::info!(connections = open, grace = %humantime::format_duration(grace), "shutting down");
    tokio::select! {
        () = graceful.shutdown() => tracing::info!("all connections finished"),
        () = tokio::time::sleep(grace) => tracing::warn!("grace period over; cutting the remaining connections"),
    }
}
