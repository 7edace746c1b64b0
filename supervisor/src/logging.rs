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
use std::fmt;
use std::io::Write as _;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Mutex, OnceLock};
use tracing::field::{Field, Visit};
use tracing_appender::non_blocking::{ErrorCounter, NonBlocking, WorkerGuard};
use tracing_subscriber::field::{RecordFields, VisitOutput};
use tracing_subscriber::fmt::format::{DefaultFields, DefaultVisitor, Writer};
use tracing_subscriber::fmt::FormatFields;
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
        LogFormat::Text => builder.fmt_fields(TextFields).try_init(),
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

/// The text format's fields, written byte for byte as `tracing_subscriber`'s `DefaultFields`
/// writes them (`name=value`, strings quoted as `Debug` quotes them), but the common cases
/// (numbers, booleans, plain strings) without its per-field `fmt` machinery and its empty
/// colour styles: those were about 20,000 instructions per access line, a sixth of all the
/// front spends on a request at the default `RUST_LOG=info` (`bench/path_instr.sh`).
/// Everything else, and every field when colours are on, goes to `DefaultVisitor` itself.
struct TextFields;

impl<'w> FormatFields<'w> for TextFields {
    fn format_fields<R: RecordFields>(&self, writer: Writer<'w>, fields: R) -> fmt::Result {
        if writer.has_ansi_escapes() {
            return DefaultFields::new().format_fields(writer, fields);
        }
        let mut v = TextVisitor {
            writer,
            is_empty: true,
            result: Ok(()),
        };
        fields.record(&mut v);
        v.result
    }
}

struct TextVisitor<'w> {
    writer: Writer<'w>,
    is_empty: bool,
    result: fmt::Result,
}

impl TextVisitor<'_> {
    /// Writes `name=value` (after a space unless first), when `field` is one this visitor
    /// writes itself: not the message, a raw identifier or log metadata, which have rules of
    /// their own in `DefaultVisitor`. False when it is not.
    fn plain(&mut self, field: &Field, quoted: bool, value: &str) -> bool {
        let name = field.name();
        if name == "message" || name.starts_with("r#") || name.starts_with("log.") {
            return false;
        }
        if self.result.is_ok() {
            let pad = if std::mem::take(&mut self.is_empty) {
                ""
            } else {
                " "
            };
            let q = if quoted { "\"" } else { "" };
            // One call into the writer (a `dyn fmt::Write`) per field rather than six.
            let parts = [pad, name, "=", q, value, q];
            let mut buf = [0u8; 192];
            let mut n = 0;
            for p in parts {
                if let Some(dst) = buf.get_mut(n..n + p.len()) {
                    dst.copy_from_slice(p.as_bytes());
                }
                n += p.len();
            }
            let w = &mut self.writer;
            self.result = match buf.get(..n).map(std::str::from_utf8) {
                Some(Ok(joined)) => w.write_str(joined),
                _ => parts.iter().try_for_each(|p| w.write_str(p)),
            };
        }
        true
    }

    /// The field as `DefaultVisitor` writes it.
    fn default(&mut self, field: &Field, record: impl FnOnce(&mut DefaultVisitor<'_>)) {
        if self.result.is_err() {
            return;
        }
        let mut d = DefaultVisitor::new(self.writer.by_ref(), self.is_empty);
        record(&mut d);
        self.result = d.finish();
        // It writes (and pads before) every field but log metadata.
        self.is_empty &= field.name().starts_with("log.");
    }
}

impl Visit for TextVisitor<'_> {
    fn record_u64(&mut self, field: &Field, value: u64) {
        if !self.plain(field, false, itoa::Buffer::new().format(value)) {
            self.default(field, |d| d.record_u64(field, value));
        }
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        if !self.plain(field, false, itoa::Buffer::new().format(value)) {
            self.default(field, |d| d.record_i64(field, value));
        }
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        let text = if value { "true" } else { "false" };
        if !self.plain(field, false, text) {
            self.default(field, |d| d.record_bool(field, value));
        }
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        // `Debug` of a string that holds only printable ASCII but `"` and `\\` is the string
        // in quotes; any other string is escaped by `Debug` itself.
        let plain = value
            .bytes()
            .all(|b| (0x20..0x7f).contains(&b) && b != b'"' && b != b'\\');
        if !(plain && self.plain(field, true, value)) {
            self.default(field, |d| d.record_str(field, value));
        }
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.default(field, |d| d.record_error(field, value));
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.default(field, |d| d.record_debug(field, value));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// What the events of `emit` look like in the text format, with `fields` (and a span, so
    /// span fields are formatted too).
    fn text<F>(fields: F, emit: &dyn Fn()) -> String
    where
        F: for<'w> FormatFields<'w> + Send + Sync + 'static,
    {
        let buf = Buf::default();
        let out = buf.clone();
        let sub = tracing_subscriber::fmt()
            .with_writer(move || out.clone())
            .with_ansi(false)
            .without_time()
            .fmt_fields(fields)
            .finish();
        tracing::subscriber::with_default(sub, emit);
        let bytes = buf.0.lock().unwrap().clone();
        String::from_utf8(bytes).unwrap()
    }

    /// Byte for byte what `DefaultFields` writes, for every kind of value and the odd names
    /// and strings that take `DefaultVisitor`'s own path.
    #[test]
    fn text_fields_write_what_default_fields_writes() {
        let emit = || {
            let span = tracing::info_span!("request", request_id = "r-1", n = 3u64);
            let _in = span.enter();
            tracing::info!(
                target: "access",
                method = %http::Method::POST,
                path = "/v1/chat/completions",
                status = 200u16,
                worker = -1i64,
                client = Some("desk"),
                provider = None::<&str>,
                quoted = "say \"hi\"",
                tab = "a\tb",
                unicode = "caf\u{e9} \u{1b}[31m",
                empty = "",
                long = "x".repeat(300).as_str(),
                ok = true,
                cost_usd = 0.25f64,
                r#type = "raw",
                err = &std::io::Error::other("boom") as &(dyn std::error::Error + 'static),
                "request {}", 7
            );
            tracing::warn!(n = 5u64, "first field after the message");
            tracing::warn!(only = "field");
        };
        let ours = text(TextFields, &emit);
        let theirs = text(DefaultFields::new(), &emit);
        assert!(
            ours.contains("path=\"/v1/chat/completions\" status=200"),
            "{ours}"
        );
        assert_eq!(ours, theirs);
    }
}
