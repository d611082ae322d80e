//! L2 ownership announcements: when this node takes a VIP over, it tells the segment at once
//! (gratuitous ARP / unsolicited Neighbor Advertisement) instead of waiting for caches to
//! expire, repeated a few times as MetalLB does, in case one is lost.

pub mod frames;

use std::{io, net::IpAddr, time::Duration};

/// How many announcements per takeover, and how far apart.
pub const REPEATS: u32 = 3;
pub const SPACING: Duration = Duration::from_secs(1);

/// Sends the announcement for `addr` from `mac` out of `ifindex` once (raw, bypassing routing).
pub fn send_once(ifindex: u32, mac: [u8; 6], addr: IpAddr) -> io::Result<()> {
    let frame = match addr {
        IpAddr::V4(ip) => frames::gratuitous_arp(mac, ip),
        IpAddr::V6(ip) => frames::unsolicited_na(mac, ip),
    };
    send_raw(ifindex, &frame)
}

/// Announces `addr` [`REPEATS`] times, [`SPACING`] apart; failures are logged, not fatal
/// (the XDP program answers requests regardless).
pub fn spawn_announcements(interface: String, ifindex: u32, mac: [u8; 6], addr: IpAddr) {
    tokio::spawn(async move {
        for attempt in 0..REPEATS {
            if attempt > 0 {
                tokio::time::sleep(SPACING).await;
            }
            match send_once(ifindex, mac, addr) {
                Ok(()) => {}
                // The device queue is full (a mass takeover): this repeat is dropped, the
                // next may go through; the XDP program answers requests meanwhile.
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => {
                    tracing::debug!(%addr, interface, "L2 announcement dropped: queue full");
                }
                Err(err) => {
                    tracing::warn!(%addr, interface, error = %err, "sending an L2 announcement failed");
                    return;
                }
            }
        }
        tracing::info!(%addr, interface, repeats = REPEATS, "announced VIP takeover");
    });
}

fn send_raw(ifindex: u32, frame: &[u8]) -> io::Result<()> {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

    // Protocol 0: a send-only packet socket that receives nothing.
    // SAFETY: plain socket(2); the fd is owned right below.
    let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is fresh and valid, owned by nothing else.
    let socket = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: sockaddr_ll is plain old data; all-zero is valid.
    let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    addr.sll_family = libc::AF_PACKET as u16;
    addr.sll_ifindex = ifindex as i32;
    addr.sll_halen = 6;
    addr.sll_addr[..6].copy_from_slice(&frame[..6]);
    // SAFETY: frame and addr are valid for the lengths passed.
    let sent = unsafe {
        libc::sendto(
            socket.as_raw_fd(),
            frame.as_ptr().cast(),
            frame.len(),
            // Never block a runtime worker on a full device queue.
            libc::MSG_DONTWAIT,
            (&addr as *const libc::sockaddr_ll).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as u32,
        )
    };
    if sent < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
