//! Event-id fingerprints as an account keeps them ([`Fp96`], 12 bytes), and a set of
//! them in buckets of one cache line each ([`IdTable`]): the large form of an account's
//! deduplication state.
//!
//! A bucket is 64 bytes: five fingerprints and a word that says how many of them are in
//! use and whether an id whose probe passed the bucket lies further on. An id's home
//! bucket is chosen from its low 64 bits scaled to the number of buckets; a full bucket
//! sends the id on to the next one (and is marked so). A lookup reads its home bucket
//! and, only past a marked one, the next: one cache line nearly always (open addressing
//! over single slots also touches one; a general hash table, with its control bytes apart
//! from its entries, touches two). For the hot accounts whose sets no longer fit in any
//! cache, that is one memory miss per event.
//!
//! Buckets fill to 85% before the table grows. From 64 buckets (4 KiB) on, it grows by
//! half a power of two at a time (64, 96, 128, 192, 256, 384, …), so ids fill between
//! about 57% and 85% of their room: about 18 bytes an id, where single slots at most
//! three quarters full, doubled when full, took 16 to 32 (23 on average). Smaller tables
//! double. Every size is one of mimalloc's size classes (a power of two, or one and a half
//! times one), whose blocks it starts on a cache line (a test checks it), so a bucket is
//! one line without asking the allocator for an alignment: asked for, it rounds many
//! sizes up to the next class. (Growing by a quarter instead, 16 bytes an id, spread the tables
//! over twice as many size classes, and the process held more memory, not less.) (Another allocator may place them otherwise: a lookup
//! then reads two neighbouring lines, never a wrong answer.) Growing often is cheap:
//! homes are in the order of the ids' low bits, so a growth reads the old buckets in
//! order and writes the new ones in order.
//!
//! Removal moves a bucket's last id into the hole; marks stay (a lookup then reads one
//! bucket more than it needs, never fewer), until the next growth drops them, or until
//! removals since the last rebuild reach a quarter of what the table holds: then it is
//! rebuilt at its size, so that marks left behind never pile up into long probes.

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

/// Ids per bucket: five of 12 bytes, and a word, in one 64-byte line.
const PER_BUCKET: usize = 5;

/// One cache line of a table: up to five ids, and what [`Bucket::meta`] says.
#[derive(Clone, Copy, Debug, Default)]
#[repr(C)]
struct Bucket {
    ids: [Fp96; PER_BUCKET],
    /// Bits 0–2: ids in use (from the start of `ids`); bit 3: an id whose home is this
    /// bucket or one before it lies past it.
    meta: u32,
}

const _: () = assert!(std::mem::size_of::<Bucket>() == 64);

impl Bucket {
    const PASSED: u32 = 8;

    fn used(&self) -> usize {
        (self.meta & 7) as usize
    }

    fn ids(&self) -> &[Fp96] {
        &self.ids[..self.used()]
    }

    fn passed(&self) -> bool {
        self.meta & Self::PASSED != 0
    }
}

/// A set of fingerprints (see the module's documentation).
///
/// Its buckets are one allocation of one cache line each; their number and the count
/// of ids sit beside the pointer, inline where the account's usage holds the table, so
/// a lookup reads one line of the allocation.
#[derive(Clone, Debug)]
pub struct IdTable {
    buckets: Box<[Bucket]>,
    len: u32,
    /// Removals since the table was last built (see the module's documentation).
    removed: u32,
}

impl Default for IdTable {
    fn default() -> Self {
        IdTable::with_capacity(0)
    }
}

impl IdTable {
    /// The fewest buckets a table has.
    const MIN_BUCKETS: usize = 4;

    /// A table that holds `n` ids without growing.
    pub fn with_capacity(n: usize) -> Self {
        let mut buckets = Self::MIN_BUCKETS;
        while Self::holds(buckets) < n {
            buckets = Self::next_size(buckets);
        }
        IdTable {
            buckets: vec![Bucket::default(); buckets].into_boxed_slice(),
            len: 0,
            removed: 0,
        }
    }

    /// The most ids `buckets` buckets take: 85% of their room.
    fn holds(buckets: usize) -> usize {
        buckets * PER_BUCKET * 17 / 20
    }

    /// From here on, tables grow by half a power of two (4 KiB of buckets).
    const HALVES_FROM: usize = 64;

    /// The size after `buckets`: twice as many below [`Self::HALVES_FROM`], then half
    /// the power of two at or below it more (see the module's documentation).
    fn next_size(buckets: usize) -> usize {
        if buckets < Self::HALVES_FROM {
            2 * buckets
        } else {
            buckets + (1usize << buckets.ilog2()) / 2
        }
    }

    /// The bucket where `id`'s probe starts: its low 64 bits scaled to the number of
    /// buckets.
    fn home(&self, id: Fp96) -> usize {
        ((u128::from(id.low()) * self.buckets.len() as u128) >> 64) as usize
    }

    fn next(&self, bucket: usize) -> usize {
        if bucket + 1 == self.buckets.len() {
            0
        } else {
            bucket + 1
        }
    }

    /// Where `id` is: its bucket and place in it.
    fn find(&self, id: Fp96) -> Option<(usize, usize)> {
        let mut b = self.home(id);
        // Bounded by the number of buckets: marks left by removals never make it loop.
        for _ in 0..self.buckets.len() {
            let bucket = &self.buckets[b];
            if let Some(k) = bucket.ids().iter().position(|&x| x == id) {
                return Some((b, k));
            }
            if !bucket.passed() {
                return None;
            }
            b = self.next(b);
        }
        None
    }

    /// Puts `id` (not in the table) in the first bucket with room from its home on,
    /// marking the full ones it passes. There is one: buckets are at most 85% full.
    fn place(&mut self, id: Fp96) {
        let mut b = self.home(id);
        loop {
            let bucket = &mut self.buckets[b];
            let used = bucket.used();
            if used < PER_BUCKET {
                bucket.ids[used] = id;
                bucket.meta += 1;
                return;
            }
            bucket.meta |= Bucket::PASSED;
            b = self.next(b);
        }
    }

    /// Starts fetching the line a lookup of `id` reads: its home bucket.
    pub fn prefetch(&self, id: u128) {
        super::prefetch(self.buckets.as_ptr().wrapping_add(self.home(Fp96::new(id))));
    }

    /// Whether `id` (its [`Fp96`]) is in.
    pub fn contains(&self, id: u128) -> bool {
        self.find(Fp96::new(id)).is_some()
    }

    /// Adds `id`; `false` if it was there already.
    pub fn insert(&mut self, id: u128) -> bool {
        let id = Fp96::new(id);
        if self.find(id).is_some() {
            return false;
        }
        if self.len as usize + 1 > Self::holds(self.buckets.len()) {
            self.rebuild(Self::next_size(self.buckets.len()));
        }
        self.place(id);
        self.len += 1;
        true
    }

    /// Takes `id` out; `false` if it was not there.
    pub fn remove(&mut self, id: u128) -> bool {
        let Some((b, k)) = self.find(Fp96::new(id)) else {
            return false;
        };
        let bucket = &mut self.buckets[b];
        let last = bucket.used() - 1;
        bucket.ids[k] = bucket.ids[last];
        bucket.ids[last] = Fp96::default();
        bucket.meta -= 1;
        self.len -= 1;
        self.removed += 1;
        if self.removed as usize >= Self::holds(self.buckets.len()) / 4 {
            self.rebuild(self.buckets.len());
        }
        true
    }

    /// Moves every id into a table of `size` buckets, in the order of their homes (so
    /// both tables are walked in order); its only marks are the new ones.
    fn rebuild(&mut self, size: usize) {
        self.removed = 0;
        let old = std::mem::replace(
            &mut self.buckets,
            vec![Bucket::default(); size].into_boxed_slice(),
        );
        for bucket in old.iter() {
            for &id in bucket.ids() {
                self.place(id);
            }
        }
    }

    pub fn len(&self) -> usize {
        self.len as usize
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Every id (as its [`Fp96`]), in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = u128> + '_ {
        self.buckets.iter().flat_map(|b| b.ids().iter().map(|x| x.get()))
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
    fn sizes_double_then_go_by_halves_of_a_power_of_two() {
        let mut sizes = vec![IdTable::MIN_BUCKETS];
        while sizes.len() < 14 {
            sizes.push(IdTable::next_size(*sizes.last().unwrap()));
        }
        assert_eq!(
            sizes,
            [4, 8, 16, 32, 64, 96, 128, 192, 256, 384, 512, 768, 1024, 1536]
        );
        // In bytes, size classes of mimalloc: powers of two, and halfway between them.
        for buckets in sizes {
            let bytes = 64 * buckets;
            assert!(
                bytes.is_power_of_two() || (bytes / 3).is_power_of_two() && bytes % 3 == 0,
                "{bytes}"
            );
        }
    }

    #[test]
    fn grows_at_85_percent() {
        // 4 buckets of 5 hold 17 ids (85% of 20); the 18th doubles them to 8, which
        // hold 34. 256 buckets hold 1088; the 1089th grows them to 384.
        let mut t = IdTable::default();
        for id in 1..=17u128 {
            t.insert(id << 70 | id);
        }
        assert_eq!(t.buckets.len(), 4);
        t.insert(18 << 70 | 18);
        assert_eq!(t.buckets.len(), 8);
        for id in 1..=18u128 {
            assert!(t.contains(id << 70 | id));
        }
        assert_eq!(IdTable::with_capacity(17).buckets.len(), 4);
        assert_eq!(IdTable::with_capacity(18).buckets.len(), 8);
        assert_eq!(IdTable::with_capacity(1088).buckets.len(), 256);
        assert_eq!(IdTable::with_capacity(1089).buckets.len(), 384);
    }

    /// Past 1088 ids, ids spread evenly take about 18 bytes each (12 of fingerprint).
    #[test]
    fn ids_take_about_eighteen_bytes_each() {
        let mut t = IdTable::default();
        let mut worst = 0f64;
        let mut total = 0f64;
        let mut samples = 0;
        for i in 1..=200_000u128 {
            // Spread like fingerprints: a multiplicative hash of the counter.
            t.insert(i.wrapping_mul(0x9e37_79b9_7f4a_7c15_f39c_c060_5ced_c835));
            if i >= 1100 && i % 97 == 0 {
                let bytes = (64 * t.buckets.len()) as f64 / i as f64;
                worst = worst.max(bytes);
                total += bytes;
                samples += 1;
            }
        }
        assert_eq!(t.len(), 200_000);
        let mean = total / f64::from(samples);
        assert!((17.0..19.0).contains(&mean), "{mean:.1} bytes an id on average");
        assert!(worst < 23.0, "{worst:.1} bytes an id at worst");
    }

    #[test]
    fn a_full_bucket_sends_ids_on_and_its_mark_finds_them() {
        // Ids whose low 64 bits are 0 all have bucket 0 as their home: the sixth goes to
        // bucket 1 and marks bucket 0; the eleventh, bucket 2.
        // (32 buckets: the five removals below stay under a quarter of what they hold,
        // so the table is not rebuilt.)
        let mut t = IdTable::with_capacity(100);
        let ids: Vec<u128> = (1..=11u128).map(|k| k << 64).collect();
        for &id in &ids {
            assert!(t.insert(id));
        }
        assert!(t.buckets[0].passed() && t.buckets[1].passed() && !t.buckets[2].passed());
        assert_eq!(t.buckets[2].used(), 1);
        for &id in &ids {
            assert!(t.contains(id), "{id:x}");
        }
        // Emptied, bucket 0 keeps its mark: ids further on are still found.
        for &id in &ids[..5] {
            assert!(t.remove(id));
        }
        assert!(t.buckets[0].passed() && t.buckets[0].used() == 0);
        for &id in &ids[5..] {
            assert!(t.contains(id) && !t.insert(id));
        }
        assert_eq!(t.len(), 6);
    }

    /// Ids going in and out of a table that never grows: the marks removals leave are
    /// dropped by a rebuild, so probes stay short.
    #[test]
    fn marks_left_by_removals_do_not_pile_up() {
        let mut t = IdTable::with_capacity(1000);
        let size = t.buckets.len();
        let id = |i: u128| i.wrapping_mul(0x9e37_79b9_7f4a_7c15_f39c_c060_5ced_c835);
        for i in 0..800 {
            t.insert(id(i));
        }
        for i in 800..50_000 {
            assert!(t.remove(id(i - 800)));
            assert!(t.insert(id(i)));
        }
        assert_eq!((t.len(), t.buckets.len()), (800, size));
        // Buckets a lookup of an absent id reads, on average over every home: no more
        // than in the same ids freshly placed, plus a little for the marks since.
        let reads = |t: &IdTable| {
            let total: usize = (0..t.buckets.len())
                .map(|home| {
                    1 + (home..home + t.buckets.len())
                        .take_while(|&b| t.buckets[b % t.buckets.len()].passed())
                        .count()
                })
                .sum();
            total as f64 / t.buckets.len() as f64
        };
        let mut fresh = IdTable::with_capacity(1000);
        t.iter().for_each(|i| {
            fresh.insert(i);
        });
        assert!(
            reads(&t) < reads(&fresh) + 0.5,
            "{} against {}",
            reads(&t),
            reads(&fresh)
        );
        // Without the rebuilds, marks pile up: every bucket ends marked, and a lookup
        // reads them all (measured: 257 buckets, against 1.75 with them, 1.67 fresh).
        let mut kept = IdTable::with_capacity(1000);
        for i in 0..800 {
            kept.insert(id(i));
        }
        for i in 800..50_000 {
            kept.removed = 0;
            kept.remove(id(i - 800));
            kept.insert(id(i));
        }
        assert!(
            reads(&kept) > reads(&t) + 1.0,
            "{} against {}",
            reads(&kept),
            reads(&t)
        );
        assert!((49_200..50_000).all(|i| t.contains(id(i))));
        assert!(!t.contains(id(0)));
    }

    #[test]
    fn the_last_bucket_sends_ids_on_to_the_first() {
        // Low 64 bits all ones: the last of 4 buckets is the home.
        let mut t = IdTable::with_capacity(17);
        let ids: Vec<u128> = (1..=7u128).map(|k| (k << 64) | u128::from(u64::MAX)).collect();
        assert_eq!(t.home(Fp96::new(ids[0])), 3);
        for &id in &ids {
            t.insert(id);
        }
        assert!(t.buckets[3].passed());
        assert_eq!(t.buckets[0].used(), 2);
        assert!(ids.iter().all(|&id| t.contains(id)));
    }

    /// With mimalloc, every size of table starts on a cache line, so each bucket is one.
    #[cfg(not(feature = "system-allocator"))]
    #[test]
    fn buckets_are_lines() {
        // (buckets, where the table starts within a line) for every size it takes.
        let mut sizes: Vec<(usize, usize)> = Vec::new();
        let mut t = IdTable::default();
        for i in 1..=20_000u128 {
            t.insert(i.wrapping_mul(0x9e37_79b9_7f4a_7c15_f39c_c060_5ced_c835));
            if sizes.last().is_none_or(|&(n, _)| n != t.buckets.len()) {
                sizes.push((t.buckets.len(), t.buckets.as_ptr() as usize % 64));
            }
        }
        assert!(sizes.len() > 10);
        for (n, offset) in sizes {
            assert_eq!(offset, 0, "{n} buckets");
        }
    }

    proptest! {
        /// Through any inserts and removals (ids drawn from a small range so that they
        /// collide and repeat, some of them 0), the table answers as a plain set does.
        #[test]
        fn agrees_with_a_plain_set(ops in prop::collection::vec((any::<bool>(), 0u128..64, 0u8..4), 0..400)) {
            let mut t = IdTable::default();
            let mut model = HashSet::new();
            for (insert, low, high) in ops {
                // Few distinct homes (the top bits of the low 64 choose the bucket): full
                // buckets, marks, wrap-arounds, growth.
                let id = (u128::from(high) << 64) | (low % 16) << 60;
                if insert {
                    prop_assert_eq!(t.insert(id), model.insert(id));
                } else {
                    prop_assert_eq!(t.remove(id), model.remove(&id));
                }
                prop_assert_eq!(t.len(), model.len());
            }
            for id in 0..16u128 {
                for high in 0..4u128 {
                    let id = (high << 64) | id << 60;
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
