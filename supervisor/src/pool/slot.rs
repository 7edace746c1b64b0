//! One worker slot: the per-worker atomics the dispatcher reads without a lock.
//!
//! A slot outlives its processes: it owns a fixed port (the supervisor's listening socket) and
//! sees many pids over its life. The lifecycle task is the only writer of `lifecycle`; the front
//! listener writes only the request counters (`inflight`, `streaming`, `blocked`, `served`).
//! The public state is derived from both: a serving worker is IDLE with nothing in flight, BUSY
//! or BUSY_STREAMING otherwise, BUSY_BLOCKED while any request is silent past `blocked_after`.
//! Deriving it (instead of having the front CAS the state on every request) keeps a single writer
//! for the lifecycle and keeps the request path down to one `fetch_add`.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, Ordering::Relaxed};

/// The contract's worker states.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub enum WorkerState {
    Init = 0,
    Ready = 1,
    Idle = 2,
    Busy = 3,
    BusyStreaming = 4,
    BusyBlocked = 5,
    Degraded = 6,
    Unhealthy = 7,
    Restarting = 8,
    Dead = 9,
}

impl WorkerState {
    pub const ALL: [WorkerState; 10] = [
        Self::Init,
        Self::Ready,
        Self::Idle,
        Self::Busy,
        Self::BusyStreaming,
        Self::BusyBlocked,
        Self::Degraded,
        Self::Unhealthy,
        Self::Restarting,
        Self::Dead,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Init => "INIT",
            Self::Ready => "READY",
            Self::Idle => "IDLE",
            Self::Busy => "BUSY",
            Self::BusyStreaming => "BUSY_STREAMING",
            Self::BusyBlocked => "BUSY_BLOCKED",
            Self::Degraded => "DEGRADED",
            Self::Unhealthy => "UNHEALTHY",
            Self::Restarting => "RESTARTING",
            Self::Dead => "DEAD",
        }
    }

    pub fn from_u8(v: u8) -> Self {
        Self::ALL.get(v as usize).copied().unwrap_or(Self::Dead)
    }
}

impl std::fmt::Display for WorkerState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Shared, lock-free view of one worker slot. Every field is documented with its writer.
#[derive(Debug)]
pub struct WorkerSlot {
    /// Stable slot index, also the `worker` metrics label.
    pub id: usize,
    /// The port of the supervisor-owned listening socket; never changes for a slot.
    pub port: u16,
    /// Lifecycle state (`WorkerState` as u8). Writer: the slot's lifecycle task only. Holds one
    /// of INIT, READY, IDLE (= serving), DEGRADED, UNHEALTHY, RESTARTING, DEAD.
    lifecycle: AtomicU8,
    /// Requests the front listener has handed to this slot and not yet finished (until the
    /// response body ends or the client goes away). Writer: the front's in-flight guard.
    pub inflight: AtomicU32,
    /// Of those, responses that are SSE streams. Writer: the front.
    pub streaming: AtomicU32,
    /// Of those, requests silent longer than `blocked_after`. Writer: the front.
    pub blocked: AtomicU32,
    /// Requests completed through this slot (all its processes). Writer: the front.
    pub served: AtomicU64,
    /// Current process id, 0 when none. Writer: the lifecycle task.
    pub pid: AtomicU32,
    /// Unplanned restarts of this slot so far (crash, kill, stale heartbeat, failed start).
    /// Writer: the lifecycle task.
    pub restarts: AtomicU32,
    /// Planned replacements so far (reload, recycling, operator restart). Writer: the
    /// lifecycle task.
    pub replaced: AtomicU32,
    /// Unix ms when the current process was spawned, 0 when none. Writer: the lifecycle task.
    pub started_at_ms: AtomicU64,
    /// Heartbeat age at the last sweep, ms; u64::MAX when none yet. Writer: the lifecycle task.
    pub heartbeat_age_ms: AtomicU64,
    /// Resident memory at the last sample, bytes. Writer: the lifecycle task.
    pub rss_bytes: AtomicU64,
    /// Set while the slot is being drained (stop, reload, recycle): no new work. Writer: lifecycle.
    pub draining: AtomicBool,
    /// The slot's Unix socket for the front listener (`pool::sockets`), if it has one; fixed.
    pub front_socket: Option<std::path::PathBuf>,
    /// Whether the slot's processes serve `front_socket` (the built-in worker does; a custom
    /// `worker_command` gets only the port). Writer: the lifecycle task, at each spawn.
    pub front_served: AtomicBool,
}

impl WorkerSlot {
    pub fn new(id: usize, port: u16) -> Self {
        Self {
            id,
            port,
            lifecycle: AtomicU8::new(WorkerState::Init as u8),
            inflight: AtomicU32::new(0),
            streaming: AtomicU32::new(0),
            blocked: AtomicU32::new(0),
            served: AtomicU64::new(0),
            pid: AtomicU32::new(0),
            restarts: AtomicU32::new(0),
            replaced: AtomicU32::new(0),
            started_at_ms: AtomicU64::new(0),
            heartbeat_age_ms: AtomicU64::new(u64::MAX),
            rss_bytes: AtomicU64::new(0),
            draining: AtomicBool::new(false),
            front_socket: None,
            front_served: AtomicBool::new(false),
        }
    }

    /// The front socket, when the slot's current processes serve it.
    pub fn served_front_socket(&self) -> Option<&std::path::Path> {
        self.front_socket
            .as_deref()
            .filter(|_| self.front_served.load(Relaxed))
    }

    /// The lifecycle state as last written by the lifecycle task.
    pub fn lifecycle(&self) -> WorkerState {
        WorkerState::from_u8(self.lifecycle.load(Relaxed))
    }

    /// Only the lifecycle task calls this, after `next()` accepted the transition.
    pub fn set_lifecycle(&self, s: WorkerState) {
        self.lifecycle.store(s as u8, Relaxed);
    }

    /// The state users see: the lifecycle state, refined by the request counters when serving.
    pub fn state(&self) -> WorkerState {
        let l = self.lifecycle();
        if l != WorkerState::Idle {
            return l;
        }
        if self.blocked.load(Relaxed) > 0 {
            WorkerState::BusyBlocked
        } else if self.streaming.load(Relaxed) > 0 {
            WorkerState::BusyStreaming
        } else if self.inflight.load(Relaxed) > 0 {
            WorkerState::Busy
        } else {
            WorkerState::Idle
        }
    }

    /// Whether the dispatcher may hand this slot another request: IDLE, BUSY or BUSY_STREAMING,
    /// not draining, and below `max_inflight`.
    pub fn has_room(&self, max_inflight: u32) -> bool {
        matches!(
            self.state(),
            WorkerState::Idle | WorkerState::Busy | WorkerState::BusyStreaming
        ) && !self.draining.load(Relaxed)
            && self.inflight.load(Relaxed) < max_inflight
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derived_state_and_room() {
        let s = WorkerSlot::new(0, 1);
        assert_eq!(s.state(), WorkerState::Init);
        assert!(!s.has_room(4));
        s.set_lifecycle(WorkerState::Idle);
        assert_eq!(s.state(), WorkerState::Idle);
        assert!(s.has_room(1));
        s.inflight.store(1, Relaxed);
        assert_eq!(s.state(), WorkerState::Busy);
        assert!(!s.has_room(1));
        assert!(s.has_room(2));
        s.streaming.store(1, Relaxed);
        assert_eq!(s.state(), WorkerState::BusyStreaming);
        s.blocked.store(1, Relaxed);
        assert_eq!(s.state(), WorkerState::BusyBlocked);
        assert!(!s.has_room(8));
        for st in WorkerState::ALL {
            assert_eq!(WorkerState::from_u8(st as u8), st);
        }
    }
}
