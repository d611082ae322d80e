//! Maglev consistent hashing (Eisenbud et al., NSDI 2016, section 3.4): a lookup table of `M`
//! slots (`M` prime) in which every backend owns about `M / N` slots, and where removing a
//! backend moves little more than that backend's own slots. Pure: no IO, no randomness, the
//! same input gives the same table on every node and after every restart.

use std::net::{IpAddr, SocketAddr};

use vipwire_common::l4::{MAGLEV_SIZES, v4_mapped};

/// The table size for a service with `active` active backends: the smallest of
/// [`MAGLEV_SIZES`] that is at least `configured` and at least 100 × `active` (the paper's
/// M ≫ N keeps each backend's share within about 1 % of even). Past the largest size the
/// largest is used: the spread is then merely less even, which beats refusing the service.
pub fn table_size(configured: u32, active: usize) -> u32 {
    let floor = u64::from(configured).max(100 * active as u64);
    MAGLEV_SIZES
        .iter()
        .copied()
        .find(|&m| u64::from(m) >= floor)
        .unwrap_or(MAGLEV_SIZES[MAGLEV_SIZES.len() - 1])
}

/// Whether `size` is one of [`MAGLEV_SIZES`] (config validation).
pub fn is_valid_size(size: u32) -> bool {
    MAGLEV_SIZES.contains(&size)
}

/// Fills a table of `size` slots (a prime) with the backend ids of `backends`, each named by
/// its stable key (pod address and target port). The input order does not matter and a key
/// listed twice counts once. Returns `size` ids; all 0 when `backends` is empty.
pub fn populate(size: u32, backends: &[(SocketAddr, u32)]) -> Vec<u32> {
    let m = u64::from(size);
    let mut sorted: Vec<(SocketAddr, u32)> = backends.to_vec();
    // The fill order decides who wins contested slots: make it a function of the keys alone.
    sorted.sort_unstable();
    sorted.dedup_by_key(|(key, _)| *key);
    let mut table = vec![0u32; size as usize];
    if sorted.is_empty() || m == 0 {
        return table;
    }
    let perms: Vec<(u64, u64)> = sorted
        .iter()
        .map(|(key, _)| {
            let bytes = key_bytes(key);
            let offset = hash(OFFSET_SEED, &bytes) % m;
            // skip in 1..m: with m prime every skip is coprime to m, so each backend's
            // preference list is a permutation of all slots.
            let skip = if m > 1 {
                hash(SKIP_SEED, &bytes) % (m - 1) + 1
            } else {
                1
            };
            (offset, skip)
        })
        .collect();
    let mut taken = vec![false; size as usize];
    let mut next = vec![0u64; sorted.len()];
    let mut filled = 0u64;
    loop {
        for (i, &(offset, skip)) in perms.iter().enumerate() {
            // Terminates: the permutation visits every slot, and the table has free slots
            // whenever we get here.
            let mut slot = (offset + next[i] * skip) % m;
            while taken[slot as usize] {
                next[i] += 1;
                slot = (offset + next[i] * skip) % m;
            }
            taken[slot as usize] = true;
            table[slot as usize] = sorted[i].1;
            next[i] += 1;
            filled += 1;
            if filled == m {
                return table;
            }
        }
    }
}

const OFFSET_SEED: u64 = 0x6d61_676c_6576_3031; // "maglev01"
const SKIP_SEED: u64 = 0x736b_6970_7365_6564; // "skipseed"

/// The bytes a backend is hashed by: its address as the maps hold it (IPv4-mapped) and its
/// port in network order, so the key is the same whatever the caller's representation.
fn key_bytes(key: &SocketAddr) -> [u8; 18] {
    let addr = match key.ip() {
        IpAddr::V4(v4) => v4_mapped(v4.octets()),
        IpAddr::V6(v6) => v6.octets(),
    };
    let mut bytes = [0u8; 18];
    bytes[..16].copy_from_slice(&addr);
    bytes[16..].copy_from_slice(&key.port().to_be_bytes());
    bytes
}

/// FNV-1a over the bytes from a seeded basis, then the murmur3 64-bit finalizer: stable across
/// builds and platforms (unlike std's hasher), and two seeds give independent-looking values.
fn hash(seed: u64, bytes: &[u8]) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325 ^ seed;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn backends(n: u32) -> Vec<(SocketAddr, u32)> {
        (0..n)
            .map(|i| {
                let addr =
                    SocketAddr::from(([10, 244, (i / 250) as u8, (i % 250 + 2) as u8], 8080));
                (addr, 100 + i)
            })
            .collect()
    }

    fn shares(table: &[u32]) -> BTreeMap<u32, usize> {
        let mut counts = BTreeMap::new();
        for &id in table {
            *counts.entry(id).or_insert(0) += 1;
        }
        counts
    }

    #[test]
    fn size_is_the_smallest_listed_size_above_both_floors() {
        assert_eq!(table_size(1021, 0), 1021);
        assert_eq!(table_size(1021, 10), 1021);
        assert_eq!(table_size(1021, 11), 2039);
        assert_eq!(table_size(251, 3), 509);
        assert_eq!(table_size(16381, 1), 16381);
        assert_eq!(table_size(1021, 100_000), 65521);
        assert!(is_valid_size(16381) && !is_valid_size(16384));
    }

    #[test]
    fn every_slot_is_filled_and_shares_are_even() {
        for (size, n) in [(251, 1), (1021, 3), (1021, 10), (16381, 7), (65521, 600)] {
            let table = populate(size, &backends(n));
            assert_eq!(table.len(), size as usize);
            assert!(table.iter().all(|&id| id != 0), "size {size} n {n}");
            let counts = shares(&table);
            assert_eq!(counts.len(), n as usize);
            let even = f64::from(size) / f64::from(n);
            for (&id, &count) in &counts {
                // Maglev fills round-robin: every backend ends within one slot per round of
                // the others; the paper's bound for M ≥ 100 N is about 1 %, allow 2 %.
                let off = (count as f64 - even).abs() / even;
                assert!(
                    off < 0.02,
                    "size {size} n {n} id {id}: {count} vs {even:.1}"
                );
            }
        }
    }

    #[test]
    fn removing_one_backend_moves_little_more_than_its_own_slots() {
        for n in [3u32, 5, 10] {
            let size = table_size(1021, n as usize);
            let all = backends(n);
            let before = populate(size, &all);
            let removed = all[1].1;
            let remaining: Vec<_> = all.iter().copied().filter(|b| b.1 != removed).collect();
            let after = populate(size, &remaining);
            let mut own = 0;
            let mut others = 0;
            for (old, new) in before.iter().zip(&after) {
                if old == new {
                    continue;
                }
                if *old == removed {
                    own += 1;
                } else {
                    others += 1;
                }
            }
            // Every slot of the removed backend moves; of the rest, only a sliver may.
            assert_eq!(own, before.iter().filter(|&&id| id == removed).count());
            assert!(
                (others as f64) < 0.03 * f64::from(size),
                "n {n}: {others} slots of surviving backends moved (size {size})"
            );
        }
    }

    #[test]
    fn adding_a_backend_moves_about_its_share() {
        let size = 1021;
        let before = populate(size, &backends(4));
        let after = populate(size, &backends(5));
        let moved = before.iter().zip(&after).filter(|(a, b)| a != b).count();
        let share = f64::from(size) / 5.0;
        assert!(
            (moved as f64) < share * 1.15,
            "{moved} moved, share {share:.0}"
        );
    }

    #[test]
    fn deterministic_and_independent_of_input_order() {
        let mut input = backends(7);
        let first = populate(2039, &input);
        input.reverse();
        assert_eq!(populate(2039, &input), first);
        input.swap(0, 3);
        input.push(input[2]);
        assert_eq!(populate(2039, &input), first);
        // Pinned values: a change of hash or fill order would silently reshuffle every
        // flow of every service on an upgrade.
        assert_eq!(&first[..6], &PINNED_PREFIX);
    }

    const PINNED_PREFIX: [u32; 6] = [100, 101, 105, 104, 102, 106];

    #[test]
    fn empty_input_gives_an_empty_table() {
        assert!(populate(251, &[]).iter().all(|&id| id == 0));
    }

    #[test]
    fn ipv4_and_ipv6_keys_fill_tables() {
        let v6: Vec<_> = (0..4u16)
            .map(|i| {
                (
                    SocketAddr::new("fd00::10".parse().unwrap(), 80 + i),
                    u32::from(i) + 1,
                )
            })
            .collect();
        let table = populate(509, &v6);
        assert_eq!(shares(&table).len(), 4);
    }
}
