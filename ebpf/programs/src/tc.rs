//! The TC half of L4 steering (vipwire_common::l4 has the whole path).
//!
//! - `vipwire_tc_deliver` (ingress, uplinks): a frame the XDP program steered carries an
//!   `XdpMeta`; it goes straight into its pod. `bpf_redirect_peer` when the backend sits
//!   behind a veth (the packet enters the pod's namespace in this softirq, as if received on
//!   the pod's interface: nothing in the pod is needed), else out of the device a FIB lookup
//!   names. The host's routing, rp_filter and netfilter never see it.
//! - `vipwire_tc_reply` (ingress, the host side of each local backend's veth; `crate::tc_reply`):
//!   a reply of a tracked flow gets VIP:port back as its source and leaves by the FIB's route
//!   to the client ([`send_to_client`]), past the host's FORWARD chain, whichever interface
//!   that is.

use core::mem::MaybeUninit;

use aya_ebpf::{
    bindings::{
        BPF_FIB_LKUP_RET_FRAG_NEEDED, BPF_FIB_LKUP_RET_NO_NEIGH, BPF_FIB_LKUP_RET_SUCCESS,
        TC_ACT_OK,
        bpf_check_mtu_flags::BPF_MTU_CHK_SEGS,
        bpf_check_mtu_ret::{BPF_MTU_CHK_RET_FRAG_NEEDED, BPF_MTU_CHK_RET_SEGS_TOOBIG},
        bpf_fib_lookup as FibLookup,
    },
    helpers::{bpf_check_mtu, bpf_fib_lookup, bpf_redirect, bpf_redirect_neigh, bpf_redirect_peer},
    macros::classifier,
    programs::TcContext,
};
use vipwire_common::{
    Reason,
    l4::{BACKEND_VETH_PEER, XDP_META_ID_LEN, XDP_META_MAGIC, XdpMeta, is_v4_mapped, v4_mapped},
};

use crate::{
    counters,
    l4::maps,
    peer_macs::{self, FrameMacs},
    words,
};

pub(crate) const ETH_HLEN: u32 = 14;
const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;
pub(crate) const ETH_P_IP: [u8; 2] = [0x08, 0x00];
pub(crate) const ETH_P_IPV6: [u8; 2] = [0x86, 0xdd];

#[classifier]
pub fn vipwire_tc_deliver(ctx: TcContext) -> i32 {
    // SAFETY: the context pointer is valid for this run; data_meta/data are plain loads.
    let (meta, data) = unsafe {
        (
            (*ctx.skb.skb).data_meta as usize,
            (*ctx.skb.skb).data as usize,
        )
    };
    if meta + XDP_META_ID_LEN > data {
        return TC_ACT_OK;
    }
    // SAFETY: bounds-checked against data just above (magic and backend id lead the record).
    let (magic, backend_id) = unsafe { (*(meta as *const u32), *((meta + 4) as *const u32)) };
    if magic != XDP_META_MAGIC {
        return TC_ACT_OK;
    }
    // The backend's device and flags, unless an older XDP program wrote only the id.
    let hint = (meta + size_of::<XdpMeta>() <= data).then(|| {
        // SAFETY: bounds-checked against data just above.
        let meta = unsafe { *(meta as *const XdpMeta) };
        (meta.ifindex, meta.backend_flags)
    });
    let action = deliver(&ctx, backend_id, hint);
    counters::bump(if action == TC_ACT_OK {
        Reason::Undeliverable
    } else {
        Reason::Delivered
    });
    action
}

/// Redirects a steered packet to backend `backend_id`; `TC_ACT_OK` when it cannot. `hint`:
/// the backend's device and flags from the XDP program, which spare a lookup when the
/// delivery is cached.
#[inline(always)]
fn deliver(ctx: &TcContext, backend_id: u32, hint: Option<(u32, u32)>) -> i32 {
    if let Some((ifindex, flags)) = hint
        && let Some(action) = cached_peer_delivery(ctx, backend_id, ifindex, flags)
    {
        return action;
    }
    let Some(backend) = maps::backend(backend_id) else {
        return TC_ACT_OK;
    };
    // SAFETY: a map value from a successful lookup, valid while the program runs. Not
    // copied: a copy of the whole value is sixteen byte loads.
    let backend = unsafe { &*backend };
    if hint.is_none()
        && let Some(action) = cached_peer_delivery(ctx, backend_id, backend.ifindex, backend.flags)
    {
        return action;
    }
    let veth_peer = backend.flags & BACKEND_VETH_PEER != 0;
    let Some(src) = packet_src(ctx) else {
        return TC_ACT_OK;
    };
    let mut slot = FibSlot::new();
    let fib = fib_params(&mut slot, &src, &backend.addr_be, ctx);
    match fib_lookup(ctx, fib) {
        BPF_FIB_LKUP_RET_SUCCESS => {
            let macs = fib_macs(fib);
            if set_macs(ctx, macs).is_none() {
                return TC_ACT_OK;
            }
            if veth_peer && backend.ifindex == fib.ifindex {
                peer_macs::put(backend_id, fib.ifindex, macs);
                // SAFETY: helper without memory arguments.
                unsafe { bpf_redirect_peer(fib.ifindex, 0) as i32 }
            } else {
                // SAFETY: as above.
                unsafe { bpf_redirect(fib.ifindex, 0) as i32 }
            }
        }
        // SAFETY: a null params pointer asks the helper to resolve the next hop itself.
        BPF_FIB_LKUP_RET_NO_NEIGH => unsafe {
            bpf_redirect_neigh(fib.ifindex, core::ptr::null_mut(), 0, 0) as i32
        },
        _ => TC_ACT_OK,
    }
}

/// Delivers into a veth peer with the Ethernet addresses cached for it (`peer_macs`);
/// `None` when the backend is not behind a veth peer or nothing is cached.
#[inline(always)]
fn cached_peer_delivery(ctx: &TcContext, backend_id: u32, ifindex: u32, flags: u32) -> Option<i32> {
    if flags & BACKEND_VETH_PEER == 0 {
        return None;
    }
    set_macs(ctx, peer_macs::get(backend_id, ifindex)?)?;
    // SAFETY: helper without memory arguments.
    Some(unsafe { bpf_redirect_peer(ifindex, 0) as i32 })
}

/// Sends a packet rewritten to come from `vip` towards `client`, out of the interface the FIB
/// names, past the host's FORWARD chain; `TC_ACT_OK` (the kernel) when it names none.
#[inline(always)]
pub(crate) fn send_to_client(ctx: &TcContext, vip: &[u8; 16], client: &[u8; 16]) -> Option<i32> {
    let mut slot = FibSlot::new();
    route_to_client(&mut slot, ctx, vip, client).send(ctx)
}

/// The FIB's answer for a packet from `vip` to `client`, looked up before the packet is
/// rewritten: one too big for the way out can then still be left to the kernel as it is.
pub(crate) struct Route<'a> {
    rc: u32,
    fib: &'a mut FibLookup,
    too_big: bool,
}

/// Looks up the way from `vip` to `client` in `slot`, and whether the packet fits the MTU of
/// the device it names.
#[inline(always)]
pub(crate) fn route_to_client<'a>(
    slot: &'a mut FibSlot,
    ctx: &TcContext,
    vip: &[u8; 16],
    client: &[u8; 16],
) -> Route<'a> {
    let fib = fib_params(slot, vip, client, ctx);
    let rc = fib_lookup(ctx, fib);
    let named = matches!(
        rc,
        BPF_FIB_LKUP_RET_SUCCESS | BPF_FIB_LKUP_RET_NO_NEIGH | BPF_FIB_LKUP_RET_FRAG_NEEDED
    );
    let too_big = named && exceeds_mtu(ctx, fib.ifindex);
    Route { rc, fib, too_big }
}

/// Whether the packet, or for a GSO packet each of its segments, exceeds the MTU of device
/// `ifindex`. The device's MTU, as the kernel's forwarding uses it by default: not the FIB
/// helper's own check, which takes a learned path MTU or a locked route MTU when given a
/// length and passes every GSO packet when not, nor checks at all without a neighbour.
#[inline(always)]
fn exceeds_mtu(ctx: &TcContext, ifindex: u32) -> bool {
    let mut mtu = 0u32;
    // SAFETY: the context is this program's skb; mtu is ours, and 0 on input as
    // BPF_MTU_CHK_SEGS requires.
    let rc = unsafe {
        bpf_check_mtu(
            ctx.skb.skb.cast(),
            ifindex,
            &mut mtu,
            0,
            u64::from(BPF_MTU_CHK_SEGS),
        )
    };
    matches!(
        u32::try_from(rc),
        Ok(BPF_MTU_CHK_RET_FRAG_NEEDED | BPF_MTU_CHK_RET_SEGS_TOOBIG)
    )
}

impl Route<'_> {
    /// Too big for the device the FIB named: the kernel's forwarding would send the sender an
    /// ICMP "fragmentation needed" or "packet too big" for it (or fragment it, IPv4 without DF).
    #[inline(always)]
    pub(crate) fn too_big(&self) -> bool {
        self.too_big
    }

    /// Sends the packet out of the interface the FIB named, past the host's FORWARD chain;
    /// `TC_ACT_OK` (the kernel) when it named none or the packet is too big for it.
    #[inline(always)]
    pub(crate) fn send(self, ctx: &TcContext) -> Option<i32> {
        let fib = self.fib;
        if self.too_big {
            return Some(TC_ACT_OK);
        }
        Some(match self.rc {
            BPF_FIB_LKUP_RET_SUCCESS => {
                set_macs(ctx, fib_macs(fib))?;
                // SAFETY: helper without memory arguments.
                unsafe { bpf_redirect(fib.ifindex, 0) as i32 }
            }
            // SAFETY: a null params pointer asks the helper to resolve the next hop itself.
            BPF_FIB_LKUP_RET_NO_NEIGH => unsafe {
                bpf_redirect_neigh(fib.ifindex, core::ptr::null_mut(), 0, 0) as i32
            },
            // No route to the client: the kernel may know better (it now sees VIP:port).
            _ => TC_ACT_OK,
        })
    }
}

#[inline(always)]
fn packet_src(ctx: &TcContext) -> Option<[u8; 16]> {
    let ethertype: [u8; 2] = ctx.load(12).ok()?;
    if ethertype == ETH_P_IP {
        let src: [u8; 4] = ctx.load(ETH_HLEN as usize + 12).ok()?;
        Some(v4_mapped(src))
    } else if ethertype == ETH_P_IPV6 {
        ctx.load(ETH_HLEN as usize + 8).ok()
    } else {
        None
    }
}

/// Room for the FIB lookup parameters, 8-aligned so that they can be zeroed a word at a time.
#[repr(C, align(8))]
pub(crate) struct FibSlot(MaybeUninit<FibLookup>);

impl FibSlot {
    #[inline(always)]
    pub(crate) const fn new() -> Self {
        Self(MaybeUninit::uninit())
    }
}

/// FIB lookup parameters for `src` → `dst` arriving on the skb's interface, in `slot`.
/// IPv4-mapped addresses select AF_INET.
#[inline(always)]
fn fib_params<'a>(
    slot: &'a mut FibSlot,
    src: &[u8; 16],
    dst: &[u8; 16],
    ctx: &TcContext,
) -> &'a mut FibLookup {
    const WORDS: usize = size_of::<FibLookup>() / 8;
    const _: () = assert!(size_of::<FibLookup>() == WORDS * 8);
    let base = slot.0.as_mut_ptr().cast::<u64>();
    for i in 0..WORDS {
        // SAFETY: inside the slot, 8-aligned. Word stores, volatile: `mem::zeroed` becomes a
        // call to a byte-wise `memset` loop on the BPF target (64 iterations per packet).
        unsafe { core::ptr::write_volatile(base.add(i), 0) };
    }
    // SAFETY: every byte is zero, a valid bpf_fib_lookup (integers and unions of them).
    let fib = unsafe { slot.0.assume_init_mut() };
    // SAFETY: the context pointer is valid for this run.
    fib.ifindex = unsafe { (*ctx.skb.skb).ingress_ifindex };
    if is_v4_mapped(src) {
        fib.family = AF_INET;
        fib.__bindgen_anon_3.ipv4_src = u32::from_ne_bytes([src[12], src[13], src[14], src[15]]);
        fib.__bindgen_anon_4.ipv4_dst = u32::from_ne_bytes([dst[12], dst[13], dst[14], dst[15]]);
    } else {
        fib.family = AF_INET6;
        fib.__bindgen_anon_3.ipv6_src = words(src);
        fib.__bindgen_anon_4.ipv6_dst = words(dst);
    }
    // tot_len stays 0: the helper then checks the skb against the egress MTU itself (a
    // GRO/GSO packet's length would be compared with the MTU as is).
    fib
}

#[inline(always)]
fn words(addr: &[u8; 16]) -> [u32; 4] {
    [
        u32::from_ne_bytes([addr[0], addr[1], addr[2], addr[3]]),
        u32::from_ne_bytes([addr[4], addr[5], addr[6], addr[7]]),
        u32::from_ne_bytes([addr[8], addr[9], addr[10], addr[11]]),
        u32::from_ne_bytes([addr[12], addr[13], addr[14], addr[15]]),
    ]
}

#[inline(always)]
fn fib_lookup(ctx: &TcContext, fib: &mut FibLookup) -> u32 {
    // SAFETY: params points at a whole bpf_fib_lookup on our stack.
    unsafe {
        bpf_fib_lookup(
            ctx.skb.skb.cast(),
            fib as *mut FibLookup,
            size_of::<FibLookup>() as i32,
            0,
        ) as u32
    }
}

/// The destination and source MAC a FIB answer gives, in frame order.
#[inline(always)]
fn fib_macs(fib: &FibLookup) -> FrameMacs {
    let (d, s) = (fib.dmac, fib.smac);
    FrameMacs {
        head: u64::from_ne_bytes([d[0], d[1], d[2], d[3], d[4], d[5], s[0], s[1]]),
        tail: u64::from(u32::from_ne_bytes([s[2], s[3], s[4], s[5]])),
    }
}

/// Writes `macs` over the frame's Ethernet addresses, with direct packet access (two stores
/// rather than a helper call).
#[inline(always)]
fn set_macs(ctx: &TcContext, macs: FrameMacs) -> Option<()> {
    let (data, end) = (ctx.data(), ctx.data_end());
    if data + 12 > end {
        return None;
    }
    let frame = data as *mut u8;
    // SAFETY: the frame's first 12 bytes were bounds-checked just above.
    unsafe {
        words::store64::<0>(frame, macs.head);
        words::store32::<8>(frame, macs.tail as u32);
    }
    Some(())
}
