//! The per-frontend tables of a plan: a frontend's Maglev chunks, source ranges and service
//! entry, in the order the kernel must see them.

use std::{collections::BTreeSet, net::SocketAddr, sync::Arc};

use ipnet::IpNet;
use vipwire_common::l4::{SERVICE_AFFINITY, SERVICE_SOURCE_RANGES, ServiceValue};

use super::{Plan, Planner, chunks};
use crate::{
    dataplane::{
        l4::mirror::{MaglevInput, Op, fingerprint},
        maglev,
    },
    model::{Backend, BackendState, DesiredService, Frontend},
};

impl Planner {
    /// Chunks and ranges first, then the service entry, then what the new entry no longer
    /// reaches (chunks past a shrunk table, ranges no longer allowed).
    pub(super) fn plan_service(
        &self,
        plan: &mut Plan,
        frontend: Frontend,
        id: u32,
        service: &DesiredService,
    ) {
        let is_active = |b: &&Backend| b.state == BackendState::Active;
        // Sized up front (collected from a filter, 10 backends got room for 16): a first plan
        // holds the inputs of every frontend until their chunks are written.
        let mut active = Vec::with_capacity(service.backends.iter().filter(is_active).count());
        active.extend(service.backends.iter().filter(is_active).filter_map(|b| {
            let key = SocketAddr::new(b.addr, b.port);
            self.by_key.get(&key).map(|&id| (key, id))
        }));
        let size = if active.is_empty() {
            0
        } else {
            maglev::table_size(self.configured_size, active.len())
        };
        let input = Arc::new(MaglevInput {
            size,
            backends: active,
        });
        let table = input.table();
        for chunk in 0..chunks(size) {
            let print = fingerprint(&MaglevInput::chunk(&table, chunk));
            if self.mirror.chunks.get(&(id, chunk)) != Some(&print) {
                plan.ops.push(Op::PutChunk {
                    service_id: id,
                    chunk,
                    table: input.clone(),
                    fingerprint: print,
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
    pub(super) fn delete_tables(&self, plan: &mut Plan, id: u32, from_chunk: u32) {
        for (&(service_id, chunk), _) in self.mirror.chunks.range((id, from_chunk)..=(id, u32::MAX))
        {
            plan.ops.push(Op::DelChunk { service_id, chunk });
        }
        for &(service_id, range) in self.mirror.ranges.range(range_bounds(id)) {
            plan.ops.push(Op::DelRange { service_id, range });
        }
    }
}

fn range_bounds(id: u32) -> std::ops::RangeInclusive<(u32, IpNet)> {
    let lowest = IpNet::V4(ipnet::Ipv4Net::default());
    let highest = IpNet::V6(ipnet::Ipv6Net::new_assert(
        std::net::Ipv6Addr::from(u128::MAX),
        128,
    ));
    (id, lowest)..=(id, highest)
}
