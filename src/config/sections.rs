//! The plain sections of the settings (server, journal, limits, runtime, alerts), each
//! with its range checks.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::{in_range, invalid, ConfigError};

/// Budget alerts: how often running bills are checked, and where alerts are POSTed.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlertSettings {
    /// Milliseconds between checks of the running bills of customers with a budget
    /// that had usage since the last check.
    pub check_interval_ms: u64,
    /// Every alert is POSTed here as JSON (empty: no webhook), in order, retried until
    /// it is answered 2xx.
    pub webhook_url: String,
    pub webhook_timeout_ms: u64,
    /// The longest wait between two tries of a webhook that is down.
    pub webhook_max_backoff_ms: u64,
}

impl AlertSettings {
    pub(super) fn validate(&self) -> Result<AlertSettings, ConfigError> {
        let range = |key: &str, value: u64, lo: u64, hi: u64| in_range("alerts", key, value, lo, hi);
        range("check_interval_ms", self.check_interval_ms, 1, 60_000)?;
        range("webhook_timeout_ms", self.webhook_timeout_ms, 1, 600_000)?;
        range(
            "webhook_max_backoff_ms",
            self.webhook_max_backoff_ms,
            1,
            3_600_000,
        )?;
        if !self.webhook_url.is_empty() && !self.webhook_url.starts_with("http://") {
            return Err(invalid(
                "alerts.webhook_url",
                format!(
                    "must be an http:// URL (got {:?}); put a TLS-terminating proxy in front of an https endpoint",
                    self.webhook_url
                ),
            ));
        }
        Ok(self.clone())
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerSettings {
    /// Address the HTTP API listens on.
    pub listen: String,
    /// Folder for journals, snapshots and invoices.
    pub data_dir: PathBuf,
    /// HTTP worker threads; 0 means one per core.
    #[serde(default)]
    pub http_workers: usize,
}

/// Where acknowledged usage is kept.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JournalSettings {
    /// `file`: durable, in `<data_dir>/<partition>/journal`; `memory`: nothing survives
    /// a restart.
    pub mode: JournalKind,
    /// Sync every batch before acknowledging it. Turning it off risks losing acknowledged
    /// usage on a power cut; for tests and benchmarks only.
    pub fsync: bool,
    /// A journal file is closed and a new one started past this size; whole files are
    /// deleted once every segment's snapshot has moved past them.
    pub file_bytes: u64,
}

impl JournalSettings {
    pub(super) fn validate(&self) -> Result<JournalSettings, ConfigError> {
        const LO: u64 = 4 << 10;
        const HI: u64 = 4 << 30;
        if !(LO..=HI).contains(&self.file_bytes) {
            return Err(invalid(
                "journal.file_bytes",
                format!("must be from {LO} to {HI} (got {})", self.file_bytes),
            ));
        }
        Ok(self.clone())
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JournalKind {
    File,
    Memory,
}

/// Bounds on what one request may carry.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitSettings {
    /// Largest request body, in bytes; larger ones get 413.
    pub max_body_bytes: usize,
    /// Most usage events in one ingest request; more get 413.
    pub max_events_per_request: usize,
    /// Most customers in one bulk request.
    pub max_customers_per_request: usize,
    /// Most open connections per HTTP worker; past it, new connections wait in the backlog.
    pub max_connections_per_worker: usize,
    /// Most responses streaming at once (invoice streams, alert subscriptions); past it,
    /// a new stream gets 429 with Retry-After.
    pub max_streams: usize,
    /// Most distinct usage events one account may have applied in one period: the bound
    /// of its deduplication state (16 bytes an event id). Past it, its new events are
    /// refused (422) and nothing of them is applied; duplicates are still recognised.
    pub max_events_per_account: usize,
}

impl LimitSettings {
    pub(super) fn validate(&self) -> Result<LimitSettings, ConfigError> {
        let check = |key: &str, value: usize, lo: usize, hi: usize| in_range("limits", key, value, lo, hi);
        check("max_body_bytes", self.max_body_bytes, 1024, 1 << 30)?;
        check(
            "max_events_per_request",
            self.max_events_per_request,
            1,
            1_000_000,
        )?;
        check(
            "max_customers_per_request",
            self.max_customers_per_request,
            1,
            1_000_000,
        )?;
        check(
            "max_connections_per_worker",
            self.max_connections_per_worker,
            1,
            1_000_000,
        )?;
        // An account's event ids travel in one journal record when it moves (about 40
        // bytes each): the bound keeps that record well within the journal's limit.
        check(
            "max_events_per_account",
            self.max_events_per_account,
            1,
            4_000_000,
        )?;
        check("max_streams", self.max_streams, 1, 100_000)?;
        Ok(self.clone())
    }
}

/// The actor runtime: how state is spread over cores, bounded and supervised.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuntimeSettings {
    /// Arbiter threads that run segment actors; 0 means one per core.
    pub arbiters: usize,
    /// Segments per partition (fixed for the partition's life).
    pub segments: u32,
    /// Messages admitted per segment and not yet handled; past it, ingest answers 429.
    pub mailbox_capacity: usize,
    /// Retries of a command that panicked before it is dead-lettered.
    pub max_retries: u32,
    /// At most `max_restarts` restarts of a segment within `restart_window_secs`.
    pub max_restarts: usize,
    pub restart_window_secs: u64,
    /// Dead letters kept per partition.
    pub dead_letter_capacity: usize,
    /// Seconds between snapshots of every segment, after which the journal forgets
    /// what they cover; 0 never snapshots.
    pub snapshot_interval_secs: u64,
    /// A snapshot round also starts once this many events were ingested since the last
    /// one; 0 snapshots by time only.
    pub snapshot_every_events: u64,
    /// Seconds between rebalancing rounds; 0 turns automatic rebalancing off.
    pub rebalance_interval_secs: u64,
    /// Rebalance when the busiest arbiter is busier than this factor × the least busy one.
    pub rebalance_factor: f64,
    /// Segment moves per round, at most.
    pub rebalance_max_moves: usize,
    /// Busy fraction (0–1) under which an arbiter is not worth unloading.
    pub rebalance_min_busy: f64,
    /// Seconds between handing the memory the allocator holds free back to the system
    /// (what a burst, a grown table or a bill run left behind); 0 never does.
    pub memory_release_interval_secs: u64,
    /// Whether the process's memory may be backed by transparent huge pages: fewer
    /// address-translation misses, more resident memory.
    pub transparent_huge_pages: bool,
}

impl RuntimeSettings {
    pub(super) fn validate(&self) -> Result<RuntimeSettings, ConfigError> {
        let range = |key: &str, value: u64, lo: u64, hi: u64| in_range("runtime", key, value, lo, hi);
        range("arbiters", self.arbiters as u64, 0, 1024)?;
        range("segments", u64::from(self.segments), 1, 65_536)?;
        range("mailbox_capacity", self.mailbox_capacity as u64, 1, 1_000_000)?;
        range("max_retries", u64::from(self.max_retries), 0, 100)?;
        range("max_restarts", self.max_restarts as u64, 1, 1_000)?;
        range("restart_window_secs", self.restart_window_secs, 1, 86_400)?;
        range(
            "dead_letter_capacity",
            self.dead_letter_capacity as u64,
            1,
            10_000_000,
        )?;
        range("rebalance_interval_secs", self.rebalance_interval_secs, 0, 86_400)?;
        range("snapshot_interval_secs", self.snapshot_interval_secs, 0, 86_400)?;
        range(
            "memory_release_interval_secs",
            self.memory_release_interval_secs,
            0,
            86_400,
        )?;
        range(
            "snapshot_every_events",
            self.snapshot_every_events,
            0,
            10_000_000_000,
        )?;
        range("rebalance_max_moves", self.rebalance_max_moves as u64, 0, 1_000)?;
        if !(self.rebalance_factor > 1.0 && self.rebalance_factor.is_finite()) {
            return Err(invalid(
                "runtime.rebalance_factor",
                format!(
                    "must be a number above 1, e.g. 1.5 (got {})",
                    self.rebalance_factor
                ),
            ));
        }
        if !(0.0..=1.0).contains(&self.rebalance_min_busy) {
            return Err(invalid(
                "runtime.rebalance_min_busy",
                format!("must be a fraction from 0 to 1 (got {})", self.rebalance_min_busy),
            ));
        }
        Ok(self.clone())
    }
}
