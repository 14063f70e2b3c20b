//! The engine: the running partitions (opened at start or created through the API),
//! the arbiter pool and router they share, and the options that are not configuration.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use actix::prelude::*;
use tallyman_actors::journal::Lsn;
use tallyman_actors::partition::PartitionConfig as RuntimePartitionConfig;
use tallyman_actors::partition::SegmentInfo;
use tallyman_actors::router::{Loads, RebalanceConfig, RebalanceNow, Router};
use tallyman_actors::{ArbiterPool, FaultHook, SupervisionConfig};

use crate::config::{PartitionConfig, PartitionSpec, RuntimeSettings, Validated};
use crate::domain::BillingProfile;

use crate::engine::alerts::AlertTransport;
use crate::engine::stats;
use crate::engine::{
    created_partitions, memory_release_loop, open_partition, start_partition_tasks, CustomerKey,
    DeadLetterView, EngineError, Opening, PartitionEngine, PartitionSummary, SegmentView,
};

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
    /// What alerts are delivered with (none: no webhook). `tallyd` gives the HTTP one
    /// ([`crate::webhook::HttpWebhook`]) when `alerts.webhook_url` is set.
    pub webhook: Option<Arc<dyn AlertTransport>>,
}

/// What the engine serves.
pub struct Engine {
    pub(in crate::engine) profiles: Arc<BTreeMap<String, BillingProfile>>,
    pub(in crate::engine) partitions: RwLock<BTreeMap<String, Arc<PartitionEngine>>>,
    /// The partitions created through the API (kept in `partitions.json`); held while
    /// one is being created.
    pub(in crate::engine) created: tokio::sync::Mutex<Vec<PartitionSpec>>,
    pub(in crate::engine) ctx: Opening,
    pub(in crate::engine) pool: Arc<ArbiterPool>,
    pub(in crate::engine) router: Addr<Router>,
    /// Held while the engine lives: the memory-release timer stops when it is gone.
    pub(in crate::engine) _alive: Arc<()>,
}

pub(in crate::engine) fn runtime_config(name: &str, r: &RuntimeSettings) -> RuntimePartitionConfig {
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

/// The engine's document of the partitions created through the API.
const CREATED: &str = "partitions.json";

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
            JournalMode::File { dir, .. } => {
                created_partitions(&crate::store::Documents::in_folder(dir.clone()))?
            }
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
            crate::store::Documents::in_folder(dir.clone()).write_json(CREATED, &all)?;
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
