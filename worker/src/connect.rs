//! Upstream connections: TCP with the provider's connect timeout, the HTTP proxy from the
//! environment (HTTPS_PROXY / HTTP_PROXY / NO_PROXY, curl's rules via hyper-util's `Matcher`),
//! and TLS through hyper-rustls, so `http://` and `https://` providers both work.
//!
//! Routes: no proxy -> direct TCP; an `https://` destination through a proxy -> a CONNECT tunnel
//! (hyper-util's `Tunnel`) with TLS on top; an `http://` destination through a proxy -> a plain
//! connection to the proxy, to which requests carry absolute-form targets.
//!
//! Each provider's connections are one [`gateway::conn_pool::Pool`] (the front's workers use the
//! same): HTTP/1.1 connections kept alive on a stack, or one shared HTTP/2 connection when TLS
//! negotiates `h2` (ALPN offers both).

use bytes::Bytes;
use gateway::conn_pool::{
    start_http1, start_http2, Connect, Dest, Fresh, Limits, Pool, Pooled, SendError,
};
use gateway::relay::BoxError;
use http::{Request, Response, Uri};
use http_body_util::Full;
use hyper_rustls::{ConfigBuilderExt, HttpsConnector};
use hyper_util::client::legacy::connect::proxy::Tunnel;
use hyper_util::client::legacy::connect::{Connection, HttpConnector};
use hyper_util::client::proxy::matcher::Matcher;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::net::TcpStream;

/// Idle connections kept per provider, and for how long (hyper-util's default idle timeout).
const LIMITS: Limits = Limits {
    max_idle: 256,
    idle_timeout: Duration::from_secs(90),
};

/// One provider's pooled connections to its `base_url`'s host.
pub struct UpstreamClient {
    pool: Arc<Pool>,
    dial: Dial,
}

/// Makes a provider's connections: TCP or a proxy, TLS for `https://`, then HTTP/1.1 or HTTP/2
/// as ALPN says.
struct Dial {
    connector: HttpsConnector<ProxyConnector>,
    /// The scheme and authority connected to.
    base: Uri,
    /// `connect_timeout`, for TCP (or the proxy) and TLS together.
    timeout: Duration,
}

impl Connect for Dial {
    async fn connect(&self) -> Result<Fresh, BoxError> {
        use tower_service::Service;
        let connecting = self.connector.clone().call(self.base.clone());
        let io = match tokio::time::timeout(self.timeout, connecting).await {
            Ok(io) => io?,
            Err(_) => return Err(std::io::Error::from(std::io::ErrorKind::TimedOut).into()),
        };
        Ok(if io.connected().is_negotiated_h2() {
            let mut b = hyper::client::conn::http2::Builder::new(TokioExecutor::new());
            b.timer(TokioTimer::new());
            Fresh::Http2(start_http2(io, &b, "provider").await?)
        } else {
            Fresh::Http1(start_http1(io, "provider").await?)
        })
    }
}

impl UpstreamClient {
    /// Sends `req`, whose URI must be on the provider's host (its target is written in the
    /// form the connection needs), and waits for the response head.
    pub async fn request(&self, req: Request<Full<Bytes>>) -> Result<Response<Pooled>, SendError> {
        self.pool.send(req, &self.dial).await
    }
}

/// How a connection to a destination is made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    Direct,
    /// CONNECT tunnel through this proxy (https destinations).
    Tunnel(Uri),
    /// Plain HTTP through this forward proxy, absolute-form targets (http destinations).
    Forward(Uri),
}

/// The proxy decision for `dst`, a pure function so it can be tested without the environment.
pub fn route(matcher: &Matcher, dst: &Uri) -> Route {
    match matcher.intercept(dst) {
        None => Route::Direct,
        Some(i) if dst.scheme_str() == Some("https") => Route::Tunnel(i.uri().clone()),
        Some(i) => Route::Forward(i.uri().clone()),
    }
}

/// TCP (or proxy) connector under the TLS layer: a connection to the proxy itself for a forward
/// proxy, else to the destination (tunnelled through a proxy when one applies).
#[derive(Clone)]
pub struct ProxyConnector {
    http: HttpConnector,
    matcher: Arc<Matcher>,
}

impl tower_service::Service<Uri> for ProxyConnector {
    type Response = TokioIo<TcpStream>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        // HttpConnector is always ready.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, dst: Uri) -> Self::Future {
        let mut http = self.http.clone();
        // Only new connections come here (the pool reuses the rest), so a boxed future is fine.
        match route(&self.matcher, &dst) {
            Route::Direct => Box::pin(async move { Ok(http.call(dst).await?) }),
            Route::Tunnel(proxy) => {
                let mut tunnel = Tunnel::new(proxy, http);
                if let Some(auth) = self
                    .matcher
                    .intercept(&dst)
                    .and_then(|i| i.basic_auth().cloned())
                {
                    tunnel = tunnel.with_auth(auth);
                }
                Box::pin(async move {
                    let io = tunnel
                        .call(dst)
                        .await
                        .map_err(|e| format!("proxy tunnel: {e:?}"))?;
                    Ok(io)
                })
            }
            // Requests to it carry absolute-form targets (`Dest`'s `absolute_form`).
            Route::Forward(proxy) => Box::pin(async move { Ok(http.call(proxy).await?) }),
        }
    }
}

/// Shared pieces every provider's client is built from: one TLS configuration (parsing the
/// root store is not free) and one proxy matcher read from the environment at start-up.
#[derive(Clone)]
pub struct ClientFactory {
    tls: rustls::ClientConfig,
    matcher: Arc<Matcher>,
}

impl ClientFactory {
    pub fn from_env() -> Self {
        Self::new(Matcher::from_env())
    }

    pub fn new(matcher: Matcher) -> Self {
        let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("ring supports the default protocol versions")
        .with_webpki_roots()
        .with_no_client_auth();
        Self::with_tls(matcher, tls)
    }

    /// With this TLS configuration instead of the web's roots (tests trust their own).
    pub fn with_tls(matcher: Matcher, tls: rustls::ClientConfig) -> Self {
        Self {
            tls,
            matcher: Arc::new(matcher),
        }
    }

    /// The `Proxy-Authorization` value for requests to `base_url` when they go through a plain
    /// HTTP forward proxy with credentials (`http://user:pass@proxy`); CONNECT tunnels carry
    /// theirs in the CONNECT request instead.
    pub fn forward_proxy_auth(&self, base_url: &str) -> Option<http::HeaderValue> {
        let uri: Uri = base_url.parse().ok()?;
        match route(&self.matcher, &uri) {
            Route::Forward(_) => {
                let mut v = self.matcher.intercept(&uri)?.basic_auth()?.clone();
                v.set_sensitive(true);
                Some(v)
            }
            _ => None,
        }
    }

    /// The pooled client of `base_url` (`None` when it is not an absolute URI: config
    /// validation refuses those), whose connects time out after `connect_timeout`.
    pub fn client(&self, base_url: &str, connect_timeout: Duration) -> Option<UpstreamClient> {
        let base: Uri = base_url.parse().ok()?;
        let proxied = matches!(route(&self.matcher, &base), Route::Forward(_));
        let dest = Dest::of(&base, proxied)?;
        let mut http = HttpConnector::new();
        // The TLS layer above handles https; it needs the TCP layer to accept https URIs.
        http.enforce_http(false);
        http.set_connect_timeout(Some(connect_timeout));
        // Small SSE chunks must leave at once, not wait for Nagle.
        http.set_nodelay(true);
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(self.tls.clone())
            .https_or_http()
            .enable_http1()
            .enable_http2()
            .wrap_connector(ProxyConnector {
                http,
                matcher: self.matcher.clone(),
            });
        Some(UpstreamClient {
            pool: Pool::new(dest, LIMITS),
            dial: Dial {
                connector,
                base,
                timeout: connect_timeout,
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};

    #[test]
    fn proxy_routes_follow_the_matcher() {
        let m = Matcher::builder()
            .http("http://proxy.local:3128")
            .https("http://secure-proxy.local:3129")
            .no("localhost,127.0.0.1,.internal.example")
            .build();
        let u = |s: &str| s.parse::<Uri>().unwrap();
        assert_eq!(
            route(&m, &u("https://api.openai.com/v1/chat/completions")),
            Route::Tunnel(u("http://secure-proxy.local:3129"))
        );
        assert_eq!(
            route(&m, &u("http://models.example.com/v1/models")),
            Route::Forward(u("http://proxy.local:3128"))
        );
        assert_eq!(
            route(&m, &u("http://127.0.0.1:11434/v1/models")),
            Route::Direct
        );
        assert_eq!(
            route(&m, &u("http://localhost:11434/v1/models")),
            Route::Direct
        );
        assert_eq!(
            route(&m, &u("https://llm.internal.example/v1")),
            Route::Direct
        );
        assert_eq!(
            route(&Matcher::builder().build(), &u("https://api.openai.com/")),
            Route::Direct
        );
    }

    /// A TLS server on a free port with a certificate for 127.0.0.1 made by `openssl`,
    /// offering `alpn`; every answer is the request's HTTP version. Returns the port, the
    /// connections it accepted, and a client configuration that trusts the certificate.
    async fn tls_server(alpn: &[&[u8]]) -> (u16, Arc<AtomicUsize>, rustls::ClientConfig) {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let dir = tempfile::tempdir().unwrap();
        let (key, cert) = (dir.path().join("key.pem"), dir.path().join("cert.pem"));
        let made = std::process::Command::new("openssl")
            .args([
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
            ])
            .args(["-nodes", "-days", "1", "-subj", "/CN=127.0.0.1"])
            .args(["-addext", "subjectAltName=IP:127.0.0.1"])
            // A server certificate, not a CA (webpki refuses a CA as the end entity).
            .args(["-addext", "basicConstraints=critical,CA:FALSE", "-keyout"])
            .arg(&key)
            .arg("-out")
            .arg(&cert)
            .output()
            .expect("openssl runs");
        assert!(
            made.status.success(),
            "{}",
            String::from_utf8_lossy(&made.stderr)
        );
        let cert = CertificateDer::from_pem_file(&cert).unwrap();
        let key = PrivateKeyDer::from_pem_file(&key).unwrap();
        let ring = Arc::new(rustls::crypto::ring::default_provider());
        let mut server = rustls::ServerConfig::builder_with_provider(ring.clone())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![cert.clone()], key)
            .unwrap();
        server.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        let mut roots = rustls::RootCertStore::empty();
        roots.add(cert).unwrap();
        let client = rustls::ClientConfig::builder_with_provider(ring)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server));
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            loop {
                let Ok((s, _)) = l.accept().await else { return };
                count.fetch_add(1, SeqCst);
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(s).await else {
                        return;
                    };
                    let svc = hyper::service::service_fn(
                        |r: http::Request<hyper::body::Incoming>| async move {
                            let v = format!("{:?}", r.version());
                            Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(
                                Bytes::from(v),
                            )))
                        },
                    );
                    let b = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                    let _ = b.serve_connection(TokioIo::new(tls), svc).await;
                });
            }
        });
        (port, accepted, client)
    }

    /// Two requests, the second sent while the first's body is still unread; both bodies.
    async fn two_requests(c: &UpstreamClient, port: u16) -> (String, String) {
        use http_body_util::BodyExt;
        let get = || {
            http::Request::get(format!("https://127.0.0.1:{port}/v1/models"))
                .body(Full::new(Bytes::new()))
                .unwrap()
        };
        let first = c.request(get()).await.expect("first");
        let text = |r: http::Response<Pooled>| async move {
            let b = r.into_body().collect().await.unwrap().to_bytes();
            String::from_utf8(b.to_vec()).unwrap()
        };
        let a = text(first).await;
        let b = text(c.request(get()).await.expect("second")).await;
        (a, b)
    }

    /// Over TLS, ALPN picks the protocol: a server offering `h2` gets HTTP/2, one offering
    /// only `http/1.1` gets HTTP/1.1; either way the second request reuses the connection.
    #[tokio::test]
    async fn tls_providers_get_the_protocol_alpn_chose_on_a_reused_connection() {
        for (alpn, version) in [
            (&[b"h2".as_slice(), b"http/1.1"][..], "HTTP/2.0"),
            (&[b"http/1.1".as_slice()][..], "HTTP/1.1"),
        ] {
            let (port, accepted, tls) = tls_server(alpn).await;
            let f = ClientFactory::with_tls(Matcher::builder().build(), tls);
            let c = f
                .client(
                    &format!("https://127.0.0.1:{port}/v1"),
                    Duration::from_secs(5),
                )
                .unwrap();
            let (a, b) = two_requests(&c, port).await;
            assert_eq!((a.as_str(), b.as_str()), (version, version));
            assert_eq!(
                accepted.load(SeqCst),
                1,
                "{version}: one connection for both"
            );
        }
    }

    #[test]
    fn forward_proxy_credentials() {
        let f = ClientFactory::new(
            Matcher::builder()
                .http("http://me:secret@proxy.local:3128")
                .build(),
        );
        let v = f
            .forward_proxy_auth("http://models.example.com/v1")
            .expect("credentials");
        assert_eq!(v, "Basic bWU6c2VjcmV0");
        assert!(v.is_sensitive());
        assert_eq!(
            f.forward_proxy_auth("https://api.openai.com/v1"),
            None,
            "tunnels carry their own"
        );
    }
}
