//! The real agent (fed by a manifests directory) steering a Service to a local endpoint: the
//! steered service, its backend (state, delivery device) and counters in `/status`,
//! `vipwire status` and `/metrics`; a terminating endpoint shows as draining; a restarted
//! agent recovers the same service id; without an agent the pinned maps still list it.
//!
//! Runs in the root network namespace like `agent_admin.rs`; the "pod" is the host end of a
//! veth with a /32 route to the endpoint's address, as a CNI sets it up.

use std::{
    net::SocketAddr,
    path::Path,
    process::{Command, Output},
    time::Duration,
};

use serde_json::{Value, json};
use testkit::{
    agent::{self, BpffsDir},
    netlab::HostVeth,
    process::{Daemon, wait_for},
};

const NODE: &str = "node-a";
const TIMEOUT: Duration = Duration::from_secs(20);
fn pod_ip() -> String {
    let pid = std::process::id();
    format!("10.{}.{}.7", 150 + pid % 50, pid / 50 % 250)
}

fn service_yaml(vip: &str, pod: &str, terminating: bool) -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: web\n  namespace: default\nspec:\n  type: LoadBalancer\n  ports:\n  - port: 80\n    protocol: TCP\n    targetPort: 8080\nstatus:\n  loadBalancer:\n    ingress:\n    - ip: \"{vip}\"\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: web-1\n  namespace: default\n  labels:\n    kubernetes.io/service-name: web\naddressType: IPv4\nports:\n- port: 8080\n  protocol: TCP\nendpoints:\n- addresses: [\"{pod}\"]\n  nodeName: {NODE}\n  conditions:\n    ready: {}\n    serving: true\n    terminating: {terminating}\n",
        !terminating
    )
}

fn vipwire(args: &[&str]) -> Output {
    Command::new(agent::binary())
        .args(args)
        .output()
        .expect("running vipwire")
}

fn start_agent(dir: &Path, uplink: &HostVeth, bpffs: &BpffsDir, admin: SocketAddr) -> Daemon {
    let mut command = Command::new(agent::binary());
    command
        .args(["run", "--manifests", dir.join("m").to_str().unwrap()])
        .args(["--node-name", NODE, "--interface", uplink.name()])
        .args(["--bpffs-dir", bpffs.as_str(), "--admin", &admin.to_string()])
        .env("RUST_LOG", "info");
    Daemon::spawn("vipwire (l4)", command, &dir.join("agent.log"))
}

fn status(admin: SocketAddr) -> Option<Value> {
    let (code, body) = vipwire::admin::client::get(admin, "/status").ok()?;
    (code == 200).then(|| serde_json::from_str(&body).ok())?
}

/// Waits until `/status` lists the frontend with one backend in `state`.
fn wait_for_backend(agent: &mut Daemon, admin: SocketAddr, state: &str) -> Value {
    wait_for(&format!("a {state} backend in /status"), TIMEOUT, || {
        agent.assert_running();
        let status = status(admin)?;
        let service = status["services"].as_array()?.first()?.clone();
        (service["backends"][0]["state"] == json!(state)).then_some(service)
    })
}

#[test]
fn steered_service_in_status_metrics_and_after_restart() {
    testkit::tools::require_root();
    let dir = tempfile::tempdir().expect("temp dir");
    let manifests = dir.path().join("m");
    std::fs::create_dir(&manifests).unwrap();
    let uplink = HostVeth::new("vs", "u");
    let pod = HostVeth::new("vs", "p");
    let pod_ip = pod_ip();
    let route = Command::new("ip")
        .args([
            "route",
            "replace",
            &format!("{pod_ip}/32"),
            "dev",
            pod.name(),
        ])
        .status()
        .unwrap();
    assert!(route.success());
    let pod_ifindex = vipwire::dataplane::iface::lookup(pod.name())
        .unwrap()
        .ifindex;
    let bpffs = BpffsDir::new("l4status");
    let admin = agent::free_loopback_port();
    std::fs::write(
        manifests.join("node.yaml"),
        agent::ready_node_manifest(NODE),
    )
    .unwrap();
    let web = manifests.join("web.yaml");
    std::fs::write(&web, service_yaml("203.0.113.30", &pod_ip, false)).unwrap();
    let mut agent = start_agent(dir.path(), &uplink, &bpffs, admin);

    let service = wait_for_backend(&mut agent, admin, "active");
    assert_eq!(service["frontend"], json!("203.0.113.30:80/TCP"));
    let service_id = service["service_id"].as_u64().expect("service id");
    assert_eq!(service["maglev_size"], json!(1021));
    let backend = &service["backends"][0];
    assert_eq!(backend["address"], json!(pod_ip));
    assert_eq!(backend["port"], json!(8080));
    assert_eq!(backend["ifindex"], json!(pod_ifindex));
    assert_eq!(backend["delivery"], json!("veth-peer"));
    assert_eq!(service["counters"]["packets"], json!(0));
    let links = bpffs.path().join("links");
    assert!(links.join(format!("tc_reply_if{pod_ifindex}")).exists());
    assert!(links.join(format!("tc_deliver_{}", uplink.name())).exists());

    let (_, metrics) = vipwire::admin::client::get(admin, "/metrics").unwrap();
    for line in [
        "vipwire_service_packets_total{frontend=\"203.0.113.30:80/TCP\"} 0\n",
        "vipwire_service_no_backend_total{frontend=\"203.0.113.30:80/TCP\"} 0\n",
        "vipwire_service_backends{frontend=\"203.0.113.30:80/TCP\",state=\"active\"} 1\n",
    ] {
        assert!(metrics.contains(line), "{line} missing from\n{metrics}");
    }
    let text = vipwire(&["status", "--admin", &admin.to_string()]);
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(text.contains("steered services:"), "{text}");
    assert!(text.contains(&format!("{pod_ip}:8080")), "{text}");

    // Terminating but serving: draining, out of the Maglev table.
    std::fs::write(&web, service_yaml("203.0.113.30", &pod_ip, true)).unwrap();
    let service = wait_for_backend(&mut agent, admin, "draining");
    assert_eq!(service["maglev_size"], json!(0));

    // A restarted agent takes the pinned state over: same id, same links.
    agent.stop(Duration::from_secs(10));
    let out = vipwire(&[
        "status",
        "--json",
        "--admin",
        &admin.to_string(),
        "--bpffs-dir",
        bpffs.as_str(),
    ]);
    let pinned: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(pinned["source"], json!("pinned-maps"));
    assert_eq!(
        pinned["services"][0]["frontend"],
        json!("203.0.113.30:80/TCP")
    );
    assert_eq!(pinned["services"][0]["service_id"], json!(service_id));

    std::fs::write(&web, service_yaml("203.0.113.30", &pod_ip, false)).unwrap();
    let mut agent = start_agent(dir.path(), &uplink, &bpffs, admin);
    let service = wait_for_backend(&mut agent, admin, "active");
    assert_eq!(service["service_id"], json!(service_id));
    let log = std::fs::read_to_string(agent.log_path()).unwrap_or_default();
    assert!(log.contains("L4 state recovered"), "{log}");
    agent.stop(Duration::from_secs(10));
}
