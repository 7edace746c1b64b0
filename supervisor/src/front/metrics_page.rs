//! `GET /metrics`: the supervisor's series, then every worker's, labelled `worker="ID"`.
//!
//! Workers are scraped concurrently with a short timeout; one that does not answer in time is
//! left out, never waited on. The output must stay one valid exposition: each metric family
//! appears once, with its HELP/TYPE lines, and all its samples together. So every source is parsed
//! into families (a sample belongs to the family of the last HELP/TYPE line before it) and the
//! families are merged by name, keeping the first HELP/TYPE seen and each worker's samples with
//! the `worker` label added.

use super::Shared;
use crate::pool::WorkerSlot;
use bytes::Bytes;
use std::time::Duration;

/// How long a worker's `/metrics` may take.
pub const SCRAPE_TIMEOUT: Duration = Duration::from_millis(500);
const MAX_WORKER_METRICS: usize = 8 * 1024 * 1024;

/// The content type of the combined page (prometheus-client writes OpenMetrics text).
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// One family: its descriptor lines (HELP, TYPE, UNIT) and its samples.
#[derive(Default)]
struct Family {
    name: String,
    meta: Vec<String>,
    samples: Vec<String>,
}

/// Families in order of first appearance.
#[derive(Default)]
pub struct Exposition {
    families: Vec<Family>,
}

impl Exposition {
    /// Adds every family of `text`; `worker` (when set) is added as a label to each sample.
    pub fn add(&mut self, text: &str, worker: Option<usize>) {
        let mut current: Option<usize> = None;
        for line in text.lines() {
            let line = line.trim_end();
            if line.is_empty() || line == "# EOF" {
                continue;
            }
            if let Some(rest) = line.strip_prefix("# ") {
                let mut it = rest.splitn(3, ' ');
                let (kind, name) = (it.next().unwrap_or(""), it.next().unwrap_or(""));
                if !matches!(kind, "HELP" | "TYPE" | "UNIT") || name.is_empty() {
                    continue;
                }
                let i = self.family(name);
                let f = &mut self.families[i];
                if !f.meta.iter().any(|m| m.split(' ').nth(1) == Some(kind)) {
                    f.meta.push(line.to_string());
                }
                current = Some(i);
                continue;
            }
            if line.starts_with('#') {
                continue;
            }
            let i = match current {
                Some(i) => i,
                None => self.family(sample_name(line)),
            };
            self.families[i].samples.push(match worker {
                Some(w) => with_worker_label(line, w),
                None => line.to_string(),
            });
        }
    }

    fn family(&mut self, name: &str) -> usize {
        if let Some(i) = self.families.iter().position(|f| f.name == name) {
            return i;
        }
        self.families.push(Family {
            name: name.to_string(),
            ..Default::default()
        });
        self.families.len() - 1
    }

    /// The merged page, ending with `# EOF`.
    pub fn render(&self) -> String {
        let mut out = String::new();
        for f in &self.families {
            for l in f.meta.iter().chain(&f.samples) {
                out.push_str(l);
                out.push('\n');
            }
        }
        out.push_str("# EOF\n");
        out
    }
}

/// The metric name at the start of a sample line.
fn sample_name(line: &str) -> &str {
    let end = line.find(['{', ' ']).unwrap_or(line.len());
    &line[..end]
}

/// `name{a="b"} 1` → `name{worker="W",a="b"} 1`; `name 1` → `name{worker="W"} 1`.
pub fn with_worker_label(line: &str, worker: usize) -> String {
    let name = sample_name(line);
    let rest = &line[name.len()..];
    match rest.strip_prefix('{') {
        Some(labels) if labels.starts_with('}') => format!("{name}{{worker=\"{worker}\"{labels}"),
        Some(labels) => format!("{name}{{worker=\"{worker}\",{labels}"),
        None => format!("{name}{{worker=\"{worker}\"}}{rest}"),
    }
}

/// Renders the whole page: the supervisor's registry, then the workers that answered in time.
pub async fn render(shared: &Shared) -> Bytes {
    let slots = shared.slots.load();
    for s in slots.iter() {
        let label = crate::metrics::WorkerLabel {
            worker: s.id.to_string(),
        };
        let n = s.inflight.load(std::sync::atomic::Ordering::Relaxed);
        shared
            .metrics
            .worker_inflight
            .get_or_create(&label)
            .set(i64::from(n));
    }
    if let Some(b) = &shared.backend {
        shared.metrics.shared_backend_up.set(i64::from(b.is_up()));
    }
    let mut own = String::new();
    let _ = prometheus_client::encoding::text::encode_registry(&mut own, &shared.registry);
    let scrapes = slots.iter().map(|s| scrape(shared, s));
    let results = futures_util::future::join_all(scrapes).await;
    let mut page = Exposition::default();
    page.add(&own, None);
    if let Some(t) = gateway::telemetry::metrics_text() {
        page.add(&t, None);
    }
    for (id, text) in results.into_iter().flatten() {
        page.add(&text, Some(id));
    }
    Bytes::from(page.render())
}

/// One worker's metrics text, or `None` when it did not answer well within the timeout.
pub(crate) async fn scrape(shared: &Shared, slot: &WorkerSlot) -> Option<(usize, String)> {
    let fetch = shared.conns.get(slot, "/metrics", MAX_WORKER_METRICS);
    let bytes = tokio::time::timeout(SCRAPE_TIMEOUT, fetch)
        .await
        .ok()?
        .ok()?;
    String::from_utf8(bytes.to_vec()).ok().map(|s| (slot.id, s))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels() {
        assert_eq!(with_worker_label("a_total 3", 1), "a_total{worker=\"1\"} 3");
        assert_eq!(
            with_worker_label("a{x=\"y z\"} 3", 2),
            "a{worker=\"2\",x=\"y z\"} 3"
        );
        assert_eq!(with_worker_label("a{} 3", 0), "a{worker=\"0\"} 3");
    }

    #[test]
    fn merges_families_across_workers() {
        let w = "# HELP p Provider requests.\n# TYPE p counter\np_total{provider=\"x\"} 1\n# EOF\n";
        let own = "# HELP s Sup.\n# TYPE s gauge\ns 4\n# EOF\n";
        let mut e = Exposition::default();
        e.add(own, None);
        e.add(w, Some(0));
        e.add(w, Some(1));
        let out = e.render();
        assert_eq!(
            out,
            "# HELP s Sup.\n# TYPE s gauge\ns 4\n# HELP p Provider requests.\n# TYPE p counter\n\
             p_total{worker=\"0\",provider=\"x\"} 1\np_total{worker=\"1\",provider=\"x\"} 1\n# EOF\n"
        );
    }
}
