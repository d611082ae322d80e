//! The IO half of the L4 writer: reading the pinned maps back into a [`Mirror`] (and the ids
//! the flow maps name), and issuing one [`Op`] against the maps.

use std::{net::IpAddr, sync::Arc, time::Instant};

use aya::{
    Ebpf, Pod,
    maps::{
        Array, HashMap, MapData, MapError, PerCpuArray, PerCpuValues,
        lpm_trie::{Key, LpmTrie},
    },
    util::nr_cpus,
};
use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use vipwire_common::{
    l4::{
        AFFINITY_MAX_ENTRIES, AffinityKey, AffinityValue, BackendValue, CONNTRACK_MAX_ENTRIES,
        CtKey, CtKey4, CtValue, FRAGMENTS_MAX_ENTRIES, FragKey, FragValue, IPPROTO_SCTP,
        IPPROTO_TCP, IPPROTO_UDP, MaglevChunk, MaglevKey, ServiceKey, ServiceStats, ServiceValue,
        SourceRange, VipFilter, backend_slot, is_v4_mapped,
    },
    maps,
};

use super::{
    L4Error,
    ids::Referenced,
    mirror::{MaglevInput, Mirror, Op, addr16, fingerprint, from_addr16},
};
use crate::model::{Frontend, Protocol};

/// The L4 maps of a loaded object, opened once per apply.
pub(super) struct Maps<'a> {
    services: HashMap<&'a mut MapData, ServiceKey, ServiceValue>,
    maglev: HashMap<&'a mut MapData, MaglevKey, MaglevChunk>,
    backends: Array<&'a mut MapData, BackendValue>,
    ranges: LpmTrie<&'a mut MapData, SourceRange, u8>,
    stats: PerCpuArray<&'a mut MapData, ServiceStats>,
    filter: Array<&'a mut MapData, VipFilter>,
    /// The last table computed for a [`Op::PutChunk`]: the next chunk is usually of the same.
    table: Option<(Arc<MaglevInput>, Vec<u32>)>,
}

impl<'a> Maps<'a> {
    pub(super) fn open(ebpf: &'a mut Ebpf) -> Result<Self, L4Error> {
        let mut services = None;
        let mut maglev = None;
        let mut backends = None;
        let mut ranges = None;
        let mut stats = None;
        let mut filter = None;
        // One pass over the object's maps: several of them are borrowed mutably at once.
        for (name, map) in ebpf.maps_mut() {
            match name {
                maps::SERVICES => services = Some(map),
                maps::MAGLEV => maglev = Some(map),
                maps::BACKENDS => backends = Some(map),
                maps::SOURCE_RANGES => ranges = Some(map),
                maps::SERVICE_STATS => stats = Some(map),
                maps::VIP_FILTER_SECTION => filter = Some(map),
                _ => {}
            }
        }
        let need = |map: Option<_>, name| map.ok_or(L4Error::MissingMap(name));
        Ok(Self {
            services: HashMap::try_from(need(services, maps::SERVICES)?)
                .map_err(|e| map_error(maps::SERVICES, e))?,
            maglev: HashMap::try_from(need(maglev, maps::MAGLEV)?)
                .map_err(|e| map_error(maps::MAGLEV, e))?,
            backends: Array::try_from(need(backends, maps::BACKENDS)?)
                .map_err(|e| map_error(maps::BACKENDS, e))?,
            ranges: LpmTrie::try_from(need(ranges, maps::SOURCE_RANGES)?)
                .map_err(|e| map_error(maps::SOURCE_RANGES, e))?,
            stats: PerCpuArray::try_from(need(stats, maps::SERVICE_STATS)?)
                .map_err(|e| map_error(maps::SERVICE_STATS, e))?,
            filter: Array::try_from(need(filter, maps::VIP_FILTER)?)
                .map_err(|e| map_error(maps::VIP_FILTER, e))?,
            table: None,
        })
    }

    pub(super) fn apply(&mut self, op: &Op) -> Result<(), L4Error> {
        match op {
            Op::PutBackend { id, value } => self.put_backend(*id, value),
            Op::PutChunk {
                service_id,
                chunk,
                table,
                ..
            } => {
                let slots = match &self.table {
                    Some((input, slots)) if Arc::ptr_eq(input, table) => slots,
                    _ => &self.table.insert((table.clone(), table.table())).1,
                };
                let value = MaglevChunk {
                    backend_ids: MaglevInput::chunk(slots, *chunk),
                };
                self.maglev
                    .insert(maglev_key(*service_id, *chunk), value, 0)
                    .map_err(|e| map_error(maps::MAGLEV, e))
            }
            Op::PutRange { service_id, range } => self
                .ranges
                .insert(&range_key(*service_id, *range), 1, 0)
                .map_err(|e| map_error(maps::SOURCE_RANGES, e)),
            Op::ZeroStats { service_id } => {
                let cpus = nr_cpus().map_err(|(_, source)| L4Error::Cpus(source))?;
                let zeroed = PerCpuValues::try_from(vec![ServiceStats::default(); cpus])
                    .map_err(|e| L4Error::Cpus(std::io::Error::other(e)))?;
                self.stats
                    .set(*service_id, zeroed, 0)
                    .map_err(|e| map_error(maps::SERVICE_STATS, e))
            }
            Op::PutService { frontend, value } => self
                .services
                .insert(service_key(frontend), value, 0)
                .map_err(|e| map_error(maps::SERVICES, e)),
            Op::DelService { frontend } => {
                ignore_missing(self.services.remove(&service_key(frontend)))
                    .map_err(|e| map_error(maps::SERVICES, e))
            }
            Op::DelChunk { service_id, chunk } => {
                ignore_missing(self.maglev.remove(&maglev_key(*service_id, *chunk)))
                    .map_err(|e| map_error(maps::MAGLEV, e))
            }
            Op::DelRange { service_id, range } => {
                ignore_missing(self.ranges.remove(&range_key(*service_id, *range)))
                    .map_err(|e| map_error(maps::SOURCE_RANGES, e))
            }
            Op::DelBackend { id } => self.del_backend(*id),
            Op::PutFilter { bits } => {
                let mut value = VipFilter::EMPTY;
                for &bit in bits {
                    if let Some(word) = value.words.get_mut((bit / 64) as usize) {
                        *word |= 1 << (bit % 64);
                    }
                }
                self.filter
                    .set(0, value, 0)
                    .map_err(|e| map_error(maps::VIP_FILTER, e))
            }
        }
    }
}

impl Maps<'_> {
    /// Writes backend `id` into its slot. An array value is updated in place, not swapped as
    /// a hash entry is, and a program may read the slot while it is written: a backend new
    /// to the slot is written first without its id (a reader takes it for an empty slot),
    /// then with it, so that the id, read first, never stands beside a half-written address.
    /// A change to a backend already there rewrites its delivery fields only (its address and
    /// port are what its id stands for); a reader may then see them mixed, which only sends
    /// that packet through the TC program's FIB lookup.
    fn put_backend(&mut self, id: u32, value: &BackendValue) -> Result<(), L4Error> {
        let slot = backend_slot(id);
        let error = |e| map_error(maps::BACKENDS, e);
        if self.backends.get(&slot, 0).map_err(error)?.id != id {
            let unnamed = BackendValue { id: 0, ..*value };
            self.backends.set(slot, unnamed, 0).map_err(error)?;
        }
        self.backends
            .set(slot, BackendValue { id, ..*value }, 0)
            .map_err(error)
    }

    /// Clears backend `id`'s slot by its id alone (the rest as it was, for a program reading
    /// it meanwhile), if the slot still holds it.
    fn del_backend(&mut self, id: u32) -> Result<(), L4Error> {
        let slot = backend_slot(id);
        let error = |e| map_error(maps::BACKENDS, e);
        let held = self.backends.get(&slot, 0).map_err(error)?;
        if held.id != id {
            return Ok(());
        }
        self.backends
            .set(slot, BackendValue { id: 0, ..held }, 0)
            .map_err(error)
    }
}

/// Reads the L4 maps back. Entries this agent could not have written (unknown protocol) are
/// skipped: they are left alone rather than guessed at.
pub(super) fn read(ebpf: &mut Ebpf) -> Result<Mirror, L4Error> {
    let maps = Maps::open(ebpf)?;
    let mut mirror = Mirror::default();
    for item in maps.services.iter() {
        let (key, value) = item.map_err(|e| map_error(maps::SERVICES, e))?;
        if let Some(frontend) = frontend_of(&key) {
            mirror.services.insert(frontend, value);
        }
    }
    for item in maps.maglev.iter() {
        let (key, value) = item.map_err(|e| map_error(maps::MAGLEV, e))?;
        mirror
            .chunks
            .insert((key.service_id, key.chunk), fingerprint(&value.backend_ids));
    }
    for (slot, value) in maps.backends.iter().enumerate() {
        let value = value.map_err(|e| map_error(maps::BACKENDS, e))?;
        // An id in another's slot was not written by an agent: the programs never find it
        // there, and the planner must not take its slot for that id's.
        if value.id != 0 && backend_slot(value.id) as usize == slot {
            mirror.backends.insert(value.id, value);
        }
    }
    let filter = maps
        .filter
        .get(&0, 0)
        .map_err(|e| map_error(maps::VIP_FILTER, e))?;
    for (i, word) in filter.words.iter().enumerate() {
        for bit in 0..64 {
            if word & (1 << bit) != 0 {
                mirror.filter.insert(i as u32 * 64 + bit);
            }
        }
    }
    for key in maps.ranges.keys() {
        let key = key.map_err(|e| map_error(maps::SOURCE_RANGES, e))?;
        if let Some(range) = range_of(&key) {
            mirror.ranges.insert(range);
        }
    }
    Ok(mirror)
}

/// Copies the IPv4 entries of `vipwire_conntrack_v1` into `vipwire_conntrack4_v1` of the
/// loaded (not yet attached) object; returns their keys in the old map, for
/// [`forget_ipv4_flows`] once this build's programs run, and how many were copied. An entry
/// the new map has already (written by this build's program before) is newer and stays.
pub fn carry_ipv4_flows(ebpf: &mut Ebpf) -> Result<(Vec<CtKey>, usize), L4Error> {
    let mut flows = Vec::new();
    walk::<CtKey, CtValue>(
        ebpf,
        maps::CONNTRACK,
        CONNTRACK_MAX_ENTRIES,
        |key, value| {
            if is_v4_mapped(&key.src_be) && is_v4_mapped(&key.dst_be) {
                flows.push((*key, *value));
            }
        },
    )?;
    let mut map = conntrack_map::<CtKey4>(ebpf, maps::CONNTRACK4)?;
    // BPF_NOEXIST: refused for an entry the new map has (an LRU evicts rather than refuse
    // for want of room). A flow not copied is picked again.
    const NOEXIST: u64 = 1;
    let copied = flows
        .iter()
        .filter(|(key, value)| map.insert(key.v4(), value, NOEXIST).is_ok())
        .count();
    Ok((flows.into_iter().map(|(key, _)| key).collect(), copied))
}

/// Deletes the IPv4 flows [`carry_ipv4_flows`] copied from `vipwire_conntrack_v1`, once no
/// older program looks there for them: they would only take room from IPv6 flows; returns
/// how many were still there.
pub fn forget_ipv4_flows(ebpf: &mut Ebpf, keys: &[CtKey]) -> Result<usize, L4Error> {
    let mut map = conntrack_map::<CtKey>(ebpf, maps::CONNTRACK)?;
    Ok(keys.iter().filter(|key| map.remove(key).is_ok()).count())
}

fn conntrack_map<'a, K: Pod>(
    ebpf: &'a mut Ebpf,
    name: &'static str,
) -> Result<HashMap<&'a mut MapData, K, CtValue>, L4Error> {
    let map = ebpf.map_mut(name).ok_or(L4Error::MissingMap(name))?;
    HashMap::try_from(map).map_err(|e| map_error(name, e))
}

/// How many times its size a flow-map walk may step before it is cut off.
const WALK_LAPS: usize = 4;

/// The highest ids the flow maps name. The XDP program keeps adding entries meanwhile, but
/// only for backends in the maps, which recovery counts anyway (no agent writes them now).
pub(super) fn referenced(ebpf: &Ebpf) -> Result<Referenced, L4Error> {
    let started = Instant::now();
    let mut referenced = Referenced::default();
    walk::<CtKey, CtValue>(ebpf, maps::CONNTRACK, CONNTRACK_MAX_ENTRIES, |_, v| {
        referenced.note(v.service_id, v.backend_id);
    })?;
    walk::<CtKey4, CtValue>(ebpf, maps::CONNTRACK4, CONNTRACK_MAX_ENTRIES, |_, v| {
        referenced.note(v.service_id, v.backend_id);
    })?;
    walk::<AffinityKey, AffinityValue>(ebpf, maps::AFFINITY, AFFINITY_MAX_ENTRIES, |k, v| {
        referenced.note(k.service_id, v.backend_id);
    })?;
    walk::<FragKey, FragValue>(ebpf, maps::FRAGMENTS, FRAGMENTS_MAX_ENTRIES, |_, v| {
        referenced.note(v.service_id, v.backend_id);
    })?;
    tracing::debug!(
        service = referenced.service,
        backend = referenced.backend,
        ms = started.elapsed().as_millis() as u64,
        "highest ids the flow maps name"
    );
    Ok(referenced)
}

/// Calls `note` for each entry of the hash map `name`. A walk starts over when the key it
/// stands on goes between two steps, so under heavy churn it stops after [`WALK_LAPS`] times
/// the map's size. What it may miss then is what the LRU evicts first: an entry naming a
/// removed id has seen no packet since (a packet would have re-balanced and rewritten it).
fn walk<K: Pod, V: Pod>(
    ebpf: &Ebpf,
    name: &'static str,
    max_entries: u32,
    mut note: impl FnMut(&K, &V),
) -> Result<(), L4Error> {
    let map = ebpf.map(name).ok_or(L4Error::MissingMap(name))?;
    let map = HashMap::<_, K, V>::try_from(map).map_err(|e| map_error(name, e))?;
    let limit = max_entries as usize * WALK_LAPS;
    let mut steps = 0;
    for key in map.keys() {
        let key = key.map_err(|e| map_error(name, e))?;
        match map.get(&key, 0) {
            Ok(value) => note(&key, &value),
            // Evicted since the walk reached it.
            Err(MapError::KeyNotFound) => {}
            Err(e) => return Err(map_error(name, e)),
        }
        steps += 1;
        if steps == limit {
            tracing::warn!(
                map = name,
                steps,
                "map walk cut off: entries change too fast"
            );
            break;
        }
    }
    Ok(())
}

pub(super) fn service_key(frontend: &Frontend) -> ServiceKey {
    ServiceKey {
        addr_be: addr16(frontend.vip),
        port_be: frontend.port.to_be_bytes(),
        proto: frontend.protocol.ip_protocol(),
        _pad: 0,
    }
}

pub(super) fn frontend_of(key: &ServiceKey) -> Option<Frontend> {
    let protocol = match key.proto {
        IPPROTO_TCP => Protocol::Tcp,
        IPPROTO_UDP => Protocol::Udp,
        IPPROTO_SCTP => Protocol::Sctp,
        _ => return None,
    };
    Some(Frontend {
        vip: from_addr16(key.addr_be),
        port: u16::from_be_bytes(key.port_be),
        protocol,
    })
}

fn maglev_key(service_id: u32, chunk: u32) -> MaglevKey {
    MaglevKey { service_id, chunk }
}

/// The trie matches the service id's 32 bits, then the address; IPv4 ranges are IPv4-mapped,
/// so a /n covers 96 + n address bits.
fn range_key(service_id: u32, range: IpNet) -> Key<SourceRange> {
    let (addr, bits) = match range {
        IpNet::V4(net) => (IpAddr::V4(net.network()), 96 + u32::from(net.prefix_len())),
        IpNet::V6(net) => (IpAddr::V6(net.network()), u32::from(net.prefix_len())),
    };
    Key::new(
        32 + bits,
        SourceRange {
            service_id_be: service_id.to_be_bytes(),
            addr_be: addr16(addr),
        },
    )
}

fn range_of(key: &Key<SourceRange>) -> Option<(u32, IpNet)> {
    let data = key.data();
    let bits = key.prefix_len().checked_sub(32)?;
    let range = match from_addr16(data.addr_be) {
        IpAddr::V4(v4) if bits >= 96 => IpNet::V4(Ipv4Net::new(v4, (bits - 96) as u8).ok()?),
        addr => IpNet::V6(Ipv6Net::new(to_v6(addr), u8::try_from(bits).ok()?).ok()?),
    };
    Some((u32::from_be_bytes(data.service_id_be), range))
}

fn to_v6(addr: IpAddr) -> std::net::Ipv6Addr {
    match addr {
        IpAddr::V4(v4) => v4.to_ipv6_mapped(),
        IpAddr::V6(v6) => v6,
    }
}

/// A delete of an entry that is already gone reached the goal.
fn ignore_missing(result: Result<(), MapError>) -> Result<(), MapError> {
    match result {
        Err(MapError::KeyNotFound) => Ok(()),
        Err(MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::ENOENT) => Ok(()),
        other => other,
    }
}

fn map_error(name: &'static str, source: MapError) -> L4Error {
    L4Error::Map { name, source }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn range_keys_round_trip() {
        for text in [
            "10.0.0.0/8",
            "192.0.2.7/32",
            "0.0.0.0/0",
            "fd00::/64",
            "::/0",
        ] {
            let range: IpNet = text.parse().unwrap();
            assert_eq!(range_of(&range_key(42, range)), Some((42, range)), "{text}");
        }
        assert_eq!(
            range_key(1, "10.0.0.0/8".parse().unwrap()).prefix_len(),
            32 + 104
        );
    }

    #[test]
    fn service_keys_round_trip() {
        let frontend = Frontend {
            vip: "192.0.2.10".parse().unwrap(),
            port: 443,
            protocol: Protocol::Sctp,
        };
        assert_eq!(frontend_of(&service_key(&frontend)), Some(frontend));
        let key = service_key(&frontend);
        assert_eq!(key.addr_be[10..], [0xff, 0xff, 192, 0, 2, 10]);
        assert_eq!(key.port_be, [1, 187]);
    }
}
