//! What the L4 maps hold ([`Mirror`]) and the map operations that change them ([`Op`]).

use std::{
    collections::{BTreeMap, BTreeSet},
    hash::{DefaultHasher, Hasher},
    net::{IpAddr, SocketAddr},
    sync::Arc,
};

use ipnet::IpNet;
use vipwire_common::l4::{BackendValue, MAGLEV_CHUNK_SLOTS, ServiceValue, v4_mapped};

use crate::{dataplane::maglev, model::Frontend};

/// One map write or delete, in the order the kernel must see them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    PutBackend {
        id: u32,
        value: BackendValue,
    },
    /// Chunk `chunk` of the table `table` describes; `fingerprint` is [`fingerprint`] of its
    /// slots ([`MaglevInput::chunk`]).
    PutChunk {
        service_id: u32,
        chunk: u32,
        table: Arc<MaglevInput>,
        fingerprint: u64,
    },
    PutRange {
        service_id: u32,
        range: IpNet,
    },
    /// Zero the per-CPU stats slot of an id being handed out.
    ZeroStats {
        service_id: u32,
    },
    PutService {
        frontend: Frontend,
        value: ServiceValue,
    },
    DelService {
        frontend: Frontend,
    },
    DelChunk {
        service_id: u32,
        chunk: u32,
    },
    DelRange {
        service_id: u32,
        range: IpNet,
    },
    DelBackend {
        id: u32,
    },
    /// The whole VIP filter (`vipwire_vip_filter_v1`), as the set bits.
    PutFilter {
        bits: BTreeSet<u32>,
    },
}

/// What a Maglev table is computed from. The table is a pure function of it
/// ([`maglev::populate`]), so plans carry this instead of the slots (4 KiB per chunk: 40 MiB
/// for the first plan of 10,000 services) and the slots are computed when they are written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MaglevInput {
    pub size: u32,
    /// Active backends: (key, backend id).
    pub backends: Vec<(SocketAddr, u32)>,
}

/// The slots of one chunk.
pub type ChunkSlots = [u32; MAGLEV_CHUNK_SLOTS as usize];

impl MaglevInput {
    /// The whole table (`size` slots).
    pub fn table(&self) -> Vec<u32> {
        maglev::populate(self.size, &self.backends)
    }

    /// Chunk `chunk` of `table` (from [`Self::table`]), zero-padded past the table's end.
    pub fn chunk(table: &[u32], chunk: u32) -> ChunkSlots {
        let mut slots = [0; MAGLEV_CHUNK_SLOTS as usize];
        let start = (chunk as usize * slots.len()).min(table.len());
        let end = (start + slots.len()).min(table.len());
        slots[..end - start].copy_from_slice(&table[start..end]);
        slots
    }
}

/// Stands for a chunk's slots in the [`Mirror`] (8 bytes instead of 4 KiB). Two different
/// chunks have the same fingerprint with probability 2^-64: a write skipped for that reason
/// is repaired by no resync, but it is far less likely than a bit flip in the map itself.
pub fn fingerprint(slots: &[u32]) -> u64 {
    // SipHash with fixed keys: the same in every process of the same build, and only ever
    // compared within one process.
    let mut hasher = DefaultHasher::new();
    for &slot in slots {
        hasher.write_u32(slot);
    }
    hasher.finish()
}

/// What the maps hold (as far as this agent wrote or read them back).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Mirror {
    pub services: BTreeMap<Frontend, ServiceValue>,
    /// (service id, chunk) → [`fingerprint`] of the chunk's slots.
    pub chunks: BTreeMap<(u32, u32), u64>,
    pub ranges: BTreeSet<(u32, IpNet)>,
    pub backends: BTreeMap<u32, BackendValue>,
    /// Bits set in the VIP filter.
    pub filter: BTreeSet<u32>,
}

impl Mirror {
    /// Follows one successful operation.
    pub fn record(&mut self, op: &Op) {
        match op {
            Op::PutBackend { id, value } => {
                self.backends.insert(*id, *value);
            }
            Op::PutChunk {
                service_id,
                chunk,
                fingerprint,
                ..
            } => {
                self.chunks.insert((*service_id, *chunk), *fingerprint);
            }
            Op::PutRange { service_id, range } => {
                self.ranges.insert((*service_id, *range));
            }
            Op::ZeroStats { .. } => {}
            Op::PutService { frontend, value } => {
                self.services.insert(*frontend, *value);
            }
            Op::DelService { frontend } => {
                self.services.remove(frontend);
            }
            Op::DelChunk { service_id, chunk } => {
                self.chunks.remove(&(*service_id, *chunk));
            }
            Op::DelRange { service_id, range } => {
                self.ranges.remove(&(*service_id, *range));
            }
            Op::DelBackend { id } => {
                self.backends.remove(id);
            }
            Op::PutFilter { bits } => self.filter.clone_from(bits),
        }
    }
}

/// The 16-byte form every L4 key and value uses.
pub fn addr16(addr: IpAddr) -> [u8; 16] {
    match addr {
        IpAddr::V4(v4) => v4_mapped(v4.octets()),
        IpAddr::V6(v6) => v6.octets(),
    }
}

/// The inverse of [`addr16`]: IPv4-mapped addresses come back as IPv4.
pub fn from_addr16(bytes: [u8; 16]) -> IpAddr {
    let v6 = std::net::Ipv6Addr::from(bytes);
    match v6.to_ipv4_mapped() {
        Some(v4) => IpAddr::V4(v4),
        None => IpAddr::V6(v6),
    }
}

/// The (pod address, target port) a backend entry stands for.
pub fn backend_key(value: &BackendValue) -> SocketAddr {
    SocketAddr::new(
        from_addr16(value.addr_be),
        u16::from_be_bytes(value.port_be),
    )
}
