//! The L2 writer: takes the desired set of (VIP, ifindex) pairs and applies only the delta to
//! `vipwire_l2_vip4_v1` / `vipwire_l2_vip6_v1`. Existing entries are never rewritten, so their
//! per-VIP counters survive reconciles and agent restarts.

use std::{
    collections::BTreeSet,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use aya::{
    Ebpf,
    maps::{MapData, MapError, PerCpuHashMap, PerCpuValues},
    util::nr_cpus,
};
use vipwire_common::{L2Vip4Key, L2Vip6Key, L2VipStats, maps};

/// "Answer ARP/NDP for `addr` when asked on `ifindex`."
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct L2Entry {
    pub addr: IpAddr,
    pub ifindex: u32,
}

/// What one apply changed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct L2Delta {
    pub added: Vec<L2Entry>,
    pub removed: Vec<L2Entry>,
}

#[derive(Debug, thiserror::Error)]
pub enum L2Error {
    #[error("map {0} missing from the BPF object")]
    MissingMap(&'static str),
    #[error("map {name}")]
    Map {
        name: &'static str,
        #[source]
        source: MapError,
    },
    #[error("counting CPUs")]
    Cpus(#[source] std::io::Error),
}

/// The entries to add and to remove to turn `current` into `desired`.
pub fn diff(current: &BTreeSet<L2Entry>, desired: &BTreeSet<L2Entry>) -> L2Delta {
    L2Delta {
        added: desired.difference(current).copied().collect(),
        removed: current.difference(desired).copied().collect(),
    }
}

/// The (VIP, ifindex) pairs in the kernel now.
pub fn current(ebpf: &mut Ebpf) -> Result<BTreeSet<L2Entry>, L2Error> {
    let mut entries = BTreeSet::new();
    for key in v4(ebpf)?.keys() {
        let key = key.map_err(|source| map_error(maps::L2_VIP4, source))?;
        entries.insert(L2Entry {
            addr: IpAddr::V4(Ipv4Addr::from(key.addr_be)),
            ifindex: key.ifindex,
        });
    }
    for key in v6(ebpf)?.keys() {
        let key = key.map_err(|source| map_error(maps::L2_VIP6, source))?;
        entries.insert(L2Entry {
            addr: IpAddr::V6(Ipv6Addr::from(key.addr_be)),
            ifindex: key.ifindex,
        });
    }
    Ok(entries)
}

/// A write that stopped at `error` after writing `written`, the first part of its delta: the
/// caller can still announce and log what did go in.
#[derive(Debug)]
pub struct PartialWrite {
    pub written: L2Delta,
    pub error: L2Error,
}

impl PartialWrite {
    fn nothing(error: L2Error) -> Box<Self> {
        Box::new(Self {
            written: L2Delta::default(),
            error,
        })
    }
}

/// Makes the kernel's pairs equal `desired`, touching only what differs.
pub fn apply(ebpf: &mut Ebpf, desired: &BTreeSet<L2Entry>) -> Result<L2Delta, Box<PartialWrite>> {
    let current = current(ebpf).map_err(PartialWrite::nothing)?;
    let delta = diff(&current, desired);
    write(ebpf, &delta)?;
    Ok(delta)
}

/// Writes a delta computed elsewhere (e.g. against what this agent wrote last, which saves
/// reading every key back from the kernel on each change).
pub fn write(ebpf: &mut Ebpf, delta: &L2Delta) -> Result<(), Box<PartialWrite>> {
    let stopped = |removed: usize, added: usize, error: L2Error| {
        Box::new(PartialWrite {
            written: L2Delta {
                removed: delta.removed[..removed].to_vec(),
                added: delta.added[..added].to_vec(),
            },
            error,
        })
    };
    // Remove first: a VIP moving between interfaces never briefly answers on both.
    for (i, entry) in delta.removed.iter().enumerate() {
        remove(ebpf, entry).map_err(|error| stopped(i, 0, error))?;
    }
    for (i, entry) in delta.added.iter().enumerate() {
        insert(ebpf, entry).map_err(|error| stopped(delta.removed.len(), i, error))?;
    }
    Ok(())
}

fn remove(ebpf: &mut Ebpf, entry: &L2Entry) -> Result<(), L2Error> {
    let result = match entry.addr {
        IpAddr::V4(addr) => v4(ebpf)?.remove(&key4(addr, entry.ifindex)),
        IpAddr::V6(addr) => v6(ebpf)?.remove(&key6(addr, entry.ifindex)),
    };
    result.map_err(|source| map_error(map_name(entry), source))
}

fn insert(ebpf: &mut Ebpf, entry: &L2Entry) -> Result<(), L2Error> {
    let result = match entry.addr {
        IpAddr::V4(addr) => v4(ebpf)?.insert(key4(addr, entry.ifindex), zeroed_stats()?, 0),
        IpAddr::V6(addr) => v6(ebpf)?.insert(key6(addr, entry.ifindex), zeroed_stats()?, 0),
    };
    result.map_err(|source| map_error(map_name(entry), source))
}

fn v4(ebpf: &mut Ebpf) -> Result<PerCpuHashMap<&mut MapData, L2Vip4Key, L2VipStats>, L2Error> {
    let map = ebpf
        .map_mut(maps::L2_VIP4)
        .ok_or(L2Error::MissingMap(maps::L2_VIP4))?;
    PerCpuHashMap::try_from(map).map_err(|source| map_error(maps::L2_VIP4, source))
}

fn v6(ebpf: &mut Ebpf) -> Result<PerCpuHashMap<&mut MapData, L2Vip6Key, L2VipStats>, L2Error> {
    let map = ebpf
        .map_mut(maps::L2_VIP6)
        .ok_or(L2Error::MissingMap(maps::L2_VIP6))?;
    PerCpuHashMap::try_from(map).map_err(|source| map_error(maps::L2_VIP6, source))
}

fn key4(addr: Ipv4Addr, ifindex: u32) -> L2Vip4Key {
    L2Vip4Key {
        addr_be: addr.octets(),
        ifindex,
    }
}

fn key6(addr: Ipv6Addr, ifindex: u32) -> L2Vip6Key {
    L2Vip6Key {
        addr_be: addr.octets(),
        ifindex,
    }
}

fn zeroed_stats() -> Result<PerCpuValues<L2VipStats>, L2Error> {
    let cpus = nr_cpus().map_err(|(_, source)| L2Error::Cpus(source))?;
    PerCpuValues::try_from(vec![L2VipStats::default(); cpus])
        .map_err(|e| L2Error::Cpus(std::io::Error::other(e)))
}

fn map_name(entry: &L2Entry) -> &'static str {
    match entry.addr {
        IpAddr::V4(_) => maps::L2_VIP4,
        IpAddr::V6(_) => maps::L2_VIP6,
    }
}

fn map_error(name: &'static str, source: MapError) -> L2Error {
    L2Error::Map { name, source }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(addr: &str, ifindex: u32) -> L2Entry {
        L2Entry {
            addr: addr.parse().unwrap(),
            ifindex,
        }
    }

    #[test]
    fn diff_adds_the_missing_and_removes_the_unwanted_only() {
        let current: BTreeSet<_> = [
            entry("203.0.113.1", 2),
            entry("203.0.113.2", 2),
            entry("fd00::1", 2),
        ]
        .into();
        let desired: BTreeSet<_> = [
            entry("203.0.113.2", 2),
            entry("fd00::1", 2),
            entry("203.0.113.1", 3),
        ]
        .into();
        let delta = diff(&current, &desired);
        assert_eq!(delta.added, [entry("203.0.113.1", 3)]);
        assert_eq!(delta.removed, [entry("203.0.113.1", 2)]);
    }

    #[test]
    fn diff_of_equal_sets_is_empty() {
        let set: BTreeSet<_> = [entry("203.0.113.1", 2)].into();
        assert_eq!(diff(&set, &set), L2Delta::default());
    }
}
