//! Pricing throughput: how many accounts the billing steps price per second on one core.
//!
//! A realistic mix: 2,000 customers with families of 1–50 accounts (uniform, ~51k
//! accounts), each account using 5–10 of the 10 meters, which cover every aggregation and
//! every price model (per-unit, graduated with flat fees, volume, package, allowances).
//! Customers are on `standard` (with a discount and a credit) or `enterprise`
//! (commitment, tax). Run: `cargo bench --bench pricing`.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use rust_decimal::Decimal;
use tallyman::domain::customer::{Credit, Discount};
use tallyman::domain::usage::event_fingerprint;
use tallyman::domain::*;

const CATALOG: &str = r#"{
  "effective_from": "2026-11-01",
  "meters": [
    {"name": "ec2.instance_hours", "aggregation": "sum", "price": {"model": "per_unit", "unit_price": "0.0416"}},
    {"name": "s3.storage_gb_month", "aggregation": "sum", "price": {"model": "graduated", "tiers": [
        {"up_to": "51200", "unit_price": "0.023"}, {"up_to": "512000", "unit_price": "0.022"}, {"up_to": null, "unit_price": "0.021"}]}},
    {"name": "lambda.requests", "aggregation": "sum", "free_allowance": "1000000",
     "price": {"model": "package", "package_size": "1000000", "package_price": "0.20"}},
    {"name": "apigw.calls", "aggregation": "count", "price": {"model": "per_unit", "unit_price": "0.0000035"}},
    {"name": "data_transfer_out.gb", "aggregation": "sum", "free_allowance": "100", "price": {"model": "graduated", "tiers": [
        {"up_to": "10240", "unit_price": "0.09"}, {"up_to": "51200", "unit_price": "0.085"},
        {"up_to": "153600", "unit_price": "0.07"}, {"up_to": null, "unit_price": "0.05"}]}},
    {"name": "db.storage_gb", "aggregation": "max", "price": {"model": "volume", "tiers": [
        {"up_to": "1000", "unit_price": "0.10"}, {"up_to": "10000", "unit_price": "0.08"}, {"up_to": null, "unit_price": "0.06", "flat_fee": "5"}]}},
    {"name": "cognito.active_users", "aggregation": "unique_count", "dimension": "user", "free_allowance": "50",
     "price": {"model": "graduated", "tiers": [{"up_to": "50000", "unit_price": "0.0055"}, {"up_to": null, "unit_price": "0.0046"}]}},
    {"name": "support.seats", "aggregation": "latest", "price": {"model": "graduated", "tiers": [
        {"up_to": "10", "unit_price": "0", "flat_fee": "100.00"}, {"up_to": null, "unit_price": "12.00"}]}},
    {"name": "ebs.iops", "aggregation": "sum", "price": {"model": "volume", "tiers": [
        {"up_to": "3000", "unit_price": "0"}, {"up_to": null, "unit_price": "0.005"}]}},
    {"name": "kinesis.shard_hours", "aggregation": "sum", "price": {"model": "per_unit", "unit_price": "0.015"}}
  ]
}"#;

/// splitmix64: a tiny seeded generator, so every run prices the same data.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo + 1)
    }
}

struct Family {
    customer: Customer,
    usage: Vec<(AccountId, AccountUsage)>,
}

fn families(count: usize, catalog: &Catalog) -> Vec<Family> {
    let usd = Currency::from_code("USD").unwrap();
    let meters: Vec<(MeterId, String)> = catalog.meters().map(|(id, m)| (id, m.name.to_string())).collect();
    let mut rng = Rng(7);
    let mut event = 0u64;
    (0..count)
        .map(|c| {
            let size = rng.range(1, 50) as usize;
            let accounts: Vec<String> = (0..size).map(|a| format!("{c:06}{a:06}")).collect();
            let enterprise = c % 4 == 0;
            let profile = if enterprise { "enterprise" } else { "standard" };
            let spec = CustomerSpec {
                tax_rate: Decimal::new(8, 2),
                discounts: vec![Discount {
                    id: "edp".into(),
                    percent: Decimal::from(5),
                    meters: None,
                }],
                credits: vec![Credit {
                    id: "promo".into(),
                    amount: Decimal::new(2500, 2),
                    expires: Some("2027-01-31".parse().unwrap()),
                    meters: Some(vec!["ec2.instance_hours".into()]),
                    granted: 0,
                }],
                ..CustomerSpec::new(
                    format!("customer-{c}"),
                    accounts[0].clone(),
                    accounts.clone(),
                    profile,
                )
            };
            let customer = Customer::from_spec(spec, usd).unwrap();
            let usage = customer
                .accounts
                .iter()
                .map(|account| {
                    let mut u = AccountUsage::default();
                    let used = rng.range(5, 10) as usize;
                    let first = rng.range(0, 9) as usize;
                    for k in 0..used {
                        let (meter, name) = &meters[(first + k) % meters.len()];
                        for _ in 0..rng.range(1, 3) {
                            event += 1;
                            let e = UsageEvent {
                                id: format!("evt-{event}"),
                                account: account.to_string(),
                                meter: name.clone(),
                                quantity: Decimal::new(rng.range(1, 5_000_000) as i64, 2),
                                time: format!("2026-11-{:02}T10:00:00Z", rng.range(1, 30))
                                    .parse()
                                    .unwrap(),
                                dimensions: [("user".to_string(), format!("u{}", rng.range(0, 200)))].into(),
                            };
                            let (id, reading) = catalog.resolve(&e, e.time.date_naive()).unwrap();
                            assert_eq!(id, *meter);
                            u.apply(event_fingerprint(&e.id), id, &reading).unwrap();
                        }
                    }
                    (account.clone(), u)
                })
                .collect();
            Family { customer, usage }
        })
        .collect()
}

fn pricing(c: &mut Criterion) {
    let spec: CatalogVersionSpec = serde_json::from_str(CATALOG).unwrap();
    let mut catalog = Catalog::new();
    catalog.publish(&spec).unwrap();
    let standard = BillingProfile::new(
        "standard",
        ProfileSpec {
            steps: vec![
                BillingStep::Price,
                BillingStep::Round,
                BillingStep::Discounts,
                BillingStep::Credits,
                BillingStep::Tax,
            ],
            minimum_commitment: None,
        },
    )
    .unwrap();
    let enterprise = BillingProfile::new(
        "enterprise",
        ProfileSpec {
            steps: vec![
                BillingStep::Price,
                BillingStep::Round,
                BillingStep::Discounts,
                BillingStep::Commitment,
                BillingStep::Credits,
                BillingStep::Tax,
            ],
            minimum_commitment: Some(Decimal::from(1000)),
        },
    )
    .unwrap();
    let families = families(2_000, &catalog);
    let accounts: usize = families.iter().map(|f| f.usage.len()).sum();
    let ctx = BillingContext {
        catalog: &catalog,
        rounding: Rounding::new(Currency::from_code("USD").unwrap(), RoundingMode::HalfEven),
        period: "2026-11".parse().unwrap(),
    };
    let mut group = c.benchmark_group("pricing");
    group.sample_size(20);
    group.throughput(Throughput::Elements(accounts as u64));
    group.bench_function(
        format!("{} customers, {accounts} accounts", families.len()),
        |b| {
            b.iter(|| {
                let mut total = Decimal::ZERO;
                for f in &families {
                    let profile = if f.customer.profile == "enterprise" {
                        &enterprise
                    } else {
                        &standard
                    };
                    let bill = bill_customer(&ctx, &f.customer, profile, f.usage.iter().map(|(a, u)| (a, u)));
                    total += bill.total;
                }
                total
            })
        },
    );
    group.finish();
}

criterion_group!(benches, pricing);
criterion_main!(benches);
