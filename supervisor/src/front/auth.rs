//! Who may call `/v1/*`: the server token and the `[[clients]]` tokens, and each client's
//! pool-wide concurrency limit.
//!
//! Tokens come from environment variables read once per configuration (at start and at each
//! reload, see `Settings`), never per request. A token arrives as `Authorization: Bearer X` or
//! `x-api-key: X` and is compared in constant time, so response timing does not leak how much
//! of a guess was right.

use crate::pool::Pool;
use gateway::Config;
use http::HeaderMap;
use std::sync::atomic::{AtomicU32, Ordering::Relaxed};
use std::sync::Arc;

/// One `[[clients]]` entry with its live in-flight count.
#[derive(Debug)]
pub struct Client {
    pub name: String,
    token: Vec<u8>,
    /// 0 = unlimited.
    pub max_concurrency: u32,
    /// Requests of this client in flight across the pool. Writer: `ClientPermit`.
    pub inflight: AtomicU32,
}

/// Who the caller is.
#[derive(Debug, Clone)]
pub enum Caller {
    /// No token is configured at all: `/v1/*` is open.
    Open,
    /// The server token.
    Server,
    /// A named client.
    Client(Arc<Client>),
}

/// The tokens of one configuration.
#[derive(Debug, Default)]
pub struct AuthTable {
    server: Option<Vec<u8>>,
    clients: Vec<Arc<Client>>,
}

impl AuthTable {
    /// Reads the token variables named by `cfg`. Empty or unset variables configure nothing.
    pub fn from_config(cfg: &Config) -> Self {
        let env = |name: &str| {
            (!name.is_empty())
                .then(|| std::env::var(name).ok())
                .flatten()
                .filter(|v| !v.is_empty())
                .map(String::into_bytes)
        };
        let clients = cfg
            .clients
            .iter()
            .filter_map(|c| {
                let token = env(&c.token_env)?;
                Some(Arc::new(Client {
                    name: c.name.clone(),
                    token,
                    max_concurrency: c.max_concurrency,
                    inflight: AtomicU32::new(0),
                }))
            })
            .collect();
        Self {
            server: env(&cfg.server.auth_token_env),
            clients,
        }
    }

    /// Identifies the caller, or `None` when a token is required and none matched.
    pub fn check(&self, headers: &HeaderMap) -> Option<Caller> {
        if self.server.is_none() && self.clients.is_empty() {
            return Some(Caller::Open);
        }
        let presented = presented_token(headers)?;
        // Every token is compared (no early exit on a match) so timing does not reveal which
        // entry matched either.
        let mut found = None;
        if let Some(t) = &self.server {
            if ct_eq(t, presented) {
                found = Some(Caller::Server);
            }
        }
        for c in &self.clients {
            if ct_eq(&c.token, presented) && found.is_none() {
                found = Some(Caller::Client(c.clone()));
            }
        }
        found
    }
}

/// The token from `Authorization: Bearer X`, else from `x-api-key: X`.
fn presented_token(headers: &HeaderMap) -> Option<&[u8]> {
    if let Some(v) = headers.get(http::header::AUTHORIZATION) {
        let b = v.as_bytes();
        if b.len() > 7 && b[..7].eq_ignore_ascii_case(b"bearer ") {
            return Some(trim(&b[7..]));
        }
    }
    headers.get("x-api-key").map(|v| trim(v.as_bytes()))
}

fn trim(b: &[u8]) -> &[u8] {
    let s = b
        .iter()
        .position(|c| !c.is_ascii_whitespace())
        .unwrap_or(b.len());
    let e = b
        .iter()
        .rposition(|c| !c.is_ascii_whitespace())
        .map_or(s, |i| i + 1);
    &b[s..e.max(s)]
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

/// A place within a client's `max_concurrency`; dropping it returns the place and wakes waiters.
pub struct ClientPermit {
    client: Arc<Client>,
    pool: Arc<Pool>,
}

impl ClientPermit {
    /// Takes a place if the client is below its limit (always, when it has none).
    pub fn try_take(client: &Arc<Client>, pool: &Arc<Pool>) -> Option<Self> {
        let prev = client.inflight.fetch_add(1, Relaxed);
        if client.max_concurrency != 0 && prev >= client.max_concurrency {
            client.inflight.fetch_sub(1, Relaxed);
            return None;
        }
        Some(Self {
            client: client.clone(),
            pool: pool.clone(),
        })
    }
}

impl Drop for ClientPermit {
    fn drop(&mut self) {
        self.client.inflight.fetch_sub(1, Relaxed);
        // Shares the pool's capacity event: client waiters re-check on any release.
        self.pool.notify_capacity();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn constant_time_eq() {
        assert!(ct_eq(b"secret", b"secret"));
        assert!(!ct_eq(b"secret", b"secreT"));
        assert!(!ct_eq(b"secret", b"secret2"));
        assert!(!ct_eq(b"", b"x"));
        assert!(ct_eq(b"", b""));
    }

    fn table() -> AuthTable {
        AuthTable {
            server: Some(b"srv".to_vec()),
            clients: vec![Arc::new(Client {
                name: "desk".into(),
                token: b"cli".to_vec(),
                max_concurrency: 1,
                inflight: AtomicU32::new(0),
            })],
        }
    }

    #[test]
    fn bearer_and_api_key() {
        let t = table();
        let mut h = HeaderMap::new();
        assert!(t.check(&h).is_none());
        h.insert("authorization", HeaderValue::from_static("Bearer srv"));
        assert!(matches!(t.check(&h), Some(Caller::Server)));
        h.insert("authorization", HeaderValue::from_static("bearer wrong"));
        assert!(t.check(&h).is_none());
        h.clear();
        h.insert("x-api-key", HeaderValue::from_static("cli"));
        assert!(matches!(t.check(&h), Some(Caller::Client(c)) if c.name == "desk"));
        assert!(matches!(
            AuthTable::default().check(&HeaderMap::new()),
            Some(Caller::Open)
        ));
    }

    #[test]
    fn permits_bound_a_client() {
        let t = table();
        let pool = Arc::new(Pool::from_slots(vec![]));
        let c = t.clients[0].clone();
        let p = ClientPermit::try_take(&c, &pool).unwrap();
        assert!(ClientPermit::try_take(&c, &pool).is_none());
        drop(p);
        assert!(ClientPermit::try_take(&c, &pool).is_some());
        assert_eq!(c.inflight.load(Relaxed), 0);
    }
}
