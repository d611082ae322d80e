//! L4 steering through BPF_PROG_RUN: every path of the XDP program's DNAT, with the exact
//! output bytes (the expected frame is built from scratch for the backend's address and port,
//! so incremental checksum updates must equal full recomputation) and every checksum
//! re-verified independently (testkit::l4packets::verify).

use testkit::{
    bpf::{LO_IFINDEX, Verdict, XdpHarness},
    l4packets::{self, Flow, Frag, SCTP, Shape, TCP, UDP, flow, icmp_error, ip, ports, verify},
    l4tables::{
        CLIENT4, CLIENT6, VIP4, VIP6, add_backend, backend, conntrack, ct_forward, ct_reverse,
        fill_maglev, fixture_tables as setup, remove_backend, service_stats,
    },
};
use vipwire_common::{
    Reason,
    l4::{BACKEND_ACTIVE, BACKENDS_MAX_ENTRIES, XDP_META_MAGIC, XdpMeta},
};

/// What a case must produce.
enum Expect {
    /// XDP_PASS, the frame byte for byte as it came, this reason counted.
    Untouched(Reason),
    /// XDP_DROP, this reason counted.
    Dropped(Reason),
    /// XDP_PASS, rewritten to exactly this frame, this reason counted.
    Rewritten(Vec<u8>, Reason),
}

struct Case {
    name: &'static str,
    input: Vec<u8>,
    expect: Expect,
}

/// A frame steered to `to:port`: the same packet built for that destination.
fn steered(f: &Flow, to: &str, port: u16, shape: Shape<'_>) -> Case {
    let rewritten = Flow {
        dst: ip(to),
        dport: port,
        ..*f
    };
    Case {
        name: "",
        input: f.frame_with(shape),
        expect: Expect::Rewritten(rewritten.frame_with(shape), Reason::Steered),
    }
}

/// `case` with four bytes of IPv4 options (NOP, NOP, NOP, end) in its input and in the frame
/// it expects: IHL 6, total length and header checksum to match.
fn with_ipv4_options(case: Case) -> Case {
    let expect = match case.expect {
        Expect::Rewritten(frame, reason) => Expect::Rewritten(ipv4_options(frame), reason),
        other => other,
    };
    Case {
        input: ipv4_options(case.input),
        expect,
        ..case
    }
}

fn ipv4_options(mut frame: Vec<u8>) -> Vec<u8> {
    const IP: usize = 14;
    assert_eq!(frame[IP], 0x45, "an IPv4 frame without options");
    frame.splice(IP + 20..IP + 20, [1, 1, 1, 0]);
    frame[IP] = 0x46;
    let total = u16::from_be_bytes([frame[IP + 2], frame[IP + 3]]) + 4;
    frame[IP + 2..IP + 4].copy_from_slice(&total.to_be_bytes());
    frame[IP + 10..IP + 12].fill(0);
    let sum = frame[IP..IP + 24]
        .chunks(2)
        .map(|w| u32::from(u16::from_be_bytes([w[0], w[1]])))
        .sum::<u32>();
    let folded = (sum & 0xffff) + (sum >> 16);
    let check = !((folded & 0xffff) + (folded >> 16)) as u16;
    frame[IP + 10..IP + 12].copy_from_slice(&check.to_be_bytes());
    frame
}

fn named(name: &'static str, case: Case) -> Case {
    Case { name, ..case }
}

fn untouched(name: &'static str, input: Vec<u8>, reason: Reason) -> Case {
    Case {
        name,
        input,
        expect: Expect::Untouched(reason),
    }
}

fn run_cases(h: &mut XdpHarness, cases: Vec<Case>) {
    for case in cases {
        let before = h.counters();
        let out = h.run(&case.input, LO_IFINDEX);
        let after = h.counters();
        let reason = match &case.expect {
            Expect::Untouched(reason) => {
                assert_eq!(out.verdict, Verdict::Pass, "{}: verdict", case.name);
                assert_eq!(out.frame, case.input, "{}: passed untouched", case.name);
                *reason
            }
            Expect::Dropped(reason) => {
                assert_eq!(out.verdict, Verdict::Drop, "{}: verdict", case.name);
                *reason
            }
            Expect::Rewritten(expected, reason) => {
                assert_eq!(out.verdict, Verdict::Pass, "{}: verdict", case.name);
                let frame = strip_meta(h, &out.frame, case.name);
                verify(frame);
                assert_eq!(hex(frame), hex(expected), "{}: output bytes", case.name);
                *reason
            }
        };
        for r in Reason::ALL {
            let delta = after[r as usize] - before[r as usize];
            let want = u64::from(r == reason);
            assert_eq!(delta, want, "{}: counter {}", case.name, r.name());
        }
    }
}

/// A steered frame comes back with the `XdpMeta` for the TC program in front of it (BPF_PROG_RUN
/// returns the metadata with the frame): checks it against the backends map and returns the
/// frame.
fn strip_meta<'a>(h: &mut XdpHarness, output: &'a [u8], name: &str) -> &'a [u8] {
    let len = size_of::<XdpMeta>();
    assert!(output.len() > len, "{name}: output too short for the meta");
    let field = |i: usize| u32::from_ne_bytes(output[i * 4..i * 4 + 4].try_into().expect("4"));
    assert_eq!(field(0), XDP_META_MAGIC, "{name}: XdpMeta magic");
    let backend_id = field(1);
    let backend = backend(h, backend_id)
        .unwrap_or_else(|| panic!("{name}: XdpMeta backend id {backend_id} not in the map"));
    assert_eq!(
        (field(2), field(3)),
        (backend.ifindex, backend.flags),
        "{name}: the XdpMeta's device and flags are the backend's"
    );
    &output[len..]
}

/// Runs a frame that must be steered; the rewritten frame without its meta.
fn steer(h: &mut XdpHarness, frame: &[u8]) -> Vec<u8> {
    let out = h.run(frame, LO_IFINDEX);
    assert_eq!(out.verdict, Verdict::Pass);
    strip_meta(h, &out.frame, "steered").to_vec()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn steering_fixtures_give_exact_output_and_counter() {
    let mut h = setup();
    let plain = Shape::default();
    let tcp4 = flow(CLIENT4, VIP4, 40000, 80, TCP);
    let udp4 = flow(CLIENT4, VIP4, 40001, 53, UDP);
    let sctp4 = flow(CLIENT4, VIP4, 40002, 9, SCTP);
    let tcp6 = flow(CLIENT6, VIP6, 40000, 80, TCP);
    let udp6 = flow(CLIENT6, VIP6, 40001, 53, UDP);
    let sctp6 = flow(CLIENT6, VIP6, 40002, 9, SCTP);
    let zero_udp = Shape {
        udp_zero_checksum: true,
        ..plain
    };
    let ext = Shape {
        dest_opts: true,
        ..plain
    };
    let ack_df = Shape {
        tcp_flags: l4packets::TCP_ACK,
        dont_fragment: true,
        ..plain
    };
    let mut truncated = tcp4.frame();
    truncated.truncate(14 + 20 + 2);
    let mut bad_ihl = tcp4.frame();
    bad_ihl[14] = 0x44;
    let echo = {
        // An ICMP echo request to the VIP: not an error, not ours.
        let mut f = flow(CLIENT4, VIP4, 0, 0, TCP).frame();
        f[14 + 9] = l4packets::ICMP;
        f
    };
    let cases = vec![
        untouched(
            "IPv4 TCP to a non-VIP",
            flow(CLIENT4, "203.0.113.99", 40000, 80, TCP).frame(),
            Reason::Passed,
        ),
        untouched(
            "IPv4 TCP to a VIP port without frontend",
            flow(CLIENT4, VIP4, 40000, 81, TCP).frame(),
            Reason::Passed,
        ),
        untouched(
            "IPv6 TCP to a non-VIP",
            flow(CLIENT6, "2001:db8:100::99", 40000, 80, TCP).frame(),
            Reason::Passed,
        ),
        untouched(
            // Same filter bit and service key as the IPv4 VIP, but never routed.
            "IPv6 TCP to an IPv4 VIP's IPv4-mapped address",
            flow(CLIENT6, &format!("::ffff:{VIP4}"), 40000, 80, TCP).frame(),
            Reason::Passed,
        ),
        untouched(
            // Steered, its replies would be routed as IPv4 (TC picks the family from it).
            "IPv6 TCP from an IPv4-mapped source",
            flow(&format!("::ffff:{CLIENT4}"), VIP6, 40000, 80, TCP).frame(),
            Reason::Passed,
        ),
        named("IPv4 TCP", steered(&tcp4, "10.244.0.11", 8080, plain)),
        named("IPv4 UDP", steered(&udp4, "10.244.0.12", 5353, plain)),
        named(
            "IPv4 UDP without checksum keeps 0",
            steered(&udp4, "10.244.0.12", 5353, zero_udp),
        ),
        // The flows of the two cases above exist now: these take the established path.
        named(
            "IPv4 TCP, established (ACK, DF)",
            steered(&tcp4, "10.244.0.11", 8080, ack_df),
        ),
        named(
            "IPv4 UDP, established",
            steered(&udp4, "10.244.0.12", 5353, plain),
        ),
        named(
            "IPv4 TCP with IP options, established",
            with_ipv4_options(steered(&tcp4, "10.244.0.11", 8080, ack_df)),
        ),
        named(
            "IPv4 UDP with IP options, established",
            with_ipv4_options(steered(&udp4, "10.244.0.12", 5353, plain)),
        ),
        named(
            "IPv4 SCTP: port rewrite updates CRC32c",
            steered(&sctp4, "10.244.0.13", 9999, plain),
        ),
        named("IPv6 TCP", steered(&tcp6, "fd00:244::11", 8080, plain)),
        named("IPv6 UDP", steered(&udp6, "fd00:244::12", 5353, plain)),
        named("IPv6 SCTP", steered(&sctp6, "fd00:244::13", 9999, plain)),
        named(
            "IPv6 TCP behind a destination options header",
            steered(&tcp6, "fd00:244::11", 8080, ext),
        ),
        named(
            "source inside loadBalancerSourceRanges",
            steered(
                &flow(CLIENT4, VIP4, 40003, 443, TCP),
                "10.244.0.11",
                8080,
                plain,
            ),
        ),
        Case {
            name: "source outside loadBalancerSourceRanges",
            input: flow("192.0.2.1", VIP4, 40003, 443, TCP).frame(),
            expect: Expect::Dropped(Reason::SourceDenied),
        },
        untouched(
            "frontend without an active backend",
            flow(CLIENT4, VIP4, 40004, 8443, TCP).frame(),
            Reason::NoBackend,
        ),
        untouched("truncated TCP header", truncated, Reason::Passed),
        untouched("IHL below 5", bad_ihl, Reason::Passed),
        untouched("ICMP echo to a VIP", echo, Reason::Passed),
    ];
    run_cases(&mut h, cases);
    let stats = service_stats(&mut h, 7);
    assert_eq!((stats.packets, stats.source_denied), (1, 1), "{stats:?}");
    let stats = service_stats(&mut h, 8);
    assert_eq!(stats.no_backend, 1, "{stats:?}");
}

/// The incremental checksum updates against full recomputation over many random flows and
/// payloads: each flow's first packet (general path) and a later one (the IPv4 fast path).
#[test]
fn incremental_checksums_hold_for_random_flows() {
    let mut h = setup();
    let mut rng = testkit::fuzz::Rng(0x5eed_c0de);
    let mut payload = [0u8; 64];
    for i in 0..2000 {
        let (proto, vport, pod) = if i % 2 == 0 {
            (TCP, 80, "10.244.0.11")
        } else {
            (UDP, 53, "10.244.0.12")
        };
        let client = format!("198.51.{}.{}", rng.byte(), rng.byte().max(1));
        let f = flow(&client, VIP4, 1024 + rng.below(60000) as u16, vport, proto);
        payload.iter_mut().for_each(|b| *b = rng.byte());
        let len = rng.below(payload.len() + 1);
        let later = Shape {
            payload: &payload[..len],
            tcp_flags: l4packets::TCP_ACK,
            udp_zero_checksum: proto == UDP && rng.below(8) == 0,
            dont_fragment: rng.below(2) == 0,
            ..Shape::default()
        };
        let first = Shape {
            tcp_flags: l4packets::TCP_SYN,
            ..later
        };
        for (which, shape) in [("first", first), ("later", later)] {
            let out = steer(&mut h, &f.frame_with(shape));
            let parsed = l4packets::check(&out)
                .unwrap_or_else(|e| panic!("{client} {proto} {which} packet: {e}"));
            assert_eq!(parsed.dst, ip(pod), "{client} {proto} {which}");
        }
    }
}

#[test]
fn new_flow_is_tracked_in_both_directions() {
    let mut h = setup();
    let f = flow(CLIENT4, VIP4, 41000, 80, TCP);
    assert_eq!(h.run(&f.frame(), LO_IFINDEX).verdict, Verdict::Pass);
    let fwd = conntrack(&mut h, &ct_forward(f.src, f.dst, 41000, 80, TCP)).expect("forward");
    assert_eq!((fwd.backend_id, fwd.service_id), (11, 1));
    let rev = conntrack(
        &mut h,
        &ct_reverse(ip("10.244.0.11"), f.src, 8080, 41000, TCP),
    )
    .expect("reverse");
    assert_eq!(rev.nat_addr_be, testkit::l4tables::addr16(f.dst));
    assert_eq!(rev.nat_port_be, 80u16.to_be_bytes());
    let stats = service_stats(&mut h, 1);
    assert_eq!((stats.new_flows, stats.packets), (1, 1), "{stats:?}");
    // A later packet of the flow is not a new flow.
    h.run(&f.later_frame(), LO_IFINDEX);
    assert_eq!(service_stats(&mut h, 1).new_flows, 1);
}

#[test]
fn established_flow_keeps_its_backend_until_it_is_gone() {
    let mut h = setup();
    let f = flow(CLIENT4, VIP4, 42000, 7001, TCP);
    let first = steer(&mut h, &f.frame());
    let first_dst = verify(&first).dst;
    let other = if first_dst == ip("10.244.0.11") {
        (14, "10.244.0.14")
    } else {
        (11, "10.244.0.11")
    };
    // The endpoint set changes: every slot now names the other backend.
    fill_maglev(&mut h, 10, 2039, &[other.0]);
    let again = steer(&mut h, &f.later_frame());
    assert_eq!(verify(&again).dst, first_dst, "established flow stays");
    let new = steer(&mut h, &flow(CLIENT4, VIP4, 42001, 7001, TCP).frame());
    assert_eq!(verify(&new).dst, ip(other.1), "new flows follow the table");
    // Its backend is removed: the flow is re-balanced.
    let gone = if other.0 == 11 { 14 } else { 11 };
    remove_backend(&mut h, gone);
    let moved = steer(&mut h, &f.later_frame());
    assert_eq!(verify(&moved).dst, ip(other.1), "re-balanced");
}

/// A backend id shares its map slot with ids a lap of `BACKENDS_MAX_ENTRIES` apart. A flow
/// pinned to a removed backend whose slot now holds a newer id is re-balanced, not sent to
/// the newer backend.
#[test]
fn a_flow_is_not_sent_to_a_later_backend_in_its_backends_slot() {
    let mut h = setup();
    let f = flow(CLIENT4, VIP4, 42050, 7001, TCP);
    let first_dst = verify(&steer(&mut h, &f.frame())).dst;
    let (gone, stays) = if first_dst == ip("10.244.0.11") {
        (11, (14, "10.244.0.14"))
    } else {
        (14, (11, "10.244.0.11"))
    };
    fill_maglev(&mut h, 10, 2039, &[stays.0]);
    remove_backend(&mut h, gone);
    let newer = gone + BACKENDS_MAX_ENTRIES;
    add_backend(&mut h, newer, ip("10.244.0.99"), 7001, BACKEND_ACTIVE);
    let moved = steer(&mut h, &f.later_frame());
    assert_eq!(verify(&moved).dst, ip(stays.1), "re-balanced");
}

#[test]
fn a_syn_starts_over_on_the_current_table() {
    let mut h = setup();
    let f = flow(CLIENT4, VIP4, 42100, 7001, TCP);
    let first_dst = verify(&steer(&mut h, &f.frame())).dst;
    let other = if first_dst == ip("10.244.0.11") {
        (14, "10.244.0.14")
    } else {
        (11, "10.244.0.11")
    };
    fill_maglev(&mut h, 10, 2039, &[other.0]);
    // A SYN-ACK is no connection request: it follows conntrack.
    let syn_ack = f.frame_with(Shape {
        tcp_flags: l4packets::TCP_SYN | l4packets::TCP_ACK,
        ..Shape::default()
    });
    assert_eq!(verify(&steer(&mut h, &syn_ack)).dst, first_dst, "SYN-ACK");
    // A SYN asks for a new connection: it is not looked up in conntrack (a retransmitted
    // SYN across an endpoint change starts over on the new backend), and the flow's
    // entries then name the new backend, both ways.
    let retry = steer(&mut h, &f.frame());
    assert_eq!(verify(&retry).dst, ip(other.1), "the SYN follows the table");
    let later = steer(&mut h, &f.later_frame());
    assert_eq!(verify(&later).dst, ip(other.1), "conntrack follows the SYN");
    let stats = service_stats(&mut h, 10);
    assert_eq!(stats.new_flows, 2, "{stats:?}");
}

#[test]
fn client_ip_affinity_pins_new_flows_of_a_client() {
    let mut h = setup();
    let mut seen = Vec::new();
    for sport in 43000..43032 {
        let out = steer(&mut h, &flow(CLIENT4, VIP4, sport, 7000, TCP).frame());
        seen.push(verify(&out).dst);
    }
    seen.dedup();
    assert_eq!(
        seen.len(),
        1,
        "one backend for every flow of the client: {seen:?}"
    );
    // Without affinity the same ports spread over both backends (the table alternates).
    let mut spread = std::collections::BTreeSet::new();
    for sport in 43000..43032 {
        let out = steer(&mut h, &flow(CLIENT4, VIP4, sport, 7001, TCP).frame());
        spread.insert(verify(&out).dst);
    }
    assert_eq!(spread.len(), 2, "{spread:?}");
}

#[test]
fn fragments_follow_their_first_fragment() {
    let mut h = setup();
    for (client, vip, to) in [
        (CLIENT4, VIP4, "10.244.0.12"),
        (CLIENT6, VIP6, "fd00:244::12"),
    ] {
        let f = flow(client, vip, 44000, 53, UDP);
        let first = Shape {
            frag: Frag::First(0x77),
            ..Shape::default()
        };
        let later = Shape {
            frag: Frag::Later(0x77),
            ..Shape::default()
        };
        let unknown = Shape {
            frag: Frag::Later(0x78),
            ..Shape::default()
        };
        let cases = vec![
            named("first fragment", steered(&f, to, 5353, first)),
            named("later fragment", steered_ip_only(&f, to, later)),
            untouched(
                "later fragment whose first was not seen",
                f.frame_with(unknown),
                Reason::NoBackend,
            ),
        ];
        run_cases(&mut h, cases);
    }
}

/// A later fragment: only the destination address changes.
fn steered_ip_only(f: &Flow, to: &str, shape: Shape<'_>) -> Case {
    let rewritten = Flow { dst: ip(to), ..*f };
    Case {
        name: "",
        input: f.frame_with(shape),
        expect: Expect::Rewritten(rewritten.frame_with(shape), Reason::Steered),
    }
}

#[test]
fn icmp_errors_about_a_flow_reach_its_backend() {
    let mut h = setup();
    for (client, vip, pod, router, kind) in [
        (CLIENT4, VIP4, "10.244.0.11", "10.0.1.254", (3, 4)), // fragmentation needed
        (CLIENT6, VIP6, "fd00:244::11", "fd00:1::fe", (2, 0)), // packet too big
    ] {
        let f = flow(client, vip, 45000, 80, TCP);
        h.run(&f.frame(), LO_IFINDEX);
        // Our reply as the router saw it, and as the backend sent it.
        let reply = flow(vip, client, 80, 45000, TCP);
        let from_pod = flow(pod, client, 8080, 45000, TCP);
        for quote in [8, 20 + 13] {
            let input = icmp_error(ip(router), &reply, kind.0, kind.1, quote);
            let expected = icmp_error(ip(router), &from_pod, kind.0, kind.1, quote);
            run_cases(
                &mut h,
                vec![Case {
                    name: "ICMP error about a flow",
                    input,
                    expect: Expect::Rewritten(expected, Reason::IcmpError),
                }],
            );
        }
        // About a flow we never saw: the kernel's.
        let stranger = flow(vip, client, 80, 45999, TCP);
        run_cases(
            &mut h,
            vec![untouched(
                "ICMP error about an unknown flow",
                icmp_error(ip(router), &stranger, kind.0, kind.1, 8),
                Reason::Passed,
            )],
        );
    }
}

#[test]
fn steered_ports_are_the_backends() {
    // A plain end-to-end read of the rewritten frame with etherparse's view of it.
    let mut h = setup();
    let out = steer(&mut h, &flow(CLIENT6, VIP6, 46000, 80, TCP).frame());
    let parsed = verify(&out);
    assert_eq!(parsed.dst, ip("fd00:244::11"));
    assert_eq!(parsed.src, ip(CLIENT6), "the client's address is kept");
    assert_eq!(ports(&out, parsed.l4), (46000, 8080));
}

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
