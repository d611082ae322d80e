//! The planner against in-memory maps: ordering, minimal deltas, id stability.

mod fake;
mod random;

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use vipwire_common::l4::{
    BACKEND_ACTIVE, BACKEND_VETH_PEER, SERVICE_AFFINITY, SERVICE_SOURCE_RANGES,
};

use self::fake::{Fake, Maps};
use super::{Mirror, Op, ids::Referenced};
use crate::{
    model::{Backend, BackendState, DesiredService, Frontend, Protocol, TargetPort, TrafficPolicy},
    snapshot::ObjectKey,
};

fn frontend(vip: &str, port: u16) -> Frontend {
    Frontend {
        vip: vip.parse().unwrap(),
        port,
        protocol: Protocol::Tcp,
    }
}

fn backend(addr: &str, state: BackendState) -> Backend {
    Backend {
        addr: addr.parse().unwrap(),
        port: 8080,
        state,
    }
}

fn service(backends: Vec<Backend>) -> Arc<DesiredService> {
    Arc::new(DesiredService {
        service: ObjectKey::new("default", "web"),
        port_name: None,
        target_port: TargetPort::Number(8080),
        traffic_policy: TrafficPolicy::Local,
        session_affinity: None,
        source_ranges: None,
        backends,
    })
}

fn active(addrs: &[&str]) -> Vec<Backend> {
    addrs
        .iter()
        .map(|a| backend(a, BackendState::Active))
        .collect()
}

fn position(ops: &[Op], pred: impl Fn(&Op) -> bool) -> usize {
    ops.iter().position(pred).expect("op present")
}

#[test]
fn a_new_service_writes_backends_then_chunks_then_the_service() {
    let mut planner = Fake::new(1021, Mirror::default());
    let f = frontend("192.0.2.1", 80);
    let desired = BTreeMap::from([(f, service(active(&["10.0.0.2", "10.0.0.3"])))]);
    let ops = planner.apply(&desired);
    let last_backend = ops
        .iter()
        .rposition(|op| matches!(op, Op::PutBackend { .. }))
        .unwrap();
    let chunk = position(&ops, |op| matches!(op, Op::PutChunk { .. }));
    let stats = position(&ops, |op| matches!(op, Op::ZeroStats { .. }));
    let svc = position(&ops, |op| matches!(op, Op::PutService { .. }));
    assert!(
        last_backend < chunk && chunk < svc && stats < svc,
        "{ops:?}"
    );
    let mirror = planner.mirror();
    let value = mirror.services[&f];
    assert_eq!((value.id, value.maglev_size, value.flags), (1, 1021, 0));
    assert_eq!(mirror.backends.len(), 2);
    assert!(
        mirror
            .backends
            .values()
            .all(|b| b.flags == BACKEND_ACTIVE | BACKEND_VETH_PEER)
    );
    assert!(
        planner
            .maps
            .table(1, 1021)
            .iter()
            .all(|&id| id == 1 || id == 2)
    );
    // The same desired state again: nothing to do.
    assert!(planner.apply(&desired).is_empty());
}

#[test]
fn removing_a_service_deletes_service_then_chunks_then_backends() {
    let mut planner = Fake::new(251, Mirror::default());
    let f = frontend("192.0.2.1", 80);
    let mut desired = BTreeMap::from([(f, service(active(&["10.0.0.2"])))]);
    Arc::make_mut(desired.get_mut(&f).unwrap()).source_ranges =
        Some(vec!["10.1.0.0/16".parse().unwrap()]);
    planner.apply(&desired);
    let ops = planner.apply(&BTreeMap::new());
    let svc = position(&ops, |op| matches!(op, Op::DelService { .. }));
    let chunk = position(&ops, |op| matches!(op, Op::DelChunk { .. }));
    let range = position(&ops, |op| matches!(op, Op::DelRange { .. }));
    let backend = position(&ops, |op| matches!(op, Op::DelBackend { .. }));
    assert!(
        svc < chunk && svc < range && chunk < backend && range < backend,
        "{ops:?}"
    );
    assert_eq!(planner.mirror(), &Mirror::default());
}

#[test]
fn draining_backends_stay_without_the_active_flag_and_leave_the_table() {
    let mut planner = Fake::new(251, Mirror::default());
    let f = frontend("192.0.2.1", 80);
    planner.apply(&BTreeMap::from([(
        f,
        service(active(&["10.0.0.2", "10.0.0.3"])),
    )]));
    let ids = planner.mirror().backends.clone();
    let drained = vec![
        backend("10.0.0.2", BackendState::Active),
        backend("10.0.0.3", BackendState::Draining),
    ];
    let ops = planner.apply(&BTreeMap::from([(f, service(drained))]));
    let mirror = planner.mirror();
    assert_eq!(mirror.backends.len(), 2, "ids kept: {ids:?}");
    let id3 = *mirror
        .backends
        .iter()
        .find(|(_, b)| b.addr_be[15] == 3)
        .unwrap()
        .0;
    assert_eq!(mirror.backends[&id3].flags & BACKEND_ACTIVE, 0);
    assert!(!planner.maps.table(1, 251).contains(&id3));
    assert!(
        !ops.iter().any(|op| matches!(op, Op::PutService { .. })),
        "{ops:?}"
    );
    // Nothing active: size 0 first, then the chunks go.
    let none = vec![backend("10.0.0.2", BackendState::Draining)];
    let ops = planner.apply(&BTreeMap::from([(f, service(none))]));
    let svc = position(&ops, |op| matches!(op, Op::PutService { .. }));
    let chunk = position(&ops, |op| matches!(op, Op::DelChunk { .. }));
    assert!(svc < chunk);
    assert_eq!(planner.mirror().services[&f].maglev_size, 0);
    assert!(planner.mirror().chunks.is_empty());
}

#[test]
fn surviving_backends_keep_their_ids_and_almost_all_their_slots() {
    let mut planner = Fake::new(1021, Mirror::default());
    let f = frontend("192.0.2.1", 80);
    let addrs = ["10.0.0.2", "10.0.0.3", "10.0.0.4", "10.0.0.5"];
    planner.apply(&BTreeMap::from([(f, service(active(&addrs)))]));
    let before = planner.maps.table(1, 1021);
    let removed_id = *planner
        .mirror()
        .backends
        .iter()
        .find(|(_, b)| b.addr_be[15] == 4)
        .unwrap()
        .0;
    planner.apply(&BTreeMap::from([(
        f,
        service(active(&["10.0.0.2", "10.0.0.3", "10.0.0.5"])),
    )]));
    let after = planner.maps.table(1, 1021);
    let moved = before
        .iter()
        .zip(&after)
        .filter(|(b, a)| b != a && **b != removed_id)
        .count();
    assert!(moved < 30, "{moved} slots of surviving backends moved");
    assert!(!planner.mirror().backends.contains_key(&removed_id));
    // A backend coming back gets a new id, never the freed one.
    planner.apply(&BTreeMap::from([(f, service(active(&addrs)))]));
    assert!(!planner.mirror().backends.contains_key(&removed_id));
    assert_eq!(planner.mirror().backends.len(), 4);
}

#[test]
fn source_ranges_and_affinity_set_their_flags_and_fail_closed_when_empty() {
    let mut planner = Fake::new(251, Mirror::default());
    let f = frontend("192.0.2.1", 80);
    let mut svc = service(active(&["10.0.0.2"]));
    Arc::make_mut(&mut svc).session_affinity = Some(Duration::from_secs(10800));
    Arc::make_mut(&mut svc).source_ranges = Some(vec![
        "10.1.2.3/16".parse().unwrap(),
        "fd00::/8".parse().unwrap(),
    ]);
    planner.apply(&BTreeMap::from([(f, svc.clone())]));
    let value = planner.mirror().services[&f];
    assert_eq!(value.flags, SERVICE_AFFINITY | SERVICE_SOURCE_RANGES);
    assert_eq!(value.affinity_timeout_s, 10800);
    // Truncated to the network; the other family's range is not written.
    let ranges: Vec<_> = planner
        .mirror()
        .ranges
        .iter()
        .map(|(_, r)| r.to_string())
        .collect();
    assert_eq!(ranges, ["10.1.0.0/16"]);
    Arc::make_mut(&mut svc).source_ranges = Some(Vec::new());
    planner.apply(&BTreeMap::from([(f, svc)]));
    assert!(planner.mirror().ranges.is_empty());
    assert_eq!(
        planner.mirror().services[&f].flags & SERVICE_SOURCE_RANGES,
        SERVICE_SOURCE_RANGES
    );
}

#[test]
fn a_restarted_planner_over_the_same_maps_writes_nothing_and_keeps_ids() {
    let mut planner = Fake::new(1021, Mirror::default());
    let desired = BTreeMap::from([
        (
            frontend("192.0.2.1", 80),
            service(active(&["10.0.0.2", "10.0.0.3"])),
        ),
        (frontend("2001:db8::1", 443), service(active(&["fd00::2"]))),
        (frontend("192.0.2.1", 81), service(Vec::new())),
    ]);
    planner.apply(&desired);
    // Ids are handed out in frontend order; remove one to leave a gap.
    let mut fewer = desired.clone();
    fewer.remove(&frontend("192.0.2.1", 81));
    planner.apply(&fewer);
    let mirror = planner.mirror().clone();
    let mut restarted = Fake::over(1021, mirror.clone(), planner.maps.clone());
    assert!(restarted.apply(&fewer).is_empty());
    assert_eq!(restarted.mirror(), &mirror);
    // A new service after the restart does not get the freed id 3 back.
    let mut more = fewer.clone();
    more.insert(frontend("192.0.2.9", 80), service(active(&["10.0.0.9"])));
    restarted.apply(&more);
    assert_eq!(
        restarted.mirror().services[&frontend("192.0.2.9", 80)].id,
        4
    );
}

#[test]
fn a_restarted_planner_skips_ids_that_flows_still_name() {
    let mut planner = Fake::new(251, Mirror::default());
    let (web, gone) = (frontend("192.0.2.1", 80), frontend("192.0.2.2", 80));
    let desired = BTreeMap::from([
        (web, service(active(&["10.0.0.2"]))),
        (gone, service(active(&["10.0.0.3"]))),
    ]);
    planner.apply(&desired);
    // The newest service and backend (ids 2) go; conntrack and affinity still name them.
    let fewer = BTreeMap::from([(web, desired[&web].clone())]);
    planner.apply(&fewer);
    let mirror = planner.mirror().clone();
    let referenced = Referenced {
        service: 2,
        backend: 2,
    };
    let mut restarted = Fake::restarted(251, mirror, planner.maps.clone(), referenced);
    let mut more = fewer.clone();
    more.insert(frontend("192.0.2.9", 80), service(active(&["10.0.0.9"])));
    restarted.apply(&more);
    let mirror = restarted.mirror();
    assert_eq!(mirror.services[&frontend("192.0.2.9", 80)].id, 3);
    assert_eq!(mirror.backends.keys().copied().collect::<Vec<_>>(), [1, 3]);
}

#[test]
fn a_removal_cut_short_after_the_service_entry_leaves_no_orphans() {
    let mut planner = Fake::new(251, Mirror::default());
    let f = frontend("192.0.2.1", 80);
    let mut desired = BTreeMap::from([(f, service(active(&["10.0.0.2"])))]);
    Arc::make_mut(desired.get_mut(&f).unwrap()).source_ranges =
        Some(vec!["10.1.0.0/16".parse().unwrap()]);
    planner.apply(&desired);
    // The service entry goes (its id is free again), then the next write fails: its chunks
    // and ranges stay behind, owned by nothing.
    let plan = planner.plan(&BTreeMap::new(), None);
    let cut = position(&plan.ops, |op| matches!(op, Op::DelService { .. })) + 1;
    assert!(planner.execute(plan, cut).is_none());
    assert!(!planner.mirror().chunks.is_empty());
    // No re-read of the maps in between: the next apply alone must find them.
    planner.apply(&BTreeMap::new());
    assert_eq!(planner.mirror(), &Mirror::default());
}

#[test]
fn orphaned_chunks_and_ranges_are_swept_once() {
    let mut mirror = Mirror::default();
    mirror.chunks.insert((77, 0), 0);
    mirror.ranges.insert((77, "10.0.0.0/8".parse().unwrap()));
    let mut planner = Fake::new(251, mirror);
    let ops = planner.apply(&BTreeMap::new());
    assert_eq!(ops.len(), 2, "{ops:?}");
    assert!(!ops.iter().any(|op| matches!(op, Op::PutFilter { .. })));
    assert_eq!(planner.mirror(), &Mirror::default());
}

#[test]
fn only_changed_frontends_are_replanned() {
    let mut planner = Fake::new(251, Mirror::default());
    let mut desired: BTreeMap<_, _> = (1..=50u8)
        .map(|i| {
            (
                frontend(&format!("192.0.2.{i}"), 80),
                service(active(&[&format!("10.0.1.{i}")])),
            )
        })
        .collect();
    planner.apply(&desired);
    desired.insert(frontend("192.0.2.200", 80), service(active(&["10.0.2.1"])));
    let ops = planner.apply(&desired);
    // The VIP's filter bit, one backend, one chunk, stats, one service.
    assert_eq!(ops.len(), 5, "{ops:?}");
}

#[test]
fn vip_filter_bits_are_set_before_services_and_cleared_after() {
    let mut planner = Fake::new(251, Mirror::default());
    let (f1, f2) = (frontend("192.0.2.1", 80), frontend("192.0.2.1", 443));
    let desired = BTreeMap::from([(f1, service(active(&["10.0.0.2"])))]);
    let ops = planner.apply(&desired);
    let filter = position(&ops, |op| matches!(op, Op::PutFilter { .. }));
    let svc = position(&ops, |op| matches!(op, Op::PutService { .. }));
    assert!(filter < svc, "{ops:?}");
    assert_eq!(planner.mirror().filter.len(), 1);
    // A second port of the same VIP: same bit, no filter write.
    let both = BTreeMap::from([
        (f1, service(active(&["10.0.0.2"]))),
        (f2, service(Vec::new())),
    ]);
    let ops = planner.apply(&both);
    assert!(
        !ops.iter().any(|op| matches!(op, Op::PutFilter { .. })),
        "{ops:?}"
    );
    // One port left: the VIP still has a frontend, the bit stays.
    let ops = planner.apply(&BTreeMap::from([(f2, service(Vec::new()))]));
    assert!(
        !ops.iter().any(|op| matches!(op, Op::PutFilter { .. })),
        "{ops:?}"
    );
    let ops = planner.apply(&BTreeMap::new());
    let del = position(&ops, |op| matches!(op, Op::DelService { .. }));
    let filter = position(&ops, |op| matches!(op, Op::PutFilter { .. }));
    assert!(del < filter, "{ops:?}");
    assert!(planner.mirror().filter.is_empty());
}

#[test]
fn a_reload_repairs_entries_changed_behind_our_back() {
    let mut planner = Fake::new(251, Mirror::default());
    let f = frontend("192.0.2.1", 80);
    let desired = BTreeMap::from([(f, service(active(&["10.0.0.2", "10.0.0.3"])))]);
    planner.apply(&desired);
    let good = planner.mirror().clone();
    // Someone deleted a backend and zeroed the service's table size.
    let first = *good.backends.keys().next().unwrap();
    planner.maps.backends.remove(&first);
    planner.maps.services.get_mut(&f).unwrap().maglev_size = 0;
    let edited = planner.maps.read();
    assert_ne!(edited, good);
    planner.planner.reload(edited);
    let ops = planner.apply(&desired);
    // The lost backend comes back under a new id (its old one may still sit in conntrack
    // entries that were re-balanced meanwhile), so its slots are rewritten too.
    assert!(
        matches!(ops[0], Op::PutBackend { id, .. } if id != first),
        "{ops:?}"
    );
    assert!(
        ops.iter().any(|op| matches!(op, Op::PutService { .. })),
        "{ops:?}"
    );
    assert_eq!(planner.mirror().services[&f].maglev_size, 251);
    assert_eq!(planner.mirror().backends.len(), 2);
    assert!(planner.apply(&desired).is_empty());
}

#[test]
fn a_second_id_for_the_same_backend_is_removed() {
    let mut planner = Fake::new(251, Mirror::default());
    let f = frontend("192.0.2.1", 80);
    let desired = BTreeMap::from([(f, service(active(&["10.0.0.2"])))]);
    planner.apply(&desired);
    let mut maps: Maps = planner.maps.clone();
    let (&id, &value) = maps.backends.iter().next().unwrap();
    maps.backends.insert(id + 100, value);
    let mut restarted = Fake::over(251, maps.read(), maps);
    let ops = restarted.apply(&desired);
    assert_eq!(ops.len(), 1, "{ops:?}");
    assert_eq!(restarted.mirror().backends.len(), 1);
    assert!(
        restarted
            .maps
            .table(1, 251)
            .iter()
            .all(|&slot| slot == restarted.mirror().backends.keys().copied().next().unwrap())
    );
}
