//! ARP replies/s under an ARP request flood: vipwire answering from XDP vs the kernel answering
//! for the same IP bound to the node interface, in one lab and one run.
//!
//! client (eth0 10.0.0.1) ── node (eth0 10.0.0.2). Arm A: the agent runs, the VIP is in its
//! manifests and its XDP program answers with XDP_TX. Arm B: the agent stopped (its program
//! detached), the empty XDP program `vipwire_xdp_pass` on node eth0 instead (a veth takes the
//! generator's frames only with an XDP program; nothing more than that is charged to the
//! kernel), and the VIP bound to node eth0, so the kernel answers. The arms alternate for
//! [`ROUNDS`] rounds, and the round with each arm's median reply rate is reported (every
//! round's rate is printed).
//!
//! The generator must cost far less per frame than either responder, or it is the generator
//! that is measured: the client floods with `vipwire_xdp_gen` through [`livegen`]. The frames
//! are RFC 5227 probes (`arping -D`; sender address 0.0.0.0): the kernel answers them without
//! touching its neighbour table, its cheapest answering path, so the ratio is conservative, and
//! their replies (target address 0.0.0.0) are what `vipwire_xdp_sink` on client eth0 drops,
//! while it passes the lab's own ARP probes. Replies are the client's eth0 rx packets (veth
//! counts frames its XDP program dropped) over a window inside the flood.
//!
//! The kernel runs the NAPI polls the live frames schedule on the generator's CPU: the node's (XDP,
//! and in arm B the stack's ARP code and the reply's transmit) and the client's. So most of a
//! reply's cost lands in the generator thread or its CPU's ksoftirqd, and replies per CPU-second of
//! those two is reported beside replies/s, which also depends on how much of a CPU other work on
//! the machine leaves. Not all of it: a NAPI poll that is busy stays on the CPU where it was
//! scheduled, which may be the other one, so the machine-wide softirq and system time per reply
//! (which hold everything, plus other work on the machine) are reported too. The target
//! (5x) is on replies/s; the CPU figures explain it and carry none.

use std::{
    net::Ipv4Addr,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use aya::{
    Ebpf, EbpfLoader,
    programs::{Xdp, xdp::XdpLinkId},
};
use testkit::{
    NetLab, Netns,
    agent::BpffsDir,
    bench::{Measurement, Report, Target},
    packets::{self, Arp},
    probe::{ArpProber, in_netns},
    process::{Daemon, poll_until},
};

use crate::livegen::{self, Sender};

const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
const VIP: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 10);
const NODE_NAME: &str = "node-a";
/// The flood generator, the client's sink and the kernel arm's empty program
/// (ebpf/programs/src/main.rs).
const XDP_GEN: &str = "vipwire_xdp_gen";
const XDP_SINK: &str = "vipwire_xdp_sink";
const XDP_PASS_ALL: &str = vipwire_common::programs::XDP_PASS_ALL;
/// The generator stops after this long (checked between calls: the last one may run a few
/// seconds past the window).
const FLOOD_FOR: Duration = Duration::from_secs(4);
/// The counting window inside the flood.
const WARMUP: Duration = Duration::from_millis(1000);
const WINDOW: Duration = Duration::from_millis(2000);
/// Rounds of the two arms, alternated. A slow stretch of the host (seen once: every figure of
/// the XDP arm 25% worse for its whole window) then spoils one round of one arm, and the
/// median round of each arm leaves it out.
const ROUNDS: usize = 3;

/// Per-second rates seen during one flood window.
struct Rates {
    /// Frames the client received (replies).
    replies: f64,
    /// Frames the node received (requests).
    requests: f64,
    /// CPU time of the generator's thread per reply, in ns: its BPF_PROG_RUN calls and the
    /// softirq work the kernel runs on its CPU right after each batch (the node's and the
    /// client's NAPI polls: XDP, the kernel's ARP code, the reply's transmit). Unlike the
    /// rates, it does not depend on how much of a CPU other work on the machine leaves us.
    thread_cpu_per_reply: f64,
    /// CPU time of the generator CPU's ksoftirqd per reply, in ns: the softirq work the kernel
    /// defers when the CPU has spent long enough in softirq or another task wants it (other
    /// softirq work on that CPU adds a little).
    ksoftirqd_per_reply: f64,
    /// Machine-wide CPU time per reply, in ns (both CPUs; other work on the machine adds to
    /// it): softirq (NAPI, XDP, the kernel's ARP code) and system (the generator's syscalls).
    softirq_per_reply: f64,
    system_per_reply: f64,
}

pub fn measure(report: &mut Report) {
    let mut lab = NetLab::new();
    let client = lab.netns("client");
    let node = lab.netns("node");
    lab.veth((&client, "eth0"), (&node, "eth0"));
    client.addr("eth0", "10.0.0.1/24");
    node.addr("eth0", "10.0.0.2/24");
    let mut progs = BenchPrograms::load();
    let _ = progs.attach(XDP_SINK, &client, "eth0");

    let manifests = lab.path("manifests");
    std::fs::create_dir(&manifests).expect("creating the manifests dir");
    std::fs::write(
        manifests.join("node.yaml"),
        testkit::agent::ready_node_manifest(NODE_NAME),
    )
    .expect("writing node.yaml");
    std::fs::write(manifests.join("web.yaml"), service_manifest()).expect("writing web.yaml");
    let arms = Arms {
        probe: packets::padded(&Arp::probe(client.mac("eth0"), VIP).build()),
        prober: ArpProber::open(&client, "eth0", CLIENT),
        node_mac: node.mac("eth0"),
        bpffs: BpffsDir::new("bench-flood"),
        manifests,
        client,
        node,
        lab,
    };
    let mut xdp_rounds = Vec::new();
    let mut kernel_rounds = Vec::new();
    for round in 0..ROUNDS {
        xdp_rounds.push(arms.xdp(&progs, round));
        kernel_rounds.push(arms.kernel(&mut progs));
    }
    let replies = |rounds: &[Rates]| -> Vec<String> {
        rounds.iter().map(|r| format!("{:.0}", r.replies)).collect()
    };
    println!(
        "arp flood: replies/s by round: xdp {:?}, kernel {:?} (the median round of each counts)",
        replies(&xdp_rounds),
        replies(&kernel_rounds)
    );
    let xdp = median(xdp_rounds);
    let kernel = median(kernel_rounds);

    println!(
        "arp flood: vipwire xdp {:.0} replies/s of {:.0} requests/s; kernel {:.0} of {:.0}",
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
    for (what, kernel_ns, xdp_ns) in [
        (
            "generator-thread",
            kernel.thread_cpu_per_reply,
            xdp.thread_cpu_per_reply,
        ),
        (
            "ksoftirqd",
            kernel.ksoftirqd_per_reply,
            xdp.ksoftirqd_per_reply,
        ),
    ] {
        report.push(Measurement::new(
            format!("arp flood: {what} cpu per reply, kernel"),
            kernel_ns,
            "ns/reply",
        ));
        report.push(
            Measurement::new(
                format!("arp flood: {what} cpu per reply, xdp"),
                xdp_ns,
                "ns/reply",
            )
            .against("kernel", kernel_ns),
        );
    }
    // Both as replies per CPU-second: what the rates would be with a CPU to themselves.
    let per_cpu_second = |r: &Rates| 1e9 / (r.thread_cpu_per_reply + r.ksoftirqd_per_reply);
    report.push(
        Measurement::new(
            "arp flood: vipwire xdp replies per cpu-second (generator + ksoftirqd)",
            per_cpu_second(&xdp),
            "replies/cpu-s",
        )
        .against("kernel", per_cpu_second(&kernel)),
    );
    for (what, kernel_ns, xdp_ns) in [
        ("softirq", kernel.softirq_per_reply, xdp.softirq_per_reply),
        ("system", kernel.system_per_reply, xdp.system_per_reply),
    ] {
        report.push(Measurement::new(
            format!("arp flood: {what} cpu per reply, kernel"),
            kernel_ns,
            "ns/reply",
        ));
        report.push(
            Measurement::new(
                format!("arp flood: {what} cpu per reply, xdp"),
                xdp_ns,
                "ns/reply",
            )
            .against(format!("kernel {what} per reply"), kernel_ns),
        );
    }
    report.push(Measurement::new(
        "arp flood: requests received (kernel arm)",
        kernel.requests,
        "frames/s",
    ));
    report.push(Measurement::new(
        "arp flood: requests received (xdp arm)",
        xdp.requests,
        "frames/s",
    ));
}

/// The lab and what each arm needs in it.
struct Arms {
    probe: Vec<u8>,
    prober: ArpProber,
    node_mac: [u8; 6],
    bpffs: BpffsDir,
    manifests: PathBuf,
    client: Netns,
    node: Netns,
    lab: NetLab,
}

impl Arms {
    /// Arm A: the agent runs and its XDP program answers; stopped again afterwards (with
    /// `--cleanup-on-exit`, so its program is detached).
    fn xdp(&self, progs: &BenchPrograms, round: usize) -> Rates {
        let log = format!("agent-{round}.log");
        let mut agent = spawn_agent(&self.lab, &self.node, &self.manifests, &self.bpffs, &log);
        let mac = poll_until(Duration::from_secs(20), || {
            agent.assert_running();
            self.prober.probe(VIP, Duration::from_millis(200))
        });
        assert_eq!(
            mac,
            Some(self.node_mac),
            "vipwire did not answer ARP for {VIP}; agent log:\n{}",
            agent.log_tail()
        );
        let rates = flood(progs, &self.client, &self.node, &self.probe, "xdp");
        agent.assert_running();
        agent.stop(Duration::from_secs(5));
        let released = poll_until(Duration::from_secs(10), || {
            self.prober
                .probe(VIP, Duration::from_millis(200))
                .is_none()
                .then_some(())
        });
        assert!(
            released.is_some(),
            "{VIP} was still answered after vipwire stopped"
        );
        rates
    }

    /// Arm B: the kernel answers for the VIP bound to node eth0, behind the empty XDP program;
    /// both removed again afterwards.
    fn kernel(&self, progs: &mut BenchPrograms) -> Rates {
        let link = progs.attach(XDP_PASS_ALL, &self.node, "eth0");
        let vip = format!("{VIP}/32");
        self.node.addr("eth0", &vip);
        let mac = poll_until(Duration::from_secs(20), || {
            self.prober.probe(VIP, Duration::from_millis(200))
        });
        assert_eq!(
            mac,
            Some(self.node_mac),
            "the kernel did not answer ARP for {VIP}"
        );
        let rates = flood(progs, &self.client, &self.node, &self.probe, "kernel");
        self.node.ip(&["addr", "del", &vip, "dev", "eth0"]);
        progs.detach(XDP_PASS_ALL, link);
        rates
    }
}

/// The round with the median reply rate.
fn median(mut rounds: Vec<Rates>) -> Rates {
    rounds.sort_by(|a, b| a.replies.total_cmp(&b.replies));
    rounds.swap_remove(rounds.len() / 2)
}

/// The generator, the sink and the empty program, loaded from the embedded object (with their
/// own, unused copies of the contract maps); attached programs stay so until this is dropped.
struct BenchPrograms {
    ebpf: Ebpf,
}

impl BenchPrograms {
    fn load() -> Self {
        Self {
            ebpf: livegen::load_programs(
                &mut EbpfLoader::new(),
                &[XDP_GEN, XDP_SINK, XDP_PASS_ALL],
            ),
        }
    }

    fn program(&self, name: &str) -> &Xdp {
        livegen::program(&self.ebpf, name)
    }

    /// Attaches the loaded program `name` to `ifname` in `ns`.
    fn attach(&mut self, name: &str, ns: &Netns, ifname: &str) -> XdpLinkId {
        livegen::attach_native(&mut self.ebpf, name, ns, ifname)
    }

    fn detach(&mut self, name: &str, link: XdpLinkId) {
        livegen::detach(&mut self.ebpf, name, link);
    }
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

fn spawn_agent(
    lab: &NetLab,
    node: &Netns,
    manifests: &Path,
    bpffs: &BpffsDir,
    log: &str,
) -> Daemon {
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
        &lab.path(log),
    )
}

/// Floods `frame` out of the client's eth0 for [`FLOOD_FOR`] and counts frames in the window.
fn flood(progs: &BenchPrograms, client: &Netns, node: &Netns, frame: &[u8], label: &str) -> Rates {
    let generator = progs.program(XDP_GEN);
    livegen::flood(
        generator,
        client,
        "eth0",
        frame,
        FLOOD_FOR,
        label,
        |sender| {
            std::thread::sleep(WARMUP);
            let ksoftirqd = ksoftirqd_pid(sender.cpu);
            let (t0, client0, node0, cpu0, thread0) = sample(client, node, sender);
            let ksoftirqd0 = runtime_of(&[ksoftirqd]);
            std::thread::sleep(WINDOW);
            let (t1, client1, node1, cpu1, thread1) = sample(client, node, sender);
            let ksoftirqd1 = runtime_of(&[ksoftirqd]);
            let secs = (t1 - t0).as_secs_f64();
            let replies = (client1 - client0) as f64;
            let requests = (node1 - node0) as f64;
            // A responder that stops answering (or a generator that stops asking) would still
            // show a rate: every request that reached the node must have been answered.
            assert!(
                replies >= 0.9 * requests && requests > 0.0,
                "{label}: {replies} replies to {requests} requests received in the window"
            );
            let per_reply = |a: Duration, b: Duration| (b - a).as_nanos() as f64 / replies.max(1.0);
            Rates {
                replies: replies / secs,
                requests: requests / secs,
                thread_cpu_per_reply: per_reply(thread0, thread1),
                ksoftirqd_per_reply: per_reply(ksoftirqd0, ksoftirqd1),
                softirq_per_reply: per_reply(cpu0.softirq, cpu1.softirq),
                system_per_reply: per_reply(cpu0.system, cpu1.system),
            }
        },
    )
}

/// Machine-wide CPU time since boot, from `/proc/stat`.
#[derive(Clone, Copy)]
struct CpuTime {
    system: Duration,
    softirq: Duration,
}

/// Both interfaces' rx packets, the machine's CPU time and the generator thread's so far,
/// stamped with the middle of the reads.
fn sample(client: &Netns, node: &Netns, sender: &Sender) -> (Instant, u64, u64, CpuTime, Duration) {
    let before = Instant::now();
    let c = eth0_rx_packets(client);
    let n = eth0_rx_packets(node);
    let cpu = cpu_time();
    let thread = sender.thread_cpu();
    let after = Instant::now();
    (before + (after - before) / 2, c, n, cpu, thread)
}

/// The PID of `ksoftirqd/<cpu>`, the kernel thread that runs that CPU's deferred softirqs.
fn ksoftirqd_pid(cpu: u32) -> u32 {
    let name = format!("ksoftirqd/{cpu}\n");
    let pids: Vec<u32> = std::fs::read_dir("/proc")
        .expect("listing /proc")
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse().ok())
        .filter(|pid: &u32| {
            std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|comm| comm == name)
        })
        .collect();
    assert_eq!(pids.len(), 1, "one {} in /proc: {pids:?}", name.trim_end());
    pids[0]
}

/// Total time on CPU of `pids` so far (the first field of `/proc/<pid>/schedstat`, in ns).
fn runtime_of(pids: &[u32]) -> Duration {
    pids.iter()
        .map(|pid| {
            let path = format!("/proc/{pid}/schedstat");
            let stat =
                std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {path}: {e}"));
            let ns: u64 = stat
                .split_whitespace()
                .next()
                .and_then(|f| f.parse().ok())
                .unwrap_or_else(|| panic!("no runtime in {path}: {stat:?}"));
            Duration::from_nanos(ns)
        })
        .sum()
}

/// System and softirq time of all CPUs since boot (`/proc/stat`, in USER_HZ ticks).
fn cpu_time() -> CpuTime {
    let stat = std::fs::read_to_string("/proc/stat").expect("reading /proc/stat");
    let cpu = stat.lines().next().expect("the cpu line");
    // cpu user nice system idle iowait irq softirq ...
    let field = |n: usize| -> u64 {
        cpu.split_whitespace()
            .nth(n)
            .and_then(|f| f.parse().ok())
            .unwrap_or_else(|| panic!("no field {n} in {cpu:?}"))
    };
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    assert!(hz > 0, "sysconf(_SC_CLK_TCK)");
    let time = |ticks: u64| Duration::from_nanos(ticks * 1_000_000_000 / hz as u64);
    CpuTime {
        system: time(field(3)),
        softirq: time(field(7)),
    }
}

/// eth0's rx packets in `ns`, from `/proc/thread-self/net/dev` in a thread that joined it.
fn eth0_rx_packets(ns: &Netns) -> u64 {
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
    fields[1]
}

/// A LoadBalancer Service with [`VIP`] and one ready endpoint on this node.
fn service_manifest() -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: web\n  namespace: default\nspec:\n  type: LoadBalancer\n  externalTrafficPolicy: Cluster\n  ports:\n  - port: 80\n    protocol: TCP\n    targetPort: 8080\nstatus:\n  loadBalancer:\n    ingress:\n    - ip: \"{VIP}\"\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: web-1\n  namespace: default\n  labels:\n    kubernetes.io/service-name: web\naddressType: IPv4\nports:\n- port: 8080\n  protocol: TCP\nendpoints:\n- addresses: [\"10.244.0.10\"]\n  nodeName: {NODE_NAME}\n  conditions:\n    ready: true\n"
    )
}
