//! systemd `Type=notify` integration: READY/STATUS/RELOADING/STOPPING/WATCHDOG messages on
//! `$NOTIFY_SOCKET`. Every call is a no-op when the variable is absent, so the rest of the code
//! calls these unconditionally. The variables are left in our environment (the pool strips them
//! from workers' environments) because the watchdog needs them for the whole run.

use sd_notify::NotifyState;
use std::time::Duration;

/// Sends notifications when running under systemd.
#[derive(Debug, Clone, Copy)]
pub struct Systemd {
    enabled: bool,
}

impl Systemd {
    pub fn from_env() -> Self {
        Self {
            enabled: std::env::var_os("NOTIFY_SOCKET").is_some_and(|v| !v.is_empty()),
        }
    }

    pub fn enabled(&self) -> bool {
        self.enabled
    }

    fn send(&self, states: &[NotifyState]) {
        if self.enabled {
            if let Err(e) = sd_notify::notify(false, states) {
                tracing::warn!(error = %e, "could not notify systemd");
            }
        }
    }

    pub fn ready(&self, status: &str) {
        self.send(&[NotifyState::Ready, NotifyState::Status(status)]);
    }

    pub fn status(&self, status: &str) {
        self.send(&[NotifyState::Status(status)]);
    }

    /// RELOADING=1 with MONOTONIC_USEC, as `Type=notify-reload` requires.
    pub fn reloading(&self) {
        match NotifyState::monotonic_usec_now() {
            Ok(now) => self.send(&[NotifyState::Reloading, now]),
            Err(_) => self.send(&[NotifyState::Reloading]),
        }
    }

    pub fn stopping(&self) {
        self.send(&[NotifyState::Stopping]);
    }

    pub fn watchdog(&self) {
        self.send(&[NotifyState::Watchdog]);
    }

    /// Half of `WATCHDOG_USEC` when the watchdog is enabled for this process. As in
    /// `sd_watchdog_enabled(3)`, `WATCHDOG_PID` is optional but must name us when present
    /// (`sd_notify::watchdog_enabled` insists on it, so it is not used).
    pub fn watchdog_interval(&self) -> Option<Duration> {
        let usec: u64 = std::env::var("WATCHDOG_USEC")
            .ok()?
            .parse()
            .ok()
            .filter(|u| *u > 0)?;
        let for_us = match std::env::var("WATCHDOG_PID") {
            Ok(pid) => pid.parse::<u32>().ok() == Some(std::process::id()),
            Err(_) => true,
        };
        (self.enabled && for_us).then(|| Duration::from_micros(usec / 2))
    }
}
