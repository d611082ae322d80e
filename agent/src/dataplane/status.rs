//! What the dataplane is doing, read straight from the pinned maps: usable while no agent runs
//! (`vipwire status` falls back to it) and by `bpftool`-minded operators.

use std::{collections::BTreeMap, net::IpAddr};

use aya::maps::{Array, HashMap, Map, MapData, MapError, PerCpuArray, PerCpuHashMap};
use serde::Serialize;
use vipwire_common::{Control, Iface, L2Vip4Key, L2Vip6Key, L2VipStats, Reason, maps};

use super::{
    heartbeat, iface,
    l4::status::{self as l4_status, ServiceStatus},
    paths::PinPaths,
};

#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    #[error("opening pinned map {path} (is an agent running with this --bpffs-dir?)")]
    Open {
        path: String,
        #[source]
        source: MapError,
    },
    #[error("reading pinned map {name}")]
    Read {
        name: &'static str,
        #[source]
        source: MapError,
    },
}

/// `vipwire status --json` from the pinned maps. Field names are stable.
#[derive(Debug, Serialize)]
pub struct DataplaneStatus {
    pub source: &'static str,
    pub bpffs_dir: String,
    pub heartbeat: HeartbeatStatus,
    pub interfaces: Vec<InterfaceStatus>,
    pub counters: BTreeMap<&'static str, u64>,
    /// Steered frontends (L4), sorted by frontend.
    pub services: Vec<ServiceStatus>,
}

#[derive(Debug, Serialize)]
pub struct HeartbeatStatus {
    /// Milliseconds since the agent last wrote its heartbeat (None: never written).
    pub age_ms: Option<u64>,
    pub stale_after_ms: u64,
    /// Whether the program answers now.
    pub fresh: bool,
    pub contract_version: u32,
}

#[derive(Debug, Serialize)]
pub struct InterfaceStatus {
    pub ifindex: u32,
    /// Name in the reader's network namespace (None if it has no such index).
    pub name: Option<String>,
    pub mac: String,
    pub vips: Vec<VipStatus>,
}

#[derive(Debug, Serialize)]
pub struct VipStatus {
    pub address: IpAddr,
    /// Requests answered (ARP or NDP), summed over CPUs.
    pub answered: u64,
}

/// Reads every contract map pinned under `paths`.
pub fn read(paths: &PinPaths) -> Result<DataplaneStatus, StatusError> {
    let control = Array::<_, Control>::try_from(open(paths, maps::CONTROL)?)
        .and_then(|a| a.get(&0, 0))
        .map_err(|source| StatusError::Read {
            name: maps::CONTROL,
            source,
        })?;
    let now = heartbeat::monotonic_ns();
    let age_ns = (control.heartbeat_ns != 0).then(|| now.saturating_sub(control.heartbeat_ns));
    let heartbeat = HeartbeatStatus {
        age_ms: age_ns.map(|ns| ns / 1_000_000),
        stale_after_ms: control.stale_after_ns / 1_000_000,
        fresh: age_ns.is_some_and(|age| age <= control.stale_after_ns)
            && control.contract_version == vipwire_common::CONTRACT_VERSION,
        contract_version: control.contract_version,
    };

    let ifaces =
        HashMap::<_, u32, Iface>::try_from(open(paths, maps::IFACES)?).map_err(|source| {
            StatusError::Read {
                name: maps::IFACES,
                source,
            }
        })?;
    let mut interfaces: BTreeMap<u32, InterfaceStatus> = BTreeMap::new();
    for item in ifaces.iter() {
        let (ifindex, iface) = item.map_err(|source| StatusError::Read {
            name: maps::IFACES,
            source,
        })?;
        interfaces.insert(
            ifindex,
            InterfaceStatus {
                ifindex,
                name: iface::name_of(ifindex),
                mac: format_mac(iface.mac),
                vips: Vec::new(),
            },
        );
    }
    let mut add_vip = |ifindex: u32, address: IpAddr, answered: u64| {
        interfaces
            .entry(ifindex)
            .or_insert_with(|| InterfaceStatus {
                ifindex,
                name: iface::name_of(ifindex),
                mac: String::new(),
                vips: Vec::new(),
            })
            .vips
            .push(VipStatus { address, answered });
    };
    let v4 = PerCpuHashMap::<_, L2Vip4Key, L2VipStats>::try_from(open(paths, maps::L2_VIP4)?)
        .map_err(|source| StatusError::Read {
            name: maps::L2_VIP4,
            source,
        })?;
    for item in v4.iter() {
        let (key, stats) = item.map_err(|source| StatusError::Read {
            name: maps::L2_VIP4,
            source,
        })?;
        add_vip(
            key.ifindex,
            IpAddr::from(key.addr_be),
            stats.iter().map(|s| s.answered).sum(),
        );
    }
    let v6 = PerCpuHashMap::<_, L2Vip6Key, L2VipStats>::try_from(open(paths, maps::L2_VIP6)?)
        .map_err(|source| StatusError::Read {
            name: maps::L2_VIP6,
            source,
        })?;
    for item in v6.iter() {
        let (key, stats) = item.map_err(|source| StatusError::Read {
            name: maps::L2_VIP6,
            source,
        })?;
        add_vip(
            key.ifindex,
            IpAddr::from(key.addr_be),
            stats.iter().map(|s| s.answered).sum(),
        );
    }

    let counters_map =
        PerCpuArray::<_, u64>::try_from(open(paths, maps::COUNTERS)?).map_err(|source| {
            StatusError::Read {
                name: maps::COUNTERS,
                source,
            }
        })?;
    let mut counters = BTreeMap::new();
    for reason in Reason::ALL {
        let values = counters_map
            .get(&(reason as u32), 0)
            .map_err(|source| StatusError::Read {
                name: maps::COUNTERS,
                source,
            })?;
        counters.insert(reason.name(), values.iter().sum());
    }

    let mut interfaces: Vec<InterfaceStatus> = interfaces.into_values().collect();
    for i in &mut interfaces {
        i.vips.sort_by_key(|v| v.address);
    }
    Ok(DataplaneStatus {
        source: "pinned-maps",
        bpffs_dir: paths.dir().display().to_string(),
        heartbeat,
        interfaces,
        counters,
        services: l4_status::read(paths)?,
    })
}

impl DataplaneStatus {
    /// The human-readable form of `vipwire status`.
    pub fn to_text(&self) -> String {
        let mut out = format!("dataplane (read from pinned maps in {})\n", self.bpffs_dir);
        let age = self
            .heartbeat
            .age_ms
            .map_or("never".to_owned(), |ms| format!("{ms} ms ago"));
        out.push_str(&format!(
            "heartbeat: {age} (stale after {} ms) -> {}\n",
            self.heartbeat.stale_after_ms,
            if self.heartbeat.fresh {
                "answering"
            } else {
                "NOT answering"
            }
        ));
        for i in &self.interfaces {
            out.push_str(&format!(
                "interface {} (ifindex {}, {}):\n",
                i.name.as_deref().unwrap_or("?"),
                i.ifindex,
                i.mac
            ));
            for vip in &i.vips {
                out.push_str(&format!(
                    "  {:<40} answered {}\n",
                    vip.address, vip.answered
                ));
            }
        }
        out.push_str("counters:\n");
        for (name, value) in &self.counters {
            out.push_str(&format!("  {name:<20} {value}\n"));
        }
        out.push_str(&services_text(&self.services));
        out
    }
}

/// Opens the pinned map `name` (for the L4 status reader too).
pub(crate) fn open(paths: &PinPaths, name: &'static str) -> Result<Map, StatusError> {
    let path = paths.map(name);
    let open_error = |source| StatusError::Open {
        path: path.display().to_string(),
        source,
    };
    let data = MapData::from_pin(&path).map_err(open_error)?;
    Map::from_map_data(data).map_err(open_error)
}

fn format_mac(mac: [u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// The text form of the steered services (shared by the agent's and the pinned-maps status).
pub fn services_text(services: &[ServiceStatus]) -> String {
    let mut out = String::new();
    if services.is_empty() {
        return out;
    }
    out.push_str("steered services:\n");
    for s in services {
        let c = s.counters.unwrap_or_default();
        out.push_str(&format!(
            "  {:<32} id {:<5} maglev {:<5} packets {} new_flows {} replies {} denied {} no_backend {}\n",
            s.frontend, s.service_id, s.maglev_size, c.packets, c.new_flows, c.replies,
            c.source_denied, c.no_backend
        ));
        for b in &s.backends {
            let addr = std::net::SocketAddr::new(b.address, b.port);
            out.push_str(&format!(
                "    {addr:<40} id {:<6} {:<8} ifindex {} ({})\n",
                b.id, b.state, b.ifindex, b.delivery
            ));
        }
    }
    out
}
