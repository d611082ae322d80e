//! Who announces (BGP) and who answers (L2): traffic policy, node state, config switches.

use super::*;
use crate::model::{ModelConfig, NodeState, Warning, l2};

const VIP: &str = "192.0.2.10";
const VIP6: &str = "2001:db8::10";
const NODES: [&str; 4] = ["n1", "n2", "n3", "n4"];

/// Who announces `vip`, over all of [`NODES`].
fn announcers(world: &World, vip: &str) -> Vec<&'static str> {
    NODES
        .into_iter()
        .filter(|n| world.on(n).bgp.contains(&ip(vip)))
        .collect()
}

/// Who answers ARP/NDP for `vip`, over all of [`NODES`].
fn answerers(world: &World, vip: &str) -> Vec<&'static str> {
    NODES
        .into_iter()
        .filter(|n| world.on(n).l2.contains(&ip(vip)))
        .collect()
}

#[test]
fn local_policy_follows_ready_endpoints() {
    #[rustfmt::skip]
    let cases: Vec<(&str, Slice, &[&str])> = vec![
        // (name, endpoints, nodes that announce)
        ("no endpoints", slice("web", "s", "IPv4"), &[]),
        ("one ready on n2", slice("web", "s", "IPv4").ep("10.0.0.1", "n2", READY), &["n2"]),
        ("ready on n1 and n3: ECMP", slice("web", "s", "IPv4")
            .ep("10.0.0.1", "n1", READY).ep("10.0.0.3", "n3", READY), &["n1", "n3"]),
        ("not ready on n1", slice("web", "s", "IPv4").ep("10.0.0.1", "n1", NOT_READY), &[]),
        ("only terminating on n1: withdraw", slice("web", "s", "IPv4")
            .ep("10.0.0.1", "n1", DRAINING).ep("10.0.0.2", "n1", TERMINATED), &[]),
        ("draining on n1, ready on n2", slice("web", "s", "IPv4")
            .ep("10.0.0.1", "n1", DRAINING).ep("10.0.0.2", "n2", READY), &["n2"]),
        ("ready endpoint without nodeName", slice("web", "s", "IPv4").ep("10.0.0.1", "", READY), &[]),
        ("ready endpoint on an unknown node", slice("web", "s", "IPv4").ep("10.0.0.1", "n9", READY), &[]),
    ];
    for (name, slice, expected) in cases {
        let world = World::new()
            .nodes(&NODES)
            .svc(svc("web", &[VIP]).tcp(80).local())
            .slice(slice);
        assert_eq!(announcers(&world, VIP), *expected, "{name}: bgp");
        let answering = answerers(&world, VIP);
        assert_eq!(
            answering.len(),
            usize::from(!expected.is_empty()),
            "{name}: one L2 owner"
        );
        assert!(
            answering.iter().all(|n| expected.contains(n)),
            "{name}: L2 owner has endpoints"
        );
    }
}

#[test]
fn cluster_policy_needs_a_live_endpoint_anywhere() {
    #[rustfmt::skip]
    let cases: Vec<(&str, Vec<Slice>, bool)> = vec![
        // (name, slices, every ready node announces)
        ("no slices", vec![], false),
        ("empty slice", vec![slice("web", "s", "IPv4")], false),
        ("one ready endpoint on n4", vec![slice("web", "s", "IPv4").ep("10.0.0.1", "n4", READY)], true),
        ("ready endpoint without nodeName", vec![slice("web", "s", "IPv4").ep("10.0.0.1", "", READY)], true),
        ("only terminating: withdraw", vec![slice("web", "s", "IPv4").ep("10.0.0.1", "n1", DRAINING)], false),
        ("only not ready", vec![slice("web", "s", "IPv4").ep("10.0.0.1", "n1", NOT_READY)], false),
        ("only IPv6 endpoints for an IPv4 VIP", vec![slice("web", "s", "IPv6").ep("fd00::1", "n1", READY)], false),
    ];
    for (name, slices, announced) in cases {
        let mut world = World::new().nodes(&NODES).svc(svc("web", &[VIP]).tcp(80));
        for slice in slices {
            world = world.slice(slice);
        }
        let expected: &[&str] = if announced { &NODES } else { &[] };
        assert_eq!(announcers(&world, VIP), expected, "{name}");
        assert_eq!(
            answerers(&world, VIP).len(),
            usize::from(announced),
            "{name}: L2"
        );
    }
}

#[test]
fn node_state_gates_ownership() {
    const EXCLUDE: &str = "node.kubernetes.io/exclude-from-external-load-balancers";
    #[rustfmt::skip]
    let cases: Vec<(&str, Option<NodeB>, NodeState)> = vec![
        ("Ready", Some(node("n1")), NodeState::Eligible),
        ("Ready=False", Some(node("n1").ready("False")), NodeState::NotReady),
        ("Ready=Unknown (node lost)", Some(node("n1").ready("Unknown")), NodeState::NotReady),
        ("no status yet", Some(node("n1").no_status()), NodeState::NotReady),
        ("cordoned", Some(node("n1").cordoned()), NodeState::Cordoned),
        ("not ready and cordoned", Some(node("n1").cordoned().ready("False")), NodeState::NotReady),
        ("excluded by label", Some(node("n1").label(EXCLUDE)), NodeState::Excluded),
        ("other labels are fine", Some(node("n1").label("node-role.kubernetes.io/edge")), NodeState::Eligible),
        ("no Node object", None, NodeState::Missing),
    ];
    for policy in ["Local", "Cluster"] {
        for (name, n1, state) in &cases {
            let mut world = World::new()
                .svc(svc("web", &[VIP]).tcp(80).policy(policy))
                .slice(slice("web", "s", "IPv4").ep("10.0.0.1", "n1", READY));
            if let Some(n1) = n1 {
                world = world.node(NodeB(n1.0.clone()));
            }
            let d = world.on("n1");
            let eligible = *state == NodeState::Eligible;
            assert_eq!(d.node, *state, "{policy} {name}");
            assert_eq!(!d.bgp.is_empty(), eligible, "{policy} {name}: bgp");
            assert_eq!(!d.l2.is_empty(), eligible, "{policy} {name}: l2");
            // Flows that still arrive (ECMP convergence, established ones) keep their backend.
            assert_eq!(d.services.len(), 1, "{policy} {name}: frontends stay");
            let missing = d
                .warnings
                .contains(&Warning::NodeNotFound { node: "n1".into() });
            assert_eq!(
                missing,
                *state == NodeState::Missing,
                "{policy} {name}: warning"
            );
        }
    }
}

#[test]
fn cordoning_the_l2_owner_moves_the_vip_to_the_next_in_rank() {
    let base = World::new()
        .nodes(&NODES)
        .svc(svc("web", &[VIP]).tcp(80))
        .slice(slice("web", "s", "IPv4").ep("10.0.0.1", "n1", READY));
    let owner = l2::owner(ip(VIP), NODES).unwrap();
    assert_eq!(answerers(&base, VIP), [owner]);

    let cordoned = base.node(node(owner).cordoned());
    let rest = NODES.into_iter().filter(|n| *n != owner);
    let next = l2::owner(ip(VIP), rest).unwrap();
    assert_eq!(answerers(&cordoned, VIP), [next]);
    assert!(!announcers(&cordoned, VIP).contains(&owner));
}

#[test]
fn exactly_one_l2_owner_per_vip() {
    let vips: Vec<String> = (1..=60).map(|i| format!("198.51.100.{i}")).collect();
    let vip_refs: Vec<&str> = vips.iter().map(String::as_str).collect();
    let world = World::new()
        .nodes(&NODES)
        .svc(svc("web", &vip_refs).tcp(80))
        .slice(slice("web", "s", "IPv4").ep("10.0.0.1", "n1", READY));
    let per_node: Vec<_> = NODES.iter().map(|n| world.on(n).l2).collect();
    for vip in &vips {
        let owners = per_node.iter().filter(|l2| l2.contains(&ip(vip))).count();
        assert_eq!(owners, 1, "{vip}");
    }
    // The VIPs spread: every node owns some.
    assert!(per_node.iter().all(|l2| !l2.is_empty()), "{per_node:?}");
}

#[test]
fn config_switches() {
    let world = World::new()
        .nodes(&["n1"])
        .svc(svc("web", &[VIP]).tcp(80))
        .slice(slice("web", "s", "IPv4").ep("10.0.0.1", "n1", READY));
    #[rustfmt::skip]
    let cases = [
        ("both", true, true),
        ("L2 only (no bgp section)", true, false),
        ("BGP only (l2.enabled false)", false, true),
        ("neither", false, false),
    ];
    for (name, l2_enabled, bgp_enabled) in cases {
        let config = ModelConfig {
            l2_enabled,
            bgp_enabled,
            ..cfg()
        };
        let d = world.with("n1", &config);
        assert_eq!(!d.l2.is_empty(), l2_enabled, "{name}");
        assert_eq!(!d.bgp.is_empty(), bgp_enabled, "{name}");
        assert_eq!(
            d.services.len(),
            1,
            "{name}: steering does not depend on either"
        );
    }
}

#[test]
fn shared_vip_is_owned_when_any_service_attracts_it() {
    // `a` is Local with its endpoint on n1; `b` is Cluster with a live endpoint: every node.
    let with_b = |b_endpoint: Cond| {
        World::new()
            .nodes(&NODES)
            .svc(svc("a", &[VIP]).tcp(80).local())
            .svc(svc("b", &[VIP]).tcp(443))
            .slice(slice("a", "a", "IPv4").ep("10.0.0.1", "n1", READY))
            .slice(slice("b", "b", "IPv4").ep("10.0.0.2", "n2", b_endpoint))
    };
    assert_eq!(announcers(&with_b(READY), VIP), NODES);
    assert_eq!(answerers(&with_b(READY), VIP).len(), 1);
    // Once `b` has no live endpoint, only `a`'s node attracts the VIP.
    assert_eq!(announcers(&with_b(TERMINATED), VIP), ["n1"]);
    assert_eq!(answerers(&with_b(TERMINATED), VIP), ["n1"]);
}

#[test]
fn dual_stack_vips_are_owned_per_family() {
    let world = World::new()
        .nodes(&NODES)
        .svc(svc("web", &[VIP, VIP6]).tcp(80).local())
        .slice(slice("web", "v4", "IPv4").ep("10.0.0.1", "n1", READY))
        .slice(slice("web", "v6", "IPv6").ep("fd00::2", "n2", READY));
    assert_eq!(announcers(&world, VIP), ["n1"]);
    assert_eq!(announcers(&world, VIP6), ["n2"]);
    assert_eq!(answerers(&world, VIP), ["n1"]);
    assert_eq!(answerers(&world, VIP6), ["n2"]);
}

#[test]
fn deterministic_and_independent_of_insertion_order() {
    let forward = World::new()
        .nodes(&NODES)
        .svc(svc("a", &[VIP, "192.0.2.0"]).tcp(80).created(5))
        .svc(svc("b", &[VIP]).tcp(80).created(5))
        .slice(slice("a", "a", "IPv4").ep("10.0.0.1", "n1", READY))
        .slice(slice("b", "b", "IPv4").ep("10.0.0.2", "n1", READY));
    let backward = World::new()
        .slice(slice("b", "b", "IPv4").ep("10.0.0.2", "n1", READY))
        .slice(slice("a", "a", "IPv4").ep("10.0.0.1", "n1", READY))
        .svc(svc("b", &[VIP]).tcp(80).created(5))
        .svc(svc("a", &[VIP, "192.0.2.0"]).tcp(80).created(5))
        .nodes(&["n4", "n3", "n2", "n1"]);
    for n in NODES {
        assert_eq!(forward.on(n), backward.on(n), "{n}");
        assert_eq!(forward.on(n), forward.on(n), "{n}: same input, same output");
    }
    let warnings = forward.on("n1").warnings;
    let mut sorted = warnings.clone();
    sorted.sort();
    assert_eq!(warnings, sorted);
    assert_eq!(warnings.len(), 2, "{warnings:?}");
}
