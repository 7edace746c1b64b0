//! `start --events`: machine events on stdout, one JSON object per line, between `ready` and
//! `stopped` (contract "Events").
//!
//! Design. stdout is a pipe the host app may stop reading; a write to a full pipe blocks. So
//! nothing on the runtime ever writes stdout while events are on: [`emit`] serialises the event
//! and `try_send`s the line into a bounded queue ([`QUEUE`]) that one dedicated thread drains
//! into stdout. A line that does not fit is dropped and counted; the count is the final
//! `dropped` field of `stopped`. The `ready` and `stopped` lines go through the same thread
//! (blocking sends, as the plain `println!` they replace would block), so the order on stdout
//! is the order of events.
//!
//! The sink is process-wide (like the log format in `logging`), set once when `start` prints
//! its ready line: the producers are the lifecycle transition stream (forwarded by `start`),
//! the log relay (a worker's breaker records) and `start` itself (reloads). Without
//! `--events` no sink is installed and [`emit`] does nothing.

use serde_json::Value;
use std::io::Write as _;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::mpsc::{sync_channel, SyncSender, TrySendError};
use std::sync::OnceLock;

/// Lines waiting for the writer thread; beyond this events are dropped.
pub const QUEUE: usize = 256;

struct Sink {
    tx: SyncSender<String>,
    dropped: AtomicU64,
}

static SINK: OnceLock<Sink> = OnceLock::new();

/// The writer thread; `finish` waits for it.
pub struct Writer {
    thread: std::thread::JoinHandle<()>,
}

/// Starts the writer thread and installs the sink, writing `ready` first. Called at most once
/// per process; a second call (not done by `start`) just prints `ready` and returns None.
pub fn start(ready: &Value) -> Option<Writer> {
    let (tx, rx) = sync_channel::<String>(QUEUE);
    if tx.send(line(ready)).is_err() {
        return None;
    }
    if SINK
        .set(Sink {
            tx,
            dropped: AtomicU64::new(0),
        })
        .is_err()
    {
        println!("{ready}");
        return None;
    }
    let thread = std::thread::Builder::new()
        .name("events".into())
        .spawn(move || {
            let mut out = std::io::stdout().lock();
            // Ends at the empty marker `finish` sends after the `stopped` line. A write error
            // (the reader is gone) loses that line; the loop keeps draining so no producer waits.
            while let Ok(l) = rx.recv() {
                if l.is_empty() {
                    break;
                }
                let _ = out.write_all(l.as_bytes()).and_then(|_| out.flush());
            }
        })
        .ok()?;
    Some(Writer { thread })
}

/// Whether `--events` is on (a sink is installed).
pub fn enabled() -> bool {
    SINK.get().is_some()
}

/// Queues one event without waiting; drops and counts it when the queue is full.
pub fn emit(event: Value) {
    let Some(sink) = SINK.get() else {
        return;
    };
    match sink.tx.try_send(line(&event)) {
        Ok(()) => {}
        Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => lost(1),
    }
}

/// Counts `n` events that never reached the queue (also used by producers that lag behind
/// their own source, such as the transition stream).
pub fn lost(n: u64) {
    if let Some(sink) = SINK.get() {
        sink.dropped.fetch_add(n, Relaxed);
    }
}

impl Writer {
    /// Writes `stopped` with the final `dropped` count as the last line, then waits for the
    /// writer thread to deliver it. Blocks while the reader does not read, as stdout would.
    pub fn finish(self, mut stopped: Value) {
        let Some(sink) = SINK.get() else {
            return;
        };
        stopped["dropped"] = sink.dropped.load(Relaxed).into();
        let _ = sink.tx.send(line(&stopped));
        self.flush();
    }

    /// Delivers every queued line and ends the writer thread (waiting as `finish` does). An
    /// upgrade calls it before the re-exec: the next image writes its own events.
    pub fn flush(self) {
        let Some(sink) = SINK.get() else {
            return;
        };
        // The sender lives in the static and never closes; the empty line ends the thread.
        let _ = sink.tx.send(String::new());
        let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
        let thread = self.thread;
        std::thread::spawn(move || {
            let _ = thread.join();
            let _ = done_tx.send(());
        });
        let _ = done_rx.recv_timeout(FLUSH_WAIT);
    }
}

/// How long `finish` waits for the host to read the last lines before the process exits
/// anyway (a host that never reads again must not keep a stopped supervisor alive).
const FLUSH_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

fn line(v: &Value) -> String {
    format!("{v}\n")
}

/// The reason a breaker moved, from its two states (the worker's hook knows only those).
pub fn breaker_reason(from: &str, to: &str) -> &'static str {
    match (from, to) {
        ("closed", "open") => "failures above threshold",
        ("half_open", "open") => "trial request failed",
        ("open", "half_open") => "open timeout elapsed or probe succeeded",
        ("half_open", "closed") => "trial requests succeeded",
        _ => "state changed",
    }
}
