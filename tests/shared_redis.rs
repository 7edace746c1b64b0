//! `[shared]` against a real redis-server (tests/support/redis.rs): leases and windowed
//! counters in-process, then two supervisors sharing one Redis.

mod support;

use gateway::config::{OnUnavailable, SharedBackend, SharedConfig};
use gateway::shared::window::{RateLimit, RateLimits, Settle};
use gateway::shared::{Shared, SharedTask};
use std::time::Duration;
use support::redis::Redis;

fn shared_config(var: &str, ttl: Duration) -> SharedConfig {
    SharedConfig {
        backend: SharedBackend::Redis,
        url_env: var.into(),
        key_prefix: format!("t{}:", fastrand::u32(..)),
        lease_ttl: ttl,
        on_unavailable: OnUnavailable::Local,
    }
}

/// Two independent handles (two "hosts") on one Redis.
fn two_hosts(redis: &Redis, var: &str, ttl: Duration) -> [(Shared, SharedTask); 2] {
    std::env::set_var(var, redis.url());
    let cfg = shared_config(var, ttl);
    [
        Shared::start(&cfg).unwrap().unwrap(),
        Shared::start(&cfg).unwrap().unwrap(),
    ]
}

#[tokio::test]
async fn leases_hold_the_limit_across_hosts_and_come_back_on_release() {
    let redis = Redis::start();
    let [(a, _ta), (b, _tb)] = two_hosts(&redis, "GATEWAY_TEST_REDIS_A", Duration::from_secs(30));
    let mut held = Vec::new();
    for i in 0..4 {
        let h = if i % 2 == 0 { &a } else { &b };
        held.push(h.reserve("provider:p", 4).await.unwrap().expect("room"));
    }
    assert!(a.reserve("provider:p", 4).await.unwrap().is_none());
    assert!(b.reserve("provider:p", 4).await.unwrap().is_none());
    // Another name has its own room.
    assert!(b.reserve("provider:q", 1).await.unwrap().is_some());
    held.pop();
    // The release is batched by the background task: room comes back promptly.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        if let Some(l) = a.reserve("provider:p", 4).await.unwrap() {
            held.push(l);
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "release never reached Redis"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(a.leases_held() + b.leases_held(), 4);
}

#[tokio::test]
async fn a_dead_hosts_leases_expire_and_a_live_hosts_are_renewed() {
    let redis = Redis::start();
    let ttl = Duration::from_secs(2);
    let [(a, ta), (b, _tb)] = two_hosts(&redis, "GATEWAY_TEST_REDIS_B", ttl);
    let dead: Vec<_> = futures_util::future::join_all((0..2).map(|_| a.reserve("c", 3)))
        .await
        .into_iter()
        .map(|r| r.unwrap().unwrap())
        .collect();
    let _live = b.reserve("c", 3).await.unwrap().unwrap();
    // Host a "dies": its background task stops and its leases are never released.
    drop(ta);
    std::mem::forget(dead);
    assert!(b.reserve("c", 3).await.unwrap().is_none());
    let start = std::time::Instant::now();
    let mut got = Vec::new();
    while got.len() < 2 {
        if let Some(l) = b.reserve("c", 3).await.unwrap() {
            got.push(l);
        }
        assert!(
            start.elapsed() < ttl + Duration::from_secs(1),
            "dead leases not back in time"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // b's first lease, held across several TTLs, is still renewed: no fourth.
    tokio::time::sleep(ttl * 2).await;
    assert!(
        b.reserve("c", 3).await.unwrap().is_none(),
        "a live lease expired"
    );
}

/// Every key under `prefix` has a TTL.
fn assert_every_key_expires(redis: &Redis) {
    let keys = redis.command("KEYS *").unwrap();
    for k in keys.lines().filter(|l| !l.starts_with(['*', '$', '+'])) {
        let ttl = redis.command(&format!("TTL {k}")).unwrap();
        assert!(!ttl.starts_with(":-1"), "key {k} has no TTL");
    }
}

#[tokio::test]
async fn rpm_across_hosts_admits_exactly_the_limit() {
    let redis = Redis::start();
    let [(a, _ta), (b, _tb)] = two_hosts(&redis, "GATEWAY_TEST_REDIS_C", Duration::from_secs(30));
    let l = RateLimits {
        rpm: 20,
        ..Default::default()
    };
    let tries = (0..50).map(|i| {
        let h = if i % 2 == 0 { a.clone() } else { b.clone() };
        async move { h.admit("client:x", &l).await.unwrap() }
    });
    let answers = futures_util::future::join_all(tries).await;
    let passed = answers.iter().filter(|r| r.is_none()).count();
    assert_eq!(passed, 20, "exactly the limit passes, whichever host asks");
    for r in answers.iter().flatten() {
        assert_eq!(r.limit, RateLimit::Rpm);
        assert!((1..=60).contains(&r.retry_after), "{r:?}");
    }
    // Another client has its own window.
    assert!(b.admit("client:y", &l).await.unwrap().is_none());

    // Buckets leave the window 60 s after their second: a window written 70 s and 30 s ago
    // (as the scripts write it: per-second counts, total `t`, oldest second `o`), and one whose
    // oldest second is so old that the script recounts every bucket.
    let now: i64 = redis
        .command("TIME")
        .unwrap()
        .lines()
        .nth(2)
        .unwrap()
        .parse()
        .unwrap();
    let fill = |client: &str, old: i64| {
        let k = a.key(&format!("rate:client:{client}:rpm"));
        redis.command(&format!(
            "HSET {k} {} 3 {} 2 t 5 o {}",
            now - old,
            now - 30,
            now - old
        ));
        redis.command(&format!("EXPIRE {k} 60"));
    };
    let five = RateLimits {
        rpm: 5,
        ..Default::default()
    };
    for (client, old) in [("old", 70), ("ancient", 500)] {
        fill(client, old);
        let c = format!("client:{client}");
        for _ in 0..3 {
            assert!(
                a.admit(&c, &five).await.unwrap().is_none(),
                "{client}: 3 + 2 left"
            );
        }
        let r = b
            .admit(&c, &five)
            .await
            .unwrap()
            .expect("5 in the last minute");
        assert!(
            (29..=31).contains(&r.retry_after),
            "{client}: the bucket of 30 s ago frees room in 30 s: {r:?}"
        );
    }
    assert_every_key_expires(&redis);
}

#[tokio::test]
async fn tpm_and_budgets_sum_the_hosts_and_a_repeated_total_counts_once() {
    let redis = Redis::start();
    let [(a, _ta), (b, _tb)] = two_hosts(&redis, "GATEWAY_TEST_REDIS_E", Duration::from_secs(30));
    a.set_host_id("host-a".into());
    b.set_host_id("host-b".into());
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let day = now / 86_400;
    let tpm = RateLimits {
        tpm: 100,
        ..Default::default()
    };
    let settle = |tokens, day_total: Option<u64>, month: Option<(i64, f64)>| Settle {
        subject: "client:x".into(),
        tokens,
        day: day_total.map(|t| (day, t)),
        month,
    };
    a.settle(&settle(60, None, None)).await.unwrap();
    assert!(
        b.admit("client:x", &tpm).await.unwrap().is_none(),
        "60 < 100"
    );
    b.settle(&settle(40, None, None)).await.unwrap();
    let r = a.admit("client:x", &tpm).await.unwrap().expect("100 used");
    assert_eq!(r.limit, RateLimit::Tpm);
    assert!((1..=60).contains(&r.retry_after));

    // daily_tokens 1000: host a's total 600 (say its ledger share at start), b's 300.
    let daily = RateLimits {
        daily_tokens: 1000,
        ..Default::default()
    };
    a.settle(&settle(0, Some(600), None)).await.unwrap();
    b.settle(&settle(0, Some(300), None)).await.unwrap();
    // A restart of a seeds the same ledger again; an older total arriving late: no change.
    a.settle(&settle(0, Some(600), None)).await.unwrap();
    a.settle(&settle(0, Some(550), None)).await.unwrap();
    assert!(a.admit("client:x", &daily).await.unwrap().is_none(), "900");
    b.settle(&settle(0, Some(400), None)).await.unwrap();
    let r = b.admit("client:x", &daily).await.unwrap().expect("1000");
    assert_eq!(r.limit, RateLimit::DailyTokens);
    let midnight = (day + 1) * 86_400;
    assert!(
        r.retry_after.abs_diff((midnight - now) as u64) <= 2,
        "retry at UTC midnight: {r:?}"
    );

    // monthly_usd, in the month the hosts compute (the same calendar as the script's).
    let month = {
        let (y, m, _) = gateway::calendar::civil_from_days(day);
        y * 12 + m - 1
    };
    let usd = RateLimits {
        monthly_usd: 1.0,
        ..Default::default()
    };
    a.settle(&settle(0, None, Some((month, 0.6))))
        .await
        .unwrap();
    assert!(b.admit("client:x", &usd).await.unwrap().is_none());
    b.settle(&settle(0, None, Some((month, 0.4))))
        .await
        .unwrap();
    let r = a.admit("client:x", &usd).await.unwrap().expect("$1.0");
    assert_eq!(r.limit, RateLimit::MonthlyUsd);
    assert!(r.retry_after >= 1 && r.retry_after <= 31 * 86_400, "{r:?}");
    assert_every_key_expires(&redis);
}

#[tokio::test]
async fn a_breaker_opening_reaches_the_other_host_once_and_is_not_sent_back() {
    use gateway::provider_health::{MonoClock, CLOSED, OPEN};
    use gateway::provider_permits::ProviderTable;
    use gateway::shared::breakers::{BreakerView, Sync};
    let redis = Redis::start();
    let [(a, _ta), (b, _tb)] = two_hosts(&redis, "GATEWAY_TEST_REDIS_F", Duration::from_secs(30));
    let dir = tempfile::tempdir().unwrap();
    let table = |n: &str| std::sync::Arc::new(ProviderTable::create(&dir.path().join(n)).unwrap());
    let (ta, tb) = (table("a.shm"), table("b.shm"));
    let key = a.key("breaker:p");
    let (mut sa, mut sb) = (Sync::new(a, ta.clone()), Sync::new(b, tb.clone()));
    let view = BreakerView {
        providers: vec!["p".into(), "q".into()],
        open_timeout: Duration::from_secs(30),
    };
    assert_eq!(sa.tick(&view).await.unwrap(), 0);
    assert_eq!(sb.tick(&view).await.unwrap(), 0);
    // Host a's breaker for p opens (as a worker would: one transition on its cell).
    let clock = MonoClock::new();
    let cell_a = &ta.health().cols[ProviderTable::column("p")];
    cell_a
        .transition(cell_a.load(), OPEN, clock.now_ms())
        .unwrap();
    assert_eq!(
        sa.tick(&view).await.unwrap(),
        0,
        "published, nothing applied"
    );
    assert_eq!(sb.tick(&view).await.unwrap(), 1, "b applies a's opening");
    let cell_b = &tb.health().cols[ProviderTable::column("p")];
    assert_eq!(cell_b.load().state, OPEN);
    assert_eq!(
        tb.health().cols[ProviderTable::column("q")].load().state,
        CLOSED,
        "only p"
    );
    // The applied opening ends when a's does (back-dated, not a fresh 30 s).
    let opened = cell_b
        .opened_at_ms
        .load(std::sync::atomic::Ordering::SeqCst);
    assert!(opened <= clock.now_ms() + 5);
    // No loop: b does not publish what it applied, a applies nothing back, and later ticks
    // change nothing.
    let before = redis.command(&format!("GET {key}")).unwrap();
    for _ in 0..3 {
        assert_eq!(sb.tick(&view).await.unwrap(), 0);
        assert_eq!(sa.tick(&view).await.unwrap(), 0);
    }
    assert_eq!(redis.command(&format!("GET {key}")).unwrap(), before);
    let gen_a = cell_a.load().generation;
    assert_eq!(gen_a, 1, "a's breaker was not touched by its own opening");
    let ttl = redis.command(&format!("PTTL {key}")).unwrap();
    let ttl: i64 = ttl
        .lines()
        .next()
        .unwrap()
        .trim_start_matches(':')
        .parse()
        .unwrap();
    assert!(ttl > 25_000 && ttl <= 30_000, "PX = the open period: {ttl}");
    assert_every_key_expires(&redis);
}

#[tokio::test]
async fn a_dead_redis_answers_at_once_and_recovery_is_automatic() {
    let mut redis = Redis::start();
    let [(a, _ta), _] = two_hosts(&redis, "GATEWAY_TEST_REDIS_D", Duration::from_secs(30));
    assert!(a.reserve("p", 1).await.unwrap().is_some());
    assert!(a.is_up());
    redis.kill();
    for _ in 0..20 {
        let t = std::time::Instant::now();
        assert!(a.reserve("p", 1).await.is_err());
        assert!(
            t.elapsed() < Duration::from_secs(1),
            "a request waited on a dead Redis"
        );
    }
    assert!(!a.is_up());
    redis.restart();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !a.is_up() {
        assert!(std::time::Instant::now() < deadline, "never recovered");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(a.reserve("p", 1).await.unwrap().is_some());
}

// ---- two supervisors ("hosts") on one machine, sharing one Redis ----------------------------

use support::process::{wait_until, Running, TestEnv};
use support::upstream::{Gate, Script, Upstream};

fn completion() -> serde_json::Value {
    serde_json::json!({"id": "c", "object": "chat.completion", "created": 0, "model": "up",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}})
}

/// A host's config: 2 workers, provider `up` limited to `limit`, `[shared]` on `prefix`.
fn host_config(up: &Upstream, limit: u32, prefix: &str, ttl: &str, on_unavailable: &str) -> String {
    support::front::config(
        2,
        "queue_timeout = \"20s\"",
        "",
        &format!(
            "\n[[providers]]\nname = \"up\"\nkind = \"openai\"\nbase_url = \"{}\"\nmodels = [\"up\"]\n\
             max_concurrency = {limit}\n\n[shared]\nbackend = \"redis\"\nkey_prefix = \"{prefix}\"\n\
             lease_ttl = \"{ttl}\"\non_unavailable = \"{on_unavailable}\"\n",
            up.url("/v1")
        ),
    )
}

struct Host {
    env: TestEnv,
    run: Running,
}

fn host(redis: &Redis, config: &str) -> Host {
    let env = TestEnv::new(config);
    let mut cmd = env.supervisor(&["start"]);
    cmd.env("GATEWAY_REDIS_URL", redis.url());
    let run = Running::ready(cmd);
    Host { env, run }
}

/// `n` concurrent chat requests for model `up`, round robin over `addrs`; (status, retry-after).
fn burst(
    addrs: &[std::net::SocketAddr],
    n: usize,
) -> Vec<std::thread::JoinHandle<(u16, Option<String>)>> {
    burst_as(addrs, n, &[])
}

/// The client `desk` of `with_client`.
const DESK: &[(&str, &str)] = &[("authorization", "Bearer desk-tok")];

/// `burst` with these request headers.
fn burst_as(
    addrs: &[std::net::SocketAddr],
    n: usize,
    headers: &'static [(&'static str, &'static str)],
) -> Vec<std::thread::JoinHandle<(u16, Option<String>)>> {
    (0..n)
        .map(|i| {
            let addr = addrs[i % addrs.len()];
            std::thread::spawn(move || {
                let r = chat_as(addr, headers);
                r.map_or((0, None), |r| {
                    (r.status, r.header("retry-after").map(str::to_string))
                })
            })
        })
        .collect()
}

/// One chat request for model `up`.
fn chat_as(
    addr: std::net::SocketAddr,
    headers: &[(&str, &str)],
) -> std::io::Result<support::http::Response> {
    let body = support::front::body("up", false);
    support::http::request(addr, "POST", "/v1/chat/completions", headers, Some(&body))
}

/// `cfg` with tokens on and a client `desk` (token `desk-tok`) with `limits` (TOML lines).
fn with_client(cfg: &str, limits: &str) -> String {
    cfg.replace(
        "auth_token_env = \"\"\n",
        "auth_token_env = \"SHARED_E2E_SERVER_TOKEN\"\n",
    ) + &format!(
        "\n[[clients]]\nname = \"desk\"\ntoken_env = \"SHARED_E2E_CLIENT_TOKEN\"\n{limits}\n"
    )
}

/// A host of a `with_client` config.
fn client_host(redis: &Redis, cfg: &str) -> Host {
    let env = TestEnv::new(cfg);
    let run = client_start(redis, &env);
    Host { env, run }
}

fn client_start(redis: &Redis, env: &TestEnv) -> Running {
    let mut cmd = env.supervisor(&["start"]);
    cmd.env("GATEWAY_REDIS_URL", redis.url())
        .env("SHARED_E2E_SERVER_TOKEN", "server-tok")
        .env("SHARED_E2E_CLIENT_TOKEN", "desk-tok");
    Running::ready(cmd)
}

fn prefix() -> String {
    format!("e{}:", fastrand::u32(..))
}

#[test]
fn provider_limit_holds_across_two_hosts() {
    let redis = Redis::start();
    let up = Upstream::start();
    up.set(
        "/v1/chat/completions",
        Script::json(200, completion()).delay_headers(Duration::from_millis(100)),
    );
    let cfg = host_config(&up, 4, &prefix(), "30s", "local");
    let (a, b) = (host(&redis, &cfg), host(&redis, &cfg));
    let statuses: Vec<_> = burst(&[a.run.listen, b.run.listen], 40)
        .into_iter()
        .map(|h| h.join().unwrap().0)
        .collect();
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    let max = up.max_inflight();
    assert!(max <= 4, "the provider saw {max} at once across two hosts");
    assert!(
        max >= 3,
        "the limit was never reached ({max}); the test proved nothing"
    );
    drop((a.env, b.env));
}

#[test]
fn a_sigkilled_hosts_leases_come_back_within_the_ttl() {
    let redis = Redis::start();
    let up = Upstream::start();
    let gate = Gate::new();
    up.set(
        "/v1/chat/completions",
        Script::json(200, completion()).wait_headers(&gate),
    );
    let cfg = host_config(&up, 4, &prefix(), "2s", "local");
    let a = host(&redis, &cfg);
    let _held = burst(&[a.run.listen], 4);
    assert!(up.wait_requests(4, Duration::from_secs(10)), "a took all 4");
    let b = host(&redis, &cfg);
    // While a lives, b's requests wait: the room is a's.
    let from_b = burst(&[b.run.listen], 4);
    assert!(
        !up.wait_requests(5, Duration::from_millis(800)),
        "b went past the limit that a holds"
    );
    // SIGKILL the whole of host a: supervisor and workers (nothing gets to release).
    let pids: Vec<u32> = std::iter::once(a.run.guard.pid())
        .chain(support::process::descendants(a.run.guard.pid()))
        .collect();
    for p in pids {
        support::process::signal(p, nix::sys::signal::Signal::SIGKILL);
    }
    let killed = std::time::Instant::now();
    // The upstream still holds a's 4 connections open (gated), so count b's requests arriving.
    assert!(
        up.wait_requests(8, Duration::from_secs(10)),
        "b never got the room back"
    );
    let took = killed.elapsed();
    assert!(
        took < Duration::from_secs(3),
        "b waited {took:?} for the dead host's leases (lease_ttl 2s + 1s)"
    );
    gate.open();
    for h in from_b {
        assert_eq!(h.join().unwrap().0, 200);
    }
}

fn backend_up(addr: std::net::SocketAddr) -> Option<f64> {
    let (_, samples) = support::front::metrics(addr);
    samples
        .iter()
        .find(|s| {
            s.name == "gateway_shared_backend_up" && !s.labels.iter().any(|(k, _)| k == "worker")
        })
        .map(|s| s.value)
}

#[test]
fn redis_down_mid_load_falls_back_to_local_limits_and_recovers() {
    let mut redis = Redis::start();
    let up = Upstream::start();
    up.set(
        "/v1/chat/completions",
        Script::json(200, completion()).delay_headers(Duration::from_millis(50)),
    );
    // A provider limit, and a client with every windowed limit (high enough never to refuse).
    let cfg = with_client(
        &host_config(&up, 4, &prefix(), "3s", "local"),
        "rpm = 100000\ntpm = 100000000\ndaily_tokens = 100000000\nmonthly_usd = 1000.0",
    );
    let a = client_host(&redis, &cfg);
    assert_eq!(backend_up(a.run.listen), Some(1.0));
    let load = burst_as(&[a.run.listen], 30, DESK);
    redis.kill();
    let more = burst_as(&[a.run.listen], 30, DESK);
    let statuses: Vec<u16> = load
        .into_iter()
        .chain(more)
        .map(|h| h.join().unwrap().0)
        .collect();
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    assert!(up.max_inflight() <= 4, "local limit still holds");
    assert!(
        wait_until(Duration::from_secs(5), || backend_up(a.run.listen)
            == Some(0.0)),
        "gateway_shared_backend_up never went to 0"
    );
    redis.restart();
    assert!(
        wait_until(Duration::from_secs(10), || backend_up(a.run.listen)
            == Some(1.0)),
        "gateway_shared_backend_up never came back to 1"
    );
    // Shared limits apply again, and serve.
    let after: Vec<u16> = burst_as(&[a.run.listen], 10, DESK)
        .into_iter()
        .map(|h| h.join().unwrap().0)
        .collect();
    assert!(after.iter().all(|s| *s == 200), "{after:?}");
    let keys = redis.command("KEYS *rate:client:desk:rpm").unwrap();
    assert!(
        keys.contains("rate:client:desk:rpm"),
        "counted in Redis again: {keys}"
    );
}

#[test]
fn redis_down_with_reject_answers_503_with_retry_after_at_once() {
    let mut redis = Redis::start();
    let up = Upstream::start();
    up.set("/v1/chat/completions", Script::json(200, completion()));
    let cfg = with_client(
        &host_config(&up, 4, &prefix(), "3s", "reject"),
        "rpm = 100000\ntpm = 100000000",
    );
    let a = client_host(&redis, &cfg);
    let ok: Vec<_> = burst_as(&[a.run.listen], 4, DESK)
        .into_iter()
        .map(|h| h.join().unwrap().0)
        .collect();
    assert!(ok.iter().all(|s| *s == 200), "{ok:?}");
    redis.kill();
    let start = std::time::Instant::now();
    let answers: Vec<_> = burst_as(&[a.run.listen], 20, DESK)
        .into_iter()
        .map(|h| h.join().unwrap())
        .collect();
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "requests hung on a dead Redis: {:?}",
        start.elapsed()
    );
    assert!(
        answers.iter().all(|(s, _)| *s == 503 || *s == 200),
        "{answers:?}"
    );
    let rejected: Vec<_> = answers.iter().filter(|(s, _)| *s == 503).collect();
    assert!(
        rejected.len() >= 15,
        "most are refused once Redis is known down: {answers:?}"
    );
    assert!(rejected.iter().all(|(_, ra)| ra.is_some()), "{answers:?}");
}

#[test]
fn a_missing_url_variable_fails_start_and_the_password_is_never_logged() {
    let up = Upstream::start();
    let env = TestEnv::new(&host_config(&up, 4, &prefix(), "30s", "local"));
    let mut cmd = env.supervisor(&["start"]);
    cmd.env_remove("GATEWAY_REDIS_URL");
    let mut failed = support::process::ChildGuard::spawn(cmd);
    let status = failed
        .wait_exit(Duration::from_secs(20))
        .expect("start exits");
    assert!(!status.success());
    assert!(
        failed.stderr().contains("$GATEWAY_REDIS_URL"),
        "{}",
        failed.stderr()
    );

    // A URL with a password this Redis does not have: the host starts, falls back, and the
    // password is in no log line.
    let redis = Redis::start();
    let mut cmd = env.supervisor(&["start"]);
    cmd.env(
        "GATEWAY_REDIS_URL",
        format!("redis://:s3cret-pw@127.0.0.1:{}/0", redis.port),
    );
    let run = Running::ready(cmd);
    assert!(
        wait_until(Duration::from_secs(5), || backend_up(run.listen)
            == Some(0.0)),
        "a Redis refusing the password counts as unavailable"
    );
    let r = support::http::post_chat(run.listen, "demo", false).unwrap();
    assert_eq!(r.status, 200, "on_unavailable = local serves");
    let log = run.guard.stderr();
    assert!(
        log.contains("127.0.0.1"),
        "the redacted URL is logged: {log}"
    );
    assert!(
        !log.contains("s3cret-pw"),
        "the password leaked into the log: {log}"
    );
}

#[test]
fn client_concurrency_holds_across_two_hosts() {
    let redis = Redis::start();
    let up = Upstream::start();
    up.set(
        "/v1/chat/completions",
        Script::json(200, completion()).delay_headers(Duration::from_millis(100)),
    );
    // No provider limit: only the client's max_concurrency = 2 bounds the upstream.
    let cfg = with_client(
        &host_config(&up, 0, &prefix(), "30s", "local"),
        "max_concurrency = 2",
    );
    let (a, b) = (client_host(&redis, &cfg), client_host(&redis, &cfg));
    let statuses: Vec<u16> = burst_as(&[a.run.listen, b.run.listen], 12, DESK)
        .into_iter()
        .map(|h| h.join().unwrap().0)
        .collect();
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    let max = up.max_inflight();
    assert!(max <= 2, "client desk had {max} in flight across two hosts");
    assert_eq!(
        max, 2,
        "the limit was never reached; the test proved nothing"
    );
    drop((a.env, b.env));
}

#[test]
fn client_rpm_holds_across_two_hosts() {
    let redis = Redis::start();
    let up = Upstream::start();
    up.set("/v1/chat/completions", Script::json(200, completion()));
    let cfg = with_client(&host_config(&up, 0, &prefix(), "30s", "local"), "rpm = 20");
    let (a, b) = (client_host(&redis, &cfg), client_host(&redis, &cfg));
    let answers: Vec<_> = burst_as(&[a.run.listen, b.run.listen], 50, DESK)
        .into_iter()
        .map(|h| h.join().unwrap())
        .collect();
    let passed = answers.iter().filter(|(s, _)| *s == 200).count();
    assert_eq!(passed, 20, "exactly rpm pass over both hosts: {answers:?}");
    for (status, retry) in answers.iter().filter(|(s, _)| *s != 200) {
        assert_eq!(*status, 429, "{answers:?}");
        let secs: u64 = retry.as_deref().expect("Retry-After").parse().unwrap();
        assert!((1..=60).contains(&secs), "{answers:?}");
    }
    assert_eq!(
        up.request_count(),
        20,
        "refused requests never reach the provider"
    );
    drop((a.env, b.env));
}

/// The sum of every host's contribution to client desk's budget of today, and the fields.
fn day_budget(redis: &Redis, prefix: &str) -> (u64, Vec<String>) {
    let keys = redis.command(&format!("KEYS {prefix}budget:client:desk:day:*"));
    let key = keys
        .as_deref()
        .unwrap_or("")
        .lines()
        .find(|l| l.starts_with(prefix))
        .map(str::to_string);
    let Some(key) = key else {
        return (0, Vec::new());
    };
    let vals = redis.command(&format!("HGETALL {key}")).unwrap_or_default();
    // RESP: *N, then $len / value pairs; fields and values alternate.
    let items: Vec<String> = vals
        .lines()
        .filter(|l| !l.starts_with(['*', '$', '+']))
        .map(str::to_string)
        .collect();
    let sum = items
        .chunks(2)
        .filter_map(|kv| kv.get(1)?.parse::<u64>().ok())
        .sum();
    (sum, items)
}

#[test]
fn daily_tokens_sum_both_hosts_settle_and_a_restart_counts_nothing_twice() {
    let redis = Redis::start();
    let up = Upstream::start();
    // 2 tokens a request (completion(): 1 prompt + 1 completion).
    up.set("/v1/chat/completions", Script::json(200, completion()));
    let prefix = prefix();
    let cfg = with_client(
        &host_config(&up, 0, &prefix, "30s", "local"),
        "daily_tokens = 14",
    );
    let (mut a, b) = (client_host(&redis, &cfg), client_host(&redis, &cfg));
    let send = |addr, want: u64| {
        let r = chat_as(addr, DESK).unwrap();
        assert_eq!(r.status, 200, "{}", r.text());
        assert!(
            wait_until(Duration::from_secs(5), || day_budget(&redis, &prefix).0
                == want),
            "settled {want} tokens? Redis has {:?}",
            day_budget(&redis, &prefix)
        );
    };
    // 3 requests on a, 2 on b: 10 tokens, as a = 6 and b = 4.
    for i in 0..5u64 {
        let addr = if i % 2 == 0 {
            a.run.listen
        } else {
            b.run.listen
        };
        send(addr, 2 * (i + 1));
    }
    let (_, fields) = day_budget(&redis, &prefix);
    assert_eq!(fields.len(), 4, "one contribution per host: {fields:?}");
    // a restarts (SIGTERM: its ledger has its 3 records); it seeds its share (6) again.
    a.run.guard.signal(nix::sys::signal::Signal::SIGTERM);
    a.run.expect_stopped_exit_0();
    a.run = client_start(&redis, &a.env);
    // 10 < 14: passes on a; a's total is 6 from its ledger + 2 = 8, b's 4: 12, not 18.
    send(a.run.listen, 12);
    // a's settlement reaches Redis on its own task: wait for it, then check it counted once.
    wait_until(Duration::from_secs(5), || {
        day_budget(&redis, &prefix).0 >= 12
    });
    assert_eq!(day_budget(&redis, &prefix).0, 12, "counted once");
    send(b.run.listen, 14);
    for addr in [a.run.listen, b.run.listen] {
        let r = chat_as(addr, DESK).unwrap();
        assert_eq!(r.status, 429, "14 of 14 used over both hosts: {}", r.text());
        assert!(r.text().contains("daily_tokens"), "{}", r.text());
        assert!(r.header("retry-after").is_some());
    }
    drop(b.env);
}

/// Provider `up`'s breaker state as host `addr`'s `/v1/health` reports it.
fn circuit(addr: std::net::SocketAddr) -> String {
    support::http::get(addr, "/v1/health")
        .ok()
        .and_then(|r| {
            r.json()["providers"]["up"]["circuit"]
                .as_str()
                .map(str::to_string)
        })
        .unwrap_or_default()
}

#[test]
fn a_breaker_opening_on_one_host_stops_the_others_traffic_within_a_second() {
    let redis = Redis::start();
    let up = Upstream::start();
    up.set("/v1/chat/completions", Script::status(500));
    let prefix = prefix();
    let breaker = |n: u32, rate: &str| {
        host_config(&up, 0, &prefix, "30s", "local")
            + &format!(
                "\n[circuit_breaker]\nconsecutive_failures = {n}\nfailure_rate_threshold = {rate}\n\
                 open_timeout = \"30s\"\n"
            )
    };
    // Host b would never open on its own failures: whatever stops it came from a.
    let a = host(&redis, &breaker(2, "0.5"));
    let b = host(&redis, &breaker(1000, "0.999"));
    let chats = || {
        up.requests()
            .iter()
            .filter(|r| r.path.contains("chat"))
            .count()
    };
    // b uses the provider (and fails) before.
    for _ in 0..3 {
        let before = chats();
        assert_eq!(chat_as(b.run.listen, &[]).unwrap().status / 100, 5);
        assert!(chats() > before, "b reaches the provider");
    }
    assert_eq!(circuit(b.run.listen), "closed");
    // Drive a until its breaker opens.
    let mut tries = 0;
    while circuit(a.run.listen) != "open" {
        tries += 1;
        assert!(tries < 20, "a's breaker never opened");
        let _ = chat_as(a.run.listen, &[]);
    }
    let opened = std::time::Instant::now();
    // b's requests stop reaching the provider within a second of that.
    let stopped = loop {
        let before = chats();
        let r = chat_as(b.run.listen, &[]).unwrap();
        if chats() == before {
            assert_ne!(r.status, 200);
            break opened.elapsed();
        }
        assert!(
            opened.elapsed() < Duration::from_secs(1),
            "b still sends to the provider {:?} after a's breaker opened",
            opened.elapsed()
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let before = chats();
    for _ in 0..10 {
        let r = chat_as(b.run.listen, &[]).unwrap();
        assert_eq!(r.status, 503, "{}", r.text());
    }
    assert_eq!(
        chats(),
        before,
        "b stays off the provider (stopped after {stopped:?})"
    );
    assert_eq!(circuit(b.run.listen), "open");
}
