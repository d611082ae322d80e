//! ICMP errors a pod sends about a flow it serves: port unreachable for a datagram to a port
//! nothing listens on, fragmentation needed / packet too big, time exceeded. They quote the
//! packet the pod got, client → pod:target port. Like the flow's replies (`crate::tc`), they
//! must leave as if the VIP had sent them (outer source the VIP, quoted destination VIP:port,
//! every checksum the rewrite touches updated) or the client's stack matches them to no
//! socket, and a UDP client waits out its timeout instead of seeing ECONNREFUSED.
//!
//! Only quotes with a plain inner header (IPv4 without options, IPv6 without extension
//! headers) of a TCP, UDP or SCTP flow with a reverse conntrack entry are rewritten; other
//! packets are left as they are. The mirror image of `crate::l4::icmp` (errors to a VIP).

use aya_ebpf::programs::TcContext;
use vipwire_common::l4::{
    CT_REVERSE, CtKey, CtValue, IPPROTO_SCTP, IPPROTO_TCP, IPPROTO_UDP, v4_mapped,
};

use crate::l4::{
    Delta, Ipv4Hdr, Ipv6Hdr,
    icmp::{
        ICMP_DEST_UNREACH, ICMP_HLEN, ICMP_TIME_EXCEEDED, ICMPV6_DEST_UNREACH,
        ICMPV6_PACKET_TOO_BIG, ICMPV6_TIME_EXCEEDED, update_quoted_checksum,
    },
    maps,
};

const ETH_HLEN: usize = 14;

/// Rewrites an ICMP (`v6`: ICMPv6) error about a tracked flow and puts its new source (the
/// VIP, IPv4-mapped for IPv4) in `vip`; false: not one, left untouched.
#[inline(always)]
pub fn rewrite(ctx: &TcContext, v6: bool, vip: &mut [u8; 16]) -> bool {
    // The pod's kernel builds an error in one buffer, but direct access needs all of it in
    // the linear part (a length of 0 would only make that part writable).
    if ctx.pull_data(ctx.len()).is_err() {
        return false;
    }
    let rewritten = if v6 { rewrite_v6(ctx) } else { rewrite_v4(ctx) };
    match rewritten {
        Some(addr) => {
            *vip = addr;
            true
        }
        None => false,
    }
}

#[inline(always)]
fn rewrite_v4(ctx: &TcContext) -> Option<[u8; 16]> {
    // SAFETY (every raw read and write below): bounds-checked by ptr_at, alignment 1.
    let outer = unsafe { *ptr_at::<Ipv4Hdr>(ctx, ETH_HLEN)? };
    if outer.version_ihl != 0x45 {
        return None;
    }
    let icmp_at = ETH_HLEN + size_of::<Ipv4Hdr>();
    let icmp = unsafe { *ptr_at::<[u8; ICMP_HLEN]>(ctx, icmp_at)? };
    if icmp[0] != ICMP_DEST_UNREACH && icmp[0] != ICMP_TIME_EXCEEDED {
        return None;
    }
    let inner_at = icmp_at + ICMP_HLEN;
    let hdr = unsafe { *ptr_at::<Ipv4Hdr>(ctx, inner_at)? };
    // The quoted packet is one the pod sending the error received.
    if hdr.version_ihl != 0x45 || !quotable(hdr.proto) || hdr.dst != outer.src {
        return None;
    }
    let inner_l4 = inner_at + size_of::<Ipv4Hdr>();
    let ports = unsafe { *ptr_at::<[u8; 4]>(ctx, inner_l4)? };
    let (old_port, client_port) = ([ports[2], ports[3]], [ports[0], ports[1]]);
    let entry = reverse_entry(
        v4_mapped(hdr.dst),
        v4_mapped(hdr.src),
        old_port,
        client_port,
        hdr.proto,
        false,
    )?;
    let n = &entry.nat_addr_be;
    let vip = [n[12], n[13], n[14], n[15]];
    let new_port = entry.nat_port_be;

    // Quoted: destination address and its header checksum, destination port and its L4
    // checksum; the ICMP checksum covers all of them (not the outer header).
    let inner_check = Delta::new().replace(&hdr.dst, &vip).apply(hdr.check_be);
    let l4_delta = Delta::new()
        .replace(&hdr.dst, &vip)
        .replace(&old_port, &new_port);
    let icmp_delta = Delta::new()
        .replace(&hdr.dst, &vip)
        .replace(&hdr.check_be, &inner_check)
        .replace(&old_port, &new_port)
        .plus(rewrite_quoted_checksum(ctx, inner_l4, hdr.proto, l4_delta));
    let outer_check = Delta::new().replace(&outer.src, &vip).apply(outer.check_be);
    unsafe {
        let inner = ptr_at::<Ipv4Hdr>(ctx, inner_at)?;
        (*inner).dst = vip;
        (*inner).check_be = inner_check;
        *ptr_at::<[u8; 2]>(ctx, inner_l4 + 2)? = new_port;
        *ptr_at::<[u8; 2]>(ctx, icmp_at + 2)? = icmp_delta.apply([icmp[2], icmp[3]]);
        let outer = ptr_at::<Ipv4Hdr>(ctx, ETH_HLEN)?;
        (*outer).src = vip;
        (*outer).check_be = outer_check;
    }
    Some(entry.nat_addr_be)
}

#[inline(always)]
fn rewrite_v6(ctx: &TcContext) -> Option<[u8; 16]> {
    // SAFETY (every raw read and write below): bounds-checked by ptr_at, alignment 1.
    let outer = unsafe { *ptr_at::<Ipv6Hdr>(ctx, ETH_HLEN)? };
    let icmp_at = ETH_HLEN + size_of::<Ipv6Hdr>();
    let icmp = unsafe { *ptr_at::<[u8; ICMP_HLEN]>(ctx, icmp_at)? };
    if !matches!(
        icmp[0],
        ICMPV6_DEST_UNREACH | ICMPV6_PACKET_TOO_BIG | ICMPV6_TIME_EXCEEDED
    ) {
        return None;
    }
    let inner_at = icmp_at + ICMP_HLEN;
    let hdr = unsafe { *ptr_at::<Ipv6Hdr>(ctx, inner_at)? };
    if !quotable(hdr.next_header) || hdr.dst != outer.src {
        return None;
    }
    let inner_l4 = inner_at + size_of::<Ipv6Hdr>();
    let ports = unsafe { *ptr_at::<[u8; 4]>(ctx, inner_l4)? };
    let (old_port, client_port) = ([ports[2], ports[3]], [ports[0], ports[1]]);
    let entry = reverse_entry(
        hdr.dst,
        hdr.src,
        old_port,
        client_port,
        hdr.next_header,
        true,
    )?;
    let vip = entry.nat_addr_be;
    let new_port = entry.nat_port_be;
    let l4_delta = Delta::new()
        .replace(&hdr.dst, &vip)
        .replace(&old_port, &new_port);
    // The ICMPv6 checksum covers the outer source (pseudo-header) and the quote.
    let icmp_delta = Delta::new()
        .replace(&outer.src, &vip)
        .replace(&hdr.dst, &vip)
        .replace(&old_port, &new_port)
        .plus(rewrite_quoted_checksum(
            ctx,
            inner_l4,
            hdr.next_header,
            l4_delta,
        ));
    unsafe {
        (*ptr_at::<Ipv6Hdr>(ctx, inner_at)?).dst = vip;
        *ptr_at::<[u8; 2]>(ctx, inner_l4 + 2)? = new_port;
        *ptr_at::<[u8; 2]>(ctx, icmp_at + 2)? = icmp_delta.apply([icmp[2], icmp[3]]);
        (*ptr_at::<Ipv6Hdr>(ctx, ETH_HLEN)?).src = vip;
    }
    Some(vip)
}

/// The reverse conntrack entry of the flow pod:`pod_port` → client:`client_port` (`v6`: its
/// family).
#[inline(always)]
fn reverse_entry(
    pod: [u8; 16],
    client: [u8; 16],
    pod_port: [u8; 2],
    client_port: [u8; 2],
    proto: u8,
    v6: bool,
) -> Option<CtValue> {
    let key = CtKey {
        src_be: pod,
        dst_be: client,
        sport_be: pod_port,
        dport_be: client_port,
        proto,
        dir: CT_REVERSE,
        _pad: [0; 2],
    };
    let entry = maps::conntrack(&key, v6)?;
    // SAFETY: a map value from a successful lookup, copied at once.
    Some(unsafe { *entry })
}

#[inline(always)]
fn quotable(proto: u8) -> bool {
    matches!(proto, IPPROTO_TCP | IPPROTO_UDP | IPPROTO_SCTP)
}

/// Updates the quoted TCP/UDP checksum when the quote includes it; returns the change to the
/// field.
#[inline(always)]
fn rewrite_quoted_checksum(ctx: &TcContext, inner_l4: usize, proto: u8, delta: Delta) -> Delta {
    // SAFETY: ptr_at bounds-checks the two bytes against the packet.
    unsafe { update_quoted_checksum(proto, delta, |at| ptr_at(ctx, inner_l4 + at)) }
}

/// A pointer to a `T` at `at` in the packet, if the linear data holds it.
#[inline(always)]
fn ptr_at<T>(ctx: &TcContext, at: usize) -> Option<*mut T> {
    let (data, end) = (ctx.data(), ctx.data_end());
    if data + at + size_of::<T>() > end {
        return None;
    }
    Some((data + at) as *mut T)
}
