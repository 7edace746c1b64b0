//! The one shutdown signal, passed into every long-lived task (mini-redis, pingora
//! `ShutdownWatch`). The trigger is held by `start`; tasks hold a cheap `Shutdown` clone and
//! `select!` on `wait()`. Triggering is idempotent and is observed by tasks created later too.

use tokio::sync::watch;

/// Fires the shutdown. Dropping it also counts as a shutdown, so a panicking owner stops the rest.
#[derive(Debug)]
pub struct ShutdownTrigger(watch::Sender<bool>);

/// Observes the shutdown.
#[derive(Debug, Clone)]
pub struct Shutdown(watch::Receiver<bool>);

pub fn channel() -> (ShutdownTrigger, Shutdown) {
    let (tx, rx) = watch::channel(false);
    (ShutdownTrigger(tx), Shutdown(rx))
}

impl ShutdownTrigger {
    pub fn trigger(&self) {
        self.0.send_replace(true);
    }

    pub fn subscribe(&self) -> Shutdown {
        Shutdown(self.0.subscribe())
    }
}

impl Shutdown {
    /// True once the shutdown has been triggered (or its trigger dropped).
    pub fn is_triggered(&self) -> bool {
        *self.0.borrow() || self.0.has_changed().is_err()
    }

    /// Completes when the shutdown is triggered; at once if it already was.
    pub async fn wait(&mut self) {
        let _ = self.0.wait_for(|v| *v).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn trigger_and_drop_both_stop() {
        let (t, mut s) = channel();
        let mut late = t.subscribe();
        assert!(!s.is_triggered());
        t.trigger();
        s.wait().await;
        late.wait().await;
        assert!(s.is_triggered());

        let (t2, mut s2) = channel();
        drop(t2);
        s2.wait().await;
        assert!(s2.is_triggered());
    }
}
