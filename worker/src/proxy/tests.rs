//! Unit tests of the attempt loop: candidate picking, backoff, retryable statuses, alias rewrite.

use super::*;

#[test]
fn backoff_grows_by_half_with_jitter_and_caps() {
    for _ in 0..200 {
        let d0 = backoff(0).as_secs_f64();
        assert!((0.08..=0.12).contains(&d0), "{d0}");
        let d1 = backoff(1).as_secs_f64();
        assert!((0.12..=0.18).contains(&d1), "{d1}");
        let d3 = backoff(3).as_secs_f64();
        assert!((0.27..=0.405).contains(&d3), "{d3}");
        assert!(backoff(20) <= BACKOFF_CAP);
        assert!(backoff(20) >= Duration::from_millis(1600));
    }
}

fn run_for(table: Arc<RouteTable>) -> Run {
    let candidates = table
        .candidates("m", Endpoint::ChatCompletions)
        .expect("m is served");
    let now = Instant::now();
    Run {
        tried: vec![Tried::No; candidates.len()],
        permit_deadline: now,
        ping_at: now,
        table,
        req: Forward {
            endpoint: Endpoint::ChatCompletions,
            headers: HeaderMap::new(),
            query: None,
            body: Bytes::new(),
            stream: false,
            usage: crate::usage::Meta::new("", "", "m", false),
        },
        candidates,
        attempts: 0,
        prev: None,
        same_retries: 0,
        last: None,
        in_body: false,
        chosen: None,
    }
}

fn picked(r: &Run) -> Option<(String, Pick)> {
    let p = pick(r).ok()??;
    let name = r.table.providers[r.candidates[p.index].provider]
        .name()
        .to_string();
    Some((name, p))
}

/// Selection skips open and cooling providers, forces the least-cooling one when all are
/// cooling, fails fast with the remaining open time when all are open, and a pick dropped
/// before its attempt gives its half-open trial back (the guard fires).
#[tokio::test(start_paused = true)]
async fn pick_skips_blocked_providers_and_trials_come_back() {
    use gateway::config::{ProviderConfig, ProviderKind, Strategy};
    let mk =
        |n: &str| ProviderConfig::new(n, ProviderKind::OpenAi, "http://127.0.0.1:1/v1", &["m"]);
    let table = Arc::new(crate::routing::tests::table(
        Strategy::Unknown(String::new()),
        vec![mk("a"), mk("b")],
        vec![],
    ));
    let r = run_for(table.clone());
    let (a, b) = (&table.providers[0].breaker, &table.providers[1].breaker);
    assert_eq!(picked(&r).unwrap().0, "a");
    for _ in 0..5 {
        a.record(breaker::Signal::Failure);
    }
    assert_eq!(a.state(), CircuitState::Open);
    assert_eq!(picked(&r).unwrap().0, "b", "open a is skipped");
    b.record(breaker::classify(429, Some(Duration::from_secs(10))));
    let (name, p) = picked(&r).unwrap();
    assert_eq!(
        name, "b",
        "all blocked, b only cooling: it still gets the request"
    );
    assert!(p.trial.0.is_none());
    tokio::time::sleep(Duration::from_secs(1)).await;
    for _ in 0..5 {
        b.record(breaker::Signal::Failure);
    }
    let e = pick(&r).err().expect("all open: fail fast");
    assert_eq!(e.kind, ErrorKind::Unavailable);
    assert_eq!(
        e.retry_after,
        Some(29),
        "a opened first; 29 s of its 30 are left"
    );
    tokio::time::sleep(Duration::from_secs(31)).await;
    assert_eq!(a.state(), CircuitState::HalfOpen);
    // Half-open admits 3 trials (half_open_successes); held picks use them up ...
    let held: Vec<Pick> = (0..3)
        .map(|_| {
            let (name, p) = picked(&r).unwrap();
            assert_eq!(name, "a");
            p
        })
        .collect();
    assert_eq!(picked(&r).unwrap().0, "b", "a's trials are all taken");
    // ... and dropping them unused (e.g. a permit wait that timed out) gives them back.
    drop(held);
    assert_eq!(picked(&r).unwrap().0, "a");
    for _ in 0..3 {
        let (name, p) = picked(&r).unwrap();
        assert_eq!(name, "a");
        p.trial.disarm();
    }
    assert_eq!(
        picked(&r).unwrap().0,
        "b",
        "disarmed trials belong to their attempts now"
    );
}

/// Within one request, a provider the request reached is never picked again; one that
/// could not be reached (a connect error) is, when no other is usable.
#[tokio::test(start_paused = true)]
async fn only_unreached_providers_are_picked_again() {
    use gateway::config::{ProviderConfig, ProviderKind, Strategy};
    let mk =
        |n: &str| ProviderConfig::new(n, ProviderKind::OpenAi, "http://127.0.0.1:1/v1", &["m"]);
    let table = Arc::new(crate::routing::tests::table(
        Strategy::Unknown(String::new()),
        vec![mk("a"), mk("b")],
        vec![],
    ));
    let mut r = run_for(table);
    assert_eq!(picked(&r).unwrap().0, "a");
    r.attempts = 1;
    r.tried[0] = Tried::Spent;
    assert_eq!(picked(&r).unwrap().0, "b", "untried first");
    r.attempts = 2;
    r.tried[1] = Tried::Unreached;
    assert_eq!(picked(&r).unwrap().0, "b", "nothing reached b: again");
    r.tried[1] = Tried::Spent;
    assert!(
        pick(&r).unwrap().is_none(),
        "both reached: no more attempts"
    );
}

#[test]
fn retryable_statuses() {
    for s in [429, 500, 502, 503, 504, 529] {
        assert!(retryable(s), "{s}");
    }
    for s in [400, 401, 403, 404, 422, 501] {
        assert!(!retryable(s), "{s}");
    }
}

#[test]
fn alias_rewrite_changes_only_the_model() {
    let b = Bytes::from_static(
        br#"{"model":"fast","stream":true,"messages":[{"role":"user","content":"hi"}]}"#,
    );
    let out = rewrite_model(&b, "gpt-4o-mini").unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(v["model"], "gpt-4o-mini");
    assert_eq!(v["stream"], true);
    assert_eq!(v["messages"][0]["content"], "hi");
}
