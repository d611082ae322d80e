//! IPv6 Neighbor Discovery fixtures: solicitations answered, and everything that must pass
//! untouched.

use super::*;

pub(super) fn fixtures() -> Vec<Fixture> {
    let ns = Ndp::solicitation(CLIENT_MAC, client6(), vip6());
    let unicast = Ndp::unicast_solicitation(CLIENT_MAC, NODE_MAC, client6(), vip6());
    let dad = Ndp::dad_probe(CLIENT_MAC, vip6());
    let with = |base: &Ndp, f: &dyn Fn(&mut Ndp)| {
        let mut ndp = base.clone();
        f(&mut ndp);
        ndp.build()
    };
    let nonce_and_slla = Ndp {
        options: vec![
            NdOption::source_ll(CLIENT_MAC),
            NdOption::nonce([1, 2, 3, 4, 5, 6]),
        ],
        ..ns.clone()
    };
    let max_options = Ndp {
        options: vec![
            NdOption::source_ll(CLIENT_MAC),
            NdOption {
                units: Some(3),
                ..NdOption::nonce([7; 6])
            },
        ],
        ..ns.clone()
    };
    let mut trailing = ns.build();
    trailing.extend_from_slice(&[0; 8]);
    let hop_by_hop = {
        let icmp = ns.icmp();
        let mut ext = vec![IPPROTO_ICMPV6, 0, 0, 0, 0, 0, 0, 0];
        ext.extend_from_slice(&icmp);
        ethernet(
            ns.eth_dst,
            CLIENT_MAC,
            0x86dd,
            &ipv6(client6(), ns.dst, 0, 255, &ext),
        )
    };
    let mut overrun = ns.build();
    overrun[79] = 2; // the source LL option claims 16 bytes; only 8 are left
    fix_icmpv6_checksum(&mut overrun);
    let mut version4 = ns.build();
    version4[14] = 0x40;
    vec![
        tx(
            "ns to solicited-node for owned VIP6",
            ns.build(),
            ns.answered_by(NODE_MAC).build(),
            Reason::AnsweredNdp,
        ),
        tx(
            "ns unicast without options (frame grows by 8)",
            unicast.build(),
            unicast.answered_by(NODE_MAC).build(),
            Reason::AnsweredNdp,
        ),
        tx(
            "ns from :: (DAD) answered to all nodes",
            dad.build(),
            dad.answered_by(NODE_MAC).build(),
            Reason::AnsweredNdp,
        ),
        tx(
            "ns with source LL and nonce (frame shrinks by 8)",
            nonce_and_slla.build(),
            nonce_and_slla.answered_by(NODE_MAC).build(),
            Reason::AnsweredNdp,
        ),
        tx(
            "ns with 32 bytes of options (the most rewritten)",
            max_options.build(),
            max_options.answered_by(NODE_MAC).build(),
            Reason::AnsweredNdp,
        ),
        pass(
            "ns for non-owned address",
            Ndp::solicitation(CLIENT_MAC, client6(), not_owned6()).build(),
            Reason::NotOwned,
        ),
        pass(
            "ns for VIP6 owned on another interface",
            Ndp::solicitation(CLIENT_MAC, client6(), vip6_elsewhere()).build(),
            Reason::NotOwned,
        ),
        pass_with(
            "ns on an interface not configured",
            Setup::IfaceNotConfigured,
            ns.build(),
            Reason::NotOwned,
        ),
        pass(
            "ns to the wrong multicast MAC",
            with(&ns, &|n| n.eth_dst = [0x33, 0x33, 0, 0, 0, 1]),
            Reason::NotOwned,
        ),
        pass(
            "ns unicast to another MAC",
            with(&unicast, &|n| n.eth_dst = OTHER_NODE_MAC),
            Reason::NotOwned,
        ),
        pass(
            "ns with bad checksum",
            with(&ns, &|n| n.checksum = Some(0x1234)),
            Reason::Malformed,
        ),
        pass(
            "ns with hop limit 64",
            with(&ns, &|n| n.hop_limit = 64),
            Reason::Malformed,
        ),
        pass(
            "ns with code 1",
            with(&ns, &|n| n.code = 1),
            Reason::Malformed,
        ),
        pass(
            "ns truncated by 4 bytes",
            ns.build()[..82].to_vec(),
            Reason::Malformed,
        ),
        pass(
            "ns fixed part truncated",
            ns.build()[..70].to_vec(),
            Reason::Malformed,
        ),
        pass("ns with trailing bytes", trailing, Reason::Malformed),
        pass(
            "ns with a zero-length option",
            with(&ns, &|n| n.options[0].units = Some(0)),
            Reason::Malformed,
        ),
        pass(
            "ns option overrunning the payload",
            overrun,
            Reason::Malformed,
        ),
        pass(
            "dad ns with a source LL option",
            with(&dad, &|n| n.options = vec![NdOption::source_ll(CLIENT_MAC)]),
            Reason::Malformed,
        ),
        pass(
            "dad ns to the unicast target",
            with(&dad, &|n| n.dst = vip6()),
            Reason::Malformed,
        ),
        pass(
            "ns to an unrelated destination",
            with(&ns, &|n| n.dst = client6()),
            Reason::Malformed,
        ),
        pass(
            "ns from a multicast source",
            with(&ns, &|n| n.src = "ff02::1".parse().expect("address")),
            Reason::Malformed,
        ),
        pass(
            "ns from a multicast MAC",
            with(&ns, &|n| n.eth_src = [0x33, 0x33, 0, 0, 0, 1]),
            Reason::Malformed,
        ),
        pass("ipv6 version field 4", version4, Reason::Malformed),
        pass(
            "ns with 40 bytes of options",
            with(&max_options, &|n| n.options.push(NdOption::nonce([8; 6]))),
            Reason::Unsupported,
        ),
        pass("ns behind a hop-by-hop header", hop_by_hop, Reason::Passed),
        pass(
            "na for owned VIP6",
            Ndp::advertisement(
                (CLIENT_MAC, NODE_MAC),
                (client6(), vip6()),
                NA_FLAG_OVERRIDE,
                client6(),
                CLIENT_MAC,
            )
            .build(),
            Reason::Passed,
        ),
        pass(
            "icmpv6 echo request to VIP6",
            with(&unicast, &|n| n.icmp_type = 128),
            Reason::Passed,
        ),
        pass(
            "802.1Q-tagged ns for owned VIP6",
            vlan_tagged(&ns.build(), ETH_P_8021Q, 100),
            Reason::Passed,
        ),
        pass_with(
            "ns owned, heartbeat stale",
            Setup::StaleHeartbeat,
            ns.build(),
            Reason::StaleHeartbeat,
        ),
        pass_with(
            "ns owned, contract version mismatch",
            Setup::ContractMismatch,
            ns.build(),
            Reason::ContractMismatch,
        ),
    ]
}
