//! Meters: what is measured, and how an account's events fold into one aggregate.
//!
//! Every aggregate here is order-independent: folding the same set of events in any
//! order gives the same state (ties are broken by event time, then by the event's
//! fingerprint). Deduplication of repeated event ids is not done here but in
//! [`crate::domain::usage::AccountUsage`], which owns the aggregates.
//!
//! An aggregate remembers which catalog version was in force for its usage, as a
//! list of *spans* `(version, quantity)`, so that a price change in the middle of a
//! period applies to usage from its effective date on (see [`crate::domain::price`]).

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;

use thin_vec::ThinVec;

use super::ids::MeterId;
use crate::compact::prehashed::Prehashed;

/// Index of a catalog version within its catalog (0 = the oldest).
pub type VersionIdx = u16;

/// How a meter's events fold into the period's quantity.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Aggregation {
    /// The sum of the events' quantities.
    Sum,
    /// The number of events (their quantities are not read).
    Count,
    /// The largest quantity seen in the period (e.g. peak storage).
    Max,
    /// The quantity of the event with the latest event time.
    Latest,
    /// The number of distinct values of one dimension (e.g. monthly active users).
    UniqueCount { dimension: String },
}

/// How a reading folds into an aggregate: the aggregation without its parameters.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Fold {
    Sum,
    Count,
    Max,
    Latest,
    Distinct,
}

impl Aggregation {
    pub fn fold(&self) -> Fold {
        match self {
            Aggregation::Sum => Fold::Sum,
            Aggregation::Count => Fold::Count,
            Aggregation::Max => Fold::Max,
            Aggregation::Latest => Fold::Latest,
            Aggregation::UniqueCount { .. } => Fold::Distinct,
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            Aggregation::Sum => "sum",
            Aggregation::Count => "count",
            Aggregation::Max => "max",
            Aggregation::Latest => "latest",
            Aggregation::UniqueCount { .. } => "unique_count",
        }
    }

    /// The dimension whose distinct values are counted, for `unique_count`.
    pub fn dimension(&self) -> Option<&str> {
        match self {
            Aggregation::UniqueCount { dimension } => Some(dimension),
            _ => None,
        }
    }
}

/// One usage event reduced to what an aggregate needs. Built by
/// [`crate::domain::catalog::Catalog::resolve`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reading {
    /// How the meter aggregates.
    pub fold: Fold,
    pub quantity: Decimal,
    pub time: DateTime<Utc>,
    /// The catalog version in force at the event's date.
    pub version: VersionIdx,
    /// Fingerprint of the event id: breaks ties between events with the same time.
    pub tiebreak: u64,
    /// Fingerprint of the counted dimension's value, for `unique_count`.
    pub dimension: Option<u64>,
}

#[cfg(test)]
impl Reading {
    /// A reading of `quantity` for a `sum` meter, at 2026-11-03T10:00:00Z in version 0:
    /// a fixture of the tests that need any reading.
    pub(crate) fn sum_for_tests(quantity: Decimal) -> Reading {
        Reading {
            fold: Fold::Sum,
            quantity,
            time: "2026-11-03T10:00:00Z".parse().unwrap(),
            version: 0,
            tiebreak: 0,
            dimension: None,
        }
    }
}

/// The aggregate of one meter for one account over the open period, with its meter.
///
/// One is kept per account and meter in use, millions of them, so it takes 16 bytes
/// with its meter id: the common case, a sum or count in one catalog version whose
/// quantity is a 64-bit number of units of its scale, is in place (a `Decimal` alone
/// takes 16), and the other forms are one pointer away. It is taken apart into its
/// meter and its [`AggregateParts`] to be written, and built back from them.
#[derive(Clone, Debug)]
pub struct MeterAggregate(Repr);

#[derive(Clone, Debug)]
enum Repr {
    /// `sum` and `count` with usage in one catalog version and a quantity of at most
    /// 18 digits (nearly all): `mantissa × 10^-scale`, exactly the `Decimal` it stands
    /// for, scale included.
    Small {
        meter: MeterId,
        version: VersionIdx,
        scale: u8,
        mantissa: i64,
    },
    /// `sum` and `count` otherwise: the quantity per version, versions ascending (one
    /// larger than `Small` holds, or two or more).
    Spans {
        meter: MeterId,
        spans: ThinVec<(VersionIdx, Decimal)>,
    },
    /// `max` and `latest`: the one event that defines the aggregate.
    Extreme {
        meter: MeterId,
        extreme: Box<KeptExtreme>,
    },
    /// `unique_count`: each distinct value with the earliest time it was seen and the
    /// version in force then. A value counts in the span where it first appeared.
    Distinct {
        meter: MeterId,
        values: Box<DistinctValues>,
    },
}

/// `quantity` as a `Small` aggregate holds it: `(scale, mantissa)`, if it fits.
fn small(quantity: Decimal) -> Option<(u8, i64)> {
    Some((quantity.scale() as u8, i64::try_from(quantity.mantissa()).ok()?))
}

/// The `Decimal` that a `Small` aggregate's `(scale, mantissa)` stands for.
fn decimal(scale: u8, mantissa: i64) -> Decimal {
    Decimal::from_i128_with_scale(i128::from(mantissa), u32::from(scale))
}

/// `mantissa × 10^-scale + quantity` as `Decimal` adds them, if it still fits a
/// `Small` aggregate: at the larger of the two scales, except that a zero leaves the
/// other operand as it is, scale included (`1 + 0.00` is `1`, `0.0 + 1` is `1`).
fn add_small(scale: u8, mantissa: i64, quantity: Decimal) -> Option<(u8, i64)> {
    let (theirs, other) = small(quantity)?;
    if other == 0 {
        return Some((scale, mantissa));
    }
    if mantissa == 0 {
        return Some((theirs, other));
    }
    let to = scale.max(theirs);
    let widen = |m: i64, from: u8| 10i64.checked_pow(u32::from(to - from))?.checked_mul(m);
    Some((to, widen(mantissa, scale)?.checked_add(widen(other, theirs)?)?))
}

/// Two aggregates are equal when their meters and what they hold are: a sum is its
/// spans, whichever form holds them.
impl PartialEq for MeterAggregate {
    fn eq(&self, other: &MeterAggregate) -> bool {
        self.meter() == other.meter()
            && match (&self.0, &other.0) {
                (Repr::Small { .. } | Repr::Spans { .. }, Repr::Small { .. } | Repr::Spans { .. }) => {
                    self.spans().eq(other.spans())
                }
                (Repr::Extreme { extreme: a, .. }, Repr::Extreme { extreme: b, .. }) => a == b,
                (Repr::Distinct { values: a, .. }, Repr::Distinct { values: b, .. }) => a == b,
                _ => false,
            }
    }
}

impl Eq for MeterAggregate {}

/// The event that defines a `max` or `latest` aggregate.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Extreme {
    /// `Max` or `Latest`.
    pub fold: Fold,
    pub quantity: Decimal,
    pub time: DateTime<Utc>,
    pub tiebreak: u64,
    pub version: VersionIdx,
}

/// An [`Extreme`] as it is kept: 32 bytes (one of the allocator's size classes), where
/// the struct takes 40 (and 48 of the allocator's).
///
/// - The quantity is held as [`Decimal::serialize`] lays it out, four words, the first
///   its flags, whose low 16 bits `Decimal` leaves unused: they hold the version.
/// - The time is its seconds and nanoseconds (31 bits, a leap second included); the
///   nanoseconds' top bit says `latest` (else `max`).
/// - The fingerprint that breaks ties keeps its high 32 bits. Events equal in those are
///   decided by the rule's next term, or are the same state: never by arrival order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct KeptExtreme {
    quantity: [u32; 4],
    secs: i64,
    nanos_and_fold: u32,
    tiebreak: u32,
}

impl KeptExtreme {
    const VERSION: u32 = 0xFFFF;
    const LATEST: u32 = 1 << 31;

    fn new(
        fold: Fold,
        quantity: Decimal,
        time: DateTime<Utc>,
        tiebreak: u64,
        version: VersionIdx,
    ) -> KeptExtreme {
        let bytes = quantity.serialize();
        let mut words = [0u32; 4];
        for (word, b) in words.iter_mut().zip(bytes.chunks_exact(4)) {
            *word = u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
        }
        debug_assert_eq!(words[0] & Self::VERSION, 0, "Decimal's flags use no low bits");
        words[0] |= u32::from(version);
        KeptExtreme {
            quantity: words,
            secs: time.timestamp(),
            nanos_and_fold: time.timestamp_subsec_nanos()
                | if fold == Fold::Latest { Self::LATEST } else { 0 },
            tiebreak: (tiebreak >> 32) as u32,
        }
    }

    fn from_extreme(e: &Extreme) -> KeptExtreme {
        KeptExtreme::new(e.fold, e.quantity, e.time, e.tiebreak, e.version)
    }

    fn quantity(&self) -> Decimal {
        let mut words = self.quantity;
        words[0] &= !Self::VERSION;
        let mut bytes = [0u8; 16];
        for (b, word) in bytes.chunks_exact_mut(4).zip(words) {
            b.copy_from_slice(&word.to_le_bytes());
        }
        Decimal::deserialize(bytes)
    }

    fn version(&self) -> VersionIdx {
        (self.quantity[0] & Self::VERSION) as VersionIdx
    }

    fn time(&self) -> DateTime<Utc> {
        DateTime::from_timestamp(self.secs, self.nanos_and_fold & !Self::LATEST)
            .expect("seconds and nanoseconds taken from a time")
    }

    fn fold(&self) -> Fold {
        if self.nanos_and_fold & Self::LATEST != 0 {
            Fold::Latest
        } else {
            Fold::Max
        }
    }

    /// The fingerprint as kept: its high 32 bits.
    fn tiebreak(&self) -> u64 {
        u64::from(self.tiebreak) << 32
    }

    fn extreme(&self) -> Extreme {
        Extreme {
            fold: self.fold(),
            quantity: self.quantity(),
            time: self.time(),
            tiebreak: self.tiebreak(),
            version: self.version(),
        }
    }
}

/// When a distinct value was first seen, and the catalog version in force then.
pub type FirstSeen = (DateTime<Utc>, VersionIdx);

/// A [`FirstSeen`] as it is kept: the time in whole seconds since 1970 (32 bits, enough
/// until 2106), and the version. 8 bytes, so that a value takes 16 with its
/// fingerprint, where a full time made it 24.
///
/// The fraction of a second can go: what a sighting decides is the catalog version the
/// value counts in, and that follows from the event's date, which two events in the same
/// second share. So the earliest sighting to the second has the earliest one's version.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Seen {
    secs: u32,
    version: VersionIdx,
}

impl Seen {
    fn of(first: FirstSeen) -> Seen {
        Seen {
            // Usage is dated within its period, long after 1970 and before 2106.
            secs: u32::try_from(first.0.timestamp().max(0)).unwrap_or(u32::MAX),
            version: first.1,
        }
    }

    fn first_seen(self) -> FirstSeen {
        let time =
            DateTime::from_timestamp(i64::from(self.secs), 0).expect("32-bit seconds are a valid time");
        (time, self.version)
    }
}

/// The distinct values of a `unique_count` meter, each with when it was first seen.
///
/// Most accounts see a few values a period, so a small set is a vector sorted by value
/// (16 bytes a value; a hash map's smallest table takes 128); past
/// [`DistinctValues::SORTED_MAX`] values, where inserting would move too much, it is a
/// hash map. Either form is the same set: equal, and written the same way.
/// Sightings are kept to the second (see [`Seen`]).
#[derive(Clone, Debug)]
pub enum DistinctValues {
    Sorted(ThinVec<(u64, Seen)>),
    Hashed(Box<HashMap<u64, Seen, Prehashed>>),
}

impl Default for DistinctValues {
    fn default() -> Self {
        DistinctValues::Sorted(ThinVec::new())
    }
}

impl DistinctValues {
    /// The most values kept as a sorted vector.
    pub const SORTED_MAX: usize = 32;

    /// Counts `value`, first seen at `first` (an earlier sighting than the one kept wins).
    pub fn see(&mut self, value: u64, first: FirstSeen) {
        let first = Seen::of(first);
        let earlier = |kept: &mut Seen| {
            if first.secs < kept.secs {
                *kept = first;
            }
        };
        match self {
            DistinctValues::Sorted(values) => match values.binary_search_by_key(&value, |v| v.0) {
                Ok(i) => earlier(&mut values[i].1),
                Err(_) if values.len() == Self::SORTED_MAX => {
                    let mut map: HashMap<u64, Seen, Prehashed> =
                        HashMap::with_capacity_and_hasher(2 * Self::SORTED_MAX, Prehashed);
                    map.extend(values.iter().copied());
                    map.insert(value, first);
                    *self = DistinctValues::Hashed(Box::new(map));
                }
                Err(i) => {
                    // Grown by a quarter, not doubled: these are kept per account.
                    if values.len() == values.capacity() {
                        values.reserve_exact((values.len() / 4).max(1));
                    }
                    values.insert(i, (value, first));
                }
            },
            DistinctValues::Hashed(map) => {
                map.entry(value).and_modify(earlier).or_insert(first);
            }
        }
    }

    pub fn get(&self, value: u64) -> Option<FirstSeen> {
        match self {
            DistinctValues::Sorted(values) => values
                .binary_search_by_key(&value, |v| v.0)
                .ok()
                .map(|i| values[i].1.first_seen()),
            DistinctValues::Hashed(map) => map.get(&value).map(|seen| seen.first_seen()),
        }
    }

    pub fn len(&self) -> usize {
        match self {
            DistinctValues::Sorted(values) => values.len(),
            DistinctValues::Hashed(map) => map.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every value with when it was first seen, in no particular order.
    pub fn iter(&self) -> Box<dyn Iterator<Item = (u64, FirstSeen)> + '_> {
        match self {
            DistinctValues::Sorted(values) => {
                Box::new(values.iter().map(|&(v, seen)| (v, seen.first_seen())))
            }
            DistinctValues::Hashed(map) => Box::new(map.iter().map(|(&v, &seen)| (v, seen.first_seen()))),
        }
    }

    /// The set of `values` with when each was first seen (values read back), in the
    /// form their number calls for: sorted up to [`Self::SORTED_MAX`], else hashed.
    ///
    /// The values are distinct, as a map's keys are; one listed twice keeps its last
    /// sighting, as reading a map keeps its last entry.
    pub fn from_unique(values: Vec<(u64, FirstSeen)>) -> DistinctValues {
        let many = values.len() > Self::SORTED_MAX;
        let kept = values.into_iter().map(|(value, first)| (value, Seen::of(first)));
        if many {
            let map: HashMap<u64, Seen, Prehashed> = kept.collect();
            if map.len() > Self::SORTED_MAX {
                return DistinctValues::Hashed(Box::new(map));
            }
            // Values listed twice: few enough for the sorted form.
            let mut values: ThinVec<(u64, Seen)> = map.into_iter().collect();
            values.sort_unstable_by_key(|v| v.0);
            return DistinctValues::Sorted(values);
        }
        let mut values: ThinVec<(u64, Seen)> = kept.collect();
        // Stable, so that of a value listed twice the last sighting stays.
        values.sort_by_key(|v| v.0);
        values.dedup_by(|later, kept| {
            let same = later.0 == kept.0;
            if same {
                *kept = *later;
            }
            same
        });
        DistinctValues::Sorted(values)
    }
}

impl FromIterator<(u64, FirstSeen)> for DistinctValues {
    fn from_iter<I: IntoIterator<Item = (u64, FirstSeen)>>(iter: I) -> Self {
        let mut values = DistinctValues::default();
        for (value, first) in iter {
            values.see(value, first);
        }
        values
    }
}

/// The same values seen first at the same times, however they are kept.
impl PartialEq for DistinctValues {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (DistinctValues::Sorted(a), DistinctValues::Sorted(b)) => a == b,
            _ => self.len() == other.len() && self.iter().all(|(v, f)| other.get(v) == Some(f)),
        }
    }
}

impl Eq for DistinctValues {}

/// What an aggregate holds, without its meter: a sum's or count's quantities per catalog
/// version, the event of a `max` or `latest`, or the distinct values of a `unique_count`.
/// An aggregate is built back from them with [`MeterAggregate::from_parts`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AggregateParts {
    /// A sum or count with usage in one catalog version: `(version, quantity)`.
    OneSpan((VersionIdx, Decimal)),
    /// A sum or count: `(version, quantity)` per version, versions ascending.
    Spans(ThinVec<(VersionIdx, Decimal)>),
    Extreme(Extreme),
    Distinct(DistinctValues),
}

/// [`AggregateParts`] borrowed from an aggregate ([`MeterAggregate::parts`]): nothing is
/// copied but a single span and the extreme, which is rebuilt from how it is kept.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AggregatePartsRef<'a> {
    /// A sum or count with usage in one catalog version, whichever form holds it.
    OneSpan((VersionIdx, Decimal)),
    /// A sum or count over two or more versions, ascending.
    Spans(&'a [(VersionIdx, Decimal)]),
    Extreme(Extreme),
    Distinct(&'a DistinctValues),
}

/// Applying a reading would overflow the aggregate's 28 significant digits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("the meter's aggregate would overflow (more than 28 significant digits)")]
pub struct Overflow;

impl MeterAggregate {
    /// The aggregate of `meter` from a single reading.
    pub fn new(meter: MeterId, reading: &Reading) -> MeterAggregate {
        MeterAggregate(match reading.fold {
            Fold::Sum => Self::one_span(meter, reading.version, reading.quantity),
            Fold::Count => Self::one_span(meter, reading.version, Decimal::ONE),
            Fold::Max | Fold::Latest => Repr::Extreme {
                meter,
                extreme: Box::new(KeptExtreme::new(
                    reading.fold,
                    reading.quantity,
                    reading.time,
                    reading.tiebreak,
                    reading.version,
                )),
            },
            Fold::Distinct => {
                let mut values = DistinctValues::default();
                if let Some(value) = reading.dimension {
                    values.see(value, (reading.time, reading.version));
                }
                Repr::Distinct {
                    meter,
                    values: Box::new(values),
                }
            }
        })
    }

    /// A sum or count of one span in its form: in place if it fits (no allocation, the
    /// common case of a new aggregate), else a `Decimal` span.
    fn one_span(meter: MeterId, version: VersionIdx, quantity: Decimal) -> Repr {
        match small(quantity) {
            Some((scale, mantissa)) => Repr::Small {
                meter,
                version,
                scale,
                mantissa,
            },
            None => Repr::Spans {
                meter,
                spans: thin_vec::thin_vec![(version, quantity)],
            },
        }
    }

    /// A sum or count of `spans` (versions ascending, one or more) in its form.
    fn additive(meter: MeterId, spans: ThinVec<(VersionIdx, Decimal)>) -> Repr {
        match spans[..] {
            [(version, quantity)] => Self::one_span(meter, version, quantity),
            _ => Repr::Spans { meter, spans },
        }
    }

    /// The aggregate of `meter` holding `parts` (an aggregate read back: see
    /// [`Self::parts`]), in the form they call for: one span in place if it fits.
    pub fn from_parts(meter: MeterId, parts: AggregateParts) -> MeterAggregate {
        MeterAggregate(match parts {
            AggregateParts::OneSpan((version, quantity)) => Self::one_span(meter, version, quantity),
            AggregateParts::Spans(spans) => Self::additive(meter, spans),
            AggregateParts::Extreme(extreme) => Repr::Extreme {
                meter,
                extreme: Box::new(KeptExtreme::from_extreme(&extreme)),
            },
            AggregateParts::Distinct(values) => Repr::Distinct {
                meter,
                values: Box::new(values),
            },
        })
    }

    /// What the aggregate holds, without its meter id, borrowed (to write it, copying
    /// nothing). A single span is one span, whichever form holds it.
    pub fn parts(&self) -> AggregatePartsRef<'_> {
        match &self.0 {
            Repr::Small {
                version,
                scale,
                mantissa,
                ..
            } => AggregatePartsRef::OneSpan((*version, decimal(*scale, *mantissa))),
            Repr::Spans { spans, .. } if spans.len() == 1 => AggregatePartsRef::OneSpan(spans[0]),
            Repr::Spans { spans, .. } => AggregatePartsRef::Spans(spans),
            Repr::Extreme { extreme, .. } => AggregatePartsRef::Extreme(extreme.extreme()),
            Repr::Distinct { values, .. } => AggregatePartsRef::Distinct(values),
        }
    }

    /// The meter this is the aggregate of.
    #[inline]
    pub fn meter(&self) -> MeterId {
        match &self.0 {
            Repr::Small { meter, .. }
            | Repr::Spans { meter, .. }
            | Repr::Extreme { meter, .. }
            | Repr::Distinct { meter, .. } => *meter,
        }
    }

    /// Adds `quantity` of `version` to a sum or count.
    fn add(&mut self, version: VersionIdx, quantity: Decimal) -> Result<(), Overflow> {
        match &mut self.0 {
            Repr::Small {
                meter,
                version: v,
                scale,
                mantissa,
            } => {
                let current = (*v, decimal(*scale, *mantissa));
                if *v == version {
                    if let Some((to, sum)) = add_small(*scale, *mantissa, quantity) {
                        (*scale, *mantissa) = (to, sum);
                        return Ok(());
                    }
                    // Past 18 digits: the same span, as a `Decimal`.
                    let sum = current.1.checked_add(quantity).ok_or(Overflow)?;
                    self.0 = Repr::Spans {
                        meter: *meter,
                        spans: thin_vec::thin_vec![(version, sum)],
                    };
                } else {
                    let mut spans = thin_vec::thin_vec![current, (version, quantity)];
                    spans.sort_by_key(|s| s.0);
                    self.0 = Repr::Spans { meter: *meter, spans };
                }
            }
            Repr::Spans { spans, .. } => match spans.binary_search_by_key(&version, |s| s.0) {
                Ok(i) => spans[i].1 = spans[i].1.checked_add(quantity).ok_or(Overflow)?,
                Err(i) => spans.insert(i, (version, quantity)),
            },
            state => {
                panic!("{state:?} is not a sum or count: the catalog forbids changing a meter's aggregation")
            }
        }
        Ok(())
    }

    /// Folds one more reading in. Commutative and associative across readings.
    pub fn apply(&mut self, reading: &Reading) -> Result<(), Overflow> {
        match (&mut self.0, reading.fold) {
            (Repr::Small { .. } | Repr::Spans { .. }, Fold::Sum) => self.add(reading.version, reading.quantity),
            (Repr::Small { .. } | Repr::Spans { .. }, Fold::Count) => self.add(reading.version, Decimal::ONE),
            (Repr::Extreme { extreme, .. }, fold @ (Fold::Max | Fold::Latest)) => {
                // Times compare as their (seconds, nanoseconds), the fingerprints as kept.
                let time = (extreme.secs, extreme.nanos_and_fold & !KeptExtreme::LATEST);
                let their_time = (reading.time.timestamp(), reading.time.timestamp_subsec_nanos());
                let (tiebreak, theirs) = (extreme.tiebreak, (reading.tiebreak >> 32) as u32);
                // Max: the largest quantity wins; among equals, the earliest event.
                // Latest: the latest event wins; among equals, the larger fingerprint.
                let wins = if fold == Fold::Max {
                    (reading.quantity, std::cmp::Reverse(their_time), theirs)
                        > (extreme.quantity(), std::cmp::Reverse(time), tiebreak)
                } else {
                    (their_time, theirs).cmp(&(time, tiebreak)).then_with(|| reading.quantity.cmp(&extreme.quantity()))
                        == std::cmp::Ordering::Greater
                };
                if wins {
                    **extreme = KeptExtreme::new(fold, reading.quantity, reading.time, reading.tiebreak, reading.version);
                }
                Ok(())
            }
            (Repr::Distinct { values, .. }, Fold::Distinct) => {
                if let Some(value) = reading.dimension {
                    values.see(value, (reading.time, reading.version));
                }
                Ok(())
            }
            (state, fold) => panic!(
                "aggregate {state:?} does not match fold {fold:?}: the catalog forbids changing a meter's aggregation"
            ),
        }
    }

    /// Folds another aggregate of the same meter in, as if its readings had been applied
    /// here: sums add, the extreme keeps the winner, distinct values unite.
    pub fn merge(&mut self, other: &MeterAggregate) -> Result<(), Overflow> {
        match (&mut self.0, &other.0) {
            (Repr::Small { .. } | Repr::Spans { .. }, Repr::Small { .. } | Repr::Spans { .. }) => other
                .spans()
                .try_for_each(|(version, quantity)| self.add(version, quantity)),
            (Repr::Extreme { .. }, Repr::Extreme { extreme: theirs, .. }) => {
                // Replaying the other extreme as a reading keeps the same winner rules.
                let theirs = theirs.extreme();
                self.apply(&Reading {
                    fold: theirs.fold,
                    quantity: theirs.quantity,
                    time: theirs.time,
                    version: theirs.version,
                    tiebreak: theirs.tiebreak,
                    dimension: None,
                })
            }
            (Repr::Distinct { values: mine, .. }, Repr::Distinct { values: theirs, .. }) => {
                for (value, first) in theirs.iter() {
                    mine.see(value, first);
                }
                Ok(())
            }
            (me, other) => panic!("cannot merge {other:?} into {me:?}: different aggregations"),
        }
    }

    /// A sum's or count's `(version, quantity)` spans, versions ascending (none for
    /// the other aggregations).
    fn spans(&self) -> impl Iterator<Item = (VersionIdx, Decimal)> + '_ {
        let (one, many) = match &self.0 {
            Repr::Small {
                version,
                scale,
                mantissa,
                ..
            } => (Some((*version, decimal(*scale, *mantissa))), &[][..]),
            Repr::Spans { spans, .. } => (None, &spans[..]),
            Repr::Extreme { .. } | Repr::Distinct { .. } => (None, &[][..]),
        };
        one.into_iter().chain(many.iter().copied())
    }

    /// The period's quantity: what the invoice line shows.
    pub fn quantity(&self) -> Decimal {
        match &self.0 {
            Repr::Small { .. } | Repr::Spans { .. } => self.spans().map(|s| s.1).sum(),
            Repr::Extreme { extreme, .. } => extreme.quantity(),
            Repr::Distinct { values, .. } => Decimal::from(values.len()),
        }
    }

    /// Adds this aggregate's quantity per catalog version into `into`
    /// (indexed by version, grown as needed).
    pub fn add_spans_into(&self, into: &mut Vec<Decimal>) {
        let mut add = |version: VersionIdx, quantity: Decimal| {
            let i = usize::from(version);
            if into.len() <= i {
                into.resize(i + 1, Decimal::ZERO);
            }
            into[i] += quantity;
        };
        match &self.0 {
            Repr::Small { .. } | Repr::Spans { .. } => self.spans().for_each(|(v, q)| add(v, q)),
            Repr::Extreme { extreme, .. } => add(extreme.version(), extreme.quantity()),
            Repr::Distinct { values, .. } => values.iter().for_each(|(_, (_, v))| add(v, Decimal::ONE)),
        }
    }
}

#[cfg(test)]
#[path = "meter_tests.rs"]
mod tests;
