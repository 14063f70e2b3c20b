//! Tests of the oracle (verify.rs): its own re-computation of bills, numbers by hand.

use super::*;

fn d(s: &str) -> Decimal {
    Decimal::from_str(s).unwrap()
}

/// The parts of the embedded cloud-usd catalog the tests price with, in the JSON
/// shape tallyd serves, plus a per-unit meter at 0.005 for rounding.
fn prices() -> PriceList {
    PriceList::from_catalog_json(&serde_json::json!({
        "effective_from": "2026-11-01",
        "meters": [
            {"name": "ec2.instance_hours", "aggregation": "sum",
             "price": {"model": "per_unit", "unit_price": "0.0416"}},
            {"name": "s3.storage_gb_month", "aggregation": "sum",
             "price": {"model": "graduated", "tiers": [
                {"up_to": "51200", "unit_price": "0.023"},
                {"up_to": "512000", "unit_price": "0.022"},
                {"unit_price": "0.021"}]}},
            {"name": "lambda.requests", "aggregation": "sum", "free_allowance": "1000000",
             "price": {"model": "package", "package_size": "1000000", "package_price": "0.20"}},
            {"name": "apigw.calls", "aggregation": "count",
             "price": {"model": "per_unit", "unit_price": "0.0000035"}},
            {"name": "data_transfer_out.gb", "aggregation": "sum", "free_allowance": "100",
             "price": {"model": "graduated", "tiers": [
                {"up_to": "10240", "unit_price": "0.09"},
                {"up_to": "51200", "unit_price": "0.085"},
                {"up_to": "153600", "unit_price": "0.07"},
                {"unit_price": "0.05"}]}},
            {"name": "db.storage_gb", "aggregation": "max",
             "price": {"model": "volume", "tiers": [
                {"up_to": "1000", "unit_price": "0.10"},
                {"up_to": "10000", "unit_price": "0.08"},
                {"unit_price": "0.06", "flat_fee": "5"}]}},
            {"name": "cognito.active_users", "aggregation": "unique_count", "dimension": "user",
             "free_allowance": "2",
             "price": {"model": "graduated", "tiers": [
                {"up_to": "50000", "unit_price": "0.0055"},
                {"unit_price": "0.0046"}]}},
            {"name": "support.seats", "aggregation": "latest",
             "price": {"model": "graduated", "tiers": [
                {"up_to": "10", "unit_price": "0", "flat_fee": "100.00"},
                {"unit_price": "12.00"}]}},
            {"name": "half.units", "aggregation": "sum",
             "price": {"model": "per_unit", "unit_price": 0.005}}
        ]
    }))
    .unwrap()
}

fn charge(meter: &str, q: &str) -> Decimal {
    let p = prices();
    p.meters[p.index(meter).unwrap()].charge(d(q))
}

#[test]
fn prices_follow_each_model() {
    // Per unit: 720 h × 0.0416 = 29.952 (exact, not rounded yet).
    assert_eq!(charge("ec2.instance_hours", "720"), d("29.952"));
    // Graduated: 60000 GB-month = 51200 × 0.023 (1177.60) + 8800 × 0.022 (193.60) = 1371.20.
    assert_eq!(charge("s3.storage_gb_month", "60000"), d("1371.20"));
    // up_to is inclusive: 51200 × 0.023 = 1177.60, nothing at 0.022.
    assert_eq!(charge("s3.storage_gb_month", "51200"), d("1177.6"));
    // Free allowance first: 10340 GB − 100 free = 10240 × 0.09 = 921.60;
    // one more GB is the first of tier 2: 921.60 + 0.085 = 921.685.
    assert_eq!(charge("data_transfer_out.gb", "10340"), d("921.60"));
    assert_eq!(charge("data_transfer_out.gb", "10341"), d("921.685"));
    assert_eq!(charge("data_transfer_out.gb", "99"), d("0"));
    // Volume: 800 GB × 0.10 = 80; 1000 (inclusive) × 0.10 = 100; 1200 all at 0.08 = 96;
    // 20000 all at 0.06 = 1200 + the tier's flat fee 5 = 1205.
    assert_eq!(charge("db.storage_gb", "800"), d("80"));
    assert_eq!(charge("db.storage_gb", "1000"), d("100"));
    assert_eq!(charge("db.storage_gb", "1200"), d("96"));
    assert_eq!(charge("db.storage_gb", "20000"), d("1205"));
    // Package after 1,000,000 free: 3,500,000 → 2,500,000 chargeable → 3 started
    // packages × 0.20 = 0.60; 2,000,000 → 1 package = 0.20; 900,000 → all free.
    assert_eq!(charge("lambda.requests", "3500000"), d("0.60"));
    assert_eq!(charge("lambda.requests", "2000000"), d("0.20"));
    assert_eq!(charge("lambda.requests", "900000"), d("0"));
    // Graduated with a flat fee per tier reached: 3 seats are in tier 1 (price 0, fee
    // 100) = 100; 12 seats: 100 + 2 × 12.00 = 124; no seats, no fee.
    assert_eq!(charge("support.seats", "3"), d("100"));
    assert_eq!(charge("support.seats", "12"), d("124"));
    assert_eq!(charge("support.seats", "0"), d("0"));
}

fn event(n: u32, account: &str, meter: &str, quantity: &str, time: &str, user: Option<&str>) -> EventRecord {
    EventRecord {
        id: format!("evt-{n}"),
        account: account.into(),
        meter: meter.into(),
        quantity: quantity.into(),
        time: time.into(),
        dimensions: user.map(|u| {
            let mut m = serde_json::Map::new();
            m.insert("user".into(), u.into());
            m
        }),
    }
}

fn customer(id: &str, accounts: &[&str], tax_rate: &str) -> CustomerRecord {
    CustomerRecord {
        id: id.into(),
        payer: accounts[0].into(),
        accounts: accounts.iter().map(|a| a.to_string()).collect(),
        profile: "standard".into(),
        tax_rate: tax_rate.into(),
    }
}

fn bills(events: &[EventRecord], customers: &[CustomerRecord]) -> BTreeMap<String, BillFigures> {
    let mut ledger = Ledger::new(prices());
    for e in events {
        ledger.record(e).unwrap();
    }
    assert_eq!(ledger.events(), events.len() as u64);
    expected_bills(&ledger, customers, "USD").unwrap()
}

#[test]
fn aggregations_fold_per_account() {
    let t = |day: u32| format!("2026-11-{day:02}T10:00:00Z");
    let events = vec![
        // count: three calls, whatever their quantities: 3 × 0.0000035 → 0.00.
        event(1, "a", "apigw.calls", "1", &t(1), None),
        event(2, "a", "apigw.calls", "7", &t(2), None),
        event(3, "a", "apigw.calls", "1", &t(3), None),
        // max: 700 then 1500 then 900 → 1500, all at 0.08 (volume) = 120.00.
        event(4, "a", "db.storage_gb", "700", &t(1), None),
        event(5, "a", "db.storage_gb", "1500", &t(5), None),
        event(6, "a", "db.storage_gb", "900", &t(9), None),
        // latest: 20 seats on the 20th, then 4 on the 25th, and 30 on the 3rd (sent
        // last, but earlier): 4 seats → the tier-1 fee, 100.00.
        event(7, "a", "support.seats", "20", &t(20), None),
        event(8, "a", "support.seats", "4", &t(25), None),
        event(9, "a", "support.seats", "30", &t(3), None),
        // unique_count: u1, u2, u1, u3 → 3 users, 2 free → 1 × 0.0055 → 0.01.
        event(10, "a", "cognito.active_users", "1", &t(1), Some("u1")),
        event(11, "a", "cognito.active_users", "1", &t(2), Some("u2")),
        event(12, "a", "cognito.active_users", "1", &t(3), Some("u1")),
        event(13, "a", "cognito.active_users", "1", &t(4), Some("u3")),
        // sum: 1.5 + 2.25 = 3.75 h × 0.0416 = 0.156 → 0.16.
        event(14, "a", "ec2.instance_hours", "1.5", &t(1), None),
        event(15, "a", "ec2.instance_hours", "2.25", &t(2), None),
    ];
    let b = &bills(&events, &[customer("c", &["a"], "0")])["c"];
    assert_eq!(b.lines["apigw.calls"], d("0.00"));
    assert_eq!(b.lines["db.storage_gb"], d("120.00"));
    assert_eq!(b.lines["support.seats"], d("100.00"));
    assert_eq!(b.lines["cognito.active_users"], d("0.01"));
    assert_eq!(b.lines["ec2.instance_hours"], d("0.16"));
    // 0 + 120 + 100 + 0.01 + 0.16 = 220.17, all of it the one account's.
    assert_eq!(b.subtotal, d("220.17"));
    assert_eq!(b.total, d("220.17"));
    assert_eq!(b.accounts["a"], d("220.17"));
}

#[test]
fn tiers_are_pooled_across_the_family_and_split_back() {
    let t = "2026-11-10T00:00:00Z";
    // Two accounts with 30000 GB-month each: pooled, 60000 = 1177.60 + 193.60 = 1371.20
    // (apart they would be 2 × 690.00 = 1380.00). Equal quantities: 685.60 each.
    let events = vec![
        event(1, "p", "s3.storage_gb_month", "30000", t, None),
        event(2, "q", "s3.storage_gb_month", "30000", t, None),
    ];
    let b = &bills(&events, &[customer("c", &["p", "q"], "0")])["c"];
    assert_eq!(b.lines["s3.storage_gb_month"], d("1371.20"));
    assert_eq!(b.accounts["p"], d("685.60"));
    assert_eq!(b.accounts["q"], d("685.60"));
    assert_eq!(b.total, d("1371.20"));
}

#[test]
fn the_split_remainder_goes_to_the_largest_account() {
    let t = "2026-11-10T00:00:00Z";
    // 1.000 + 1.000 + 1.125 = 3.125 h × 0.0416 = 0.13 exactly, 13 cents: shares
    // 13 × 1000/3125 = 4.16 → 4, 4, and 13 × 1125/3125 = 4.68 → 4; 12 given out,
    // the 1 cent left goes to the largest quantity, "z": 0.04, 0.04, 0.05.
    let events = vec![
        event(1, "x", "ec2.instance_hours", "1.000", t, None),
        event(2, "y", "ec2.instance_hours", "1", t, None),
        event(3, "z", "ec2.instance_hours", "1.125", t, None),
    ];
    let b = &bills(&events, &[customer("c", &["z", "x", "y"], "0")])["c"];
    assert_eq!(b.lines["ec2.instance_hours"], d("0.13"));
    assert_eq!(
        (b.accounts["x"], b.accounts["y"], b.accounts["z"]),
        (d("0.04"), d("0.04"), d("0.05"))
    );
    // Among equals the lowest id takes it: 3 + 3 units × 0.005 = 0.03, 3 cents; each
    // share is 3 × 3/6 = 1.5 → 1, and the cent left goes to "m" (a lower id than
    // "n"): m 0.02, n 0.01.
    let events = vec![
        event(1, "n", "half.units", "3", t, None),
        event(2, "m", "half.units", "3", t, None),
    ];
    let b = &bills(&events, &[customer("c", &["n", "m"], "0")])["c"];
    assert_eq!(b.lines["half.units"], d("0.03"));
    assert_eq!((b.accounts["m"], b.accounts["n"]), (d("0.02"), d("0.01")));
}

#[test]
fn lines_round_half_even_and_tax_rounds_once() {
    let t = "2026-11-10T00:00:00Z";
    // 25 × 0.005 = 0.125 → 0.12 (half to even); 27 × 0.005 = 0.135 → 0.14.
    let one = |q: &str| {
        let events = vec![event(1, "a", "half.units", q, t, None)];
        bills(&events, &[customer("c", &["a"], "0")])["c"].total
    };
    assert_eq!(one("25"), d("0.12"));
    assert_eq!(one("27"), d("0.14"));
    // Tax at 8% of a 100.00 subtotal (4 seats: the tier-1 fee) = 8.00; total 108.00.
    let events = vec![event(1, "a", "support.seats", "4", t, None)];
    let b = &bills(&events, &[customer("c", &["a"], "0.08")])["c"];
    assert_eq!((b.subtotal, b.total), (d("100.00"), d("108.00")));
}

#[test]
fn compare_reports_every_differing_figure() {
    let t = "2026-11-10T00:00:00Z";
    let events = vec![
        event(1, "a1", "support.seats", "4", t, None),
        event(2, "b1", "support.seats", "12", t, None),
    ];
    let customers = [
        customer("a", &["a1"], "0"),
        customer("b", &["b1"], "0"),
        customer("idle", &["i1"], "0"),
    ];
    let expected = bills(&events, &customers);
    // "a" invoiced right; "b" 12 seats priced as 11 (112.00, not 124.00); "idle"
    // has no usage and no invoice, as it should; "ghost" is not in the workload: a
    // target's own customer, not loadgen's to check.
    let invoice = |customer: &str, account: &str, quantity: &str, total: &str| {
        invoice_figures(&serde_json::json!({
            "number": "aws-2026-11-000001", "customer": customer, "period": "2026-11",
            "currency": "USD",
            "accounts": [{"account": account, "lines": [], "total": total}],
            "lines": [{"meter": "support.seats", "quantity": quantity, "amount": total, "tiers": []}],
            "discounts": [], "credits": [], "tax": {"rate": "0", "base": total, "amount": "0.00"},
            "subtotal": total, "total": total
        }))
        .unwrap()
    };
    let invoices: BTreeMap<String, BillFigures> = [
        invoice("a", "a1", "4", "100.00"),
        invoice("b", "b1", "12", "112.00"),
        invoice("ghost", "g1", "1", "1.00"),
    ]
    .into_iter()
    .collect();
    let m = compare(&expected, &invoices);
    let figures: Vec<(&str, &str, &str, &str)> = m
        .iter()
        .map(|m| (&*m.customer, &*m.figure, &*m.expected, &*m.got))
        .collect();
    assert_eq!(
        figures,
        vec![
            ("b", "total", "124.00", "112.00"),
            ("b", "subtotal", "124.00", "112.00"),
            ("b", "line support.seats", "124.00", "112.00"),
            ("b", "account b1", "124.00", "112.00"),
        ]
    );
    // A quantity the oracle does not have is reported too (and its line).
    let mut five = invoices.clone();
    five.insert("a".into(), invoice("a", "a1", "5", "100.00").1);
    let m = compare(&expected, &five);
    assert_eq!(
        (&*m[0].customer, &*m[0].figure, &*m[0].expected, &*m[0].got),
        ("a", "quantity support.seats", "4", "5")
    );
    // Without "a"'s invoice, its bill is missing.
    let mut without_a = invoices.clone();
    without_a.remove("a");
    let m = compare(&expected, &without_a);
    assert_eq!((&*m[0].customer, &*m[0].figure), ("a", "invoice"));
}
