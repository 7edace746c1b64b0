//! The floor for `bench/run.sh`: the smallest reverse proxy one can write on the same stack as
//! the worker (hyper 1.x, one current-thread tokio runtime, hyper-util's pooled client), with no
//! logic at all: every request goes to the one upstream, the response streams back. Its
//! throughput is what a hyper-based hop costs on this machine before any gateway work, so it
//! bounds what the worker's ratio to direct can be. Usage: `bench_proxy UPSTREAM_ADDR`; prints
//! its own address.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::{TokioExecutor, TokioIo};

type Upstream = Client<HttpConnector, Full<Bytes>>;

async fn handle(
    client: Upstream,
    upstream: http::uri::Authority,
    req: Request<Incoming>,
) -> Result<Response<Incoming>, hyper_util::client::legacy::Error> {
    let (mut parts, body) = req.into_parts();
    // Buffered like the worker does (it must read `model` before choosing where to go).
    let body = body
        .collect()
        .await
        .map(|c| c.to_bytes())
        .unwrap_or_default();
    let pq = parts.uri.path_and_query().cloned();
    parts.uri = http::Uri::builder()
        .scheme("http")
        .authority(upstream)
        .path_and_query(pq.map_or("/".to_string(), |p| p.to_string()))
        .build()
        .expect("a valid uri");
    parts.headers.remove(http::header::HOST);
    client
        .request(Request::from_parts(parts, Full::new(body)))
        .await
}

fn main() {
    let up: http::uri::Authority = std::env::args()
        .nth(1)
        .expect("usage: bench_proxy UPSTREAM_ADDR")
        .parse()
        .expect("an address");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let mut conn = HttpConnector::new();
        conn.set_nodelay(true);
        let client: Upstream = Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(1024)
            .build(conn);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        println!("{}", listener.local_addr().unwrap());
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            let _ = tcp.set_nodelay(true);
            let (client, up) = (client.clone(), up.clone());
            tokio::spawn(async move {
                let svc =
                    hyper::service::service_fn(move |r| handle(client.clone(), up.clone(), r));
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), svc)
                    .await;
            });
        }
    });
}
