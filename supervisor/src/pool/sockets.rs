//! The worker listening sockets: bound by the supervisor, never by a worker, so a restarting
//! worker's port keeps its accept queue and no other program can take it in between.
//!
//! Each slot has two ([`SlotSockets`]): its TCP port (the contract's worker port, fd 3 of every
//! process of the slot), and, for the built-in worker, a Unix socket in the runtime directory
//! (`worker-<id>.sock`, mode 0600, fd 4) that only the front listener uses. Why a second way
//! in: a loopback TCP round trip costs the kernel about 5 µs more CPU than a Unix socket one
//! (measured here: 12.8 vs 7.9 µs per request/response through hyper on both ends), and the
//! front-to-worker hop is one every request pays. When the socket cannot be bound (a runtime
//! directory whose path is too long for `sun_path`, say) the slot simply has none and the front
//! uses the port.
//!
//! Every port is bound before any worker is spawned; a port in use names its holder when /proc
//! tells (the listening socket's inode from /proc/net/tcp{,6}, then the process holding that
//! inode among /proc/*/fd).

use std::io;
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};

/// A slot's listening sockets, held by the supervisor for the whole life of the slot.
#[derive(Debug)]
pub struct SlotSockets {
    /// The worker port; fd 3 of every process of the slot.
    pub tcp: TcpListener,
    /// The front listener's way in, when it could be bound; fd 4 of built-in workers.
    pub front: Option<FrontSocket>,
}

/// A Unix listening socket and its path.
#[derive(Debug)]
pub struct FrontSocket {
    pub listener: UnixListener,
    pub path: PathBuf,
}

impl SlotSockets {
    /// The slot's sockets around its TCP listener, with a front socket at `front_path` when one
    /// can be bound there (see the module docs).
    pub fn new(tcp: TcpListener, front_path: &Path) -> Self {
        let front = match bind_unix(front_path) {
            Ok(listener) => Some(FrontSocket {
                listener,
                path: front_path.to_path_buf(),
            }),
            Err(e) => {
                tracing::info!(
                    path = %front_path.display(),
                    "no front socket for this worker, the front will use its port: {e}"
                );
                None
            }
        };
        Self { tcp, front }
    }

    /// The sockets an upgrading image handed over (descriptor numbers valid here, each owned by
    /// nothing else): its workers still listen on them. Fails when `tcp` is not a listening
    /// TCP socket; a bad front socket only means the slot has none.
    pub fn adopted(
        tcp: std::os::fd::RawFd,
        front: Option<(std::os::fd::RawFd, PathBuf)>,
    ) -> io::Result<Self> {
        use std::os::fd::FromRawFd;
        // SAFETY: the handoff names these descriptors as the slot's, kept open for this image
        // and owned by nothing else in it; each is taken once.
        let tcp = unsafe { TcpListener::from_raw_fd(tcp) };
        tcp.local_addr()?;
        let front = front.and_then(|(fd, path)| {
            // SAFETY: as above.
            let listener = unsafe { UnixListener::from_raw_fd(fd) };
            match listener.local_addr() {
                Ok(_) => Some(FrontSocket { listener, path }),
                Err(e) => {
                    tracing::warn!(path = %path.display(), "handed front socket: {e}; the front will use the port");
                    None
                }
            }
        });
        Ok(Self { tcp, front })
    }

    /// The TCP port.
    pub fn port(&self) -> u16 {
        self.tcp.local_addr().map(|a| a.port()).unwrap_or(0)
    }
}

/// Binds a Unix listening socket at `path`, replacing a stale one (a supervisor killed with
/// SIGKILL leaves its sockets behind; the runtime directory's lock says nobody else uses them),
/// readable and writable by this user only.
fn bind_unix(path: &Path) -> io::Result<UnixListener> {
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let l = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(l)
}

/// Why a port could not be bound.
#[derive(Debug)]
pub enum BindFailure {
    /// EADDRINUSE; `holder` is "pid 123 (comm)" when it could be found.
    InUse {
        port: u16,
        holder: Option<String>,
    },
    Other {
        port: u16,
        source: io::Error,
    },
}

/// Binds `127.0.0.1:port`. `0` asks the kernel for a free port.
pub fn bind_one(port: u16) -> Result<TcpListener, BindFailure> {
    match gateway::net::listen(SocketAddr::from((Ipv4Addr::LOCALHOST, port))) {
        Ok(l) => Ok(l),
        Err(e) if e.kind() == io::ErrorKind::AddrInUse => Err(BindFailure::InUse {
            port,
            holder: port_holder(port),
        }),
        Err(source) => Err(BindFailure::Other { port, source }),
    }
}

/// The port for slot `id`: `base_port + id`, or 0 (any free port) when `base_port` is 0.
pub fn port_for(base_port: u16, id: usize) -> Result<u16, BindFailure> {
    if base_port == 0 {
        return Ok(0);
    }
    u16::try_from(usize::from(base_port) + id).map_err(|_| BindFailure::Other {
        port: base_port,
        source: io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("base_port {base_port} + {id} overflows"),
        ),
    })
}

/// Binds the ports of slots `ids`, all or nothing: the listeners bound so far are dropped
/// (closed) when one fails.
pub fn bind_all(
    base_port: u16,
    ids: std::ops::Range<usize>,
) -> Result<Vec<TcpListener>, BindFailure> {
    ids.map(|id| bind_one(port_for(base_port, id)?)).collect()
}

/// "pid 1234 (python3)" for the process listening on `port`, when /proc tells. Processes of
/// other users hide their fds, so `None` is a normal answer.
pub fn port_holder(port: u16) -> Option<String> {
    let inode = ["/proc/net/tcp", "/proc/net/tcp6"]
        .iter()
        .filter_map(|f| std::fs::read_to_string(f).ok())
        .find_map(|text| listening_inode(&text, port))?;
    let target = format!("socket:[{inode}]");
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(fds) = std::fs::read_dir(entry.path().join("fd")) else {
            continue;
        };
        let holds = fds.flatten().any(|fd| {
            std::fs::read_link(fd.path())
                .map(|l| l.as_os_str() == target.as_str())
                .unwrap_or(false)
        });
        if holds {
            let comm = std::fs::read_to_string(entry.path().join("comm")).unwrap_or_default();
            return Some(format!("pid {pid} ({})", comm.trim()));
        }
    }
    Some(format!("socket inode {inode}, owner not visible"))
}

/// Finds the inode of the socket in LISTEN state (`0A`) on `port` in a /proc/net/tcp table.
fn listening_inode(table: &str, port: u16) -> Option<u64> {
    table.lines().skip(1).find_map(|line| {
        let cols: Vec<&str> = line.split_whitespace().collect();
        let local = cols.get(1)?;
        let state = cols.get(3)?;
        let inode = cols.get(9)?;
        let p = u16::from_str_radix(local.rsplit(':').next()?, 16).ok()?;
        (p == port && *state == "0A")
            .then(|| inode.parse().ok())
            .flatten()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn front_socket_is_private_and_replaces_a_stale_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("worker-0.sock");
        std::fs::write(&path, "left by a killed supervisor").unwrap();
        let tcp = bind_one(0).unwrap();
        let s = SlotSockets::new(tcp, &path);
        let front = s.front.as_ref().expect("bound");
        let mode = std::fs::metadata(&front.path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        std::os::unix::net::UnixStream::connect(&path).expect("listening");
        // A path longer than sun_path allows: no front socket, the port still works.
        let long = dir.path().join("x".repeat(200));
        assert!(SlotSockets::new(bind_one(0).unwrap(), &long)
            .front
            .is_none());
    }

    #[test]
    fn parses_proc_net_tcp() {
        let table = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n\
   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 424242 1 0000000000000000 100 0 0 10 0\n\
   1: 0100007F:1F91 0100007F:1F90 01 00000000:00000000 00:00000000 00000000  1000        0 99 1 0000000000000000 100 0 0 10 0\n";
        assert_eq!(listening_inode(table, 8080), Some(424242));
        assert_eq!(listening_inode(table, 8081), None);
    }

    #[test]
    fn port_in_use_names_port_and_holder() {
        let held = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = held.local_addr().unwrap().port();
        match bind_one(port) {
            Err(BindFailure::InUse { port: p, holder }) => {
                assert_eq!(p, port);
                let holder = holder.expect("our own socket is visible in /proc");
                assert!(
                    holder.contains(&format!("pid {}", std::process::id())),
                    "{holder}"
                );
            }
            other => panic!("expected InUse, got {other:?}"),
        }
        // base_port 0: every slot gets its own free port.
        let ls = bind_all(0, 0..3).unwrap();
        let ports: std::collections::HashSet<u16> =
            ls.iter().map(|l| l.local_addr().unwrap().port()).collect();
        assert_eq!(ports.len(), 3);
    }
}
