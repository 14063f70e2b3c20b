//! Opening a partition: its journal, snapshots and runtime (recovered), its period
//! state, invoices, alerts and directory, and the background work it starts.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use actix::prelude::*;
use dashmap::DashMap;
use tallyman_actors::file_journal::{FileJournal, FileJournalConfig, FsyncPolicy};
use tallyman_actors::journal::{Journal, MemoryJournal};
use tallyman_actors::router::{Register, Router};
use tallyman_actors::Batch;
use tallyman_actors::{
    ArbiterPool, FileSnapshots, FileSnapshotsConfig, MemorySnapshots, Partition, SnapshotStore,
};

use crate::config::{PartitionConfig, PartitionSpec, RuntimeSettings};
use crate::domain::{BillingProfile, CatalogVersionSpec, Customer, Period};

use crate::engine::partition::{CATALOG, PERIODS};
use crate::engine::{
    budget_loop, runtime_config, snapshot_loop, AlertBook, CustomerEntity, EngineError, EngineOptions,
    Hashing, InvoiceStore, JournalMode, PartitionEngine, PeriodState, SnapshotCadence,
};
use crate::engine::{codec, customers};
use crate::store::Documents;

/// What opening a partition needs from the engine.
pub(in crate::engine) struct Opening {
    pub(in crate::engine) runtime: RuntimeSettings,
    /// `limits.max_events_per_account`.
    pub(in crate::engine) max_events_per_account: u32,
    pub(in crate::engine) alerts: crate::config::AlertSettings,
    pub(in crate::engine) options: EngineOptions,
    pub(in crate::engine) profiles: Arc<BTreeMap<String, BillingProfile>>,
    pub(in crate::engine) pool: Arc<ArbiterPool>,
    pub(in crate::engine) router: Addr<Router>,
}

/// The catalog versions published through the API (none yet: empty).
pub(in crate::engine) fn published_versions(
    docs: &Documents,
) -> Result<Vec<CatalogVersionSpec>, EngineError> {
    Ok(docs.read_json(CATALOG)?.unwrap_or_default())
}

/// The period state kept, if any.
pub(in crate::engine) fn load_period_state(docs: &Documents) -> Result<Option<PeriodState>, EngineError> {
    Ok(docs.read_json(PERIODS)?)
}

/// Records the partition's time zone with its data the first time, and refuses to open
/// it in another one later: the journal's events were given their periods in the first,
/// and a resent event would fall in another period (and escape deduplication).
pub(in crate::engine) fn keep_time_zone(
    partition: &str,
    docs: &Documents,
    zone: chrono_tz::Tz,
) -> Result<(), EngineError> {
    match docs.read_text(TIME_ZONE)? {
        Some(kept) if kept.trim() == zone.name() => Ok(()),
        Some(kept) => Err(EngineError::Unavailable(format!(
            "partition {partition:?} keeps its periods in {}, but its configured time_zone is {}; \
             a partition's time zone cannot change once it has data (configure {} again)",
            kept.trim(),
            zone.name(),
            kept.trim()
        ))),
        None => Ok(docs.write(TIME_ZONE, zone.name().as_bytes())?),
    }
}

/// The document of the time zone a partition's periods were opened in.
const TIME_ZONE: &str = "time_zone";

/// Opens one partition: its journal, snapshots, runtime (recovered), invoices, alerts
/// and directory; creates its configured customers the first time.
pub(in crate::engine) async fn open_partition(
    ctx: &Opening,
    p: &PartitionConfig,
) -> Result<Arc<PartitionEngine>, EngineError> {
    let started = std::time::Instant::now();
    let journal = open_journal(ctx, p)?;
    let data = match &ctx.options.journal {
        JournalMode::File { dir, .. } => Some(dir.join(&p.id)),
        _ => None,
    };
    let documents = match &data {
        Some(dir) => Documents::in_folder(dir.clone()),
        None => Documents::in_memory(),
    };
    let catalog = catalog_with_published(p, &documents)?;
    let snapshots = open_snapshots(ctx, p)?;
    let runtime = Partition::start(
        runtime_config(&p.id, &ctx.runtime),
        journal.clone(),
        snapshots,
        ctx.pool.clone(),
        ctx.options.fault_hook.clone(),
    )
    .await;
    let _ = ctx.router.send(Register(Box::new(runtime.clone()))).await;
    keep_time_zone(&p.id, &documents, p.time_zone)?;
    let periods = period_state_at_open(ctx, p, &documents)?;
    let invoices = InvoiceStore::open(&p.id, data.as_ref().map(|d| d.join("invoices")))
        .map_err(|e| EngineError::Unavailable(format!("partition {:?}: invoices: {e}", p.id)))?;
    let engine = PartitionEngine {
        id: p.id.clone(),
        rounding: p.rounding,
        periods: RwLock::new(periods),
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
        documents,
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
    create_configured_customers(&engine, p).await?;
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

/// The partition's journal: in memory (kept or discarded), or its files.
fn open_journal(
    ctx: &Opening,
    p: &PartitionConfig,
) -> Result<Arc<dyn Journal<Batch<CustomerEntity>>>, EngineError> {
    Ok(match &ctx.options.journal {
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
    })
}

/// The partition's snapshots: its files with a file journal, else in memory.
fn open_snapshots(
    ctx: &Opening,
    p: &PartitionConfig,
) -> Result<Arc<dyn SnapshotStore<CustomerEntity>>, EngineError> {
    Ok(match &ctx.options.journal {
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
    })
}

/// The configured catalog with the versions published through the API appended.
fn catalog_with_published(
    p: &PartitionConfig,
    documents: &Documents,
) -> Result<crate::domain::Catalog, EngineError> {
    let mut catalog = p.catalog.clone();
    for spec in published_versions(documents)? {
        catalog.publish(&spec).map_err(|e| {
            EngineError::Unavailable(format!(
                "partition {:?}: {CATALOG}: a published version no longer follows the configured catalog: {e}",
                p.id
            ))
        })?;
    }
    Ok(catalog)
}

/// The period state kept, or at a first start the configured open period (the month
/// of the partition's clock, if none is configured).
fn period_state_at_open(
    ctx: &Opening,
    p: &PartitionConfig,
    documents: &Documents,
) -> Result<PeriodState, EngineError> {
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
    let periods = load_period_state(documents)?.unwrap_or(configured);
    if periods.open != configured.open && p.open_period.is_some() {
        tracing::info!(partition = %p.id, configured = %configured.open, open = %periods.open,
                "the open period moved on with bill runs; the configured one is only the first");
    }
    Ok(periods)
}

/// Configured customers are created once; later runs keep what the journal holds.
async fn create_configured_customers(
    engine: &PartitionEngine,
    p: &PartitionConfig,
) -> Result<(), EngineError> {
    let missing: Vec<Customer> = p
        .customers
        .iter()
        .filter(|c| !engine.customers.exists(c.id.as_str()))
        .cloned()
        .collect();
    if !missing.is_empty() {
        engine.upsert_customers(missing).await?;
    }
    Ok(())
}

/// Starts a partition's background work: budget checks, the webhook, snapshots, and
/// the bill run a stop or a crash cut short.
pub(in crate::engine) async fn start_partition_tasks(
    ctx: &Opening,
    p: &Arc<PartitionEngine>,
) -> Result<(), EngineError> {
    let every = std::time::Duration::from_millis(ctx.alerts.check_interval_ms);
    actix_rt::spawn(budget_loop(Arc::downgrade(p), every));
    if let Some(webhook) = &ctx.options.webhook {
        let max_backoff = std::time::Duration::from_millis(ctx.alerts.webhook_max_backoff_ms);
        actix_rt::spawn(p.alerts.clone().deliver(webhook.clone(), max_backoff));
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

/// The partitions created through the API, kept in the engine's documents.
pub(in crate::engine) fn created_partitions(docs: &Documents) -> Result<Vec<PartitionSpec>, EngineError> {
    Ok(docs.read_json("partitions.json")?.unwrap_or_default())
}
