//! Replies too big for the way back to the client, end to end through the hostile L4 lab (see
//! l4_lab.rs). The pods' MTU is 1500; the node's interface towards the client (up1, the
//! asymmetric return route) and the client's end of it get 1280. A pod must learn that MTU
//! from the node's ICMP (fragmentation needed / packet too big) and send smaller packets:
//! - TCP: a bulk download completes, and the pod has learned the MTU towards the client
//!   (its route cache says so). The pod sends mostly GSO packets of 1448-byte segments, whose
//!   segments the reply program checks; its full-size packets that are not GSO draw the ICMP
//!   as well, so this does not show the segment check on its own (nor can a veth lab show an
//!   oversized GSO packet lost: a veth passes it whatever its segments).
//! - UDP (after the pod's route cache is flushed): a 1400-byte request draws a reply the pod
//!   sends whole, with DF (Linux's default); once told the MTU, the pod fragments its next
//!   replies, which reach the client. Rewritten to come from the VIP before the MTU check,
//!   the too-big reply sent the ICMP to the VIP (the node itself) and every reply was lost.

use std::{net::UdpSocket, time::Duration};

use testkit::{
    l4lab::{self, L4Lab, Options, TCP, UDP, client},
    netlab::Netns,
    process::poll_until,
};

const NARROW_MTU: &str = "1280";
/// Request bytes: with the answer's prefix, a reply over 1280 bytes.
const PADDING: usize = 1400;
const BULK: usize = 1 << 20;

#[test]
fn a_pod_learns_the_mtu_of_the_way_to_the_client_over_ipv4_and_ipv6() {
    let mut lab = L4Lab::new(&Options {
        pods: 1,
        tag: "m".to_owned(),
        ..Options::default()
    });
    let mut agent = lab.start_agent("agent.log");
    for v6 in [false, true] {
        lab.wait_serving(&mut agent, v6);
    }
    narrow(&lab.node, "up1");
    narrow(&lab.client, "eth1");

    let pod = &lab.pod(0).ns;
    for v6 in [false, true] {
        let to = l4lab::vip(TCP, v6);
        let mut conn = client::connect(&lab.client, to, 1, Duration::from_secs(5))
            .pop()
            .expect("one connection")
            .unwrap_or_else(|e| panic!("connecting to {to}: {e}"));
        let reply = conn
            .bulk(BULK, 0, Duration::from_secs(20))
            .unwrap_or_else(|e| panic!("a {BULK}-byte download from {to}: {e}"));
        assert_eq!(reply.from, to, "the download comes from the VIP");
        let family = if v6 { "-6" } else { "-4" };
        let client_ip = reply.peer.ip().to_string();
        let route = pod.ip(&[family, "route", "get", &client_ip]);
        assert!(
            route.contains(&format!("mtu {NARROW_MTU}")),
            "the pod did not learn the MTU towards {client_ip}: {route}"
        );
        pod.ip(&[family, "route", "flush", "cache"]);

        let socket: UdpSocket = client::udp_socket(&lab.client, v6);
        let to = l4lab::vip(UDP, v6);
        let mut last = None;
        let answered = poll_until(
            Duration::from_secs(10),
            || match client::udp_request_padded(&socket, to, PADDING, Duration::from_millis(500)) {
                Ok(reply) => Some(reply),
                Err(e) => {
                    last = Some(e);
                    None
                }
            },
        );
        let reply = answered.unwrap_or_else(|| {
            panic!(
                "no answer to a {PADDING}-byte request to {to} within 10 s (last: {last:?}); \
                 agent log:\n{}",
                agent.log_tail()
            )
        });
        assert_eq!(reply.from, to, "the reply comes from the VIP");
    }
    agent.assert_running();
}

/// Sets the narrow MTU on `ifname` in `ns`.
fn narrow(ns: &Netns, ifname: &str) {
    ns.ip(&["link", "set", ifname, "mtu", NARROW_MTU]);
}
