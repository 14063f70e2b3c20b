//! The billing engine: joins the domain to the actor runtime.
//!
//! It owns the running partitions — their catalogs, customers, directories and actor
//! runtimes — and is the only layer that sees both `domain` and `tallyman-actors`. It
//! checks and resolves usage before anything is journaled (a bad event rejects its whole
//! batch and changes nothing), routes each customer's events to the customer's account
//! actor, and prices running bills with the domain's functions. The HTTP API talks to it
//! and never to the domain's state directly.

#![forbid(unsafe_code)]

pub mod account;
pub mod alerts;
pub mod bill_run;
pub mod codec;
pub mod customers;
pub mod invoices;
pub mod stats;

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use actix::prelude::*;
use dashmap::mapref::entry::Entry;
use dashmap::DashMap;
use serde::Serialize;
use tallyman_actors::file_journal::{FileJournal, FileJournalConfig, FsyncPolicy};
use tallyman_actors::journal::Lsn;
use tallyman_actors::journal::{Journal, MemoryJournal};
use tallyman_actors::partition::PartitionConfig as RuntimePartitionConfig;
/// A segment's arbiter, state and counters, as the runtime reports them.
pub use tallyman_actors::partition::SegmentInfo;
use tallyman_actors::router::{Loads, RebalanceConfig, RebalanceNow, Register, Router};
use tallyman_actors::Batch;
use tallyman_actors::{
    ArbiterPool, FaultHook, FileSnapshots, FileSnapshotsConfig, MemorySnapshots, Partition, SnapshotStore,
    SubmitError, SupervisionConfig,
};

use crate::config::{PartitionConfig, PartitionSpec, RuntimeSettings, Validated};
use crate::domain::customer::{Credit, Discount};
use crate::domain::invoice::AccountBill;
use crate::domain::usage::event_fingerprint;
use crate::domain::FieldError;
use crate::domain::{
    AccountId, Bill, BillingProfile, Catalog, CatalogVersionSpec, Customer, Period, Rounding, UsageEvent,
};

/// The catalog versions published through the API and kept in `file` (none if absent).
fn published_versions(file: &std::path::Path) -> Result<Vec<CatalogVersionSpec>, EngineError> {
    match std::fs::read(file) {
        Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
            EngineError::Unavailable(format!(
                "{} is not a list of catalog versions: {e}",
                file.display()
            ))
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(EngineError::Unavailable(format!(
            "cannot read {}: {e}",
            file.display()
        ))),
    }
}

/// Writes `bytes` to `path` so that a crash leaves the old file or the new one, whole:
/// a temporary file, synced, renamed over, and the folder synced.
fn write_atomically(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let dir = path.parent().unwrap_or(std::path::Path::new("."));
    std::fs::create_dir_all(dir)?;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    std::fs::File::open(dir)?.sync_all()
}

/// The period state kept in `file`, if any.
fn load_period_state(file: &std::path::Path) -> Result<Option<PeriodState>, EngineError> {
    match std::fs::read(file) {
        Ok(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(|e| {
            EngineError::Unavailable(format!(
                "{} is damaged ({e}); restore it from a backup",
                file.display()
            ))
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(EngineError::Unavailable(format!(
            "cannot read {}: {e}",
            file.display()
        ))),
    }
}

/// Days since 1970-01-01.
fn days(date: chrono::NaiveDate) -> i64 {
    i64::from(chrono::Datelike::num_days_from_ce(&date)) - 719_163
}

use account::{AlertMark, MeteredEvent, PricingView};
pub use account::{
    CustomerAnswer, CustomerCommand, CustomerEntity, CustomerKey, CustomerQuery, CustomerReply,
};
use alerts::AlertBook;
use bill_run::{BillRun, PeriodState};
use invoices::InvoiceStore;

/// The hash of the engine's maps: fast, and seeded per process.
type Hashing = foldhash::fast::RandomState;

/// One problem with one event of a batch.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, schemars::JsonSchema)]
pub struct EventError {
    pub index: usize,
    pub field: String,
    pub message: String,
}

/// Why the engine refused or could not finish a request.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum EngineError {
    #[error("unknown partition {0:?}")]
    UnknownPartition(String),
    #[error("unknown customer {0:?}")]
    UnknownCustomer(String),
    #[error("unknown account {0:?}")]
    UnknownAccount(String),
    /// The batch has invalid events; nothing of it was applied.
    #[error("{} invalid event(s); nothing was applied", .0.len())]
    InvalidEvents(Vec<EventError>),
    /// A request field is invalid; nothing was changed.
    #[error("{0}")]
    Invalid(FieldError),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    UnknownDeadLetter(String),
    #[error("{0}")]
    UnknownCatalogVersion(String),
    /// Well-formed but impossible to apply; resending will not help.
    #[error("{0}")]
    Unprocessable(String),
    /// The batch was journaled and its other events applied, but these were refused
    /// when applied (past the account's event limit, or an aggregate's overflow);
    /// resending them will not help.
    #[error(
        "{} event(s) applied, {} duplicate(s); {} event(s) were not applied",
        summary.accepted,
        summary.duplicates,
        errors.len()
    )]
    NotApplied {
        summary: IngestSummary,
        errors: Vec<EventError>,
    },
    /// Backpressure: retry later. Nothing was journaled.
    #[error("{0}")]
    Busy(String),
    #[error("{0}")]
    Unavailable(String),
    /// Some commands were journaled but not applied (dead-lettered).
    #[error("{0}")]
    Failed(String),
}

impl From<SubmitError> for EngineError {
    fn from(e: SubmitError) -> Self {
        match e {
            SubmitError::Busy { .. } => EngineError::Busy(e.to_string()),
            _ => EngineError::Unavailable(e.to_string()),
        }
    }
}

/// A segment as the admin API shows it.
#[derive(Clone, Debug, PartialEq, Serialize, schemars::JsonSchema)]
pub struct SegmentView {
    pub partition: String,
    pub segment: u32,
    /// The arbiter (thread) it runs on; absent when it is failed.
    pub arbiter: Option<usize>,
    /// `running`, `moving` (its traffic is buffered) or `failed`.
    pub state: &'static str,
    /// Commands and queries handled since start.
    pub handled: u64,
    pub busy_ms: u64,
    /// Messages admitted and waiting.
    pub mailbox: usize,
    /// From the router's last sample, when there is one.
    pub messages_per_s: Option<f64>,
    pub busy_fraction: Option<f64>,
}

/// A dead letter as the admin API shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, schemars::JsonSchema)]
pub struct DeadLetterView {
    pub partition: String,
    pub id: u64,
    pub segment: u32,
    pub lsn: u64,
    pub customer: String,
    pub command: String,
    pub reason: String,
    pub attempts: u32,
}

/// Ingest counters of a partition since start.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Counters {
    pub accepted: u64,
    pub duplicates: u64,
    /// Events in batches refused as invalid.
    pub rejected: u64,
}

/// What an ingest did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, schemars::JsonSchema)]
pub struct IngestSummary {
    pub accepted: u64,
    pub duplicates: u64,
}

/// An account's running bill: its share of its customer's bill.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, schemars::JsonSchema)]
pub struct AccountStatement {
    pub customer: String,
    pub period: Period,
    pub currency: crate::domain::Currency,
    #[serde(flatten)]
    pub bill: AccountBill,
}

/// A partition as loaded.
pub struct PartitionEngine {
    pub id: String,
    rounding: Rounding,
    /// The open period and the one being closed.
    periods: RwLock<PeriodState>,
    /// Where `periods` is kept, when the journal is durable.
    periods_file: Option<std::path::PathBuf>,
    invoices: InvoiceStore,
    /// Bill runs started (or looked up) in this process, by period.
    runs: std::sync::Mutex<BTreeMap<Period, Arc<BillRun>>>,
    /// Held while a bill run is being started.
    closing: tokio::sync::Mutex<()>,
    /// Test-only: abort the process after writing this many batches of invoices.
    fault_abort_after_invoice_batches: Option<u32>,
    /// Days after a closed period's end its late usage is accepted.
    late_grace_days: u32,
    /// Periods are calendar months in this time zone.
    time_zone: chrono_tz::Tz,
    /// The most distinct events one account may apply in a period.
    max_events_per_account: u32,
    alerts: Arc<AlertBook>,
    /// Customers with a budget (their own or an account's).
    budgeted: DashMap<CustomerKey, (), Hashing>,
    /// Budgeted customers with usage since their last check.
    to_check: std::sync::Mutex<std::collections::HashSet<CustomerKey>>,
    /// Test-only: the time it is (the clock otherwise).
    now: Option<chrono::DateTime<chrono::Utc>>,
    catalog_name: String,
    catalog: RwLock<Arc<Catalog>>,
    /// Where versions published through the API are kept, when the journal is durable.
    catalog_file: Option<std::path::PathBuf>,
    /// The latest event date accepted so far (days since 1970-01-01), so that a new
    /// catalog version never takes effect under usage already priced by an older one.
    latest_usage_day: std::sync::atomic::AtomicI64,
    accepted: std::sync::atomic::AtomicU64,
    duplicates: std::sync::atomic::AtomicU64,
    rejected: std::sync::atomic::AtomicU64,
    profiles: Arc<BTreeMap<String, BillingProfile>>,
    /// Which customer each account belongs to: the customer's number in `customers`.
    directory: DashMap<AccountId, u32, Hashing>,
    /// Every customer, numbered (their accounts are in their entities and in `directory`).
    customers: customers::Customers,
    /// Held for reading from an ingest's directory lookups to its journal append, and for
    /// writing while accounts change hands, so no event is routed by a stale owner.
    routing: tokio::sync::RwLock<()>,
    runtime: Arc<Partition<CustomerEntity>>,
    journal: Arc<dyn Journal<Batch<CustomerEntity>>>,
    /// Held while snapshots are taken: one round at a time.
    snapshotting: tokio::sync::Mutex<()>,
    /// `accepted` when the last snapshot round started.
    events_at_snapshot: std::sync::atomic::AtomicU64,
}

/// Whether the in-memory journal keeps records for replay.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum JournalMode {
    /// Records are kept until every segment's snapshot has moved past them, so a panic
    /// or a segment crash is recovered by replay.
    #[default]
    Retained,
    /// Records are numbered and delivered but not kept: for measuring the runtime alone.
    /// A panicking command then crashes its segment and state is lost.
    Discarded,
    /// Durable: a file journal per partition in `<dir>/<partition>/journal`, with group
    /// commit; everything is recovered from it at start.
    File {
        dir: std::path::PathBuf,
        fsync: bool,
        /// Size past which a new journal file starts.
        file_bytes: u64,
    },
}

/// Test hooks and other knobs that are not configuration.
#[derive(Default, Clone)]
pub struct EngineOptions {
    pub journal: JournalMode,
    /// Test-only: abort the process after a bill run wrote this many batches of
    /// invoices, before their customers are closed (a crash in the middle of a run).
    pub fault_abort_after_invoice_batches: Option<u32>,
    /// Test-only: a fixed "now" for grace windows (the clock otherwise).
    pub now: Option<chrono::DateTime<chrono::Utc>>,
    /// Test-only: makes the command for a customer at an LSN panic on its first try.
    pub fault_hook: Option<FaultHook<CustomerKey>>,
}

/// What the engine serves.
pub struct Engine {
    profiles: Arc<BTreeMap<String, BillingProfile>>,
    partitions: RwLock<BTreeMap<String, Arc<PartitionEngine>>>,
    /// The partitions created through the API (kept in `partitions.json`); held while
    /// one is being created.
    created: tokio::sync::Mutex<Vec<PartitionSpec>>,
    ctx: Opening,
    pool: Arc<ArbiterPool>,
    router: Addr<Router>,
    /// Held while the engine lives: the memory-release timer stops when it is gone.
    _alive: Arc<()>,
}

/// A partition in a few numbers, for logs, `check-config` and `GET /v1/partitions`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PartitionSummary {
    pub id: String,
    pub currency: String,
    pub rounding: String,
    /// The IANA time zone of its calendar-month periods.
    pub time_zone: String,
    pub catalog: String,
    pub catalog_versions: usize,
    pub meters: Vec<String>,
    pub segments: u32,
    pub customers: usize,
    pub accounts: usize,
}

/// The summary of a partition's configuration, before anything runs.
pub fn summarize(config: &PartitionConfig, segments: u32) -> PartitionSummary {
    PartitionSummary {
        id: config.id.clone(),
        currency: config.rounding.currency.code().to_owned(),
        rounding: config.rounding.mode.name().to_owned(),
        time_zone: config.time_zone.name().to_owned(),
        catalog: config.catalog_name.clone(),
        catalog_versions: config.catalog.version_count(),
        meters: config.catalog.meters().map(|(_, m)| m.name.to_string()).collect(),
        segments,
        customers: config.customers.len(),
        accounts: config.customers.iter().map(|c| c.accounts.len()).sum(),
    }
}

fn runtime_config(name: &str, r: &RuntimeSettings) -> RuntimePartitionConfig {
    RuntimePartitionConfig {
        name: name.to_owned(),
        segments: r.segments,
        mailbox_capacity: r.mailbox_capacity,
        supervision: SupervisionConfig {
            max_retries: r.max_retries,
            max_restarts: r.max_restarts,
            restart_window: std::time::Duration::from_secs(r.restart_window_secs),
            dead_letter_capacity: r.dead_letter_capacity,
        },
    }
}

impl Engine {
    /// Starts the runtime and every partition, and loads the configured customers.
    /// Must run inside an actix system.
    pub async fn start(settings: &Validated, options: EngineOptions) -> Result<Engine, EngineError> {
        stats::register_all();
        let huge = settings.runtime.transparent_huge_pages;
        if let Err(e) = crate::compact::memory::use_transparent_huge_pages(huge) {
            tracing::warn!(enabled = huge, error = %e, "cannot choose whether to use transparent huge pages; the system's setting applies");
        }
        let pool = Arc::new(ArbiterPool::new(settings.runtime.arbiters));
        let r = &settings.runtime;
        let router = Router::new(
            pool.clone(),
            RebalanceConfig {
                interval: (r.rebalance_interval_secs > 0)
                    .then(|| std::time::Duration::from_secs(r.rebalance_interval_secs)),
                factor: r.rebalance_factor,
                max_moves: r.rebalance_max_moves,
                min_busy: r.rebalance_min_busy,
            },
        )
        .start();
        let ctx = Opening {
            runtime: settings.runtime.clone(),
            max_events_per_account: u32::try_from(settings.limits.max_events_per_account).unwrap_or(u32::MAX),
            alerts: settings.alerts.clone(),
            options,
            profiles: Arc::new(settings.profiles.clone()),
            pool: pool.clone(),
            router: router.clone(),
        };
        let mut configs: Vec<PartitionConfig> = settings.partitions.clone();
        let created = match &ctx.options.journal {
            JournalMode::File { dir, .. } => created_partitions(&dir.join("partitions.json"))?,
            _ => Vec::new(),
        };
        for spec in &created {
            if configs.iter().any(|c| c.id == spec.id) {
                return Err(EngineError::Unavailable(format!(
                    "partition {:?} is configured and was also created through the API; remove one of them",
                    spec.id
                )));
            }
            configs.push(spec.to_config().map_err(|e| {
                EngineError::Unavailable(format!("partitions.json: partition {:?}: {e}", spec.id))
            })?);
        }
        let mut partitions = BTreeMap::new();
        for p in &configs {
            let partition = open_partition(&ctx, p).await?;
            partitions.insert(p.id.clone(), partition);
        }
        for p in partitions.values() {
            start_partition_tasks(&ctx, p).await?;
        }
        let alive = Arc::new(());
        // Recovery and loading freed what replay and rebuilding took: give it back now,
        // then every `memory_release_interval_secs`.
        crate::compact::memory::release_free_memory();
        if r.memory_release_interval_secs > 0 {
            let every = std::time::Duration::from_secs(r.memory_release_interval_secs);
            actix_rt::spawn(memory_release_loop(Arc::downgrade(&alive), every));
        }
        Ok(Engine {
            _alive: alive,
            profiles: ctx.profiles.clone(),
            partitions: RwLock::new(partitions),
            created: tokio::sync::Mutex::new(created),
            ctx,
            pool,
            router,
        })
    }

    pub fn profiles(&self) -> impl Iterator<Item = &BillingProfile> {
        self.profiles.values()
    }

    pub fn partition(&self, id: &str) -> Result<Arc<PartitionEngine>, EngineError> {
        self.partitions
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(id)
            .cloned()
            .ok_or_else(|| EngineError::UnknownPartition(id.to_owned()))
    }

    /// Same as [`Engine::partition`].
    pub fn partition_handle(&self, id: &str) -> Result<Arc<PartitionEngine>, EngineError> {
        self.partition(id)
    }

    /// Every partition, by id.
    pub fn partitions(&self) -> Vec<Arc<PartitionEngine>> {
        self.partitions
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect()
    }

    pub fn partition_summaries(&self) -> Vec<PartitionSummary> {
        self.partitions().iter().map(|p| p.summary()).collect()
    }

    /// Creates a partition while the others run: its own catalog, currency and
    /// customers. It is kept in `partitions.json` and opened again at every start.
    pub async fn create_partition(&self, spec: PartitionSpec) -> Result<PartitionSummary, EngineError> {
        let config = spec.to_config().map_err(EngineError::Invalid)?;
        let mut created = self.created.lock().await;
        if self.partition(&spec.id).is_ok() {
            return Err(EngineError::Conflict(format!(
                "partition {:?} exists already",
                spec.id
            )));
        }
        if let JournalMode::File { dir, .. } = &self.ctx.options.journal {
            let mut all = created.clone();
            all.push(spec.clone());
            let file = dir.join("partitions.json");
            write_atomically(&file, &serde_json::to_vec_pretty(&all).expect("plain data"))
                .map_err(|e| EngineError::Unavailable(format!("cannot write {}: {e}", file.display())))?;
        }
        let partition = open_partition(&self.ctx, &config).await?;
        start_partition_tasks(&self.ctx, &partition).await?;
        created.push(spec);
        let summary = partition.summary();
        self.partitions
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(config.id.clone(), partition);
        tracing::info!(partition = %summary.id, currency = %summary.currency, "partition created");
        Ok(summary)
    }

    /// Every segment of every partition, with its arbiter and load counters.
    pub fn segments(&self) -> Vec<SegmentInfo> {
        self.partitions()
            .iter()
            .flat_map(|p| p.runtime.segments())
            .collect()
    }

    /// Every segment with its arbiter, state, counters and the load the router measured
    /// in its last sample.
    pub async fn segment_report(&self) -> Vec<SegmentView> {
        let (loads, _) = self.router.send(Loads).await.unwrap_or_default();
        let names: Vec<String> = self.partitions().iter().map(|p| p.id.clone()).collect();
        self.segments()
            .into_iter()
            .map(|s| {
                let p = names.iter().position(|n| *n == s.partition);
                let load = loads
                    .iter()
                    .find(|l| Some(l.partition) == p && l.segment == s.segment);
                SegmentView {
                    partition: s.partition,
                    segment: s.segment,
                    arbiter: s.arbiter,
                    state: s.state,
                    handled: s.handled,
                    busy_ms: s.busy_ns / 1_000_000,
                    mailbox: s.inflight,
                    messages_per_s: load.map(|l| l.messages_per_s),
                    busy_fraction: load.map(|l| l.busy),
                }
            })
            .collect()
    }

    /// Runs one rebalancing round now; returns the number of moves started.
    pub async fn rebalance_now(&self) -> usize {
        self.router.send(RebalanceNow).await.unwrap_or(0)
    }

    /// Segment moves and restarts so far, over all partitions.
    pub fn moves_and_restarts(&self) -> (u64, u64) {
        self.partitions().iter().fold((0, 0), |(m, r), p| {
            (m + p.runtime.moves(), r + p.runtime.restarts())
        })
    }

    /// Every dead letter of every partition, oldest first.
    pub fn dead_letters(&self) -> Vec<DeadLetterView> {
        let mut out = Vec::new();
        for p in self.partitions() {
            p.runtime.dead_letters().for_each(|l| {
                out.push(DeadLetterView {
                    partition: p.id.clone(),
                    id: l.id,
                    segment: l.segment,
                    lsn: l.lsn,
                    customer: l.key().to_string(),
                    command: format!("{:?}", l.command()),
                    reason: l.reason.clone(),
                    attempts: l.attempts,
                });
            });
        }
        out
    }

    /// Applies dead letter `id` of `partition` again (journaled as a new record).
    pub async fn replay_dead_letter(&self, partition: &str, id: u64) -> Result<String, EngineError> {
        let p = self.partition(partition)?;
        // Routing holds still, as for ingest: a replayed usage event cannot slip into an
        // account move between its read of the usage and its release.
        let _routing = p.routing.read().await;
        match p.runtime.replay_dead_letter(id).await {
            Ok(Ok(reply)) => Ok(format!("{reply:?}")),
            Ok(Err(failure)) => Err(EngineError::Failed(format!("{failure:?}"))),
            Err(tallyman_actors::partition::ReplayError::Unknown(id)) => Err(EngineError::UnknownDeadLetter(
                format!("no dead letter {id} in partition {partition:?}"),
            )),
            Err(tallyman_actors::partition::ReplayError::Submit(e)) => Err(e.into()),
        }
    }

    pub fn router(&self) -> &Addr<Router> {
        &self.router
    }

    pub fn arbiters(&self) -> usize {
        self.pool.len()
    }

    /// Stops the segment arbiters (at shutdown).
    /// Snapshots every partition (at shutdown, so the next start replays little, or when
    /// an operator asks). Answers, per partition, the LSN after which its journal is kept,
    /// or why the snapshot failed (the journal then keeps everything).
    pub async fn snapshot_all(&self) -> BTreeMap<String, Result<Lsn, String>> {
        let mut out = BTreeMap::new();
        for p in self.partitions() {
            let result = p.snapshot().await;
            if let Err(e) = &result {
                tracing::warn!(partition = %p.id, error = %e, "snapshot failed; the journal keeps everything");
            }
            out.insert(p.id.clone(), result);
        }
        out
    }

    /// Stops the segments and closes the journals (everything appended is written).
    pub fn stop(&self) {
        for p in self.partitions() {
            p.runtime.stop();
        }
        self.pool.stop();
        for p in self.partitions() {
            p.journal.close();
        }
    }
}

/// What opening a partition needs from the engine.
struct Opening {
    runtime: RuntimeSettings,
    /// `limits.max_events_per_account`.
    max_events_per_account: u32,
    alerts: crate::config::AlertSettings,
    options: EngineOptions,
    profiles: Arc<BTreeMap<String, BillingProfile>>,
    pool: Arc<ArbiterPool>,
    router: Addr<Router>,
}

/// Records the partition's time zone with its data the first time, and refuses to open
/// it in another one later: the journal's events were given their periods in the first,
/// and a resent event would fall in another period (and escape deduplication).
fn keep_time_zone(partition: &str, dir: &std::path::Path, zone: chrono_tz::Tz) -> Result<(), EngineError> {
    let file = dir.join("time_zone");
    let unavailable = |e: std::io::Error| {
        EngineError::Unavailable(format!("partition {partition:?}: {}: {e}", file.display()))
    };
    match std::fs::read_to_string(&file) {
        Ok(kept) if kept.trim() == zone.name() => Ok(()),
        Ok(kept) => Err(EngineError::Unavailable(format!(
            "partition {partition:?} keeps its periods in {}, but its configured time_zone is {}; \
             a partition's time zone cannot change once it has data (configure {} again)",
            kept.trim(),
            zone.name(),
            kept.trim()
        ))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::create_dir_all(dir).map_err(unavailable)?;
            let tmp = dir.join("time_zone.tmp");
            std::fs::write(&tmp, zone.name())
                .and_then(|()| std::fs::File::open(&tmp).and_then(|f| f.sync_all()))
                .and_then(|()| std::fs::rename(&tmp, &file))
                .and_then(|()| std::fs::File::open(dir).and_then(|d| d.sync_all()))
                .map_err(unavailable)
        }
        Err(e) => Err(unavailable(e)),
    }
}

/// Opens one partition: its journal, snapshots, runtime (recovered), invoices, alerts
/// and directory; creates its configured customers the first time.
async fn open_partition(ctx: &Opening, p: &PartitionConfig) -> Result<Arc<PartitionEngine>, EngineError> {
    let started = std::time::Instant::now();
    let journal: Arc<dyn Journal<Batch<CustomerEntity>>> = match &ctx.options.journal {
        JournalMode::Retained => Arc::new(MemoryJournal::new()),
        JournalMode::Discarded => Arc::new(MemoryJournal::discarding()),
        JournalMode::File {
            dir,
            fsync,
            file_bytes,
        } => Arc::new(
            FileJournal::open(
                FileJournalConfig {
                    dir: dir.join(&p.id).join("journal"),
                    segment_bytes: *file_bytes,
                    fsync: if *fsync {
                        FsyncPolicy::EveryBatch
                    } else {
                        FsyncPolicy::Never
                    },
                    fault: None,
                },
                Arc::new(codec::BatchCodec),
            )
            .map_err(|e| EngineError::Unavailable(format!("partition {:?}: {e}", p.id)))?,
        ),
    };
    let catalog_file = match &ctx.options.journal {
        JournalMode::File { dir, .. } => Some(dir.join(&p.id).join("catalog.json")),
        _ => None,
    };
    let mut catalog = p.catalog.clone();
    if let Some(file) = &catalog_file {
        for spec in published_versions(file)? {
            catalog.publish(&spec).map_err(|e| {
                EngineError::Unavailable(format!(
                    "{}: a published version no longer follows the configured catalog: {e}",
                    file.display()
                ))
            })?;
        }
    }
    let snapshots: Arc<dyn SnapshotStore<CustomerEntity>> = match &ctx.options.journal {
        JournalMode::File { dir, fsync, .. } => Arc::new(
            FileSnapshots::open(
                FileSnapshotsConfig {
                    dir: dir.join(&p.id).join("snapshots"),
                    keep: 2,
                    fsync: *fsync,
                },
                Arc::new(codec::EntityCodec),
            )
            .map_err(|e| EngineError::Unavailable(format!("partition {:?}: snapshots: {e}", p.id)))?,
        ),
        _ => Arc::new(MemorySnapshots::default()),
    };
    let runtime = Partition::start(
        runtime_config(&p.id, &ctx.runtime),
        journal.clone(),
        snapshots,
        ctx.pool.clone(),
        ctx.options.fault_hook.clone(),
    )
    .await;
    let _ = ctx.router.send(Register(Box::new(runtime.clone()))).await;
    let data = match &ctx.options.journal {
        JournalMode::File { dir, .. } => Some(dir.join(&p.id)),
        _ => None,
    };
    if let Some(dir) = &data {
        keep_time_zone(&p.id, dir, p.time_zone)?;
    }
    let periods_file = data.as_ref().map(|d| d.join("periods.json"));
    let configured = PeriodState {
        open: p.open_period.unwrap_or_else(|| {
            Period::containing(
                ctx.options
                    .now
                    .unwrap_or_else(chrono::Utc::now)
                    .with_timezone(&p.time_zone)
                    .date_naive(),
            )
        }),
        closing: None,
    };
    let periods = match &periods_file {
        Some(file) => load_period_state(file)?.unwrap_or(configured),
        None => configured,
    };
    if periods.open != configured.open && p.open_period.is_some() {
        tracing::info!(partition = %p.id, configured = %configured.open, open = %periods.open,
                "the open period moved on with bill runs; the configured one is only the first");
    }
    let invoices = InvoiceStore::open(&p.id, data.as_ref().map(|d| d.join("invoices")))
        .map_err(|e| EngineError::Unavailable(format!("partition {:?}: invoices: {e}", p.id)))?;
    let engine = PartitionEngine {
        id: p.id.clone(),
        rounding: p.rounding,
        periods: RwLock::new(periods),
        periods_file,
        invoices,
        runs: Default::default(),
        closing: tokio::sync::Mutex::new(()),
        fault_abort_after_invoice_batches: ctx.options.fault_abort_after_invoice_batches,
        late_grace_days: p.late_grace_days,
        time_zone: p.time_zone,
        max_events_per_account: ctx.max_events_per_account,
        now: ctx.options.now,
        alerts: Arc::new(
            AlertBook::open(&p.id, data.clone())
                .map_err(|e| EngineError::Unavailable(format!("partition {:?}: alerts: {e}", p.id)))?,
        ),
        budgeted: DashMap::with_hasher(Hashing::default()),
        to_check: Default::default(),
        catalog_name: p.catalog_name.clone(),
        catalog: RwLock::new(Arc::new(catalog)),
        catalog_file,
        latest_usage_day: std::sync::atomic::AtomicI64::new(i64::MIN),
        accepted: Default::default(),
        duplicates: Default::default(),
        rejected: Default::default(),
        profiles: ctx.profiles.clone(),
        directory: DashMap::with_hasher(Hashing::default()),
        customers: customers::Customers::default(),
        routing: tokio::sync::RwLock::new(()),
        runtime,
        journal: journal.clone(),
        snapshotting: tokio::sync::Mutex::new(()),
        events_at_snapshot: Default::default(),
    };
    engine.rebuild_directory().await?;
    // Configured customers are created once; later runs keep what the journal holds.
    let missing: Vec<Customer> = p
        .customers
        .iter()
        .filter(|c| !engine.customers.exists(c.id.as_str()))
        .cloned()
        .collect();
    if !missing.is_empty() {
        engine.upsert_customers(missing).await?;
    }
    tracing::info!(
        partition = %p.id,
        journal_lsn = journal.last_lsn(),
        customers = engine.customers.len(),
        accounts = engine.directory.len(),
        elapsed_ms = started.elapsed().as_millis() as u64,
        "partition recovered"
    );
    Ok(Arc::new(engine))
}

/// Starts a partition's background work: budget checks, the webhook, snapshots, and
/// the bill run a stop or a crash cut short.
async fn start_partition_tasks(ctx: &Opening, p: &Arc<PartitionEngine>) -> Result<(), EngineError> {
    let every = std::time::Duration::from_millis(ctx.alerts.check_interval_ms);
    actix_rt::spawn(budget_loop(Arc::downgrade(p), every));
    if !ctx.alerts.webhook_url.is_empty() {
        actix_rt::spawn(p.alerts.clone().deliver(
            ctx.alerts.webhook_url.clone(),
            std::time::Duration::from_millis(ctx.alerts.webhook_timeout_ms),
            std::time::Duration::from_millis(ctx.alerts.webhook_max_backoff_ms),
        ));
    }
    if ctx.options.journal != JournalMode::Discarded {
        let r = &ctx.runtime;
        let cadence = SnapshotCadence {
            every: (r.snapshot_interval_secs > 0)
                .then(|| std::time::Duration::from_secs(r.snapshot_interval_secs)),
            every_events: r.snapshot_every_events,
        };
        actix_rt::spawn(snapshot_loop(Arc::downgrade(p), cadence));
    }
    if let Some(period) = p.period_state().closing {
        tracing::info!(partition = %p.id, %period, "resuming the bill run");
        p.start_bill_run(period).await?;
    }
    Ok(())
}

/// The partitions created through the API, kept in `file`.
fn created_partitions(file: &std::path::Path) -> Result<Vec<PartitionSpec>, EngineError> {
    match std::fs::read(file) {
        Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
            EngineError::Unavailable(format!(
                "{} is damaged ({e}); restore it from a backup",
                file.display()
            ))
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(EngineError::Unavailable(format!(
            "cannot read {}: {e}",
            file.display()
        ))),
    }
}

/// Checks the budgets of customers with new usage, every `every`, for as long as the
/// partition exists.
async fn budget_loop(partition: std::sync::Weak<PartitionEngine>, every: std::time::Duration) {
    let mut tick = actix_rt::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(p) = partition.upgrade() else { return };
        let due: Vec<CustomerKey> =
            std::mem::take(&mut *p.to_check.lock().unwrap_or_else(|e| e.into_inner()))
                .into_iter()
                .collect();
        for key in due {
            if let Err(e) = p.check_budget(&key).await {
                // Checked again with its next usage, or at the next start.
                tracing::warn!(partition = %p.id, customer = %key, error = %e, "budget check failed");
                p.to_check.lock().unwrap_or_else(|e| e.into_inner()).insert(key);
            }
        }
    }
}

/// Hands the memory the allocator holds free back to the system every `every`, for as
/// long as the engine lives (see [`crate::compact::memory::release_free_memory`]).
async fn memory_release_loop(alive: std::sync::Weak<()>, every: std::time::Duration) {
    let mut tick = actix_rt::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        if alive.upgrade().is_none() {
            return;
        }
        let started = std::time::Instant::now();
        crate::compact::memory::release_free_memory();
        tracing::trace!(
            elapsed_us = started.elapsed().as_micros() as u64,
            "free memory released"
        );
    }
}

/// When snapshots are taken.
#[derive(Clone, Copy, Debug)]
struct SnapshotCadence {
    /// After this long, if anything was ingested since the last one.
    every: Option<std::time::Duration>,
    /// After this many events ingested (0: never by count).
    every_events: u64,
}

/// Takes a partition's snapshots for as long as it exists, by time and by events
/// ingested, whichever comes first.
async fn snapshot_loop(partition: std::sync::Weak<PartitionEngine>, cadence: SnapshotCadence) {
    use std::sync::atomic::Ordering::Relaxed;
    let mut last = std::time::Instant::now();
    let mut tick = actix_rt::time::interval(std::time::Duration::from_millis(250));
    loop {
        tick.tick().await;
        let Some(p) = partition.upgrade() else { return };
        let events = p
            .accepted
            .load(Relaxed)
            .saturating_sub(p.events_at_snapshot.load(Relaxed));
        let due_by_time = cadence.every.is_some_and(|e| last.elapsed() >= e) && events > 0;
        let due_by_events = cadence.every_events > 0 && events >= cadence.every_events;
        if due_by_time || due_by_events {
            last = std::time::Instant::now();
            if let Err(e) = p.snapshot().await {
                tracing::warn!(partition = %p.id, error = %e, "snapshot skipped; will try again");
            }
        }
    }
}

impl PartitionEngine {
    pub fn summary(&self) -> PartitionSummary {
        let catalog = self.catalog();
        PartitionSummary {
            id: self.id.clone(),
            currency: self.rounding.currency.code().to_owned(),
            rounding: self.rounding.mode.name().to_owned(),
            time_zone: self.time_zone.name().to_owned(),
            catalog: self.catalog_name.clone(),
            catalog_versions: catalog.version_count(),
            meters: catalog.meters().map(|(_, m)| m.name.to_string()).collect(),
            segments: self.runtime.segment_count(),
            customers: self.customers.len(),
            accounts: self.directory.len(),
        }
    }

    /// The open period: usage is accepted for it only.
    pub fn period(&self) -> Period {
        self.period_state().open
    }

    pub fn period_state(&self) -> PeriodState {
        *self.periods.read().unwrap_or_else(|p| p.into_inner())
    }

    fn save_period_state(&self, state: PeriodState) -> Result<(), EngineError> {
        if let Some(file) = &self.periods_file {
            let bytes = serde_json::to_vec(&state).expect("plain data");
            write_atomically(file, &bytes)
                .map_err(|e| EngineError::Unavailable(format!("cannot write {}: {e}", file.display())))?;
        }
        Ok(())
    }

    /// The first day late usage of `period` is refused.
    pub fn late_until(&self, period: Period) -> chrono::NaiveDate {
        period.end() + chrono::Days::new(u64::from(self.late_grace_days))
    }

    fn now(&self) -> chrono::DateTime<chrono::Utc> {
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

    /// Checks one customer's budgets, journals each threshold newly reached, and
    /// records its alert.
    async fn check_budget(&self, key: &CustomerKey) -> Result<(), EngineError> {
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

    /// The customer that owns `account`.
    pub fn customer_of(&self, account: &str) -> Option<CustomerKey> {
        self.directory.get(account).map(|n| self.customers.key(*n))
    }

    /// Creates a customer, or replaces the terms of an existing one. Its accounts must
    /// not belong to another customer. Journaled like usage.
    pub async fn upsert_customer(&self, customer: Customer) -> Result<(), EngineError> {
        self.upsert_customers(vec![customer]).await
    }

    /// Creates or updates many customers in one journal record: all of them, or (when
    /// one names an unknown profile or another customer's account) none of them.
    pub async fn upsert_customers(&self, customers: Vec<Customer>) -> Result<(), EngineError> {
        let _routing = self.routing.write().await;
        for c in &customers {
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
        // Claim the accounts (per customer); give back what was claimed if one belongs to
        // someone else.
        let mut claimed: Vec<Vec<AccountId>> = Vec::with_capacity(customers.len());
        let release = |claimed: &[AccountId]| {
            for a in claimed {
                self.directory.remove(a);
            }
        };
        let mut batch = Vec::with_capacity(customers.len());
        let mut numbers = Vec::with_capacity(customers.len());
        for customer in customers {
            let key: CustomerKey = customer.id.as_str().into();
            let number = self.customers.number(&key);
            numbers.push(number);
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
                        release(&mine);
                        claimed.iter().for_each(|c| release(c));
                        return Err(EngineError::Conflict(format!(
                            "account {account:?} belongs to customer {owner:?}; move it rather than adding it twice"
                        )));
                    }
                }
            }
            claimed.push(mine);
            batch.push((key, CustomerCommand::Upsert(Box::new(customer))));
        }
        let budgets: Vec<bool> = batch
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
                claimed.iter().for_each(|c| release(c));
                return Err(e.into());
            }
        };
        // Each customer's outcome on its own: applied (answered, or applied by a restarted
        // segment's recovery first), or refused after it was journaled (marked never to
        // apply). A segment that went away before answering will apply it at recovery.
        use tallyman_actors::Failure;
        let mut refused = Vec::new();
        for (i, key) in keys.iter().enumerate() {
            let outcome = match &outcomes {
                Ok(o) => o.get(i).cloned(),
                Err(SubmitError::Interrupted) => Some(Err(Failure::Replayed)),
                Err(e) => Some(Err(Failure::Unavailable {
                    reason: e.to_string(),
                })),
            };
            match outcome {
                Some(Ok(CustomerReply::Upserted { left })) => {
                    // Accounts the customer no longer lists are free for others.
                    let number = numbers[i];
                    for a in &left {
                        self.directory.remove_if(a, |_, owner| *owner == number);
                    }
                }
                Some(Err(Failure::Replayed)) => {
                    // Applied, but its answer (the accounts let go) was lost: the entity's
                    // terms say which of the accounts routed to it it still lists.
                    self.forget_unlisted(key).await;
                }
                other => {
                    release(&claimed[i]);
                    refused.push(format!("customer {key:?}: {other:?}"));
                    continue;
                }
            }
            self.customers.mark_created(key);
            if budgets[i] {
                self.budgeted.insert(key.clone(), ());
                // A new or raised budget may be crossed already.
                self.to_check
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(key.clone());
            } else {
                self.budgeted.remove(key);
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

    /// Frees the accounts routed to `customer` that its terms no longer list.
    async fn forget_unlisted(&self, customer: &CustomerKey) {
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

    /// Checks every event, then applies the batch; any invalid event rejects the whole
    /// batch before anything is journaled.
    pub async fn ingest(&self, events: Vec<UsageEvent>) -> Result<IngestSummary, EngineError> {
        use std::sync::atomic::Ordering::Relaxed;
        let count = events.len() as u64;
        // Routing (which customer owns which account) holds still from the lookup to the
        // journal append; a move of an account waits for it, and ingest for the move.
        let routing = self.routing.read().await;
        let batch = self.resolve(events).inspect_err(|_| {
            self.rejected.fetch_add(count, Relaxed);
        })?;
        if batch.is_empty() {
            return Ok(IngestSummary::default());
        }
        let mut keys: Vec<CustomerKey> = if self.budgeted.is_empty() {
            Vec::new()
        } else {
            batch.iter().map(|(k, _)| k.clone()).collect()
        };
        keys.dedup();
        let pending = self.runtime.submit(batch)?;
        drop(routing);
        let outcomes = pending.await?;
        if !self.budgeted.is_empty() {
            let mut to_check = self.to_check.lock().unwrap_or_else(|p| p.into_inner());
            for key in &keys {
                if self.budgeted.contains_key(key) {
                    to_check.insert(key.clone());
                }
            }
        }
        let (summary, result) = Self::tally(outcomes);
        // What applied counts, whatever happened to the rest.
        self.accepted.fetch_add(summary.accepted, Relaxed);
        self.duplicates.fetch_add(summary.duplicates, Relaxed);
        result.map(|()| summary)
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

    /// How many directory lookups ahead [`Self::routes`] asks for the lines of.
    const ROUTE_AHEAD: usize = 8;

    /// Each account's entry in the directory (its id and customer), in order.
    ///
    /// The lookups are grouped by the directory's shard and each group runs under one
    /// read lock. `DashMap::get` takes and releases its shard's lock for every lookup,
    /// and each of those atomic instructions waits for the memory reads before it, so a
    /// batch's lookups, each a likely cache miss, ran one after another. Without locking
    /// between them, the processor overlaps them.
    fn routes<'a>(&self, accounts: impl Iterator<Item = &'a str>) -> Vec<Option<(AccountId, CustomerKey)>> {
        let shards = self.directory.shards();
        let wanted: Vec<(usize, u64, &str)> = accounts
            .map(|account| {
                let hash = self.directory.hash_usize(&account);
                (self.directory.determine_shard(hash), hash as u64, account)
            })
            .collect();
        let mut found: Vec<Option<(AccountId, u32)>> = vec![None; wanted.len()];
        let mut order: Vec<u32> = (0..wanted.len() as u32).collect();
        order.sort_unstable_by_key(|&i| wanted[i as usize].0);
        for group in order.chunk_by(|&a, &b| wanted[a as usize].0 == wanted[b as usize].0) {
            let table = shards[wanted[group[0] as usize].0].read();
            // Where a lookup starts: its group of control bytes at `ctrl + pos`, and the
            // entries just before `ctrl`, from the `pos`th one back (the table's layout).
            // Asked for a few lookups ahead, their misses overlap. Only a hint: a table
            // laid out otherwise would be slower, never wrong.
            let (ctrl, mask) = (table.data_end().as_ptr(), table.buckets() - 1);
            let fetch_ahead = |i: u32| {
                let pos = wanted[i as usize].1 as usize & mask;
                crate::compact::prefetch(ctrl.cast::<u8>().wrapping_add(pos));
                crate::compact::prefetch(ctrl.wrapping_sub(pos + 1));
            };
            group.iter().take(Self::ROUTE_AHEAD).for_each(|&i| fetch_ahead(i));
            for (n, &i) in group.iter().enumerate() {
                if let Some(&ahead) = group.get(n + Self::ROUTE_AHEAD) {
                    fetch_ahead(ahead);
                }
                let (_, hash, account) = wanted[i as usize];
                found[i as usize] = table
                    .get(hash, |(k, _)| k.as_str() == account)
                    .map(|(k, v)| (k.clone(), *v.get()));
            }
        }
        // The owners' keys, by number: a table of 16 bytes a customer, larger than the
        // cache at 200k customers; each line asked for a few keys ahead, as above.
        let keys = self.customers.keys();
        let fetch_key = |route: &Option<(AccountId, u32)>| {
            if let Some((_, n)) = route {
                crate::compact::prefetch(keys.as_ptr().wrapping_add(*n as usize));
            }
        };
        found.iter().take(Self::ROUTE_AHEAD).for_each(fetch_key);
        (0..found.len())
            .map(|i| {
                if let Some(ahead) = found.get(i + Self::ROUTE_AHEAD) {
                    fetch_key(ahead);
                }
                let (account, n) = found[i].take()?;
                Some((account, keys.get(n as usize)?.clone()))
            })
            .collect()
    }

    /// Checks and resolves every event against the catalog in force; on any error, none.
    fn resolve(&self, events: Vec<UsageEvent>) -> Result<Vec<(CustomerKey, CustomerCommand)>, EngineError> {
        // Publishing waits for this read lock, so no version can take effect under the
        // dates of these events once they are resolved against the current catalog.
        let guard = self.catalog.read().unwrap_or_else(|p| p.into_inner());
        let catalog: &Catalog = &guard;
        let mut latest_day = i64::MIN;
        let mut errors = Vec::new();
        let mut batch: Vec<(CustomerKey, CustomerCommand)> = Vec::with_capacity(events.len());
        let open = self.period();
        let mut routes = self.routes(events.iter().map(|e| e.account.as_str())).into_iter();
        for (index, event) in events.into_iter().enumerate() {
            let Some((account, customer)) = routes.next().flatten() else {
                errors.push(EventError {
                    index,
                    field: "account".into(),
                    message: format!(
                        "unknown account {:?} in partition {:?}: create its customer first",
                        event.account, self.id
                    ),
                });
                continue;
            };
            let date = self.local_date(event.time);
            let mut late = false;
            if !open.contains(date) {
                let period = Period::containing(date);
                let state = self.period_state();
                let closed = state.closing == Some(period) || self.invoices.summary(period).is_some();
                let why = if period >= open {
                    format!("falls in period {period}, which is not open yet")
                } else if !closed {
                    format!("falls in period {period}, before the first open one")
                } else if period != open.previous() {
                    format!(
                        "falls in period {period}, which is closed; late usage is accepted for {} only",
                        open.previous()
                    )
                } else if self.local_date(self.now()) >= self.late_until(period) {
                    format!(
                        "falls in period {period}, which is closed; its late usage was accepted until {} (late_grace_days = {})",
                        self.late_until(period),
                        self.late_grace_days
                    )
                } else {
                    late = true;
                    String::new()
                };
                if !late {
                    errors.push(EventError {
                        index,
                        field: "time".into(),
                        message: format!(
                            "{} {why}; the open period of partition {:?} is {open}",
                            event.time.to_rfc3339(),
                            self.id
                        ),
                    });
                    continue;
                }
            }
            match catalog.resolve(&event, date) {
                Ok((meter, reading)) if errors.is_empty() => {
                    latest_day = latest_day.max(days(date));
                    let metered = MeteredEvent {
                        day: date,
                        account,
                        meter,
                        reading,
                        id: event_fingerprint(&event.id),
                        limit: self.max_events_per_account,
                    };
                    let command = if late {
                        // Billed as an adjustment on the next invoice.
                        CustomerCommand::Late(metered)
                    } else {
                        CustomerCommand::Usage(metered)
                    };
                    batch.push((customer, command))
                }
                Ok(_) => {}
                Err(e) => errors.push(EventError {
                    index,
                    field: e.field,
                    message: e.message,
                }),
            }
        }
        if !errors.is_empty() {
            return Err(EngineError::InvalidEvents(errors));
        }
        self.latest_usage_day
            .fetch_max(latest_day, std::sync::atomic::Ordering::AcqRel);
        Ok(batch)
    }

    /// Counts a batch's outcomes. Events that did not apply make the whole answer an
    /// error that says how many did and what to do about the rest: resend (503) when
    /// they were interrupted or replayed, nothing to resend (422) when they would overflow,
    /// and look at the dead letters (500) when they panicked.
    /// The outcome of command `i` is event `i`'s: a batch is resolved whole or not at all.
    fn tally(
        outcomes: Vec<Result<CustomerReply, tallyman_actors::Failure>>,
    ) -> (IngestSummary, Result<(), EngineError>) {
        use tallyman_actors::Failure;
        let mut summary = IngestSummary::default();
        let (mut retry, mut dead) = (0u64, Vec::new());
        let mut refused: Vec<EventError> = Vec::new();
        for (index, outcome) in outcomes.into_iter().enumerate() {
            match outcome {
                Ok(CustomerReply::Accepted) => summary.accepted += 1,
                Ok(CustomerReply::Duplicate) => summary.duplicates += 1,
                Ok(CustomerReply::Overflowed) => refused.push(EventError {
                    index,
                    field: "quantity".into(),
                    message: "would overflow its meter's aggregate (28 significant digits)".into(),
                }),
                Ok(CustomerReply::Refused(why)) => refused.push(EventError {
                    index,
                    field: "account".into(),
                    message: why,
                }),
                Ok(other) => dead.push(format!("unexpected reply {other:?}")),
                Err(Failure::Replayed | Failure::Unavailable { .. }) => retry += 1,
                Err(f) => dead.push(format!("{f:?}")),
            }
        }
        let done = format!(
            "{} event(s) applied, {} duplicate(s)",
            summary.accepted, summary.duplicates
        );
        let result = if !dead.is_empty() {
            Err(EngineError::Failed(format!("{done}, but: {}", dead.join("; "))))
        } else if retry > 0 {
            Err(EngineError::Unavailable(format!(
                "{done}; {retry} event(s) were interrupted by a segment restart: send the batch again \
                 (what was applied counts as duplicates)"
            )))
        } else if !refused.is_empty() {
            Err(EngineError::NotApplied {
                summary,
                errors: refused,
            })
        } else {
            Ok(())
        };
        (summary, result)
    }

    /// Publishes a catalog version. It must take effect after the latest one and after
    /// every usage date already accepted, so nothing already priced changes version.
    pub fn publish_catalog(&self, spec: &CatalogVersionSpec) -> Result<u16, EngineError> {
        let mut guard = self.catalog.write().unwrap_or_else(|p| p.into_inner());
        let latest = self.latest_usage_day.load(std::sync::atomic::Ordering::Acquire);
        if days(spec.effective_from) <= latest {
            return Err(EngineError::Invalid(FieldError::new(
                "effective_from",
                format!(
                    "usage dated up to {} is already priced; a new version must take effect after it",
                    chrono::NaiveDate::from_num_days_from_ce_opt((latest + 719_163) as i32)
                        .map_or_else(|| "?".into(), |d| d.to_string())
                ),
            )));
        }
        let mut next = (**guard).clone();
        let version = next.publish(spec).map_err(EngineError::Invalid)?;
        if let Some(file) = &self.catalog_file {
            let mut published = published_versions(file)?;
            published.push(spec.clone());
            write_atomically(
                file,
                &serde_json::to_vec_pretty(&published).expect("specs serialize"),
            )
            .map_err(|e| EngineError::Unavailable(format!("cannot keep the new catalog version: {e}")))?;
        }
        *guard = Arc::new(next);
        tracing::info!(partition = %self.id, version, effective_from = %spec.effective_from, "catalog version published");
        Ok(version)
    }

    /// The catalog version in force on `date` (today when `None`), in its published shape.
    pub fn catalog_at(&self, date: Option<chrono::NaiveDate>) -> Result<CatalogVersionSpec, EngineError> {
        let date = date.unwrap_or_else(|| self.local_date(self.now()));
        let catalog = self.catalog();
        let version = catalog.version_at(date).ok_or_else(|| {
            EngineError::UnknownCatalogVersion(format!("no catalog version is in force on {date}"))
        })?;
        Ok(catalog.spec(version))
    }

    /// Every customer with its accounts, sorted by id.
    pub fn customer_list(&self) -> Vec<(String, Vec<String>)> {
        let mut list: BTreeMap<String, Vec<String>> = self
            .customers
            .all()
            .into_iter()
            .map(|c| (c.to_string(), Vec::new()))
            .collect();
        let keys = self.customers.keys();
        for entry in self.directory.iter() {
            if let Some(accounts) = keys
                .get(*entry.value() as usize)
                .and_then(|c| list.get_mut(c.as_str()))
            {
                accounts.push(entry.key().to_string());
            }
        }
        list.into_iter()
            .map(|(c, mut accounts)| {
                accounts.sort();
                (c, accounts)
            })
            .collect()
    }

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

    /// Moves `account` to `customer` (or adds it, when no customer has it). The account's
    /// usage of the open period moves with it, so both customers are re-rated from the
    /// start of the period. Ingest pauses while the account changes hands.
    pub async fn move_account(&self, customer: &str, account: &str) -> Result<Option<String>, EngineError> {
        let to = self.customer_key(customer)?;
        let _routing = self.routing.write().await;
        let to_number = self.customers.number(&to);
        let owner = self.directory.get(account).map(|r| (r.key().clone(), *r.value()));
        let (account_id, from) = match owner {
            Some((_, from)) if from == to_number => return Ok(Some(customer.to_owned())),
            Some((id, from)) => (id, Some(self.customers.key(from))),
            None => {
                let name = account.trim();
                if name.is_empty() || name.len() > crate::domain::ids::MAX_ID_LEN {
                    return Err(EngineError::Invalid(FieldError::new(
                        "account",
                        "must be 1 to 128 bytes",
                    )));
                }
                (AccountId::from(name), None)
            }
        };
        let period = self.period();
        let mut batch = Vec::with_capacity(2);
        let mut usage = None;
        if let Some(from) = &from {
            // Everything journaled before reaches its segment first, so that the usage
            // read next is all the account has (ingest is paused meanwhile).
            self.wait_until_delivered(std::time::Duration::from_secs(5))
                .await
                .map_err(EngineError::Unavailable)?;
            let query = CustomerQuery::Leaving {
                account: account_id.clone(),
                period,
            };
            usage = match self.runtime.ask(from.clone(), query)?.await? {
                Some(CustomerAnswer::Leaving(Ok(u))) => u,
                Some(CustomerAnswer::Leaving(Err(why))) => return Err(EngineError::Conflict(why)),
                other => return Err(EngineError::Failed(format!("{other:?}"))),
            };
            batch.push((
                from.clone(),
                CustomerCommand::Release {
                    account: account_id.clone(),
                    period,
                },
            ));
        }
        batch.push((
            to.clone(),
            CustomerCommand::Adopt {
                account: account_id.clone(),
                usage: usage.clone(),
                period,
            },
        ));
        // One journal record: the account leaves one customer and joins the other with its
        // usage together, or (a crash before the record is durable) not at all.
        let outcomes = match self.submit_batch(batch).await {
            Ok(outcomes) => outcomes,
            // Journaled, and a restarted segment's recovery applies it: the move is done.
            Err(SubmitError::Interrupted) => Vec::new(),
            Err(e) => return Err(e.into()),
        };
        // A half was applied when it answered, or when a restarted segment's recovery
        // applied it first (`Replayed`); a refused half is marked never to be applied.
        use tallyman_actors::Failure;
        let applied = |o: Option<&Result<CustomerReply, Failure>>| {
            matches!(
                o,
                None | Some(Ok(CustomerReply::Released(_) | CustomerReply::Adopted) | Err(Failure::Replayed))
            )
        };
        let adopted = applied(outcomes.last());
        let released = from.is_none() || applied(outcomes.first());
        if !(released && adopted) {
            // Undo the half that took effect, so that the account stays with one customer.
            let undo = match (&from, released, adopted) {
                (Some(from), true, false) => {
                    let handed = match outcomes.first() {
                        Some(Ok(CustomerReply::Released(u))) => u.clone(),
                        _ => usage,
                    };
                    Some((
                        from.clone(),
                        CustomerCommand::Adopt {
                            account: account_id.clone(),
                            usage: handed,
                            period,
                        },
                    ))
                }
                (Some(_), false, true) => Some((
                    to.clone(),
                    CustomerCommand::Release {
                        account: account_id.clone(),
                        period,
                    },
                )),
                _ => None,
            };
            if let Some((key, command)) = undo {
                self.undo(key, command, account).await;
            }
            return Err(EngineError::Unavailable(format!(
                "account {account:?} could not move to {customer:?} ({outcomes:?}); nothing changed, try again"
            )));
        }
        self.directory.insert(account_id, to_number);
        tracing::info!(partition = %self.id, account, from = ?from, to = %to, "account moved");
        Ok(from.map(|f| f.to_string()))
    }

    /// Submits one command and waits for its reply (see [`Self::submit_batch`]).
    async fn submit_one(
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
    async fn undo(&self, key: CustomerKey, command: CustomerCommand, account: &str) {
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
    async fn submit_batch(
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

    /// Rebuilds who owns which account (and the latest usage date) from the journal:
    /// the directory is a projection of the journal's customer commands.
    /// Fills the directory from the customers the segments hold after recovery.
    async fn rebuild_directory(&self) -> Result<(), EngineError> {
        type Found = Vec<(
            CustomerKey,
            Vec<AccountId>,
            Option<chrono::NaiveDate>,
            bool,
            Vec<AlertMark>,
        )>;
        let found: Arc<std::sync::Mutex<Found>> = Default::default();
        let sink = found.clone();
        self.runtime
            .visit(Arc::new(move |_, entities| {
                let mine: Found = entities
                    .filter_map(|(key, e)| {
                        e.customer().map(|c| {
                            (
                                key.clone(),
                                c.accounts.to_vec(),
                                e.last_usage(),
                                e.has_budget(),
                                e.alerts().to_vec(),
                            )
                        })
                    })
                    .collect();
                sink.lock().unwrap_or_else(|p| p.into_inner()).extend(mine);
            }))
            .await
            .map_err(|e| EngineError::Unavailable(format!("partition {:?}: {e}", self.id)))?;
        let found = std::mem::take(&mut *found.lock().unwrap_or_else(|p| p.into_inner()));
        // Each shard's table sized once for its share (and a little over, for the
        // spread), not grown by doubling through every power of two: at 21M accounts the
        // tables a doubling leaves behind add up to as much as the final ones.
        let accounts: usize = found.iter().map(|(_, a, ..)| a.len()).sum();
        let shards = self.directory.shards();
        for shard in shards {
            let share = accounts / shards.len();
            shard.write().reserve(share + share / 16 + 64, |(k, _)| {
                self.directory.hash_usize(k) as u64
            });
        }
        let mut latest = i64::MIN;
        for (key, accounts, last, budgeted, marks) in found {
            let number = self.customers.number(&key);
            for a in accounts {
                self.directory.insert(a, number);
            }
            // Alerts journaled before a crash that kept them from the log, appended now;
            // and every budgeted customer is checked once.
            for mark in &marks {
                self.alerts.record(&key, mark).map_err(EngineError::Unavailable)?;
            }
            if budgeted {
                self.budgeted.insert(key.clone(), ());
                self.to_check
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(key.clone());
            }
            if let Some(day) = last {
                latest = latest.max(days(day));
            }
            self.customers.mark_created(&key);
        }
        self.latest_usage_day
            .fetch_max(latest, std::sync::atomic::Ordering::AcqRel);
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

    fn check_scope(&self, meters: &Option<Vec<String>>) -> Result<(), EngineError> {
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

    async fn grant(&self, customer: &str, command: CustomerCommand) -> Result<(), EngineError> {
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

    fn customer_key(&self, customer: &str) -> Result<CustomerKey, EngineError> {
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
