//! L2 ownership announcements: when this node takes a VIP over, it tells the segment at once
//! (gratuitous ARP / unsolicited Neighbor Advertisement) instead of waiting for caches to
//! expire, repeated a few times as MetalLB does, in case one is lost.
//!
//! One [`Announcer`] task sends them all, through one packet socket per interface, paced
//! ([`BATCH`] frames per [`PACE`]). A takeover of thousands of VIPs at once (the agent's first
//! reconcile) used to spawn a task and open a socket per frame: closing an `AF_PACKET` socket
//! waits for an RCU grace period, so tens of thousands of closes starved the runtime for
//! minutes. Now a mass takeover is a queue drained at a bounded rate, off the reconcile path.

pub mod frames;

use std::{
    collections::{HashMap, VecDeque},
    io,
    net::IpAddr,
    os::fd::OwnedFd,
    time::Duration,
};

use tokio::{sync::mpsc, time::Instant};

use crate::coalesce::sleep_until_opt;

/// How many announcements per takeover, and how far apart.
pub const REPEATS: u32 = 3;
pub const SPACING: Duration = Duration::from_secs(1);
/// At most this many frames per [`PACE`] (64k frames/s: 10,000 VIPs in about 160 ms a round).
pub const BATCH: usize = 64;
pub const PACE: Duration = Duration::from_millis(1);
/// A repeat that finds the device queue full this many times in a row is dropped.
const MAX_BLOCKED: u32 = 100;

/// Sends the announcement for `addr` from `mac` out of `ifindex` once (raw, bypassing routing),
/// on a socket of its own.
pub fn send_once(ifindex: u32, mac: [u8; 6], addr: IpAddr) -> io::Result<()> {
    send_raw(&packet_socket()?, ifindex, &frame(mac, addr))
}

fn frame(mac: [u8; 6], addr: IpAddr) -> Vec<u8> {
    match addr {
        IpAddr::V4(ip) => frames::gratuitous_arp(mac, ip),
        IpAddr::V6(ip) => frames::unsolicited_na(mac, ip),
    }
}

/// One takeover to announce.
#[derive(Clone, Debug)]
struct Request {
    interface: String,
    ifindex: u32,
    mac: [u8; 6],
    addr: IpAddr,
}

struct Pending {
    request: Request,
    sent: u32,
    blocked: u32,
    due: Instant,
}

/// The handle of the announcing task; the task ends when every handle is gone and its queue
/// is empty.
#[derive(Clone, Debug)]
pub struct Announcer {
    tx: mpsc::UnboundedSender<Request>,
}

impl Announcer {
    /// Starts the task on the current tokio runtime.
    pub fn spawn() -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(announce(rx));
        Self { tx }
    }

    /// Queues [`REPEATS`] announcements of `addr`, [`SPACING`] apart; failures are logged, not
    /// fatal (the XDP program answers requests regardless).
    pub fn announce(&self, interface: &str, ifindex: u32, mac: [u8; 6], addr: IpAddr) {
        let _ = self.tx.send(Request {
            interface: interface.to_owned(),
            ifindex,
            mac,
            addr,
        });
    }
}

async fn announce(mut rx: mpsc::UnboundedReceiver<Request>) {
    let mut sockets: HashMap<u32, OwnedFd> = HashMap::new();
    // New takeovers, first sends; repeats, due in time order (each is scheduled SPACING after
    // a send, and sends happen in time order).
    let mut fresh: VecDeque<Pending> = VecDeque::new();
    let mut repeats: VecDeque<Pending> = VecDeque::new();
    let mut open = true;
    loop {
        let now = Instant::now();
        for _ in 0..BATCH {
            let next = if repeats.front().is_some_and(|p| p.due <= now) {
                repeats.pop_front()
            } else {
                fresh.pop_front()
            };
            let Some(mut pending) = next else {
                break;
            };
            match send(&mut sockets, &pending.request) {
                Ok(()) => {}
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => {
                    // The device queue is full: try again next round, a bounded number of times.
                    pending.blocked += 1;
                    if pending.blocked < MAX_BLOCKED {
                        fresh.push_front(pending);
                        break;
                    }
                    tracing::debug!(addr = %pending.request.addr, interface = pending.request.interface, "L2 announcement dropped: queue full");
                }
                Err(err) => {
                    let Request {
                        addr, interface, ..
                    } = &pending.request;
                    tracing::warn!(%addr, interface, error = %err, "sending an L2 announcement failed");
                    sockets.remove(&pending.request.ifindex);
                    continue;
                }
            }
            pending.sent += 1;
            pending.blocked = 0;
            if pending.sent < REPEATS {
                pending.due = now + SPACING;
                repeats.push_back(pending);
            } else {
                let Request {
                    addr, interface, ..
                } = &pending.request;
                tracing::info!(%addr, interface, repeats = REPEATS, "announced VIP takeover");
            }
        }
        if !open && fresh.is_empty() && repeats.is_empty() {
            return;
        }
        let busy = !fresh.is_empty() || repeats.front().is_some_and(|p| p.due <= Instant::now());
        let wake = if busy {
            Some(Instant::now() + PACE)
        } else {
            repeats.front().map(|p| p.due)
        };
        tokio::select! {
            request = rx.recv(), if open => match request {
                Some(request) => fresh.push_back(Pending {
                    request,
                    sent: 0,
                    blocked: 0,
                    due: Instant::now(),
                }),
                None => open = false,
            },
            () = sleep_until_opt(wake) => {}
        }
    }
}

/// Sends one announcement on the interface's socket, opened on first use.
fn send(sockets: &mut HashMap<u32, OwnedFd>, request: &Request) -> io::Result<()> {
    let socket = match sockets.entry(request.ifindex) {
        std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
        std::collections::hash_map::Entry::Vacant(e) => e.insert(packet_socket()?),
    };
    send_raw(socket, request.ifindex, &frame(request.mac, request.addr))
}

/// A send-only packet socket (protocol 0: it receives nothing).
fn packet_socket() -> io::Result<OwnedFd> {
    use std::os::fd::FromRawFd;
    // SAFETY: plain socket(2); the fd is owned right below.
    let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is fresh and valid, owned by nothing else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn send_raw(socket: &OwnedFd, ifindex: u32, frame: &[u8]) -> io::Result<()> {
    use std::os::fd::AsRawFd;

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
