//! [`Publisher`]: a source's snapshots, each made at the cost of the keys that changed.
//!
//! A published snapshot is shared (the watch channel, the model's previous one, the admin
//! endpoint), so the next one cannot be edited in place, and copying every map per change was
//! O(Services): at 10,000 Services the copy, and later dropping the old one, took most of a
//! change's time. Instead the publisher keeps the snapshot it published before the current
//! one (the spare): once consumers have moved on, nobody else holds it, and it becomes the
//! next draft after replaying the keys that changed since (copied from the current one). Only
//! when the spare is still held is the current snapshot copied whole.
//!
//! The keys a draft touched, less those that ended up equal, are the change set: it goes in
//! the new snapshot's [`Lineage`] for consumers ([`Snapshot::changed_since`]).

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
};

use k8s_openapi::api::{
    core::v1::{Node, Service},
    discovery::v1::EndpointSlice,
};

use super::{Keys, Lineage, ObjectKey, Snapshot};

/// Publisher ids: snapshots of two publishers never compare by lineage.
static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// See the module docs.
pub struct Publisher {
    current: Arc<Snapshot>,
    /// A snapshot that differs from `current` in the given keys only (`None`: anywhere).
    spare: Option<(Arc<Snapshot>, Option<Keys>)>,
    draft: Option<Draft>,
    /// Drafts made from the spare, for tests to see that path taken.
    #[cfg(test)]
    reused: usize,
}

/// The next snapshot while a source edits it; [`Publisher::commit`] publishes it.
pub struct Draft {
    snapshot: Snapshot,
    /// Keys edited since the draft was a copy of the current snapshot; `None`: a whole map
    /// was replaced.
    touched: Option<Keys>,
}

/// One map of a [`Draft`]: edits are recorded.
pub struct Tracked<'a, K, V> {
    map: &'a mut BTreeMap<K, Arc<V>>,
    touched: &'a mut Option<Keys>,
    /// This map's set in `touched`.
    keys: fn(&mut Keys) -> &mut BTreeSet<K>,
}

impl Default for Publisher {
    fn default() -> Self {
        Self::new()
    }
}

impl Publisher {
    /// Starts from an empty snapshot (generation 0).
    pub fn new() -> Self {
        let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        Self {
            current: Arc::new(Snapshot {
                lineage: Lineage::first(id),
                ..Snapshot::default()
            }),
            spare: None,
            draft: None,
            #[cfg(test)]
            reused: 0,
        }
    }

    /// The last committed snapshot (the empty generation 0 before the first commit).
    pub fn current(&self) -> &Arc<Snapshot> {
        &self.current
    }

    /// The draft of the next snapshot: the current content, until edited.
    pub fn draft(&mut self) -> &mut Draft {
        if self.draft.is_none() {
            let snapshot = self
                .reuse_spare()
                .unwrap_or_else(|| (*self.current).clone());
            self.draft = Some(Draft {
                snapshot,
                touched: Some(Keys::default()),
            });
        }
        self.draft.as_mut().expect("just set")
    }

    /// The spare brought up to `current`, when nobody else holds it.
    fn reuse_spare(&mut self) -> Option<Snapshot> {
        let (spare, behind) = self.spare.take()?;
        let behind = behind?;
        let mut spare = Arc::try_unwrap(spare).ok()?;
        let current = &*self.current;
        replay(&mut spare.services, &current.services, &behind.services);
        replay(
            &mut spare.endpoint_slices,
            &current.endpoint_slices,
            &behind.endpoint_slices,
        );
        replay(&mut spare.nodes, &current.nodes, &behind.nodes);
        #[cfg(test)]
        {
            self.reused += 1;
        }
        Some(spare)
    }

    /// Publishes the draft when it differs from the current snapshot and returns it; `None`
    /// when there is no draft or it changed nothing.
    pub fn commit(&mut self) -> Option<Arc<Snapshot>> {
        let Draft {
            mut snapshot,
            touched,
        } = self.draft.take()?;
        let current = &*self.current;
        let keys = match touched {
            Some(mut keys) => {
                settle(
                    &mut snapshot.services,
                    &current.services,
                    &mut keys.services,
                );
                settle(
                    &mut snapshot.endpoint_slices,
                    &current.endpoint_slices,
                    &mut keys.endpoint_slices,
                );
                settle(&mut snapshot.nodes, &current.nodes, &mut keys.nodes);
                if keys.is_empty() {
                    self.spare = Some((Arc::new(snapshot), Some(keys)));
                    return None;
                }
                Some(keys)
            }
            // A whole map replaced: compared whole (rare: a relist, a full re-read).
            None if snapshot.same_as(current) => {
                self.spare = Some((Arc::new(snapshot), Some(Keys::default())));
                return None;
            }
            None => None,
        };
        snapshot.lineage = current.lineage.next(keys.clone());
        let previous = std::mem::replace(&mut self.current, Arc::new(snapshot));
        self.spare = Some((previous, keys));
        Some(self.current.clone())
    }

    /// Drops the draft's edits (a rejected input); the current snapshot stays.
    pub fn discard(&mut self) {
        if let Some(Draft { snapshot, touched }) = self.draft.take() {
            self.spare = Some((Arc::new(snapshot), touched));
        }
    }
}

impl Draft {
    pub fn snapshot(&self) -> &Snapshot {
        &self.snapshot
    }

    pub fn services(&mut self) -> Tracked<'_, ObjectKey, Service> {
        Tracked {
            map: &mut self.snapshot.services,
            touched: &mut self.touched,
            keys: |k| &mut k.services,
        }
    }

    pub fn endpoint_slices(&mut self) -> Tracked<'_, ObjectKey, EndpointSlice> {
        Tracked {
            map: &mut self.snapshot.endpoint_slices,
            touched: &mut self.touched,
            keys: |k| &mut k.endpoint_slices,
        }
    }

    pub fn nodes(&mut self) -> Tracked<'_, String, Node> {
        Tracked {
            map: &mut self.snapshot.nodes,
            touched: &mut self.touched,
            keys: |k| &mut k.nodes,
        }
    }

    /// Replaces the whole content (a full re-read).
    pub fn replace(&mut self, snapshot: Snapshot) {
        self.snapshot.services = snapshot.services;
        self.snapshot.endpoint_slices = snapshot.endpoint_slices;
        self.snapshot.nodes = snapshot.nodes;
        self.touched = None;
    }
}

impl<K: Ord + Clone, V> Tracked<'_, K, V> {
    pub fn get(&self, key: &K) -> Option<&Arc<V>> {
        self.map.get(key)
    }

    /// Adds or replaces; returns the object that was there.
    pub fn insert(&mut self, key: K, object: Arc<V>) -> Option<Arc<V>> {
        if let Some(touched) = self.touched.as_mut() {
            (self.keys)(touched).insert(key.clone());
        }
        self.map.insert(key, object)
    }

    pub fn remove(&mut self, key: &K) -> Option<Arc<V>> {
        let removed = self.map.remove(key);
        if removed.is_some()
            && let Some(touched) = self.touched.as_mut()
        {
            (self.keys)(touched).insert(key.clone());
        }
        removed
    }

    /// Replaces the whole map (a relist): the next commit compares the snapshots whole.
    pub fn replace(&mut self, map: BTreeMap<K, Arc<V>>) {
        *self.map = map;
        *self.touched = None;
    }
}

/// `spare[key] = current[key]` for every key in `keys`.
fn replay<K: Ord + Clone, V>(
    spare: &mut BTreeMap<K, Arc<V>>,
    current: &BTreeMap<K, Arc<V>>,
    keys: &BTreeSet<K>,
) {
    for key in keys {
        match current.get(key) {
            Some(object) => {
                spare.insert(key.clone(), Arc::clone(object));
            }
            None => {
                spare.remove(key);
            }
        }
    }
}

/// Keeps in `touched` only the keys whose object differs from `current`'s. An equal object
/// behind a new pointer (a file parsed again) is swapped for the published one: consumers
/// compare pointers first.
fn settle<K: Ord, V: PartialEq>(
    draft: &mut BTreeMap<K, Arc<V>>,
    current: &BTreeMap<K, Arc<V>>,
    touched: &mut BTreeSet<K>,
) {
    touched.retain(|key| match (draft.get_mut(key), current.get(key)) {
        (None, None) => false,
        (Some(new), Some(old)) if Arc::ptr_eq(new, old) => false,
        (Some(new), Some(old)) if new == old => {
            *new = Arc::clone(old);
            false
        }
        _ => true,
    });
}

#[cfg(test)]
mod tests;
