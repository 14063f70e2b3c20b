//! The engine's answers as plain data: a segment, a dead letter, counters, an ingest
//! summary, an account's statement, a partition in a few numbers.

use serde::Serialize;

use crate::config::PartitionConfig;
use crate::domain::invoice::AccountBill;
use crate::domain::money::Rounding;
use crate::domain::{Catalog, Period};

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
    let described = PartitionSummary::described(
        &config.id,
        config.rounding,
        config.time_zone,
        &config.catalog_name,
        &config.catalog,
    );
    PartitionSummary {
        segments,
        customers: config.customers.len(),
        accounts: config.customers.iter().map(|c| c.accounts.len()).sum(),
        ..described
    }
}

impl PartitionSummary {
    /// What a partition is set up as (its money, calendar and catalog), holding nothing
    /// yet: its segments, customers and accounts are the caller's to fill in.
    pub(in crate::engine) fn described(
        id: &str,
        rounding: Rounding,
        time_zone: chrono_tz::Tz,
        catalog_name: &str,
        catalog: &Catalog,
    ) -> PartitionSummary {
        PartitionSummary {
            id: id.to_owned(),
            currency: rounding.currency.code().to_owned(),
            rounding: rounding.mode.name().to_owned(),
            time_zone: time_zone.name().to_owned(),
            catalog: catalog_name.to_owned(),
            catalog_versions: catalog.version_count(),
            meters: catalog.meters().map(|(_, m)| m.name.to_string()).collect(),
            segments: 0,
            customers: 0,
            accounts: 0,
        }
    }
}
