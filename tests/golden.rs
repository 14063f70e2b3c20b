//! Golden files: the exact bytes the domain's packed values are written as, in snapshots
//! (MessagePack, as `EntityCodec` writes it) and in journaled commands (JSON, as account
//! hand-overs carry them). Each test builds its value by hand, writes it and checks the
//! bytes are the file's, then reads the file and checks it gives the value back.
//!
//! A golden file is never re-blessed to accept a format change: the files are what
//! snapshots and journals already on disk hold, and they must stay readable forever. A
//! new format gets a new file beside the old one, and the old one must still decode.
//! (Blessing is for adding a file: `TALLYMAN_BLESS=1 cargo test --test golden` writes
//! every file anew, and a missing one is written on the first run.)
//!
//! The entries of a set kept hashed (distinct values past their sorted form, an
//! account's ids past theirs) are written in the set's order, which readers do not
//! depend on: a change of the hash tables alone could reorder them. That is the one
//! difference here that is no format change; a reordered file must still decode here.

use std::path::PathBuf;

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use tallyman::domain::customer::CustomerSpec;
use tallyman::domain::meter::{DistinctValues, Fold, Reading, VersionIdx};
use tallyman::domain::usage::event_fingerprint;
use tallyman::domain::{AccountUsage, Currency, Customer, MeterId};

/// Compares `written` with the golden file `name` (writing it, when it is missing or
/// `TALLYMAN_BLESS=1`), and gives the file's bytes back.
fn golden(name: &str, written: &[u8]) -> Vec<u8> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(name);
    let bless = std::env::var("TALLYMAN_BLESS").is_ok_and(|v| v == "1");
    if bless || !path.exists() {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, written).unwrap();
    }
    let file = std::fs::read(&path).unwrap();
    assert!(
        file == written,
        "{name}: the bytes written are not the golden file's: a format changed.\n\
         Never re-bless a golden file to accept that: give the new format a new file, \
         and keep the old one decoding.\n written: {written:02x?}\n file:    {file:02x?}"
    );
    file
}

fn usd() -> Currency {
    Currency::from_code("USD").unwrap()
}

/// 2026-11-01T00:00:00Z plus `seconds`.
fn at(seconds: i64) -> DateTime<Utc> {
    DateTime::from_timestamp(1_793_491_200 + seconds, 0).unwrap()
}

/// A customer with every term, and one with none.
///
/// - `acme`: paid by 111111111111, accounts 111111111111, 222222222222, 333333333333
///   and a 20-byte id (kept out of line); profile `enterprise`, tax rate 0.2,
///   commitment 1000.00, budget 5000.00 at 50/80/100 %, account budgets 222222222222:
///   500.00 at 80 % and 111111111111: 700.00 at 100 % (written sorted by account), a
///   10 % discount `edp` on `compute.hours`, a 5 % discount `loyal` on the whole bill,
///   credits `promo` 250.00 until 2026-12-31 on `storage.gb` (granted 1) and `goodwill`
///   20.50 on anything without expiry (granted 2).
/// - `solo`: paid by 444444444444, its only account, profile `standard`, no tax,
///   nothing else.
fn customers() -> Vec<Customer> {
    let acme: CustomerSpec = serde_json::from_str(
        r#"{"id": "acme", "payer": "111111111111",
            "accounts": ["333333333333", "222222222222", "an-account-of-20-byt"],
            "profile": "enterprise", "tax_rate": "0.2", "commitment": "1000.00",
            "budget": {"amount": "5000.00", "thresholds": [50, 80, 100]},
            "account_budgets": {"222222222222": {"amount": "500.00", "thresholds": [80]},
                                "111111111111": {"amount": "700.00", "thresholds": [100]}},
            "discounts": [{"id": "edp", "percent": "10", "meters": ["compute.hours"]},
                          {"id": "loyal", "percent": "5"}],
            "credits": [{"id": "promo", "amount": "250.00", "expires": "2026-12-31",
                         "meters": ["storage.gb"], "granted": 1},
                        {"id": "goodwill", "amount": "20.50", "granted": 2}]}"#,
    )
    .unwrap();
    let solo = CustomerSpec::new("solo", "444444444444", vec![], "standard");
    vec![
        Customer::from_spec(acme, usd()).unwrap(),
        Customer::from_spec(solo, usd()).unwrap(),
    ]
}

fn reading(fold: Fold, quantity: Decimal, time: DateTime<Utc>, version: VersionIdx) -> Reading {
    Reading {
        fold,
        quantity,
        time,
        version,
        tiebreak: 0,
        dimension: None,
    }
}

/// Two accounts' usage, every form of aggregate and of ids among them.
///
/// The first: 58 events, ids `evt-0` … `evt-57` (xxh3 fingerprints, fewer than
/// `AccountUsage::SORTED_MAX` = 64: kept sorted):
/// - meter 0, a sum in one version: 1.5 + 2.25 = 3.75 in version 0;
/// - meter 1, a sum over versions: 2 in version 0, 3 + 4 = 7 in version 2;
/// - meter 2, a count: 2 events in version 1;
/// - meter 3, a max: 5 at +10 s, 7.25 at +20 s (tiebreak 0xAB << 32), 6 at +30 s, in
///   version 1: 7.25 at +20 s;
/// - meter 4, a latest: 4 at +30 s (tiebreak 0xCD << 32), 9 at +20 s, in version 0: 4;
/// - meter 5, distinct values 11, 12, 13 at +5, +6, +7 s, and 11 again at +1 s in
///   version 1 (earlier: it wins), fewer than `DistinctValues::SORTED_MAX` = 32;
/// - meter 6, distinct values 1000 … 1039, value 1000 + i first seen at +i s in version
///   0 (40: more than 32, kept hashed);
/// - meter 7, a sum past 18 digits: 9·10¹⁸ + 10¹⁸ = 10¹⁹ in version 3 (one span, as a
///   `Decimal`).
///
/// The second: 70 events `big-0` … `big-69` of 1 unit each on meter 0 in version 0
/// (more than 64 ids: one hashed set), a sum of 70.
fn usages() -> Vec<AccountUsage> {
    let mut first = AccountUsage::default();
    let mut n = 0;
    let mut apply = |usage: &mut AccountUsage, meter: u16, r: Reading| {
        let id = event_fingerprint(&format!("evt-{n}"));
        n += 1;
        usage.apply(id, MeterId(meter), &r).unwrap();
    };
    let dec = |m: i64, scale: u32| Decimal::new(m, scale);
    apply(&mut first, 0, reading(Fold::Sum, dec(15, 1), at(0), 0));
    apply(&mut first, 0, reading(Fold::Sum, dec(225, 2), at(1), 0));
    apply(&mut first, 1, reading(Fold::Sum, dec(2, 0), at(0), 0));
    apply(&mut first, 1, reading(Fold::Sum, dec(3, 0), at(1), 2));
    apply(&mut first, 1, reading(Fold::Sum, dec(4, 0), at(2), 2));
    apply(&mut first, 2, reading(Fold::Count, dec(17, 0), at(0), 1));
    apply(&mut first, 2, reading(Fold::Count, dec(1, 0), at(1), 1));
    apply(&mut first, 3, reading(Fold::Max, dec(5, 0), at(10), 1));
    let mut max = reading(Fold::Max, dec(725, 2), at(20), 1);
    max.tiebreak = 0xAB << 32;
    apply(&mut first, 3, max);
    apply(&mut first, 3, reading(Fold::Max, dec(6, 0), at(30), 1));
    let mut latest = reading(Fold::Latest, dec(4, 0), at(30), 0);
    latest.tiebreak = 0xCD << 32;
    apply(&mut first, 4, latest);
    apply(&mut first, 4, reading(Fold::Latest, dec(9, 0), at(20), 0));
    let distinct = |value: u64, time, version| Reading {
        dimension: Some(value),
        ..reading(Fold::Distinct, Decimal::ONE, time, version)
    };
    apply(&mut first, 5, distinct(11, at(5), 0));
    apply(&mut first, 5, distinct(12, at(6), 0));
    apply(&mut first, 5, distinct(13, at(7), 0));
    apply(&mut first, 5, distinct(11, at(1), 1));
    for i in 0..40 {
        apply(&mut first, 6, distinct(1000 + i, at(i as i64), 0));
    }
    let e18 = Decimal::from(1_000_000_000_000_000_000u64);
    let nine_e18 = e18 * Decimal::from(9);
    apply(&mut first, 7, reading(Fold::Sum, nine_e18, at(0), 3));
    apply(&mut first, 7, reading(Fold::Sum, e18, at(1), 3));
    let mut second = AccountUsage::default();
    for i in 0..70 {
        let id = event_fingerprint(&format!("big-{i}"));
        second
            .apply(id, MeterId(0), &reading(Fold::Sum, Decimal::ONE, at(i), 0))
            .unwrap();
    }
    vec![first, second]
}

#[test]
fn the_usage_built_covers_every_form() {
    let [first, second] = &usages()[..] else {
        unreachable!()
    };
    assert_eq!(AccountUsage::SORTED_MAX, 64);
    assert_eq!(first.ids_len(), 58);
    assert!(first.ids_len() < AccountUsage::SORTED_MAX);
    assert_eq!(second.ids_len(), 70);
    assert!(second.ids_len() > AccountUsage::SORTED_MAX);
    let quantities: Vec<String> = first.meters().iter().map(|m| m.quantity().to_string()).collect();
    assert_eq!(
        quantities,
        ["3.75", "9", "2", "7.25", "4", "3", "40", "10000000000000000000"]
    );
    // Meter 5's 3 distinct values are below it, meter 6's 40 above.
    assert_eq!(DistinctValues::SORTED_MAX, 32);
    assert_eq!(second.meters()[0].quantity(), Decimal::from(70));
}

#[test]
fn customers_are_written_as_the_golden_files_hold_them() {
    let customers = customers();
    let file = golden("customer.msgpack", &rmp_serde::to_vec(&customers).unwrap());
    let read: Vec<Customer> = rmp_serde::from_slice(&file).unwrap();
    assert_eq!(read, customers);
    let file = golden("customer.json", &serde_json::to_vec(&customers).unwrap());
    let read: Vec<Customer> = serde_json::from_slice(&file).unwrap();
    assert_eq!(read, customers);
}

#[test]
fn account_usage_is_written_as_the_golden_files_hold_it() {
    let usages = usages();
    let file = golden("account_usage.msgpack", &rmp_serde::to_vec(&usages).unwrap());
    let read: Vec<AccountUsage> = rmp_serde::from_slice(&file).unwrap();
    assert_eq!(read, usages);
    let file = golden("account_usage.json", &serde_json::to_vec(&usages).unwrap());
    let read: Vec<AccountUsage> = serde_json::from_slice(&file).unwrap();
    assert_eq!(read, usages);
}
