//! Property tests of the billing domain's invariants:
//! - a bill's total is exactly the sum of its rounded lines, and every meter line is
//!   exactly the sum of its allocations to accounts;
//! - pooling graduated tiers (non-increasing prices) never costs more than pricing each
//!   account alone;
//! - applying the same events in any order, with any of them retried, gives the same bill.

use proptest::prelude::*;
use rust_decimal::Decimal;
use tallyman::domain::catalog::{AggregationKind, MeterDefinition};
use tallyman::domain::customer::{Credit, Discount};
use tallyman::domain::price::{PriceModel, PricePlan, Tier};
use tallyman::domain::usage::event_fingerprint;
use tallyman::domain::*;

const METERS: [(&str, AggregationKind); 6] = [
    ("ec2.instance_hours", AggregationKind::Sum),
    ("data_transfer_out.gb", AggregationKind::Sum),
    ("db.storage_gb", AggregationKind::Max),
    ("lambda.requests", AggregationKind::Count),
    ("app.active_users", AggregationKind::UniqueCount),
    ("seats", AggregationKind::Latest),
];

fn decimal(max: i64, max_scale: u32) -> impl Strategy<Value = Decimal> {
    (0..=max, 0..=max_scale).prop_map(|(n, s)| Decimal::new(n, s))
}

fn tiers() -> impl Strategy<Value = Vec<Tier>> {
    prop::collection::vec((1i64..5_000, decimal(100_000, 4), decimal(1_000, 2)), 1..4).prop_map(|raw| {
        let mut bound = Decimal::ZERO;
        let n = raw.len();
        raw.into_iter()
            .enumerate()
            .map(|(i, (step, unit_price, flat_fee))| {
                bound += Decimal::from(step);
                Tier {
                    up_to: (i + 1 < n).then_some(bound),
                    unit_price: unit_price / Decimal::from(1000),
                    flat_fee,
                }
            })
            .collect()
    })
}

fn model() -> impl Strategy<Value = PriceModel> {
    prop_oneof![
        decimal(100_000, 6).prop_map(|unit_price| PriceModel::PerUnit { unit_price }),
        tiers().prop_map(|tiers| PriceModel::Graduated { tiers }),
        tiers().prop_map(|tiers| PriceModel::Volume { tiers }),
        (1i64..1_000, decimal(10_000, 2)).prop_map(|(size, package_price)| PriceModel::Package {
            package_size: Decimal::from(size),
            package_price
        }),
    ]
}

fn version(date: &'static str) -> impl Strategy<Value = CatalogVersionSpec> {
    prop::collection::vec((model(), decimal(50, 0)), METERS.len()).prop_map(move |plans| CatalogVersionSpec {
        effective_from: date.parse().unwrap(),
        meters: METERS
            .iter()
            .zip(plans)
            .map(
                |(&(name, aggregation), (price, free_allowance))| MeterDefinition {
                    name: name.into(),
                    aggregation,
                    dimension: (aggregation == AggregationKind::UniqueCount).then(|| "user".into()),
                    unit: None,
                    free_allowance,
                    price,
                },
            )
            .collect(),
    })
}

/// `plan` with every price and fee scaled by `factor` percent: the same shape.
fn repriced(plan: &PriceModel, factor: i64) -> PriceModel {
    let scale = |d: Decimal| d * Decimal::new(factor, 2);
    let tiers = |tiers: &[Tier]| {
        tiers
            .iter()
            .map(|t| Tier {
                up_to: t.up_to,
                unit_price: scale(t.unit_price),
                flat_fee: scale(t.flat_fee),
            })
            .collect()
    };
    match plan {
        PriceModel::PerUnit { unit_price } => PriceModel::PerUnit {
            unit_price: scale(*unit_price),
        },
        PriceModel::Graduated { tiers: t } => PriceModel::Graduated { tiers: tiers(t) },
        PriceModel::Volume { tiers: t } => PriceModel::Volume { tiers: tiers(t) },
        PriceModel::Package {
            package_size,
            package_price,
        } => PriceModel::Package {
            package_size: *package_size,
            package_price: scale(*package_price),
        },
    }
}

/// A catalog with one version, or two when a price change (new prices and fees, same
/// shape) falls on November 15th.
fn catalog() -> impl Strategy<Value = Catalog> {
    (
        version("2026-11-01"),
        prop::option::of(prop::collection::vec(0i64..300, METERS.len())),
    )
        .prop_map(|(v0, change)| {
            let mut c = Catalog::new();
            c.publish(&v0).unwrap();
            if let Some(factors) = change {
                let mut v1 = v0.clone();
                v1.effective_from = "2026-11-15".parse().unwrap();
                for (m, f) in v1.meters.iter_mut().zip(factors) {
                    m.price = repriced(&m.price, f);
                }
                c.publish(&v1).unwrap();
            }
            c
        })
}

#[derive(Clone, Debug)]
struct Event {
    id: String,
    account: usize,
    meter: usize,
    quantity: Decimal,
    day: u32,
    user: u8,
}

fn events(accounts: usize) -> impl Strategy<Value = Vec<Event>> {
    prop::collection::vec(
        (
            0..accounts,
            0..METERS.len(),
            decimal(20_000, 3),
            1u32..=30,
            0u8..6,
        ),
        0..60,
    )
    .prop_map(|raw| {
        raw.into_iter()
            .enumerate()
            .map(|(i, (account, meter, quantity, day, user))| Event {
                id: format!("evt-{i}"),
                account,
                meter,
                quantity,
                day,
                user,
            })
            .collect()
    })
}

fn account_name(i: usize) -> String {
    format!("acct-{i:02}")
}

/// Folds `events` into per-account usage, in the order given.
fn fold(catalog: &Catalog, accounts: usize, events: &[Event]) -> Vec<(AccountId, AccountUsage)> {
    let mut usage: Vec<(AccountId, AccountUsage)> = (0..accounts)
        .map(|i| (AccountId::from(account_name(i)), AccountUsage::default()))
        .collect();
    for e in events {
        let event = UsageEvent {
            id: e.id.clone(),
            account: account_name(e.account),
            meter: METERS[e.meter].0.into(),
            quantity: e.quantity,
            time: format!("2026-11-{:02}T12:00:00Z", e.day).parse().unwrap(),
            dimensions: [("user".to_string(), format!("user-{}", e.user))].into(),
        };
        let (meter, reading) = catalog.resolve(&event, event.time.date_naive()).unwrap();
        usage[e.account]
            .1
            .apply(event_fingerprint(&event.id), meter, &reading)
            .unwrap();
    }
    usage
}

fn customer(accounts: usize, tax_rate: Decimal, discounts: Vec<Discount>, credits: Vec<Credit>) -> Customer {
    let spec = CustomerSpec {
        tax_rate,
        discounts,
        credits,
        ..CustomerSpec::new(
            "family",
            account_name(0),
            (0..accounts).map(account_name).collect(),
            "p",
        )
    };
    Customer::from_spec(spec, Currency::from_code("USD").unwrap()).unwrap()
}

fn scope() -> impl Strategy<Value = Option<Vec<String>>> {
    prop::option::of(prop::sample::subsequence(
        METERS.map(|m| m.0.to_string()).to_vec(),
        1..3,
    ))
}

fn discounts() -> impl Strategy<Value = Vec<Discount>> {
    prop::collection::vec((1i64..=100, scope()), 0..3).prop_map(|raw| {
        raw.into_iter()
            .enumerate()
            .map(|(i, (percent, meters))| Discount {
                id: format!("d{i}"),
                percent: Decimal::from(percent),
                meters,
            })
            .collect()
    })
}

fn credits() -> impl Strategy<Value = Vec<Credit>> {
    prop::collection::vec(
        (1i64..100_000, prop::option::of(1u32..=28), scope(), 0u64..5),
        0..4,
    )
    .prop_map(|raw| {
        raw.into_iter()
            .enumerate()
            .map(|(i, (cents, day, meters, granted))| Credit {
                id: format!("c{i}"),
                amount: Decimal::new(cents, 2),
                expires: day.map(|d| format!("2026-12-{d:02}").parse().unwrap()),
                meters,
                granted,
            })
            .collect()
    })
}

fn profile() -> impl Strategy<Value = BillingProfile> {
    use BillingStep::*;
    (
        Just(vec![Discounts, Credits, Commitment, Tax]).prop_shuffle(),
        prop::option::of(decimal(100_000, 2)),
    )
        .prop_map(|(rest, minimum_commitment)| {
            let mut steps = vec![Price, Round];
            steps.extend(rest);
            BillingProfile::new(
                "p",
                ProfileSpec {
                    steps,
                    minimum_commitment,
                },
            )
            .unwrap()
        })
}

fn bill(
    catalog: &Catalog,
    customer: &Customer,
    profile: &BillingProfile,
    usage: &[(AccountId, AccountUsage)],
) -> Bill {
    let ctx = BillingContext {
        catalog,
        rounding: Rounding::new(Currency::from_code("USD").unwrap(), RoundingMode::HalfEven),
        period: "2026-11".parse().unwrap(),
    };
    bill_customer(&ctx, customer, profile, usage.iter().map(|(a, u)| (a, u)))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    /// A customer finds each of its accounts where its sorted list has it, and no other,
    /// whatever accounts join and leave (through its hash index, tag bytes up to 16
    /// accounts and a table past that, kept up to date by `add_account` and
    /// `remove_account`).
    #[test]
    fn a_customer_finds_its_accounts_through_joins_and_departures(
        ids in prop::collection::btree_set("[0-9a-z]{1,20}", 1..120),
        moves in prop::collection::vec((any::<bool>(), "[0-9a-z]{1,20}"), 0..60),
    ) {
        let mut ids: Vec<String> = ids.into_iter().collect();
        let payer = ids.remove(0);
        let spec = CustomerSpec::new("family", payer, ids, "p");
        let mut c = Customer::from_spec(spec, Currency::from_code("USD").unwrap()).unwrap();
        let check = |c: &Customer, probes: &[&str]| -> Result<(), TestCaseError> {
            for (i, a) in c.accounts.iter().enumerate() {
                prop_assert_eq!(c.position(a), Some(i));
            }
            for p in probes {
                prop_assert_eq!(c.position(p), c.accounts.binary_search_by(|a| a.as_str().cmp(p)).ok());
            }
            Ok(())
        };
        check(&c, &[])?;
        for (join, id) in &moves {
            if *join {
                c.add_account(id.as_str().into());
            } else {
                c.remove_account(id);
            }
            check(&c, &[id.as_str(), "zzzzzzzzzzzzzzzzzzzzz", "0"])?;
        }
    }

    /// The hot path's comparison of account ids orders them exactly as `str` does (the
    /// customer's account list is sorted by `str`'s order and searched with it).
    #[test]
    fn account_ids_order_as_strings(a in "[0-9a-z\\x00-]{0,20}", b in "[0-9a-z\\x00-]{0,20}") {
        use tallyman::compact::short_id::cmp_as_str;
        prop_assert_eq!(cmp_as_str(&a, &b), a.as_str().cmp(b.as_str()));
        prop_assert_eq!(cmp_as_str(&a, &a), std::cmp::Ordering::Equal);
    }

    #[test]
    fn totals_are_the_sum_of_rounded_lines(
        catalog in catalog(),
        accounts in 1usize..6,
        seed_events in events(6),
        tax in 0i64..=30,
        discounts in discounts(),
        credits in credits(),
        profile in profile(),
    ) {
        let events: Vec<Event> = seed_events.into_iter().filter(|e| e.account < accounts).collect();
        let usage = fold(&catalog, accounts, &events);
        let customer = customer(accounts, Decimal::new(tax, 2), discounts, credits.clone());
        let b = bill(&catalog, &customer, &profile, &usage);
        // Lines, allocations, subtotal, and total = subtotal − discounts − credits + commitment + tax.
        prop_assert_eq!(b.check(), Ok(()));
        for line in &b.lines {
            let shares: Decimal = b.accounts.iter().flat_map(|a| &a.lines)
                .filter(|l| l.meter == line.meter).map(|l| l.amount).sum();
            prop_assert_eq!(shares, line.amount, "allocated shares add up to the pooled charge");
        }
        prop_assert!(b.total >= Decimal::ZERO);
        for applied in &b.credits {
            let granted = credits.iter().find(|c| c.id == applied.id).unwrap();
            prop_assert_eq!(applied.amount + applied.remaining, granted.amount, "a credit pays at most its balance");
        }
    }

    #[test]
    fn pooled_graduated_price_is_not_more_than_unpooled(
        steps in prop::collection::vec((1i64..5_000, 1i64..100_000), 1..5),
        quantities in prop::collection::vec(decimal(50_000, 2), 1..8),
    ) {
        // Non-increasing unit prices, no flat fees, no allowance: the usual volume discount.
        let mut prices: Vec<i64> = steps.iter().map(|s| s.1).collect();
        prices.sort_unstable_by(|a, b| b.cmp(a));
        let mut bound = Decimal::ZERO;
        let n = steps.len();
        let tiers = steps.iter().zip(prices).enumerate().map(|(i, (&(step, _), price))| {
            bound += Decimal::from(step);
            Tier { up_to: (i + 1 < n).then_some(bound), unit_price: Decimal::new(price, 5), flat_fee: Decimal::ZERO }
        }).collect();
        let plan = PricePlan { free_allowance: Decimal::ZERO, model: PriceModel::Graduated { tiers } };
        plan.validate().unwrap();
        let mut rows = Vec::new();
        let pooled = plan.charge(quantities.iter().sum(), &mut rows, 0);
        let unpooled: Decimal = quantities.iter().map(|&q| plan.charge(q, &mut rows, 0)).sum();
        prop_assert!(pooled <= unpooled, "pooled {} > unpooled {}", pooled, unpooled);
    }

    #[test]
    fn order_and_retries_do_not_change_the_bill(
        catalog in catalog(),
        events in events(4),
        order in Just((0..120usize).collect::<Vec<_>>()).prop_shuffle(),
        retries in prop::collection::vec(any::<prop::sample::Index>(), 0..20),
        discounts in discounts(),
        credits in credits(),
        profile in profile(),
    ) {
        let customer = customer(4, Decimal::new(8, 2), discounts, credits);
        let expected = bill(&catalog, &customer, &profile, &fold(&catalog, 4, &events));
        // The same events in a shuffled order, with some of them sent again.
        let mut replay: Vec<Event> = order.iter().filter(|&&i| i < events.len()).map(|&i| events[i].clone()).collect();
        if !events.is_empty() {
            for r in &retries {
                let e = r.get(&events).clone();
                let at = r.index(replay.len() + 1);
                replay.insert(at, e);
            }
        }
        let got = bill(&catalog, &customer, &profile, &fold(&catalog, 4, &replay));
        prop_assert_eq!(got, expected);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    /// Usage folded in two parts and merged equals usage folded whole: what moving an
    /// account between customers relies on.
    #[test]
    fn merging_split_usage_equals_folding_it_whole(
        catalog in catalog(),
        events in events(1),
        mask in prop::collection::vec(any::<bool>(), 60),
    ) {
        let side = |keep: bool| -> Vec<Event> {
            events.iter().enumerate().filter(|(i, _)| mask[*i] == keep).map(|(_, e)| e.clone()).collect()
        };
        let (left, right) = (side(true), side(false));
        let whole = fold(&catalog, 1, &events).pop().unwrap().1;
        let mut merged = fold(&catalog, 1, &left).pop().unwrap().1;
        merged.merge(&fold(&catalog, 1, &right).pop().unwrap().1).unwrap();
        prop_assert_eq!(merged, whole);
    }
}
