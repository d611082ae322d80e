//! The L2 dataplane end to end in network namespaces: the real agent binary, fed by a manifests
//! directory, answers ARP/NDP for the VIPs its node owns, on the configured interface only, keeps
//! answering through a SIGKILL + restart, and stops when its heartbeat goes stale.
//!
//! client (eth0 10.0.0.1) ── node (eth0 10.0.0.2, vipwire) ── client2 (eth0 10.0.1.1, node eth1
//! not configured). The clients stand for a NIC's far end (a ToR) and carry a pass-all XDP
//! program so the node's XDP_TX replies are delivered on veth (see TOOLCHAIN.md).

use std::{
    net::Ipv4Addr,
    path::Path,
    time::{Duration, Instant},
};

use testkit::{
    NetLab, Netns,
    agent::{self, BpffsDir},
    probe::ArpProber,
    process::{Daemon, wait_for},
};

const VIP: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 10);
const VIP6: &str = "2001:db8::10";
const OTHER_VIP: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 99);
const NODE: &str = "node-a";

struct Lab {
    lab: NetLab,
    client: Netns,
    client2: Netns,
    node: Netns,
    bpffs: BpffsDir,
    manifests: std::path::PathBuf,
}

/// A LoadBalancer Service with `ips` as its ingress, and an EndpointSlice with one ready
/// endpoint on this node (a Service with no endpoint anywhere is announced by nobody).
fn service_manifest(name: &str, ips: &[&str]) -> String {
    let ingress: String = ips
        .iter()
        .map(|ip| format!("    - ip: \"{ip}\"\n"))
        .collect();
    // Endpoints are per address family, as in a dual-stack cluster.
    let v6_slice = if ips.iter().any(|ip| ip.contains(':')) {
        format!(
            "---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: {name}-v6\n  namespace: default\n  labels:\n    kubernetes.io/service-name: {name}\naddressType: IPv6\nports:\n- port: 8080\n  protocol: TCP\nendpoints:\n- addresses: [\"fd00:244::10\"]\n  nodeName: {NODE}\n  conditions:\n    ready: true\n"
        )
    } else {
        String::new()
    };
    format!(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\n  namespace: default\nspec:\n  type: LoadBalancer\n  externalTrafficPolicy: Cluster\n  ports:\n  - port: 80\n    protocol: TCP\n    targetPort: 8080\nstatus:\n  loadBalancer:\n    ingress:\n{ingress}---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: {name}-1\n  namespace: default\n  labels:\n    kubernetes.io/service-name: {name}\naddressType: IPv4\nports:\n- port: 8080\n  protocol: TCP\nendpoints:\n- addresses: [\"10.244.0.10\"]\n  nodeName: {NODE}\n  conditions:\n    ready: true\n"
    ) + &v6_slice
}

fn lab(name: &str) -> Lab {
    let mut lab = NetLab::new();
    let client = lab.netns("client");
    let client2 = lab.netns("client2");
    let node = lab.netns("node");
    lab.veth((&client, "eth0"), (&node, "eth0"));
    lab.veth((&client2, "eth0"), (&node, "eth1"));
    client.addr("eth0", "10.0.0.1/24");
    client.addr("eth0", "fd00::1/64");
    node.addr("eth0", "10.0.0.2/24");
    node.addr("eth0", "fd00::2/64");
    client2.addr("eth0", "10.0.1.1/24");
    node.addr("eth1", "10.0.1.2/24");
    client.pass_all_xdp("eth0");
    client2.pass_all_xdp("eth0");
    let manifests = lab.path("manifests");
    std::fs::create_dir(&manifests).unwrap();
    std::fs::write(
        manifests.join("node.yaml"),
        agent::ready_node_manifest(NODE),
    )
    .unwrap();
    std::fs::write(
        manifests.join("web.yaml"),
        service_manifest("web", &[&VIP.to_string(), VIP6]),
    )
    .unwrap();
    Lab {
        bpffs: BpffsDir::new(name),
        lab,
        client,
        client2,
        node,
        manifests,
    }
}

impl Lab {
    fn start_agent(&self, log: &str, extra: &[&str]) -> Daemon {
        let mut args = vec![
            "run",
            "--manifests",
            self.manifests.to_str().unwrap(),
            "--node-name",
            NODE,
            "--interface",
            "eth0",
            "--bpffs-dir",
            self.bpffs.as_str(),
            "--heartbeat-timeout",
            "2s",
        ];
        args.extend_from_slice(extra);
        agent::spawn(&self.node, &args, &self.lab.path(log))
    }

    fn wait_answering(&self, prober: &ArpProber, agent: &mut Daemon) -> [u8; 6] {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            agent.assert_running();
            if let Some(mac) = prober.probe(VIP, Duration::from_millis(200)) {
                return mac;
            }
            assert!(
                Instant::now() < deadline,
                "the agent did not answer ARP for {VIP} within 20 s; its log:\n{}",
                agent.log_tail()
            );
        }
    }
}

#[test]
fn answers_arp_for_owned_vips_on_configured_interfaces_only() {
    let lab = lab("arp");
    let mut agent = lab.start_agent("agent.log", &["--bpf-log-level", "info"]);
    let prober = ArpProber::open(&lab.client, "eth0", Ipv4Addr::new(10, 0, 0, 1));
    let mac = lab.wait_answering(&prober, &mut agent);
    assert_eq!(
        mac,
        lab.node.mac("eth0"),
        "the reply carries the node interface's MAC"
    );

    // arping (iputils) sees the same.
    let out = lab.client.run_ok(
        "arping",
        &["-c", "1", "-w", "2", "-I", "eth0", &VIP.to_string()],
    );
    let node_mac = format_mac(lab.node.mac("eth0"));
    assert!(
        out.to_lowercase().contains(&node_mac),
        "arping output {out:?} lacks {node_mac}"
    );

    assert_eq!(
        prober.probe(OTHER_VIP, Duration::from_millis(500)),
        None,
        "a VIP nobody owns"
    );
    let prober2 = ArpProber::open(&lab.client2, "eth0", Ipv4Addr::new(10, 0, 1, 1));
    assert_eq!(
        prober2.probe(VIP, Duration::from_millis(500)),
        None,
        "eth1 is not a configured interface"
    );
    let status = lab.status();
    let eth0 = interface(&status, "eth0");
    let vip = eth0["vips"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["address"] == VIP.to_string())
        .expect("VIP in status");
    assert!(
        vip["answered"].as_u64().unwrap() >= 2,
        "status counts answers: {status}"
    );
    assert!(status["counters"]["answered_arp"].as_u64().unwrap() >= 2);
    assert!(status["counters"]["not_owned"].as_u64().unwrap() >= 1);
    assert_eq!(status["heartbeat"]["fresh"], true);
    // The attach-time self-check ran, and its aya-log line reached the agent's log.
    let log = agent.log_tail();
    assert!(log.contains("self-check passed"), "agent log:\n{log}");
    assert!(
        log.contains(&format!(
            "self-check: vipwire_xdp runs, contract v{}",
            vipwire_common::CONTRACT_VERSION
        )),
        "agent log:\n{log}"
    );
    agent.stop(Duration::from_secs(5));
}

#[test]
fn ndp_resolves_an_owned_ipv6_vip() {
    let lab = lab("ndp");
    let mut agent = lab.start_agent("agent.log", &[]);
    let prober = ArpProber::open(&lab.client, "eth0", Ipv4Addr::new(10, 0, 0, 1));
    lab.wait_answering(&prober, &mut agent);
    let out = lab
        .client
        .exec("ndisc6", &["-1", "-r", "3", "-w", "1000", VIP6, "eth0"]);
    assert!(
        out.status.success(),
        "ndisc6 failed: {}{}\nstatus: {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        lab.status()
    );
    let out = String::from_utf8_lossy(&out.stdout).into_owned();
    let node_mac = format_mac(lab.node.mac("eth0")).to_uppercase();
    assert!(
        out.to_uppercase().contains(&node_mac),
        "ndisc6 output {out:?} lacks {node_mac}"
    );
    // The kernel's own neighbour resolution (ping -6) works against the XDP answer too.
    lab.client
        .ip(&["-6", "route", "add", "2001:db8::/64", "dev", "eth0"]);
    let _ = lab.client.exec("ping", &["-6", "-c", "1", "-W", "1", VIP6]);
    let neigh = lab.client.ip(&["-6", "neigh", "show", VIP6]);
    assert!(
        neigh.to_lowercase().contains(&node_mac.to_lowercase()),
        "neighbour entry {neigh:?}"
    );
    agent.stop(Duration::from_secs(5));
}

#[test]
fn answering_never_stops_across_sigkill_and_restart() {
    let lab = lab("restart");
    let mut first = lab.start_agent("agent1.log", &[]);
    let prober = ArpProber::open(&lab.client, "eth0", Ipv4Addr::new(10, 0, 0, 1));
    lab.wait_answering(&prober, &mut first);
    let answered_before = vip_answered(&lab.status());

    let mut probes = 0;
    let mut misses = Vec::new();
    let mut second = None;
    let started = Instant::now();
    // Probe every 50 ms for 6 s: SIGKILL at 1 s, restart at 1.5 s.
    while started.elapsed() < Duration::from_secs(6) {
        let tick = Instant::now();
        if prober.probe(VIP, Duration::from_millis(45)).is_none() {
            misses.push(started.elapsed());
        }
        probes += 1;
        if second.is_none() && started.elapsed() > Duration::from_millis(1000) && first.pid() != 0 {
            first.signal(libc::SIGKILL);
        }
        if second.is_none() && started.elapsed() > Duration::from_millis(1500) {
            second = Some(lab.start_agent("agent2.log", &[]));
        }
        std::thread::sleep(Duration::from_millis(50).saturating_sub(tick.elapsed()));
    }
    let mut second = second.unwrap();
    second.assert_running();
    assert!(probes >= 80, "only {probes} probes");
    assert!(
        misses.is_empty(),
        "{} of {probes} probes missed, at {misses:?}",
        misses.len()
    );
    let answered_after = vip_answered(&lab.status());
    assert!(
        answered_after >= answered_before + probes as u64,
        "per-VIP counters kept across the restart: {answered_before} -> {answered_after}"
    );
    let log = std::fs::read_to_string(lab.lab.path("agent2.log")).unwrap();
    assert!(
        log.contains("reused"),
        "the second agent took over the pinned link:\n{log}"
    );
    second.stop(Duration::from_secs(5));
}

#[test]
fn a_dead_agent_stops_answering_after_the_heartbeat_timeout() {
    let lab = lab("stale");
    let mut agent = lab.start_agent("agent.log", &[]);
    let prober = ArpProber::open(&lab.client, "eth0", Ipv4Addr::new(10, 0, 0, 1));
    lab.wait_answering(&prober, &mut agent);
    agent.signal(libc::SIGKILL);
    agent.stop(Duration::from_secs(1));
    // Timeout 2 s: still answering right after the kill, silent a little after the timeout.
    assert!(
        prober.probe(VIP, Duration::from_millis(200)).is_some(),
        "answers during the grace period"
    );
    std::thread::sleep(Duration::from_millis(2600));
    assert_eq!(
        prober.probe(VIP, Duration::from_millis(500)),
        None,
        "a dead agent must stop answering"
    );
    let status = lab.status();
    assert_eq!(status["heartbeat"]["fresh"], false);
    assert!(
        status["counters"]["stale_heartbeat"].as_u64().unwrap() >= 1,
        "{status}"
    );
}

#[test]
fn manifest_changes_take_and_release_vips_with_gratuitous_arp() {
    let lab = lab("garp");
    let mut agent = lab.start_agent("agent.log", &[]);
    let prober = ArpProber::open(&lab.client, "eth0", Ipv4Addr::new(10, 0, 0, 1));
    lab.wait_answering(&prober, &mut agent);
    let new_vip = Ipv4Addr::new(203, 0, 113, 20);
    let listener = ArpProber::open(&lab.client, "eth0", Ipv4Addr::new(10, 0, 0, 1));
    std::fs::write(
        lab.manifests.join("api.yaml"),
        service_manifest("api", &[&new_vip.to_string()]),
    )
    .unwrap();
    let (count, mac) = listener.gratuitous_seen(new_vip, Duration::from_secs(4));
    assert!(
        count >= 2,
        "expected repeated gratuitous ARPs for {new_vip}, saw {count}"
    );
    assert_eq!(mac, Some(lab.node.mac("eth0")));
    assert!(prober.probe(new_vip, Duration::from_millis(300)).is_some());

    std::fs::remove_file(lab.manifests.join("api.yaml")).unwrap();
    wait_for("the VIP to be released", Duration::from_secs(5), || {
        prober
            .probe(new_vip, Duration::from_millis(200))
            .is_none()
            .then_some(())
    });
    assert!(
        prober.probe(VIP, Duration::from_millis(300)).is_some(),
        "the other VIP stays"
    );
    agent.stop(Duration::from_secs(5));
}

#[test]
fn cleanup_on_exit_detaches_and_unpins() {
    stops_cleanly_on(libc::SIGTERM, "cleanup");
}

/// Something among the links that is not a link (a directory someone made there) does not
/// stop the cleanup half-way: it goes too, and so does everything else.
#[test]
fn cleanup_on_exit_removes_a_stray_entry_among_the_links() {
    let lab = lab("stray");
    let mut agent = lab.start_agent("agent.log", &["--cleanup-on-exit"]);
    let prober = ArpProber::open(&lab.client, "eth0", Ipv4Addr::new(10, 0, 0, 1));
    lab.wait_answering(&prober, &mut agent);
    std::fs::create_dir(lab.bpffs.path().join("links/stray")).unwrap();
    let status = agent.stop(Duration::from_secs(5)).expect("exit status");
    assert!(status.success(), "clean exit: {status}");
    assert!(!lab.bpffs.path().exists(), "everything unpinned");
}

#[test]
fn sigint_stops_the_agent_as_cleanly_as_sigterm() {
    stops_cleanly_on(libc::SIGINT, "sigint");
}

/// `signal` makes the agent exit 0, and with `--cleanup-on-exit` nothing of it stays behind.
fn stops_cleanly_on(signal: i32, name: &str) {
    let lab = lab(name);
    let mut agent = lab.start_agent("agent.log", &["--cleanup-on-exit"]);
    let prober = ArpProber::open(&lab.client, "eth0", Ipv4Addr::new(10, 0, 0, 1));
    lab.wait_answering(&prober, &mut agent);
    assert!(lab.node.ip(&["link", "show", "eth0"]).contains("xdp"));
    agent.signal(signal);
    let status = wait_for("the agent to exit", Duration::from_secs(5), || {
        agent.try_wait()
    });
    assert!(status.success(), "clean exit: {status}");
    assert!(!lab.bpffs.path().exists(), "pins removed");
    assert!(
        !lab.node.ip(&["link", "show", "eth0"]).contains("xdp"),
        "XDP detached"
    );
    assert_eq!(prober.probe(VIP, Duration::from_millis(300)), None);
}

/// More (VIP, interface) pairs than the L2 map holds: the write fails part-way, the agent
/// says so and keeps running (it used to exit, and a restart only failed again), announces
/// the VIPs that did go in, and once the pairs fit again it writes them from the map's real
/// content.
#[test]
fn a_full_l2_map_is_logged_and_retried_not_fatal() {
    let lab = lab("full");
    let mut agent = lab.start_agent("agent.log", &[]);
    let prober = ArpProber::open(&lab.client, "eth0", Ipv4Addr::new(10, 0, 0, 1));
    lab.wait_answering(&prober, &mut agent);

    let count = vipwire_common::l2::L2_VIP_MAX_ENTRIES + 1;
    let ips: Vec<String> = (0..count)
        .map(|i| Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 100, 0, 0)) + i).to_string())
        .collect();
    let refs: Vec<&str> = ips.iter().map(String::as_str).collect();
    let big = lab.manifests.join("big.yaml");
    std::fs::write(&big, service_manifest("big", &refs)).unwrap();
    wait_for(
        "the agent to log the failed L2 write",
        Duration::from_secs(30),
        || {
            agent.assert_running();
            std::fs::read_to_string(agent.log_path())
                .ok()
                .filter(|log| log.contains("L2 maps not fully written"))
        },
    );
    std::thread::sleep(Duration::from_millis(500));
    agent.assert_running();
    // The IPv4 map held `web`'s VIP and took all it had room for before it was full: those
    // are taken over (announced, logged), not forgotten.
    let log = std::fs::read_to_string(agent.log_path()).unwrap();
    let taken = vipwire_common::l2::L2_VIP_MAX_ENTRIES - 1;
    assert!(
        log.lines()
            .any(|l| l.contains("L2 answering changed") && l.contains(&format!("added={taken}"))),
        "the {taken} VIPs written before the map was full were taken over; log:\n{}",
        agent.log_tail()
    );

    // The big Service goes; one more VIP comes, and is answered.
    std::fs::remove_file(&big).unwrap();
    std::fs::write(
        lab.manifests.join("other.yaml"),
        service_manifest("other", &[&OTHER_VIP.to_string()]),
    )
    .unwrap();
    let mac = wait_for(
        "ARP answered for the new VIP",
        Duration::from_secs(20),
        || {
            agent.assert_running();
            prober.probe(OTHER_VIP, Duration::from_millis(200))
        },
    );
    assert_eq!(mac, lab.node.mac("eth0"));
    agent.stop(Duration::from_secs(5));
}

/// `ip netns exec` gives the agent a /sys of its own, with nothing mounted on /sys/fs/bpf (as
/// on a host that does not mount bpffs at boot): with the default `--bpffs-dir` the agent
/// mounts bpffs on /sys/fs/bpf and runs. Its pins live in that private mount namespace and go
/// with it.
#[test]
fn mounts_bpffs_on_sys_fs_bpf_when_nothing_is_mounted_there() {
    let lab = lab("mount");
    let log = lab.lab.path("agent.log");
    let mut command = lab.node.command(agent::binary());
    command
        .args(["run", "--manifests", lab.manifests.to_str().unwrap()])
        .args([
            "--node-name",
            NODE,
            "--interface",
            "eth0",
            "--cleanup-on-exit",
        ])
        .env("RUST_LOG", "info");
    let mut agent = Daemon::spawn("vipwire under ip netns exec", command, &log);
    let prober = ArpProber::open(&lab.client, "eth0", Ipv4Addr::new(10, 0, 0, 1));
    lab.wait_answering(&prober, &mut agent);
    let text = std::fs::read_to_string(&log).expect("reading the agent log");
    assert!(
        text.lines()
            .any(|l| l.contains("mounted bpffs") && l.contains("dir=/sys/fs/bpf")),
        "the agent mounted bpffs on /sys/fs/bpf; its log:\n{text}"
    );
    let status = agent
        .stop(Duration::from_secs(5))
        .expect("agent exit status");
    assert!(status.success(), "clean exit: {status}");
}

#[test]
fn bad_input_exits_2_and_attaches_nothing() {
    let lab = lab("badinput");
    let out = agent::run(
        &lab.node,
        &[
            "run",
            "--manifests",
            lab.manifests.to_str().unwrap(),
            "--node-name",
            NODE,
            "--interface",
            "nope0",
            "--bpffs-dir",
            lab.bpffs.as_str(),
        ],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "stderr: {stderr}");
    assert!(
        stderr.contains("interfaces[0]"),
        "names the field: {stderr}"
    );
    assert!(!lab.bpffs.path().exists(), "nothing pinned");
    assert!(
        !lab.node.ip(&["link", "show", "eth0"]).contains("xdp"),
        "nothing attached"
    );

    let config = lab.lab.path("bad.yaml");
    std::fs::write(&config, "interfaces: [eth0]\nbgp: {asn: 65100, peers: [{address: 10.0.0.1, asn: 65000, holdTime: 1s}]}\n").unwrap();
    let out = agent::run(
        &lab.node,
        &[
            "run",
            "--config",
            config.to_str().unwrap(),
            "--manifests",
            lab.manifests.to_str().unwrap(),
            "--bpffs-dir",
            lab.bpffs.as_str(),
        ],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "stderr: {stderr}");
    assert!(
        stderr.contains("bgp.peers[0].holdTime"),
        "names the field: {stderr}"
    );
    assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
    assert!(!lab.bpffs.path().exists(), "nothing pinned");
}

#[test]
fn bpftool_prints_named_fields_of_the_pinned_maps() {
    let lab = lab("bpftool");
    let mut agent = lab.start_agent("agent.log", &[]);
    let prober = ArpProber::open(&lab.client, "eth0", Ipv4Addr::new(10, 0, 0, 1));
    lab.wait_answering(&prober, &mut agent);
    let dump = |map: &str| {
        let out = std::process::Command::new(testkit::tools::require("bpftool"))
            .args(["-j", "map", "dump", "pinned"])
            .arg(Path::new(lab.bpffs.path()).join(map))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let vips = dump("vipwire_l2_vip4_v1");
    for field in ["addr_be", "ifindex", "answered"] {
        assert!(vips.contains(field), "bpftool output lacks {field}: {vips}");
    }
    let control = dump("vipwire_control_v1");
    assert!(
        control.contains("heartbeat_ns") && control.contains("contract_version"),
        "{control}"
    );
    // The program reads it as a global, whose own map would carry no BTF.
    let filter = dump("vipwire_vip_filter_v1");
    assert!(filter.contains("\"words\""), "{filter}");
    agent.stop(Duration::from_secs(5));
}

impl Lab {
    fn status(&self) -> serde_json::Value {
        let out = agent::run(
            &self.node,
            &["status", "--json", "--bpffs-dir", self.bpffs.as_str()],
        );
        assert!(
            out.status.success(),
            "status: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("status --json is JSON")
    }
}

fn interface<'a>(status: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    status["interfaces"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["name"] == name)
        .unwrap_or_else(|| panic!("no interface {name} in {status}"))
}

fn vip_answered(status: &serde_json::Value) -> u64 {
    interface(status, "eth0")["vips"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["address"] == VIP.to_string())
        .and_then(|v| v["answered"].as_u64())
        .unwrap_or(0)
}

fn format_mac(mac: [u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}
