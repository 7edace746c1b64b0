//! The accept loop: serves HTTP/1.1 and HTTP/2 (prior knowledge) connections on the listeners
//! (the TCP port, and the supervisor's Unix socket when there is one), runs the heartbeat on
//! the same runtime, and on shutdown stops accepting, lets in-flight requests finish for up to
//! the grace period, then returns. A TCP connection whose first request head does not arrive
//! within `server.header_read_timeout` is closed (`gateway::read_timeouts`); the front's
//! private socket is exempt, its connections are the front's pooled ones.

use crate::handlers::{self, App, Hop};
use crate::heartbeat::{self, HeartbeatConfig};
use gateway::read_timeouts::{first_head_within, HeadSeen};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, UnixListener, UnixStream};

/// What the worker accepts connections on.
pub struct Listeners {
    pub tcp: TcpListener,
    /// The supervisor's private way in for its front listener (see `listen`).
    pub front: Option<UnixListener>,
}

/// The next connection from `front`, or never when there is none.
async fn accept_front(front: &Option<UnixListener>) -> std::io::Result<UnixStream> {
    match front {
        Some(l) => l.accept().await.map(|(s, _)| s),
        None => std::future::pending().await,
    }
}

/// Serves until `shutdown` completes, then drains for at most `grace`.
pub async fn serve(
    app: Arc<App>,
    listeners: Listeners,
    heartbeat: Option<HeartbeatConfig>,
    grace: Duration,
    shutdown: impl Future<Output = ()>,
) {
    let Listeners {
        tcp: listener,
        front,
    } = listeners;
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder.http1().timer(TokioTimer::new()).keep_alive(true);
    // The supervisor's front multiplexes every stream it sends this worker over one HTTP/2
    // connection; it never sends more than `worker_max_inflight` requests at once.
    builder.http2().max_concurrent_streams(app.max_inflight);
    // The front's hop keeps idle pooled connections (see the supervisor's `conns`): no head
    // deadline there. The port gets the configured one.
    let mut port_builder = builder.clone();
    builder.http1().header_read_timeout(None);
    port_builder
        .http1()
        .header_read_timeout(app.header_read_timeout);
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
            a = listener.accept() => match a {
                Ok((s, _)) => {
                    let _ = s.set_nodelay(true);
                    serve_conn(&port_builder, &graceful, &app, Hop::Port, s);
                }
                Err(e) => accept_failed(e).await,
            },
            a = accept_front(&front) => match a {
                Ok(s) => serve_conn(&builder, &graceful, &app, Hop::Front, s),
                Err(e) => accept_failed(e).await,
            },
        }
    }
    drop((listener, front));
    let open = graceful.count();
    tracing::info!(connections = open, grace = %humantime::format_duration(grace), "shutting down");
    tokio::select! {
        () = graceful.shutdown() => tracing::info!("all connections finished"),
        () = tokio::time::sleep(grace) => tracing::warn!("grace period over; cutting the remaining connections"),
    }
}

/// Serves one accepted connection in its own task, owned by `graceful` (which signals and
/// counts it) and, past the grace period, by the runtime, whose shutdown cancels it.
fn serve_conn<S>(
    builder: &auto::Builder<TokioExecutor>,
    graceful: &GracefulShutdown,
    app: &Arc<App>,
    hop: Hop,
    io: S,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let seen = HeadSeen::default();
    let limit = app.header_read_timeout;
    let svc = {
        let (app, seen) = (app.clone(), seen.clone());
        service_fn(move |req| {
            seen.mark();
            // Boxed: hyper keeps the service future for as long as the response head is not
            // out (HTTP/2: in the stream's own task, sized for the largest state, about 6 KB,
            // for the stream's whole life; HTTP/1: in the connection's). Boxed, those bytes are
            // held only while the request is routed, not while its stream is held open.
            Box::pin(handlers::handle(app.clone(), hop, req))
        })
    };
    let conn = graceful.watch(builder.serve_connection(TokioIo::new(io), svc).into_owned());
    tokio::spawn(async move {
        let conn = std::pin::pin!(conn);
        let ended = match hop {
            Hop::Port => first_head_within(conn, &seen, limit).await,
            Hop::Front => Some(conn.await),
        };
        match ended {
            Some(Ok(())) => {}
            Some(Err(e)) => tracing::debug!(error = %e, "connection ended with an error"),
            None => tracing::debug!("no request head within header_read_timeout; closed"),
        }
    });
}

/// EMFILE and friends: back off instead of spinning on the error.
async fn accept_failed(e: std::io::Error) {
    tracing::warn!(error = %e, "accept failed");
    tokio::time::sleep(Duration::from_millis(50)).await;
}
