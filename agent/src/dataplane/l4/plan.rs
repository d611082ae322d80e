//! The pure half of the L4 writer: given the mirror of the maps and the desired services, the
//! ordered list of map operations that turns one into the other. No IO (route lookups come in
//! through a callback), so ordering and minimality are unit-tested without a kernel.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, SocketAddr},
};

use ipnet::IpNet;
use vipwire_common::l4::{
    BACKEND_ACTIVE, BACKEND_VETH_PEER, BackendValue, MAGLEV_CHUNK_SLOTS, SERVICE_AFFINITY,
    SERVICE_IDS, SERVICE_SOURCE_RANGES, ServiceValue, v4_mapped, vip_filter_bit,
};

use super::{BackendView, L4Error, ServiceView, ids::Ids};
use crate::{
    dataplane::{maglev, route::Delivery},
    model::{BackendState, DesiredService, Frontend},
};

/// One map write or delete, in the order the kernel must see them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    PutBackend {
        id: u32,
        value: BackendValue,
    },
    /// `slots` has exactly `MAGLEV_CHUNK_SLOTS` entries.
    PutChunk {
        service_id: u32,
        chunk: u32,
        slots: Vec<u32>,
    },
    PutRange {
        service_id: u32,
        range: IpNet,
    },
    /// Zero the per-CPU stats slot of an id being handed out.
    ZeroStats {
        service_id: u32,
    },
    PutService {
        frontend: Frontend,
        value: ServiceValue,
    },
    DelService {
        frontend: Frontend,
    },
    DelChunk {
        service_id: u32,
        chunk: u32,
    },
    DelRange {
        service_id: u32,
        range: IpNet,
    },
    DelBackend {
        id: u32,
    },
    /// The whole VIP filter (`vipwire_vip_filter_v1`), as the set bits.
    PutFilter {
        bits: BTreeSet<u32>,
    },
}

/// What the maps hold (as far as this agent wrote or read them back).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Mirror {
    pub services: BTreeMap<Frontend, ServiceValue>,
    pub chunks: BTreeMap<(u32, u32), Vec<u32>>,
    pub ranges: BTreeSet<(u32, IpNet)>,
    pub backends: BTreeMap<u32, BackendValue>,
    /// Bits set in the VIP filter.
    pub filter: BTreeSet<u32>,
}

impl Mirror {
    /// Follows one successful operation.
    pub fn record(&mut self, op: &Op) {
        match op {
            Op::PutBackend { id, value } => {
                self.backends.insert(*id, *value);
            }
            Op::PutChunk {
                service_id,
                chunk,
                slots,
            } => {
                self.chunks.insert((*service_id, *chunk), slots.clone());
            }
            Op::PutRange { service_id, range } => {
                self.ranges.insert((*service_id, *range));
            }
            Op::ZeroStats { .. } => {}
            Op::PutService { frontend, value } => {
                self.services.insert(*frontend, *value);
            }
            Op::DelService { frontend } => {
                self.services.remove(frontend);
            }
            Op::DelChunk { service_id, chunk } => {
                self.chunks.remove(&(*service_id, *chunk));
            }
            Op::DelRange { service_id, range } => {
                self.ranges.remove(&(*service_id, *range));
            }
            Op::DelBackend { id } => {
                self.backends.remove(id);
            }
            Op::PutFilter { bits } => self.filter.clone_from(bits),
        }
    }

    pub fn devices(&self) -> BTreeSet<u32> {
        self.backends
            .values()
            .map(|b| b.ifindex)
            .filter(|&i| i != 0)
            .collect()
    }

    /// The Maglev table of `service_id` as written (`size` slots).
    pub fn table(&self, service_id: u32, size: u32) -> Vec<u32> {
        let chunk_slots = MAGLEV_CHUNK_SLOTS as usize;
        let mut table = Vec::with_capacity(size as usize);
        for chunk in 0..chunks(size) {
            match self.chunks.get(&(service_id, chunk)) {
                Some(slots) => table.extend_from_slice(slots),
                None => table.extend(std::iter::repeat_n(0, chunk_slots)),
            }
        }
        table.truncate(size as usize);
        table
    }
}

/// The operations of one apply and what they mean.
#[derive(Clone, Debug, Default)]
pub struct Plan {
    pub ops: Vec<Op>,
    pub added: Vec<Frontend>,
    pub removed: Vec<Frontend>,
    /// Every device a backend is delivered through once the plan is executed.
    pub devices: BTreeSet<u32>,
    pub(super) desired: BTreeMap<Frontend, DesiredService>,
}

pub(super) struct Planner {
    configured_size: u32,
    mirror: Mirror,
    last: BTreeMap<Frontend, DesiredService>,
    service_ids: Ids,
    backend_ids: Ids,
    /// Backend ids by key, for every backend in the mirror.
    by_key: BTreeMap<SocketAddr, u32>,
    /// Recovered chunks or ranges may belong to no service: clean them once.
    sweep_orphans: bool,
}

impl Planner {
    pub(super) fn new(configured_size: u32, mirror: Mirror) -> Self {
        let mut service_ids = Ids::new(1, SERVICE_IDS - 1);
        for value in mirror.services.values() {
            service_ids.recover(value.id);
        }
        let mut backend_ids = Ids::new(1, u32::MAX);
        let mut by_key = BTreeMap::new();
        for (&id, value) in &mirror.backends {
            backend_ids.recover(id);
            by_key.entry(backend_key(value)).or_insert(id);
        }
        Self {
            configured_size,
            mirror,
            last: BTreeMap::new(),
            service_ids,
            backend_ids,
            by_key,
            sweep_orphans: true,
        }
    }

    /// Replaces the mirror with a fresh read of the maps (repairs entries changed behind the
    /// agent's back): the next plan diffs every frontend against it.
    pub(super) fn reload(&mut self, mirror: Mirror) {
        self.mirror = mirror;
        self.last.clear();
        self.sweep_orphans = true;
        self.by_key.clear();
        for value in self.mirror.services.values() {
            self.service_ids.mark(value.id);
        }
        for (&id, value) in &self.mirror.backends {
            self.backend_ids.mark(id);
            self.by_key.entry(backend_key(value)).or_insert(id);
        }
        self.sync_ids();
    }

    pub(super) fn mirror(&self) -> &Mirror {
        &self.mirror
    }

    pub(super) fn mirror_mut(&mut self) -> &mut Mirror {
        &mut self.mirror
    }

    pub(super) fn commit(&mut self, desired: BTreeMap<Frontend, DesiredService>) {
        self.last = desired;
        self.sweep_orphans = false;
        self.sync_ids();
    }

    /// After a failed execute: forget the desired state (replan everything against the
    /// mirror next time) and free ids that never reached the kernel.
    pub(super) fn abort(&mut self) {
        self.last.clear();
        self.sync_ids();
    }

    fn sync_ids(&mut self) {
        let services: BTreeSet<u32> = self.mirror.services.values().map(|v| v.id).collect();
        self.service_ids.retain(&services);
        let backends: BTreeSet<u32> = self.mirror.backends.keys().copied().collect();
        self.backend_ids.retain(&backends);
        self.by_key.retain(|_, id| backends.contains(id));
    }

    pub(super) fn plan(
        &mut self,
        desired: &BTreeMap<Frontend, DesiredService>,
        resolve: &mut dyn FnMut(IpAddr) -> Delivery,
    ) -> Result<Plan, L4Error> {
        let mut plan = Plan {
            desired: desired.clone(),
            ..Plan::default()
        };
        let changed: Vec<(&Frontend, &DesiredService)> = desired
            .iter()
            .filter(|(f, s)| self.last.get(f) != Some(s) || !self.mirror.services.contains_key(f))
            .collect();
        let removed: Vec<Frontend> = self
            .mirror
            .services
            .keys()
            .filter(|f| !desired.contains_key(f))
            .copied()
            .collect();

        // Backends: one entry per (address, port), active when any frontend lists it active.
        let mut wanted: BTreeMap<SocketAddr, bool> = BTreeMap::new();
        for service in desired.values() {
            for b in &service.backends {
                *wanted.entry(SocketAddr::new(b.addr, b.port)).or_default() |=
                    b.state == BackendState::Active;
            }
        }
        // Re-resolve the backends of changed frontends too: a pod IP reused by a new pod sits
        // behind a new veth.
        let refresh: BTreeSet<SocketAddr> = changed
            .iter()
            .flat_map(|(_, s)| s.backends.iter().map(|b| SocketAddr::new(b.addr, b.port)))
            .collect();
        let mut resolved: BTreeMap<IpAddr, Delivery> = BTreeMap::new();
        for (&key, &active) in &wanted {
            let known = self.by_key.get(&key).copied();
            let id = match known {
                Some(id) => id,
                None => self
                    .backend_ids
                    .allocate()
                    .ok_or(L4Error::IdsExhausted { kind: "backend" })?,
            };
            self.by_key.insert(key, id);
            let current = self.mirror.backends.get(&id);
            let delivery = match current {
                Some(value) if !refresh.contains(&key) => Delivery {
                    ifindex: value.ifindex,
                    veth: value.flags & BACKEND_VETH_PEER != 0,
                },
                _ => *resolved
                    .entry(key.ip())
                    .or_insert_with(|| resolve(key.ip())),
            };
            let value = backend_value(key, active, delivery);
            if current != Some(&value) {
                plan.ops.push(Op::PutBackend { id, value });
            }
            if value.ifindex != 0 {
                plan.devices.insert(value.ifindex);
            }
        }

        // The XDP program looks at a packet only when its destination's filter bit is set:
        // set new VIPs' bits before their services exist, clear bits only after the last
        // service of a VIP is gone.
        let wanted_bits: BTreeSet<u32> = desired
            .keys()
            .map(|f| vip_filter_bit(&addr16(f.vip)))
            .collect();
        if !wanted_bits.is_subset(&self.mirror.filter) {
            plan.ops.push(Op::PutFilter {
                bits: self.mirror.filter.union(&wanted_bits).copied().collect(),
            });
        }

        let mut live_ids: BTreeSet<u32> = BTreeSet::new();
        for (frontend, service) in changed {
            let id = match self.mirror.services.get(frontend) {
                Some(value) => value.id,
                None => {
                    let id = self
                        .service_ids
                        .allocate()
                        .ok_or(L4Error::IdsExhausted { kind: "service" })?;
                    plan.ops.push(Op::ZeroStats { service_id: id });
                    plan.added.push(*frontend);
                    id
                }
            };
            live_ids.insert(id);
            self.plan_service(&mut plan, *frontend, id, service);
        }

        for frontend in &removed {
            let Some(value) = self.mirror.services.get(frontend) else {
                continue;
            };
            plan.ops.push(Op::DelService {
                frontend: *frontend,
            });
            plan.removed.push(*frontend);
            self.delete_tables(&mut plan, value.id, 0);
        }

        if self.sweep_orphans {
            // Ids of removed services are already cleaned above: not orphans.
            let owned: BTreeSet<u32> = self
                .mirror
                .services
                .values()
                .map(|v| v.id)
                .chain(live_ids)
                .collect();
            let orphans: BTreeSet<u32> = self
                .mirror
                .chunks
                .keys()
                .map(|&(id, _)| id)
                .chain(self.mirror.ranges.iter().map(|&(id, _)| id))
                .filter(|id| !owned.contains(id))
                .collect();
            for id in orphans {
                self.delete_tables(&mut plan, id, 0);
            }
        }

        if !self.mirror.filter.is_subset(&wanted_bits) {
            plan.ops.push(Op::PutFilter { bits: wanted_bits });
        }
        for (&id, value) in &self.mirror.backends {
            let key = backend_key(value);
            // Unwanted, or a second id for the same key (maps written by someone else).
            if !wanted.contains_key(&key) || self.by_key.get(&key) != Some(&id) {
                plan.ops.push(Op::DelBackend { id });
            }
        }
        Ok(plan)
    }

    /// Chunks and ranges first, then the service entry, then what the new entry no longer
    /// reaches (chunks past a shrunk table, ranges no longer allowed).
    fn plan_service(&self, plan: &mut Plan, frontend: Frontend, id: u32, service: &DesiredService) {
        let active: Vec<(SocketAddr, u32)> = service
            .backends
            .iter()
            .filter(|b| b.state == BackendState::Active)
            .filter_map(|b| {
                let key = SocketAddr::new(b.addr, b.port);
                self.by_key.get(&key).map(|&id| (key, id))
            })
            .collect();
        let size = if active.is_empty() {
            0
        } else {
            maglev::table_size(self.configured_size, active.len())
        };
        let table = maglev::populate(size, &active);
        let chunk_slots = MAGLEV_CHUNK_SLOTS as usize;
        for chunk in 0..chunks(size) {
            let start = chunk as usize * chunk_slots;
            let mut slots = table[start..(start + chunk_slots).min(table.len())].to_vec();
            slots.resize(chunk_slots, 0);
            if self.mirror.chunks.get(&(id, chunk)) != Some(&slots) {
                plan.ops.push(Op::PutChunk {
                    service_id: id,
                    chunk,
                    slots,
                });
            }
        }
        let ranges: BTreeSet<IpNet> = service
            .source_ranges
            .iter()
            .flatten()
            .filter(|r| r.addr().is_ipv4() == frontend.vip.is_ipv4())
            .map(IpNet::trunc)
            .collect();
        for &range in &ranges {
            if !self.mirror.ranges.contains(&(id, range)) {
                plan.ops.push(Op::PutRange {
                    service_id: id,
                    range,
                });
            }
        }
        let mut flags = 0;
        let mut affinity_timeout_s = 0;
        if let Some(timeout) = service.session_affinity {
            flags |= SERVICE_AFFINITY;
            affinity_timeout_s = u32::try_from(timeout.as_secs()).unwrap_or(u32::MAX).max(1);
        }
        if service.source_ranges.is_some() {
            flags |= SERVICE_SOURCE_RANGES;
        }
        let value = ServiceValue {
            id,
            flags,
            maglev_size: size,
            affinity_timeout_s,
        };
        if self.mirror.services.get(&frontend) != Some(&value) {
            plan.ops.push(Op::PutService { frontend, value });
        }
        for (&(service_id, chunk), _) in
            self.mirror.chunks.range((id, chunks(size))..(id, u32::MAX))
        {
            plan.ops.push(Op::DelChunk { service_id, chunk });
        }
        for &(service_id, range) in self.mirror.ranges.range(range_bounds(id)) {
            if !ranges.contains(&range) {
                plan.ops.push(Op::DelRange { service_id, range });
            }
        }
    }

    /// Deletes the chunks from `from_chunk` on and every range of `id`.
    fn delete_tables(&self, plan: &mut Plan, id: u32, from_chunk: u32) {
        for (&(service_id, chunk), _) in self.mirror.chunks.range((id, from_chunk)..=(id, u32::MAX))
        {
            plan.ops.push(Op::DelChunk { service_id, chunk });
        }
        for &(service_id, range) in self.mirror.ranges.range(range_bounds(id)) {
            plan.ops.push(Op::DelRange { service_id, range });
        }
    }

    pub(super) fn view(&self) -> Vec<ServiceView> {
        let mut views = Vec::new();
        for (frontend, value) in &self.mirror.services {
            let backends = match self.last.get(frontend) {
                Some(service) => service
                    .backends
                    .iter()
                    .filter_map(|b| {
                        let addr = SocketAddr::new(b.addr, b.port);
                        let id = *self.by_key.get(&addr)?;
                        let written = self.mirror.backends.get(&id)?;
                        Some(BackendView {
                            addr,
                            id,
                            active: b.state == BackendState::Active,
                            ifindex: written.ifindex,
                            veth: written.flags & BACKEND_VETH_PEER != 0,
                        })
                    })
                    .collect(),
                None => Vec::new(),
            };
            views.push(ServiceView {
                frontend: *frontend,
                service_id: value.id,
                maglev_size: value.maglev_size,
                backends,
            });
        }
        views
    }
}

fn chunks(size: u32) -> u32 {
    size.div_ceil(MAGLEV_CHUNK_SLOTS)
}

fn range_bounds(id: u32) -> std::ops::RangeInclusive<(u32, IpNet)> {
    let lowest = IpNet::V4(ipnet::Ipv4Net::default());
    let highest = IpNet::V6(ipnet::Ipv6Net::new_assert(
        std::net::Ipv6Addr::from(u128::MAX),
        128,
    ));
    (id, lowest)..=(id, highest)
}

fn backend_value(key: SocketAddr, active: bool, delivery: Delivery) -> BackendValue {
    let mut flags = 0;
    if active {
        flags |= BACKEND_ACTIVE;
    }
    if delivery.veth {
        flags |= BACKEND_VETH_PEER;
    }
    BackendValue {
        addr_be: addr16(key.ip()),
        port_be: key.port().to_be_bytes(),
        _pad: [0; 2],
        flags,
        ifindex: delivery.ifindex,
    }
}

/// The 16-byte form every L4 key and value uses.
pub fn addr16(addr: IpAddr) -> [u8; 16] {
    match addr {
        IpAddr::V4(v4) => v4_mapped(v4.octets()),
        IpAddr::V6(v6) => v6.octets(),
    }
}

/// The inverse of [`addr16`]: IPv4-mapped addresses come back as IPv4.
pub fn from_addr16(bytes: [u8; 16]) -> IpAddr {
    let v6 = std::net::Ipv6Addr::from(bytes);
    match v6.to_ipv4_mapped() {
        Some(v4) => IpAddr::V4(v4),
        None => IpAddr::V6(v6),
    }
}

fn backend_key(value: &BackendValue) -> SocketAddr {
    SocketAddr::new(
        from_addr16(value.addr_be),
        u16::from_be_bytes(value.port_be),
    )
}
