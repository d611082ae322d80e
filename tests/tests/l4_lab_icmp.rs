//! ICMP errors a pod sends about a VIP flow, end to end through the hostile L4 lab (see
//! l4_lab.rs): a datagram to a VIP port whose pod port has no listener draws the pod's port
//! unreachable, which must reach the client as if the VIP had sent it, so a connected UDP
//! socket sees ECONNREFUSED at once instead of waiting out its timeout. Sent from the pod's
//! address it would match no socket, and the node's FORWARD DROP would drop it anyway.

use std::{io, net::UdpSocket, time::Duration};

use testkit::{
    l4lab::{self, CLOSED, L4Lab, Options},
    probe::in_netns,
    process::poll_until,
};

#[test]
fn a_closed_port_behind_the_vip_is_refused_over_ipv4_and_ipv6() {
    let mut lab = L4Lab::new(&Options::default());
    let mut agent = lab.start_agent("agent.log");
    for v6 in [false, true] {
        lab.wait_serving(&mut agent, v6);

        let closed = l4lab::vip(CLOSED, v6);
        let socket = in_netns(&lab.client, move || {
            let any = if v6 { "[::]:0" } else { "0.0.0.0:0" };
            let socket = UdpSocket::bind(any).expect("binding a client UDP socket");
            socket.connect(closed).expect("connecting the UDP socket");
            socket
        });
        socket
            .set_read_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        let mut last = None;
        let refused = poll_until(Duration::from_secs(5), || {
            socket.send(b"anyone?").expect("sending a datagram");
            let mut buf = [0u8; 64];
            match socket.recv(&mut buf) {
                Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => Some(()),
                other => {
                    last = Some(format!("{other:?}"));
                    None
                }
            }
        });
        assert!(
            refused.is_some(),
            "UDP to {closed} was not refused (last: {last:?}); agent log:\n{}",
            agent.log_tail()
        );
    }
    agent.assert_running();
}
