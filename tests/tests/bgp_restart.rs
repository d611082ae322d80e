//! Graceful restart (RFC 4724) with the real agent binary and a real FRR "ToR": when the agent
//! is killed, FRR keeps its route as stale; the agent that comes back (taking over the pinned
//! dataplane, so it sets the R and F bits) re-announces before End-of-RIB and the route is
//! refreshed, never withdrawn in between. An agent that does not come back loses its routes
//! after the restart time.
//!
//! FRR runs as a graceful-restart helper by default; it reports a kept path as `"stale": true`.

use std::{
    path::Path,
    process::Command,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use testkit::{
    NetLab, Netns,
    agent::{self, BpffsDir},
    peer::{Neighbor, Peer, PeerConfig, PeerKind},
    process::{Daemon, wait_for},
};

const NODE: &str = "node-a";
const ROUTE_WAIT: Duration = Duration::from_secs(30);

fn write_manifests(dir: &Path, vip: &str) {
    let node = testkit::agent::ready_node_manifest(NODE);
    let text = format!(
        "{node}---\napiVersion: v1\nkind: Service\nmetadata:\n  name: web\n  namespace: default\nspec:\n  type: LoadBalancer\n  externalTrafficPolicy: Local\n  ports:\n  - port: 80\n    protocol: TCP\n    targetPort: 8080\nstatus:\n  loadBalancer:\n    ingress:\n    - ip: \"{vip}\"\n\
---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: web-1\n  namespace: default\n  labels:\n    kubernetes.io/service-name: web\naddressType: IPv4\nports:\n- port: 8080\n  protocol: TCP\nendpoints:\n- addresses: [\"10.244.0.10\"]\n  nodeName: {NODE}\n  conditions:\n    ready: true\n"
    );
    std::fs::write(dir.join("web.yaml"), text).unwrap();
}

/// A ToR running FRR and a node that runs the agent, with a manifest that gives the node `vip`.
struct Lab {
    lab: NetLab,
    tor: Netns,
    node: Netns,
    frr: Peer,
    _bpffs: BpffsDir,
    args: Vec<String>,
}

impl Lab {
    fn new(tag: &str, net: &str, vip: &str, restart_time: &str) -> Self {
        let mut lab = NetLab::new();
        let tor = lab.netns(&format!("{tag}-tor"));
        let node = lab.netns(&format!("{tag}-node"));
        lab.veth((&tor, "eth0"), (&node, "eth0"));
        tor.addr("eth0", &format!("{net}.1/30"));
        node.addr("eth0", &format!("{net}.2/30"));
        let frr = Peer::start(
            PeerKind::Frr,
            &tor,
            PeerConfig::new(format!("{net}.1").as_str(), 65001)
                .neighbor(Neighbor::new(format!("{net}.2").as_str(), 65100)),
            lab.dir(),
        );
        let manifests = lab.path("manifests");
        std::fs::create_dir(&manifests).unwrap();
        write_manifests(&manifests, vip);
        let config = lab.path("vipwire.yaml");
        std::fs::write(
            &config,
            format!(
                "bgp:\n  asn: 65100\n  gracefulRestart:\n    restartTime: {restart_time}\n  peers:\n  - address: {net}.1\n    asn: 65001\n    holdTime: 9s\n    keepaliveTime: 3s\n  advertisement:\n    med: 100\n"
            ),
        )
        .unwrap();
        let bpffs = BpffsDir::new(tag);
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
        ]
        .map(str::to_owned)
        .to_vec();
        Self {
            lab,
            tor,
            node,
            frr,
            _bpffs: bpffs,
            args,
        }
    }

    fn spawn_agent(&self, log: &str) -> Daemon {
        let args: Vec<&str> = self.args.iter().map(String::as_str).collect();
        agent::spawn(&self.node, &args, &self.lab.path(log))
    }

    /// The path FRR holds for `prefix`: `None` when it has none, else whether it is stale.
    fn stale(&self, prefix: &str) -> Option<bool> {
        path_state(&self.tor, prefix)
    }
}

fn path_state(tor: &Netns, prefix: &str) -> Option<bool> {
    let out = Command::new("vtysh")
        .args([
            "-N",
            tor.name(),
            "-c",
            &format!("show bgp ipv4 unicast {prefix} json"),
        ])
        .output()
        .ok()?;
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    let paths = json["paths"].as_array()?;
    let path = paths.first()?;
    Some(path["stale"].as_bool().unwrap_or(false))
}

/// FRR's graceful restart view of `neighbor`.
fn neighbor_gr(tor: &Netns, neighbor: &str) -> serde_json::Value {
    let out = Command::new("vtysh")
        .args([
            "-N",
            tor.name(),
            "-c",
            &format!("show bgp neighbors {neighbor} json"),
        ])
        .output()
        .expect("vtysh");
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    json[neighbor]["gracefulRestartInfo"].clone()
}

/// Samples FRR's path to a prefix every ~100 ms on a thread until stopped.
struct Sampler {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<Vec<(Duration, Option<bool>)>>,
}

impl Sampler {
    fn start(tor: &Netns, prefix: &str) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let (tor, prefix, flag) = (tor.clone(), prefix.to_owned(), stop.clone());
        let started = Instant::now();
        let thread = std::thread::spawn(move || {
            let mut samples = Vec::new();
            while !flag.load(Ordering::Relaxed) {
                samples.push((started.elapsed(), path_state(&tor, &prefix)));
                std::thread::sleep(Duration::from_millis(100));
            }
            samples
        });
        Self { stop, thread }
    }

    fn finish(self) -> Vec<(Duration, Option<bool>)> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().expect("sampler thread")
    }
}

fn kill(agent: &mut Daemon) {
    agent.signal(libc::SIGKILL);
    wait_for("the killed agent to exit", Duration::from_secs(10), || {
        agent.try_wait()
    });
}

#[test]
fn frr_keeps_the_route_as_stale_while_the_agent_restarts_then_it_is_refreshed() {
    const VIP: &str = "203.0.113.60/32";
    let lab = Lab::new("gr-restart", "10.0.60", "203.0.113.60", "30s");
    let mut first = lab.spawn_agent("agent-1.log");
    lab.frr.wait_established("10.0.60.2", ROUTE_WAIT);
    let route = lab.frr.wait_route(VIP, ROUTE_WAIT);
    assert_eq!(route.med, Some(100));
    assert_eq!(lab.stale(VIP), Some(false));

    let sampler = Sampler::start(&lab.tor, VIP);
    kill(&mut first);
    wait_for("FRR to mark the route stale", ROUTE_WAIT, || {
        (lab.stale(VIP) == Some(true)).then_some(())
    });
    // A moment down, as a restarting pod would be.
    std::thread::sleep(Duration::from_secs(1));
    let mut second = lab.spawn_agent("agent-2.log");
    lab.frr.wait_established("10.0.60.2", ROUTE_WAIT);
    wait_for("FRR to refresh the route", ROUTE_WAIT, || {
        (lab.stale(VIP) == Some(false)).then_some(())
    });
    // A few more samples after the refresh: End-of-RIB must not have flushed it.
    std::thread::sleep(Duration::from_secs(2));
    let samples = sampler.finish();
    second.assert_running();
    let log = std::fs::read_to_string(lab.lab.path("agent-2.log")).unwrap_or_default();

    let missing: Vec<_> = samples.iter().filter(|(_, s)| s.is_none()).collect();
    assert!(
        missing.is_empty(),
        "the route left FRR's RIB during the restart at {missing:?} of {} samples; agent log:\n{log}",
        samples.len()
    );
    assert!(samples.iter().any(|(_, s)| *s == Some(true)), "{samples:?}");
    assert_eq!(samples.last().map(|(_, s)| *s), Some(Some(false)));
    assert!(samples.len() >= 10, "sampled too rarely: {}", samples.len());
    // The new agent took over the pinned dataplane: a restart with forwarding preserved.
    let gr = neighbor_gr(&lab.tor, "10.0.60.2");
    assert_eq!(gr["rBit"], true, "{gr}");
    assert_eq!(gr["ipv4Unicast"]["fBit"], true, "{gr}");
    assert_eq!(gr["timers"]["receivedRestartTimer"], 30, "{gr}");
    assert_eq!(gr["endOfRibRecv"]["ipv4Unicast"], true, "{gr}");
    eprintln!(
        "route kept through the restart: {} samples, stale in {}",
        samples.len(),
        samples.iter().filter(|(_, s)| *s == Some(true)).count()
    );
}

#[test]
fn routes_of_an_agent_that_does_not_come_back_go_after_the_restart_time() {
    const VIP: &str = "203.0.113.61/32";
    let lab = Lab::new("gr-dead", "10.0.61", "203.0.113.61", "5s");
    let mut agent = lab.spawn_agent("agent.log");
    lab.frr.wait_established("10.0.61.2", ROUTE_WAIT);
    lab.frr.wait_route(VIP, ROUTE_WAIT);
    // A cold start (nothing pinned yet): graceful restart announced, but not restarting.
    let gr = neighbor_gr(&lab.tor, "10.0.61.2");
    assert_eq!(gr["rBit"], false, "{gr}");
    assert_eq!(gr["timers"]["receivedRestartTimer"], 5, "{gr}");

    let killed = Instant::now();
    kill(&mut agent);
    wait_for("FRR to mark the route stale", ROUTE_WAIT, || {
        (lab.stale(VIP) == Some(true)).then_some(())
    });
    lab.frr.wait_no_route(VIP, Duration::from_secs(20));
    let gone = killed.elapsed();
    eprintln!("dead agent: route gone after {gone:?} (restart time 5 s)");
    // Kept for (about) the restart time, not dropped at once as without graceful restart.
    assert!(
        gone >= Duration::from_secs(3),
        "route left before the restart time: {gone:?}"
    );
}
