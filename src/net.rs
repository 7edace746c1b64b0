//! Listening sockets with a real backlog. `std::net::TcpListener::bind` listens with a backlog of
//! 128: a burst of new connections beyond that (2,000 clients opening streams at once, measured in
//! `bench/run.sh`) overflows the accept queue and those clients wait out the kernel's 1 s SYN
//! retransmit. Every listener of the product (front, worker ports, standalone worker) uses this.

use nix::sys::socket::{
    bind, listen as nix_listen, setsockopt, socket, sockopt, AddressFamily, Backlog, SockFlag,
    SockType, SockaddrStorage,
};
use std::net::SocketAddr;

/// Accept-queue length asked for: `SOMAXCONN` (4096), the most `listen(2)` takes without
/// clamping; the kernel caps it further at `net.core.somaxconn` (4096 by default since Linux
/// 5.4). Not 1024: with 10,000 clients connecting at once (bench_load with
/// `BENCH_OPENING=10000`), 1024 was the bound, not the sysctl, and every connect past it waited
/// out a SYN retransmit (1 s, then 3 s). The queue costs nothing until it fills.
pub const BACKLOG: Backlog = Backlog::MAXCONN;

/// Binds `addr` (with `SO_REUSEADDR`, as std does) and listens with `BACKLOG`. The socket is
/// close-on-exec and blocking, like std's.
pub fn listen(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    let family = if addr.is_ipv4() {
        AddressFamily::Inet
    } else {
        AddressFamily::Inet6
    };
    let fd = socket(family, SockType::Stream, SockFlag::SOCK_CLOEXEC, None)?;
    setsockopt(&fd, sockopt::ReuseAddr, &true)?;
    bind(
        std::os::fd::AsRawFd::as_raw_fd(&fd),
        &SockaddrStorage::from(addr),
    )?;
    nix_listen(&fd, BACKLOG)?;
    Ok(std::net::TcpListener::from(fd))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listens_and_reports_address_in_use() {
        let l = listen("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = l.local_addr().unwrap();
        let c = std::net::TcpStream::connect(addr).unwrap();
        let (s, _) = l.accept().unwrap();
        assert_eq!(s.peer_addr().unwrap(), c.local_addr().unwrap());
        let e = listen(addr).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::AddrInUse);
        // The backlog really is above std's 128: 300 connections complete without accept().
        let l = listen("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = l.local_addr().unwrap();
        let conns: Vec<_> = (0..300)
            .map(|_| std::net::TcpStream::connect(addr))
            .collect();
        assert!(conns.iter().all(|c| c.is_ok()));
    }
}
