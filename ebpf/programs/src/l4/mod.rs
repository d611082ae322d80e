//! L4 steering in XDP: packets for a frontend (VIP, port, protocol) are DNATed to a local
//! backend and handed to the uplink's TC program with an [`XdpMeta`] in front, which
//! delivers them into the pod (see `crate::tc` and vipwire_common::l4 for the whole path).
//!
//! Anything that is not for a frontend leaves with `XDP_PASS`, untouched. A new flow gets its
//! backend from ClientIP affinity or the service's Maglev table and is recorded in conntrack
//! in both directions; later packets follow conntrack, so a flow stays on its backend when
//! the endpoint set changes, until that backend is removed.
//!
//! A fragmented datagram is steered whole or passed whole: its first fragment's backend is
//! recorded by IP id for the later fragments only once that fragment is known to be
//! rewritable, and nothing at all is recorded for one that is not.

mod csum;
mod fast;
mod flow;
mod headers;
pub mod icmp;
pub mod maps;
mod nat;
mod sctp;

use aya_ebpf::{helpers::bpf_xdp_adjust_meta, programs::XdpContext};
use vipwire_common::{
    Reason,
    l4::{
        IPPROTO_SCTP, IPPROTO_TCP, IPPROTO_UDP, ServiceKey, XDP_META_MAGIC, XdpMeta,
        vip_filter_bit_folded, vip_filter_bit_v4_unmasked,
    },
};

use self::headers::Fragment;
pub use self::{
    csum::Delta,
    headers::{IPPROTO_ICMP, IPPROTO_ICMPV6, Ipv4Hdr, Ipv6Hdr},
    sctp::port_changed as sctp_port_changed,
};
use crate::{Verdict, parse::ptr_at};

/// An IPv4 packet whose destination is `dst` (as `words::load32_wide` reads it): steered when
/// it is for a frontend, else passed.
#[inline(always)]
pub fn ipv4(ctx: &XdpContext, dst: u64) -> Verdict {
    if maps::maybe_vip(vip_filter_bit_v4_unmasked(dst)) {
        Verdict::unpack(fast::established_v4(ctx.ctx)).unwrap_or_else(|| steer_ipv4(ctx))
    } else {
        Verdict::pass(Reason::Passed)
    }
}

/// An IPv6 packet for a VIP: its verdict. `None` when the destination is not a VIP: the
/// caller goes on with neighbor discovery.
#[inline(always)]
pub fn ipv6(ctx: &XdpContext) -> Option<Verdict> {
    match headers::ipv6_dst_folded(ctx) {
        Some(folded) if maps::maybe_vip(u64::from(vip_filter_bit_folded(folded))) => {
            steer_ipv6(ctx)
        }
        _ => None,
    }
}

// Separate BPF functions: the pass-through path stays small, and the steering path's stack
// frame is not added to the ARP/NDP ones.
#[inline(always)]
fn steer_ipv4(ctx: &XdpContext) -> Verdict {
    finish(ctx, steer_ipv4_packed(ctx)).unwrap_or(Verdict::pass(Reason::Passed))
}

#[inline(always)]
fn steer_ipv6(ctx: &XdpContext) -> Option<Verdict> {
    finish(ctx, steer_ipv6_packed(ctx))
}

/// Carries out what the lookup decided. The rewrites run here, one call below the program's
/// own frame, rather than under the lookup's calls: the verifier adds up the stack of every
/// frame in a call chain (512 bytes at most).
#[inline(always)]
fn finish(ctx: &XdpContext, packed: u64) -> Option<Verdict> {
    let verdict = Verdict::unpack(packed)?;
    match verdict.reason {
        Reason::Steered => {
            let scratch = maps::scratch()?;
            let target = &scratch.target;
            let port = (target.rewrite_port != 0).then_some(target.port);
            if !nat::dnat(ctx, &scratch.ip, &target.addr, port) {
                return Some(Verdict::pass(Reason::Malformed));
            }
            flow::count(maps::stats(target.service_id), |s| {
                s.packets += 1;
                s.bytes += u64::from(scratch.ip.len);
            });
            hand_to_tc(ctx, target.backend_id, target.ifindex, target.backend_flags);
            Some(verdict)
        }
        // A candidate: the lookup saw an ICMP error to a VIP.
        Reason::IcmpError => {
            let scratch = maps::scratch()?;
            Verdict::unpack(if scratch.ip.v6 {
                icmp::error_v6(ctx, &scratch.ip)
            } else {
                icmp::error_v4(ctx, &scratch.ip)
            })
        }
        _ => Some(verdict),
    }
}

#[inline(never)]
fn steer_ipv4_packed(ctx: &XdpContext) -> u64 {
    let Some(scratch) = maps::scratch() else {
        return Verdict::NONE;
    };
    if headers::ipv4(ctx, &mut scratch.ip).is_none() {
        return Verdict::NONE;
    }
    steer(ctx, scratch)
}

#[inline(never)]
fn steer_ipv6_packed(ctx: &XdpContext) -> u64 {
    let Some(scratch) = maps::scratch() else {
        return Verdict::NONE;
    };
    if headers::ipv6(ctx, &mut scratch.ip).is_none() {
        return Verdict::NONE;
    }
    steer(ctx, scratch)
}

/// A packed verdict; [`Verdict::NONE`]: not for a frontend (the packet is untouched).
#[inline(always)]
fn steer(ctx: &XdpContext, scratch: &mut maps::Scratch) -> u64 {
    let ip = &scratch.ip;
    if let Fragment::Later { id } = ip.fragment {
        return flow::later_fragment(scratch, id).pack();
    }
    let packed = match ip.proto {
        IPPROTO_TCP | IPPROTO_UDP | IPPROTO_SCTP => {
            steer_ports(ctx, scratch).map_or(Verdict::NONE, Verdict::pack)
        }
        IPPROTO_ICMP if !ip.v6 => return Verdict::pass(Reason::IcmpError).pack(),
        IPPROTO_ICMPV6 if ip.v6 => return Verdict::pass(Reason::IcmpError).pack(),
        _ => Verdict::NONE,
    };
    // A first fragment left to the kernel takes its datagram with it: the entry of an
    // earlier datagram with the same id (IPv4 ids are 16 bits) must not pull its later
    // fragments into a pod.
    if let Fragment::First { id } = scratch.ip.fragment
        && packed >> 32 != Reason::Steered as u64
    {
        flow::forget_fragment(scratch, id);
    }
    packed
}

#[inline(always)]
fn steer_ports(ctx: &XdpContext, scratch: &mut maps::Scratch) -> Option<Verdict> {
    let ip = &scratch.ip;
    // A frame that ends before the port and checksum the DNAT writes (truncated, or a first
    // fragment that splits the header: RFC 1858's tiny fragment) is not steered, decided
    // before anything is recorded: a first fragment's whole datagram then goes to the kernel.
    ptr_at::<u8>(ctx, ip.l4() + nat::rewritten_len(ip.proto) - 1)?;
    let ports = ptr_at::<[u8; 4]>(ctx, ip.l4())?;
    // SAFETY: bounds-checked by ptr_at.
    let ports = unsafe { *ports };
    flow::forward_key(scratch, ports);
    // A TCP SYN starts a flow: its conntrack lookup would be a miss, and a miss costs the
    // most (a random bucket, nothing cached). A retransmitted SYN gets the same Maglev pick
    // again, unless the backends changed in between, when it starts over on the new one,
    // as in Katran.
    if !is_syn(ctx, &scratch.ip)
        && let Some(verdict) = Verdict::unpack(flow::established_packet(scratch))
    {
        return Some(verdict);
    }
    let ip = &scratch.ip;
    let service = ServiceKey {
        addr_be: ip.dst,
        port_be: [ports[2], ports[3]],
        proto: ip.proto,
        _pad: 0,
    };
    let service = maps::SERVICES.get_ptr(service)?;
    // SAFETY: a map value pointer from a successful lookup, valid for this program run.
    Some(flow::new_flow(scratch, ports, unsafe { &*service }))
}

/// A TCP segment with SYN set and ACK clear (a connection request).
#[inline(always)]
fn is_syn(ctx: &XdpContext, ip: &headers::Ip) -> bool {
    const SYN: u8 = 0x02;
    const ACK: u8 = 0x10;
    if ip.proto != IPPROTO_TCP {
        return false;
    }
    match ptr_at::<u8>(ctx, ip.l4() + 13) {
        // SAFETY: bounds-checked by ptr_at.
        Some(flags) => (unsafe { *flags }) & (SYN | ACK) == SYN,
        None => false,
    }
}

/// Puts the [`XdpMeta`] for the uplink's TC program in front of the frame. Without room for
/// it (a driver without metadata support), the DNATed packet goes to the kernel as it is.
#[inline(always)]
pub fn hand_to_tc(ctx: &XdpContext, backend_id: u32, ifindex: u32, backend_flags: u32) {
    // SAFETY: the helper only moves data_meta; every pointer is re-derived afterwards.
    if unsafe { bpf_xdp_adjust_meta(ctx.ctx, -(size_of::<XdpMeta>() as i32)) } != 0 {
        return;
    }
    let meta = ctx.metadata();
    if meta + size_of::<XdpMeta>() > ctx.data() {
        return;
    }
    // SAFETY: bounds-checked against data just above; XdpMeta's alignment (4) holds
    // because data is 4-aligned and the meta is 16 bytes before it.
    unsafe {
        *(meta as *mut XdpMeta) = XdpMeta {
            magic: XDP_META_MAGIC,
            backend_id,
            ifindex,
            backend_flags,
        };
    }
}
