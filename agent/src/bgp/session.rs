//! One peer's session: the tokio task that owns the socket and the timers around the IO-free
//! [`Fsm`], and the peer's Adj-RIB-Out.
//!
//! The socket is connected without an explicit bind: the kernel picks the source address of
//! the route to the peer, and that address (read back with `local_addr`) is our next hop.

use std::{
    collections::{BTreeSet, VecDeque},
    io,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use ipnet::IpNet;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpStream, tcp::OwnedWriteHalf},
    sync::{mpsc, watch},
    task::JoinHandle,
    time::sleep_until,
};

use super::{
    fsm::{Action, Event, Fsm, FsmConfig, Negotiated, State, Timer},
    socket,
    wire::{self, Attributes, Family, HEADER_LEN, Message, Notification, Update},
};
use crate::config::{Advertisement, PeerConfig};

/// What a session announces, shared by every peer of a speaker.
#[derive(Clone, Debug)]
pub(crate) struct SessionConfig {
    pub local_asn: u32,
    pub router_id: Ipv4Addr,
    pub peer: PeerConfig,
    pub advertisement: Advertisement,
    /// Graceful restart time announced (RFC 4724); `None`: no capability.
    pub graceful_restart: Option<u16>,
    /// The agent took over a running dataplane: set the R and F bits in the first OPEN.
    pub restarting: bool,
}

/// The routes the speaker wants announced. `ready` turns true with the first set the agent
/// hands over: until then a session holds back its initial table and End-of-RIB, because a
/// restarted speaker that sent End-of-RIB on an empty table would make its graceful-restart
/// helpers flush the routes they kept for it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Desired {
    pub addrs: BTreeSet<IpAddr>,
    pub ready: bool,
}

/// A peer's state for `/status` and metrics.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerStatus {
    pub address: IpAddr,
    pub asn: u32,
    pub state: State,
    /// How long the session has been Established.
    pub uptime: Option<Duration>,
    /// Prefixes in the peer's Adj-RIB-Out (announced and not withdrawn).
    pub routes_announced: usize,
    /// UPDATEs from the peer, malformed ones that RFC 7606 let the session survive included.
    pub updates_received: u64,
    /// Why the session last went down or failed to come up.
    pub last_error: Option<String>,
}

#[derive(Debug)]
pub(crate) struct Shared {
    pub state: State,
    pub established_at: Option<Instant>,
    pub routes_announced: usize,
    pub updates_received: u64,
    pub last_error: Option<String>,
}

impl Shared {
    pub fn new() -> Self {
        Self {
            state: State::Idle,
            established_at: None,
            routes_announced: 0,
            updates_received: 0,
            last_error: None,
        }
    }

    pub fn status(&self, address: IpAddr, asn: u32) -> PeerStatus {
        PeerStatus {
            address,
            asn,
            state: self.state,
            uptime: self.established_at.map(|t| t.elapsed()),
            routes_announced: self.routes_announced,
            updates_received: self.updates_received,
            last_error: self.last_error.clone(),
        }
    }
}

/// What the connect and read tasks report, tagged with the connection they belong to.
pub(crate) enum Input {
    /// The peer connected to our listener.
    Accepted(TcpStream),
    Connected(u64, TcpStream),
    ConnectFailed(u64, String),
    Message(u64, Message),
    Malformed(u64, Notification),
    /// A malformed UPDATE that RFC 7606 lets the session survive.
    Discarded(u64, String),
    Closed(u64),
}

struct Session {
    config: SessionConfig,
    family: Family,
    fsm: Fsm,
    shared: Arc<Mutex<Shared>>,
    /// Connection generation: inputs of older connections are dropped.
    generation: u64,
    tx: mpsc::Sender<Input>,
    connect_task: Option<JoinHandle<()>>,
    read_task: Option<JoinHandle<()>>,
    writer: Option<OwnedWriteHalf>,
    /// A connection the peer opened, waiting to be adopted or rejected.
    incoming: Option<TcpStream>,
    timers: [Option<tokio::time::Instant>; 3],
    next_hop: Option<IpAddr>,
    adj_rib_out: BTreeSet<IpNet>,
    /// The speaker's desired announcements, as last seen.
    wanted: BTreeSet<IpAddr>,
    /// While the speaker has no announcements yet (see [`Desired`]): when to stop waiting for
    /// them and send what there is. `None`: ready.
    ready_at: Option<tokio::time::Instant>,
    /// Established, but the initial table and End-of-RIB wait for `ready_at`.
    table_pending: bool,
}

fn timer_index(t: Timer) -> usize {
    match t {
        Timer::ConnectRetry => 0,
        Timer::Hold => 1,
        Timer::Keepalive => 2,
    }
}

const TIMERS: [Timer; 3] = [Timer::ConnectRetry, Timer::Hold, Timer::Keepalive];

/// Runs one peer's session until `stop` turns true; then withdraws everything and sends
/// Cease/Administrative Shutdown.
pub(crate) async fn run(
    config: SessionConfig,
    (tx, mut rx): (mpsc::Sender<Input>, mpsc::Receiver<Input>),
    mut desired: watch::Receiver<Desired>,
    mut stop: watch::Receiver<bool>,
    shared: Arc<Mutex<Shared>>,
) {
    let family = Family::of(config.peer.address);
    let fsm = Fsm::new(FsmConfig {
        local_asn: config.local_asn,
        peer_asn: config.peer.asn,
        router_id: config.router_id,
        hold_time: config.peer.hold_time,
        keepalive: config.peer.keepalive_time,
        families: vec![family],
        connect_retry: Duration::from_secs(1),
        connect_retry_max: Duration::from_secs(30),
        graceful_restart: config.graceful_restart,
        restarting: config.restarting,
    });
    let first = desired.borrow_and_update().clone();
    // Without graceful restart an early End-of-RIB flushes nothing: no reason to wait.
    let ready_at = (!first.ready)
        .then_some(config.graceful_restart)
        .flatten()
        .map(|secs| tokio::time::Instant::now() + Duration::from_secs(u64::from(secs)));
    let mut s = Session {
        config,
        family,
        fsm,
        shared,
        generation: 0,
        tx,
        connect_task: None,
        read_task: None,
        writer: None,
        incoming: None,
        timers: [None; 3],
        next_hop: None,
        adj_rib_out: BTreeSet::new(),
        wanted: first.addrs,
        ready_at,
        table_pending: false,
    };
    s.event(Event::ManualStart).await;
    loop {
        let next = s.timers.iter().flatten().min().copied();
        tokio::select! {
            input = rx.recv() => {
                let Some(input) = input else { break };
                s.input(input).await;
            }
            () = sleep_until(s.ready_at.unwrap_or_else(far_future)), if s.ready_at.is_some() => {
                tracing::warn!(peer = %s.config.peer.address, "no announcements from the agent within the restart time; sending End-of-RIB anyway");
                s.ready().await;
            }
            () = sleep_until(next.unwrap_or_else(far_future)), if next.is_some() => {
                let now = tokio::time::Instant::now();
                for timer in TIMERS {
                    let slot = &mut s.timers[timer_index(timer)];
                    if slot.is_some_and(|t| t <= now) {
                        *slot = None;
                        s.event(Event::TimerExpired(timer)).await;
                    }
                }
            }
            changed = desired.changed() => {
                if changed.is_err() {
                    break;
                }
                let now = desired.borrow_and_update().clone();
                s.wanted = now.addrs;
                if now.ready && s.ready_at.is_some() {
                    s.ready().await;
                    continue;
                }
                let wanted = s.wanted.clone();
                if s.fsm.state() == State::Established
                    && !s.table_pending
                    && s.sync_routes(&wanted).await.is_err()
                {
                    s.event(Event::TcpFailed).await;
                }
            }
            changed = stop.changed() => {
                if changed.is_err() || *stop.borrow() {
                    break;
                }
            }
        }
    }
    // Shutdown: withdraw, then Cease/Administrative Shutdown (from the FSM's ManualStop).
    if s.fsm.state() == State::Established && !s.table_pending {
        let _ = s.sync_routes(&BTreeSet::new()).await;
    }
    s.event(Event::ManualStop).await;
    s.close();
}

fn far_future() -> tokio::time::Instant {
    tokio::time::Instant::now() + Duration::from_secs(86400)
}

impl Session {
    /// The speaker's announcements are in (or we gave up waiting): send a held-back initial
    /// table.
    async fn ready(&mut self) {
        self.ready_at = None;
        if std::mem::take(&mut self.table_pending) && self.fsm.state() == State::Established {
            let sent = match self.sync_routes(&self.wanted.clone()).await {
                Ok(()) => self.send(&Message::EndOfRib(self.family)).await,
                Err(()) => Err(()),
            };
            if sent.is_err() {
                self.event(Event::TcpFailed).await;
            }
        }
    }

    async fn input(&mut self, input: Input) {
        let (generation, event) = match input {
            Input::Accepted(stream) => {
                self.incoming = Some(stream);
                self.event(Event::TcpAccepted).await;
                return;
            }
            Input::Connected(g, stream) => {
                if g != self.generation {
                    return;
                }
                self.install(stream);
                (g, Event::TcpConnected)
            }
            Input::ConnectFailed(g, reason) => {
                if g == self.generation {
                    self.event(Event::TcpFailed).await;
                    // More precise than the FSM's "connection failed".
                    self.shared().last_error = Some(reason);
                }
                return;
            }
            Input::Message(g, msg) => (g, Event::Message(msg)),
            Input::Malformed(g, n) => (g, Event::DecodeError(n)),
            Input::Discarded(g, detail) => (g, Event::MalformedUpdate(detail)),
            Input::Closed(g) => (g, Event::TcpFailed),
        };
        if generation == self.generation {
            self.event(event).await;
        }
    }

    /// Makes `stream` the session's connection and starts reading it.
    fn install(&mut self, stream: TcpStream) {
        let g = self.generation;
        let _ = stream.set_nodelay(true);
        self.next_hop = stream.local_addr().ok().map(|a| a.ip());
        let (mut rd, wr) = stream.into_split();
        self.writer = Some(wr);
        let tx = self.tx.clone();
        self.read_task = Some(tokio::spawn(async move {
            let input = loop {
                let input = match read_message(&mut rd).await {
                    Ok(Read::Message(msg)) => Input::Message(g, msg),
                    Ok(Read::Discarded(detail)) => Input::Discarded(g, detail),
                    Ok(Read::Malformed(n)) => break Input::Malformed(g, n),
                    Err(_) => break Input::Closed(g),
                };
                if tx.send(input).await.is_err() {
                    return;
                }
            };
            let _ = tx.send(input).await;
        }));
    }

    fn shared(&self) -> std::sync::MutexGuard<'_, Shared> {
        self.shared.lock().unwrap_or_else(|e| e.into_inner())
    }

    async fn event(&mut self, event: Event) {
        let mut queue = VecDeque::from([event]);
        while let Some(event) = queue.pop_front() {
            let actions = self.fsm.handle(event);
            self.shared().state = self.fsm.state();
            for action in actions {
                if let Some(follow_up) = self.act(action).await {
                    queue.push_back(follow_up);
                    break;
                }
            }
        }
        self.shared().state = self.fsm.state();
    }

    /// Carries out one action; a follow-up event when the socket failed.
    async fn act(&mut self, action: Action) -> Option<Event> {
        match action {
            Action::Connect => self.connect(),
            Action::CloseConnection => self.close(),
            Action::Send(msg) => return self.send(&msg).await.err().map(|()| Event::TcpFailed),
            Action::StartTimer(t, d) => {
                self.timers[timer_index(t)] = Some(tokio::time::Instant::now() + d);
            }
            Action::StopTimer(t) => self.timers[timer_index(t)] = None,
            Action::Established(negotiated) => {
                tracing::info!(peer = %self.config.peer.address, hold = ?negotiated.hold_time, "BGP session established");
                {
                    let mut shared = self.shared();
                    shared.established_at = Some(Instant::now());
                    shared.state = State::Established;
                }
                return self.initial_table(&negotiated).await;
            }
            Action::Down(reason) => {
                tracing::info!(peer = %self.config.peer.address, %reason, "BGP session down");
                self.adj_rib_out.clear();
                self.table_pending = false;
                let mut shared = self.shared();
                shared.established_at = None;
                shared.routes_announced = 0;
                shared.last_error = Some(reason);
            }
            Action::ResendRoutes(_) => {
                // Nothing to resend yet; an empty UPDATE would read as an End-of-RIB (and,
                // while the table is held back, make a restart helper flush our routes).
                if self.table_pending || self.adj_rib_out.is_empty() {
                    return None;
                }
                let all: Vec<IpNet> = self.adj_rib_out.iter().copied().collect();
                return self
                    .send_update(all, Vec::new())
                    .await
                    .err()
                    .map(|()| Event::TcpFailed);
            }
            Action::UpdateReceived => self.shared().updates_received += 1,
            Action::UpdateDiscarded(detail) => {
                tracing::warn!(peer = %self.config.peer.address, %detail, "malformed UPDATE ignored (RFC 7606)");
                self.shared().updates_received += 1;
            }
            Action::AdoptIncoming => {
                self.close();
                if let Some(stream) = self.incoming.take() {
                    self.install(stream);
                } else {
                    return Some(Event::TcpFailed);
                }
            }
            Action::HoldIncoming => {}
            Action::RejectIncoming(notification) => {
                if let Some(mut stream) = self.incoming.take()
                    && let Some(n) = notification
                    && let Ok(buf) = wire::encode(&Message::Notification(n))
                {
                    let _ = stream.write_all(&buf).await;
                }
            }
        }
        None
    }

    fn connect(&mut self) {
        self.close();
        let generation = self.generation;
        let addr = SocketAddr::new(self.config.peer.address, self.config.peer.port);
        let password = self.config.peer.password.clone();
        let tx = self.tx.clone();
        self.connect_task = Some(tokio::spawn(async move {
            let input = match socket::connect(addr, password.as_deref()).await {
                Ok(stream) => Input::Connected(generation, stream),
                Err(e) => Input::ConnectFailed(generation, format!("connecting to {addr}: {e}")),
            };
            let _ = tx.send(input).await;
        }));
    }

    /// Drops the connection (and any attempt in flight); later inputs from it are ignored.
    fn close(&mut self) {
        self.generation += 1;
        if let Some(task) = self.connect_task.take() {
            task.abort();
        }
        if let Some(task) = self.read_task.take() {
            task.abort();
        }
        self.writer = None;
    }

    async fn send(&mut self, msg: &Message) -> Result<(), ()> {
        match wire::encode(msg) {
            Ok(buf) => self.write(&buf).await,
            Err(e) => {
                tracing::error!(error = %e, "cannot encode a BGP message");
                Ok(())
            }
        }
    }

    async fn write(&mut self, buf: &[u8]) -> Result<(), ()> {
        let Some(writer) = self.writer.as_mut() else {
            return Err(());
        };
        writer.write_all(buf).await.map_err(|e| {
            self.shared().last_error = Some(format!("writing to peer: {e}"));
        })
    }

    /// The whole table after the session came up, then End-of-RIB (RFC 4724).
    async fn initial_table(&mut self, negotiated: &Negotiated) -> Option<Event> {
        if !negotiated.families.contains(&self.family) {
            return None;
        }
        if self.ready_at.is_some() {
            self.table_pending = true;
            return None;
        }
        let wanted = self.wanted.clone();
        let sent = match self.sync_routes(&wanted).await {
            Ok(()) => self.send(&Message::EndOfRib(self.family)).await,
            Err(()) => Err(()),
        };
        sent.err().map(|()| Event::TcpFailed)
    }

    /// Brings the peer's Adj-RIB-Out to `wanted`: one batch of UPDATEs with the difference.
    async fn sync_routes(&mut self, wanted: &BTreeSet<IpAddr>) -> Result<(), ()> {
        let wanted: BTreeSet<IpNet> = wanted
            .iter()
            .filter(|a| Family::of(**a) == self.family)
            .map(|a| wire::host_prefix(*a))
            .collect();
        let announce: Vec<IpNet> = wanted.difference(&self.adj_rib_out).copied().collect();
        let withdraw: Vec<IpNet> = self.adj_rib_out.difference(&wanted).copied().collect();
        if announce.is_empty() && withdraw.is_empty() {
            return Ok(());
        }
        self.send_update(announce, withdraw).await?;
        self.shared().routes_announced = wanted.len();
        self.adj_rib_out = wanted;
        Ok(())
    }

    fn attributes(&self) -> Attributes {
        let ibgp = self.config.peer.asn == self.config.local_asn;
        let adv = &self.config.advertisement;
        Attributes {
            as_path: if ibgp {
                Vec::new()
            } else {
                vec![self.config.local_asn]
            },
            next_hop: self.next_hop,
            med: adv.med,
            local_pref: if ibgp {
                Some(adv.local_pref.unwrap_or(100))
            } else {
                None
            },
            communities: adv.communities.clone(),
            large_communities: adv.large_communities.clone(),
        }
    }

    async fn send_update(&mut self, announce: Vec<IpNet>, withdraw: Vec<IpNet>) -> Result<(), ()> {
        let update = Update {
            announce,
            withdraw,
            attributes: self.attributes(),
        };
        let bufs = match wire::encode_updates(&update) {
            Ok(bufs) => bufs,
            Err(e) => {
                tracing::error!(error = %e, "cannot encode an UPDATE");
                return Ok(());
            }
        };
        for buf in bufs {
            self.write(&buf).await?;
        }
        Ok(())
    }
}

/// One message read off the connection.
enum Read {
    Message(Message),
    /// Malformed, but RFC 7606 keeps the session: what was wrong.
    Discarded(String),
    /// Malformed: send this NOTIFICATION and reset.
    Malformed(Notification),
}

/// Reads one message; `Err` when the connection closed.
async fn read_message(rd: &mut tokio::net::tcp::OwnedReadHalf) -> io::Result<Read> {
    let mut header = [0u8; HEADER_LEN];
    rd.read_exact(&mut header).await?;
    let len = match wire::message_len(&header) {
        Ok(len) => len,
        Err(n) => return Ok(Read::Malformed(n)),
    };
    let mut buf = vec![0u8; len];
    buf[..HEADER_LEN].copy_from_slice(&header);
    rd.read_exact(&mut buf[HEADER_LEN..]).await?;
    Ok(match wire::decode(&buf) {
        Ok(msg) => Read::Message(msg),
        Err(wire::WireError::IgnorableUpdate { detail }) => Read::Discarded(detail),
        Err(e) => Read::Malformed(
            e.notification()
                .cloned()
                .unwrap_or_else(|| Notification::new(wire::code::CEASE, 0, [])),
        ),
    })
}

/// Accepts connections on `port` for the peers of one family and hands each to its session;
/// connections from anyone else are closed. Keys are installed per peer for TCP-MD5.
pub(crate) async fn listen(
    family: Family,
    port: u16,
    peers: Vec<(IpAddr, Option<String>, mpsc::Sender<Input>)>,
) {
    let keys: Vec<(IpAddr, &str)> = peers
        .iter()
        .filter_map(|(addr, password, _)| password.as_deref().map(|p| (*addr, p)))
        .collect();
    let socket = match socket::listener(family, port, &keys) {
        Ok(socket) => socket,
        Err(e) => {
            tracing::error!(?family, port, error = %e, "cannot listen for BGP peers");
            return;
        }
    };
    loop {
        let Ok((stream, from)) = socket.accept().await else {
            continue;
        };
        let from = from.ip().to_canonical();
        if let Some((_, _, tx)) = peers.iter().find(|(addr, _, _)| *addr == from) {
            let _ = tx.send(Input::Accepted(stream)).await;
        } else {
            tracing::debug!(%from, "BGP connection from an unknown address closed");
        }
    }
}
