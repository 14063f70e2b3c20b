//! Every billing step with numbers worked out by hand beside it.

use super::*;
use crate::domain::catalog::CatalogVersionSpec;
use crate::domain::customer::{Credit, CustomerSpec, Discount};
use crate::domain::money::{Currency, RoundingMode};
use crate::domain::profile::{BillingStep::*, ProfileSpec};
use crate::domain::usage::{event_fingerprint, UsageEvent};
use rust_decimal_macros::dec;

const CATALOG: &str = r#"{
  "effective_from": "2026-11-01",
  "meters": [
    {"name": "ec2.instance_hours", "aggregation": "sum",
     "price": {"model": "per_unit", "unit_price": "0.0416"}},
    {"name": "data_transfer_out.gb", "aggregation": "sum",
     "price": {"model": "graduated", "tiers": [
        {"up_to": "10240", "unit_price": "0.09"},
        {"up_to": "51200", "unit_price": "0.085"},
        {"up_to": null,    "unit_price": "0.07"}]}},
    {"name": "db.storage_gb", "aggregation": "max",
     "price": {"model": "volume", "tiers": [
        {"up_to": "1000", "unit_price": "0.10"},
        {"up_to": null,   "unit_price": "0.08"}]}},
    {"name": "api.calls", "aggregation": "count", "free_allowance": "1",
     "price": {"model": "package", "package_size": "2", "package_price": "1.00"}},
    {"name": "app.active_users", "aggregation": "unique_count", "dimension": "user",
     "price": {"model": "per_unit", "unit_price": "0.50"}},
    {"name": "seats", "aggregation": "latest",
     "price": {"model": "per_unit", "unit_price": "10"}}
  ]
}"#;

fn catalog() -> Catalog {
    let spec: CatalogVersionSpec = serde_json::from_str(CATALOG).unwrap();
    let mut c = Catalog::new();
    c.publish(&spec).unwrap();
    c
}

fn usd() -> Rounding {
    Rounding::new(Currency::from_code("USD").unwrap(), RoundingMode::HalfEven)
}

fn profile(steps: &[BillingStep], minimum_commitment: Option<Decimal>) -> BillingProfile {
    BillingProfile::new(
        "test",
        ProfileSpec {
            steps: steps.to_vec(),
            minimum_commitment,
        },
    )
    .unwrap()
}

fn standard() -> BillingProfile {
    profile(&[Price, Round, Discounts, Credits, Tax], None)
}

fn customer(accounts: &[&str]) -> Customer {
    let spec = CustomerSpec::new(
        "acme",
        accounts[0],
        accounts.iter().map(|a| a.to_string()).collect(),
        "test",
    );
    Customer::from_spec(spec, usd().currency).unwrap()
}

/// A small usage builder: `(id, account, meter, quantity, time, user)`.
struct Usage {
    catalog: Catalog,
    accounts: Vec<(AccountId, AccountUsage)>,
}

impl Usage {
    fn new(catalog: Catalog) -> Self {
        Usage {
            catalog,
            accounts: Vec::new(),
        }
    }

    fn add(&mut self, id: &str, account: &str, meter: &str, quantity: Decimal, time: &str) -> &mut Self {
        self.add_dim(id, account, meter, quantity, time, None)
    }

    fn add_dim(
        &mut self,
        id: &str,
        account: &str,
        meter: &str,
        quantity: Decimal,
        time: &str,
        user: Option<&str>,
    ) -> &mut Self {
        let event = UsageEvent {
            id: id.into(),
            account: account.into(),
            meter: meter.into(),
            quantity,
            time: time.parse().unwrap(),
            dimensions: user
                .map(|u| [("user".to_string(), u.to_string())].into())
                .unwrap_or_default(),
        };
        let (meter_id, reading) = self.catalog.resolve(&event, event.time.date_naive()).unwrap();
        let i = match self.accounts.iter().position(|(a, _)| **a == *account) {
            Some(i) => i,
            None => {
                self.accounts.push((account.into(), AccountUsage::default()));
                self.accounts.len() - 1
            }
        };
        self.accounts[i]
            .1
            .apply(event_fingerprint(id), meter_id, &reading)
            .unwrap();
        self
    }

    fn bill(&self, customer: &Customer, profile: &BillingProfile) -> Bill {
        self.bill_with(usd(), customer, profile)
    }

    fn bill_with(&self, rounding: Rounding, customer: &Customer, profile: &BillingProfile) -> Bill {
        let ctx = BillingContext {
            catalog: &self.catalog,
            rounding,
            period: "2026-11".parse().unwrap(),
        };
        let bill = bill_customer(&ctx, customer, profile, self.accounts.iter().map(|(a, u)| (a, u)));
        bill.check().unwrap();
        bill
    }
}

const T: &str = "2026-11-03T10:00:00Z";

fn line<'b>(bill: &'b Bill, meter: &str) -> &'b crate::domain::invoice::MeterLine {
    bill.lines.iter().find(|l| &*l.meter == meter).unwrap()
}

fn share(bill: &Bill, account: &str, meter: &str) -> Decimal {
    bill.accounts
        .iter()
        .find(|a| &*a.account == account)
        .unwrap()
        .lines
        .iter()
        .find(|l| &*l.meter == meter)
        .unwrap()
        .amount
}

/// ec2 720 h on A (720 × 0.0416 = 29.952 → 29.95) and transfer 4096 GB on B
/// (4096 × 0.09 = 368.64): subtotal 398.59.
fn two_lines() -> Usage {
    let mut u = Usage::new(catalog());
    u.add("e1", "A", "ec2.instance_hours", dec!(720), T).add(
        "e2",
        "B",
        "data_transfer_out.gb",
        dec!(4096),
        T,
    );
    u
}

#[test]
fn pooled_tiers_are_allocated_back_in_proportion() {
    // A 8000 GB + B 4000 GB = 12000 GB pooled:
    //   10240 × 0.09 = 921.60, 1760 × 0.085 = 149.60 → 1071.20
    //   (unpooled it would be 8000 × 0.09 + 4000 × 0.09 = 1080.00).
    // Shares rounded toward zero: A 8000/12000 × 1071.20 = 714.1333… → 714.13,
    //   B 4000/12000 × 1071.20 = 357.0666… → 357.06; they add up to 1071.19,
    //   and the remainder 0.01 goes to the largest account, A: 714.14.
    let mut u = Usage::new(catalog());
    u.add("e1", "A", "data_transfer_out.gb", dec!(8000), T).add(
        "e2",
        "B",
        "data_transfer_out.gb",
        dec!(4000),
        T,
    );
    let bill = u.bill(&customer(&["A", "B"]), &standard());
    let l = line(&bill, "data_transfer_out.gb");
    assert_eq!(l.quantity, dec!(12000));
    assert_eq!(l.amount.to_string(), "1071.20");
    assert_eq!(l.tiers.len(), 2);
    assert_eq!(share(&bill, "A", "data_transfer_out.gb").to_string(), "714.14");
    assert_eq!(share(&bill, "B", "data_transfer_out.gb").to_string(), "357.06");
    assert_eq!(bill.total.to_string(), "1071.20");
}

#[test]
fn remainder_goes_to_the_lowest_id_among_equal_largest() {
    // 3 accounts with 1 GB each of a 0.09 plan... use ec2: 3 × 1 h × 0.0416 = 0.1248 → 0.12.
    // Each share 0.12/3 = 0.04 exactly: no remainder. With 0.13 it would not divide, so use
    // 2 h + 2 h + 1 h = 5 h × 0.0416 = 0.208 → 0.21: shares 0.21 × 2/5 = 0.084 → 0.08,
    // 0.08, 0.21 × 1/5 = 0.042 → 0.04; sum 0.20, remainder 0.01 to A (largest, lowest id).
    let mut u = Usage::new(catalog());
    u.add("e1", "C", "ec2.instance_hours", dec!(1), T)
        .add("e2", "B", "ec2.instance_hours", dec!(2), T)
        .add("e3", "A", "ec2.instance_hours", dec!(2), T);
    let bill = u.bill(&customer(&["A", "B", "C"]), &standard());
    assert_eq!(share(&bill, "A", "ec2.instance_hours").to_string(), "0.09");
    assert_eq!(share(&bill, "B", "ec2.instance_hours").to_string(), "0.08");
    assert_eq!(share(&bill, "C", "ec2.instance_hours").to_string(), "0.04");
}

#[test]
fn max_meter_with_volume_tiers() {
    // Storage peaks: A 300 then 700 (max 700), B 500. Family 1200 GB → volume tier 2:
    // 1200 × 0.08 = 96.00. A 700/1200 × 96 = 56.00, B 500/1200 × 96 = 40.00.
    let mut u = Usage::new(catalog());
    u.add("e1", "A", "db.storage_gb", dec!(300), "2026-11-02T00:00:00Z")
        .add("e2", "A", "db.storage_gb", dec!(700), "2026-11-03T00:00:00Z")
        .add("e3", "B", "db.storage_gb", dec!(500), T);
    let bill = u.bill(&customer(&["A", "B"]), &standard());
    assert_eq!(line(&bill, "db.storage_gb").amount.to_string(), "96.00");
    assert_eq!(share(&bill, "A", "db.storage_gb").to_string(), "56.00");
    assert_eq!(share(&bill, "B", "db.storage_gb").to_string(), "40.00");
}

#[test]
fn count_meter_with_allowance_and_packages() {
    // 4 calls, 1 free, 3 chargeable in packages of 2: 2 started packages × 1.00 = 2.00.
    let mut u = Usage::new(catalog());
    for i in 0..4 {
        u.add(&format!("e{i}"), "A", "api.calls", dec!(99), T);
    }
    let bill = u.bill(&customer(&["A"]), &standard());
    let l = line(&bill, "api.calls");
    assert_eq!(l.quantity, dec!(4), "count ignores quantities");
    assert_eq!(l.amount.to_string(), "2.00");
}

#[test]
fn unique_count_and_latest() {
    // Users: A sees u1, u2, u1 (2 distinct), B sees u3 (1): 3 × 0.50 = 1.50.
    // Seats (latest): 5 at 10:00, then 3 at 11:00 → 3 × 10 = 30.00, in whatever order applied.
    let mut u = Usage::new(catalog());
    u.add_dim("e1", "A", "app.active_users", dec!(1), T, Some("u1"))
        .add_dim("e2", "A", "app.active_users", dec!(1), T, Some("u2"))
        .add_dim("e3", "A", "app.active_users", dec!(1), T, Some("u1"))
        .add_dim("e4", "B", "app.active_users", dec!(1), T, Some("u3"))
        .add("e5", "A", "seats", dec!(3), "2026-11-03T11:00:00Z")
        .add("e6", "A", "seats", dec!(5), "2026-11-03T10:00:00Z");
    let bill = u.bill(&customer(&["A", "B"]), &standard());
    assert_eq!(line(&bill, "app.active_users").quantity, dec!(3));
    assert_eq!(line(&bill, "app.active_users").amount.to_string(), "1.50");
    assert_eq!(share(&bill, "A", "app.active_users").to_string(), "1.00");
    assert_eq!(line(&bill, "seats").amount.to_string(), "30.00");
}

#[test]
fn duplicate_event_ids_are_applied_once() {
    // The same event sent twice counts once: 720 h → 29.95, not 59.90.
    let mut u = two_lines();
    u.add("e1", "A", "ec2.instance_hours", dec!(720), T);
    let bill = u.bill(&customer(&["A", "B"]), &standard());
    assert_eq!(line(&bill, "ec2.instance_hours").amount.to_string(), "29.95");
}

#[test]
fn discounts_whole_bill_then_per_meter() {
    // Lines: ec2 29.95, transfer 368.64 (subtotal 398.59).
    // "edp" 10% on everything: ec2 2.995 → 3.00 (half-even), transfer 36.864 → 36.86: 39.86.
    // "cdn" 5% on transfer only, of its net 368.64 − 36.86 = 331.78: 16.589 → 16.59.
    // Total 398.59 − 39.86 − 16.59 = 342.14.
    let mut c = customer(&["A", "B"]);
    c.terms_mut().discounts = thin_vec::thin_vec![
        Discount {
            id: "edp".into(),
            percent: dec!(10),
            meters: None,
        },
        Discount {
            id: "cdn".into(),
            percent: dec!(5),
            meters: Some(vec!["data_transfer_out.gb".into()]),
        },
    ];
    let bill = two_lines().bill(&c, &standard());
    assert_eq!(bill.subtotal.to_string(), "398.59");
    assert_eq!(bill.discounts[0].amount.to_string(), "39.86");
    assert_eq!(bill.discounts[1].amount.to_string(), "16.59");
    assert_eq!(bill.total.to_string(), "342.14");
}

fn credit(id: &str, amount: Decimal, expires: &str, meters: Option<&[&str]>, granted: u64) -> Credit {
    Credit {
        id: id.into(),
        amount,
        expires: Some(expires.parse().unwrap()),
        meters: meters.map(|m| m.iter().map(|s| s.to_string()).collect()),
        granted,
    }
}

#[test]
fn credits_soonest_expiry_then_narrowest_then_oldest() {
    // Charges: ec2 29.95, transfer 368.64.
    // Order: "soon" (expires 2026-12-31) first; "narrow" (ec2 only) and "old" both expire
    // 2027-06-30, "narrow" has the narrower scope; "older" and "old" tie on expiry and
    // scope, "older" was granted first; "expired" ended before November and is skipped.
    // soon 50: ec2 29.95 (→ 0), transfer 20.05 (→ 348.59); remaining 0.
    // narrow 20 on ec2: ec2 is already 0, nothing applied, no line.
    // older 100: transfer → 248.59. old 300: transfer 248.59 → 0, remaining 51.41.
    let mut c = customer(&["A", "B"]);
    c.terms_mut().credits = thin_vec::thin_vec![
        credit("old", dec!(300), "2027-06-30", None, 3),
        credit("narrow", dec!(20), "2027-06-30", Some(&["ec2.instance_hours"]), 4),
        credit("soon", dec!(50), "2026-12-31", None, 5),
        credit("older", dec!(100), "2027-06-30", None, 1),
        credit("expired", dec!(500), "2026-10-31", None, 0),
    ];
    let bill = two_lines().bill(&c, &standard());
    let applied: Vec<(String, String, String)> = bill
        .credits
        .iter()
        .map(|l| (l.id.clone(), l.amount.to_string(), l.remaining.to_string()))
        .collect();
    assert_eq!(
        applied,
        [
            ("soon".into(), "50.00".into(), "0.00".into()),
            ("older".into(), "100.00".into(), "0.00".into()),
            ("old".into(), "248.59".into(), "51.41".into()),
        ]
    );
    assert_eq!(
        bill.total.to_string(),
        "0.00",
        "credits never take a charge below zero"
    );
}

#[test]
fn scoped_credit_pays_only_its_meters() {
    // "ec2" credit of 20 on ec2 only: ec2 29.95 → 9.95; transfer untouched.
    // Total 398.59 − 20 = 378.59.
    let mut c = customer(&["A", "B"]);
    c.terms_mut().credits = thin_vec::thin_vec![credit(
        "ec2",
        dec!(20),
        "2027-01-31",
        Some(&["ec2.instance_hours"]),
        0,
    )];
    let bill = two_lines().bill(&c, &standard());
    assert_eq!(bill.credits[0].amount.to_string(), "20.00");
    assert_eq!(bill.total.to_string(), "378.59");
}

#[test]
fn commitment_true_up() {
    // Enterprise: price, round, discounts, commitment, credits, tax; minimum 1000.00.
    // Spend 398.59 < 1000 → true-up 601.41, total 1000.00.
    // With an unscoped credit of 100: it pays ec2 29.95 and transfer 70.05, total 900.00.
    let enterprise = profile(
        &[Price, Round, Discounts, Commitment, Credits, Tax],
        Some(dec!(1000)),
    );
    let c = customer(&["A", "B"]);
    let bill = two_lines().bill(&c, &enterprise);
    let t = bill.commitment.as_ref().unwrap();
    assert_eq!(
        (t.spend.to_string(), t.amount.to_string()),
        ("398.59".into(), "601.41".into())
    );
    assert_eq!(bill.total.to_string(), "1000.00");
    let mut c = c;
    c.terms_mut().credits = thin_vec::thin_vec![credit("promo", dec!(100), "2027-01-31", None, 0)];
    assert_eq!(two_lines().bill(&c, &enterprise).total.to_string(), "900.00");
    // The customer's own commitment overrides the profile's: 300 < 398.59, no true-up.
    c.terms_mut().commitment = Some(dec!(300));
    c.terms_mut().credits.clear();
    let bill = two_lines().bill(&c, &enterprise);
    assert!(bill.commitment.is_none());
    assert_eq!(bill.total.to_string(), "398.59");
    // No usage at all: the whole commitment is charged.
    let bill = Usage::new(catalog()).bill(&customer(&["A"]), &enterprise);
    assert_eq!(bill.total.to_string(), "1000.00");
}

#[test]
fn tax_on_the_net() {
    // 20% of 398.59 = 79.718 → 79.72; total 478.31.
    // After a 10% discount (39.86): base 358.73, tax 71.746 → 71.75, total 430.48.
    let mut c = customer(&["A", "B"]);
    c.tax_rate = dec!(0.2);
    let bill = two_lines().bill(&c, &standard());
    assert_eq!(
        (bill.tax.base.to_string(), bill.tax.amount.to_string()),
        ("398.59".into(), "79.72".into())
    );
    assert_eq!(bill.total.to_string(), "478.31");
    c.terms_mut().discounts = thin_vec::thin_vec![Discount {
        id: "edp".into(),
        percent: dec!(10),
        meters: None,
    }];
    let bill = two_lines().bill(&c, &standard());
    assert_eq!(bill.tax.amount.to_string(), "71.75");
    assert_eq!(bill.total.to_string(), "430.48");
}

#[test]
fn rounding_follows_currency_and_mode() {
    // 720 h × 0.0416 = 29.952. In JPY (no minor unit): half-even → 30.
    // 2.5 h × 1 = 2.5 JPY: half-even → 2, half-up → 3, down → 2.
    let jpy = Currency::from_code("JPY").unwrap();
    let kwd = Currency::from_code("KWD").unwrap();
    let c = customer(&["A"]);
    let mut u = Usage::new(catalog());
    u.add("e1", "A", "ec2.instance_hours", dec!(720), T);
    let bill = u.bill_with(Rounding::new(jpy, RoundingMode::HalfEven), &c, &standard());
    assert_eq!(bill.total.to_string(), "30");
    // In KWD (3 minor digits): 29.952 stays 29.952.
    let bill = u.bill_with(Rounding::new(kwd, RoundingMode::HalfEven), &c, &standard());
    assert_eq!(bill.total.to_string(), "29.952");
    let mut u = Usage::new(catalog());
    u.add("e1", "A", "seats", dec!(0.25), T); // 0.25 × 10 = 2.5
    for (mode, expected) in [
        (RoundingMode::HalfEven, "2"),
        (RoundingMode::HalfUp, "3"),
        (RoundingMode::Down, "2"),
        (RoundingMode::Up, "3"),
    ] {
        assert_eq!(
            u.bill_with(Rounding::new(jpy, mode), &c, &standard())
                .total
                .to_string(),
            expected
        );
    }
}

#[test]
fn price_change_mid_period_applies_from_its_date() {
    // Version 0 (Nov 1) as the catalog; version 1 (Nov 15) lowers transfer tier 2 to 0.08.
    // 8000 GB on Nov 3 (v0), 5000 GB on Nov 20 (v1): tiers keep counting across the change:
    // v0: 8000 × 0.09 = 720; v1: 2240 × 0.09 = 201.60 + 2760 × 0.08 = 220.80; total 1142.40.
    let mut cat = catalog();
    let mut v1: CatalogVersionSpec = serde_json::from_str(CATALOG).unwrap();
    v1.effective_from = "2026-11-15".parse().unwrap();
    if let crate::domain::price::PriceModel::Graduated { tiers } = &mut v1.meters[1].price {
        tiers[1].unit_price = dec!(0.08);
    }
    cat.publish(&v1).unwrap();
    let mut u = Usage::new(cat);
    u.add("e1", "A", "data_transfer_out.gb", dec!(8000), T).add(
        "e2",
        "A",
        "data_transfer_out.gb",
        dec!(5000),
        "2026-11-20T00:00:00Z",
    );
    let bill = u.bill(&customer(&["A"]), &standard());
    assert_eq!(line(&bill, "data_transfer_out.gb").amount.to_string(), "1142.40");
    assert_eq!(line(&bill, "data_transfer_out.gb").tiers.len(), 3);
}

#[test]
fn a_customer_without_usage_owes_nothing_on_standard() {
    let bill = Usage::new(catalog()).bill(&customer(&["A"]), &standard());
    assert!(bill.lines.is_empty() && bill.accounts.is_empty());
    assert_eq!(bill.total.to_string(), "0.00");
}

#[test]
fn proportional_shares_exact_and_fallback_paths() {
    // 0.10 split 1 : 2 → 10 × 1/3 = 3.33… → 0.03 and 10 × 2/3 = 6.66… → 0.06 (toward zero).
    let mut out = Vec::new();
    let a = proportional_shares(usd(), dec!(0.10), &[(0, dec!(1)), (1, dec!(2.0))], &mut out);
    assert_eq!(out, [dec!(0.03), dec!(0.06)]);
    assert_eq!((a.remainder, a.largest), (dec!(0.01), 1));
    // Quantities whose mantissas overflow 128 bits once multiplied take the decimal path:
    // 1,000,000,000,000.00 split in two equal huge halves → 500,000,000,000.00 each.
    let huge = dec!(999999999999999.999999999999);
    let a = proportional_shares(usd(), dec!(1000000000000.00), &[(0, huge), (1, huge)], &mut out);
    assert_eq!(out, [dec!(500000000000.00), dec!(500000000000.00)]);
    assert_eq!((a.remainder, a.largest), (dec!(0), 0));
    // All-zero quantities share nothing (the remainder rule then gives it all to the first).
    let a = proportional_shares(usd(), dec!(5.00), &[(0, dec!(0)), (1, dec!(0))], &mut out);
    assert_eq!(out, [dec!(0.00), dec!(0.00)]);
    assert_eq!((a.remainder, a.largest), (dec!(5.00), 0));
}

/// Late usage re-rated with the invoiced usage of its period, tiers continuing.
#[test]
fn late_usage_is_re_rated_from_the_invoiced_quantity() {
    // Invoiced in November: 10 000 GB out (graduated: first tier 0.09 up to 10 240 GB):
    // 10 000 × 0.09 = 900.00. Late: 500 GB on another account. Re-rated, 10 500 GB:
    // 10 240 × 0.09 + 260 × 0.085 = 921.60 + 22.10 = 943.70; the adjustment is
    // 943.70 − 900.00 = 43.70 (not 500 × 0.09 = 45.00: tiers continue).
    let mut base = Usage::new(catalog());
    base.add("e1", "A", "data_transfer_out.gb", dec!(10000), T);
    let mut late = Usage::new(catalog());
    late.add(
        "late-1",
        "B",
        "data_transfer_out.gb",
        dec!(500),
        "2026-11-30T23:00:00Z",
    );
    let ctx = BillingContext {
        catalog: &base.catalog,
        rounding: usd(),
        period: "2026-11".parse().unwrap(),
    };
    let adjustments = late_adjustments(
        &ctx,
        base.accounts.iter().map(|(a, u)| (a, u)),
        late.accounts.iter().map(|(a, u)| (a, u)),
    );
    assert_eq!(adjustments.len(), 1);
    let a = &adjustments[0];
    assert_eq!((&*a.meter, a.quantity), ("data_transfer_out.gb", dec!(500)));
    assert_eq!(
        (a.invoiced, a.rerated, a.amount),
        (dec!(900.00), dec!(943.70), dec!(43.70))
    );

    // On December's bill (ec2 100 h × 0.0416 = 4.16) the adjustment is a charge like
    // any other: a 10% discount takes 0.42 (4.16 → 0.416 → 0.42) and 4.37 (43.70 →
    // 4.37); subtotal 4.16 + 43.70 = 47.86; total 47.86 − 4.79 = 43.07.
    let mut december = Usage::new(catalog());
    december.add("d1", "A", "ec2.instance_hours", dec!(100), "2026-12-02T00:00:00Z");
    let mut acme = customer(&["A", "B"]);
    acme.terms_mut().discounts.push(Discount {
        id: "edp".into(),
        percent: dec!(10),
        meters: None,
    });
    let ctx = BillingContext {
        catalog: &december.catalog,
        rounding: usd(),
        period: "2026-11".parse().unwrap(),
    };
    let bill = bill_customer_with(
        &ctx,
        &acme,
        &standard(),
        december.accounts.iter().map(|(a, u)| (a, u)),
        adjustments,
    );
    bill.check().unwrap();
    assert_eq!(bill.subtotal, dec!(47.86));
    assert_eq!(bill.discounts[0].amount, dec!(4.79));
    assert_eq!(bill.total, dec!(43.07));

    // Late usage already covered by a free allowance re-rates to nothing more.
    let mut small = Usage::new(catalog());
    small.add("e1", "A", "api.calls", dec!(1), T);
    let mut late = Usage::new(catalog());
    late.add("late-2", "A", "api.calls", dec!(1), T);
    // api.calls: 1 free, then packages of 2 at 1.00: invoiced 1 call → 0.00; with the
    // late one, 2 calls → 1 billable → one package, 1.00.
    let ctx = BillingContext {
        catalog: &small.catalog,
        rounding: usd(),
        period: "2026-11".parse().unwrap(),
    };
    let adjustments = late_adjustments(
        &ctx,
        small.accounts.iter().map(|(a, u)| (a, u)),
        late.accounts.iter().map(|(a, u)| (a, u)),
    );
    assert_eq!(
        (adjustments[0].invoiced, adjustments[0].amount),
        (dec!(0.00), dec!(1.00))
    );
}
