//! The engine's answers as plain data: a segment, a dead letter, counters, an ingest
//! summary, an account's statement, a partition in a few numbers.

use serde::Serialize;

use crate::config::PartitionConfig;
use crate::domain::invoice::AccountBill;
use crate::domain::Period;

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
