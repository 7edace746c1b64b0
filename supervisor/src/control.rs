//! Commands that reach the `start` main loop from outside the signal handlers: the admin socket
//! and the config-file watcher send them; `cli::start` owns the receiving end. Bounded channel;
//! each command that needs an answer carries a oneshot for it.

use tokio::sync::{mpsc, oneshot};

/// A request to the main loop.
#[derive(Debug)]
pub enum ControlCommand {
    /// Re-read the config file and roll the workers (like SIGHUP). Answers with every error
    /// found when the new config is invalid.
    Reload(oneshot::Sender<Result<(), String>>),
    /// Stop gracefully (like SIGTERM).
    Stop,
}

/// Capacity of the control channel: a handful of admin requests at once is plenty; a sender
/// that finds it full waits.
pub const CONTROL_QUEUE: usize = 16;

pub fn channel() -> (mpsc::Sender<ControlCommand>, mpsc::Receiver<ControlCommand>) {
    mpsc::channel(CONTROL_QUEUE)
}
