//! Small sorted sets as `Vec`s without spare room. The model keeps one per Service (its
//! EndpointSlices) and one per VIP (the Services claiming it), and nearly all of them hold a
//! single element: a `BTreeSet` allocates a node with room for eleven (a 720-byte node per VIP
//! for the claimants), and a `Vec` grown by `push` room for four.

/// Adds `value` unless present.
pub(super) fn insert<T: Ord>(set: &mut Vec<T>, value: T) {
    if let Err(at) = set.binary_search(&value) {
        set.reserve_exact(1);
        set.insert(at, value);
    }
}

/// Removes `value` if present.
pub(super) fn remove<T: Ord>(set: &mut Vec<T>, value: &T) {
    if let Ok(at) = set.binary_search(value) {
        set.remove(at);
        set.shrink_to_fit();
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn stays_sorted_unique_and_exactly_sized() {
        let mut set = Vec::new();
        for value in [5, 1, 3, 1, 5, 4] {
            super::insert(&mut set, value);
            assert_eq!(set.capacity(), set.len());
        }
        assert_eq!(set, [1, 3, 4, 5]);
        super::remove(&mut set, &3);
        super::remove(&mut set, &7);
        assert_eq!(set, [1, 4, 5]);
        assert_eq!(set.capacity(), 3);
    }
}
