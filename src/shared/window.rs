//! A client's `rpm`, `tpm`, `daily_tokens` and `monthly_usd` counted for every host together.
//!
//! Every window is numbered from Redis's own clock (`TIME` inside the scripts), so every host
//! puts a request in the same window whatever its own clock says.
//!
//! - `rpm`, `tpm`: a **sliding 60-second window of 1-second buckets**, the same as on one host
//!   (`supervisor::front::limits`): a hash `{prefix}rate:{subject}:{rpm|tpm}` whose fields are
//!   Redis seconds and values counts, plus the running total of the live ones (`t`) and the
//!   oldest second not yet dropped (`o`), so a check is O(1). A bucket counts for the 60 seconds
//!   from the start of its second; it is deleted (and taken off `t`) by the first script that
//!   runs after that. The hash expires 61 s after its last write.
//! - `daily_tokens` (UTC day) and `monthly_usd` (UTC calendar month): a hash per period,
//!   `{prefix}budget:{subject}:day:{days since epoch}` and `...:month:{year * 12 + month0}`,
//!   with one field per host: that host's total for the period, i.e. its own ledger's share
//!   (seeded at start) plus what it settled since. A host writes its field as an absolute
//!   value and only upwards, so a restart (which seeds the same ledger again) or a settle
//!   repeated after an outage never counts anything twice. Admission sums the fields of the
//!   period Redis's clock is in. Day hashes expire 2 days, month hashes 62 days, after their
//!   last write.
//!
//! Two scripts, one round trip each:
//! - [`Shared::admit`]: checks every limit the client has, in the order daily_tokens,
//!   monthly_usd, tpm, rpm, and when all have room counts the request in `rpm`. Atomic, so
//!   concurrent requests on several hosts never pass the same free place: exactly `rpm` pass
//!   in any 60 s. Token limits are checked on what was already used (nothing is reserved).
//! - [`Shared::settle`]: after a request, adds its tokens to the current `tpm` bucket and
//!   raises this host's day and month fields to its new totals. Sent through a bounded queue
//!   ([`Shared::settle_later`]) that the background task drains, so the usage path never waits.

use super::{Shared, Unavailable};
use std::sync::LazyLock;

/// Redis time, and the calendar (Howard Hinnant's algorithms, as `front::limits` uses).
const CLOCK: &str = r"
local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local s = math.floor(now_ms / 1000)
local function civil(z)
  z = z + 719468
  local era = math.floor(z / 146097)
  local doe = z - era * 146097
  local yoe = math.floor((doe - math.floor(doe / 1460) + math.floor(doe / 36524) - math.floor(doe / 146096)) / 365)
  local doy = doe - (365 * yoe + math.floor(yoe / 4) - math.floor(yoe / 100))
  local mp = math.floor((5 * doy + 2) / 153)
  local m = mp < 10 and mp + 3 or mp - 9
  local y = yoe + era * 400
  if m <= 2 then y = y + 1 end
  return y, m
end
local function days_from_civil(y, m)
  if m <= 2 then y = y - 1 end
  local era = math.floor(y / 400)
  local yoe = y - era * 400
  local mp = m > 2 and m - 3 or m + 9
  local doy = math.floor((153 * mp + 2) / 5)
  return era * 146097 + yoe * 365 + math.floor(yoe / 4) - math.floor(yoe / 100) + doy - 719468
end
";

/// A sliding window in a hash: field `{second}` = that second's count, `t` = the total of the
/// live seconds, `o` = the oldest second that may still hold a count. `window` drops what left
/// the window (usually nothing or one field, so an admission is O(1)); `retry` (on a refusal
/// only) reads every bucket; `add` counts.
const WINDOW: &str = r"
local first = s - 59
local function window(k)
  local v = redis.call('HMGET', k, 't', 'o')
  local total, oldest = tonumber(v[1] or '0'), tonumber(v[2] or s)
  if oldest >= first then return total end
  if first - oldest > 120 then
    total = 0
    local h = redis.call('HGETALL', k)
    for i = 1, #h, 2 do
      local sec = tonumber(h[i])
      if sec then
        if sec < first then redis.call('HDEL', k, h[i]) else total = total + tonumber(h[i + 1]) end
      end
    end
  else
    for sec = oldest, first - 1 do
      local n = redis.call('HGET', k, sec)
      if n then
        total = total - tonumber(n)
        redis.call('HDEL', k, sec)
      end
    end
  end
  redis.call('HSET', k, 't', total, 'o', first)
  return total
end
local function retry(k, total, limit)
  local h = redis.call('HGETALL', k)
  local live = {}
  for i = 1, #h, 2 do
    local sec = tonumber(h[i])
    if sec and sec >= first then live[#live + 1] = {sec, tonumber(h[i + 1])} end
  end
  table.sort(live, function(a, b) return a[1] < b[1] end)
  for _, b in ipairs(live) do
    total = total - b[2]
    if total < limit then return math.max(1, math.ceil(((b[1] + 60) * 1000 - now_ms) / 1000)) end
  end
  return 1
end
local function add(k, n)
  redis.call('HINCRBY', k, s, n)
  redis.call('HINCRBY', k, 't', n)
  redis.call('HSETNX', k, 'o', s)
  redis.call('PEXPIRE', k, 61000)
end
";

/// KEYS = rpm hash, tpm hash, day stem, month stem; ARGV = rpm, tpm, daily_tokens,
/// monthly_usd (0 = none). -> {0} admitted, or {limit 1..4, retry-after secs}.
static ADMIT: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(&format!(
        "{CLOCK}{WINDOW}
local rpm, tpm, daily, monthly = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local function sum(k)
  local x = 0
  for _, v in ipairs(redis.call('HVALS', k)) do x = x + tonumber(v) end
  return x
end
local day = math.floor(s / 86400)
if daily > 0 and sum(KEYS[3] .. ':' .. day) >= daily then
  return {{3, math.max(1, (day + 1) * 86400 - s)}}
end
if monthly > 0 then
  local y, m = civil(day)
  if sum(KEYS[4] .. ':' .. (y * 12 + m - 1)) >= monthly then
    if m == 12 then y, m = y + 1, 1 else m = m + 1 end
    return {{4, math.max(1, days_from_civil(y, m) * 86400 - s)}}
  end
end
if tpm > 0 then
  local total = window(KEYS[2])
  if total >= tpm then return {{2, retry(KEYS[2], total, tpm)}} end
end
if rpm > 0 then
  local total = window(KEYS[1])
  if total >= rpm then return {{1, retry(KEYS[1], total, rpm)}} end
  add(KEYS[1], 1)
end
return {{0}}"
    ))
});

/// KEYS = tpm hash, day hash, month hash; ARGV = tokens (0: none), host, day total ('' =
/// none), month total ('' = none). -> 1.
static SETTLE: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(&format!(
        "{CLOCK}{WINDOW}
local tokens = tonumber(ARGV[1])
if tokens > 0 then
  window(KEYS[1])
  add(KEYS[1], tokens)
end
local function raise(k, v, ttl)
  if v == '' then return end
  local cur = tonumber(redis.call('HGET', k, ARGV[2]) or '0')
  if tonumber(v) > cur then redis.call('HSET', k, ARGV[2], v) end
  redis.call('EXPIRE', k, ttl)
end
raise(KEYS[2], ARGV[3], 172800)
raise(KEYS[3], ARGV[4], 5356800)
return 1"
    ))
});

/// A client's limits as the scripts take them; 0 = none.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct RateLimits {
    pub rpm: u64,
    pub tpm: u64,
    pub daily_tokens: u64,
    pub monthly_usd: f64,
}

/// Which limit refused a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RateLimit {
    Rpm,
    Tpm,
    DailyTokens,
    MonthlyUsd,
}

/// A refusal by [`Shared::admit`]: the limit and the seconds until it frees room (at least 1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refused {
    pub limit: RateLimit,
    pub retry_after: u64,
}

/// What one host's finished request changes: its tokens (for `tpm`) and this host's new totals
/// of the day and month it was billed to (from its own book: ledger share plus settled).
#[derive(Debug, Clone, PartialEq)]
pub struct Settle {
    pub subject: String,
    /// 0: nothing for `tpm` (the client has none, or the request used no token).
    pub tokens: u64,
    /// (days since the epoch, this host's tokens that day).
    pub day: Option<(i64, u64)>,
    /// (year * 12 + month0, this host's USD that month).
    pub month: Option<(i64, f64)>,
}

impl Shared {
    fn rate_key(&self, subject: &str, limit: &str) -> String {
        self.key(&format!("rate:{subject}:{limit}"))
    }

    fn budget_key(&self, subject: &str, period: &str) -> String {
        self.key(&format!("budget:{subject}:{period}"))
    }

    /// Check-and-count for every host at once; see the module docs. `Ok(None)`: admitted.
    pub async fn admit(
        &self,
        subject: &str,
        l: &RateLimits,
    ) -> Result<Option<Refused>, Unavailable> {
        let mut inv = ADMIT.key(self.rate_key(subject, "rpm"));
        inv.key(self.rate_key(subject, "tpm"))
            .key(self.budget_key(subject, "day"))
            .key(self.budget_key(subject, "month"))
            .arg(l.rpm)
            .arg(l.tpm)
            .arg(l.daily_tokens)
            .arg(usd(l.monthly_usd.max(0.0)));
        let answer: Vec<u64> = self.call(&inv).await?;
        let limit = match answer.first() {
            Some(1) => RateLimit::Rpm,
            Some(2) => RateLimit::Tpm,
            Some(3) => RateLimit::DailyTokens,
            Some(4) => RateLimit::MonthlyUsd,
            _ => return Ok(None),
        };
        let retry_after = answer.get(1).copied().unwrap_or(1).max(1);
        Ok(Some(Refused { limit, retry_after }))
    }

    /// Applies one [`Settle`] now (one round trip).
    pub async fn settle(&self, s: &Settle) -> Result<(), Unavailable> {
        let day = s.day.map_or(0, |d| d.0);
        let month = s.month.map_or(0, |m| m.0);
        let mut inv = SETTLE.key(self.rate_key(&s.subject, "tpm"));
        inv.key(self.budget_key(&s.subject, &format!("day:{day}")))
            .key(self.budget_key(&s.subject, &format!("month:{month}")))
            .arg(s.tokens)
            .arg(self.host_id())
            .arg(s.day.map_or(String::new(), |d| d.1.to_string()))
            .arg(s.month.map_or(String::new(), |m| usd(m.1)));
        let _: i64 = self.call(&inv).await?;
        Ok(())
    }
}

/// USD as the scripts read it: plain decimal, enough digits for a micro-cent.
fn usd(v: f64) -> String {
    format!("{v:.9}")
}

/// Settlements of one batch, merged per client and period: tokens added up, totals (which only
/// grow within a period) the latest. Order of first appearance is kept.
pub(crate) fn merge(batch: Vec<Settle>) -> Vec<Settle> {
    let mut out: Vec<Settle> = Vec::new();
    for s in batch {
        let same = |o: &&mut Settle| {
            o.subject == s.subject
                && o.day.map(|d| d.0) == s.day.map(|d| d.0)
                && o.month.map(|m| m.0) == s.month.map(|m| m.0)
        };
        match out.iter_mut().find(|o| same(o)) {
            Some(o) => {
                o.tokens += s.tokens;
                if let (Some(a), Some(b)) = (&mut o.day, s.day) {
                    a.1 = a.1.max(b.1);
                }
                if let (Some(a), Some(b)) = (&mut o.month, s.month) {
                    a.1 = a.1.max(b.1);
                }
            }
            None => out.push(s),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(subject: &str, tokens: u64, day: u64, usd: f64) -> Settle {
        Settle {
            subject: subject.into(),
            tokens,
            day: Some((10, day)),
            month: Some((20, usd)),
        }
    }

    #[test]
    fn a_batch_merges_per_client_adding_tokens_and_keeping_the_highest_totals() {
        let m = merge(vec![
            s("a", 5, 100, 1.0),
            s("b", 1, 7, 0.5),
            s("a", 6, 106, 1.5),
            Settle {
                day: Some((11, 3)),
                ..s("a", 2, 0, 2.0)
            },
        ]);
        assert_eq!(m.len(), 3, "{m:?}");
        assert_eq!(m[0], s("a", 11, 106, 1.5));
        assert_eq!(m[1], s("b", 1, 7, 0.5));
        assert_eq!(m[2].day, Some((11, 3)), "another day is its own settlement");
    }
}
