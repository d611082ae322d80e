//! Interface facts the dataplane needs, read in the caller's network namespace through ioctls
//! (not /sys/class/net, which shows the namespace sysfs was mounted in, not the current one).

use std::io;

/// An interface's index and MAC address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IfaceInfo {
    pub ifindex: u32,
    pub mac: [u8; 6],
}

/// Looks up `name` in the current network namespace.
pub fn lookup(name: &str) -> io::Result<IfaceInfo> {
    let ifindex = nix::net::if_::if_nametoindex(name)
        .map_err(|e| io::Error::new(io::ErrorKind::NotFound, format!("interface {name}: {e}")))?;
    Ok(IfaceInfo {
        ifindex,
        mac: hardware_address(name)?,
    })
}

/// The name of `ifindex` in the current network namespace, if it exists.
pub fn name_of(ifindex: u32) -> Option<String> {
    let mut buf = [0 as libc::c_char; libc::IF_NAMESIZE];
    // SAFETY: buf has IF_NAMESIZE bytes, as if_indextoname requires.
    let ptr = unsafe { libc::if_indextoname(ifindex, buf.as_mut_ptr()) };
    if ptr.is_null() {
        return None;
    }
    // SAFETY: on success the buffer holds a NUL-terminated name.
    let name = unsafe { std::ffi::CStr::from_ptr(buf.as_ptr()) };
    Some(name.to_string_lossy().into_owned())
}

/// The first IPv4 address on `name` in the current network namespace (the BGP router id
/// default).
pub fn first_ipv4(name: &str) -> Option<std::net::Ipv4Addr> {
    nix::ifaddrs::getifaddrs()
        .ok()?
        .filter(|a| a.interface_name == name)
        .find_map(|a| a.address?.as_sockaddr_in().map(|sin| sin.ip()))
}

fn hardware_address(name: &str) -> io::Result<[u8; 6]> {
    if name.len() >= libc::IF_NAMESIZE {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("interface name {name:?} is too long"),
        ));
    }
    // SAFETY: plain socket(2) call; the fd is owned below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh, valid descriptor that nothing else owns.
    let socket = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    // SAFETY: ifreq is plain old data; all-zero is a valid value.
    let mut request: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in request.ifr_name.iter_mut().zip(name.bytes()) {
        *dst = src as libc::c_char;
    }
    // SAFETY: SIOCGIFHWADDR reads ifr_name and writes ifr_hwaddr of the ifreq we own.
    let rc = unsafe {
        libc::ioctl(
            std::os::fd::AsRawFd::as_raw_fd(&socket),
            libc::SIOCGIFHWADDR,
            &mut request,
        )
    };
    if rc < 0 {
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!("interface {name}: {}", io::Error::last_os_error()),
        ));
    }
    // SAFETY: the kernel filled ifru_hwaddr for SIOCGIFHWADDR.
    let data = unsafe { request.ifr_ifru.ifru_hwaddr.sa_data };
    let mut mac = [0u8; 6];
    for (dst, src) in mac.iter_mut().zip(data.iter()) {
        *dst = *src as u8;
    }
    Ok(mac)
}

#[cfg(test)]
mod tests {
    #[test]
    fn loopback_has_index_one_and_a_zero_mac() {
        let lo = super::lookup("lo").unwrap();
        assert_eq!(lo.ifindex, 1);
        assert_eq!(lo.mac, [0; 6]);
        assert_eq!(super::name_of(1).as_deref(), Some("lo"));
        assert!(super::lookup("no-such-if0").is_err());
        assert_eq!(super::first_ipv4("lo"), Some(std::net::Ipv4Addr::LOCALHOST));
    }
}
