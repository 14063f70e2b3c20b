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

use super::usage::Prehashed;

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

/// The aggregate of one meter for one account over the open period.
///
/// One is kept per account and meter in use, millions of them, so it takes 24 bytes:
/// the common case (a sum or count in one catalog version) is in place, and the rare
/// larger forms are one pointer away.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum MeterAggregate {
    /// `sum` and `count`: the quantity per catalog version, versions ascending.
    Additive(Spans),
    /// `max` and `latest`: the one event that defines the aggregate. Written as the
    /// struct variant it was before it was boxed (the same bytes).
    Extreme(Box<Extreme>),
    /// `unique_count`: each distinct value with the earliest time it was seen and the
    /// version in force then. A value counts in the span where it first appeared.
    Distinct(DistinctValues),
}

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

/// When a distinct value was first seen, and the catalog version in force then.
pub type FirstSeen = (DateTime<Utc>, VersionIdx);

/// The distinct values of a `unique_count` meter, each with when it was first seen.
///
/// Most accounts see a few values a period, so a small set is a vector sorted by value
/// (24 bytes a value; a hash map's smallest table takes 128); past
/// [`DistinctValues::SORTED_MAX`] values, where inserting would move too much, it is a
/// hash map. Either form is the same set: equal, and written the same way (a map).
#[derive(Clone, Debug)]
pub enum DistinctValues {
    Sorted(ThinVec<(u64, FirstSeen)>),
    Hashed(Box<HashMap<u64, FirstSeen, Prehashed>>),
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
        let earlier = |kept: &mut FirstSeen| {
            if first.0 < kept.0 {
                *kept = first;
            }
        };
        match self {
            DistinctValues::Sorted(values) => match values.binary_search_by_key(&value, |v| v.0) {
                Ok(i) => earlier(&mut values[i].1),
                Err(_) if values.len() == Self::SORTED_MAX => {
                    let mut map: HashMap<u64, FirstSeen, Prehashed> =
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
                .map(|i| values[i].1),
            DistinctValues::Hashed(map) => map.get(&value).copied(),
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
            DistinctValues::Sorted(values) => Box::new(values.iter().copied()),
            DistinctValues::Hashed(map) => Box::new(map.iter().map(|(&v, &f)| (v, f))),
        }
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

/// A map from value to first sighting, as the hash map it replaced was written
/// (snapshots and journaled hand-overs stay readable).
impl Serialize for DistinctValues {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        // With its length first, as for event ids.
        let mut map = serializer.serialize_map(Some(self.len()))?;
        for (value, first) in self.iter() {
            map.serialize_entry(&value, &first)?;
        }
        map.end()
    }
}

impl<'de> Deserialize<'de> for DistinctValues {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let map = HashMap::<u64, FirstSeen, Prehashed>::deserialize(deserializer)?;
        Ok(if map.len() > Self::SORTED_MAX {
            DistinctValues::Hashed(Box::new(map))
        } else {
            let mut values: ThinVec<(u64, FirstSeen)> = map.into_iter().collect();
            values.sort_unstable_by_key(|v| v.0);
            DistinctValues::Sorted(values)
        })
    }
}

/// Quantities per catalog version, ascending by version; nearly always one span, kept
/// in place (more: behind one pointer).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Spans {
    One((VersionIdx, Decimal)),
    Many(ThinVec<(VersionIdx, Decimal)>),
}

/// Applying a reading would overflow the aggregate's 28 significant digits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("the meter's aggregate would overflow (more than 28 significant digits)")]
pub struct Overflow;

impl Spans {
    fn add(&mut self, version: VersionIdx, quantity: Decimal) -> Result<(), Overflow> {
        match self {
            Spans::One((v, q)) if *v == version => {
                *q = q.checked_add(quantity).ok_or(Overflow)?;
            }
            Spans::One(first) => {
                let mut spans = thin_vec::thin_vec![*first, (version, quantity)];
                spans.sort_by_key(|s| s.0);
                *self = Spans::Many(spans);
            }
            Spans::Many(spans) => match spans.binary_search_by_key(&version, |s| s.0) {
                Ok(i) => spans[i].1 = spans[i].1.checked_add(quantity).ok_or(Overflow)?,
                Err(i) => spans.insert(i, (version, quantity)),
            },
        }
        Ok(())
    }

    /// The spans as a slice, ascending by version.
    pub fn as_slice(&self) -> &[(VersionIdx, Decimal)] {
        match self {
            Spans::One(pair) => std::slice::from_ref(pair),
            Spans::Many(spans) => spans,
        }
    }
}

impl MeterAggregate {
    /// The aggregate of a single reading.
    pub fn new(reading: &Reading) -> MeterAggregate {
        match reading.fold {
            Fold::Sum => MeterAggregate::Additive(Spans::One((reading.version, reading.quantity))),
            Fold::Count => MeterAggregate::Additive(Spans::One((reading.version, Decimal::ONE))),
            Fold::Max | Fold::Latest => MeterAggregate::Extreme(Box::new(Extreme {
                fold: reading.fold,
                quantity: reading.quantity,
                time: reading.time,
                tiebreak: reading.tiebreak,
                version: reading.version,
            })),
            Fold::Distinct => {
                let mut seen = DistinctValues::default();
                if let Some(value) = reading.dimension {
                    seen.see(value, (reading.time, reading.version));
                }
                MeterAggregate::Distinct(seen)
            }
        }
    }

    /// Folds one more reading in. Commutative and associative across readings.
    pub fn apply(&mut self, reading: &Reading) -> Result<(), Overflow> {
        match (self, reading.fold) {
            (MeterAggregate::Additive(spans), Fold::Sum) => spans.add(reading.version, reading.quantity),
            (MeterAggregate::Additive(spans), Fold::Count) => spans.add(reading.version, Decimal::ONE),
            (MeterAggregate::Extreme(extreme), fold @ (Fold::Max | Fold::Latest)) => {
                let Extreme {
                    quantity,
                    time,
                    tiebreak,
                    version,
                    ..
                } = &mut **extreme;
                // Max: the largest quantity wins; among equals, the earliest event.
                // Latest: the latest event wins; among equals, the larger fingerprint.
                let wins = if fold == Fold::Max {
                    (reading.quantity, std::cmp::Reverse(reading.time), reading.tiebreak)
                        > (*quantity, std::cmp::Reverse(*time), *tiebreak)
                } else {
                    (reading.time, reading.tiebreak, reading.quantity) > (*time, *tiebreak, *quantity)
                };
                if wins {
                    *quantity = reading.quantity;
                    *time = reading.time;
                    *tiebreak = reading.tiebreak;
                    *version = reading.version;
                }
                Ok(())
            }
            (MeterAggregate::Distinct(seen), Fold::Distinct) => {
                if let Some(value) = reading.dimension {
                    seen.see(value, (reading.time, reading.version));
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
        match (self, other) {
            (MeterAggregate::Additive(mine), MeterAggregate::Additive(theirs)) => {
                for &(version, quantity) in theirs.as_slice() {
                    mine.add(version, quantity)?;
                }
                Ok(())
            }
            (me @ MeterAggregate::Extreme(_), MeterAggregate::Extreme(theirs)) => {
                // Replaying the other extreme as a reading keeps the same winner rules.
                me.apply(&Reading {
                    fold: theirs.fold,
                    quantity: theirs.quantity,
                    time: theirs.time,
                    version: theirs.version,
                    tiebreak: theirs.tiebreak,
                    dimension: None,
                })
            }
            (MeterAggregate::Distinct(mine), MeterAggregate::Distinct(theirs)) => {
                for (value, first) in theirs.iter() {
                    mine.see(value, first);
                }
                Ok(())
            }
            (me, other) => panic!("cannot merge {other:?} into {me:?}: different aggregations"),
        }
    }

    /// The period's quantity: what the invoice line shows.
    pub fn quantity(&self) -> Decimal {
        match self {
            MeterAggregate::Additive(Spans::One((_, q))) => *q,
            MeterAggregate::Additive(Spans::Many(spans)) => spans.iter().map(|s| s.1).sum(),
            MeterAggregate::Extreme(extreme) => extreme.quantity,
            MeterAggregate::Distinct(seen) => Decimal::from(seen.len()),
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
        match self {
            MeterAggregate::Additive(spans) => spans.as_slice().iter().for_each(|&(v, q)| add(v, q)),
            MeterAggregate::Extreme(extreme) => add(extreme.version, extreme.quantity),
            MeterAggregate::Distinct(seen) => seen.iter().for_each(|(_, (_, v))| add(v, Decimal::ONE)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(second: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_793_491_200 + second, 0).unwrap()
    }

    #[test]
    fn an_aggregate_takes_24_bytes_and_32_with_its_meter() {
        // Kept per account and meter in use: 1.24 of them an account in the ingest
        // benchmark, where 16 bytes less each is 20 bytes an account.
        assert_eq!(std::mem::size_of::<MeterAggregate>(), 24);
        assert_eq!(
            std::mem::size_of::<(super::super::catalog::MeterId, MeterAggregate)>(),
            32
        );
    }

    #[test]
    fn a_boxed_extreme_is_written_as_the_struct_variant_it_was() {
        // The form before the box, as snapshots and journaled hand-overs hold it.
        #[derive(Serialize, Deserialize, Debug, PartialEq)]
        enum Before {
            Additive(Spans),
            Extreme {
                fold: Fold,
                quantity: Decimal,
                time: DateTime<Utc>,
                tiebreak: u64,
                version: VersionIdx,
            },
        }
        let before = Before::Extreme {
            fold: Fold::Latest,
            quantity: Decimal::new(12_345, 2),
            time: at(7),
            tiebreak: 99,
            version: 2,
        };
        let now = MeterAggregate::Extreme(Box::new(Extreme {
            fold: Fold::Latest,
            quantity: Decimal::new(12_345, 2),
            time: at(7),
            tiebreak: 99,
            version: 2,
        }));
        assert_eq!(
            rmp_serde::to_vec(&now).unwrap(),
            rmp_serde::to_vec(&before).unwrap()
        );
        assert_eq!(
            serde_json::to_string(&now).unwrap(),
            serde_json::to_string(&before).unwrap()
        );
        let read: MeterAggregate = rmp_serde::from_slice(&rmp_serde::to_vec(&before).unwrap()).unwrap();
        assert_eq!(read, now);
        // Spans in place or behind a pointer are written as they were too.
        let many = Spans::Many(thin_vec::thin_vec![(0, Decimal::ONE), (3, Decimal::TWO)]);
        let json = serde_json::to_string(&Before::Additive(many.clone())).unwrap();
        assert_eq!(json, r#"{"Additive":{"Many":[[0,"1"],[3,"2"]]}}"#);
        assert_eq!(
            serde_json::from_str::<MeterAggregate>(&json).unwrap(),
            MeterAggregate::Additive(many)
        );
    }

    #[test]
    fn a_distinct_value_keeps_its_earliest_sighting_in_either_form() {
        // Value 7 seen at t=50 (version 1), then at t=10 (version 0), then at t=30:
        // it counts once, first seen at t=10 in version 0.
        for fill in [0, DistinctValues::SORTED_MAX] {
            let mut values: DistinctValues = (100..100 + fill as u64).map(|v| (v, (at(0), 0))).collect();
            values.see(7, (at(50), 1));
            values.see(7, (at(10), 0));
            values.see(7, (at(30), 0));
            assert_eq!(values.get(7), Some((at(10), 0)));
            assert_eq!(values.len(), fill + 1);
            assert_eq!(
                matches!(values, DistinctValues::Hashed(_)),
                fill == DistinctValues::SORTED_MAX,
                "{fill} values and one more"
            );
        }
    }

    #[test]
    fn distinct_values_are_equal_and_written_alike_whatever_their_form() {
        let pairs: Vec<(u64, FirstSeen)> = (0..40u64).map(|v| (v * 7919 % 97, (at(v as i64), 0))).collect();
        let small: DistinctValues = pairs[..5].iter().copied().collect();
        let large: DistinctValues = pairs.iter().copied().collect();
        assert!(matches!(small, DistinctValues::Sorted(_)));
        assert!(matches!(large, DistinctValues::Hashed(_)));
        let same_large = DistinctValues::Sorted(ThinVec::new());
        let same_large = pairs.iter().rev().fold(same_large, |mut d, &(v, f)| {
            d.see(v, f);
            d
        });
        assert_eq!(large, same_large);
        assert_ne!(small, large);
        // The hash map this replaced wrote a map: both forms read back from one, and
        // write one that the map reads, in snapshots (MessagePack) and in journaled
        // hand-overs (JSON).
        type Old = HashMap<u64, FirstSeen, Prehashed>;
        for values in [small, large] {
            let map: Old = values.iter().collect();
            let read: DistinctValues = rmp_serde::from_slice(&rmp_serde::to_vec(&map).unwrap()).unwrap();
            assert_eq!(read, values);
            let back: Old = rmp_serde::from_slice(&rmp_serde::to_vec(&values).unwrap()).unwrap();
            assert_eq!(back, map);
            let read: DistinctValues = serde_json::from_str(&serde_json::to_string(&map).unwrap()).unwrap();
            assert_eq!(read, values);
            let back: Old = serde_json::from_str(&serde_json::to_string(&values).unwrap()).unwrap();
            assert_eq!(back, map);
        }
    }
}
