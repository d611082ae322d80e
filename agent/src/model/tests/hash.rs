//! The L2 rendezvous hash: fixed vectors (computed by an independent implementation of the
//! documented definition), order independence, spread and minimal movement.

use std::collections::BTreeMap;

use super::ip;
use crate::model::l2::{owner, score};

#[test]
fn score_matches_the_documented_definition() {
    #[rustfmt::skip]
    let vectors = [
        ("192.0.2.10", "node-1", 0xe877_4abe_7943_4627_u64),
        ("192.0.2.10", "node-2", 0xc071_3001_73ed_3cfd),
        ("2001:db8::10", "node-1", 0x5173_95d2_7b18_bb5b),
        ("10.0.0.1", "", 0x251c_e681_282f_daa9),
    ];
    for (vip, node, expected) in vectors {
        assert_eq!(score(ip(vip), node), expected, "{vip} {node}");
    }
}

#[test]
fn owner_vectors() {
    let nodes = ["node-1", "node-2", "node-3"];
    #[rustfmt::skip]
    let vectors = [
        ("192.0.2.10", "node-1"),
        ("192.0.2.11", "node-2"),
        ("2001:db8::10", "node-3"),
    ];
    for (vip, expected) in vectors {
        assert_eq!(owner(ip(vip), nodes), Some(expected), "{vip}");
    }
}

#[test]
fn owner_ignores_order_and_duplicates() {
    let vip = ip("192.0.2.77");
    let sorted = owner(vip, ["a", "b", "c", "d"]);
    assert_eq!(owner(vip, ["d", "c", "b", "a"]), sorted);
    assert_eq!(owner(vip, ["c", "a", "d", "b", "a", "c"]), sorted);
    assert_eq!(owner(vip, []), None);
    assert_eq!(owner(vip, ["only"]), Some("only"));
}

#[test]
fn vips_spread_evenly_over_similar_names() {
    let nodes = ["node-1", "node-2", "node-3"];
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for i in 0..3000_u32 {
        let vip = std::net::Ipv4Addr::from(0x0a00_0000 + i).into();
        *counts.entry(owner(vip, nodes).unwrap()).or_default() += 1;
    }
    for (node, count) in &counts {
        assert!(
            (850..=1150).contains(count),
            "{node}: {count} of 3000 ({counts:?})"
        );
    }
}

#[test]
fn removing_a_node_moves_only_its_vips() {
    let before = ["n1", "n2", "n3", "n4", "n5"];
    let after = ["n1", "n2", "n4", "n5"];
    for i in 0..500_u32 {
        let vip = std::net::Ipv4Addr::from(0xc633_6400 + i).into();
        let old = owner(vip, before).unwrap();
        let new = owner(vip, after).unwrap();
        if old != "n3" {
            assert_eq!(old, new, "{vip}");
        }
    }
}

#[test]
#[ignore = "temporary perf probe"]
fn perf_probe() {
    use super::*;
    let mut world = World::new();
    let nodes: Vec<String> = (0..100).map(|i| format!("node-{i}")).collect();
    for n in &nodes { world = world.node(node(n)); }
    for i in 0..10_000u32 {
        let vip = std::net::Ipv4Addr::from(0x0a00_0000 + i).to_string();
        let name = format!("svc-{i}");
        let mut s = svc(&name, &[&vip]).tcp(80);
        if i % 2 == 0 { s = s.local(); }
        world = world.svc(s);
        let mut sl = slice(&name, &format!("{name}-x"), "IPv4");
        for e in 0..10u32 {
            sl = sl.ep(&std::net::Ipv4Addr::from(0x0b00_0000 + i * 16 + e).to_string(), &nodes[((i + e * 7) % 100) as usize], READY);
        }
        world = world.slice(sl);
    }
    let mut cfg = cfg();
    cfg.l2_enabled = std::env::var("NOL2").is_err();
    fn cpu() -> std::time::Duration {
        let mut ts = nix::libc::timespec { tv_sec: 0, tv_nsec: 0 };
        unsafe { nix::libc::clock_gettime(nix::libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
        std::time::Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
    }
    for _ in 0..5 {
        let t = cpu();
        let d = desired("node-3", &world.snapshot, &cfg);
        eprintln!("desired cpu: {:?} l2={} bgp={} svcs={}", cpu() - t, d.l2.len(), d.bgp.len(), d.services.len());
    }
    let t = std::time::Instant::now();
    let c = world.snapshot.clone();
    eprintln!("clone: {:?}", t.elapsed());
    let t = std::time::Instant::now();
    assert!(c == world.snapshot);
    eprintln!("eq: {:?}", t.elapsed());
}
