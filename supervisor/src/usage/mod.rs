//! Usage in the supervisor: receives the workers' records on a Unix `SOCK_SEQPACKET` socket in
//! the runtime directory (one connection per worker, one record per message), hands them through a bounded queue to one ledger thread that writes them
//! to SQLite in batches, and counts each record `written`, `dropped` or `failed`
//! (`gateway_usage_records_total{outcome}`). Nothing here touches the disk on the runtime.
//!
//! Each record is also settled at once into its client's limit counters
//! (`front::limits::Book`), with the ledger on or off; the ledger thread first seeds those
//! counters with the current UTC day's tokens and month's cost, before it writes anything, so a
//! restart keeps the budgets and no record is counted twice.

pub mod access;
pub mod cli;
pub mod ledger;

use crate::front::limits::{self, Book, Used};
use crate::metrics::{OutcomeLabel, SupervisorMetrics};
use gateway::config::Config;
use gateway::usage::{Record, MAX_MESSAGE, SOCKET_ENV, WORKER_ID_ENV};
use prometheus_client::metrics::counter::Counter;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, SyncSender, TryRecvError, TrySendError};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::io::unix::AsyncFd;
use tokio::sync::oneshot;

/// Records waiting for the ledger thread; past this they are dropped (and counted). At one
/// write every `FLUSH_EVERY`, room for 160,000 records a second.
const QUEUE: usize = 32_768;
/// Most records in one transaction.
const BATCH: usize = 4_096;
/// The ledger thread wakes this often and writes what came meanwhile (a supervisor SIGKILL
/// loses at most this much, plus the write in progress).
const FLUSH_EVERY: Duration = Duration::from_millis(200);
/// How often the retention pass runs.
const PRUNE_EVERY: Duration = Duration::from_secs(60);

/// The socket's name in the runtime directory.
pub const SOCKET_NAME: &str = "usage.sock";

/// The usage socket of the instance in `runtime_dir`, if it receives records.
pub fn socket_in(runtime_dir: &Path) -> Option<PathBuf> {
    let p = runtime_dir.join(SOCKET_NAME);
    p.exists().then_some(p)
}

/// Sets a worker's usage variables: the socket, when there is one, and its slot id.
pub fn worker_env(cmd: &mut tokio::process::Command, runtime_dir: &Path, id: usize) {
    if let Some(p) = socket_in(runtime_dir) {
        cmd.env(SOCKET_ENV, p);
    }
    cmd.env(WORKER_ID_ENV, id.to_string());
}

#[derive(Clone)]
struct Counters {
    written: Counter,
    dropped: Counter,
    failed: Counter,
    /// Where every record's tokens and cost are settled.
    book: Arc<Book>,
}

impl Counters {
    fn new(m: &SupervisorMetrics, book: Arc<Book>) -> Self {
        let c = |o: &str| {
            m.usage_records
                .get_or_create(&OutcomeLabel { outcome: o.into() })
                .clone()
        };
        Self {
            written: c("written"),
            dropped: c("dropped"),
            failed: c("failed"),
            book,
        }
    }
}

/// The running receiver and ledger thread; `stop` drains and joins them.
pub struct Usage {
    /// true: hand the sockets over (`hand_over`) instead of draining them.
    stop: oneshot::Sender<bool>,
    receiver: tokio::task::JoinHandle<Option<UsageFds>>,
    /// `None` with `usage.ledger = "off"`.
    writer: Option<std::thread::JoinHandle<()>>,
    /// Joins each record's tokens with the front's half of its access line.
    joiner: access::Joiner,
    access: access::AccessLog,
    _socket: SocketFile,
}

/// The usage sockets an in-place upgrade hands to the next image: the listener, and the
/// connection of every worker that keeps running (adopted workers go on sending on it).
pub struct UsageFds {
    pub listener: OwnedFd,
    pub conns: Vec<OwnedFd>,
}

/// The socket's file, removed when it drops: at `stop`, and on a failed start whose later step
/// (the pool, the front) fails after the socket was bound, so no runtime file is left behind.
struct SocketFile(PathBuf);

impl Drop for SocketFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Opens the ledger (unless `usage.ledger = "off"`) and binds the socket; records settle into
/// `book` either way. Errors name the path; `start` fails with them (exit 1).
pub fn start(
    cfg: &Config,
    runtime_dir: &Path,
    metrics: &SupervisorMetrics,
    book: &Arc<Book>,
) -> Result<Usage, String> {
    start_adopting(cfg, runtime_dir, metrics, book, None)
}

/// `start`, on the sockets an upgrading image handed over (`Usage::hand_over`) when given:
/// the listener stays bound at its path, and the adopted workers' connections are read on.
pub fn start_adopting(
    cfg: &Config,
    runtime_dir: &Path,
    metrics: &SupervisorMetrics,
    book: &Arc<Book>,
    handed: Option<UsageFds>,
) -> Result<Usage, String> {
    let ledger = match ledger::path(&cfg.usage)? {
        Some(path) => Some((ledger::open_rw(&path)?, path)),
        None => None,
    };
    let socket = runtime_dir.join(SOCKET_NAME);
    let (sock, conns) = match handed {
        Some(h) => (
            watch(h.listener).map_err(|e| format!("usage socket {}: {e}", socket.display()))?,
            h.conns,
        ),
        None => {
            let _ = std::fs::remove_file(&socket);
            let sock =
                listen(&socket).map_err(|e| format!("usage socket {}: {e}", socket.display()))?;
            (sock, Vec::new())
        }
    };
    let socket = SocketFile(socket);
    let socket_path = &socket.0;
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(socket_path, std::fs::Permissions::from_mode(0o600))
            .map_err(|e| format!("usage socket {}: {e}", socket_path.display()))?;
    }
    let counters = Counters::new(metrics, book.clone());
    let (tx, writer) = match ledger {
        Some((conn, path)) => {
            let (tx, rx) = mpsc::sync_channel(QUEUE);
            let retention = cfg.usage.retention;
            let c = counters.clone();
            let writer = std::thread::Builder::new()
                .name("usage-ledger".into())
                .spawn(move || {
                    seed(&conn, &path, &c.book);
                    write_loop(conn, path, rx, c, retention)
                })
                .map_err(|e| format!("usage ledger thread: {e}"))?;
            (Some(tx), Some(writer))
        }
        None => (None, None),
    };
    let (stop, stopped) = oneshot::channel();
    let (access, joiner) = access::start();
    let receiver = tokio::spawn(receive(sock, conns, tx, counters, access.clone(), stopped));
    Ok(Usage {
        stop,
        receiver,
        writer,
        joiner,
        access,
        _socket: socket,
    })
}

/// Adds each client's tokens of the current UTC day and cost of the current UTC month, as the
/// ledger holds them, to its limit counters. Runs on the ledger thread before its first write,
/// so what it reads is exactly the records of earlier runs.
fn seed(conn: &rusqlite::Connection, path: &Path, book: &Book) {
    let now = limits::now_ms();
    let (day, month) = Book::seed_since(now);
    for name in book.names() {
        let totals = ledger::client_totals(conn, &name, day)
            .and_then(|(tokens, _)| Ok((tokens, ledger::client_totals(conn, &name, month)?.1)));
        match totals {
            Ok((tokens, usd)) => book.seed(&name, tokens.max(0) as u64, usd, now),
            Err(e) => tracing::error!(ledger = %path.display(), client = %name, error = %e,
                "cannot read the client's budget use from the ledger; it starts at 0"),
        }
    }
}

impl Usage {
    /// Where the front sends its half of each access line.
    pub fn access(&self) -> access::AccessLog {
        self.access.clone()
    }

    /// After the workers stopped: takes what is still in the socket, writes the last batch.
    pub async fn stop(mut self) {
        let _ = std::mem::replace(&mut self.stop, oneshot::channel().0).send(false);
        let _ = (&mut self.receiver).await;
        self.finish().await;
        // `_socket` drops here, removing the file.
    }

    /// An in-place upgrade, after the workers were handed over: reads what they sent so far,
    /// writes the last batch, and returns the listener and their connections, for the next
    /// image (the socket file stays).
    pub async fn hand_over(mut self) -> Option<UsageFds> {
        let _ = std::mem::replace(&mut self.stop, oneshot::channel().0).send(true);
        let fds = (&mut self.receiver).await.ok().flatten();
        std::mem::forget(std::mem::replace(
            &mut self._socket,
            SocketFile(PathBuf::new()),
        ));
        self.finish().await;
        fds
    }

    async fn finish(self) {
        self.joiner.stop().await;
        if let Some(writer) = self.writer {
            let _ = tokio::task::spawn_blocking(move || writer.join()).await;
        }
    }
}

/// The listening `SOCK_SEQPACKET` socket at `path` (0600 is set by the caller). Chosen over
/// datagrams because a datagram socket's queue holds only `net.unix.max_dgram_qlen` (10)
/// messages, which a burst fills at once; a connection's buffer holds hundreds, keeps message
/// boundaries, and what a worker sent stays readable after the worker dies.
fn listen(path: &Path) -> std::io::Result<AsyncFd<OwnedFd>> {
    use nix::sys::socket::{self as so, Backlog, UnixAddr};
    let fd = gateway::usage::seqpacket_socket()?;
    so::bind(fd.as_raw_fd(), &UnixAddr::new(path)?)?;
    so::listen(&fd, Backlog::new(128)?)?;
    watch(fd)
}

/// `fd` registered with the reactor.
fn watch(fd: OwnedFd) -> std::io::Result<AsyncFd<OwnedFd>> {
    // SAFETY: an `OwnedFd` keeps its descriptor open and the same until it is dropped, which
    // only the `AsyncFd` owning it does.
    unsafe { AsyncFd::register(fd) }.map_err(std::io::Error::from)
}

/// How long `stop` waits for the workers' connections to reach their end.
const DRAIN: Duration = Duration::from_secs(2);

/// The accepting task: one reader per worker connection, all owned here; on stop, the readers
/// (whose workers have exited) read what is left up to the end, for at most `DRAIN`.
/// `conns`: connections handed over by the previous image. On a hand-over the readers stop
/// once they read what is there, and the listener and the connections are returned.
async fn receive(
    sock: AsyncFd<OwnedFd>,
    conns: Vec<OwnedFd>,
    tx: Option<SyncSender<Record>>,
    c: Counters,
    access: access::AccessLog,
    mut stopped: oneshot::Receiver<bool>,
) -> Option<UsageFds> {
    let (halt_tx, halt) = tokio::sync::watch::channel(false);
    let mut readers = tokio::task::JoinSet::new();
    // One reader per connection, owned by `readers`.
    let read = |readers: &mut tokio::task::JoinSet<_>, fd: OwnedFd| -> std::io::Result<()> {
        let conn = watch(fd)?;
        readers.spawn(read_conn(
            conn,
            tx.clone(),
            c.clone(),
            access.clone(),
            halt.clone(),
        ));
        Ok(())
    };
    for fd in conns {
        if let Err(e) = read(&mut readers, fd) {
            tracing::error!(error = %e, "handed usage connection not watched");
        }
    }
    let mut hand_over = false;
    loop {
        tokio::select! {
            r = sock.readable() => {
                let Ok(mut guard) = r else { break };
                match accept(&sock) {
                    Ok(fd) => {
                        if let Err(e) = read(&mut readers, fd) {
                            tracing::error!(error = %e, "usage connection not watched");
                        }
                    }
                    Err(nix::errno::Errno::EAGAIN) => guard.clear_ready(),
                    Err(e) => {
                        tracing::error!(error = %e, "usage socket accept failed");
                        guard.clear_ready();
                    }
                }
            }
            Some(_) = readers.join_next(), if !readers.is_empty() => {}
            r = &mut stopped => {
                hand_over = r.unwrap_or(false);
                break;
            }
        }
    }
    // Connections still in the backlog (a worker that connected just now) are read too.
    while let Ok(fd) = accept(&sock) {
        if let Err(e) = read(&mut readers, fd) {
            tracing::error!(error = %e, "usage connection not watched");
        }
    }
    if hand_over {
        let _ = halt_tx.send(true);
        let mut conns = Vec::new();
        while let Some(r) = readers.join_next().await {
            conns.extend(r.ok().flatten());
        }
        return Some(UsageFds {
            listener: sock.into_inner(),
            conns,
        });
    }
    let _ = tokio::time::timeout(DRAIN, async {
        while readers.join_next().await.is_some() {}
    })
    .await;
    readers.abort_all();
    None
}

/// The next connection waiting on `listener` (non-blocking).
fn accept(listener: &AsyncFd<OwnedFd>) -> nix::Result<OwnedFd> {
    use nix::sys::socket::{accept4, SockFlag};
    let raw = accept4(
        listener.get_ref().as_raw_fd(),
        SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
    )?;
    // SAFETY: accept4 just returned this descriptor; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(raw) })
}

/// One worker's connection: a record per message, until the worker closes it (or dies), or
/// until `halt` (a hand-over): then what is readable now is read, and the connection returned.
async fn read_conn(
    conn: AsyncFd<OwnedFd>,
    tx: Option<SyncSender<Record>>,
    c: Counters,
    access: access::AccessLog,
    mut halt: tokio::sync::watch::Receiver<bool>,
) -> Option<OwnedFd> {
    use nix::sys::socket::{recv, MsgFlags};
    let mut buf = vec![0u8; MAX_MESSAGE];
    // false: the connection ended.
    let drain = |buf: &mut [u8]| loop {
        match recv(conn.get_ref().as_raw_fd(), buf, MsgFlags::MSG_DONTWAIT) {
            Ok(0) => return false,
            Ok(n) => take(&buf[..n], &tx, &c, &access),
            Err(nix::errno::Errno::EAGAIN) => return true,
            Err(nix::errno::Errno::EINTR) => {}
            Err(e) => {
                tracing::warn!(error = %e, "usage connection failed");
                return false;
            }
        }
    };
    loop {
        tokio::select! {
            r = conn.readable() => {
                let Ok(mut guard) = r else { return None };
                if !drain(&mut buf) {
                    return None;
                }
                guard.clear_ready();
            }
            _ = halt.wait_for(|h| *h) => {
                return drain(&mut buf).then(|| conn.into_inner());
            }
        }
    }
}

/// One message: decoded, settled into its client's limits, joined with its access line,
/// queued for the ledger.
fn take(message: &[u8], tx: &Option<SyncSender<Record>>, c: &Counters, access: &access::AccessLog) {
    let rec = match Record::decode(message) {
        Ok(r) => r,
        Err(e) => {
            c.failed.inc();
            tracing::warn!(error = %e, bytes = message.len(), "unreadable usage record");
            return;
        }
    };
    c.dropped.inc_by(rec.dropped_before);
    if !rec.client.is_empty() {
        c.book.settle(&rec.client, Used::of(&rec));
    }
    // The tokens go on the request's access line (no line of their own).
    let t = access::Tokens {
        tokens: rec.tokens,
        cost_usd: rec.cost_usd,
        provider: rec.provider.clone(),
        translation: rec.translation.clone(),
    };
    access.record(&rec.request_id, t);
    let Some(tx) = tx else { return };
    if let Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) = tx.try_send(rec) {
        c.dropped.inc();
    }
}

/// The ledger thread: every `FLUSH_EVERY`, what the queue holds in transactions of up to
/// `BATCH`; retention every `PRUNE_EVERY` in bounded deletes; ends (after a last write) when the
/// receiver is gone.
fn write_loop(
    mut conn: rusqlite::Connection,
    path: PathBuf,
    rx: mpsc::Receiver<Record>,
    c: Counters,
    retention: Duration,
) {
    let mut batch: Vec<Record> = Vec::with_capacity(BATCH);
    let mut next_prune = Instant::now();
    let write = |conn: &mut rusqlite::Connection, batch: &mut Vec<Record>| {
        match ledger::insert(conn, batch) {
            Ok(()) => c.written.inc_by(batch.len() as u64),
            Err(e) => {
                c.failed.inc_by(batch.len() as u64);
                tracing::error!(ledger = %path.display(), error = %e, records = batch.len(),
                    "cannot write usage records to the ledger; they are lost (serving goes on)");
                0
            }
        };
        batch.clear();
    };
    loop {
        // Sleeping, not waiting on the queue: the receiver never wakes this thread per record.
        std::thread::sleep(FLUSH_EVERY);
        let mut open = true;
        loop {
            match rx.try_recv() {
                Ok(r) => {
                    batch.push(r);
                    if batch.len() == BATCH {
                        write(&mut conn, &mut batch);
                    }
                }
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => {
                    open = false;
                    break;
                }
            }
        }
        if !batch.is_empty() {
            write(&mut conn, &mut batch);
        }
        if !retention.is_zero() && Instant::now() >= next_prune {
            // A backlog is deleted over several passes, so batches keep being written.
            let more = prune(&conn, &path, retention);
            next_prune = Instant::now() + if more { FLUSH_EVERY } else { PRUNE_EVERY };
        }
        if !open {
            return;
        }
    }
}

/// Bounded deletes per retention pass.
const PRUNE_PASS: usize = 20;

/// One retention pass: up to `PRUNE_PASS` bounded deletes (each its own short transaction);
/// true when old rows are left.
fn prune(conn: &rusqlite::Connection, path: &Path, retention: Duration) -> bool {
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    let before = now_ms - retention.as_millis().min(i64::MAX as u128) as i64;
    for _ in 0..PRUNE_PASS {
        match ledger::prune_batch(conn, before) {
            Ok(n) if n == ledger::PRUNE_BATCH => continue,
            Ok(_) => return false,
            Err(e) => {
                tracing::error!(ledger = %path.display(), error = %e, "usage retention failed");
                return false;
            }
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    pub fn connect(path: &Path) -> OwnedFd {
        use nix::sys::socket::{self as so, AddressFamily, SockFlag, SockType, UnixAddr};
        let fd = so::socket(
            AddressFamily::Unix,
            SockType::SeqPacket,
            SockFlag::SOCK_CLOEXEC,
            None,
        )
        .unwrap();
        so::connect(fd.as_raw_fd(), &UnixAddr::new(path).unwrap()).unwrap();
        fd
    }

    fn counted(m: &SupervisorMetrics, outcome: &str) -> u64 {
        m.usage_records
            .get_or_create(&OutcomeLabel {
                outcome: outcome.into(),
            })
            .get()
    }

    /// A full queue drops (and counts) instead of waiting; a worker's own drops are added; an
    /// unreadable datagram is counted as failed.
    #[test]
    fn a_full_queue_counts_drops_and_never_waits() {
        let (m, _) = SupervisorMetrics::new();
        let c = Counters::new(&m, Default::default());
        let (tx, rx) = mpsc::sync_channel(1);
        let tx = Some(tx);
        let mut rec = ledger::tests::rec(1, "a", "m", 1, None);
        take(&rec.encode(), &tx, &c, &Default::default());
        rec.dropped_before = 3;
        take(&rec.encode(), &tx, &c, &Default::default());
        take(b"not json", &tx, &c, &Default::default());
        assert_eq!(counted(&m, "dropped"), 1 + 3);
        assert_eq!(counted(&m, "failed"), 1);
        assert_eq!(rx.try_iter().count(), 1);
    }

    /// Every record settles into its client's counters, with the ledger off (no queue) too;
    /// a record naming no configured client is ignored.
    #[test]
    fn records_settle_into_their_clients_limits() {
        use crate::front::limits::{CounterStore, Limit, Limits};
        let (m, _) = SupervisorMetrics::new();
        let book = Arc::new(Book::default());
        let desk = book.counters("desk");
        let c = Counters::new(&m, book.clone());
        let mut rec = ledger::tests::rec(limits::now_ms(), "desk", "m", 1, None);
        rec.tokens.input = 30;
        rec.tokens.output = 20;
        take(&rec.encode(), &None, &c, &Default::default());
        rec.client = "other".into();
        take(&rec.encode(), &None, &c, &Default::default());
        let l = Limits {
            daily_tokens: 50,
            ..Default::default()
        };
        let now = limits::now_ms();
        assert_eq!(desk.admit(&l, now).unwrap_err().limit, Limit::DailyTokens);
        let lower = Limits {
            daily_tokens: 51,
            ..Default::default()
        };
        assert!(desk.admit(&lower, now).is_ok(), "counted once, not twice");
    }

    /// At start the ledger thread seeds each client's day and month from the rows already there.
    #[tokio::test]
    async fn the_ledger_seeds_the_budgets_at_start() {
        use crate::front::limits::{CounterStore, Limit, Limits};
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("u.db");
        let mut conn = ledger::open_rw(&db).unwrap();
        let now = limits::now_ms();
        let old = ledger::tests::rec(now - 40 * 86_400_000, "desk", "m", 1, Some(5.0));
        let today = ledger::tests::rec(now, "desk", "m", 1, Some(0.5));
        ledger::insert(&mut conn, &[old, today.clone()]).unwrap();
        drop(conn);
        let book = Book::default();
        let desk = book.counters("desk");
        seed(&ledger::open_rw(&db).unwrap(), &db, &book);
        let t = today.tokens;
        let used = t.input + t.output + t.cache_read + t.cache_write;
        let day = |n| Limits {
            daily_tokens: n,
            ..Default::default()
        };
        assert_eq!(
            desk.admit(&day(used), now).unwrap_err().limit,
            Limit::DailyTokens
        );
        assert!(
            desk.admit(&day(used + 1), now).is_ok(),
            "the 40-day-old row is not today's"
        );
        let usd = |v| Limits {
            monthly_usd: v,
            ..Default::default()
        };
        assert!(desk.admit(&usd(0.5), now).is_err());
        assert!(
            desk.admit(&usd(0.6), now).is_ok(),
            "last month's $5 does not count"
        );
    }

    /// Records go through the socket and the thread into the ledger; `stop` writes the last
    /// batch and removes the socket.
    #[tokio::test]
    async fn records_sent_to_the_socket_are_written() {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = Config::default();
        cfg.usage.ledger = dir.path().join("u.db").display().to_string();
        let (m, _) = SupervisorMetrics::new();
        let u = start(&cfg, dir.path(), &m, &Default::default()).unwrap();
        let sock = socket_in(dir.path()).expect("the socket exists");
        let tx = crate::usage::tests::connect(&sock);
        for i in 0..3 {
            // Recent: older rows would go at once with the 90-day retention.
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap()
                .as_millis() as i64;
            let r = ledger::tests::rec(now + i, "a", "m", 1, None);
            nix::sys::socket::send(
                tx.as_raw_fd(),
                &r.encode(),
                nix::sys::socket::MsgFlags::empty(),
            )
            .unwrap();
        }
        drop(tx);
        u.stop().await;
        assert!(socket_in(dir.path()).is_none());
        assert_eq!(counted(&m, "written"), 3);
        let c = ledger::open_ro(&dir.path().join("u.db")).unwrap();
        assert_eq!(
            ledger::summary(&c, 0, i64::MAX, &[]).unwrap()[0].requests,
            3
        );
    }
}
