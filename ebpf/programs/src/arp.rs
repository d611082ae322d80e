//! ARP (RFC 826): a request for an owned (VIP, ingress ifindex) becomes, in place, the reply
//! the kernel would have sent had the VIP been bound to the interface.

use aya_ebpf::programs::XdpContext;
use vipwire_common::Reason;

use crate::{
    Verdict, control, maps,
    parse::{BROADCAST_MAC, EthHdr, is_group_mac, ptr_at},
};

const HTYPE_ETHERNET: [u8; 2] = [0, 1];
const PTYPE_IPV4: [u8; 2] = [0x08, 0x00];
const OP_REQUEST: [u8; 2] = [0, 1];
const OP_REPLY: [u8; 2] = [0, 2];

/// An Ethernet/IPv4 ARP packet after its Ethernet header (42 bytes; a frame on the wire is
/// padded to 60, and the padding is left as it is).
#[repr(C)]
#[derive(Clone, Copy)]
struct ArpFrame {
    eth: EthHdr,
    htype: [u8; 2],
    ptype: [u8; 2],
    hlen: u8,
    plen: u8,
    op: [u8; 2],
    sha: [u8; 6],
    spa: [u8; 4],
    tha: [u8; 6],
    tpa: [u8; 4],
}
const _: () = assert!(size_of::<ArpFrame>() == 42);

// Its own BPF function: keeps the ARP and NDP paths' stack frames apart.
#[inline(never)]
pub fn handle(ctx: &XdpContext) -> Verdict {
    let Some(frame) = ptr_at::<ArpFrame>(ctx, 0) else {
        return Verdict::pass(Reason::Malformed);
    };
    // SAFETY (all raw reads and writes below): `frame` was bounds-checked for the whole
    // ArpFrame, and ArpFrame has alignment 1.
    let (htype, ptype, hlen, plen, op) = unsafe {
        (
            (*frame).htype,
            (*frame).ptype,
            (*frame).hlen,
            (*frame).plen,
            (*frame).op,
        )
    };
    // Not Ethernet/IPv4 ARP, or not a request (replies, RARP ops): the kernel's business.
    if htype != HTYPE_ETHERNET || ptype != PTYPE_IPV4 || hlen != 6 || plen != 4 {
        return Verdict::pass(Reason::Passed);
    }
    if op != OP_REQUEST {
        return Verdict::pass(Reason::Passed);
    }
    let (sha, spa, tpa, eth_dst) =
        unsafe { ((*frame).sha, (*frame).spa, (*frame).tpa, (*frame).eth.dst) };
    // Gratuitous ARP announces the sender's own address; nobody is asking.
    if spa == tpa {
        return Verdict::pass(Reason::Passed);
    }
    // The reply goes to the sender's hardware address: never to a group address.
    if is_group_mac(&sha) {
        return Verdict::pass(Reason::Malformed);
    }

    let ifindex = ctx.ingress_ifindex() as u32;
    let Some(mac) = maps::iface_mac(ifindex) else {
        return Verdict::pass(Reason::NotOwned);
    };
    let Some(stats) = maps::vip4(tpa, ifindex) else {
        return Verdict::pass(Reason::NotOwned);
    };
    // Seen only because the interface is promiscuous: addressed to another host.
    if eth_dst != BROADCAST_MAC && eth_dst != mac {
        return Verdict::pass(Reason::NotOwned);
    }
    if let Err(reason) = control::gate(ctx) {
        return Verdict::pass(reason);
    }

    unsafe {
        (*frame).eth.dst = sha;
        (*frame).eth.src = mac;
        (*frame).op = OP_REPLY;
        (*frame).sha = mac;
        (*frame).spa = tpa;
        (*frame).tha = sha;
        // A probe (RFC 5227, spa 0.0.0.0) gets tpa 0.0.0.0 back, as from the kernel.
        (*frame).tpa = spa;
    }
    maps::count_answer(stats);
    Verdict::tx(Reason::AnsweredArp)
}
