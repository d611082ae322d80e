//! BPF_PROG_RUN fixtures for the XDP ARP/NDP responder: one row per case (map setup, input
//! frame, expected verdict, exact expected output, the one counter that must move), plus the
//! contract, gate, log and per-VIP stats checks that need more than one run.
//!
//! Every answered frame is also parsed with etherparse, an independent parser, which checks
//! the ICMPv6 checksum and the NA flags. The tables live in `arp.rs` and `ndp.rs`.

mod arp;
mod lab;
mod ndp;

use std::net::{Ipv4Addr, Ipv6Addr};

use aya::maps::{Array, HashMap, PerCpuArray, PerCpuHashMap};
use testkit::{
    bpf::{LO_IFINDEX, Verdict, XdpHarness, monotonic_ns},
    packets::{
        Arp, ETH_P_8021AD, ETH_P_8021Q, IPPROTO_ICMPV6, Mac, NA_FLAG_OVERRIDE, NdOption, Ndp,
        ethernet, fix_icmpv6_checksum, ipv4_tcp, ipv6, padded, vlan_tagged,
    },
};
use vipwire_common::{
    CONTRACT_VERSION, Control, Iface, L2Vip4Key, L2Vip6Key, L2VipStats, Reason,
    control::{REPORTED_CONTRACT_MISMATCH, REPORTED_STALE},
    l4::VipFilter,
    maps,
};

const NODE_MAC: Mac = [0x02, 0x00, 0x5e, 0x00, 0x00, 0x01];
const OTHER_NODE_MAC: Mac = [0x02, 0x00, 0x5e, 0x00, 0x00, 0x02];
const CLIENT_MAC: Mac = [0x02, 0xc1, 0x1e, 0x47, 0x00, 0x01];
/// An interface index that exists in no namespace: VIPs "owned on another interface".
const OTHER_IFINDEX: u32 = 4242;

const CLIENT4: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
const VIP4: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 10);
const VIP4_ELSEWHERE: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 20);
const NOT_OWNED4: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 30);

fn client6() -> Ipv6Addr {
    "2001:db8::1".parse().expect("address")
}
fn vip6() -> Ipv6Addr {
    "2001:db8::10".parse().expect("address")
}
fn vip6_elsewhere() -> Ipv6Addr {
    "2001:db8::20".parse().expect("address")
}
fn not_owned6() -> Ipv6Addr {
    "2001:db8::30".parse().expect("address")
}

/// The map state a fixture runs against.
#[derive(Clone, Copy, Debug)]
enum Setup {
    /// `lo` configured with NODE_MAC; VIP4/VIP6 owned on `lo`, the *_ELSEWHERE ones on
    /// OTHER_IFINDEX; a fresh heartbeat.
    Standard,
    /// Standard, but `lo` is not in `vipwire_ifaces_v1`.
    IfaceNotConfigured,
    /// Standard, but the control entry was never written.
    NoHeartbeat,
    /// Standard, but the heartbeat is 10 s old with a 5 s limit.
    StaleHeartbeat,
    /// Standard, but the heartbeat is 10 s in the future (another clock) with a 5 s limit.
    FutureHeartbeat,
    /// Standard, but the agent wrote another contract version.
    ContractMismatch,
}

fn harness(setup: Setup) -> XdpHarness {
    let mut h = XdpHarness::load();
    if !matches!(setup, Setup::IfaceNotConfigured) {
        h.set_iface(LO_IFINDEX, NODE_MAC);
    }
    h.set_iface(OTHER_IFINDEX, OTHER_NODE_MAC);
    h.add_vip4(VIP4, LO_IFINDEX);
    h.add_vip4(VIP4_ELSEWHERE, OTHER_IFINDEX);
    h.add_vip6(vip6(), LO_IFINDEX);
    h.add_vip6(vip6_elsewhere(), OTHER_IFINDEX);
    let control = |heartbeat_ns, contract_version| Control {
        heartbeat_ns,
        stale_after_ns: 5_000_000_000,
        contract_version,
        reported: 0,
    };
    match setup {
        Setup::Standard | Setup::IfaceNotConfigured => h.heartbeat(),
        Setup::NoHeartbeat => {}
        Setup::StaleHeartbeat => {
            h.set_control(control(monotonic_ns() - 10_000_000_000, CONTRACT_VERSION))
        }
        Setup::FutureHeartbeat => {
            h.set_control(control(monotonic_ns() + 10_000_000_000, CONTRACT_VERSION))
        }
        Setup::ContractMismatch => h.set_control(control(monotonic_ns(), CONTRACT_VERSION + 1)),
    }
    h
}

struct Fixture {
    name: &'static str,
    setup: Setup,
    frame: Vec<u8>,
    /// Pass: the frame must come back unchanged. Tx: the exact reply.
    expect: Expect,
    reason: Reason,
}

enum Expect {
    Pass,
    Tx(Vec<u8>),
}

fn tx(name: &'static str, frame: Vec<u8>, reply: Vec<u8>, reason: Reason) -> Fixture {
    Fixture {
        name,
        setup: Setup::Standard,
        frame,
        expect: Expect::Tx(reply),
        reason,
    }
}

fn pass(name: &'static str, frame: Vec<u8>, reason: Reason) -> Fixture {
    pass_with(name, Setup::Standard, frame, reason)
}

fn pass_with(name: &'static str, setup: Setup, frame: Vec<u8>, reason: Reason) -> Fixture {
    Fixture {
        name,
        setup,
        frame,
        expect: Expect::Pass,
        reason,
    }
}

fn check(fixture: &Fixture) {
    let name = fixture.name;
    let mut h = harness(fixture.setup);
    let out = h.run(&fixture.frame, LO_IFINDEX);
    match &fixture.expect {
        Expect::Pass => {
            assert_eq!(out.verdict, Verdict::Pass, "{name}");
            assert_eq!(
                out.frame, fixture.frame,
                "{name}: a passed frame must be untouched"
            );
        }
        Expect::Tx(reply) => {
            assert_eq!(out.verdict, Verdict::Tx, "{name}");
            assert_eq!(hex(&out.frame), hex(reply), "{name}: reply bytes");
            verify_reply(name, &out.frame);
        }
    }
    let counters = h.counters();
    for reason in Reason::ALL {
        let expected = u64::from(reason == fixture.reason);
        assert_eq!(
            counters[reason as usize],
            expected,
            "{name}: counter {}",
            reason.name()
        );
    }
}

#[test]
fn arp_fixtures_give_exact_verdict_output_and_counter() {
    for fixture in arp::fixtures() {
        check(&fixture);
    }
}

#[test]
fn ndp_fixtures_give_exact_verdict_output_and_counter() {
    for fixture in ndp::fixtures() {
        check(&fixture);
    }
}

/// Parses an answer with etherparse: an ARP reply from NODE_MAC, or an NA from NODE_MAC with
/// a valid checksum, R=0, O=1 and S set unless sent to all nodes.
fn verify_reply(name: &str, frame: &[u8]) {
    let packet = etherparse::SlicedPacket::from_ethernet(frame)
        .unwrap_or_else(|e| panic!("{name}: etherparse rejects the reply: {e}"));
    let Some(etherparse::LinkSlice::Ethernet2(eth)) = &packet.link else {
        panic!("{name}: no Ethernet header");
    };
    assert_eq!(eth.source(), NODE_MAC, "{name}: Ethernet source");
    match (&packet.net, &packet.transport) {
        (Some(etherparse::NetSlice::Arp(arp)), _) => {
            let arp = arp.to_packet().try_eth_ipv4().expect("Ethernet/IPv4 ARP");
            assert_eq!(arp.operation, etherparse::ArpOperation::REPLY, "{name}");
            assert_eq!(arp.sender_mac, NODE_MAC, "{name}");
            assert_eq!(
                eth.destination(),
                arp.target_mac,
                "{name}: sent to the requester"
            );
        }
        (Some(etherparse::NetSlice::Ipv6(ip)), Some(etherparse::TransportSlice::Icmpv6(icmp))) => {
            let header = ip.header();
            assert_eq!(header.hop_limit(), 255, "{name}: hop limit");
            assert_eq!(
                usize::from(header.payload_length()),
                icmp.slice().len(),
                "{name}"
            );
            assert!(
                icmp.is_checksum_valid(header.source(), header.destination()),
                "{name}: ICMPv6 checksum"
            );
            let etherparse::Icmpv6Type::NeighborAdvertisement(flags) = icmp.icmp_type() else {
                panic!("{name}: not an NA: {:?}", icmp.icmp_type());
            };
            let to_all_nodes =
                header.destination_addr() == "ff02::1".parse::<Ipv6Addr>().expect("address");
            assert!(!flags.router && flags.r#override, "{name}: R=0 O=1");
            assert_eq!(flags.solicited, !to_all_nodes, "{name}: S");
            // Target link-layer address option carrying the interface MAC.
            assert_eq!(
                &icmp.slice()[24..32],
                &[
                    2,
                    1,
                    NODE_MAC[0],
                    NODE_MAC[1],
                    NODE_MAC[2],
                    NODE_MAC[3],
                    NODE_MAC[4],
                    NODE_MAC[5]
                ],
                "{name}"
            );
        }
        other => panic!("{name}: unexpected reply {other:?}"),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(" ")
}

#[test]
fn contract_maps_match_object() {
    let mut h = XdpHarness::load();
    let names = h.map_names();
    for name in maps::ALL {
        assert!(
            names.iter().any(|n| n == name),
            "{name} missing from the object: {names:?}"
        );
    }
    for name in &names {
        assert!(
            !name.starts_with("vipwire_") || maps::ALL.contains(&name.as_str()),
            "{name} is in the object but not in vipwire_common::maps"
        );
    }
    // Typed views check each map's key and value sizes against the contract types.
    HashMap::<_, u32, Iface>::try_from(h.map_mut(maps::IFACES)).expect("ifaces");
    PerCpuHashMap::<_, L2Vip4Key, L2VipStats>::try_from(h.map_mut(maps::L2_VIP4)).expect("vip4");
    PerCpuHashMap::<_, L2Vip6Key, L2VipStats>::try_from(h.map_mut(maps::L2_VIP6)).expect("vip6");
    let control = Array::<_, Control>::try_from(h.map_mut(maps::CONTROL)).expect("control");
    assert_eq!(control.len(), 1);
    let counters = PerCpuArray::<_, u64>::try_from(h.map_mut(maps::COUNTERS)).expect("counters");
    assert_eq!(counters.len(), Reason::COUNT);
    // The VIP filter, defined twice: as a map with BTF and as the global the program reads.
    for name in [maps::VIP_FILTER, maps::VIP_FILTER_SECTION] {
        let filter = Array::<_, VipFilter>::try_from(h.map_mut(name)).expect(name);
        assert_eq!(filter.len(), 1, "{name}");
    }
}

#[test]
fn stale_heartbeat_logs_once_per_occurrence() {
    let mut h = harness(Setup::StaleHeartbeat);
    let request = Arp::request(CLIENT_MAC, CLIENT4, VIP4).build();
    for _ in 0..5 {
        assert_eq!(h.run(&request, LO_IFINDEX).verdict, Verdict::Pass);
    }
    let logs = h.take_logs();
    assert_eq!(logs.len(), 1, "{logs:?}");
    assert_eq!(logs[0].level, log::Level::Warn);
    assert!(logs[0].message.contains("heartbeat stale"), "{logs:?}");
    assert_eq!(h.control().reported, REPORTED_STALE);
    assert_eq!(h.counters()[Reason::StaleHeartbeat as usize], 5);

    // A fresh heartbeat answers again and re-arms the log (the agent writes reported = 0).
    h.heartbeat();
    assert_eq!(h.run(&request, LO_IFINDEX).verdict, Verdict::Tx);
    let mut stale = h.control();
    // Stale by far more than the program's clock resolution (a tick: control.rs).
    stale.heartbeat_ns -= 1_000_000_000;
    stale.stale_after_ns = 1_000;
    h.set_control(stale);
    assert_eq!(h.run(&request, LO_IFINDEX).verdict, Verdict::Pass);
    assert_eq!(h.run(&request, LO_IFINDEX).verdict, Verdict::Pass);
    assert_eq!(h.take_logs().len(), 1, "second occurrence logged once");
}

#[test]
fn never_written_heartbeat_and_contract_mismatch_log_once() {
    let mut h = harness(Setup::NoHeartbeat);
    let ns = Ndp::solicitation(CLIENT_MAC, client6(), vip6()).build();
    h.run(&ns, LO_IFINDEX);
    h.run(&ns, LO_IFINDEX);
    let logs = h.take_logs();
    assert_eq!(logs.len(), 1, "{logs:?}");
    assert!(logs[0].message.contains("no agent heartbeat"), "{logs:?}");

    let mut h = harness(Setup::ContractMismatch);
    h.run(&ns, LO_IFINDEX);
    h.run(&ns, LO_IFINDEX);
    let logs = h.take_logs();
    assert_eq!(logs.len(), 1, "{logs:?}");
    let expected = format!(
        "contract version {}, program is built for {CONTRACT_VERSION}",
        CONTRACT_VERSION + 1
    );
    assert!(logs[0].message.contains(&expected), "{logs:?}");
    assert_eq!(h.control().reported, REPORTED_CONTRACT_MISMATCH);
}

#[test]
fn log_level_set_at_load_filters_in_the_kernel() {
    let mut h = XdpHarness::load_with_log_level(aya_log::Level::Error);
    h.set_iface(LO_IFINDEX, NODE_MAC);
    h.add_vip4(VIP4, LO_IFINDEX);
    let request = Arp::request(CLIENT_MAC, CLIENT4, VIP4).build();
    assert_eq!(h.run(&request, LO_IFINDEX).verdict, Verdict::Pass);
    assert_eq!(
        h.take_logs(),
        Vec::new(),
        "warn records suppressed at level error"
    );
    assert_eq!(
        h.control().reported,
        REPORTED_STALE,
        "the event itself is still noted"
    );
}

#[test]
fn per_vip_stats_count_answers_per_interface() {
    let mut h = harness(Setup::Standard);
    let arp = Arp::request(CLIENT_MAC, CLIENT4, VIP4).build();
    let ns = Ndp::solicitation(CLIENT_MAC, client6(), vip6()).build();
    for _ in 0..3 {
        assert_eq!(h.run(&arp, LO_IFINDEX).verdict, Verdict::Tx);
    }
    assert_eq!(h.run(&ns, LO_IFINDEX).verdict, Verdict::Tx);
    h.run(
        &Arp::request(CLIENT_MAC, CLIENT4, VIP4_ELSEWHERE).build(),
        LO_IFINDEX,
    );
    assert_eq!(h.vip4_answered(VIP4, LO_IFINDEX), 3);
    assert_eq!(h.vip4_answered(VIP4_ELSEWHERE, OTHER_IFINDEX), 0);
    assert_eq!(h.vip6_answered(vip6(), LO_IFINDEX), 1);
    let counters = h.counters();
    assert_eq!(counters[Reason::AnsweredArp as usize], 3);
    assert_eq!(counters[Reason::AnsweredNdp as usize], 1);
    assert_eq!(counters[Reason::NotOwned as usize], 1);
}

#[test]
fn prog_run_refuses_missing_devices_and_runt_frames() {
    // BPF_PROG_RUN resolves ingress_ifindex in the caller's namespace, and an XDP frame must
    // hold an Ethernet header: both are refused by the kernel, not given to the program.
    let h = XdpHarness::load();
    let frame = Arp::request(CLIENT_MAC, CLIENT4, VIP4).build();
    let missing = h
        .try_run(&frame, OTHER_IFINDEX)
        .expect_err("ifindex should not exist");
    assert!(
        format!("{missing:?}").contains("No such device"),
        "{missing:?}"
    );
    let runt = h
        .try_run(&frame[..13], LO_IFINDEX)
        .expect_err("13-byte frame");
    assert!(format!("{runt:?}").contains("Invalid argument"), "{runt:?}");
    assert_eq!(h.run(&frame[..14], LO_IFINDEX).verdict, Verdict::Pass);
}

#[test]
fn self_check_frame_is_passed_and_logged_once_at_info() {
    let mut h = XdpHarness::load_with_log_level(aya_log::Level::Info);
    let frame = vipwire_common::selfcheck::FRAME;
    let out = h.run(&frame, LO_IFINDEX);
    assert_eq!(out.verdict, Verdict::Pass);
    assert_eq!(out.frame, frame, "passed untouched");
    let logs = h.take_logs();
    assert_eq!(logs.len(), 1, "{logs:?}");
    assert_eq!(
        logs[0].message,
        format!("self-check: vipwire_xdp runs, contract v{CONTRACT_VERSION}")
    );
    assert_eq!(logs[0].level, log::Level::Info);

    let mut wrong_magic = frame;
    wrong_magic[14] ^= 0xff;
    assert_eq!(h.run(&wrong_magic, LO_IFINDEX).verdict, Verdict::Pass);
    assert_eq!(
        h.take_logs(),
        Vec::new(),
        "only the exact self-check frame logs"
    );
    assert_eq!(h.counters()[Reason::Passed as usize], 2);
}
