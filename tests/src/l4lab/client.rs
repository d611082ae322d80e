//! The client side of the L4 lab: sockets opened in the client namespace (by a thread that
//! joined it; the sockets then work from any thread), requests to VIP:port, checked answers.

use std::{
    io::{self, BufRead, BufReader, Write},
    net::{IpAddr, SocketAddr, TcpStream, UdpSocket},
    time::{Duration, Instant},
};

use crate::{netlab::Netns, probe::in_netns};

/// A pod's answer, as the client got it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reply {
    /// The pod that answered.
    pub pod: String,
    /// The peer address the pod saw (the client's real address if nothing SNATed it).
    pub peer: SocketAddr,
    /// Where the answer came from, as the client saw it (VIP:port if reverse NAT worked).
    pub from: SocketAddr,
    /// The client's own address of the exchange.
    pub local: SocketAddr,
}

fn parse(line: &str, request: &str, from: SocketAddr, local: SocketAddr) -> io::Result<Reply> {
    let bad = || io::Error::new(io::ErrorKind::InvalidData, format!("bad answer {line:?}"));
    let mut parts = line.trim_end().splitn(3, ' ');
    let pod = parts.next().ok_or_else(bad)?.to_owned();
    let peer: SocketAddr = parts.next().ok_or_else(bad)?.parse().map_err(|_| bad())?;
    if parts.next() != Some(request) {
        return Err(bad());
    }
    Ok(Reply {
        pod,
        peer,
        from: canonical(from),
        local: canonical(local),
    })
}

fn canonical(addr: SocketAddr) -> SocketAddr {
    SocketAddr::new(addr.ip().to_canonical(), addr.port())
}

/// One TCP connection from the client to a VIP:port, for request/response.
pub struct TcpConn {
    writer: TcpStream,
    reader: BufReader<TcpStream>,
    local: SocketAddr,
    from: SocketAddr,
    seq: u64,
    /// The pod of the first answer (set by the first request).
    pub pod: Option<String>,
}

impl TcpConn {
    fn new(stream: TcpStream) -> io::Result<Self> {
        stream.set_nodelay(true)?;
        let local = stream.local_addr()?;
        let from = stream.peer_addr()?;
        Ok(Self {
            writer: stream.try_clone()?,
            reader: BufReader::new(stream),
            local,
            from,
            seq: 0,
            pod: None,
        })
    }

    /// The client's address and port.
    pub fn local(&self) -> SocketAddr {
        canonical(self.local)
    }

    /// Sends one request line and returns the answer (which must echo it).
    pub fn request(&mut self, timeout: Duration) -> io::Result<Reply> {
        self.send()?;
        self.receive(Instant::now() + timeout)
    }

    /// Asks for `n` bytes (a large reply, sent as GSO segments) and returns the answer after
    /// them; `upload` bytes of the request's own go first (a large request).
    pub fn bulk(&mut self, n: usize, upload: usize, timeout: Duration) -> io::Result<Reply> {
        use std::io::Read as _;
        self.seq += 1;
        let mut request = vec![b'u'; upload];
        request.extend_from_slice(format!("req-{} bulk {n}\n", self.seq).as_bytes());
        self.writer.write_all(&request)?;
        let deadline = Instant::now() + timeout;
        let mut left = n;
        let mut buf = vec![0u8; 64 << 10];
        while left > 0 {
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("{left} of {n} bulk bytes missing"),
                ));
            }
            self.reader.get_ref().set_read_timeout(Some(remaining))?;
            let got = self.reader.read(&mut buf[..left.min(64 << 10)])?;
            if got == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            if buf[..got].iter().any(|&b| b != b'x') {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "corrupted bulk bytes",
                ));
            }
            left -= got;
        }
        // The server echoes the whole line: the upload and the request.
        let request = format!("{}req-{} bulk {n}", "u".repeat(upload), self.seq);
        let left = deadline.saturating_duration_since(Instant::now());
        self.reader
            .get_ref()
            .set_read_timeout(Some(left.max(Duration::from_millis(1))))?;
        let mut line = String::new();
        self.reader.read_line(&mut line)?;
        parse(&line, &request, self.from, self.local)
    }

    /// The first half of [`Self::request`], for pipelining over many connections.
    pub fn send(&mut self) -> io::Result<()> {
        self.seq += 1;
        self.writer
            .write_all(format!("req-{}\n", self.seq).as_bytes())
    }

    /// The second half of [`Self::request`]: the answer to the last [`Self::send`].
    pub fn receive(&mut self, deadline: Instant) -> io::Result<Reply> {
        let left = deadline.saturating_duration_since(Instant::now());
        self.reader
            .get_ref()
            .set_read_timeout(Some(left.max(Duration::from_millis(1))))?;
        let mut line = String::new();
        if self.reader.read_line(&mut line)? == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        let reply = parse(&line, &format!("req-{}", self.seq), self.from, self.local)?;
        self.pod.get_or_insert_with(|| reply.pod.clone());
        Ok(reply)
    }
}

/// Opens `n` TCP connections from the client namespace to `to`, each within `timeout`.
pub fn connect(
    client: &Netns,
    to: SocketAddr,
    n: usize,
    timeout: Duration,
) -> Vec<io::Result<TcpConn>> {
    in_netns(client, move || {
        (0..n)
            .map(|_| TcpStream::connect_timeout(&to, timeout).and_then(TcpConn::new))
            .collect()
    })
}

/// One request on a fresh connection to `to` (closed afterwards).
pub fn tcp_request(client: &Netns, to: SocketAddr, timeout: Duration) -> io::Result<Reply> {
    tcp_requests(client, to, 1, timeout)
        .pop()
        .expect("one result")
}

/// `n` requests, each on a fresh connection (a distinct source port) to `to`.
pub fn tcp_requests(
    client: &Netns,
    to: SocketAddr,
    n: usize,
    timeout: Duration,
) -> Vec<io::Result<Reply>> {
    in_netns(client, move || {
        (0..n)
            .map(|_| {
                let stream = TcpStream::connect_timeout(&to, timeout)?;
                TcpConn::new(stream)?.request(timeout)
            })
            .collect()
    })
}

/// A UDP socket in the client namespace, unconnected, so every answer's source is seen.
pub fn udp_socket(client: &Netns, v6: bool) -> UdpSocket {
    in_netns(client, move || {
        let any: IpAddr = if v6 {
            std::net::Ipv6Addr::UNSPECIFIED.into()
        } else {
            std::net::Ipv4Addr::UNSPECIFIED.into()
        };
        UdpSocket::bind(SocketAddr::new(any, 0)).expect("binding a client UDP socket")
    })
}

/// One UDP request to `to` from `socket`, waiting up to `timeout` for its answer.
pub fn udp_request(socket: &UdpSocket, to: SocketAddr, timeout: Duration) -> io::Result<Reply> {
    udp_request_padded(socket, to, 0, timeout)
}

/// [`udp_request`] with `padding` more bytes in the request, which the answer echoes: a
/// large datagram each way.
pub fn udp_request_padded(
    socket: &UdpSocket,
    to: SocketAddr,
    padding: usize,
    timeout: Duration,
) -> io::Result<Reply> {
    static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let request = format!(
        "udp-{}{}",
        SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
        "p".repeat(padding)
    );
    socket.send_to(request.as_bytes(), to)?;
    let deadline = Instant::now() + timeout;
    let mut buf = [0u8; 2048];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::ErrorKind::TimedOut.into());
        }
        socket.set_read_timeout(Some(left))?;
        let (n, from) = socket.recv_from(&mut buf)?;
        let text = String::from_utf8_lossy(&buf[..n]);
        // An answer to an earlier, timed-out request: skip it.
        if let Ok(reply) = parse(&text, &request, from, socket.local_addr()?) {
            // The client's own port as the socket knows it (the local IP is unspecified).
            return Ok(Reply {
                local: SocketAddr::new(reply.peer.ip(), socket.local_addr()?.port()),
                ..reply
            });
        }
    }
}

/// Many long-lived connections, pinged together: every connection gets a request, then every
/// answer is awaited against one deadline.
pub struct Fleet {
    pub conns: Vec<TcpConn>,
}

impl Fleet {
    /// Opens `n` connections to `to`; panics naming the first that failed.
    pub fn open(client: &Netns, to: SocketAddr, n: usize, timeout: Duration) -> Self {
        let conns = connect(client, to, n, timeout)
            .into_iter()
            .enumerate()
            .map(|(i, c)| c.unwrap_or_else(|e| panic!("connection {i} of {n} to {to}: {e}")))
            .collect();
        Self { conns }
    }

    /// One round: a request on every connection; for each, its answer or the error.
    pub fn ping(&mut self, timeout: Duration) -> Vec<io::Result<Reply>> {
        let sent: Vec<io::Result<()>> = self.conns.iter_mut().map(TcpConn::send).collect();
        let deadline = Instant::now() + timeout;
        self.conns
            .iter_mut()
            .zip(sent)
            .map(|(conn, sent)| sent.and_then(|()| conn.receive(deadline)))
            .collect()
    }
}
