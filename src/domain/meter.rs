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
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum MeterAggregate {
    /// `sum` and `count`: the quantity per catalog version, versions ascending.
    Additive(Spans),
    /// `max` and `latest`: the one event that defines the aggregate.
    Extreme {
        /// `Max` or `Latest`.
        fold: Fold,
        quantity: Decimal,
        time: DateTime<Utc>,
        tiebreak: u64,
        version: VersionIdx,
    },
    /// `unique_count`: each distinct value with the earliest time it was seen and the
    /// version in force then. A value counts in the span where it first appeared.
    Distinct(HashMap<u64, (DateTime<Utc>, VersionIdx), Prehashed>),
}

/// Quantities per catalog version, ascending by version; nearly always one span.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Spans {
    One((VersionIdx, Decimal)),
    Many(Vec<(VersionIdx, Decimal)>),
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
                let mut spans = vec![*first, (version, quantity)];
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
            Fold::Max | Fold::Latest => MeterAggregate::Extreme {
                fold: reading.fold,
                quantity: reading.quantity,
                time: reading.time,
                tiebreak: reading.tiebreak,
                version: reading.version,
            },
            Fold::Distinct => {
                let mut seen = HashMap::with_hasher(Prehashed);
                if let Some(value) = reading.dimension {
                    seen.insert(value, (reading.time, reading.version));
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
            (
                MeterAggregate::Extreme {
                    quantity,
                    time,
                    tiebreak,
                    version,
                    ..
                },
                fold @ (Fold::Max | Fold::Latest),
            ) => {
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
                    let first = (reading.time, reading.version);
                    seen.entry(value)
                        .and_modify(|e| {
                            if first.0 < e.0 {
                                *e = first;
                            }
                        })
                        .or_insert(first);
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
            (
                me @ MeterAggregate::Extreme { .. },
                MeterAggregate::Extreme {
                    fold,
                    quantity,
                    time,
                    tiebreak,
                    version,
                },
            ) => {
                // Replaying the other extreme as a reading keeps the same winner rules.
                me.apply(&Reading {
                    fold: *fold,
                    quantity: *quantity,
                    time: *time,
                    version: *version,
                    tiebreak: *tiebreak,
                    dimension: None,
                })
            }
            (MeterAggregate::Distinct(mine), MeterAggregate::Distinct(theirs)) => {
                for (value, first) in theirs {
                    mine.entry(*value)
                        .and_modify(|e| {
                            if first.0 < e.0 {
                                *e = *first;
                            }
                        })
                        .or_insert(*first);
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
            MeterAggregate::Extreme { quantity, .. } => *quantity,
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
            MeterAggregate::Extreme {
                quantity, version, ..
            } => add(*version, *quantity),
            MeterAggregate::Distinct(seen) => seen.values().for_each(|&(_, v)| add(v, Decimal::ONE)),
        }
    }
}
