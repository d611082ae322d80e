//! Id allocation for services and backends: monotonic with wrap-around, so a freed id is not
//! handed out again until the whole space has been used. Conntrack entries outlive the
//! services and backends they name; an id reused at once would send a stale flow to another
//! pod, an id reused after a full lap has long been aged out of the LRU.

use std::collections::BTreeSet;

/// Ids in `first..=last`, never 0.
#[derive(Clone, Debug)]
pub struct Ids {
    first: u32,
    last: u32,
    next: u32,
    used: BTreeSet<u32>,
}

impl Ids {
    /// An allocator over `first..=last` (`first` ≥ 1).
    pub fn new(first: u32, last: u32) -> Self {
        let first = first.max(1);
        Self {
            first,
            last: last.max(first),
            next: first,
            used: BTreeSet::new(),
        }
    }

    /// Marks `id` as taken (read back from a pinned map) and continues after the highest
    /// id seen, so ids freed before a restart are not reused right after it either.
    pub fn recover(&mut self, id: u32) {
        if id < self.first || id > self.last {
            return;
        }
        self.used.insert(id);
        if let Some(&max) = self.used.last() {
            self.next = if max >= self.last {
                self.first
            } else {
                max + 1
            };
        }
    }

    /// Marks `id` as taken without moving the allocation point (a map re-read while
    /// running: ids freed since must still not come back soon).
    pub fn mark(&mut self, id: u32) {
        if (self.first..=self.last).contains(&id) {
            self.used.insert(id);
        }
    }

    /// The next free id after the last one handed out, or `None` when every id is taken.
    pub fn allocate(&mut self) -> Option<u32> {
        let span = u64::from(self.last - self.first) + 1;
        if self.used.len() as u64 >= span {
            return None;
        }
        let mut id = self.next;
        while self.used.contains(&id) {
            id = if id >= self.last { self.first } else { id + 1 };
        }
        self.used.insert(id);
        self.next = if id >= self.last { self.first } else { id + 1 };
        Some(id)
    }

    pub fn free(&mut self, id: u32) {
        self.used.remove(&id);
    }

    /// Keeps only the ids in `keep` marked as taken (the ones the maps actually hold).
    pub fn retain(&mut self, keep: &BTreeSet<u32>) {
        self.used.retain(|id| keep.contains(id));
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
}
