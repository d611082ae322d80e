//! Socket set-up for sessions: outgoing connections and listeners, with TCP-MD5 (RFC 2385).

use std::{
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    os::fd::AsRawFd,
};

use tokio::net::{TcpSocket, TcpStream};

use super::wire::Family;

/// Connects to `addr`, with TCP-MD5 when `password` is set.
pub(crate) async fn connect(addr: SocketAddr, password: Option<&str>) -> io::Result<TcpStream> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    if let Some(password) = password {
        set_md5(&socket, addr.ip(), password)?;
    }
    socket.connect(addr).await
}

/// A listening socket on `port` of every address of `family` (IPv6 only for IPv6), with a
/// TCP-MD5 key per peer in `keys`.
pub(crate) fn listener(
    family: Family,
    port: u16,
    keys: &[(IpAddr, &str)],
) -> io::Result<tokio::net::TcpListener> {
    let (socket, any) = match family {
        Family::Ipv4 => (TcpSocket::new_v4()?, IpAddr::from(Ipv4Addr::UNSPECIFIED)),
        Family::Ipv6 => {
            let socket = TcpSocket::new_v6()?;
            let one: libc::c_int = 1;
            // SAFETY: setsockopt(2) reads one c_int.
            let rc = unsafe {
                libc::setsockopt(
                    socket.as_raw_fd(),
                    libc::IPPROTO_IPV6,
                    libc::IPV6_V6ONLY,
                    (&raw const one).cast(),
                    std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                )
            };
            if rc != 0 {
                return Err(io::Error::last_os_error());
            }
            (socket, IpAddr::from(Ipv6Addr::UNSPECIFIED))
        }
    };
    socket.set_reuseaddr(true)?;
    for (addr, password) in keys {
        set_md5(&socket, *addr, password)?;
    }
    socket.bind(SocketAddr::new(any, port))?;
    socket.listen(64)
}

/// `TCP_MD5SIG` from linux/tcp.h (libc does not export it for Linux).
const TCP_MD5SIG: libc::c_int = 14;
const TCP_MD5SIG_MAXKEYLEN: usize = 80;

/// `struct tcp_md5sig` from linux/tcp.h.
#[repr(C)]
struct TcpMd5Sig {
    addr: libc::sockaddr_storage,
    flags: u8,
    prefixlen: u8,
    keylen: u16,
    ifindex: libc::c_int,
    key: [u8; TCP_MD5SIG_MAXKEYLEN],
}

/// Installs the RFC 2385 key for `peer` on `socket` (before connect or listen).
pub(crate) fn set_md5(socket: &impl AsRawFd, peer: IpAddr, password: &str) -> io::Result<()> {
    let key = password.as_bytes();
    if key.len() > TCP_MD5SIG_MAXKEYLEN {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "TCP-MD5 password longer than 80 bytes",
        ));
    }
    // SAFETY: all-zero is a valid value of this plain C struct.
    let mut sig: TcpMd5Sig = unsafe { std::mem::zeroed() };
    match peer {
        IpAddr::V4(ip) => {
            // SAFETY: sockaddr_storage is large and aligned enough for sockaddr_in.
            let sin = unsafe { &mut *(&raw mut sig.addr).cast::<libc::sockaddr_in>() };
            sin.sin_family = libc::AF_INET as libc::sa_family_t;
            sin.sin_addr.s_addr = u32::from(ip).to_be();
        }
        IpAddr::V6(ip) => {
            // SAFETY: sockaddr_storage is large and aligned enough for sockaddr_in6.
            let sin6 = unsafe { &mut *(&raw mut sig.addr).cast::<libc::sockaddr_in6>() };
            sin6.sin6_family = libc::AF_INET6 as libc::sa_family_t;
            sin6.sin6_addr.s6_addr = ip.octets();
        }
    }
    sig.keylen = key.len() as u16;
    sig.key[..key.len()].copy_from_slice(key);
    // SAFETY: setsockopt(2) reads size_of::<TcpMd5Sig>() bytes from a valid struct.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_TCP,
            TCP_MD5SIG,
            (&raw const sig).cast(),
            std::mem::size_of::<TcpMd5Sig>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}
