//! Keep-alive HTTP/1.1 connections from the front to the workers, pooled per worker slot.
//!
//! Why not hyper-util's pooled `Client`: a profile under load showed its pool (one map of idle
//! lists keyed by scheme and authority, scanned on every checkout, behind one mutex, plus boxed
//! futures per request) at about 5 % of the supervisor's CPU. The workers are a handful of fixed
//! loopback addresses, so this pool is a small table of slots, each a stack of idle connections:
//! a checkout is one pop, a return one push.
//!
//! HTTP/1.1 cannot start a request before the previous response has ended, so a connection
//! goes back to its stack only when the response body it carried has ended
//! ([`Conn::give_back`], called by the response wrapper). A response dropped half-way drops its
//! connection, and hyper closes it. A request that fails on a reused connection before it was
//! written (the worker closed that connection meanwhile, e.g. it restarted) is sent again on
//! another connection of the same slot; anything else is the caller's to retry elsewhere.
//!
//! Idle connections are bounded per slot ([`MAX_IDLE`]) and closed after [`IDLE_TIMEOUT`]
//! (`prune`, run periodically by the front), so a burst does not leave memory behind in the
//! front or the workers.
//!
//! Streaming requests to a built-in worker (over its Unix socket) go instead over one HTTP/2
//! connection per slot, multiplexed ([`SlotConns::send_stream`]). Why: a held SSE stream over
//! HTTP/1.1 keeps a connection of its own for minutes, which costs two hyper connections (the
//! front's client side and the worker's server side, each with its 8 KB read buffer, 8 KB
//! header buffer and a task), about 35 KB per stream; as an HTTP/2 stream it costs a few
//! hundred bytes of stream state on each side. Short requests stay on HTTP/1.1, which is
//! cheaper per request than HTTP/2's framing. A custom `worker_command` is reached over its
//! port with HTTP/1.1 only, since nothing says it speaks HTTP/2.
//!
//! Flow control: each stream's receive window is [`H2_STREAM_WINDOW`], so a client that stops
//! reading holds at most that much in the front; the connection window is the largest allowed,
//! so stalled streams never stall the others sharing the connection.

use crate::pool::WorkerSlot;
use arc_swap::ArcSwap;
use bytes::Bytes;
use http::header::{HeaderValue, HOST};
use http::uri::Authority;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use std::future::Future;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Idle connections kept per worker slot; more are closed when they come back.
pub const MAX_IDLE: usize = 128;
/// An idle connection unused for this long is closed.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// Loopback: a connect that takes longer than this is a worker that is not accepting.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Per-stream HTTP/2 receive window (the protocol's default).
pub const H2_STREAM_WINDOW: u32 = 64 << 10;
/// The connection window: the protocol's maximum, see the module docs.
const H2_CONN_WINDOW: u32 = (1 << 31) - 1;
/// Slot tables remembered at most; past it the table starts over (slots are fixed per pool, so
/// this only matters if a pool is resized very many times).
const MAX_SLOTS: usize = 1024;

type Sender = SendRequest<Full<Bytes>>;
type Sender2 = hyper::client::conn::http2::SendRequest<Full<Bytes>>;

/// Where a worker takes connections from the front.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WorkerAddr {
    Tcp(SocketAddr),
    Unix(PathBuf),
}

/// Why a request could not be sent to a worker (no response head came back).
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    #[error("cannot connect to the worker: {0}")]
    Connect(std::io::Error),
    #[error("{0}")]
    Http(#[from] hyper::Error),
}

/// One worker slot's connections.
pub struct SlotConns {
    id: usize,
    addr: WorkerAddr,
    /// `127.0.0.1:PORT`: HTTP/1.1 requests must carry a Host...
    host: HeaderValue,
    /// ... and HTTP/2 ones an `:authority`; both built once.
    authority: Authority,
    /// Idle connections, most recently used on top, with when they went idle. A std mutex: each
    /// critical section is one push or pop (never across an `.await`); a lock-free stack would
    /// need a crate for a few nanoseconds.
    idle: Mutex<Vec<(Sender, Instant)>>,
    /// The slot's HTTP/2 connection for streams, once opened (Unix sockets only). A std mutex
    /// held to clone or replace the handle, never across an `.await`.
    h2: Mutex<Option<Sender2>>,
}

/// The connection a response arrived on; see [`Conn::give_back`].
pub struct Conn(Option<(Sender, Arc<SlotConns>)>);

impl Conn {
    /// The response body this connection carried has ended: an HTTP/1.1 connection may serve
    /// the next request (an HTTP/2 stream needs nothing).
    pub fn give_back(self) {
        if let Some((sender, home)) = self.0 {
            home.put(sender);
        }
    }
}

impl SlotConns {
    fn new(id: usize, addr: WorkerAddr, port: u16) -> Self {
        let authority = Authority::from_maybe_shared(Bytes::from(format!("127.0.0.1:{port}")))
            .expect("an address and a port make a valid authority");
        let host = HeaderValue::from_str(authority.as_str())
            .expect("an authority is a valid header value");
        Self {
            id,
            addr,
            host,
            authority,
            idle: Mutex::new(Vec::new()),
            h2: Mutex::new(None),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<(Sender, Instant)>> {
        // Every change is one push or pop: a poisoned stack is still consistent.
        self.idle.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The most recently used idle connection that is ready for a request, else the most
    /// recent one still open (it is only waiting for hyper's connection task to finish the
    /// previous exchange). Closed ones met on the way are dropped. Only the top few are
    /// looked at, so a pop stays a handful of atomic loads.
    fn pop(&self) -> Option<Sender> {
        const LOOK: usize = 8;
        let mut idle = self.lock();
        while idle.last().is_some_and(|(s, _)| s.is_closed()) {
            idle.pop();
        }
        let n = idle.len();
        let ready = (n.saturating_sub(LOOK)..n)
            .rev()
            .find(|&i| idle[i].0.is_ready());
        match ready {
            Some(i) => Some(idle.remove(i).0),
            // A closed one further down is dropped by `prune`, or skipped by `send`.
            None => idle.pop().map(|(s, _)| s),
        }
    }

    fn put(&self, s: Sender) {
        if s.is_closed() {
            return;
        }
        let mut idle = self.lock();
        if idle.len() < MAX_IDLE {
            idle.push((s, Instant::now()));
        }
    }

    /// Closes the connections idle for longer than `IDLE_TIMEOUT` (the oldest are at the
    /// bottom of the stack) and the ones already closed by the worker.
    fn prune(&self, now: Instant) {
        self.lock()
            .retain(|(s, since)| !s.is_closed() && now.duration_since(*since) < IDLE_TIMEOUT);
    }

    /// Idle connections right now.
    pub fn idle(&self) -> usize {
        self.lock().len()
    }

    async fn connect(&self) -> Result<Sender, SendError> {
        let (sender, conn) = match &self.addr {
            WorkerAddr::Tcp(a) => {
                let s = dial(tokio::net::TcpStream::connect(a)).await?;
                let _ = s.set_nodelay(true);
                let (sender, conn) = http1::handshake(TokioIo::new(s)).await?;
                (sender, ConnTask::Tcp(conn))
            }
            WorkerAddr::Unix(p) => {
                let s = dial(tokio::net::UnixStream::connect(p)).await?;
                let (sender, conn) = http1::handshake(TokioIo::new(s)).await?;
                (sender, ConnTask::Unix(conn))
            }
        };
        // The connection's task ends when the worker closes it or when its `SendRequest` is
        // dropped while idle (pruned, pool full, response dropped half-way): it owns nothing
        // that outlives the connection.
        let id = self.id;
        tokio::spawn(async move {
            if let Err(e) = conn.run().await {
                tracing::debug!(worker = id, error = %e, "worker connection ended with an error");
            }
        });
        Ok(sender)
    }

    /// Sends `req` (origin-form URI) and waits for the response head. On success the
    /// connection rides along with the response until its body ends.
    pub async fn send(
        self: &Arc<Self>,
        mut req: Request<Full<Bytes>>,
    ) -> Result<(Response<Incoming>, Conn), SendError> {
        req.headers_mut().insert(HOST, self.host.clone());
        loop {
            let (mut sender, reused) = match self.pop() {
                Some(s) => (s, true),
                None => (self.connect().await?, false),
            };
            if let Err(e) = sender.ready().await {
                if reused {
                    continue;
                }
                return Err(e.into());
            }
            match sender.try_send_request(req).await {
                Ok(resp) => return Ok((resp, Conn(Some((sender, self.clone()))))),
                Err(mut e) => match e.take_message() {
                    // Never written, on a connection the worker had closed meanwhile: the
                    // request is intact, so it goes out again on another connection.
                    Some(r) if reused => req = r,
                    _ => return Err(e.into_error().into()),
                },
            }
        }
    }
}

impl WorkerConns {
    /// GETs `path` from `slot` and returns its body if the status is a success and the body
    /// at most `limit` bytes (a worker's own endpoints: `/metrics`, `/v1/models`).
    pub async fn get(
        &self,
        slot: &WorkerSlot,
        path: &'static str,
        limit: usize,
    ) -> Result<Bytes, &'static str> {
        use http_body_util::BodyExt;
        let req = Request::get(path)
            .body(Full::new(Bytes::new()))
            .map_err(|_| "bad request")?;
        let (resp, conn) = self
            .for_slot(slot)
            .send(req)
            .await
            .map_err(|_| "worker unreachable")?;
        if !resp.status().is_success() {
            return Err("worker answered an error");
        }
        let body = http_body_util::Limited::new(resp.into_body(), limit)
            .collect()
            .await
            .map_err(|_| "body failed")?;
        conn.give_back();
        Ok(body.to_bytes())
    }
}

impl SlotConns {
    /// Sends a streaming request over the slot's HTTP/2 connection (opened on first use, and
    /// again after the worker closed it); HTTP/1.1 when the slot does not multiplex.
    pub async fn send_stream(
        self: &Arc<Self>,
        req: Request<Full<Bytes>>,
    ) -> Result<(Response<Incoming>, Conn), SendError> {
        let WorkerAddr::Unix(path) = &self.addr else {
            return self.send(req).await;
        };
        let mut req = req;
        // HTTP/2 carries the target as :scheme, :authority and :path.
        let mut parts = http::uri::Parts::default();
        parts.scheme = Some(http::uri::Scheme::HTTP);
        parts.authority = Some(self.authority.clone());
        parts.path_and_query = req.uri().path_and_query().cloned();
        *req.uri_mut() = http::Uri::from_parts(parts).map_err(|_| {
            SendError::Connect(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "the request has no path",
            ))
        })?;
        let mut fresh = false;
        loop {
            let current = self.lock_h2().clone().filter(|s| !s.is_closed());
            let mut sender = match current {
                Some(s) => s,
                None => {
                    fresh = true;
                    self.open_h2(path).await?
                }
            };
            if let Err(e) = sender.ready().await {
                // The worker closed it (it restarted, or drains): one fresh connection.
                self.lock_h2().take();
                if fresh {
                    return Err(e.into());
                }
                continue;
            }
            let resp = sender.send_request(req).await?;
            return Ok((resp, Conn(None)));
        }
    }

    fn lock_h2(&self) -> std::sync::MutexGuard<'_, Option<Sender2>> {
        self.h2.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Opens the HTTP/2 connection and stores it, unless a concurrent request stored a live
    /// one meanwhile (then that one is used, and this one closes unused).
    async fn open_h2(&self, path: &std::path::Path) -> Result<Sender2, SendError> {
        let s = dial(tokio::net::UnixStream::connect(path)).await?;
        let (sender, conn) =
            hyper::client::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
                .initial_stream_window_size(H2_STREAM_WINDOW)
                .initial_connection_window_size(H2_CONN_WINDOW)
                .handshake(TokioIo::new(s))
                .await?;
        let id = self.id;
        // Ends when the worker closes the connection or every handle to it is dropped.
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(worker = id, error = %e, "worker HTTP/2 connection ended with an error");
            }
        });
        let mut shared_h2 = self.lock_h2();
        match shared_h2.as_ref().filter(|s| !s.is_closed()) {
            Some(live) => Ok(live.clone()),
            None => {
                *shared_h2 = Some(sender.clone());
                Ok(sender)
            }
        }
    }
}

/// A connect to a worker, bounded by [`CONNECT_TIMEOUT`].
async fn dial<S>(connect: impl Future<Output = std::io::Result<S>>) -> Result<S, SendError> {
    tokio::time::timeout(CONNECT_TIMEOUT, connect)
        .await
        .map_err(|_| SendError::Connect(std::io::ErrorKind::TimedOut.into()))?
        .map_err(SendError::Connect)
}

/// The two kinds of connection future, so one spawned task type serves both.
enum ConnTask {
    Tcp(http1::Connection<TokioIo<tokio::net::TcpStream>, Full<Bytes>>),
    Unix(http1::Connection<TokioIo<tokio::net::UnixStream>, Full<Bytes>>),
}

impl ConnTask {
    async fn run(self) -> hyper::Result<()> {
        match self {
            Self::Tcp(c) => c.await,
            Self::Unix(c) => c.await,
        }
    }
}

/// Every slot's connections, found by slot id and port.
#[derive(Default)]
pub struct WorkerConns {
    slots: ArcSwap<Vec<Arc<SlotConns>>>,
}

impl WorkerConns {
    /// The connections of `slot`, created on first use: over its front socket when its
    /// processes serve one, else over its port.
    pub fn for_slot(&self, slot: &WorkerSlot) -> Arc<SlotConns> {
        let unix = slot.served_front_socket();
        // Compared in place: this runs per request and must not allocate.
        let found = |v: &[Arc<SlotConns>]| {
            v.iter()
                .find(|c| {
                    c.id == slot.id
                        && match (&c.addr, unix) {
                            (WorkerAddr::Unix(p), Some(q)) => p == q,
                            (WorkerAddr::Tcp(a), None) => a.port() == slot.port,
                            _ => false,
                        }
                })
                .cloned()
        };
        if let Some(c) = found(&self.slots.load()) {
            return c;
        }
        let addr = match unix {
            Some(p) => WorkerAddr::Unix(p.to_path_buf()),
            None => WorkerAddr::Tcp(SocketAddr::from((Ipv4Addr::LOCALHOST, slot.port))),
        };
        let fresh = Arc::new(SlotConns::new(slot.id, addr, slot.port));
        let mut chosen = fresh.clone();
        self.slots.rcu(|cur| {
            if let Some(c) = found(cur) {
                chosen = c;
                return (**cur).clone();
            }
            chosen = fresh.clone();
            let mut v = if cur.len() >= MAX_SLOTS {
                Vec::new()
            } else {
                (**cur).clone()
            };
            v.push(fresh.clone());
            v
        });
        chosen
    }

    /// Closes idle connections past `IDLE_TIMEOUT` in every slot.
    pub fn prune(&self) {
        let now = Instant::now();
        for s in self.slots.load().iter() {
            s.prune(now);
        }
    }

    /// Idle connections across every slot.
    pub fn idle(&self) -> usize {
        self.slots.load().iter().map(|s| s.idle()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;
    use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};

    /// Serves one test connection, HTTP/1.1 or HTTP/2: every answer is "VERSION TARGET", with
    /// the request's Host echoed as `x-host`.
    async fn answer_on<S>(io: S)
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let svc = hyper::service::service_fn(|r: Request<Incoming>| async move {
            let target = r.uri().path_and_query().map_or("", |p| p.as_str());
            let text = format!("{:?} {target}", r.version());
            let mut resp = Response::new(Full::new(Bytes::from(text)));
            if let Some(h) = r.headers().get(HOST) {
                resp.headers_mut().insert("x-host", h.clone());
            }
            Ok::<_, std::convert::Infallible>(resp)
        });
        let b = hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new());
        let _ = b.serve_connection(TokioIo::new(io), svc).await;
    }

    /// A worker stand-in on `port` (0: any) counting the connections it accepted; aborting its
    /// task closes every connection.
    async fn server(port: u16) -> (u16, Arc<AtomicUsize>, tokio::task::JoinHandle<()>) {
        let l = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .unwrap();
        let port = l.local_addr().unwrap().port();
        let accepted = Arc::new(AtomicUsize::new(0));
        let a = accepted.clone();
        let task = tokio::spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            loop {
                let Ok((s, _)) = l.accept().await else { return };
                a.fetch_add(1, SeqCst);
                conns.spawn(answer_on(s));
            }
        });
        (port, accepted, task)
    }

    fn get(path: &str) -> Request<Full<Bytes>> {
        Request::get(path).body(Full::new(Bytes::new())).unwrap()
    }

    /// GET `path` on `c`, the whole body read, the connection given back.
    async fn round_trip(c: &Arc<SlotConns>, path: &str) -> Bytes {
        let (resp, conn) = c.send(get(path)).await.unwrap();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        conn.give_back();
        body
    }

    /// A connection is reused only after the body it carried ended; one dropped half-way is
    /// not; requests carry the worker's Host and an origin-form target.
    #[tokio::test]
    async fn reuses_a_connection_only_after_its_body_ended() {
        let (port, accepted, _t) = server(0).await;
        let conns = WorkerConns::default();
        let slot = WorkerSlot::new(0, port);
        let c = conns.for_slot(&slot);
        assert!(
            Arc::ptr_eq(&c, &conns.for_slot(&slot)),
            "one table per slot"
        );
        let (resp, conn) = c.send(get("/v1/health?x=1")).await.unwrap();
        assert_eq!(resp.headers()["x-host"], format!("127.0.0.1:{port}"));
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(body, "HTTP/1.1 /v1/health?x=1");
        conn.give_back();
        assert_eq!(c.idle(), 1);
        let (resp, conn) = c.send(get("/a")).await.unwrap();
        resp.into_body().collect().await.unwrap();
        assert_eq!(accepted.load(SeqCst), 1, "the idle connection was reused");
        // Dropped without giving back (its body was abandoned): the next request connects anew.
        drop(conn);
        round_trip(&c, "/b").await;
        assert_eq!(accepted.load(SeqCst), 2);
    }

    /// Idle connections closed by the worker are skipped, and the request goes out on a new
    /// connection to whoever serves the address now (a restarted worker).
    #[tokio::test]
    async fn a_connection_closed_while_idle_is_replaced() {
        let (port, _accepted, task) = server(0).await;
        let conns = WorkerConns::default();
        let c = conns.for_slot(&WorkerSlot::new(0, port));
        round_trip(&c, "/a").await;
        assert_eq!(c.idle(), 1);
        // The worker goes away, closing its connections.
        task.abort();
        let _ = task.await;
        let deadline = Instant::now() + Duration::from_secs(10);
        while !c.lock().iter().all(|(s, _)| s.is_closed()) {
            assert!(
                Instant::now() < deadline,
                "the idle connection never noticed"
            );
            tokio::task::yield_now().await;
        }
        assert!(c.send(get("/b")).await.is_err(), "nobody listens now");
        let (_, accepted, _t) = server(port).await;
        assert_eq!(
            round_trip(&c, "/c").await,
            "HTTP/1.1 /c",
            "sent to the new worker"
        );
        assert_eq!(accepted.load(SeqCst), 1);
    }

    /// The same stand-in on a Unix socket at `path`.
    fn unix_server(
        path: &std::path::Path,
        accepted: Arc<AtomicUsize>,
    ) -> tokio::task::JoinHandle<()> {
        let l = tokio::net::UnixListener::bind(path).unwrap();
        tokio::spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            loop {
                let Ok((s, _)) = l.accept().await else { return };
                accepted.fetch_add(1, SeqCst);
                conns.spawn(answer_on(s));
            }
        })
    }

    /// Streams to a slot with a served Unix socket share one HTTP/2 connection; plain requests
    /// take HTTP/1.1 over the same socket; after the worker closes it, the next stream opens
    /// a new connection.
    #[tokio::test]
    async fn streams_share_one_http2_connection_over_the_unix_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("worker-0.sock");
        let accepted = Arc::new(AtomicUsize::new(0));
        let server = unix_server(&path, accepted.clone());
        let mut slot = WorkerSlot::new(0, 1);
        slot.front_socket = Some(path.clone());
        slot.front_served.store(true, SeqCst);
        let conns = WorkerConns::default();
        let c = conns.for_slot(&slot);
        let text = |r: Response<Incoming>| async move {
            let b = r.into_body().collect().await.unwrap().to_bytes();
            String::from_utf8(b.to_vec()).unwrap()
        };
        let (a1, _) = c.send_stream(get("/s1")).await.unwrap();
        let (a2, _) = c.send_stream(get("/s2")).await.unwrap();
        assert_eq!(text(a1).await, "HTTP/2.0 /s1");
        assert_eq!(text(a2).await, "HTTP/2.0 /s2");
        assert_eq!(accepted.load(SeqCst), 1, "both streams on one connection");
        let (plain, conn) = c.send(get("/p")).await.unwrap();
        assert_eq!(text(plain).await, "HTTP/1.1 /p");
        conn.give_back();
        assert_eq!(accepted.load(SeqCst), 2);
        // The worker goes away; a new one serves the same socket.
        server.abort();
        let _ = server.await;
        let deadline = Instant::now() + Duration::from_secs(10);
        while !c.lock_h2().as_ref().is_some_and(|s| s.is_closed()) {
            assert!(
                Instant::now() < deadline,
                "the closed connection was never noticed"
            );
            tokio::task::yield_now().await;
        }
        assert!(c.send_stream(get("/gone")).await.is_err());
        std::fs::remove_file(&path).unwrap();
        let _server = unix_server(&path, Arc::new(AtomicUsize::new(0)));
        let (again, _) = c.send_stream(get("/s3")).await.unwrap();
        assert_eq!(text(again).await, "HTTP/2.0 /s3");
    }

    #[tokio::test]
    async fn prune_closes_connections_idle_too_long() {
        let (port, _accepted, _t) = server(0).await;
        let conns = WorkerConns::default();
        let c = conns.for_slot(&WorkerSlot::new(0, port));
        round_trip(&c, "/a").await;
        c.prune(Instant::now());
        assert_eq!(c.idle(), 1, "fresh: kept");
        c.prune(Instant::now() + IDLE_TIMEOUT);
        assert_eq!(c.idle(), 0, "idle too long: closed");
    }
}
