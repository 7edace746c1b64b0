//! Who is calling `/v1/*`, and each `[[clients]]` entry's pool-wide concurrency limit.
//!
//! The token check itself is `gateway::admission` (the same on the front and on every worker
//! port); tokens are read once per configuration (at start and at each reload, see `Settings`),
//! never per request.
//!
//! A client's in-flight count and its line of waiting requests (`ClientLive`) outlive the
//! configuration they were created with: a reload hands them to the client of the same name,
//! so requests admitted before the reload still count against the limit after it, and their
//! permits, when returned, wake the requests waiting under the new configuration. The other
//! limits' counters (`limits::Book`) are kept by client name for the supervisor's whole life.

use super::limits::{Book, CounterStore, Limits};
use crate::fifo::Fifo;
use gateway::admission::{self, Tokens};
use gateway::Config;
use std::sync::atomic::{AtomicU32, Ordering::Relaxed};
use std::sync::Arc;

/// One `[[clients]]` entry.
#[derive(Debug)]
pub struct Client {
    pub name: String,
    /// 0 = unlimited.
    pub max_concurrency: u32,
    /// Shared with the same-named client of the configurations before and after this one.
    pub live: Arc<ClientLive>,
    /// rpm, tpm, daily_tokens, monthly_usd.
    pub limits: Limits,
    /// Their counters, from the `Book` (the same for every configuration naming this client).
    pub counters: Arc<dyn CounterStore>,
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

/// The clients of one configuration with a token set, and their live state. Which token is
/// whose is `gateway::admission::Tokens`; this table turns its answer into a `Caller`.
#[derive(Debug, Default)]
pub struct AuthTable {
    clients: Vec<Arc<Client>>,
}

impl AuthTable {
    /// The `[[clients]]` of `cfg` that `tokens` holds a token for. Clients also named in
    /// `previous` keep its live state (in-flight count, waiting line); every client's limit
    /// counters come from `book`.
    pub fn new(cfg: &Config, tokens: &Tokens, previous: Option<&AuthTable>, book: &Book) -> Self {
        let live = |name: &str| {
            previous
                .and_then(|p| p.clients.iter().find(|c| c.name == name))
                .map(|c| c.live.clone())
                .unwrap_or_default()
        };
        let clients = cfg
            .clients
            .iter()
            .filter(|c| tokens.has_client(&c.name))
            .map(|c| {
                let limits = Limits::of(c);
                book.set_limits(&c.name, limits);
                Arc::new(Client {
                    name: c.name.clone(),
                    max_concurrency: c.max_concurrency,
                    live: live(&c.name),
                    limits,
                    counters: book.counters(&c.name),
                })
            })
            .collect();
        Self { clients }
    }

    /// The caller admission identified.
    pub fn caller(&self, admitted: admission::Caller<'_>) -> Caller {
        match admitted {
            admission::Caller::Open => Caller::Open,
            admission::Caller::Server => Caller::Server,
            // Built from the same `Tokens`, so the client is always here; were it not, the
            // request would still have passed the token check and only its limit is unknown.
            admission::Caller::Client(name) => self
                .clients
                .iter()
                .find(|c| c.name == name)
                .map_or(Caller::Server, |c| Caller::Client(c.clone())),
        }
    }
}

/// A place within a client's `max_concurrency`; dropping it returns the place and wakes the
/// client's next waiting request.
pub struct ClientPermit {
    live: Arc<ClientLive>,
    /// With `[shared]`: the same place held for every host (released with it).
    pub lease: Option<gateway::shared::lease::Lease>,
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
            lease: None,
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

    fn tokens(cli: &str) -> Tokens {
        let mut cfg = config();
        cfg.server.auth_token_env = String::new();
        std::env::set_var("GATEWAY_TEST_AUTH_CLI", cli);
        Tokens::from_env(&cfg)
    }

    fn config() -> Config {
        let mut cfg = Config::default();
        cfg.clients.push(gateway::config::ClientConfig {
            name: "desk".into(),
            token_env: "GATEWAY_TEST_AUTH_CLI".into(),
            max_concurrency: 1,
            ..Default::default()
        });
        cfg
    }

    #[test]
    fn admitted_clients_get_their_limits() {
        let t = tokens("cli");
        let table = AuthTable::new(&config(), &t, None, &Book::default());
        let c = table.caller(admission::Caller::Client("desk"));
        assert!(matches!(c, Caller::Client(c) if c.name == "desk" && c.max_concurrency == 1));
        assert!(matches!(
            table.caller(admission::Caller::Open),
            Caller::Open
        ));
    }

    #[test]
    fn permits_bound_a_client() {
        let t = tokens("cli");
        let table = AuthTable::new(&config(), &t, None, &Book::default());
        let c = table.clients[0].clone();
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
        let cfg = config();
        let t = tokens("cli");
        let book = Book::default();
        let old = AuthTable::new(&cfg, &t, None, &book);
        let held = ClientPermit::try_take(&old.clients[0]).unwrap();
        let t2 = tokens("cli2");
        let new = AuthTable::new(&cfg, &t2, Some(&old), &book);
        let fresh = AuthTable::new(&cfg, &t2, None, &Book::default());
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
