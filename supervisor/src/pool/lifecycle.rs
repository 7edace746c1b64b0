//! The worker lifecycle as data: the contract's states, the events a slot task observes, the
//! actions it must take, and one pure function, [`next`], that maps (state, event) to
//! (state, actions) or rejects the pair as illegal (Horust's `ServiceStatus` + `handle_*`).
//!
//! Nothing here touches a process, a clock or an atomic, so the whole table is unit-tested
//! without spawning anything. The slot task (`pool::task`) feeds events in, stores the new state
//! in the slot's atomic and runs the actions.
//!
//! ```text
//!                 FirstHeartbeat          Serving
//!     ┌──► INIT ─────────────────► READY ─────────► IDLE ◄──► BUSY / BUSY_STREAMING / BUSY_BLOCKED
//!     │     │  ▲                     ▲               │  │      (derived from the front's counters,
//!     │     │  │ Exited/Stale        │ FirstHeartbeat │  │       never stored: see slot.rs)
//!     │     │  └──────────┐          │ (replacement)  │  │ Recycle / Restart
//!     │     │             │          │                │  ▼
//!     │     │           DEGRADED ────┘◄───────────────┼──┘   ReplacementFailed: back to IDLE
//!     │     │ StartupTimeout / Exited                 │ Exited / HeartbeatStale
//!     │     ▼                                         ▼
//!     │   UNHEALTHY ◄─────────────────────────────────┘
//!     │     │ Reaped{budget left}        Reaped{budget spent}
//!     │     ▼                                   │
//!     └── RESTARTING (backoff)                  ▼
//!       BackoffElapsed                         DEAD ◄── Stop (from any state)
//!                                               │
//!                                               └── Restart (manual): INIT with a fresh budget
//! ```
//!
//! DEGRADED is the overlap of two processes on the one listening socket: the old one still
//! serves while its replacement starts. When the replacement's first heartbeat arrives the slot
//! moves to READY and the old process is drained ([`Action::Promote`]). If the *old* process dies
//! or stalls first, the replacement is promoted at once and the slot is in INIT until it is heard
//! from.

use super::slot::WorkerState;

/// Something the slot task observed or was asked to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// The heartbeat file of the starting process (INIT) or of the replacement (DEGRADED) appeared.
    FirstHeartbeat,
    /// READY has been announced; the worker enters the dispatch table.
    Serving,
    /// A serving worker handed over by the image before an in-place upgrade was taken over
    /// (INIT to READY, as a first heartbeat; `Serving` follows at once).
    Adopted,
    /// The starting process did not write a heartbeat within `startup_timeout`.
    StartupTimeout,
    /// The current process's heartbeat was stale on consecutive sweeps.
    HeartbeatStale,
    /// The current process exited (reaped by its `wait`, or found by the sweep's `try_wait`).
    Exited,
    /// The process killed after UNHEALTHY is gone; `budget_left` says whether the restart budget
    /// allows another start (the task decides, from `restart::Budget`).
    Reaped { budget_left: bool },
    /// The restart backoff has elapsed.
    BackoffElapsed,
    /// Replace a serving worker without dropping a request (RSS, max requests, reload).
    Recycle,
    /// The replacement exited or missed its startup deadline; the old process keeps serving.
    ReplacementFailed,
    /// Manual restart (admin socket / `restart-worker`); also revives a DEAD slot.
    Restart,
    /// Full stop: terminate everything, the slot is DEAD.
    Stop,
}

impl Event {
    /// The event as the reason of a transition (`start --events`, logs).
    pub fn as_str(self) -> &'static str {
        match self {
            Event::FirstHeartbeat => "first heartbeat",
            Event::Serving => "serving",
            Event::Adopted => "adopted",
            Event::StartupTimeout => "startup timeout",
            Event::HeartbeatStale => "heartbeat stale",
            Event::Exited => "exited",
            Event::Reaped { budget_left: true } => "reaped",
            Event::Reaped { budget_left: false } => "restart budget spent",
            Event::BackoffElapsed => "backoff elapsed",
            Event::Recycle => "recycle",
            Event::ReplacementFailed => "replacement failed",
            Event::Restart => "restart",
            Event::Stop => "stop",
        }
    }
}

/// What the slot task must do after a transition, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Start a new current process.
    Spawn,
    /// Start a replacement next to the current process, on the same socket.
    SpawnReplacement,
    /// Kill ladder on the current process (SIGTERM, grace, SIGKILL), reap it, report `Reaped`.
    Kill,
    /// The replacement becomes the current process; the old one is drained in the background.
    Promote,
    /// Kill the replacement (it failed); the current process is untouched.
    KillReplacement,
    /// Arm the restart backoff timer.
    ScheduleRestart,
    /// Log the slot's death loudly with its last exit status and stderr lines.
    ReportDead,
    /// Forget past failures (manual revive).
    ResetBudget,
    /// Terminate every process of the slot within the stop grace and reap them.
    StopAll,
}

/// A (state, event) pair the table does not allow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("illegal lifecycle transition: {event:?} in state {from}")]
pub struct IllegalTransition {
    pub from: WorkerState,
    pub event: Event,
}

/// The transition table. Busy states never reach here: the lifecycle atomic only holds INIT,
/// READY, IDLE, DEGRADED, UNHEALTHY, RESTARTING and DEAD (the busy flavours are derived).
pub fn next(
    from: WorkerState,
    event: Event,
) -> Result<(WorkerState, Vec<Action>), IllegalTransition> {
    use Action as A;
    use Event as E;
    use WorkerState as S;
    let ok = |s: WorkerState, a: &[Action]| Ok((s, a.to_vec()));
    match (from, event) {
        // Stop wins from anywhere; a second stop is a harmless no-op.
        (S::Dead, E::Stop) => ok(S::Dead, &[]),
        (_, E::Stop) => ok(S::Dead, &[A::StopAll]),

        (S::Init, E::FirstHeartbeat | E::Adopted) => ok(S::Ready, &[]),
        (S::Degraded, E::FirstHeartbeat) => ok(S::Ready, &[A::Promote]),
        (S::Ready, E::Serving) => ok(S::Idle, &[]),

        (S::Init, E::StartupTimeout) => ok(S::Unhealthy, &[A::Kill]),
        (S::Ready | S::Idle, E::HeartbeatStale) => ok(S::Unhealthy, &[A::Kill]),
        // Kill on an exited process only reaps it and clears leftovers of its process group.
        (S::Init | S::Ready | S::Idle, E::Exited) => ok(S::Unhealthy, &[A::Kill]),
        // The old process failed while its replacement starts: the replacement takes over now.
        (S::Degraded, E::Exited | E::HeartbeatStale) => ok(S::Init, &[A::Promote]),

        (S::Unhealthy, E::Reaped { budget_left: true }) => ok(S::Restarting, &[A::ScheduleRestart]),
        (S::Unhealthy, E::Reaped { budget_left: false }) => ok(S::Dead, &[A::ReportDead]),
        (S::Restarting, E::BackoffElapsed) => ok(S::Init, &[A::Spawn]),

        (S::Idle, E::Recycle | E::Restart) => ok(S::Degraded, &[A::SpawnReplacement]),
        (S::Degraded, E::ReplacementFailed) => ok(S::Idle, &[A::KillReplacement]),

        // Manual restart of a slot that is not serving yet: start over (no budget is charged).
        (S::Init | S::Ready, E::Restart) => ok(S::Unhealthy, &[A::Kill]),
        (S::Restarting, E::Restart) => ok(S::Init, &[A::Spawn]),
        // Already being replaced or restarted: nothing more to do.
        (S::Unhealthy | S::Degraded, E::Restart) => ok(from, &[]),
        // The only way out of DEAD: a new process with a fresh budget (never the old one).
        (S::Dead, E::Restart) => ok(S::Init, &[A::ResetBudget, A::Spawn]),

        _ => Err(IllegalTransition { from, event }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Action as A;
    use Event as E;
    use WorkerState as S;

    /// Every event, for exhaustive sweeps over the table.
    const EVENTS: [Event; 13] = [
        E::FirstHeartbeat,
        E::Serving,
        E::Adopted,
        E::StartupTimeout,
        E::HeartbeatStale,
        E::Exited,
        E::Reaped { budget_left: true },
        E::Reaped { budget_left: false },
        E::BackoffElapsed,
        E::Recycle,
        E::ReplacementFailed,
        E::Restart,
        E::Stop,
    ];
    /// The states the lifecycle atomic may hold.
    const STORED: [WorkerState; 7] = [
        S::Init,
        S::Ready,
        S::Idle,
        S::Degraded,
        S::Unhealthy,
        S::Restarting,
        S::Dead,
    ];

    #[test]
    fn legal_transitions() {
        let cases: &[(WorkerState, Event, WorkerState, &[Action])] = &[
            (S::Init, E::FirstHeartbeat, S::Ready, &[]),
            (S::Init, E::Adopted, S::Ready, &[]),
            (S::Ready, E::Serving, S::Idle, &[]),
            (S::Idle, E::Exited, S::Unhealthy, &[A::Kill]),
            (S::Idle, E::HeartbeatStale, S::Unhealthy, &[A::Kill]),
            (S::Init, E::StartupTimeout, S::Unhealthy, &[A::Kill]),
            (
                S::Unhealthy,
                E::Reaped { budget_left: true },
                S::Restarting,
                &[A::ScheduleRestart],
            ),
            (
                S::Unhealthy,
                E::Reaped { budget_left: false },
                S::Dead,
                &[A::ReportDead],
            ),
            (S::Restarting, E::BackoffElapsed, S::Init, &[A::Spawn]),
            (S::Idle, E::Recycle, S::Degraded, &[A::SpawnReplacement]),
            (S::Degraded, E::FirstHeartbeat, S::Ready, &[A::Promote]),
            (S::Degraded, E::Exited, S::Init, &[A::Promote]),
            (
                S::Degraded,
                E::ReplacementFailed,
                S::Idle,
                &[A::KillReplacement],
            ),
            (S::Dead, E::Restart, S::Init, &[A::ResetBudget, A::Spawn]),
            (S::Idle, E::Stop, S::Dead, &[A::StopAll]),
            (S::Restarting, E::Stop, S::Dead, &[A::StopAll]),
            (S::Dead, E::Stop, S::Dead, &[]),
        ];
        for (from, ev, to, actions) in cases {
            assert_eq!(
                next(*from, *ev),
                Ok((*to, actions.to_vec())),
                "{from} + {ev:?}"
            );
        }
    }

    #[test]
    fn illegal_transitions_are_rejected() {
        let cases = [
            (S::Dead, E::FirstHeartbeat),
            (S::Dead, E::BackoffElapsed),
            (S::Dead, E::Exited),
            (S::Restarting, E::Exited),
            (S::Restarting, E::FirstHeartbeat),
            (S::Idle, E::FirstHeartbeat),
            (S::Init, E::Serving),
            (S::Init, E::Recycle),
            (S::Idle, E::BackoffElapsed),
            (S::Unhealthy, E::Exited),
            (S::Idle, E::ReplacementFailed),
        ];
        for (from, event) in cases {
            assert_eq!(next(from, event), Err(IllegalTransition { from, event }));
        }
    }

    /// Properties that must hold for the whole table, not just the listed cases.
    #[test]
    fn table_invariants() {
        for from in STORED {
            for ev in EVENTS {
                let Ok((to, actions)) = next(from, ev) else {
                    continue;
                };
                // The lifecycle atomic never stores a derived busy state.
                assert!(STORED.contains(&to), "{from} + {ev:?} -> {to}");
                // A DEAD slot only ever leaves through a manual restart, with a fresh budget and
                // a new process: a process that reached DEAD is never reused.
                if from == S::Dead && to != S::Dead {
                    assert_eq!(ev, E::Restart);
                    assert_eq!(actions, vec![A::ResetBudget, A::Spawn]);
                }
                // Entering INIT always means a process is starting or was just promoted.
                if to == S::Init && from != S::Init {
                    assert!(
                        actions.contains(&A::Spawn) || actions.contains(&A::Promote),
                        "{from} + {ev:?}"
                    );
                }
            }
            // Stop is legal everywhere and always ends in DEAD.
            assert_eq!(next(from, E::Stop).unwrap().0, S::Dead);
        }
    }
}
