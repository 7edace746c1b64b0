//! Browser-facing guards: the Host check (DNS-rebinding defence, 421) and CORS.
//!
//! A web page on an attacker's domain can make the browser resolve that domain to 127.0.0.1 and
//! talk to this port; its requests then carry the attacker's Host. Accepting only localhost names,
//! the listen address and `allowed_hosts` stops that. CORS then decides which browser origins may
//! read responses (`cors_allow_origins`), including the preflight a browser sends first.

use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use std::net::SocketAddr;

/// Host and origin policy of one configuration.
#[derive(Debug, Default)]
pub struct AccessPolicy {
    /// `allowed_hosts`, lower-cased.
    allowed_hosts: Vec<String>,
    /// IP forms of the listen address (configured and actually bound).
    listen_ips: Vec<String>,
    /// `cors_allow_origins`, as given ("*" allows any origin).
    origins: Vec<HeaderValue>,
    any_origin: bool,
}

impl AccessPolicy {
    pub fn new(cfg: &gateway::Config, bound: SocketAddr) -> Self {
        let ip = |a: SocketAddr| match a {
            SocketAddr::V4(v) => v.ip().to_string(),
            SocketAddr::V6(v) => format!("[{}]", v.ip()),
        };
        Self {
            allowed_hosts: cfg
                .server
                .allowed_hosts
                .iter()
                .map(|h| h.to_ascii_lowercase())
                .collect(),
            listen_ips: vec![ip(cfg.server.listen), ip(bound)],
            origins: cfg
                .server
                .cors_allow_origins
                .iter()
                .filter_map(|o| HeaderValue::from_str(o).ok())
                .collect(),
            any_origin: cfg.server.cors_allow_origins.iter().any(|o| o == "*"),
        }
    }

    /// Whether the request's Host (or HTTP/2 `:authority`) is acceptable. No Host at all (an
    /// HTTP/1.0 client) is accepted: browsers always send one.
    pub fn host_allowed<B>(&self, req: &Request<B>) -> bool {
        let host = match req.headers().get(header::HOST) {
            Some(h) => match h.to_str() {
                Ok(s) => s,
                Err(_) => return false,
            },
            None => match req.uri().authority() {
                Some(a) => a.as_str(),
                None => return true,
            },
        };
        self.host_str_allowed(host)
    }

    fn host_str_allowed(&self, host: &str) -> bool {
        let name = strip_port(host);
        let eq = |a: &str, b: &str| a.eq_ignore_ascii_case(b);
        if ["localhost", "127.0.0.1", "[::1]"]
            .iter()
            .any(|l| eq(name, l))
        {
            return true;
        }
        if self.listen_ips.iter().any(|l| eq(name, l)) {
            return true;
        }
        self.allowed_hosts
            .iter()
            .any(|a| eq(host, a) || eq(name, a))
    }

    /// The allowed origin of this request, if it sent one we accept.
    pub fn allowed_origin<'a>(&self, headers: &'a HeaderMap) -> Option<&'a HeaderValue> {
        let o = headers.get(header::ORIGIN)?;
        (self.any_origin || self.origins.iter().any(|a| a == o)).then_some(o)
    }

    /// Answers a CORS preflight (OPTIONS with `Access-Control-Request-Method`), or `None` when
    /// the request is not one.
    pub fn preflight<B, R: Default>(&self, req: &Request<B>) -> Option<Response<R>> {
        let h = req.headers();
        if req.method() != Method::OPTIONS || !h.contains_key(header::ACCESS_CONTROL_REQUEST_METHOD)
        {
            return None;
        }
        let mut resp = Response::new(R::default());
        let Some(origin) = self.allowed_origin(h) else {
            // Not an allowed origin: no allow headers, so the browser refuses the real request.
            *resp.status_mut() = StatusCode::FORBIDDEN;
            return Some(resp);
        };
        *resp.status_mut() = StatusCode::NO_CONTENT;
        let out = resp.headers_mut();
        out.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
        out.insert(
            header::ACCESS_CONTROL_ALLOW_METHODS,
            HeaderValue::from_static("GET, POST, OPTIONS"),
        );
        let allow_headers = h
            .get(header::ACCESS_CONTROL_REQUEST_HEADERS)
            .cloned()
            .unwrap_or(HeaderValue::from_static(
            "authorization, content-type, x-api-key, anthropic-version, x-session-id, x-request-id",
        ));
        out.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, allow_headers);
        out.insert(
            header::ACCESS_CONTROL_MAX_AGE,
            HeaderValue::from_static("600"),
        );
        out.insert(header::VARY, HeaderValue::from_static("Origin"));
        Some(resp)
    }

    /// Adds `Access-Control-Allow-Origin` to a response for an allowed origin.
    pub fn decorate(&self, origin: Option<HeaderValue>, out: &mut HeaderMap) {
        if let Some(o) = origin {
            out.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, o);
            out.insert(header::VARY, HeaderValue::from_static("Origin"));
            out.insert(
                header::ACCESS_CONTROL_EXPOSE_HEADERS,
                HeaderValue::from_static(
                    "x-request-id, x-gateway-worker, x-gateway-provider, retry-after",
                ),
            );
        }
    }
}

/// `host[:port]` → `host`; `[v6]:port` → `[v6]`.
fn strip_port(host: &str) -> &str {
    if host.starts_with('[') {
        return host.find(']').map_or(host, |i| &host[..=i]);
    }
    match host.rsplit_once(':') {
        Some((h, p)) if p.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => host,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> AccessPolicy {
        let mut cfg = gateway::Config::default();
        cfg.server.allowed_hosts = vec!["gw.lan".into(), "box:9000".into()];
        cfg.server.cors_allow_origins = vec!["tauri://localhost".into()];
        AccessPolicy::new(&cfg, "10.1.2.3:5555".parse().unwrap())
    }

    #[test]
    fn hosts() {
        let p = policy();
        for ok in [
            "localhost",
            "LOCALHOST:8080",
            "127.0.0.1:1",
            "[::1]:80",
            "[::1]",
            "gw.lan:1234",
        ] {
            assert!(p.host_str_allowed(ok), "{ok}");
        }
        assert!(p.host_str_allowed("10.1.2.3:5555"), "the bound address");
        assert!(p.host_str_allowed("box:9000"));
        for bad in [
            "evil.com",
            "localhost.evil.com",
            "127.0.0.2",
            "[::2]:80",
            "box:9001x",
        ] {
            assert!(!p.host_str_allowed(bad), "{bad}");
        }
    }

    #[test]
    fn preflight_and_decorate() {
        let p = policy();
        let req = Request::builder()
            .method("OPTIONS")
            .header("origin", "tauri://localhost")
            .header("access-control-request-method", "POST")
            .body(())
            .unwrap();
        let r: Response<String> = p.preflight(&req).unwrap();
        assert_eq!(r.status(), 204);
        assert_eq!(
            r.headers()["access-control-allow-origin"],
            "tauri://localhost"
        );
        let bad = Request::builder()
            .method("OPTIONS")
            .header("origin", "https://evil.com")
            .header("access-control-request-method", "POST")
            .body(())
            .unwrap();
        let r: Response<String> = p.preflight(&bad).unwrap();
        assert!(r.headers().get("access-control-allow-origin").is_none());
        let plain = Request::builder().method("OPTIONS").body(()).unwrap();
        assert!(p.preflight::<_, String>(&plain).is_none());
    }
}
