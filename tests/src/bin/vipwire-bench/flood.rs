//! ARP replies/s under an ARP request flood: vipwire answering from XDP vs the kernel answering
//! for the same IP bound to the node interface, in one lab and one run.
//!
//! client (eth0 10.0.0.1, pass-all XDP: it stands for a ToR) ── node (eth0 10.0.0.2). The node's
//! eth0 carries vipwire's XDP program in BOTH cases (the same agent keeps running): case A the
//! VIP is in the manifests and XDP answers with XDP_TX; case B the VIP is removed from the
//! manifests (XDP passes the request) and bound to node eth0, so the kernel answers. The client
//! floods with `trafgen --cpus 1 -b` (TOOLCHAIN.md); replies are the client's eth0 rx packets over
//! a window taken while the flood runs, away from trafgen's start and stop.

use std::{
    fmt::Write as _,
    net::Ipv4Addr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use testkit::{
    NetLab, Netns,
    agent::BpffsDir,
    bench::{Measurement, Report, Target},
    packets::{self, Arp},
    probe::{ArpProber, in_netns},
    process::{Daemon, poll_until},
    tools,
};

const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
const VIP: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 10);
const NODE_NAME: &str = "node-a";
/// trafgen is stopped by `timeout` after this long (and by its packet count at the latest).
const FLOOD_FOR: Duration = Duration::from_secs(4);
const FLOOD_MAX_FRAMES: &str = "20000000";
/// Asked-for rate, above what the veth pair carries. A rate puts trafgen in its slow mode
/// (blocking `sendto` per frame): its TX_RING fast mode dies with EAGAIN ("Flushing TX_RING
/// failed") once the frames queued towards the XDP side use up the socket's send buffer,
/// which trafgen cannot raise from inside a namespace.
const OFFERED_RATE: &str = "1000000pps";
/// The counting window inside the flood.
const WARMUP: Duration = Duration::from_millis(1000);
const WINDOW: Duration = Duration::from_millis(2000);

/// Per-second rates seen during one flood window.
struct Rates {
    /// Frames the client received (replies).
    replies: f64,
    /// Frames the node received (requests offered).
    requests: f64,
    /// Machine-wide softirq CPU time (both CPUs, includes other work on the machine) per
    /// reply, in ns: where NAPI, XDP and the kernel's ARP code run on veth.
    softirq_per_reply: f64,
}

pub fn measure(report: &mut Report) {
    let trafgen = tools::require("trafgen");
    let mut lab = NetLab::new();
    let client = lab.netns("client");
    let node = lab.netns("node");
    lab.veth((&client, "eth0"), (&node, "eth0"));
    client.addr("eth0", "10.0.0.1/24");
    node.addr("eth0", "10.0.0.2/24");
    client.pass_all_xdp("eth0");

    let manifests = lab.path("manifests");
    std::fs::create_dir(&manifests).expect("creating the manifests dir");
    std::fs::write(manifests.join("node.yaml"), node_manifest()).expect("writing node.yaml");
    let service = manifests.join("web.yaml");
    std::fs::write(&service, service_manifest()).expect("writing web.yaml");
    let config = lab.path("arp-flood.cfg");
    let request = Arp::request(client.mac("eth0"), CLIENT, VIP);
    std::fs::write(&config, trafgen_config(&packets::padded(&request.build())))
        .expect("writing the trafgen config");

    let bpffs = BpffsDir::new("bench-flood");
    let mut agent = spawn_agent(&lab, &node, &manifests, &bpffs);
    let prober = ArpProber::open(&client, "eth0", CLIENT);
    let node_mac = node.mac("eth0");
    let answered = |agent: &mut Daemon, what: &str| {
        let mac = poll_until(Duration::from_secs(20), || {
            agent.assert_running();
            prober.probe(VIP, Duration::from_millis(200))
        });
        assert_eq!(
            mac,
            Some(node_mac),
            "{what} did not answer ARP for {VIP}; agent log:\n{}",
            agent.log_tail()
        );
    };

    // Case A: vipwire answers from XDP.
    answered(&mut agent, "vipwire");
    let xdp = flood(&lab, &client, &node, &trafgen, &config, "xdp");
    agent.assert_running();

    // Case B: same attachment, VIP no longer vipwire's, bound to the interface instead.
    std::fs::remove_file(&service).expect("removing web.yaml");
    let released = poll_until(Duration::from_secs(10), || {
        prober
            .probe(VIP, Duration::from_millis(200))
            .is_none()
            .then_some(())
    });
    assert!(released.is_some(), "vipwire kept answering for {VIP}");
    node.addr("eth0", &format!("{VIP}/32"));
    answered(&mut agent, "the kernel");
    let kernel = flood(&lab, &client, &node, &trafgen, &config, "kernel");
    agent.assert_running();
    agent.stop(Duration::from_secs(5));

    println!(
        "arp flood: vipwire xdp {:.0} replies/s of {:.0} requests/s offered; kernel {:.0} of {:.0}",
        xdp.replies, xdp.requests, kernel.replies, kernel.requests
    );
    report.push(Measurement::new(
        "arp flood: kernel replies (vip on node eth0)",
        kernel.replies,
        "replies/s",
    ));
    report.push(
        Measurement::new("arp flood: vipwire xdp replies", xdp.replies, "replies/s")
            .against("kernel replies", kernel.replies)
            .target(Target::RatioAtLeast(5.0)),
    );
    report.push(Measurement::new(
        "arp flood: softirq cpu per reply, kernel",
        kernel.softirq_per_reply,
        "ns/reply",
    ));
    report.push(
        Measurement::new(
            "arp flood: softirq cpu per reply, xdp",
            xdp.softirq_per_reply,
            "ns/reply",
        )
        .against("kernel softirq per reply", kernel.softirq_per_reply),
    );
    report.push(Measurement::new(
        "arp flood: requests offered (kernel case)",
        kernel.requests,
        "frames/s",
    ));
    report.push(Measurement::new(
        "arp flood: requests offered (xdp case)",
        xdp.requests,
        "frames/s",
    ));
}

/// The agent binary built beside this one (`target/<profile>/vipwire`); built on demand, since
/// `cargo run --bin vipwire-bench` does not build another package's binaries.
fn agent_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("current executable");
    let profile_dir = exe.parent().expect("target/<profile>");
    let binary = profile_dir.join("vipwire");
    if !binary.is_file() {
        let target_dir = profile_dir.parent().expect("target dir");
        let mut build = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
        build
            .args(["build", "-p", "vipwire", "--bin", "vipwire", "--target-dir"])
            .arg(target_dir);
        if profile_dir.ends_with("release") {
            build.arg("--release");
        }
        let status = build.status().expect("running cargo build -p vipwire");
        assert!(status.success(), "cargo build -p vipwire failed");
    }
    binary
}

fn spawn_agent(lab: &NetLab, node: &Netns, manifests: &Path, bpffs: &BpffsDir) -> Daemon {
    let mut command = node.enter(agent_binary());
    command
        .args(["run", "--manifests"])
        .arg(manifests)
        .args([
            "--node-name",
            NODE_NAME,
            "--interface",
            "eth0",
            "--bpffs-dir",
            bpffs.as_str(),
            "--cleanup-on-exit",
        ])
        .env("RUST_LOG", "info");
    Daemon::spawn(
        &format!("vipwire in {}", node.name()),
        command,
        &lab.path("agent.log"),
    )
}

/// Floods ARP requests from the client for [`FLOOD_FOR`] and counts frames in the window.
fn flood(
    lab: &NetLab,
    client: &Netns,
    node: &Netns,
    trafgen: &Path,
    config: &Path,
    label: &str,
) -> Rates {
    let log_path = lab.path(&format!("trafgen-{label}.log"));
    let log = std::fs::File::create(&log_path).expect("creating the trafgen log");
    let mut child = client
        .command("timeout")
        .args(["-s", "INT", "-k", "2"])
        .arg(format!("{}", FLOOD_FOR.as_secs()))
        .arg(trafgen)
        .args(["--dev", "eth0", "--conf"])
        .arg(config)
        .args(["--cpus", "1", "-n", FLOOD_MAX_FRAMES, "-b", OFFERED_RATE])
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("dup log"))
        .stderr(log)
        .spawn()
        .expect("starting trafgen");
    std::thread::sleep(WARMUP);
    let (t0, client0, node0, softirq0) = sample(client, node);
    std::thread::sleep(WINDOW);
    let (t1, client1, node1, softirq1) = sample(client, node);
    let still_running = child.try_wait().expect("polling trafgen").is_none();
    let status = wait_bounded(&mut child, FLOOD_FOR + Duration::from_secs(5));
    let log = std::fs::read_to_string(&log_path).unwrap_or_default();
    assert!(
        still_running,
        "trafgen ({label}) ended before the window closed ({status:?}): {log}"
    );
    let secs = (t1 - t0).as_secs_f64();
    let replies = (client1.rx - client0.rx) as f64;
    Rates {
        replies: replies / secs,
        requests: (node1.rx - node0.rx) as f64 / secs,
        softirq_per_reply: (softirq1 - softirq0).as_nanos() as f64 / replies.max(1.0),
    }
}

/// Kills `child` if it outlives `limit` (timeout should have stopped it long before).
fn wait_bounded(child: &mut Child, limit: Duration) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if let Some(status) = child.try_wait().expect("polling trafgen") {
            return Some(status);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    child.wait().ok()
}

struct Counters {
    rx: u64,
}

/// Both interfaces' counters and the softirq time so far, stamped with the middle of the reads.
fn sample(client: &Netns, node: &Netns) -> (Instant, Counters, Counters, Duration) {
    let before = Instant::now();
    let c = eth0_counters(client);
    let n = eth0_counters(node);
    let softirq = softirq_time();
    let after = Instant::now();
    (before + (after - before) / 2, c, n, softirq)
}

/// Softirq time of all CPUs since boot (`/proc/stat`, in USER_HZ ticks).
fn softirq_time() -> Duration {
    let stat = std::fs::read_to_string("/proc/stat").expect("reading /proc/stat");
    let cpu = stat.lines().next().expect("the cpu line");
    // cpu user nice system idle iowait irq softirq ...
    let ticks: u64 = cpu
        .split_whitespace()
        .nth(7)
        .and_then(|f| f.parse().ok())
        .unwrap_or_else(|| panic!("no softirq field in {cpu:?}"));
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    assert!(hz > 0, "sysconf(_SC_CLK_TCK)");
    Duration::from_nanos(ticks * 1_000_000_000 / hz as u64)
}

/// eth0's rx packets in `ns`, from `/proc/thread-self/net/dev` in a thread that joined it.
fn eth0_counters(ns: &Netns) -> Counters {
    let dev = in_netns(ns, || {
        std::fs::read_to_string("/proc/thread-self/net/dev").expect("reading net/dev")
    });
    let line = dev
        .lines()
        .find_map(|l| l.trim_start().strip_prefix("eth0:"))
        .unwrap_or_else(|| panic!("no eth0 in {}'s net/dev:\n{dev}", ns.name()));
    let fields: Vec<u64> = line
        .split_whitespace()
        .map(|f| f.parse().expect("a numeric net/dev field"))
        .collect();
    Counters { rx: fields[1] }
}

/// A trafgen config that sends `frame` over and over.
fn trafgen_config(frame: &[u8]) -> String {
    let mut out = String::from("{\n");
    for byte in frame {
        write!(out, "0x{byte:02x}, ").expect("writing to a String");
    }
    out.push_str("\n}\n");
    out
}

fn node_manifest() -> String {
    format!(
        "apiVersion: v1\nkind: Node\nmetadata:\n  name: {NODE_NAME}\nstatus:\n  conditions:\n  - type: Ready\n    status: \"True\"\n"
    )
}

/// A LoadBalancer Service with [`VIP`] and one ready endpoint on this node.
fn service_manifest() -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: web\n  namespace: default\nspec:\n  type: LoadBalancer\n  externalTrafficPolicy: Cluster\n  ports:\n  - port: 80\n    protocol: TCP\n    targetPort: 8080\nstatus:\n  loadBalancer:\n    ingress:\n    - ip: \"{VIP}\"\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: web-1\n  namespace: default\n  labels:\n    kubernetes.io/service-name: web\naddressType: IPv4\nports:\n- port: 8080\n  protocol: TCP\nendpoints:\n- addresses: [\"10.244.0.10\"]\n  nodeName: {NODE_NAME}\n  conditions:\n    ready: true\n"
    )
}
