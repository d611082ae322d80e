//! The ARP flood benchmark's lab programs (ebpf/programs/src/lab.rs): the generator turns
//! vipwire's in-place reply back into the exact request, and the sink drops only replies to
//! probes. A wrong generator would flood replies; a wrong sink would hide replies or drop
//! the lab's own.

use super::*;

const XDP_GEN: &str = "vipwire_xdp_gen";
const XDP_SINK: &str = "vipwire_xdp_sink";

fn lab_harness() -> XdpHarness {
    let mut h = harness(Setup::Standard);
    h.load_program(XDP_GEN);
    h.load_program(XDP_SINK);
    h
}

#[test]
fn generator_rearms_answered_requests_and_sends_everything() {
    let h = lab_harness();
    for request in [
        Arp::probe(CLIENT_MAC, VIP4),
        Arp::request(CLIENT_MAC, CLIENT4, VIP4),
    ] {
        let request = padded(&request.build());
        let reply = h.run(&request, LO_IFINDEX);
        assert_eq!(reply.verdict, Verdict::Tx, "vipwire answers");
        assert_ne!(reply.frame, request);
        let out = h.run_program(XDP_GEN, &reply.frame, LO_IFINDEX);
        assert_eq!(out.verdict, Verdict::Tx);
        assert_eq!(out.frame, request, "the reply turned back into its request");
        let out = h.run_program(XDP_GEN, &request, LO_IFINDEX);
        assert_eq!(
            (out.verdict, out.frame),
            (Verdict::Tx, request),
            "a request goes out as it is"
        );
    }
    let tcp = ipv4_tcp((CLIENT_MAC, NODE_MAC), (CLIENT4, VIP4), (40000, 80), &[]);
    let out = h.run_program(XDP_GEN, &tcp, LO_IFINDEX);
    assert_eq!((out.verdict, out.frame), (Verdict::Tx, tcp));
}

#[test]
fn sink_drops_replies_to_probes_only() {
    let h = lab_harness();
    let probe = padded(&Arp::probe(CLIENT_MAC, VIP4).build());
    let request = padded(&Arp::request(CLIENT_MAC, CLIENT4, VIP4).build());
    let probe_reply = h.run(&probe, LO_IFINDEX).frame;
    let reply = h.run(&request, LO_IFINDEX).frame;
    let tcp = ipv4_tcp((CLIENT_MAC, NODE_MAC), (CLIENT4, VIP4), (40000, 80), &[]);
    let cases = [
        ("reply to a probe", &probe_reply, Verdict::Drop),
        ("reply to a request", &reply, Verdict::Pass),
        ("probe", &probe, Verdict::Pass),
        ("request", &request, Verdict::Pass),
        (
            "truncated probe reply",
            &probe_reply[..41].to_vec(),
            Verdict::Pass,
        ),
        ("tcp", &tcp, Verdict::Pass),
    ];
    for (name, frame, verdict) in cases {
        let out = h.run_program(XDP_SINK, frame, LO_IFINDEX);
        assert_eq!(out.verdict, verdict, "{name}");
        assert_eq!(&out.frame, frame, "{name}: untouched");
    }
    // Not ARP: the same bytes behind another EtherType.
    let mut not_arp = probe_reply.clone();
    not_arp[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
    assert_eq!(
        h.run_program(XDP_SINK, &not_arp, LO_IFINDEX).verdict,
        Verdict::Pass
    );
}
