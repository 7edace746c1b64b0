//! Glue for the three kinds of user: systemd (`systemd`), desktop hosts running the supervisor as
//! a sidecar (`sidecar`).

pub mod sidecar;
pub mod systemd;
pub mod watch;
