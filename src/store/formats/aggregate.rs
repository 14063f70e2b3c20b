//! How a meter's aggregate is written: as the pair `(meter, aggregate)` it was before its
//! meter id moved into it, the aggregate as the enum [`Written`] (a sum's or count's
//! spans, the extreme of a `max` or `latest`, or the distinct values of a
//! `unique_count`), and distinct values as the map from value to first sighting that
//! the hash map they were kept in wrote.

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use thin_vec::ThinVec;

use crate::domain::meter::{
    AggregateParts, AggregatePartsRef, DistinctValues, Extreme, FirstSeen, MeterAggregate, VersionIdx,
};
use crate::domain::MeterId;

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

/// Read as the map it is written as, into the vector of its entries (one allocation, as
/// the hash map it was read into before), then kept in the form their number calls for.
impl<'de> Deserialize<'de> for DistinctValues {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer
            .deserialize_map(EntriesVisitor)
            .map(DistinctValues::from_unique)
    }
}

/// Reads a map from value to first sighting into its entries, as a map's `Deserialize`
/// reads one (the same input accepted, the same error when it is not a map).
struct EntriesVisitor;

impl<'de> serde::de::Visitor<'de> for EntriesVisitor {
    type Value = Vec<(u64, FirstSeen)>;

    fn expecting(&self, formatter: &mut std::fmt::Formatter) -> std::fmt::Result {
        formatter.write_str("a map")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        // No more than a megabyte ahead of the entries themselves, as serde's maps do.
        let cautious = (1 << 20) / std::mem::size_of::<(u64, FirstSeen)>();
        let mut entries = Vec::with_capacity(map.size_hint().unwrap_or(0).min(cautious));
        while let Some(entry) = map.next_entry()? {
            entries.push(entry);
        }
        Ok(entries)
    }
}

/// Quantities per catalog version, ascending by version, as an aggregate of a sum or
/// count is written: one span, or more.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Spans {
    One((VersionIdx, Decimal)),
    Many(ThinVec<(VersionIdx, Decimal)>),
}

/// An aggregate as it is written (snapshots, journaled hand-overs): the enum it was
/// before its meter id moved into it. The extreme, which the domain keeps boxed, is
/// written as the struct variant it was before it was boxed (the same bytes).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename = "MeterAggregate")]
pub enum Written {
    Additive(Spans),
    Extreme(Extreme),
    Distinct(DistinctValues),
}

/// [`Written`], borrowed from an aggregate: writing a snapshot copies nothing.
#[derive(Serialize)]
#[serde(rename = "MeterAggregate")]
enum WrittenRef<'a> {
    Additive(SpansRef<'a>),
    Extreme(Extreme),
    Distinct(&'a DistinctValues),
}

#[derive(Serialize)]
#[serde(rename = "Spans")]
enum SpansRef<'a> {
    One((VersionIdx, Decimal)),
    Many(&'a [(VersionIdx, Decimal)]),
}

impl<'a> WrittenRef<'a> {
    /// How `aggregate` is written: a single span as one, whichever form holds it.
    fn of(aggregate: &'a MeterAggregate) -> WrittenRef<'a> {
        match aggregate.parts() {
            AggregatePartsRef::OneSpan(span) => WrittenRef::Additive(SpansRef::One(span)),
            AggregatePartsRef::Spans(spans) => WrittenRef::Additive(SpansRef::Many(spans)),
            AggregatePartsRef::Extreme(extreme) => WrittenRef::Extreme(extreme),
            AggregatePartsRef::Distinct(values) => WrittenRef::Distinct(values),
        }
    }
}

/// The aggregate of `meter` as it was written.
pub fn from_written(meter: MeterId, written: Written) -> MeterAggregate {
    MeterAggregate::from_parts(
        meter,
        match written {
            Written::Additive(Spans::One(span)) => AggregateParts::OneSpan(span),
            Written::Additive(Spans::Many(spans)) => AggregateParts::Spans(spans),
            Written::Extreme(extreme) => AggregateParts::Extreme(extreme),
            Written::Distinct(values) => AggregateParts::Distinct(values),
        },
    )
}

/// The aggregate without its meter id, as it is written (for tests of the format).
#[cfg(test)]
pub(crate) fn written(aggregate: &MeterAggregate) -> Written {
    match WrittenRef::of(aggregate) {
        WrittenRef::Additive(SpansRef::One(span)) => Written::Additive(Spans::One(span)),
        WrittenRef::Additive(SpansRef::Many(spans)) => {
            Written::Additive(Spans::Many(spans.iter().copied().collect()))
        }
        WrittenRef::Extreme(extreme) => Written::Extreme(extreme),
        WrittenRef::Distinct(values) => Written::Distinct(values.clone()),
    }
}

/// Written as the pair `(meter, aggregate)` it was.
impl Serialize for MeterAggregate {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        (self.meter(), WrittenRef::of(self)).serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for MeterAggregate {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let (meter, written) = <(MeterId, Written)>::deserialize(deserializer)?;
        Ok(from_written(meter, written))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compact::prehashed::Prehashed;
    use crate::domain::meter::Fold;
    use chrono::{DateTime, Utc};
    use std::collections::HashMap;

    fn at(second: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_793_491_200 + second, 0).unwrap()
    }

    #[test]
    fn an_aggregate_is_written_as_the_pair_and_the_enum_it_was() {
        // The form before the meter id moved in, and before the extreme was boxed, as
        // snapshots and journaled hand-overs hold it: a pair of the meter id and an enum
        // whose extreme is a struct variant.
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
            Distinct(HashMap<u64, FirstSeen, Prehashed>),
        }
        // The fingerprint that breaks ties is kept to its high 32 bits.
        let extreme = Extreme {
            fold: Fold::Latest,
            quantity: Decimal::new(12_345, 2),
            time: at(7),
            tiebreak: 99 << 32,
            version: 2,
        };
        let distinct: DistinctValues = [(5, (at(3), 1)), (1, (at(4), 0))].into_iter().collect();
        let cases = [
            (
                from_written(MeterId(3), Written::Extreme(extreme.clone())),
                Before::Extreme {
                    fold: Fold::Latest,
                    quantity: Decimal::new(12_345, 2),
                    time: at(7),
                    tiebreak: 99 << 32,
                    version: 2,
                },
            ),
            (
                from_written(MeterId(1), Written::Additive(Spans::One((4, Decimal::TEN)))),
                Before::Additive(Spans::One((4, Decimal::TEN))),
            ),
            (
                from_written(
                    MeterId(0),
                    Written::Additive(Spans::Many(thin_vec::thin_vec![
                        (0, Decimal::ONE),
                        (3, Decimal::TWO)
                    ])),
                ),
                Before::Additive(Spans::Many(thin_vec::thin_vec![
                    (0, Decimal::ONE),
                    (3, Decimal::TWO)
                ])),
            ),
            (
                from_written(MeterId(7), Written::Distinct(distinct.clone())),
                Before::Distinct(distinct.iter().collect()),
            ),
        ];
        for (now, before) in cases {
            let before = (now.meter(), before);
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
            let read: MeterAggregate =
                serde_json::from_str(&serde_json::to_string(&before).unwrap()).unwrap();
            assert_eq!(read, now);
            assert_eq!(from_written(now.meter(), written(&now)), now);
        }
        let json = serde_json::to_string(&from_written(
            MeterId(2),
            Written::Additive(Spans::Many(thin_vec::thin_vec![
                (0, Decimal::ONE),
                (3, Decimal::TWO)
            ])),
        ))
        .unwrap();
        assert_eq!(json, r#"[2,{"Additive":{"Many":[[0,"1"],[3,"2"]]}}]"#);
        // Several spans written with one (never written so, but readable) are one span.
        let one: MeterAggregate = serde_json::from_str(r#"[2,{"Additive":{"Many":[[5,"3"]]}}]"#).unwrap();
        assert_eq!(
            one,
            from_written(MeterId(2), Written::Additive(Spans::One((5, Decimal::from(3)))))
        );
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
