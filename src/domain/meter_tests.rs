//! Tests of the aggregations and their aggregates (meter.rs), numbers by hand.

use super::*;

fn at(second: i64) -> DateTime<Utc> {
    DateTime::from_timestamp(1_793_491_200 + second, 0).unwrap()
}

#[test]
fn an_aggregate_takes_16_bytes_with_its_meter() {
    // Kept per account and meter in use: 1.24 of them an account in the ingest
    // benchmark. The pair of meter id and aggregate it replaced took 32; with its
    // quantity a `Decimal` in place, it took 24.
    assert_eq!(std::mem::size_of::<MeterAggregate>(), 16);
}

#[test]
fn a_sum_moves_to_spans_when_a_second_version_comes_and_keeps_its_total() {
    // 2 units in version 1, then 3 in version 0, then 4 in version 1:
    // spans (0, 3) and (1, 6), quantity 9.
    let reading = |version, units| Reading {
        fold: Fold::Sum,
        quantity: Decimal::from(units),
        time: at(0),
        version,
        tiebreak: 0,
        dimension: None,
    };
    let mut sum = MeterAggregate::new(MeterId(4), &reading(1, 2));
    assert!(matches!(sum.0, Repr::Small { .. }));
    sum.apply(&reading(0, 3)).unwrap();
    sum.apply(&reading(1, 4)).unwrap();
    assert_eq!(sum.meter(), MeterId(4));
    assert_eq!(sum.quantity(), Decimal::from(9));
    let mut spans = Vec::new();
    sum.add_spans_into(&mut spans);
    assert_eq!(spans, [Decimal::from(3), Decimal::from(6)]);
    // Merged into an aggregate of one span, the same spans come out.
    let mut other = MeterAggregate::new(MeterId(4), &reading(1, 1));
    other.merge(&sum).unwrap();
    let mut merged = Vec::new();
    other.add_spans_into(&mut merged);
    assert_eq!(merged, [Decimal::from(3), Decimal::from(7)]);
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
fn a_distinct_value_takes_16_bytes_and_its_sighting_is_kept_to_the_second() {
    assert_eq!(std::mem::size_of::<(u64, Seen)>(), 16);
    // Seen at 12.9 s (version 1), then at 12.2 s (version 1): the same second, so
    // the first sighting stays, read back as 12 s. Then at 11.5 s (version 0):
    // earlier, so it wins, read back as 11 s.
    let at_ms = |ms: i64| DateTime::from_timestamp_millis(1_793_491_200_000 + ms).unwrap();
    let mut values = DistinctValues::default();
    values.see(7, (at_ms(12_900), 1));
    values.see(7, (at_ms(12_200), 1));
    assert_eq!(values.get(7), Some((at(12), 1)));
    values.see(7, (at_ms(11_500), 0));
    assert_eq!(values.get(7), Some((at(11), 0)));
    assert_eq!(values.len(), 1);
}

#[test]
fn distinct_values_read_back_take_the_form_their_number_calls_for() {
    // 5 values, listed unsorted: sorted. 40: hashed. 40 entries of which 10 list a
    // value again, later sightings last: 30 values, sorted, each with its last
    // sighting (as a map read keeps its last entry).
    let pairs: Vec<(u64, FirstSeen)> = (0..40u64).map(|v| (v * 7919 % 97, (at(v as i64), 0))).collect();
    let small = DistinctValues::from_unique(pairs[..5].to_vec());
    assert!(matches!(small, DistinctValues::Sorted(_)));
    assert_eq!(small, pairs[..5].iter().copied().collect());
    let large = DistinctValues::from_unique(pairs.clone());
    assert!(matches!(large, DistinctValues::Hashed(_)));
    assert_eq!(large, pairs.iter().copied().collect());
    let mut twice = pairs[..30].to_vec();
    twice.extend(pairs[..10].iter().map(|&(v, _)| (v, (at(100), 1))));
    let read = DistinctValues::from_unique(twice);
    assert!(matches!(read, DistinctValues::Sorted(_)));
    assert_eq!(read.len(), 30);
    assert_eq!(read.get(pairs[0].0), Some((at(100), 1)));
    assert_eq!(read.get(pairs[10].0), Some(pairs[10].1));
    let mut twice = pairs.clone();
    twice.push((pairs[3].0, (at(100), 1)));
    let read = DistinctValues::from_unique(twice);
    assert!(matches!(read, DistinctValues::Hashed(_)));
    assert_eq!(read.get(pairs[3].0), Some((at(100), 1)));
}

#[test]
fn an_extreme_is_kept_in_32_bytes_and_gives_back_what_it_was_given() {
    assert_eq!(std::mem::size_of::<KeptExtreme>(), 32);
    let leap = chrono::NaiveDate::from_ymd_opt(2026, 12, 31)
        .unwrap()
        .and_hms_nano_opt(23, 59, 59, 1_500_000_000)
        .unwrap()
        .and_utc();
    for (fold, quantity, time, version) in [
        (Fold::Max, Decimal::new(-12_345, 28), at(1), 0),
        (Fold::Latest, Decimal::MAX, leap, u16::MAX),
        (Fold::Max, Decimal::MIN, DateTime::<Utc>::MIN_UTC, 7),
        (Fold::Latest, Decimal::ZERO, DateTime::<Utc>::MAX_UTC, 1),
    ] {
        let e = Extreme {
            fold,
            quantity,
            time,
            tiebreak: 0xdead_beef_0123_4567,
            version,
        };
        let kept = KeptExtreme::from_extreme(&e).extreme();
        assert_eq!((kept.fold, kept.time, kept.version), (fold, time, version));
        assert_eq!(kept.quantity.to_string(), quantity.to_string());
        assert_eq!(kept.tiebreak, 0xdead_beef_0000_0000, "the high 32 bits");
    }
}

/// Latest: among events of the same time, the larger fingerprint's high 32 bits win
/// whatever the order; equal there, the larger quantity.
#[test]
fn ties_are_decided_the_same_in_any_order() {
    let latest = |quantity: i64, tiebreak: u64| Reading {
        fold: Fold::Latest,
        quantity: Decimal::from(quantity),
        time: at(5),
        version: 0,
        tiebreak,
        dimension: None,
    };
    let readings = [
        latest(1, 3 << 32),
        latest(2, (3 << 32) | 9),
        latest(3, 2 << 32 | u64::from(u32::MAX)),
    ];
    let mut results = Vec::new();
    for order in [[0, 1, 2], [2, 1, 0], [1, 0, 2], [2, 0, 1]] {
        let mut a = MeterAggregate::new(MeterId(0), &readings[order[0]]);
        a.apply(&readings[order[1]]).unwrap();
        a.apply(&readings[order[2]]).unwrap();
        results.push(a);
    }
    assert!(results.windows(2).all(|w| w[0] == w[1]));
    // 1 and 2 tie on the high bits (3): the larger quantity, 2, wins.
    assert_eq!(results[0].quantity(), Decimal::from(2));
}

fn sum_of(version: VersionIdx, quantity: Decimal) -> Reading {
    Reading {
        fold: Fold::Sum,
        quantity,
        time: at(0),
        version,
        tiebreak: 0,
        dimension: None,
    }
}

#[test]
fn a_small_sum_keeps_the_scale_decimal_gives() {
    // 1.5 + 2.25 = 3.75 (scale 2); + 1 = 4.75; 1.50 + 1 = 2.50, as Decimal adds.
    let mut a = MeterAggregate::new(MeterId(1), &sum_of(0, Decimal::new(15, 1)));
    a.apply(&sum_of(0, Decimal::new(225, 2))).unwrap();
    assert!(matches!(
        a.0,
        Repr::Small {
            scale: 2,
            mantissa: 375,
            ..
        }
    ));
    a.apply(&sum_of(0, Decimal::ONE)).unwrap();
    assert_eq!(a.quantity().to_string(), "4.75");
    let mut b = MeterAggregate::new(MeterId(1), &sum_of(0, Decimal::new(150, 2)));
    b.apply(&sum_of(0, Decimal::ONE)).unwrap();
    assert_eq!(b.quantity().to_string(), "2.50");
    // A zero leaves the other side's scale, as Decimal does: 1 + 0.00 = 1, 0.0 + 1 = 1.
    let mut c = MeterAggregate::new(MeterId(1), &sum_of(0, Decimal::ONE));
    c.apply(&sum_of(0, Decimal::new(0, 2))).unwrap();
    assert_eq!(
        c.quantity().to_string(),
        (Decimal::ONE + Decimal::new(0, 2)).to_string()
    );
    assert_eq!(c.quantity().to_string(), "1");
    let mut d = MeterAggregate::new(MeterId(1), &sum_of(0, Decimal::new(0, 1)));
    d.apply(&sum_of(0, Decimal::ONE)).unwrap();
    assert_eq!(d.quantity().to_string(), "1");
}

#[test]
fn a_sum_past_18_digits_becomes_a_decimal_and_stays_equal_to_one() {
    // 9·10¹⁸ fits in 64 bits; 9·10¹⁸ + 10¹⁸ = 10¹⁹ does not: the span is kept as a
    // Decimal, still one span, taken apart as one, equal to the same sum built at once.
    let big = Decimal::from(9_000_000_000_000_000_000u64);
    let mut a = MeterAggregate::new(MeterId(2), &sum_of(3, big));
    assert!(matches!(a.0, Repr::Small { .. }));
    a.apply(&sum_of(3, Decimal::from(1_000_000_000_000_000_000u64)))
        .unwrap();
    assert!(matches!(&a.0, Repr::Spans { spans, .. } if spans.len() == 1));
    let ten = Decimal::from(10_000_000_000_000_000_000u128);
    assert_eq!(a.quantity(), ten);
    assert_eq!(a.parts(), AggregatePartsRef::OneSpan((3, ten)));
    let b = MeterAggregate::from_parts(MeterId(2), AggregateParts::OneSpan((3, ten)));
    assert_eq!(a, b);
    // A small value read back is small again.
    let c = MeterAggregate::from_parts(MeterId(2), AggregateParts::Spans(thin_vec::thin_vec![(3, big)]));
    assert!(matches!(c.0, Repr::Small { .. }));
}

proptest::proptest! {
    /// Whatever quantities and versions (some too long for 64 bits, scales 0–8),
    /// the aggregate's spans and quantity are the `Decimal` sums, scale included.
    #[test]
    fn sums_are_the_decimal_sums(
        readings in proptest::collection::vec((0u16..3, 0i64..1_000_000_000, 0u32..9, 0u8..20), 1..40)
    ) {
        // One reading in twenty is too long for 64 bits, one in twenty a zero (of
        // any scale: `Decimal` keeps the other operand's scale when adding one).
        let quantity = |m: i64, scale: u32, kind: u8| {
            let m = match kind {
                0 => i128::from(m) * 1_000_000_000_000,
                1 => 0,
                _ => i128::from(m),
            };
            Decimal::from_i128_with_scale(m, scale)
        };
        let (v0, m0, s0, h0) = readings[0];
        let mut a = MeterAggregate::new(MeterId(0), &sum_of(v0, quantity(m0, s0, h0)));
        let mut expected = std::collections::BTreeMap::new();
        *expected.entry(v0).or_insert(Decimal::ZERO) += quantity(m0, s0, h0);
        for &(v, m, s, h) in &readings[1..] {
            a.apply(&sum_of(v, quantity(m, s, h))).unwrap();
            *expected.entry(v).or_insert(Decimal::ZERO) += quantity(m, s, h);
        }
        let spans: Vec<(VersionIdx, String)> = a.spans().map(|(v, q)| (v, q.to_string())).collect();
        let want: Vec<(VersionIdx, String)> = expected.iter().map(|(v, q)| (*v, q.to_string())).collect();
        proptest::prop_assert_eq!(spans, want);
        proptest::prop_assert_eq!(a.quantity(), expected.values().copied().sum::<Decimal>());
    }
}
