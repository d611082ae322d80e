//! The L2 rendezvous hash: fixed vectors (computed by an independent implementation of the
//! documented definition), order independence, spread and minimal movement.

use std::collections::BTreeMap;

use super::ip;
use crate::model::l2::{is_owner, owner, score};

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
fn is_owner_agrees_with_owner() {
    let nodes = ["a", "b", "c", "node-1", "node-2", "node-10"];
    for i in 0..300_u32 {
        let vip = std::net::Ipv4Addr::from(0xcb00_7100 + i).into();
        let winner = owner(vip, nodes).unwrap();
        for node in nodes {
            assert_eq!(is_owner(vip, node, nodes), node == winner, "{vip} {node}");
        }
    }
}
