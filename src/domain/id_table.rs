//! Event-id fingerprints as an account keeps them ([`Fp96`], 12 bytes), and a set of
//! them in one flat array ([`IdTable`]): the large form of an account's deduplication
//! state.
//!
//! Open addressing with linear probing over a power-of-two array of 12-byte slots, at
//! most three quarters full. A lookup reads the slots themselves, so it touches one cache
//! line (sometimes two); a general hash table keeps its control bytes apart from its
//! entries and touches two. For the hot accounts whose sets no longer fit in any cache,
//! that is one memory miss per event instead of two.
//!
//! Fingerprints are uniformly spread (xxh3), so their low bits choose the slot. The
//! fingerprint 0 marks an empty slot; the one id whose fingerprint is 0 is kept aside.
//! Removal shifts the following run back (no tombstones), so probes stay short however
//! often ids go in and out.

/// An event id's fingerprint as it is kept: the low 96 bits of its 128-bit xxh3, in
/// 12 bytes (three 32-bit words, so an array of them has no padding).
///
/// Ids are stored by the billions (every event of a period is remembered), so their
/// width is most of the memory an account's usage takes. 96 bits keep deduplication
/// exact in practice: two distinct ids of one account are taken for one with
/// probability n²/2⁹⁷ for an account of n events in a period — about 10⁻¹⁵ for an
/// account of ten million events, and less than 10⁻¹⁰ summed over every account of a
/// 21M-account month of 75 billion events. 64 bits would make that 10⁻⁵ a month.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Fp96([u32; 3]);

impl Fp96 {
    /// The bits of a fingerprint that count: two fingerprints equal in them are one id.
    pub const MASK: u128 = (1 << 96) - 1;

    /// The fingerprint kept for the 128-bit `id` (its top 32 bits are dropped).
    #[inline]
    pub fn new(id: u128) -> Fp96 {
        Fp96([id as u32, (id >> 32) as u32, (id >> 64) as u32])
    }

    /// The fingerprint as a number below 2⁹⁶.
    #[inline]
    pub fn get(self) -> u128 {
        u128::from(self.0[0]) | (u128::from(self.0[1]) << 32) | (u128::from(self.0[2]) << 64)
    }

    /// The low 64 bits: where a table's probe starts.
    #[inline]
    fn low(self) -> u64 {
        u64::from(self.0[0]) | (u64::from(self.0[1]) << 32)
    }

    fn is_zero(self) -> bool {
        self == Fp96::default()
    }
}

impl Ord for Fp96 {
    fn cmp(&self, other: &Fp96) -> std::cmp::Ordering {
        self.get().cmp(&other.get())
    }
}

impl PartialOrd for Fp96 {
    fn partial_cmp(&self, other: &Fp96) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

/// A set of fingerprints (see the module's documentation).
///
/// One allocation, reached through one (fat) pointer that an account's usage holds
/// inline: its first element is a header (the count, and whether the id 0 is in), the
/// rest a power of two many slots. So a lookup's two reads, header and slot, both
/// start from the pointer and go out together, not one after the other.
#[derive(Clone, Debug)]
pub struct IdTable {
    /// `[header, slot…]`; an empty slot is 0. The header's low 64 bits count the
    /// non-zero ids; its top word is 1 when the id 0 is in the set.
    slots: Box<[Fp96]>,
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
            slots: vec![Fp96::default(); 1 + Self::slots_for(n)].into_boxed_slice(),
        }
    }

    /// The slots `n` ids need: at most three quarters of them in use.
    fn slots_for(n: usize) -> usize {
        (4 * n).div_ceil(3).next_power_of_two().max(Self::MIN_SLOTS)
    }

    /// Non-zero ids in the slots.
    fn count(&self) -> usize {
        self.slots[0].low() as usize
    }

    fn set_count(&mut self, count: usize) {
        let zero = self.slots[0].0[2];
        self.slots[0] = Fp96::new(count as u128);
        self.slots[0].0[2] = zero;
    }

    fn has_zero(&self) -> bool {
        self.slots[0].0[2] != 0
    }

    fn set_zero(&mut self, zero: bool) {
        self.slots[0].0[2] = u32::from(zero);
    }

    /// The number of slots (a power of two).
    fn capacity(&self) -> usize {
        self.slots.len() - 1
    }

    /// The slot where `id`'s probe starts (slots are numbered from 1).
    fn home(&self, id: Fp96) -> usize {
        1 + (id.low() as usize & (self.capacity() - 1))
    }

    fn next(&self, slot: usize) -> usize {
        1 + (slot & (self.capacity() - 1))
    }

    /// Where `id` is, or the empty slot that ends its probe.
    fn probe(&self, id: Fp96) -> (usize, bool) {
        let mut i = self.home(id);
        // Never full (at most three quarters), so an empty slot ends every probe.
        loop {
            match self.slots[i] {
                x if x == id => return (i, true),
                x if x.is_zero() => return (i, false),
                _ => i = self.next(i),
            }
        }
    }

    /// Starts fetching the lines a lookup of `id` reads: the header and its home slot.
    pub fn prefetch(&self, id: u128) {
        super::prefetch(self.slots.as_ptr());
        super::prefetch(self.slots.as_ptr().wrapping_add(self.home(Fp96::new(id))));
    }

    /// Whether `id` (its [`Fp96`]) is in.
    pub fn contains(&self, id: u128) -> bool {
        let id = Fp96::new(id);
        if id.is_zero() {
            return self.has_zero();
        }
        self.probe(id).1
    }

    /// Adds `id`; `false` if it was there already.
    pub fn insert(&mut self, id: u128) -> bool {
        let id = Fp96::new(id);
        if id.is_zero() {
            let added = !self.has_zero();
            self.set_zero(true);
            return added;
        }
        let (mut i, found) = self.probe(id);
        if found {
            return false;
        }
        if 4 * (self.count() + 1) > 3 * self.capacity() {
            self.grow();
            i = self.probe(id).0;
        }
        self.slots[i] = id;
        self.set_count(self.count() + 1);
        true
    }

    /// Takes `id` out; `false` if it was not there.
    pub fn remove(&mut self, id: u128) -> bool {
        let id = Fp96::new(id);
        if id.is_zero() {
            let had = self.has_zero();
            self.set_zero(false);
            return had;
        }
        let (mut hole, found) = self.probe(id);
        if !found {
            return false;
        }
        // Backward shift: move each later member of the run whose home does not lie
        // cyclically in (hole, j] into the hole, so every probe still reaches its id.
        let mut j = hole;
        loop {
            j = self.next(j);
            let x = self.slots[j];
            if x.is_zero() {
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
        self.slots[hole] = Fp96::default();
        self.set_count(self.count() - 1);
        true
    }

    fn grow(&mut self) {
        let mut doubled = vec![Fp96::default(); 1 + 2 * self.capacity()].into_boxed_slice();
        doubled[0] = self.slots[0];
        let old = std::mem::replace(&mut self.slots, doubled);
        for id in old[1..].iter().copied().filter(|x| !x.is_zero()) {
            let (i, _) = self.probe(id);
            self.slots[i] = id;
        }
    }

    pub fn len(&self) -> usize {
        self.count() + usize::from(self.has_zero())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every id (as its [`Fp96`]), in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = u128> + '_ {
        self.has_zero()
            .then_some(0)
            .into_iter()
            .chain(self.slots[1..].iter().filter(|x| !x.is_zero()).map(|x| x.get()))
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
        assert_eq!(t.capacity(), 8);
        t.insert(7);
        assert_eq!(t.capacity(), 16);
        assert_eq!(IdTable::with_capacity(6).capacity(), 8);
        assert_eq!(IdTable::with_capacity(7).capacity(), 16);
    }

    #[test]
    fn removing_from_a_run_that_wraps_keeps_every_other_id_reachable() {
        // Ids whose low bits are all 7 share the last of 8 slots as their home: a run
        // that wraps around the end. Taking out the first shifts the rest back.
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
