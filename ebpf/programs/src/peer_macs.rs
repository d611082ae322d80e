//! A per-CPU cache of the Ethernet addresses `vipwire_tc_deliver` writes into frames it
//! redirects into a pod through the pod's veth peer, so that a packet of a running flow
//! costs no FIB lookup (the lookup and its neighbour entry were a tenth of a steered packet's
//! CPU time in the L4 lab).
//!
//! The addresses are only cosmetic on that path: `bpf_redirect_peer` hands the skb to the
//! pod's interface as already received, its packet type decided on the uplink, so the pod
//! takes it whatever the destination MAC says. The cache still keeps them right: an entry is
//! used only for the backend and host-side device it was filled for (a pod made again gets a
//! new veth), and a FIB lookup refreshes it every [`REFRESH_EVERY`] uses (not by age: that
//! would take a clock helper call per packet). Every other delivery (not a veth peer, or a
//! FIB answer that names another device) does the lookup for every packet, as before.
//!
//! Direct-mapped by backend id: a collision only costs a lookup. Per CPU, so an entry is
//! never read half-written. Not part of the contract (no `vipwire_` name): not pinned, empty
//! after a restart.

use aya_ebpf::{btf_maps::PerCpuArray, macros::btf_map};

/// Entries per CPU; a power of two (the index is the backend id's low bits).
const SLOTS: u32 = 4096;
/// Uses of an entry before the next FIB lookup refreshes it.
const REFRESH_EVERY: u32 = 1 << 16;

/// One cached delivery.
#[repr(C)]
pub struct PeerMacs {
    /// The backend id it was filled for (0: empty; ids are never 0).
    backend_id: u32,
    /// The host-side device the FIB lookup named.
    ifindex: u32,
    /// Uses left before a refresh.
    uses_left: u32,
    _pad: u32,
    /// Destination then source MAC, as they go at the start of the frame: its first eight
    /// bytes and its next four, as word loads read them (word copies: a byte array is copied
    /// a byte at a time on this target).
    macs: FrameMacs,
}

/// The first twelve bytes of an Ethernet frame (destination, source MAC), as words.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct FrameMacs {
    pub head: u64,
    pub tail: u64,
}

#[btf_map(name = "tc_peer_macs")]
static PEER_MACS: PerCpuArray<PeerMacs, { SLOTS as usize }> = PerCpuArray::new();

/// The addresses cached for delivering `backend_id` through `ifindex`, counted as one use;
/// `None` when there are none or they are due for a refresh.
#[inline(always)]
pub fn get(backend_id: u32, ifindex: u32) -> Option<FrameMacs> {
    let entry = PEER_MACS.get_ptr_mut(backend_id & (SLOTS - 1))?;
    // SAFETY: a map value pointer from a successful lookup; this CPU's copy, which only this
    // CPU touches, and only while this program runs on it.
    let entry = unsafe { &mut *entry };
    if entry.backend_id != backend_id || entry.ifindex != ifindex || entry.uses_left == 0 {
        return None;
    }
    entry.uses_left -= 1;
    Some(entry.macs)
}

/// Caches `macs` for delivering `backend_id` through `ifindex`.
#[inline(always)]
pub fn put(backend_id: u32, ifindex: u32, macs: FrameMacs) {
    let Some(entry) = PEER_MACS.get_ptr_mut(backend_id & (SLOTS - 1)) else {
        return;
    };
    // SAFETY: as in `get`.
    let entry = unsafe { &mut *entry };
    entry.backend_id = backend_id;
    entry.ifindex = ifindex;
    entry.uses_left = REFRESH_EVERY;
    entry.macs = macs;
}
