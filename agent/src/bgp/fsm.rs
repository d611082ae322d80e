//! The RFC 4271 session state machine, without IO: [`Fsm::handle`] takes an [`Event`] and
//! returns the [`Action`]s the session task must carry out (send, connect, close, timers).
//!
//! Active open always; passive open when the session task also listens. An incoming
//! connection is adopted when there is none, held while our OPEN waits for an answer, and
//! resolved by BGP Identifier once the peer's id is known (RFC 4271 section 6.8: the connection
//! opened by the side with the higher id survives; the loser gets Cease/Connection Collision
//! Resolution). After an error the session waits in `Active` for the connect-retry timer,
//! which backs off exponentially.

use std::{net::Ipv4Addr, time::Duration};

use super::wire::{Capabilities, Family, GracefulRestart, Message, Notification, Open, code};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum State {
    Idle,
    Connect,
    Active,
    OpenSent,
    OpenConfirm,
    Established,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Idle => "Idle",
            State::Connect => "Connect",
            State::Active => "Active",
            State::OpenSent => "OpenSent",
            State::OpenConfirm => "OpenConfirm",
            State::Established => "Established",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Timer {
    ConnectRetry,
    Hold,
    Keepalive,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    ManualStart,
    /// Administrative stop: Cease/Administrative Shutdown if a session is up.
    ManualStop,
    TcpConnected,
    /// The peer connected to our listener.
    TcpAccepted,
    /// The connection attempt failed, or the peer closed the connection.
    TcpFailed,
    Message(Message),
    /// A message that did not decode; carries the NOTIFICATION to send.
    DecodeError(Notification),
    /// A malformed UPDATE that RFC 7606 lets the session survive (treat-as-withdraw or
    /// attribute-discard); carries what was wrong.
    MalformedUpdate(String),
    TimerExpired(Timer),
}

/// What both sides agreed on in their OPENs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Negotiated {
    pub peer_router_id: Ipv4Addr,
    /// Zero: no hold timer and no keepalives.
    pub hold_time: Duration,
    pub keepalive: Duration,
    /// Families both sides announced (IPv4 unicast when the peer sent no MP capability).
    pub families: Vec<Family>,
    pub route_refresh: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    Connect,
    CloseConnection,
    Send(Message),
    StartTimer(Timer, Duration),
    StopTimer(Timer),
    /// The session reached Established: send the Adj-RIB-Out, then End-of-RIB.
    Established(Negotiated),
    /// The session left Established or never got there; `reason` for status.
    Down(String),
    /// The peer asked for our routes again (RFC 2918).
    ResendRoutes(Family),
    /// An UPDATE from the peer: counted and ignored (we only originate).
    UpdateReceived,
    /// A malformed UPDATE kept the session up (RFC 7606): count and log it.
    UpdateDiscarded(String),
    /// Make the incoming connection the session's (the current one, if any, is closed first).
    AdoptIncoming,
    /// Keep the incoming connection aside until the collision can be resolved.
    HoldIncoming,
    /// Close the incoming (or held) connection, after sending this NOTIFICATION if any.
    RejectIncoming(Option<Notification>),
}

/// Cease / Connection Collision Resolution (RFC 4486).
fn collision() -> Notification {
    Notification::new(code::CEASE, 7, [])
}

#[derive(Clone, Debug)]
pub struct FsmConfig {
    pub local_asn: u32,
    pub peer_asn: u32,
    pub router_id: Ipv4Addr,
    /// Proposed hold time (0, or at least 3 s).
    pub hold_time: Duration,
    /// Keepalive interval before negotiation (capped at a third of the negotiated hold time).
    pub keepalive: Duration,
    pub families: Vec<Family>,
    /// First connect-retry wait; doubles per consecutive failure up to `connect_retry_max`.
    pub connect_retry: Duration,
    pub connect_retry_max: Duration,
    /// Announce graceful restart with this restart time in seconds (RFC 4724).
    pub graceful_restart: Option<u16>,
    /// This speaker restarted with its forwarding state intact (the agent took over a running
    /// dataplane): the first session's OPEN sets the R bit.
    pub restarting: bool,
}

/// The large hold time used while waiting for the peer's OPEN (RFC 4271 suggests 4 minutes).
const OPEN_HOLD_TIME: Duration = Duration::from_secs(240);

#[derive(Debug)]
pub struct Fsm {
    config: FsmConfig,
    state: State,
    failures: u32,
    negotiated: Option<Negotiated>,
    /// An incoming connection is held (see [`Action::HoldIncoming`]).
    held: bool,
    /// The current connection is the one we opened (not one the peer opened).
    ours: bool,
    /// The R bit of our OPEN: set until the first session reaches Established.
    restarting: bool,
    /// The F bit of our OPEN: the dataplane forwards for our routes while the session is
    /// down. False only before the first session of a cold start.
    forwarding: bool,
}

impl Fsm {
    pub fn new(config: FsmConfig) -> Self {
        Self {
            state: State::Idle,
            failures: 0,
            negotiated: None,
            held: false,
            ours: true,
            restarting: config.restarting,
            forwarding: config.restarting,
            config,
        }
    }

    pub fn state(&self) -> State {
        self.state
    }

    pub fn negotiated(&self) -> Option<&Negotiated> {
        self.negotiated.as_ref()
    }

    /// The next connect-retry wait: doubles per consecutive failure.
    pub fn retry_delay(&self) -> Duration {
        let factor = 1u32 << self.failures.min(16);
        self.config
            .connect_retry
            .saturating_mul(factor)
            .min(self.config.connect_retry_max)
    }

    /// The OPEN we send.
    pub fn open(&self) -> Open {
        let c = &self.config;
        Open {
            version: 4,
            asn: c.local_asn,
            hold_time: u16::try_from(c.hold_time.as_secs()).unwrap_or(u16::MAX),
            router_id: c.router_id,
            capabilities: Capabilities {
                four_octet_as: Some(c.local_asn),
                families: c.families.clone(),
                route_refresh: true,
                graceful_restart: c.graceful_restart.map(|restart_time| GracefulRestart {
                    restarting: self.restarting,
                    restart_time,
                    families: c.families.clone(),
                    forwarding: self.forwarding,
                }),
            },
        }
    }

    pub fn handle(&mut self, event: Event) -> Vec<Action> {
        use State::*;
        match (self.state, event) {
            (Idle, Event::ManualStart) => self.connect(),
            (_, Event::ManualStart) => Vec::new(),
            (Idle, Event::TcpAccepted) => vec![Action::RejectIncoming(None)],
            (Idle, _) => Vec::new(),
            (Connect | Active, Event::TcpAccepted) => self.adopt(Vec::new()),
            (OpenSent, Event::TcpAccepted) => {
                self.held = true;
                vec![Action::HoldIncoming]
            }
            (OpenConfirm, Event::TcpAccepted) => {
                self.held = true;
                self.resolve_collision()
            }
            (Established, Event::TcpAccepted) => {
                vec![Action::RejectIncoming(Some(collision()))]
            }
            (state, Event::ManualStop) => {
                let mut actions = Vec::new();
                if matches!(state, OpenSent | OpenConfirm | Established) {
                    actions.push(Action::Send(Message::Notification(Notification::new(
                        code::CEASE,
                        2,
                        [],
                    ))));
                }
                actions.extend(self.stop_all());
                actions.push(Action::CloseConnection);
                if std::mem::take(&mut self.held) {
                    actions.push(Action::RejectIncoming(None));
                }
                actions.push(Action::Down("administrative shutdown".into()));
                self.state = Idle;
                self.negotiated = None;
                self.failures = 0;
                actions
            }
            (Connect | Active, Event::TimerExpired(Timer::ConnectRetry)) => self.connect(),
            (Connect, Event::TcpConnected) => {
                self.state = OpenSent;
                vec![
                    Action::StopTimer(Timer::ConnectRetry),
                    Action::Send(Message::Open(self.open())),
                    Action::StartTimer(Timer::Hold, OPEN_HOLD_TIME),
                ]
            }
            (Connect, Event::TcpFailed) => self.retry_later("connection failed".into()),
            (Active, _) => Vec::new(),
            (Connect, _) => Vec::new(),
            (_, Event::TcpFailed) if self.held => {
                self.negotiated = None;
                let mut actions = self.stop_all();
                actions.push(Action::CloseConnection);
                self.adopt(actions)
            }
            (_, Event::TcpFailed) => self.retry_later("connection closed by peer".into()),
            (_, Event::TimerExpired(Timer::Hold)) => self.error(
                Notification::new(code::HOLD_TIMER_EXPIRED, 0, []),
                "hold timer expired".into(),
            ),
            (OpenConfirm | Established, Event::TimerExpired(Timer::Keepalive)) => {
                vec![
                    Action::Send(Message::Keepalive),
                    Action::StartTimer(Timer::Keepalive, self.keepalive()),
                ]
            }
            (_, Event::TimerExpired(_)) => Vec::new(),
            (_, Event::DecodeError(n)) => {
                let reason = format!("malformed message from peer, sent {n}");
                self.error(n, reason)
            }
            (_, Event::Message(Message::Notification(n))) => {
                let mut actions = self.stop_all();
                actions.push(Action::CloseConnection);
                actions.extend(self.retry_later(format!("peer sent {n}")));
                actions
            }
            (OpenSent, Event::Message(Message::Open(open))) => match self.check_open(&open) {
                Ok(negotiated) => {
                    self.state = OpenConfirm;
                    let mut actions = vec![Action::Send(Message::Keepalive)];
                    actions.extend(self.start_session_timers(&negotiated));
                    self.negotiated = Some(negotiated);
                    if self.held {
                        actions.extend(self.resolve_collision());
                    }
                    actions
                }
                Err(n) => {
                    let reason = format!("bad OPEN from peer, sent {n}");
                    self.error(n, reason)
                }
            },
            (OpenSent, Event::Message(_)) => self.unexpected(1),
            (OpenConfirm, Event::Message(Message::Keepalive)) => {
                self.state = Established;
                self.failures = 0;
                // Later sessions are not a restart of ours, and the dataplane keeps
                // forwarding while they are down.
                self.restarting = false;
                self.forwarding = true;
                let negotiated = self.negotiated.clone().expect("negotiated in OpenConfirm");
                let mut actions = self.restart_hold();
                actions.push(Action::Established(negotiated));
                actions
            }
            (OpenConfirm, Event::Message(_)) => self.unexpected(2),
            (Established, Event::Message(Message::Keepalive)) => self.restart_hold(),
            (Established, Event::Message(Message::Update(_) | Message::EndOfRib(_))) => {
                let mut actions = self.restart_hold();
                actions.push(Action::UpdateReceived);
                actions
            }
            (Established, Event::Message(Message::RouteRefresh(family))) => {
                let mut actions = self.restart_hold();
                if self
                    .negotiated
                    .as_ref()
                    .is_some_and(|n| n.families.contains(&family))
                {
                    actions.push(Action::ResendRoutes(family));
                }
                actions
            }
            (Established, Event::Message(_)) => self.unexpected(3),
            (Established, Event::MalformedUpdate(detail)) => {
                let mut actions = self.restart_hold();
                actions.push(Action::UpdateDiscarded(detail));
                actions
            }
            (OpenSent, Event::MalformedUpdate(_)) => self.unexpected(1),
            (OpenConfirm, Event::MalformedUpdate(_)) => self.unexpected(2),
            (OpenSent | OpenConfirm | Established, Event::TcpConnected) => Vec::new(),
        }
    }

    /// Makes the incoming connection the session's and sends our OPEN on it.
    fn adopt(&mut self, mut actions: Vec<Action>) -> Vec<Action> {
        self.held = false;
        self.ours = false;
        self.state = State::OpenSent;
        actions.extend([
            Action::AdoptIncoming,
            Action::StopTimer(Timer::ConnectRetry),
            Action::Send(Message::Open(self.open())),
            Action::StartTimer(Timer::Hold, OPEN_HOLD_TIME),
        ]);
        actions
    }

    /// In OpenConfirm with a held incoming connection: the side with the higher BGP
    /// Identifier keeps the connection it opened (RFC 4271 section 6.8).
    fn resolve_collision(&mut self) -> Vec<Action> {
        let remote = self
            .negotiated
            .as_ref()
            .map_or(Ipv4Addr::UNSPECIFIED, |n| n.peer_router_id);
        self.held = false;
        // Two connections the peer opened: the newer one wins (the peer gave up the first).
        if self.ours && u32::from(self.config.router_id) > u32::from(remote) {
            // Ours (the connection we opened) survives.
            vec![Action::RejectIncoming(Some(collision()))]
        } else {
            self.negotiated = None;
            let mut actions = vec![Action::Send(Message::Notification(collision()))];
            actions.extend(self.stop_all());
            actions.push(Action::CloseConnection);
            self.adopt(actions)
        }
    }

    fn keepalive(&self) -> Duration {
        self.negotiated
            .as_ref()
            .map_or(self.config.keepalive, |n| n.keepalive)
    }

    fn connect(&mut self) -> Vec<Action> {
        self.state = State::Connect;
        self.ours = true;
        vec![
            Action::Connect,
            Action::StartTimer(Timer::ConnectRetry, self.retry_delay()),
        ]
    }

    fn stop_all(&self) -> Vec<Action> {
        vec![
            Action::StopTimer(Timer::ConnectRetry),
            Action::StopTimer(Timer::Hold),
            Action::StopTimer(Timer::Keepalive),
        ]
    }

    /// Drops the connection and waits (backing off) before the next attempt.
    fn retry_later(&mut self, reason: String) -> Vec<Action> {
        let mut actions = self.stop_all();
        actions.push(Action::CloseConnection);
        actions.push(Action::Down(reason));
        let delay = self.retry_delay();
        self.failures = self.failures.saturating_add(1);
        self.state = State::Active;
        self.negotiated = None;
        actions.push(Action::StartTimer(Timer::ConnectRetry, delay));
        actions
    }

    /// Sends `notification`, closes, and retries later.
    fn error(&mut self, notification: Notification, reason: String) -> Vec<Action> {
        let mut actions = vec![Action::Send(Message::Notification(notification))];
        actions.extend(self.retry_later(reason));
        actions
    }

    fn unexpected(&mut self, subcode: u8) -> Vec<Action> {
        self.error(
            Notification::new(code::FSM, subcode, []),
            format!("unexpected message in {}", self.state.as_str()),
        )
    }

    fn restart_hold(&self) -> Vec<Action> {
        match &self.negotiated {
            Some(n) if !n.hold_time.is_zero() => {
                vec![Action::StartTimer(Timer::Hold, n.hold_time)]
            }
            _ => Vec::new(),
        }
    }

    fn start_session_timers(&self, n: &Negotiated) -> Vec<Action> {
        if n.hold_time.is_zero() {
            vec![
                Action::StopTimer(Timer::Hold),
                Action::StopTimer(Timer::Keepalive),
            ]
        } else {
            vec![
                Action::StartTimer(Timer::Hold, n.hold_time),
                Action::StartTimer(Timer::Keepalive, n.keepalive),
            ]
        }
    }

    /// RFC 4271 section 6.2 checks; `Err` is the NOTIFICATION to send.
    fn check_open(&self, open: &Open) -> Result<Negotiated, Notification> {
        if open.version != 4 {
            return Err(Notification::new(code::OPEN_MESSAGE, 1, [0, 4]));
        }
        if open.asn != self.config.peer_asn {
            return Err(Notification::new(code::OPEN_MESSAGE, 2, []));
        }
        if open.hold_time == 1 || open.hold_time == 2 {
            return Err(Notification::new(code::OPEN_MESSAGE, 6, []));
        }
        let id = open.router_id;
        if id.is_unspecified()
            || id.is_broadcast()
            || (self.config.peer_asn == self.config.local_asn && id == self.config.router_id)
        {
            return Err(Notification::new(code::OPEN_MESSAGE, 3, []));
        }
        let ours = self.config.hold_time;
        let hold_time = ours.min(Duration::from_secs(u64::from(open.hold_time)));
        let keepalive = if hold_time.is_zero() {
            Duration::ZERO
        } else {
            self.config
                .keepalive
                .min(hold_time / 3)
                .max(Duration::from_secs(1))
        };
        let theirs = if open.capabilities.families.is_empty() {
            vec![Family::Ipv4]
        } else {
            open.capabilities.families.clone()
        };
        Ok(Negotiated {
            peer_router_id: id,
            hold_time,
            keepalive,
            families: self
                .config
                .families
                .iter()
                .copied()
                .filter(|f| theirs.contains(f))
                .collect(),
            route_refresh: open.capabilities.route_refresh,
        })
    }
}

#[cfg(test)]
mod tests;
