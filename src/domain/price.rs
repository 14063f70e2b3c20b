//! Price plans: how a meter's period quantity turns into money.
//!
//! Models: per-unit, graduated tiers (each unit priced in the tier it falls into, with an
//! optional flat fee per tier reached), volume tiers (all units at the price of the tier
//! the total falls into, plus that tier's flat fee) and package (a price per started
//! package). A free allowance is taken before any of them. A tier's `up_to` is
//! inclusive: with `up_to = 1000`, the 1000th unit is in that tier.
//!
//! ## Price changes inside a period
//! Units are numbered by *position*: the cumulative quantity since the start of the
//! period. The units a catalog version was in force for occupy positions `(from, to]`,
//! and [`PricePlan::charge_range`] prices exactly those positions with that version's
//! plan. The allowance and the tiers therefore keep counting across a price change,
//! and with a single version the charge is simply the plan applied to the total.
//!
//! Amounts here are exact (full precision); rounding is the `round` step's job.

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

/// One tier of a graduated or volume plan.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Tier {
    /// Inclusive upper bound in units; `None` for the last, open-ended tier.
    pub up_to: Option<Decimal>,
    pub unit_price: Decimal,
    /// Charged once when any unit reaches the tier (graduated), or when the total falls
    /// into it (volume).
    #[serde(default, skip_serializing_if = "Decimal::is_zero")]
    pub flat_fee: Decimal,
}

/// How the chargeable quantity is priced.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(tag = "model", rename_all = "snake_case")]
pub enum PriceModel {
    PerUnit {
        unit_price: Decimal,
    },
    Graduated {
        tiers: Vec<Tier>,
    },
    Volume {
        tiers: Vec<Tier>,
    },
    Package {
        package_size: Decimal,
        package_price: Decimal,
    },
}

/// A meter's price in one catalog version.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PricePlan {
    /// Units per period that are not charged, taken before the model applies.
    pub free_allowance: Decimal,
    pub model: PriceModel,
}

/// What a price plan is wrong about: the field (relative to the plan) and the problem.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct PlanError {
    pub field: String,
    pub message: String,
}

fn plan_error(field: impl Into<String>, message: impl Into<String>) -> PlanError {
    PlanError {
        field: field.into(),
        message: message.into(),
    }
}

/// Which part of a plan a [`TierCharge`] comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ChargeKind {
    /// Units covered by the free allowance (amount 0).
    Free,
    /// Units at the per-unit price.
    Unit,
    /// Units in tier `tier` (0 = the first) of a graduated or volume plan.
    Tier { tier: usize },
    /// Started packages; the charge's `quantity` counts packages, not units.
    Package,
}

/// One row of a line's tier breakdown: how many units were priced at what.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct TierCharge {
    #[serde(flatten)]
    pub kind: ChargeKind,
    /// The catalog version whose price applied.
    pub version: u16,
    pub quantity: Decimal,
    pub unit_price: Decimal,
    #[serde(default, skip_serializing_if = "Decimal::is_zero")]
    pub flat_fee: Decimal,
    pub amount: Decimal,
}

impl PricePlan {
    /// Checks the plan; errors name the field (`price.tiers[1].up_to`, …).
    pub fn validate(&self) -> Result<(), PlanError> {
        if self.free_allowance.is_sign_negative() {
            return Err(plan_error("free_allowance", "must not be negative"));
        }
        let non_negative = |field: String, v: Decimal| {
            if v.is_sign_negative() && !v.is_zero() {
                Err(plan_error(field, format!("must not be negative (got {v})")))
            } else {
                Ok(())
            }
        };
        match &self.model {
            PriceModel::PerUnit { unit_price } => non_negative("price.unit_price".into(), *unit_price),
            PriceModel::Graduated { tiers } | PriceModel::Volume { tiers } => {
                if tiers.is_empty() {
                    return Err(plan_error("price.tiers", "needs at least one tier"));
                }
                let mut previous = Decimal::ZERO;
                for (i, tier) in tiers.iter().enumerate() {
                    non_negative(format!("price.tiers[{i}].unit_price"), tier.unit_price)?;
                    non_negative(format!("price.tiers[{i}].flat_fee"), tier.flat_fee)?;
                    let last = i + 1 == tiers.len();
                    match (tier.up_to, last) {
                        (None, true) => {}
                        (None, false) => {
                            return Err(plan_error(
                                format!("price.tiers[{i}].up_to"),
                                "only the last tier may be open-ended (up_to = null)",
                            ))
                        }
                        (Some(_), true) => {
                            return Err(plan_error(
                                format!("price.tiers[{i}].up_to"),
                                "the last tier must be open-ended (up_to = null) so that every quantity has a price",
                            ))
                        }
                        (Some(up_to), false) => {
                            if up_to <= previous {
                                return Err(plan_error(
                                    format!("price.tiers[{i}].up_to"),
                                    format!("must be greater than the previous bound {previous} (got {up_to})"),
                                ));
                            }
                            previous = up_to;
                        }
                    }
                }
                Ok(())
            }
            PriceModel::Package {
                package_size,
                package_price,
            } => {
                if *package_size <= Decimal::ZERO {
                    return Err(plan_error(
                        "price.package_size",
                        format!("must be positive (got {package_size})"),
                    ));
                }
                non_negative("price.package_price".into(), *package_price)
            }
        }
    }

    /// The charge for the whole period's quantity under this plan alone.
    pub fn charge(&self, quantity: Decimal, breakdown: &mut Vec<TierCharge>, version: u16) -> Decimal {
        self.charge_range(Decimal::ZERO, quantity, quantity, version, breakdown)
    }

    /// The charge for the units at positions `(from, to]` of a period whose total is
    /// `total`, priced with this plan (catalog version `version`). Appends the rows of
    /// the breakdown to `breakdown` and returns their sum.
    ///
    /// Summed over consecutive ranges `(0, c1], (c1, c2], …, (ck-1, total]` priced with
    /// the same plan, this equals `charge(total)` exactly.
    pub fn charge_range(
        &self,
        from: Decimal,
        to: Decimal,
        total: Decimal,
        version: u16,
        breakdown: &mut Vec<TierCharge>,
    ) -> Decimal {
        debug_assert!(Decimal::ZERO <= from && from <= to && to <= total);
        let allowance = self.free_allowance;
        let free = overlap(from, to, Decimal::ZERO, Some(allowance));
        if free > Decimal::ZERO {
            breakdown.push(TierCharge {
                kind: ChargeKind::Free,
                version,
                quantity: free,
                unit_price: Decimal::ZERO,
                flat_fee: Decimal::ZERO,
                amount: Decimal::ZERO,
            });
        }
        // Positions past the allowance.
        let from = (from - allowance).max(Decimal::ZERO);
        let to = (to - allowance).max(Decimal::ZERO);
        let total = (total - allowance).max(Decimal::ZERO);
        if to <= from {
            return Decimal::ZERO;
        }
        let mut sum = Decimal::ZERO;
        let mut push = |kind, quantity: Decimal, unit_price: Decimal, flat_fee: Decimal| {
            let amount = quantity * unit_price + flat_fee;
            sum += amount;
            breakdown.push(TierCharge {
                kind,
                version,
                quantity,
                unit_price,
                flat_fee,
                amount,
            });
        };
        self.model.charge_past_allowance(from, to, total, &mut push);
        sum
    }
}

impl PriceModel {
    /// Charges the positions `from..to` (past the free allowance) of a period whose
    /// usage ends at `total`, one `push(kind, quantity, unit_price, flat_fee)` a tier
    /// or part the range touches.
    #[inline]
    fn charge_past_allowance(
        &self,
        from: Decimal,
        to: Decimal,
        total: Decimal,
        push: &mut impl FnMut(ChargeKind, Decimal, Decimal, Decimal),
    ) {
        match self {
            PriceModel::PerUnit { unit_price } => {
                push(ChargeKind::Unit, to - from, *unit_price, Decimal::ZERO)
            }
            PriceModel::Graduated { tiers } => {
                let mut lower = Decimal::ZERO;
                for (i, tier) in tiers.iter().enumerate() {
                    let units = overlap(from, to, lower, tier.up_to);
                    if units > Decimal::ZERO {
                        // The flat fee belongs to the range holding the tier's first unit.
                        let fee = if from <= lower {
                            tier.flat_fee
                        } else {
                            Decimal::ZERO
                        };
                        push(ChargeKind::Tier { tier: i }, units, tier.unit_price, fee);
                    }
                    match tier.up_to {
                        Some(up_to) if up_to < to => lower = up_to,
                        _ => break,
                    }
                }
            }
            PriceModel::Volume { tiers } => {
                let i = tiers
                    .iter()
                    .position(|t| t.up_to.is_none_or(|up_to| total <= up_to))
                    .expect("validated: the last tier is open-ended");
                // The flat fee belongs to the range that ends the period's usage.
                let fee = if to == total {
                    tiers[i].flat_fee
                } else {
                    Decimal::ZERO
                };
                push(ChargeKind::Tier { tier: i }, to - from, tiers[i].unit_price, fee);
            }
            PriceModel::Package {
                package_size,
                package_price,
            } => {
                let started = |x: Decimal| (x / package_size).ceil();
                let packages = started(to) - started(from);
                if packages > Decimal::ZERO {
                    push(ChargeKind::Package, packages, *package_price, Decimal::ZERO);
                }
            }
        }
    }
}

/// Length of the intersection of `(from, to]` with `(lower, upper]` (`upper = None`: unbounded).
fn overlap(from: Decimal, to: Decimal, lower: Decimal, upper: Option<Decimal>) -> Decimal {
    let start = from.max(lower);
    let end = upper.map_or(to, |u| to.min(u));
    (end - start).max(Decimal::ZERO)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rust_decimal_macros::dec;

    fn tier(up_to: Option<Decimal>, unit_price: Decimal, flat_fee: Decimal) -> Tier {
        Tier {
            up_to,
            unit_price,
            flat_fee,
        }
    }

    fn plan(free_allowance: Decimal, model: PriceModel) -> PricePlan {
        PricePlan {
            free_allowance,
            model,
        }
    }

    fn charge(p: &PricePlan, q: Decimal) -> Decimal {
        let mut rows = Vec::new();
        let amount = p.charge(q, &mut rows, 0);
        assert_eq!(
            amount,
            rows.iter().map(|r| r.amount).sum::<Decimal>(),
            "rows add up"
        );
        amount
    }

    /// The data-transfer plan of API.md: 0.09 up to 10240 GB, 0.085 up to 51200, 0.07 after.
    fn transfer() -> PricePlan {
        plan(
            dec!(0),
            PriceModel::Graduated {
                tiers: vec![
                    tier(Some(dec!(10240)), dec!(0.09), dec!(0)),
                    tier(Some(dec!(51200)), dec!(0.085), dec!(0)),
                    tier(None, dec!(0.07), dec!(0)),
                ],
            },
        )
    }

    #[test]
    fn per_unit() {
        // 720 instance hours × 0.0416 = 29.952
        let p = plan(
            dec!(0),
            PriceModel::PerUnit {
                unit_price: dec!(0.0416),
            },
        );
        assert_eq!(charge(&p, dec!(720)), dec!(29.952));
        // Full precision is kept: 3 × 0.0000166667 = 0.0000500001
        let p = plan(
            dec!(0),
            PriceModel::PerUnit {
                unit_price: dec!(0.0000166667),
            },
        );
        assert_eq!(charge(&p, dec!(3)), dec!(0.0000500001));
    }

    #[test]
    fn graduated_prices_each_unit_in_its_tier() {
        // 4096 GB, all in tier 1: 4096 × 0.09 = 368.64 (the bill of API.md).
        assert_eq!(charge(&transfer(), dec!(4096)), dec!(368.64));
        // 60000 GB: 10240 × 0.09 = 921.60; (51200 − 10240) × 0.085 = 40960 × 0.085 = 3481.60;
        // (60000 − 51200) × 0.07 = 8800 × 0.07 = 616.00; total 5019.20.
        assert_eq!(charge(&transfer(), dec!(60000)), dec!(5019.20));
        // up_to is inclusive: unit 10240 is still at 0.09: 10240 × 0.09 = 921.60.
        assert_eq!(charge(&transfer(), dec!(10240)), dec!(921.60));
        // 10240.5: the half unit past the bound is at 0.085: 921.60 + 0.0425 = 921.6425.
        assert_eq!(charge(&transfer(), dec!(10240.5)), dec!(921.6425));
        assert_eq!(charge(&transfer(), dec!(0)), dec!(0));
    }

    #[test]
    fn graduated_flat_fee_is_charged_once_per_tier_reached() {
        // Tier 1: up to 100 at 1.00 with a fee of 5; tier 2: above at 0.50 with a fee of 20.
        // 50 units: 5 + 50 × 1 = 55. 150 units: 5 + 100 + 20 + 50 × 0.5 = 150.
        let p = plan(
            dec!(0),
            PriceModel::Graduated {
                tiers: vec![
                    tier(Some(dec!(100)), dec!(1), dec!(5)),
                    tier(None, dec!(0.5), dec!(20)),
                ],
            },
        );
        assert_eq!(charge(&p, dec!(50)), dec!(55));
        assert_eq!(charge(&p, dec!(150)), dec!(150));
        // Exactly 100 units never reach tier 2: 5 + 100 = 105.
        assert_eq!(charge(&p, dec!(100)), dec!(105));
        // No usage, no fee.
        assert_eq!(charge(&p, dec!(0)), dec!(0));
    }

    #[test]
    fn volume_prices_all_units_at_the_tier_of_the_total() {
        // db storage: 0.10 up to 1000 GB, 0.08 above.
        // 800 GB: 800 × 0.10 = 80. 1000 GB (inclusive bound): 1000 × 0.10 = 100.
        // 1200 GB: all 1200 × 0.08 = 96 — cheaper than 1000 GB, as volume pricing does.
        let p = plan(
            dec!(0),
            PriceModel::Volume {
                tiers: vec![
                    tier(Some(dec!(1000)), dec!(0.10), dec!(0)),
                    tier(None, dec!(0.08), dec!(10)),
                ],
            },
        );
        assert_eq!(charge(&p, dec!(800)), dec!(80));
        assert_eq!(charge(&p, dec!(1000)), dec!(100));
        // 1200 × 0.08 + the tier's flat fee 10 = 106.
        assert_eq!(charge(&p, dec!(1200)), dec!(106));
        assert_eq!(charge(&p, dec!(0)), dec!(0));
    }

    #[test]
    fn package_charges_started_packages() {
        // 0.20 per started million requests.
        // 2,500,000 requests: 3 started packages × 0.20 = 0.60.
        // Exactly 2,000,000: 2 packages = 0.40. One request: 1 package = 0.20.
        let p = plan(
            dec!(0),
            PriceModel::Package {
                package_size: dec!(1000000),
                package_price: dec!(0.20),
            },
        );
        assert_eq!(charge(&p, dec!(2500000)), dec!(0.60));
        assert_eq!(charge(&p, dec!(2000000)), dec!(0.40));
        assert_eq!(charge(&p, dec!(1)), dec!(0.20));
    }

    #[test]
    fn free_allowance_comes_first() {
        // lambda.requests of API.md: 1,000,000 free, then 0.20 per started million.
        // 3,500,000 requests: 2,500,000 chargeable → 3 packages → 0.60.
        // 900,000 requests: all free → 0.
        let p = plan(
            dec!(1000000),
            PriceModel::Package {
                package_size: dec!(1000000),
                package_price: dec!(0.20),
            },
        );
        assert_eq!(charge(&p, dec!(3500000)), dec!(0.60));
        assert_eq!(charge(&p, dec!(900000)), dec!(0));
        let mut rows = Vec::new();
        p.charge(dec!(3500000), &mut rows, 0);
        assert_eq!(rows[0].kind, ChargeKind::Free);
        assert_eq!(rows[0].quantity, dec!(1000000));
        // The allowance shifts graduated tiers too: 100 free, then 10240 at 0.09.
        // 10340 units: 100 free, 10240 × 0.09 = 921.60.
        let mut t = transfer();
        t.free_allowance = dec!(100);
        assert_eq!(charge(&t, dec!(10340)), dec!(921.60));
    }

    #[test]
    fn price_change_mid_period_keeps_counting_tiers() {
        // Version 0 prices transfer as above; version 1 lowers tier 2 to 0.08.
        // 8000 GB used under version 0, then 5000 GB under version 1 (13000 in total):
        // v0 (0, 8000]: 8000 × 0.09 = 720.
        // v1 (8000, 13000]: 2240 × 0.09 = 201.60 in tier 1, 2760 × 0.08 = 220.80 in tier 2.
        // Total 1142.40; without the change it would be 921.60 + 2760 × 0.085 = 1156.20.
        let v0 = transfer();
        let mut v1 = transfer();
        if let PriceModel::Graduated { tiers } = &mut v1.model {
            tiers[1].unit_price = dec!(0.08);
        }
        let mut rows = Vec::new();
        let a = v0.charge_range(dec!(0), dec!(8000), dec!(13000), 0, &mut rows);
        let b = v1.charge_range(dec!(8000), dec!(13000), dec!(13000), 1, &mut rows);
        assert_eq!(a, dec!(720));
        assert_eq!(b, dec!(422.40));
        assert_eq!(rows.len(), 3);
        assert_eq!(charge(&transfer(), dec!(13000)), dec!(1156.20));
    }

    #[test]
    fn ranges_add_up_to_the_whole() {
        // Splitting 2,500,000 requests at 1,200,000 with one plan: packages started in
        // (0, 1.2M] = 2, in (1.2M, 2.5M] = 3 − 2 = 1; 3 × 0.20 = 0.60 as unsplit.
        let p = plan(
            dec!(0),
            PriceModel::Package {
                package_size: dec!(1000000),
                package_price: dec!(0.20),
            },
        );
        let mut rows = Vec::new();
        let a = p.charge_range(dec!(0), dec!(1200000), dec!(2500000), 0, &mut rows);
        let b = p.charge_range(dec!(1200000), dec!(2500000), dec!(2500000), 0, &mut rows);
        assert_eq!((a, b), (dec!(0.40), dec!(0.20)));
    }

    #[test]
    fn validation_names_the_field() {
        let bad = plan(
            dec!(0),
            PriceModel::Graduated {
                tiers: vec![
                    tier(Some(dec!(100)), dec!(1), dec!(0)),
                    tier(Some(dec!(50)), dec!(1), dec!(0)),
                ],
            },
        );
        let err = bad.validate().unwrap_err();
        assert_eq!(err.field, "price.tiers[1].up_to");
        let open_middle = plan(
            dec!(0),
            PriceModel::Volume {
                tiers: vec![tier(None, dec!(1), dec!(0)), tier(None, dec!(1), dec!(0))],
            },
        );
        assert_eq!(open_middle.validate().unwrap_err().field, "price.tiers[0].up_to");
        let negative = plan(dec!(0), PriceModel::PerUnit { unit_price: dec!(-1) });
        assert_eq!(negative.validate().unwrap_err().field, "price.unit_price");
        let empty_package = plan(
            dec!(0),
            PriceModel::Package {
                package_size: dec!(0),
                package_price: dec!(1),
            },
        );
        assert_eq!(empty_package.validate().unwrap_err().field, "price.package_size");
        assert!(transfer().validate().is_ok());
    }
}
