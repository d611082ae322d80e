//! The agent-written L2 tables: owned (VIP, ifindex) pairs and the interfaces answered on.
//! Each literal must equal its `vipwire_common::maps` constant (checked by the fixture test
//! `contract_maps_match_object`).

use aya_ebpf::{
    btf_maps::{HashMap, PerCpuHashMap},
    macros::btf_map,
};
use vipwire_common::{
    Iface, L2Vip4Key, L2Vip6Key, L2VipStats,
    l2::{IFACES_MAX_ENTRIES, L2_VIP_MAX_ENTRIES},
};

#[btf_map(name = "vipwire_l2_vip4_v1")]
static L2_VIP4: PerCpuHashMap<L2Vip4Key, L2VipStats, { L2_VIP_MAX_ENTRIES as usize }> =
    PerCpuHashMap::new();

#[btf_map(name = "vipwire_l2_vip6_v1")]
static L2_VIP6: PerCpuHashMap<L2Vip6Key, L2VipStats, { L2_VIP_MAX_ENTRIES as usize }> =
    PerCpuHashMap::new();

#[btf_map(name = "vipwire_ifaces_v1")]
static IFACES: HashMap<u32, Iface, { IFACES_MAX_ENTRIES as usize }> = HashMap::new();

/// The MAC of `ifindex` if the agent told us to answer on it.
#[inline(always)]
pub fn iface_mac(ifindex: u32) -> Option<[u8; 6]> {
    let iface = IFACES.get_ptr(ifindex)?;
    // SAFETY: a map value pointer from a successful lookup; copied out at once.
    Some(unsafe { (*iface).mac })
}

/// [`iface_mac`] as the low 48 bits of a little-endian word (the MAC's first byte lowest).
#[inline(always)]
pub fn iface_mac_word(ifindex: u32) -> Option<u64> {
    let iface = IFACES.get_ptr(ifindex)?;
    // SAFETY: a map value pointer from a successful lookup, 8-byte aligned like every map
    // value; an Iface is 8 bytes, the MAC and then padding, which the mask drops.
    Some(unsafe { iface.cast::<u64>().read() } & ((1 << 48) - 1))
}

/// This CPU's stats of an owned IPv4 (VIP, ifindex), or `None` if not owned.
#[inline(always)]
pub fn vip4(addr_be: [u8; 4], ifindex: u32) -> Option<*mut L2VipStats> {
    L2_VIP4.get_ptr_mut(L2Vip4Key { addr_be, ifindex })
}

/// This CPU's stats of an owned IPv6 (VIP, ifindex), or `None` if not owned.
#[inline(always)]
pub fn vip6(addr_be: [u8; 16], ifindex: u32) -> Option<*mut L2VipStats> {
    L2_VIP6.get_ptr_mut(L2Vip6Key { addr_be, ifindex })
}

/// Counts an answer in the per-VIP stats (a per-CPU value: no atomics needed).
#[inline(always)]
pub fn count_answer(stats: *mut L2VipStats) {
    // SAFETY: a per-CPU map value pointer from a successful lookup in this program run.
    unsafe { (*stats).answered += 1 };
}
