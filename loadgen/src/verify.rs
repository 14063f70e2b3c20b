//! `--verify`: loadgen's own, independent computation of every customer's bill, and its
//! comparison with the invoices tallyd wrote.
//!
//! This module owns the oracle. It reads the catalog's *data* (the price list tallyd
//! serves at `GET /v1/partitions/{p}/catalog`) and re-computes the bills from the
//! acknowledged events with its own deliberately plain code: per account and meter it
//! folds the events (sum, count, max, latest, distinct values), pools each meter's
//! quantity across the customer's accounts, prices the pooled quantity (free allowance,
//! then per-unit, graduated tiers with flat fees, volume tiers or packages), rounds each
//! line half-even to the currency's minor unit, splits each line back to the accounts
//! in proportion to their quantity (shares rounded down, the remainder to the account
//! with the largest quantity, the lowest id among equals), and adds tax at the
//! customer's rate. It must never call tallyman's pricing or billing code: a check that
//! ran the engine's own functions would check nothing.
//!
//! What it models is what the workload makes: customers without discounts, credits or
//! commitments, one catalog version for the whole period, events that are all on time.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::str::FromStr;

use rust_decimal::{Decimal, RoundingStrategy};
use serde::Serialize;

use crate::workload::{CustomerRecord, EventRecord};

/// How a meter's events fold into an account's quantity.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fold {
    Sum,
    Count,
    Max,
    Latest,
    Distinct { dimension: String },
}

/// A tier of a graduated or volume price; `up_to` is inclusive, `None` is open-ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tier {
    pub up_to: Option<Decimal>,
    pub unit_price: Decimal,
    pub flat_fee: Decimal,
}

/// How a chargeable quantity becomes money.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Model {
    PerUnit(Decimal),
    Graduated(Vec<Tier>),
    Volume(Vec<Tier>),
    Package { size: Decimal, price: Decimal },
}

/// One meter of the price list.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MeterPrice {
    pub name: String,
    pub fold: Fold,
    pub free_allowance: Decimal,
    pub model: Model,
}

/// The catalog version in force for the period, as data.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PriceList {
    pub effective_from: String,
    pub meters: Vec<MeterPrice>,
}

fn decimal(v: &serde_json::Value, what: &str) -> Result<Decimal, String> {
    let text = match v {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Number(n) => n.to_string(),
        other => return Err(format!("{what}: expected a decimal, got {other}")),
    };
    Decimal::from_str(&text).map_err(|e| format!("{what}: {text:?} is not a decimal ({e})"))
}

fn decimal_or_zero(v: &serde_json::Value, what: &str) -> Result<Decimal, String> {
    if v.is_null() {
        Ok(Decimal::ZERO)
    } else {
        decimal(v, what)
    }
}

fn tiers(v: &serde_json::Value, what: &str) -> Result<Vec<Tier>, String> {
    let list = v
        .as_array()
        .ok_or_else(|| format!("{what}.tiers: expected a list"))?;
    list.iter()
        .enumerate()
        .map(|(i, t)| {
            let at = format!("{what}.tiers[{i}]");
            Ok(Tier {
                up_to: if t["up_to"].is_null() {
                    None
                } else {
                    Some(decimal(&t["up_to"], &format!("{at}.up_to"))?)
                },
                unit_price: decimal(&t["unit_price"], &format!("{at}.unit_price"))?,
                flat_fee: decimal_or_zero(&t["flat_fee"], &format!("{at}.flat_fee"))?,
            })
        })
        .collect()
}

impl PriceList {
    /// Reads the catalog version JSON of `GET /v1/partitions/{p}/catalog` (API.md).
    pub fn from_catalog_json(v: &serde_json::Value) -> Result<PriceList, String> {
        let meters = v["meters"].as_array().ok_or("the catalog has no `meters` list")?;
        let meters = meters
            .iter()
            .enumerate()
            .map(|(i, m)| {
                let at = format!("meters[{i}]");
                let name = m["name"]
                    .as_str()
                    .ok_or_else(|| format!("{at}.name: missing"))?
                    .to_string();
                let fold = match m["aggregation"].as_str() {
                    Some("sum") => Fold::Sum,
                    Some("count") => Fold::Count,
                    Some("max") => Fold::Max,
                    Some("latest") => Fold::Latest,
                    Some("unique_count") => Fold::Distinct {
                        dimension: m["dimension"]
                            .as_str()
                            .ok_or_else(|| format!("{at}.dimension: missing for unique_count"))?
                            .to_string(),
                    },
                    other => return Err(format!("{at}.aggregation: unknown {other:?}")),
                };
                let p = &m["price"];
                let model = match p["model"].as_str() {
                    Some("per_unit") => {
                        Model::PerUnit(decimal(&p["unit_price"], &format!("{at}.price.unit_price"))?)
                    }
                    Some("graduated") => Model::Graduated(tiers(&p["tiers"], &format!("{at}.price"))?),
                    Some("volume") => Model::Volume(tiers(&p["tiers"], &format!("{at}.price"))?),
                    Some("package") => Model::Package {
                        size: decimal(&p["package_size"], &format!("{at}.price.package_size"))?,
                        price: decimal(&p["package_price"], &format!("{at}.price.package_price"))?,
                    },
                    other => return Err(format!("{at}.price.model: unknown {other:?}")),
                };
                Ok(MeterPrice {
                    name,
                    fold,
                    free_allowance: decimal_or_zero(&m["free_allowance"], &format!("{at}.free_allowance"))?,
                    model,
                })
            })
            .collect::<Result<Vec<_>, String>>()?;
        Ok(PriceList {
            effective_from: v["effective_from"].as_str().unwrap_or_default().to_string(),
            meters,
        })
    }

    fn index(&self, meter: &str) -> Option<usize> {
        self.meters.iter().position(|m| m.name == meter)
    }
}

impl MeterPrice {
    /// The exact (unrounded) charge for a family's period quantity.
    pub fn charge(&self, quantity: Decimal) -> Decimal {
        let q = (quantity - self.free_allowance).max(Decimal::ZERO);
        if q.is_zero() {
            return Decimal::ZERO;
        }
        match &self.model {
            Model::PerUnit(price) => q * price,
            Model::Graduated(tiers) => {
                // Each unit at the price of the tier it falls in; a tier's fee once it is reached.
                let mut amount = Decimal::ZERO;
                let mut lower = Decimal::ZERO;
                for t in tiers {
                    if q <= lower {
                        break;
                    }
                    let upper = t.up_to.map_or(q, |u| u.min(q));
                    amount += (upper - lower) * t.unit_price + t.flat_fee;
                    match t.up_to {
                        Some(u) => lower = u,
                        None => break,
                    }
                }
                amount
            }
            Model::Volume(tiers) => {
                // Every unit at the price of the tier the total falls in, plus its fee.
                let t = tiers
                    .iter()
                    .find(|t| t.up_to.is_none_or(|u| q <= u))
                    .or(tiers.last())
                    .expect("a volume price has tiers");
                q * t.unit_price + t.flat_fee
            }
            Model::Package { size, price } => (q / size).ceil() * price,
        }
    }
}

/// Digits of a currency's minor unit (ISO 4217): 0 for the yen and its like, 3 for the
/// dinars, 2 for the rest.
pub fn minor_units(currency: &str) -> u32 {
    match currency {
        "JPY" | "KRW" | "VND" | "CLP" | "ISK" => 0,
        "BHD" | "JOD" | "KWD" | "OMR" | "TND" => 3,
        _ => 2,
    }
}

fn round(amount: Decimal, minor: u32) -> Decimal {
    amount.round_dp_with_strategy(minor, RoundingStrategy::MidpointNearestEven)
}

/// One account's fold of one meter.
#[derive(Clone, Debug)]
enum Reading {
    Sum(Decimal),
    Count(u64),
    Max(Decimal),
    /// The time (seconds since the epoch) and quantity of the latest event.
    Latest(i64, Decimal),
    Distinct(HashSet<String>),
}

impl Reading {
    fn quantity(&self) -> Decimal {
        match self {
            Reading::Sum(q) | Reading::Max(q) | Reading::Latest(_, q) => *q,
            Reading::Count(n) => Decimal::from(*n),
            Reading::Distinct(values) => Decimal::from(values.len()),
        }
    }
}

/// The acknowledged usage, folded per account and meter.
pub struct Ledger {
    prices: PriceList,
    /// Account → one reading per meter of the price list.
    accounts: HashMap<String, Vec<Option<Reading>>>,
    events: u64,
}

impl Ledger {
    pub fn new(prices: PriceList) -> Ledger {
        Ledger {
            prices,
            accounts: HashMap::new(),
            events: 0,
        }
    }

    /// Events recorded so far.
    pub fn events(&self) -> u64 {
        self.events
    }

    /// Folds one acknowledged event in. Each event must be recorded once (the run
    /// records a batch once, on its acknowledgement, however often it was sent).
    pub fn record(&mut self, e: &EventRecord) -> Result<(), String> {
        let m = self
            .prices
            .index(&e.meter)
            .ok_or_else(|| format!("event {}: meter {:?} is not in the price list", e.id, e.meter))?;
        let quantity = Decimal::from_str(&e.quantity).map_err(|err| format!("event {}: {err}", e.id))?;
        let time = chrono::DateTime::parse_from_rfc3339(&e.time)
            .map_err(|err| format!("event {}: time {:?}: {err}", e.id, e.time))?
            .timestamp();
        let slots = self
            .accounts
            .entry(e.account.clone())
            .or_insert_with(|| vec![None; self.prices.meters.len()]);
        let slot = &mut slots[m];
        match &self.prices.meters[m].fold {
            Fold::Sum => match slot {
                Some(Reading::Sum(q)) => *q += quantity,
                _ => *slot = Some(Reading::Sum(quantity)),
            },
            Fold::Count => match slot {
                Some(Reading::Count(n)) => *n += 1,
                _ => *slot = Some(Reading::Count(1)),
            },
            Fold::Max => match slot {
                Some(Reading::Max(q)) => *q = (*q).max(quantity),
                _ => *slot = Some(Reading::Max(quantity)),
            },
            Fold::Latest => match slot {
                Some(Reading::Latest(t, q)) => {
                    // Two readings at one second are of the same level (the workload's
                    // levels are a function of the time), so either may win a tie.
                    if time > *t {
                        (*t, *q) = (time, quantity);
                    }
                }
                _ => *slot = Some(Reading::Latest(time, quantity)),
            },
            Fold::Distinct { dimension } => {
                let value = e
                    .dimensions
                    .as_ref()
                    .and_then(|d| d.get(dimension))
                    .map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_owned));
                if !matches!(slot, Some(Reading::Distinct(_))) {
                    *slot = Some(Reading::Distinct(HashSet::new()));
                }
                if let (Some(Reading::Distinct(set)), Some(value)) = (slot, value) {
                    set.insert(value);
                }
            }
        }
        self.events += 1;
        Ok(())
    }
}

/// A customer's bill, as loadgen computes it or as tallyd invoiced it: every amount in
/// whole minor units.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct BillFigures {
    /// The family's quantity per meter with usage.
    pub quantities: BTreeMap<String, Decimal>,
    /// Pooled line per meter with usage.
    pub lines: BTreeMap<String, Decimal>,
    /// Each account's total (its shares of the lines), for accounts with usage.
    pub accounts: BTreeMap<String, Decimal>,
    pub subtotal: Decimal,
    pub total: Decimal,
}

/// Each customer's expected bill. Customers without acknowledged usage get an empty
/// bill (total zero), which is what "no invoice" means for them.
pub fn expected_bills(
    ledger: &Ledger,
    customers: &[CustomerRecord],
    currency: &str,
) -> Result<BTreeMap<String, BillFigures>, String> {
    let minor = minor_units(currency);
    let mut bills = BTreeMap::new();
    for c in customers {
        let mut bill = BillFigures::default();
        let mut accounts: Vec<&String> = c.accounts.iter().collect();
        accounts.sort();
        for (m, meter) in ledger.prices.meters.iter().enumerate() {
            // (account, quantity) of every account with usage of the meter, by account id.
            let members: Vec<(&String, Decimal)> = accounts
                .iter()
                .filter_map(|a| {
                    ledger
                        .accounts
                        .get(*a)
                        .and_then(|slots| slots[m].as_ref())
                        .map(|r| (*a, r.quantity()))
                })
                .collect();
            if members.is_empty() {
                continue;
            }
            let family: Decimal = members.iter().map(|(_, q)| *q).sum();
            let line = round(meter.charge(family), minor);
            bill.quantities.insert(meter.name.clone(), family);
            bill.lines.insert(meter.name.clone(), line);
            for (account, share) in split(line, &members, minor)? {
                *bill.accounts.entry(account.clone()).or_default() += share;
            }
        }
        bill.subtotal = bill.lines.values().copied().sum();
        let rate = Decimal::from_str(&c.tax_rate).map_err(|e| format!("customer {}: tax_rate: {e}", c.id))?;
        bill.total = bill.subtotal + round(bill.subtotal * rate, minor);
        bills.insert(c.id.clone(), bill);
    }
    Ok(bills)
}

/// Splits a rounded line over its members in proportion to their quantities: each share
/// rounded down to the minor unit, the remainder to the member with the largest
/// quantity (the first, i.e. lowest id, among equals). Exact integer arithmetic.
fn split<'a>(
    line: Decimal,
    members: &[(&'a String, Decimal)],
    minor: u32,
) -> Result<Vec<(&'a String, Decimal)>, String> {
    if let [(account, _)] = members {
        return Ok(vec![(*account, line)]);
    }
    let unit = Decimal::from(10u64.pow(minor));
    let whole = |d: Decimal, what: &str| -> Result<i128, String> {
        let d = d.normalize();
        if d.fract().is_zero() {
            d.mantissa()
                .checked_mul(10i128.pow(d.scale()))
                .ok_or_else(|| format!("{what} is too large to split"))
        } else {
            Err(format!("{what} {d} is not whole"))
        }
    };
    let amount = whole(line * unit, "the line in minor units")?;
    // Quantities in thousandths: the workload's quantities have at most 3 decimals.
    let quantities: Vec<i128> = members
        .iter()
        .map(|(a, q)| {
            whole(
                *q * Decimal::from(1000),
                &format!("account {a}'s quantity × 1000"),
            )
        })
        .collect::<Result<_, _>>()?;
    let total: i128 = quantities.iter().sum();
    let mut shares: Vec<i128> = quantities.iter().map(|q| amount * q / total).collect();
    let remainder = amount - shares.iter().sum::<i128>();
    let mut largest = 0;
    for (i, q) in quantities.iter().enumerate() {
        if *q > quantities[largest] {
            largest = i;
        }
    }
    shares[largest] += remainder;
    Ok(members
        .iter()
        .zip(shares)
        .map(|((a, _), s)| (*a, Decimal::from_i128_with_scale(s, minor)))
        .collect())
}

/// Reads an invoice (one line of `GET /v1/partitions/{p}/invoices`): its customer and figures.
pub fn invoice_figures(v: &serde_json::Value) -> Result<(String, BillFigures), String> {
    let customer = v["customer"]
        .as_str()
        .ok_or("an invoice without `customer`")?
        .to_string();
    let at = |what: &str| format!("invoice of {customer}: {what}");
    let mut bill = BillFigures {
        subtotal: decimal(&v["subtotal"], &at("subtotal"))?,
        total: decimal(&v["total"], &at("total"))?,
        ..BillFigures::default()
    };
    for l in v["lines"].as_array().ok_or_else(|| at("no `lines`"))? {
        let meter = l["meter"].as_str().ok_or_else(|| at("a line without `meter`"))?;
        bill.quantities
            .insert(meter.to_string(), decimal(&l["quantity"], &at("line quantity"))?);
        bill.lines
            .insert(meter.to_string(), decimal(&l["amount"], &at("line amount"))?);
    }
    for a in v["accounts"].as_array().ok_or_else(|| at("no `accounts`"))? {
        let account = a["account"]
            .as_str()
            .ok_or_else(|| at("an account without `account`"))?;
        bill.accounts
            .insert(account.to_string(), decimal(&a["total"], &at("account total"))?);
    }
    Ok((customer, bill))
}

/// One figure of one customer that tallyd got wrong (or that loadgen did).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Mismatch {
    pub customer: String,
    /// `total`, `subtotal`, `line <meter>`, `account <id>` or `invoice`.
    pub figure: String,
    pub expected: String,
    pub got: String,
}

/// Compares every expected bill with the invoices: a customer with a non-zero expected
/// total needs an invoice, and every figure must be equal. Invoices of customers the
/// workload does not have (a target's own customers) are not loadgen's to check.
pub fn compare(
    expected: &BTreeMap<String, BillFigures>,
    invoices: &BTreeMap<String, BillFigures>,
) -> Vec<Mismatch> {
    let mut out = Vec::new();
    let none = BillFigures::default();
    for (customer, want) in expected {
        let got = match invoices.get(customer) {
            Some(g) => g,
            None if want.total.is_zero() && want.lines.values().all(|l| l.is_zero()) => continue,
            None => {
                out.push(Mismatch {
                    customer: customer.clone(),
                    figure: "invoice".into(),
                    expected: format!("an invoice of {}", want.total),
                    got: "no invoice".into(),
                });
                &none
            }
        };
        let mut differ = |figure: String, want: Decimal, got: Decimal| {
            if want != got {
                out.push(Mismatch {
                    customer: customer.clone(),
                    figure,
                    expected: want.to_string(),
                    got: got.to_string(),
                });
            }
        };
        differ("total".into(), want.total, got.total);
        differ("subtotal".into(), want.subtotal, got.subtotal);
        let zero = Decimal::ZERO;
        let meters: std::collections::BTreeSet<&String> = want.lines.keys().chain(got.lines.keys()).collect();
        for m in meters {
            differ(
                format!("quantity {m}"),
                *want.quantities.get(m).unwrap_or(&zero),
                *got.quantities.get(m).unwrap_or(&zero),
            );
            differ(
                format!("line {m}"),
                *want.lines.get(m).unwrap_or(&zero),
                *got.lines.get(m).unwrap_or(&zero),
            );
        }
        let accounts: std::collections::BTreeSet<&String> =
            want.accounts.keys().chain(got.accounts.keys()).collect();
        for a in accounts {
            differ(
                format!("account {a}"),
                *want.accounts.get(a).unwrap_or(&zero),
                *got.accounts.get(a).unwrap_or(&zero),
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
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

    fn event(
        n: u32,
        account: &str,
        meter: &str,
        quantity: &str,
        time: &str,
        user: Option<&str>,
    ) -> EventRecord {
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
}
