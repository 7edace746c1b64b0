//! The front's connections to its workers: one [`gateway::conn_pool::Pool`] per worker slot.
//!
//! Plain requests go over keep-alive HTTP/1.1 connections; the pool gives a connection back when
//! the response body it carried has ended, and sends a request again on another connection when
//! a reused one turns out closed before it was written (the worker restarted). Anything else is
//! the caller's to retry on another worker.
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
use gateway::conn_pool::{
    start_http1, start_http2, Connect, Dest, Fresh, Limits, Pool, Pooled, Sender2,
};
use gateway::relay::BoxError;
use http::uri::{Authority, Scheme};
use http::{Request, Response};
use http_body_util::Full;
use hyper_util::rt::TokioIo;
use std::future::Future;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

pub use gateway::conn_pool::SendError;

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
const LIMITS: Limits = Limits {
    max_idle: MAX_IDLE,
    idle_timeout: IDLE_TIMEOUT,
};

/// Where a worker takes connections from the front.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WorkerAddr {
    Tcp(SocketAddr),
    Unix(PathBuf),
}

/// One worker slot's connections.
pub struct SlotConns {
    id: usize,
    addr: WorkerAddr,
    /// HTTP/1.1, for plain requests.
    plain: Arc<Pool>,
    /// HTTP/2, for streams over the Unix socket (unused over a port).
    streams: Arc<Pool>,
}

/// Makes the slot's connections: HTTP/1.1, or HTTP/2 for streams.
struct Dial<'a> {
    conns: &'a SlotConns,
    h2: bool,
}

impl Connect for Dial<'_> {
    async fn connect(&self) -> Result<Fresh, BoxError> {
        let c = self.conns;
        let fresh = match (&c.addr, self.h2) {
            (WorkerAddr::Unix(p), true) => Fresh::Http2(open_h2(p).await?),
            (WorkerAddr::Tcp(a), _) => {
                let s = dial(tokio::net::TcpStream::connect(a)).await?;
                let _ = s.set_nodelay(true);
                Fresh::Http1(start_http1(TokioIo::new(s), "worker").await?)
            }
            (WorkerAddr::Unix(p), false) => {
                let s = dial(tokio::net::UnixStream::connect(p)).await?;
                Fresh::Http1(start_http1(TokioIo::new(s), "worker").await?)
            }
        };
        Ok(fresh)
    }
}

/// The slot's HTTP/2 connection over its Unix socket.
async fn open_h2(path: &std::path::Path) -> Result<Sender2, BoxError> {
    let s = dial(tokio::net::UnixStream::connect(path)).await?;
    let mut b = hyper::client::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new());
    b.initial_stream_window_size(H2_STREAM_WINDOW)
        .initial_connection_window_size(H2_CONN_WINDOW);
    start_http2(TokioIo::new(s), &b, "worker").await
}

impl SlotConns {
    fn new(id: usize, addr: WorkerAddr, port: u16) -> Self {
        // Requests carry `Host: 127.0.0.1:PORT` (and HTTP/2 ones that `:authority`) whichever
        // way they reach the worker: its admission checks it.
        let authority = Authority::from_maybe_shared(Bytes::from(format!("127.0.0.1:{port}")))
            .expect("an address and a port make a valid authority");
        let dest = Dest::new(Scheme::HTTP, authority, false);
        Self {
            id,
            addr,
            plain: Pool::new(dest.clone(), LIMITS),
            streams: Pool::new(dest, LIMITS),
        }
    }

    /// Idle connections right now.
    pub fn idle(&self) -> usize {
        self.plain.idle()
    }

    /// Sends `req` over HTTP/1.1 and waits for the response head; its connection goes back to
    /// the slot when the body ends.
    pub async fn send(&self, req: Request<Full<Bytes>>) -> Result<Response<Pooled>, SendError> {
        let dial = Dial {
            conns: self,
            h2: false,
        };
        self.plain.send(req, &dial).await
    }

    /// Sends a streaming request over the slot's HTTP/2 connection (opened on first use, and
    /// again after the worker closed it); HTTP/1.1 when the slot does not multiplex.
    pub async fn send_stream(
        &self,
        req: Request<Full<Bytes>>,
    ) -> Result<Response<Pooled>, SendError> {
        if !matches!(self.addr, WorkerAddr::Unix(_)) {
            return self.send(req).await;
        }
        let dial = Dial {
            conns: self,
            h2: true,
        };
        self.streams.send(req, &dial).await
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
        let resp = self
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
        Ok(body.to_bytes())
    }
}

/// A connect to a worker, bounded by [`CONNECT_TIMEOUT`].
async fn dial<S>(connect: impl Future<Output = std::io::Result<S>>) -> Result<S, BoxError> {
    let named = |e: std::io::Error| format!("cannot connect to the worker: {e}");
    match tokio::time::timeout(CONNECT_TIMEOUT, connect).await {
        Err(_) => Err(named(std::io::ErrorKind::TimedOut.into()).into()),
        Ok(r) => r.map_err(|e| named(e).into()),
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
            s.plain.prune(now);
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
    use http::header::HOST;
    use http_body_util::BodyExt;
    use hyper::body::Incoming;
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

    fn get(path: &str) -> Request<Full<Bytes>> {
        Request::get(path).body(Full::new(Bytes::new())).unwrap()
    }

    async fn text(r: Response<Pooled>) -> String {
        let b = r.into_body().collect().await.unwrap().to_bytes();
        String::from_utf8(b.to_vec()).unwrap()
    }

    /// One table per slot; over its port, requests carry the worker's Host and an origin-form
    /// target, and a connection comes back to the slot when its body has ended.
    #[tokio::test]
    async fn a_slot_over_its_port_keeps_its_connections() {
        let l = tokio::net::TcpListener::bind(("127.0.0.1", 0))
            .await
            .unwrap();
        let port = l.local_addr().unwrap().port();
        let accepted = Arc::new(AtomicUsize::new(0));
        let a = accepted.clone();
        let _server = tokio::spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            loop {
                let Ok((s, _)) = l.accept().await else { return };
                a.fetch_add(1, SeqCst);
                conns.spawn(answer_on(s));
            }
        });
        let conns = WorkerConns::default();
        let slot = WorkerSlot::new(0, port);
        let c = conns.for_slot(&slot);
        assert!(
            Arc::ptr_eq(&c, &conns.for_slot(&slot)),
            "one table per slot"
        );
        let resp = c.send(get("/v1/health?x=1")).await.unwrap();
        assert_eq!(resp.headers()["x-host"], format!("127.0.0.1:{port}"));
        assert_eq!(text(resp).await, "HTTP/1.1 /v1/health?x=1");
        assert_eq!(c.idle(), 1);
        assert_eq!(
            text(c.send_stream(get("/s")).await.unwrap()).await,
            "HTTP/1.1 /s"
        );
        assert_eq!(
            accepted.load(SeqCst),
            1,
            "a port is HTTP/1.1 only, and reused"
        );
        conns.prune();
        assert_eq!(conns.idle(), 1, "fresh: kept");
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
        let a1 = c.send_stream(get("/s1")).await.unwrap();
        let a2 = c.send_stream(get("/s2")).await.unwrap();
        assert_eq!(text(a1).await, "HTTP/2.0 /s1");
        assert_eq!(text(a2).await, "HTTP/2.0 /s2");
        assert_eq!(accepted.load(SeqCst), 1, "both streams on one connection");
        let plain = c.send(get("/p")).await.unwrap();
        assert_eq!(plain.headers()["x-host"], "127.0.0.1:1");
        assert_eq!(text(plain).await, "HTTP/1.1 /p");
        assert_eq!(accepted.load(SeqCst), 2);
        // The worker goes away; a new one serves the same socket.
        server.abort();
        let _ = server.await;
        let deadline = Instant::now() + Duration::from_secs(10);
        while c.streams.h2_closed() != Some(true) {
            assert!(
                Instant::now() < deadline,
                "the closed connection was never noticed"
            );
            tokio::task::yield_now().await;
        }
        let gone = c.send_stream(get("/gone")).await.unwrap_err();
        assert!(
            gone.to_string().starts_with("cannot connect to the worker"),
            "{gone}"
        );
        std::fs::remove_file(&path).unwrap();
        let _server = unix_server(&path, Arc::new(AtomicUsize::new(0)));
        let again = c.send_stream(get("/s3")).await.unwrap();
        assert_eq!(text(again).await, "HTTP/2.0 /s3");
    }
}
