//! IP fragments of VIP flows through BPF_PROG_RUN: a datagram is steered whole (every
//! fragment to the first fragment's backend) or passed to the kernel whole, never split
//! between the two, whatever its first fragment holds (an SCTP port change, which the CRC
//! of a partial datagram cannot take; a TCP header cut before its checksum) and whatever an
//! IPv6 later fragment's payload looks like. Exact output bytes and the one counter that
//! moves, as in xdp_l4_fixtures.

use testkit::{
    bpf::{LO_IFINDEX, Verdict, XdpHarness},
    l4packets::{Flow, Frag, SCTP, Shape, TCP, TCP_ACK, UDP, flow, fold, ip, sum16, verify},
    l4tables::{
        CLIENT4, CLIENT6, VIP4, VIP6, conntrack, ct_forward, fixture_tables, service_stats,
    },
};
use vipwire_common::{
    Reason,
    l4::{XDP_META_MAGIC, XdpMeta},
};

fn frag(frag: Frag) -> Shape<'static> {
    Shape {
        frag,
        ..Shape::default()
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

/// XDP_PASS, byte for byte as it came, `reason` counted.
fn untouched(h: &mut XdpHarness, name: &str, frame: &[u8], reason: Reason) {
    let (verdict, out, counted) = run(h, name, frame);
    assert_eq!(
        (verdict, counted),
        (Verdict::Pass, reason),
        "{name}: verdict, reason"
    );
    assert_eq!(out, frame, "{name}: passed untouched");
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

/// A first fragment cut to `keep` bytes of its upper layer, its IP length fields to match
/// (a well-formed fragment whose TCP header ends before the checksum).
fn cut(frame: &[u8], keep: usize) -> Vec<u8> {
    let v4 = frame[12..14] == [0x08, 0x00];
    // IPv4 without options; IPv6 with a Fragment header only.
    let l4 = if v4 { 14 + 20 } else { 14 + 40 + 8 };
    let mut f = frame[..l4 + keep].to_vec();
    if v4 {
        let len = (f.len() - 14) as u16;
        f[16..18].copy_from_slice(&len.to_be_bytes());
        f[24..26].fill(0);
        let sum = !fold(sum16(&f[14..34]));
        f[24..26].copy_from_slice(&sum.to_be_bytes());
    } else {
        let len = (f.len() - 14 - 40) as u16;
        f[18..20].copy_from_slice(&len.to_be_bytes());
    }
    f
}

#[test]
fn a_first_fragment_that_cannot_be_rewritten_leaves_its_datagram_to_the_kernel() {
    let mut h = fixture_tables();
    for (client, vip, sctp_service) in [(CLIENT4, VIP4, 3), (CLIENT6, VIP6, 6)] {
        // SCTP 9 → 9999, a new flow: nothing is recorded, so the later fragments find no
        // backend either.
        let f = flow(client, vip, 48000, 9, SCTP);
        let name = format!("{client} SCTP first fragment of a new flow");
        untouched(
            &mut h,
            &name,
            &f.frame_with(frag(Frag::First(0x51))),
            Reason::Unsupported,
        );
        let name = format!("{client} SCTP later fragment of a new flow");
        untouched(
            &mut h,
            &name,
            &f.frame_with(frag(Frag::Later(0x51))),
            Reason::NoBackend,
        );
        let key = ct_forward(f.src, f.dst, f.sport, f.dport, SCTP);
        assert!(
            conntrack(&mut h, &key).is_none(),
            "{client}: no flow tracked"
        );
        let stats = service_stats(&mut h, sctp_service);
        assert_eq!(stats.new_flows, 0, "{client}: {stats:?}");

        // The same on an established SCTP flow.
        let f = flow(client, vip, 48001, 9, SCTP);
        let (_, _, reason) = run(&mut h, "SCTP whole packet", &f.frame());
        assert_eq!(reason, Reason::Steered, "{client}: the flow starts");
        let name = format!("{client} SCTP first fragment of an established flow");
        untouched(
            &mut h,
            &name,
            &f.frame_with(frag(Frag::First(0x52))),
            Reason::Unsupported,
        );
        let name = format!("{client} SCTP later fragment of an established flow");
        untouched(
            &mut h,
            &name,
            &f.frame_with(frag(Frag::Later(0x52))),
            Reason::NoBackend,
        );

        // A TCP SYN whose first fragment ends before the checksum (16 bytes of header).
        let f = flow(client, vip, 48002, 80, TCP);
        let name = format!("{client} short TCP first fragment of a new flow");
        let short = cut(&f.frame_with(frag(Frag::First(0x53))), 16);
        untouched(&mut h, &name, &short, Reason::Passed);
        let name = format!("{client} later fragment after a short TCP first fragment");
        untouched(
            &mut h,
            &name,
            &f.frame_with(frag(Frag::Later(0x53))),
            Reason::NoBackend,
        );
        let key = ct_forward(f.src, f.dst, f.sport, f.dport, TCP);
        assert!(
            conntrack(&mut h, &key).is_none(),
            "{client}: no flow tracked"
        );
    }
}

#[test]
fn a_short_first_fragment_of_an_established_flow_is_not_split() {
    let mut h = fixture_tables();
    for (client, vip, pod) in [
        (CLIENT4, VIP4, "10.244.0.11"),
        (CLIENT6, VIP6, "fd00:244::11"),
    ] {
        let f = flow(client, vip, 48100, 80, TCP);
        let to = Flow { dst: ip(pod), ..f };
        let (_, _, reason) = run(&mut h, "SYN", &f.frame());
        assert_eq!(reason, Reason::Steered, "{client}: the flow starts");
        let ack = |frag| Shape {
            frag,
            tcp_flags: TCP_ACK,
            ..Shape::default()
        };
        let short = cut(&f.frame_with(ack(Frag::First(0x61))), 16);
        untouched(&mut h, "short first fragment", &short, Reason::Passed);
        let later = f.frame_with(ack(Frag::Later(0x61)));
        untouched(&mut h, "its later fragment", &later, Reason::NoBackend);

        // Datagram 0x62 is steered whole; then a new datagram reuses its id (IPv4 ids are
        // 16 bits) with a short first fragment: its later fragments must not follow the
        // old datagram's entry into the pod.
        let first = ack(Frag::First(0x62));
        let expected = Flow { dport: 8080, ..to }.frame_with(first);
        steered(&mut h, "first fragment", &f.frame_with(first), &expected);
        let later = ack(Frag::Later(0x62));
        steered(
            &mut h,
            "later fragment",
            &f.frame_with(later),
            &to.frame_with(later),
        );
        let short = cut(&f.frame_with(first), 16);
        untouched(
            &mut h,
            "short first fragment, id reused",
            &short,
            Reason::Passed,
        );
        let name = "later fragment of the reused id";
        untouched(&mut h, name, &f.frame_with(later), Reason::NoBackend);
    }
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
