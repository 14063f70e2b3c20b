//! How an account's usage is written: as the struct of a vector of aggregates and a set
//! of event ids it was before it became one block, the ids as the sequence of numbers
//! the hash set wrote.

use serde::{Deserialize, Serialize};

use crate::domain::meter::MeterAggregate;
use crate::domain::AccountUsage;

/// How [`AccountUsage`] is written: as the struct of a vector and a set it was before
/// its block (snapshots and journaled hand-overs stay readable both ways).
#[derive(Serialize, Deserialize)]
#[serde(rename = "AccountUsage")]
struct UsageWritten<M, S> {
    meters: M,
    seen: S,
}

/// The ids of an account, written as the sequence of numbers the hash set before them was.
struct SeenWritten<'a>(&'a AccountUsage);

impl Serialize for SeenWritten<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeSeq;
        // With its length first (the iterator does not know it, and the encoder would
        // otherwise gather the whole sequence before writing it).
        let mut seq = serializer.serialize_seq(Some(self.0.ids_len()))?;
        for id in self.0.ids() {
            seq.serialize_element(&id)?;
        }
        seq.end()
    }
}

impl Serialize for AccountUsage {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        UsageWritten {
            meters: self.meters(),
            seen: SeenWritten(self),
        }
        .serialize(serializer)
    }
}

/// Two aggregates of one meter are refused: they are not one account's usage.
impl<'de> Deserialize<'de> for AccountUsage {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let written = UsageWritten::<Vec<MeterAggregate>, Vec<u128>>::deserialize(deserializer)?;
        AccountUsage::restored(written.meters, written.seen).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::super::aggregate::{written, Written};
    use super::*;
    use crate::domain::meter::Reading;
    use crate::domain::usage::LargeIds;
    use crate::domain::MeterId;
    use rust_decimal::Decimal;

    #[test]
    fn usage_reads_back_as_it_was_written_whatever_the_form_of_its_ids() {
        // 3 ids: sorted in the block; 100: one hash set; 17,384: shards.
        let id = |i: u128| i.wrapping_mul(0x9E37_79B9_7F4A_7C15_F39C_C060_5CED_C835);
        let one = Reading::sum_for_tests(Decimal::ONE);
        for n in [3u128, 100, LargeIds::HASHED_MAX as u128 + 1000] {
            let mut usage = AccountUsage::default();
            for i in 0..n {
                usage.apply(id(i), MeterId(0), &one).unwrap();
            }
            let back: AccountUsage = rmp_serde::from_slice(&rmp_serde::to_vec(&usage).unwrap()).unwrap();
            assert_eq!(back, usage, "{n}");
            assert_eq!(back.ids_len() as u128, n);
        }
    }

    #[test]
    fn usage_is_written_as_the_vector_and_hash_set_it_was() {
        // The struct before the block: a vector of aggregates and a hash set of ids.
        #[derive(Serialize, Deserialize)]
        struct AccountUsage0 {
            meters: Vec<(MeterId, Written)>,
            seen: std::collections::HashSet<u128, crate::compact::prehashed::Prehashed>,
        }
        let mut usage = AccountUsage::default();
        usage
            .apply(9, MeterId(2), &Reading::sum_for_tests(Decimal::TWO))
            .unwrap();
        usage
            .apply(4, MeterId(1), &Reading::sum_for_tests(Decimal::ONE))
            .unwrap();
        let old = AccountUsage0 {
            meters: usage.meters().iter().map(|m| (m.meter(), written(m))).collect(),
            seen: [9u128, 4].into_iter().collect(),
        };
        let back: AccountUsage = rmp_serde::from_slice(&rmp_serde::to_vec(&old).unwrap()).unwrap();
        assert_eq!(back, usage);
        let back: AccountUsage = serde_json::from_str(&serde_json::to_string(&old).unwrap()).unwrap();
        assert_eq!(back, usage);
        // And what it writes now reads as that struct (ids in sorted order: one set).
        let read: AccountUsage0 = rmp_serde::from_slice(&rmp_serde::to_vec(&usage).unwrap()).unwrap();
        assert_eq!(read.meters, old.meters);
        assert_eq!(read.seen, old.seen);
        // Two aggregates of one meter are not one account's usage.
        let twice = AccountUsage0 {
            meters: vec![old.meters[0].clone(), old.meters[0].clone()],
            seen: Default::default(),
        };
        let err = serde_json::from_str::<AccountUsage>(&serde_json::to_string(&twice).unwrap()).unwrap_err();
        assert!(err.to_string().contains("meter 1 appears twice"), "{err}");
    }
}
