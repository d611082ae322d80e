//! ARP (RFC 826): a request for an owned (VIP, ingress ifindex) becomes, in place, the reply
//! the kernel would have sent had the VIP been bound to the interface.
//!
//! The frame is read and rewritten in whole words at the fields' byte offsets, whatever their
//! alignment ([`words`]): byte by byte, the answer path took ~300 instructions, a third of them
//! single-byte loads and stores.

use aya_ebpf::{bindings::xdp_md, programs::XdpContext};
use vipwire_common::Reason;

use crate::{Verdict, control, maps, parse::ptr_at, words};

/// Byte offsets in an Ethernet/IPv4 ARP frame (42 bytes; a frame on the wire is padded to 60,
/// and the padding is left as it is).
pub const ETH_DST: usize = 0;
pub const ETH_SRC: usize = 6;
/// htype, ptype, hlen, plen, op: 8 bytes that a request for us has exactly as [`REQUEST`].
pub const ARP_HEAD: usize = 14;
pub const ARP_OP_LO: usize = 21;
pub const SHA: usize = 22;
pub const SPA: usize = 28;
pub const THA: usize = 32;
pub const TPA: usize = 38;
pub const ARP_FRAME_LEN: usize = 42;

/// htype Ethernet (1), ptype IPv4 (0x0800), hlen 6, plen 4, op request (1), as read in one
/// little-endian word from [`ARP_HEAD`].
pub const REQUEST: u64 = u64::from_le_bytes([0, 1, 0x08, 0x00, 6, 4, 0, 1]);
/// The same with op reply (2).
pub const REPLY: u64 = u64::from_le_bytes([0, 1, 0x08, 0x00, 6, 4, 0, 2]);
/// The low bytes of op request (1) and reply (2): the high byte is 0 in both.
pub const OP_REQUEST_LO: u8 = 1;
pub const OP_REPLY_LO: u8 = 2;
/// The 48 bits of a MAC address read as the low bytes of a little-endian word.
pub const MAC_MASK: u64 = (1 << 48) - 1;
pub const BROADCAST: u64 = MAC_MASK;

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
    let Some(frame) = ptr_at::<[u8; ARP_FRAME_LEN]>(ctx, 0) else {
        return Verdict::pass(Reason::Malformed);
    };
    let frame = frame.cast::<u8>();
    // SAFETY (every `load`/`store` below): `frame` was bounds-checked for ARP_FRAME_LEN bytes
    // and each access lies inside them.
    // Not Ethernet/IPv4 ARP, or not a request (replies, RARP ops): the kernel's business.
    if unsafe { words::load64::<ARP_HEAD>(frame) } != REQUEST {
        return Verdict::pass(Reason::Passed);
    }
    let (spa, tpa) = unsafe { (words::load32::<SPA>(frame), words::load32::<TPA>(frame)) };
    // Gratuitous ARP announces the sender's own address; nobody is asking.
    if spa == tpa {
        return Verdict::pass(Reason::Passed);
    }
    // 8 bytes from SHA: sha, then the first two of spa, masked off.
    let sha = unsafe { words::load64::<SHA>(frame) } & MAC_MASK;
    // The reply goes to the sender's hardware address: never to a group address (the group
    // bit is the lowest bit of the first byte).
    if sha & 1 != 0 {
        return Verdict::pass(Reason::Malformed);
    }

    let ifindex = ctx.ingress_ifindex() as u32;
    let Some(mac) = maps::iface_mac_word(ifindex) else {
        return Verdict::pass(Reason::NotOwned);
    };
    let Some(stats) = maps::vip4(tpa.to_ne_bytes(), ifindex) else {
        return Verdict::pass(Reason::NotOwned);
    };
    // Seen only because the interface is promiscuous: addressed to another host.
    let eth_dst = unsafe { words::load64::<ETH_DST>(frame) } & MAC_MASK;
    if eth_dst != BROADCAST && eth_dst != mac {
        return Verdict::pass(Reason::NotOwned);
    }
    if let Err(reason) = control::gate(ctx) {
        return Verdict::pass(reason);
    }

    // Six stores rewrite bytes 0..12 and 21..42; 12..21 (ethertype, htype, ptype, hlen, plen,
    // op's high byte) stay as they are.
    unsafe {
        // eth.dst = sha (0..6), eth.src = mac (6..12).
        words::store64::<ETH_DST>(frame, sha | mac << 48);
        words::store32::<{ ETH_SRC + 2 }>(frame, (mac >> 16) as u32);
        // op = reply (its high byte is 0 in a request).
        *frame.add(ARP_OP_LO) = OP_REPLY_LO;
        // sha = mac (22..28), spa = tpa (28..32), tha = sha (32..38).
        words::store64::<SHA>(frame, mac | u64::from(tpa) << 48);
        words::store64::<{ SPA + 2 }>(frame, u64::from(tpa >> 16) | sha << 16);
        // tpa = spa (38..42): a probe (RFC 5227, spa 0.0.0.0) gets tpa 0.0.0.0 back, as from
        // the kernel.
        words::store32::<TPA>(frame, spa);
    }
    maps::count_answer(stats);
    Verdict::tx(Reason::AnsweredArp)
}
