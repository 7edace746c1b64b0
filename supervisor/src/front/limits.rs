//! `[[clients]]` limits other than `max_concurrency`: `rpm`, `tpm`, `daily_tokens` and
//! `monthly_usd`, counted once for the whole pool in the supervisor's front.
//!
//! Windows, and why:
//! - `rpm` and `tpm`: a **sliding 60-second window of 1-second buckets**. A fixed minute lets
//!   2× the limit through around its edge, and GCRA spreads the limit evenly (10 rpm = one every
//!   6 s), refusing the burst of 10 a client is entitled to. Sixty buckets count exactly, in a
//!   fixed 1 KiB per client; what a bucket counted frees room 60 s later (to the second).
//! - `daily_tokens`: the UTC day; `monthly_usd`: the UTC calendar month. They are budgets, so
//!   they reset on the calendar, as a bill does, and they start from the ledger at start-up
//!   ([`Book::seed`]), so a restart does not reset them.
//!
//! Admission ([`CounterStore::admit`]) is one short critical section per request: every limit
//! is checked and the request counted in `rpm` at once, so concurrent requests cannot all see
//! the last free place (exactly `rpm` pass). Token limits are checked on what was already
//! used; a request's own tokens are added once, when its usage record reaches the supervisor
//! ([`Book::settle`], from `crate::usage`); nothing is reserved for them, so nothing is counted
//! twice.
//!
//! With `[shared] backend = "redis"` the same limits hold for every host together
//! (`gateway::shared::window`, one script call per admission): the front checks this host's
//! counters first ([`CounterStore::check`]: a host never asks Redis for what it can refuse
//! itself), then Redis, and counts the request here too when Redis admitted it, so this book
//! stays the host's own share and the fallback while Redis is unavailable
//! (`on_unavailable = "local"`). Each settlement updates this book, then goes (queued, never
//! waited for) to Redis: the request's tokens for `tpm`, and this host's day and month totals,
//! which include its ledger share ([`Book::seed`]), for the budgets.

use gateway::config::ClientConfig;
use gateway::shared::window::{RateLimit, RateLimits, Refused, Settle};
use gateway::shared::Shared;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{SystemTime, UNIX_EPOCH};

/// Seconds in a rate window, and buckets in it (one per second).
const WINDOW: i64 = 60;
const DAY_MS: i64 = 86_400_000;

/// A client's limits from its `[[clients]]` entry; 0 = unlimited.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Limits {
    pub rpm: u64,
    pub tpm: u64,
    pub daily_tokens: u64,
    pub monthly_usd: f64,
}

impl Limits {
    pub fn of(c: &ClientConfig) -> Self {
        Self {
            rpm: c.rpm,
            tpm: c.tpm,
            daily_tokens: c.daily_tokens,
            monthly_usd: c.monthly_usd,
        }
    }

    /// True when no limit is set (the request path skips the store).
    pub fn is_none(&self) -> bool {
        self.rpm == 0 && self.tpm == 0 && self.daily_tokens == 0 && self.monthly_usd <= 0.0
    }

    /// True when a finished request's usage matters (tpm or a budget).
    fn counts_usage(&self) -> bool {
        self.tpm > 0 || self.daily_tokens > 0 || self.monthly_usd > 0.0
    }

    /// The same limits for `Shared::admit`.
    pub fn shared(&self) -> RateLimits {
        RateLimits {
            rpm: self.rpm,
            tpm: self.tpm,
            daily_tokens: self.daily_tokens,
            monthly_usd: self.monthly_usd,
        }
    }
}

/// Which limit refused a request (the `limit` label of `gateway_client_limited_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    Rpm,
    Tpm,
    DailyTokens,
    MonthlyUsd,
}

impl Limit {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Rpm => "rpm",
            Self::Tpm => "tpm",
            Self::DailyTokens => "daily_tokens",
            Self::MonthlyUsd => "monthly_usd",
        }
    }
}

/// A refused request: which limit, and in how many seconds the window frees room.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Refusal {
    pub limit: Limit,
    pub retry_after: u64,
}

impl From<Refused> for Refusal {
    fn from(r: Refused) -> Self {
        let limit = match r.limit {
            RateLimit::Rpm => Limit::Rpm,
            RateLimit::Tpm => Limit::Tpm,
            RateLimit::DailyTokens => Limit::DailyTokens,
            RateLimit::MonthlyUsd => Limit::MonthlyUsd,
        };
        Self {
            limit,
            retry_after: r.retry_after,
        }
    }
}

impl Refusal {
    /// The error message, naming the client and the limit with its value.
    pub fn message(&self, client: &str, l: &Limits) -> String {
        let what = match self.limit {
            Limit::Rpm => format!("rpm limit ({} per minute)", l.rpm),
            Limit::Tpm => format!("tpm limit ({} tokens per minute)", l.tpm),
            Limit::DailyTokens => format!("daily_tokens limit ({} per UTC day)", l.daily_tokens),
            Limit::MonthlyUsd => format!("monthly_usd limit (${} per UTC month)", l.monthly_usd),
        };
        format!("client `{client}` is over its {what}")
    }
}

/// What one finished request used, as its usage record says.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Used {
    /// Input + output + cache-read + cache-write: every token the provider processed (the same
    /// sum as `ledger::client_totals`, so a restart counts what was counted live).
    pub tokens: u64,
    /// 0 when the model has no price.
    pub usd: f64,
    /// When the request arrived (the record's `ts_ms`): the day and month it is billed to.
    pub ts_ms: i64,
}

impl Used {
    pub fn of(r: &gateway::usage::Record) -> Self {
        let t = r.tokens;
        Self {
            tokens: t.input + t.output + t.cache_read + t.cache_write,
            usd: r.cost_usd.unwrap_or(0.0),
            ts_ms: r.ts_ms,
        }
    }
}

/// The two operations on one client's counters. [`Local`] keeps them in this process (the
/// supervisor's front sees the whole pool); a shared backend (`[shared]`, e.g. a windowed
/// `INCR` in Redis) implements the same pair.
pub trait CounterStore: Send + Sync + std::fmt::Debug {
    /// Checks every limit and, when all have room, counts the request in `rpm`: atomically,
    /// so concurrent callers never pass the same free place.
    fn admit(&self, limits: &Limits, now_ms: i64) -> Result<(), Refusal>;
    /// Checks every limit, counting nothing (the fast path before a shared store decides).
    fn check(&self, limits: &Limits, now_ms: i64) -> Result<(), Refusal>;
    /// Counts one request in `rpm` with no check (a shared store admitted it).
    fn count(&self, now_ms: i64);
    /// Adds what a finished request used to the token and cost counters.
    fn settle(&self, used: Used, now_ms: i64);
}

/// A sliding 60-second window in 1-second buckets.
#[derive(Debug, Clone, Copy)]
struct Window {
    /// Bucket `s % 60` holds the count of second `s` (stale when its second is older).
    buckets: [(i64, u64); WINDOW as usize],
}

impl Default for Window {
    fn default() -> Self {
        Self {
            buckets: [(0, 0); WINDOW as usize],
        }
    }
}

impl Window {
    fn add(&mut self, now_s: i64, n: u64) {
        let b = &mut self.buckets[now_s.rem_euclid(WINDOW) as usize];
        if b.0 != now_s {
            *b = (now_s, 0);
        }
        b.1 += n;
    }

    /// The buckets of the last 60 seconds (the current one included), oldest first.
    fn live(&self, now_s: i64) -> impl Iterator<Item = (i64, u64)> + '_ {
        (now_s - WINDOW + 1..=now_s).filter_map(move |s| {
            let b = self.buckets[s.rem_euclid(WINDOW) as usize];
            (b.0 == s && b.1 > 0).then_some(b)
        })
    }

    fn total(&self, now_s: i64) -> u64 {
        self.live(now_s).map(|b| b.1).sum()
    }

    /// With the window at or over `limit`: seconds until enough of it expires that it is below
    /// `limit` again (at least 1).
    fn retry_after(&self, now_ms: i64, limit: u64) -> u64 {
        let now_s = now_ms.div_euclid(1000);
        let mut left = self.total(now_s);
        for (s, n) in self.live(now_s) {
            left -= n;
            if left < limit {
                // Bucket `s` leaves the window when second `s + 60` begins.
                return secs_until((s + WINDOW) * 1000, now_ms);
            }
        }
        1
    }
}

/// Whole seconds from `now_ms` to `at_ms`, rounded up, at least 1.
fn secs_until(at_ms: i64, now_ms: i64) -> u64 {
    ((at_ms - now_ms).max(1) as u64).div_ceil(1000)
}

/// One client's counters in this process.
#[derive(Debug, Default)]
struct State {
    requests: Window,
    tokens: Window,
    /// The UTC day (days since the epoch) `day_tokens` counts.
    day: i64,
    day_tokens: u64,
    /// The UTC month (`year * 12 + month0`) `month_usd` counts.
    month: i64,
    month_usd: f64,
}

impl State {
    /// Starts a new day or month when the calendar moved on.
    fn roll(&mut self, now_ms: i64) {
        let day = now_ms.div_euclid(DAY_MS);
        if day != self.day {
            (self.day, self.day_tokens) = (day, 0);
        }
        let month = month_of(now_ms);
        if month != self.month {
            (self.month, self.month_usd) = (month, 0.0);
        }
    }

    fn check(&self, l: &Limits, now_ms: i64) -> Result<(), Refusal> {
        let now_s = now_ms.div_euclid(1000);
        let refuse = |limit, retry_after| Err(Refusal { limit, retry_after });
        if l.daily_tokens > 0 && self.day_tokens >= l.daily_tokens {
            return refuse(
                Limit::DailyTokens,
                secs_until((self.day + 1) * DAY_MS, now_ms),
            );
        }
        if l.monthly_usd > 0.0 && self.month_usd >= l.monthly_usd {
            return refuse(
                Limit::MonthlyUsd,
                secs_until(month_start_ms(self.month + 1), now_ms),
            );
        }
        if l.tpm > 0 && self.tokens.total(now_s) >= l.tpm {
            return refuse(Limit::Tpm, self.tokens.retry_after(now_ms, l.tpm));
        }
        if l.rpm > 0 && self.requests.total(now_s) >= l.rpm {
            return refuse(Limit::Rpm, self.requests.retry_after(now_ms, l.rpm));
        }
        Ok(())
    }
}

/// [`CounterStore`] in this process's memory.
///
/// Why a `std::sync::Mutex`: admission must check several counters and count the request as
/// one step, which atomics cannot do for a sliding window. The section is a few dozen
/// loads and adds, never spans an `.await`, and only this client's requests and records take it.
#[derive(Debug, Default)]
pub struct Local {
    state: Mutex<State>,
}

impl Local {
    fn with<T>(&self, f: impl FnOnce(&mut State) -> T) -> T {
        // A panic inside `f` (none is possible: plain arithmetic) leaves counts, never a broken
        // invariant, so a poisoned lock is still usable.
        let mut g = self.state.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut g)
    }
}

impl CounterStore for Local {
    fn admit(&self, limits: &Limits, now_ms: i64) -> Result<(), Refusal> {
        self.with(|s| {
            s.roll(now_ms);
            s.check(limits, now_ms)?;
            s.requests.add(now_ms.div_euclid(1000), 1);
            Ok(())
        })
    }

    fn check(&self, limits: &Limits, now_ms: i64) -> Result<(), Refusal> {
        self.with(|s| {
            s.roll(now_ms);
            s.check(limits, now_ms)
        })
    }

    fn count(&self, now_ms: i64) {
        self.with(|s| s.requests.add(now_ms.div_euclid(1000), 1))
    }

    fn settle(&self, used: Used, now_ms: i64) {
        self.with(|s| {
            s.roll(now_ms);
            s.tokens.add(now_ms.div_euclid(1000), used.tokens);
            // A request that began before midnight (or the 1st) was billed to the day before.
            if used.ts_ms.div_euclid(DAY_MS) == s.day {
                s.day_tokens += used.tokens;
            }
            if month_of(used.ts_ms) == s.month {
                s.month_usd += used.usd;
            }
        })
    }
}

impl Local {
    /// This host's totals of the current day and month: (day, tokens, month, usd).
    fn totals(&self) -> (i64, u64, i64, f64) {
        self.with(|s| (s.day, s.day_tokens, s.month, s.month_usd))
    }
}

/// Every client's counters by name, for the whole life of the supervisor: the front's clients
/// take theirs from here at each reload (so a reload keeps them), and the usage receiver
/// settles each record into the counters of the client it names.
///
/// The map's lock is taken per usage record and per configuration rebuild, never by admission
/// (a `Client` holds its own `Arc`).
#[derive(Default)]
pub struct Book {
    clients: Mutex<HashMap<String, Arc<Local>>>,
    /// Each client's limits as the current configuration sets them (for settlements to Redis).
    limits: Mutex<HashMap<String, Limits>>,
    /// `[shared]`: where settlements go too.
    shared: OnceLock<Shared>,
}

impl std::fmt::Debug for Book {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Book")
            .field("clients", &self.map().len())
            .field("shared", &self.shared.get().is_some())
            .finish()
    }
}

/// The subject of a client's counters in Redis (the same as its concurrency lease's).
pub fn subject(client: &str) -> String {
    format!("client:{client}")
}

impl Book {
    /// A book with counters for each client of `cfg`.
    pub fn new(cfg: &gateway::Config) -> Arc<Self> {
        let b = Self::default();
        for c in &cfg.clients {
            b.counters(&c.name);
            b.set_limits(&c.name, Limits::of(c));
        }
        Arc::new(b)
    }

    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Local>>> {
        self.clients.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The counters of client `name`, created at 0 the first time.
    pub fn counters(&self, name: &str) -> Arc<Local> {
        self.map().entry(name.to_string()).or_default().clone()
    }

    /// Settlements go to `shared` too from now on (set before the ledger seeds the book).
    pub fn share(&self, shared: Shared) {
        let _ = self.shared.set(shared);
    }

    /// The limits of client `name` from now on (each configuration sets them).
    pub fn set_limits(&self, name: &str, l: Limits) {
        let mut m = self.limits.lock().unwrap_or_else(|e| e.into_inner());
        m.insert(name.to_string(), l);
    }

    /// Adds a finished request's usage to its client, if the book knows the client (records of
    /// the server token or an open gateway name none).
    pub fn settle(&self, client: &str, used: Used) {
        let c = self.map().get(client).cloned();
        if let Some(c) = c {
            c.settle(used, now_ms());
            self.share_totals(client, &c, used.tokens);
        }
    }

    /// With `[shared]` and a client limited by tokens or cost: its `tpm` tokens and this
    /// host's totals to Redis (queued; the queue never blocks).
    fn share_totals(&self, client: &str, c: &Local, tokens: u64) {
        let Some(shared) = self.shared.get() else {
            return;
        };
        let l = {
            let m = self.limits.lock().unwrap_or_else(|e| e.into_inner());
            m.get(client).copied().unwrap_or_default()
        };
        if !l.counts_usage() {
            return;
        }
        let (day, day_tokens, month, month_usd) = c.totals();
        shared.settle_later(Settle {
            subject: subject(client),
            tokens: if l.tpm > 0 { tokens } else { 0 },
            day: (l.daily_tokens > 0).then_some((day, day_tokens)),
            month: (l.monthly_usd > 0.0).then_some((month, month_usd)),
        });
    }

    /// Names of the clients, for seeding.
    pub fn names(&self) -> Vec<String> {
        self.map().keys().cloned().collect()
    }

    /// Adds what the ledger holds for `client` in the current day and month (read by the
    /// caller before any record of this run was written: [`Self::seed_since`] gives the start
    /// times).
    pub fn seed(&self, client: &str, day_tokens: u64, month_usd: f64, now_ms: i64) {
        let c = self.counters(client);
        c.with(|s| {
            s.roll(now_ms);
            s.day_tokens += day_tokens;
            s.month_usd += month_usd;
        });
        self.share_totals(client, &c, 0);
    }

    /// The start of the current UTC day and of the current UTC month, in Unix milliseconds.
    pub fn seed_since(now_ms: i64) -> (i64, i64) {
        (
            now_ms.div_euclid(DAY_MS) * DAY_MS,
            month_start_ms(month_of(now_ms)),
        )
    }
}

use gateway::calendar::{civil_from_days, days_from_civil};

/// Unix time in milliseconds.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// The UTC month of `ms` as `year * 12 + (month - 1)`.
fn month_of(ms: i64) -> i64 {
    let (y, m, _) = civil_from_days(ms.div_euclid(DAY_MS));
    y * 12 + (m - 1)
}

/// Unix milliseconds at 00:00 UTC on the first day of month `ym` (`year * 12 + month0`).
fn month_start_ms(ym: i64) -> i64 {
    let (y, m) = (ym.div_euclid(12), ym.rem_euclid(12) + 1);
    days_from_civil(y, m, 1) * DAY_MS
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: i64 = 1_780_000_000_000; // 2026-05-28T20:26:40Z

    fn rpm(n: u64) -> Limits {
        Limits {
            rpm: n,
            ..Default::default()
        }
    }

    #[test]
    fn rpm_admits_exactly_the_limit_then_frees_room_a_minute_later() {
        let c = Local::default();
        for i in 0..3 {
            c.admit(&rpm(3), T0 + i * 10_000).unwrap();
        }
        let r = c.admit(&rpm(3), T0 + 30_000).unwrap_err();
        assert_eq!(r.limit, Limit::Rpm);
        // The first request (second T0/1000) leaves the window 60 s after its second began.
        assert_eq!(r.retry_after, 30);
        assert!(
            c.admit(&rpm(3), T0 + 59_999).is_err(),
            "still in the window"
        );
        c.admit(&rpm(3), T0 + 60_000).unwrap();
        assert!(
            c.admit(&rpm(3), T0 + 60_001).is_err(),
            "one freed, one taken"
        );
        c.admit(&rpm(3), T0 + 70_000).unwrap();
    }

    #[test]
    fn a_refused_request_is_not_counted() {
        let c = Local::default();
        c.admit(&rpm(1), T0).unwrap();
        for i in 1..100 {
            assert!(c.admit(&rpm(1), T0 + i * 100).is_err());
        }
        c.admit(&rpm(1), T0 + 60_000).unwrap();
    }

    #[test]
    fn concurrent_admission_passes_exactly_the_limit() {
        let c = Arc::new(Local::default());
        let now = now_ms();
        let passed: usize = (0..8)
            .map(|_| {
                let c = c.clone();
                std::thread::spawn(move || {
                    (0..50).filter(|_| c.admit(&rpm(10), now).is_ok()).count()
                })
            })
            .collect::<Vec<_>>()
            .into_iter()
            .map(|t| t.join().unwrap())
            .sum();
        assert_eq!(passed, 10);
    }

    #[test]
    fn tpm_checks_what_was_used_and_settles_once() {
        let l = Limits {
            tpm: 100,
            ..Default::default()
        };
        let c = Local::default();
        let used = |tokens| Used {
            tokens,
            usd: 0.0,
            ts_ms: T0,
        };
        c.admit(&l, T0).unwrap();
        c.settle(used(60), T0);
        c.admit(&l, T0 + 1_000).unwrap();
        c.settle(used(30), T0 + 2_000);
        // 90 used: still below, so the next request passes (and may go over).
        c.admit(&l, T0 + 3_000).unwrap();
        c.settle(used(30), T0 + 3_000);
        let r = c.admit(&l, T0 + 4_000).unwrap_err();
        assert_eq!(r.limit, Limit::Tpm);
        // 120 used: the 60 of second T0 must leave (at T0 + 60 s) to be below 100.
        assert_eq!(r.retry_after, 56);
        c.admit(&l, T0 + 60_000).unwrap();
    }

    #[test]
    fn daily_tokens_reset_at_utc_midnight_and_seed_counts() {
        let l = Limits {
            daily_tokens: 1000,
            ..Default::default()
        };
        let b = Book::default();
        let day_start = Book::seed_since(T0).0;
        b.seed("desk", 990, 0.0, T0);
        let c = b.counters("desk");
        c.admit(&l, T0).unwrap();
        c.settle(
            Used {
                tokens: 10,
                usd: 0.0,
                ts_ms: T0,
            },
            T0,
        );
        let r = c.admit(&l, T0 + 1).unwrap_err();
        assert_eq!(r.limit, Limit::DailyTokens);
        assert_eq!(
            r.retry_after,
            ((day_start + DAY_MS - T0) as u64).div_ceil(1000)
        );
        c.admit(&l, day_start + DAY_MS).unwrap();
    }

    #[test]
    fn a_record_of_yesterday_does_not_count_today() {
        let c = Local::default();
        let midnight = Book::seed_since(T0).0 + DAY_MS;
        c.settle(
            Used {
                tokens: 5,
                usd: 1.0,
                ts_ms: midnight - 10,
            },
            midnight + 10,
        );
        c.with(|s| assert_eq!(s.day_tokens, 0));
    }

    #[test]
    fn monthly_usd_trips_and_frees_on_the_first() {
        let l = Limits {
            monthly_usd: 1.0,
            ..Default::default()
        };
        let c = Local::default();
        c.settle(
            Used {
                tokens: 1,
                usd: 1.0,
                ts_ms: T0,
            },
            T0,
        );
        let r = c.admit(&l, T0).unwrap_err();
        assert_eq!(r.limit, Limit::MonthlyUsd);
        let june = days_from_civil(2026, 6, 1) * DAY_MS;
        assert_eq!(r.retry_after, ((june - T0) as u64).div_ceil(1000));
        c.admit(&l, june).unwrap();
        assert_eq!(
            r.message("desk", &l),
            "client `desk` is over its monthly_usd limit ($1 per UTC month)"
        );
    }

    #[test]
    fn calendar_helpers_agree() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(T0 / DAY_MS), (2026, 5, 28));
        assert_eq!(
            month_start_ms(month_of(T0)),
            days_from_civil(2026, 5, 1) * DAY_MS
        );
        assert_eq!(
            month_start_ms(2026 * 12 + 12),
            days_from_civil(2027, 1, 1) * DAY_MS
        );
    }

    #[test]
    fn the_book_keeps_counters_by_name_and_ignores_unknown_clients() {
        let b = Book::default();
        let a = b.counters("a");
        assert!(Arc::ptr_eq(&a, &b.counters("a")));
        b.settle("nobody", Used::default());
        assert_eq!(b.names(), vec!["a".to_string()]);
    }
}
