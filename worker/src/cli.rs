//! The worker's command line, shared by the `gateway-worker` binary and the supervisor's hidden
//! `worker` subcommand, so one binary ships.

use crate::error::WorkerError;
use crate::heartbeat::HeartbeatConfig;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, Clone, clap::Args)]
pub struct WorkerArgs {
    /// Configuration file (the same file the supervisor uses).
    #[arg(long, short = 'c')]
    pub config: Option<PathBuf>,
    /// Address to bind when no socket is inherited through LISTEN_FDS.
    #[arg(long)]
    pub listen: Option<std::net::SocketAddr>,
    /// File to create once serving and to touch every heartbeat interval.
    #[arg(long)]
    pub heartbeat_file: Option<PathBuf>,
    /// Heartbeat period.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub heartbeat_interval: Option<Duration>,
}

/// Runs a worker until SIGTERM/SIGINT; returns the process exit code.
pub fn run(args: WorkerArgs) -> u8 {
    init_logging();
    match run_inner(args) {
        Ok(()) => 0,
        Err(e) => {
            tracing::error!(error = %e, "worker failed");
            e.exit_code()
        }
    }
}

fn run_inner(args: WorkerArgs) -> Result<(), WorkerError> {
    let source = gateway::config::resolve_source(args.config.as_deref());
    let config = gateway::config::load(&source)?.config;
    // Before the runtime starts threads: these edit the environment. A supervised worker gets
    // its tokens from the supervisor (it inherits no token variable); a standalone one reads
    // the variables the configuration names, as the front does.
    let tokens = gateway::admission::Tokens::take_inherited()
        .map_err(WorkerError::Admission)?
        .unwrap_or_else(|| gateway::admission::Tokens::from_env(&config));
    let (listener, front) = match crate::listen::take_inherited()? {
        Some(i) => (i.tcp, i.front),
        // Standalone, with no --listen, the worker is the whole gateway on the configured port.
        None => (
            crate::listen::bind(args.listen.unwrap_or(config.server.listen))?,
            None,
        ),
    };
    let threads = config.pool.worker_threads.max(1) as usize;
    // One thread by default, as nginx and sozu workers are: the pool is the parallelism, and a
    // stalled loop stops the heartbeat it also runs.
    let runtime = if threads == 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .enable_all()
            .build()
    }
    .map_err(WorkerError::Runtime)?;
    let heartbeat = args.heartbeat_file.map(|path| HeartbeatConfig {
        path,
        interval: args
            .heartbeat_interval
            .unwrap_or(config.pool.heartbeat_interval),
    });
    runtime.block_on(async move {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate()).map_err(WorkerError::Signals)?;
        let mut int = signal(SignalKind::interrupt()).map_err(WorkerError::Signals)?;
        let shutdown = async move {
            tokio::select! {
                _ = term.recv() => tracing::info!("SIGTERM: draining"),
                _ = int.recv() => tracing::info!("SIGINT: draining"),
            }
        };
        let listener = tokio::net::TcpListener::from_std(listener).map_err(WorkerError::Runtime)?;
        let front = front
            .map(tokio::net::UnixListener::from_std)
            .transpose()
            .map_err(WorkerError::Runtime)?;
        crate::run_with_front(config, tokens, listener, front, heartbeat, shutdown).await
    })?;
    // Connection tasks still running past the grace period are cancelled here, not awaited.
    runtime.shutdown_timeout(Duration::from_millis(100));
    Ok(())
}

/// Set to `json` in a worker's environment by the supervisor: the worker then logs one JSON
/// record per line, which the supervisor re-emits as its own records (`supervisor::log_relay`).
/// Unset (a standalone worker), logs are human-readable text.
pub const LOG_RECORDS_ENV: &str = "GATEWAY_WORKER_LOG";

/// Logs to stderr with `RUST_LOG` (default `info`); ignored if a subscriber already exists.
fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = if std::env::var_os(LOG_RECORDS_ENV).is_some_and(|v| v == "json") {
        // The span list carries the `request` span's `request_id` to the supervisor.
        builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(true)
            .try_init()
    } else {
        // No colour codes when stderr is a pipe (journald, a test).
        let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
        builder.with_ansi(ansi).try_init()
    };
}
