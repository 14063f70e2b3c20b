//! Billing profiles: the sequence of billing steps a customer's bill goes through.
//!
//! Profiles are configuration: a name, a list of steps and an optional minimum
//! commitment. Every profile starts with `price` then `round`: pricing (with pooling
//! across the family) works at full precision, `round` is the one point where amounts
//! become whole minor units, and every later step computes from, and produces, rounded
//! amounts, so that each line of a bill can be re-derived from the lines printed above it.

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use super::error::FieldError;

/// One step of a bill's computation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BillingStep {
    /// Price each meter's pooled family quantity at full precision.
    Price,
    /// Round each meter line to the minor unit and allocate it to the accounts.
    Round,
    /// Apply the customer's percentage discounts, in the order they were granted.
    Discounts,
    /// Apply credits: soonest-expiring first, then narrowest scope, then oldest.
    Credits,
    /// Charge the shortfall below the minimum commitment.
    Commitment,
    /// Add tax at the customer's rate on the net charges.
    Tax,
}

impl BillingStep {
    pub fn name(self) -> &'static str {
        match self {
            BillingStep::Price => "price",
            BillingStep::Round => "round",
            BillingStep::Discounts => "discounts",
            BillingStep::Credits => "credits",
            BillingStep::Commitment => "commitment",
            BillingStep::Tax => "tax",
        }
    }
}

/// A profile as configured (`[profiles.enterprise]`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProfileSpec {
    pub steps: Vec<BillingStep>,
    /// The default minimum commitment per period of customers on this profile.
    #[serde(default)]
    pub minimum_commitment: Option<Decimal>,
}

/// A checked billing profile.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BillingProfile {
    pub name: String,
    pub steps: Vec<BillingStep>,
    pub minimum_commitment: Option<Decimal>,
}

impl BillingProfile {
    pub fn new(name: &str, spec: ProfileSpec) -> Result<BillingProfile, FieldError> {
        if spec.steps.get(..2) != Some(&[BillingStep::Price, BillingStep::Round]) {
            return Err(FieldError::new(
                "steps",
                "must begin with \"price\", \"round\": amounts are rounded once, right after pricing, \
                 and every later step works in whole minor units",
            ));
        }
        for (i, step) in spec.steps.iter().enumerate() {
            if spec.steps[..i].contains(step) {
                return Err(FieldError::new(
                    format!("steps[{i}]"),
                    format!("{:?} appears twice; each step runs at most once", step.name()),
                ));
            }
        }
        if let Some(c) = spec.minimum_commitment {
            if c.is_sign_negative() && !c.is_zero() {
                return Err(FieldError::new("minimum_commitment", "must not be negative"));
            }
            if !spec.steps.contains(&BillingStep::Commitment) {
                return Err(FieldError::new(
                    "minimum_commitment",
                    "is set but the steps have no \"commitment\" step to charge it",
                ));
            }
        }
        Ok(BillingProfile {
            name: name.to_owned(),
            steps: spec.steps,
            minimum_commitment: spec.minimum_commitment,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use BillingStep::*;

    #[test]
    fn steps_must_start_with_price_and_round() {
        let ok = ProfileSpec {
            steps: vec![Price, Round, Discounts, Credits, Tax],
            minimum_commitment: None,
        };
        assert!(BillingProfile::new("standard", ok).is_ok());
        let bad = ProfileSpec {
            steps: vec![Price, Discounts, Round],
            minimum_commitment: None,
        };
        assert_eq!(BillingProfile::new("x", bad).unwrap_err().field, "steps");
        let twice = ProfileSpec {
            steps: vec![Price, Round, Tax, Tax],
            minimum_commitment: None,
        };
        assert_eq!(BillingProfile::new("x", twice).unwrap_err().field, "steps[3]");
        let orphan = ProfileSpec {
            steps: vec![Price, Round],
            minimum_commitment: Some(Decimal::ONE),
        };
        assert_eq!(
            BillingProfile::new("x", orphan).unwrap_err().field,
            "minimum_commitment"
        );
    }
}
