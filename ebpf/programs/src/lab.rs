//! The two lab programs of the ARP flood benchmark (`vipwire_xdp_gen`, `vipwire_xdp_sink`):
//! never loaded by the agent, kept here so the benchmark runs the same build of the same code.

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
