//! Pricing a customer's running bill with the domain's functions (the ones that write
//! invoices), and reading its terms.

use chrono::NaiveDate;

use crate::domain::{bill_customer_with, AccountId, AccountUsage, Bill, BillingContext, Customer};

use super::{rare, CustomerEntity, PricingView};

impl CustomerEntity {
    /// The customer's terms; `None` before its first upsert.
    /// Builds the index of the customer's accounts (which is not written): for an
    /// entity read back from a snapshot.
    pub fn ensure_indexed(&mut self) {
        if let Some(customer) = self.customer.as_mut() {
            customer.ensure_indexed();
        }
    }

    pub fn customer(&self) -> Option<&Customer> {
        self.customer.as_deref()
    }

    /// The latest day of any usage event the customer has seen.
    pub fn last_usage(&self) -> Option<NaiveDate> {
        self.last_usage
    }

    /// Prices the running bill of the open period `view.period`.
    pub fn bill(&self, view: &PricingView) -> Result<Bill, String> {
        if self.period != Some(view.period) {
            // Usage of an earlier period waits for its bill run; the open one has none yet.
            return self.priced(view, &mut std::iter::empty());
        }
        let customer = self.customer.as_deref().ok_or("the customer does not exist")?;
        let usage = customer.accounts.iter().zip(&self.usage);
        let departed = rare(&self.rare).departed.iter().map(|(a, u)| (a, u));
        self.priced(view, &mut usage.chain(departed))
    }

    /// Prices `usage` with the customer's profile, with the late usage of the period
    /// before as adjustments.
    pub(super) fn priced<'a>(
        &'a self,
        view: &PricingView,
        usage: &mut dyn Iterator<Item = (&'a AccountId, &'a AccountUsage)>,
    ) -> Result<Bill, String> {
        let customer = self.customer.as_ref().ok_or("the customer does not exist")?;
        let profile = view.profiles.get(customer.profile.as_str()).ok_or_else(|| {
            format!(
                "customer {:?} uses profile {:?}, which is not configured",
                customer.id, customer.profile
            )
        })?;
        let ctx = BillingContext {
            catalog: &view.catalog,
            rounding: view.rounding,
            period: view.period,
        };
        Ok(bill_customer_with(
            &ctx,
            customer,
            profile,
            usage,
            self.adjustments(view),
        ))
    }
}
