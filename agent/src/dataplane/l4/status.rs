//! The steered services for `/status`, `vipwire status` and `/metrics`: from the writer's view
//! while an agent runs (it knows draining backends), else from the pinned maps; counters are
//! always the pinned per-CPU `vipwire_service_stats_v1`, summed over CPUs.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
    sync::Arc,
};

use aya::maps::{Array, HashMap, PerCpuArray};
use serde::Serialize;
use vipwire_common::{
    l4::{
        BACKEND_ACTIVE, BACKEND_VETH_PEER, BackendValue, MaglevChunk, MaglevKey, ServiceKey,
        ServiceStats, ServiceValue, backend_slot,
    },
    maps,
};

use super::{BackendView, ServiceView, kernel, mirror::from_addr16};
use crate::dataplane::{
    paths::PinPaths,
    status::{StatusError, open},
};

/// One steered frontend. Field names are stable (`vipwire status --json`).
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct ServiceStatus {
    /// `VIP:port/PROTOCOL` (`[v6]:port/PROTOCOL`).
    pub frontend: String,
    pub service_id: u32,
    /// Slots of its Maglev table; 0 while it has no active local backend.
    pub maglev_size: u32,
    pub backends: Vec<BackendStatus>,
    /// `null` when the stats map cannot be read.
    pub counters: Option<ServiceCounters>,
}

#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct BackendStatus {
    pub address: IpAddr,
    pub port: u16,
    pub id: u32,
    /// `active` (new flows) or `draining` (established flows only).
    pub state: &'static str,
    /// Host-side device the pod is reached through (0: FIB lookup).
    pub ifindex: u32,
    /// `veth-peer` (`bpf_redirect_peer`) or `fib`.
    pub delivery: &'static str,
}

/// [`ServiceStats`] summed over CPUs.
#[derive(Clone, Copy, Debug, Default, Serialize, PartialEq, Eq)]
pub struct ServiceCounters {
    pub packets: u64,
    pub bytes: u64,
    pub new_flows: u64,
    pub replies: u64,
    pub source_denied: u64,
    pub no_backend: u64,
}

impl ServiceCounters {
    /// `(name, help)` of every counter, in the order [`ServiceCounters::values`] gives them.
    pub const FIELDS: [(&'static str, &'static str); 6] = [
        ("packets", "Packets steered to a local backend."),
        ("bytes", "Bytes steered to a local backend."),
        (
            "new_flows",
            "Flows that got a backend (Maglev or affinity).",
        ),
        ("replies", "Replies rewritten back to VIP:port."),
        (
            "source_denied",
            "Packets dropped: source outside loadBalancerSourceRanges.",
        ),
        (
            "no_backend",
            "New flows left to the kernel: no active local backend.",
        ),
    ];

    pub fn values(&self) -> [u64; 6] {
        [
            self.packets,
            self.bytes,
            self.new_flows,
            self.replies,
            self.source_denied,
            self.no_backend,
        ]
    }

    fn add(&mut self, s: &ServiceStats) {
        self.packets += s.packets;
        self.bytes += s.bytes;
        self.new_flows += s.new_flows;
        self.replies += s.replies;
        self.source_denied += s.source_denied;
        self.no_backend += s.no_backend;
    }
}

/// The writer's services with the pinned counters.
pub fn from_view(views: &[Arc<ServiceView>], paths: &PinPaths) -> Vec<ServiceStatus> {
    let counters = read_counters(paths, views.iter().map(|v| v.service_id)).ok();
    views
        .iter()
        .map(|view| ServiceStatus {
            frontend: view.frontend.to_string(),
            service_id: view.service_id,
            maglev_size: view.maglev_size,
            backends: view.backends.iter().map(backend_of_view).collect(),
            counters: counters
                .as_ref()
                .map(|c| c.get(&view.service_id).copied().unwrap_or_default()),
        })
        .collect()
}

/// The services from the pinned maps alone (no agent): backends are those the Maglev tables
/// name, so draining ones are not listed. No L4 maps pinned: no services.
pub fn read(paths: &PinPaths) -> Result<Vec<ServiceStatus>, StatusError> {
    let Ok(services) = open(paths, maps::SERVICES) else {
        return Ok(Vec::new());
    };
    let read_error = |name| move |source| StatusError::Read { name, source };
    let services = HashMap::<_, ServiceKey, ServiceValue>::try_from(services)
        .map_err(read_error(maps::SERVICES))?;
    let maglev = HashMap::<_, MaglevKey, MaglevChunk>::try_from(open(paths, maps::MAGLEV)?)
        .map_err(read_error(maps::MAGLEV))?;
    let backends = Array::<_, BackendValue>::try_from(open(paths, maps::BACKENDS)?)
        .map_err(read_error(maps::BACKENDS))?;
    let mut table_ids: BTreeMap<u32, BTreeSet<u32>> = BTreeMap::new();
    for item in maglev.iter() {
        let (key, chunk) = item.map_err(read_error(maps::MAGLEV))?;
        let ids = table_ids.entry(key.service_id).or_default();
        ids.extend(chunk.backend_ids.iter().copied().filter(|&id| id != 0));
    }
    let mut listed = Vec::new();
    for item in services.iter() {
        let (key, value) = item.map_err(read_error(maps::SERVICES))?;
        let Some(frontend) = kernel::frontend_of(&key) else {
            continue;
        };
        let mut members = Vec::new();
        for &id in table_ids.get(&value.id).into_iter().flatten() {
            if let Ok(backend) = backends.get(&backend_slot(id), 0)
                && backend.id == id
            {
                members.push(backend_of_value(id, &backend));
            }
        }
        listed.push((frontend, value, members));
    }
    listed.sort_by_key(|(frontend, _, _)| *frontend);
    let counters = read_counters(paths, listed.iter().map(|(_, v, _)| v.id)).ok();
    Ok(listed
        .into_iter()
        .map(|(frontend, value, backends)| ServiceStatus {
            frontend: frontend.to_string(),
            service_id: value.id,
            maglev_size: value.maglev_size,
            backends,
            counters: counters
                .as_ref()
                .map(|c| c.get(&value.id).copied().unwrap_or_default()),
        })
        .collect())
}

fn read_counters(
    paths: &PinPaths,
    ids: impl Iterator<Item = u32>,
) -> Result<BTreeMap<u32, ServiceCounters>, StatusError> {
    let read_error = |source| StatusError::Read {
        name: maps::SERVICE_STATS,
        source,
    };
    let stats = PerCpuArray::<_, ServiceStats>::try_from(open(paths, maps::SERVICE_STATS)?)
        .map_err(read_error)?;
    let mut counters = BTreeMap::new();
    for id in ids {
        let mut sum = ServiceCounters::default();
        for per_cpu in stats.get(&id, 0).map_err(read_error)?.iter() {
            sum.add(per_cpu);
        }
        counters.insert(id, sum);
    }
    Ok(counters)
}

fn backend_of_view(b: &BackendView) -> BackendStatus {
    BackendStatus {
        address: b.addr.ip(),
        port: b.addr.port(),
        id: b.id,
        state: if b.active { "active" } else { "draining" },
        ifindex: b.ifindex,
        delivery: if b.veth { "veth-peer" } else { "fib" },
    }
}

fn backend_of_value(id: u32, value: &BackendValue) -> BackendStatus {
    BackendStatus {
        address: from_addr16(value.addr_be),
        port: u16::from_be_bytes(value.port_be),
        id,
        state: if value.flags & BACKEND_ACTIVE != 0 {
            "active"
        } else {
            "draining"
        },
        ifindex: value.ifindex,
        delivery: if value.flags & BACKEND_VETH_PEER != 0 {
            "veth-peer"
        } else {
            "fib"
        },
    }
}
