//! Commands that reach the `start` main loop from outside the signal handlers: the admin socket
//! and the config-file watcher send them; `cli::start` owns the receiving end. Bounded channel;
//! each command that needs an answer carries a oneshot for it.

use tokio::sync::{mpsc, oneshot};

/// A request to the main loop.
#[derive(Debug)]
pub enum ControlCommand {
    /// Re-read the config file and roll the workers (like SIGHUP). Answers with every error
    /// found when the new config is invalid, or with why the roll failed.
    Reload(oneshot::Sender<Result<(), ReloadError>>),
    /// Stop gracefully (like SIGTERM).
    Stop,
    /// Upgrade in place (like SIGUSR2). Answers with the new version, or with why not.
    Upgrade(oneshot::Sender<Result<String, String>>),
}

/// Why a reload did not apply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReloadError {
    /// The file is invalid: every problem, located (`file:line:col: key: message`). Nothing
    /// changed.
    Invalid(Vec<String>),
    /// The configuration was adopted, but the roll did not finish: a replacement could not
    /// start (the remaining workers keep their processes), or the snapshot could not be written.
    Failed(String),
}

/// Capacity of the control channel: a handful of admin requests at once is plenty; a sender
/// that finds it full waits.
pub const CONTROL_QUEUE: usize = 16;

pub fn channel() -> (mpsc::Sender<ControlCommand>, mpsc::Receiver<ControlCommand>) {
    mpsc::channel(CONTROL_QUEUE)
}
