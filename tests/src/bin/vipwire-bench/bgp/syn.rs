//! When a BGP session's TCP connection starts: an AF_PACKET socket in the ToR's namespace with a
//! classic BPF filter that passes only IPv4 TCP segments with SYN set, timestamped on receipt.
//! BIRD's first connect comes 0.75-1 s after `birdc enable` (its connect timer is at least 1 s,
//! randomized per RFC 4271), so a cold session is timed from its SYN, not from the command.

use std::{
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use testkit::Netns;

const ETH_P_ALL: u16 = 0x0003;

/// ethertype IPv4, protocol TCP, flags & SYN (IHL 5: BIRD, gobgpd and the speaker send no IP
/// options).
const FILTER: [libc::sock_filter; 8] = [
    op(0x28, 0, 0, 12),     // ldh [12]
    op(0x15, 0, 5, 0x0800), // jeq IPv4
    op(0x30, 0, 0, 23),     // ldb [23]
    op(0x15, 0, 3, 6),      // jeq TCP
    op(0x30, 0, 0, 47),     // ldb [47]
    op(0x45, 0, 1, 0x02),   // jset SYN
    op(0x06, 0, 0, 0xffff), // accept
    op(0x06, 0, 0, 0),      // drop
];

const fn op(code: u16, jt: u8, jf: u8, k: u32) -> libc::sock_filter {
    libc::sock_filter { code, jt, jf, k }
}

/// Every SYN (and SYN-ACK) seen in a namespace.
pub struct SynWatch {
    seen: Arc<Mutex<Vec<Instant>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl SynWatch {
    pub fn start(ns: &Netns) -> Self {
        let path = format!("/run/netns/{}", ns.name());
        let seen = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let thread = {
            let (seen, stop) = (Arc::clone(&seen), Arc::clone(&stop));
            std::thread::spawn(move || {
                super::enter_netns(&path);
                let fd = open();
                ready_tx.send(()).expect("bench alive");
                let mut buf = [0u8; 128];
                while !stop.load(Ordering::Relaxed) {
                    // SAFETY: `buf` is valid for its length; only the timing matters.
                    let n = unsafe {
                        libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0)
                    };
                    if n > 0 {
                        let at = Instant::now();
                        seen.lock().unwrap_or_else(|e| e.into_inner()).push(at);
                    }
                }
            })
        };
        ready_rx
            .recv_timeout(Duration::from_secs(5))
            .expect("packet socket open");
        Self {
            seen,
            stop,
            thread: Some(thread),
        }
    }

    /// The last SYN at or before `t`: the connection that carried the routes seen at `t`.
    pub fn last_before(&self, t: Instant) -> Option<Instant> {
        let seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        seen.iter().rev().find(|&&s| s <= t).copied()
    }
}

impl Drop for SynWatch {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn open() -> OwnedFd {
    // SAFETY: plain socket(2); the result is checked before it is wrapped.
    let raw = unsafe {
        libc::socket(
            libc::AF_PACKET,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            i32::from(ETH_P_ALL.to_be()),
        )
    };
    assert!(
        raw >= 0,
        "packet socket: {}",
        std::io::Error::last_os_error()
    );
    // SAFETY: `raw` is a fresh, owned descriptor.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    let program = libc::sock_fprog {
        len: FILTER.len() as u16,
        filter: FILTER.as_ptr().cast_mut(),
    };
    // A receive timeout lets the thread notice `stop`.
    let timeout = libc::timeval {
        tv_sec: 0,
        tv_usec: 100_000,
    };
    for (option, value, len) in [
        (
            libc::SO_ATTACH_FILTER,
            std::ptr::from_ref(&program).cast::<libc::c_void>(),
            size_of::<libc::sock_fprog>(),
        ),
        (
            libc::SO_RCVTIMEO,
            std::ptr::from_ref(&timeout).cast(),
            size_of::<libc::timeval>(),
        ),
    ] {
        // SAFETY: `value` points to a live value of `len` bytes; the kernel copies the filter.
        let rc = unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                option,
                value,
                len as libc::socklen_t,
            )
        };
        assert_eq!(
            rc,
            0,
            "setsockopt {option}: {}",
            std::io::Error::last_os_error()
        );
    }
    fd
}
