//! L4 steering through BPF_PROG_RUN: every path of the XDP program's DNAT, with the exact
//! output bytes (the expected frame is built from scratch for the backend's address and port,
//! so incremental checksum updates must equal full recomputation) and every checksum
//! re-verified independently (testkit::l4packets::verify).

use testkit::{
    bpf::{LO_IFINDEX, Verdict, XdpHarness},
    l4packets::{self, Flow, Frag, SCTP, Shape, TCP, UDP, flow, icmp_error, ip, ports, verify},
    l4tables::{
        CLIENT4, CLIENT6, VIP4, VIP6, add_backend, conntrack, ct_forward, ct_reverse, fill_maglev,
        fixture_tables as setup, remove_backend, service_stats, steer, strip_meta,
    },
    packets::hex,
};
use vipwire_common::{
    Reason,
    l4::{BACKEND_ACTIVE, BACKENDS_MAX_ENTRIES},
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
