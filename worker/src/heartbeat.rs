//! The heartbeat task: writes `{"pid","inflight","served"}` to the heartbeat file once the
//! worker is serving, then every interval. It runs on the serving runtime on purpose: if the
//! serving loop stalls, the heartbeat stops and the supervisor notices.

use crate::body::Counters;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

/// Where and how often to write the heartbeat.
#[derive(Debug, Clone)]
pub struct HeartbeatConfig {
    pub path: PathBuf,
    pub interval: Duration,
}

/// Aborts the task when dropped, so the heartbeat stops with the server that owns it.
pub struct HeartbeatTask(tokio::task::JoinHandle<()>);

impl Drop for HeartbeatTask {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Starts the heartbeat on the current runtime.
pub fn spawn(cfg: HeartbeatConfig, counters: Arc<Counters>) -> HeartbeatTask {
    HeartbeatTask(tokio::spawn(async move {
        let mut tick = tokio::time::interval(cfg.interval.max(Duration::from_millis(10)));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let pid = std::process::id();
        let path = Arc::new(cfg.path);
        let mut warned = false;
        loop {
            // The first tick completes at once: the file appears as soon as we serve.
            tick.tick().await;
            let hb = gateway::heartbeat::Heartbeat {
                pid,
                inflight: counters.inflight.load(Ordering::Relaxed),
                served: counters.served.load(Ordering::Relaxed),
            };
            // The write is a ~100-byte file plus a rename, normally ~10-50µs, but a slow or
            // stuck filesystem must never stall the requests sharing this thread, so it runs
            // on the blocking pool. Awaiting it keeps the writes ordered and still ties the
            // heartbeat to this runtime making progress.
            let p = path.clone();
            let res = tokio::task::spawn_blocking(move || gateway::heartbeat::write(&p, &hb)).await;
            match res {
                Ok(Ok(())) => warned = false,
                Ok(Err(e)) if !warned => {
                    warned = true;
                    tracing::warn!(path = %path.display(), error = %e, "cannot write the heartbeat");
                }
                _ => {}
            }
        }
    }))
}
