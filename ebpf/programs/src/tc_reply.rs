//! `vipwire_tc_reply` (TC ingress on the host side of each local backend's veth): what a pod
//! sends back on a tracked flow leaves as if the VIP had sent it, by the FIB's route to the
//! client, past the host's FORWARD chain, whichever interface that is:
//! - a reply gets VIP:port back as its source (checksum helpers: a reply from a pod is
//!   usually CHECKSUM_PARTIAL, the field holding only the pseudo-header sum);
//! - the later fragments of a fragmented reply, which carry no ports, get the VIP its first
//!   fragment got (`vipwire_reply_fragments_v1`);
//! - an ICMP error about the flow gets the VIP as its source and VIP:port in its quote
//!   (`crate::tc_icmp`).
//!
//! Each case is its own BPF function below a small program frame: the verifier allows 512
//! bytes of stack for a whole call chain, and together they would not fit.

#![allow(
    clippy::needless_borrows_for_generic_args,
    reason = "by value the keys and values would be copied onto the BPF stack"
)]

use aya_ebpf::{
    bindings::{BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR, TC_ACT_OK},
    macros::classifier,
    programs::TcContext,
};
use vipwire_common::{
    Reason,
    l4::{
        CT_REVERSE, CtKey, FragKey, IPPROTO_SCTP, IPPROTO_TCP, IPPROTO_UDP, ReplyFragValue,
        v4_mapped,
    },
};

use crate::{
    counters,
    l4::{IPPROTO_ICMP, IPPROTO_ICMPV6, maps, sctp_port_changed},
    tc::{ETH_HLEN, ETH_P_IP, ETH_P_IPV6, FibSlot, route_to_client, send_to_client},
    tc_icmp,
};

/// IPv6 fragment header.
const IPPROTO_FRAGMENT: u8 = 44;
/// What the case functions return for "not ours": the packet goes on untouched.
const NOT_OURS: i64 = -1;

#[classifier]
pub fn vipwire_tc_reply(ctx: TcContext) -> i32 {
    let action = reply(&ctx);
    if action == NOT_OURS {
        return TC_ACT_OK;
    }
    counters::bump(Reason::ReplyNat);
    action as i32
}

/// What the packet's headers say, for the case functions.
#[derive(Clone, Copy)]
struct Headers {
    /// As the pod sent them (IPv4-mapped for IPv4).
    src: [u8; 16],
    dst: [u8; 16],
    /// Where the upper layer starts (past an IPv6 fragment header) and its length.
    l4: u32,
    l4_len: u32,
    /// The datagram's id, for a fragment.
    id: u32,
    proto: u8,
    v6: bool,
    /// Not to be fragmented on the way (IPv4 DF; every IPv6 packet).
    dont_fragment: bool,
    fragment: Fragment,
}

/// Where a packet sits in its datagram.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Fragment {
    Whole,
    /// Offset 0, more to come.
    First,
    /// Not at offset 0: no upper-layer header.
    Later,
}

#[inline(always)]
fn reply(ctx: &TcContext) -> i64 {
    let mut h = Headers {
        src: [0; 16],
        dst: [0; 16],
        l4: 0,
        l4_len: 0,
        id: 0,
        proto: 0,
        v6: false,
        dont_fragment: false,
        fragment: Fragment::Whole,
    };
    if !read_headers(ctx, &mut h) {
        return NOT_OURS;
    }
    match h.fragment {
        Fragment::Later => later_fragment(ctx, &h),
        Fragment::Whole if h.proto == if h.v6 { IPPROTO_ICMPV6 } else { IPPROTO_ICMP } => {
            icmp_error(ctx, &h)
        }
        _ => flow_packet(ctx, &h),
    }
}

/// Reads an IPv4 or IPv6 packet's headers into `h`; false for anything else or a malformed
/// header. Replies from a pod carry no IPv6 extension header but a fragment header in
/// practice; others are not ours.
#[inline(never)]
fn read_headers(ctx: &TcContext, h: &mut Headers) -> bool {
    headers_into(ctx, h).is_some()
}

#[inline(always)]
fn headers_into(ctx: &TcContext, h: &mut Headers) -> Option<()> {
    let ethertype: [u8; 2] = ctx.load(12).ok()?;
    let ip = ETH_HLEN as usize;
    if ethertype == ETH_P_IP {
        let vihl: u8 = ctx.load(ip).ok()?;
        if vihl >> 4 != 4 || vihl & 0x0f < 5 {
            return None;
        }
        let total: [u8; 2] = ctx.load(ip + 2).ok()?;
        let id: [u8; 2] = ctx.load(ip + 4).ok()?;
        let frag: [u8; 2] = ctx.load(ip + 6).ok()?;
        let addrs: [u8; 8] = ctx.load(ip + 12).ok()?;
        let ihl = u32::from(vihl & 0x0f) * 4;
        h.src = v4_mapped([addrs[0], addrs[1], addrs[2], addrs[3]]);
        h.dst = v4_mapped([addrs[4], addrs[5], addrs[6], addrs[7]]);
        h.l4 = ETH_HLEN + ihl;
        // 0 for an IPv4 BIG TCP packet (over 64 KiB, its length is the skb's): only SCTP's
        // CRC update needs the length, and SCTP has no such packets.
        h.l4_len = u32::from(u16::from_be_bytes(total)).saturating_sub(ihl);
        h.id = u32::from(u16::from_be_bytes(id));
        h.proto = ctx.load(ip + 9).ok()?;
        h.dont_fragment = frag[0] & 0x40 != 0;
        let offset = u16::from_be_bytes([frag[0] & 0x1f, frag[1]]);
        h.fragment = fragment(offset, frag[0] & 0x20 != 0);
        Some(())
    } else if ethertype == ETH_P_IPV6 {
        let payload: [u8; 2] = ctx.load(ip + 4).ok()?;
        h.src = ctx.load(ip + 8).ok()?;
        h.dst = ctx.load(ip + 24).ok()?;
        h.l4 = ETH_HLEN + 40;
        h.l4_len = u32::from(u16::from_be_bytes(payload));
        h.proto = ctx.load(ip + 6).ok()?;
        h.v6 = true;
        h.dont_fragment = true;
        if h.proto == IPPROTO_FRAGMENT {
            // Next header, reserved, offset (13 bits) and M, identification.
            let f: [u8; 8] = ctx.load(h.l4 as usize).ok()?;
            h.proto = f[0];
            h.l4 += 8;
            h.l4_len = h.l4_len.checked_sub(8)?;
            h.id = u32::from_be_bytes([f[4], f[5], f[6], f[7]]);
            h.fragment = fragment(u16::from_be_bytes([f[2], f[3]]) >> 3, f[3] & 1 != 0);
        }
        Some(())
    } else {
        None
    }
}

#[inline(always)]
fn fragment(offset: u16, more: bool) -> Fragment {
    match (offset, more) {
        (0, false) => Fragment::Whole,
        (0, true) => Fragment::First,
        _ => Fragment::Later,
    }
}

/// A packet of a tracked flow (a whole one, or a first fragment): VIP:port as its source.
#[inline(never)]
fn flow_packet(ctx: &TcContext, h: &Headers) -> i64 {
    let h = *h;
    if h.fragment == Fragment::First {
        // The id may be one an earlier datagram had (IPv4's are 16 bits): whatever it
        // recorded must not rewrite the fragments of this one unless this one is ours.
        let _ = maps::REPLY_FRAGMENTS.remove(&fragment_key(&h));
    }
    // An SCTP fragment: its CRC32c covers the whole datagram, which no fragment holds. An
    // SCTP packet without a length (no total length in its IPv4 header): its CRC update needs
    // one.
    if !matches!(h.proto, IPPROTO_TCP | IPPROTO_UDP | IPPROTO_SCTP)
        || (h.proto == IPPROTO_SCTP && (h.fragment != Fragment::Whole || h.l4_len == 0))
    {
        return NOT_OURS;
    }
    let Ok(ports) = ctx.load::<[u8; 4]>(h.l4 as usize) else {
        return NOT_OURS;
    };
    let key = CtKey {
        src_be: h.src,
        dst_be: h.dst,
        sport_be: [ports[0], ports[1]],
        dport_be: [ports[2], ports[3]],
        proto: h.proto,
        dir: CT_REVERSE,
        _pad: [0; 2],
    };
    let Some(entry) = maps::conntrack(&key, h.v6) else {
        return NOT_OURS;
    };
    // SAFETY: a map value from a successful lookup, copied at once.
    let entry = unsafe { *entry };
    let mut slot = FibSlot::new();
    let route = route_to_client(&mut slot, ctx, &entry.nat_addr_be, &h.dst);
    // Too big for the way out, and not to be fragmented on it: left to the kernel as the pod
    // sent it, whose forwarding then tells the pod the MTU (ICMP fragmentation needed or
    // packet too big) and drops it; the pod sends smaller packets from then on. Rewritten
    // first, that ICMP would go to the VIP (this node), and the pod would keep sending what
    // never leaves.
    if route.too_big() && h.dont_fragment {
        return NOT_OURS;
    }
    let ports = ([ports[0], ports[1]], entry.nat_port_be);
    if snat(ctx, &h, &entry.nat_addr_be, ports).is_none() {
        return NOT_OURS;
    }
    if let Some(stats) = maps::stats(entry.service_id) {
        // SAFETY: a per-CPU slot, only touched by this CPU while the program runs.
        unsafe { (*stats).replies += 1 };
    }
    if h.fragment == Fragment::First {
        let value = ReplyFragValue {
            nat_addr_be: entry.nat_addr_be,
        };
        let _ = maps::REPLY_FRAGMENTS.insert(&fragment_key(&h), &value, 0);
    }
    sent(route.send(ctx))
}

/// A later fragment of a reply whose first fragment was rewritten: the same source address
/// (it has no ports), sent the same way. Not ours when its first fragment was not seen.
#[inline(never)]
fn later_fragment(ctx: &TcContext, h: &Headers) -> i64 {
    let h = *h;
    let Some(value) = maps::REPLY_FRAGMENTS.get_ptr(&fragment_key(&h)) else {
        return NOT_OURS;
    };
    // SAFETY: a map value from a successful lookup, copied at once.
    let vip = unsafe { (*value).nat_addr_be };
    let rewritten = if h.v6 {
        ctx.store(ETH_HLEN as usize + 8, &vip, 0).is_ok()
    } else {
        let old = u32::from_ne_bytes([h.src[12], h.src[13], h.src[14], h.src[15]]);
        let new = u32::from_ne_bytes([vip[12], vip[13], vip[14], vip[15]]);
        ctx.l3_csum_replace(ETH_HLEN as usize + 10, u64::from(old), u64::from(new), 4)
            .is_ok()
            && ctx
                .store(ETH_HLEN as usize + 12, &new.to_ne_bytes(), 0)
                .is_ok()
    };
    if !rewritten {
        return NOT_OURS;
    }
    sent(send_to_client(ctx, &vip, &h.dst))
}

/// An ICMP error the pod sends about a tracked flow (`crate::tc_icmp`).
#[inline(never)]
fn icmp_error(ctx: &TcContext, h: &Headers) -> i64 {
    let (v6, client) = (h.v6, h.dst);
    let mut vip = [0u8; 16];
    if !tc_icmp::rewrite(ctx, v6, &mut vip) {
        return NOT_OURS;
    }
    sent(send_to_client(ctx, &vip, &client))
}

#[inline(always)]
fn sent(action: Option<i32>) -> i64 {
    action.map_or(NOT_OURS, i64::from)
}

/// The `vipwire_reply_fragments_v1` key of a fragment: its addresses as the pod sent them.
#[inline(always)]
fn fragment_key(h: &Headers) -> FragKey {
    FragKey {
        src_be: h.src,
        dst_be: h.dst,
        id: h.id,
        proto: h.proto,
        _pad: [0; 3],
    }
}

/// Source address and port rewrite with checksum updates through the skb helpers.
#[inline(always)]
fn snat(
    ctx: &TcContext,
    h: &Headers,
    new: &[u8; 16],
    (old_port, new_port): ([u8; 2], [u8; 2]),
) -> Option<()> {
    let (old, l4) = (&h.src, h.l4);
    let csum_at = match h.proto {
        IPPROTO_TCP => Some(l4 + 16),
        IPPROTO_UDP => Some(l4 + 6),
        _ => None,
    };
    // SCTP's new CRC32c first, so that nothing is written when it cannot be had. 0: the pod
    // left the CRC to offload (a veth advertises it), and the kernel will compute it over the
    // packet as it leaves, this field included; or RFC 9653's zero checksum. Either way it
    // stays 0.
    let mut sctp_crc = None;
    if csum_at.is_none() && old_port != new_port {
        let field: [u8; 4] = ctx.load(l4 as usize + 8).ok()?;
        if field != [0; 4] {
            sctp_crc = Some(sctp_port_changed(field, old_port, new_port, 0, h.l4_len)?);
        }
    }
    let udp = if h.proto == IPPROTO_UDP {
        u64::from(BPF_F_MARK_MANGLED_0)
    } else {
        0
    };
    let words = if h.v6 { 0..4 } else { 3..4 };
    for i in words {
        let o = u32::from_ne_bytes([old[i * 4], old[i * 4 + 1], old[i * 4 + 2], old[i * 4 + 3]]);
        let n = u32::from_ne_bytes([new[i * 4], new[i * 4 + 1], new[i * 4 + 2], new[i * 4 + 3]]);
        if let Some(at) = csum_at {
            let flags = u64::from(BPF_F_PSEUDO_HDR) | udp | 4;
            ctx.l4_csum_replace(at as usize, u64::from(o), u64::from(n), flags)
                .ok()?;
        }
        if !h.v6 {
            ctx.l3_csum_replace(ETH_HLEN as usize + 10, u64::from(o), u64::from(n), 4)
                .ok()?;
        }
        let at =
            if h.v6 { ETH_HLEN + 8 } else { ETH_HLEN + 12 } as usize + if h.v6 { i * 4 } else { 0 };
        ctx.store(at, &n.to_ne_bytes(), 0).ok()?;
    }
    if old_port != new_port {
        match csum_at {
            Some(at) => {
                let o = u16::from_ne_bytes(old_port);
                let n = u16::from_ne_bytes(new_port);
                ctx.l4_csum_replace(at as usize, u64::from(o), u64::from(n), udp | 2)
                    .ok()?;
            }
            None => {
                if let Some(crc) = sctp_crc {
                    ctx.store(l4 as usize + 8, &crc, 0).ok()?;
                }
            }
        }
        ctx.store(l4 as usize, &new_port, 0).ok()?;
    }
    Some(())
}
