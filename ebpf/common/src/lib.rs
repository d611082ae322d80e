//! The contract between vipwire's BPF programs and its agent.
//!
//! Every type here is ABI: `#[repr(C)]`, fixed-width fields, explicit padding, a size assert
//! beside it. Map names carry a layout version; bump it when a layout changes so an agent never
//! reuses a pinned map whose layout it does not understand.
#![no_std]

pub mod control;
pub mod counters;
pub mod l2;
pub mod l4;
pub mod selfcheck;

pub use control::{CONTRACT_VERSION, Control};
pub use counters::Reason;
pub use l2::{Iface, L2Vip4Key, L2Vip6Key, L2VipStats};

/// Names of the BPF programs, as the loader looks them up in the object.
pub mod programs {
    /// The XDP program attached to every configured uplink interface.
    pub const XDP_UPLINK: &str = "vipwire_xdp";
    /// An empty program that returns XDP_PASS: the benchmark's baseline and a pass-all program
    /// for lab veths that stand for a NIC's far end. Never attached by the agent.
    pub const XDP_PASS_ALL: &str = "vipwire_xdp_pass";
    /// TC ingress on every configured uplink: delivers frames the XDP program steered (an
    /// [`crate::l4::XdpMeta`] in front) into their pod.
    pub const TC_DELIVER: &str = "vipwire_tc_deliver";
    /// TC ingress on the host-side veth of every local backend: rewrites replies back to
    /// VIP:port and sends them towards the client.
    pub const TC_REPLY: &str = "vipwire_tc_reply";
}

/// Names of the maps, which are also their pin file names under the bpffs directory.
///
/// The BPF crate declares each map with the same literal (`#[btf_map(name = "...")]` takes
/// no path); the test `contract_maps_match_object` (tests/tests/xdp_l2_fixtures.rs) loads the
/// object and opens every map below by name with its typed key and value, so a renamed map
/// or a changed layout fails there.
pub mod maps {
    /// `PERCPU_HASH` [`crate::L2Vip4Key`] -> [`crate::L2VipStats`]: IPv4 VIPs answered by
    /// ARP, per ingress interface.
    pub const L2_VIP4: &str = "vipwire_l2_vip4_v1";
    /// `PERCPU_HASH` [`crate::L2Vip6Key`] -> [`crate::L2VipStats`]: IPv6 VIPs answered by
    /// NDP, per ingress interface.
    pub const L2_VIP6: &str = "vipwire_l2_vip6_v1";
    /// `HASH` ifindex (`u32`) -> [`crate::Iface`]: interfaces answered on, with their MAC.
    pub const IFACES: &str = "vipwire_ifaces_v1";
    /// `ARRAY[1]` -> [`crate::Control`]: heartbeat and contract version.
    pub const CONTROL: &str = "vipwire_control_v1";
    /// `PERCPU_ARRAY[Reason::COUNT]` -> `u64`: packet counters indexed by [`crate::Reason`].
    pub const COUNTERS: &str = "vipwire_counters_v1";

    /// `ARRAY[1]` -> [`crate::l4::VipFilter`]: which destinations may be VIPs. The XDP
    /// program reads it as a global variable ([`VIP_FILTER_GLOBAL`] in section
    /// [`VIP_FILTER_SECTION`], which aya makes a map of that name), at a fixed address: every
    /// packet tests it, and its lookup was a quarter of what a passed packet costs beyond an
    /// empty program. The object also defines the map under this name, with BTF (aya creates
    /// a global's map without); the agent pins that one first and loads the global into it.
    pub const VIP_FILTER: &str = "vipwire_vip_filter_v1";
    /// The `.bss`-kind section holding the VIP filter: the name of the global's map in the
    /// loaded object.
    pub const VIP_FILTER_SECTION: &str = ".bss.vipwire_vip_filter_v1";
    /// The VIP filter's symbol.
    pub const VIP_FILTER_GLOBAL: &str = "VIPWIRE_VIP_FILTER";
    /// `HASH` [`crate::l4::ServiceKey`] -> [`crate::l4::ServiceValue`]: frontends steered.
    pub const SERVICES: &str = "vipwire_services_v1";
    /// `HASH` [`crate::l4::MaglevKey`] -> [`crate::l4::MaglevChunk`]: Maglev tables.
    pub const MAGLEV: &str = "vipwire_maglev_v1";
    /// `ARRAY` [`crate::l4::backend_slot`] of a backend id -> [`crate::l4::BackendValue`]:
    /// local endpoints.
    pub const BACKENDS: &str = "vipwire_backends_v2";
    /// `LRU_HASH` [`crate::l4::CtKey`] -> [`crate::l4::CtValue`]: IPv6 flows, both
    /// directions.
    pub const CONNTRACK: &str = "vipwire_conntrack_v1";
    /// `LRU_HASH` [`crate::l4::CtKey4`] -> [`crate::l4::CtValue`]: IPv4 flows, both
    /// directions.
    pub const CONNTRACK4: &str = "vipwire_conntrack4_v1";
    /// `LRU_HASH` [`crate::l4::AffinityKey`] -> [`crate::l4::AffinityValue`]: ClientIP
    /// affinity.
    pub const AFFINITY: &str = "vipwire_affinity_v1";
    /// `LPM_TRIE` of [`crate::l4::SourceRange`] -> `u8`: `loadBalancerSourceRanges`.
    pub const SOURCE_RANGES: &str = "vipwire_source_ranges_v1";
    /// `LRU_HASH` [`crate::l4::FragKey`] -> [`crate::l4::FragValue`]: fragmented datagrams.
    pub const FRAGMENTS: &str = "vipwire_fragments_v1";
    /// `LRU_HASH` [`crate::l4::FragKey`] -> [`crate::l4::ReplyFragValue`]: fragmented
    /// replies.
    pub const REPLY_FRAGMENTS: &str = "vipwire_reply_fragments_v1";
    /// `PERCPU_ARRAY[l4::SERVICE_IDS]` -> [`crate::l4::ServiceStats`]: per-service counters.
    pub const SERVICE_STATS: &str = "vipwire_service_stats_v1";

    /// Every contract map (not aya-log's `AYA_LOGS` ring buffer or the `.rodata` globals).
    pub const ALL: [&str; 16] = [
        L2_VIP4,
        L2_VIP6,
        IFACES,
        CONTROL,
        COUNTERS,
        SERVICES,
        MAGLEV,
        BACKENDS,
        CONNTRACK,
        CONNTRACK4,
        AFFINITY,
        SOURCE_RANGES,
        FRAGMENTS,
        REPLY_FRAGMENTS,
        SERVICE_STATS,
        VIP_FILTER,
    ];
}
