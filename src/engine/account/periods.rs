//! A customer's periods: opening one, closing one into its invoice's usage, the last
//! closed period kept for late usage, and late usage re-rated as adjustments.

use crate::domain::invoice::AdjustmentLine;
use crate::domain::{late_adjustments, AccountId, AccountUsage, Bill, BillingContext, Period};

use super::{
    rare, rare_mut, tidy, ClosingUsage, CustomerEntity, CustomerReply, MeteredEvent, PeriodClose,
    PricingView, RecentPeriod,
};

impl CustomerEntity {
    /// Takes the usage of `self.period` out, per account (departed ones included), sorted;
    /// the accounts keep empty usage.
    pub(super) fn take_period_usage(&mut self) -> Vec<(AccountId, AccountUsage)> {
        let accounts = self.customer.as_deref().map_or(&[][..], |c| &c.accounts[..]);
        let mut usage: Vec<(AccountId, AccountUsage)> = accounts
            .iter()
            .cloned()
            .zip(self.usage.iter_mut().map(std::mem::take))
            .chain(
                self.rare
                    .as_deref_mut()
                    .map(|r| std::mem::take(&mut r.departed))
                    .unwrap_or_default(),
            )
            .filter(|(_, u)| !u.is_empty())
            .collect();
        tidy(&mut self.rare);
        usage.sort_by(|a, b| a.0.cmp(&b.0));
        usage
    }

    /// Moves the usage of `period` aside (to `closing`) once usage of a later period
    /// arrives, so the next period starts empty. A bill run closes a period before the
    /// one after it can open, so `closing` is always empty here.
    pub(super) fn open(&mut self, period: Period) {
        match self.period {
            Some(current) if current >= period => return,
            Some(current) => {
                debug_assert!(self.closing.is_none(), "two periods waiting to be closed");
                let usage = self.take_period_usage();
                if !usage.is_empty() && self.closed_through.is_none_or(|c| c < current) {
                    self.closing = Some(Box::new(ClosingUsage {
                        period: current,
                        accounts: usage,
                    }));
                }
            }
            None => {}
        }
        self.period = Some(period);
    }

    /// The bill of the period `view.period`, from the usage of that period.
    pub fn bill_of_period(&self, view: &PricingView) -> Result<Bill, String> {
        match &self.closing {
            Some(c) if c.period == view.period => {
                self.priced(view, &mut c.accounts.iter().map(|(a, u)| (a, u)))
            }
            _ if self.period == Some(view.period) => self.bill(view),
            _ => self.priced(view, &mut std::iter::empty()),
        }
    }

    /// The late usage of the period before `period`, re-rated: adjustments on the bill
    /// of `period`.
    pub(super) fn adjustments(&self, view: &PricingView) -> Vec<AdjustmentLine> {
        let before = view.period.previous();
        let Some(late) = rare(&self.rare).late.iter().find(|l| l.period == before) else {
            return Vec::new();
        };
        let base = self
            .recent
            .as_ref()
            .filter(|r| r.usage.period == before)
            .map_or(&[][..], |r| &r.usage.accounts[..]);
        let ctx = BillingContext {
            catalog: &view.catalog,
            rounding: view.rounding,
            period: before,
        };
        late_adjustments(
            &ctx,
            base.iter().map(|(a, u)| (a, u)),
            late.accounts.iter().map(|(a, u)| (a, u)),
        )
    }

    /// Applies late usage of a closed period, unless its id was applied before (on time
    /// or late).
    pub(super) fn apply_late(&mut self, event: &MeteredEvent) -> CustomerReply {
        if self.customer.is_none() {
            return CustomerReply::NoSuchCustomer;
        }
        let period = Period::containing(event.day);
        let seen = |accounts: &[(AccountId, AccountUsage)]| {
            accounts
                .iter()
                .any(|(a, u)| *a == event.account && u.has_seen(event.id))
        };
        let on_time = match (&self.closing, &self.recent) {
            (Some(c), _) if c.period == period => seen(&c.accounts),
            (_, Some(r)) if r.usage.period == period => {
                if r.ids_forgotten {
                    return CustomerReply::Refused(format!(
                        "late usage of {period} is no longer accepted: its grace window ended on {}",
                        r.late_until
                    ));
                }
                seen(&r.usage.accounts)
            }
            _ if self.period == Some(period) => {
                let customer = self.customer.as_deref().expect("checked");
                customer
                    .accounts
                    .iter()
                    .zip(&self.usage)
                    .chain(rare(&self.rare).departed.iter().map(|(a, u)| (a, u)))
                    .any(|(a, u)| *a == event.account && u.has_seen(event.id))
            }
            _ => false,
        };
        if on_time {
            return CustomerReply::Duplicate;
        }
        let late = &mut rare_mut(&mut self.rare).late;
        let i = match late.iter().position(|l| l.period == period) {
            Some(i) => i,
            None => {
                late.push(ClosingUsage {
                    period,
                    accounts: Vec::new(),
                });
                late.len() - 1
            }
        };
        let accounts = &mut late[i].accounts;
        let j = match accounts.iter().position(|(a, _)| *a == event.account) {
            Some(j) => j,
            None => {
                accounts.push((event.account.clone(), AccountUsage::default()));
                accounts.len() - 1
            }
        };
        let applied = accounts[j]
            .1
            .apply_within(event.limit, event.id, event.meter, &event.reading);
        event.reply(applied, period)
    }

    /// Whether `period` is closed for this customer.
    pub fn is_closed(&self, period: Period) -> bool {
        self.closed_through.is_some_and(|c| c >= period)
    }

    pub(super) fn close(&mut self, close: &PeriodClose) -> CustomerReply {
        if self.is_closed(close.period) {
            return CustomerReply::Closed;
        }
        let usage = if self.closing.as_ref().is_some_and(|c| c.period == close.period) {
            self.closing.take().map(|c| c.accounts).unwrap_or_default()
        } else if self.period == Some(close.period) {
            self.period = None;
            self.take_period_usage()
        } else {
            Vec::new()
        };
        // The late usage of the period before was billed on this invoice.
        if let Some(r) = self.rare.as_deref_mut() {
            r.late.retain(|l| l.period >= close.period);
            r.alerts.retain(|a| a.period > close.period);
        }
        tidy(&mut self.rare);
        self.recent = Some(Box::new(RecentPeriod {
            usage: ClosingUsage {
                period: close.period,
                accounts: usage,
            },
            late_until: close.late_until,
            ids_forgotten: false,
        }));
        if let Some(customer) = self.customer.as_deref_mut() {
            for (id, left) in &close.credits {
                if let Some(credit) = customer.terms_mut().credits.iter_mut().find(|c| c.id == *id) {
                    credit.amount = *left;
                }
            }
            customer.tidy_terms();
        }
        self.closed_through = Some(close.period);
        CustomerReply::Closed
    }
}
