//! What the account actor is told and asked, and what it answers: usage events
//! resolved for applying, commands, queries, replies.

use std::collections::BTreeMap;
use std::sync::Arc;

use chrono::NaiveDate;
use serde::{Deserialize, Serialize};

use crate::domain::customer::{Credit, Discount};
use crate::domain::meter::Reading;
use crate::domain::usage::Applied;
use crate::domain::{
    AccountId, AccountUsage, Bill, BillingProfile, Catalog, Customer, MeterId, Period, Rounding,
};

/// One usage event, resolved and checked: ready to apply.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "MeteredEventRecord")]
pub struct MeteredEvent {
    /// The event's date in the partition's time zone: it decides the event's period.
    pub day: NaiveDate,
    pub account: AccountId,
    pub meter: MeterId,
    pub reading: Reading,
    /// Fingerprint of the event id, for deduplication.
    pub id: u128,
    /// The most distinct events its account may apply in the period
    /// (`limits.max_events_per_account` when it was journaled, so replay decides alike).
    pub limit: u32,
}

/// A [`MeteredEvent`] as journaled, also as written before events carried their local
/// date and their account's limit (read then with the UTC date and no limit, as they
/// were applied).
#[derive(Deserialize)]
pub(super) struct MeteredEventRecord {
    pub(super) day: Option<NaiveDate>,
    pub(super) account: AccountId,
    pub(super) meter: MeterId,
    pub(super) reading: Reading,
    pub(super) id: u128,
    pub(super) limit: Option<u32>,
}

impl From<MeteredEventRecord> for MeteredEvent {
    fn from(r: MeteredEventRecord) -> Self {
        MeteredEvent {
            day: r.day.unwrap_or_else(|| r.reading.time.date_naive()),
            account: r.account,
            meter: r.meter,
            reading: r.reading,
            id: r.id,
            limit: r.limit.unwrap_or(u32::MAX),
        }
    }
}

impl MeteredEvent {
    /// The reply to applying this event in `period`.
    pub(super) fn reply(
        &self,
        applied: Result<Applied, crate::domain::meter::Overflow>,
        period: Period,
    ) -> CustomerReply {
        match applied {
            Ok(Applied::New) => CustomerReply::Accepted,
            Ok(Applied::Duplicate) => CustomerReply::Duplicate,
            Ok(Applied::Full) => CustomerReply::Refused(format!(
                "account {:?} has applied {} distinct events in period {period}, the most one account may \
                 (limits.max_events_per_account); its new events are refused until the period closes",
                self.account, self.limit
            )),
            Err(_) => CustomerReply::Overflowed,
        }
    }
}

/// What changes a customer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CustomerCommand {
    /// Creates the customer, or replaces its terms (accounts, profile, credits, …).
    Upsert(Box<Customer>),
    /// One usage event of one of the customer's accounts.
    Usage(MeteredEvent),
    /// Grants a credit (refused if the customer has one with the same id).
    AddCredit(Credit),
    /// Grants a discount (refused if the customer has one with the same id).
    AddDiscount(Discount),
    /// Takes an account out of the customer, with its usage of the open `period`.
    Release { account: AccountId, period: Period },
    /// Takes an account in, with the usage of the open `period` it brings.
    Adopt {
        account: AccountId,
        usage: Option<Box<AccountUsage>>,
        period: Period,
    },
    /// Closes `period` once its invoice is written (or it needed none): the period's
    /// usage is let go, and each credit keeps the balance the invoice left it.
    Close(Box<PeriodClose>),
    /// Usage of the last closed period that arrived within its grace window: billed as
    /// an adjustment on the next invoice.
    Late(MeteredEvent),
    /// Records that a budget threshold was crossed, once per threshold, account and
    /// period: the journaled fact that makes an alert fire exactly once.
    RaiseAlert(Box<AlertMark>),
}

/// A budget threshold the running bill has reached.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Crossing {
    /// `None` for the customer's budget, else the account's.
    pub account: Option<AccountId>,
    pub threshold: u32,
    pub budget: rust_decimal::Decimal,
    pub spent: rust_decimal::Decimal,
}

/// A budget threshold crossed in a period.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AlertMark {
    pub period: Period,
    /// `None` for the customer's budget, else the account's.
    pub account: Option<AccountId>,
    /// Percent of the budget.
    pub threshold: u32,
    pub budget: rust_decimal::Decimal,
    /// The running bill when it was crossed.
    pub spent: rust_decimal::Decimal,
    pub at: chrono::DateTime<chrono::Utc>,
}

/// What closing a period changes in a customer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeriodClose {
    pub period: Period,
    /// The first day no late usage of `period` is accepted any more.
    pub late_until: NaiveDate,
    /// `(credit id, balance left)` for every credit the invoice drew on.
    pub credits: Vec<(String, rust_decimal::Decimal)>,
}

/// What applying a command did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CustomerReply {
    /// The terms are in place; `left` are the accounts the terms before listed and these
    /// do not.
    Upserted { left: Vec<AccountId> },
    /// The event was applied.
    Accepted,
    /// An event with the same id was applied before; nothing changed.
    Duplicate,
    /// The event would overflow its meter's aggregate (28 significant digits).
    Overflowed,
    /// Usage for a customer that does not exist (never happens through the engine).
    NoSuchCustomer,
    /// A credit or discount was granted.
    Granted,
    /// A credit or discount with that id exists already; nothing changed.
    AlreadyGranted,
    /// The account left, with its usage of the period (if any).
    Released(Option<Box<AccountUsage>>),
    /// The account joined.
    Adopted,
    /// The period is closed (or was already: nothing changed).
    Closed,
    /// The alert was recorded: it fires now.
    AlertRaised,
    /// The alert was recorded before: it fired then.
    AlertKnown,
    /// Refused, with the reason; nothing changed.
    Refused(String),
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
    /// Budget thresholds the running bill has reached and no alert was raised for.
    Budgets(Arc<PricingView>),
    /// The bill of a period being closed (the open period's, or the one before).
    PeriodBill(Arc<PricingView>),
    /// The customer's running bill.
    Bill(Arc<PricingView>),
    /// The customer's terms.
    Terms,
    /// What `account` would take with it if it left now (a `Release` for `period`).
    Leaving { account: AccountId, period: Period },
}

/// Answers to [`CustomerQuery`].
#[derive(Clone, Debug)]
pub enum CustomerAnswer {
    Bill(Result<Box<Bill>, String>),
    /// Each threshold newly reached, and the alerts raised already in the open period
    /// (for the engine to make sure its alert log has them).
    Budgets(Result<(Vec<Crossing>, Vec<AlertMark>), String>),
    Terms(Option<Box<Customer>>),
    /// The usage a `Release` would hand over (`None`: none), or why the account cannot leave.
    Leaving(Result<Option<Box<AccountUsage>>, String>),
}
