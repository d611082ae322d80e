//! `Incremental` must produce exactly what `desired` produces, after every change of a random
//! sequence over a small universe where everything collides: shared VIPs and ports, slices that
//! move between Services, malformed fields, nodes that come and go.

use std::{collections::BTreeMap, sync::Arc};

use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::{Cond, DRAINING, NOT_READY, READY, TERMINATED, cfg, node, slice, svc};
use crate::{
    model::{Incremental, ModelConfig, Warning, desired},
    snapshot::{Publisher, Snapshot, Tracked},
    test_rng::Rng,
};

const SERVICES: [&str; 6] = ["a/s0", "a/s1", "a/s2", "b/s0", "b/s1", "b/s2"];
const VIPS: [&str; 6] = [
    "198.51.100.1",
    "198.51.100.2",
    "198.51.100.255",
    "2001:db8::1",
    "2001:db8::2",
    "not-an-ip",
];
const NODES: [&str; 3] = ["n1", "n2", "n3"];
const CONDITIONS: [Cond; 5] = [READY, READY, NOT_READY, DRAINING, TERMINATED];

fn random_service(rng: &mut Rng, key: &str) -> k8s_openapi::api::core::v1::Service {
    let vips: Vec<&str> = (0..rng.below(3)).map(|_| *rng.pick(&VIPS)).collect();
    let mut service = svc(key, &vips);
    for _ in 0..1 + rng.below(2) {
        let target = match rng.below(3) {
            0 => None,
            1 => Some(IntOrString::Int(8080)),
            _ => Some(IntOrString::String("web".into())),
        };
        let name = *rng.pick(&["", "http", "web"]);
        let port = *rng.pick(&[80, 443, 0]);
        let protocol = *rng.pick(&[None, Some("UDP"), Some("TCP")]);
        service = service.port(name, port, protocol, target);
    }
    if rng.chance(40) {
        service = service.local();
    }
    if rng.chance(60) {
        service = service.created(rng.below(3) as i64);
    }
    if rng.chance(10) {
        service = service.type_("ClusterIP");
    }
    if rng.chance(5) {
        service = service.class("other");
    }
    if rng.chance(5) {
        service = service.deleting();
    }
    if rng.chance(10) {
        service = service.ranges(&["10.0.0.0/8", "fd00::/8", "bogus"]);
    }
    if rng.chance(10) {
        service = service.affinity("ClientIP", Some(rng.below(3) as i32 * 50_000));
    }
    service.0
}

fn random_slice(rng: &mut Rng, name: &str) -> k8s_openapi::api::discovery::v1::EndpointSlice {
    let (namespace, _) = name.split_once('/').unwrap();
    let owner = rng.pick(&SERVICES);
    let owner = owner.split_once('/').unwrap().1;
    let family = *rng.pick(&["IPv4", "IPv6", "FQDN"]);
    let slice_name = name.split_once('/').unwrap().1;
    let mut s = slice(&format!("{namespace}/{owner}"), slice_name, family);
    if rng.chance(70) {
        let name: &&str = rng.pick(&["", "http", "web"]);
        s = s.port(name, 9000, None);
    }
    for i in 0..rng.below(4) {
        let addr = match (family, rng.below(8)) {
            (_, 0) => "garbage".to_owned(),
            ("IPv6", _) => format!("fd00::{}", i + 1),
            _ => format!("10.1.0.{}", i + 1),
        };
        let node = *rng.pick(&["n1", "n2", "n3", ""]);
        s = s.ep(&addr, node, *rng.pick(&CONDITIONS));
    }
    if rng.chance(5) {
        s = s.unlabeled();
    }
    s.0
}

fn step(rng: &mut Rng, snapshot: &Snapshot) -> Snapshot {
    let mut next = snapshot.clone();
    match rng.below(20) {
        0..=7 => {
            let key = *rng.pick(&SERVICES);
            if rng.chance(15) {
                let (ns, name) = key.split_once('/').unwrap();
                next.services
                    .remove(&crate::snapshot::ObjectKey::new(ns, name));
            } else {
                next.insert_service(random_service(rng, key));
            }
        }
        8..=16 => {
            let ns = *rng.pick(&["a", "b"]);
            let name = format!("{ns}/slice-{}", rng.below(6));
            if rng.chance(15) {
                let (ns, name) = name.split_once('/').unwrap();
                next.endpoint_slices
                    .remove(&crate::snapshot::ObjectKey::new(ns, name));
            } else {
                next.insert_endpoint_slice(random_slice(rng, &name));
            }
        }
        17..=18 => {
            let name = *rng.pick(&NODES);
            match rng.below(5) {
                0 => {
                    next.nodes.remove(name);
                }
                1 => {
                    next.insert_node(node(name).ready("False").0);
                }
                2 => {
                    next.insert_node(node(name).cordoned().0);
                }
                _ => {
                    next.insert_node(node(name).0);
                }
            }
        }
        _ => {
            // A relist: equal objects behind new pointers.
            for value in next.services.values_mut() {
                *value = Arc::new((**value).clone());
            }
            for value in next.endpoint_slices.values_mut() {
                *value = Arc::new((**value).clone());
            }
        }
    }
    next
}

/// What the compared states covered, so the test shows it reached the interesting cases.
#[derive(Default)]
struct Seen {
    l2: usize,
    bgp: usize,
    backends: usize,
    conflicts: usize,
    other_warnings: usize,
}

/// `next` published the way sources do: key by key, through a draft.
fn publish(publisher: &mut Publisher, next: &Snapshot) -> Arc<Snapshot> {
    fn edit<K: Ord + Clone, V>(
        mut map: Tracked<'_, K, V>,
        old: &BTreeMap<K, Arc<V>>,
        new: &BTreeMap<K, Arc<V>>,
    ) {
        for key in old.keys().filter(|k| !new.contains_key(*k)) {
            map.remove(key);
        }
        for (key, object) in new {
            map.insert(key.clone(), object.clone());
        }
    }
    let current = publisher.current().clone();
    let draft = publisher.draft();
    edit(draft.services(), &current.services, &next.services);
    edit(
        draft.endpoint_slices(),
        &current.endpoint_slices,
        &next.endpoint_slices,
    );
    edit(draft.nodes(), &current.nodes, &next.nodes);
    publisher
        .commit()
        .unwrap_or_else(|| publisher.current().clone())
}

/// `published`: snapshots come from a [`Publisher`] (the model reads their change sets), and
/// the model skips some of them, as the run loop does in a burst.
fn check(seed: u64, config: &ModelConfig, steps: usize, seen: &mut Seen, published: bool) {
    let mut rng = Rng(seed);
    let mut snapshot = Arc::new(Snapshot::default());
    let mut publisher = Publisher::new();
    let mut model = Incremental::new("n1", config.clone());
    let mut before = Arc::default();
    for n in 0..steps {
        let next = step(&mut rng, &snapshot);
        if !published {
            snapshot = Arc::new(next);
        } else {
            snapshot = publish(&mut publisher, &next);
            if n > 0 && rng.chance(25) {
                continue;
            }
        }
        let got = model.update(&snapshot).clone();
        let want = desired("n1", &snapshot, config);
        assert_eq!(
            *got, want,
            "seed {seed}, step {n}: incremental differs from desired"
        );
        // The change hint covers every frontend that changed (the L4 writer trusts it).
        let changes = model.take_changes();
        assert_eq!(changes.is_none(), n == 0, "seed {seed}, step {n}");
        if let Some(changes) = changes {
            let old: &crate::model::Desired = &before;
            // The run loop diffs the L2 maps over these VIPs only.
            let vips: std::collections::BTreeSet<_> = changes.iter().map(|f| f.vip).collect();
            let flipped = old.l2.symmetric_difference(&got.l2);
            for vip in flipped.chain(old.bgp.symmetric_difference(&got.bgp)) {
                assert!(
                    vips.contains(vip),
                    "seed {seed}, step {n}: {vip} not in the hint"
                );
            }
            for frontend in old.services.keys().chain(got.services.keys()) {
                if old.services.get(frontend) != got.services.get(frontend) {
                    assert!(
                        changes.contains(frontend),
                        "seed {seed}, step {n}: {frontend} changed but is not in the hint"
                    );
                }
            }
        }
        before = got.clone();
        seen.l2 += usize::from(!want.l2.is_empty());
        seen.bgp += usize::from(!want.bgp.is_empty());
        seen.backends += usize::from(want.services.values().any(|s| !s.backends.is_empty()));
        for warning in &want.warnings {
            match warning {
                Warning::FrontendConflict { .. } => seen.conflicts += 1,
                _ => seen.other_warnings += 1,
            }
        }
    }
}

#[test]
fn incremental_equals_desired_on_random_changes() {
    let mut seen = Seen::default();
    for seed in 1..=40 {
        check(seed * 0x9e37_79b9, &cfg(), 300, &mut seen, false);
        check(seed * 0x9e37_79b9 + 1, &cfg(), 300, &mut seen, true);
    }
    for (what, count) in [
        ("L2 owner", seen.l2),
        ("BGP announcements", seen.bgp),
        ("local backends", seen.backends),
        ("frontend conflicts", seen.conflicts),
        ("other warnings", seen.other_warnings),
    ] {
        assert!(
            count > 100,
            "only {count} states with {what}: the generator is too tame"
        );
    }
}

#[test]
fn incremental_equals_desired_with_l2_or_bgp_off_and_a_class() {
    let configs = [
        ModelConfig {
            l2_enabled: false,
            ..cfg()
        },
        ModelConfig {
            bgp_enabled: false,
            ..cfg()
        },
        ModelConfig {
            load_balancer_class: Some("other".into()),
            ..cfg()
        },
    ];
    for (i, config) in configs.iter().enumerate() {
        for seed in 1..=10 {
            check(
                seed * 7919 + i as u64,
                config,
                200,
                &mut Seen::default(),
                seed % 2 == 0,
            );
        }
    }
}

#[test]
fn an_unchanged_snapshot_is_free_and_the_first_one_is_complete() {
    let snapshot = Arc::new(
        super::World::new()
            .nodes(&["n1"])
            .svc(svc("web", &["198.51.100.1"]).tcp(80))
            .slice(slice("web", "web-1", "IPv4").ep("10.1.0.1", "n1", READY))
            .snapshot,
    );
    let mut model = Incremental::new("n1", cfg());
    let first = model.update(&snapshot).clone();
    assert_eq!(*first, desired("n1", &snapshot, &cfg()));
    assert!(!first.l2.is_empty());
    let again = model.update(&snapshot).clone();
    assert!(Arc::ptr_eq(&first, &again));
}
