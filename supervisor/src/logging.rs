//! Logging to stderr with `tracing`: filter from `RUST_LOG` (default `info`), text or one JSON
//! object per line (`--log-format json`, for journald and log shippers). stdout is reserved for
//! machine events.
//!
//! Lines reach stderr through one writer thread (`tracing-appender`'s non-blocking writer),
//! never by a write on the runtime: a host app or journald that reads stderr slowly, or not at
//! all, must not stall requests once the pipe is full. The queue holds `QUEUED_LINES`; lines
//! that do not fit are dropped (and counted: `dropped_lines`), the same choice as for events.
//! Under load the thread writes what queued up in one buffered write instead of one syscall per
//! line. `flush` (at exit) writes what is still queued.

use clap::ValueEnum;
use std::io::Write as _;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Mutex, OnceLock};
use tracing_appender::non_blocking::{ErrorCounter, NonBlocking, WorkerGuard};
use tracing_subscriber::EnvFilter;

/// Lines waiting for the writer thread, at most.
const QUEUED_LINES: usize = 65_536;
/// The writer thread's buffer: what queued up goes out in writes of up to this size.
const WRITE_BUFFER: usize = 64 * 1024;

/// The writer every line goes through (the subscriber's and `log_relay`'s), once `init` ran.
static WRITER: OnceLock<(NonBlocking, ErrorCounter)> = OnceLock::new();
/// Dropped by `flush`, which writes what is queued and ends the thread.
static GUARD: Mutex<Option<WorkerGuard>> = Mutex::new(None);
/// Set by `flush`: from then on lines go straight to stderr (an upgrade whose `execve` failed
/// goes on logging).
static DIRECT: AtomicBool = AtomicBool::new(false);

/// The subscriber's writer: the queue to the writer thread, or stderr after `flush`.
#[derive(Clone, Copy)]
struct Lines;

enum LineWriter {
    Queued(NonBlocking),
    Direct(std::io::Stderr),
}

impl std::io::Write for LineWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Self::Queued(w) => w.write(buf),
            Self::Direct(w) => w.write(buf),
        }
    }
    fn write_all(&mut self, buf: &[u8]) -> std::io::Result<()> {
        match self {
            Self::Queued(w) => w.write_all(buf),
            Self::Direct(w) => w.lock().write_all(buf),
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Self::Queued(w) => w.flush(),
            Self::Direct(w) => w.flush(),
        }
    }
}

fn line_writer() -> LineWriter {
    match WRITER.get() {
        Some((w, _)) if !DIRECT.load(Relaxed) => LineWriter::Queued(w.clone()),
        _ => LineWriter::Direct(std::io::stderr()),
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Lines {
    type Writer = LineWriter;
    fn make_writer(&'a self) -> LineWriter {
        line_writer()
    }
}

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
    if WRITER.get().is_some() {
        return;
    }
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .lossy(true)
        .buffered_lines_limit(QUEUED_LINES)
        .thread_name("log-writer")
        .finish(std::io::BufWriter::with_capacity(
            WRITE_BUFFER,
            std::io::stderr(),
        ));
    let counter = writer.error_counter();
    let _ = WRITER.set((writer, counter));
    *GUARD.lock().unwrap_or_else(|e| e.into_inner()) = Some(guard);
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(Lines)
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

/// Writes one whole line (or several) the way the subscriber's own lines go: through the writer
/// thread once `init` ran, else straight to stderr (unit tests, early errors).
pub fn write(out: &[u8]) {
    let _ = line_writer().write_all(out);
}

/// Lines dropped so far because stderr was not read fast enough.
pub fn dropped_lines() -> usize {
    WRITER.get().map_or(0, |(_, c)| c.dropped_lines())
}

/// Writes what is still queued and ends the writer thread: at exit, and before an upgrade's
/// `execve` (which would lose the queue). Lines logged after it go straight to stderr.
pub fn flush() {
    DIRECT.store(true, Relaxed);
    drop(GUARD.lock().unwrap_or_else(|e| e.into_inner()).take());
}
