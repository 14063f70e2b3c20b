//! Tests of usage events and an account's usage (usage.rs): validation, each id applied once, merging.

use super::*;
use proptest::prelude::*;
use rust_decimal_macros::dec;

fn raw() -> RawUsageEvent {
    RawUsageEvent {
        id: Some("evt-1".into()),
        account: Some("222222222222".into()),
        meter: Some("data_transfer_out.gb".into()),
        quantity: Some(RawQuantity::Text("4096".into())),
        time: Some("2026-11-03T10:00:00Z".into()),
        dimensions: None,
    }
}

fn errors_of(r: RawUsageEvent) -> Vec<String> {
    UsageEvent::validate(r)
        .unwrap_err()
        .into_iter()
        .map(|e| e.to_string())
        .collect()
}

#[test]
fn valid_event() {
    let e = UsageEvent::validate(raw()).unwrap();
    assert_eq!(e.quantity, dec!(4096));
    assert_eq!(e.time.to_rfc3339(), "2026-11-03T10:00:00+00:00");
}

#[test]
fn quantities_parse_exactly() {
    // 0.1 stays one tenth: no binary float on the way.
    let q = parse_quantity(&RawQuantity::Number("0.1".into())).unwrap();
    assert_eq!(q, dec!(0.1));
    assert_eq!(
        parse_quantity(&RawQuantity::Number("1e3".into())).unwrap(),
        dec!(1000)
    );
    assert_eq!(parse_quantity(&RawQuantity::Text("0".into())).unwrap(), dec!(0));
}

#[test]
fn bad_quantities_are_named() {
    for (q, needle) in [
        (RawQuantity::Number("-1".into()), "must not be negative"),
        (RawQuantity::Text("NaN".into()), "finite"),
        (RawQuantity::Text("inf".into()), "finite"),
        (RawQuantity::Text("ten".into()), "not a decimal number"),
        (RawQuantity::Other("a boolean"), "not a boolean"),
        (RawQuantity::Text("1000000000000001".into()), "at most"),
        (RawQuantity::Text("0.0000000000001".into()), "decimal places"),
    ] {
        let mut r = raw();
        r.quantity = Some(q);
        let errs = errors_of(r);
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert!(
            errs[0].starts_with("quantity: ") && errs[0].contains(needle),
            "{errs:?}"
        );
    }
}

#[test]
fn missing_and_bad_fields_are_all_reported() {
    let r = RawUsageEvent {
        time: Some("yesterday".into()),
        ..RawUsageEvent::default()
    };
    let errs = errors_of(r);
    assert_eq!(
        errs.iter()
            .map(|e| e.split(':').next().unwrap())
            .collect::<Vec<_>>(),
        ["id", "account", "meter", "quantity", "time"]
    );
    assert!(errs[4].contains("RFC 3339"));
}

/// How `usage` keeps its ids: 0 sorted in its block, 1 one hash set, 2 shards.
fn form(usage: &AccountUsage) -> usize {
    match usage.block.tail() {
        Tail::Items(_) => 0,
        Tail::Large(LargeIds::Hashed(_)) => 1,
        Tail::Large(LargeIds::Sharded(_)) => 2,
    }
}

/// Usage with exactly the ids `ids` seen, and no aggregates.
fn seen(ids: impl IntoIterator<Item = u128>) -> AccountUsage {
    let mut usage = AccountUsage::default();
    usage.set_ids(ids.into_iter().collect());
    usage
}

#[test]
fn event_ids_keep_every_id_once_across_the_switch_to_a_hash_set() {
    let mut ids = AccountUsage::default();
    // Descending, so every insert lands at the front of the sorted list.
    let all: Vec<u128> = (0..200u128).rev().map(|i| i * 7 + (1 << 90)).collect();
    for (n, &id) in all.iter().enumerate() {
        assert!(ids.insert_id(id), "{n}");
        assert!(!ids.insert_id(id), "{n} twice");
        assert_eq!(ids.ids_len(), n + 1);
        assert_eq!(form(&ids) == 0, n < AccountUsage::SORTED_MAX, "{n}");
    }
    assert!(all.iter().all(|&id| ids.has_seen(id)));
    assert!(!ids.has_seen(3));
}

#[test]
fn a_large_set_of_ids_spreads_over_shards_and_keeps_every_id_once() {
    let mut ids = AccountUsage::default();
    let n = LargeIds::HASHED_MAX as u128 + 1000;
    // Fingerprints spread over the whole range, as real ones are.
    let id = |i: u128| i.wrapping_mul(0x9E37_79B9_7F4A_7C15_F39C_C060_5CED_C835);
    for i in 0..n {
        assert!(ids.insert_id(id(i)));
    }
    assert_eq!(form(&ids), 2);
    assert_eq!(ids.ids_len(), n as usize);
    // Prefetching is a hint that reads only within the set, for any id.
    ids.prefetch();
    (0..n + 10).for_each(|i| ids.prefetch_ids(id(i)));
    assert!((0..n).all(|i| ids.has_seen(id(i)) && !ids.insert_id(id(i))));
    assert!(!ids.has_seen(id(n)));
    let back = AccountUsage::restored(ids.meters().to_vec(), ids.ids().collect()).unwrap();
    assert_eq!(form(&back), 2);
    assert_eq!(back, ids);
}

#[test]
fn event_ids_equal_as_sets_and_read_back_from_a_sequence() {
    let small = seen([5u128, 1, 3, 3]);
    assert!(matches!(small.block.tail(), Tail::Items(ids) if ids == [1, 3, 5].map(Fp96::new)));
    let big = seen(0..100u128);
    assert_eq!(form(&big), 1);
    let mut grown = AccountUsage::default();
    (0..100u128).rev().for_each(|i| {
        grown.insert_id(i);
    });
    assert_eq!(big, grown);
    // Prefetching reads only within the set, in every form, for any id.
    for set in [&AccountUsage::default(), &small, &big] {
        set.prefetch();
        [0, 1, 3, 99, 100, u128::MAX]
            .into_iter()
            .for_each(|id| set.prefetch_ids(id));
    }
    let back = AccountUsage::restored(big.meters().to_vec(), big.ids().collect()).unwrap();
    assert_eq!(back, big);
}

#[test]
fn usage_restored_has_one_aggregate_a_meter_in_order() {
    // Aggregates of meters 2 and 1 (in that order) and ids 9, 4, 4: meters 1 and 2,
    // ids 4 and 9. Two of meter 1: refused, naming it.
    let one = MeterAggregate::new(MeterId(1), &Reading::sum_for_tests(Decimal::ONE));
    let two = MeterAggregate::new(MeterId(2), &Reading::sum_for_tests(Decimal::TWO));
    let usage = AccountUsage::restored(vec![two.clone(), one.clone()], vec![9, 4, 4]).unwrap();
    assert_eq!(usage.meters(), [one.clone(), two]);
    assert_eq!(usage.ids_len(), 2);
    assert!(usage.has_seen(4) && usage.has_seen(9));
    let err = AccountUsage::restored(vec![one.clone(), one], vec![]).unwrap_err();
    assert_eq!(err, MeterTwice(MeterId(1)));
    assert_eq!(
        err.to_string(),
        "the aggregate of meter 1 appears twice in one account's usage"
    );
}

#[test]
fn ids_are_told_apart_by_their_low_96_bits_in_every_form() {
    // A journal or snapshot written before ids were narrowed carries all 128 bits of
    // each fingerprint; the same ids arriving now carry 96. Every form takes both as
    // one id, and a set read back from the old bits equals the one built anew.
    let wide =
        |i: u128| (i.wrapping_mul(0x9E37_79B9_7F4A_7C15_F39C_C060_5CED_C835) | (0xdead_beef << 96)) ^ i;
    for n in [3u128, 100, LargeIds::HASHED_MAX as u128 + 10] {
        let mut set = AccountUsage::default();
        for i in 0..n {
            assert!(set.insert_id(wide(i)));
        }
        for i in 0..n {
            assert!(set.has_seen(wide(i) & Fp96::MASK), "{n}: {i}");
            assert!(!set.insert_id(wide(i) & Fp96::MASK), "{n}: {i} is a duplicate");
        }
        assert_eq!(set.ids_len() as u128, n);
        assert!(set.ids().all(|id| id <= Fp96::MASK));
        let narrow = seen((0..n).map(|i| wide(i) & Fp96::MASK));
        let read = seen((0..n).map(wide));
        assert_eq!(read, narrow);
        assert_eq!(set, narrow);
        let mut emptied = set.clone();
        (0..n).for_each(|i| emptied.remove_id(wide(i) & Fp96::MASK));
        assert_eq!(emptied.ids_len(), 0, "{n}");
        assert!((0..n).all(|i| !emptied.has_seen(wide(i))));
    }
}

proptest! {
    /// Guessing and stepping finds what a binary search finds, for evenly spread ids
    /// (fingerprints) and for bunched ones alike.
    #[test]
    fn finding_an_id_agrees_with_binary_search(
        ids in prop::collection::vec(any::<u128>(), 0..80),
        bunched in any::<bool>(),
        probe in any::<u128>(),
    ) {
        let mut ids: Vec<Fp96> = ids.into_iter().map(|id| Fp96::new(if bunched { id % 100 } else { id })).collect();
        ids.sort_unstable();
        ids.dedup();
        for id in ids.iter().copied().chain([probe, probe % 100, 0, u128::MAX].map(Fp96::new)) {
            prop_assert_eq!(find_sorted(&ids, id), ids.binary_search(&id));
        }
    }
}

#[test]
fn an_accounts_usage_record_stays_within_its_memory_budget() {
    // Every account carries one: a word, and nothing else until it has usage
    // (BENCHMARKS.md counts on it).
    assert_eq!(std::mem::size_of::<AccountUsage>(), 8);
    assert!(AccountUsage::default().block.as_ptr().is_null());
    // With usage: one block of an 8-byte header, 16 bytes an aggregate (its meter id
    // included) and 12 an id (here 8 + 16 + 2 × 12 = 48 bytes, asked of the
    // allocator as one).
    let mut usage = AccountUsage::default();
    usage
        .apply(1, MeterId(0), &Reading::sum_for_tests(Decimal::ONE))
        .unwrap();
    usage
        .apply(2, MeterId(0), &Reading::sum_for_tests(Decimal::ONE))
        .unwrap();
    assert_eq!(usage.meters().len(), 1);
    let Tail::Items(ids) = usage.block.tail() else {
        unreachable!()
    };
    let end = ids.as_ptr_range().end as usize;
    assert_eq!(end - usage.block.as_ptr() as usize, 8 + 16 + 2 * 12);
}

#[test]
fn merging_usage_unites_ids_and_adds_aggregates_in_every_form() {
    // Ids spread like fingerprints (xxh3 of their number). `mine` has ids 0..a,
    // `theirs` has ids b..c (b ≤ a ≤ c), each with 1 unit of a sum meter: the union
    // has the ids of both once (c of them), and the sum is a + (c − b), since each
    // side applied its own events. Sizes cover sorted, hashed and sharded forms,
    // and a large set merged into a small one and into a large one.
    let id = |n: u64| xxhash_rust::xxh3::xxh3_128(&n.to_le_bytes());
    let meter = MeterId(0);
    for (a, b, c) in [(3, 2, 10), (40, 30, 70), (5, 0, 20_000), (20_000, 10_000, 50_000)] {
        let mut mine = AccountUsage::default();
        (0..a).for_each(|n| {
            mine.apply(id(n), meter, &Reading::sum_for_tests(Decimal::ONE))
                .unwrap();
        });
        let mut theirs = AccountUsage::default();
        (b..c).for_each(|n| {
            theirs
                .apply(id(n), meter, &Reading::sum_for_tests(Decimal::ONE))
                .unwrap();
        });
        mine.merge(&theirs).unwrap();
        // b ≤ a ≤ c: the union is 0..c.
        assert_eq!(mine.ids_len() as u64, c, "{a} {b} {c}");
        assert!((0..c).all(|n| mine.has_seen(id(n))));
        assert!(!mine.has_seen(id(c)));
        assert_eq!(mine.meters()[0].quantity(), Decimal::from(a + c - b));
    }
}

#[test]
fn an_account_applies_at_most_its_limit_of_distinct_events() {
    let reading = |q: i64| Reading::sum_for_tests(Decimal::from(q));
    let meter = MeterId(0);
    let mut usage = AccountUsage::default();
    // A limit of 2: events 1 and 2 apply (1 + 2 = 3 units), event 3 is refused and
    // changes nothing, and event 1 sent again is still a duplicate, not a refusal.
    assert_eq!(usage.apply_within(2, 1, meter, &reading(1)), Ok(Applied::New));
    assert_eq!(usage.apply_within(2, 2, meter, &reading(2)), Ok(Applied::New));
    let before = usage.clone();
    assert_eq!(usage.apply_within(2, 3, meter, &reading(4)), Ok(Applied::Full));
    assert_eq!(usage, before);
    assert_eq!(
        usage.apply_within(2, 1, meter, &reading(1)),
        Ok(Applied::Duplicate)
    );
    assert_eq!(usage.meters()[0].quantity(), Decimal::from(3));
    assert!(!usage.has_seen(3));
}

#[test]
fn an_event_that_would_overflow_leaves_no_trace() {
    let reading = Reading::sum_for_tests;
    let meter = MeterId(0);
    let mut usage = AccountUsage::default();
    assert_eq!(usage.apply(1, meter, &reading(Decimal::MAX)), Ok(Applied::New));
    let before = usage.clone();
    // The id goes in before the aggregate is tried; the overflow takes it out again,
    // so the event is neither applied nor "seen", and its retry is tried again.
    assert!(usage.apply(2, meter, &reading(Decimal::ONE)).is_err());
    assert_eq!(usage, before);
    assert!(!usage.has_seen(2));
    assert!(usage.apply(2, meter, &reading(Decimal::ONE)).is_err());
}

/// Inserts and removals in a seeded random order, across both switches (to a hash
/// set past 64 ids, to shards past 16,384), agree with a plain hash set at every step.
#[test]
fn event_ids_agree_with_a_plain_set_through_inserts_and_removals() {
    use rand::{Rng, SeedableRng};
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
    let spread = |i: u128| i.wrapping_mul(0x9E37_79B9_7F4A_7C15_F39C_C060_5CED_C835);
    let mut ids = AccountUsage::default();
    let mut model = std::collections::HashSet::new();
    let mut kinds = [false; 3];
    for step in 0..45_000 {
        let id = spread(rng.random_range(0..30_000u128));
        if rng.random_range(0..10) < 8 {
            assert_eq!(ids.insert_id(id), model.insert(id), "insert at step {step}");
        } else {
            ids.remove_id(id);
            model.remove(&id);
        }
        assert_eq!(ids.ids_len(), model.len(), "step {step}");
        assert_eq!(ids.has_seen(id), model.contains(&id), "step {step}");
        kinds[form(&ids)] = true;
    }
    assert_eq!(kinds, [true; 3], "every form was visited");
    assert!(model.iter().all(|&id| ids.has_seen(id)));
    assert_eq!(ids.ids().count(), model.len());
}

#[test]
fn max_quantity_constant_is_ten_to_the_fifteenth() {
    assert_eq!(MAX_QUANTITY, dec!(1000000000000000));
}
