//! The listening socket: inherited from the supervisor as fd 3 (systemd's `LISTEN_FDS`
//! protocol, so a restarting worker's port keeps its accept queue), else bound from `--listen`.

use crate::error::WorkerError;
use std::net::SocketAddr;
use std::os::fd::{FromRawFd, RawFd};

/// The first passed descriptor, as in sd_listen_fds(3).
const LISTEN_FDS_START: RawFd = 3;

/// Takes the inherited socket if `LISTEN_FDS` is set for this process, and removes the
/// `LISTEN_*` variables so nothing this process starts inherits them.
///
/// Call it before any other thread exists: it changes the environment.
pub fn take_inherited() -> Result<Option<std::net::TcpListener>, WorkerError> {
    let Some(fds) = std::env::var_os("LISTEN_FDS") else {
        return Ok(None);
    };
    if let Some(pid) = std::env::var_os("LISTEN_PID") {
        let ours = pid.to_str().and_then(|p| p.parse::<u32>().ok()) == Some(std::process::id());
        if !ours {
            // Meant for another process (e.g. our parent under systemd): not ours to take.
            return Ok(None);
        }
    }
    for var in ["LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES"] {
        std::env::remove_var(var);
    }
    let n: u32 = fds
        .to_str()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| WorkerError::Inherited(format!("LISTEN_FDS={fds:?} is not a number")))?;
    if n < 1 {
        return Err(WorkerError::Inherited(
            "LISTEN_FDS=0: no socket was passed".into(),
        ));
    }
    nix::sys::socket::getsockname::<nix::sys::socket::SockaddrStorage>(LISTEN_FDS_START)
        .map_err(|e| WorkerError::Inherited(format!("fd 3 is not a socket: {e}")))?;
    // SAFETY: fd 3 was handed to this process by its parent under the LISTEN_FDS protocol (and
    // LISTEN_PID, when set, names this process), getsockname just proved it is an open socket,
    // and nothing else in this process owns it: this is the only place that wraps it.
    let listener = unsafe { std::net::TcpListener::from_raw_fd(LISTEN_FDS_START) };
    listener
        .set_nonblocking(true)
        .map_err(|e| WorkerError::Inherited(format!("cannot make fd 3 non-blocking: {e}")))?;
    Ok(Some(listener))
}

/// Binds `addr` (used when no socket is inherited).
pub fn bind(addr: SocketAddr) -> Result<std::net::TcpListener, WorkerError> {
    let l = gateway::net::listen(addr).map_err(|source| WorkerError::Bind { addr, source })?;
    l.set_nonblocking(true)
        .map_err(|source| WorkerError::Bind { addr, source })?;
    Ok(l)
}
