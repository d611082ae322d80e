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
use crate::parse::ETH_HLEN;

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
struct Frame {
    data: usize,
    end: usize,
}

impl Frame {
    #[inline(always)]
    fn of(ctx: *mut xdp_md) -> Self {
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
    fn at<T>(&self, offset: usize) -> Option<*mut T> {
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
