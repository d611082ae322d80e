//! An agent started over the pins of an older build: the backends of `vipwire_backends_v1`
//! keep their ids in `vipwire_backends_v2` (the Maglev tables and flows name them), and the
//! IPv4 flows the older program tracked in `vipwire_conntrack_v1` move to
//! `vipwire_conntrack4_v1`, copied before the new programs take over and deleted from the old
//! map after; the old backends map loses its pin.

use std::time::Duration;

use aya::maps::{HashMap, Map, MapData};
use testkit::{
    NetLab,
    agent::{self, BpffsDir},
    l4packets::TCP,
    l4tables::ct_forward,
    tools,
};
use vipwire_common::{
    l4::{CONNTRACK_MAX_ENTRIES, CtKey, CtKey4, CtValue, v4_mapped},
    maps,
};

#[test]
fn an_upgrade_drops_retired_pins_and_carries_ipv4_flows_over() {
    let mut lab = NetLab::new();
    let (node, manifests) = agent::manifests_node(&mut lab);
    let bpffs = BpffsDir::new("upgrade");
    std::fs::create_dir_all(bpffs.path()).unwrap();

    // What an older build left: its backends map, and a conntrack map with an IPv4 and an
    // IPv6 flow in it.
    let retired = bpffs.path().join("vipwire_backends_v1");
    bpftool_create(&retired, "hash", 4, 28, 262_144);
    // Backend 77 (10.244.0.5:8080, active) as the older build wrote it, without its id.
    let mut old_backend = [0u8; 28];
    old_backend[..16].copy_from_slice(&v4_mapped([10, 244, 0, 5]));
    old_backend[16..18].copy_from_slice(&8080u16.to_be_bytes());
    old_backend[20..24].copy_from_slice(&1u32.to_ne_bytes());
    HashMap::<_, u32, [u8; 28]>::try_from(Map::HashMap(MapData::from_pin(&retired).unwrap()))
        .unwrap()
        .insert(77, old_backend, 0)
        .unwrap();
    let old_ct = bpffs.path().join(maps::CONNTRACK);
    bpftool_create(&old_ct, "lru_hash", 40, 32, CONNTRACK_MAX_ENTRIES);
    let flow4 = ct_forward(
        "198.51.100.7".parse().unwrap(),
        "203.0.113.10".parse().unwrap(),
        40000,
        80,
        TCP,
    );
    let flow6 = ct_forward(
        "2001:db8::7".parse().unwrap(),
        "2001:db8:100::10".parse().unwrap(),
        40000,
        80,
        TCP,
    );
    let value = |backend_id| CtValue {
        backend_id,
        service_id: 3,
        refresh: 1000,
        ..CtValue::default()
    };
    {
        let mut ct = conntrack(&old_ct);
        ct.insert(flow4, value(77), 0).unwrap();
        ct.insert(flow6, value(78), 0).unwrap();
    }

    let (mut agent, log) =
        agent::run_on_manifests(&node, &manifests, &bpffs, &lab.path("agent.log"));
    assert!(!retired.exists(), "the retired pin is removed; log:\n{log}");
    for (what, line) in [
        ("backends carried over", "carried=1"),
        ("recovered from the pinned maps", "backends=1"),
        ("IPv4 flows carried over", "flows=1"),
        ("IPv4 flows removed from vipwire_conntrack_v1", "flows=1"),
    ] {
        assert!(
            log.lines().any(|l| l.contains(what) && l.contains(line)),
            "{what}, {line}; log:\n{log}"
        );
    }
    let new_ct = bpffs.path().join(maps::CONNTRACK4);
    let carried = HashMap::<_, CtKey4, CtValue>::try_from(Map::LruHashMap(
        MapData::from_pin(&new_ct).expect("vipwire_conntrack4_v1 pinned"),
    ))
    .unwrap();
    assert_eq!(carried.get(&flow4.v4(), 0).unwrap(), value(77));
    assert_eq!(carried.keys().count(), 1, "only the IPv4 flow");
    let old = conntrack(&old_ct);
    assert_eq!(
        old.get(&flow6, 0).unwrap(),
        value(78),
        "the IPv6 flow stays where it was"
    );
    assert!(
        old.get(&flow4, 0).is_err(),
        "the IPv4 flow left the old map"
    );
    agent.stop(Duration::from_secs(5));

    // The next start finds the IPv4 map pinned: nothing to carry.
    let (mut agent, log) =
        agent::run_on_manifests(&node, &manifests, &bpffs, &lab.path("agent2.log"));
    assert!(!log.contains("carried over"), "log:\n{log}");
    agent.stop(Duration::from_secs(5));
}

fn conntrack(path: &std::path::Path) -> HashMap<MapData, CtKey, CtValue> {
    HashMap::try_from(Map::LruHashMap(
        MapData::from_pin(path).expect("pinned conntrack"),
    ))
    .unwrap()
}

fn bpftool_create(path: &std::path::Path, kind: &str, key: u32, value: u32, entries: u32) {
    let made = std::process::Command::new(tools::require("bpftool"))
        .args(["map", "create", path.to_str().unwrap(), "type", kind])
        .args(["key", &key.to_string(), "value", &value.to_string()])
        .args(["entries", &entries.to_string(), "name", "older_build"])
        .output()
        .expect("running bpftool");
    assert!(made.status.success(), "bpftool map create: {made:?}");
}
