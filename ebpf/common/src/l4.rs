//! L4 steering: the tables that take a packet for VIP:port to a local endpoint pod and bring
//! its replies back as VIP:port.
//!
//! Maps by indirection (STYLE.md): frontend (VIP, port, protocol) → service id; (service id,
//! Maglev slot) → backend id; backend id → pod address, target port and delivery device.
//! Addresses are 16 bytes in every key and value: an IPv4 address is stored IPv4-mapped
//! (`::ffff:a.b.c.d`, [`v4_mapped`]), so one set of maps and one code path serve both families.
//! The one exception is conntrack's key, which IPv4 flows have in a map of their own with
//! 4-byte addresses ([`CtKey4`]): the kernel hashes every byte of a key on every lookup.
//!
//! Flow of a packet (DESIGN.md, "Data path contract"):
//! 1. XDP on the uplink finds the [`ServiceKey`], checks the source ranges, finds or creates
//!    the flow's conntrack entry (Maglev pick, or ClientIP affinity), rewrites destination
//!    address and port with incremental checksum updates, writes an [`XdpMeta`] in front of
//!    the frame and returns `XDP_PASS`.
//! 2. TC ingress on the same uplink sees the meta and redirects the packet into the pod
//!    (`bpf_redirect_peer` for a veth, `bpf_redirect_neigh` otherwise): host routing,
//!    rp_filter and netfilter never see it.
//! 3. TC ingress on the pod's host-side veth finds the reply's reverse [`CtKey`] entry,
//!    rewrites the source back to VIP:port and sends it out of the interface a FIB lookup
//!    names, again past netfilter.

/// Maglev table sizes the agent may choose from (primes, as Maglev needs; the same list as
/// Cilium's `--bpf-lb-maglev-table-size`). A service's table is the smallest of these that is
/// at least the configured size and at least 100 × its active backends.
pub const MAGLEV_SIZES: [u32; 9] = [251, 509, 1021, 2039, 4093, 8191, 16381, 32749, 65521];

/// Slots per [`MaglevChunk`]. A table of `m` slots is `m.div_ceil(MAGLEV_CHUNK_SLOTS)` chunks,
/// so a table of up to 1021 slots is written with one map update.
pub const MAGLEV_CHUNK_SLOTS: u32 = 1024;

/// `max_entries` of `vipwire_services_v1`: frontends (VIP, port, protocol).
pub const SERVICES_MAX_ENTRIES: u32 = 65536;
/// Service ids are `1..SERVICE_IDS`; the per-service stats array is indexed by id.
pub const SERVICE_IDS: u32 = 65536;
/// `max_entries` of `vipwire_backends_v2`: a power of two ([`backend_slot`]).
pub const BACKENDS_MAX_ENTRIES: u32 = 262144;
const _: () = assert!(BACKENDS_MAX_ENTRIES.is_power_of_two());

/// The index of backend `id` in `vipwire_backends_v2`. Ids span `u32` (a freed id comes back
/// only after a lap of 2^32, so a flow conntrack still pins to a removed backend is not sent
/// to a new one), so several map to a slot; the agent never has two of those in use at once,
/// and the slot names its id ([`BackendValue::id`]).
#[inline(always)]
pub const fn backend_slot(id: u32) -> u32 {
    id & (BACKENDS_MAX_ENTRIES - 1)
}
/// `max_entries` of `vipwire_maglev_v1` (chunks; allocated on insert, not up front).
pub const MAGLEV_MAX_ENTRIES: u32 = 131072;
/// `max_entries` of `vipwire_conntrack_v1` and of `vipwire_conntrack4_v1` (LRUs: two
/// entries per flow).
pub const CONNTRACK_MAX_ENTRIES: u32 = 262144;
/// `max_entries` of `vipwire_affinity_v1` (an LRU).
pub const AFFINITY_MAX_ENTRIES: u32 = 65536;
/// `max_entries` of `vipwire_source_ranges_v1` (an LPM trie).
pub const SOURCE_RANGES_MAX_ENTRIES: u32 = 16384;
/// `max_entries` of `vipwire_fragments_v1` (an LRU).
pub const FRAGMENTS_MAX_ENTRIES: u32 = 8192;

/// IP protocol numbers the programs steer.
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;
pub const IPPROTO_SCTP: u8 = 132;

/// An IPv4 address as the 16 bytes every L4 key and value holds: `::ffff:a.b.c.d`.
pub const fn v4_mapped(addr_be: [u8; 4]) -> [u8; 16] {
    [
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, addr_be[0], addr_be[1], addr_be[2], addr_be[3],
    ]
}

/// Whether a 16-byte address is IPv4-mapped, i.e. stands for an IPv4 address.
#[inline(always)]
pub const fn is_v4_mapped(addr_be: &[u8; 16]) -> bool {
    let head = u64::from_ne_bytes([
        addr_be[0], addr_be[1], addr_be[2], addr_be[3], addr_be[4], addr_be[5], addr_be[6],
        addr_be[7],
    ]);
    head == 0 && addr_be[8] == 0 && addr_be[9] == 0 && addr_be[10] == 0xff && addr_be[11] == 0xff
}

/// Bits in the VIP filter: a power of two.
pub const VIP_FILTER_BITS: u32 = 65536;
const VIP_FILTER_WORDS: usize = (VIP_FILTER_BITS / 64) as usize;

/// The single value (index 0) of `vipwire_vip_filter_v1` (`ARRAY[1]`): a one-hash Bloom filter
/// of every VIP with a frontend. The XDP program tests the destination of each IP packet here
/// before anything else, so traffic that is not for a VIP pays an inlined array lookup and one
/// load instead of a hash map lookup. The agent sets the bit of each VIP ([`vip_filter_bit`])
/// and clears a bit only when no VIP maps to it any more.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VipFilter {
    pub words: [u64; VIP_FILTER_WORDS],
}
const _: () = assert!(size_of::<VipFilter>() == 8192);

impl VipFilter {
    pub const EMPTY: Self = Self {
        words: [0; VIP_FILTER_WORDS],
    };
}

/// The filter bit of a VIP (16 bytes, IPv4-mapped for IPv4): the address folded to 16 bits. Kernel and agent share this one definition.
#[inline(always)]
pub const fn vip_filter_bit(addr_be: &[u8; 16]) -> u32 {
    let a = u32::from_ne_bytes([addr_be[0], addr_be[1], addr_be[2], addr_be[3]]);
    let b = u32::from_ne_bytes([addr_be[4], addr_be[5], addr_be[6], addr_be[7]]);
    let c = u32::from_ne_bytes([addr_be[8], addr_be[9], addr_be[10], addr_be[11]]);
    let d = u32::from_ne_bytes([addr_be[12], addr_be[13], addr_be[14], addr_be[15]]);
    vip_filter_bit_folded(a ^ b ^ c ^ d)
}

/// [`vip_filter_bit`] from the XOR of the address's four 32-bit words (native order), for
/// callers that read the words one at a time.
#[inline(always)]
pub const fn vip_filter_bit_folded(folded: u32) -> u32 {
    // The two halves XORed: VIPs that differ only in their last 16 bits (a pool up to a /16,
    // or a /112) never share a bit, and the test costs the packet path three instructions.
    (folded ^ (folded >> 16)) & (VIP_FILTER_BITS - 1)
}

/// [`vip_filter_bit`] of an IPv4 VIP in its low 16 bits, from the address's four bytes as one
/// little-endian load reads them (`u32::from_le_bytes(octets)`, zero-extended or not: bits
/// from 32 up do not reach the low 16). The higher bits of the result are noise the caller
/// masks away when it splits the bit into a word index and a shift. The XDP program runs
/// this on every IPv4 packet: three instructions, where the general fold takes seven.
#[inline(always)]
pub const fn vip_filter_bit_v4_unmasked(dst: u64) -> u64 {
    // The ::ffff word of the mapped prefix folds to 0xffff.
    dst ^ (dst >> 16) ^ 0xffff
}

/// Key of `vipwire_services_v1` (`HASH`): a frontend.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ServiceKey {
    /// The VIP (IPv4-mapped for IPv4).
    pub addr_be: [u8; 16],
    pub port_be: [u8; 2],
    /// IP protocol number: [`IPPROTO_TCP`], [`IPPROTO_UDP`] or [`IPPROTO_SCTP`].
    pub proto: u8,
    pub _pad: u8,
}
const _: () = assert!(size_of::<ServiceKey>() == 20);

/// [`ServiceValue::flags`]: new flows from a client go to the backend it used last
/// (`sessionAffinity: ClientIP`), for [`ServiceValue::affinity_timeout_s`].
pub const SERVICE_AFFINITY: u32 = 1 << 0;
/// [`ServiceValue::flags`]: only sources matching this service's entries in
/// `vipwire_source_ranges_v1` may connect (`loadBalancerSourceRanges`); with no entry at all,
/// nobody may.
pub const SERVICE_SOURCE_RANGES: u32 = 1 << 1;

/// Value of `vipwire_services_v1`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ServiceValue {
    /// `1..SERVICE_IDS`: the Maglev table, affinity, source ranges and stats are keyed by it.
    pub id: u32,
    /// `SERVICE_*` bits.
    pub flags: u32,
    /// Slots of this service's Maglev table (one of [`MAGLEV_SIZES`]); 0 while it has no
    /// active backend: new flows are left to the kernel, established ones still flow.
    pub maglev_size: u32,
    pub affinity_timeout_s: u32,
}
const _: () = assert!(size_of::<ServiceValue>() == 16);

/// Key of `vipwire_maglev_v1` (`HASH`, no prealloc): one chunk of a service's table.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct MaglevKey {
    pub service_id: u32,
    /// Slot `s` lives in chunk `s / MAGLEV_CHUNK_SLOTS` at index `s % MAGLEV_CHUNK_SLOTS`.
    pub chunk: u32,
}
const _: () = assert!(size_of::<MaglevKey>() == 8);

/// Value of `vipwire_maglev_v1`: backend ids; slots past the table's size are 0.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MaglevChunk {
    pub backend_ids: [u32; MAGLEV_CHUNK_SLOTS as usize],
}
const _: () = assert!(size_of::<MaglevChunk>() == 4096);

/// [`BackendValue::flags`]: ready and not terminating: may take new flows (affinity checks
/// it; the Maglev table lists only such backends).
pub const BACKEND_ACTIVE: u32 = 1 << 0;
/// [`BackendValue::flags`]: [`BackendValue::ifindex`] is the host side of a veth pair whose
/// peer is the pod's interface: deliver with `bpf_redirect_peer`.
pub const BACKEND_VETH_PEER: u32 = 1 << 1;

/// Value of `vipwire_backends_v2` (`ARRAY`, index [`backend_slot`] of the id): a local
/// endpoint, when [`BackendValue::id`] is the id looked for (never 0: an empty slot is all
/// zeroes). A flow whose backend is not there is re-balanced. An array rather than a hash:
/// its lookup is a few instructions the verifier inlines, not a hash of the key.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BackendValue {
    /// The pod's address (IPv4-mapped for IPv4).
    pub addr_be: [u8; 16],
    /// The resolved target port.
    pub port_be: [u8; 2],
    pub _pad: [u8; 2],
    /// `BACKEND_*` bits.
    pub flags: u32,
    /// The host-side device the pod is reached through (route lookup by the agent), or 0
    /// when unknown: delivery then follows the TC program's FIB lookup.
    pub ifindex: u32,
    /// The backend id this slot holds (0: none).
    pub id: u32,
}
const _: () = assert!(size_of::<BackendValue>() == 32);

/// [`CtKey::dir`]: client → VIP, as seen on the uplink.
pub const CT_FORWARD: u8 = 0;
/// [`CtKey::dir`]: pod → client, as seen on the pod's host-side veth.
pub const CT_REVERSE: u8 = 1;

/// Key of `vipwire_conntrack_v1` (`LRU_HASH`): a packet's addresses and ports as they are
/// on the wire where it is looked up.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct CtKey {
    pub src_be: [u8; 16],
    pub dst_be: [u8; 16],
    pub sport_be: [u8; 2],
    pub dport_be: [u8; 2],
    pub proto: u8,
    /// [`CT_FORWARD`] or [`CT_REVERSE`].
    pub dir: u8,
    pub _pad: [u8; 2],
}
const _: () = assert!(size_of::<CtKey>() == 40);

impl CtKey {
    /// The key of an IPv4 flow in `vipwire_conntrack4_v1`: the last four bytes of each
    /// (IPv4-mapped) address, the rest as it is.
    pub const fn v4(&self) -> CtKey4 {
        let (s, d) = (&self.src_be, &self.dst_be);
        CtKey4 {
            src_be: [s[12], s[13], s[14], s[15]],
            dst_be: [d[12], d[13], d[14], d[15]],
            sport_be: self.sport_be,
            dport_be: self.dport_be,
            proto: self.proto,
            dir: self.dir,
            _pad: [0; 2],
        }
    }
}

/// Key of `vipwire_conntrack4_v1` (`LRU_HASH`, values [`CtValue`]): [`CtKey`] of an IPv4 flow,
/// with 4-byte addresses. A map of its own because the kernel hashes the whole key on every
/// lookup: 16 bytes hash in well under half the time of 40, and the lookup is the largest
/// single cost of a packet of an established flow. The fields after the addresses are laid
/// out as in [`CtKey`], so its last word is the same.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct CtKey4 {
    pub src_be: [u8; 4],
    pub dst_be: [u8; 4],
    pub sport_be: [u8; 2],
    pub dport_be: [u8; 2],
    pub proto: u8,
    /// [`CT_FORWARD`] or [`CT_REVERSE`].
    pub dir: u8,
    pub _pad: [u8; 2],
}
const _: () = assert!(size_of::<CtKey4>() == 16);

/// Value of `vipwire_conntrack_v1` and `vipwire_conntrack4_v1`.
///
/// Forward entries carry the backend; reverse entries carry the frontend to restore. Both are
/// written by XDP when a flow starts; the LRU ages them out.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CtValue {
    /// Forward: the backend the flow is pinned to.
    pub backend_id: u32,
    pub service_id: u32,
    /// Reverse: the VIP replies must come from.
    pub nat_addr_be: [u8; 16],
    /// Reverse: the service port replies must come from.
    pub nat_port_be: [u8; 2],
    /// Forward: packets left before the flow's reverse entry is written again (see
    /// [`CT_REVERSE_REFRESH`]).
    pub refresh: u16,
    pub _pad: [u8; 4],
}
const _: () = assert!(size_of::<CtValue>() == 32);

/// Every this many packets of an established flow, the XDP program writes the flow's reverse
/// entry again. LRU ages the two entries apart: a flow whose client sends steadily and whose
/// pod answers rarely keeps its forward entry fresh while the reverse one may be evicted,
/// after which every reply would leave un-NATed. This repairs that within this many packets,
/// for ~0.3 ns per packet.
pub const CT_REVERSE_REFRESH: u16 = 1024;

/// Key of `vipwire_affinity_v1` (`LRU_HASH`): a client of a service with ClientIP affinity.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct AffinityKey {
    pub service_id: u32,
    pub client_be: [u8; 16],
}
const _: () = assert!(size_of::<AffinityKey>() == 20);

/// Value of `vipwire_affinity_v1`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AffinityValue {
    pub backend_id: u32,
    pub _pad: u32,
    /// `bpf_ktime_get_ns()` of the client's last new flow.
    pub last_ns: u64,
}
const _: () = assert!(size_of::<AffinityValue>() == 16);

/// Data of a `vipwire_source_ranges_v1` key (`LPM_TRIE` of `lpm_trie::Key<SourceRange>`,
/// value `u8` = 1): an allowed source range of a service. The key's prefix length counts the
/// service id's 32 bits plus the address prefix (an IPv4 /n is 96 + n: it is IPv4-mapped).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SourceRange {
    /// Big-endian, so that the id is the first 32 bits the trie matches.
    pub service_id_be: [u8; 4],
    pub addr_be: [u8; 16],
}
const _: () = assert!(size_of::<SourceRange>() == 20);

/// Key of `vipwire_fragments_v1` (`LRU_HASH`): the fragments of one datagram to a VIP.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FragKey {
    pub src_be: [u8; 16],
    pub dst_be: [u8; 16],
    /// IPv4: the 16-bit identification, zero-extended; IPv6: the fragment header's 32 bits.
    pub id: u32,
    /// IPv4: the protocol; IPv6: the Fragment header's next header (the same in every
    /// fragment; the upper layer may follow further extension headers in the first only).
    pub proto: u8,
    pub _pad: [u8; 3],
}
const _: () = assert!(size_of::<FragKey>() == 40);

/// Value of `vipwire_reply_fragments_v1` (`LRU_HASH`, keyed by [`FragKey`] with the reply's
/// addresses as the pod sent it): the frontend address the first fragment of a fragmented
/// reply was rewritten to, for its later fragments (which carry no ports to look the flow up
/// by).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReplyFragValue {
    pub nat_addr_be: [u8; 16],
}
const _: () = assert!(size_of::<ReplyFragValue>() == 16);

/// Value of `vipwire_fragments_v1`: where the first fragment went.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FragValue {
    pub backend_id: u32,
    pub service_id: u32,
}
const _: () = assert!(size_of::<FragValue>() == 8);

/// Per-CPU counters of one service: value of `vipwire_service_stats_v1` (`PERCPU_ARRAY`
/// indexed by service id). The agent zeroes a slot when it hands out the id.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ServiceStats {
    /// Packets steered to a backend (forward direction).
    pub packets: u64,
    pub bytes: u64,
    /// Flows that got a backend from Maglev or affinity.
    pub new_flows: u64,
    /// Replies rewritten back to VIP:port.
    pub replies: u64,
    /// Dropped: the source is outside `loadBalancerSourceRanges`.
    pub source_denied: u64,
    /// New flows left to the kernel because the service has no active local backend.
    pub no_backend: u64,
}
const _: () = assert!(size_of::<ServiceStats>() == 48);

/// Written by XDP in front of a steered frame (`bpf_xdp_adjust_meta`) for the uplink's TC
/// program, which delivers it to the backend.
///
/// The first [`XDP_META_ID_LEN`] bytes are all an older XDP program wrote (the magic was the
/// same): the TC program takes such a record too, looking the backend up itself, so a
/// program upgrade in either order keeps delivering.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct XdpMeta {
    /// [`XDP_META_MAGIC`]: anything else in front of a frame is not ours.
    pub magic: u32,
    pub backend_id: u32,
    /// The backend's [`BackendValue::ifindex`] and [`BackendValue::flags`] as XDP read them,
    /// so that TC need not look the backend up again for a cached delivery.
    pub ifindex: u32,
    pub backend_flags: u32,
}
const _: () = assert!(size_of::<XdpMeta>() == 16);

/// Length of the record's first part, `magic` and `backend_id`.
pub const XDP_META_ID_LEN: usize = 8;

/// [`XdpMeta::magic`]: "vw4\x01".
pub const XDP_META_MAGIC: u32 = 0x7677_3401;

#[cfg(feature = "user")]
mod pod {
    // SAFETY (each impl): repr(C), integer and byte-array fields only, no implicit padding
    // (size asserts beside the types).
    unsafe impl aya::Pod for super::ServiceKey {}
    unsafe impl aya::Pod for super::ServiceValue {}
    unsafe impl aya::Pod for super::MaglevKey {}
    unsafe impl aya::Pod for super::MaglevChunk {}
    unsafe impl aya::Pod for super::BackendValue {}
    unsafe impl aya::Pod for super::CtKey {}
    unsafe impl aya::Pod for super::CtKey4 {}
    unsafe impl aya::Pod for super::CtValue {}
    unsafe impl aya::Pod for super::AffinityKey {}
    unsafe impl aya::Pod for super::AffinityValue {}
    unsafe impl aya::Pod for super::SourceRange {}
    unsafe impl aya::Pod for super::FragKey {}
    unsafe impl aya::Pod for super::FragValue {}
    unsafe impl aya::Pod for super::ReplyFragValue {}
    unsafe impl aya::Pod for super::ServiceStats {}
    unsafe impl aya::Pod for super::VipFilter {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ipv4_shortcut_gives_the_same_filter_bit() {
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for _ in 0..100_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let octets = (x as u32).to_be_bytes();
            // Bits above 32 must not matter.
            let loaded = u64::from(u32::from_le_bytes(octets)) | (x >> 32) << 32;
            let expected = vip_filter_bit(&v4_mapped(octets));
            let got = (vip_filter_bit_v4_unmasked(loaded) & u64::from(VIP_FILTER_BITS - 1)) as u32;
            assert_eq!(got, expected, "{octets:?}");
        }
    }
}
