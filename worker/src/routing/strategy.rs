//! The selection strategies. Each one reorders the candidate list in place: its pick first,
//! then the others (ranked where the strategy has a ranking, else in configuration order), so
//! that failover tries the next best. They read atomics only.
//!
//! - `latency`: lowest moving average of time-to-headers; never-measured providers first, so a
//!   new provider gets explored.
//! - `round_robin`: a shared atomic counter rotates the list.
//! - `weighted`: the first pick is random in proportion to `weight` (fastrand).
//! - `availability`: lowest moving failure rate.
//! - `least_inflight`: fewest attempts in flight.

use super::{RouteTable, Target};
use gateway::config::Strategy;
use std::sync::atomic::Ordering;

/// Puts the strategy's choice first.
pub fn order(table: &RouteTable, c: &mut [Target]) {
    if c.len() < 2 {
        return;
    }
    let p = |t: &Target| &table.providers[t.provider];
    match table.strategy {
        Strategy::Latency => c.sort_by_key(|t| p(t).state.ewma_latency_us.load(Ordering::Relaxed)),
        Strategy::RoundRobin => {
            let n = table.rr.fetch_add(1, Ordering::Relaxed);
            let len = c.len();
            c.rotate_left(n % len);
        }
        Strategy::Weighted => {
            let weights: f64 = c.iter().map(|t| p(t).config.weight).sum();
            let mut x = fastrand::f64() * weights;
            let mut pick = c.len() - 1;
            for (i, t) in c.iter().enumerate() {
                x -= p(t).config.weight;
                if x < 0.0 {
                    pick = i;
                    break;
                }
            }
            c[..=pick].rotate_right(1);
        }
        Strategy::Availability => c.sort_by(|a, b| {
            p(a).state
                .failure_rate()
                .total_cmp(&p(b).state.failure_rate())
        }),
        Strategy::LeastInflight => c.sort_by_key(|t| p(t).state.inflight.load(Ordering::Relaxed)),
        Strategy::Unknown(_) => {}
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::table;
    use super::*;
    use crate::endpoint::Endpoint;
    use gateway::config::{ProviderConfig, ProviderKind};
    use std::time::Duration;

    fn three(strategy: Strategy) -> RouteTable {
        let mk = |n: &str, w: f64| {
            let mut p =
                ProviderConfig::new(n, ProviderKind::OpenAi, "http://127.0.0.1:1/v1", &["m"]);
            p.weight = w;
            p
        };
        table(
            strategy,
            vec![mk("a", 1.0), mk("b", 1.0), mk("c", 8.0)],
            vec![],
        )
    }

    fn first(t: &RouteTable) -> String {
        let c = t.candidates("m", Endpoint::ChatCompletions).unwrap();
        assert_eq!(c.len(), 3, "every candidate stays in the list for failover");
        t.providers[c[0].provider].name().to_string()
    }

    #[test]
    fn latency_prefers_the_fastest_and_explores_unmeasured() {
        let t = three(Strategy::Latency);
        t.providers[0]
            .state
            .record_latency(Duration::from_millis(50));
        t.providers[1]
            .state
            .record_latency(Duration::from_millis(5));
        assert_eq!(first(&t), "c", "never measured goes first");
        t.providers[2]
            .state
            .record_latency(Duration::from_millis(80));
        assert_eq!(first(&t), "b");
        let c = t.candidates("m", Endpoint::ChatCompletions).unwrap();
        let order: Vec<_> = c.iter().map(|x| t.providers[x.provider].name()).collect();
        assert_eq!(order, ["b", "a", "c"]);
    }

    #[test]
    fn round_robin_rotates() {
        let t = three(Strategy::RoundRobin);
        let picks: Vec<String> = (0..6).map(|_| first(&t)).collect();
        assert_eq!(picks, ["a", "b", "c", "a", "b", "c"]);
    }

    #[test]
    fn weighted_follows_weights() {
        let t = three(Strategy::Weighted);
        fastrand::seed(7);
        let mut counts = std::collections::HashMap::new();
        for _ in 0..2000 {
            *counts.entry(first(&t)).or_insert(0) += 1;
        }
        // c has weight 8 of 10: expect ~1600; a and b ~200 each.
        assert!(counts["c"] > 1400 && counts["c"] < 1800, "{counts:?}");
        assert!(counts["a"] > 100 && counts["b"] > 100, "{counts:?}");
    }

    #[test]
    fn availability_prefers_lowest_failure_rate() {
        let t = three(Strategy::Availability);
        t.providers[0].state.record_outcome(true);
        t.providers[1].state.record_outcome(false);
        t.providers[2].state.record_outcome(true);
        t.providers[2].state.record_outcome(true);
        assert_eq!(first(&t), "b");
        let c = t.candidates("m", Endpoint::ChatCompletions).unwrap();
        assert_eq!(t.providers[c[2].provider].name(), "c");
    }

    #[test]
    fn least_inflight_prefers_idle() {
        let t = three(Strategy::LeastInflight);
        t.providers[0].state.inflight.store(3, Ordering::Relaxed);
        t.providers[1].state.inflight.store(1, Ordering::Relaxed);
        t.providers[2].state.inflight.store(2, Ordering::Relaxed);
        assert_eq!(first(&t), "b");
    }
}
