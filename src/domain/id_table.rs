//! A set of 128-bit event-id fingerprints in one flat array: the large form of an
//! account's deduplication state.
//!
//! Open addressing with linear probing over a power-of-two array of `u128` slots, at most
//! three quarters full. A lookup reads the slots themselves, so it touches one cache line
//! (rarely two); a general hash table keeps its control bytes apart from its entries and
//! touches two. For the hot accounts whose sets no longer fit in any cache, that is one
//! memory miss per event instead of two.
//!
//! Fingerprints are uniformly spread (xxh3), so their low bits choose the slot. The
//! fingerprint 0 marks an empty slot; the one id whose fingerprint is 0 is kept aside.
//! Removal shifts the following run back (no tombstones), so probes stay short however
//! often ids go in and out.

/// A set of fingerprints (see the module's documentation).
#[derive(Clone, Debug)]
pub struct IdTable {
    /// A power of two many slots; 0 is an empty slot.
    slots: Box<[u128]>,
    /// Non-zero ids in `slots`.
    len: usize,
    /// Whether the id 0 is in the set.
    zero: bool,
}

impl Default for IdTable {
    fn default() -> Self {
        IdTable::with_capacity(0)
    }
}

impl IdTable {
    const MIN_SLOTS: usize = 8;

    /// A table that holds `n` ids without growing.
    pub fn with_capacity(n: usize) -> Self {
        IdTable {
            slots: vec![0u128; Self::slots_for(n)].into_boxed_slice(),
            len: 0,
            zero: false,
        }
    }

    /// The slots `n` ids need: at most three quarters of them in use.
    fn slots_for(n: usize) -> usize {
        (4 * n).div_ceil(3).next_power_of_two().max(Self::MIN_SLOTS)
    }

    fn home(&self, id: u128) -> usize {
        id as u64 as usize & (self.slots.len() - 1)
    }

    /// Where `id` is, or the empty slot that ends its probe.
    fn probe(&self, id: u128) -> (usize, bool) {
        let mask = self.slots.len() - 1;
        let mut i = self.home(id);
        // Never full (at most three quarters), so an empty slot ends every probe.
        loop {
            match self.slots[i] {
                0 => return (i, false),
                x if x == id => return (i, true),
                _ => i = (i + 1) & mask,
            }
        }
    }

    pub fn contains(&self, id: u128) -> bool {
        if id == 0 {
            return self.zero;
        }
        self.probe(id).1
    }

    /// Adds `id`; `false` if it was there already.
    pub fn insert(&mut self, id: u128) -> bool {
        if id == 0 {
            return !std::mem::replace(&mut self.zero, true);
        }
        let (i, found) = self.probe(id);
        if found {
            return false;
        }
        if 4 * (self.len + 1) > 3 * self.slots.len() {
            self.grow();
            let (i, _) = self.probe(id);
            self.slots[i] = id;
        } else {
            self.slots[i] = id;
        }
        self.len += 1;
        true
    }

    /// Takes `id` out; `false` if it was not there.
    pub fn remove(&mut self, id: u128) -> bool {
        if id == 0 {
            return std::mem::replace(&mut self.zero, false);
        }
        let (mut hole, found) = self.probe(id);
        if !found {
            return false;
        }
        // Backward shift: move each later member of the run whose home does not lie
        // cyclically in (hole, j] into the hole, so every probe still reaches its id.
        let mask = self.slots.len() - 1;
        let mut j = hole;
        loop {
            j = (j + 1) & mask;
            let x = self.slots[j];
            if x == 0 {
                break;
            }
            let home = self.home(x);
            let stays = if hole <= j {
                hole < home && home <= j
            } else {
                hole < home || home <= j
            };
            if !stays {
                self.slots[hole] = x;
                hole = j;
            }
        }
        self.slots[hole] = 0;
        self.len -= 1;
        true
    }

    fn grow(&mut self) {
        let doubled = vec![0u128; 2 * self.slots.len()].into_boxed_slice();
        let old = std::mem::replace(&mut self.slots, doubled);
        for id in old.iter().copied().filter(|&x| x != 0) {
            let (i, _) = self.probe(id);
            self.slots[i] = id;
        }
    }

    pub fn len(&self) -> usize {
        self.len + usize::from(self.zero)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every id, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = u128> + '_ {
        self.zero
            .then_some(0)
            .into_iter()
            .chain(self.slots.iter().copied().filter(|&x| x != 0))
    }
}

impl FromIterator<u128> for IdTable {
    fn from_iter<I: IntoIterator<Item = u128>>(iter: I) -> Self {
        let iter = iter.into_iter();
        let mut table = IdTable::with_capacity(iter.size_hint().0);
        for id in iter {
            table.insert(id);
        }
        table
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashSet;

    #[test]
    fn zero_is_an_id_like_any_other() {
        let mut t = IdTable::default();
        assert!(!t.contains(0));
        assert!(t.insert(0));
        assert!(!t.insert(0));
        assert!(t.contains(0));
        assert_eq!(t.len(), 1);
        assert_eq!(t.iter().collect::<Vec<_>>(), vec![0]);
        assert!(t.remove(0));
        assert!(!t.remove(0));
        assert!(t.is_empty());
    }

    #[test]
    fn grows_at_three_quarters() {
        // 8 slots hold 6 ids (6 / 8 = 3/4); the 7th doubles them.
        let mut t = IdTable::default();
        for id in 1..=6u128 {
            t.insert(id);
        }
        assert_eq!(t.slots.len(), 8);
        t.insert(7);
        assert_eq!(t.slots.len(), 16);
        assert_eq!(IdTable::with_capacity(6).slots.len(), 8);
        assert_eq!(IdTable::with_capacity(7).slots.len(), 16);
    }

    #[test]
    fn removing_from_a_run_that_wraps_keeps_every_other_id_reachable() {
        // Ids whose low bits are all 7 share home slot 7 of 8: a run 7, 0, 1, 2 that
        // wraps around the end. Taking out the first shifts the rest back.
        let mut t = IdTable::with_capacity(4);
        let ids: Vec<u128> = (1..=4u128).map(|k| (k << 64) | 7).collect();
        for &id in &ids {
            t.insert(id);
        }
        assert!(t.remove(ids[0]));
        for &id in &ids[1..] {
            assert!(t.contains(id), "{id:x}");
        }
        assert!(!t.contains(ids[0]));
        assert!(t.remove(ids[2]));
        assert!(t.contains(ids[1]) && t.contains(ids[3]));
        assert_eq!(t.len(), 2);
    }

    proptest! {
        /// Through any inserts and removals (ids drawn from a small range so that they
        /// collide and repeat, some of them 0), the table answers as a plain set does.
        #[test]
        fn agrees_with_a_plain_set(ops in prop::collection::vec((any::<bool>(), 0u128..64, 0u8..4), 0..400)) {
            let mut t = IdTable::default();
            let mut model = HashSet::new();
            for (insert, low, high) in ops {
                // Few distinct home slots: long runs, wrap-arounds, shifts.
                let id = (u128::from(high) << 64) | (low % 16);
                if insert {
                    prop_assert_eq!(t.insert(id), model.insert(id));
                } else {
                    prop_assert_eq!(t.remove(id), model.remove(&id));
                }
                prop_assert_eq!(t.len(), model.len());
            }
            for id in 0..16u128 {
                for high in 0..4u128 {
                    let id = (high << 64) | id;
                    prop_assert_eq!(t.contains(id), model.contains(&id));
                }
            }
            let mut all: Vec<u128> = t.iter().collect();
            all.sort_unstable();
            let mut expected: Vec<u128> = model.into_iter().collect();
            expected.sort_unstable();
            prop_assert_eq!(all, expected);
        }
    }
}
