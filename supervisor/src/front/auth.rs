//! Who may call `/v1/*`: the server token and the `[[clients]]` tokens, and each client's
//! pool-wide concurrency limit.
//!
//! Tokens come from environment variables read once per configuration (at start and at each
//! reload, see `Settings`), never per request. A token arrives as `Authorization: Bearer X` or
//! `x-api-key: X` and is compared in constant time, so response timing does not leak how much
//! of a guess was right.
//!
//! A client's in-flight count and its line of waiting requests (`ClientLive`) outlive the
//! configuration they were created with: a reload hands them to the client of the same name,
//! so requests admitted before the reload still count against the limit after it, and their
//! permits, when returned, wake the requests waiting under the new configuration.

use crate::fifo::Fifo;
use gateway::Config;
use http::HeaderMap;
use std::sync::atomic::{AtomicU32, Ordering::Relaxed};
use std::sync::Arc;

/// One `[[clients]]` entry.
#[derive(Debug)]
pub struct Client {
    pub name: String,
    token: Vec<u8>,
    /// 0 = unlimited.
    pub max_concurrency: u32,
    /// Shared with the same-named client of the configurations before and after this one.
    pub live: Arc<ClientLive>,
}

/// What a client's limit needs across configurations.
#[derive(Debug, Default)]
pub struct ClientLive {
    /// Requests of this client in flight across the pool. Writer: `ClientPermit`.
    pub inflight: AtomicU32,
    /// Its requests waiting for a permit, in arrival order.
    pub line: Fifo,
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
    /// Clients also named in `previous` keep its live state (in-flight count, waiting line).
    pub fn from_config(cfg: &Config, previous: Option<&AuthTable>) -> Self {
        let live = |name: &str| {
            previous
                .and_then(|p| p.clients.iter().find(|c| c.name == name))
                .map(|c| c.live.clone())
                .unwrap_or_default()
        };
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
                    live: live(&c.name),
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

/// A place within a client's `max_concurrency`; dropping it returns the place and wakes the
/// client's next waiting request.
pub struct ClientPermit {
    live: Arc<ClientLive>,
}

impl ClientPermit {
    /// Takes a place if the client is below its limit (always, when it has none).
    pub fn try_take(client: &Client) -> Option<Self> {
        let prev = client.live.inflight.fetch_add(1, Relaxed);
        if client.max_concurrency != 0 && prev >= client.max_concurrency {
            client.live.inflight.fetch_sub(1, Relaxed);
            return None;
        }
        Some(Self {
            live: client.live.clone(),
        })
    }
}

impl Drop for ClientPermit {
    fn drop(&mut self) {
        self.live.inflight.fetch_sub(1, Relaxed);
        self.live.line.release();
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
                live: Default::default(),
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
        let c = t.clients[0].clone();
        let p = ClientPermit::try_take(&c).unwrap();
        assert!(ClientPermit::try_take(&c).is_none());
        drop(p);
        assert!(ClientPermit::try_take(&c).is_some());
        assert_eq!(c.live.inflight.load(Relaxed), 0);
    }

    /// A reload keeps what a client has in flight: a permit taken under the old table still
    /// counts against the limit in the new one, and returning it frees a place there.
    #[test]
    fn a_reload_keeps_in_flight_counts_by_client_name() {
        let old = table();
        let held = ClientPermit::try_take(&old.clients[0]).unwrap();
        let mut cfg = Config::default();
        cfg.clients.push(gateway::config::ClientConfig {
            name: "desk".into(),
            token_env: "GATEWAY_TEST_RELOAD_TOKEN".into(),
            max_concurrency: 1,
        });
        std::env::set_var("GATEWAY_TEST_RELOAD_TOKEN", "cli2");
        let new = AuthTable::from_config(&cfg, Some(&old));
        let fresh = AuthTable::from_config(&cfg, None);
        let n = &new.clients[0];
        assert_eq!(n.live.inflight.load(Relaxed), 1, "the old permit counts");
        assert!(ClientPermit::try_take(n).is_none(), "still at its limit");
        assert!(
            ClientPermit::try_take(&fresh.clients[0]).is_some(),
            "without the previous table the count would start over (the bug this prevents)"
        );
        drop(held);
        assert!(ClientPermit::try_take(n).is_some());
    }
}
