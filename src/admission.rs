//! Admission: whether a request may be served at all, decided the same way on the front and on
//! every worker port (a worker port is never a way around the front).
//!
//! In order: the Host check (421), a CORS preflight (answered here), the Origin rule (403), and
//! on `/v1/*` the token (401).
//!
//! - **Host**: a web page on an attacker's domain can make the browser resolve that domain to
//!   127.0.0.1 and talk to this port (DNS rebinding); its requests then carry the attacker's Host.
//!   Accepting only localhost names, the bound addresses and `allowed_hosts` stops that.
//! - **Origin**: a page on any site can POST `text/plain` JSON to a loopback port with no
//!   preflight, and the request runs even though the page cannot read the answer. So a request
//!   whose `Origin` is present and is neither a loopback origin nor in `cors_allow_origins` is
//!   refused before anything else happens, with or without a token. `Origin: null` (sandboxed
//!   frames, `file:` pages) is hostile and refused unless "null" itself is listed.
//! - **CORS**: which origins may *read* responses: those in `cors_allow_origins` only.
//! - **Tokens**: the server token and the `[[clients]]` tokens, read from the environment once
//!   per configuration. A token arrives as `Authorization: Bearer X` or `x-api-key: X` and is
//!   compared in constant time, so response timing does not leak how much of a guess was right.
//!   Supervised workers inherit no token variable: the supervisor hands them the token set in a
//!   sealed memfd named by [`ENV_FD`] (see [`Tokens::to_memfd`], [`Tokens::take_inherited`]).

use crate::{ApiError, Dialect, ErrorKind};
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use serde::{Deserialize, Serialize};
use std::net::{Ipv4Addr, SocketAddr};
use std::os::fd::{FromRawFd, OwnedFd, RawFd};

/// The variable naming the inherited descriptor that holds a supervised worker's token set.
pub const ENV_FD: &str = "GATEWAY_ADMISSION_FD";

/// The descriptor number the supervisor places the token set at in a worker (after the
/// `LISTEN_FDS` sockets at 3 and 4).
pub const CHILD_FD: RawFd = 5;

/// A token set larger than this is not a token set (a guard on what a worker reads).
const MAX_TOKENS_BYTES: u64 = 1 << 20;

/// The tokens of one configuration. `Debug` shows names only, never a token.
#[derive(Default, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Tokens {
    server: Option<String>,
    /// `(client name, token)`, in `[[clients]]` order, clients without a token left out.
    clients: Vec<(String, String)>,
}

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokens")
            .field("server", &self.server.is_some())
            .field(
                "clients",
                &self.clients.iter().map(|(n, _)| n).collect::<Vec<_>>(),
            )
            .finish()
    }
}

/// Who passed the token check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Caller<'a> {
    /// No token is configured at all (or the path needs none).
    Open,
    /// The server token.
    Server,
    /// A `[[clients]]` entry, by its name.
    Client(&'a str),
}

impl Tokens {
    /// Reads the token variables `cfg` names. Empty or unset variables configure nothing.
    pub fn from_env(cfg: &crate::Config) -> Self {
        let env = |name: &str| {
            (!name.is_empty())
                .then(|| std::env::var(name).ok())
                .flatten()
                .filter(|v| !v.is_empty())
        };
        Self {
            server: env(&cfg.server.auth_token_env),
            clients: cfg
                .clients
                .iter()
                .filter_map(|c| Some((c.name.clone(), env(&c.token_env)?)))
                .collect(),
        }
    }

    /// The names of the variables that hold tokens in `cfg`: what a worker must not inherit.
    pub fn env_names(cfg: &crate::Config) -> impl Iterator<Item = &str> {
        std::iter::once(cfg.server.auth_token_env.as_str())
            .chain(cfg.clients.iter().map(|c| c.token_env.as_str()))
            .filter(|n| !n.is_empty())
    }

    /// Whether `[[clients]]` entry `name` has a token.
    pub fn has_client(&self, name: &str) -> bool {
        self.clients.iter().any(|(n, _)| n == name)
    }

    /// Whether no token at all is configured (then `/v1/*` is open).
    pub fn is_empty(&self) -> bool {
        self.server.is_none() && self.clients.is_empty()
    }

    /// Identifies the caller, or `None` when a token is required and none matched.
    pub fn check(&self, headers: &HeaderMap) -> Option<Caller<'_>> {
        if self.is_empty() {
            return Some(Caller::Open);
        }
        let presented = presented_token(headers)?;
        // Every token is compared (no early exit on a match) so timing does not reveal which
        // entry matched either.
        let mut found = None;
        if let Some(t) = &self.server {
            if ct_eq(t.as_bytes(), presented) {
                found = Some(Caller::Server);
            }
        }
        for (name, token) in &self.clients {
            if ct_eq(token.as_bytes(), presented) && found.is_none() {
                found = Some(Caller::Client(name));
            }
        }
        found
    }

    /// The token set in a sealed memfd (close-on-exec): nothing on disk, nothing in argv or in
    /// the environment, and no one holding the descriptor can change what it says.
    pub fn to_memfd(&self) -> std::io::Result<OwnedFd> {
        use nix::fcntl::{fcntl, FcntlArg, SealFlag};
        use nix::sys::memfd::{memfd_create, MemFdCreateFlag};
        use std::io::Write;
        use std::os::fd::AsRawFd;
        let fd = memfd_create(
            c"gateway-admission",
            MemFdCreateFlag::MFD_CLOEXEC | MemFdCreateFlag::MFD_ALLOW_SEALING,
        )?;
        let mut file = std::fs::File::from(fd);
        file.write_all(&serde_json::to_vec(self).map_err(std::io::Error::other)?)?;
        let seals = SealFlag::F_SEAL_WRITE
            | SealFlag::F_SEAL_GROW
            | SealFlag::F_SEAL_SHRINK
            | SealFlag::F_SEAL_SEAL;
        fcntl(file.as_raw_fd(), FcntlArg::F_ADD_SEALS(seals))?;
        Ok(file.into())
    }

    /// Reads a token set written by `to_memfd`. It reads at offset 0 (never moving the shared
    /// file offset, which every worker's copy of the descriptor shares) and refuses a memfd that
    /// is not write-sealed.
    pub fn from_memfd(fd: &OwnedFd) -> std::io::Result<Self> {
        use nix::fcntl::{fcntl, FcntlArg, SealFlag};
        use std::os::fd::AsRawFd;
        use std::os::unix::fs::FileExt;
        let invalid = |m: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, m.to_string());
        let seals = SealFlag::from_bits_truncate(fcntl(fd.as_raw_fd(), FcntlArg::F_GET_SEALS)?);
        if !seals.contains(SealFlag::F_SEAL_WRITE) {
            return Err(invalid("the token set is not sealed against writes"));
        }
        let file = std::fs::File::from(fd.try_clone()?);
        let len = file.metadata()?.len();
        if len > MAX_TOKENS_BYTES {
            return Err(invalid("the token set is too large"));
        }
        let mut buf = vec![0; len as usize];
        file.read_exact_at(&mut buf, 0)?;
        serde_json::from_slice(&buf)
            .map_err(|e| invalid(&format!("the token set is malformed: {e}")))
    }

    /// The token set a supervisor passed (`ENV_FD`), else `None`. Removes `ENV_FD` from the
    /// environment and closes the descriptor, so nothing this process starts inherits either.
    ///
    /// Call it before any other thread exists: it changes the environment.
    pub fn take_inherited() -> std::io::Result<Option<Self>> {
        let Some(v) = std::env::var_os(ENV_FD) else {
            return Ok(None);
        };
        std::env::remove_var(ENV_FD);
        let fd: RawFd = v.to_str().and_then(|s| s.parse().ok()).ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("${ENV_FD}={v:?} is not a descriptor number"),
            )
        })?;
        let not_memfd =
            |e: std::io::Error| std::io::Error::new(e.kind(), format!("${ENV_FD}={fd}: {e}"));
        // Checked before the descriptor is owned: an fd that is not open must not be wrapped.
        nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_GET_SEALS)
            .map_err(|e| not_memfd(e.into()))?;
        // SAFETY: the supervisor passed this descriptor for this purpose (named by ENV_FD, which
        // was just removed, so this is the only place that takes it); F_GET_SEALS just proved it
        // is an open memfd. Owning it closes it once read.
        let owned = unsafe { OwnedFd::from_raw_fd(fd) };
        Self::from_memfd(&owned).map(Some).map_err(not_memfd)
    }
}

/// The token from `Authorization: Bearer X`, else from `x-api-key: X`.
pub fn presented_token(headers: &HeaderMap) -> Option<&[u8]> {
    if let Some(v) = headers.get(header::AUTHORIZATION) {
        let b = v.as_bytes();
        if b.len() > 7 && b[..7].eq_ignore_ascii_case(b"bearer ") {
            return Some(b[7..].trim_ascii());
        }
    }
    headers.get("x-api-key").map(|v| v.as_bytes().trim_ascii())
}

/// Constant-time equality: the time depends on the lengths only, never on where bytes differ.
pub fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = (a.len() ^ b.len()) as u64;
    let n = a.len().max(b.len());
    for i in 0..n {
        let x = a.get(i).copied().unwrap_or(0);
        let y = b.get(i).copied().unwrap_or(0);
        diff |= u64::from(x ^ y);
    }
    // black_box keeps the optimiser from turning the loop into an early-exit comparison.
    std::hint::black_box(diff) == 0
}

/// Host and origin policy of one configuration on one listener.
#[derive(Debug, Default)]
pub struct AccessPolicy {
    /// `allowed_hosts`, lower-cased.
    allowed_hosts: Vec<String>,
    /// IP forms of this listener's addresses (configured and actually bound).
    listen_ips: Vec<String>,
    /// `cors_allow_origins`, as given ("*" allows any origin but "null").
    origins: Vec<HeaderValue>,
    any_origin: bool,
}

impl AccessPolicy {
    /// `addrs`: the addresses this listener answers as (the front: its configured and bound
    /// address; a worker: its bound port).
    pub fn new(cfg: &crate::Config, addrs: &[SocketAddr]) -> Self {
        let ip = |a: &SocketAddr| match a {
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
            listen_ips: addrs.iter().map(ip).collect(),
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

    /// The origin of this request if it is one allowed to read responses (CORS).
    pub fn allowed_origin<'a>(&self, headers: &'a HeaderMap) -> Option<&'a HeaderValue> {
        let o = headers.get(header::ORIGIN)?;
        let listed = self.origins.iter().any(|a| a == o);
        (listed || (self.any_origin && o != "null")).then_some(o)
    }

    /// The Origin rule: no `Origin`, a loopback origin, or a CORS-allowed one.
    pub fn origin_admitted(&self, headers: &HeaderMap) -> bool {
        let Some(o) = headers.get(header::ORIGIN) else {
            return true;
        };
        self.allowed_origin(headers).is_some() || o.to_str().is_ok_and(is_loopback_origin)
    }

    /// Answers a CORS preflight (OPTIONS with `Access-Control-Request-Method`), or `None` when
    /// the request is not one.
    pub fn preflight<B>(&self, req: &Request<B>) -> Option<Response<()>> {
        let h = req.headers();
        if req.method() != Method::OPTIONS || !h.contains_key(header::ACCESS_CONTROL_REQUEST_METHOD)
        {
            return None;
        }
        let mut resp = Response::new(());
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

/// `http(s)://` + localhost, an address in 127.0.0.0/8 or `[::1]`, with any port and nothing
/// else (an origin has no path).
fn is_loopback_origin(origin: &str) -> bool {
    let lower = origin.to_ascii_lowercase();
    let Some(rest) = lower
        .strip_prefix("http://")
        .or_else(|| lower.strip_prefix("https://"))
    else {
        return false;
    };
    let name = strip_port(rest);
    if name.len() != rest.len() && !rest[name.len()..].starts_with(':') {
        return false;
    }
    name == "localhost"
        || name == "[::1]"
        || name.parse::<Ipv4Addr>().is_ok_and(|a| a.is_loopback())
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

/// Why a request was not admitted.
#[derive(Debug)]
pub enum Refusal {
    /// The Host is not served here (421).
    Host,
    /// A CORS preflight, answered (204 for an allowed origin, else 403).
    Preflight(Response<()>),
    /// A cross-site `Origin` (403).
    Origin,
    /// A token is required and none matched (401).
    Token,
    /// A client with pool-wide limits called a listener that does not count them (403).
    FrontOnly(String),
}

impl Refusal {
    /// The answer, in `dialect`.
    pub fn into_response<B: From<String>>(self, dialect: Dialect) -> Response<B> {
        let e = match self {
            Refusal::Preflight(r) => return r.map(|()| B::from(String::new())),
            Refusal::Host => ApiError::new(
                ErrorKind::MisdirectedRequest,
                "this Host is not served here",
            ),
            Refusal::Origin => ApiError::new(
                ErrorKind::Forbidden,
                "cross-site requests are not allowed from this Origin",
            ),
            Refusal::Token => {
                ApiError::new(ErrorKind::Unauthorized, "missing or invalid API token")
            }
            Refusal::FrontOnly(client) => ApiError::new(
                ErrorKind::Forbidden,
                format!(
                    "client `{client}` has limits, which only the front listener counts; \
                     send its requests to the front listener, not to a worker's port"
                ),
            ),
        };
        e.to_response(dialect)
    }
}

/// Everything admission needs on one listener for one configuration.
#[derive(Debug, Default)]
pub struct Admission {
    pub access: AccessPolicy,
    pub tokens: Tokens,
    /// `[[clients]]` refused here although their token is good: those with limits
    /// (`ClientConfig::has_limits`) on a worker's own port, which would otherwise be a way
    /// around them. Empty on the front listener, which enforces them.
    pub front_only: Vec<String>,
}

impl Admission {
    /// The one admission check (see the module docs for the order). Returns who is calling.
    pub fn admit<B>(&self, req: &Request<B>) -> Result<Caller<'_>, Refusal> {
        if !self.access.host_allowed(req) {
            return Err(Refusal::Host);
        }
        if let Some(pre) = self.access.preflight(req) {
            return Err(Refusal::Preflight(pre));
        }
        if !self.access.origin_admitted(req.headers()) {
            return Err(Refusal::Origin);
        }
        if !req.uri().path().starts_with("/v1/") {
            return Ok(Caller::Open);
        }
        match self.tokens.check(req.headers()) {
            None => Err(Refusal::Token),
            Some(Caller::Client(name)) if self.front_only.iter().any(|n| n == name) => {
                Err(Refusal::FrontOnly(name.to_owned()))
            }
            Some(caller) => Ok(caller),
        }
    }
}

#[cfg(test)]
mod tests;
