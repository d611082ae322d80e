//! A planner over in-memory maps: every operation is applied the way `kernel::Maps::apply`
//! applies it (Maglev slots included), so tests can read back the tables a plan writes.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
};

use ipnet::IpNet;
use vipwire_common::l4::{BackendValue, MAGLEV_CHUNK_SLOTS, ServiceValue, vip_filter_bit};

use super::super::{
    Plan,
    ids::Referenced,
    mirror::{ChunkSlots, MaglevInput, Mirror, Op, addr16, fingerprint},
    plan::{Planner, chunks},
};
use crate::{
    dataplane::route::Delivery,
    model::{Frontend, Services},
};

/// What the maps hold.
#[derive(Clone, Debug, Default)]
pub struct Maps {
    pub services: BTreeMap<Frontend, ServiceValue>,
    pub chunks: BTreeMap<(u32, u32), ChunkSlots>,
    pub ranges: BTreeSet<(u32, IpNet)>,
    pub backends: BTreeMap<u32, BackendValue>,
    pub filter: BTreeSet<u32>,
}

impl Maps {
    pub fn apply(&mut self, op: &Op) {
        match op {
            Op::PutBackend { id, value } => {
                self.backends.insert(*id, *value);
            }
            Op::PutChunk {
                service_id,
                chunk,
                table,
                ..
            } => {
                let slots = MaglevInput::chunk(&table.table(), *chunk);
                self.chunks.insert((*service_id, *chunk), slots);
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

    /// What `kernel::read` would read back.
    pub fn read(&self) -> Mirror {
        Mirror {
            services: self.services.clone(),
            chunks: self
                .chunks
                .iter()
                .map(|(&key, slots)| (key, fingerprint(slots)))
                .collect(),
            ranges: self.ranges.clone(),
            backends: self.backends.clone(),
            filter: self.filter.clone(),
        }
    }

    /// The Maglev table of `service_id` as written (`size` slots).
    pub fn table(&self, service_id: u32, size: u32) -> Vec<u32> {
        let mut table = Vec::with_capacity(size as usize);
        for chunk in 0..chunks(size) {
            match self.chunks.get(&(service_id, chunk)) {
                Some(slots) => table.extend_from_slice(slots),
                None => table.extend(std::iter::repeat_n(0, MAGLEV_CHUNK_SLOTS as usize)),
            }
        }
        table.truncate(size as usize);
        table
    }

    /// What the XDP program could follow from a service entry exists: its VIP's filter bit,
    /// every chunk of its table, every backend those name. `None` when all is well.
    pub fn dangling(&self) -> Option<String> {
        for (frontend, value) in &self.services {
            if !self.filter.contains(&vip_filter_bit(&addr16(frontend.vip))) {
                return Some(format!("{frontend}: no filter bit"));
            }
            for chunk in 0..chunks(value.maglev_size) {
                let Some(slots) = self.chunks.get(&(value.id, chunk)) else {
                    return Some(format!("{frontend}: chunk {chunk} missing"));
                };
                let size = value.maglev_size as usize;
                let start = chunk as usize * slots.len();
                let used = size.saturating_sub(start).min(slots.len());
                if let Some(id) = slots[..used]
                    .iter()
                    // 0 is an empty slot (new flows there are left to the kernel): what a
                    // shrinking table's first chunk holds past the new size until the
                    // service entry says so.
                    .find(|&&id| id != 0 && !self.backends.contains_key(&id))
                {
                    return Some(format!("{frontend}: chunk {chunk} names backend {id}"));
                }
            }
        }
        None
    }
}

/// The route lookup of these tests: ifindex 11 for addresses ending in `.2`, else 10.
pub fn resolve(addr: IpAddr) -> Delivery {
    Delivery {
        ifindex: u32::from(addr.to_string().ends_with(".2")) + 10,
        veth: true,
    }
}

/// A planner and the maps it writes.
pub struct Fake {
    pub planner: Planner,
    pub maps: Maps,
}

impl Fake {
    pub fn new(size: u32, mirror: Mirror) -> Self {
        Self::over(size, mirror, Maps::default())
    }

    /// A planner started over `maps` (its mirror may differ: edited behind its back).
    pub fn over(size: u32, mirror: Mirror, maps: Maps) -> Self {
        Self::restarted(size, mirror, maps, Referenced::default())
    }

    /// [`Fake::over`], with flow-map entries naming the ids in `referenced`.
    pub fn restarted(size: u32, mirror: Mirror, maps: Maps, referenced: Referenced) -> Self {
        Self {
            planner: Planner::new(size, mirror, referenced),
            maps,
        }
    }

    pub fn mirror(&self) -> &Mirror {
        self.planner.mirror()
    }

    /// Plans comparing every frontend, executes, returns the operations.
    pub fn apply(&mut self, desired: &Services) -> Vec<Op> {
        let plan = self.plan(desired, None);
        self.execute(plan, usize::MAX).expect("not cut short")
    }

    pub fn plan(&mut self, desired: &Services, changed: Option<&BTreeSet<Frontend>>) -> Plan {
        self.planner
            .plan(desired, changed, &mut resolve)
            .expect("ids left")
    }

    /// Executes the first `limit` operations; when that is not all of them, the rest fails
    /// (the planner aborts) and `None` is returned.
    pub fn execute(&mut self, plan: Plan, limit: usize) -> Option<Vec<Op>> {
        for (i, op) in plan.ops.iter().enumerate() {
            if i == limit {
                self.planner.abort();
                return None;
            }
            self.maps.apply(op);
            self.planner.record(op);
            if let Some(problem) = self.maps.dangling() {
                panic!("after {op:?}: {problem}");
            }
        }
        let ops = plan.ops.clone();
        self.planner.commit(plan);
        Some(ops)
    }
}
