//! The bill model: what a customer owes for a period, line by line.
//!
//! A [`Bill`] is the result of running a customer's billing steps; a running bill (the
//! estimate of the open period) and an [`Invoice`] (the immutable, numbered bill of a
//! closed period) are the same computation, so they never disagree for the same usage.
//!
//! Invariants, checked by [`Bill::check`]:
//! - every amount is in whole minor units;
//! - each meter line equals the sum of its allocations to accounts, and the subtotal is
//!   the sum of the meter lines and the late-usage adjustments;
//! - `total = subtotal − discounts − credits + commitment + tax`, exactly.

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use std::sync::Arc;

use super::customer::AccountId;
use super::money::Currency;
use super::period::Period;
use super::price::TierCharge;

/// One meter's pooled charge for the whole family.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct MeterLine {
    pub meter: Arc<str>,
    /// The family's quantity: the sum of its accounts' quantities.
    pub quantity: Decimal,
    /// The charge, rounded to the minor unit.
    pub amount: Decimal,
    /// How the charge was computed, at full precision.
    pub tiers: Vec<TierCharge>,
}

/// One account's share of one meter line.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct AccountLine {
    pub meter: Arc<str>,
    pub quantity: Decimal,
    pub amount: Decimal,
}

/// One account's part of the bill.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct AccountBill {
    #[schemars(with = "String")]
    pub account: AccountId,
    pub lines: Vec<AccountLine>,
    pub total: Decimal,
}

/// A percentage discount as applied.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct DiscountLine {
    pub id: String,
    pub percent: Decimal,
    /// The meters it applied to; `None` for the whole bill.
    pub meters: Option<Vec<String>>,
    /// The amount taken off (positive).
    pub amount: Decimal,
}

/// A credit as applied.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct CreditLine {
    pub id: String,
    /// The amount paid by the credit (positive).
    pub amount: Decimal,
    /// The balance the credit keeps for later periods.
    pub remaining: Decimal,
}

/// The true-up to a minimum commitment.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct CommitmentLine {
    pub minimum: Decimal,
    /// Net usage charges when the step ran.
    pub spend: Decimal,
    /// `minimum − spend`: the shortfall charged.
    pub amount: Decimal,
}

/// Tax on the net charges.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaxLine {
    pub rate: Decimal,
    pub base: Decimal,
    pub amount: Decimal,
}

/// Usage of a closed period that arrived late (within its grace window), billed on a
/// later bill: the period's line re-rated with it, less what was invoiced. Tiers and
/// allowances thus continue from the invoiced quantity, as if it had come on time.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct AdjustmentLine {
    /// The closed period the usage belongs to.
    pub period: Period,
    pub meter: Arc<str>,
    /// The late quantity.
    pub quantity: Decimal,
    /// The period's line as invoiced, and as re-rated with the late usage (rounded).
    pub invoiced: Decimal,
    pub rerated: Decimal,
    /// `rerated − invoiced`: what this bill charges for it.
    pub amount: Decimal,
}

/// A customer's bill for one period.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bill {
    pub customer: String,
    pub period: Period,
    pub currency: Currency,
    /// Accounts with usage, sorted by id.
    pub accounts: Vec<AccountBill>,
    /// One pooled line per meter with usage, in catalog order.
    pub lines: Vec<MeterLine>,
    /// Late usage of the period before, re-rated.
    pub adjustments: Vec<AdjustmentLine>,
    pub discounts: Vec<DiscountLine>,
    pub credits: Vec<CreditLine>,
    pub commitment: Option<CommitmentLine>,
    pub tax: TaxLine,
    /// The sum of the meter lines.
    pub subtotal: Decimal,
    pub total: Decimal,
}

/// An immutable, numbered bill of a closed period.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Invoice {
    /// `{partition}-{period}-{sequence}`, without gaps per partition.
    pub number: String,
    #[serde(flatten)]
    pub bill: Bill,
}

impl Bill {
    /// Total of the discount lines.
    pub fn discounts_total(&self) -> Decimal {
        self.discounts.iter().map(|d| d.amount).sum()
    }

    /// Total of the credit lines.
    pub fn credits_total(&self) -> Decimal {
        self.credits.iter().map(|c| c.amount).sum()
    }

    /// Verifies the bill's invariants; the error says which one fails.
    pub fn check(&self) -> Result<(), String> {
        self.check_lines()?;
        self.check_accounts()?;
        self.check_adjustments()?;
        let subtotal: Decimal = self.lines.iter().map(|l| l.amount).sum::<Decimal>()
            + self.adjustments.iter().map(|a| a.amount).sum::<Decimal>();
        if subtotal != self.subtotal {
            return Err(format!(
                "subtotal {} but the lines and adjustments add up to {subtotal}",
                self.subtotal
            ));
        }
        for d in &self.discounts {
            self.whole(|| format!("discount {}", d.id), d.amount)?;
        }
        for c in &self.credits {
            self.whole(|| format!("credit {}", c.id), c.amount)?;
        }
        self.whole(|| "tax".into(), self.tax.amount)?;
        let commitment = self.commitment.as_ref().map_or(Decimal::ZERO, |c| c.amount);
        let expected =
            self.subtotal - self.discounts_total() - self.credits_total() + commitment + self.tax.amount;
        if expected != self.total {
            return Err(format!(
                "total {} but subtotal − discounts − credits + commitment + tax = {expected}",
                self.total
            ));
        }
        self.whole(|| "total".into(), self.total)
    }

    /// `a` (named by `what`) is in whole minor units of the bill's currency and not
    /// negative.
    fn whole(&self, what: impl FnOnce() -> String, a: Decimal) -> Result<(), String> {
        if a.scale() != self.currency.minor_units() {
            Err(format!(
                "{} {a} is not in whole minor units of {}",
                what(),
                self.currency
            ))
        } else if a.is_sign_negative() && !a.is_zero() {
            Err(format!("{} {a} is negative", what()))
        } else {
            Ok(())
        }
    }

    /// Every line is whole, and its accounts' shares add up to it.
    fn check_lines(&self) -> Result<(), String> {
        for l in &self.lines {
            self.whole(|| format!("line {}", l.meter), l.amount)?;
            let allocated: Decimal = self
                .accounts
                .iter()
                .flat_map(|a| a.lines.iter())
                .filter(|al| al.meter == l.meter)
                .map(|al| al.amount)
                .sum();
            if allocated != l.amount {
                return Err(format!(
                    "line {} is {} but its accounts' shares add up to {allocated}",
                    l.meter, l.amount
                ));
            }
        }
        Ok(())
    }

    /// Every account's lines are whole and add up to its total.
    fn check_accounts(&self) -> Result<(), String> {
        for a in &self.accounts {
            let sum: Decimal = a.lines.iter().map(|l| l.amount).sum();
            if sum != a.total {
                return Err(format!(
                    "account {} totals {} but its lines add up to {sum}",
                    a.account, a.total
                ));
            }
            for l in &a.lines {
                self.whole(|| format!("account {} line {}", a.account, l.meter), l.amount)?;
            }
        }
        Ok(())
    }

    /// Every adjustment is whole and is what was re-rated less what was invoiced.
    fn check_adjustments(&self) -> Result<(), String> {
        for a in &self.adjustments {
            self.whole(|| format!("adjustment {} {}", a.period, a.meter), a.amount)?;
            if a.amount != a.rerated - a.invoiced {
                return Err(format!(
                    "adjustment {} {} is {} but re-rated {} − invoiced {} = {}",
                    a.period,
                    a.meter,
                    a.amount,
                    a.rerated,
                    a.invoiced,
                    a.rerated - a.invoiced
                ));
            }
        }
        Ok(())
    }
}
