//! Budgets: a customer's running bill against its thresholds, each alert raised once.

use std::sync::Arc;

use crate::engine::{
    AlertMark, CustomerAnswer, CustomerCommand, CustomerKey, CustomerQuery, CustomerReply, EngineError,
    PartitionEngine, PricingView,
};

impl PartitionEngine {
    /// Watches `key`'s budgets: checked after its usage, and once now (a new or raised
    /// budget may be crossed already, and a restart checks every one).
    pub(in crate::engine) fn watch_budgets(&self, key: &CustomerKey) {
        self.budgeted.insert(key.clone(), ());
        self.to_check
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key.clone());
    }

    /// Checks one customer's budgets, journals each threshold newly reached, and
    /// records its alert.
    pub(in crate::engine) async fn check_budget(&self, key: &CustomerKey) -> Result<(), EngineError> {
        let view = Arc::new(PricingView {
            catalog: self.catalog(),
            rounding: self.rounding,
            period: self.period(),
            profiles: self.profiles.clone(),
        });
        let crossed = match self
            .runtime
            .ask(key.clone(), CustomerQuery::Budgets(view.clone()))?
            .await?
        {
            Some(CustomerAnswer::Budgets(Ok((crossed, raised)))) => {
                // An alert journaled whose log line was lost (a failed write) is logged now.
                for mark in &raised {
                    self.alerts.record(key, mark).map_err(EngineError::Unavailable)?;
                }
                crossed
            }
            Some(CustomerAnswer::Budgets(Err(e))) => return Err(EngineError::Failed(e)),
            _ => return Ok(()),
        };
        for c in crossed {
            let mark = AlertMark {
                period: view.period,
                account: c.account,
                threshold: c.threshold,
                budget: c.budget,
                spent: c.spent,
                at: self.now(),
            };
            match self
                .submit_one(key.clone(), CustomerCommand::RaiseAlert(Box::new(mark.clone())))
                .await?
            {
                CustomerReply::AlertRaised => {
                    self.alerts.record(key, &mark).map_err(EngineError::Unavailable)?;
                }
                CustomerReply::AlertKnown => {}
                other => return Err(EngineError::Failed(format!("{other:?}"))),
            }
        }
        Ok(())
    }
}
