//! Writes the L4 tables of an [`XdpHarness`] directly, the way the agent's writer would, so
//! BPF fixtures set up exactly the state a case needs.

use std::net::IpAddr;

use aya::maps::{Array, HashMap, LpmTrie, MapData, PerCpuArray, lpm_trie::Key};
use vipwire_common::{
    l4::{
        BACKEND_ACTIVE, BackendValue, CT_FORWARD, CT_REVERSE, CtKey, CtKey4, CtValue,
        MAGLEV_CHUNK_SLOTS, MaglevChunk, MaglevKey, SERVICE_AFFINITY, SERVICE_SOURCE_RANGES,
        ServiceKey, ServiceStats, ServiceValue, SourceRange, VipFilter, XDP_META_MAGIC, XdpMeta,
        backend_slot, is_v4_mapped, v4_mapped, vip_filter_bit,
    },
    maps,
};

use crate::{
    bpf::{LO_IFINDEX, Verdict, XdpHarness},
    l4packets::{SCTP, TCP, UDP},
};

/// An address as the L4 maps store it (IPv4-mapped for IPv4).
pub fn addr16(addr: IpAddr) -> [u8; 16] {
    match addr {
        IpAddr::V4(a) => v4_mapped(a.octets()),
        IpAddr::V6(a) => a.octets(),
    }
}

/// Adds frontend (vip, port, proto) → `value`, and the VIP's filter bit.
pub fn add_service(h: &mut XdpHarness, vip: IpAddr, port: u16, proto: u8, value: ServiceValue) {
    let key = ServiceKey {
        addr_be: addr16(vip),
        port_be: port.to_be_bytes(),
        proto,
        _pad: 0,
    };
    let mut services: HashMap<&mut MapData, ServiceKey, ServiceValue> =
        HashMap::try_from(h.map_mut(maps::SERVICES)).expect("services map");
    services.insert(key, value, 0).expect("insert service");
    let mut filter: Array<&mut MapData, VipFilter> =
        Array::try_from(h.map_mut(maps::VIP_FILTER_SECTION)).expect("VIP filter map");
    let mut bits = filter.get(&0, 0).expect("filter value");
    let bit = vip_filter_bit(&addr16(vip));
    bits.words[(bit / 64) as usize] |= 1 << (bit % 64);
    filter.set(0, bits, 0).expect("write VIP filter");
}

pub fn add_backend(h: &mut XdpHarness, id: u32, addr: IpAddr, port: u16, flags: u32) {
    let value = BackendValue {
        addr_be: addr16(addr),
        port_be: port.to_be_bytes(),
        _pad: [0; 2],
        flags,
        // Read only by the TC program (and copied into the XdpMeta): one per backend, so
        // that a fixture can tell whose it got.
        ifindex: 1000 + id,
        id,
    };
    backends_map(h)
        .set(backend_slot(id), value, 0)
        .expect("insert backend");
}

pub fn remove_backend(h: &mut XdpHarness, id: u32) {
    let mut backends = backends_map(h);
    let slot = backend_slot(id);
    let held = backends.get(&slot, 0).expect("backend slot");
    assert_eq!(held.id, id, "slot {slot} holds backend {id}");
    backends
        .set(slot, BackendValue::default(), 0)
        .expect("remove backend");
}

/// Backend `id`, if `vipwire_backends_v2` holds it.
pub fn backend(h: &mut XdpHarness, id: u32) -> Option<BackendValue> {
    let value = backends_map(h).get(&backend_slot(id), 0).ok()?;
    (id != 0 && value.id == id).then_some(value)
}

fn backends_map(h: &mut XdpHarness) -> Array<&mut MapData, BackendValue> {
    Array::try_from(h.map_mut(maps::BACKENDS)).expect("backends map")
}

/// Fills service `service_id`'s table of `size` slots with `slots[i % slots.len()]`.
pub fn fill_maglev(h: &mut XdpHarness, service_id: u32, size: u32, slots: &[u32]) {
    let mut maglev: HashMap<&mut MapData, MaglevKey, MaglevChunk> =
        HashMap::try_from(h.map_mut(maps::MAGLEV)).expect("maglev map");
    for chunk in 0..size.div_ceil(MAGLEV_CHUNK_SLOTS) {
        let mut value = MaglevChunk {
            backend_ids: [0; MAGLEV_CHUNK_SLOTS as usize],
        };
        for (i, id) in value.backend_ids.iter_mut().enumerate() {
            let slot = chunk * MAGLEV_CHUNK_SLOTS + i as u32;
            if slot < size {
                *id = slots[slot as usize % slots.len()];
            }
        }
        maglev
            .insert(MaglevKey { service_id, chunk }, value, 0)
            .expect("insert maglev chunk");
    }
}

/// Allows `addr/prefix` (prefix in the address's own family) to reach `service_id`.
pub fn allow_source(h: &mut XdpHarness, service_id: u32, addr: IpAddr, prefix: u32) {
    let bits = if addr.is_ipv4() { 96 + prefix } else { prefix };
    let key = Key::new(
        32 + bits,
        SourceRange {
            service_id_be: service_id.to_be_bytes(),
            addr_be: addr16(addr),
        },
    );
    let mut trie: LpmTrie<&mut MapData, SourceRange, u8> =
        LpmTrie::try_from(h.map_mut(maps::SOURCE_RANGES)).expect("source ranges map");
    trie.insert(&key, 1, 0).expect("insert source range");
}

/// The forward conntrack key of a client → VIP packet.
pub fn ct_forward(src: IpAddr, dst: IpAddr, sport: u16, dport: u16, proto: u8) -> CtKey {
    CtKey {
        src_be: addr16(src),
        dst_be: addr16(dst),
        sport_be: sport.to_be_bytes(),
        dport_be: dport.to_be_bytes(),
        proto,
        dir: CT_FORWARD,
        _pad: [0; 2],
    }
}

/// The reverse conntrack key of a pod → client reply.
pub fn ct_reverse(src: IpAddr, dst: IpAddr, sport: u16, dport: u16, proto: u8) -> CtKey {
    CtKey {
        dir: CT_REVERSE,
        ..ct_forward(src, dst, sport, dport, proto)
    }
}

/// The conntrack entry of `key`, from `vipwire_conntrack4_v1` when both its addresses are
/// IPv4(-mapped), as the programs keep IPv4 flows, else from `vipwire_conntrack_v1`.
pub fn conntrack(h: &mut XdpHarness, key: &CtKey) -> Option<CtValue> {
    match ipv4_key(key) {
        Some(key4) => conntrack4_map(h).get(&key4, 0).ok(),
        None => conntrack6_map(h).get(key, 0).ok(),
    }
}

pub fn remove_conntrack(h: &mut XdpHarness, key: &CtKey) {
    match ipv4_key(key) {
        Some(key4) => conntrack4_map(h).remove(&key4),
        None => conntrack6_map(h).remove(key),
    }
    .expect("remove conntrack entry");
}

pub fn set_conntrack(h: &mut XdpHarness, key: CtKey, value: CtValue) {
    match ipv4_key(&key) {
        Some(key4) => conntrack4_map(h).insert(key4, value, 0),
        None => conntrack6_map(h).insert(key, value, 0),
    }
    .expect("insert conntrack");
}

fn ipv4_key(key: &CtKey) -> Option<CtKey4> {
    (is_v4_mapped(&key.src_be) && is_v4_mapped(&key.dst_be)).then(|| key.v4())
}

fn conntrack6_map(h: &mut XdpHarness) -> HashMap<&mut MapData, CtKey, CtValue> {
    HashMap::try_from(h.map_mut(maps::CONNTRACK)).expect("conntrack map")
}

fn conntrack4_map(h: &mut XdpHarness) -> HashMap<&mut MapData, CtKey4, CtValue> {
    HashMap::try_from(h.map_mut(maps::CONNTRACK4)).expect("IPv4 conntrack map")
}

/// Service `id`'s counters summed over CPUs.
pub fn service_stats(h: &mut XdpHarness, id: u32) -> ServiceStats {
    let stats: PerCpuArray<&mut MapData, ServiceStats> =
        PerCpuArray::try_from(h.map_mut(maps::SERVICE_STATS)).expect("service stats map");
    let mut sum = ServiceStats::default();
    for s in stats.get(&id, 0).expect("stats slot").iter() {
        sum.packets += s.packets;
        sum.bytes += s.bytes;
        sum.new_flows += s.new_flows;
        sum.replies += s.replies;
        sum.source_denied += s.source_denied;
        sum.no_backend += s.no_backend;
    }
    sum
}

fn parse_ip(s: &str) -> IpAddr {
    s.parse().expect("address literal")
}

pub const VIP4: &str = "203.0.113.10";
pub const VIP6: &str = "2001:db8:100::10";
pub const CLIENT4: &str = "198.51.100.7";
pub const CLIENT6: &str = "2001:db8:200::7";

/// The tables the L4 fixtures and fuzz run against: services 1-10 on VIP4/VIP6 (TCP 80,
/// UDP 53, SCTP 9 per family; 443 with source ranges 198.51.100.0/24; 8443 without a
/// backend; 7000 with ClientIP affinity; 7001 over two backends), backends 11-14 and 21-23.
pub fn fixture_tables() -> XdpHarness {
    let mut h = XdpHarness::load();
    let svc = |id, flags, size| ServiceValue {
        id,
        flags,
        maglev_size: size,
        affinity_timeout_s: 10800,
    };
    let backends = [
        (11, "10.244.0.11", 8080),
        (12, "10.244.0.12", 5353),
        (13, "10.244.0.13", 9999),
        (14, "10.244.0.14", 8080),
        (21, "fd00:244::11", 8080),
        (22, "fd00:244::12", 5353),
        (23, "fd00:244::13", 9999),
    ];
    for (id, addr, port) in backends {
        add_backend(&mut h, id, parse_ip(addr), port, BACKEND_ACTIVE);
    }
    let services = [
        (1, VIP4, 80, TCP, 0, 251, vec![11]),
        (2, VIP4, 53, UDP, 0, 251, vec![12]),
        (3, VIP4, 9, SCTP, 0, 251, vec![13]),
        (4, VIP6, 80, TCP, 0, 251, vec![21]),
        (5, VIP6, 53, UDP, 0, 251, vec![22]),
        (6, VIP6, 9, SCTP, 0, 251, vec![23]),
        (7, VIP4, 443, TCP, SERVICE_SOURCE_RANGES, 251, vec![11]),
        (8, VIP4, 8443, TCP, 0, 0, vec![]),
        (9, VIP4, 7000, TCP, SERVICE_AFFINITY, 251, vec![11, 14]),
        (10, VIP4, 7001, TCP, 0, 2039, vec![11, 14]),
    ];
    for (id, vip, port, proto, flags, size, slots) in services {
        add_service(&mut h, parse_ip(vip), port, proto, svc(id, flags, size));
        if !slots.is_empty() {
            fill_maglev(&mut h, id, size, &slots);
        }
    }
    allow_source(&mut h, 7, parse_ip("198.51.100.0"), 24);
    h
}

/// A steered frame comes back with the `XdpMeta` for the TC program in front of it (BPF_PROG_RUN
/// returns the metadata with the frame): checks it against the backends map and returns the
/// frame.
pub fn strip_meta<'a>(h: &mut XdpHarness, output: &'a [u8], name: &str) -> &'a [u8] {
    let len = size_of::<XdpMeta>();
    assert!(output.len() > len, "{name}: output too short for the meta");
    let field = |i: usize| u32::from_ne_bytes(output[i * 4..i * 4 + 4].try_into().expect("4"));
    assert_eq!(field(0), XDP_META_MAGIC, "{name}: XdpMeta magic");
    let backend_id = field(1);
    let backend = backend(h, backend_id)
        .unwrap_or_else(|| panic!("{name}: XdpMeta backend id {backend_id} not in the map"));
    assert_eq!(
        (field(2), field(3)),
        (backend.ifindex, backend.flags),
        "{name}: the XdpMeta's device and flags are the backend's"
    );
    &output[len..]
}

/// Runs a frame that must be steered; the rewritten frame without its meta.
pub fn steer(h: &mut XdpHarness, frame: &[u8]) -> Vec<u8> {
    let out = h.run(frame, LO_IFINDEX);
    assert_eq!(out.verdict, Verdict::Pass);
    strip_meta(h, &out.frame, "steered").to_vec()
}
