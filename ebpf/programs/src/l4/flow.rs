//! Flows: which backend a packet goes to, and the conntrack entries that keep it there.

#![allow(
    clippy::needless_borrows_for_generic_args,
    reason = "by value the keys and values would be copied onto the BPF stack"
)]

use aya_ebpf::helpers::bpf_ktime_get_ns;
use vipwire_common::{
    Reason,
    l4::{
        AffinityKey, AffinityValue, BACKEND_ACTIVE, BackendValue, CT_FORWARD, CT_REVERSE,
        CT_REVERSE_REFRESH, CtKey, CtKey4, CtValue, FragKey, FragValue, IPPROTO_SCTP,
        SERVICE_AFFINITY, SERVICE_SOURCE_RANGES, ServiceValue,
    },
};

use super::{
    headers::{Fragment, Ip},
    maps::{self, Scratch},
};
use crate::{Verdict, words};

/// The conntrack key of a packet to a VIP, into the scratch slot.
#[inline(always)]
pub fn forward_key(scratch: &mut Scratch, ports: [u8; 4]) {
    let ct = &raw mut scratch.ct;
    let ip = &scratch.ip;
    let tail = u64::from(u32::from_ne_bytes(ports))
        | u64::from(ip.proto) << 32
        | u64::from(CT_FORWARD) << 40;
    // SAFETY: all in the scratch map value; `tail` covers ports, proto, dir and padding.
    unsafe {
        words::copy16(&raw mut (*ct).src_be, &raw const ip.src);
        words::copy16(&raw mut (*ct).dst_be, &raw const ip.dst);
        words::store64::<CT_KEY_TAIL>(ct.cast(), tail);
        if !ip.v6 {
            narrow(ct, &raw mut scratch.ct4);
        }
    }
}

/// Writes `key` (an IPv4 flow's) as `vipwire_conntrack4_v1` keys it (`CtKey::v4`), in words.
///
/// # Safety
/// Both pointers into a map value (the scratch slot).
#[inline(always)]
unsafe fn narrow(key: *const CtKey, out: *mut CtKey4) {
    let (key, out) = (key.cast::<u8>(), out.cast::<u8>());
    // SAFETY: the caller's pointers; the offsets are asserted below.
    unsafe {
        let addrs = words::load32_wide::<{ CT_KEY_SRC + 12 }>(key)
            | words::load32_wide::<{ CT_KEY_DST + 12 }>(key) << 32;
        words::store64::<0>(out, addrs);
        words::store64::<8>(out, words::load64::<CT_KEY_TAIL>(key));
    }
}

/// The conntrack entry of `scratch.ct` (or `scratch.ct4`), from its family's map.
#[inline(always)]
fn lookup(scratch: &Scratch) -> Option<*mut CtValue> {
    if scratch.ip.v6 {
        maps::CONNTRACK.get_ptr_mut(&scratch.ct)
    } else {
        maps::CONNTRACK4.get_ptr_mut(&scratch.ct4)
    }
}

/// Inserts (or replaces) the entry of `key` in its family's map; `key4` is room for the IPv4
/// form of the key.
///
/// # Safety
/// Every pointer into the scratch slot.
#[inline(always)]
unsafe fn insert(v6: bool, key: *const CtKey, key4: *mut CtKey4, value: *const CtValue) {
    // SAFETY: the caller's pointers.
    unsafe {
        if v6 {
            let _ = maps::CONNTRACK.insert(&*key, &*value, 0);
        } else {
            narrow(key, key4);
            let _ = maps::CONNTRACK4.insert(&*key4, &*value, 0);
        }
    }
}

const CT_KEY_SRC: usize = core::mem::offset_of!(CtKey, src_be);
const CT_KEY_DST: usize = core::mem::offset_of!(CtKey, dst_be);
const _: () = {
    assert!(CT_KEY_SRC == 0 && CT_KEY_DST == 16);
    assert!(core::mem::offset_of!(CtKey4, dst_be) == 4 && size_of::<CtKey4>() == 16);
    assert!(core::mem::offset_of!(CtKey4, sport_be) == 8);
    assert!(core::mem::offset_of!(CtKey4, dport_be) == 8 + 2);
    assert!(core::mem::offset_of!(CtKey4, proto) == 8 + 4);
    assert!(core::mem::offset_of!(CtKey4, dir) == 8 + 5);
};

/// Where [`CtKey`]'s ports start: ports, protocol, direction and padding are one word.
const CT_KEY_TAIL: usize = core::mem::offset_of!(CtKey, sport_be);
const _: () = {
    assert!(CT_KEY_TAIL == 32 && size_of::<CtKey>() == CT_KEY_TAIL + 8);
    assert!(core::mem::offset_of!(CtKey, dport_be) == CT_KEY_TAIL + 2);
    assert!(core::mem::offset_of!(CtKey, proto) == CT_KEY_TAIL + 4);
    assert!(core::mem::offset_of!(CtKey, dir) == CT_KEY_TAIL + 5);
};

/// A packet of an established flow (`scratch.ct` in conntrack, its backend still there):
/// aimed at that backend, without looking at the service again. Checked before the service
/// for every packet but a TCP SYN (the common case); the service's source ranges were checked when the flow started (an
/// established flow survives a change of `loadBalancerSourceRanges`, as it would through
/// kube-proxy's conntrack). `None`: a new flow (or its backend is gone).
#[inline(never)]
pub fn established_packet(scratch: &mut Scratch) -> u64 {
    let Some(entry) = lookup(scratch) else {
        return Verdict::NONE;
    };
    // SAFETY: a map value from a successful lookup.
    let (backend_id, service_id) = unsafe { ((*entry).backend_id, (*entry).service_id) };
    let Some(backend) = backend_ptr(backend_id) else {
        return Verdict::NONE;
    };
    // SAFETY: as above. Another CPU may count the same entry down at the same time: the
    // refresh then comes a packet early or late, which does not matter.
    let refresh = unsafe { &mut (*entry).refresh };
    if *refresh == 0 {
        *refresh = CT_REVERSE_REFRESH;
        retrack_reverse(scratch, service_id, backend_id, backend);
    } else {
        *refresh -= 1;
    }
    // SAFETY: a map value pointer from a successful lookup, valid for this program run.
    let backend = unsafe { &*backend };
    if !rewritable(scratch, backend) {
        return Verdict::pass(Reason::Unsupported).pack();
    }
    if let Fragment::First { id } = scratch.ip.fragment {
        remember_fragment(scratch, id, backend_id, service_id);
    }
    aim(scratch, backend, backend_id, service_id, true);
    Verdict::pass(Reason::Steered).pack()
}

/// The first packet of a flow to a frontend (`scratch.ct` holds its key): check the source,
/// pick a backend, track the flow in both directions. (The non-inlined functions here keep
/// each BPF stack frame small: the verifier allows 512 bytes for the whole call chain.)
#[inline(never)]
pub fn new_flow(scratch: &mut Scratch, ports: [u8; 4], service: &ServiceValue) -> Verdict {
    let ip = &scratch.ip;
    let stats = maps::stats(service.id);
    if service.flags & SERVICE_SOURCE_RANGES != 0 && !maps::source_allowed(service.id, ip.src) {
        count(stats, |s| s.source_denied += 1);
        return Verdict::drop(Reason::SourceDenied);
    }
    let picked = pick(ip, ports, service);
    let Some(backend) = backend_ptr(picked) else {
        count(stats, |s| s.no_backend += 1);
        return Verdict::pass(Reason::NoBackend);
    };
    // SAFETY: a map value pointer from a successful lookup, valid for this program run.
    if !rewritable(scratch, unsafe { &*backend }) {
        return Verdict::pass(Reason::Unsupported);
    }
    if service.flags & SERVICE_AFFINITY != 0 {
        remember_client(&scratch.ip, service.id, picked);
    }
    track(scratch, service.id, picked, backend);
    count(stats, |s| s.new_flows += 1);
    if let Fragment::First { id } = scratch.ip.fragment {
        remember_fragment(scratch, id, picked, service.id);
    }
    // SAFETY: as above.
    aim(scratch, unsafe { &*backend }, picked, service.id, true);
    Verdict::pass(Reason::Steered)
}

/// Whether the DNAT can rewrite this packet for `backend`: a first SCTP fragment cannot take
/// a port change, as the CRC32c covers the whole datagram (see `nat::rewrite_port`). Asked
/// before anything is recorded, so that such a datagram goes to the kernel whole: its later
/// fragments find no entry.
#[inline(always)]
fn rewritable(scratch: &Scratch, backend: &BackendValue) -> bool {
    scratch.ip.proto != IPPROTO_SCTP
        || !matches!(scratch.ip.fragment, Fragment::First { .. })
        || backend.port_be == scratch.ct.dport_be
}

/// Records the rewrite for the DNAT, which runs in the caller's frame (see `super::finish`).
#[inline(always)]
fn aim(
    scratch: &mut Scratch,
    backend: &BackendValue,
    backend_id: u32,
    service_id: u32,
    port: bool,
) {
    // SAFETY: both in map values.
    unsafe { words::copy16(&raw mut scratch.target.addr, &raw const backend.addr_be) };
    scratch.target.port = backend.port_be;
    scratch.target.rewrite_port = u8::from(port);
    scratch.target.backend_id = backend_id;
    scratch.target.service_id = service_id;
    scratch.target.ifindex = backend.ifindex;
    scratch.target.backend_flags = backend.flags;
}

/// A later fragment: follows its first fragment's backend, or goes to the kernel when the
/// first fragment was not seen (never dropped here).
#[inline(never)]
pub fn later_fragment(scratch: &mut Scratch, id: u32) -> Verdict {
    frag_key(scratch, id);
    let Some(frag) = maps::FRAGMENTS.get_ptr(&scratch.frag) else {
        return Verdict::pass(Reason::NoBackend);
    };
    // SAFETY: a map value from a successful lookup, copied at once.
    let frag = unsafe { *frag };
    let Some(backend) = backend_ptr(frag.backend_id) else {
        return Verdict::pass(Reason::NoBackend);
    };
    // SAFETY: a map value pointer from a successful lookup, valid for this program run.
    let backend = unsafe { &*backend };
    aim(scratch, backend, frag.backend_id, frag.service_id, false);
    Verdict::pass(Reason::Steered)
}

/// The backend of an established flow (`v6`: its family), if it still exists (a map value
/// pointer).
#[inline(always)]
pub fn established(key: &CtKey, v6: bool) -> Option<(u32, *const BackendValue)> {
    let entry = maps::conntrack(key, v6)?;
    // SAFETY: a map value from a successful lookup.
    let backend_id = unsafe { (*entry).backend_id };
    Some((backend_id, backend_ptr(backend_id)?))
}

#[inline(always)]
fn backend_ptr(id: u32) -> Option<*const BackendValue> {
    maps::backend(id)
}

/// Where the first fragment of datagram `id` went, for its later fragments. A full table
/// evicts the oldest datagram; the later fragments then go to the kernel.
#[inline(never)]
fn remember_fragment(scratch: &mut Scratch, id: u32, backend_id: u32, service_id: u32) {
    frag_key(scratch, id);
    let value = FragValue {
        backend_id,
        service_id,
    };
    let _ = maps::FRAGMENTS.insert(&scratch.frag, value, 0);
}

/// Drops the entry of datagram `id`, if any: its first fragment went to the kernel.
#[inline(never)]
pub fn forget_fragment(scratch: &mut Scratch, id: u32) {
    frag_key(scratch, id);
    let _ = maps::FRAGMENTS.remove(&scratch.frag);
}

/// The backend id for a new flow (0: none): the client's affinity if it is still valid,
/// else Maglev. Records nothing: the caller refreshes the affinity once it knows the packet
/// is steered. An id, not the backend: a non-inlined BPF function returns one register.
#[inline(never)]
fn pick(ip: &Ip, ports: [u8; 4], service: &ServiceValue) -> u32 {
    if service.flags & SERVICE_AFFINITY == 0 {
        return maglev(ip, ports, service);
    }
    let key = AffinityKey {
        service_id: service.id,
        client_be: ip.src,
    };
    if let Some(entry) = maps::AFFINITY.get_ptr(key) {
        // SAFETY: a map value from a successful lookup.
        let (backend_id, last) = unsafe { ((*entry).backend_id, (*entry).last_ns) };
        // SAFETY: no preconditions.
        let now = unsafe { bpf_ktime_get_ns() };
        let timeout = u64::from(service.affinity_timeout_s) * 1_000_000_000;
        if now.saturating_sub(last) <= timeout
            && let Some(backend) = backend_ptr(backend_id)
            // SAFETY: a map value pointer from a successful lookup.
            && unsafe { (*backend).flags } & BACKEND_ACTIVE != 0
        {
            return backend_id;
        }
    }
    maglev(ip, ports, service)
}

/// Starts or refreshes the client's affinity to `backend_id` (a full LRU evicts the oldest).
#[inline(never)]
fn remember_client(ip: &Ip, service_id: u32, backend_id: u32) {
    let key = AffinityKey {
        service_id,
        client_be: ip.src,
    };
    let value = AffinityValue {
        backend_id,
        _pad: 0,
        // SAFETY: no preconditions.
        last_ns: unsafe { bpf_ktime_get_ns() },
    };
    let _ = maps::AFFINITY.insert(key, value, 0);
}

/// The Maglev slot's backend id (0: none).
#[inline(always)]
fn maglev(ip: &Ip, ports: [u8; 4], service: &ServiceValue) -> u32 {
    if service.maglev_size == 0 {
        return 0;
    }
    let slot = flow_hash(ip, ports) % service.maglev_size;
    maps::maglev_backend(service.id, slot)
}

/// Both conntrack entries of a new flow (`scratch.ct` is the forward key), built in the
/// scratch slot: on the BPF stack each address would be copied byte by byte. A full LRU
/// evicts its oldest entries.
#[inline(never)]
fn track(scratch: &mut Scratch, service_id: u32, backend_id: u32, backend: *const BackendValue) {
    let forward = &raw const scratch.ct;
    let value = &raw mut scratch.value;
    // SAFETY: every pointer is into the scratch slot; the word stores cover exactly the
    // fields named beside them (layouts asserted below).
    unsafe {
        (*value).backend_id = backend_id;
        (*value).service_id = service_id;
        // Forward: no address to restore; the reverse entry is written just below.
        words::store64::<CT_VALUE_NAT>(value.cast(), 0);
        words::store64::<{ CT_VALUE_NAT + 8 }>(value.cast(), 0);
        words::store64::<{ CT_VALUE_NAT + 16 }>(value.cast(), u64::from(CT_REVERSE_REFRESH) << 16);
        insert(scratch.ip.v6, forward, &raw mut scratch.ct4, value);
    }
    track_reverse(scratch, service_id, backend_id, backend);
}

/// Writes an established flow's reverse entry again ([`CT_REVERSE_REFRESH`]).
#[inline(never)]
fn retrack_reverse(
    scratch: &mut Scratch,
    service_id: u32,
    backend_id: u32,
    backend: *const BackendValue,
) {
    track_reverse(scratch, service_id, backend_id, backend);
}

/// The reverse entry of the flow `scratch.ct` (its forward key) to `backend`.
#[inline(always)]
fn track_reverse(
    scratch: &mut Scratch,
    service_id: u32,
    backend_id: u32,
    backend: *const BackendValue,
) {
    // SAFETY: a map value pointer from a successful lookup, valid for this program run.
    let backend = unsafe { &*backend };
    let forward = &raw const scratch.ct;
    let reverse = &raw mut scratch.reverse;
    let value = &raw mut scratch.value;
    // SAFETY: as in `track`, and the backend's map value.
    unsafe {
        (*value).backend_id = backend_id;
        (*value).service_id = service_id;
        // Reverse: backend → client, restoring the frontend.
        words::copy16(&raw mut (*reverse).src_be, &raw const backend.addr_be);
        words::copy16(&raw mut (*reverse).dst_be, &raw const (*forward).src_be);
        let tail = u64::from(u16::from_ne_bytes(backend.port_be))
            | u64::from(u16::from_ne_bytes((*forward).sport_be)) << 16
            | u64::from((*forward).proto) << 32
            | u64::from(CT_REVERSE) << 40;
        words::store64::<CT_KEY_TAIL>(reverse.cast(), tail);
        words::copy16(&raw mut (*value).nat_addr_be, &raw const (*forward).dst_be);
        words::store64::<{ CT_VALUE_NAT + 16 }>(
            value.cast(),
            u64::from(u16::from_ne_bytes((*forward).dport_be)),
        );
        insert(scratch.ip.v6, reverse, &raw mut scratch.reverse4, value);
    }
}

/// Where [`CtValue`]'s address to restore starts; the port and padding follow it in one word.
const CT_VALUE_NAT: usize = core::mem::offset_of!(CtValue, nat_addr_be);
const _: () = {
    assert!(CT_VALUE_NAT == 8 && size_of::<CtValue>() == CT_VALUE_NAT + 24);
    assert!(core::mem::offset_of!(CtValue, nat_port_be) == CT_VALUE_NAT + 16);
    assert!(core::mem::offset_of!(CtValue, refresh) == CT_VALUE_NAT + 18);
};

/// The fragment key of datagram `id` of `scratch.ip`, into `scratch.frag` (word stores, as in
/// [`forward_key`]). Keyed by `frag_proto`, not the upper layer: a later fragment does not
/// know the latter.
#[inline(always)]
fn frag_key(scratch: &mut Scratch, id: u32) {
    let frag = &raw mut scratch.frag;
    let ip = &scratch.ip;
    // SAFETY: all in the scratch map value; the last word is id, proto and padding.
    unsafe {
        words::copy16(&raw mut (*frag).src_be, &raw const ip.src);
        words::copy16(&raw mut (*frag).dst_be, &raw const ip.dst);
        words::store64::<FRAG_KEY_TAIL>(
            frag.cast(),
            u64::from(id) | u64::from(ip.frag_proto) << 32,
        );
    }
}

const FRAG_KEY_TAIL: usize = core::mem::offset_of!(FragKey, id);
const _: () = {
    assert!(FRAG_KEY_TAIL == 32 && size_of::<FragKey>() == FRAG_KEY_TAIL + 8);
    assert!(core::mem::offset_of!(FragKey, proto) == FRAG_KEY_TAIL + 4);
};

/// Spreads flows over Maglev slots: the client address and both ports through murmur3's
/// finalizer. The same flow always hashes the same.
#[inline(always)]
fn flow_hash(ip: &Ip, ports: [u8; 4]) -> u32 {
    let s = &ip.src;
    let mut h = 0x9e37_79b9 ^ u32::from(ip.proto);
    h = mix(h ^ u32::from_ne_bytes([s[0], s[1], s[2], s[3]]));
    h = mix(h ^ u32::from_ne_bytes([s[4], s[5], s[6], s[7]]));
    h = mix(h ^ u32::from_ne_bytes([s[8], s[9], s[10], s[11]]));
    h = mix(h ^ u32::from_ne_bytes([s[12], s[13], s[14], s[15]]));
    mix(h ^ u32::from_ne_bytes(ports))
}

#[inline(always)]
fn mix(mut h: u32) -> u32 {
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^ (h >> 16)
}

#[inline(always)]
pub fn count(
    stats: Option<*mut vipwire_common::l4::ServiceStats>,
    f: impl FnOnce(&mut vipwire_common::l4::ServiceStats),
) {
    if let Some(stats) = stats {
        // SAFETY: a per-CPU slot, only touched by this CPU while the program runs.
        f(unsafe { &mut *stats });
    }
}
