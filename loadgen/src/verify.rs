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
#[path = "verify_tests.rs"]
mod tests;
