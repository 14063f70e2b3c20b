//! The account actor: one customer's accounts and their usage for the open period, as
//! an entity of the actor runtime.
//!
//! It is keyed by customer, so a customer's accounts always live in one segment and a
//! customer's bill (with tiers pooled across its family) is computed in one place. It
//! applies pre-resolved usage (the engine resolves meters and catalog versions before
//! journaling, so applying is a pure function of the command) and prices its bills with
//! the domain's functions, the same ones that produce invoices.

use std::collections::BTreeMap;
use std::sync::Arc;

use tallyman_actors::Entity;

use crate::domain::meter::Reading;
use crate::domain::usage::Applied;
use crate::domain::{
    bill_customer, AccountId, AccountUsage, Bill, BillingContext, BillingProfile, Catalog, Customer, MeterId,
    Period, Rounding,
};

/// A customer's key in its partition.
pub type CustomerKey = Arc<str>;

/// One usage event, resolved and checked: ready to apply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MeteredEvent {
    pub account: AccountId,
    pub meter: MeterId,
    pub reading: Reading,
    /// Fingerprint of the event id, for deduplication.
    pub id: u128,
}

/// What changes a customer.
#[derive(Clone, Debug)]
pub enum CustomerCommand {
    /// Creates the customer, or replaces its terms (accounts, profile, credits, …).
    Upsert(Box<Customer>),
    /// Usage for the customer's accounts.
    Usage(Vec<MeteredEvent>),
}

/// What applying a command did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CustomerReply {
    Upserted,
    Usage {
        accepted: u32,
        duplicates: u32,
        /// Events refused because an aggregate would overflow 28 digits.
        overflowed: u32,
    },
    /// Usage for a customer that does not exist (never happens through the engine).
    NoSuchCustomer,
}

/// What a bill is priced against: the partition's catalog and rules at query time.
#[derive(Clone, Debug)]
pub struct PricingView {
    pub catalog: Arc<Catalog>,
    pub rounding: Rounding,
    pub period: Period,
    pub profiles: Arc<BTreeMap<String, BillingProfile>>,
}

/// Reads a customer.
#[derive(Clone, Debug)]
pub enum CustomerQuery {
    /// The customer's running bill.
    Bill(Arc<PricingView>),
    /// The customer's terms.
    Terms,
}

/// Answers to [`CustomerQuery`].
#[derive(Clone, Debug)]
pub enum CustomerAnswer {
    Bill(Result<Box<Bill>, String>),
    Terms(Option<Box<Customer>>),
}

/// The state of one customer.
#[derive(Clone, Debug, Default)]
pub struct CustomerEntity {
    customer: Option<Box<Customer>>,
    /// Accounts with usage, sorted by id.
    usage: Vec<(AccountId, AccountUsage)>,
}

impl CustomerEntity {
    /// Prices the running bill with the customer's profile.
    pub fn bill(&self, view: &PricingView) -> Result<Bill, String> {
        let customer = self.customer.as_ref().ok_or("the customer does not exist")?;
        let profile = view.profiles.get(&customer.profile).ok_or_else(|| {
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
        Ok(bill_customer(
            &ctx,
            customer,
            profile,
            self.usage.iter().map(|(a, u)| (a, u)),
        ))
    }
}

impl Entity for CustomerEntity {
    type Key = CustomerKey;
    type Command = CustomerCommand;
    type Reply = CustomerReply;
    type Query = CustomerQuery;
    type Answer = CustomerAnswer;
    type Snapshot = CustomerEntity;

    fn shard(key: &CustomerKey) -> u64 {
        xxhash_rust::xxh3::xxh3_64(key.as_bytes())
    }

    fn create(_: &CustomerKey) -> Self {
        CustomerEntity::default()
    }

    fn apply(&mut self, command: &CustomerCommand) -> CustomerReply {
        match command {
            CustomerCommand::Upsert(customer) => {
                self.customer = Some(customer.clone());
                CustomerReply::Upserted
            }
            CustomerCommand::Usage(events) => {
                if self.customer.is_none() {
                    return CustomerReply::NoSuchCustomer;
                }
                let (mut accepted, mut duplicates, mut overflowed) = (0, 0, 0);
                for e in events {
                    let i = match self.usage.binary_search_by(|(a, _)| a.cmp(&e.account)) {
                        Ok(i) => i,
                        Err(i) => {
                            self.usage.insert(i, (e.account.clone(), AccountUsage::default()));
                            i
                        }
                    };
                    match self.usage[i].1.apply(e.id, e.meter, &e.reading) {
                        Ok(Applied::New) => accepted += 1,
                        Ok(Applied::Duplicate) => duplicates += 1,
                        Err(_) => overflowed += 1,
                    }
                }
                CustomerReply::Usage {
                    accepted,
                    duplicates,
                    overflowed,
                }
            }
        }
    }

    fn query(&self, query: &CustomerQuery) -> CustomerAnswer {
        match query {
            CustomerQuery::Bill(view) => CustomerAnswer::Bill(self.bill(view).map(Box::new)),
            CustomerQuery::Terms => CustomerAnswer::Terms(self.customer.clone()),
        }
    }

    fn snapshot(&self) -> CustomerEntity {
        self.clone()
    }

    fn restore(snapshot: &CustomerEntity) -> Self {
        snapshot.clone()
    }
}
