//! The admin endpoint of the real agent binary (fed by a manifests directory): `/readyz` goes
//! from 503 to 200 when the first good input arrives, `/metrics` carries the `vipwire_`
//! series, `vipwire status` asks the agent and falls back to the pinned maps (saying so) when
//! none answers, and `vipwire doctor` reports .0/.255 VIPs from the agent.
//!
//! The agent runs in the root network namespace (like `agent_kube.rs`), attached to the host
//! end of a veth pair named per test, so the test reaches its admin port on 127.0.0.1.

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

fn get(admin: SocketAddr, path: &str) -> Option<(u16, String)> {
    vipwire::admin::client::get(admin, path).ok()
}

fn service_yaml(name: &str, vip: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\n  namespace: default\nspec:\n  type: LoadBalancer\n  ports:\n  - port: 80\n    protocol: TCP\n    targetPort: 8080\nstatus:\n  loadBalancer:\n    ingress:\n    - ip: \"{vip}\"\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: {name}-1\n  namespace: default\n  labels:\n    kubernetes.io/service-name: {name}\naddressType: IPv4\nports:\n- port: 8080\n  protocol: TCP\nendpoints:\n- addresses: [\"10.244.0.10\"]\n  nodeName: {NODE}\n  conditions:\n    ready: true\n"
    )
}

fn vipwire(args: &[&str]) -> Output {
    Command::new(agent::binary())
        .args(args)
        .output()
        .expect("running vipwire")
}

fn json_of(output: &Output) -> Value {
    serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
        panic!(
            "not JSON ({e}): {}\nstderr: {}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        )
    })
}

/// The value of an unlabelled or labelled series in Prometheus text.
fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

fn start_agent(dir: &Path, veth: &HostVeth, bpffs: &BpffsDir, admin: SocketAddr) -> Daemon {
    let mut command = Command::new(agent::binary());
    command
        .args(["run", "--manifests", dir.join("m").to_str().unwrap()])
        .args(["--node-name", NODE, "--interface", veth.name()])
        .args(["--bpffs-dir", bpffs.as_str(), "--admin", &admin.to_string()])
        .args(["--heartbeat-timeout", "2s"])
        .env("RUST_LOG", "info");
    Daemon::spawn("vipwire (admin)", command, &dir.join("agent.log"))
}

#[test]
fn readyz_metrics_status_fallback_and_doctor() {
    let dir = tempfile::tempdir().expect("temp dir");
    let manifests = dir.path().join("m");
    std::fs::create_dir(&manifests).unwrap();
    // Broken input first: the agent runs, attaches, but is not ready.
    std::fs::write(manifests.join("broken.yaml"), "kind: [unclosed\n").unwrap();
    let veth = HostVeth::new("va", "a");
    let bpffs = BpffsDir::new("admin");
    let admin = agent::free_loopback_port();
    let mut agent = start_agent(dir.path(), &veth, &bpffs, admin);

    let (code, body) = wait_for("/healthz", TIMEOUT, || {
        agent.assert_running();
        get(admin, "/healthz")
    });
    assert_eq!((code, body.as_str()), (200, "ok\n"));
    let (code, body) = get(admin, "/readyz").expect("/readyz answers");
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("not synced"), "{body}");

    // Good input: ready.
    std::fs::remove_file(manifests.join("broken.yaml")).unwrap();
    std::fs::write(
        manifests.join("node.yaml"),
        agent::ready_node_manifest(NODE),
    )
    .unwrap();
    std::fs::write(
        manifests.join("web.yaml"),
        service_yaml("web", "203.0.113.10"),
    )
    .unwrap();
    std::fs::write(
        manifests.join("edge.yaml"),
        service_yaml("edge", "203.0.113.255"),
    )
    .unwrap();
    wait_for("/readyz 200", TIMEOUT, || {
        agent.assert_running();
        (get(admin, "/readyz")?.0 == 200).then_some(())
    });

    let (code, text) = get(admin, "/metrics").expect("/metrics answers");
    assert_eq!(code, 200);
    assert_eq!(metric(&text, "vipwire_ready"), Some(1.0), "{text}");
    assert_eq!(
        metric(&text, r#"vipwire_owned_vips{kind="l2"}"#),
        Some(2.0),
        "{text}"
    );
    assert_eq!(
        metric(&text, r#"vipwire_owned_vips{kind="bgp"}"#),
        Some(0.0),
        "{text}"
    );
    assert!(
        metric(&text, "vipwire_source_generation").unwrap() >= 1.0,
        "{text}"
    );
    assert!(
        metric(&text, r#"vipwire_xdp_packets_total{reason="pass"}"#).is_some()
            || text.contains("vipwire_xdp_packets_total{reason="),
        "{text}"
    );
    let answered = format!(
        r#"vipwire_vip_answered_total{{vip="203.0.113.10",interface="{}"}}"#,
        veth.name()
    );
    assert_eq!(metric(&text, &answered), Some(0.0), "{text}");
    let age = metric(&text, "vipwire_heartbeat_age_seconds").expect("heartbeat age");
    assert!((0.0..2.0).contains(&age), "{text}");
    assert!(
        text.lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
            .all(|l| l.starts_with("vipwire_")),
        "{text}"
    );

    // `status` asks the agent.
    let admin_arg = admin.to_string();
    let out = vipwire(&["status", "--json", "--admin", &admin_arg]);
    assert!(out.status.success(), "{out:?}");
    let status = json_of(&out);
    assert_eq!(status["source"], json!("agent"));
    assert_eq!(status["node"], json!(NODE));
    assert_eq!(status["input"]["kind"], json!("manifests"));
    assert_eq!(
        status["owned"]["l2"],
        json!(["203.0.113.10", "203.0.113.255"])
    );
    assert_eq!(status["buggy_vips"], json!(["203.0.113.255"]));
    assert_eq!(status["heartbeat"]["fresh"], json!(true));
    // A superset of the pinned-maps output: the same dataplane fields at the top level.
    assert_eq!(status["interfaces"][0]["name"], json!(veth.name()));
    assert_eq!(status["interfaces"][0]["vips"].as_array().unwrap().len(), 2);
    let text = vipwire(&["status", "--admin", &admin_arg]);
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(
        text.contains("owned (L2): 203.0.113.10, 203.0.113.255"),
        "{text}"
    );

    // `doctor` sees the agent and the .255 VIP.
    let out = vipwire(&[
        "doctor",
        "--admin",
        &admin_arg,
        "--bpffs-dir",
        bpffs.as_str(),
    ]);
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(report.contains("OK   bpffs mounted"), "{report}");
    assert!(
        report.contains(&format!("OK   agent on {admin} is ready")),
        "{report}"
    );
    assert!(
        report.contains("WARN VIP 203.0.113.255 ends in .0 or .255"),
        "{report}"
    );
    assert!(
        report.contains(&format!("rp_filter on {}", veth.name())),
        "{report}"
    );
    assert!(
        report.contains(&format!("interface {}: XDP", veth.name())),
        "{report}"
    );

    // No agent: `status` reads the pinned maps and says so.
    agent.stop(Duration::from_secs(10));
    let out = vipwire(&[
        "status",
        "--json",
        "--admin",
        &admin_arg,
        "--bpffs-dir",
        bpffs.as_str(),
    ]);
    assert!(out.status.success(), "{out:?}");
    let status = json_of(&out);
    assert_eq!(status["source"], json!("pinned-maps"));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("reading the pinned maps instead"),
        "{stderr}"
    );
    let vips: Vec<&Value> = status["interfaces"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|i| i["vips"].as_array().unwrap())
        .map(|v| &v["address"])
        .collect();
    assert_eq!(vips, [&json!("203.0.113.10"), &json!("203.0.113.255")]);
    // And doctor fails without an agent.
    let out = vipwire(&[
        "doctor",
        "--admin",
        &admin_arg,
        "--bpffs-dir",
        bpffs.as_str(),
    ]);
    assert!(!out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("FAIL agent"));
}
