//! `[shared]` against a real redis-server (tests/support/redis.rs): leases and windowed
//! counters in-process, then two supervisors sharing one Redis.

mod support;

use gateway::config::{OnUnavailable, SharedBackend, SharedConfig};
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

#[tokio::test]
async fn windowed_counters_refuse_over_the_limit_and_settle() {
    let redis = Redis::start();
    let [(a, _ta), (b, _tb)] = two_hosts(&redis, "GATEWAY_TEST_REDIS_C", Duration::from_secs(30));
    let w = Duration::from_secs(60);
    let mut passed = 0;
    let mut first = None;
    for i in 0..30 {
        let h = if i % 2 == 0 { &a } else { &b };
        let c = h.window_add("client:x", "rpm", w, 1, 20).await.unwrap();
        first.get_or_insert(c.window_id);
        if c.window_id != first.unwrap() {
            return; // crossed a minute boundary mid-test; the count starts over (rare)
        }
        passed += c.added as u32;
        assert!(c.left <= w);
    }
    assert_eq!(passed, 20, "exactly the limit passes in one window");
    let c = a.window_add("client:x", "tpm", w, 500, 0).await.unwrap();
    assert!(c.added);
    let total = b
        .window_adjust("client:x", "tpm", w, c.window_id, -200)
        .await
        .unwrap();
    assert_eq!(total, 300);
    // Every key has a TTL.
    let keys = redis.command("KEYS *").unwrap();
    for k in keys.lines().filter(|l| !l.starts_with(['*', '$', '+'])) {
        let ttl = redis.command(&format!("TTL {k}")).unwrap();
        assert!(!ttl.starts_with(":-1"), "key {k} has no TTL");
    }
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
