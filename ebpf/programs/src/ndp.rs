//! IPv6 Neighbor Discovery (RFC 4861): a Neighbor Solicitation for an owned
//! (VIP6, ingress ifindex) becomes, in place, a Neighbor Advertisement with a target
//! link-layer address option.
//!
//! Only the basic shape is rewritten: Ethernet + IPv6 without extension headers + ICMPv6 NS
//! with at most `NS_MAX_OPTIONS_LEN` option bytes. The NS is validated as RFC 4861 7.1.1
//! asks (hop limit, code, length, options, checksum, source/destination rules) so that
//! nothing the kernel would discard gets an answer.

use aya_ebpf::{bindings::xdp_md, helpers::bpf_xdp_adjust_tail, programs::XdpContext};
use vipwire_common::{Reason, l2::NS_MAX_OPTIONS_LEN};

use crate::{
    Verdict, checksum, control, maps,
    parse::{ETH_HLEN, ETH_P_IPV6, EthHdr, frame_len, is_group_mac, ptr_at},
};

const IPPROTO_ICMPV6: u8 = 58;
const ICMPV6_NS: u8 = 135;
const ICMPV6_NA: u8 = 136;
const ND_OPT_SOURCE_LL: u8 = 1;
const ND_OPT_TARGET_LL: u8 = 2;
const NA_FLAG_SOLICITED: u8 = 0x40;
const NA_FLAG_OVERRIDE: u8 = 0x20;
const HOP_LIMIT_ND: u8 = 255;

const IPV6_HLEN: usize = 40;
const ICMP_OFFSET: usize = ETH_HLEN + IPV6_HLEN;
/// ICMPv6 length of an NS or NA without options.
const ND_FIXED_LEN: u16 = 24;
/// ICMPv6 length of the NA we send: fixed part + target link-layer address option.
const NA_ICMP_LEN: u16 = ND_FIXED_LEN + 8;
const MAX_OPTION_CHUNKS: usize = NS_MAX_OPTIONS_LEN as usize / 8;

const ALL_NODES: [u8; 16] = [0xff, 0x02, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
const ALL_NODES_MAC: [u8; 6] = [0x33, 0x33, 0, 0, 0, 1];
const UNSPECIFIED: [u8; 16] = [0; 16];

#[repr(C)]
#[derive(Clone, Copy)]
struct Ipv6Hdr {
    vtc_flow: [u8; 4],
    payload_len_be: [u8; 2],
    next_header: u8,
    hop_limit: u8,
    src: [u8; 16],
    dst: [u8; 16],
}
const _: () = assert!(size_of::<Ipv6Hdr>() == IPV6_HLEN);

/// Ethernet + IPv6 + the fixed part of an NS (options follow).
#[repr(C)]
#[derive(Clone, Copy)]
struct NsFrame {
    eth: EthHdr,
    ip: Ipv6Hdr,
    icmp_type: u8,
    code: u8,
    checksum_be: [u8; 2],
    reserved: [u8; 4],
    target: [u8; 16],
}
const _: () = assert!(size_of::<NsFrame>() == ICMP_OFFSET + ND_FIXED_LEN as usize);

/// The whole NA we send.
#[repr(C)]
#[derive(Clone, Copy)]
struct NaFrame {
    eth: EthHdr,
    ip: Ipv6Hdr,
    icmp_type: u8,
    code: u8,
    checksum_be: [u8; 2],
    flags: u8,
    reserved: [u8; 3],
    target: [u8; 16],
    opt_type: u8,
    opt_len: u8,
    opt_mac: [u8; 6],
}
const NA_FRAME_LEN: usize = ICMP_OFFSET + NA_ICMP_LEN as usize;
const _: () = assert!(size_of::<NaFrame>() == NA_FRAME_LEN);

/// [`answer`] as its own BPF function (keeps the ARP and NDP paths' stack frames apart), the
/// verdict packed into one register ([`Verdict::pack`]): returned as a struct it would come
/// back through the caller's stack, where every packet's verdict would then be merged.
/// The context comes as its raw pointer: a `&XdpContext` would make the caller keep the
/// context in a stack slot, written on every packet's path.
#[inline(never)]
pub fn handle(ctx: *mut xdp_md) -> u64 {
    answer(&XdpContext::new(ctx)).pack()
}

#[inline(always)]
fn answer(ctx: &XdpContext) -> Verdict {
    let Some(ip) = ptr_at::<Ipv6Hdr>(ctx, ETH_HLEN) else {
        return Verdict::pass(Reason::Malformed);
    };
    // SAFETY (all raw reads below): each pointer was bounds-checked by ptr_at for its whole
    // (alignment 1) type.
    let (version, next_header) = unsafe { ((*ip).vtc_flow[0] >> 4, (*ip).next_header) };
    if version != 6 {
        return Verdict::pass(Reason::Malformed);
    }
    // Extension headers (NS never needs them) or another upper layer: not ours.
    if next_header != IPPROTO_ICMPV6 {
        return Verdict::pass(Reason::Passed);
    }
    match ptr_at::<u8>(ctx, ICMP_OFFSET) {
        Some(icmp_type) if unsafe { *icmp_type } == ICMPV6_NS => {}
        _ => return Verdict::pass(Reason::Passed),
    }
    let Some(ns) = ptr_at::<NsFrame>(ctx, 0) else {
        return Verdict::pass(Reason::Malformed);
    };
    let (code, hop_limit, payload_len) = unsafe {
        (
            (*ns).code,
            (*ns).ip.hop_limit,
            u16::from_be_bytes((*ns).ip.payload_len_be),
        )
    };
    // Options come in units of 8 bytes; the frame must hold exactly the IPv6 payload.
    if code != 0
        || hop_limit != HOP_LIMIT_ND
        || payload_len < ND_FIXED_LEN
        || payload_len % 8 != 0
        || frame_len(ctx) != ICMP_OFFSET + payload_len as usize
    {
        return Verdict::pass(Reason::Malformed);
    }
    if payload_len - ND_FIXED_LEN > NS_MAX_OPTIONS_LEN {
        return Verdict::pass(Reason::Unsupported);
    }
    let (eth_src, eth_dst, src, dst, target) = unsafe {
        (
            (*ns).eth.src,
            (*ns).eth.dst,
            (*ns).ip.src,
            (*ns).ip.dst,
            (*ns).target,
        )
    };
    let from_unspecified = src == UNSPECIFIED;
    let to_solicited_node = dst == solicited_node(&target);
    if is_group_mac(&eth_src)
        || src[0] == 0xff
        || target[0] == 0xff
        || !(to_solicited_node || (dst == target && !from_unspecified))
    {
        return Verdict::pass(Reason::Malformed);
    }

    let ifindex = ctx.ingress_ifindex() as u32;
    let Some(mac) = maps::iface_mac(ifindex) else {
        return Verdict::pass(Reason::NotOwned);
    };
    let Some(stats) = maps::vip6(target, ifindex) else {
        return Verdict::pass(Reason::NotOwned);
    };
    let expected_eth_dst = if to_solicited_node {
        [0x33, 0x33, dst[12], dst[13], dst[14], dst[15]]
    } else {
        mac
    };
    // Seen only because the interface is promiscuous: addressed to another host.
    if eth_dst != expected_eth_dst {
        return Verdict::pass(Reason::NotOwned);
    }
    if !options_and_checksum_valid(ctx, ns, payload_len, from_unspecified) {
        return Verdict::pass(Reason::Malformed);
    }
    if let Err(reason) = control::gate(ctx) {
        return Verdict::pass(reason);
    }

    // A DAD probe (from ::) is answered to all nodes, unsolicited (RFC 4861 7.2.4).
    let (reply_dst, reply_mac, flags) = if from_unspecified {
        (ALL_NODES, ALL_NODES_MAC, NA_FLAG_OVERRIDE)
    } else {
        (src, eth_src, NA_FLAG_SOLICITED | NA_FLAG_OVERRIDE)
    };
    let checksum = na_checksum(&mac, &target, &reply_dst, flags);

    // Resize the frame to the NA before writing it: a no-op for the usual NS with a source
    // link-layer option (same size), +8 without it, negative with more options.
    let delta = NA_FRAME_LEN as i32 - frame_len(ctx) as i32;
    // SAFETY: the helper takes the context pointer the kernel gave us.
    if delta != 0 && unsafe { bpf_xdp_adjust_tail(ctx.ctx, delta) } != 0 {
        // No tailroom on this driver: the frame is untouched, leave it to the kernel.
        return Verdict::pass(Reason::Unsupported);
    }
    let Some(na) = ptr_at::<NaFrame>(ctx, 0) else {
        // Unreachable (the frame now has exactly NA_FRAME_LEN bytes), but the verifier needs
        // the check after adjust_tail invalidated every packet pointer.
        return Verdict::pass(Reason::Unsupported);
    };
    // Written field by field into the packet: no 86-byte copy on the stack.
    // SAFETY: `na` was bounds-checked for the whole NaFrame.
    unsafe {
        (*na).eth.dst = reply_mac;
        (*na).eth.src = mac;
        (*na).eth.ethertype_be = ETH_P_IPV6.to_be_bytes();
        (*na).ip.vtc_flow = [0x60, 0, 0, 0];
        (*na).ip.payload_len_be = NA_ICMP_LEN.to_be_bytes();
        (*na).ip.next_header = IPPROTO_ICMPV6;
        (*na).ip.hop_limit = HOP_LIMIT_ND;
        (*na).ip.src = target;
        (*na).ip.dst = reply_dst;
        (*na).icmp_type = ICMPV6_NA;
        (*na).code = 0;
        (*na).checksum_be = checksum.to_be_bytes();
        (*na).flags = flags;
        (*na).reserved = [0; 3];
        (*na).target = target;
        (*na).opt_type = ND_OPT_TARGET_LL;
        (*na).opt_len = 1;
        (*na).opt_mac = mac;
    }
    maps::count_answer(stats);
    Verdict::tx(Reason::AnsweredNdp)
}

/// ff02::1:ffXX:XXXX for the last 24 bits of `addr` (RFC 4291 2.7.1).
#[inline(always)]
fn solicited_node(addr: &[u8; 16]) -> [u8; 16] {
    [
        0xff, 0x02, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0xff, addr[13], addr[14], addr[15],
    ]
}

/// Walks the options (each of non-zero length, together filling the payload exactly; no
/// source link-layer option from ::) and verifies the ICMPv6 checksum over the whole NS.
/// The caller checked that the frame holds exactly `payload_len` ICMPv6 bytes with at most
/// `MAX_OPTION_CHUNKS` 8-byte chunks of options.
#[inline(always)]
fn options_and_checksum_valid(
    ctx: &XdpContext,
    ns: *mut NsFrame,
    payload_len: u16,
    from_unspecified: bool,
) -> bool {
    // SAFETY: `ns` was bounds-checked for the whole NsFrame by the caller.
    let (src, dst, fixed) = unsafe {
        let icmp: *const [u8; ND_FIXED_LEN as usize] = ns.cast::<u8>().add(ICMP_OFFSET).cast();
        ((*ns).ip.src, (*ns).ip.dst, *icmp)
    };
    let mut sum = checksum::pseudo_header(&src, &dst, payload_len, IPPROTO_ICMPV6);
    sum = checksum::add(sum, &fixed);

    let end = ICMP_OFFSET + payload_len as usize;
    let mut next_option = ICMP_OFFSET + ND_FIXED_LEN as usize;
    // A fixed trip count the compiler unrolls: every chunk offset is a constant.
    for i in 0..MAX_OPTION_CHUNKS {
        let offset = ICMP_OFFSET + ND_FIXED_LEN as usize + i * 8;
        if offset >= end {
            break;
        }
        let Some(chunk) = ptr_at::<[u8; 8]>(ctx, offset) else {
            return false;
        };
        // SAFETY: bounds-checked by ptr_at.
        let chunk = unsafe { *chunk };
        if offset == next_option {
            let (kind, units) = (chunk[0], chunk[1]);
            if units == 0 || (kind == ND_OPT_SOURCE_LL && from_unspecified) {
                return false;
            }
            next_option += usize::from(units) * 8;
        }
        sum = checksum::add(sum, &chunk);
    }
    next_option == end && checksum::fold(sum) == 0xffff
}

/// The ICMPv6 checksum of the NA we send (target link-layer option included).
#[inline(always)]
fn na_checksum(mac: &[u8; 6], target: &[u8; 16], dst: &[u8; 16], flags: u8) -> u16 {
    let mut sum = checksum::pseudo_header(target, dst, NA_ICMP_LEN, IPPROTO_ICMPV6);
    sum = checksum::add(sum, &[ICMPV6_NA, 0, flags, 0]);
    sum = checksum::add(sum, target);
    sum = checksum::add(sum, &[ND_OPT_TARGET_LL, 1]);
    sum = checksum::add(sum, mac);
    !checksum::fold(sum)
}
