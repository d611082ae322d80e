//! A TABLE_DUMP_V2 file (RFC 6396) of host routes, for `gobgp mrt inject global`: the one bulk
//! path into GoBGP's RIB that needs no gRPC client (the CLI adds one route per process).
//!
//! gobgp 3.10's `mrt inject` exits without waiting for its gRPC stream to drain: the last
//! ~50-600 paths of a 10,000-path file never reach gobgpd (measured here; the loss varies per
//! run). So the file repeats its first [`TAIL`] routes at the end as a sacrificial tail: what
//! is lost is a repeat, and a repeat that arrives re-adds a path gobgpd already has.

use std::net::Ipv4Addr;

const TABLE_DUMP_V2: u16 = 13;
const PEER_INDEX_TABLE: u16 = 1;
const RIB_IPV4_UNICAST: u16 = 2;
/// Peer type bits: four-octet AS, IPv4 address.
const PEER_AS4_IPV4: u8 = 0x02;
const WELL_KNOWN: u8 = 0x40;
/// Routes repeated at the end of the file (see above).
const TAIL: usize = 2_000;

/// The file's bytes: one peer (`peer_id`, `peer_asn`) and a /32 per address, each with ORIGIN
/// IGP, an empty AS_PATH (GoBGP prepends its own AS towards eBGP peers, as vipwire does) and
/// NEXT_HOP `next_hop`; then the first [`TAIL`] of them again.
pub fn host_routes(
    peer_id: Ipv4Addr,
    peer_asn: u32,
    next_hop: Ipv4Addr,
    addrs: &[Ipv4Addr],
) -> Vec<u8> {
    let mut out = Vec::new();
    let mut index = Vec::new();
    index.extend(peer_id.octets()); // collector BGP id
    index.extend(0u16.to_be_bytes()); // view name length
    index.extend(1u16.to_be_bytes()); // peer count
    index.push(PEER_AS4_IPV4);
    index.extend(peer_id.octets());
    index.extend(peer_id.octets());
    index.extend(peer_asn.to_be_bytes());
    record(&mut out, PEER_INDEX_TABLE, &index);

    let mut attrs = vec![WELL_KNOWN, 1, 1, 0]; // ORIGIN IGP
    attrs.extend([WELL_KNOWN, 2, 0]); // AS_PATH, empty
    attrs.extend([WELL_KNOWN, 3, 4]);
    attrs.extend(next_hop.octets());
    let attrs_len = u16::try_from(attrs.len()).expect("small attributes");
    let tail = &addrs[..TAIL.min(addrs.len())];
    for (seq, addr) in (0u32..).zip(addrs.iter().chain(tail)) {
        let mut rib = Vec::with_capacity(32);
        rib.extend(seq.to_be_bytes());
        rib.push(32);
        rib.extend(addr.octets());
        rib.extend(1u16.to_be_bytes()); // entry count
        rib.extend(0u16.to_be_bytes()); // peer index
        rib.extend(0u32.to_be_bytes()); // originated time
        rib.extend(attrs_len.to_be_bytes());
        rib.extend(&attrs);
        record(&mut out, RIB_IPV4_UNICAST, &rib);
    }
    out
}

fn record(out: &mut Vec<u8>, subtype: u16, body: &[u8]) {
    out.extend(0u32.to_be_bytes()); // timestamp
    out.extend(TABLE_DUMP_V2.to_be_bytes());
    out.extend(subtype.to_be_bytes());
    out.extend(
        u32::try_from(body.len())
            .expect("small record")
            .to_be_bytes(),
    );
    out.extend(body);
}
