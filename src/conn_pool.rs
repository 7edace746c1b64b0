//! Keep-alive client connections to one destination: the one pool behind both the front's
//! connections to a worker and a worker's connections to a provider.
//!
//! Why not hyper-util's pooled `Client`: profiles under load put it at about 5 % of the front's
//! CPU and about 6,000 instructions a request in a worker. It keeps one map of idle lists keyed
//! by scheme and authority (SipHash on every checkout and return), boxes futures per request and
//! spawns a task per HTTP/1.1 request that waits for the connection to be free again. Our
//! callers each talk to one fixed destination, so a pool is a stack of idle HTTP/1.1
//! connections and at most one shared HTTP/2 connection: a checkout is one pop, a return one
//! push. Making a connection (TCP, Unix socket, TLS, a proxy tunnel) is the caller's
//! [`Connect`], which hands back the protocol the connection speaks.
//!
//! HTTP/1.1 cannot start a request before the previous response has ended, so a connection goes
//! back on the stack only when the response body it carried has ended ([`Pooled`], the body the
//! caller gets). A body dropped half-way drops its connection, and hyper closes it. A request
//! that fails on a reused connection before it was written (the peer closed that connection
//! meanwhile: a worker restarted, a provider timed it out) goes out again on another
//! connection; anything else is the caller's to retry elsewhere.
//!
//! An HTTP/2 connection carries every request at once. The first one made is kept and shared
//! until the peer closes it; the next request then makes another.
//!
//! Idle HTTP/1.1 connections are bounded ([`Limits::max_idle`]) and closed after
//! [`Limits::idle_timeout`]: by [`Pool::prune`] when the owner runs it periodically, and at the
//! latest when the next connection comes back. A connection the peer closes while idle ends
//! with hyper's connection task at once; only its handle stays, until it would be popped.

use crate::relay::BoxError;
use bytes::Bytes;
use http::header::{HeaderValue, HOST};
use http::uri::{Authority, Scheme};
use http::{Request, Response, Uri};
use http_body_util::Full;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::client::conn::{http1, http2};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

/// A request handle on an HTTP/1.1 connection.
pub type Sender1 = http1::SendRequest<Full<Bytes>>;
/// A request handle on an HTTP/2 connection (cloned per request).
pub type Sender2 = http2::SendRequest<Full<Bytes>>;

/// A new connection, in the protocol it speaks (ALPN decides for TLS).
pub enum Fresh {
    Http1(Sender1),
    Http2(Sender2),
}

/// Starts HTTP/1.1 over a new connection `io` and spawns its connection task. The task ends when
/// the peer closes the connection or its handle is dropped while idle (pruned, the pool full, a
/// body dropped half-way): it owns nothing that outlives the connection. `peer` names the other
/// side in the debug line of a connection that ended with an error.
pub async fn start_http1<I>(io: I, peer: &'static str) -> Result<Sender1, BoxError>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (sender, conn) = http1::handshake(io).await?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(peer, error = %e, "connection ended with an error");
        }
    });
    Ok(sender)
}

/// Starts HTTP/2 over `io` as `builder` says and spawns its connection task, which ends when the
/// peer closes the connection or every handle to it is dropped.
pub async fn start_http2<I>(
    io: I,
    builder: &http2::Builder<hyper_util::rt::TokioExecutor>,
    peer: &'static str,
) -> Result<Sender2, BoxError>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (sender, conn) = builder.handshake(io).await?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(peer, error = %e, "HTTP/2 connection ended with an error");
        }
    });
    Ok(sender)
}

/// Why a request got no response head.
#[derive(Debug)]
pub enum SendError {
    /// No connection could be made: nothing was sent.
    Connect(BoxError),
    /// The connection failed the request; it may have been sent.
    Http(hyper::Error),
}

impl SendError {
    pub fn is_connect(&self) -> bool {
        matches!(self, Self::Connect(_))
    }
}

impl std::fmt::Display for SendError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Connect(e) => e.fmt(f),
            Self::Http(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for SendError {
    /// The inner error's own cause: its text is this error's already.
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Connect(e) => e.source(),
            Self::Http(e) => e.source(),
        }
    }
}

impl From<hyper::Error> for SendError {
    fn from(e: hyper::Error) -> Self {
        Self::Http(e)
    }
}

/// Makes one connection to the pool's destination: TCP, a Unix socket, TLS, a proxy tunnel,
/// whatever the caller's destination needs. Called only when no connection is free, at most
/// once per request.
pub trait Connect {
    fn connect(&self) -> impl Future<Output = Result<Fresh, BoxError>> + Send;
}

/// Where requests go: what their target and `Host` must say.
#[derive(Debug, Clone)]
pub struct Dest {
    scheme: Scheme,
    authority: Authority,
    /// The authority without the scheme's default port, as `Host` (HTTP/1.1 only).
    host: HeaderValue,
    /// HTTP/1.1 targets in absolute form: the connection leads to a forward proxy.
    absolute_form: bool,
}

impl Dest {
    pub fn new(scheme: Scheme, authority: Authority, absolute_form: bool) -> Self {
        let default_port = if scheme == Scheme::HTTPS { 443 } else { 80 };
        let host = match authority.port_u16() {
            Some(p) if p == default_port => authority.host(),
            _ => authority.as_str(),
        };
        let host = HeaderValue::from_str(host).expect("an authority is a valid header value");
        Self {
            scheme,
            authority,
            host,
            absolute_form,
        }
    }

    /// The destination of an absolute URI (`None` without a scheme or an authority).
    pub fn of(uri: &Uri, absolute_form: bool) -> Option<Self> {
        Some(Self::new(
            uri.scheme()?.clone(),
            uri.authority()?.clone(),
            absolute_form,
        ))
    }

    /// `req`'s target in the form the protocol wants, with the destination's scheme and
    /// authority whatever the caller wrote; `Host` for HTTP/1.1.
    fn aim(&self, req: &mut Request<Full<Bytes>>, h2: bool) {
        let absolute = h2 || self.absolute_form;
        let uri = req.uri();
        let ok = if absolute {
            uri.scheme() == Some(&self.scheme) && uri.authority() == Some(&self.authority)
        } else {
            uri.scheme().is_none() && uri.authority().is_none()
        };
        if !ok {
            let pq = uri.path_and_query().cloned();
            let mut parts = http::uri::Parts::default();
            if absolute {
                parts.scheme = Some(self.scheme.clone());
                parts.authority = Some(self.authority.clone());
            }
            parts.path_and_query =
                Some(pq.unwrap_or_else(|| http::uri::PathAndQuery::from_static("/")));
            *req.uri_mut() =
                Uri::from_parts(parts).expect("a scheme, an authority and a path make a URI");
        }
        if h2 {
            // HTTP/2 says it in `:authority`.
            req.headers_mut().remove(HOST);
        } else {
            req.headers_mut().insert(HOST, self.host.clone());
        }
    }
}

/// How many idle connections a pool keeps, and for how long.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_idle: usize,
    pub idle_timeout: Duration,
}

/// One destination's connections; see the module docs.
pub struct Pool {
    dest: Dest,
    limits: Limits,
    /// Idle HTTP/1.1 connections, most recently used on top, with when they went idle. A std
    /// mutex: each critical section is one push or pop (never across an `.await`).
    idle: Mutex<Vec<(Sender1, Instant)>>,
    /// The shared HTTP/2 connection, once one was made. Held to clone or replace the handle,
    /// never across an `.await`.
    h2: Mutex<Option<Sender2>>,
}

impl Pool {
    pub fn new(dest: Dest, limits: Limits) -> Arc<Self> {
        Arc::new(Self {
            dest,
            limits,
            idle: Mutex::new(Vec::new()),
            h2: Mutex::new(None),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Vec<(Sender1, Instant)>> {
        // Every change is one push, pop or retain: a poisoned stack is still consistent.
        self.idle.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn lock_h2(&self) -> MutexGuard<'_, Option<Sender2>> {
        self.h2.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The most recently used idle connection that is ready for a request, else the most
    /// recent one still open (it is only waiting for hyper's connection task to finish the
    /// previous exchange). Closed ones met on the way are dropped. Only the top few are looked
    /// at, so a pop stays a handful of atomic loads.
    fn pop(&self) -> Option<Sender1> {
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

    fn put(&self, s: Sender1) {
        if s.is_closed() {
            return;
        }
        let now = Instant::now();
        let mut idle = self.lock();
        // The oldest is at the bottom: when it has outstayed, so may others.
        if idle
            .first()
            .is_some_and(|(_, since)| now.duration_since(*since) >= self.limits.idle_timeout)
        {
            self.retain_fresh(&mut idle, now);
        }
        if idle.len() < self.limits.max_idle {
            idle.push((s, now));
        }
    }

    fn retain_fresh(&self, idle: &mut Vec<(Sender1, Instant)>, now: Instant) {
        let timeout = self.limits.idle_timeout;
        idle.retain(|(s, since)| !s.is_closed() && now.duration_since(*since) < timeout);
    }

    /// Closes the idle connections unused for `idle_timeout` at `now`, and drops the handles of
    /// those the peer closed.
    pub fn prune(&self, now: Instant) {
        let mut idle = self.lock();
        self.retain_fresh(&mut idle, now);
    }

    /// Idle HTTP/1.1 connections right now, closed ones not yet dropped included.
    pub fn idle(&self) -> usize {
        self.lock().len()
    }

    /// Whether every idle HTTP/1.1 connection has been closed by its peer.
    pub fn idle_all_closed(&self) -> bool {
        self.lock().iter().all(|(s, _)| s.is_closed())
    }

    /// `Some(closed)` once an HTTP/2 connection was made.
    pub fn h2_closed(&self) -> Option<bool> {
        self.lock_h2().as_ref().map(|s| s.is_closed())
    }

    /// The shared HTTP/2 connection if it is open.
    fn live_h2(&self) -> Option<Sender2> {
        self.lock_h2().as_ref().filter(|s| !s.is_closed()).cloned()
    }

    /// Keeps `s` as the shared HTTP/2 connection, unless a concurrent request stored a live one
    /// meanwhile: then that one is used, and `s` closes unused.
    fn share_h2(&self, s: Sender2) -> Sender2 {
        let mut shared = self.lock_h2();
        match shared.as_ref().filter(|c| !c.is_closed()) {
            Some(live) => live.clone(),
            None => {
                *shared = Some(s.clone());
                s
            }
        }
    }

    /// Sends `req` and waits for the response head. Its target may be in either form; it goes
    /// out in the form the connection's protocol wants, to this pool's destination. On success
    /// an HTTP/1.1 connection rides along with the body until it ends.
    pub async fn send(
        self: &Arc<Self>,
        mut req: Request<Full<Bytes>>,
        connect: &impl Connect,
    ) -> Result<Response<Pooled>, SendError> {
        // At most one connection is made per request: a fresh one that fails is the answer.
        let mut fresh: Option<Fresh> = None;
        loop {
            let h2 = match fresh.take() {
                Some(Fresh::Http2(s)) => Some((self.share_h2(s), true)),
                Some(Fresh::Http1(s)) => {
                    return self.send1(req, s, false).await.map_err(Retry::into_error)
                }
                None => self.live_h2().map(|s| (s, false)),
            };
            if let Some((mut s, made)) = h2 {
                if let Err(e) = s.ready().await {
                    // The peer closed it (a restart, a drain, a GOAWAY): one fresh connection.
                    self.lock_h2().take();
                    if made {
                        return Err(e.into());
                    }
                    fresh = Some(connect.connect().await.map_err(SendError::Connect)?);
                    continue;
                }
                self.dest.aim(&mut req, true);
                let resp = s.send_request(req).await?;
                return Ok(resp.map(|body| Pooled { body, home: None }));
            }
            match self.pop() {
                Some(s) => match self.send1(req, s, true).await {
                    Err(Retry::Again(r, _)) => req = *r,
                    Err(e) => return Err(e.into_error()),
                    Ok(resp) => return Ok(resp),
                },
                None => fresh = Some(connect.connect().await.map_err(SendError::Connect)?),
            }
        }
    }

    /// One request on an HTTP/1.1 connection. A reused connection that turns out closed before
    /// the request was written gives the request back for another.
    async fn send1(
        self: &Arc<Self>,
        mut req: Request<Full<Bytes>>,
        mut s: Sender1,
        reused: bool,
    ) -> Result<Response<Pooled>, Retry> {
        if let Err(e) = s.ready().await {
            return Err(if reused {
                Retry::Again(Box::new(req), e)
            } else {
                Retry::Failed(e)
            });
        }
        self.dest.aim(&mut req, false);
        match s.try_send_request(req).await {
            Ok(resp) => {
                let home = Some((s, self.clone()));
                Ok(resp.map(|body| Pooled { body, home }))
            }
            Err(mut e) => match e.take_message() {
                // Never written, on a connection the peer had closed meanwhile: the request is
                // intact, so it goes out again on another connection.
                Some(r) if reused => Err(Retry::Again(Box::new(r), e.into_error())),
                _ => Err(Retry::Failed(e.into_error())),
            },
        }
    }
}

/// What `send1` hands back without a response: the request when it may go out again.
enum Retry {
    /// Boxed: the rare path should not make every result the size of a request.
    Again(Box<Request<Full<Bytes>>>, hyper::Error),
    Failed(hyper::Error),
}

impl Retry {
    fn into_error(self) -> SendError {
        match self {
            Self::Again(_, e) | Self::Failed(e) => SendError::Http(e),
        }
    }
}

/// A response body from a pooled connection: when it ends, its HTTP/1.1 connection goes back to
/// the pool for the next request. Dropped before its end, it takes the connection with it.
pub struct Pooled {
    body: Incoming,
    home: Option<(Sender1, Arc<Pool>)>,
}

impl std::fmt::Debug for Pooled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pooled")
            .field("pooled", &self.home.is_some())
            .finish()
    }
}

impl Pooled {
    fn give_back(&mut self) {
        if let Some((s, pool)) = self.home.take() {
            pool.put(s);
        }
    }
}

impl Drop for Pooled {
    /// A body that was complete without a last poll (empty, or read to its length).
    fn drop(&mut self) {
        if self.body.is_end_stream() {
            self.give_back();
        }
    }
}

impl Body for Pooled {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.body).poll_frame(cx);
        match &polled {
            Poll::Ready(None) => this.give_back(),
            Poll::Ready(Some(Ok(_))) if this.body.is_end_stream() => this.give_back(),
            Poll::Ready(Some(Err(_))) => this.home = None,
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;
    use hyper_util::rt::{TokioExecutor, TokioIo};
    use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};

    /// Serves one test connection, HTTP/1.1 or HTTP/2: every answer is "VERSION TARGET HOST",
    /// and `/long` answers with a body in two parts, the second a while later.
    async fn answer_on(io: tokio::net::TcpStream) {
        let svc = hyper::service::service_fn(|r: Request<Incoming>| async move {
            let host = r.headers().get(HOST).map_or("-", |h| h.to_str().unwrap());
            let text = format!("{:?} {} {host}", r.version(), r.uri());
            let body = if r.uri().path() == "/long" {
                let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, BoxError>>(2);
                tokio::spawn(async move {
                    let _ = tx.send(Ok(Frame::data(Bytes::from(text)))).await;
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    let _ = tx.send(Ok(Frame::data(Bytes::from_static(b"!")))).await;
                });
                http_body_util::StreamBody::new(tokio_stream(rx)).boxed()
            } else {
                Full::new(Bytes::from(text)).map_err(|e| match e {}).boxed()
            };
            Ok::<_, std::convert::Infallible>(Response::new(body))
        });
        let b = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
        let _ = b.serve_connection(TokioIo::new(io), svc).await;
    }

    /// An mpsc receiver as a stream, without a crate for it.
    fn tokio_stream<T>(
        mut rx: tokio::sync::mpsc::Receiver<T>,
    ) -> impl futures_util::Stream<Item = T> {
        futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
    }

    /// A server on `port` (0: any) counting the connections it accepted; aborting its task
    /// closes every connection.
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

    /// Stops the server `task`, which closes its connections, and waits until `noticed`.
    async fn stop(task: tokio::task::JoinHandle<()>, noticed: impl Fn() -> bool) {
        task.abort();
        let _ = task.await;
        let deadline = Instant::now() + Duration::from_secs(10);
        while !noticed() {
            assert!(Instant::now() < deadline, "the close was never noticed");
            tokio::task::yield_now().await;
        }
    }

    /// Connects over TCP and speaks HTTP/1.1, or HTTP/2 with prior knowledge.
    struct Tcp {
        port: u16,
        h2: bool,
    }

    impl Connect for Tcp {
        async fn connect(&self) -> Result<Fresh, BoxError> {
            let s = tokio::net::TcpStream::connect(("127.0.0.1", self.port)).await?;
            let io = TokioIo::new(s);
            if self.h2 {
                let b = http2::Builder::new(TokioExecutor::new());
                Ok(Fresh::Http2(start_http2(io, &b, "test").await?))
            } else {
                Ok(Fresh::Http1(start_http1(io, "test").await?))
            }
        }
    }

    fn pool(port: u16) -> Arc<Pool> {
        let dest = Dest::of(&format!("http://127.0.0.1:{port}").parse().unwrap(), false).unwrap();
        Pool::new(
            dest,
            Limits {
                max_idle: 4,
                idle_timeout: Duration::from_secs(30),
            },
        )
    }

    fn get(target: &str) -> Request<Full<Bytes>> {
        Request::get(target).body(Full::new(Bytes::new())).unwrap()
    }

    async fn text(r: Response<Pooled>) -> String {
        let b = r.into_body().collect().await.unwrap().to_bytes();
        String::from_utf8(b.to_vec()).unwrap()
    }

    /// A connection is reused only after the body it carried ended; one dropped half-way is
    /// not. HTTP/1.1 targets go out in origin form with the destination's Host, whatever form
    /// the caller wrote.
    #[tokio::test]
    async fn reuses_a_connection_only_after_its_body_ended() {
        let (port, accepted, _t) = server(0).await;
        let p = pool(port);
        let c = Tcp { port, h2: false };
        let r = p.send(get("/a?x=1"), &c).await.unwrap();
        assert_eq!(p.idle(), 0, "busy until its body ends");
        assert_eq!(text(r).await, format!("HTTP/1.1 /a?x=1 127.0.0.1:{port}"));
        assert_eq!(p.idle(), 1, "given back at the end of the body");
        let absolute = "http://elsewhere.example/b";
        let r = p.send(get(absolute), &c).await.unwrap();
        assert_eq!(text(r).await, format!("HTTP/1.1 /b 127.0.0.1:{port}"));
        assert_eq!(accepted.load(SeqCst), 1, "the idle connection was reused");
        // Dropped half-way: the connection goes with it.
        let r = p.send(get("/long"), &c).await.unwrap();
        let mut body = r.into_body();
        body.frame().await.unwrap().unwrap();
        drop(body);
        assert_eq!(p.idle(), 0);
        assert!(text(p.send(get("/c"), &c).await.unwrap())
            .await
            .ends_with(&format!("{port}")));
        assert_eq!(accepted.load(SeqCst), 2);
        assert_eq!(p.idle(), 1);
    }

    /// Idle connections closed by the peer are skipped, and the request goes out on a new
    /// connection to whoever serves the address now (a restarted worker).
    #[tokio::test]
    async fn a_connection_closed_while_idle_is_replaced() {
        let (port, _accepted, task) = server(0).await;
        let p = pool(port);
        let c = Tcp { port, h2: false };
        text(p.send(get("/a"), &c).await.unwrap()).await;
        assert_eq!(p.idle(), 1);
        stop(task, || p.idle_all_closed()).await;
        let e = p.send(get("/b"), &c).await.unwrap_err();
        assert!(e.is_connect(), "nobody listens now: {e}");
        let (_, accepted, _t) = server(port).await;
        assert_eq!(
            text(p.send(get("/c"), &c).await.unwrap()).await,
            format!("HTTP/1.1 /c 127.0.0.1:{port}")
        );
        assert_eq!(accepted.load(SeqCst), 1);
    }

    /// HTTP/2 requests share the first connection made, in absolute form with no Host; after
    /// the peer closes it, the next request makes another.
    #[tokio::test]
    async fn http2_requests_share_one_connection() {
        let (port, accepted, task) = server(0).await;
        let p = pool(port);
        let c = Tcp { port, h2: true };
        // The second goes out while the first's body is still coming.
        let a = p.send(get("/long"), &c).await.unwrap();
        let b = p.send(get("/s2"), &c).await.unwrap();
        assert_eq!(
            text(b).await,
            format!("HTTP/2.0 http://127.0.0.1:{port}/s2 -")
        );
        assert!(text(a).await.starts_with("HTTP/2.0"));
        assert_eq!(accepted.load(SeqCst), 1, "both on one connection");
        assert_eq!(p.idle(), 0, "nothing on the HTTP/1.1 stack");
        stop(task, || p.h2_closed() == Some(true)).await;
        assert!(p.send(get("/gone"), &c).await.is_err());
        let (_, accepted, _t) = server(port).await;
        assert!(text(p.send(get("/s3"), &c).await.unwrap())
            .await
            .ends_with("/s3 -"));
        assert_eq!(accepted.load(SeqCst), 1);
    }

    #[tokio::test]
    async fn idle_connections_are_bounded_and_pruned() {
        let (port, _accepted, _t) = server(0).await;
        let p = pool(port);
        let c = Tcp { port, h2: false };
        let held: Vec<_> = futures_util::future::join_all((0..6).map(|_| p.send(get("/a"), &c)))
            .await
            .into_iter()
            .map(Result::unwrap)
            .collect();
        for r in held {
            text(r).await;
        }
        assert_eq!(p.idle(), 4, "past max_idle, returned connections close");
        p.prune(Instant::now());
        assert_eq!(p.idle(), 4, "fresh: kept");
        p.prune(Instant::now() + Duration::from_secs(30));
        assert_eq!(p.idle(), 0, "idle too long: closed");
    }

    /// `Host` leaves out the scheme's default port; a forward proxy gets absolute targets.
    #[test]
    fn targets_and_hosts_follow_the_destination() {
        let host = |u: &str| Dest::of(&u.parse().unwrap(), false).unwrap().host;
        assert_eq!(host("https://api.example.com:443/v1"), "api.example.com");
        assert_eq!(host("http://api.example.com:80"), "api.example.com");
        assert_eq!(host("http://127.0.0.1:8443/"), "127.0.0.1:8443");
        assert_eq!(host("https://h.example:80/"), "h.example:80");
        let proxied = Dest::of(&"http://api.example.test/v1".parse().unwrap(), true).unwrap();
        let mut r = get("/v1/chat/completions?x=1");
        proxied.aim(&mut r, false);
        assert_eq!(r.uri(), "http://api.example.test/v1/chat/completions?x=1");
        assert_eq!(r.headers()[HOST], "api.example.test");
        let direct = Dest::of(&"http://127.0.0.1:9/v1".parse().unwrap(), false).unwrap();
        let mut r = get("http://127.0.0.1:9/v1/models");
        direct.aim(&mut r, false);
        assert_eq!(r.uri(), "/v1/models");
        direct.aim(&mut r, true);
        assert_eq!(r.uri(), "http://127.0.0.1:9/v1/models");
        assert!(r.headers().get(HOST).is_none(), "HTTP/2 carries :authority");
    }
}
