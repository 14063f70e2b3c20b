//! A customer's budgets: thresholds crossed by the running bill, each alert raised once
//! a period.

use crate::domain::AccountId;

use super::{rare, rare_mut, AlertMark, Crossing, CustomerEntity, CustomerReply, PricingView};

impl CustomerEntity {
    /// The budget thresholds crossed so far.
    pub fn alerts(&self) -> &[AlertMark] {
        &rare(&self.rare).alerts
    }

    /// Whether the customer or one of its accounts has a budget.
    pub fn has_budget(&self) -> bool {
        self.customer
            .as_deref()
            .is_some_and(|c| c.terms().budget.is_some() || !c.terms().account_budgets.is_empty())
    }

    /// The thresholds the open period's running bill has reached, not yet raised.
    pub(super) fn budgets(&self, view: &PricingView) -> Result<Vec<Crossing>, String> {
        let Some(customer) = self.customer.as_deref().filter(|_| self.has_budget()) else {
            return Ok(Vec::new());
        };
        let bill = self.bill(view)?;
        let raised = |account: Option<&AccountId>, t: u32| {
            rare(&self.rare)
                .alerts
                .iter()
                .any(|a| a.period == view.period && a.account.as_ref() == account && a.threshold == t)
        };
        let mut out = Vec::new();
        if let Some(b) = &customer.terms().budget {
            for t in b.reached(bill.total).filter(|&t| !raised(None, t)) {
                out.push(Crossing {
                    account: None,
                    threshold: t,
                    budget: b.amount,
                    spent: bill.total,
                });
            }
        }
        for (account, b) in &customer.terms().account_budgets {
            let spent = bill
                .accounts
                .iter()
                .find(|a| a.account == *account)
                .map_or(rust_decimal::Decimal::ZERO, |a| a.total);
            for t in b.reached(spent).filter(|&t| !raised(Some(account), t)) {
                out.push(Crossing {
                    account: Some(account.clone()),
                    threshold: t,
                    budget: b.amount,
                    spent,
                });
            }
        }
        Ok(out)
    }

    pub(super) fn raise(&mut self, mark: &AlertMark) -> CustomerReply {
        if self.customer.is_none() {
            return CustomerReply::NoSuchCustomer;
        }
        let known = rare(&self.rare)
            .alerts
            .iter()
            .any(|a| a.period == mark.period && a.account == mark.account && a.threshold == mark.threshold);
        if known {
            return CustomerReply::AlertKnown;
        }
        rare_mut(&mut self.rare).alerts.push(mark.clone());
        CustomerReply::AlertRaised
    }
}
