//! Golden files: the exact bytes of what is kept on disk. The domain's packed values, in
//! snapshots (MessagePack, as `EntityCodec` writes it) and in journaled commands (JSON,
//! as account hand-overs carry them); the engine's journal records and customer
//! snapshots whole; and a period's invoices as a bill run writes them. Each test builds its value by hand, writes it and checks the
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
use tallyman::domain::billing::{bill_customer, BillingContext};
use tallyman::domain::catalog::CatalogVersionSpec;
use tallyman::domain::customer::{Credit, CustomerSpec};
use tallyman::domain::meter::{DistinctValues, Fold, Reading, VersionIdx};
use tallyman::domain::money::{Rounding, RoundingMode};
use tallyman::domain::profile::{BillingProfile, BillingStep, ProfileSpec};
use tallyman::domain::usage::event_fingerprint;
use tallyman::domain::{AccountId, AccountUsage, Bill, Catalog, Currency, Customer, MeterId, Period};
use tallyman::engine::account::{MeteredEvent, PeriodClose};
use tallyman::engine::codec::{BatchCodec, EntityCodec};
use tallyman::engine::{CustomerCommand, CustomerEntity, CustomerKey, InvoiceDocument};
use tallyman::store::invoices::InvoiceStore;
use tallyman_actors::file_journal::Codec;
use tallyman_actors::{Batch, Entity, SnapshotCodec};

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

// The engine's own formats: a journal record and a customer's snapshot.

/// A reading of `fold`: 123.456789012 units at 2026-11-03T10:00:00.123456789Z, catalog
/// version 3, the largest tiebreaks, a dimension value for a distinct count.
fn engine_reading(fold: Fold, dimension: Option<u64>) -> Reading {
    Reading {
        fold,
        quantity: Decimal::new(123_456_789_012, 9),
        time: "2026-11-03T10:00:00.123456789Z".parse().unwrap(),
        version: 3,
        tiebreak: u64::MAX - 7,
        dimension,
    }
}

/// Usage of account 222 on `meter`, dated 2026-11-04 in the partition's zone (ahead of
/// UTC's 2026-11-03), with the 128-bit id `u128::MAX - n` and a limit of a million
/// events.
fn event(meter: u16, fold: Fold, dimension: Option<u64>, n: u128) -> MeteredEvent {
    MeteredEvent {
        day: "2026-11-04".parse().unwrap(),
        account: "222".into(),
        meter: MeterId(meter),
        reading: engine_reading(fold, dimension),
        id: u128::MAX - n,
        limit: 1_000_000,
    }
}

/// One record of every kind of command: an upsert (acme: payer 111, account 222, tax
/// 0.2, credit `p` 10.00 until 2026-12-31), usage of a sum and of a distinct count, late
/// usage (meter 5 a sum, 6 a distinct count of value 42; ids MAX − 1 to 3), a credit `q` of 5.00 on meter `m`, account 222 released by acme and adopted by
/// `other` with its usage (a sum of 123.456789012 on meter 0), and a close of 2026-11
/// leaving `q` 2.50.
fn journal_record() -> Batch<CustomerEntity> {
    let customer = Customer::from_spec(
        serde_json::from_str::<CustomerSpec>(
            r#"{"id": "acme", "payer": "111", "accounts": ["222"], "tax_rate": "0.2",
                "credits": [{"id": "p", "amount": "10.00", "expires": "2026-12-31"}]}"#,
        )
        .unwrap(),
        usd(),
    )
    .unwrap();
    let mut usage = AccountUsage::default();
    usage
        .apply(1, MeterId(0), &engine_reading(Fold::Sum, None))
        .unwrap();
    let period = || "2026-11".parse().unwrap();
    let credit = Credit {
        id: "q".into(),
        amount: Decimal::new(500, 2),
        expires: None,
        meters: Some(vec!["m".into()]),
        granted: 4,
    };
    let close = PeriodClose {
        period: period(),
        late_until: "2026-12-04".parse().unwrap(),
        credits: vec![("q".into(), Decimal::new(250, 2))],
    };
    let release = CustomerCommand::Release {
        account: "222".into(),
        period: period(),
    };
    let adopt = CustomerCommand::Adopt {
        account: "222".into(),
        usage: Some(Box::new(usage)),
        period: period(),
    };
    vec![
        ("acme".into(), CustomerCommand::Upsert(Box::new(customer))),
        (
            "acme".into(),
            CustomerCommand::Usage(event(5, Fold::Sum, None, 1)),
        ),
        (
            "acme".into(),
            CustomerCommand::Usage(event(6, Fold::Distinct, Some(42), 2)),
        ),
        ("acme".into(), CustomerCommand::Late(event(5, Fold::Sum, None, 3))),
        ("acme".into(), CustomerCommand::AddCredit(credit)),
        ("acme".into(), release),
        ("other".into(), adopt),
        ("other".into(), CustomerCommand::Close(Box::new(close))),
    ]
}

#[test]
fn a_journal_record_is_written_as_it_always_was() {
    // Usage in its fixed binary layout (tag 2), every other command as JSON (tag 1).
    let record = journal_record();
    let mut bytes = Vec::new();
    BatchCodec.encode(&record, &mut bytes);
    let file = golden("journal_record.bin", &bytes);
    assert_eq!(BatchCodec.decode(&file).unwrap(), record);
    // A cut record is an error, never a shorter batch.
    assert!(BatchCodec.decode(&file[..file.len() - 1]).is_err());
}

#[test]
fn a_customers_snapshot_is_written_as_it_always_was() {
    // acme after the record's first five commands, a `max` reading on meter 7 and a
    // `latest` one on meter 8: its customer, every kind of aggregate, and a credit
    // granted.
    let key: CustomerKey = "acme".into();
    let mut entity = CustomerEntity::create(&key);
    for (_, command) in journal_record().iter().take(5) {
        entity.apply(command);
    }
    entity.apply(&CustomerCommand::Usage(event(7, Fold::Max, None, 4)));
    entity.apply(&CustomerCommand::Usage(event(8, Fold::Latest, None, 5)));
    let mut bytes = Vec::new();
    EntityCodec.encode(&key, &entity, &mut bytes);
    let file = golden("customer_entity.msgpack", &bytes);
    assert_eq!(EntityCodec.decode(&file).unwrap(), (key, entity));
    assert!(EntityCodec.decode(&file[..file.len() - 1]).is_err());
}

// What a bill run writes: a period's invoices, one JSON document a line.

/// A catalog of two meters from 2026-11-01: `compute.hours`, a sum at 0.05 a unit, and
/// `transfer.gb`, a sum graduated at 0.10 up to 100 and 0.08 past it.
fn invoice_catalog() -> Catalog {
    let spec: CatalogVersionSpec = serde_json::from_str(
        r#"{"effective_from": "2026-11-01", "meters": [
            {"name": "compute.hours", "aggregation": "sum",
             "price": {"model": "per_unit", "unit_price": "0.05"}},
            {"name": "transfer.gb", "aggregation": "sum",
             "price": {"model": "graduated", "tiers": [
                {"up_to": "100", "unit_price": "0.10"}, {"up_to": null, "unit_price": "0.08"}]}}]}"#,
    )
    .unwrap();
    let mut catalog = Catalog::new();
    catalog.publish(&spec).unwrap();
    catalog
}

/// acme's November bill, by hand:
/// - usage: 111 ran 100 hours and sent 10 GB, 222 ran 60 hours and sent 140 GB;
/// - compute.hours 160 × 0.05 = 8.00 (111: 5.00, 222: 3.00); transfer.gb 150 GB:
///   100 × 0.10 + 50 × 0.08 = 14.00 (111: 10/150 of it, 0.93; 222: 13.07); subtotal 22.00;
/// - discount `edp`, 10 % of compute.hours: 0.80 (7.20 left);
/// - credit `promo`, 5.00 on anything, drawn from compute.hours first: 5.00 (2.20 left),
///   nothing remains;
/// - tax 20 % of 2.20 + 14.00 = 16.20: 3.24; total 22.00 − 0.80 − 5.00 + 3.24 = 19.44.
fn november_bill() -> Bill {
    let catalog = invoice_catalog();
    let customer = Customer::from_spec(
        serde_json::from_str::<CustomerSpec>(
            r#"{"id": "acme", "payer": "111", "accounts": ["222"], "tax_rate": "0.2",
                "discounts": [{"id": "edp", "percent": "10", "meters": ["compute.hours"]}],
                "credits": [{"id": "promo", "amount": "5.00"}]}"#,
        )
        .unwrap(),
        usd(),
    )
    .unwrap();
    let steps = vec![
        BillingStep::Price,
        BillingStep::Round,
        BillingStep::Discounts,
        BillingStep::Credits,
        BillingStep::Tax,
    ];
    let profile = BillingProfile::new(
        "standard",
        ProfileSpec {
            steps,
            minimum_commitment: None,
        },
    )
    .unwrap();
    let sum = |quantity: i64, n: u64| Reading {
        fold: Fold::Sum,
        quantity: Decimal::from(quantity),
        time: at(3600 * n as i64),
        version: 0,
        tiebreak: n,
        dimension: None,
    };
    let mut a111 = AccountUsage::default();
    a111.apply(1, MeterId(0), &sum(100, 1)).unwrap();
    a111.apply(2, MeterId(1), &sum(10, 2)).unwrap();
    let mut a222 = AccountUsage::default();
    a222.apply(3, MeterId(0), &sum(60, 3)).unwrap();
    a222.apply(4, MeterId(1), &sum(140, 4)).unwrap();
    let (id111, id222): (AccountId, AccountId) = ("111".into(), "222".into());
    let ctx = BillingContext {
        catalog: &catalog,
        rounding: Rounding::new(usd(), RoundingMode::HalfEven),
        period: "2026-11".parse().unwrap(),
    };
    bill_customer(&ctx, &customer, &profile, [(&id111, &a111), (&id222, &a222)])
}

#[test]
fn a_periods_invoices_are_written_as_they_always_were() {
    let bill = november_bill();
    assert_eq!(
        (bill.subtotal, bill.tax.amount, bill.total),
        (Decimal::new(2200, 2), Decimal::new(324, 2), Decimal::new(1944, 2))
    );
    let period: Period = "2026-11".parse().unwrap();
    let dir = std::env::temp_dir().join(format!("tallyman-golden-invoices-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let store = InvoiceStore::open("aws", Some(dir.clone())).unwrap();
    let numbers = store
        .append(period, vec![("acme".into(), InvoiceStore::encode(bill.clone()))])
        .unwrap();
    assert_eq!(numbers, ["aws-2026-11-000001"]);
    let file = golden(
        "invoices_2026-11.ndjson",
        &std::fs::read(dir.join("2026-11.ndjson")).unwrap(),
    );
    // The file read back, as a restarted tallyd reads it.
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("2026-11.ndjson"), &file).unwrap();
    let store = InvoiceStore::open("aws", Some(dir.clone())).unwrap();
    let document = store.of_customer(period, "acme").unwrap().unwrap();
    assert_eq!(document, InvoiceDocument::new("aws-2026-11-000001".into(), bill));
    let _ = std::fs::remove_dir_all(&dir);
}
