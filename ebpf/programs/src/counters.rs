//! Per-CPU reason counters: one increment per packet, no locking, no logging.

use aya_ebpf::{btf_maps::PerCpuArray, macros::btf_map};
use vipwire_common::Reason;

// The literal must equal vipwire_common::maps::COUNTERS (checked by the fixture test
// `contract_maps_match_object`).
#[btf_map(name = "vipwire_counters_v1")]
static COUNTERS: PerCpuArray<u64, { Reason::COUNT as usize }> = PerCpuArray::new();

#[inline(always)]
pub fn bump(reason: Reason) {
    if let Some(slot) = COUNTERS.get_ptr_mut(reason as u32) {
        // SAFETY: a per-CPU slot is only touched by this CPU while the program runs.
        unsafe { *slot += 1 };
    }
}
