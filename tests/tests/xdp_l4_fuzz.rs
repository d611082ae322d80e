//! Fuzz: a million L4 frames, seeds from the fixtures' shapes mutated at random, through the
//! real program (BPF_PROG_RUN) with the fixture tables loaded.
//!
//! Properties, from an independent reading of each frame:
//! - the verdict is XDP_PASS or XDP_DROP, never anything else;
//! - a frame whose destination is not a VIP comes back XDP_PASS and byte-identical;
//! - XDP_DROP only for frames to the VIP (source ranges);
//! - a rewritten frame carries a valid `XdpMeta` naming a known backend, has the input's
//!   length, goes to a backend address, and when the input's checksums were right, the
//!   output's are right too (testkit::l4packets::check).
//!
//! Deterministic: `VIPWIRE_FUZZ_SEED` and `VIPWIRE_FUZZ_RUNS` (default 1,000,000) reproduce a
//! run; a failure prints the seed, the run and the frame.

use std::{
    net::IpAddr,
    time::{Duration, Instant},
};

use testkit::{
    bpf::{LO_IFINDEX, Verdict, XdpHarness},
    fuzz::{Rng, env_u64},
    l4packets::{Flow, Frag, SCTP, Shape, TCP, UDP, check, icmp_error},
    l4tables::{CLIENT4, CLIENT6, VIP4, VIP6, fixture_tables},
};
use vipwire_common::l4::{XDP_META_MAGIC, XdpMeta};

const DEFAULT_RUNS: u64 = 1_000_000;
const DEFAULT_SEED: u64 = 0x6c34_6675_7a7a_0001;
/// Generous: a million runs take well under a minute here; this only stops a runaway.
const TIME_BUDGET: Duration = Duration::from_secs(600);
const BACKEND_IDS: [u32; 7] = [11, 12, 13, 14, 21, 22, 23];

fn ip(s: &str) -> IpAddr {
    s.parse().expect("address literal")
}

fn backend_addrs() -> Vec<IpAddr> {
    [
        "10.244.0.11",
        "10.244.0.12",
        "10.244.0.13",
        "10.244.0.14",
        "fd00:244::11",
        "fd00:244::12",
        "fd00:244::13",
    ]
    .map(ip)
    .to_vec()
}

fn seeds() -> Vec<Vec<u8>> {
    let mut seeds = Vec::new();
    let families = [
        (CLIENT4, VIP4, "203.0.113.11"),
        (CLIENT6, VIP6, "2001:db8:100::11"),
    ];
    for (client, vip, near) in families {
        for (proto, port) in [
            (TCP, 80),
            (UDP, 53),
            (SCTP, 9),
            (TCP, 443),
            (TCP, 8443),
            (TCP, 7000),
        ] {
            for dst in [vip, near] {
                let flow = Flow {
                    src: ip(client),
                    dst: ip(dst),
                    sport: 40000,
                    dport: port,
                    proto,
                };
                seeds.push(flow.frame());
                for frag in [Frag::First(9), Frag::Later(9)] {
                    seeds.push(flow.frame_with(Shape {
                        frag,
                        ..Shape::default()
                    }));
                }
                if dst.contains(':') {
                    seeds.push(flow.frame_with(Shape {
                        dest_opts: true,
                        ..Shape::default()
                    }));
                }
            }
        }
        let reply = Flow {
            src: ip(vip),
            dst: ip(client),
            sport: 80,
            dport: 40000,
            proto: TCP,
        };
        let router = if vip.contains(':') {
            "fd00:1::fe"
        } else {
            "10.0.1.254"
        };
        let (kind, code) = if vip.contains(':') { (2, 0) } else { (3, 4) };
        seeds.push(icmp_error(ip(router), &reply, kind, code, 28));
    }
    seeds
}

/// Offsets where a mutation changes what the program does: IP version/IHL, protocol,
/// fragment field, addresses, ports, IPv6 next header.
const HOT_OFFSETS: &[usize] = &[
    14, 15, 20, 21, 23, 30, 33, 34, 36, 37, 20, 53, 54, 55, 56, 57,
];

fn generate(rng: &mut Rng, seeds: &[Vec<u8>]) -> Vec<u8> {
    let mut frame = rng.pick(seeds).clone();
    for _ in 0..=rng.below(3) {
        match rng.below(8) {
            0 | 1 => {
                let at = rng.below(frame.len());
                frame[at] ^= 1 << rng.below(8);
            }
            2 | 3 => {
                let at = *rng.pick(HOT_OFFSETS);
                if at < frame.len() {
                    frame[at] = rng.byte();
                }
            }
            4 if frame.len() > 15 => frame.truncate(14 + rng.below(frame.len() - 14)),
            5 => {
                let extra = rng.below(16);
                frame.extend((0..extra).map(|_| rng.byte()));
            }
            6 if frame.len() > 14 => {
                // A random byte anywhere in the IP header.
                let at = 14 + rng.below(40.min(frame.len() - 14));
                frame[at] = rng.byte();
            }
            _ => {}
        }
    }
    frame
}

/// The destination address as an independent parser reads it, if the frame has one.
fn destination(frame: &[u8]) -> Option<IpAddr> {
    match u16::from_be_bytes(frame.get(12..14)?.try_into().ok()?) {
        0x0800 => {
            let b: [u8; 4] = frame.get(30..34)?.try_into().ok()?;
            Some(IpAddr::from(b))
        }
        0x86dd => {
            let b: [u8; 16] = frame.get(38..54)?.try_into().ok()?;
            Some(IpAddr::from(b))
        }
        _ => None,
    }
}

fn fail(seed: u64, run: u64, frame: &[u8], what: &str) -> ! {
    let hex: String = frame.iter().map(|b| format!("{b:02x}")).collect();
    panic!("seed {seed:#x} run {run}: {what}\nframe {hex}");
}

#[test]
fn non_vip_frames_pass_untouched_and_steered_ones_are_well_formed() {
    let runs = env_u64("VIPWIRE_FUZZ_RUNS", DEFAULT_RUNS);
    let seed = env_u64("VIPWIRE_FUZZ_SEED", DEFAULT_SEED);
    let deadline = Instant::now() + TIME_BUDGET;
    let h: XdpHarness = fixture_tables();
    let seeds = seeds();
    let backends = backend_addrs();
    let vips = [ip(VIP4), ip(VIP6)];
    let mut rng = Rng(seed);
    let (mut steered, mut dropped) = (0u64, 0u64);
    for run in 0..runs {
        assert!(
            Instant::now() < deadline,
            "over the time budget after {run} runs"
        );
        let frame = generate(&mut rng, &seeds);
        let out = h.run(&frame, LO_IFINDEX);
        let to_vip = destination(&frame).is_some_and(|d| vips.contains(&d));
        match out.verdict {
            Verdict::Pass if out.frame == frame => {}
            Verdict::Pass => {
                if !to_vip {
                    fail(seed, run, &frame, "a non-VIP frame was changed");
                }
                let meta_len = size_of::<XdpMeta>();
                if out.frame.len() != frame.len() + meta_len {
                    fail(seed, run, &frame, "rewritten frame without an XdpMeta");
                }
                let magic = u32::from_ne_bytes(out.frame[..4].try_into().expect("4"));
                let backend = u32::from_ne_bytes(out.frame[4..8].try_into().expect("4"));
                if magic != XDP_META_MAGIC || !BACKEND_IDS.contains(&backend) {
                    fail(seed, run, &frame, "bad XdpMeta");
                }
                let rewritten = &out.frame[meta_len..];
                if !destination(rewritten).is_some_and(|d| backends.contains(&d)) {
                    fail(seed, run, &frame, "steered somewhere that is not a backend");
                }
                if check(&frame).is_ok()
                    && let Err(err) = check(rewritten)
                {
                    fail(seed, run, &frame, &format!("good input, bad output: {err}"));
                }
                steered += 1;
            }
            Verdict::Drop if to_vip => dropped += 1,
            other => fail(seed, run, &frame, &format!("verdict {other:?}")),
        }
    }
    // The seeds reach every path: a fuzz that never steers or drops proves nothing.
    assert!(
        steered > runs / 100,
        "only {steered} of {runs} frames steered"
    );
    assert!(dropped > 0, "no frame hit the source-range drop");
    eprintln!("{runs} frames: {steered} steered, {dropped} dropped");
}
