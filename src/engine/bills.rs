//! Running bills: a customer's, and one account's share of it.

use std::sync::Arc;

use crate::domain::invoice::AccountBill;
use crate::domain::Bill;

use crate::engine::stats;
use crate::engine::{
    AccountStatement, CustomerAnswer, CustomerQuery, EngineError, PartitionEngine, PricingView,
};

impl PartitionEngine {
    /// The running bill of a customer.
    pub async fn customer_bill(&self, customer: &str) -> Result<Bill, EngineError> {
        let started = std::time::Instant::now();
        let key = self.customer_key(customer)?;
        // The catalog is read and the query queued under the catalog lock: usage priced by
        // a version published later can only queue behind the query, never ahead of it.
        let pending = {
            let catalog = self.catalog.read().unwrap_or_else(|p| p.into_inner());
            let view = Arc::new(PricingView {
                catalog: catalog.clone(),
                rounding: self.rounding,
                period: self.period(),
                profiles: self.profiles.clone(),
            });
            self.runtime.ask(key, CustomerQuery::Bill(view))?
        };
        let answer = pending.await?;
        stats::QUERY.record(started.elapsed());
        match answer {
            Some(CustomerAnswer::Bill(Ok(bill))) => Ok(*bill),
            Some(CustomerAnswer::Bill(Err(e))) => Err(EngineError::Failed(e)),
            _ => Err(EngineError::UnknownCustomer(customer.to_owned())),
        }
    }

    /// The running bill of one account: its share of its customer's bill.
    pub async fn account_bill(&self, account: &str) -> Result<AccountStatement, EngineError> {
        let customer = self
            .customer_of(account)
            .ok_or_else(|| EngineError::UnknownAccount(account.to_owned()))?;
        let bill = self.customer_bill(&customer).await?;
        let zero = self.rounding.round(rust_decimal::Decimal::ZERO);
        let part = bill
            .accounts
            .into_iter()
            .find(|a| &*a.account == account)
            .unwrap_or_else(|| AccountBill {
                account: account.into(),
                lines: Vec::new(),
                total: zero,
            });
        Ok(AccountStatement {
            customer: bill.customer,
            period: bill.period,
            currency: bill.currency,
            bill: part,
        })
    }
}
