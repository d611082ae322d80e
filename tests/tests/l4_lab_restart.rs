//! A restarted agent takes the pinned dataplane over before it has read any input, through
//! the hostile L4 lab (see l4_lab.rs): with its manifests broken, so that it reconciles
//! nothing, VIP traffic must still be steered by what the pinned maps hold. Loading the BPF
//! object writes each global variable's initial value into its map, a reused pin included;
//! the VIP filter is one, and must start as the pinned filter holds it: empty, it would send
//! every VIP packet to the kernel (and FORWARD DROP) until the first reconcile.

use std::time::Duration;

use testkit::{
    l4lab::{self, L4Lab, Options, REQUEST_TIMEOUT, TCP, client},
    process::wait_for,
};

#[test]
fn a_restarted_agent_steers_from_the_pinned_maps_before_reconciling() {
    let mut lab = L4Lab::new(&Options {
        pods: 1,
        tag: "r".to_owned(),
        ..Options::default()
    });
    let mut agent = lab.start_agent("agent.log");
    for v6 in [false, true] {
        lab.wait_serving(&mut agent, v6);
    }

    agent.signal(libc::SIGKILL);
    agent.stop(Duration::from_secs(2));
    std::fs::write(lab.manifests.dir().join("broken.yaml"), "kind: [unclosed\n").unwrap();
    let mut agent = lab.start_agent("agent2.log");
    let log = lab.path("agent2.log");
    wait_for(
        "the restarted agent to attach",
        Duration::from_secs(30),
        || {
            agent.assert_running();
            let text = std::fs::read_to_string(&log).ok()?;
            text.contains("agent running").then_some(())
        },
    );
    for v6 in [false, true] {
        let to = l4lab::vip(TCP, v6);
        for reply in client::tcp_requests(&lab.client, to, 10, REQUEST_TIMEOUT) {
            let reply = reply.unwrap_or_else(|e| {
                panic!(
                    "a new flow to {to} after the restart: {e}; agent log:\n{}",
                    agent.log_tail()
                )
            });
            assert_eq!(reply.from, to, "the answer comes from VIP:port");
        }
    }
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.contains("broken.yaml"),
        "the restarted agent must have seen its input broken (else it reconciled):\n{text}"
    );
    agent.assert_running();
}
