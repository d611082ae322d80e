//! The `dataplane` area's L4 part (issue 4): cost per packet of the steering path through
//! BPF_PROG_RUN, next to the empty XDP program measured the same way.
//!
//! Per-call mode only (`repeat = 1`, a fresh frame per call, every verdict checked, the
//! kernel's own per-run time): a steered frame is rewritten, so a repeated run would measure
//! its own output (see dataplane.rs). Cases, in interleaved rounds:
//! - a VIP TCP SYN of a new flow (each call a new source port and address: service lookup,
//!   Maglev pick, two conntrack inserts, DNAT; a SYN is not looked up in conntrack). The
//!   conntrack LRU (262,144 entries) is full after the first ~131k calls: from then on each
//!   insert also evicts, as on a busy node;
//! - an ACK of an established flow (conntrack hit, DNAT).

use std::{net::IpAddr, time::Duration};

use aya::programs::{TestRun, TestRunOptions, Xdp};
use testkit::{
    bench::{Measurement, Report, Target},
    bpf::{LO_IFINDEX, Verdict},
    l4packets::{Flow, TCP},
    l4tables::{CLIENT4, VIP4, fixture_tables},
};

const CALLS_PER_ROUND: usize = 100_000;
const ROUNDS: usize = 10;

pub fn measure(report: &mut Report, empty: &Xdp) {
    let harness = fixture_tables();
    let vip: IpAddr = VIP4.parse().expect("VIP");
    let client: IpAddr = CLIENT4.parse().expect("client");
    let established = Flow {
        src: client,
        dst: vip,
        sport: 40000,
        dport: 80,
        proto: TCP,
    }
    .later_frame();
    // Every new-flow frame distinct across all rounds: source port × last address byte.
    let syn = |i: usize| {
        Flow {
            src: IpAddr::from([198, 51, (i / 60000) as u8, 1 + (i / 60000 % 250) as u8]),
            dst: vip,
            sport: 1024 + (i % 60000) as u16,
            dport: 80,
            proto: TCP,
        }
        .frame()
    };
    let warm = harness.run(&established, LO_IFINDEX);
    assert_eq!(
        warm.verdict,
        Verdict::Pass,
        "the established flow is steered"
    );
    assert!(
        warm.frame.len() > established.len(),
        "steered frames carry the XdpMeta"
    );

    let (mut empty_ns, mut syn_ns, mut est_ns) = (0u128, 0u128, 0u128);
    for round in 0..ROUNDS {
        empty_ns += calls(|_| run(empty, &established)).as_nanos();
        syn_ns += calls(|i| {
            let frame = syn(round * CALLS_PER_ROUND + i);
            harness.run_repeat(&frame, LO_IFINDEX, 1)
        })
        .as_nanos();
        est_ns += calls(|_| harness.run_repeat(&established, LO_IFINDEX, 1)).as_nanos();
    }
    let n = (CALLS_PER_ROUND * ROUNDS) as f64;
    let (empty, syn, est) = (empty_ns as f64 / n, syn_ns as f64 / n, est_ns as f64 / n);
    let label = format!("repeat=1 x {}", CALLS_PER_ROUND * ROUNDS);
    report.push(Measurement::new(
        format!("prog_run empty xdp, l4 frame ({label})"),
        empty,
        "ns/pkt",
    ));
    report.push(
        Measurement::new(
            format!("prog_run vip tcp syn, new flow ({label})"),
            syn,
            "ns/pkt",
        )
        .against("empty xdp (per-call)", empty)
        .target(Target::RatioAtMost(3.0)),
    );
    report.push(
        Measurement::new(
            format!("prog_run vip tcp established ({label})"),
            est,
            "ns/pkt",
        )
        .against("empty xdp (per-call)", empty)
        .target(Target::RatioAtMost(3.0)),
    );
}

/// Total kernel time of `CALLS_PER_ROUND` runs; each must pass (steered or empty).
fn calls(mut one: impl FnMut(usize) -> (Verdict, Duration)) -> Duration {
    let mut total = Duration::ZERO;
    for i in 0..CALLS_PER_ROUND {
        let (verdict, took) = one(i);
        assert_eq!(verdict, Verdict::Pass, "run {i} returned {verdict:?}");
        total += took;
    }
    total
}

fn run(program: &Xdp, frame: &[u8]) -> (Verdict, Duration) {
    let ctx: Vec<u8> = [0, frame.len() as u32, 0, LO_IFINDEX, 0, 0]
        .iter()
        .flat_map(|f: &u32| f.to_ne_bytes())
        .collect();
    let result = program
        .test_run(TestRunOptions {
            data_in: Some(frame),
            ctx_in: Some(&ctx),
            repeat: 1,
            ..TestRunOptions::default()
        })
        .unwrap_or_else(|e| panic!("BPF_PROG_RUN: {e:?}"));
    (result.return_value.into(), result.duration)
}
