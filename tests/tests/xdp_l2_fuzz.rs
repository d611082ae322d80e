//! Fuzz: a million random and mutated frames through the real program (BPF_PROG_RUN).
//!
//! The property: the program answers (XDP_TX) exactly the valid ARP requests and Neighbor
//! Solicitations for an owned (VIP, ingress ifindex), with exactly the reply an independent
//! Rust model builds from the packet builder; every other frame comes back XDP_PASS and
//! byte-identical. The model below is written from the RFCs, not from the BPF code.
//!
//! Deterministic: `VIPWIRE_FUZZ_SEED` (default fixed) and `VIPWIRE_FUZZ_RUNS` (default
//! 1,000,000) reproduce a run; a failure prints the seed, the run and the frame.

use std::{
    net::{Ipv4Addr, Ipv6Addr},
    time::{Duration, Instant},
};

use testkit::{
    bpf::{LO_IFINDEX, RunOutput, Verdict, XdpHarness},
    fuzz::{Rng, env_u64},
    packets::{
        Arp, ETH_P_8021Q, Mac, NdOption, Ndp, fix_icmpv6_checksum, ipv4_tcp, padded, vlan_tagged,
    },
};

const NODE_MAC: Mac = [0x02, 0x00, 0x5e, 0x00, 0x00, 0x01];
const CLIENT_MAC: Mac = [0x02, 0xc1, 0x1e, 0x47, 0x00, 0x01];
const OTHER_IFINDEX: u32 = 4242;
const DEFAULT_RUNS: u64 = 1_000_000;
const DEFAULT_SEED: u64 = 0x7669_7077_6972_6531;
/// Generous: a million runs take seconds on 2 cores; this only stops a runaway.
const TIME_BUDGET: Duration = Duration::from_secs(600);

/// Owned on `lo`: 10.0.0.16-31 and 2001:db8::10-1f. Owned elsewhere: 10.0.0.32-39 and
/// 2001:db8::20-27. Mutating one address byte hits an owned address often enough.
fn owned4(addr: [u8; 4], ifindex: u32) -> bool {
    let [a, b, c, d] = addr;
    (a, b, c) == (10, 0, 0)
        && match ifindex {
            LO_IFINDEX => (16..32).contains(&d),
            OTHER_IFINDEX => (32..40).contains(&d),
            _ => false,
        }
}

fn owned6(addr: [u8; 16], ifindex: u32) -> bool {
    let base: [u8; 15] = "2001:db8::".parse::<Ipv6Addr>().expect("address").octets()[..15]
        .try_into()
        .expect("15 bytes");
    addr[..15] == base
        && match ifindex {
            LO_IFINDEX => (0x10..0x20).contains(&addr[15]),
            OTHER_IFINDEX => (0x20..0x28).contains(&addr[15]),
            _ => false,
        }
}

fn setup(h: &mut XdpHarness) {
    h.set_iface(LO_IFINDEX, NODE_MAC);
    h.set_iface(OTHER_IFINDEX, [0x02, 0, 0x5e, 0, 0, 2]);
    for d in 16..40 {
        let ifindex = if d < 32 { LO_IFINDEX } else { OTHER_IFINDEX };
        h.add_vip4(Ipv4Addr::new(10, 0, 0, d), ifindex);
        h.add_vip6(
            Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, u16::from(d)),
            ifindex,
        );
    }
    h.heartbeat();
}

// ---------------------------------------------------------------------------------------
// The model: what a correct responder on `lo` (NODE_MAC) sends back, if anything.

fn model(frame: &[u8], ifindex: u32) -> Option<Vec<u8>> {
    let ethertype = u16::from_be_bytes(frame.get(12..14)?.try_into().ok()?);
    match ethertype {
        0x0806 => model_arp(frame, ifindex),
        0x86dd => model_ns(frame, ifindex),
        _ => None,
    }
}

fn mac_at(frame: &[u8], at: usize) -> Mac {
    frame[at..at + 6].try_into().expect("6 bytes")
}

fn is_group(mac: Mac) -> bool {
    mac[0] & 1 == 1
}

/// RFC 826 request for an owned address, not gratuitous, from a unicast sender, broadcast
/// or sent to us.
fn model_arp(frame: &[u8], ifindex: u32) -> Option<Vec<u8>> {
    if frame.len() < 42 || frame[14..22] != [0, 1, 8, 0, 6, 4, 0, 1] {
        return None;
    }
    let arp = Arp {
        eth_dst: mac_at(frame, 0),
        eth_src: mac_at(frame, 6),
        htype: 1,
        ptype: 0x0800,
        hlen: 6,
        plen: 4,
        op: 1,
        sha: mac_at(frame, 22),
        spa: <[u8; 4]>::try_from(&frame[28..32]).ok()?.into(),
        tha: mac_at(frame, 32),
        tpa: <[u8; 4]>::try_from(&frame[38..42]).ok()?.into(),
    };
    let answer = arp.spa != arp.tpa
        && !is_group(arp.sha)
        && ifindex == LO_IFINDEX
        && owned4(arp.tpa.octets(), ifindex)
        && (arp.eth_dst == [0xff; 6] || arp.eth_dst == NODE_MAC);
    answer.then(|| {
        let mut reply = arp.answered_by(NODE_MAC).build();
        reply.extend_from_slice(&frame[42..]);
        reply
    })
}

/// RFC 4861 7.1.1 validity + ownership, for the shape the program rewrites.
fn model_ns(frame: &[u8], ifindex: u32) -> Option<Vec<u8>> {
    if frame.len() < 78 || frame[14] >> 4 != 6 || frame[20] != 58 || frame[54] != 135 {
        return None;
    }
    let payload_len = usize::from(u16::from_be_bytes([frame[18], frame[19]]));
    let icmp = frame.get(54..)?;
    let src: [u8; 16] = frame[22..38].try_into().ok()?;
    let dst: [u8; 16] = frame[38..54].try_into().ok()?;
    let target: [u8; 16] = frame[62..78].try_into().ok()?;
    let unspecified = src == [0; 16];
    let snm = {
        let mut a = [0xff, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0xff, 0, 0, 0];
        a[13..].copy_from_slice(&target[13..]);
        a
    };
    let to_snm = dst == snm;
    let eth_dst = mac_at(frame, 0);
    let eth_src = mac_at(frame, 6);
    let valid = icmp.len() == payload_len
        && (24..=24 + 32).contains(&payload_len)
        && frame[55] == 0
        && frame[21] == 255
        && !is_group(eth_src)
        && src[0] != 0xff
        && target[0] != 0xff
        && (to_snm || (dst == target && !unspecified))
        && options_valid(&icmp[24..], unspecified)
        && checksum_ok(&src, &dst, icmp);
    let addressed = if to_snm {
        eth_dst == [0x33, 0x33, dst[12], dst[13], dst[14], dst[15]]
    } else {
        eth_dst == NODE_MAC
    };
    let answer = valid && addressed && ifindex == LO_IFINDEX && owned6(target, ifindex);
    answer.then(|| {
        Ndp {
            eth_src,
            src: src.into(),
            target: target.into(),
            ..Ndp::dad_probe(eth_src, target.into())
        }
        .answered_by(NODE_MAC)
        .build()
    })
}

fn options_valid(mut options: &[u8], unspecified: bool) -> bool {
    while !options.is_empty() {
        if options.len() < 2 {
            return false;
        }
        let len = usize::from(options[1]) * 8;
        if len == 0 || len > options.len() || (options[0] == 1 && unspecified) {
            return false;
        }
        options = &options[len..];
    }
    true
}

fn checksum_ok(src: &[u8; 16], dst: &[u8; 16], icmp: &[u8]) -> bool {
    let mut bytes = Vec::with_capacity(40 + icmp.len());
    bytes.extend_from_slice(src);
    bytes.extend_from_slice(dst);
    bytes.extend_from_slice(&(icmp.len() as u32).to_be_bytes());
    bytes.extend_from_slice(&[0, 0, 0, 58]);
    bytes.extend_from_slice(icmp);
    let mut sum: u64 = bytes
        .chunks(2)
        .map(|w| u64::from(w[0]) << 8 | u64::from(*w.get(1).unwrap_or(&0)))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum == 0xffff
}

// ---------------------------------------------------------------------------------------
// Frames: seeds from the packet builder, then mutations.

fn seeds() -> Vec<Vec<u8>> {
    let client4 = Ipv4Addr::new(10, 0, 0, 1);
    let client6: Ipv6Addr = "2001:db8::1".parse().expect("address");
    let mut seeds = Vec::new();
    for d in [16, 31, 32, 40, 200] {
        let vip = Ipv4Addr::new(10, 0, 0, d);
        let request = Arp::request(CLIENT_MAC, client4, vip);
        seeds.push(request.build());
        seeds.push(padded(&request.build()));
        seeds.push(
            Arp {
                eth_dst: NODE_MAC,
                ..request
            }
            .build(),
        );
        seeds.push(Arp::probe(CLIENT_MAC, vip).build());
        seeds.push(Arp::gratuitous(CLIENT_MAC, vip).build());
        seeds.push(Arp::reply(CLIENT_MAC, vip, NODE_MAC, client4).build());
    }
    for d in [0x10, 0x1f, 0x20, 0x30] {
        let vip = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, d);
        let ns = Ndp::solicitation(CLIENT_MAC, client6, vip);
        seeds.push(ns.build());
        seeds.push(Ndp::unicast_solicitation(CLIENT_MAC, NODE_MAC, client6, vip).build());
        seeds.push(Ndp::dad_probe(CLIENT_MAC, vip).build());
        let mut dad_nonce = Ndp::dad_probe(CLIENT_MAC, vip);
        dad_nonce.options.push(NdOption::nonce([6, 5, 4, 3, 2, 1]));
        seeds.push(dad_nonce.build());
        let mut with_nonce = ns.clone();
        with_nonce.options.push(NdOption::nonce([1, 2, 3, 4, 5, 6]));
        seeds.push(with_nonce.build());
        seeds.push(ns.answered_by(NODE_MAC).build());
    }
    seeds.push(ipv4_tcp(
        (CLIENT_MAC, NODE_MAC),
        (client4, [10, 0, 0, 16].into()),
        (1, 80),
        b"x",
    ));
    seeds
}

/// Offsets where a change matters most: Ethernet, ARP fields, IPv6 and ICMPv6 fields,
/// option headers, the last address bytes.
const HOT_OFFSETS: &[usize] = &[
    0, 5, 6, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 27, 31, 37, 41, 53, 54, 55, 56, 57,
    58, 77, 78, 79, 85, 86, 87, 93,
];
const HOT_VALUES: &[u8] = &[
    0, 1, 2, 4, 6, 8, 0x10, 0x18, 0x20, 0x33, 58, 64, 128, 135, 136, 255,
];

fn mutate(rng: &mut Rng, frame: &mut Vec<u8>) {
    match rng.below(10) {
        0 | 1 => {
            let at = rng.below(frame.len());
            frame[at] ^= 1 << rng.below(8);
        }
        2 => {
            let at = rng.below(frame.len());
            frame[at] = rng.byte();
        }
        3 | 4 => {
            let at = *rng.pick(HOT_OFFSETS);
            if at < frame.len() {
                frame[at] = *rng.pick(HOT_VALUES);
            }
        }
        5 => {
            let len = 14 + rng.below(frame.len() - 13);
            frame.truncate(len);
        }
        6 => {
            let extra = 1 + rng.below(24);
            frame.extend((0..extra).map(|_| rng.byte()));
        }
        7 if frame.len() >= 78 => ns_field(rng, frame),
        8 if frame.len() >= 54 => {
            // The IPv6 payload length made consistent with the frame (or not, by a little).
            let len = (frame.len() - 54) as u16;
            frame[18..20].copy_from_slice(&len.to_be_bytes());
        }
        _ => {
            // Within the ICMPv6 payload length field, in units that stay plausible.
            if frame.len() > 19 {
                frame[19] =
                    frame[19].wrapping_add((rng.below(5) as u8).wrapping_sub(2).wrapping_mul(8));
            }
        }
    }
}

/// Sets one NS field to a value that makes the frame MORE plausible, so that mutations reach
/// the checks deep in the program in every combination.
fn ns_field(rng: &mut Rng, frame: &mut [u8]) {
    let target: [u8; 16] = frame[62..78].try_into().expect("16 bytes");
    let mut snm = [0xff, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0xff, 0, 0, 0];
    snm[13..].copy_from_slice(&target[13..]);
    match rng.below(6) {
        0 => frame[22..38].fill(0),
        1 => frame[38..54].copy_from_slice(&target),
        2 => frame[38..54].copy_from_slice(&snm),
        3 => {
            let mac = [0x33, 0x33, frame[50], frame[51], frame[52], frame[53]];
            frame[0..6].copy_from_slice(&mac);
        }
        4 => frame[0..6].copy_from_slice(&NODE_MAC),
        _ => frame[21] = 255,
    }
}

fn generate(rng: &mut Rng, seeds: &[Vec<u8>]) -> Vec<u8> {
    match rng.below(100) {
        0..10 => {
            let len = 14 + rng.below(120);
            let mut frame: Vec<u8> = (0..len).map(|_| rng.byte()).collect();
            match rng.below(3) {
                0 => frame[12..14].copy_from_slice(&[0x08, 0x06]),
                1 => frame[12..14].copy_from_slice(&[0x86, 0xdd]),
                _ => {}
            }
            frame
        }
        10..25 => rng.pick(seeds).clone(),
        25..95 => {
            let mut frame = rng.pick(seeds).clone();
            for _ in 0..1 + rng.below(3) {
                mutate(rng, &mut frame);
            }
            // Mostly keep the ICMPv6 checksum right so the checks behind it get exercised.
            if rng.below(4) != 0 && frame.len() >= 58 && frame[12..14] == [0x86, 0xdd] {
                fix_icmpv6_checksum(&mut frame);
            }
            frame
        }
        _ => vlan_tagged(
            rng.pick(seeds).as_slice(),
            ETH_P_8021Q,
            rng.below(4096) as u16,
        ),
    }
}

// ---------------------------------------------------------------------------------------

#[derive(Default)]
struct Tally {
    runs: u64,
    tx: u64,
}

fn fuzz_thread(seed: u64, runs: u64, deadline: Instant) -> Tally {
    let mut h = XdpHarness::load();
    setup(&mut h);
    let seeds = seeds();
    let mut rng = Rng(seed);
    let mut tally = Tally::default();
    while tally.runs < runs {
        assert!(
            Instant::now() < deadline,
            "fuzz over its time budget after {} runs",
            tally.runs
        );
        let frame = generate(&mut rng, &seeds);
        let out = h.run(&frame, LO_IFINDEX);
        let expected = model(&frame, LO_IFINDEX);
        check(seed, tally.runs, &frame, &out, expected.as_deref());
        tally.tx += u64::from(out.verdict == Verdict::Tx);
        tally.runs += 1;
    }
    assert!(
        h.take_logs().is_empty(),
        "nothing is logged with a fresh heartbeat"
    );
    tally
}

fn check(seed: u64, run: u64, frame: &[u8], out: &RunOutput, expected: Option<&[u8]>) {
    let context = || format!("seed {seed:#x} run {run}: frame {frame:02x?}");
    match expected {
        Some(reply) => {
            assert_eq!(
                out.verdict,
                Verdict::Tx,
                "model answers, program did not; {}",
                context()
            );
            assert_eq!(out.frame, reply, "wrong reply; {}", context());
        }
        None => {
            assert_eq!(
                out.verdict,
                Verdict::Pass,
                "program answered a frame the model passes; {}",
                context()
            );
            assert_eq!(out.frame, frame, "passed frame modified; {}", context());
        }
    }
}

#[test]
fn only_valid_owned_requests_are_answered() {
    let runs = env_u64("VIPWIRE_FUZZ_RUNS", DEFAULT_RUNS);
    let seed = env_u64("VIPWIRE_FUZZ_SEED", DEFAULT_SEED);
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get()) as u64;
    let deadline = Instant::now() + TIME_BUDGET;
    let start = Instant::now();
    let tallies: Vec<Tally> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let share = runs / threads + u64::from(t < runs % threads);
                scope.spawn(move || fuzz_thread(seed.wrapping_add(t), share, deadline))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("fuzz thread"))
            .collect()
    });
    let elapsed = start.elapsed();
    let total: u64 = tallies.iter().map(|t| t.runs).sum();
    let tx: u64 = tallies.iter().map(|t| t.tx).sum();
    eprintln!(
        "xdp_l2_fuzz: {total} frames ({tx} answered) on {threads} threads in {:.1} s: {:.0} runs/s",
        elapsed.as_secs_f64(),
        total as f64 / elapsed.as_secs_f64()
    );
    assert_eq!(total, runs);
    // The generator must reach the answering path, or the property proves little.
    assert!(
        tx * 100 >= total,
        "only {tx} of {total} frames were answerable"
    );
}

/// With the gate closed, nothing is answered, whatever arrives.
#[test]
fn stale_gate_answers_nothing() {
    let mut h = XdpHarness::load();
    setup(&mut h);
    h.set_control(vipwire_common::Control::default());
    let seeds = seeds();
    let mut rng = Rng(DEFAULT_SEED ^ 0x5a5a);
    for run in 0..20_000 {
        let frame = generate(&mut rng, &seeds);
        let out = h.run(&frame, LO_IFINDEX);
        check(DEFAULT_SEED, run, &frame, &out, None);
    }
    assert_eq!(
        h.take_logs().len(),
        1,
        "one log line for the whole stale period"
    );
}
