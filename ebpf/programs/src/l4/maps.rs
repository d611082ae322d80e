//! The L4 tables (vipwire_common::l4). Each literal must equal its `vipwire_common::maps`
//! constant (checked by the fixture test `contract_maps_match_object`).

use aya_ebpf::{
    bindings::BPF_F_NO_PREALLOC,
    btf_maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, lpm_trie::Key},
    macros::{btf_map, map},
    maps::PerCpuArray as LegacyPerCpuArray,
};
use vipwire_common::l4::{
    AFFINITY_MAX_ENTRIES, AffinityKey, AffinityValue, BACKENDS_MAX_ENTRIES, BackendValue,
    CONNTRACK_MAX_ENTRIES, CtKey, CtKey4, CtValue, FRAGMENTS_MAX_ENTRIES, FragKey, FragValue,
    MAGLEV_CHUNK_SLOTS, MAGLEV_MAX_ENTRIES, MaglevChunk, MaglevKey, ReplyFragValue, SERVICE_IDS,
    SERVICES_MAX_ENTRIES, SOURCE_RANGES_MAX_ENTRIES, ServiceKey, ServiceStats, ServiceValue,
    SourceRange, VipFilter, backend_slot,
};

use super::headers::Ip;

#[btf_map(name = "vipwire_services_v1")]
pub static SERVICES: HashMap<ServiceKey, ServiceValue, { SERVICES_MAX_ENTRIES as usize }> =
    HashMap::new();

#[btf_map(name = "vipwire_maglev_v1")]
pub static MAGLEV: HashMap<
    MaglevKey,
    MaglevChunk,
    { MAGLEV_MAX_ENTRIES as usize },
    { BPF_F_NO_PREALLOC as usize },
> = HashMap::new();

#[btf_map(name = "vipwire_backends_v2")]
static BACKENDS: Array<BackendValue, { BACKENDS_MAX_ENTRIES as usize }> = Array::new();

/// Backend `id`, if the agent has it in the map (0 never is).
#[inline(always)]
pub fn backend(id: u32) -> Option<*const BackendValue> {
    let value = BACKENDS.get_ptr(backend_slot(id))?;
    // SAFETY: a map value from a successful lookup.
    (id != 0 && unsafe { (*value).id } == id).then_some(value)
}

#[btf_map(name = "vipwire_conntrack_v1")]
pub static CONNTRACK: LruHashMap<CtKey, CtValue, { CONNTRACK_MAX_ENTRIES as usize }> =
    LruHashMap::new();

#[btf_map(name = "vipwire_conntrack4_v1")]
pub static CONNTRACK4: LruHashMap<CtKey4, CtValue, { CONNTRACK_MAX_ENTRIES as usize }> =
    LruHashMap::new();

/// The conntrack entry of `key`, from the map of its family (`v6`, as the packet's header
/// says: an IPv6 packet with IPv4-mapped addresses must not match an IPv4 flow).
#[inline(always)]
pub fn conntrack(key: &CtKey, v6: bool) -> Option<*mut CtValue> {
    if v6 {
        CONNTRACK.get_ptr_mut(key)
    } else {
        CONNTRACK4.get_ptr_mut(key.v4())
    }
}

#[btf_map(name = "vipwire_affinity_v1")]
pub static AFFINITY: LruHashMap<AffinityKey, AffinityValue, { AFFINITY_MAX_ENTRIES as usize }> =
    LruHashMap::new();

#[btf_map(name = "vipwire_source_ranges_v1")]
pub static SOURCE_RANGES: LpmTrie<SourceRange, u8, { SOURCE_RANGES_MAX_ENTRIES as usize }> =
    LpmTrie::new();

#[btf_map(name = "vipwire_fragments_v1")]
pub static FRAGMENTS: LruHashMap<FragKey, FragValue, { FRAGMENTS_MAX_ENTRIES as usize }> =
    LruHashMap::new();

#[btf_map(name = "vipwire_reply_fragments_v1")]
pub static REPLY_FRAGMENTS: LruHashMap<
    FragKey,
    ReplyFragValue,
    { FRAGMENTS_MAX_ENTRIES as usize },
> = LruHashMap::new();

#[btf_map(name = "vipwire_service_stats_v1")]
pub static SERVICE_STATS: PerCpuArray<ServiceStats, { SERVICE_IDS as usize }> = PerCpuArray::new();

/// The backend in `slot` of service `service_id`'s Maglev table (0 when the slot is empty).
#[inline(always)]
pub fn maglev_backend(service_id: u32, slot: u32) -> u32 {
    let key = MaglevKey {
        service_id,
        chunk: slot / MAGLEV_CHUNK_SLOTS,
    };
    let Some(chunk) = MAGLEV.get_ptr(key) else {
        return 0;
    };
    let index = (slot % MAGLEV_CHUNK_SLOTS) as usize;
    // SAFETY: a map value from a successful lookup; index < MAGLEV_CHUNK_SLOTS by the modulo.
    unsafe { *(*chunk).backend_ids.get_unchecked(index) }
}

/// Whether `addr_be` may reach service `service_id` under its source ranges.
#[inline(always)]
pub fn source_allowed(service_id: u32, addr_be: [u8; 16]) -> bool {
    let key = Key::new(
        32 + 128,
        SourceRange {
            service_id_be: service_id.to_be_bytes(),
            addr_be,
        },
    );
    SOURCE_RANGES.get(&key).is_some()
}

/// This CPU's stats of service `service_id`.
#[inline(always)]
pub fn stats(service_id: u32) -> Option<*mut ServiceStats> {
    SERVICE_STATS.get_ptr_mut(service_id)
}

/// The same map as [`VIPWIRE_VIP_FILTER`] once pinned, defined again with BTF: the agent
/// creates its pin from this definition, so that `bpftool map dump` names the fields (aya
/// creates a global's map without BTF). No program refers to it.
#[btf_map(name = "vipwire_vip_filter_v1")]
static VIP_FILTER_BTF: Array<VipFilter, 1> = Array::new();

/// `vipwire_vip_filter_v1` (vipwire_common::maps::VIP_FILTER): a global, so that reading it
/// is a load from a fixed address, not a map lookup. The section and symbol names are
/// vipwire_common::maps::{VIP_FILTER_SECTION, VIP_FILTER_GLOBAL}; the agent writes it through
/// its map.
#[unsafe(link_section = ".bss.vipwire_vip_filter_v1")]
#[unsafe(no_mangle)]
static mut VIPWIRE_VIP_FILTER: VipFilter = VipFilter::EMPTY;

/// False when the address with filter bit `bit` (`vip_filter_bit`; bits from 16 up are
/// ignored) is certainly not a VIP (most traffic); true when it may be one.
#[inline(always)]
pub fn maybe_vip(bit: u64) -> bool {
    // SAFETY: the word index is masked below the filter's 1024 words. A volatile read: the
    // agent writes the filter behind the program's back, and nothing here ever does, so the
    // compiler must not take it for the constant it was initialized with.
    let word = unsafe {
        core::ptr::read_volatile(
            core::ptr::addr_of!(VIPWIRE_VIP_FILTER.words)
                .cast::<u64>()
                .add((bit >> 6) as usize & 1023),
        )
    };
    word & (1 << (bit & 63)) != 0
}

/// Per-packet working state of the steering path, kept in a per-CPU slot rather than on the
/// BPF stack (512 bytes for the whole call chain). Not part of the contract: no BTF, not
/// pinned.
#[repr(C)]
pub struct Scratch {
    pub ip: Ip,
    pub ct: CtKey,
    /// `ct` of an IPv4 flow, as `vipwire_conntrack4_v1` keys it.
    pub ct4: CtKey4,
    /// A new flow's reverse conntrack key and the value of both its entries.
    pub reverse: CtKey,
    pub reverse4: CtKey4,
    pub value: CtValue,
    pub frag: FragKey,
    /// Where a steered packet goes: filled by the flow lookup, applied by the DNAT.
    pub target: Target,
}

/// The rewrite a steered packet gets.
#[repr(C)]
pub struct Target {
    pub addr: [u8; 16],
    pub port: [u8; 2],
    /// 0 for a later fragment: no upper-layer header to rewrite.
    pub rewrite_port: u8,
    pub _pad: u8,
    pub backend_id: u32,
    pub service_id: u32,
    /// The backend's device and flags, for the TC program (`XdpMeta`).
    pub ifindex: u32,
    pub backend_flags: u32,
}

#[map(name = "l4_scratch")]
static SCRATCH: LegacyPerCpuArray<Scratch> = LegacyPerCpuArray::with_max_entries(1, 0);

/// This CPU's scratch slot.
#[inline(always)]
pub fn scratch() -> Option<&'static mut Scratch> {
    // SAFETY: a per-CPU slot, used by one program run at a time on this CPU (XDP runs with
    // preemption off; the TC programs never touch it).
    SCRATCH.get_ptr_mut(0).map(|p| unsafe { &mut *p })
}
