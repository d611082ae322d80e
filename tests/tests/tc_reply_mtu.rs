//! The reply program's MTU check on GSO packets, with BPF_PROG_RUN of the real program. A
//! pod's TCP sends GSO packets, which the FIB helper lets through whole whatever their size
//! when it checks the packet itself; the program checks each segment against the route's MTU
//! instead. A reply whose segments do not fit goes to the kernel untouched (whose forwarding
//! tells the pod the MTU; l4_lab_mtu.rs shows that end to end), one whose segments fit is
//! rewritten. The runs happen in a namespace of their own whose route to the clients leaves
//! by a device with MTU 1280 (the FIB lookup uses the caller's namespace).

use testkit::{
    NetLab,
    bpf::{LO_IFINDEX, Verdict, sk_buff},
    l4packets::{Shape, TCP, TCP_ACK, flow},
    l4tables::{CLIENT4, CLIENT6, VIP4, VIP6, fixture_tables},
    probe::in_netns,
};
use vipwire_common::programs::TC_REPLY;

const TC_ACT_OK: i32 = 0;
const TC_ACT_REDIRECT: i32 = 7;

#[test]
fn gso_replies_are_checked_segment_by_segment_against_the_route_mtu() {
    let mut lab = NetLab::new();
    let node = lab.netns("node");
    let far = lab.netns("far");
    lab.veth((&node, "out"), (&far, "in"));
    node.addr("out", "10.9.0.1/24");
    node.addr("out", "fd09::1/64");
    node.ip(&["link", "set", "out", "mtu", "1280"]);
    // The FIB helper answers only for an ingress device that forwards (the node's `lo` here).
    node.sysctl("net.ipv4.ip_forward", "1");
    node.sysctl("net.ipv6.conf.all.forwarding", "1");
    node.ip(&[
        "route",
        "add",
        "198.51.100.0/24",
        "via",
        "10.9.0.2",
        "dev",
        "out",
    ]);
    node.ip(&[
        "-6",
        "route",
        "add",
        "2001:db8:200::/64",
        "via",
        "fd09::2",
        "dev",
        "out",
    ]);

    let runs = in_netns(&node, || {
        let mut h = fixture_tables();
        let mut runs = Vec::new();
        for (client, vip, pod) in [
            (CLIENT4, VIP4, "10.244.0.11"),
            (CLIENT6, VIP6, "fd00:244::11"),
        ] {
            // The flow starts (XDP tracks it in both directions), then the pod answers.
            let request = flow(client, vip, 47000, 80, TCP).frame();
            assert_eq!(h.run(&request, LO_IFINDEX).verdict, Verdict::Pass);
            // A TCP segment from Linux: DF set (IPv6 is never fragmented on the way).
            let shape = Shape {
                tcp_flags: TCP_ACK,
                dont_fragment: true,
                ..Shape::default()
            };
            let reply = flow(pod, client, 8080, 47000, TCP).frame_with(shape);
            let rewritten = flow(vip, client, 80, 47000, TCP).frame_with(shape);
            // 1448-byte segments: 1488 (IPv4) or 1508 (IPv6) bytes each, over 1280. 1000:
            // 1040 or 1060, under. 0: not GSO, the 74- or 94-byte packet itself.
            for gso_size in [1448, 1000, 0] {
                let ctx = sk_buff(LO_IFINDEX, gso_size);
                let (code, out) = h.run_tc_with(TC_REPLY, &reply, Some(&ctx));
                let expected = if gso_size == 1448 {
                    (TC_ACT_OK, reply.clone())
                } else {
                    (TC_ACT_REDIRECT, rewritten.clone())
                };
                runs.push((client, gso_size, (code, out), expected));
            }
        }
        runs
    });
    for (client, gso_size, (code, out), (want_code, want)) in runs {
        assert_eq!(code, want_code, "{client}, GSO size {gso_size}: action");
        // The MACs of a redirected reply are the FIB's.
        assert_eq!(
            out[12..want.len()],
            want[12..],
            "{client}, GSO size {gso_size}: the reply as it left"
        );
    }
}
