//! The L4 dataplane end to end (issue 4): client → node (the real agent, XDP + TC on up0/up1,
//! TC on the pods' host veths) → pod namespaces with nothing attached inside. The node is as
//! hostile as a real one gets: `rp_filter=1` everywhere, the route back to the client through
//! another interface than the one requests arrive on, and netfilter FORWARD DROP. See
//! testkit::l4lab for the topology.
//!
//! A control test runs the same requests through kube-proxy's kernel path (iptables DNAT) with
//! no agent: it must fail in the hostile lab and work once the node is made permissive, which
//! shows the hostility is real and the lab itself sound.

use std::{
    collections::BTreeMap,
    io,
    net::{IpAddr, SocketAddr},
    time::{Duration, Instant},
};

use testkit::{
    l4lab::{
        self, CLIENT_SRC, CLIENT_SRC6, ForwardPolicy, L4Lab, Options, REQUEST_TIMEOUT, RpFilter,
        TCP, UDP,
        client::{self, Fleet, Reply},
        stats,
    },
    process::Daemon,
};

/// The lab and its running agent (dropped first).
struct Running {
    agent: Daemon,
    lab: L4Lab,
}

impl Running {
    fn start(options: &Options) -> Self {
        let mut lab = L4Lab::new(options);
        let agent = lab.start_agent("agent.log");
        let mut this = Self { agent, lab };
        this.wait_serving(false);
        this
    }

    /// Waits until a TCP request to the VIP (of the family) is answered.
    fn wait_serving(&mut self, v6: bool) {
        self.lab.wait_serving(&mut self.agent, v6);
    }

    fn fail(&self, what: &str) -> ! {
        panic!("{what}; agent log:\n{}", self.agent.log_tail())
    }
}

/// What every answer through the VIP must show: a lab pod answered, it saw the client's real
/// address and port, and the answer came from VIP:port.
fn assert_direct(reply: &Reply, to: SocketAddr) {
    let client: IpAddr = if to.is_ipv6() {
        CLIENT_SRC6.into()
    } else {
        CLIENT_SRC.into()
    };
    assert!(reply.pod.starts_with("pod-"), "answered by {reply:?}");
    assert_eq!(
        reply.from, to,
        "the answer must come from VIP:port: {reply:?}"
    );
    assert_eq!(
        reply.peer.ip(),
        client,
        "the pod must see the client's real address: {reply:?}"
    );
    assert_eq!(
        reply.peer.port(),
        reply.local.port(),
        "the pod must see the client's port: {reply:?}"
    );
}

fn tcp_and_udp_reach_a_pod(v6: bool, client_xdp: bool) {
    let mut running = Running::start(&Options {
        client_xdp,
        ..Options::default()
    });
    if v6 {
        running.wait_serving(true);
    }
    let lab = &running.lab;
    let drops_before = stats::kernel_drops(&lab.node);
    let tcp = l4lab::vip(TCP, v6);
    let mut pods = BTreeMap::new();
    for reply in client::tcp_requests(&lab.client, tcp, 30, REQUEST_TIMEOUT) {
        let reply = reply.unwrap_or_else(|e| running.fail(&format!("TCP to {tcp}: {e}")));
        assert_direct(&reply, tcp);
        *pods.entry(reply.pod).or_insert(0) += 1;
    }
    assert!(pods.len() >= 2, "30 connections all went to {pods:?}");

    let udp = l4lab::vip(UDP, v6);
    let socket = client::udp_socket(&lab.client, v6);
    for _ in 0..10 {
        let reply = client::udp_request(&socket, udp, REQUEST_TIMEOUT)
            .unwrap_or_else(|e| running.fail(&format!("UDP to {udp}: {e}")));
        assert_direct(&reply, udp);
    }
    // A long-lived connection keeps working (conntrack + reverse NAT on every packet).
    let mut fleet = Fleet::open(&lab.client, tcp, 1, REQUEST_TIMEOUT);
    for _ in 0..20 {
        let reply = fleet.ping(REQUEST_TIMEOUT).remove(0);
        let reply = reply.unwrap_or_else(|e| running.fail(&format!("ping over {tcp}: {e}")));
        assert_direct(&reply, tcp);
    }
    // Not one packet went the kernel's way (where rp_filter and FORWARD DROP wait).
    assert_eq!(
        stats::kernel_drops(&lab.node),
        drops_before,
        "the node's kernel dropped VIP traffic"
    );
    running.agent.assert_running();
}

#[test]
fn tcp_and_udp_over_ipv4_reach_a_pod_with_the_client_ip_through_a_hostile_node() {
    tcp_and_udp_reach_a_pod(false, true);
}

#[test]
fn tcp_and_udp_over_ipv6_reach_a_pod_with_the_client_ip_through_a_hostile_node() {
    tcp_and_udp_reach_a_pod(true, true);
}

/// Whether the client's ends need the pass-all XDP program: every frame vipwire sends towards
/// the client leaves through TC (redirect to the uplink's egress), not XDP_TX or XDP_REDIRECT,
/// so a plain veth peer, without XDP or GRO, must receive it.
#[test]
fn the_client_ends_need_no_xdp_program() {
    tcp_and_udp_reach_a_pod(false, false);
}

/// A request through the kernel path, by protocol; `Ok` only for a direct answer.
fn kernel_attempt(lab: &L4Lab, v6: bool) -> (io::Result<Reply>, io::Result<Reply>) {
    let timeout = Duration::from_millis(800);
    let tcp = client::tcp_request(&lab.client, l4lab::vip(TCP, v6), timeout);
    let socket = client::udp_socket(&lab.client, v6);
    let udp = client::udp_request(&socket, l4lab::vip(UDP, v6), timeout);
    (tcp, udp)
}

#[test]
fn control_without_vipwire_the_kernel_path_fails_on_the_hostile_node() {
    let lab = L4Lab::new(&Options {
        pods: 1,
        ..Options::default()
    });
    lab.install_kernel_dnat(0, false);
    let cases = [
        (
            RpFilter::Strict,
            ForwardPolicy::Drop,
            "rp_filter=1 and FORWARD DROP",
        ),
        (RpFilter::Strict, ForwardPolicy::Accept, "rp_filter=1 alone"),
        (RpFilter::Loose, ForwardPolicy::Drop, "FORWARD DROP alone"),
    ];
    for (rp, forward, what) in cases {
        lab.set_rp_filter(rp);
        lab.set_forward(forward);
        let before = stats::kernel_drops(&lab.node);
        let (tcp, udp) = kernel_attempt(&lab, false);
        let after = stats::kernel_drops(&lab.node);
        // ... and the drops are the hostility's, counted where it sits.
        if rp == RpFilter::Strict {
            assert!(
                after.rp_filter > before.rp_filter,
                "{what}: {before:?} -> {after:?}"
            );
        } else {
            assert!(
                after.forward_policy > before.forward_policy,
                "{what}: {before:?} -> {after:?}"
            );
        }
        assert!(
            tcp.is_err(),
            "{what} must break TCP through iptables DNAT: {tcp:?}"
        );
        assert!(
            udp.is_err(),
            "{what} must break UDP through iptables DNAT: {udp:?}"
        );
    }
    // IPv6 has no rp_filter: FORWARD DROP alone breaks it.
    let (tcp, udp) = kernel_attempt(&lab, true);
    assert!(
        tcp.is_err() && udp.is_err(),
        "FORWARD DROP must break IPv6: {tcp:?} {udp:?}"
    );

    // Permissive (what kube-proxy needs): the same lab works, so the failures above were the
    // node's hostility and not a broken lab.
    lab.set_rp_filter(RpFilter::Loose);
    lab.set_forward(ForwardPolicy::Accept);
    for v6 in [false, true] {
        let (tcp, udp) = kernel_attempt(&lab, v6);
        let tcp = tcp.unwrap_or_else(|e| panic!("kernel DNAT on a permissive node (v6={v6}): {e}"));
        assert_direct(&tcp, l4lab::vip(TCP, v6));
        let udp = udp.unwrap_or_else(|e| panic!("kernel DNAT on a permissive node (v6={v6}): {e}"));
        assert_direct(&udp, l4lab::vip(UDP, v6));
    }
    // And nft DNAT instead of iptables: the same.
    lab.remove_kernel_dnat(0, false);
    lab.install_kernel_dnat(0, true);
    let (tcp, _) = kernel_attempt(&lab, false);
    assert_direct(
        &tcp.expect("nft DNAT on a permissive node"),
        l4lab::vip(TCP, false),
    );
}

/// Rounds of pings over the fleet for `for_at_least`, and until `done` says so (at most 20 s);
/// errors are recorded per connection index.
fn ping_rounds(
    running: &Running,
    fleet: &mut Fleet,
    failures: &mut BTreeMap<usize, Vec<String>>,
    for_at_least: Duration,
    mut done: impl FnMut(&Running) -> bool,
) {
    let started = Instant::now();
    let mut rounds = 0;
    loop {
        for (i, result) in fleet.ping(REQUEST_TIMEOUT).into_iter().enumerate() {
            let expected = fleet.conns[i].pod.clone();
            match result {
                Ok(reply) if Some(&reply.pod) == expected.as_ref() => {}
                Ok(reply) => failures
                    .entry(i)
                    .or_default()
                    .push(format!("moved from {expected:?} to {}", reply.pod)),
                Err(e) => failures.entry(i).or_default().push(e.to_string()),
            }
        }
        rounds += 1;
        if started.elapsed() >= for_at_least && done(running) {
            return;
        }
        if started.elapsed() > Duration::from_secs(20) {
            running.fail(&format!("condition not reached after {rounds} ping rounds"));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Pods of `n` new IPv4 connections (each its own source port).
fn new_flows(running: &Running, n: usize) -> BTreeMap<String, usize> {
    new_flows_to(running, n, false)
}

fn new_flows_to(running: &Running, n: usize, v6: bool) -> BTreeMap<String, usize> {
    let to = l4lab::vip(TCP, v6);
    let mut pods = BTreeMap::new();
    for reply in client::tcp_requests(&running.lab.client, to, n, REQUEST_TIMEOUT) {
        let reply = reply.unwrap_or_else(|e| running.fail(&format!("new connection: {e}")));
        assert_direct(&reply, to);
        *pods.entry(reply.pod).or_insert(0usize) += 1;
    }
    pods
}

#[test]
fn endpoint_changes_keep_established_flows_and_spread_new_ones() {
    endpoint_changes(false);
}

#[test]
fn endpoint_changes_keep_established_flows_and_spread_new_ones_over_ipv6() {
    endpoint_changes(true);
}

fn endpoint_changes(v6: bool) {
    let mut running = Running::start(&Options::default());
    if v6 {
        running.wait_serving(true);
    }
    let to = l4lab::vip(TCP, v6);
    let mut fleet = Fleet::open(&running.lab.client, to, 100, REQUEST_TIMEOUT);
    let mut failures = BTreeMap::new();
    ping_rounds(
        &running,
        &mut fleet,
        &mut failures,
        Duration::from_millis(500),
        |_| true,
    );
    assert!(failures.is_empty(), "before any change: {failures:?}");

    // A fourth endpoint comes: new flows reach it, established ones stay where they are.
    running.lab.add_pod(3);
    running.lab.manifests.write();
    ping_rounds(
        &running,
        &mut fleet,
        &mut failures,
        Duration::from_secs(1),
        |r| new_flows_to(r, 20, v6).contains_key("pod-3"),
    );
    // The first endpoint goes (its pod keeps running, as a terminating one does).
    running.lab.manifests.remove("pod-0");
    running.lab.manifests.write();
    ping_rounds(
        &running,
        &mut fleet,
        &mut failures,
        Duration::from_secs(1),
        |r| !new_flows_to(r, 30, v6).contains_key("pod-0"),
    );
    ping_rounds(
        &running,
        &mut fleet,
        &mut failures,
        Duration::from_secs(1),
        |_| true,
    );

    let surviving: Vec<(usize, &String)> = fleet
        .conns
        .iter()
        .enumerate()
        .filter_map(|(i, c)| c.pod.as_ref().map(|p| (i, p)))
        .filter(|(_, pod)| *pod != "pod-0")
        .collect();
    assert!(
        surviving.len() >= 40,
        "the 100 connections were spread: {surviving:?}"
    );
    let broken: Vec<_> = surviving
        .iter()
        .filter_map(|(i, pod)| failures.get(i).map(|f| (i, pod, f)))
        .collect();
    assert!(
        broken.is_empty(),
        "{} of {} connections to surviving endpoints broke: {broken:?}",
        broken.len(),
        surviving.len()
    );

    // 600 new connections spread evenly (±20 %) over the 3 endpoints now ready.
    let pods = new_flows_to(&running, 600, v6);
    let removed_broken = fleet
        .conns
        .iter()
        .enumerate()
        .filter(|(i, c)| c.pod.as_deref() == Some("pod-0") && failures.contains_key(i))
        .count();
    println!(
        "{} connections to surviving endpoints kept through the changes ({removed_broken} to \
         the removed one broke); 600 new: {pods:?}",
        surviving.len()
    );
    assert_eq!(
        pods.keys().map(String::as_str).collect::<Vec<_>>(),
        ["pod-1", "pod-2", "pod-3"],
        "new flows go to the ready endpoints only: {pods:?}"
    );
    for (pod, count) in &pods {
        assert!(
            (160..=240).contains(count),
            "{pod} got {count} of 600 new connections (even: 200 ± 20 %): {pods:?}"
        );
    }
    running.agent.assert_running();
}

/// A terminating endpoint that still serves (a pod being deleted) keeps its established flows
/// (DESIGN.md, ownership rules) while new flows avoid it.
#[test]
fn a_terminating_endpoint_keeps_its_established_flows() {
    let mut running = Running::start(&Options::default());
    let to = l4lab::vip(TCP, false);
    let mut fleet = Fleet::open(&running.lab.client, to, 60, REQUEST_TIMEOUT);
    let mut failures = BTreeMap::new();
    ping_rounds(
        &running,
        &mut fleet,
        &mut failures,
        Duration::from_millis(300),
        |_| true,
    );
    let on_pod0 = fleet
        .conns
        .iter()
        .filter(|c| c.pod.as_deref() == Some("pod-0"))
        .count();
    assert!(on_pod0 > 0, "none of 60 connections went to pod-0");

    running.lab.manifests.terminate("pod-0");
    running.lab.manifests.write();
    ping_rounds(
        &running,
        &mut fleet,
        &mut failures,
        Duration::from_secs(1),
        |r| !new_flows(r, 30).contains_key("pod-0"),
    );
    ping_rounds(
        &running,
        &mut fleet,
        &mut failures,
        Duration::from_secs(1),
        |_| true,
    );
    assert!(
        failures.is_empty(),
        "connections broke while pod-0 ({on_pod0} of them) was terminating: {failures:?}"
    );
}

/// The kernel keeps steering from the pinned maps and links while the agent is gone
/// (DESIGN.md, data flow): established flows survive a SIGKILL and a restart, and new flows
/// are served in between.
#[test]
fn flows_survive_an_agent_sigkill_and_restart() {
    let mut running = Running::start(&Options::default());
    let to = l4lab::vip(TCP, false);
    let mut fleet = Fleet::open(&running.lab.client, to, 50, REQUEST_TIMEOUT);
    let mut failures = BTreeMap::new();
    ping_rounds(
        &running,
        &mut fleet,
        &mut failures,
        Duration::from_millis(300),
        |_| true,
    );

    running.agent.signal(libc::SIGKILL);
    running.agent.stop(Duration::from_secs(2));
    let mut dead = BTreeMap::new();
    ping_rounds(
        &running,
        &mut fleet,
        &mut dead,
        Duration::from_secs(1),
        |_| true,
    );
    let new_while_dead = client::tcp_requests(&running.lab.client, to, 20, REQUEST_TIMEOUT);
    let first_log = running.agent.log_tail();
    running.agent = running.lab.start_agent("agent2.log");
    ping_rounds(
        &running,
        &mut fleet,
        &mut failures,
        Duration::from_secs(2),
        |_| true,
    );
    assert!(
        dead.is_empty(),
        "established flows broke while the agent was dead: {dead:?}\nfirst agent's log:\n{first_log}"
    );
    for reply in new_while_dead {
        let reply = reply.unwrap_or_else(|e| panic!("a new flow while the agent was dead: {e}"));
        assert_direct(&reply, to);
    }
    if !failures.is_empty() {
        running.fail(&format!("flows broke across the restart: {failures:?}"));
    }
    running.agent.assert_running();
}

/// Large replies (the pod's TCP sends GSO segments, which the reply program must NAT and
/// forward whole or have segmented) and large requests (GRO on the way in) over both families,
/// and with the return route through the interface requests came in on as well.
#[test]
fn bulk_transfers_in_both_directions_and_a_symmetric_return_route() {
    let mut running = Running::start(&Options::default());
    running.wait_serving(true);
    let bulk = |running: &Running, what: &str| {
        for v6 in [false, true] {
            let to = l4lab::vip(TCP, v6);
            let mut fleet = Fleet::open(&running.lab.client, to, 1, REQUEST_TIMEOUT);
            let conn = &mut fleet.conns[0];
            for (down, up) in [(4 << 20, 0), (0, 1 << 20), (1 << 20, 256 << 10)] {
                let reply = conn
                    .bulk(down, up, Duration::from_secs(10))
                    .unwrap_or_else(|e| {
                        running.fail(&format!(
                            "{what}: {down} bytes down, {up} up over {to}: {e}"
                        ))
                    });
                assert_direct(&reply, to);
            }
        }
    };
    bulk(&running, "asymmetric return route");
    // The route back to the client through up0, where the requests come in.
    let node = &running.lab.node;
    node.ip(&[
        "route",
        "replace",
        "198.51.100.0/24",
        "via",
        "10.0.1.1",
        "dev",
        "up0",
    ]);
    node.ip(&[
        "-6",
        "route",
        "replace",
        "2001:db8:200::/64",
        "via",
        "fd00:1::1",
        "dev",
        "up0",
    ]);
    bulk(&running, "symmetric return route");
    running.agent.assert_running();
}

/// Traffic to a pod's own address (not the VIP) is not vipwire's: on a node that lets the
/// kernel forward it, it keeps working while the agent runs, and its replies keep the pod's
/// address (the reply program rewrites only flows it tracked).
#[test]
fn direct_pod_traffic_is_left_alone() {
    let mut running = Running::start(&Options {
        rp_filter: RpFilter::Loose,
        forward: ForwardPolicy::Accept,
        ..Options::default()
    });
    running.wait_serving(true);
    let client = &running.lab.client;
    client.ip(&[
        "route",
        "add",
        "10.244.0.0/24",
        "via",
        "10.0.1.2",
        "dev",
        "eth0",
        "src",
        &CLIENT_SRC.to_string(),
    ]);
    client.ip(&[
        "-6",
        "route",
        "add",
        "fd00:244::/64",
        "via",
        "fd00:1::2",
        "dev",
        "eth0",
        "src",
        &CLIENT_SRC6.to_string(),
    ]);
    for (pod, v6) in [(0, false), (1, true)] {
        let ip: IpAddr = if v6 {
            l4lab::pod_ip6(pod).into()
        } else {
            l4lab::pod_ip(pod).into()
        };
        let to = SocketAddr::new(ip, TCP.target);
        let reply = client::tcp_request(client, to, REQUEST_TIMEOUT)
            .unwrap_or_else(|e| running.fail(&format!("TCP straight to {to}: {e}")));
        assert_eq!(reply.from, to, "{reply:?}");
        assert_eq!(reply.pod, l4lab::pod_name(pod));
        let socket = client::udp_socket(client, v6);
        let to = SocketAddr::new(ip, UDP.target);
        let reply = client::udp_request(&socket, to, REQUEST_TIMEOUT)
            .unwrap_or_else(|e| running.fail(&format!("UDP straight to {to}: {e}")));
        assert_eq!(reply.from, to, "{reply:?}");
    }
    // ... and the VIP still works beside it.
    let to = l4lab::vip(TCP, false);
    let reply = client::tcp_request(client, to, REQUEST_TIMEOUT)
        .unwrap_or_else(|e| running.fail(&format!("TCP to {to}: {e}")));
    assert_direct(&reply, to);
}
