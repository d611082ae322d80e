//! vipwire's kernel side: the XDP program on the uplink interfaces.
//!
//! It answers ARP requests and IPv6 Neighbor Solicitations for the (VIP, ingress interface)
//! pairs the agent wrote, in place with `XDP_TX`, while the agent's heartbeat is fresh.
//! Everything else leaves with `XDP_PASS`, byte for byte as it came. Exactly one per-CPU
//! counter is bumped per packet.
#![no_std]
#![no_main]
// Inline assembly for word-sized packet access at any offset (words.rs); the crate is built
// with a pinned nightly.
#![feature(asm_experimental_arch)]

mod arp;
mod checksum;
mod control;
mod counters;
mod l4;
mod lab;
mod maps;
mod ndp;
mod parse;
mod peer_macs;
mod tc;
mod tc_icmp;
mod tc_reply;
mod words;

use aya_ebpf::{
    bindings::xdp_action,
    helpers::bpf_redirect_peer,
    macros::{classifier, xdp},
    programs::{TcContext, XdpContext},
};
use vipwire_common::{Reason, selfcheck};

/// What to do with a frame and why: the action is returned, the reason counted.
#[derive(Clone, Copy)]
pub struct Verdict {
    pub action: u32,
    pub reason: Reason,
}

impl Verdict {
    #[inline(always)]
    pub const fn pass(reason: Reason) -> Self {
        Self {
            action: xdp_action::XDP_PASS,
            reason,
        }
    }

    /// A verdict as one register for non-inlined BPF functions (an aggregate return goes
    /// through a stack pointer the verifier refuses to see returned); [`Verdict::NONE`] for
    /// "not ours".
    #[inline(always)]
    pub const fn pack(self) -> u64 {
        (self.action as u64) | ((self.reason as u64) << 32)
    }

    pub const NONE: u64 = u64::MAX;

    /// The inverse of [`Verdict::pack`]; `None` for [`Verdict::NONE`].
    #[inline(always)]
    pub fn unpack(packed: u64) -> Option<Self> {
        let index = (packed >> 32) as u32;
        if packed == Self::NONE || index >= Reason::COUNT {
            return None;
        }
        // SAFETY: Reason is repr(u32) with the discriminants 0..COUNT (checked in
        // vipwire-common), and index is below COUNT. Not `Reason::from_index`: LLVM turns its
        // table read into a load ahead of the bounds check, which the verifier rejects.
        let reason = unsafe { core::mem::transmute::<u32, Reason>(index) };
        Some(Self {
            action: packed as u32,
            reason,
        })
    }

    #[inline(always)]
    pub const fn drop(reason: Reason) -> Self {
        Self {
            action: xdp_action::XDP_DROP,
            reason,
        }
    }

    #[inline(always)]
    pub const fn tx(reason: Reason) -> Self {
        Self {
            action: xdp_action::XDP_TX,
            reason,
        }
    }
}

#[xdp]
pub fn vipwire_xdp(ctx: XdpContext) -> u32 {
    let verdict = classify(&ctx);
    counters::bump(verdict.reason);
    verdict.action
}

/// Passes every frame and touches nothing: the baseline of `cargo xtask bench dataplane`, and
/// the pass-all program a lab veth standing for a NIC's far end carries so that XDP_TX frames
/// from its peer are delivered (TOOLCHAIN.md). The agent never loads it.
#[xdp]
pub fn vipwire_xdp_pass(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_PASS
}

/// The ARP flood generator of `cargo xtask bench dataplane`: sends every frame back out where
/// it came from. Run with BPF_PROG_RUN and `BPF_F_TEST_XDP_LIVE_FRAMES` on a lab veth, the
/// kernel turns each `XDP_TX` into a redirect out of that veth, so the frame reaches the
/// peer's XDP program at a fraction of a socket send's cost (xdp-trafficgen works the same
/// way). See [`lab::rearm_arp_request`] for why it touches the frame. The agent never loads it.
#[xdp]
pub fn vipwire_xdp_gen(ctx: XdpContext) -> u32 {
    lab::rearm_arp_request(&ctx);
    xdp_action::XDP_TX
}

/// The generator of the L4 lab's UDP flood in `cargo xtask bench dataplane`: like
/// `vipwire_xdp_gen`, but it writes the flood frame's headers back first
/// ([`lab::restore_flood_headers`]). The agent never loads it.
#[xdp]
pub fn vipwire_xdp_gen_headers(ctx: XdpContext) -> u32 {
    lab::restore_flood_headers(&ctx);
    xdp_action::XDP_TX
}

/// The far end of the ARP flood in `cargo xtask bench dataplane`: drops ARP replies to
/// RFC 5227 probes and passes every other frame ([`lab::is_probe_reply`]). Like
/// `vipwire_xdp_pass`, it makes its veth accept XDP_TX frames from the peer. The agent never
/// loads it.
#[xdp]
pub fn vipwire_xdp_sink(ctx: XdpContext) -> u32 {
    if lab::is_probe_reply(&ctx) {
        xdp_action::XDP_DROP
    } else {
        xdp_action::XDP_PASS
    }
}

/// The floor of the L4 lab in `cargo xtask bench dataplane`: hands every frame to the pod
/// behind one veth with `bpf_redirect_peer`, as `vipwire_tc_deliver` does, but with no lookup,
/// no rewrite and no counter (the benchmark sends it frames already addressed to the pod).
/// What a frame costs this way is what any dataplane that delivers with a TC program pays,
/// whatever it does before. The agent never loads it.
#[classifier]
pub fn vipwire_tc_lab_redirect_peer(_ctx: TcContext) -> i32 {
    // SAFETY: helper without memory arguments.
    unsafe { bpf_redirect_peer(lab::peer_ifindex(), 0) as i32 }
}

#[inline(always)]
fn classify(ctx: &XdpContext) -> Verdict {
    // Most frames are IPv4, and most of those pass: one bounds check covers the Ethernet
    // header and the IPv4 header's fixed part, the EtherType and the destination are one
    // load each.
    if let Some(frame) = parse::ptr_at::<[u8; IPV4_FRAME_MIN]>(ctx, 0) {
        let frame = frame.cast::<u8>();
        // SAFETY: both loads lie inside the IPV4_FRAME_MIN bytes checked above.
        unsafe {
            if words::load16_wide::<12>(frame) == u64::from(parse::ETH_P_IPV4.to_be()) {
                return l4::ipv4(ctx, words::load32_wide::<{ parse::ETH_HLEN + 16 }>(frame));
            }
        }
    }
    let Some(ethertype) = parse::ethertype(ctx) else {
        return Verdict::pass(Reason::Malformed);
    };
    match ethertype {
        // Shorter than an IPv4 header.
        parse::ETH_P_IPV4 => Verdict::pass(Reason::Passed),
        parse::ETH_P_ARP => unpack(arp::handle(ctx.ctx)),
        parse::ETH_P_IPV6 => match l4::ipv6(ctx) {
            Some(verdict) => verdict,
            None => unpack(ndp::handle(ctx.ctx)),
        },
        selfcheck::ETHERTYPE => control::self_check(ctx),
        // VLAN-tagged (802.1Q/802.1ad: we are not told about VLANs) and the rest.
        _ => Verdict::pass(Reason::Passed),
    }
}

/// An Ethernet header and an IPv4 header without options.
const IPV4_FRAME_MIN: usize = parse::ETH_HLEN + 20;

/// A verdict a handler packed (never [`Verdict::NONE`]).
#[inline(always)]
fn unpack(packed: u64) -> Verdict {
    Verdict::unpack(packed).unwrap_or(Verdict::pass(Reason::Malformed))
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo<'_>) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
