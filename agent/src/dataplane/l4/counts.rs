//! The writer's reference counts, over the frontends it has written: per backend (kept by id,
//! counted by key), how many list it and how many list it active (the entry lives while one
//! lists it, and is active while one lists it active); per VIP filter bit, how many have a VIP
//! with that bit. A plan computes the new counts of the keys and bits it touches from the
//! frontends it replans ([`Counts::touch`]); they become the writer's once the plan has been
//! executed.

use std::{
    collections::{BTreeMap, HashMap},
    net::SocketAddr,
};

use vipwire_common::l4::vip_filter_bit;

use super::mirror::addr16;
use crate::model::{BackendState, DesiredService, Frontend, Services};

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) struct Refs {
    pub listed: u32,
    pub active: u32,
}

impl Refs {
    fn add(&mut self, active: bool, up: bool) {
        let active = u32::from(active);
        if up {
            self.listed += 1;
            self.active += active;
        } else {
            // Counts are taken back from the frontends that gave them: never below zero
            // (checked in debug builds, where the randomized planner test would catch drift).
            debug_assert!(self.listed > 0 && self.active >= active, "count drift");
            self.listed = self.listed.saturating_sub(1);
            self.active = self.active.saturating_sub(active);
        }
    }
}

/// New counts of what a plan touches (zero: no longer counted).
#[derive(Clone, Debug, Default)]
pub(super) struct Touched {
    /// Every key and bit is here: these replace the counts instead of updating them.
    pub full: bool,
    /// Sorted by key, one entry per key. A `Vec`, not a map: a full plan counts every backend
    /// (100,000 at 10,000 Services), and a `BTreeMap` filled in order is half empty.
    pub refs: Vec<(SocketAddr, Refs)>,
    pub bits: BTreeMap<u32, u32>,
}

impl Touched {
    pub fn refs_of(&self, key: &SocketAddr) -> Option<&Refs> {
        let at = self.refs.binary_search_by(|(k, _)| k.cmp(key)).ok()?;
        Some(&self.refs[at].1)
    }

    /// The same counts by backend id (`ids`: the planner's ids by key, every listed key
    /// having one once planned). A key without an id was never written: nothing counts it.
    pub fn by_id(self, ids: &HashMap<SocketAddr, u32>) -> TouchedIds {
        let mut refs = Vec::with_capacity(self.refs.len());
        refs.extend(
            self.refs
                .iter()
                .filter_map(|(key, count)| Some((*ids.get(key)?, *count))),
        );
        TouchedIds {
            full: self.full,
            refs,
            bits: self.bits,
        }
    }
}

/// [`Touched`] by backend id: what [`Counts::commit`] takes.
#[derive(Clone, Debug, Default)]
pub(super) struct TouchedIds {
    pub full: bool,
    refs: Vec<(u32, Refs)>,
    bits: BTreeMap<u32, u32>,
}

/// Kept by backend id, not key: the planner maps keys to ids anyway, and a `u32` key makes
/// this table a third of the size (5.2 MiB to 1.7 MiB at 100,000 backends).
#[derive(Debug, Default)]
pub(super) struct Counts {
    refs: HashMap<u32, Refs>,
    bits: HashMap<u32, u32>,
}

impl Counts {
    /// The counts of `desired`, from nothing: every listing collected at once (sized exactly),
    /// then sorted and summed per key.
    pub fn of(desired: &Services) -> Touched {
        let listings = desired.values().map(|s| s.backends.len()).sum();
        let mut refs = Vec::with_capacity(listings);
        let mut bits = BTreeMap::new();
        for (frontend, service) in desired {
            for (key, active) in keys(service) {
                let mut count = Refs::default();
                count.add(active, true);
                refs.push((key, count));
            }
            *bits.entry(filter_bit(frontend)).or_default() += 1;
        }
        refs.sort_unstable_by_key(|&(key, _)| key);
        // `later` goes, summed into `kept` (the previous entry with the same key).
        refs.dedup_by(|later, kept| {
            let same = later.0 == kept.0;
            if same {
                kept.1.listed += later.1.listed;
                kept.1.active += later.1.active;
            }
            same
        });
        refs.shrink_to_fit();
        Touched {
            full: true,
            refs,
            bits,
        }
    }

    /// Starts the new counts of what a plan touches: it takes back the contributions of the
    /// frontends it replans and adds their new ones ([`Touching::count`]). `ids`: the
    /// planner's backend ids by key, as of the last commit.
    pub fn touch<'a>(&'a self, ids: &'a HashMap<SocketAddr, u32>) -> Touching<'a> {
        Touching {
            base: Some((self, ids)),
            refs: BTreeMap::new(),
            bits: BTreeMap::new(),
        }
    }

    pub fn commit(&mut self, touched: TouchedIds) {
        if touched.full {
            // Sized once: growing by doubling would hold two tables at once, several times.
            self.refs = HashMap::with_capacity(touched.refs.len());
            self.bits = HashMap::with_capacity(touched.bits.len());
        }
        for (id, refs) in touched.refs {
            if refs.listed == 0 {
                self.refs.remove(&id);
            } else {
                self.refs.insert(id, refs);
            }
        }
        for (bit, n) in touched.bits {
            if n == 0 {
                self.bits.remove(&bit);
            } else {
                self.bits.insert(bit, n);
            }
        }
    }
}

/// The backend keys of a desired frontend, each with whether it is listed active.
pub(super) fn keys(service: &DesiredService) -> impl Iterator<Item = (SocketAddr, bool)> + '_ {
    service.backends.iter().map(|b| {
        (
            SocketAddr::new(b.addr, b.port),
            b.state == BackendState::Active,
        )
    })
}

pub(super) struct Touching<'a> {
    base: Option<(&'a Counts, &'a HashMap<SocketAddr, u32>)>,
    /// What [`Touched::refs`] becomes (few keys: a plan of what changed).
    refs: BTreeMap<SocketAddr, Refs>,
    bits: BTreeMap<u32, u32>,
}

impl Touching<'_> {
    /// Adds (`up`) or takes back one frontend's contribution: its backend keys, each with
    /// whether it lists the key active ([`keys`]), and its VIP's filter bit.
    pub fn count(
        &mut self,
        frontend: &Frontend,
        backends: impl IntoIterator<Item = (SocketAddr, bool)>,
        up: bool,
    ) {
        let base = self.base;
        for (key, active) in backends {
            self.refs
                .entry(key)
                .or_insert_with(|| {
                    base.and_then(|(counts, ids)| counts.refs.get(ids.get(&key)?).copied())
                        .unwrap_or_default()
                })
                .add(active, up);
        }
        let bit = filter_bit(frontend);
        let n = self.bits.entry(bit).or_insert_with(|| {
            base.and_then(|(counts, _)| counts.bits.get(&bit).copied())
                .unwrap_or_default()
        });
        *n = if up { *n + 1 } else { n.saturating_sub(1) };
    }

    pub fn done(self) -> Touched {
        Touched {
            full: false,
            refs: self.refs.into_iter().collect(),
            bits: self.bits,
        }
    }
}

pub(super) fn filter_bit(frontend: &Frontend) -> u32 {
    vip_filter_bit(&addr16(frontend.vip))
}
