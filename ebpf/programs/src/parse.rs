//! Bounds-checked access to the frame. Every read and write goes through [`ptr_at`], which
//! proves to the verifier that the whole object lies inside the packet.

use aya_ebpf::programs::XdpContext;

pub const ETH_HLEN: usize = 14;
pub const ETH_P_IPV4: u16 = 0x0800;
pub const ETH_P_ARP: u16 = 0x0806;
pub const ETH_P_IPV6: u16 = 0x86dd;

#[repr(C)]
#[derive(Clone, Copy)]
pub struct EthHdr {
    pub dst: [u8; 6],
    pub src: [u8; 6],
    pub ethertype_be: [u8; 2],
}
const _: () = assert!(size_of::<EthHdr>() == ETH_HLEN);

/// A pointer to a `T` at `offset`, if all of it lies inside the packet. `T` must have
/// alignment 1 (byte arrays only): packet data carries no alignment guarantee.
#[inline(always)]
pub fn ptr_at<T>(ctx: &XdpContext, offset: usize) -> Option<*mut T> {
    let start = ctx.data();
    let end = ctx.data_end();
    if start + offset + size_of::<T>() > end {
        return None;
    }
    Some((start + offset) as *mut T)
}

/// Length of the frame in bytes.
#[inline(always)]
pub fn frame_len(ctx: &XdpContext) -> usize {
    ctx.data_end() - ctx.data()
}

/// The outer EtherType, or `None` for a frame shorter than an Ethernet header.
#[inline(always)]
pub fn ethertype(ctx: &XdpContext) -> Option<u16> {
    let eth = ptr_at::<EthHdr>(ctx, 0)?;
    // SAFETY: ptr_at checked that the header lies inside the packet.
    Some(u16::from_be_bytes(unsafe { (*eth).ethertype_be }))
}

/// Group (multicast or broadcast) bit of a MAC address.
#[inline(always)]
pub fn is_group_mac(mac: &[u8; 6]) -> bool {
    mac[0] & 1 != 0
}
