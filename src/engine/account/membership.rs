//! A customer's accounts and their usage: upserts of its terms and accounts, accounts
//! leaving and arriving with their usage, and usage applied exactly once.

use thin_vec::ThinVec;

use crate::domain::{AccountId, AccountUsage, Customer, Period};

use super::{rare, rare_mut, tidy, CustomerEntity, CustomerReply, MeteredEvent};

impl CustomerEntity {
    /// Replaces the customer's terms, keeping each account's usage with its account;
    /// returns the accounts the customer no longer lists.
    pub(super) fn upsert(&mut self, customer: &Customer) -> Vec<AccountId> {
        let left: Vec<AccountId> = self.customer.as_deref().map_or_else(Vec::new, |c| {
            c.accounts
                .iter()
                .filter(|a| customer.position(a).is_none())
                .cloned()
                .collect()
        });
        let mut old: Vec<(AccountId, AccountUsage)> = match &self.customer {
            Some(c) => c.accounts.iter().cloned().zip(self.usage.drain(..)).collect(),
            None => Vec::new(),
        };
        old.extend(
            self.rare
                .as_deref_mut()
                .map(|r| std::mem::take(&mut r.departed))
                .unwrap_or_default(),
        );
        self.usage = customer
            .accounts
            .iter()
            .map(|a| match old.iter().position(|(o, _)| o == a) {
                Some(i) => old.swap_remove(i).1,
                None => AccountUsage::default(),
            })
            .collect();
        let departed: ThinVec<_> = old.into_iter().filter(|(_, u)| !u.is_empty()).collect();
        if !departed.is_empty() {
            rare_mut(&mut self.rare).departed = departed;
        }
        tidy(&mut self.rare);
        let mut terms = customer.clone();
        if let Some(mut previous) = self.customer.take() {
            // Credits and discounts are grants, not terms: new terms keep those granted
            // before (a credit with its balance left), and add the ones with new ids.
            let granted = previous.take_terms();
            let mut credits = granted.credits;
            let mut next = credits.iter().map(|c| c.granted + 1).max().unwrap_or(0);
            for mut c in terms.terms_mut().credits.drain(..) {
                if !credits.iter().any(|x| x.id == c.id) {
                    c.granted = next;
                    next += 1;
                    credits.push(c);
                }
            }
            terms.terms_mut().credits = credits;
            for d in granted.discounts {
                if !terms.terms().discounts.iter().any(|x| x.id == d.id) {
                    terms.terms_mut().discounts.push(d);
                }
            }
            terms.tidy_terms();
        }
        // Read back from the journal, a customer's index of accounts is not built.
        terms.ensure_indexed();
        self.customer = Some(Box::new(terms));
        left
    }

    /// What [`Self::release`] would answer now, without changing anything: the account's
    /// usage of `period` (with any it left behind earlier), or why it cannot leave.
    pub(super) fn leaving(
        &self,
        account: &AccountId,
        period: Period,
    ) -> Result<Option<Box<AccountUsage>>, String> {
        let customer = self.customer.as_deref().ok_or("the customer does not exist")?;
        if customer.payer == *account {
            return Err(format!(
                "account {account:?} is the payer of customer {:?} and cannot leave it",
                customer.id
            ));
        }
        if self.period != Some(period) {
            // Usage of an earlier period stays to be billed with it; none of `period` yet.
            return Ok(None);
        }
        let mut usage = customer.position(account).map(|i| self.usage[i].clone());
        if let Some((_, departed)) = rare(&self.rare).departed.iter().find(|(a, _)| a == account) {
            match &mut usage {
                Some(u) => u.merge(departed).map_err(|e| e.to_string())?,
                None => usage = Some(departed.clone()),
            }
        }
        Ok(usage.filter(|u| !u.is_empty()).map(Box::new))
    }

    pub(super) fn release(&mut self, account: &AccountId, period: Period) -> CustomerReply {
        if self.customer.is_none() {
            return CustomerReply::NoSuchCustomer;
        }
        // Usage of an earlier period stays here, to be billed with it.
        self.open(period);
        let Some(customer) = self.customer.as_deref_mut() else {
            return CustomerReply::NoSuchCustomer;
        };
        if customer.payer == *account {
            return CustomerReply::Refused(format!(
                "account {account:?} is the payer of customer {:?} and cannot leave it",
                customer.id
            ));
        }
        let mut usage = customer.remove_account(account).map(|i| self.usage.remove(i));
        if let Some(i) = rare(&self.rare).departed.iter().position(|(a, _)| a == account) {
            let (_, departed) = rare_mut(&mut self.rare).departed.swap_remove(i);
            tidy(&mut self.rare);
            match &mut usage {
                Some(u) => {
                    // Usage that stayed behind for this account rejoins it: disjoint streams.
                    let _ = u.merge(&departed);
                }
                None => usage = Some(departed),
            }
        }
        CustomerReply::Released(usage.filter(|u| !u.is_empty()).map(Box::new))
    }

    pub(super) fn adopt(
        &mut self,
        account: &AccountId,
        usage: Option<&AccountUsage>,
        period: Period,
    ) -> CustomerReply {
        if self.customer.is_none() {
            return CustomerReply::NoSuchCustomer;
        }
        self.open(period);
        let Some(customer) = self.customer.as_deref_mut() else {
            return CustomerReply::NoSuchCustomer;
        };
        let (i, new) = customer.add_account(account.clone());
        if new {
            self.usage.insert(i, AccountUsage::default());
        }
        if let Some(j) = rare(&self.rare).departed.iter().position(|(a, _)| a == account) {
            let (_, departed) = rare_mut(&mut self.rare).departed.swap_remove(j);
            tidy(&mut self.rare);
            let _ = self.usage[i].merge(&departed);
        }
        if let Some(u) = usage {
            let _ = self.usage[i].merge(u);
        }
        CustomerReply::Adopted
    }

    /// Applies one usage event; its account is likely at one of the positions `likely`
    /// (as the prefetch found them; any range will do, see [`Customer::position_near`]).
    pub(super) fn apply_usage(
        &mut self,
        event: &MeteredEvent,
        likely: std::ops::Range<usize>,
    ) -> CustomerReply {
        let Some(customer) = self.customer.as_deref() else {
            return CustomerReply::NoSuchCustomer;
        };
        // Where the account is in `usage` (`None`: it left the customer).
        let position = customer.position_near(&event.account, likely);
        let day = event.day;
        if self.last_usage.is_none_or(|d| d < day) {
            self.last_usage = Some(day);
        }
        if let Some(recent) = self.recent.as_deref_mut() {
            if day >= recent.late_until && !recent.ids_forgotten {
                // No late usage of that period can come any more.
                recent.usage.accounts.iter_mut().for_each(|(_, u)| u.forget_ids());
                recent.ids_forgotten = true;
            }
        }
        let period = Period::containing(day);
        if self.is_closed(period) || self.period.is_some_and(|p| p > period) {
            // The engine admits usage of the open period only; this cannot happen.
            return CustomerReply::Refused(format!("period {period} is closed"));
        }
        self.open(period);
        let usage = match position {
            Some(i) => &mut self.usage[i],
            None => self.departed_usage(&event.account),
        };
        let applied = usage.apply_within(event.limit, event.id, event.meter, &event.reading);
        event.reply(applied, period)
    }

    /// The usage an account that left the customer after its event was routed keeps
    /// here: its usage of the period stays with this customer.
    pub(super) fn departed_usage(&mut self, account: &AccountId) -> &mut AccountUsage {
        let departed = &mut rare_mut(&mut self.rare).departed;
        match departed.iter().position(|(a, _)| a == account) {
            Some(i) => &mut departed[i].1,
            None => {
                departed.push((account.clone(), AccountUsage::default()));
                &mut departed.last_mut().expect("pushed").1
            }
        }
    }
}
