//! The pure half of the L4 writer: given the mirror of the maps and the desired services, the
//! ordered list of map operations that turns one into the other. No IO (route lookups come in
//! through a callback), so ordering and minimality are unit-tested without a kernel.
//!
//! Cost: a plan looks only at the frontends it is told may have changed (the model knows), so
//! one EndpointSlice change costs the size of its Service, not of all Services. What is
//! shared between frontends is reference-counted: a backend entry lives while some frontend
//! lists it (active while one lists it active), a VIP filter bit while some frontend has the
//! VIP, the reply program on a device while some backend is delivered through it. A plan
//! without that hint, the first one and the one after a re-read of the maps walk everything
//! (and rebuild the counts from scratch).

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    hash::{DefaultHasher, Hash, Hasher},
    net::{IpAddr, SocketAddr},
    sync::Arc,
};

use vipwire_common::{
    l4::{
        BACKEND_ACTIVE, BACKEND_VETH_PEER, BACKENDS_MAX_ENTRIES, BackendValue, MAGLEV_CHUNK_SLOTS,
        SERVICE_IDS,
    },
    maps,
};

use super::{
    L4Error, ServiceView,
    counts::{Counts, TouchedIds, keys},
    ids::{Ids, Referenced},
    mirror::{Mirror, Op, addr16, backend_key},
    view::{Source, Views},
};
use crate::{
    dataplane::route::Delivery,
    model::{BackendState, DesiredService, Frontend, Services},
};

mod tables;

/// The operations of one apply and what they mean.
#[derive(Clone, Debug, Default)]
pub struct Plan {
    pub ops: Vec<Op>,
    pub added: Vec<Frontend>,
    pub removed: Vec<Frontend>,
    /// Devices of the backends this plan writes (the others' are [`Planner::devices`]).
    pub devices: BTreeSet<u32>,
    /// Bookkeeping for [`Planner::commit`].
    pub(super) book: Book,
}

/// What a plan changes in the planner's own state once it is executed.
#[derive(Clone, Debug, Default)]
pub(super) struct Book {
    /// Frontends planned from a new desired state (`None`: removed).
    frontends: Vec<(Frontend, Option<Written>)>,
    counts: TouchedIds,
}

/// What the planner keeps of a frontend it wrote: enough to tell whether its desired state
/// changed, to take back its counts and to show it, in a tenth of the desired state's size.
#[derive(Clone, Debug)]
pub(super) struct Written {
    /// [`digest`] of the desired state it was written from.
    pub digest: u64,
    /// Its backends, in the desired state's order: id, and whether listed active.
    pub backends: Box<[(u32, bool)]>,
}

/// Stands for a desired state in [`Written`]. Two different states share a digest with
/// probability 2^-64 (the change would then be missed until the next full resync).
fn digest(service: &DesiredService) -> u64 {
    let mut hasher = DefaultHasher::new();
    service.hash(&mut hasher);
    hasher.finish()
}

pub(super) struct Planner {
    configured_size: u32,
    mirror: Mirror,
    /// Every frontend as last written.
    last: BTreeMap<Frontend, Written>,
    /// The next plan walks every frontend (start, re-read of the maps, failed apply).
    full: bool,
    service_ids: Ids,
    backend_ids: Ids,
    /// Backend ids by key, for every backend in the mirror.
    by_key: HashMap<SocketAddr, u32>,
    /// Over the frontends of `last`.
    counts: Counts,
    /// Per host-side device: the mirror's backends delivered through it.
    devices: BTreeMap<u32, u32>,
    /// Recovered chunks or ranges may belong to no service: clean them once.
    sweep_orphans: bool,
    views: Views,
}

impl Planner {
    /// A planner over what the maps hold (`mirror`), handing out ids after those the flow
    /// maps still name (`referenced`).
    pub(super) fn new(configured_size: u32, mirror: Mirror, referenced: Referenced) -> Self {
        let mut service_ids = Ids::new(1, SERVICE_IDS - 1);
        for value in mirror.services.values() {
            service_ids.recover(value.id);
        }
        service_ids.recover_referenced(referenced.service);
        let mut backend_ids = Ids::new(1, u32::MAX).with_slots(BACKENDS_MAX_ENTRIES);
        for &id in mirror.backends.keys() {
            backend_ids.recover(id);
        }
        backend_ids.recover_referenced(referenced.backend);
        let mut planner = Self {
            configured_size,
            mirror: Mirror::default(),
            last: BTreeMap::new(),
            full: true,
            service_ids,
            backend_ids,
            by_key: HashMap::new(),
            counts: Counts::default(),
            devices: BTreeMap::new(),
            sweep_orphans: true,
            views: Views::default(),
        };
        planner.index(mirror);
        planner
    }

    /// Replaces the mirror with a fresh read of the maps (repairs entries changed behind the
    /// agent's back): the next plan diffs every frontend against it.
    pub(super) fn reload(&mut self, mirror: Mirror) {
        for value in mirror.services.values() {
            self.service_ids.mark(value.id);
        }
        for &id in mirror.backends.keys() {
            self.backend_ids.mark(id);
        }
        self.index(mirror);
        self.last.clear();
        self.full = true;
        self.sweep_orphans = true;
        self.views.invalidate();
        self.sync_ids();
    }

    /// Takes `mirror` and rebuilds what is derived from it.
    fn index(&mut self, mirror: Mirror) {
        self.by_key.clear();
        self.devices.clear();
        for (&id, value) in &mirror.backends {
            self.by_key.entry(backend_key(value)).or_insert(id);
            count_device(&mut self.devices, value.ifindex, true);
        }
        self.mirror = mirror;
    }

    pub(super) fn mirror(&self) -> &Mirror {
        &self.mirror
    }

    /// Host-side devices the mirror's backends are delivered through.
    pub(super) fn devices(&self) -> BTreeSet<u32> {
        self.devices.keys().copied().collect()
    }

    /// Follows one successful operation (the mirror, and what is derived from it).
    pub(super) fn record(&mut self, op: &Op) {
        match op {
            Op::PutBackend { id, value } => {
                if let Some(old) = self.mirror.backends.get(id) {
                    count_device(&mut self.devices, old.ifindex, false);
                    let moved = |v: &BackendValue| (v.ifindex, v.flags & BACKEND_VETH_PEER);
                    if moved(old) != moved(value) {
                        self.views.invalidate();
                    }
                }
                count_device(&mut self.devices, value.ifindex, true);
            }
            Op::DelBackend { id } => {
                if let Some(old) = self.mirror.backends.get(id) {
                    count_device(&mut self.devices, old.ifindex, false);
                    let key = backend_key(old);
                    if self.by_key.get(&key) == Some(id) {
                        self.by_key.remove(&key);
                    }
                    self.backend_ids.free(*id);
                }
            }
            Op::DelService { frontend } => {
                if let Some(value) = self.mirror.services.get(frontend) {
                    self.service_ids.free(value.id);
                }
            }
            _ => {}
        }
        self.mirror.record(op);
    }

    /// After every operation of `plan` succeeded.
    pub(super) fn commit(&mut self, plan: Plan) {
        let book = plan.book;
        if book.counts.full {
            // A full plan fills the mirror in key order, which leaves a BTreeMap's nodes half
            // empty (5.8 MiB for 100,000 backends); built again in bulk, they are full (3.4).
            dense(&mut self.mirror.backends);
            dense(&mut self.mirror.services);
        }
        self.counts.commit(book.counts);
        let written: Vec<Frontend> = book.frontends.iter().map(|(f, _)| *f).collect();
        for (frontend, service) in book.frontends {
            match service {
                Some(service) => self.last.insert(frontend, service),
                None => self.last.remove(&frontend),
            };
        }
        self.full = false;
        self.sweep_orphans = false;
        let source = Source {
            mirror: &self.mirror,
            last: &self.last,
        };
        self.views.update(written, &source);
    }

    /// After a failed execute: forget the desired state (replan everything against the
    /// mirror next time) and free ids that never reached the kernel.
    pub(super) fn abort(&mut self) {
        self.last.clear();
        self.full = true;
        // A service whose entry was deleted before its chunks or ranges failed to go: its id
        // is free again, so only the orphan sweep would find them.
        self.sweep_orphans = true;
        self.views.invalidate();
        self.sync_ids();
    }

    fn sync_ids(&mut self) {
        let services: BTreeSet<u32> = self.mirror.services.values().map(|v| v.id).collect();
        self.service_ids.retain(&services);
        let backends: BTreeSet<u32> = self.mirror.backends.keys().copied().collect();
        self.backend_ids.retain(&backends);
        self.by_key.retain(|_, id| backends.contains(id));
    }

    /// The operations that make the maps match `desired`. `changed` names every frontend
    /// whose desired state may differ from the one the last plan saw (a superset is fine);
    /// `None` compares them all.
    pub(super) fn plan(
        &mut self,
        desired: &Services,
        changed: Option<&BTreeSet<Frontend>>,
        resolve: &mut dyn FnMut(IpAddr) -> Delivery,
    ) -> Result<Plan, L4Error> {
        let full = self.full || changed.is_none();
        let candidates: BTreeSet<Frontend> = match changed {
            Some(changed) if !full => changed.clone(),
            _ => desired
                .keys()
                .chain(self.last.keys())
                .chain(self.mirror.services.keys())
                .copied()
                .collect(),
        };
        let mut updated: Vec<(Frontend, &DesiredService, u64)> = Vec::new();
        let mut removed: Vec<Frontend> = Vec::new();
        for frontend in candidates {
            match desired.get(&frontend) {
                Some(service) => {
                    let digest = digest(service);
                    if self.last.get(&frontend).map(|w| w.digest) != Some(digest)
                        || !self.mirror.services.contains_key(&frontend)
                    {
                        updated.push((frontend, service, digest));
                    }
                }
                None => {
                    if self.last.contains_key(&frontend)
                        || self.mirror.services.contains_key(&frontend)
                    {
                        removed.push(frontend);
                    }
                }
            }
        }
        let mut plan = Plan::default();
        // Counts after this plan, of every key and bit it touches (all of them when full).
        let counts = if full {
            Counts::of(desired)
        } else {
            let mut touching = self.counts.touch(&self.by_key);
            for frontend in updated.iter().map(|(f, _, _)| f).chain(&removed) {
                if let Some(old) = self.last.get(frontend) {
                    let backends = old.backends.iter().filter_map(|&(id, active)| {
                        Some((backend_key(self.mirror.backends.get(&id)?), active))
                    });
                    touching.count(frontend, backends, false);
                }
            }
            for (frontend, service, _) in &updated {
                touching.count(frontend, keys(service), true);
            }
            touching.done()
        };
        let (refs, bits) = (&counts.refs, &counts.bits);

        // Backends: one entry per (address, port), active when any frontend lists it active.
        // Re-resolve the backends of changed frontends: a pod IP reused by a new pod sits
        // behind a new veth.
        // (The first plan replans every frontend: no set of every key for that.)
        let refresh_all = updated.len() == desired.len();
        let refresh: BTreeSet<SocketAddr> = if refresh_all {
            BTreeSet::new()
        } else {
            updated
                .iter()
                .flat_map(|(_, s, _)| s.backends.iter().map(|b| SocketAddr::new(b.addr, b.port)))
                .collect()
        };
        // Keys come in address order: the ports of one address are adjacent.
        let mut resolved: Option<(IpAddr, Delivery)> = None;
        if full {
            self.by_key
                .reserve(refs.len().saturating_sub(self.by_key.len()));
        }
        for &(key, count) in refs {
            if count.listed == 0 {
                continue;
            }
            let id = match self.by_key.get(&key) {
                Some(&id) => id,
                None => {
                    let id = self.backend_ids.allocate().ok_or(L4Error::IdsExhausted {
                        kind: "backend",
                        map: maps::BACKENDS,
                    })?;
                    self.by_key.insert(key, id);
                    id
                }
            };
            let current = self.mirror.backends.get(&id);
            let delivery = match current {
                Some(value) if !refresh_all && !refresh.contains(&key) => Delivery {
                    ifindex: value.ifindex,
                    veth: value.flags & BACKEND_VETH_PEER != 0,
                },
                _ => match resolved {
                    Some((ip, delivery)) if ip == key.ip() => delivery,
                    _ => resolved.insert((key.ip(), resolve(key.ip()))).1,
                },
            };
            let value = backend_value(id, key, count.active > 0, delivery);
            if current != Some(&value) {
                plan.ops.push(Op::PutBackend { id, value });
                if value.ifindex != 0 {
                    plan.devices.insert(value.ifindex);
                }
            }
        }

        // The XDP program looks at a packet only when its destination's filter bit is set:
        // set new VIPs' bits before their services exist, clear bits only after the last
        // service of a VIP is gone.
        let set: BTreeSet<u32> = bits
            .iter()
            .filter(|&(b, &n)| n > 0 && !self.mirror.filter.contains(b))
            .map(|(&b, _)| b)
            .collect();
        let clear: BTreeSet<u32> = if full {
            // Also bits no frontend counts (maps written by someone else).
            let wanted = |b: &u32| bits.get(b).is_some_and(|&n| n > 0);
            self.mirror
                .filter
                .iter()
                .filter(|b| !wanted(b))
                .copied()
                .collect()
        } else {
            bits.iter()
                .filter(|&(b, &n)| n == 0 && self.mirror.filter.contains(b))
                .map(|(&b, _)| b)
                .collect()
        };
        let mut filter = None;
        if !set.is_empty() {
            let bits: BTreeSet<u32> = self.mirror.filter.union(&set).copied().collect();
            plan.ops.push(Op::PutFilter { bits: bits.clone() });
            filter = Some(bits);
        }

        let mut live_ids: BTreeSet<u32> = BTreeSet::new();
        for &(frontend, service, _) in &updated {
            let id = match self.mirror.services.get(&frontend) {
                Some(value) => value.id,
                None => {
                    let id = self.service_ids.allocate().ok_or(L4Error::IdsExhausted {
                        kind: "service",
                        map: maps::SERVICE_STATS,
                    })?;
                    plan.ops.push(Op::ZeroStats { service_id: id });
                    plan.added.push(frontend);
                    id
                }
            };
            live_ids.insert(id);
            self.plan_service(&mut plan, frontend, id, service);
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

        if !clear.is_empty() {
            let mut bits = filter.unwrap_or_else(|| self.mirror.filter.clone());
            bits.retain(|b| !clear.contains(b));
            plan.ops.push(Op::PutFilter { bits });
        }
        if full {
            for (&id, value) in &self.mirror.backends {
                let key = backend_key(value);
                // Unwanted, or a second id for the same key (maps written by someone else).
                let wanted = counts.refs_of(&key).is_some_and(|r| r.listed > 0);
                if !wanted || self.by_key.get(&key) != Some(&id) {
                    plan.ops.push(Op::DelBackend { id });
                }
            }
        } else {
            for (key, count) in refs {
                if count.listed == 0
                    && let Some(&id) = self.by_key.get(key)
                    && self.mirror.backends.contains_key(&id)
                {
                    plan.ops.push(Op::DelBackend { id });
                }
            }
        }

        plan.book.frontends = updated
            .into_iter()
            .map(|(frontend, service, digest)| {
                let backends = service
                    .backends
                    .iter()
                    .filter_map(|b| {
                        let id = *self.by_key.get(&SocketAddr::new(b.addr, b.port))?;
                        Some((id, b.state == BackendState::Active))
                    })
                    .collect();
                (frontend, Some(Written { digest, backends }))
            })
            .chain(removed.into_iter().map(|f| (f, None)))
            .collect();
        plan.book.counts = counts.by_id(&self.by_key);
        Ok(plan)
    }

    /// [`Self::view`] built from scratch (tests: the kept one must be the same).
    #[cfg(test)]
    pub(super) fn fresh_view(&mut self) -> Vec<Arc<ServiceView>> {
        self.views.invalidate();
        self.view()
    }

    /// The steered services as written.
    pub(super) fn view(&mut self) -> Vec<Arc<ServiceView>> {
        let source = Source {
            mirror: &self.mirror,
            last: &self.last,
        };
        self.views.get(&source)
    }
}

fn dense<K: Ord, V>(map: &mut BTreeMap<K, V>) {
    *map = std::mem::take(map).into_iter().collect();
}

fn count_device(devices: &mut BTreeMap<u32, u32>, ifindex: u32, up: bool) {
    if ifindex == 0 {
        return;
    }
    if up {
        *devices.entry(ifindex).or_default() += 1;
    } else if let Some(n) = devices.get_mut(&ifindex) {
        *n -= 1;
        if *n == 0 {
            devices.remove(&ifindex);
        }
    }
}

pub(super) fn chunks(size: u32) -> u32 {
    size.div_ceil(MAGLEV_CHUNK_SLOTS)
}

fn backend_value(id: u32, key: SocketAddr, active: bool, delivery: Delivery) -> BackendValue {
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
        id,
    }
}
