//! Upstream connections: TCP with the provider's connect timeout, the HTTP proxy from the
//! environment (HTTPS_PROXY / HTTP_PROXY / NO_PROXY, curl's rules via hyper-util's `Matcher`),
//! and TLS through hyper-rustls, so `http://` and `https://` providers both work.
//!
//! Routes: no proxy -> direct TCP; an `https://` destination through a proxy -> a CONNECT tunnel
//! (hyper-util's `Tunnel`) with TLS on top; an `http://` destination through a proxy -> a plain
//! connection to the proxy, marked "proxied" so hyper sends absolute-form request targets.

use bytes::Bytes;
use gateway::relay::BoxError;
use http::Uri;
use http_body_util::Full;
use hyper_rustls::{ConfigBuilderExt, HttpsConnector};
use hyper_util::client::legacy::connect::proxy::Tunnel;
use hyper_util::client::legacy::connect::{Connected, Connection, HttpConnector};
use hyper_util::client::legacy::Client;
use hyper_util::client::proxy::matcher::Matcher;
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::net::TcpStream;

/// The pooled client of one provider.
pub type UpstreamClient = Client<HttpsConnector<ProxyConnector>, Full<Bytes>>;

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

/// TCP (or proxy) connector under the TLS layer.
#[derive(Clone)]
pub struct ProxyConnector {
    http: HttpConnector,
    matcher: Arc<Matcher>,
}

impl tower_service::Service<Uri> for ProxyConnector {
    type Response = UpstreamIo;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<UpstreamIo, BoxError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        // HttpConnector is always ready.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, dst: Uri) -> Self::Future {
        let mut http = self.http.clone();
        // Only new connections come here (the pool reuses the rest), so a boxed future is fine.
        match route(&self.matcher, &dst) {
            Route::Direct => Box::pin(async move {
                Ok(UpstreamIo {
                    io: http.call(dst).await?,
                    proxied: false,
                })
            }),
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
                    Ok(UpstreamIo { io, proxied: false })
                })
            }
            Route::Forward(proxy) => Box::pin(async move {
                Ok(UpstreamIo {
                    io: http.call(proxy).await?,
                    proxied: true,
                })
            }),
        }
    }
}

/// A TCP stream that remembers whether it leads to a forward proxy.
pub struct UpstreamIo {
    io: TokioIo<TcpStream>,
    proxied: bool,
}

impl Connection for UpstreamIo {
    fn connected(&self) -> Connected {
        self.io.connected().proxy(self.proxied)
    }
}

impl hyper::rt::Read for UpstreamIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl hyper::rt::Write for UpstreamIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
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

    /// A pooled client whose connections time out after `connect_timeout`.
    pub fn client(&self, connect_timeout: Duration) -> UpstreamClient {
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
        Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(90))
            .pool_timer(hyper_util::rt::TokioTimer::new())
            .build(connector)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
