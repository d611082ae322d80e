//! The TC programs through BPF_PROG_RUN: delivery leaves frames without an `XdpMeta` alone,
//! and the reply program gives a tracked flow's replies (TCP, UDP, SCTP, ICMP errors about
//! the flow, fragments) VIP:port back as their source, every checksum re-verified
//! independently (testkit::l4packets::verify). The flows are started by the XDP program, as
//! in xdp_l4_fixtures.

use testkit::{
    l4packets::{Frag, SCTP, Shape, TCP, UDP, flow, icmp_error, ip, verify},
    l4tables::{CLIENT4, CLIENT6, VIP4, VIP6, fixture_tables as setup, steer},
    packets::hex,
};

#[test]
fn tc_programs_load_and_reply_nat_restores_the_frontend() {
    use vipwire_common::programs::{TC_DELIVER, TC_REPLY};
    const TC_ACT_OK: i32 = 0;
    const TC_ACT_REDIRECT: i32 = 7;
    let mut h = setup();
    // A frame without an XdpMeta is not the deliver program's business.
    let plain = flow(CLIENT4, "10.244.0.11", 40000, 8080, TCP).frame();
    let (code, out) = h.run_tc(TC_DELIVER, &plain);
    assert_eq!((code, out), (TC_ACT_OK, plain));

    for (client, vip, pod, proto, vport, tport) in [
        (CLIENT4, VIP4, "10.244.0.11", TCP, 80, 8080),
        (CLIENT4, VIP4, "10.244.0.12", UDP, 53, 5353),
        (CLIENT4, VIP4, "10.244.0.13", SCTP, 9, 9999),
        (CLIENT6, VIP6, "fd00:244::11", TCP, 80, 8080),
        (CLIENT6, VIP6, "fd00:244::12", UDP, 53, 5353),
    ] {
        // The flow starts (XDP tracks it), then the pod answers.
        steer(&mut h, &flow(client, vip, 47000, vport, proto).frame());
        let reply = flow(pod, client, tport, 47000, proto).frame();
        let (code, out) = h.run_tc(TC_REPLY, &reply);
        // No route to the client in the test's namespace: the rewritten reply goes to the
        // kernel (TC_ACT_OK); with one, it is redirected. Either way it is rewritten.
        assert!(
            code == TC_ACT_OK || code == TC_ACT_REDIRECT,
            "{proto}: code {code}"
        );
        let expected = flow(vip, client, vport, 47000, proto).frame();
        verify(&out[..expected.len()]);
        assert_eq!(
            hex(&out[12..expected.len()]),
            hex(&expected[12..]),
            "{client} {proto}: reply rewritten to come from VIP:port (MACs may change)"
        );
        // A packet from the pod that is not a reply of a tracked flow: untouched.
        let other = flow(pod, client, tport, 47999, proto).frame();
        assert_eq!(h.run_tc(TC_REPLY, &other), (TC_ACT_OK, other));
    }
}

/// An IPv6 packet whose addresses are the IPv4-mapped forms of a tracked IPv4 flow's is not
/// that flow: the reply program keeps the families' conntrack entries apart (before IPv4
/// flows had a map of their own, their 16-byte keys matched it, and the IPv6 packet was
/// rewritten with the IPv4 VIP's mapped form).
#[test]
fn reply_nat_does_not_take_ipv4_mapped_ipv6_for_an_ipv4_flow() {
    use vipwire_common::programs::TC_REPLY;
    const TC_ACT_OK: i32 = 0;
    let mut h = setup();
    steer(&mut h, &flow(CLIENT4, VIP4, 47100, 80, TCP).frame());
    let pod = "10.244.0.11";
    let tracked = flow(pod, CLIENT4, 8080, 47100, TCP).frame();
    assert_ne!(
        h.run_tc(TC_REPLY, &tracked).1,
        tracked,
        "the IPv4 reply is ours"
    );
    let mapped = flow(
        &format!("::ffff:{pod}"),
        &format!("::ffff:{CLIENT4}"),
        8080,
        47100,
        TCP,
    )
    .frame();
    assert_eq!(h.run_tc(TC_REPLY, &mapped), (TC_ACT_OK, mapped));
}

/// A pod that leaves its SCTP CRC32c to offload (a veth advertises it) sends the field as 0,
/// and the kernel computes it on the way out over the packet as it is then, field included:
/// the reply NAT must leave that 0 alone (RFC 9653's zero checksum is 0 on the wire too).
#[test]
fn sctp_reply_nat_leaves_a_zero_crc_alone() {
    use vipwire_common::programs::TC_REPLY;
    let mut h = setup();
    for (client, vip, pod, l4) in [
        (CLIENT4, VIP4, "10.244.0.13", 14 + 20),
        (CLIENT6, VIP6, "fd00:244::13", 14 + 40),
    ] {
        steer(&mut h, &flow(client, vip, 47001, 9, SCTP).frame());
        let mut reply = flow(pod, client, 9999, 47001, SCTP).frame();
        reply[l4 + 8..l4 + 12].fill(0);
        let (_, out) = h.run_tc(TC_REPLY, &reply);
        let mut expected = flow(vip, client, 9, 47001, SCTP).frame();
        expected[l4 + 8..l4 + 12].fill(0);
        assert_eq!(
            hex(&out[12..expected.len()]),
            hex(&expected[12..]),
            "{client}: VIP:port restored, CRC field still 0"
        );
    }
}

/// A pod's ICMP error about a flow it serves (port unreachable for a datagram, fragmentation
/// needed / packet too big for a segment) leaves as if the VIP had sent it: outer source the
/// VIP, the quote client → VIP:port, every checksum right. The expected frame is built
/// independently, checksums and all.
#[test]
fn a_pods_icmp_error_about_a_flow_leaves_from_the_vip() {
    use vipwire_common::programs::TC_REPLY;
    let mut h = setup();
    for (client, vip, pod, proto, vport, tport, (kind, code), quote_l4) in [
        (CLIENT4, VIP4, "10.244.0.12", UDP, 53, 5353, (3, 3), 8),
        (CLIENT4, VIP4, "10.244.0.11", TCP, 80, 8080, (3, 4), 20),
        (CLIENT6, VIP6, "fd00:244::12", UDP, 53, 5353, (1, 4), 8),
        (CLIENT6, VIP6, "fd00:244::11", TCP, 80, 8080, (2, 0), 20),
    ] {
        steer(&mut h, &flow(client, vip, 47000, vport, proto).frame());
        let got = flow(client, pod, 47000, tport, proto);
        let error = icmp_error(ip(pod), &got, kind, code, quote_l4);
        let (_, out) = h.run_tc(TC_REPLY, &error);
        let sent = flow(client, vip, 47000, vport, proto);
        let expected = icmp_error(ip(vip), &sent, kind, code, quote_l4);
        assert_eq!(
            hex(&out[12..expected.len()]),
            hex(&expected[12..]),
            "{client} {proto} ICMP {kind}/{code}: from the VIP, quoting VIP:port"
        );
        // About a flow nobody tracks: untouched.
        let other = flow(client, pod, 47999, tport, proto);
        let untracked = icmp_error(ip(pod), &other, kind, code, quote_l4);
        assert_eq!(h.run_tc(TC_REPLY, &untracked).1, untracked);
    }
}

/// A reply the pod's stack fragmented: the first fragment is rewritten like any reply, and
/// the later ones, which carry no ports, get the same VIP as their source; a later fragment
/// whose first was not seen is left alone.
#[test]
fn fragmented_replies_leave_from_the_vip_whole() {
    use vipwire_common::programs::TC_REPLY;
    let mut h = setup();
    for (client, vip, pod) in [
        (CLIENT4, VIP4, "10.244.0.12"),
        (CLIENT6, VIP6, "fd00:244::12"),
    ] {
        steer(&mut h, &flow(client, vip, 47003, 53, UDP).frame());
        let from_pod = flow(pod, client, 5353, 47003, UDP);
        let from_vip = flow(vip, client, 53, 47003, UDP);
        for (what, frag) in [
            ("first fragment", Frag::First(0x99)),
            ("later fragment", Frag::Later(0x99)),
        ] {
            let shape = Shape {
                frag,
                ..Shape::default()
            };
            let (_, out) = h.run_tc(TC_REPLY, &from_pod.frame_with(shape));
            let expected = from_vip.frame_with(shape);
            assert_eq!(
                hex(&out[12..expected.len()]),
                hex(&expected[12..]),
                "{client}: {what} from the VIP"
            );
        }
        let unseen = from_pod.frame_with(Shape {
            frag: Frag::Later(0x9a),
            ..Shape::default()
        });
        assert_eq!(h.run_tc(TC_REPLY, &unseen).1, unseen, "{client}: unseen");
        // The same id again, on a datagram of no tracked flow: all of it stays as it is.
        let untracked = flow(pod, client, 5353, 47004, UDP);
        for frag in [Frag::First(0x99), Frag::Later(0x99)] {
            let frame = untracked.frame_with(Shape {
                frag,
                ..Shape::default()
            });
            assert_eq!(h.run_tc(TC_REPLY, &frame).1, frame, "{client}: reused id");
        }
    }
}
