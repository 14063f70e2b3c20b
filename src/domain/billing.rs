//! Running a customer's billing steps: from usage aggregates to a [`Bill`].
//!
//! The steps are those of the customer's [`BillingProfile`], in its order:
//! - `price`: each meter's family quantity (the sum of its accounts' quantities) is
//!   priced as one, so tiers and allowances are pooled across the family;
//! - `round`: each pooled line is rounded to the minor unit with the partition's
//!   [`Rounding`], then allocated back to the accounts in proportion to their
//!   quantity. Each share is rounded toward zero and the remainder (always ≥ 0 and less
//!   than one minor unit per account) goes to the account with the largest quantity,
//!   the lowest account id among equals; the shares add up exactly to the line;
//! - `discounts`: each discount, in the order granted, takes `percent` of the current
//!   net of every charge in its scope (meters, or everything), rounded per charge;
//! - `credits`: credits usable in the period, soonest-expiring first (no expiry last),
//!   then the narrowest scope, then the oldest grant, then by id, each pay what they can
//!   of the charges in scope in catalog order (the commitment true-up last); a credit
//!   never takes a charge below zero;
//! - `commitment`: when the net usage charges are below the minimum commitment, the
//!   shortfall becomes a charge of its own;
//! - `tax`: the customer's rate on the net of every charge, rounded once.
//!
//! Every step after `round` works in whole minor units, so each line can be re-derived
//! from the lines above it, and the total is exactly the sum of the rounded lines.

use std::sync::Arc;

use rust_decimal::Decimal;

use super::catalog::Catalog;
use super::customer::{AccountId, Credit, Customer, Discount};
use super::ids::MeterId;
use super::invoice::{
    AccountBill, AccountLine, AdjustmentLine, Bill, CommitmentLine, CreditLine, DiscountLine, MeterLine,
    TaxLine,
};
use super::money::Rounding;
use super::period::Period;
use super::profile::{BillingProfile, BillingStep};
use super::usage::AccountUsage;

/// What every bill of a partition and period is computed against.
#[derive(Clone, Copy, Debug)]
pub struct BillingContext<'a> {
    pub catalog: &'a Catalog,
    pub rounding: Rounding,
    pub period: Period,
}

/// A meter's usage pooled across the family.
struct Pool {
    meter: MeterId,
    /// Quantity per catalog version.
    spans: Vec<Decimal>,
    /// `(index into the sorted accounts, quantity)` of each account with usage.
    members: Vec<(usize, Decimal)>,
    total: Decimal,
}

/// A charge that discounts and credits can reduce: a meter line or the commitment true-up.
struct Charge {
    /// `None` for the commitment true-up.
    meter: Option<Arc<str>>,
    net: Decimal,
}

/// Prices `customer`'s bill for `ctx.period` from its accounts' usage, running the steps
/// of `profile`. `usage` gives each account that has usage; accounts may come in any order.
pub fn bill_customer<'u>(
    ctx: &BillingContext<'_>,
    customer: &Customer,
    profile: &BillingProfile,
    usage: impl IntoIterator<Item = (&'u AccountId, &'u AccountUsage)>,
) -> Bill {
    bill_customer_with(ctx, customer, profile, usage, Vec::new())
}

/// [`bill_customer`], with late-usage adjustments of the period before (see
/// [`late_adjustments`]): they join the charges after `round`, so discounts, credits,
/// the commitment and tax treat them as any other charge (a negative one, a volume tier
/// re-rated lower, takes no discount or credit).
pub fn bill_customer_with<'u>(
    ctx: &BillingContext<'_>,
    customer: &Customer,
    profile: &BillingProfile,
    usage: impl IntoIterator<Item = (&'u AccountId, &'u AccountUsage)>,
    adjustments: Vec<AdjustmentLine>,
) -> Bill {
    let rounding = ctx.rounding;
    let mut accounts: Vec<(&AccountId, &AccountUsage)> =
        usage.into_iter().filter(|(_, u)| !u.is_empty()).collect();
    accounts.sort_unstable_by(|a, b| a.0.cmp(b.0));

    let mut bill = empty_bill(ctx, customer);
    let mut pools: Vec<Pool> = Vec::new();
    let mut charges: Vec<Charge> = Vec::new();
    let terms = customer.terms();
    for step in &profile.steps {
        match step {
            BillingStep::Price => {
                pools = pool(&accounts);
                bill.lines = pools.iter().map(|p| price_pool(ctx, p)).collect();
            }
            BillingStep::Round => {
                bill.accounts = allocate(rounding, &accounts, &pools, &mut bill.lines);
                charges = charges_of(&bill.lines, &adjustments);
                bill.adjustments = adjustments.clone();
            }
            BillingStep::Discounts => {
                bill.discounts = apply_discounts(rounding, &terms.discounts, &mut charges)
            }
            BillingStep::Credits => {
                let first_day = ctx.period.first_day();
                bill.credits = apply_credits(rounding, first_day, &terms.credits, &mut charges);
            }
            BillingStep::Commitment => {
                let minimum = terms
                    .commitment
                    .or(profile.minimum_commitment)
                    .unwrap_or_default();
                bill.commitment = apply_commitment(rounding, minimum, &mut charges);
            }
            BillingStep::Tax => {
                let base = rounding.round(charges.iter().map(|c| c.net).sum());
                bill.tax = TaxLine {
                    rate: customer.tax_rate,
                    base,
                    amount: rounding.round(base * customer.tax_rate),
                };
            }
        }
    }
    total(rounding, &mut bill, &charges);
    bill
}

/// A customer's bill before any step: no lines, every amount zero.
fn empty_bill(ctx: &BillingContext<'_>, customer: &Customer) -> Bill {
    let zero = ctx.rounding.round(Decimal::ZERO);
    Bill {
        customer: customer.id.to_string(),
        period: ctx.period,
        currency: ctx.rounding.currency,
        accounts: Vec::new(),
        lines: Vec::new(),
        adjustments: Vec::new(),
        discounts: Vec::new(),
        credits: Vec::new(),
        commitment: None,
        tax: TaxLine {
            rate: customer.tax_rate,
            base: zero,
            amount: zero,
        },
        subtotal: zero,
        total: zero,
    }
}

/// What the later steps net down: a charge per priced line and per adjustment.
fn charges_of(lines: &[MeterLine], adjustments: &[AdjustmentLine]) -> Vec<Charge> {
    let lines = lines.iter().map(|l| Charge {
        meter: Some(l.meter.clone()),
        net: l.amount,
    });
    let adjustments = adjustments.iter().map(|a| Charge {
        meter: Some(a.meter.clone()),
        net: a.amount,
    });
    lines.chain(adjustments).collect()
}

/// Each discount takes its percent of every positive charge in its scope, rounded per
/// charge, one after the other.
fn apply_discounts(rounding: Rounding, discounts: &[Discount], charges: &mut [Charge]) -> Vec<DiscountLine> {
    let zero = rounding.round(Decimal::ZERO);
    let mut lines = Vec::with_capacity(discounts.len());
    for d in discounts {
        let fraction = d.percent / Decimal::ONE_HUNDRED;
        let mut amount = zero;
        for c in charges
            .iter_mut()
            .filter(|c| c.net > zero && in_scope(&d.meters, &c.meter))
        {
            let part = rounding.round(c.net * fraction);
            c.net -= part;
            amount += part;
        }
        lines.push(DiscountLine {
            id: d.id.clone(),
            percent: d.percent,
            meters: d.meters.clone(),
            amount,
        });
    }
    lines
}

/// Credits usable in the period (from `first_day`) are drawn down against positive
/// charges in their scope: the soonest to expire first, then the narrowest, the oldest
/// and by id. A credit that takes nothing gets no line.
fn apply_credits(
    rounding: Rounding,
    first_day: chrono::NaiveDate,
    credits: &[Credit],
    charges: &mut [Charge],
) -> Vec<CreditLine> {
    let zero = rounding.round(Decimal::ZERO);
    let mut usable: Vec<&Credit> = credits.iter().filter(|c| c.usable_from(first_day)).collect();
    usable.sort_by(|a, b| credit_order(a).cmp(&credit_order(b)));
    let mut lines = Vec::new();
    for credit in usable {
        let mut balance = credit.amount;
        let mut amount = zero;
        for c in charges
            .iter_mut()
            .filter(|c| c.net > zero && in_scope(&credit.meters, &c.meter))
        {
            let take = balance.min(c.net);
            c.net -= take;
            balance -= take;
            amount += take;
        }
        if !amount.is_zero() {
            lines.push(CreditLine {
                id: credit.id.clone(),
                amount: rounding.round(amount),
                remaining: rounding.round(balance),
            });
        }
    }
    lines
}

/// The order credits are drawn in: those that expire first (none: last), then the
/// narrowest scope, the earliest granted, and by id.
fn credit_order(c: &Credit) -> (bool, Option<chrono::NaiveDate>, usize, u64, &str) {
    (c.expires.is_none(), c.expires, c.scope_width(), c.granted, &c.id)
}

/// Tops the metered spend (after discounts and credits) up to `minimum`, as a charge
/// of no meter, when it falls short.
fn apply_commitment(
    rounding: Rounding,
    minimum: Decimal,
    charges: &mut Vec<Charge>,
) -> Option<CommitmentLine> {
    let spend: Decimal = charges.iter().filter(|c| c.meter.is_some()).map(|c| c.net).sum();
    if spend >= minimum {
        return None;
    }
    let amount = rounding.round(minimum - spend);
    charges.push(Charge {
        meter: None,
        net: amount,
    });
    Some(CommitmentLine {
        minimum: rounding.round(minimum),
        spend: rounding.round(spend),
        amount,
    })
}

/// The subtotal and total, checked against the charges the steps left.
fn total(rounding: Rounding, bill: &mut Bill, charges: &[Charge]) {
    bill.subtotal = rounding.round(
        bill.lines.iter().map(|l| l.amount).sum::<Decimal>()
            + bill.adjustments.iter().map(|a| a.amount).sum::<Decimal>(),
    );
    let commitment = bill.commitment.as_ref().map_or(Decimal::ZERO, |c| c.amount);
    bill.total = rounding
        .round(bill.subtotal - bill.discounts_total() - bill.credits_total() + commitment + bill.tax.amount);
    debug_assert_eq!(
        bill.total,
        charges.iter().map(|c| c.net).sum::<Decimal>() + bill.tax.amount,
        "the total is the net of the charges plus tax"
    );
    debug_assert_eq!(bill.check(), Ok(()));
}

/// Prices late usage of the closed period `ctx.period`: for each meter it touches, the
/// period's pooled line re-rated with it (`base` plus `late`), less the line as invoiced
/// (`base` alone), each rounded as on the invoice. Tiers and allowances thus continue
/// from the invoiced quantity: late usage costs what it would have cost on time.
pub fn late_adjustments<'u>(
    ctx: &BillingContext<'_>,
    base: impl IntoIterator<Item = (&'u AccountId, &'u AccountUsage)>,
    late: impl IntoIterator<Item = (&'u AccountId, &'u AccountUsage)>,
) -> Vec<AdjustmentLine> {
    let base: Vec<(&AccountId, &AccountUsage)> = base.into_iter().filter(|(_, u)| !u.is_empty()).collect();
    let late: Vec<(&AccountId, &AccountUsage)> = late.into_iter().filter(|(_, u)| !u.is_empty()).collect();
    let mut merged: std::collections::BTreeMap<&AccountId, AccountUsage> =
        base.iter().map(|(a, u)| (*a, (*u).clone())).collect();
    for (a, u) in &late {
        // Aggregates have 28 significant digits; an overflow here would have refused
        // the event when it was applied, so merging cannot overflow.
        let _ = merged.entry(*a).or_default().merge(u);
    }
    let merged: Vec<(&AccountId, &AccountUsage)> = merged.iter().map(|(a, u)| (*a, u)).collect();
    let rounded = |accounts: &[(&AccountId, &AccountUsage)]| -> Vec<(MeterId, Decimal)> {
        pool(accounts)
            .iter()
            .map(|p| (p.meter, ctx.rounding.round(price_pool(ctx, p).amount)))
            .collect()
    };
    let (before, after) = (rounded(&base), rounded(&merged));
    let zero = ctx.rounding.round(Decimal::ZERO);
    pool(&late)
        .iter()
        .map(|p| {
            let find = |lines: &[(MeterId, Decimal)]| {
                lines
                    .iter()
                    .find(|(m, _)| *m == p.meter)
                    .map_or(zero, |(_, a)| *a)
            };
            let (invoiced, rerated) = (find(&before), find(&after));
            AdjustmentLine {
                period: ctx.period,
                meter: ctx.catalog.meter(p.meter).name.clone(),
                quantity: p.total,
                invoiced,
                rerated,
                amount: rerated - invoiced,
            }
        })
        .collect()
}

fn in_scope(scope: &Option<Vec<String>>, meter: &Option<Arc<str>>) -> bool {
    match (scope, meter) {
        (None, _) => true,
        (Some(meters), Some(m)) => meters.iter().any(|s| **s == **m),
        (Some(_), None) => false,
    }
}

/// Gathers each meter's usage across the family, in catalog (meter id) order.
fn pool(accounts: &[(&AccountId, &AccountUsage)]) -> Vec<Pool> {
    let mut pools: Vec<Pool> = Vec::new();
    for (i, (_, usage)) in accounts.iter().enumerate() {
        for aggregate in usage.meters() {
            let meter = aggregate.meter();
            let p = match pools.binary_search_by_key(&meter, |p| p.meter) {
                Ok(p) => p,
                Err(p) => {
                    pools.insert(
                        p,
                        Pool {
                            meter,
                            spans: Vec::new(),
                            members: Vec::with_capacity(accounts.len()),
                            total: Decimal::ZERO,
                        },
                    );
                    p
                }
            };
            let pool = &mut pools[p];
            aggregate.add_spans_into(&mut pool.spans);
            let quantity = aggregate.quantity();
            pool.members.push((i, quantity));
            pool.total += quantity;
        }
    }
    pools
}

/// Prices one pooled meter, each catalog version's span at its own positions.
fn price_pool(ctx: &BillingContext<'_>, pool: &Pool) -> MeterLine {
    let meter = ctx.catalog.meter(pool.meter);
    let mut tiers = Vec::new();
    let mut amount = Decimal::ZERO;
    let mut position = Decimal::ZERO;
    for (version, &quantity) in pool.spans.iter().enumerate() {
        if quantity.is_zero() {
            continue;
        }
        let version = version as u16;
        let plan = ctx
            .catalog
            .plan(version, pool.meter)
            .expect("usage is only accepted for a meter priced in the version in force");
        amount += plan.charge_range(position, position + quantity, pool.total, version, &mut tiers);
        position += quantity;
    }
    debug_assert_eq!(position, pool.total, "spans add up to the family's quantity");
    MeterLine {
        meter: meter.name.clone(),
        quantity: pool.total,
        amount,
        tiers,
    }
}

/// Rounds each meter line and allocates it to the accounts in proportion to quantity.
fn allocate(
    rounding: Rounding,
    accounts: &[(&AccountId, &AccountUsage)],
    pools: &[Pool],
    lines: &mut [MeterLine],
) -> Vec<AccountBill> {
    let zero = rounding.round(Decimal::ZERO);
    let mut bills: Vec<AccountBill> = accounts
        .iter()
        .map(|(id, usage)| AccountBill {
            account: (*id).clone(),
            lines: Vec::with_capacity(usage.meters().len()),
            total: zero,
        })
        .collect();
    let mut shares = Vec::new();
    for (pool, line) in pools.iter().zip(lines.iter_mut()) {
        line.amount = rounding.round(line.amount);
        let Allocation { remainder, largest } =
            proportional_shares(rounding, line.amount, &pool.members, &mut shares);
        for (&(i, quantity), &share) in pool.members.iter().zip(&shares) {
            bills[i].lines.push(AccountLine {
                meter: line.meter.clone(),
                quantity,
                amount: share,
            });
        }
        debug_assert!(
            remainder >= Decimal::ZERO,
            "shares rounded toward zero never exceed the line"
        );
        if !remainder.is_zero() {
            let share = bills[pool.members[largest].0]
                .lines
                .last_mut()
                .expect("pushed above");
            share.amount += remainder;
        }
    }
    for b in &mut bills {
        b.total = b.lines.iter().fold(zero, |sum, l| sum + l.amount);
    }
    bills
}

/// What [`proportional_shares`] leaves to settle.
struct Allocation {
    /// The amount minus the sum of the shares: at least 0, less than one minor unit per member.
    remainder: Decimal,
    /// The member with the largest quantity, the first of equals: it takes the remainder.
    largest: usize,
}

/// Each member's share of `amount` (whole minor units, ≥ 0): `amount × quantity / total`
/// rounded toward zero to the minor unit. Exact integer arithmetic when the numbers fit
/// in 128 bits (always, for realistic bills); decimal arithmetic otherwise.
fn proportional_shares(
    rounding: Rounding,
    amount: Decimal,
    members: &[(usize, Decimal)],
    out: &mut Vec<Decimal>,
) -> Allocation {
    out.clear();
    let minor = rounding.currency.minor_units();
    if let [(_, _)] = members {
        out.push(amount);
        return Allocation {
            remainder: Decimal::ZERO,
            largest: 0,
        };
    }
    let scale = members.iter().map(|m| m.1.scale()).max().unwrap_or(0);
    let mantissa =
        |q: Decimal| -> Option<i128> { q.mantissa().checked_mul(10i128.checked_pow(scale - q.scale())?) };
    let exact = (|| {
        let a = amount.mantissa();
        let (mut total, mut largest, mut max) = (0i128, 0, -1i128);
        for (k, &(_, q)) in members.iter().enumerate() {
            let m = mantissa(q)?;
            total = total.checked_add(m)?;
            if m > max {
                (largest, max) = (k, m);
            }
        }
        if total == 0 {
            return None;
        }
        let mut allocated = 0i128;
        for &(_, q) in members {
            let share = a.checked_mul(mantissa(q)?)? / total;
            allocated += share;
            out.push(Decimal::from_i128_with_scale(share, minor));
        }
        Some(Allocation {
            remainder: Decimal::from_i128_with_scale(a - allocated, minor),
            largest,
        })
    })();
    exact.unwrap_or_else(|| {
        out.clear();
        let total: Decimal = members.iter().map(|m| m.1).sum();
        let toward_zero = Rounding::new(rounding.currency, super::money::RoundingMode::Down);
        let mut largest = 0;
        for (k, &(_, q)) in members.iter().enumerate() {
            let share = if total.is_zero() {
                Decimal::ZERO
            } else {
                amount * q / total
            };
            out.push(toward_zero.round(share));
            if q > members[largest].1 {
                largest = k;
            }
        }
        Allocation {
            remainder: amount - out.iter().sum::<Decimal>(),
            largest,
        }
    })
}

#[cfg(test)]
#[path = "billing_tests.rs"]
mod tests;
