//! Raw L2 probing from inside a lab namespace: ARP requests with a per-probe deadline, and
//! listening for gratuitous ARP. Sockets are opened in the namespace (by a short-lived thread
//! that joins it) and keep working from any thread afterwards.

use std::{
    net::Ipv4Addr,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    time::{Duration, Instant},
};

use crate::{
    netlab::Netns,
    packets::{Arp, ETH_P_ARP, Mac},
};

/// Runs `f` in a thread that has joined `ns`'s network namespace.
pub fn in_netns<T: Send + 'static>(ns: &Netns, f: impl FnOnce() -> T + Send + 'static) -> T {
    let path = format!("/run/netns/{}", ns.name());
    std::thread::spawn(move || {
        let file = std::fs::File::open(&path).unwrap_or_else(|e| panic!("opening {path}: {e}"));
        // SAFETY: setns(2) on a valid namespace fd; it only changes this thread's namespace.
        let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns {path}: {}", std::io::Error::last_os_error());
        f()
    })
    .join()
    .expect("netns thread panicked")
}

/// An ARP socket bound to one interface of a lab namespace.
pub struct ArpProber {
    fd: OwnedFd,
    ifindex: u32,
    mac: Mac,
    src: Ipv4Addr,
}

impl ArpProber {
    /// Opens an ARP socket on `ifname` in `ns`; requests carry `src` as sender IP.
    pub fn open(ns: &Netns, ifname: &str, src: Ipv4Addr) -> Self {
        let ifindex = ns.ifindex(ifname);
        let mac = ns.mac(ifname);
        let fd = in_netns(ns, move || {
            let proto = (ETH_P_ARP).to_be();
            // SAFETY: plain socket(2); the fd is owned right below.
            let fd = unsafe {
                libc::socket(
                    libc::AF_PACKET,
                    libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                    i32::from(proto),
                )
            };
            assert!(
                fd >= 0,
                "AF_PACKET socket: {}",
                std::io::Error::last_os_error()
            );
            // SAFETY: fd is fresh and owned by nothing else.
            let fd = unsafe { OwnedFd::from_raw_fd(fd) };
            // SAFETY: sockaddr_ll is plain old data.
            let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
            addr.sll_family = libc::AF_PACKET as u16;
            addr.sll_protocol = proto;
            addr.sll_ifindex = ifindex as i32;
            // SAFETY: addr is a valid sockaddr_ll for bind(2).
            let rc = unsafe {
                libc::bind(
                    fd.as_raw_fd(),
                    (&addr as *const libc::sockaddr_ll).cast(),
                    std::mem::size_of::<libc::sockaddr_ll>() as u32,
                )
            };
            assert_eq!(rc, 0, "bind AF_PACKET: {}", std::io::Error::last_os_error());
            fd
        });
        Self {
            fd,
            ifindex,
            mac,
            src,
        }
    }

    /// Sends one who-has for `target` and waits up to `timeout` for the reply; returns the
    /// replier's MAC.
    pub fn probe(&self, target: Ipv4Addr, timeout: Duration) -> Option<Mac> {
        self.drain();
        self.send(&Arp::request(self.mac, self.src, target).build());
        let deadline = Instant::now() + timeout;
        while let Some(frame) = self.recv_until(deadline) {
            if let Some((op, sha, spa, _tpa)) = parse_arp(&frame)
                && op == 2
                && spa == target
            {
                return Some(sha);
            }
        }
        None
    }

    /// Counts gratuitous ARPs (sender IP = target IP = `vip`) seen within `window`, with the
    /// sender MAC of the last one.
    pub fn gratuitous_seen(&self, vip: Ipv4Addr, window: Duration) -> (usize, Option<Mac>) {
        let deadline = Instant::now() + window;
        let mut count = 0;
        let mut mac = None;
        while let Some(frame) = self.recv_until(deadline) {
            if let Some((_, sha, spa, tpa)) = parse_arp(&frame)
                && spa == vip
                && tpa == vip
            {
                count += 1;
                mac = Some(sha);
            }
        }
        (count, mac)
    }

    fn send(&self, frame: &[u8]) {
        // SAFETY: sockaddr_ll is plain old data.
        let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        addr.sll_family = libc::AF_PACKET as u16;
        addr.sll_ifindex = self.ifindex as i32;
        addr.sll_halen = 6;
        addr.sll_addr[..6].copy_from_slice(&frame[..6]);
        // SAFETY: frame and addr are valid for the lengths given.
        let sent = unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                frame.as_ptr().cast(),
                frame.len(),
                0,
                (&addr as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        assert!(sent >= 0, "sendto: {}", std::io::Error::last_os_error());
    }

    /// Discards whatever is queued (replies to earlier probes).
    fn drain(&self) {
        while self.recv_until(Instant::now()).is_some() {}
    }

    fn recv_until(&self, deadline: Instant) -> Option<Vec<u8>> {
        let timeout = deadline.saturating_duration_since(Instant::now());
        let mut pollfd = libc::pollfd {
            fd: self.fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        let ready = unsafe { libc::poll(&mut pollfd, 1, timeout.as_millis() as i32) };
        if ready <= 0 {
            return None;
        }
        let mut buf = vec![0u8; 2048];
        // SAFETY: buf is valid for its length.
        let n = unsafe {
            libc::recv(
                self.fd.as_raw_fd(),
                buf.as_mut_ptr().cast(),
                buf.len(),
                libc::MSG_DONTWAIT,
            )
        };
        if n < 0 {
            return None;
        }
        buf.truncate(n as usize);
        Some(buf)
    }
}

/// (op, sender MAC, sender IP, target IP) of an Ethernet/IPv4 ARP frame.
fn parse_arp(frame: &[u8]) -> Option<(u16, Mac, Ipv4Addr, Ipv4Addr)> {
    if frame.len() < 42 || frame[12..14] != ETH_P_ARP.to_be_bytes() {
        return None;
    }
    let arp = &frame[14..];
    let op = u16::from_be_bytes([arp[6], arp[7]]);
    let sha: Mac = arp[8..14].try_into().ok()?;
    let spa = Ipv4Addr::new(arp[14], arp[15], arp[16], arp[17]);
    let tpa = Ipv4Addr::new(arp[24], arp[25], arp[26], arp[27]);
    Some((op, sha, spa, tpa))
}
