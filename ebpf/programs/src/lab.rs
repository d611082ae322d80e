//! The lab programs of the flood benchmarks (`vipwire_xdp_gen`, `vipwire_xdp_sink`,
//! `vipwire_xdp_gen_headers`, `vipwire_tc_lab_redirect_peer`): never loaded by the agent, kept
//! here so the benchmark runs the same build of the same code.

use aya_ebpf::programs::XdpContext;

use crate::{
    arp::{
        ARP_FRAME_LEN, ARP_HEAD, ARP_OP_LO, BROADCAST, ETH_DST, ETH_SRC, MAC_MASK, OP_REQUEST_LO,
        REPLY, SHA, SPA, THA, TPA,
    },
    parse::ptr_at,
    words,
};

/// Turns an ARP reply back into the request it answers; leaves any other frame alone.
///
/// Live frames come from a page pool that copies the frame in once per page, not per run.
/// When the peer answers in place (vipwire's XDP_TX), the page comes back to the pool as
/// the reply, and would be sent as such next time. A reply carries everything its request
/// had (the requester's MAC in tha, the addresses swapped), so the request is rebuilt
/// exactly. A kernel answer is a new frame: the request's page comes back unchanged.
#[inline(always)]
pub fn rearm_arp_request(ctx: &XdpContext) {
    let Some(frame) = ptr_at::<[u8; ARP_FRAME_LEN]>(ctx, 0) else {
        return;
    };
    let frame = frame.cast::<u8>();
    // SAFETY (every access): `frame` was bounds-checked for ARP_FRAME_LEN bytes.
    unsafe {
        if words::load64::<ARP_HEAD>(frame) != REPLY {
            return;
        }
        let requester = words::load64::<THA>(frame) & MAC_MASK;
        let (spa, tpa) = (words::load32::<SPA>(frame), words::load32::<TPA>(frame));
        // eth.dst = broadcast, eth.src = requester.
        words::store64::<ETH_DST>(frame, BROADCAST | requester << 48);
        words::store32::<{ ETH_SRC + 2 }>(frame, (requester >> 16) as u32);
        *frame.add(ARP_OP_LO) = OP_REQUEST_LO;
        // sha = requester, spa = the reply's tpa, tha = 0, tpa = the reply's spa.
        words::store64::<SHA>(frame, requester | u64::from(tpa) << 48);
        words::store64::<{ SPA + 2 }>(frame, u64::from(tpa >> 16));
        words::store32::<TPA>(frame, spa);
    }
}

/// An Ethernet/IPv4 ARP reply to an RFC 5227 probe (target protocol address 0.0.0.0): what the
/// flood's requests are answered with, by vipwire and by the kernel alike, while the lab's
/// own ARP sockets ask with a real sender address and still get their replies.
#[inline(always)]
pub fn is_probe_reply(ctx: &XdpContext) -> bool {
    let Some(frame) = ptr_at::<[u8; ARP_FRAME_LEN]>(ctx, 0) else {
        return false;
    };
    let frame = frame.cast::<u8>();
    // SAFETY (every access): `frame` was bounds-checked for ARP_FRAME_LEN bytes.
    unsafe {
        // The EtherType is the last two bytes before ARP_HEAD.
        let ethertype = words::load32::<{ ARP_HEAD - 4 }>(frame) >> 16;
        ethertype == u32::from(u16::from_be(0x0806))
            && words::load64::<ARP_HEAD>(frame) == REPLY
            && words::load32::<TPA>(frame) == 0
    }
}

/// Bytes [`restore_flood_headers`] writes at the start of every frame: an Ethernet, IPv4 and
/// UDP header and the first bytes of the payload.
pub const FLOOD_HEADER_WORDS: usize = 6;

/// The headers of the L4 flood's frame, set by the benchmark when it loads the object
/// (`EbpfLoader::override_global`); zeros otherwise. Read-only data: the generator reads it
/// with volatile loads, so the compiler cannot fold the zeros in.
#[unsafe(no_mangle)]
static VIPWIRE_LAB_FLOOD_HEADERS: [u64; FLOOD_HEADER_WORDS] = [0; FLOOD_HEADER_WORDS];

/// Writes the flood frame's headers back over the frame's first bytes.
///
/// Live frames come from a page pool that copies the frame in once per page (see
/// [`rearm_arp_request`]). A frame the node forwards comes back to the pool rewritten: by
/// vipwire's DNAT, or by the kernel's DNAT and forwarding (addresses, ports, checksums,
/// MACs). Writing the headers every time sends the same frame every time.
#[inline(always)]
pub fn restore_flood_headers(ctx: &XdpContext) {
    let Some(frame) = ptr_at::<[u64; FLOOD_HEADER_WORDS]>(ctx, 0) else {
        return;
    };
    let frame = frame.cast::<u8>();
    let word = |i: usize| {
        // SAFETY: `i` is below FLOOD_HEADER_WORDS; a volatile read of a static.
        unsafe { core::ptr::read_volatile(&VIPWIRE_LAB_FLOOD_HEADERS[i]) }
    };
    // SAFETY (every store): `frame` was bounds-checked for FLOOD_HEADER_WORDS words.
    unsafe {
        words::store64::<0>(frame, word(0));
        words::store64::<8>(frame, word(1));
        words::store64::<16>(frame, word(2));
        words::store64::<24>(frame, word(3));
        words::store64::<32>(frame, word(4));
        words::store64::<40>(frame, word(5));
    }
}

/// The host-side veth whose peer `vipwire_tc_lab_redirect_peer` hands every frame to, set by
/// the benchmark when it loads the object (`EbpfLoader::override_global`); 0 otherwise.
#[unsafe(no_mangle)]
static VIPWIRE_LAB_PEER_IFINDEX: u32 = 0;

/// [`VIPWIRE_LAB_PEER_IFINDEX`], read so that the compiler cannot fold the zero in.
#[inline(always)]
pub fn peer_ifindex() -> u32 {
    // SAFETY: a volatile read of a static.
    unsafe { core::ptr::read_volatile(&VIPWIRE_LAB_PEER_IFINDEX) }
}
