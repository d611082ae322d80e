//! The reply program's MTU check, with BPF_PROG_RUN of the real program, in a namespace of its
//! own whose route to the clients leaves by a device with MTU 1280 (the FIB lookup and the
//! MTU check use the caller's namespace). A reply that does not fit and must not be
//! fragmented goes to the kernel untouched, whose forwarding tells the pod the MTU; one that
//! fits is rewritten and redirected. Both with the next hop's neighbour known (IPv4 here: the
//! FIB helper's own check) and unknown (IPv6: the helper checks nothing then). GSO packets
//! are checked segment by segment, which needs a transport header BPF_PROG_RUN cannot set
//! (the kernel's segment check refuses a packet without one), so no fixture covers them.

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
fn a_reply_too_big_for_the_way_to_the_client_is_left_to_the_kernel() {
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
    node.ip(&["route", "add", "198.51.100.0/24", "via", "10.9.0.2"]);
    node.ip(&["-6", "route", "add", "2001:db8:200::/64", "via", "fd09::2"]);
    let far_mac = far.mac("in");
    let far_mac = far_mac.map(|b| format!("{b:02x}")).join(":");
    node.ip(&["neigh", "add", "10.9.0.2", "lladdr", &far_mac, "dev", "out"]);

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
            // TCP payload bytes, and whether the packet exceeds MTU 1280.
            for (payload, too_big) in [(1300, true), (1200, false), (13, false)] {
                let payload = vec![b'x'; payload];
                // A TCP segment from Linux: DF set (IPv6 is never fragmented on the way).
                let shape = Shape {
                    payload: &payload,
                    tcp_flags: TCP_ACK,
                    dont_fragment: true,
                    ..Shape::default()
                };
                let reply = flow(pod, client, 8080, 47000, TCP).frame_with(shape);
                let rewritten = flow(vip, client, 80, 47000, TCP).frame_with(shape);
                let (code, out) = h.run_tc_with(TC_REPLY, &reply, Some(&sk_buff(LO_IFINDEX)));
                let expected = if too_big {
                    (TC_ACT_OK, reply)
                } else {
                    (TC_ACT_REDIRECT, rewritten)
                };
                runs.push((
                    format!("{client}, {} bytes", payload.len()),
                    (code, out),
                    expected,
                ));
            }
        }
        runs
    });
    for (case, (code, out), (want_code, want)) in runs {
        assert_eq!(code, want_code, "{case}: action");
        // The MACs of a redirected reply are the FIB's.
        assert_eq!(
            out[12..want.len()],
            want[12..],
            "{case}: the reply as it left"
        );
    }
}
