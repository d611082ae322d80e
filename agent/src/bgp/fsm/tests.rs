use super::*;

fn config() -> FsmConfig {
    FsmConfig {
        local_asn: 65100,
        peer_asn: 65001,
        router_id: Ipv4Addr::new(10, 0, 0, 2),
        hold_time: Duration::from_secs(9),
        keepalive: Duration::from_secs(3),
        families: vec![Family::Ipv4],
        connect_retry: Duration::from_secs(1),
        connect_retry_max: Duration::from_secs(30),
        graceful_restart: None,
        restarting: false,
    }
}

fn peer_open(hold_time: u16) -> Open {
    Open {
        version: 4,
        asn: 65001,
        hold_time,
        router_id: Ipv4Addr::new(10, 0, 0, 1),
        capabilities: Capabilities {
            four_octet_as: Some(65001),
            families: vec![Family::Ipv4, Family::Ipv6],
            route_refresh: true,
            graceful_restart: None,
        },
    }
}

fn sent_notification(actions: &[Action]) -> Option<&Notification> {
    actions.iter().find_map(|a| match a {
        Action::Send(Message::Notification(n)) => Some(n),
        _ => None,
    })
}

/// Drives a fresh FSM to OpenSent.
fn open_sent() -> Fsm {
    let mut fsm = Fsm::new(config());
    assert_eq!(
        fsm.handle(Event::ManualStart),
        [
            Action::Connect,
            Action::StartTimer(Timer::ConnectRetry, Duration::from_secs(1))
        ]
    );
    assert_eq!(fsm.state(), State::Connect);
    let actions = fsm.handle(Event::TcpConnected);
    assert!(actions.contains(&Action::Send(Message::Open(fsm.open()))));
    assert_eq!(fsm.state(), State::OpenSent);
    fsm
}

fn established(peer_hold: u16) -> (Fsm, Negotiated) {
    let mut fsm = open_sent();
    let actions = fsm.handle(Event::Message(Message::Open(peer_open(peer_hold))));
    assert_eq!(fsm.state(), State::OpenConfirm);
    assert_eq!(actions[0], Action::Send(Message::Keepalive));
    let actions = fsm.handle(Event::Message(Message::Keepalive));
    assert_eq!(fsm.state(), State::Established);
    let negotiated = actions
        .iter()
        .find_map(|a| match a {
            Action::Established(n) => Some(n.clone()),
            _ => None,
        })
        .expect("Established action");
    (fsm, negotiated)
}

#[test]
fn open_carries_as_trans_fields_and_capabilities() {
    let fsm = Fsm::new(config());
    let open = fsm.open();
    assert_eq!(open.asn, 65100);
    assert_eq!(open.hold_time, 9);
    assert_eq!(open.capabilities.four_octet_as, Some(65100));
    assert!(open.capabilities.route_refresh);
}

#[test]
fn reaches_established_and_negotiates_the_smaller_hold_time() {
    let (_, n) = established(6);
    assert_eq!(n.hold_time, Duration::from_secs(6));
    assert_eq!(n.keepalive, Duration::from_secs(2));
    assert_eq!(n.families, [Family::Ipv4]);
    assert_eq!(n.peer_router_id, Ipv4Addr::new(10, 0, 0, 1));
    let (_, n) = established(90);
    assert_eq!(n.hold_time, Duration::from_secs(9));
    assert_eq!(n.keepalive, Duration::from_secs(3));
}

#[test]
fn hold_time_zero_means_no_keepalives_and_no_hold_timer() {
    let mut fsm = open_sent();
    let actions = fsm.handle(Event::Message(Message::Open(peer_open(0))));
    assert!(actions.contains(&Action::StopTimer(Timer::Hold)));
    assert!(actions.contains(&Action::StopTimer(Timer::Keepalive)));
    assert!(
        !actions
            .iter()
            .any(|a| matches!(a, Action::StartTimer(Timer::Keepalive | Timer::Hold, _)))
    );
    let actions = fsm.handle(Event::Message(Message::Keepalive));
    assert_eq!(fsm.state(), State::Established);
    assert!(!actions.iter().any(|a| matches!(a, Action::StartTimer(..))));
    assert_eq!(fsm.negotiated().unwrap().hold_time, Duration::ZERO);
}

#[test]
fn keepalive_timer_sends_keepalive_and_rearms() {
    let (mut fsm, n) = established(9);
    assert_eq!(
        fsm.handle(Event::TimerExpired(Timer::Keepalive)),
        [
            Action::Send(Message::Keepalive),
            Action::StartTimer(Timer::Keepalive, n.keepalive)
        ]
    );
}

#[test]
fn messages_restart_the_hold_timer_and_updates_are_counted() {
    let (mut fsm, n) = established(9);
    assert_eq!(
        fsm.handle(Event::Message(Message::Keepalive)),
        [Action::StartTimer(Timer::Hold, n.hold_time)]
    );
    let actions = fsm.handle(Event::Message(Message::EndOfRib(Family::Ipv4)));
    assert!(actions.contains(&Action::UpdateReceived));
    assert_eq!(fsm.state(), State::Established);
}

#[test]
fn hold_timer_expiry_sends_notification_4_and_backs_off() {
    let (mut fsm, _) = established(9);
    let actions = fsm.handle(Event::TimerExpired(Timer::Hold));
    assert_eq!(
        sent_notification(&actions),
        Some(&Notification::new(4, 0, []))
    );
    assert!(actions.contains(&Action::CloseConnection));
    assert!(actions.iter().any(|a| matches!(a, Action::Down(_))));
    assert!(actions.contains(&Action::StartTimer(
        Timer::ConnectRetry,
        Duration::from_secs(1)
    )));
    assert_eq!(fsm.state(), State::Active);
    // The retry reconnects; a second failure waits twice as long.
    assert_eq!(
        fsm.handle(Event::TimerExpired(Timer::ConnectRetry))[0],
        Action::Connect
    );
    assert_eq!(fsm.state(), State::Connect);
    let actions = fsm.handle(Event::TcpFailed);
    assert!(actions.contains(&Action::StartTimer(
        Timer::ConnectRetry,
        Duration::from_secs(2)
    )));
    assert_eq!(fsm.state(), State::Active);
}

#[test]
fn back_off_is_capped_and_resets_once_established() {
    let mut fsm = Fsm::new(config());
    fsm.handle(Event::ManualStart);
    for _ in 0..20 {
        fsm.handle(Event::TcpFailed);
        fsm.handle(Event::TimerExpired(Timer::ConnectRetry));
    }
    assert_eq!(fsm.retry_delay(), Duration::from_secs(30));
    fsm.handle(Event::TcpConnected);
    fsm.handle(Event::Message(Message::Open(peer_open(9))));
    fsm.handle(Event::Message(Message::Keepalive));
    assert_eq!(fsm.state(), State::Established);
    assert_eq!(fsm.retry_delay(), Duration::from_secs(1));
}

#[test]
fn hold_timer_in_open_sent_also_expires() {
    let mut fsm = open_sent();
    let actions = fsm.handle(Event::TimerExpired(Timer::Hold));
    assert_eq!(
        sent_notification(&actions),
        Some(&Notification::new(4, 0, []))
    );
    assert_eq!(fsm.state(), State::Active);
}

type Mutation = Box<dyn Fn(&mut Open)>;

#[test]
fn bad_open_gets_the_right_notification() {
    let cases: [(&str, Mutation, Notification); 6] = [
        (
            "wrong peer AS",
            Box::new(|o| o.asn = 65999),
            Notification::new(2, 2, []),
        ),
        (
            "hold time 1",
            Box::new(|o| o.hold_time = 1),
            Notification::new(2, 6, []),
        ),
        (
            "hold time 2",
            Box::new(|o| o.hold_time = 2),
            Notification::new(2, 6, []),
        ),
        (
            "version 3",
            Box::new(|o| o.version = 3),
            Notification::new(2, 1, [0, 4]),
        ),
        (
            "router id 0.0.0.0",
            Box::new(|o| o.router_id = Ipv4Addr::UNSPECIFIED),
            Notification::new(2, 3, []),
        ),
        (
            "router id 255.255.255.255",
            Box::new(|o| o.router_id = Ipv4Addr::BROADCAST),
            Notification::new(2, 3, []),
        ),
    ];
    for (name, mutate, expected) in cases {
        let mut fsm = open_sent();
        let mut open = peer_open(9);
        mutate(&mut open);
        let actions = fsm.handle(Event::Message(Message::Open(open)));
        assert_eq!(sent_notification(&actions), Some(&expected), "{name}");
        assert!(actions.contains(&Action::CloseConnection), "{name}");
        assert_eq!(fsm.state(), State::Active, "{name}");
    }
}

#[test]
fn ibgp_peer_with_our_router_id_is_rejected() {
    let mut fsm = Fsm::new(FsmConfig {
        peer_asn: 65100,
        ..config()
    });
    fsm.handle(Event::ManualStart);
    fsm.handle(Event::TcpConnected);
    let mut open = peer_open(9);
    open.asn = 65100;
    open.router_id = Ipv4Addr::new(10, 0, 0, 2);
    let actions = fsm.handle(Event::Message(Message::Open(open)));
    assert_eq!(
        sent_notification(&actions),
        Some(&Notification::new(2, 3, []))
    );
}

#[test]
fn unexpected_messages_are_fsm_errors_with_the_state_subcode() {
    let mut fsm = open_sent();
    let actions = fsm.handle(Event::Message(Message::Keepalive));
    assert_eq!(
        sent_notification(&actions),
        Some(&Notification::new(5, 1, []))
    );

    let mut fsm = open_sent();
    fsm.handle(Event::Message(Message::Open(peer_open(9))));
    let actions = fsm.handle(Event::Message(Message::EndOfRib(Family::Ipv4)));
    assert_eq!(
        sent_notification(&actions),
        Some(&Notification::new(5, 2, []))
    );

    let (mut fsm, _) = established(9);
    let actions = fsm.handle(Event::Message(Message::Open(peer_open(9))));
    assert_eq!(
        sent_notification(&actions),
        Some(&Notification::new(5, 3, []))
    );
}

#[test]
fn decode_errors_send_their_notification() {
    let (mut fsm, _) = established(9);
    let n = Notification::new(3, 1, []);
    let actions = fsm.handle(Event::DecodeError(n.clone()));
    assert_eq!(sent_notification(&actions), Some(&n));
    assert_eq!(fsm.state(), State::Active);
}

#[test]
fn notification_from_peer_closes_without_answering() {
    let (mut fsm, _) = established(9);
    let actions = fsm.handle(Event::Message(Message::Notification(Notification::new(
        6,
        2,
        [],
    ))));
    assert_eq!(sent_notification(&actions), None);
    assert!(actions.contains(&Action::CloseConnection));
    assert_eq!(fsm.state(), State::Active);
}

#[test]
fn route_refresh_resends_negotiated_families_only() {
    let (mut fsm, _) = established(9);
    let actions = fsm.handle(Event::Message(Message::RouteRefresh(Family::Ipv4)));
    assert!(actions.contains(&Action::ResendRoutes(Family::Ipv4)));
    let actions = fsm.handle(Event::Message(Message::RouteRefresh(Family::Ipv6)));
    assert!(!actions.iter().any(|a| matches!(a, Action::ResendRoutes(_))));
}

#[test]
fn manual_stop_sends_cease_administrative_shutdown() {
    let (mut fsm, _) = established(9);
    let actions = fsm.handle(Event::ManualStop);
    assert_eq!(
        sent_notification(&actions),
        Some(&Notification::new(6, 2, []))
    );
    assert!(actions.contains(&Action::CloseConnection));
    assert_eq!(fsm.state(), State::Idle);
    // Stopped means stopped: timers and messages do nothing.
    assert!(
        fsm.handle(Event::TimerExpired(Timer::ConnectRetry))
            .is_empty()
    );

    let mut fsm = Fsm::new(config());
    fsm.handle(Event::ManualStart);
    let actions = fsm.handle(Event::ManualStop);
    assert_eq!(
        sent_notification(&actions),
        None,
        "no session, no NOTIFICATION"
    );
}

#[test]
fn tcp_close_by_peer_goes_down_and_retries() {
    let (mut fsm, _) = established(9);
    let actions = fsm.handle(Event::TcpFailed);
    assert!(actions.iter().any(|a| matches!(a, Action::Down(_))));
    assert!(
        actions
            .iter()
            .any(|a| matches!(a, Action::StartTimer(Timer::ConnectRetry, _)))
    );
    assert_eq!(fsm.state(), State::Active);
}

fn collision() -> Notification {
    Notification::new(6, 7, [])
}

#[test]
fn incoming_connection_is_adopted_when_there_is_none() {
    let mut fsm = Fsm::new(config());
    assert_eq!(
        fsm.handle(Event::TcpAccepted),
        [Action::RejectIncoming(None)],
        "Idle: not started"
    );
    fsm.handle(Event::ManualStart);
    fsm.handle(Event::TcpFailed);
    assert_eq!(fsm.state(), State::Active);
    let actions = fsm.handle(Event::TcpAccepted);
    assert_eq!(actions[0], Action::AdoptIncoming);
    assert!(actions.contains(&Action::Send(Message::Open(fsm.open()))));
    assert_eq!(fsm.state(), State::OpenSent);
    fsm.handle(Event::Message(Message::Open(peer_open(9))));
    fsm.handle(Event::Message(Message::Keepalive));
    assert_eq!(fsm.state(), State::Established);
}

#[test]
fn collision_keeps_our_connection_when_our_id_is_higher() {
    let mut fsm = open_sent();
    assert_eq!(fsm.handle(Event::TcpAccepted), [Action::HoldIncoming]);
    // Peer id 10.0.0.1 < ours 10.0.0.2.
    let actions = fsm.handle(Event::Message(Message::Open(peer_open(9))));
    assert!(actions.contains(&Action::RejectIncoming(Some(collision()))));
    assert!(!actions.contains(&Action::CloseConnection));
    assert_eq!(fsm.state(), State::OpenConfirm);
    fsm.handle(Event::Message(Message::Keepalive));
    assert_eq!(fsm.state(), State::Established);
}

#[test]
fn collision_yields_to_the_peer_when_its_id_is_higher() {
    let mut fsm = open_sent();
    fsm.handle(Event::TcpAccepted);
    let mut open = peer_open(9);
    open.router_id = Ipv4Addr::new(10, 0, 0, 9);
    let actions = fsm.handle(Event::Message(Message::Open(open.clone())));
    assert_eq!(sent_notification(&actions), Some(&collision()));
    let close = actions.iter().position(|a| *a == Action::CloseConnection);
    let adopt = actions.iter().position(|a| *a == Action::AdoptIncoming);
    assert!(close < adopt && close.is_some(), "{actions:?}");
    assert_eq!(fsm.state(), State::OpenSent);
    // The peer's OPEN on the adopted connection completes the session.
    fsm.handle(Event::Message(Message::Open(open)));
    fsm.handle(Event::Message(Message::Keepalive));
    assert_eq!(fsm.state(), State::Established);
}

#[test]
fn collision_in_open_confirm_and_established() {
    let mut fsm = open_sent();
    let mut open = peer_open(9);
    open.router_id = Ipv4Addr::new(10, 0, 0, 9);
    fsm.handle(Event::Message(Message::Open(open)));
    assert_eq!(fsm.state(), State::OpenConfirm);
    let actions = fsm.handle(Event::TcpAccepted);
    assert!(actions.contains(&Action::AdoptIncoming));
    assert_eq!(fsm.state(), State::OpenSent);

    let (mut fsm, _) = established(9);
    assert_eq!(
        fsm.handle(Event::TcpAccepted),
        [Action::RejectIncoming(Some(collision()))]
    );
    assert_eq!(fsm.state(), State::Established);
}

#[test]
fn held_connection_takes_over_when_ours_fails() {
    let mut fsm = open_sent();
    fsm.handle(Event::TcpAccepted);
    let actions = fsm.handle(Event::TcpFailed);
    assert!(actions.contains(&Action::AdoptIncoming));
    assert_eq!(fsm.state(), State::OpenSent);
}

#[test]
fn graceful_restart_r_bit_only_until_the_first_session() {
    let mut fsm = Fsm::new(FsmConfig {
        graceful_restart: Some(30),
        restarting: true,
        ..config()
    });
    let gr = fsm
        .open()
        .capabilities
        .graceful_restart
        .expect("GR capability");
    assert!(gr.restarting && gr.forwarding, "{gr:?}");
    assert_eq!((gr.restart_time, gr.families), (30, vec![Family::Ipv4]));
    fsm.handle(Event::ManualStart);
    fsm.handle(Event::TcpConnected);
    fsm.handle(Event::Message(Message::Open(peer_open(9))));
    fsm.handle(Event::Message(Message::Keepalive));
    assert_eq!(fsm.state(), State::Established);
    let gr = fsm
        .open()
        .capabilities
        .graceful_restart
        .expect("GR capability");
    assert!(!gr.restarting && gr.forwarding, "{gr:?}");

    // A cold start: neither bit until a session has been up.
    let fsm = Fsm::new(FsmConfig {
        graceful_restart: Some(30),
        ..config()
    });
    let gr = fsm
        .open()
        .capabilities
        .graceful_restart
        .expect("GR capability");
    assert!(!gr.restarting && !gr.forwarding, "{gr:?}");
    assert_eq!(
        Fsm::new(config()).open().capabilities.graceful_restart,
        None
    );
}

#[test]
fn rfc7606_malformed_update_keeps_the_session() {
    let (mut fsm, negotiated) = established(9);
    let actions = fsm.handle(Event::MalformedUpdate("bad ORIGIN".into()));
    assert_eq!(fsm.state(), State::Established);
    assert_eq!(
        actions,
        [
            Action::StartTimer(Timer::Hold, negotiated.hold_time),
            Action::UpdateDiscarded("bad ORIGIN".into())
        ]
    );
    // Before Established an UPDATE of any kind is an FSM error.
    let mut fsm = open_sent();
    let actions = fsm.handle(Event::MalformedUpdate("x".into()));
    assert_eq!(
        sent_notification(&actions).map(|n| (n.code, n.subcode)),
        Some((5, 1))
    );
}
