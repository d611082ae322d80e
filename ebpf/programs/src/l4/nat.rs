//! Address and port rewrites with incremental checksum updates: the destination on the way
//! in (DNAT to the backend), the source of ICMP errors' quoted packets.
//!
//! Every pointer is bounds-checked before the first write, so a packet is either rewritten
//! completely or not at all.

use aya_ebpf::{bindings::xdp_md, programs::XdpContext};
use vipwire_common::l4::{IPPROTO_SCTP, IPPROTO_TCP, IPPROTO_UDP};

use super::{
    Delta,
    headers::{Ip, Ipv4Hdr, Ipv6Hdr},
    sctp,
};
use crate::{parse::ETH_HLEN, words};

/// Offset of the checksum field in the upper-layer header, if the protocol has one we update
/// with a one's-complement delta.
#[inline(always)]
fn csum_offset(proto: u8) -> Option<usize> {
    match proto {
        IPPROTO_TCP => Some(16),
        IPPROTO_UDP => Some(6),
        _ => None,
    }
}

/// Bytes of the upper-layer header the DNAT may write: the ports and the checksum (SCTP's
/// CRC32c at 8..12). The steering path checks them before it records anything.
#[inline(always)]
pub fn rewritten_len(proto: u8) -> usize {
    match proto {
        IPPROTO_TCP => 18,
        IPPROTO_UDP => 8,
        _ => 12,
    }
}

/// Rewrites the destination address to `addr` and, unless `port` is `None` (a later
/// fragment), the destination port to `port`. False (and nothing written) when the packet is
/// too short for a header that must change.
#[inline(always)]
pub fn dnat(ctx: &XdpContext, ip: &Ip, addr: &[u8; 16], port: Option<[u8; 2]>) -> bool {
    let port = match port {
        Some(p) => u32::from(u16::from_ne_bytes(p)) | 1 << 16,
        None => 0,
    };
    dnat_call(ctx.ctx, ip, addr, port) != 0
}

/// [`dnat`] as its own BPF function (its frame is not added to its callers'); `port` packed
/// as bit 16 "rewrite" plus the port's bytes, the result 1 for success. The context comes as
/// its raw pointer: a `&XdpContext` would make the program keep the context in a stack slot,
/// written at its entry on every packet's path.
#[inline(never)]
fn dnat_call(ctx: *mut xdp_md, ip: &Ip, addr: &[u8; 16], port: u32) -> u64 {
    let port = if port >> 16 != 0 {
        Some((port as u16).to_ne_bytes())
    } else {
        None
    };
    u64::from(dnat_inline(&Frame::of(ctx), ip, addr, port))
}

/// The frame's bounds, read with volatile loads: LLVM would otherwise hand this function
/// `data` and `data_end` as 32-bit arguments (argument promotion), and the verifier refuses
/// the zero-extension of a packet pointer.
pub(super) struct Frame {
    data: usize,
    end: usize,
}

impl Frame {
    #[inline(always)]
    pub(super) fn of(ctx: *mut xdp_md) -> Self {
        // SAFETY: the context pointer is valid for this program run.
        unsafe {
            Self {
                data: core::ptr::read_volatile(&raw const (*ctx).data) as usize,
                end: core::ptr::read_volatile(&raw const (*ctx).data_end) as usize,
            }
        }
    }

    /// Like `parse::ptr_at`.
    #[inline(always)]
    pub(super) fn at<T>(&self, offset: usize) -> Option<*mut T> {
        if self.data + offset + size_of::<T>() > self.end {
            return None;
        }
        Some((self.data + offset) as *mut T)
    }
}

#[inline(always)]
fn dnat_inline(ctx: &Frame, ip: &Ip, addr: &[u8; 16], port: Option<[u8; 2]>) -> bool {
    let mut l4_delta = Delta::new();
    if ip.v6 {
        let Some(hdr) = ctx.at::<Ipv6Hdr>(ETH_HLEN) else {
            return false;
        };
        // SAFETY: bounds-checked by ctx.at; alignment 1.
        let dst = unsafe { &raw mut (*hdr).dst };
        l4_delta = l4_delta.replace_in_place(dst, addr);
        if let Some(port) = port
            && !rewrite_port(ctx, ip, 2, port, l4_delta)
        {
            return false;
        }
        // SAFETY: as above.
        unsafe { *dst = *addr };
    } else if ip.proto == IPPROTO_TCP || ip.proto == IPPROTO_UDP || port.is_none() {
        return dnat_v4_words(ctx, ip.proto, ip.l4(), addr, port);
    } else {
        let Some(hdr) = ctx.at::<Ipv4Hdr>(ETH_HLEN) else {
            return false;
        };
        let new: [u8; 4] = [addr[12], addr[13], addr[14], addr[15]];
        // SAFETY: bounds-checked by ptr_at; alignment 1.
        let (old, check) = unsafe { ((*hdr).dst, (*hdr).check_be) };
        l4_delta = l4_delta.replace(&old, &new);
        if let Some(port) = port
            && !rewrite_port(ctx, ip, 2, port, l4_delta)
        {
            return false;
        }
        // SAFETY: as above.
        unsafe {
            (*hdr).dst = new;
            (*hdr).check_be = Delta::new().replace(&old, &new).apply(check);
        }
    }
    true
}

/// [`dnat_inline`] for IPv4 TCP and UDP (`proto`, its header at `l4`) and for later fragments
/// (IPv4 header only), the common case: every field is loaded and stored as one word in memory order, with the
/// checksums updated in that order too ([`Delta::replace_native32`]). Byte by byte, the same
/// took twice the instructions.
#[inline(always)]
pub(super) fn dnat_v4_words(
    ctx: &Frame,
    proto: u8,
    l4: usize,
    addr: &[u8; 16],
    port: Option<[u8; 2]>,
) -> bool {
    const DST: usize = core::mem::offset_of!(Ipv4Hdr, dst);
    const CHECK: usize = core::mem::offset_of!(Ipv4Hdr, check_be);
    let Some(hdr) = ctx.at::<Ipv4Hdr>(ETH_HLEN) else {
        return false;
    };
    let hdr = hdr.cast::<u8>();
    // SAFETY: the header is bounds-checked just above; `addr` is a 16-byte map value (the
    // scratch slot's target).
    let (old, new) = unsafe {
        (
            words::load32_wide::<DST>(hdr),
            words::load32_wide::<12>(addr.as_ptr()),
        )
    };
    let addr_delta = Delta::new().replace_native32(old, new);
    if let Some(port) = port {
        let new_port = u64::from(u16::from_ne_bytes(port));
        let udp = proto == IPPROTO_UDP;
        // Both headers reach past the destination port and the checksum.
        let l4 = if udp {
            ctx.at::<[u8; 8]>(l4).map(|p| (p.cast::<u8>(), 6))
        } else {
            ctx.at::<[u8; 18]>(l4).map(|p| (p.cast::<u8>(), 16))
        };
        let Some((l4, check_at)) = l4 else {
            return false;
        };
        // SAFETY: `l4` is bounds-checked above for the whole header part written here; both
        // fields are 2-aligned (the upper layer starts at an even offset).
        unsafe {
            let dport = l4.add(2).cast::<u16>();
            let check = l4.add(check_at).cast::<u16>();
            let old_check = *check;
            let delta = addr_delta.replace_native16(u64::from(*dport), new_port);
            // RFC 768: a UDP checksum of 0 is none and stays 0; a computed 0 goes out as
            // 0xffff (either byte order).
            *check = match (udp, old_check, delta.apply_native(old_check)) {
                (true, 0, _) => 0,
                (true, _, 0) => 0xffff,
                (_, _, updated) => updated,
            };
            *dport = new_port as u16;
        }
    }
    // SAFETY: as above; the checksum field is 2-aligned (the frame starts 4-aligned).
    unsafe {
        let check = hdr.add(CHECK).cast::<u16>();
        *check = addr_delta.apply_native(*check);
        words::store32::<DST>(hdr, new as u32);
    }
    true
}

/// Rewrites the upper-layer port at `offset` (0 source, 2 destination) and the upper-layer
/// checksum, which also changes by `pseudo` (the addresses' share of the pseudo-header).
#[inline(always)]
fn rewrite_port(ctx: &Frame, ip: &Ip, offset: usize, port: [u8; 2], pseudo: Delta) -> bool {
    let Some(old_port) = ctx.at::<[u8; 2]>(ip.l4() + offset) else {
        return false;
    };
    // SAFETY: bounds-checked by ptr_at.
    let old = unsafe { *old_port };
    match csum_offset(ip.proto) {
        Some(at) => {
            let Some(check) = ctx.at::<[u8; 2]>(ip.l4() + at) else {
                return false;
            };
            let delta = pseudo.replace(&old, &port);
            // SAFETY: bounds-checked by ptr_at.
            unsafe {
                *check = if ip.proto == IPPROTO_UDP {
                    delta.apply_udp(*check)
                } else {
                    delta.apply(*check)
                };
            }
        }
        None if ip.proto == IPPROTO_SCTP && old != port => {
            // No pseudo-header in SCTP: only the port is in the CRC. The CRC needs the
            // packet's length, unknown in a first fragment: leave those to the kernel.
            if !matches!(ip.fragment, super::headers::Fragment::Whole) {
                return false;
            }
            let Some(check) = ctx.at::<[u8; 4]>(ip.l4() + 8) else {
                return false;
            };
            let len = ip.len.wrapping_sub((ip.l4() - ETH_HLEN) as u32);
            // SAFETY: bounds-checked by ptr_at.
            let Some(new) = sctp::port_changed(unsafe { *check }, old, port, offset as u32, len)
            else {
                return false;
            };
            // SAFETY: as above.
            unsafe { *check = new };
        }
        None => {}
    }
    // SAFETY: bounds-checked by ptr_at above.
    unsafe { *old_port = port };
    true
}
