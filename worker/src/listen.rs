//! The listening sockets: inherited from the supervisor (systemd's `LISTEN_FDS` protocol, so a
//! restarting worker's port keeps its accept queue), else bound from `--listen`.
//!
//! fd 3 is the worker's TCP port. With `LISTEN_FDS=2` the supervisor also passes fd 4, a Unix
//! socket that only its front listener connects to (cheaper than loopback TCP; see the
//! supervisor's `pool::sockets`). Both serve the same requests.

use crate::error::WorkerError;
use std::net::SocketAddr;
use std::os::fd::{FromRawFd, RawFd};

/// The first passed descriptor, as in sd_listen_fds(3).
const LISTEN_FDS_START: RawFd = 3;

/// The sockets a supervisor passed.
pub struct Inherited {
    /// fd 3: the worker port.
    pub tcp: std::net::TcpListener,
    /// fd 4, when passed: the front listener's Unix socket.
    pub front: Option<std::os::unix::net::UnixListener>,
}

/// Takes the inherited sockets if `LISTEN_FDS` is set for this process, and removes the
/// `LISTEN_*` variables so nothing this process starts inherits them.
///
/// Call it before any other thread exists: it changes the environment.
pub fn take_inherited() -> Result<Option<Inherited>, WorkerError> {
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
    let tcp = unsafe { std::net::TcpListener::from_raw_fd(LISTEN_FDS_START) };
    tcp.set_nonblocking(true)
        .map_err(|e| WorkerError::Inherited(format!("cannot make fd 3 non-blocking: {e}")))?;
    let front = if n >= 2 {
        let fd = LISTEN_FDS_START + 1;
        nix::sys::socket::getsockname::<nix::sys::socket::UnixAddr>(fd)
            .map_err(|e| WorkerError::Inherited(format!("fd {fd} is not a Unix socket: {e}")))?;
        // SAFETY: as for fd 3: passed to this process under LISTEN_FDS=2, proven an open Unix
        // socket just above, and wrapped here only.
        let l = unsafe { std::os::unix::net::UnixListener::from_raw_fd(fd) };
        l.set_nonblocking(true).map_err(|e| {
            WorkerError::Inherited(format!("cannot make fd {fd} non-blocking: {e}"))
        })?;
        Some(l)
    } else {
        None
    };
    Ok(Some(Inherited { tcp, front }))
}

/// Binds `addr` (used when no socket is inherited).
pub fn bind(addr: SocketAddr) -> Result<std::net::TcpListener, WorkerError> {
    let l = gateway::net::listen(addr).map_err(|source| WorkerError::Bind { addr, source })?;
    l.set_nonblocking(true)
        .map_err(|source| WorkerError::Bind { addr, source })?;
    Ok(l)
}
