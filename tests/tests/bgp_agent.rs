//! The whole agent, BGP included: the real `vipwire` binary in a node namespace, fed from a
//! manifests directory, announces a /32 per VIP to a real FRR "ToR" only while this node has a
//! ready local endpoint (`externalTrafficPolicy: Local`), withdraws it when the endpoint moves
//! to another node, and withdraws with a Cease on SIGTERM.

use std::{path::Path, time::Duration};

use testkit::{
    NetLab,
    agent::{self, BpffsDir},
    peer::{Community, Neighbor, Peer, PeerConfig, PeerKind},
};

const NODE: &str = "node-a";
const VIP: &str = "203.0.113.30";
const ROUTE_WAIT: Duration = Duration::from_secs(30);

fn write_manifests(dir: &Path, endpoint_node: &str) {
    let node = testkit::agent::ready_node_manifest(NODE);
    let text = format!(
        "{node}---\napiVersion: v1\nkind: Service\nmetadata:\n  name: web\n  namespace: default\nspec:\n  type: LoadBalancer\n  externalTrafficPolicy: Local\n  ports:\n  - port: 80\n    protocol: TCP\n    targetPort: 8080\nstatus:\n  loadBalancer:\n    ingress:\n    - ip: \"{VIP}\"\n\
---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: web-1\n  namespace: default\n  labels:\n    kubernetes.io/service-name: web\naddressType: IPv4\nports:\n- port: 8080\n  protocol: TCP\nendpoints:\n- addresses: [\"10.244.0.10\"]\n  nodeName: {endpoint_node}\n  conditions:\n    ready: true\n"
    );
    // Write then rename, so the agent never reads a half-written file.
    let tmp = dir.join(".web.yaml.tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, dir.join("web.yaml")).unwrap();
}

/// `vipwire status --json` (from the admin endpoint, default 127.0.0.1:9469 in the node's
/// namespace), `/metrics` and `vipwire doctor` all show the FRR session Established with the
/// one route. Polled: the agent publishes the sessions once per heartbeat tick.
fn assert_admin_shows_the_session(node: &testkit::Netns) {
    let peer = testkit::process::wait_for("/status: FRR Established, 1 route", ROUTE_WAIT, || {
        let out = agent::run(node, &["status", "--json", "--admin", "127.0.0.1:9469"]);
        let status: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        let peer = status["bgp"]["peers"].as_array()?.first()?.clone();
        (status["source"] == "agent"
            && peer["state"] == "Established"
            && peer["routes_announced"] == 1)
            .then_some(peer)
    });
    assert_eq!(peer["address"], "10.0.5.1");
    assert_eq!(peer["asn"], 65001);
    assert_eq!(peer["established"], true);
    assert!(peer["uptime_seconds"].is_u64(), "{peer}");

    let metrics = node.run_ok("curl", &["-sf", "http://127.0.0.1:9469/metrics"]);
    for line in [
        "vipwire_bgp_session_established{peer=\"10.0.5.1\"} 1",
        "vipwire_bgp_routes_announced{peer=\"10.0.5.1\"} 1",
    ] {
        assert!(metrics.contains(line), "{line} missing from\n{metrics}");
    }

    let doctor = agent::run(node, &["doctor", "--admin", "127.0.0.1:9469"]);
    let text = String::from_utf8_lossy(&doctor.stdout);
    assert!(
        text.lines().any(|l| l.starts_with("OK")
            && l.contains("BGP peer 10.0.5.1 (AS 65001): Established")
            && l.contains("1 routes announced")),
        "{text}"
    );
}

#[test]
fn announces_vips_with_local_endpoints_and_withdraws_when_they_leave() {
    let mut lab = NetLab::new();
    let tor = lab.netns("tor");
    let node = lab.netns("node");
    lab.veth((&tor, "eth0"), (&node, "eth0"));
    tor.addr("eth0", "10.0.5.1/30");
    node.addr("eth0", "10.0.5.2/30");
    let frr = Peer::start(
        PeerKind::Frr,
        &tor,
        PeerConfig::new("10.0.5.1", 65001).neighbor(Neighbor::new("10.0.5.2", 65100)),
        lab.dir(),
    );

    let manifests = lab.path("manifests");
    std::fs::create_dir(&manifests).unwrap();
    write_manifests(&manifests, NODE);
    let config = lab.path("vipwire.yaml");
    std::fs::write(
        &config,
        "bgp:\n  asn: 65100\n  peers:\n  - address: 10.0.5.1\n    asn: 65001\n    holdTime: 9s\n    keepaliveTime: 3s\n  advertisement:\n    communities: [\"65000:100\"]\n",
    )
    .unwrap();
    let bpffs = BpffsDir::new("bgpagent");
    let args = [
        "run",
        "--config",
        config.to_str().unwrap(),
        "--manifests",
        manifests.to_str().unwrap(),
        "--node-name",
        NODE,
        "--interface",
        "eth0",
        "--bpffs-dir",
        bpffs.as_str(),
    ];
    let mut vipwire = agent::spawn(&node, &args, &lab.path("agent.log"));

    frr.wait_established("10.0.5.2", ROUTE_WAIT);
    let route = frr.wait_route(format!("{VIP}/32").as_str(), ROUTE_WAIT);
    assert_eq!(
        route.next_hops,
        ["10.0.5.2".parse::<std::net::IpAddr>().unwrap()]
    );
    assert_eq!(route.as_path, [65100]);
    assert_eq!(route.communities, [Community(65000, 100)]);
    vipwire.assert_running();
    assert_admin_shows_the_session(&node);

    // The only endpoint moves to another node: this node must stop attracting the VIP.
    write_manifests(&manifests, "node-b");
    frr.wait_no_route(format!("{VIP}/32").as_str(), ROUTE_WAIT);
    // And back.
    write_manifests(&manifests, NODE);
    frr.wait_route(format!("{VIP}/32").as_str(), ROUTE_WAIT);

    // SIGTERM: withdraw and Cease, well before the 9 s hold time would expire.
    let started = std::time::Instant::now();
    let status = vipwire
        .stop(Duration::from_secs(10))
        .expect("agent exit status");
    assert!(
        status.success(),
        "clean exit: {status}; log:\n{}",
        std::fs::read_to_string(lab.path("agent.log")).unwrap_or_default()
    );
    frr.wait_no_route(format!("{VIP}/32").as_str(), Duration::from_secs(5));
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "withdrawn on shutdown, not by hold timer"
    );
}
