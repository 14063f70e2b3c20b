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

use chrono::NaiveDate;
use serde::{Deserialize, Serialize};
use tallyman_actors::Entity;
use thin_vec::ThinVec;

use crate::domain::customer::{Credit, Discount};
use crate::domain::invoice::AdjustmentLine;
use crate::domain::meter::Reading;
use crate::domain::usage::Applied;
use crate::domain::{
    bill_customer_with, late_adjustments, AccountId, AccountUsage, Bill, BillingContext, BillingProfile,
    Catalog, Customer, MeterId, Period, Rounding,
};

/// A customer's key in its partition (inline up to 15 bytes, as [`AccountId`]).
pub type CustomerKey = crate::domain::ShortId;

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
struct MeteredEventRecord {
    day: Option<NaiveDate>,
    account: AccountId,
    meter: MeterId,
    reading: Reading,
    id: u128,
    limit: Option<u32>,
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
    fn reply(
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

/// The state of one customer.
///
/// One is kept per customer, millions of them, in a hash table whose slack multiplies
/// its size: lists are `ThinVec`s (one word inline; the rarely used ones, empty, take
/// nothing more).
///
/// Usage belongs to one period: `usage` and `departed` to `period`, and, while a bill run
/// closes the period before it, that period's usage waits in `closing` until its `Close`
/// command. Usage of the next period can thus stream in while the last one is billed.
#[derive(Clone, Debug, Default)]
pub struct CustomerEntity {
    customer: Option<Box<Customer>>,
    /// The period of `usage` and `departed` (`None`: no usage yet).
    period: Option<Period>,
    /// Usage of `customer.accounts[i]` at `usage[i]`.
    usage: ThinVec<AccountUsage>,
    /// The usage of the period before `period`, until it is closed.
    closing: Option<Box<ClosingUsage>>,
    /// The latest period closed for this customer.
    closed_through: Option<Period>,
    /// The usage of the last closed period: what late usage is deduplicated against
    /// and re-rated with.
    recent: Option<Box<RecentPeriod>>,
    /// The latest day of any usage event applied (or refused as a duplicate).
    last_usage: Option<NaiveDate>,
    /// What few customers have, behind one pointer (`None`: all of it empty).
    rare: Option<Box<Rare>>,
}

/// The lists of a customer that are nearly always empty, kept apart so that an entity
/// takes 64 bytes (80 with the lists in place).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Rare {
    /// Usage of accounts that left the customer during the period: still billed here.
    departed: ThinVec<(AccountId, AccountUsage)>,
    /// Late usage per closed period, until the invoice that bills it.
    late: ThinVec<ClosingUsage>,
    /// Budget thresholds crossed in the open period (and the one being closed).
    alerts: ThinVec<AlertMark>,
}

static NO_RARE: Rare = Rare {
    departed: ThinVec::new(),
    late: ThinVec::new(),
    alerts: ThinVec::new(),
};

/// The rare lists, empty ones when there are none.
fn rare(rare: &Option<Box<Rare>>) -> &Rare {
    rare.as_deref().unwrap_or(&NO_RARE)
}

/// The rare lists, to change (made at the first need).
fn rare_mut(rare: &mut Option<Box<Rare>>) -> &mut Rare {
    rare.get_or_insert_with(Default::default)
}

/// Lets the rare lists go once they are all empty.
fn tidy(rare: &mut Option<Box<Rare>>) {
    if rare
        .as_deref()
        .is_some_and(|r| r.departed.is_empty() && r.late.is_empty() && r.alerts.is_empty())
    {
        *rare = None;
    }
}

/// Equal state, however the rare lists are held (none, or empty ones).
impl PartialEq for CustomerEntity {
    fn eq(&self, other: &Self) -> bool {
        self.customer == other.customer
            && self.period == other.period
            && self.usage == other.usage
            && self.closing == other.closing
            && self.closed_through == other.closed_through
            && self.recent == other.recent
            && self.last_usage == other.last_usage
            && rare(&self.rare) == rare(&other.rare)
    }
}

impl Eq for CustomerEntity {}

/// An entity as it is written (snapshots): the struct it was before its rare lists
/// moved behind a pointer, field for field.
#[derive(Serialize)]
#[serde(rename = "CustomerEntity")]
struct EntityWritten<'a> {
    customer: &'a Option<Box<Customer>>,
    period: &'a Option<Period>,
    usage: &'a ThinVec<AccountUsage>,
    departed: &'a ThinVec<(AccountId, AccountUsage)>,
    closing: &'a Option<Box<ClosingUsage>>,
    closed_through: &'a Option<Period>,
    recent: &'a Option<Box<RecentPeriod>>,
    late: &'a ThinVec<ClosingUsage>,
    alerts: &'a ThinVec<AlertMark>,
    last_usage: &'a Option<NaiveDate>,
}

#[derive(Deserialize)]
#[serde(rename = "CustomerEntity")]
struct EntityRead {
    customer: Option<Box<Customer>>,
    period: Option<Period>,
    usage: ThinVec<AccountUsage>,
    departed: ThinVec<(AccountId, AccountUsage)>,
    closing: Option<Box<ClosingUsage>>,
    closed_through: Option<Period>,
    recent: Option<Box<RecentPeriod>>,
    late: ThinVec<ClosingUsage>,
    alerts: ThinVec<AlertMark>,
    last_usage: Option<NaiveDate>,
}

impl Serialize for CustomerEntity {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let r = rare(&self.rare);
        EntityWritten {
            customer: &self.customer,
            period: &self.period,
            usage: &self.usage,
            departed: &r.departed,
            closing: &self.closing,
            closed_through: &self.closed_through,
            recent: &self.recent,
            late: &r.late,
            alerts: &r.alerts,
            last_usage: &self.last_usage,
        }
        .serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for CustomerEntity {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let read = EntityRead::deserialize(deserializer)?;
        let mut rare = Some(Box::new(Rare {
            departed: read.departed,
            late: read.late,
            alerts: read.alerts,
        }));
        tidy(&mut rare);
        Ok(CustomerEntity {
            customer: read.customer,
            period: read.period,
            usage: read.usage,
            closing: read.closing,
            closed_through: read.closed_through,
            recent: read.recent,
            last_usage: read.last_usage,
            rare,
        })
    }
}

/// The last closed period's usage.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecentPeriod {
    usage: ClosingUsage,
    /// The first day no late usage is accepted; once usage of that day arrives, the
    /// event ids are let go (the aggregates stay, to re-rate late usage with).
    late_until: NaiveDate,
    ids_forgotten: bool,
}

/// A period's usage, per account, kept until its invoice is written.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClosingUsage {
    period: Period,
    accounts: Vec<(AccountId, AccountUsage)>,
}

impl CustomerEntity {
    /// Takes the usage of `self.period` out, per account (departed ones included), sorted;
    /// the accounts keep empty usage.
    fn take_period_usage(&mut self) -> Vec<(AccountId, AccountUsage)> {
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
    fn open(&mut self, period: Period) {
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
    fn adjustments(&self, view: &PricingView) -> Vec<AdjustmentLine> {
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
    fn apply_late(&mut self, event: &MeteredEvent) -> CustomerReply {
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
    fn budgets(&self, view: &PricingView) -> Result<Vec<Crossing>, String> {
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

    fn raise(&mut self, mark: &AlertMark) -> CustomerReply {
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

    /// Whether `period` is closed for this customer.
    pub fn is_closed(&self, period: Period) -> bool {
        self.closed_through.is_some_and(|c| c >= period)
    }

    fn close(&mut self, close: &PeriodClose) -> CustomerReply {
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
    fn priced<'a>(
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

    /// Replaces the customer's terms, keeping each account's usage with its account;
    /// returns the accounts the customer no longer lists.
    fn upsert(&mut self, customer: &Customer) -> Vec<AccountId> {
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
    fn leaving(&self, account: &AccountId, period: Period) -> Result<Option<Box<AccountUsage>>, String> {
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

    fn release(&mut self, account: &AccountId, period: Period) -> CustomerReply {
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

    fn adopt(&mut self, account: &AccountId, usage: Option<&AccountUsage>, period: Period) -> CustomerReply {
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
    fn apply_usage(&mut self, event: &MeteredEvent, likely: std::ops::Range<usize>) -> CustomerReply {
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
    fn departed_usage(&mut self, account: &AccountId) -> &mut AccountUsage {
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

/// The positions a prefetch note says an account likely is at (see
/// [`CustomerEntity::prefetch`]; empty without a note).
fn likely_positions(note: u64) -> std::ops::Range<usize> {
    (note & 0xffff) as usize..(note >> 16 & 0xffff) as usize
}

/// A prefetch note's flag: the account's usage block was asked for.
const USAGE_ASKED: u64 = 1 << 33;
/// A prefetch note's flag: the line of the event's id in the block was asked for.
const IDS_ASKED: u64 = 1 << 34;

/// The note of [`CustomerEntity::prefetch`] that says an account likely is at `likely`
/// (never 0: the flag bit says a guess was made; positions fit 16 bits).
fn note_of(likely: std::ops::Range<usize>) -> u64 {
    1 << 32 | (likely.end as u64) << 16 | likely.start as u64
}

impl Entity for CustomerEntity {
    type Key = CustomerKey;
    type Command = CustomerCommand;
    type Reply = CustomerReply;
    type Query = CustomerQuery;
    type Answer = CustomerAnswer;
    type Snapshot = CustomerEntity;

    const PREFETCH_ROUNDS: usize = 5;

    /// For a usage event, the chain of reads applying it makes, one link a round: the
    /// customer's record, then the account's id and usage slot, then its usage block
    /// (header and aggregates), then the place of the event's id among the ids seen (for
    /// a customer with an index table, one round later: its slot comes first). `note`
    /// keeps the likely positions once asked for (`1 << 32 | end << 16 | start`; 0: not
    /// yet) and which of the last two links were asked for ([`USAGE_ASKED`],
    /// [`IDS_ASKED`]).
    fn prefetch(&self, command: &CustomerCommand, round: usize, note: &mut u64) {
        let (CustomerCommand::Usage(event), Some(customer)) = (command, self.customer.as_deref()) else {
            return;
        };
        let usage_at = |i: usize| crate::compact::prefetch(self.usage.as_ptr().wrapping_add(i));
        if round == 0 {
            customer.prefetch_terms();
            usage_at(0);
            return;
        }
        if *note == 0 {
            if let Some(likely) = customer.prefetch_position(&event.account, round - 1) {
                // The likely accounts' ids are on their way: their usage slots too.
                usage_at(likely.start);
                usage_at(likely.end.saturating_sub(1));
                *note = note_of(likely);
            }
            return;
        }
        if *note & IDS_ASKED != 0 {
            return;
        }
        let likely = likely_positions(*note);
        // Only where the guess says: a wrong guess is not worth a search here.
        if let Some(usage) = customer
            .position_among(&event.account, likely)
            .and_then(|i| self.usage.get(i))
        {
            if *note & USAGE_ASKED == 0 {
                usage.prefetch();
                *note |= USAGE_ASKED;
            } else {
                usage.prefetch_ids(event.id);
                *note |= IDS_ASKED;
            }
        }
    }

    fn shard(key: &CustomerKey) -> u64 {
        xxhash_rust::xxh3::xxh3_64(key.as_bytes())
    }

    fn create(_: &CustomerKey) -> Self {
        CustomerEntity::default()
    }

    fn apply(&mut self, command: &CustomerCommand) -> CustomerReply {
        match command {
            CustomerCommand::Upsert(customer) => CustomerReply::Upserted {
                left: self.upsert(customer),
            },
            CustomerCommand::AddCredit(credit) => match self.customer.as_deref_mut() {
                None => CustomerReply::NoSuchCustomer,
                Some(c) if c.terms().credits.iter().any(|x| x.id == credit.id) => {
                    CustomerReply::AlreadyGranted
                }
                Some(c) => {
                    let mut credit = credit.clone();
                    // Grant order: later than every credit the customer has.
                    credit.granted = c.terms().credits.iter().map(|x| x.granted + 1).max().unwrap_or(0);
                    c.terms_mut().credits.push(credit);
                    CustomerReply::Granted
                }
            },
            CustomerCommand::AddDiscount(discount) => match self.customer.as_deref_mut() {
                None => CustomerReply::NoSuchCustomer,
                Some(c) if c.terms().discounts.iter().any(|x| x.id == discount.id) => {
                    CustomerReply::AlreadyGranted
                }
                Some(c) => {
                    c.terms_mut().discounts.push(discount.clone());
                    CustomerReply::Granted
                }
            },
            CustomerCommand::Release { account, period } => self.release(account, *period),
            CustomerCommand::Adopt {
                account,
                usage,
                period,
            } => self.adopt(account, usage.as_deref(), *period),
            CustomerCommand::Close(close) => self.close(close),
            CustomerCommand::Late(event) => self.apply_late(event),
            CustomerCommand::RaiseAlert(mark) => self.raise(mark),
            CustomerCommand::Usage(event) => self.apply_usage(event, 0..0),
        }
    }

    fn apply_noted(&mut self, command: &CustomerCommand, note: u64) -> CustomerReply {
        match command {
            CustomerCommand::Usage(event) => self.apply_usage(event, likely_positions(note)),
            _ => self.apply(command),
        }
    }

    fn query(&self, query: &CustomerQuery) -> CustomerAnswer {
        match query {
            CustomerQuery::Bill(view) => CustomerAnswer::Bill(self.bill(view).map(Box::new)),
            CustomerQuery::PeriodBill(view) => CustomerAnswer::Bill(self.bill_of_period(view).map(Box::new)),
            CustomerQuery::Budgets(view) => CustomerAnswer::Budgets(self.budgets(view).map(|c| {
                let raised = rare(&self.rare)
                    .alerts
                    .iter()
                    .filter(|a| a.period == view.period)
                    .cloned()
                    .collect();
                (c, raised)
            })),
            CustomerQuery::Terms => CustomerAnswer::Terms(self.customer.clone()),
            CustomerQuery::Leaving { account, period } => {
                CustomerAnswer::Leaving(self.leaving(account, *period))
            }
        }
    }

    fn snapshot(&self) -> CustomerEntity {
        self.clone()
    }

    fn restore(snapshot: &CustomerEntity) -> Self {
        snapshot.clone()
    }

    fn restore_owned(snapshot: CustomerEntity) -> Self {
        snapshot
    }
}

#[cfg(test)]
mod memory {
    #[test]
    fn a_customer_record_stays_within_its_memory_budget() {
        // One per customer, in a hash table with up to 2× slack: the rarely used lists
        // are one pointer for all three (BENCHMARKS.md, the 21M-account run, counts on it).
        let size = std::mem::size_of::<super::CustomerEntity>();
        assert!(size <= 64, "{size}");
    }

    #[test]
    fn an_entity_is_written_as_the_struct_it_was_and_its_rare_lists_come_and_go() {
        use super::*;
        // The struct before the rare lists moved behind a pointer, field for field.
        #[derive(Serialize, Deserialize, PartialEq, Debug)]
        struct Before {
            customer: Option<Box<Customer>>,
            period: Option<Period>,
            usage: ThinVec<AccountUsage>,
            departed: ThinVec<(AccountId, AccountUsage)>,
            closing: Option<Box<ClosingUsage>>,
            closed_through: Option<Period>,
            recent: Option<Box<RecentPeriod>>,
            late: ThinVec<ClosingUsage>,
            alerts: ThinVec<AlertMark>,
            last_usage: Option<NaiveDate>,
        }
        let period = Period::new(2026, 11).unwrap();
        let mark = AlertMark {
            period,
            account: None,
            threshold: 80,
            budget: rust_decimal::Decimal::ONE_HUNDRED,
            spent: rust_decimal::Decimal::from(81),
            at: "2026-11-20T10:00:00Z".parse().unwrap(),
        };
        let before = Before {
            customer: None,
            period: Some(period),
            usage: ThinVec::new(),
            departed: ThinVec::new(),
            closing: None,
            closed_through: None,
            recent: None,
            late: ThinVec::new(),
            alerts: thin_vec::thin_vec![mark.clone()],
            last_usage: NaiveDate::from_ymd_opt(2026, 11, 20),
        };
        let mut entity = CustomerEntity {
            period: Some(period),
            last_usage: NaiveDate::from_ymd_opt(2026, 11, 20),
            ..CustomerEntity::default()
        };
        assert!(entity.rare.is_none());
        rare_mut(&mut entity.rare).alerts.push(mark);
        for (name, bytes) in [
            ("MessagePack", rmp_serde::to_vec(&entity).unwrap()),
            ("JSON", serde_json::to_vec(&entity).unwrap()),
        ] {
            let same = if name == "JSON" {
                serde_json::to_vec(&before).unwrap()
            } else {
                rmp_serde::to_vec(&before).unwrap()
            };
            assert_eq!(bytes, same, "{name}");
        }
        let read: CustomerEntity = rmp_serde::from_slice(&rmp_serde::to_vec(&before).unwrap()).unwrap();
        assert_eq!(read, entity);
        // Once its lists are empty again, the pointer goes; equal either way.
        let mut emptied = entity.clone();
        rare_mut(&mut emptied.rare).alerts.clear();
        let held = emptied.clone();
        tidy(&mut emptied.rare);
        assert!(emptied.rare.is_none() && held.rare.is_some());
        assert_eq!(emptied, held);
        let read: CustomerEntity = rmp_serde::from_slice(&rmp_serde::to_vec(&held).unwrap()).unwrap();
        assert!(read.rare.is_none());
    }
}

#[cfg(test)]
mod notes {
    use super::*;
    use crate::domain::meter::{Fold, Reading};
    use crate::domain::{Currency, CustomerSpec};
    use rust_decimal::Decimal;
    use tallyman_actors::Entity;

    fn id(account: u64) -> AccountId {
        format!("{account:012}").into()
    }

    /// A customer of `accounts`, the first its payer.
    fn customer(accounts: &[u64]) -> Customer {
        let ids: Vec<String> = accounts.iter().map(|&a| id(a).to_string()).collect();
        let spec = CustomerSpec::new("acme", ids[0].clone(), ids, "standard");
        Customer::from_spec(spec, Currency::from_code("USD").unwrap()).unwrap()
    }

    /// An event of 1 unit on `account`, with event id fingerprint `id`.
    fn event(account: u64, id: u128) -> MeteredEvent {
        MeteredEvent {
            day: "2026-11-04".parse().unwrap(),
            account: self::id(account),
            meter: MeterId(0),
            reading: Reading {
                fold: Fold::Sum,
                quantity: Decimal::ONE,
                time: "2026-11-04T10:00:00Z".parse().unwrap(),
                version: 0,
                tiebreak: id as u64,
                dimension: None,
            },
            id,
            limit: 1_000,
        }
    }

    /// A customer of `n` accounts (numbered 1 to `n`) and events of 1 unit: one on
    /// every third account from account 2, the first one again, and one of an account
    /// the customer does not have (it left).
    fn events(n: u64) -> (Customer, Vec<MeteredEvent>) {
        let accounts: Vec<u64> = (1..=n).collect();
        let mut events: Vec<MeteredEvent> = (2..=n).step_by(3).map(|a| event(a, u128::from(a))).collect();
        events.push(event(2, 2));
        events.push(event(n + 1, 1 << 90));
        (customer(&accounts), events)
    }

    #[test]
    fn notes_gone_stale_within_a_group_never_misdirect_usage() {
        // A segment runs the prefetch rounds over a group of commands, then applies
        // them: a note taken before an earlier command of the group moved accounts
        // (an account adopted before the target shifts its position, the target
        // released, new terms, the target adopted again) still lands every event on
        // its account, as applying without notes does. 3 accounts: no index; 10: tags;
        // 40: a table.
        let period = Period::containing("2026-11-04".parse().unwrap());
        for n in [3u64, 10, 40] {
            let accounts: Vec<u64> = (1..=n).map(|i| i * 10).collect();
            let mut entity = CustomerEntity::default();
            entity.apply(&CustomerCommand::Upsert(Box::new(customer(&accounts))));
            for &a in &accounts {
                // Earlier usage: the index is built, so the rounds have guesses.
                entity.apply(&CustomerCommand::Usage(event(a, u128::from(a) << 64 | 1)));
            }
            let target = accounts[accounts.len() / 2];
            let usage = |a: u64, id: u128| CustomerCommand::Usage(event(a, id << 64 | 3));
            let group = [
                CustomerCommand::Adopt {
                    account: id(1),
                    usage: None,
                    period,
                },
                usage(target, 7),
                CustomerCommand::Release {
                    account: id(target),
                    period,
                },
                usage(target, 8),
                CustomerCommand::Upsert(Box::new(customer(&[
                    target + 1,
                    target + 2,
                    target + 3,
                    target + 5,
                ]))),
                usage(target + 2, 9),
                usage(target, 10),
                CustomerCommand::Adopt {
                    account: id(target),
                    usage: None,
                    period,
                },
                usage(target, 11),
            ];
            let mut plain = entity.clone();
            let expected: Vec<CustomerReply> = group.iter().map(|c| plain.apply(c)).collect();
            let mut notes = [0u64; 9];
            for round in 0..CustomerEntity::PREFETCH_ROUNDS {
                for (command, note) in group.iter().zip(&mut notes) {
                    entity.prefetch(command, round, note);
                }
            }
            // The target's note points where it was before the group.
            let before = entity.customer().unwrap().position(&id(target)).unwrap();
            assert!(
                likely_positions(notes[1]).contains(&before),
                "{n}: {:x}",
                notes[1]
            );
            let replies: Vec<CustomerReply> = group
                .iter()
                .zip(notes)
                .map(|(c, note)| entity.apply_noted(c, note))
                .collect();
            assert_eq!(replies, expected, "{n} accounts");
            assert_eq!(entity, plain, "{n} accounts");
        }
    }

    #[test]
    fn applying_with_any_note_gives_what_applying_without_one_gives() {
        // 2 accounts: no index; 10: an index by tag; 100: an index table. The notes
        // are right, wrong, out of range, or none: each is only a hint.
        for n in [2u64, 10, 100] {
            let (customer, events) = events(n);
            let upsert = CustomerCommand::Upsert(Box::new(customer));
            let mut plain = CustomerEntity::default();
            plain.apply(&upsert);
            let expected: Vec<CustomerReply> = events
                .iter()
                .map(|e| plain.apply(&CustomerCommand::Usage(e.clone())))
                .collect();
            assert!(expected.contains(&CustomerReply::Duplicate));
            let notes = |i: u64| {
                [
                    0,
                    1 << 32 | (i + 1) << 16 | i,
                    1 << 32 | 3 << 16,
                    1 << 32 | 0xffff << 16 | 0xfff0,
                ]
            };
            for which in 0..4 {
                let mut noted = CustomerEntity::default();
                noted.apply_noted(&upsert, 0);
                for (i, (e, want)) in events.iter().zip(&expected).enumerate() {
                    let note = notes(i as u64 % n)[which];
                    assert_eq!(noted.apply_noted(&CustomerCommand::Usage(e.clone()), note), *want);
                }
                assert_eq!(noted, plain, "{n} accounts, notes of kind {which}");
            }
        }
    }
}
