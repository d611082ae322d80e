//! ARP fixtures: requests answered, and everything that must pass untouched.

use super::*;

pub(super) fn fixtures() -> Vec<Fixture> {
    let request = Arp::request(CLIENT_MAC, CLIENT4, VIP4);
    let reply = request.answered_by(NODE_MAC).build();
    let mut padded_reply = padded(&reply);
    // The padding of the request is left as it was: make it non-zero to see that.
    let mut padded_request = padded(&request.build());
    padded_request[42..].fill(0xa5);
    padded_reply[42..].fill(0xa5);
    let unicast = Arp {
        eth_dst: NODE_MAC,
        ..request.clone()
    };
    let probe = Arp::probe(CLIENT_MAC, VIP4);
    let with = |f: &dyn Fn(&mut Arp)| {
        let mut arp = request.clone();
        f(&mut arp);
        arp.build()
    };
    vec![
        tx(
            "arp request for owned VIP",
            request.build(),
            reply.clone(),
            Reason::AnsweredArp,
        ),
        tx(
            "arp request padded to 60 bytes",
            padded_request,
            padded_reply,
            Reason::AnsweredArp,
        ),
        tx(
            "arp request unicast to the node MAC",
            unicast.build(),
            unicast.answered_by(NODE_MAC).build(),
            Reason::AnsweredArp,
        ),
        tx(
            "arp probe (sender 0.0.0.0) for owned VIP",
            probe.build(),
            probe.answered_by(NODE_MAC).build(),
            Reason::AnsweredArp,
        ),
        pass(
            "arp request for non-owned IP",
            with(&|a| a.tpa = NOT_OWNED4),
            Reason::NotOwned,
        ),
        pass(
            "arp request for VIP owned on another interface",
            with(&|a| a.tpa = VIP4_ELSEWHERE),
            Reason::NotOwned,
        ),
        pass_with(
            "arp request on an interface not configured",
            Setup::IfaceNotConfigured,
            request.build(),
            Reason::NotOwned,
        ),
        pass(
            "arp request unicast to another MAC (promiscuous)",
            with(&|a| a.eth_dst = OTHER_NODE_MAC),
            Reason::NotOwned,
        ),
        pass(
            "gratuitous arp for owned VIP",
            Arp::gratuitous(CLIENT_MAC, VIP4).build(),
            Reason::Passed,
        ),
        pass(
            "arp reply about owned VIP",
            Arp::reply(CLIENT_MAC, VIP4, NODE_MAC, CLIENT4).build(),
            Reason::Passed,
        ),
        pass(
            "arp op 3 (RARP request)",
            with(&|a| a.op = 3),
            Reason::Passed,
        ),
        pass(
            "arp htype not Ethernet",
            with(&|a| a.htype = 6),
            Reason::Passed,
        ),
        pass(
            "arp ptype not IPv4",
            with(&|a| a.ptype = 0x86dd),
            Reason::Passed,
        ),
        pass("arp hlen not 6", with(&|a| a.hlen = 8), Reason::Passed),
        pass("arp plen not 4", with(&|a| a.plen = 16), Reason::Passed),
        pass(
            "arp truncated to 41 bytes",
            request.build()[..41].to_vec(),
            Reason::Malformed,
        ),
        pass(
            "arp header only",
            request.build()[..14].to_vec(),
            Reason::Malformed,
        ),
        pass(
            "arp sender MAC multicast",
            with(&|a| a.sha = [0x01, 0, 0x5e, 0, 0, 1]),
            Reason::Malformed,
        ),
        pass(
            "802.1Q-tagged arp request for owned VIP",
            vlan_tagged(&request.build(), ETH_P_8021Q, 100),
            Reason::Passed,
        ),
        pass(
            "802.1ad-tagged arp request for owned VIP",
            vlan_tagged(
                &vlan_tagged(&request.build(), ETH_P_8021Q, 100),
                ETH_P_8021AD,
                7,
            ),
            Reason::Passed,
        ),
        pass(
            "ipv4 tcp to VIP",
            ipv4_tcp(
                (CLIENT_MAC, NODE_MAC),
                (CLIENT4, VIP4),
                (40000, 80),
                b"GET /",
            ),
            Reason::Passed,
        ),
        pass(
            "unknown ethertype",
            ethernet(NODE_MAC, CLIENT_MAC, 0x88b5, &[0; 46]),
            Reason::Passed,
        ),
        pass_with(
            "arp owned, heartbeat never written",
            Setup::NoHeartbeat,
            request.build(),
            Reason::StaleHeartbeat,
        ),
        pass_with(
            "arp owned, heartbeat stale",
            Setup::StaleHeartbeat,
            request.build(),
            Reason::StaleHeartbeat,
        ),
        pass_with(
            "arp owned, heartbeat from the future",
            Setup::FutureHeartbeat,
            request.build(),
            Reason::StaleHeartbeat,
        ),
        pass_with(
            "arp owned, contract version mismatch",
            Setup::ContractMismatch,
            request.build(),
            Reason::ContractMismatch,
        ),
    ]
}
