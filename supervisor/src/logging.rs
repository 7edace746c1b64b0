//! Logging to stderr with `tracing`: filter from `RUST_LOG` (default `info`), text or one JSON
//! object per line (`--log-format json`, for journald and log shippers). stdout is reserved for
//! machine events.

use clap::ValueEnum;
use std::sync::OnceLock;
use tracing_subscriber::EnvFilter;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// The format and colour choice of the installed subscriber, for the lines `log_relay` writes
/// itself; the first `init` wins, as it does for the subscriber.
static OUTPUT: OnceLock<(LogFormat, bool)> = OnceLock::new();

/// How log lines are written: the format, and whether with colours. Text without colours
/// before `init` (unit tests).
pub fn output() -> (LogFormat, bool) {
    OUTPUT.get().copied().unwrap_or_default()
}

/// Installs the global subscriber; later calls are ignored (tests may call it repeatedly).
pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // Colours only for a person at a terminal; files, pipes and journald get plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let _ = OUTPUT.set((format, ansi));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .try_init(),
    };
}
