//! The servers inside a pod: threads of the test process serving sockets that were opened in
//! the pod's network namespace (a socket stays in the namespace it was made in, whichever
//! thread uses it). Every answer names the pod and the peer address it saw, so a test can
//! check that the pod saw the client's real address. Stopped and joined on drop.

use std::{
    io::{BufRead, BufReader, ErrorKind, Write},
    net::{SocketAddr, TcpListener, TcpStream, UdpSocket},
    os::fd::AsRawFd,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread::JoinHandle,
    time::Duration,
};

use super::{SINK, TCP, UDP};
use crate::{netlab::Netns, probe::in_netns};

/// The largest bulk reply a request may ask for.
pub const MAX_BULK: usize = 64 << 20;

/// How often blocked server threads look at the stop flag.
const TICK: Duration = Duration::from_millis(100);

/// The servers of one pod: TCP and UDP request/response and the UDP sink.
pub struct PodServers {
    stop: Arc<AtomicBool>,
    threads: Arc<Mutex<Vec<JoinHandle<()>>>>,
    counters: Arc<Counters>,
    /// Bound, never read: datagrams sent to it are counted by the kernel's UDP statistics.
    _sink: UdpSocket,
}

#[derive(Default)]
struct Counters {
    tcp_accepted: AtomicU64,
    udp_received: AtomicU64,
}

impl PodServers {
    /// Opens the sockets in `ns` (dual-stack, any address) and starts serving them as `pod`.
    pub fn start(ns: &Netns, pod: &str) -> Self {
        let (listener, udp, sink) = in_netns(ns, || {
            let any = |port: u16| SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, port));
            let listener = TcpListener::bind(any(TCP.target)).expect("binding the TCP server");
            let udp = UdpSocket::bind(any(UDP.target)).expect("binding the UDP server");
            let sink = UdpSocket::bind(any(SINK.target)).expect("binding the UDP sink");
            (listener, udp, sink)
        });
        let this = Self {
            stop: Arc::new(AtomicBool::new(false)),
            threads: Arc::new(Mutex::new(Vec::new())),
            counters: Arc::new(Counters::default()),
            _sink: sink,
        };
        let tcp = {
            let (stop, threads, counters, pod) = (
                this.stop.clone(),
                this.threads.clone(),
                this.counters.clone(),
                pod.to_owned(),
            );
            std::thread::spawn(move || accept_loop(&listener, &pod, stop, &threads, &counters))
        };
        let udp = {
            let (stop, counters, pod) = (this.stop.clone(), this.counters.clone(), pod.to_owned());
            std::thread::spawn(move || udp_loop(&udp, &pod, &stop, &counters))
        };
        this.lock_threads().extend([tcp, udp]);
        this
    }

    /// TCP connections accepted so far.
    pub fn tcp_accepted(&self) -> u64 {
        self.counters.tcp_accepted.load(Ordering::Relaxed)
    }

    /// UDP requests received so far (the sink is not counted here, see [`super::stats`]).
    pub fn udp_received(&self) -> u64 {
        self.counters.udp_received.load(Ordering::Relaxed)
    }

    fn lock_threads(&self) -> std::sync::MutexGuard<'_, Vec<JoinHandle<()>>> {
        self.threads
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl Drop for PodServers {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Every thread sees the flag within a TICK; connection threads are added by the
        // accept thread, which is joined first among them when it is the first handle.
        loop {
            let Some(handle) = self.lock_threads().pop() else {
                break;
            };
            let _ = handle.join();
        }
    }
}

/// The answer to one request: `<pod> <peer> <request>`.
pub fn answer(pod: &str, peer: SocketAddr, request: &str) -> String {
    let peer = SocketAddr::new(peer.ip().to_canonical(), peer.port());
    format!("{pod} {peer} {request}")
}

fn accept_loop(
    listener: &TcpListener,
    pod: &str,
    stop: Arc<AtomicBool>,
    threads: &Mutex<Vec<JoinHandle<()>>>,
    counters: &Counters,
) {
    listener
        .set_nonblocking(true)
        .expect("non-blocking listener");
    while !stop.load(Ordering::Relaxed) {
        match listener.accept() {
            Ok((stream, peer)) => {
                counters.tcp_accepted.fetch_add(1, Ordering::Relaxed);
                let pod = pod.to_owned();
                let stop = stop.clone();
                let handle = std::thread::spawn(move || serve_tcp(stream, peer, &pod, &stop));
                threads
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .push(handle);
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                wait_readable(listener.as_raw_fd(), TICK);
            }
            Err(e) => panic!("{pod}: accept: {e}"),
        }
    }
}

fn serve_tcp(stream: TcpStream, peer: SocketAddr, pod: &str, stop: &AtomicBool) {
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_read_timeout(Some(TICK));
    let _ = stream.set_nodelay(true);
    let Ok(mut writer) = stream.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    while !stop.load(Ordering::Relaxed) {
        match reader.read_line(&mut line) {
            Ok(0) => return,
            Ok(_) if line.ends_with('\n') => {
                let request = line.trim_end();
                // `<id> bulk <n>`: n bytes of payload before the answer (large replies: GSO).
                let bulk = request
                    .split_once(" bulk ")
                    .and_then(|(_, n)| n.parse::<usize>().ok())
                    .map_or(Vec::new(), |n| vec![b'x'; n.min(MAX_BULK)]);
                let reply = answer(pod, peer, request) + "\n";
                if writer.write_all(&bulk).is_err() || writer.write_all(reply.as_bytes()).is_err() {
                    return;
                }
                line.clear();
            }
            // A partial line (timeout mid-line): keep what was read, read on.
            Ok(_) => {}
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => return,
        }
    }
}

fn udp_loop(socket: &UdpSocket, pod: &str, stop: &AtomicBool, counters: &Counters) {
    socket.set_read_timeout(Some(TICK)).expect("read timeout");
    let mut buf = [0u8; 2048];
    while !stop.load(Ordering::Relaxed) {
        match socket.recv_from(&mut buf) {
            Ok((n, peer)) => {
                counters.udp_received.fetch_add(1, Ordering::Relaxed);
                let request = String::from_utf8_lossy(&buf[..n]);
                let _ = socket.send_to(answer(pod, peer, request.trim_end()).as_bytes(), peer);
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(e) => panic!("{pod}: UDP recv: {e}"),
        }
    }
}

/// Waits up to `timeout` for `fd` to become readable.
fn wait_readable(fd: i32, timeout: Duration) {
    let mut pollfd = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd for the duration of the call.
    unsafe { libc::poll(&mut pollfd, 1, timeout.as_millis() as i32) };
}
