//! Where a local pod is reached: the kernel's route to its address (`RTM_GETROUTE` over
//! rtnetlink, the same question `ip route get` asks) and the driver of the device it names
//! (`ETHTOOL_GDRVINFO`), so the TC program can `bpf_redirect_peer` straight into a veth pod.
//! Raw netlink through libc: two fixed-shape messages do not justify a netlink crate.

use std::{
    io,
    mem::size_of,
    net::IpAddr,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
};

/// How to reach one backend address.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Delivery {
    /// The device the route names; 0 when the route is not a plain unicast route out of a
    /// device (local, unreachable, none): the TC program then uses its FIB lookup.
    pub ifindex: u32,
    /// The device is the host side of a veth pair and the pod is directly on it (no gateway).
    pub veth: bool,
}

/// Looks up how `addr` is reached from the current network namespace. A missing route is
/// `Delivery::default()`, not an error: the pod may be gone already.
pub fn lookup(addr: IpAddr) -> io::Result<Delivery> {
    let Some(route) = get_route(addr)? else {
        return Ok(Delivery::default());
    };
    if route.kind != libc::RTN_UNICAST || route.oif == 0 {
        return Ok(Delivery::default());
    }
    let veth = !route.gateway
        && super::iface::name_of(route.oif)
            .and_then(|name| driver(&name).ok())
            .is_some_and(|d| d == "veth");
    Ok(Delivery {
        ifindex: route.oif,
        veth,
    })
}

/// The driver name of interface `name` (`veth`, `virtio_net`, ...), as `ethtool -i` shows it.
pub fn driver(name: &str) -> io::Result<String> {
    if name.len() >= libc::IF_NAMESIZE {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("interface name {name:?} is too long"),
        ));
    }
    let socket = socket(libc::AF_INET, libc::SOCK_DGRAM, 0)?;
    let mut info = EthtoolDrvinfo {
        cmd: ETHTOOL_GDRVINFO,
        ..EthtoolDrvinfo::default()
    };
    // SAFETY: ifreq is plain old data; all-zero is a valid value.
    let mut request: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in request.ifr_name.iter_mut().zip(name.bytes()) {
        *dst = src as libc::c_char;
    }
    request.ifr_ifru.ifru_data = (&raw mut info).cast();
    // SAFETY: SIOCETHTOOL reads ifr_name and the command at ifr_data, and writes at most
    // size_of::<EthtoolDrvinfo>() bytes there; both live until the call returns.
    let rc = unsafe { libc::ioctl(socket.as_raw_fd(), libc::SIOCETHTOOL, &mut request) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    let end = info.driver.iter().position(|&b| b == 0).unwrap_or(32);
    Ok(String::from_utf8_lossy(&info.driver[..end]).into_owned())
}

const ETHTOOL_GDRVINFO: u32 = 0x0000_0003;

/// `struct ethtool_drvinfo` (linux/ethtool.h).
#[repr(C)]
#[derive(Default)]
struct EthtoolDrvinfo {
    cmd: u32,
    driver: [u8; 32],
    version: [u8; 32],
    fw_version: [u8; 32],
    bus_info: [u8; 32],
    erom_version: [u8; 32],
    reserved2: [u8; 12],
    n_priv_flags: u32,
    n_stats: u32,
    testinfo_len: u32,
    eedump_len: u32,
    regdump_len: u32,
}

#[derive(Debug, PartialEq, Eq)]
struct Route {
    kind: u8,
    oif: u32,
    gateway: bool,
}

const NLMSG_HDR: usize = 16;
const RTMSG: usize = 12;

fn get_route(addr: IpAddr) -> io::Result<Option<Route>> {
    let (family, bytes): (u8, Vec<u8>) = match addr {
        IpAddr::V4(a) => (libc::AF_INET as u8, a.octets().to_vec()),
        IpAddr::V6(a) => (libc::AF_INET6 as u8, a.octets().to_vec()),
    };
    let attr_len = 4 + bytes.len();
    let total = NLMSG_HDR + RTMSG + attr_len;
    let mut msg = Vec::with_capacity(total);
    // struct nlmsghdr
    msg.extend_from_slice(&(total as u32).to_ne_bytes());
    msg.extend_from_slice(&libc::RTM_GETROUTE.to_ne_bytes());
    msg.extend_from_slice(&(libc::NLM_F_REQUEST as u16).to_ne_bytes());
    msg.extend_from_slice(&1u32.to_ne_bytes()); // seq
    msg.extend_from_slice(&0u32.to_ne_bytes()); // pid: the kernel
    // struct rtmsg: family, dst_len, src_len, tos, table, protocol, scope, type, flags
    msg.extend_from_slice(&[family, (bytes.len() * 8) as u8, 0, 0, 0, 0, 0, 0]);
    msg.extend_from_slice(&0u32.to_ne_bytes());
    // RTA_DST
    msg.extend_from_slice(&(attr_len as u16).to_ne_bytes());
    msg.extend_from_slice(&libc::RTA_DST.to_ne_bytes());
    msg.extend_from_slice(&bytes);

    let socket = socket(libc::AF_NETLINK, libc::SOCK_RAW, libc::NETLINK_ROUTE)?;
    // SAFETY: msg is a valid buffer of msg.len() bytes; a NULL address sends to the kernel
    // on an unbound netlink socket.
    let sent = unsafe { libc::send(socket.as_raw_fd(), msg.as_ptr().cast(), msg.len(), 0) };
    if sent < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut buf = vec![0u8; 8192];
    // SAFETY: buf is a writable buffer of buf.len() bytes.
    let received = unsafe { libc::recv(socket.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
    if received < 0 {
        return Err(io::Error::last_os_error());
    }
    parse_reply(&buf[..received as usize])
}

/// Parses the kernel's answer: an `RTM_NEWROUTE` with the route, or an `NLMSG_ERROR` (no
/// route: `None`; another errno: an error).
fn parse_reply(buf: &[u8]) -> io::Result<Option<Route>> {
    let bad = || io::Error::new(io::ErrorKind::InvalidData, "short rtnetlink reply");
    let u16_at = |b: &[u8], at: usize| -> io::Result<u16> {
        Ok(u16::from_ne_bytes(
            b.get(at..at + 2)
                .ok_or_else(bad)?
                .try_into()
                .map_err(|_| bad())?,
        ))
    };
    let u32_at = |b: &[u8], at: usize| -> io::Result<u32> {
        Ok(u32::from_ne_bytes(
            b.get(at..at + 4)
                .ok_or_else(bad)?
                .try_into()
                .map_err(|_| bad())?,
        ))
    };
    let len = (u32_at(buf, 0)? as usize).min(buf.len());
    let kind = u16_at(buf, 4)?;
    if kind == libc::NLMSG_ERROR as u16 {
        let errno = -(u32_at(buf, NLMSG_HDR)? as i32);
        return match errno {
            0 => Ok(None),
            libc::ENETUNREACH | libc::EHOSTUNREACH | libc::ESRCH | libc::ENOENT => Ok(None),
            errno => Err(io::Error::from_raw_os_error(errno)),
        };
    }
    if kind != libc::RTM_NEWROUTE {
        return Err(bad());
    }
    let rtm = buf.get(NLMSG_HDR..NLMSG_HDR + RTMSG).ok_or_else(bad)?;
    let mut route = Route {
        kind: rtm[7],
        oif: 0,
        gateway: false,
    };
    let mut at = NLMSG_HDR + RTMSG;
    while at + 4 <= len {
        let attr_len = u16_at(buf, at)? as usize;
        let attr_type = u16_at(buf, at + 2)?;
        if attr_len < 4 {
            break;
        }
        match attr_type {
            libc::RTA_OIF => route.oif = u32_at(buf, at + 4)?,
            libc::RTA_GATEWAY | libc::RTA_VIA => route.gateway = true,
            _ => {}
        }
        at += attr_len.div_ceil(4) * 4;
    }
    Ok(Some(route))
}

fn socket(domain: i32, kind: i32, protocol: i32) -> io::Result<OwnedFd> {
    // SAFETY: plain socket(2) call; the fd is owned below.
    let fd = unsafe { libc::socket(domain, kind | libc::SOCK_CLOEXEC, protocol) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh, valid descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

const _: () = assert!(size_of::<EthtoolDrvinfo>() == 196);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_addresses_are_local_routes_not_devices() {
        // 127.0.0.1 routes as RTN_LOCAL: no device to redirect to.
        assert_eq!(
            lookup("127.0.0.1".parse().unwrap()).unwrap(),
            Delivery::default()
        );
        assert_eq!(driver("lo").ok().as_deref().unwrap_or("none"), "none");
    }

    #[test]
    fn garbage_replies_are_errors_not_panics() {
        assert!(parse_reply(&[]).is_err());
        assert!(parse_reply(&[40, 0, 0, 0, 24, 0]).is_err());
        let mut reply = vec![0u8; 40];
        reply[..4].copy_from_slice(&40u32.to_ne_bytes());
        reply[4..6].copy_from_slice(&libc::RTM_NEWROUTE.to_ne_bytes());
        reply[NLMSG_HDR + 7] = libc::RTN_UNICAST;
        // RTA_OIF = 7, then a truncated attribute.
        reply[28..30].copy_from_slice(&8u16.to_ne_bytes());
        reply[30..32].copy_from_slice(&libc::RTA_OIF.to_ne_bytes());
        reply[32..36].copy_from_slice(&7u32.to_ne_bytes());
        reply[36..38].copy_from_slice(&200u16.to_ne_bytes());
        assert_eq!(
            parse_reply(&reply).unwrap(),
            Some(Route {
                kind: libc::RTN_UNICAST,
                oif: 7,
                gateway: false
            })
        );
    }
}
