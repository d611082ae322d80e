//! The heartbeat/contract gate in front of every answer: a dead agent must not keep
//! attracting traffic, and an agent of another contract must not be trusted.
//!
//! Rare events (the heartbeat went stale, a version mismatch) are logged once with aya-log;
//! the `reported` bits in the control entry remember that we did, and the agent clears them
//! with every heartbeat it writes. Two CPUs may race on the bit and both log: at most one
//! line per CPU per occurrence, never one per packet.

use aya_ebpf::{
    btf_maps::Array, helpers::bpf_ktime_get_coarse_ns, macros::btf_map, programs::XdpContext,
};
use aya_log_ebpf::{info, warn};
use vipwire_common::{
    CONTRACT_VERSION, Control, Reason,
    control::{CONTROL_INDEX, REPORTED_CONTRACT_MISMATCH, REPORTED_STALE},
    selfcheck,
};

use crate::{Verdict, parse};

// The literal must equal vipwire_common::maps::CONTROL (checked by the fixture test
// `contract_maps_match_object`).
#[btf_map(name = "vipwire_control_v1")]
static CONTROL: Array<Control, 1> = Array::new();

/// `Ok` when the program may answer; otherwise the reason to count.
#[inline(always)]
pub fn gate(ctx: &XdpContext) -> Result<(), Reason> {
    let Some(control) = CONTROL.get_ptr_mut(CONTROL_INDEX) else {
        return Err(Reason::StaleHeartbeat);
    };
    // SAFETY: a map value pointer from a successful lookup; fields read one by one.
    let (heartbeat_ns, stale_after_ns, version) = unsafe {
        (
            (*control).heartbeat_ns,
            (*control).stale_after_ns,
            (*control).contract_version,
        )
    };
    // Never written: a freshly loaded program with no agent yet.
    if heartbeat_ns == 0 {
        if first_report(control, REPORTED_STALE) {
            warn_never_written(ctx);
        }
        return Err(Reason::StaleHeartbeat);
    }
    if version != CONTRACT_VERSION {
        if first_report(control, REPORTED_CONTRACT_MISMATCH) {
            warn_contract_mismatch(ctx, version);
        }
        return Err(Reason::ContractMismatch);
    }
    // CLOCK_MONOTONIC at tick resolution (CLOCK_MONOTONIC_COARSE): the last tick's time, no
    // clock-source read, a fraction of `bpf_ktime_get_ns`'s cost on the answer path. It lags
    // the agent's clock by less than a tick (1-10 ms), against limits of seconds; a heartbeat
    // that seems up to a tick in the future is within the limit like any other age. Either
    // direction counts as age: a heartbeat further in the future comes from another clock.
    // SAFETY: bpf_ktime_get_coarse_ns has no preconditions.
    let now = unsafe { bpf_ktime_get_coarse_ns() };
    let age = now.abs_diff(heartbeat_ns);
    if age > stale_after_ns {
        if first_report(control, REPORTED_STALE) {
            warn_stale(ctx, age, stale_after_ns);
        }
        return Err(Reason::StaleHeartbeat);
    }
    Ok(())
}

/// Sets `bit` in `reported`; true if it was clear, i.e. this occurrence is not logged yet.
#[inline(always)]
fn first_report(control: *mut Control, bit: u32) -> bool {
    // SAFETY: a map value pointer from a successful lookup in this program run.
    unsafe {
        let reported = (*control).reported;
        if reported & bit != 0 {
            return false;
        }
        (*control).reported = reported | bit;
    }
    true
}

// The log calls live in their own BPF functions: aya-log's record building needs stack that
// the packet path cannot spare when everything is inlined into one frame (512 bytes max).

#[inline(never)]
fn warn_never_written(ctx: &XdpContext) {
    warn!(ctx, "no agent heartbeat written yet: not answering ARP/NDP");
}

#[inline(never)]
fn warn_contract_mismatch(ctx: &XdpContext, version: u32) {
    warn!(
        ctx,
        "agent wrote contract version {}, program is built for {}: not answering ARP/NDP",
        version,
        CONTRACT_VERSION
    );
}

#[inline(never)]
fn warn_stale(ctx: &XdpContext, age_ns: u64, limit_ns: u64) {
    warn!(
        ctx,
        "agent heartbeat stale ({} ns old, limit {} ns): not answering ARP/NDP", age_ns, limit_ns
    );
}

/// The attach-time self-check frame (see `vipwire_common::selfcheck`): logged once per check,
/// passed. Only on `lo`, where XDP is never attached, so wire traffic can never trigger a log.
#[inline(always)]
pub fn self_check(ctx: &XdpContext) -> Verdict {
    // SAFETY: the context pointer is valid for the whole program run.
    let ingress = unsafe { (*ctx.ctx).ingress_ifindex };
    if ingress == selfcheck::INGRESS_IFINDEX
        && let Some(magic) = parse::ptr_at::<[u8; 8]>(ctx, 14)
        // SAFETY: ptr_at checked that the 8 bytes lie inside the packet.
        && unsafe { *magic } == selfcheck::MAGIC
    {
        info_self_check(ctx);
    }
    Verdict::pass(Reason::Passed)
}

#[inline(never)]
fn info_self_check(ctx: &XdpContext) {
    info!(
        ctx,
        "self-check: vipwire_xdp runs, contract v{}", CONTRACT_VERSION
    );
}
