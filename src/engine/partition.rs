//! A partition as loaded: its state and the accessors, clock, period state and
//! submission to the runtime that every other part of the engine uses.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use dashmap::DashMap;
use tallyman_actors::journal::Journal;
use tallyman_actors::journal::Lsn;
use tallyman_actors::Batch;
use tallyman_actors::{Partition, SubmitError};

use crate::domain::{AccountId, BillingProfile, Catalog, Customer, Period, Rounding};

use crate::engine::customers;
use crate::engine::{
    AlertBook, BillRun, Counters, CustomerAnswer, CustomerCommand, CustomerEntity, CustomerKey,
    CustomerQuery, CustomerReply, EngineError, InvoiceStore, PartitionSummary, PeriodState,
};

/// Days since 1970-01-01.
pub(in crate::engine) fn days(date: chrono::NaiveDate) -> i64 {
    i64::from(chrono::Datelike::num_days_from_ce(&date)) - 719_163
}

/// The hash of the engine's maps: fast, and seeded per process.
pub(in crate::engine) type Hashing = foldhash::fast::RandomState;

/// A partition as loaded.
pub struct PartitionEngine {
    pub id: String,
    pub(in crate::engine) rounding: Rounding,
    /// The open period and the one being closed.
    pub(in crate::engine) periods: RwLock<PeriodState>,
    /// Where `periods` is kept, when the journal is durable.
    /// Its small documents: `periods.json`, `catalog.json`, `time_zone`.
    pub(in crate::engine) documents: crate::store::Documents,
    pub(in crate::engine) invoices: InvoiceStore,
    /// Bill runs started (or looked up) in this process, by period.
    pub(in crate::engine) runs: std::sync::Mutex<BTreeMap<Period, Arc<BillRun>>>,
    /// Held while a bill run is being started.
    pub(in crate::engine) closing: tokio::sync::Mutex<()>,
    /// Test-only: abort the process after writing this many batches of invoices.
    pub(in crate::engine) fault_abort_after_invoice_batches: Option<u32>,
    /// Days after a closed period's end its late usage is accepted.
    pub(in crate::engine) late_grace_days: u32,
    /// Periods are calendar months in this time zone.
    pub(in crate::engine) time_zone: chrono_tz::Tz,
    /// The most distinct events one account may apply in a period.
    pub(in crate::engine) max_events_per_account: u32,
    pub(in crate::engine) alerts: Arc<AlertBook>,
    /// Customers with a budget (their own or an account's).
    pub(in crate::engine) budgeted: DashMap<CustomerKey, (), Hashing>,
    /// Budgeted customers with usage since their last check.
    pub(in crate::engine) to_check: std::sync::Mutex<std::collections::HashSet<CustomerKey>>,
    /// Test-only: the time it is (the clock otherwise).
    pub(in crate::engine) now: Option<chrono::DateTime<chrono::Utc>>,
    pub(in crate::engine) catalog_name: String,
    pub(in crate::engine) catalog: RwLock<Arc<Catalog>>,
    /// The latest event date accepted so far (days since 1970-01-01), so that a new
    /// catalog version never takes effect under usage already priced by an older one.
    pub(in crate::engine) latest_usage_day: std::sync::atomic::AtomicI64,
    pub(in crate::engine) accepted: std::sync::atomic::AtomicU64,
    pub(in crate::engine) duplicates: std::sync::atomic::AtomicU64,
    pub(in crate::engine) rejected: std::sync::atomic::AtomicU64,
    pub(in crate::engine) profiles: Arc<BTreeMap<String, BillingProfile>>,
    /// Which customer each account belongs to: the customer's number in `customers`.
    pub(in crate::engine) directory: DashMap<AccountId, u32, Hashing>,
    /// Every customer, numbered (their accounts are in their entities and in `directory`).
    pub(in crate::engine) customers: customers::Customers,
    /// Held for reading from an ingest's directory lookups to its journal append, and for
    /// writing while accounts change hands, so no event is routed by a stale owner.
    pub(in crate::engine) routing: tokio::sync::RwLock<()>,
    pub(in crate::engine) runtime: Arc<Partition<CustomerEntity>>,
    pub(in crate::engine) journal: Arc<dyn Journal<Batch<CustomerEntity>>>,
    /// Held while snapshots are taken: one round at a time.
    pub(in crate::engine) snapshotting: tokio::sync::Mutex<()>,
    /// `accepted` when the last snapshot round started.
    pub(in crate::engine) events_at_snapshot: std::sync::atomic::AtomicU64,
}

/// The document of a partition's period state: the open period and the one closing.
pub(in crate::engine) const PERIODS: &str = "periods.json";
/// The document of the catalog versions published through the API.
pub(in crate::engine) const CATALOG: &str = "catalog.json";

impl PartitionEngine {
    pub fn summary(&self) -> PartitionSummary {
        let catalog = self.catalog();
        let described = PartitionSummary::described(
            &self.id,
            self.rounding,
            self.time_zone,
            &self.catalog_name,
            &catalog,
        );
        PartitionSummary {
            segments: self.runtime.segment_count(),
            customers: self.customers.len(),
            accounts: self.directory.len(),
            ..described
        }
    }

    /// The open period: usage is accepted for it only.
    pub fn period(&self) -> Period {
        self.period_state().open
    }

    pub fn period_state(&self) -> PeriodState {
        *self.periods.read().unwrap_or_else(|p| p.into_inner())
    }

    pub(in crate::engine) fn save_period_state(&self, state: PeriodState) -> Result<(), EngineError> {
        Ok(self.documents.write_json(PERIODS, &state)?)
    }

    /// The first day late usage of `period` is refused.
    pub fn late_until(&self, period: Period) -> chrono::NaiveDate {
        period.end() + chrono::Days::new(u64::from(self.late_grace_days))
    }

    pub(in crate::engine) fn now(&self) -> chrono::DateTime<chrono::Utc> {
        self.now.unwrap_or_else(chrono::Utc::now)
    }

    /// The date of `time` in the partition's time zone: what decides its period.
    pub fn local_date(&self, time: chrono::DateTime<chrono::Utc>) -> chrono::NaiveDate {
        if self.time_zone == chrono_tz::UTC {
            // The default, and the same answer without looking up the zone's offsets.
            return time.date_naive();
        }
        time.with_timezone(&self.time_zone).date_naive()
    }

    /// The time zone of the partition's periods.
    pub fn time_zone(&self) -> chrono_tz::Tz {
        self.time_zone
    }

    /// The alerts of this partition.
    pub fn alerts(&self) -> &Arc<AlertBook> {
        &self.alerts
    }

    /// The invoices of this partition.
    pub fn invoices(&self) -> &InvoiceStore {
        &self.invoices
    }

    pub fn rounding(&self) -> Rounding {
        self.rounding
    }

    pub fn catalog(&self) -> Arc<Catalog> {
        self.catalog.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The actor runtime of this partition (for admin and tests).
    pub fn runtime(&self) -> &Arc<Partition<CustomerEntity>> {
        &self.runtime
    }

    /// Ingest counters since start.
    pub fn counters(&self) -> Counters {
        use std::sync::atomic::Ordering::Relaxed;
        Counters {
            accepted: self.accepted.load(Relaxed),
            duplicates: self.duplicates.load(Relaxed),
            rejected: self.rejected.load(Relaxed),
        }
    }

    /// Submits one command and waits for its reply (see [`Self::submit_batch`]).
    pub(in crate::engine) async fn submit_one(
        &self,
        key: CustomerKey,
        command: CustomerCommand,
    ) -> Result<CustomerReply, EngineError> {
        match self.submit_batch(vec![(key, command)]).await?.pop() {
            Some(Ok(reply)) => Ok(reply),
            other => Err(EngineError::Unavailable(format!("{other:?}"))),
        }
    }

    /// Journals the undoing of half a move, trying again for up to a minute while it is
    /// refused before being journaled (a busy or restarting segment).
    pub(in crate::engine) async fn undo(&self, key: CustomerKey, command: CustomerCommand, account: &str) {
        use tallyman_actors::Failure;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        loop {
            let outcome = self.submit_batch(vec![(key.clone(), command.clone())]).await;
            match outcome.as_ref().map(|o| o.first()) {
                Ok(Some(Ok(_) | Err(Failure::Replayed))) | Err(SubmitError::Interrupted) => return,
                _ if std::time::Instant::now() < deadline => {
                    actix_rt::time::sleep(std::time::Duration::from_millis(100)).await;
                }
                _ => {
                    tracing::error!(partition = %self.id, account, customer = %key,
                        "an account move failed halfway and could not be undone: {outcome:?}; \
                         move the account again to put it right");
                    return;
                }
            }
        }
    }

    /// Submits commands as one journal record and waits for their replies. While routing
    /// is held for writing, ingest is paused, so a busy segment drains: a refusal for
    /// backpressure (nothing journaled) is retried for up to five seconds.
    pub(in crate::engine) async fn submit_batch(
        &self,
        batch: Vec<(CustomerKey, CustomerCommand)>,
    ) -> Result<Vec<Result<CustomerReply, tallyman_actors::Failure>>, SubmitError> {
        let mut wait = std::time::Duration::from_millis(1);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        loop {
            match self.runtime.submit(batch.clone()) {
                Ok(pending) => return pending.await,
                Err(SubmitError::Busy { .. }) if std::time::Instant::now() < deadline => {
                    actix_rt::time::sleep(wait).await;
                    wait = (wait * 2).min(std::time::Duration::from_millis(100));
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Waits (at most `within`) until every record journaled so far has been handed to
    /// its segment.
    pub(crate) async fn wait_until_delivered(&self, within: std::time::Duration) -> Result<(), String> {
        let journaled = self.journal.last_lsn();
        let deadline = std::time::Instant::now() + within;
        while self.journal.durable_lsn() < journaled {
            if std::time::Instant::now() > deadline {
                return Err(format!(
                    "the journal did not catch up within {} s; try again",
                    within.as_secs()
                ));
            }
            actix_rt::time::sleep(std::time::Duration::from_millis(1)).await;
        }
        Ok(())
    }

    /// Snapshots every segment and lets the journal forget what they cover. One at a
    /// time per partition.
    pub async fn snapshot(&self) -> Result<Lsn, String> {
        let _one = self.snapshotting.lock().await;
        let started = std::time::Instant::now();
        let events = self.accepted.load(std::sync::atomic::Ordering::Relaxed);
        let lsn = self.runtime.snapshot_all().await?;
        self.events_at_snapshot
            .store(events, std::sync::atomic::Ordering::Relaxed);
        tracing::info!(
            partition = %self.id, journal_kept_after = lsn,
            elapsed_ms = started.elapsed().as_millis() as u64, "snapshot taken"
        );
        Ok(lsn)
    }

    pub(in crate::engine) fn customer_key(&self, customer: &str) -> Result<CustomerKey, EngineError> {
        self.customers
            .existing(customer)
            .ok_or_else(|| EngineError::UnknownCustomer(customer.to_owned()))
    }

    /// The customer's current terms.
    pub async fn customer(&self, customer: &str) -> Result<Customer, EngineError> {
        let key = self.customer_key(customer)?;
        match self.runtime.ask(key, CustomerQuery::Terms)?.await? {
            Some(CustomerAnswer::Terms(Some(c))) => Ok(*c),
            _ => Err(EngineError::UnknownCustomer(customer.to_owned())),
        }
    }
}
