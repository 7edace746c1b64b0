//! `supervisor`: keeps a pool of gateway workers alive behind one front port.
//!
//! `main` parses the command line and calls into `cli`; everything else is a library so tests can
//! drive it in-process as well as through the real binary.

pub mod admin;
pub mod cli;
pub mod control;
pub mod dashboard;
pub mod events;
pub mod fifo;
pub mod front;
pub mod instance;
pub mod integrate;
pub mod log_relay;
pub mod logging;
pub mod metrics;
pub mod pool;
pub mod runtime_dir;
pub mod shutdown;
pub mod upgrade;
pub mod usage;

/// Exit codes (contract).
pub mod exit {
    pub const OK: u8 = 0;
    pub const RUNTIME: u8 = 1;
    pub const CONFIG: u8 = 2;
    pub const LOCKED: u8 = 3;
    pub const ADDR_IN_USE: u8 = 4;
}
