//! Creating and updating customers (one or many, all or nothing), and granting
//! credits and discounts.

use dashmap::mapref::entry::Entry;
use tallyman_actors::{Failure, SubmitError};

use crate::domain::customer::{Credit, Discount};
use crate::domain::FieldError;
use crate::domain::{AccountId, Customer};

use crate::engine::{
    CustomerAnswer, CustomerCommand, CustomerKey, CustomerQuery, CustomerReply, EngineError, PartitionEngine,
};

/// The upserts of a batch of customers with the accounts each claimed.
struct Claims {
    batch: Vec<(CustomerKey, CustomerCommand)>,
    /// Each customer's number in the directory.
    numbers: Vec<u32>,
    /// The accounts each claimed (not those it held already).
    claimed: Vec<Vec<AccountId>>,
}

impl PartitionEngine {
    /// Creates a customer, or replaces the terms of an existing one. Its accounts must
    /// not belong to another customer. Journaled like usage.
    pub async fn upsert_customer(&self, customer: Customer) -> Result<(), EngineError> {
        self.upsert_customers(vec![customer]).await
    }

    /// Creates or updates many customers in one journal record: all of them, or (when
    /// one names an unknown profile or another customer's account) none of them.
    pub async fn upsert_customers(&self, customers: Vec<Customer>) -> Result<(), EngineError> {
        let _routing = self.routing.write().await;
        self.check_profiles(&customers)?;
        let claims = self.claim_accounts(customers)?;
        let Claims {
            batch,
            numbers,
            claimed,
        } = claims;
        let budgeted: Vec<bool> = batch
            .iter()
            .map(|(_, c)| match c {
                CustomerCommand::Upsert(c) => {
                    c.terms().budget.is_some() || !c.terms().account_budgets.is_empty()
                }
                _ => unreachable!("only upserts here"),
            })
            .collect();
        let keys: Vec<CustomerKey> = batch.iter().map(|(k, _)| k.clone()).collect();
        let outcomes = match self.runtime.submit(batch) {
            Ok(pending) => pending.await,
            Err(e) => {
                claimed.iter().for_each(|c| self.release(c));
                return Err(e.into());
            }
        };
        // Each customer's outcome on its own: applied (answered, or applied by a restarted
        // segment's recovery first), or refused after it was journaled (marked never to
        // apply). A segment that went away before answering will apply it at recovery.
        let mut refused = Vec::new();
        for (i, key) in keys.iter().enumerate() {
            let outcome = match &outcomes {
                Ok(o) => o.get(i).cloned(),
                Err(SubmitError::Interrupted) => Some(Err(Failure::Replayed)),
                Err(e) => Some(Err(Failure::Unavailable {
                    reason: e.to_string(),
                })),
            };
            if let Err(why) = self.settle_upsert(key, numbers[i], outcome, budgeted[i]).await {
                self.release(&claimed[i]);
                refused.push(why);
            }
        }
        if !refused.is_empty() {
            return Err(EngineError::Unavailable(format!(
                "{} of {} customer(s) were not created or updated (the others were): {}; send them again",
                refused.len(),
                keys.len(),
                refused.join("; ")
            )));
        }
        Ok(())
    }

    /// Every customer names a configured profile.
    fn check_profiles(&self, customers: &[Customer]) -> Result<(), EngineError> {
        for c in customers {
            if !self.profiles.contains_key(c.profile.as_str()) {
                let known: Vec<&str> = self.profiles.keys().map(String::as_str).collect();
                return Err(EngineError::Invalid(FieldError::new(
                    "profile",
                    format!(
                        "customer {:?}: no profile named {:?}; configured: {}",
                        c.id,
                        c.profile,
                        known.join(", ")
                    ),
                )));
            }
        }
        Ok(())
    }

    /// Claims the accounts of every customer in the directory, and makes their upserts;
    /// gives back what was claimed, and refuses, if an account belongs to another.
    fn claim_accounts(&self, customers: Vec<Customer>) -> Result<Claims, EngineError> {
        let mut claims = Claims {
            batch: Vec::with_capacity(customers.len()),
            numbers: Vec::with_capacity(customers.len()),
            claimed: Vec::with_capacity(customers.len()),
        };
        for customer in customers {
            let key: CustomerKey = customer.id.as_str().into();
            let number = self.customers.number(&key);
            let mut mine = Vec::new();
            for account in &customer.accounts {
                match self.directory.entry(account.clone()) {
                    Entry::Vacant(v) => {
                        v.insert(number);
                        mine.push(account.clone());
                    }
                    Entry::Occupied(o) if *o.get() == number => {}
                    Entry::Occupied(o) => {
                        let owner = *o.get();
                        drop(o);
                        let owner = self.customers.key(owner);
                        self.release(&mine);
                        claims.claimed.iter().for_each(|c| self.release(c));
                        return Err(EngineError::Conflict(format!(
                            "account {account:?} belongs to customer {owner:?}; move it rather than adding it twice"
                        )));
                    }
                }
            }
            claims.numbers.push(number);
            claims.claimed.push(mine);
            claims
                .batch
                .push((key, CustomerCommand::Upsert(Box::new(customer))));
        }
        Ok(claims)
    }

    /// Gives back accounts claimed for an upsert that did not happen.
    fn release(&self, claimed: &[AccountId]) {
        for a in claimed {
            self.directory.remove(a);
        }
    }

    /// What one customer's upsert did: its accounts let go are freed, it is marked
    /// created, and its budgets are watched (and checked at once). Why not, if refused.
    async fn settle_upsert(
        &self,
        key: &CustomerKey,
        number: u32,
        outcome: Option<Result<CustomerReply, Failure>>,
        budgeted: bool,
    ) -> Result<(), String> {
        match outcome {
            Some(Ok(CustomerReply::Upserted { left })) => {
                // Accounts the customer no longer lists are free for others.
                for a in &left {
                    self.directory.remove_if(a, |_, owner| *owner == number);
                }
            }
            Some(Err(Failure::Replayed)) => {
                // Applied, but its answer (the accounts let go) was lost: the entity's
                // terms say which of the accounts routed to it it still lists.
                self.forget_unlisted(key).await;
            }
            other => return Err(format!("customer {key:?}: {other:?}")),
        }
        self.customers.mark_created(key);
        if budgeted {
            self.watch_budgets(key);
        } else {
            self.budgeted.remove(key);
        }
        Ok(())
    }

    /// Frees the accounts routed to `customer` that its terms no longer list.
    pub(in crate::engine) async fn forget_unlisted(&self, customer: &CustomerKey) {
        let listed = match self.runtime.ask(customer.clone(), CustomerQuery::Terms) {
            Ok(pending) => match pending.await {
                Ok(Some(CustomerAnswer::Terms(Some(c)))) => c.accounts,
                _ => return,
            },
            Err(_) => return,
        };
        let Some(number) = self.customers.find(customer) else {
            return;
        };
        self.directory
            .retain(|account, owner| *owner != number || listed.binary_search(account).is_ok());
    }

    /// Grants `customer` a credit, checked against the partition's currency and catalog.
    pub async fn add_credit(&self, customer: &str, credit: Credit) -> Result<(), EngineError> {
        credit
            .validate(self.rounding.currency)
            .map_err(EngineError::Invalid)?;
        self.check_scope(&credit.meters)?;
        self.grant(customer, CustomerCommand::AddCredit(credit)).await
    }

    /// Grants `customer` a discount, checked against the partition's catalog.
    pub async fn add_discount(&self, customer: &str, discount: Discount) -> Result<(), EngineError> {
        discount.validate().map_err(EngineError::Invalid)?;
        self.check_scope(&discount.meters)?;
        self.grant(customer, CustomerCommand::AddDiscount(discount)).await
    }

    pub(in crate::engine) fn check_scope(&self, meters: &Option<Vec<String>>) -> Result<(), EngineError> {
        let catalog = self.catalog();
        for (i, m) in meters.iter().flatten().enumerate() {
            if catalog.meter_id(m).is_none() {
                return Err(EngineError::Invalid(FieldError::new(
                    format!("meters[{i}]"),
                    format!("unknown meter {m:?}"),
                )));
            }
        }
        Ok(())
    }

    pub(in crate::engine) async fn grant(
        &self,
        customer: &str,
        command: CustomerCommand,
    ) -> Result<(), EngineError> {
        let key = self.customer_key(customer)?;
        let outcome = self.runtime.submit(vec![(key, command)])?.await?.pop();
        match outcome {
            Some(Ok(CustomerReply::Granted)) => Ok(()),
            Some(Ok(CustomerReply::AlreadyGranted)) => Err(EngineError::Conflict(format!(
                "customer {customer:?} already has one with that id; ids are unique per customer"
            ))),
            Some(Ok(CustomerReply::NoSuchCustomer)) => Err(EngineError::UnknownCustomer(customer.to_owned())),
            other => Err(EngineError::Failed(format!("{other:?}"))),
        }
    }
}
