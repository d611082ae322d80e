//! FNV-1a, 64 bit: the fixed byte hash behind the L2 owner election, and a fast hasher for
//! the model's short-lived lookup tables (keys are names from our own snapshot, so HashDoS
//! resistance buys nothing there).

use std::hash::{BuildHasherDefault, Hasher};

const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const PRIME: u64 = 0x0000_0100_0000_01b3;

#[derive(Clone, Copy, Debug)]
pub(super) struct Fnv1a(u64);

impl Default for Fnv1a {
    fn default() -> Self {
        Self(OFFSET)
    }
}

impl Hasher for Fnv1a {
    fn write(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            self.0 ^= u64::from(byte);
            self.0 = self.0.wrapping_mul(PRIME);
        }
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

pub(super) type FnvBuildHasher = BuildHasherDefault<Fnv1a>;
pub(super) type FnvHashMap<K, V> = std::collections::HashMap<K, V, FnvBuildHasher>;
