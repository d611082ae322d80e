//! [`Lineage`]: what changed between the snapshots of one [`Publisher`](super::Publisher), so a
//! consumer holding an earlier one visits only the keys that changed since, not every object
//! (at 10,000 Services a merge walk of two snapshots was a large part of one change's cost).

use std::{collections::BTreeSet, sync::Arc};

use super::{ObjectKey, Snapshot};

/// A chain longer than this is cut: a consumer that far behind walks both snapshots instead.
const MAX_DEPTH: usize = 32;
/// Change sets with more keys than this are not kept (a relist, a first load): walking both
/// snapshots in order is then cheaper than looking keys up one by one.
const MAX_KEYS: usize = 1024;

/// Where a snapshot comes from. Not part of its content: [`Snapshot`]'s equality ignores it,
/// and a clone starts without one (a copy may be edited, so its history is unknown).
#[derive(Debug, Default)]
pub struct Lineage {
    /// 0: not published by a [`Publisher`](super::Publisher); nothing is known.
    publisher: u64,
    generation: u64,
    /// The changes that led to this generation, newest first; `None`: unknown.
    changes: Option<Arc<Changes>>,
}

#[derive(Debug)]
struct Changes {
    from: u64,
    to: u64,
    keys: Keys,
    /// The changes that led to `from`, if still known.
    earlier: Option<Arc<Changes>>,
    /// Links in this chain, this one included.
    depth: usize,
    /// Keys in this chain, counted with repeats.
    total: usize,
}

/// Keys whose objects may differ between two snapshots.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Keys {
    pub services: BTreeSet<ObjectKey>,
    pub endpoint_slices: BTreeSet<ObjectKey>,
    pub nodes: BTreeSet<String>,
}

impl Keys {
    pub fn len(&self) -> usize {
        self.services.len() + self.endpoint_slices.len() + self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn extend(&mut self, other: &Self) {
        self.services.extend(other.services.iter().cloned());
        self.endpoint_slices
            .extend(other.endpoint_slices.iter().cloned());
        self.nodes.extend(other.nodes.iter().cloned());
    }
}

impl Lineage {
    /// The first snapshot of `publisher`: generation 0, no history.
    pub(super) fn first(publisher: u64) -> Self {
        Self {
            publisher,
            generation: 0,
            changes: None,
        }
    }

    /// The generation after `self`, reached by changing `keys` (`None`: unknown, or too many
    /// to be worth keeping).
    pub(super) fn next(&self, keys: Option<Keys>) -> Self {
        let generation = self.generation + 1;
        let changes = keys.filter(|k| k.len() <= MAX_KEYS).map(|keys| {
            let earlier = self
                .changes
                .clone()
                .filter(|c| c.depth < MAX_DEPTH && c.total + keys.len() <= MAX_KEYS);
            Arc::new(Changes {
                from: self.generation,
                to: generation,
                depth: 1 + earlier.as_ref().map_or(0, |c| c.depth),
                total: keys.len() + earlier.as_ref().map_or(0, |c| c.total),
                keys,
                earlier,
            })
        });
        Self {
            publisher: self.publisher,
            generation,
            changes,
        }
    }
}

impl Snapshot {
    /// The keys whose objects may differ between `earlier` and `self` (a superset of those
    /// that do), when both come from one publisher and the changes in between are still
    /// known; `None` otherwise (compare the snapshots whole).
    pub fn changed_since(&self, earlier: &Snapshot) -> Option<Keys> {
        let (now, then) = (&self.lineage, &earlier.lineage);
        if now.publisher == 0 || now.publisher != then.publisher {
            return None;
        }
        let mut keys = Keys::default();
        let mut generation = now.generation;
        let mut link = now.changes.as_deref();
        while generation != then.generation {
            let changes = link.filter(|c| c.to == generation)?;
            keys.extend(&changes.keys);
            generation = changes.from;
            link = changes.earlier.as_deref();
        }
        Some(keys)
    }
}
