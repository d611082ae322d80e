//! ICMP errors about a steered flow (destination unreachable incl. fragmentation needed,
//! time exceeded; ICMPv6 also packet too big): a router sends them to the VIP, quoting the
//! reply our backend sent as VIP:port. They go to that backend, rewritten as if the backend
//! had sent the quoted packet itself, so its PMTU discovery and error handling work.
//!
//! Only quotes with a plain inner header (IPv4 without options, IPv6 without extension
//! headers) of a TCP, UDP or SCTP flow in conntrack are rewritten; other errors to a VIP are
//! left to the kernel.

use aya_ebpf::programs::XdpContext;
use vipwire_common::{
    Reason,
    l4::{CT_FORWARD, CtKey, IPPROTO_SCTP, IPPROTO_TCP, IPPROTO_UDP},
};

use super::{
    Delta, flow, hand_to_tc,
    headers::{Ip, Ipv4Hdr, Ipv6Hdr},
};
use crate::{
    Verdict,
    parse::{ETH_HLEN, ptr_at},
};

pub const ICMP_DEST_UNREACH: u8 = 3;
pub const ICMP_TIME_EXCEEDED: u8 = 11;
pub const ICMPV6_DEST_UNREACH: u8 = 1;
pub const ICMPV6_PACKET_TOO_BIG: u8 = 2;
pub const ICMPV6_TIME_EXCEEDED: u8 = 3;
/// ICMP and ICMPv6 headers before the quoted packet.
pub const ICMP_HLEN: usize = 8;

/// An IPv4 ICMP error to a VIP: rewritten for the flow's backend; a packed verdict, or
/// [`Verdict::NONE`] (not ours).
#[inline(never)]
pub fn error_v4(ctx: &XdpContext, ip: &Ip) -> u64 {
    quoted_v4(ctx, ip).map_or(Verdict::NONE, Verdict::pack)
}

#[inline(always)]
fn quoted_v4(ctx: &XdpContext, ip: &Ip) -> Option<Verdict> {
    let icmp = ptr_at::<[u8; ICMP_HLEN]>(ctx, ip.l4())?;
    // SAFETY (all raw reads and writes below): bounds-checked by ptr_at, alignment 1.
    let icmp_type = unsafe { (*icmp)[0] };
    if icmp_type != ICMP_DEST_UNREACH && icmp_type != ICMP_TIME_EXCEEDED {
        return None;
    }
    let inner_at = ip.l4() + ICMP_HLEN;
    let inner = ptr_at::<Ipv4Hdr>(ctx, inner_at)?;
    let hdr = unsafe { *inner };
    if hdr.version_ihl != 0x45 || !quotable(hdr.proto) {
        return None;
    }
    let inner_l4 = inner_at + size_of::<Ipv4Hdr>();
    let ports = ptr_at::<[u8; 4]>(ctx, inner_l4)?;
    let ports = unsafe { *ports };
    // The quoted packet is our reply: VIP:port → client.
    let vip = vipwire_common::l4::v4_mapped(hdr.src);
    if vip != ip.dst {
        return None;
    }
    let key = CtKey {
        src_be: vipwire_common::l4::v4_mapped(hdr.dst),
        dst_be: vip,
        sport_be: [ports[2], ports[3]],
        dport_be: [ports[0], ports[1]],
        proto: hdr.proto,
        dir: CT_FORWARD,
        _pad: [0; 2],
    };
    let (backend_id, backend) = flow::established(&key, false)?;
    // SAFETY: a map value pointer from a successful lookup, copied at once.
    let backend = unsafe { *backend };
    let outer = ptr_at::<Ipv4Hdr>(ctx, ETH_HLEN)?;
    let new_addr = [
        backend.addr_be[12],
        backend.addr_be[13],
        backend.addr_be[14],
        backend.addr_be[15],
    ];

    // Inner: source address and its header checksum, source port and its L4 checksum.
    let inner_check = Delta::new()
        .replace(&hdr.src, &new_addr)
        .apply(hdr.check_be);
    let mut icmp_delta = Delta::new()
        .replace(&hdr.src, &new_addr)
        .replace(&hdr.check_be, &inner_check)
        .replace(&[ports[0], ports[1]], &backend.port_be);
    let l4_delta = Delta::new()
        .replace(&hdr.src, &new_addr)
        .replace(&[ports[0], ports[1]], &backend.port_be);
    icmp_delta = icmp_delta.plus(rewrite_quoted_checksum(ctx, inner_l4, hdr.proto, l4_delta));
    unsafe {
        (*inner).src = new_addr;
        (*inner).check_be = inner_check;
        *(ports_ptr(ctx, inner_l4)?) = backend.port_be;
        let check = icmp_delta.apply([(*icmp)[2], (*icmp)[3]]);
        (*icmp)[2] = check[0];
        (*icmp)[3] = check[1];
        let old = (*outer).dst;
        (*outer).dst = new_addr;
        (*outer).check_be = Delta::new()
            .replace(&old, &new_addr)
            .apply((*outer).check_be);
    }
    hand_to_tc(ctx, backend_id, backend.ifindex, backend.flags);
    Some(Verdict::pass(Reason::IcmpError))
}

/// An ICMPv6 error to a VIP6: likewise.
#[inline(never)]
pub fn error_v6(ctx: &XdpContext, ip: &Ip) -> u64 {
    quoted_v6(ctx, ip).map_or(Verdict::NONE, Verdict::pack)
}

#[inline(always)]
fn quoted_v6(ctx: &XdpContext, ip: &Ip) -> Option<Verdict> {
    let icmp = ptr_at::<[u8; ICMP_HLEN]>(ctx, ip.l4())?;
    // SAFETY (all raw reads and writes below): bounds-checked by ptr_at, alignment 1.
    let icmp_type = unsafe { (*icmp)[0] };
    if !matches!(
        icmp_type,
        ICMPV6_DEST_UNREACH | ICMPV6_PACKET_TOO_BIG | ICMPV6_TIME_EXCEEDED
    ) {
        return None;
    }
    let inner_at = ip.l4() + ICMP_HLEN;
    let inner = ptr_at::<Ipv6Hdr>(ctx, inner_at)?;
    let (src, dst, next_header) = unsafe { ((*inner).src, (*inner).dst, (*inner).next_header) };
    if !quotable(next_header) || src != ip.dst {
        return None;
    }
    let inner_l4 = inner_at + size_of::<Ipv6Hdr>();
    let ports = ptr_at::<[u8; 4]>(ctx, inner_l4)?;
    let ports = unsafe { *ports };
    let key = CtKey {
        src_be: dst,
        dst_be: src,
        sport_be: [ports[2], ports[3]],
        dport_be: [ports[0], ports[1]],
        proto: next_header,
        dir: CT_FORWARD,
        _pad: [0; 2],
    };
    let (backend_id, backend) = flow::established(&key, true)?;
    // SAFETY: a map value pointer from a successful lookup, copied at once.
    let backend = unsafe { *backend };
    let outer = ptr_at::<Ipv6Hdr>(ctx, ETH_HLEN)?;
    let l4_delta = Delta::new()
        .replace(&src, &backend.addr_be)
        .replace(&[ports[0], ports[1]], &backend.port_be);
    // The ICMPv6 checksum covers the outer destination (pseudo-header) and the quote.
    let icmp_delta = Delta::new()
        .replace(&src, &backend.addr_be)
        .replace(&[ports[0], ports[1]], &backend.port_be)
        .replace(&src, &backend.addr_be)
        .plus(rewrite_quoted_checksum(
            ctx,
            inner_l4,
            next_header,
            l4_delta,
        ));
    unsafe {
        (*inner).src = backend.addr_be;
        *(ports_ptr(ctx, inner_l4)?) = backend.port_be;
        let check = icmp_delta.apply([(*icmp)[2], (*icmp)[3]]);
        (*icmp)[2] = check[0];
        (*icmp)[3] = check[1];
        (*outer).dst = backend.addr_be;
    }
    hand_to_tc(ctx, backend_id, backend.ifindex, backend.flags);
    Some(Verdict::pass(Reason::IcmpError))
}

#[inline(always)]
fn quotable(proto: u8) -> bool {
    matches!(proto, IPPROTO_TCP | IPPROTO_UDP | IPPROTO_SCTP)
}

#[inline(always)]
fn ports_ptr(ctx: &XdpContext, at: usize) -> Option<*mut [u8; 2]> {
    ptr_at::<[u8; 2]>(ctx, at)
}

/// Updates the quoted TCP/UDP checksum when the quote includes it (routers quote at least 8
/// bytes: UDP's always, TCP's only when they quote more, as RFC 1812 routers do); returns the
/// change to the field, which the ICMP checksum also covers.
#[inline(always)]
fn rewrite_quoted_checksum(ctx: &XdpContext, inner_l4: usize, proto: u8, delta: Delta) -> Delta {
    // SAFETY: ptr_at bounds-checks the two bytes against the packet.
    unsafe { update_quoted_checksum(proto, delta, |at| ptr_at(ctx, inner_l4 + at)) }
}

/// Applies `delta` to the checksum of a quoted `proto` header (UDP's "no checksum" stays 0),
/// found through `field_at` (its offset in that header → the field, `None` when the quote
/// ends before it); returns the change to the field. Only TCP and UDP: SCTP's CRC32c covers
/// the whole packet, which a quote rarely holds. Shared by the errors to a VIP (here) and
/// those a pod sends (`crate::tc_icmp`).
///
/// # Safety
/// A pointer `field_at` returns points at two writable bytes of the packet.
#[inline(always)]
pub unsafe fn update_quoted_checksum(
    proto: u8,
    delta: Delta,
    field_at: impl FnOnce(usize) -> Option<*mut [u8; 2]>,
) -> Delta {
    let at = match proto {
        IPPROTO_TCP => 16,
        IPPROTO_UDP => 6,
        _ => return Delta::new(),
    };
    let Some(check) = field_at(at) else {
        return Delta::new();
    };
    // SAFETY: the caller's.
    let old = unsafe { *check };
    let new = if proto == IPPROTO_UDP {
        delta.apply_udp(old)
    } else {
        delta.apply(old)
    };
    // SAFETY: the caller's.
    unsafe { *check = new };
    Delta::new().replace(&old, &new)
}
