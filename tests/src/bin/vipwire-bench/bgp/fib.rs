//! A netlink route monitor in the ToR's namespace: BIRD's kernel protocol exports every BGP
//! route into the FIB in the same event-loop pass that changes its RIB, so each RTM_NEWROUTE /
//! RTM_DELROUTE with `proto bird` marks a RIB change, timestamped when the monitor thread's
//! blocking `recv` returns. That is an event stream: no polling interval adds to what we measure.

use std::{
    collections::HashSet,
    net::Ipv4Addr,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
        mpsc,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use testkit::Netns;

const RTM_NEWROUTE: u16 = 24;
const RTM_DELROUTE: u16 = 25;
const RTMGRP_IPV4_ROUTE: u32 = 0x40;
const RTA_DST: u16 = 1;
const RTPROT_BIRD: u8 = 12;
const RT_TABLE_MAIN: u8 = 254;
const NLMSG_HDR: usize = 16;
const RTMSG: usize = 12;
/// Room for a 10,000-route burst (each message costs ~1 KiB of socket buffer).
const RCVBUF: libc::c_int = 64 << 20;

enum Event {
    Route {
        at: Instant,
        added: bool,
        dst: Ipv4Addr,
    },
    /// The kernel dropped messages (ENOBUFS): counts are no longer trustworthy.
    Overflow,
}

/// BIRD's IPv4 host routes in the namespace's main table, as they change.
pub struct FibWatch {
    rx: mpsc::Receiver<Event>,
    present: HashSet<Ipv4Addr>,
    /// When the set last went from empty to one route.
    first: Option<Instant>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl FibWatch {
    /// Subscribes to IPv4 route changes inside `ns`; returns once subscribed.
    pub fn start(ns: &Netns) -> Self {
        let path = format!("/run/netns/{}", ns.name());
        let (tx, rx) = mpsc::channel();
        let (ready_tx, ready_rx) = mpsc::channel();
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            super::enter_netns(&path);
            let fd = subscribe();
            ready_tx.send(()).expect("bench alive");
            receive(&fd, &tx, &stopped);
        });
        ready_rx
            .recv_timeout(Duration::from_secs(5))
            .expect("netlink monitor subscribed");
        Self {
            rx,
            present: HashSet::new(),
            first: None,
            stop,
            thread: Some(thread),
        }
    }

    /// How many BIRD host routes are in the FIB (as of the events consumed so far).
    pub fn count(&self) -> usize {
        self.present.len()
    }

    /// When the first route of the current set arrived.
    pub fn first_added(&self) -> Option<Instant> {
        self.first
    }

    /// Consumes events until `done(present set)` holds; returns the time of the event that
    /// made it true (now, if it already held), or `None` after `timeout`.
    pub fn wait(
        &mut self,
        timeout: Duration,
        mut done: impl FnMut(&HashSet<Ipv4Addr>) -> bool,
    ) -> Option<Instant> {
        if done(&self.present) {
            return Some(Instant::now());
        }
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.checked_duration_since(Instant::now())?;
            match self.rx.recv_timeout(left).ok()? {
                Event::Route { at, added, dst } => {
                    if added {
                        if self.present.is_empty() {
                            self.first = Some(at);
                        }
                        self.present.insert(dst);
                    } else {
                        self.present.remove(&dst);
                    }
                    if done(&self.present) {
                        return Some(at);
                    }
                }
                Event::Overflow => panic!(
                    "the netlink route monitor overflowed (ENOBUFS): raise RCVBUF in {}",
                    file!()
                ),
            }
        }
    }

    /// Waits until exactly `n` BIRD host routes are in the FIB.
    pub fn wait_count(&mut self, n: usize, timeout: Duration) -> Option<Instant> {
        self.wait(timeout, |present| present.len() == n)
    }

    /// Waits until `dst` is in (`present`) or out of the FIB.
    pub fn wait_route(
        &mut self,
        dst: Ipv4Addr,
        present: bool,
        timeout: Duration,
    ) -> Option<Instant> {
        self.wait(timeout, |set| set.contains(&dst) == present)
    }
}

impl Drop for FibWatch {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn subscribe() -> OwnedFd {
    // SAFETY: plain socket(2); the result is checked before it is wrapped.
    let raw = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            libc::NETLINK_ROUTE,
        )
    };
    assert!(
        raw >= 0,
        "netlink socket: {}",
        std::io::Error::last_os_error()
    );
    // SAFETY: `raw` is a fresh, owned descriptor.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    // A receive timeout lets the thread notice `stop`.
    let timeout = libc::timeval {
        tv_sec: 0,
        tv_usec: 100_000,
    };
    setsockopt(&fd, libc::SO_RCVBUFFORCE, &RCVBUF);
    setsockopt(&fd, libc::SO_RCVTIMEO, &timeout);
    // SAFETY: sockaddr_nl is plain data; all-zero is a valid value.
    let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
    addr.nl_family = libc::AF_NETLINK as libc::sa_family_t;
    addr.nl_groups = RTMGRP_IPV4_ROUTE;
    // SAFETY: `addr` is a valid sockaddr_nl of the given length.
    let rc = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            std::ptr::from_ref(&addr).cast(),
            std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0, "netlink bind: {}", std::io::Error::last_os_error());
    fd
}

fn setsockopt<T>(fd: &OwnedFd, option: libc::c_int, value: &T) {
    // SAFETY: `value` points to a live T of the given size.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            option,
            std::ptr::from_ref(value).cast(),
            std::mem::size_of::<T>() as libc::socklen_t,
        )
    };
    assert_eq!(
        rc,
        0,
        "setsockopt {option}: {}",
        std::io::Error::last_os_error()
    );
}

fn receive(fd: &OwnedFd, tx: &mpsc::Sender<Event>, stop: &AtomicBool) {
    let mut buf = vec![0u8; 1 << 16];
    while !stop.load(Ordering::Relaxed) {
        // SAFETY: `buf` is valid for `buf.len()` bytes.
        let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        let at = Instant::now();
        if n < 0 {
            match std::io::Error::last_os_error().raw_os_error() {
                Some(libc::EAGAIN | libc::EINTR) => continue,
                Some(libc::ENOBUFS) => {
                    let _ = tx.send(Event::Overflow);
                    continue;
                }
                _ => return,
            }
        }
        for (added, dst) in parse(&buf[..n as usize]) {
            if tx.send(Event::Route { at, added, dst }).is_err() {
                return;
            }
        }
    }
}

/// The BIRD IPv4 host routes added (true) or deleted in one netlink datagram.
fn parse(mut buf: &[u8]) -> Vec<(bool, Ipv4Addr)> {
    let mut out = Vec::new();
    while buf.len() >= NLMSG_HDR {
        let len = u32::from_ne_bytes(buf[..4].try_into().expect("4 bytes")) as usize;
        if len < NLMSG_HDR || len > buf.len() {
            break;
        }
        let kind = u16::from_ne_bytes([buf[4], buf[5]]);
        let msg = &buf[NLMSG_HDR..len];
        if matches!(kind, RTM_NEWROUTE | RTM_DELROUTE)
            && msg.len() >= RTMSG
            && msg[0] == libc::AF_INET as u8
            && msg[1] == 32
            && msg[4] == RT_TABLE_MAIN
            && msg[5] == RTPROT_BIRD
            && let Some(dst) = dst_attr(&msg[RTMSG..])
        {
            out.push((kind == RTM_NEWROUTE, dst));
        }
        buf = &buf[len.next_multiple_of(4).min(buf.len())..];
    }
    out
}

fn dst_attr(mut attrs: &[u8]) -> Option<Ipv4Addr> {
    while attrs.len() >= 4 {
        let len = usize::from(u16::from_ne_bytes([attrs[0], attrs[1]]));
        let kind = u16::from_ne_bytes([attrs[2], attrs[3]]);
        if len < 4 || len > attrs.len() {
            return None;
        }
        if kind == RTA_DST && len == 8 {
            return Some(Ipv4Addr::new(attrs[4], attrs[5], attrs[6], attrs[7]));
        }
        attrs = &attrs[len.next_multiple_of(4).min(attrs.len())..];
    }
    None
}
