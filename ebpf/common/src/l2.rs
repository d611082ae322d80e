//! L2 answering: which (VIP, interface) pairs this node answers ARP/NDP for, and the MAC of
//! every interface it answers on.

/// Key of `vipwire_l2_vip4_v1`: an IPv4 VIP owned on one interface.
///
/// An entry means "answer ARP requests for `addr_be` that arrive on `ifindex`". The same VIP
/// on two interfaces is two entries.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct L2Vip4Key {
    /// The VIP in network byte order (`Ipv4Addr::octets()`).
    pub addr_be: [u8; 4],
    /// Ingress interface index, host byte order.
    pub ifindex: u32,
}
const _: () = assert!(size_of::<L2Vip4Key>() == 8);

/// Key of `vipwire_l2_vip6_v1`: an IPv6 VIP owned on one interface.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct L2Vip6Key {
    /// The VIP in network byte order (`Ipv6Addr::octets()`).
    pub addr_be: [u8; 16],
    /// Ingress interface index, host byte order.
    pub ifindex: u32,
}
const _: () = assert!(size_of::<L2Vip6Key>() == 20);

/// Value of both VIP maps (per-CPU hashes): what the program did for this (VIP, interface).
///
/// The agent inserts an all-zero value for a newly owned pair and deletes the entry when it
/// stops owning it; it never overwrites an existing entry, so the counts survive agent
/// restarts. Readers sum over CPUs.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct L2VipStats {
    /// Requests answered with `XDP_TX`.
    pub answered: u64,
}
const _: () = assert!(size_of::<L2VipStats>() == 8);

/// Value of `vipwire_ifaces_v1` (key: ifindex as `u32`): an interface the program answers on.
///
/// XDP cannot read a device's MAC address, so the agent writes it when it attaches. Requests
/// arriving on an interface without an entry are never answered.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Iface {
    /// The interface's MAC address: the source of every reply sent from it.
    pub mac: [u8; 6],
    pub _pad: [u8; 2],
}
const _: () = assert!(size_of::<Iface>() == 8);

impl Iface {
    pub const fn new(mac: [u8; 6]) -> Self {
        Self { mac, _pad: [0; 2] }
    }
}

/// `max_entries` of each VIP map: (VIP, interface) pairs, not VIPs.
pub const L2_VIP_MAX_ENTRIES: u32 = 16384;

/// `max_entries` of `vipwire_ifaces_v1`.
pub const IFACES_MAX_ENTRIES: u32 = 64;

/// A Neighbor Solicitation carrying more option bytes than this (after the 24-byte fixed
/// part) is left to the kernel and counted as `unsupported`. 32 bytes covers a source
/// link-layer address option plus a nonce (RFC 7527) and room to spare.
pub const NS_MAX_OPTIONS_LEN: u16 = 32;

#[cfg(feature = "user")]
mod pod {
    // SAFETY: repr(C), integer and byte-array fields only, no implicit padding (size asserts).
    unsafe impl aya::Pod for super::L2Vip4Key {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::L2Vip6Key {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::L2VipStats {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::Iface {}
}
