//! The speaker against a raw-TCP peer ([`super::raw`]): malformed UPDATEs (RFC 7606:
//! attribute errors are ignored, NLRI errors reset), shutdown's withdrawals and Cease,
//! connection collisions, and a restarting speaker's R bit and its table before End-of-RIB.

use super::*;

#[test]
fn malformed_update_gets_a_notification_and_the_speaker_reconnects() {
    let (_lab, tor, node) = lab("spk-raw", "10.0.38", "fd00:38");
    let listener = testkit::probe::in_netns(&tor, || {
        std::net::TcpListener::bind("10.0.38.1:179").expect("bind 179 in the ToR namespace")
    });
    let speaker = NsSpeaker::start(&node, &bgp(vec![peer("10.0.38.1", 65009, 9)]), "10.0.38.2");
    announce(&speaker, &["203.0.113.38"]);

    let mut conn = raw::accept(&listener, UP);
    let open = raw::handshake(&mut conn, 65009, Ipv4Addr::new(10, 0, 38, 1));
    assert_eq!((open.asn, open.hold_time), (NODE_ASN, 9));
    assert_eq!(open.capabilities.four_octet_as, Some(NODE_ASN));
    assert!(open.capabilities.route_refresh);
    // The initial table, then End-of-RIB.
    let Message::Update(update) = raw::read(&mut conn) else {
        panic!("no UPDATE after Established")
    };
    assert_eq!(update.announce, ["203.0.113.38/32".parse().unwrap()]);
    assert_eq!(update.attributes.next_hop, Some(ip("10.0.38.2")));
    assert_eq!(update.attributes.as_path, [NODE_ASN]);
    assert_eq!(raw::read(&mut conn), Message::EndOfRib(Family::Ipv4));
    // A route refresh gets the table again.
    raw::send(&mut conn, &Message::RouteRefresh(Family::Ipv4));
    let Message::Update(again) = raw::read(&mut conn) else {
        panic!("no UPDATE after ROUTE-REFRESH")
    };
    assert_eq!(again.announce, update.announce);

    // An UPDATE whose NLRI claims a 33-bit prefix: RFC 7606 keeps the session reset for NLRI
    // that cannot be parsed, so UPDATE Message Error.
    let mut bad = vec![0xff; 16];
    bad.extend_from_slice(&[0, 29, 2, 0, 0, 0, 0, 33, 1, 2, 3, 4, 5]);
    std::io::Write::write_all(&mut conn, &bad).expect("write");
    let notification = loop {
        match raw::read(&mut conn) {
            Message::Notification(n) => break n,
            Message::Keepalive => continue,
            other => panic!("expected a NOTIFICATION, got {other:?}"),
        }
    };
    assert_eq!(notification.code, 3, "{notification}");
    let status = speaker.status("10.0.38.1");
    assert_ne!(status.state, State::Established, "{status:?}");

    // The speaker comes back after its back-off and re-announces.
    let mut conn = raw::accept(&listener, UP);
    raw::handshake(&mut conn, 65009, Ipv4Addr::new(10, 0, 38, 1));
    let Message::Update(update) = raw::read(&mut conn) else {
        panic!("no UPDATE after reconnecting")
    };
    assert_eq!(update.announce, ["203.0.113.38/32".parse().unwrap()]);
    speaker.wait_established("10.0.38.1");
}

#[test]
fn shutdown_sends_withdrawals_then_cease_administrative_shutdown() {
    let (_lab, tor, node) = lab("spk-cease", "10.0.39", "fd00:39");
    let listener = testkit::probe::in_netns(&tor, || {
        std::net::TcpListener::bind("10.0.39.1:179").expect("bind 179 in the ToR namespace")
    });
    let mut speaker = NsSpeaker::start(&node, &bgp(vec![peer("10.0.39.1", 65009, 9)]), "10.0.39.2");
    announce(&speaker, &["203.0.113.39", "203.0.113.40"]);
    let mut conn = raw::accept(&listener, UP);
    raw::handshake(&mut conn, 65009, Ipv4Addr::new(10, 0, 39, 1));
    let Message::Update(update) = raw::read(&mut conn) else {
        panic!("no UPDATE after Established")
    };
    assert_eq!(update.announce.len(), 2, "many NLRI in one UPDATE");
    assert_eq!(raw::read(&mut conn), Message::EndOfRib(Family::Ipv4));
    speaker.wait_established("10.0.39.1");
    assert!(speaker.status("10.0.39.1").last_error.is_none());

    speaker.shutdown();
    let mut withdrawn = Vec::new();
    let notification = loop {
        match raw::read(&mut conn) {
            Message::Update(u) => withdrawn.extend(u.withdraw),
            Message::Notification(n) => break n,
            Message::Keepalive => continue,
            other => panic!("unexpected {other:?}"),
        }
    };
    withdrawn.sort();
    assert_eq!(
        withdrawn,
        [
            "203.0.113.39/32".parse().unwrap(),
            "203.0.113.40/32".parse().unwrap()
        ]
    );
    assert_eq!((notification.code, notification.subcode), (6, 2));
}

/// survives and the other gets Cease/Connection Collision Resolution (6/7).
fn collision(tag: &str, net: &str, peer_id: Ipv4Addr, ours_survives: bool) {
    let (_lab, tor, node) = lab(tag, net, "fd00:45");
    let tor_addr = format!("{net}.1");
    let node_addr = format!("{net}.2");
    let bind = format!("{tor_addr}:179");
    let listener = testkit::probe::in_netns(&tor, move || {
        std::net::TcpListener::bind(bind).expect("bind 179 in the ToR namespace")
    });
    let speaker =
        NsSpeaker::start_listening(&node, &bgp(vec![peer(&tor_addr, 65009, 9)]), &node_addr);
    announce(&speaker, &["203.0.113.45"]);

    // The speaker's connection: it sent its OPEN and waits for ours.
    let mut out = raw::accept(&listener, UP);
    let Message::Open(_) = raw::read(&mut out) else {
        panic!("no OPEN from the speaker")
    };
    // Ours, to its listener.
    let to = format!("{node_addr}:179");
    // The listener is bound by a task of its own: retry until it is there.
    let mut inc = testkit::probe::in_netns(&tor, move || {
        wait_for("the speaker's listener", UP, || {
            std::net::TcpStream::connect(&to).ok()
        })
    });
    inc.set_read_timeout(Some(Duration::from_secs(15)))
        .expect("read timeout");
    let open = |id| {
        Message::Open(vipwire::bgp::wire::Open {
            version: 4,
            asn: 65009,
            hold_time: 9,
            router_id: id,
            capabilities: vipwire::bgp::wire::Capabilities {
                four_octet_as: Some(65009),
                families: vec![Family::Ipv4],
                route_refresh: true,
                graceful_restart: None,
            },
        })
    };
    raw::send(&mut inc, &open(peer_id));
    raw::send(&mut out, &open(peer_id));

    let (mut winner, mut loser) = if ours_survives {
        (out, inc)
    } else {
        (inc, out)
    };
    let cease = loop {
        match raw::read(&mut loser) {
            Message::Notification(n) => break n,
            Message::Keepalive | Message::Open(_) => continue,
            other => panic!("unexpected {other:?} on the losing connection"),
        }
    };
    assert_eq!((cease.code, cease.subcode), (6, 7), "{cease}");
    // The surviving connection completes: (OPEN if the speaker adopted it,) KEEPALIVE, then
    // the table and End-of-RIB once we confirm.
    loop {
        match raw::read(&mut winner) {
            Message::Open(_) => continue,
            Message::Keepalive => break,
            other => panic!("unexpected {other:?} on the winning connection"),
        }
    }
    raw::send(&mut winner, &Message::Keepalive);
    let Message::Update(update) = raw::read(&mut winner) else {
        panic!("no UPDATE on the surviving connection")
    };
    assert_eq!(update.announce, ["203.0.113.45/32".parse().unwrap()]);
    speaker.wait_established(&tor_addr);
}

#[test]
fn collision_our_router_id_higher_keeps_our_connection() {
    collision("spk-coll-lo", "10.0.45", Ipv4Addr::new(10, 0, 45, 1), true);
}

#[test]
fn collision_peer_router_id_higher_keeps_its_connection() {
    collision(
        "spk-coll-hi",
        "10.0.46",
        Ipv4Addr::new(10, 255, 0, 1),
        false,
    );
}

/// An UPDATE announcing 192.0.2.1/32 from AS 65009 with `attrs` replaced by the caller's bytes.
fn raw_update(attrs: &[u8]) -> Vec<u8> {
    let mut out = vec![0xff; 16];
    let len = 19 + 4 + attrs.len() + 5;
    out.extend_from_slice(&u16::try_from(len).expect("short").to_be_bytes());
    out.push(2);
    out.extend_from_slice(&[0, 0]);
    out.extend_from_slice(&u16::try_from(attrs.len()).expect("short").to_be_bytes());
    out.extend_from_slice(attrs);
    out.extend_from_slice(&[32, 192, 0, 2, 1]);
    out
}

#[test]
fn rfc7606_attribute_errors_are_ignored_without_a_reset() {
    let (_lab, tor, node) = lab("spk-7606", "10.0.47", "fd00:47");
    let listener = testkit::probe::in_netns(&tor, || {
        std::net::TcpListener::bind("10.0.47.1:179").expect("bind 179 in the ToR namespace")
    });
    let speaker = NsSpeaker::start(&node, &bgp(vec![peer("10.0.47.1", 65009, 9)]), "10.0.47.2");
    announce(&speaker, &["203.0.113.47"]);
    let mut conn = raw::accept(&listener, UP);
    raw::handshake(&mut conn, 65009, Ipv4Addr::new(10, 0, 47, 1));
    let Message::Update(update) = raw::read_skipping_keepalives(&mut conn) else {
        panic!("no UPDATE after Established")
    };
    assert_eq!(update.attributes.med, Some(42));
    assert_eq!(
        raw::read_skipping_keepalives(&mut conn),
        Message::EndOfRib(Family::Ipv4)
    );
    speaker.wait_established("10.0.47.1");
    let before = speaker.status("10.0.47.1").updates_received;

    let good = [
        0x40, 1, 1, 0, // ORIGIN IGP
        0x40, 2, 6, 2, 1, 0, 0, 0xfe, 0x31, // AS_PATH [65009]
        0x40, 3, 4, 10, 0, 47, 1, // NEXT_HOP
    ];
    let mut undefined_origin = good;
    undefined_origin[3] = 9;
    let mut bad_next_hop = good[..13].to_vec();
    bad_next_hop.extend_from_slice(&[0x40, 3, 3, 10, 0, 47]);
    let overrun = [0x40, 1, 9, 0];
    for attrs in [&undefined_origin[..], &bad_next_hop, &overrun] {
        std::io::Write::write_all(&mut conn, &raw_update(attrs)).expect("write");
    }
    // Still up: a ROUTE-REFRESH is answered with the table, not a NOTIFICATION.
    raw::send(&mut conn, &Message::RouteRefresh(Family::Ipv4));
    match raw::read_skipping_keepalives(&mut conn) {
        Message::Update(again) => assert_eq!(again.announce, update.announce),
        other => panic!("expected the table again, got {other:?}"),
    }
    let status = speaker.status("10.0.47.1");
    assert_eq!(status.state, State::Established, "{status:?}");
    assert_eq!(status.updates_received, before + 3, "{status:?}");
    assert!(status.last_error.is_none(), "{status:?}");
}

#[test]
fn restarting_speaker_sets_the_r_bit_and_holds_end_of_rib_for_its_routes() {
    let (_lab, tor, node) = lab("spk-gr", "10.0.48", "fd00:48");
    let listener = testkit::probe::in_netns(&tor, || {
        std::net::TcpListener::bind("10.0.48.1:179").expect("bind 179 in the ToR namespace")
    });
    let config = BgpConfig {
        graceful_restart_time: Duration::from_secs(30),
        ..bgp(vec![peer("10.0.48.1", 65009, 9)])
    };
    let speaker = NsSpeaker::start_with(
        &node,
        &config,
        "10.0.48.2",
        StartOptions {
            listen_port: None,
            restarting: true,
        },
    );
    // Nothing announced yet: the session comes up but holds back its table and End-of-RIB.
    let mut conn = raw::accept(&listener, UP);
    let open = raw::handshake(&mut conn, 65009, Ipv4Addr::new(10, 0, 48, 1));
    let gr = open
        .capabilities
        .graceful_restart
        .expect("graceful restart capability");
    assert!(gr.restarting, "R bit: {gr:?}");
    assert!(gr.forwarding, "F bit: {gr:?}");
    assert_eq!((gr.restart_time, gr.families), (30, vec![Family::Ipv4]));
    speaker.wait_established("10.0.48.1");
    // The agent's first reconcile: the routes, then End-of-RIB, not End-of-RIB first.
    announce(&speaker, &["203.0.113.48"]);
    let Message::Update(update) = raw::read_skipping_keepalives(&mut conn) else {
        panic!("expected the table before End-of-RIB")
    };
    assert_eq!(update.announce, ["203.0.113.48/32".parse().unwrap()]);
    assert_eq!(
        raw::read_skipping_keepalives(&mut conn),
        Message::EndOfRib(Family::Ipv4)
    );
}
