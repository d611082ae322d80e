//! Byte string <-> struct pairs for every message the speaker sends, and the NOTIFICATION each
//! decode error maps to.

use std::net::Ipv6Addr;

use ipnet::Ipv4Net;

use super::*;

fn msg(kind: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![0xff; 16];
    out.extend_from_slice(
        &u16::try_from(HEADER_LEN + body.len())
            .unwrap()
            .to_be_bytes(),
    );
    out.push(kind);
    out.extend_from_slice(body);
    out
}

/// Encodes `m`, checks the bytes, decodes them back and checks the struct.
fn pair(m: &Message, bytes: &[u8]) {
    assert_eq!(encode(m).unwrap(), bytes, "encoding {m:?}");
    assert_eq!(&decode(bytes).unwrap(), m, "decoding {bytes:02x?}");
}

fn open(asn: u32) -> Open {
    Open {
        version: 4,
        asn,
        hold_time: 9,
        router_id: Ipv4Addr::new(10, 0, 0, 2),
        capabilities: Capabilities {
            four_octet_as: Some(asn),
            families: vec![Family::Ipv4],
            route_refresh: true,
            graceful_restart: None,
        },
    }
}

#[test]
fn open_two_octet_asn() {
    #[rustfmt::skip]
    let body = [
        4, 0xfe, 0x4c, 0, 9, 10, 0, 0, 2, 20,
        2, 6, 1, 4, 0, 1, 0, 1, // MP: IPv4 unicast
        2, 2, 2, 0, // route refresh
        2, 6, 65, 4, 0, 0, 0xfe, 0x4c, // four-octet AS 65100
    ];
    pair(&Message::Open(open(65100)), &msg(1, &body));
}

#[test]
fn open_four_octet_asn_puts_as_trans_in_the_header() {
    #[rustfmt::skip]
    let body = [
        4, 0x5b, 0xa0, 0, 9, 10, 0, 0, 2, 20,
        2, 6, 1, 4, 0, 1, 0, 1,
        2, 2, 2, 0,
        2, 6, 65, 4, 0x00, 0x01, 0x00, 0x00, // 65536
    ];
    pair(&Message::Open(open(65536)), &msg(1, &body));
}

#[test]
fn open_with_ipv6_and_graceful_restart() {
    let mut o = open(65100);
    o.capabilities.families = vec![Family::Ipv4, Family::Ipv6];
    o.capabilities.graceful_restart = Some(GracefulRestart {
        restarting: true,
        restart_time: 120,
        families: vec![Family::Ipv4],
        forwarding: true,
    });
    #[rustfmt::skip]
    let body = [
        4, 0xfe, 0x4c, 0, 9, 10, 0, 0, 2, 38,
        2, 6, 1, 4, 0, 1, 0, 1,
        2, 6, 1, 4, 0, 2, 0, 1, // MP: IPv6 unicast
        2, 2, 2, 0,
        2, 8, 64, 6, 0x80, 120, 0, 1, 1, 0x80, // GR: R bit, 120 s, IPv4 unicast with F bit
        2, 6, 65, 4, 0, 0, 0xfe, 0x4c,
    ];
    pair(&Message::Open(o), &msg(1, &body));
}

#[test]
fn keepalive_notification_route_refresh() {
    pair(&Message::Keepalive, &msg(4, &[]));
    pair(
        &Message::Notification(Notification::new(6, 2, [])),
        &msg(3, &[6, 2]),
    );
    pair(
        &Message::Notification(Notification::new(4, 0, [])),
        &msg(3, &[4, 0]),
    );
    pair(
        &Message::Notification(Notification::new(2, 1, [0, 4])),
        &msg(3, &[2, 1, 0, 4]),
    );
    pair(&Message::RouteRefresh(Family::Ipv4), &msg(5, &[0, 1, 0, 1]));
    pair(&Message::RouteRefresh(Family::Ipv6), &msg(5, &[0, 2, 0, 1]));
}

#[test]
fn end_of_rib_markers() {
    pair(&Message::EndOfRib(Family::Ipv4), &msg(2, &[0, 0, 0, 0]));
    pair(
        &Message::EndOfRib(Family::Ipv6),
        &msg(2, &[0, 0, 0, 7, 0x90, 15, 0, 3, 0, 2, 1]),
    );
}

#[test]
fn ipv4_update_with_every_attribute() {
    let update = Update {
        announce: vec!["203.0.113.1/32".parse().unwrap()],
        withdraw: vec![],
        attributes: Attributes {
            as_path: vec![65100],
            next_hop: Some("10.0.0.2".parse().unwrap()),
            med: Some(10),
            local_pref: Some(150),
            communities: vec![(65000, 100)],
            large_communities: vec![(65100, 1, 1)],
        },
    };
    #[rustfmt::skip]
    let body = [
        0, 0, // no withdrawn routes
        0, 58,
        0x40, 1, 1, 0, // ORIGIN IGP
        0x40, 2, 6, 2, 1, 0, 0, 0xfe, 0x4c, // AS_PATH: AS_SEQUENCE [65100]
        0x40, 3, 4, 10, 0, 0, 2, // NEXT_HOP
        0x80, 4, 4, 0, 0, 0, 10, // MED
        0x40, 5, 4, 0, 0, 0, 150, // LOCAL_PREF
        0xd0, 8, 0, 4, 0xfd, 0xe8, 0, 100, // COMMUNITIES 65000:100
        0xd0, 32, 0, 12, 0, 0, 0xfe, 0x4c, 0, 0, 0, 1, 0, 0, 0, 1, // LARGE_COMMUNITY
        32, 203, 0, 113, 1,
    ];
    pair(&Message::Update(update), &msg(2, &body));
}

#[test]
fn ipv4_withdrawals_many_per_update() {
    let update = Update {
        announce: vec![],
        withdraw: vec![
            "203.0.113.1/32".parse().unwrap(),
            "203.0.113.2/32".parse().unwrap(),
        ],
        attributes: Attributes::default(),
    };
    let body = [0, 10, 32, 203, 0, 113, 1, 32, 203, 0, 113, 2, 0, 0];
    pair(&Message::Update(update), &msg(2, &body));
}

#[test]
fn ipv6_update_and_withdrawal() {
    let nh: Ipv6Addr = "fd00::2".parse().unwrap();
    let update = Update {
        announce: vec!["2001:db8::1/128".parse().unwrap()],
        withdraw: vec![],
        attributes: Attributes {
            as_path: vec![65100],
            next_hop: Some(IpAddr::V6(nh)),
            ..Attributes::default()
        },
    };
    let mut body = vec![
        0, 0, 0, 55, 0x40, 1, 1, 0, 0x40, 2, 6, 2, 1, 0, 0, 0xfe, 0x4c,
    ];
    body.extend_from_slice(&[0x90, 14, 0, 38, 0, 2, 1, 16]);
    body.extend_from_slice(&nh.octets());
    body.extend_from_slice(&[0, 128]);
    body.extend_from_slice(&"2001:db8::1".parse::<Ipv6Addr>().unwrap().octets());
    pair(&Message::Update(update), &msg(2, &body));

    let update = Update {
        announce: vec![],
        withdraw: vec!["2001:db8::1/128".parse().unwrap()],
        attributes: Attributes::default(),
    };
    let mut body = vec![0, 0, 0, 24, 0x90, 15, 0, 20, 0, 2, 1, 128];
    body.extend_from_slice(&"2001:db8::1".parse::<Ipv6Addr>().unwrap().octets());
    pair(&Message::Update(update), &msg(2, &body));
}

#[test]
fn large_updates_are_split_under_4096_bytes() {
    let announce: Vec<IpNet> = (0..3000u32)
        .map(|i| IpNet::V4(Ipv4Net::new(Ipv4Addr::from(0x0a00_0000 + i), 32).unwrap()))
        .collect();
    let update = Update {
        announce: announce.clone(),
        withdraw: vec![],
        attributes: Attributes {
            as_path: vec![65100],
            next_hop: Some("10.0.0.2".parse().unwrap()),
            ..Attributes::default()
        },
    };
    let bufs = encode_updates(&update).unwrap();
    assert!(bufs.len() >= 4, "{} messages", bufs.len());
    let mut back = Vec::new();
    for buf in &bufs {
        assert!(buf.len() <= MAX_MESSAGE_LEN);
        let Message::Update(u) = decode(buf).unwrap() else {
            panic!("not an UPDATE")
        };
        back.extend(u.announce);
    }
    assert_eq!(back, announce);
}

#[test]
fn decode_errors_map_to_notifications() {
    let header = |m: &[u8]| -> [u8; HEADER_LEN] { m[..HEADER_LEN].try_into().unwrap() };
    // Connection not synchronized: 1/1.
    let mut bad = msg(4, &[]);
    bad[3] = 0;
    assert_eq!(message_len(&header(&bad)).unwrap_err().code, 1);
    assert_eq!(message_len(&header(&bad)).unwrap_err().subcode, 1);
    assert_eq!(
        decode(&bad)
            .unwrap_err()
            .notification()
            .map(|n| (n.code, n.subcode)),
        Some((1, 1))
    );
    // Bad length: 1/2 with the length.
    let mut bad = msg(4, &[]);
    bad[16..18].copy_from_slice(&5000u16.to_be_bytes());
    assert_eq!(
        message_len(&header(&bad)),
        Err(Notification::new(1, 2, 5000u16.to_be_bytes()))
    );
    // Bad type: 1/3.
    let bad = msg(9, &[]);
    let n = decode(&bad).unwrap_err();
    assert_eq!(n.notification().map(|n| (n.code, n.subcode)), Some((1, 3)));
    // OPEN with version 3: 2/1.
    let mut body = encode(&Message::Open(open(65100))).unwrap();
    body[HEADER_LEN] = 3;
    let n = decode(&body).unwrap_err();
    assert_eq!(n.notification().map(|n| (n.code, n.subcode)), Some((2, 1)));
    // UPDATE whose NLRI claims a 33-bit prefix: 3/x (RFC 7606 keeps session reset).
    let bad = msg(2, &[0, 0, 0, 0, 33, 1, 2, 3, 4, 5]);
    let n = decode(&bad).unwrap_err();
    assert_eq!(n.notification().map(|n| n.code), Some(3), "{n}");
}

/// An UPDATE announcing 203.0.113.1/32 with `attrs` as its path attributes.
fn update_with(attrs: &[u8]) -> Vec<u8> {
    let mut body = vec![0, 0];
    body.extend_from_slice(&u16::try_from(attrs.len()).unwrap().to_be_bytes());
    body.extend_from_slice(attrs);
    body.extend_from_slice(&[32, 203, 0, 113, 1]);
    msg(2, &body)
}

const GOOD_ATTRS: [u8; 20] = [
    0x40, 1, 1, 0, // ORIGIN IGP
    0x40, 2, 6, 2, 1, 0, 0, 0xfd, 0xe9, // AS_PATH [65001]
    0x40, 3, 4, 10, 0, 0, 1, // NEXT_HOP
];

#[test]
fn rfc7606_attribute_errors_are_ignorable() {
    assert!(matches!(
        decode(&update_with(&GOOD_ATTRS)),
        Ok(Message::Update(_))
    ));
    let ignorable = |attrs: &[u8], what: &str| match decode(&update_with(attrs)) {
        Err(WireError::IgnorableUpdate { .. }) => {}
        other => panic!("{what}: {other:?}"),
    };
    // An attribute length that runs past the attribute list (section 4).
    ignorable(&[0x40, 1, 9, 0], "overrun");
    // Fewer bytes left than an attribute header (section 4).
    let mut short = GOOD_ATTRS.to_vec();
    short.extend_from_slice(&[0x40, 1]);
    ignorable(&short, "trailing bytes");
    // ORIGIN with an undefined value, and with a bad length (treat-as-withdraw, 7.1).
    let mut origin = GOOD_ATTRS;
    origin[3] = 9;
    ignorable(&origin, "undefined ORIGIN");
    let mut attrs = vec![0x40, 1, 2, 0, 0];
    attrs.extend_from_slice(&GOOD_ATTRS[4..]);
    ignorable(&attrs, "ORIGIN length 2");
    // NEXT_HOP with a bad length (treat-as-withdraw, 7.3).
    let mut attrs = GOOD_ATTRS[..13].to_vec();
    attrs.extend_from_slice(&[0x40, 3, 3, 10, 0, 0]);
    ignorable(&attrs, "NEXT_HOP length 3");
}

#[test]
fn rfc7606_framing_and_mp_errors_still_reset() {
    let reset = |bytes: &[u8], what: &str| {
        let err = decode(bytes).expect_err(what);
        let n = err
            .notification()
            .unwrap_or_else(|| panic!("{what}: {err}"));
        assert_eq!(n.code, 3, "{what}: {n}");
    };
    // Withdrawn Routes Length past the message.
    reset(&msg(2, &[0, 9, 0, 0]), "withdrawn length");
    // Total Path Attribute Length past the message.
    reset(&msg(2, &[0, 0, 0, 9, 0x40, 1, 1, 0]), "attribute length");
    // A withdrawn prefix longer than 32 bits.
    reset(&msg(2, &[0, 2, 40, 1, 0, 0]), "withdrawn prefix");
    // MP_REACH_NLRI for IPv6 unicast whose next hop length runs past the attribute (7.11).
    let mut attrs = GOOD_ATTRS[..13].to_vec();
    attrs.extend_from_slice(&[0x80, 14, 5, 0, 2, 1, 16, 0xfd]);
    reset(&update_with(&attrs), "MP_REACH_NLRI");
}
