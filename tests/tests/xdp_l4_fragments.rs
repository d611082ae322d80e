//! IP fragments of VIP flows through BPF_PROG_RUN: a datagram is steered whole (every
//! fragment to the first fragment's backend) or passed to the kernel whole, never split
//! between the two, whatever its first fragment holds (an SCTP port change, which the CRC
//! of a partial datagram cannot take; a TCP header cut before its checksum) and whatever an
//! IPv6 later fragment's payload looks like. Exact output bytes and the one counter that
//! moves, as in xdp_l4_fixtures.

use std::net::IpAddr;

use testkit::{
    bpf::{LO_IFINDEX, Verdict, XdpHarness},
    l4packets::{Flow, Frag, Shape, UDP, verify},
    l4tables::{CLIENT6, VIP6, fixture_tables},
};
use vipwire_common::{
    Reason,
    l4::{XDP_META_MAGIC, XdpMeta},
};

fn ip(s: &str) -> IpAddr {
    s.parse().expect("address literal")
}

fn flow(src: &str, dst: &str, sport: u16, dport: u16, proto: u8) -> Flow {
    Flow {
        src: ip(src),
        dst: ip(dst),
        sport,
        dport,
        proto,
    }
}

/// Runs `frame`: its verdict, the frame (without the `XdpMeta` when steered) and the one
/// reason counted.
fn run(h: &mut XdpHarness, name: &str, frame: &[u8]) -> (Verdict, Vec<u8>, Reason) {
    let before = h.counters();
    let out = h.run(frame, LO_IFINDEX);
    let after = h.counters();
    let moved: Vec<Reason> = Reason::ALL
        .into_iter()
        .filter(|r| after[*r as usize] != before[*r as usize])
        .collect();
    assert_eq!(moved.len(), 1, "{name}: one counter per packet: {moved:?}");
    let reason = moved[0];
    let mut frame = out.frame;
    if reason == Reason::Steered {
        let magic = u32::from_ne_bytes(frame[..4].try_into().expect("4 bytes"));
        assert_eq!(magic, XDP_META_MAGIC, "{name}: XdpMeta");
        frame.drain(..size_of::<XdpMeta>());
    }
    (out.verdict, frame, reason)
}

/// Steered and rewritten to exactly `expected`, checksums verified independently.
fn steered(h: &mut XdpHarness, name: &str, frame: &[u8], expected: &[u8]) {
    verify(&steered_bytes(h, name, frame, expected));
}

/// Steered and rewritten to exactly `expected`; the output.
fn steered_bytes(h: &mut XdpHarness, name: &str, frame: &[u8], expected: &[u8]) -> Vec<u8> {
    let (verdict, out, counted) = run(h, name, frame);
    assert_eq!(
        (verdict, counted),
        (Verdict::Pass, Reason::Steered),
        "{name}: verdict, reason"
    );
    assert_eq!(out, expected, "{name}: output bytes");
    out
}

#[test]
fn ipv6_later_fragments_are_not_read_past_the_fragment_header() {
    let mut h = fixture_tables();
    // The first fragment carries a destination options header after the Fragment header
    // (Fragment → 60 → UDP); the later ones carry only payload behind Fragment → 60. Their
    // payloads read as headers would end too far out, or at another protocol (TCP: 6).
    let f = flow(CLIENT6, VIP6, 44100, 53, UDP);
    let to = Flow {
        dst: ip("fd00:244::12"),
        ..f
    };
    let shape = |frag| Shape {
        frag,
        frag_dest_opts: true,
        ..Shape::default()
    };
    let first = shape(Frag::First(0x99));
    let expected = Flow { dport: 5353, ..to }.frame_with(first);
    steered(&mut h, "first fragment", &f.frame_with(first), &expected);
    for payload in [&b"hello vipwire"[..], &[6, 0, 0, 0, 0, 0, 0, 0, 1, 2, 3, 4]] {
        let later = Shape {
            payload,
            ..shape(Frag::Later(0x99))
        };
        let name = format!("later fragment {payload:?}");
        // Exact bytes only: etherparse, too, reads this payload as headers (and an IPv6
        // later fragment has no checksum to verify).
        steered_bytes(&mut h, &name, &f.frame_with(later), &to.frame_with(later));
    }
}
