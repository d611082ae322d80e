//! The L4 writer against the real BPF object and real pinned maps: what it writes after
//! sequences of desired states, that a restarted writer recovers the same ids, writes
//! nothing and hands out no id that flows still name, and the TCX links of the delivery and
//! reply programs (pinned, taken over, cleaned). Backends sit behind host veths with /32
//! (/128) routes, as a CNI sets pods up, so the route and driver lookups are the real ones.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
    process::Command,
    sync::Arc,
};

use aya::maps::{Array, HashMap, Map, MapData};
use testkit::{agent::BpffsDir, netlab::HostVeth, tools::require_root};
use vipwire::{
    dataplane::{self, loader::Dataplane, paths::PinPaths},
    model::{Backend, BackendState, DesiredService, Frontend, Protocol, TargetPort, TrafficPolicy},
    snapshot::ObjectKey,
};
use vipwire_common::{
    l4::{
        BACKEND_ACTIVE, BACKEND_VETH_PEER, BackendValue, MaglevChunk, MaglevKey, ServiceKey,
        ServiceValue, backend_slot, v4_mapped,
    },
    maps,
};

/// Pod addresses unique to this test process (tests of other processes run in parallel).
fn pod(n: u8) -> IpAddr {
    let pid = std::process::id();
    IpAddr::from([10, 200 + (pid % 50) as u8, (pid / 50 % 250) as u8, n])
}

fn pod6(n: u8) -> IpAddr {
    let pid = std::process::id();
    format!("fd00:4c34:{:x}::{n}", pid & 0xffff)
        .parse()
        .unwrap()
}

fn ip(args: &[&str]) {
    let status = Command::new("ip").args(args).status().expect("running ip");
    assert!(status.success(), "ip {args:?}");
}

fn route_to(addr: IpAddr, dev: &str) {
    match addr {
        IpAddr::V4(a) => ip(&["route", "replace", &format!("{a}/32"), "dev", dev]),
        IpAddr::V6(a) => ip(&["-6", "route", "replace", &format!("{a}/128"), "dev", dev]),
    }
}

fn ifindex(name: &str) -> u32 {
    vipwire::dataplane::iface::lookup(name).unwrap().ifindex
}

fn frontend(vip: &str, port: u16) -> Frontend {
    Frontend {
        vip: vip.parse().unwrap(),
        port,
        protocol: Protocol::Tcp,
    }
}

fn service(backends: &[(IpAddr, BackendState)]) -> Arc<DesiredService> {
    let mut backends: Vec<Backend> = backends
        .iter()
        .map(|&(addr, state)| Backend {
            addr,
            port: 8080,
            state,
        })
        .collect();
    backends.sort();
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

fn open(dir: &BpffsDir) -> Dataplane {
    let mut plane = Dataplane::open(
        dataplane::bpf_object(),
        PinPaths::new(dir.path()),
        aya_log::Level::Warn,
    )
    .expect("loading the BPF object");
    assert!(plane.has_l4(), "the object has the L4 programs");
    plane.enable_l4(1021).expect("recovering the L4 state");
    plane
}

fn pinned(dir: &BpffsDir, name: &str) -> Map {
    let data = MapData::from_pin(dir.path().join(name)).expect("pinned map");
    Map::from_map_data(data).expect("typed map")
}

fn services(dir: &BpffsDir) -> BTreeMap<([u8; 16], u16), ServiceValue> {
    let map =
        HashMap::<_, ServiceKey, ServiceValue>::try_from(pinned(dir, maps::SERVICES)).unwrap();
    map.iter()
        .map(Result::unwrap)
        .map(|(k, v)| ((k.addr_be, u16::from_be_bytes(k.port_be)), v))
        .collect()
}

fn backends(dir: &BpffsDir) -> BTreeMap<u32, BackendValue> {
    let map = Array::<_, BackendValue>::try_from(pinned(dir, maps::BACKENDS)).unwrap();
    let mut held = BTreeMap::new();
    for (slot, value) in map.iter().map(Result::unwrap).enumerate() {
        if value.id != 0 {
            assert_eq!(backend_slot(value.id), slot as u32, "backend {}", value.id);
            held.insert(value.id, value);
        }
    }
    held
}

fn table(dir: &BpffsDir, service_id: u32, size: u32) -> Vec<u32> {
    let map = HashMap::<_, MaglevKey, MaglevChunk>::try_from(pinned(dir, maps::MAGLEV)).unwrap();
    let mut slots = Vec::new();
    for chunk in 0..size.div_ceil(1024) {
        let value = map.get(&MaglevKey { service_id, chunk }, 0).expect("chunk");
        slots.extend_from_slice(&value.backend_ids);
    }
    slots.truncate(size as usize);
    slots
}

fn chunk_count(dir: &BpffsDir) -> usize {
    let map = HashMap::<_, MaglevKey, MaglevChunk>::try_from(pinned(dir, maps::MAGLEV)).unwrap();
    map.keys().count()
}

fn id_of(backends: &BTreeMap<u32, BackendValue>, addr: IpAddr) -> u32 {
    let addr16 = match addr {
        IpAddr::V4(a) => v4_mapped(a.octets()),
        IpAddr::V6(a) => a.octets(),
    };
    *backends
        .iter()
        .find(|(_, b)| b.addr_be == addr16)
        .expect("backend written")
        .0
}

#[test]
fn writer_applies_deltas_recovers_ids_and_manages_reply_links() {
    require_root();
    let dir = BpffsDir::new("l4writer");
    let pod_a = HostVeth::new("vl4", "a");
    let pod_b = HostVeth::new("vl4", "b");
    let (a1, a2, b1, b6) = (pod(2), pod(3), pod(4), pod6(5));
    route_to(a1, pod_a.name());
    route_to(a2, pod_a.name());
    route_to(b1, pod_b.name());
    route_to(b6, pod_b.name());
    let (if_a, if_b) = (ifindex(pod_a.name()), ifindex(pod_b.name()));
    let web = frontend("192.0.2.80", 80);
    let web6 = frontend("2001:db8::80", 443);
    use BackendState::{Active, Draining};

    let mut plane = open(&dir);
    let desired = BTreeMap::from([
        (web, service(&[(a1, Active), (a2, Active), (b1, Active)])),
        (web6, service(&[(b6, Active)])),
    ]);
    let delta = plane.apply_l4(&desired).unwrap().expect("L4 enabled");
    assert_eq!(delta.added, [web, web6]);
    let svcs = services(&dir);
    assert_eq!(svcs.len(), 2);
    let web_value = svcs[&(v4_mapped([192, 0, 2, 80]), 80)];
    assert_eq!((web_value.maglev_size, web_value.flags), (1021, 0));
    let written = backends(&dir);
    assert_eq!(written.len(), 4);
    for b in written.values() {
        assert_eq!(b.flags, BACKEND_ACTIVE | BACKEND_VETH_PEER, "{b:?}");
        assert!([if_a, if_b].contains(&b.ifindex), "{b:?}");
        assert_eq!(u16::from_be_bytes(b.port_be), 8080);
    }
    let before = table(&dir, web_value.id, 1021);
    let ids: BTreeSet<u32> = before.iter().copied().collect();
    assert_eq!(ids.len(), 3, "three backends share the table");
    let links = dir.path().join("links");
    assert!(links.join(format!("tc_reply_if{if_a}")).exists());
    assert!(links.join(format!("tc_reply_if{if_b}")).exists());

    // a2 drains: it stays in BACKENDS without ACTIVE and leaves the table.
    let drained = BTreeMap::from([
        (web, service(&[(a1, Active), (a2, Draining), (b1, Active)])),
        (web6, service(&[(b6, Active)])),
    ]);
    plane.apply_l4(&drained).unwrap();
    let written = backends(&dir);
    let a2_id = id_of(&written, a2);
    assert_eq!(written[&a2_id].flags, BACKEND_VETH_PEER);
    let after = table(&dir, web_value.id, 1021);
    assert!(!after.contains(&a2_id));
    let moved = before
        .iter()
        .zip(&after)
        .filter(|(b, a)| b != a && **b != a2_id)
        .count();
    assert!(moved < 40, "{moved} slots of surviving backends moved");

    // A restarted agent over the same pins: same ids, nothing written, links taken over.
    let snapshot = (
        services(&dir),
        backends(&dir),
        table(&dir, web_value.id, 1021),
    );
    drop(plane);
    let mut plane = open(&dir);
    let delta = plane.apply_l4(&drained).unwrap().unwrap();
    assert_eq!(delta.ops, 0, "{delta:?}");
    assert!(delta.added.is_empty() && delta.removed.is_empty());
    assert_eq!(
        (
            services(&dir),
            backends(&dir),
            table(&dir, web_value.id, 1021)
        ),
        snapshot
    );

    // a2 goes, then web6: pod_b keeps b1, so its reply link stays; then the last of pod_a's.
    let fewer = BTreeMap::from([(web, service(&[(a1, Active), (b1, Active)]))]);
    let delta = plane.apply_l4(&fewer).unwrap().unwrap();
    assert_eq!(delta.removed, [web6]);
    assert_eq!(services(&dir).len(), 1);
    assert_eq!(backends(&dir).len(), 2);
    assert!(!backends(&dir).contains_key(&a2_id));
    let only_b = BTreeMap::from([(web, service(&[(b1, Active)]))]);
    plane.apply_l4(&only_b).unwrap();
    assert!(!links.join(format!("tc_reply_if{if_a}")).exists());
    assert!(links.join(format!("tc_reply_if{if_b}")).exists());

    // The pod's veth vanishes (pod deleted): its pinned link is cleaned up.
    drop(pod_b);
    plane.apply_l4(&only_b).unwrap();
    assert!(!links.join(format!("tc_reply_if{if_b}")).exists());

    // Nothing left: every L4 entry is gone, service then chunks then backends.
    let delta = plane.apply_l4(&BTreeMap::new()).unwrap().unwrap();
    assert_eq!(delta.removed, [web]);
    assert!(services(&dir).is_empty());
    assert!(backends(&dir).is_empty());
    assert_eq!(chunk_count(&dir), 0);
    plane.cleanup().expect("cleanup");
    assert!(!dir.path().exists());
}

#[test]
fn delivery_program_is_pinned_per_interface_and_taken_over() {
    require_root();
    let dir = BpffsDir::new("l4tc");
    let uplink = HostVeth::new("vl4", "u");
    let link = dir
        .path()
        .join("links")
        .join(format!("tc_deliver_{}", uplink.name()));
    let mut plane = open(&dir);
    plane.attach(uplink.name()).expect("attaching");
    assert!(link.exists());
    drop(plane);
    let mut plane = open(&dir);
    plane.attach(uplink.name()).expect("taking over");
    assert!(link.exists());
    // Unconfigured now: the next agent detaches it.
    drop(plane);
    let mut plane = open(&dir);
    plane.forget_other_interfaces().unwrap();
    assert!(!link.exists());
    plane.cleanup().unwrap();
}

/// Runs the loaded uplink program once (BPF_PROG_RUN, ingress `lo`): the verdict, the
/// backend id in the `XdpMeta` (0 when there is none) and the frame after it.
fn run_xdp(plane: &mut Dataplane, frame: &[u8]) -> (u32, u32, Vec<u8>) {
    use aya::programs::{TestRun, TestRunOptions, Xdp};
    let program: &mut Xdp = plane
        .ebpf_mut()
        .program_mut(vipwire_common::programs::XDP_UPLINK)
        .unwrap()
        .try_into()
        .unwrap();
    // Ingress on lo (ifindex 1).
    let ctx = testkit::bpf::xdp_md(frame.len(), 1);
    let mut out = vec![0u8; frame.len() + 256];
    let result = program
        .test_run(TestRunOptions {
            data_in: Some(frame),
            data_out: Some(&mut out),
            ctx_in: Some(&ctx),
            ..TestRunOptions::default()
        })
        .expect("BPF_PROG_RUN");
    out.truncate(result.data_size_out as usize);
    let magic = u32::from_ne_bytes(out[..4].try_into().unwrap());
    if magic == vipwire_common::l4::XDP_META_MAGIC {
        let backend = u32::from_ne_bytes(out[4..8].try_into().unwrap());
        let meta_len = size_of::<vipwire_common::l4::XdpMeta>();
        (result.return_value, backend, out[meta_len..].to_vec())
    } else {
        (result.return_value, 0, out)
    }
}

/// The destination address (IPv4) of a frame: Ethernet 14 + IPv4 offset 16.
fn dst4(frame: &[u8]) -> IpAddr {
    IpAddr::from(<[u8; 4]>::try_from(&frame[30..34]).unwrap())
}

#[test]
fn written_tables_steer_flows_and_keep_established_ones() {
    use testkit::l4packets::{Flow, TCP};
    require_root();
    const XDP_PASS: u32 = 2;
    let dir = BpffsDir::new("l4steer");
    let pod_a = HostVeth::new("vl4", "s");
    let (a1, a2) = (pod(12), pod(13));
    route_to(a1, pod_a.name());
    route_to(a2, pod_a.name());
    let web = frontend("192.0.2.81", 80);
    use BackendState::{Active, Draining};
    let mut plane = open(&dir);
    plane
        .apply_l4(&BTreeMap::from([(
            web,
            service(&[(a1, Active), (a2, Active)]),
        )]))
        .unwrap();
    let ids = backends(&dir);
    let flow = |sport| Flow {
        src: "198.51.100.9".parse().unwrap(),
        dst: web.vip,
        sport,
        dport: 80,
        proto: TCP,
    };
    // Find one flow per backend.
    let mut by_backend: BTreeMap<u32, u16> = BTreeMap::new();
    for sport in 40000..40100 {
        let (verdict, backend, frame) = run_xdp(&mut plane, &flow(sport).frame());
        assert_eq!(verdict, XDP_PASS);
        assert!(
            ids.contains_key(&backend),
            "steered to a written backend: {backend}"
        );
        assert_eq!(
            dst4(&frame),
            if backend == id_of(&ids, a1) { a1 } else { a2 }
        );
        by_backend.entry(backend).or_insert(sport);
    }
    assert_eq!(
        by_backend.len(),
        2,
        "Maglev spreads flows over both backends"
    );
    let (a1_id, a2_id) = (id_of(&ids, a1), id_of(&ids, a2));
    let a2_flow = by_backend[&a2_id];

    // a2 drains: its established flow stays, new flows all go to a1.
    plane
        .apply_l4(&BTreeMap::from([(
            web,
            service(&[(a1, Active), (a2, Draining)]),
        )]))
        .unwrap();
    assert_eq!(run_xdp(&mut plane, &flow(a2_flow).later_frame()).1, a2_id);
    for sport in 41000..41020 {
        assert_eq!(run_xdp(&mut plane, &flow(sport).frame()).1, a1_id);
    }
    // a2 is gone: its flow is re-balanced onto a1.
    plane
        .apply_l4(&BTreeMap::from([(web, service(&[(a1, Active)]))]))
        .unwrap();
    assert_eq!(run_xdp(&mut plane, &flow(a2_flow).later_frame()).1, a1_id);
    // No service: the VIP is not ours any more, the frame passes untouched.
    plane.apply_l4(&BTreeMap::new()).unwrap();
    let frame = flow(40000).frame();
    assert_eq!(run_xdp(&mut plane, &frame), (XDP_PASS, 0, frame));
    plane.cleanup().unwrap();
}

/// Ids freed just before a restart may still be named by conntrack and affinity entries:
/// a restarted agent must not hand them to another Service's pod, or an old flow (or an
/// affined client) would land there.
#[test]
fn a_restart_does_not_reuse_ids_that_flows_still_name() {
    use testkit::l4packets::{Flow, TCP};
    require_root();
    let dir = BpffsDir::new("l4reuse");
    let pods = HostVeth::new("vl4", "r");
    // Backend ids follow address order: a2, the one removed, gets the highest.
    let (a1, b1, a2, c1) = (pod(14), pod(15), pod(16), pod(17));
    for addr in [a1, b1, a2, c1] {
        route_to(addr, pods.name());
    }
    // Service ids follow frontend order: sticky, the one removed, gets the highest.
    let (web, sticky, other) = (
        frontend("192.0.2.82", 80),
        frontend("192.0.2.84", 80),
        frontend("192.0.2.85", 80),
    );
    let affine = |backends: &[(IpAddr, BackendState)]| {
        let mut s = DesiredService::clone(&service(backends));
        s.session_affinity = Some(std::time::Duration::from_secs(600));
        Arc::new(s)
    };
    let active = BackendState::Active;
    let flow = |dst: &Frontend, sport| Flow {
        src: "198.51.100.10".parse().unwrap(),
        dst: dst.vip,
        sport,
        dport: 80,
        proto: TCP,
    };

    let mut plane = open(&dir);
    plane
        .apply_l4(&BTreeMap::from([
            (web, service(&[(a1, active), (b1, active), (a2, active)])),
            (sticky, affine(&[(b1, active)])),
        ]))
        .unwrap();
    let ids = backends(&dir);
    let a2_id = id_of(&ids, a2);
    assert_eq!(a2_id, *ids.keys().max().unwrap());
    let sticky_id = services(&dir)[&(v4_mapped([192, 0, 2, 84]), 80)].id;
    assert_eq!(
        sticky_id,
        services(&dir).values().map(|v| v.id).max().unwrap()
    );
    // A flow to web pinned to a2, and the client affined to b1 through sticky.
    let a2_flow = (40000..40200)
        .find(|&sport| run_xdp(&mut plane, &flow(&web, sport).frame()).1 == a2_id)
        .expect("a flow on a2");
    assert_eq!(
        run_xdp(&mut plane, &flow(&sticky, 41000).frame()).1,
        id_of(&ids, b1)
    );

    // a2 and sticky go (b1 stays: web lists it), then the agent restarts.
    let kept = (web, service(&[(a1, active), (b1, active)]));
    plane.apply_l4(&BTreeMap::from([kept.clone()])).unwrap();
    drop(plane);
    let mut plane = open(&dir);
    plane
        .apply_l4(&BTreeMap::from([kept, (other, affine(&[(c1, active)]))]))
        .unwrap();
    let ids = backends(&dir);
    let c1_id = id_of(&ids, c1);
    let other_id = services(&dir)[&(v4_mapped([192, 0, 2, 85]), 80)].id;
    // The old flow is re-balanced onto web's pods; the client's first flow to other goes to
    // other's pod.
    let moved = run_xdp(&mut plane, &flow(&web, a2_flow).later_frame()).1;
    assert!(
        [id_of(&ids, a1), id_of(&ids, b1)].contains(&moved),
        "web's old flow went to backend {moved} (c1 is {c1_id})"
    );
    let affined = run_xdp(&mut plane, &flow(&other, 41001).frame()).1;
    assert_eq!(affined, c1_id, "other's new flow went to backend {affined}");
    assert_ne!(
        c1_id, a2_id,
        "a2's id, still in conntrack, went to another pod"
    );
    assert_ne!(other_id, sticky_id, "sticky's id went to another service");
    plane.cleanup().unwrap();
}

#[test]
fn a_full_backend_map_fails_one_apply_and_the_next_one_repairs_it() {
    require_root();
    let dir = BpffsDir::new("l4full");
    let pods = HostVeth::new("vl4", "f");
    let addrs: Vec<IpAddr> = (2..7).map(pod).collect();
    for &addr in &addrs {
        route_to(addr, pods.name());
    }
    use BackendState::{Active, Draining};
    let web = frontend("192.0.2.81", 80);
    // One more backend than the map holds; draining, so no Maglev table is written for them.
    let room = vipwire_common::l4::BACKENDS_MAX_ENTRIES as usize;
    let mut too_many = DesiredService::clone(&service(&[]));
    too_many.backends = (0..=room)
        .map(|n| Backend {
            addr: addrs[n % addrs.len()],
            port: 1 + (n / addrs.len()) as u16,
            state: Draining,
        })
        .collect();
    too_many.backends.sort();

    let mut plane = open(&dir);
    let err = plane
        .apply_l4(&BTreeMap::from([(web, Arc::new(too_many))]))
        .expect_err("more backends than the map holds");
    let chain = vipwire::error_chain(&err);
    assert!(chain.contains(maps::BACKENDS), "{chain}");
    assert!(
        services(&dir).is_empty(),
        "the service entry comes after its backends"
    );

    // The next apply reads back what the failed one left and writes exactly the new state.
    let small = BTreeMap::from([(web, service(&[(addrs[0], Active)]))]);
    let delta = plane.apply_l4(&small).unwrap().expect("L4 enabled");
    assert_eq!(delta.added, [web]);
    let written = backends(&dir);
    assert_eq!(written.len(), 1, "the failed apply's backends are gone");
    let id = id_of(&written, addrs[0]);
    let value = services(&dir)[&(v4_mapped([192, 0, 2, 81]), 80)];
    assert!(
        table(&dir, value.id, value.maglev_size)
            .iter()
            .all(|&slot| slot == id)
    );
    plane.cleanup().unwrap();
}
