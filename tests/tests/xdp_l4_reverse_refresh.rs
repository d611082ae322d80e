//! An established flow's reverse conntrack entry comes back when the LRU evicted it on its own
//! (a client sending steadily, a pod answering rarely): the XDP program writes it again every
//! `CT_REVERSE_REFRESH` packets of the flow, so the pod's next reply is NATed again.

use testkit::{
    bpf::{LO_IFINDEX, Verdict},
    l4packets::{TCP, UDP, flow, ip},
    l4tables::{
        CLIENT4, CLIENT6, VIP4, VIP6, conntrack, ct_reverse, fixture_tables, remove_conntrack,
    },
};
use vipwire_common::l4::CT_REVERSE_REFRESH;

#[test]
fn an_evicted_reverse_entry_is_written_again_within_the_refresh_interval() {
    let mut h = fixture_tables();
    for (client, vip, pod, proto, vport, tport) in [
        (CLIENT4, VIP4, "10.244.0.11", TCP, 80, 8080),
        (CLIENT6, VIP6, "fd00:244::12", UDP, 53, 5353),
    ] {
        let f = flow(client, vip, 48000, vport, proto);
        assert_eq!(h.run(&f.frame(), LO_IFINDEX).verdict, Verdict::Pass);
        let reverse = ct_reverse(ip(pod), f.src, tport, 48000, proto);
        let written = conntrack(&mut h, &reverse).expect("the new flow's reverse entry");
        remove_conntrack(&mut h, &reverse);

        let later = f.later_frame();
        let mut packets = 0;
        while conntrack(&mut h, &reverse).is_none() {
            assert!(
                packets <= u32::from(CT_REVERSE_REFRESH),
                "{client} {proto}: no reverse entry after {packets} packets"
            );
            assert_eq!(h.run(&later, LO_IFINDEX).verdict, Verdict::Pass);
            packets += 1;
        }
        assert_eq!(
            conntrack(&mut h, &reverse),
            Some(written),
            "{client} {proto}"
        );
        assert!(
            packets > 1,
            "{client} {proto}: written again after {packets} packets, not on every packet"
        );
    }
}
