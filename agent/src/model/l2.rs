//! The single L2 owner of a VIP: rendezvous (highest-random-weight) hashing.
//!
//! Every node computes the same winner from the same inputs, with no coordination, and when a
//! node leaves only the VIPs it owned move. The hash is fixed here, independent of Rust's
//! `std` hasher (whose output may change between releases), so any implementation, in any
//! language or version, elects the same owner:
//!
//! ```text
//! score(vip, node) = fmix64(fnv1a64(octets(vip) ++ utf8(node)))
//!   octets(vip): 4 bytes for IPv4, 16 for IPv6, network byte order
//!   fnv1a64:     h = 0xcbf29ce484222325; for each byte b: h = (h ^ b) * 0x100000001b3 (mod 2^64)
//!   fmix64:      MurmurHash3's finalizer:
//!                h ^= h >> 33; h *= 0xff51afd7ed558ccd; h ^= h >> 33;
//!                h *= 0xc4ceb9fe1a85ec53; h ^= h >> 33
//! owner(vip, nodes) = the node with the highest score; on a tie, the smaller name (bytewise)
//! ```
//!
//! No separator is needed: a VIP's length is fixed by its family. The finalizer matters: plain
//! FNV-1a of names that differ only in their last byte (`node-1`, `node-2`, ...) orders them by
//! a few bits of the VIP, so one node would win far more than its share.

use std::{hash::Hasher, net::IpAddr};

use super::fnv::Fnv1a;

/// The rendezvous score of `node` for `vip` (see the module docs).
pub fn score(vip: IpAddr, node: &str) -> u64 {
    let mut hash = Fnv1a::default();
    match vip {
        IpAddr::V4(v4) => hash.write(&v4.octets()),
        IpAddr::V6(v6) => hash.write(&v6.octets()),
    }
    hash.write(node.as_bytes());
    fmix64(hash.finish())
}

fn fmix64(mut h: u64) -> u64 {
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^= h >> 33;
    h
}

/// The node among `candidates` that owns `vip` at L2; `None` when there are no candidates.
/// Duplicates and order in `candidates` do not change the result.
pub fn owner<'a>(vip: IpAddr, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    candidates
        .into_iter()
        .map(|node| (score(vip, node), node))
        .reduce(|best, next| {
            let better = next.0 > best.0 || (next.0 == best.0 && next.1 < best.1);
            if better { next } else { best }
        })
        .map(|(_, node)| node)
}

/// Whether `node` is [`owner`] of `vip` among `candidates`, which must include `node`.
/// Cheaper than [`owner`]: it stops at the first candidate that beats `node`.
pub fn is_owner<'a>(
    vip: IpAddr,
    node: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> bool {
    let mine = score(vip, node);
    candidates.into_iter().all(|other| {
        let theirs = score(vip, other);
        theirs < mine || (theirs == mine && node <= other)
    })
}
