//! The common case in few instructions: a packet of an established IPv4 TCP or UDP flow, in
//! one datagram, without IP options. Its addresses and ports are read straight into the
//! conntrack key (at fixed offsets, two words), its DNAT works in words, and nothing goes
//! through the scratch copy of the headers that the general path ([`super::steer_ipv4`])
//! fills for every other case. Parsing into that copy was about a third of the XDP program's
//! time per steered packet in the L4 lab.
//!
//! Anything else goes to the general path as it came: this one writes nothing before it knows
//! it will finish. That includes a packet with no conntrack entry (a new flow, or a false
//! positive of the VIP filter, which the general path then looks up once more) and one whose
//! flow is due for its reverse entry's refresh (the general path writes it).

use aya_ebpf::{bindings::xdp_md, programs::XdpContext};
use vipwire_common::{
    Reason,
    l4::{CT_FORWARD, IPPROTO_TCP, IPPROTO_UDP},
};

use super::{flow, hand_to_tc, maps, nat};
use crate::{Verdict, parse::ETH_HLEN, words};

/// Where the upper layer starts without IP options.
const L4: usize = ETH_HLEN + 20;
/// TCP flags: a connection request (SYN without ACK) is a new flow.
const SYN: u8 = 0x02;
const ACK: u8 = 0x10;

/// The packed verdict of a packet of an established IPv4 flow, steered; [`Verdict::NONE`]
/// (the packet untouched) for the general path. The context comes as its raw pointer, as in
/// `nat::dnat_call`.
#[allow(
    clippy::needless_borrows_for_generic_args,
    reason = "by value the key would be copied onto the BPF stack"
)]
#[inline(never)]
pub fn established_v4(ctx: *mut xdp_md) -> u64 {
    let frame = nat::Frame::of(ctx);
    // Up to the end of a UDP header; TCP's is checked below.
    let Some(head) = frame.at::<[u8; L4 + 8]>(0) else {
        return Verdict::NONE;
    };
    let head = head.cast::<u8>();
    // SAFETY (every read of `head` here): inside the bytes checked above.
    let (version_ihl, fragment, proto) = unsafe {
        (
            *head.add(ETH_HLEN),
            words::load16_wide::<{ ETH_HLEN + 6 }>(head),
            *head.add(ETH_HLEN + 9),
        )
    };
    // No options, and neither "more fragments" nor an offset (the big-endian field as a
    // little-endian load: flags and offset's high bits in the low byte).
    if version_ihl != 0x45 || fragment & 0xff3f != 0 {
        return Verdict::NONE;
    }
    match proto {
        IPPROTO_UDP => {}
        IPPROTO_TCP => match frame.at::<[u8; 18]>(L4) {
            // SAFETY: the TCP header's first 18 bytes are checked.
            Some(tcp) if unsafe { *tcp.cast::<u8>().add(13) } & (SYN | ACK) != SYN => {}
            _ => return Verdict::NONE,
        },
        _ => return Verdict::NONE,
    }
    let Some(scratch) = maps::scratch() else {
        return Verdict::NONE;
    };
    let key = &raw mut scratch.ct4;
    // SAFETY: the key is in the scratch map value; source and destination are the 8 bytes
    // at ETH_HLEN + 12 and the ports the 4 at L4, as `CtKey4` lays them out (asserted in
    // `flow`).
    unsafe {
        words::store64::<0>(key.cast(), words::load64::<{ ETH_HLEN + 12 }>(head));
        let tail =
            words::load32_wide::<L4>(head) | u64::from(proto) << 32 | u64::from(CT_FORWARD) << 40;
        words::store64::<8>(key.cast(), tail);
    }
    // SAFETY: the key was just written in full.
    let Some(entry) = maps::CONNTRACK4.get_ptr_mut(unsafe { &*key }) else {
        return Verdict::NONE;
    };
    // SAFETY: a map value from a successful lookup, valid for this program run; another CPU
    // may count `refresh` down at the same time (see `flow::established_packet`).
    let (backend_id, service_id, refresh) = unsafe {
        (
            (*entry).backend_id,
            (*entry).service_id,
            &mut (*entry).refresh,
        )
    };
    let Some(backend) = maps::backend(backend_id) else {
        return Verdict::NONE;
    };
    if *refresh == 0 {
        return Verdict::NONE;
    }
    *refresh -= 1;
    // SAFETY: a map value pointer from a successful lookup, valid for this program run.
    let backend = unsafe { &*backend };
    // Cannot fail: every byte it writes was checked above.
    nat::dnat_v4_words(&frame, proto, L4, &backend.addr_be, Some(backend.port_be));
    // SAFETY: the total length is inside the checked bytes.
    let len = u16::from_be(unsafe { words::load16_wide::<{ ETH_HLEN + 2 }>(head) } as u16);
    flow::count(maps::stats(service_id), |s| {
        s.packets += 1;
        s.bytes += u64::from(len);
    });
    hand_to_tc(
        &XdpContext::new(ctx),
        backend_id,
        backend.ifindex,
        backend.flags,
    );
    Verdict::pass(Reason::Steered).pack()
}
