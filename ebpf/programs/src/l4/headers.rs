//! IPv4 and IPv6 headers as the steering path reads them: the addresses (16 bytes, IPv4
//! mapped), the upper-layer protocol and where it starts, and the fragment a packet is.
//!
//! IPv4 options are skipped by IHL; IPv6 extension headers (hop-by-hop, destination options,
//! routing without segments left, fragment, AH) are walked, at most [`MAX_EXT_HEADERS`], and
//! in a later fragment no further than its Fragment header: what follows it is payload.

use aya_ebpf::programs::XdpContext;
use vipwire_common::l4::v4_mapped;

use crate::{
    parse::{ETH_HLEN, ptr_at},
    words,
};

pub const IPPROTO_ICMP: u8 = 1;
pub const IPPROTO_ICMPV6: u8 = 58;
const IPPROTO_HOPOPTS: u8 = 0;
const IPPROTO_ROUTING: u8 = 43;
const IPPROTO_FRAGMENT: u8 = 44;
const IPPROTO_AH: u8 = 51;
const IPPROTO_DSTOPTS: u8 = 60;
/// Extension headers walked before giving up (the packet is then left to the kernel).
const MAX_EXT_HEADERS: usize = 4;
/// Extension headers may not push the upper layer past this offset (keeps offsets bounded
/// for the verifier; real packets to a service carry at most a few small ones).
const MAX_L4_OFFSET: usize = 256;

#[repr(C)]
#[derive(Clone, Copy)]
pub struct Ipv4Hdr {
    pub version_ihl: u8,
    pub tos: u8,
    pub total_len_be: [u8; 2],
    pub id_be: [u8; 2],
    pub frag_be: [u8; 2],
    pub ttl: u8,
    pub proto: u8,
    pub check_be: [u8; 2],
    pub src: [u8; 4],
    pub dst: [u8; 4],
}
const _: () = assert!(size_of::<Ipv4Hdr>() == 20);

#[repr(C)]
#[derive(Clone, Copy)]
pub struct Ipv6Hdr {
    pub vtc_flow: [u8; 4],
    pub payload_len_be: [u8; 2],
    pub next_header: u8,
    pub hop_limit: u8,
    pub src: [u8; 16],
    pub dst: [u8; 16],
}
const _: () = assert!(size_of::<Ipv6Hdr>() == 40);

/// Where a packet sits in its datagram.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Fragment {
    /// Not fragmented.
    Whole,
    /// The first fragment (offset 0, more to come): carries the upper-layer header.
    First { id: u32 },
    /// A later fragment: no upper-layer header, only payload.
    Later { id: u32 },
}

/// A parsed IP packet.
#[derive(Clone, Copy)]
pub struct Ip {
    pub v6: bool,
    pub src: [u8; 16],
    pub dst: [u8; 16],
    /// Upper-layer protocol (after extension headers).
    pub proto: u8,
    /// Offset of the upper-layer header in the frame; read it with [`Ip::l4`].
    l4: usize,
    pub fragment: Fragment,
    /// The protocol a fragment is keyed by (`FragKey::proto`): IPv4's protocol, IPv6's
    /// Fragment header's next header. Every fragment of a datagram carries the same one,
    /// while the upper layer may sit behind extension headers only the first one has.
    pub frag_proto: u8,
    /// Bytes of the IP datagram (header included), for the byte counters.
    pub len: u32,
}

impl Ip {
    /// Offset of the upper-layer header in the frame. Masked: read back from the scratch map
    /// the verifier knows nothing of its range (it is at most MAX_L4_OFFSET, below 512).
    #[inline(always)]
    pub fn l4(&self) -> usize {
        self.l4 & 0x1ff
    }
}

/// The IPv6 destination's words folded for the VIP filter (`vip_filter_bit_folded`), read one
/// word at a time (a 16-byte copy would spill to the BPF stack).
#[inline(always)]
pub fn ipv6_dst_folded(ctx: &XdpContext) -> Option<u32> {
    let ip = ptr_at::<Ipv6Hdr>(ctx, ETH_HLEN)?;
    // SAFETY: bounds-checked by ptr_at; alignment 1; each word lies inside `dst`.
    let dst = unsafe { (&raw const (*ip).dst).cast::<[u8; 4]>() };
    let mut folded = 0;
    for i in 0..4 {
        // SAFETY: as above.
        // Volatile: otherwise LLVM loads all 16 bytes up front and spills them.
        folded ^= u32::from_ne_bytes(unsafe { core::ptr::read_volatile(dst.add(i)) });
    }
    Some(folded)
}

/// Parses the IPv4 header into `out` (a per-CPU scratch slot: keeps it off the BPF stack).
#[inline(always)]
pub fn ipv4(ctx: &XdpContext, out: &mut Ip) -> Option<()> {
    let ip = ptr_at::<Ipv4Hdr>(ctx, ETH_HLEN)?;
    // SAFETY: bounds-checked by ptr_at; alignment 1.
    let hdr = unsafe { &*ip };
    if hdr.version_ihl >> 4 != 4 {
        return None;
    }
    let ihl = usize::from(hdr.version_ihl & 0x0f);
    if ihl < 5 {
        return None;
    }
    let frag = u16::from_be_bytes(hdr.frag_be);
    let offset = frag & 0x1fff;
    let more = frag & 0x2000 != 0;
    let id = u32::from(u16::from_be_bytes(hdr.id_be));
    let fragment = if offset != 0 {
        Fragment::Later { id }
    } else if more {
        Fragment::First { id }
    } else {
        Fragment::Whole
    };
    out.v6 = false;
    // SAFETY: ptr_at checked the whole header (source at 12, destination at 16); `out` is in
    // a map value.
    unsafe {
        let frame = ip.cast::<u8>();
        words::store_v4_mapped(&raw mut out.src, words::load32::<12>(frame));
        words::store_v4_mapped(&raw mut out.dst, words::load32::<16>(frame));
    }
    out.proto = hdr.proto;
    out.l4 = ETH_HLEN + ihl * 4;
    out.fragment = fragment;
    out.frag_proto = hdr.proto;
    out.len = u32::from(u16::from_be_bytes(hdr.total_len_be));
    Some(())
}

/// Parses the IPv6 header and extension headers into `out`.
#[inline(always)]
pub fn ipv6(ctx: &XdpContext, out: &mut Ip) -> Option<()> {
    let ip = ptr_at::<Ipv6Hdr>(ctx, ETH_HLEN)?;
    // SAFETY: bounds-checked by ptr_at; alignment 1.
    let hdr = unsafe { &*ip };
    if hdr.vtc_flow[0] >> 4 != 6 {
        return None;
    }
    // IPv4-mapped addresses are never routed (RFC 4291 2.5.5.2). A mapped destination is
    // not for the IPv4 frontend whose key it would match; from a mapped source, a flow would
    // be tracked as an IPv4 client's and the TC programs, which pick the address family
    // from the client's address, would route it as IPv4.
    const MAPPED: [u8; 16] = v4_mapped([0; 4]);
    const MAPPED_WORD: u32 = u32::from_le_bytes([MAPPED[8], MAPPED[9], MAPPED[10], MAPPED[11]]);
    let frame = ip.cast::<u8>();
    // SAFETY: ptr_at checked the whole header; the source is at 8..24, the destination at
    // 24..40.
    if unsafe {
        (words::load64::<24>(frame) == 0 && words::load32::<32>(frame) == MAPPED_WORD)
            || (words::load64::<8>(frame) == 0 && words::load32::<16>(frame) == MAPPED_WORD)
    } {
        return None;
    }
    let mut proto = hdr.next_header;
    let mut offset = ETH_HLEN + size_of::<Ipv6Hdr>();
    let mut fragment = Fragment::Whole;
    let mut frag_proto = 0;
    for _ in 0..MAX_EXT_HEADERS {
        match proto {
            IPPROTO_HOPOPTS | IPPROTO_DSTOPTS | IPPROTO_ROUTING | IPPROTO_AH => {
                let ext = ptr_at::<[u8; 4]>(ctx, offset)?;
                // SAFETY: bounds-checked by ptr_at.
                let ext = unsafe { *ext };
                // A routing header with segments left: the VIP is not the final destination.
                if proto == IPPROTO_ROUTING && ext[3] != 0 {
                    return None;
                }
                let len = if proto == IPPROTO_AH {
                    (usize::from(ext[1]) + 2) * 4
                } else {
                    (usize::from(ext[1]) + 1) * 8
                };
                proto = ext[0];
                offset += len;
            }
            IPPROTO_FRAGMENT => {
                let frag = ptr_at::<[u8; 8]>(ctx, offset)?;
                // SAFETY: bounds-checked by ptr_at.
                let frag = unsafe { *frag };
                let off_flags = u16::from_be_bytes([frag[2], frag[3]]);
                let id = u32::from_be_bytes([frag[4], frag[5], frag[6], frag[7]]);
                fragment = if off_flags & 0xfff8 != 0 {
                    Fragment::Later { id }
                } else if off_flags & 1 != 0 {
                    Fragment::First { id }
                } else {
                    // An atomic fragment (RFC 6946): a whole datagram.
                    Fragment::Whole
                };
                proto = frag[0];
                frag_proto = frag[0];
                offset += 8;
            }
            _ => break,
        }
        if offset > MAX_L4_OFFSET {
            return None;
        }
        // A later fragment has only payload after its Fragment header; `proto` then names
        // the first header of the datagram's fragmentable part, and only the key is used.
        if let Fragment::Later { .. } = fragment {
            break;
        }
    }
    if !matches!(fragment, Fragment::Later { .. })
        && matches!(
            proto,
            IPPROTO_HOPOPTS | IPPROTO_DSTOPTS | IPPROTO_ROUTING | IPPROTO_AH | IPPROTO_FRAGMENT
        )
    {
        return None;
    }
    out.v6 = true;
    // SAFETY: inside the header ptr_at checked; `out` is in a map value.
    unsafe {
        words::copy16(&raw mut out.src, &raw const hdr.src);
        words::copy16(&raw mut out.dst, &raw const hdr.dst);
    }
    out.proto = proto;
    out.l4 = offset;
    out.fragment = fragment;
    out.frag_proto = frag_proto;
    out.len = u32::from(u16::from_be_bytes(hdr.payload_len_be)) + size_of::<Ipv6Hdr>() as u32;
    Some(())
}
