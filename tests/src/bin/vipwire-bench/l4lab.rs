//! VIP traffic client → pod in the L4 lab (testkit::l4lab, one pod), through three data paths
//! in one lab and one run:
//! (a) vipwire: the agent on up0/up1, the node hostile (rp_filter=1, FORWARD DROP);
//! (b) iptables DNAT in PREROUTING (kube-proxy's iptables mode), conntrack, kernel forwarding,
//!     rp_filter loose and FORWARD ACCEPT, as kube-proxy needs with an asymmetric return route;
//! (c) nftables DNAT (kube-proxy's nftables mode), otherwise as (b);
//! and (d) the floor: frames already addressed to the pod, handed to it on up0 by a TC program
//!     that does nothing but `bpf_redirect_peer` (`vipwire_tc_lab_redirect_peer`). No
//!     dataplane that delivers into the pod from TC can be faster here; what vipwire's arm costs
//!     above it is its steering (parsing, lookups, DNAT, the XDP-to-TC metadata).
//! For each: UDP packets/s delivered into the pod (a single flow, flooded from the client by
//! the live-frame generator of [`livegen`], counted by the pod's UDP statistics) and TCP
//! request/response latency on one connection (timed in the first round). The arms
//! alternate for [`ROUNDS`] rounds; each arm reports its median round. While the agent runs,
//! up0 carries its XDP program (veth NAPI delivery); the other arms get the empty XDP program on
//! up0 so all see the same veth delivery mode (a veth takes the generator's frames only with an
//! XDP program), and nothing more (not the tests' pass-all xdp-filter, which looks every frame
//! up in its maps).
//!
//! The generator and the whole receive path share the sending CPU (veth NAPI runs in the
//! sender's softirq, and so do XDP, TC, netfilter and the pod's UDP input), so each arm's rate
//! is 1 / (generator + path) per packet. With trafgen as the generator (~1 µs per frame, more
//! than either path) the ratio could not pass ~2x whatever the paths cost. A ceiling arm
//! floods a MAC nobody has (dropped right after NAPI) to measure the generator's share;
//! reported beside the rates: the offered rate (up0 rx), softirq CPU per packet, the best
//! ratio the ceiling allows, and the path cost (1/rate - 1/ceiling) per arm.

use std::{
    net::Ipv4Addr,
    path::PathBuf,
    time::{Duration, Instant},
};

use aya::{
    Ebpf, EbpfLoader,
    programs::{LinkOrder, SchedClassifier, TcAttachType, Xdp, tc::TcAttachOptions},
};
use testkit::{
    bench::{Measurement, Report, Target},
    l4lab::{
        self, CLIENT_SRC, ForwardPolicy, L4Lab, Options, RpFilter, SINK, TCP, VIP,
        client::{self, TcpConn},
        stats,
    },
    process::poll_until,
};
use vipwire_common::programs;

use crate::livegen;

/// The generator stops after this long (checked between its calls).
const FLOOD_FOR: Duration = Duration::from_secs(5);
/// The L4 flood generator (ebpf/programs/src/main.rs) and the frame headers it writes.
const XDP_GEN_HEADERS: &str = "vipwire_xdp_gen_headers";
const FLOOD_HEADERS_GLOBAL: &str = "VIPWIRE_LAB_FLOOD_HEADERS";
const FLOOD_HEADER_BYTES: usize = 48;
/// The floor's TC program (ebpf/programs/src/main.rs) and the device whose peer it delivers to.
const TC_LAB_REDIRECT_PEER: &str = "vipwire_tc_lab_redirect_peer";
const PEER_IFINDEX_GLOBAL: &str = "VIPWIRE_LAB_PEER_IFINDEX";
const WARMUP: Duration = Duration::from_millis(1500);
/// Rounds of the four arms, alternating. Five, because vipwire's arm varies by about ±5%
/// from one agent start to the next (each round starts an agent, with new maps and programs),
/// and within one agent by about ±1%, as the kernel arms do with the generator's CPU fixed.
const ROUNDS: usize = 5;
const WINDOW: Duration = Duration::from_millis(2500);
/// Request/response: at most this many requests, for at most this long.
const REQUESTS: usize = 5000;
const REQUESTS_FOR: Duration = Duration::from_secs(5);

/// One arm's results.
#[derive(Debug, Default)]
struct Arm {
    /// UDP datagrams delivered into the pod per second.
    delivered: f64,
    /// Frames the node received on up0 per second (what the generator achieved).
    offered: f64,
    /// Machine-wide softirq CPU time per delivered packet (veth NAPI, XDP, TC, forwarding).
    softirq_ns: f64,
    /// Request/response latency percentiles in µs (None when the path did not answer).
    p50_us: Option<f64>,
    p99_us: Option<f64>,
    csum_errors: u64,
    /// The CPU the generator and the receive path ran on.
    cpu: u32,
}

pub fn measure(report: &mut Report) {
    let mut lab = L4Lab::new(&Options {
        pods: 1,
        tag: "b".to_owned(),
        ..Options::default()
    });
    let frame = flood_frame(&lab, VIP, SINK.port);
    let generator = Generator::load(&frame);
    let to_pod = Generator::load(&flood_frame(&lab, l4lab::pod_ip(0), SINK.target));

    // The arms alternate for ROUNDS rounds and each reports its median round: one slow
    // stretch of the host then spoils one round of one arm, not the arm. Latency is timed in
    // the first round only.
    let mut rounds: [Vec<Arm>; 4] = Default::default();
    for round in 0..ROUNDS {
        let timed = round == 0;
        rounds[0].push(vipwire_arm(&mut lab, &generator, timed));
        let [iptables, nftables] = kernel_arms(&lab, &generator, timed);
        rounds[1].push(iptables);
        rounds[2].push(nftables);
        rounds[3].push(floor_arm(&lab, &to_pod));
        let arms = rounds.each_ref().map(|arms| &arms[round]);
        println!(
            "l4 udp flow into the pod, round {}: vipwire {:.0}/s, iptables {:.0}/s, nftables {:.0}/s, \
             floor {:.0}/s (generator on CPU {}/{}/{}/{})",
            round + 1,
            arms[0].delivered,
            arms[1].delivered,
            arms[2].delivered,
            arms[3].delivered,
            arms[0].cpu,
            arms[1].cpu,
            arms[2].cpu,
            arms[3].cpu,
        );
    }
    let [vipwire, iptables, nftables, floor] = rounds.map(median_round);
    push(report, &vipwire, &iptables, &nftables);
    push_floor(report, &vipwire, &iptables, &nftables, &floor);

    // The generator's ceiling: the same flood to a MAC nobody has, dropped right after the
    // veth's NAPI (and the empty XDP program) as PACKET_OTHERHOST. The generator and the receive
    // path share its CPU (veth NAPI runs in the sender's softirq), so this caps every arm.
    let mut frame = frame;
    frame[..6].copy_from_slice(&[0x02, 0, 0, 0, 0, 0x99]);
    let empty_xdp = attach_empty_xdp(&lab, "up0");
    let ceiling = flood(&lab, &Generator::load(&frame), "ceiling");
    drop(empty_xdp);
    report.push(Measurement::new(
        "l4 udp flow: generator ceiling (dropped at rx)",
        ceiling.offered,
        "frames/s",
    ));
    for (name, arm) in [("iptables", &iptables), ("nftables", &nftables)] {
        report.push(Measurement::new(
            format!("l4 udp flow: best ratio possible vs {name}"),
            ceiling.offered / arm.delivered.max(1.0),
            "x",
        ));
    }
    // Every arm runs the generator and the whole receive path (veth NAPI, XDP/TC or netfilter and
    // routing, the pod's UDP input) on the sender's CPU, saturated: 1/rate is the CPU time per
    // packet, and subtracting the ceiling's leaves what the data path itself costs.
    let path_ns = |arm: &Arm| 1e9 / arm.delivered.max(1.0) - 1e9 / ceiling.offered.max(1.0);
    let (own, ipt, nft) = (path_ns(&vipwire), path_ns(&iptables), path_ns(&nftables));
    report.push(Measurement::new(
        "l4 udp flow: path cost, iptables",
        ipt,
        "ns/pkt",
    ));
    report.push(Measurement::new(
        "l4 udp flow: path cost, nftables",
        nft,
        "ns/pkt",
    ));
    for (name, base) in [("iptables", ipt), ("nftables", nft)] {
        report.push(
            Measurement::new(
                format!("l4 udp flow: path cost, vipwire (vs {name})"),
                own,
                "ns/pkt",
            )
            .against(format!("{name} path cost"), base)
            .target(Target::RatioAtMost(0.5)),
        );
    }
    println!(
        "l4 udp flow: generator ceiling {:.0} frames/s (softirq {:.0} ns/frame): no arm can beat \
         it, so vipwire/iptables <= {:.2}x and vipwire/nftables <= {:.2}x in this lab",
        ceiling.offered,
        ceiling.softirq_ns,
        ceiling.offered / iptables.delivered.max(1.0),
        ceiling.offered / nftables.delivered.max(1.0),
    );
}

/// (a) vipwire on the hostile node (rp_filter strict, FORWARD DROP): the agent started, its
/// arm measured, the agent stopped and every program of it detached.
fn vipwire_arm(lab: &mut L4Lab, generator: &Generator, timed: bool) -> Arm {
    lab.set_rp_filter(RpFilter::Strict);
    lab.set_forward(ForwardPolicy::Drop);
    let mut agent = lab.start_agent_binary(&agent_binary(), "bench-agent.log");
    let serving = poll_until(Duration::from_secs(30), || {
        agent.assert_running();
        client::tcp_request(
            &lab.client,
            l4lab::vip(TCP, false),
            Duration::from_millis(300),
        )
        .ok()
    });
    let arm = if serving.is_some() {
        arm(lab, generator, "vipwire", timed)
    } else {
        println!(
            "l4 bench: vipwire did not serve {VIP}:{} within 30 s; its arm reports 0. Agent log:\n{}",
            TCP.port,
            agent.log_tail()
        );
        Arm::default()
    };
    agent.assert_running();
    agent.stop(Duration::from_secs(10));
    detach_everything(lab);
    arm
}

/// (b), (c): the kernel's DNAT, on a node made permissive the way kube-proxy needs it.
fn kernel_arms(lab: &L4Lab, generator: &Generator, timed: bool) -> [Arm; 2] {
    lab.set_rp_filter(RpFilter::Loose);
    lab.set_forward(ForwardPolicy::Accept);
    // The empty program, not `Netns::pass_all_xdp` (xdp-filter): that one looks every frame
    // up in its filter maps (~40 ns per frame here), a cost vipwire's arm does not have.
    let _empty_xdp = attach_empty_xdp(lab, "up0");
    [(false, "iptables"), (true, "nftables")].map(|(nft, label)| {
        lab.install_kernel_dnat(0, nft);
        let answer =
            client::tcp_request(&lab.client, l4lab::vip(TCP, false), Duration::from_secs(2));
        assert!(answer.is_ok(), "{label} DNAT does not answer: {answer:?}");
        let arm = arm(lab, generator, label, timed);
        lab.remove_kernel_dnat(0, nft);
        arm
    })
}

/// (d) The floor: frames already addressed to the pod, handed to it on up0 by
/// `vipwire_tc_lab_redirect_peer` (with the empty XDP program, as in the kernel arms).
fn floor_arm(lab: &L4Lab, to_pod: &Generator) -> Arm {
    let _empty_xdp = attach_empty_xdp(lab, "up0");
    let peer = lab.node.ifindex(&lab.pod(0).host_veth);
    let mut ebpf = EbpfLoader::new()
        .override_global(PEER_IFINDEX_GLOBAL, &peer, true)
        .load(vipwire::dataplane::bpf_object())
        .expect("loading the embedded BPF object");
    let program: &mut SchedClassifier = ebpf
        .program_mut(TC_LAB_REDIRECT_PEER)
        .and_then(|p| p.try_into().ok())
        .unwrap_or_else(|| panic!("{TC_LAB_REDIRECT_PEER} is in the object"));
    program
        .load()
        .unwrap_or_else(|e| panic!("loading {TC_LAB_REDIRECT_PEER}: {e:?}"));
    livegen::in_netns_scoped(&lab.node, || {
        program
            .attach_with_options(
                "up0",
                TcAttachType::Ingress,
                TcAttachOptions::TcxOrder(LinkOrder::default()),
            )
            .unwrap_or_else(|e| panic!("attaching {TC_LAB_REDIRECT_PEER} to up0: {e:?}"))
    });
    // Dropping `ebpf` detaches the program.
    flood(lab, to_pod, "floor")
}

/// The round with the median delivery rate, with the latency of the timed round.
fn median_round(mut rounds: Vec<Arm>) -> Arm {
    let (p50_us, p99_us) = rounds
        .iter()
        .find(|arm| arm.p50_us.is_some())
        .map_or((None, None), |arm| (arm.p50_us, arm.p99_us));
    rounds.sort_by(|a, b| a.delivered.total_cmp(&b.delivered));
    let median = rounds.swap_remove(rounds.len() / 2);
    Arm {
        p50_us,
        p99_us,
        ..median
    }
}

fn push(report: &mut Report, vipwire: &Arm, iptables: &Arm, nftables: &Arm) {
    for (name, arm) in [("iptables dnat", iptables), ("nftables dnat", nftables)] {
        report.push(Measurement::new(
            format!("l4 udp flow: {name} into pod"),
            arm.delivered,
            "pkts/s",
        ));
    }
    for (name, base) in [("iptables", iptables), ("nftables", nftables)] {
        report.push(
            Measurement::new(
                format!("l4 udp flow: vipwire into pod (vs {name})"),
                vipwire.delivered,
                "pkts/s",
            )
            .against(format!("{name} dnat into pod"), base.delivered)
            .target(Target::RatioAtLeast(2.0)),
        );
    }
    for (name, arm) in [
        ("vipwire", vipwire),
        ("iptables", iptables),
        ("nftables", nftables),
    ] {
        report.push(Measurement::new(
            format!("l4 udp flow: offered (up0 rx), {name}"),
            arm.offered,
            "frames/s",
        ));
        let softirq = Measurement::new(
            format!("l4 udp flow: softirq cpu/pkt, {name}"),
            arm.softirq_ns,
            "ns/pkt",
        );
        if name == "vipwire" {
            report.push(softirq.against("iptables softirq cpu/pkt", iptables.softirq_ns));
        } else {
            report.push(softirq);
        }
        for (pct, value, base) in [
            ("p50", arm.p50_us, iptables.p50_us),
            ("p99", arm.p99_us, iptables.p99_us),
        ] {
            let mut m = Measurement::new(
                format!("l4 tcp req/resp {pct}, {name}"),
                value.unwrap_or(f64::NAN),
                "us",
            );
            if name == "vipwire"
                && let Some(base) = base
            {
                m = m.against(format!("iptables {pct}"), base);
            }
            report.push(m);
        }
    }
    println!(
        "l4 udp flow into the pod: vipwire {:.0}/s, iptables {:.0}/s, nftables {:.0}/s \
         (offered {:.0}/{:.0}/{:.0} frames/s; checksum errors in the pod {}/{}/{})",
        vipwire.delivered,
        iptables.delivered,
        nftables.delivered,
        vipwire.offered,
        iptables.offered,
        nftables.offered,
        vipwire.csum_errors,
        iptables.csum_errors,
        nftables.csum_errors,
    );
}

/// The floor beside the arms: the best ratio a dataplane delivering from TC can reach in this
/// lab, and vipwire's steering cost per packet above the floor next to what the 2x target
/// leaves for it (1 / (2 x the faster kernel arm) - 1 / floor).
fn push_floor(report: &mut Report, vipwire: &Arm, iptables: &Arm, nftables: &Arm, floor: &Arm) {
    for (name, base) in [("iptables", iptables), ("nftables", nftables)] {
        report.push(
            Measurement::new(
                format!("l4 udp flow: the floor, bare redirect_peer into pod (vs {name})"),
                floor.delivered,
                "pkts/s",
            )
            .against(format!("{name} dnat into pod"), base.delivered),
        );
    }
    let ns = |rate: f64| 1e9 / rate.max(1.0);
    let faster_kernel = iptables.delivered.max(nftables.delivered);
    report.push(
        Measurement::new(
            "l4 udp flow: vipwire steering above the floor",
            ns(vipwire.delivered) - ns(floor.delivered),
            "ns/pkt",
        )
        .against(
            "budget at 2x the faster kernel arm",
            ns(2.0 * faster_kernel) - ns(floor.delivered),
        ),
    );
}

/// One arm: the UDP flood, then (`timed`) request/response latency.
fn arm(lab: &L4Lab, generator: &Generator, label: &str, timed: bool) -> Arm {
    let flood = flood(lab, generator, label);
    if !timed {
        return flood;
    }
    // Let the queues drain before timing requests.
    std::thread::sleep(Duration::from_millis(300));
    let (p50_us, p99_us) = latency(lab);
    Arm {
        p50_us,
        p99_us,
        ..flood
    }
}

/// Floods for [`FLOOD_FOR`] at most; rates over [`WINDOW`] after [`WARMUP`]. Softirq time is
/// per delivered packet, or per offered frame when nothing is delivered.
fn flood(lab: &L4Lab, generator: &Generator, label: &str) -> Arm {
    let pod = &lab.pod(0).ns;
    let frame = &generator.frame;
    livegen::flood(
        generator.program(),
        &lab.client,
        "eth0",
        frame,
        FLOOD_FOR,
        label,
        |sender| {
            std::thread::sleep(WARMUP);
            let sample = || {
                let t = Instant::now();
                let pod = stats::udp_delivered(pod);
                let (up0_rx, _) = stats::netdev_packets(&lab.node, "up0");
                (t, pod, up0_rx, stats::softirq_time())
            };
            let (t0, pod0, rx0, soft0) = sample();
            std::thread::sleep(WINDOW);
            let (t1, pod1, rx1, soft1) = sample();
            let secs = (t1 - t0).as_secs_f64();
            let delivered = (pod1.delivered - pod0.delivered) as f64;
            let offered = (rx1 - rx0) as f64;
            let per = if delivered > 0.0 { delivered } else { offered };
            Arm {
                delivered: delivered / secs,
                offered: offered / secs,
                softirq_ns: (soft1 - soft0).as_nanos() as f64 / per.max(1.0),
                csum_errors: pod1.csum_errors - pod0.csum_errors,
                cpu: sender.cpu,
                ..Arm::default()
            }
        },
    )
}

/// The L4 flood generator, loaded from the embedded object (with its own, unused copies of
/// the contract maps) with the headers of `frame` to write back into every frame it sends.
struct Generator {
    ebpf: Ebpf,
    frame: Vec<u8>,
}

impl Generator {
    fn load(frame: &[u8]) -> Self {
        assert!(
            frame.len() >= FLOOD_HEADER_BYTES,
            "the flood frame is too short"
        );
        let headers: [u64; FLOOD_HEADER_BYTES / 8] = std::array::from_fn(|i| {
            let word = frame[i * 8..i * 8 + 8].try_into().expect("8 bytes");
            // The program stores each word as it is in memory.
            u64::from_ne_bytes(word)
        });
        let ebpf = livegen::load_programs(
            EbpfLoader::new().override_global(FLOOD_HEADERS_GLOBAL, &headers, true),
            &[XDP_GEN_HEADERS],
        );
        Self {
            ebpf,
            frame: frame.to_vec(),
        }
    }

    fn program(&self) -> &Xdp {
        livegen::program(&self.ebpf, XDP_GEN_HEADERS)
    }
}

/// p50 and p99 of request/response round trips on one connection to VIP:port.
fn latency(lab: &L4Lab) -> (Option<f64>, Option<f64>) {
    let to = l4lab::vip(TCP, false);
    let Some(Ok(mut conn)) = client::connect(&lab.client, to, 1, Duration::from_secs(2)).pop()
    else {
        return (None, None);
    };
    let timeout = Duration::from_secs(1);
    for _ in 0..200 {
        if conn.request(timeout).is_err() {
            return (None, None);
        }
    }
    let mut samples = timed_requests(&mut conn, timeout);
    if samples.is_empty() {
        return (None, None);
    }
    samples.sort_unstable_by(f64::total_cmp);
    let at = |q: f64| samples[((samples.len() - 1) as f64 * q).round() as usize];
    (Some(at(0.50)), Some(at(0.99)))
}

fn timed_requests(conn: &mut TcpConn, timeout: Duration) -> Vec<f64> {
    let started = Instant::now();
    let mut samples = Vec::with_capacity(REQUESTS);
    while samples.len() < REQUESTS && started.elapsed() < REQUESTS_FOR {
        let t = Instant::now();
        if conn.request(timeout).is_err() {
            break;
        }
        samples.push(t.elapsed().as_secs_f64() * 1e6);
    }
    samples
}

/// The empty XDP program (`vipwire_xdp_pass`) attached natively to `ifname` in the node: what
/// the kernel arms need so that the veth takes the generator's frames, and nothing more.
/// Detached when the returned object is dropped.
fn attach_empty_xdp(lab: &L4Lab, ifname: &str) -> Ebpf {
    let mut ebpf = livegen::load_programs(&mut EbpfLoader::new(), &[programs::XDP_PASS_ALL]);
    let _ = livegen::attach_native(&mut ebpf, programs::XDP_PASS_ALL, &lab.node, ifname);
    ebpf
}

/// A stopped agent with `--cleanup-on-exit` detaches its programs; make sure nothing of it is
/// left on the lab's interfaces before the kernel arms (the lab's own namespace only).
fn detach_everything(lab: &L4Lab) {
    let mut interfaces = vec!["up0".to_owned(), "up1".to_owned()];
    interfaces.extend(lab.pods().iter().map(|p| p.host_veth.clone()));
    for ifname in interfaces {
        let _ = lab
            .node
            .exec("ip", &["link", "set", "dev", &ifname, "xdp", "off"]);
        let _ = lab
            .node
            .exec("tc", &["qdisc", "del", "dev", &ifname, "clsact"]);
    }
}

/// The agent binary built beside this one (`cargo xtask bench` builds it first).
fn agent_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("current executable");
    let binary = exe.with_file_name("vipwire");
    assert!(
        binary.is_file(),
        "prerequisite {} not found: run `cargo build --release -p vipwire` (cargo xtask bench does)",
        binary.display()
    );
    binary
}

/// A flood frame: client eth0 → node up0, CLIENT_SRC:40000 → `dst`:`port` (the VIP and
/// SINK.port; the pod and SINK.target for the floor).
fn flood_frame(lab: &L4Lab, dst: Ipv4Addr, port: u16) -> Vec<u8> {
    let builder = etherparse::PacketBuilder::ethernet2(lab.client.mac("eth0"), lab.node.mac("up0"))
        .ipv4(CLIENT_SRC.octets(), dst.octets(), 64)
        .udp(40000, port);
    let payload = [0x5a; 18];
    let mut frame = Vec::with_capacity(builder.size(payload.len()));
    builder
        .write(&mut frame, &payload)
        .expect("writing a UDP frame to a Vec");
    frame
}
