//! Id allocation for services and backends: monotonic with wrap-around, so a freed id is not
//! handed out again until the whole space has been used. Conntrack entries outlive the
//! services and backends they name; an id reused at once would send a stale flow to another
//! pod, an id reused after a full lap has long been aged out of the LRU.
//!
//! A restarted agent does not know where the last one stopped. It continues after the
//! highest id the pinned maps name: the services and backends, and also the flow maps
//! (conntrack, affinity, fragments, [`Referenced`]), which keep naming ids whose entries were
//! removed shortly before the restart. Reading those maps back costs one walk at start
//! (about 0.3 s for each full 262,144-entry conntrack map) but needs no map of its own: a
//! persisted high-water mark would be a contract change, written on the apply path, and
//! missing after an upgrade from an agent that never wrote it; a kernel check that a flow's
//! backend still belongs to its service would need that membership in a map per packet.

use std::collections::BTreeSet;

/// The highest ids the flow maps (conntrack, affinity, fragments) name, 0 for none: flows
/// and clients may still be pinned to them though their services and backends are gone.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Referenced {
    pub service: u32,
    pub backend: u32,
}

impl Referenced {
    /// Takes the ids of one flow-map entry into account.
    pub fn note(&mut self, service: u32, backend: u32) {
        self.service = self.service.max(service);
        self.backend = self.backend.max(backend);
    }
}

/// Ids in `first..=last`, never 0.
#[derive(Clone, Debug)]
pub struct Ids {
    first: u32,
    last: u32,
    next: u32,
    /// The highest id recovery has seen (0: none), which allocation continues after.
    recovered: u32,
    used: BTreeSet<u32>,
    /// Ids in use must differ modulo this power of two (0: no such rule), and the slots
    /// (`id % slots`) they take. A map indexed that way holds one id per slot.
    slots: u32,
    slots_used: BTreeSet<u32>,
}

impl Ids {
    /// An allocator over `first..=last` (`first` ≥ 1).
    pub fn new(first: u32, last: u32) -> Self {
        let first = first.max(1);
        Self {
            first,
            last: last.max(first),
            next: first,
            recovered: 0,
            used: BTreeSet::new(),
            slots: 0,
            slots_used: BTreeSet::new(),
        }
    }

    /// The same allocator with at most one id in use per slot `id % slots` (`slots` a power
    /// of two; `vipwire_backends_v2` is an array indexed that way).
    pub fn with_slots(mut self, slots: u32) -> Self {
        debug_assert!(slots.is_power_of_two());
        self.slots = slots;
        self
    }

    fn slot(&self, id: u32) -> Option<u32> {
        (self.slots != 0).then(|| id & (self.slots - 1))
    }

    fn take(&mut self, id: u32) {
        self.used.insert(id);
        if let Some(slot) = self.slot(id) {
            self.slots_used.insert(slot);
        }
    }

    /// Whether `id` is free and so is its slot.
    fn available(&self, id: u32) -> bool {
        !self.used.contains(&id) && self.slot(id).is_none_or(|s| !self.slots_used.contains(&s))
    }

    /// Marks `id` as taken (read back from a pinned map) and continues after the highest
    /// id seen, so ids freed before a restart are not reused right after it either.
    pub fn recover(&mut self, id: u32) {
        if self.contains(id) {
            self.take(id);
            self.continue_after(id);
        }
    }

    /// Continues after `id` if it is the highest seen, without marking it taken: an id a
    /// flow map still names though its entry is gone (it is free, but not soon again).
    pub fn recover_referenced(&mut self, id: u32) {
        if self.contains(id) {
            self.continue_after(id);
        }
    }

    fn contains(&self, id: u32) -> bool {
        (self.first..=self.last).contains(&id)
    }

    fn continue_after(&mut self, id: u32) {
        if id > self.recovered {
            self.recovered = id;
            self.next = if id >= self.last { self.first } else { id + 1 };
        }
    }

    /// Marks `id` as taken without moving the allocation point (a map re-read while
    /// running: ids freed since must still not come back soon).
    pub fn mark(&mut self, id: u32) {
        if self.contains(id) {
            self.take(id);
        }
    }

    /// The next free id after the last one handed out, or `None` when every id is taken.
    pub fn allocate(&mut self) -> Option<u32> {
        let mut room = u64::from(self.last - self.first) + 1;
        if self.slots != 0 {
            room = room.min(u64::from(self.slots));
        }
        if self.used.len() as u64 >= room {
            return None;
        }
        let mut id = self.next;
        while !self.available(id) {
            id = if id >= self.last { self.first } else { id + 1 };
        }
        self.take(id);
        self.next = if id >= self.last { self.first } else { id + 1 };
        Some(id)
    }

    pub fn free(&mut self, id: u32) {
        if self.used.remove(&id)
            && let Some(slot) = self.slot(id)
        {
            self.slots_used.remove(&slot);
        }
    }

    /// Keeps only the ids in `keep` marked as taken (the ones the maps actually hold).
    pub fn retain(&mut self, keep: &BTreeSet<u32>) {
        self.used.retain(|id| keep.contains(id));
        let slots: BTreeSet<u32> = self.used.iter().filter_map(|&id| self.slot(id)).collect();
        self.slots_used = slots;
    }

    pub fn in_use(&self) -> usize {
        self.used.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn freed_ids_come_back_only_after_a_full_lap() {
        let mut ids = Ids::new(1, 4);
        assert_eq!(ids.allocate(), Some(1));
        assert_eq!(ids.allocate(), Some(2));
        ids.free(1);
        assert_eq!(ids.allocate(), Some(3));
        assert_eq!(ids.allocate(), Some(4));
        assert_eq!(ids.allocate(), Some(1));
        assert_eq!(ids.allocate(), None);
        ids.free(3);
        assert_eq!(ids.allocate(), Some(3));
        assert_eq!(ids.in_use(), 4);
    }

    #[test]
    fn recovery_continues_after_the_highest_id() {
        let mut ids = Ids::new(1, 100);
        ids.recover(7);
        ids.recover(3);
        ids.recover(0);
        ids.recover(1000);
        assert_eq!(ids.allocate(), Some(8));
        let mut full = Ids::new(1, 3);
        full.recover(3);
        assert_eq!(full.allocate(), Some(1));
    }

    #[test]
    fn recovery_continues_after_ids_only_flows_still_name() {
        let mut ids = Ids::new(1, 100);
        ids.recover(2);
        ids.recover_referenced(5);
        ids.recover_referenced(4);
        ids.recover_referenced(0);
        ids.recover_referenced(1000);
        ids.recover(3);
        assert_eq!(ids.allocate(), Some(6));
        assert_eq!(ids.in_use(), 3, "5 is not taken, only passed");
        let mut wrapped = Ids::new(1, 3);
        wrapped.recover(1);
        wrapped.recover_referenced(3);
        assert_eq!(wrapped.allocate(), Some(2), "wraps, skipping the taken 1");
    }

    #[test]
    fn with_slots_no_two_ids_in_use_share_a_slot() {
        let mut ids = Ids::new(1, 100).with_slots(4);
        assert_eq!(ids.allocate(), Some(1));
        assert_eq!(ids.allocate(), Some(2));
        assert_eq!(ids.allocate(), Some(3));
        assert_eq!(ids.allocate(), Some(4), "slot 0");
        assert_eq!(ids.allocate(), None, "every slot taken");
        ids.free(2);
        assert_eq!(ids.allocate(), Some(6), "5 is free, its slot (1's) is not");
        ids.free(6);
        ids.free(1);
        let mut recovered = Ids::new(1, 100).with_slots(4);
        recovered.recover(9);
        assert_eq!(recovered.allocate(), Some(10));
        assert_eq!(recovered.allocate(), Some(11));
        assert_eq!(recovered.allocate(), Some(12));
        assert_eq!(recovered.allocate(), None, "9 holds slot 1");
        recovered.retain(&BTreeSet::from([10, 11, 12]));
        assert_eq!(recovered.allocate(), Some(13), "slot 1 free again");
    }
}
