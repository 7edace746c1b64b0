//! The command line (contract "Command line"), one module per subcommand.

pub mod check_config;
pub mod control;
pub mod start;
pub mod status;
pub mod top;

use crate::logging::LogFormat;
use clap::{Args, Parser, Subcommand};
use std::net::SocketAddr;
use std::path::PathBuf;

#[derive(Debug, Parser)]
#[command(
    name = "supervisor",
    version = crate::upgrade::version(),
    about = "A local AI gateway run as a supervised pool of workers"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

/// `-c FILE`, shared by every subcommand.
#[derive(Debug, Clone, Args)]
pub struct ConfigArg {
    /// Configuration file; else $GATEWAY_CONFIG, else ./gateway.toml, else the built-in default.
    #[arg(short = 'c', long = "config", value_name = "FILE")]
    pub config: Option<PathBuf>,
}

/// `-c FILE` and `--runtime-dir DIR`: how a command finds a running supervisor.
#[derive(Debug, Clone, Args)]
pub struct TargetArgs {
    #[command(flatten)]
    pub config: ConfigArg,
    /// The supervisor's runtime directory (as its ready line's admin_socket names it); else
    /// the configuration's.
    #[arg(long, value_name = "DIR")]
    pub runtime_dir: Option<String>,
}

#[derive(Debug, Clone, Args)]
#[command(
    after_help = "Environment:\n  GATEWAY_TOKEN  the front's auth token (the variable server.auth_token_env names): \
when set and non-empty, /v1/* needs it (Bearer or x-api-key); required to listen beyond loopback."
)]
pub struct StartArgs {
    #[command(flatten)]
    pub config: ConfigArg,
    /// Front listener address; port 0 picks a free port (reported in the ready line).
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<SocketAddr>,
    /// Number of workers.
    #[arg(long, value_name = "N")]
    pub workers: Option<u32>,
    /// First worker port; 0 = any free ports.
    #[arg(long, value_name = "P")]
    pub base_port: Option<u16>,
    /// Runtime directory (lock, admin socket, heartbeats); overrides pool.runtime_dir.
    #[arg(long, value_name = "DIR")]
    pub runtime_dir: Option<String>,
    /// Stop gracefully when stdin reaches EOF or the parent process goes away.
    #[arg(long)]
    pub exit_with_parent: bool,
    /// Print worker, provider, reload and upgrade events on stdout (JSON lines) between the
    /// ready and stopped lines.
    #[arg(long)]
    pub events: bool,
    /// Log line format on stderr.
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

/// `restart-worker [-c FILE] [--runtime-dir DIR] ID`.
#[derive(Debug, Clone, Args)]
pub struct RestartWorkerArgs {
    #[command(flatten)]
    pub target: TargetArgs,
    /// The worker id (as `status` shows it).
    pub id: usize,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Start the front listener and the worker pool; runs until stopped.
    Start(StartArgs),
    /// Validate the configuration, print a summary; exit 0, or 2 with every error found.
    CheckConfig(ConfigArg),
    /// Show the workers of the running supervisor.
    Status(status::StatusArgs),
    /// Stop the running supervisor gracefully (like SIGTERM).
    Stop(TargetArgs),
    /// Reload the configuration and roll the workers (like SIGHUP).
    Reload(TargetArgs),
    /// Restart one worker (also revives a DEAD one).
    RestartWorker(RestartWorkerArgs),
    /// Re-execute the binary now at the supervisor's path, same pid (like SIGUSR2).
    Upgrade(TargetArgs),
    /// Summarise the usage ledger: tokens and cost by client, model, provider or day.
    Usage(crate::usage::cli::UsageArgs),
    /// A live terminal view of workers, providers and request rates; q quits.
    Top(TargetArgs),
    /// Run one worker (used by the supervisor itself).
    #[command(hide = true)]
    Worker(gateway_worker::cli::WorkerArgs),
}

/// Runs the parsed command; returns the exit code.
pub fn dispatch(cli: Cli) -> u8 {
    match cli.command {
        Command::Start(a) => start::run(a),
        Command::CheckConfig(c) => check_config::run(&c),
        Command::Status(a) => status::run(&a),
        Command::Stop(c) => control::stop(&c),
        Command::Reload(c) => control::reload(&c),
        Command::Upgrade(c) => control::upgrade(&c),
        Command::RestartWorker(a) => control::restart_worker(&a.target, a.id),
        Command::Top(a) => top::run(&a),
        Command::Usage(a) => crate::usage::cli::run(&a),
        Command::Worker(args) => gateway_worker::cli::run(args),
    }
}
