//! Budget alerts: checking running bills against budgets, and delivering the alerts.
//!
//! After usage arrives for a customer with a budget (its own, or one of its accounts'),
//! the customer is marked for a check; every `alerts.check_interval_ms` the marked
//! customers' running bills are priced and compared with their thresholds. A threshold
//! reached is first journaled in the customer (`RaiseAlert`), which answers whether it
//! is new: so an alert fires once per threshold, account and period, also across
//! restarts. A new alert is then appended to `alerts.ndjson` (synced), which is the
//! list the API serves, streams over Server-Sent Events, and the webhook delivers from
//! in order (its position is kept in `webhook.cursor`; a webhook that is down delays
//! alerts and loses none). At start, alerts journaled but missing from the file (a
//! crash in between) are appended, and every budgeted customer is checked once.
//!
//! The delivery loop is in [`delivery`]; how an alert travels (HTTP, in `tallyd`) is
//! the caller's, behind [`AlertTransport`].

pub mod delivery;

pub use delivery::{AlertPoster, AlertTransport};

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use super::account::AlertMark;
use crate::domain::Period;
use crate::store::line_log::LineLog;
use crate::store::Documents;

/// An alert as listed, streamed and POSTed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Alert {
    /// Position in the partition's alert log, from 1: the SSE event id.
    pub seq: u64,
    /// `{partition}/{period}/{customer}[/{account}]/{threshold}`: stable, for receivers
    /// that deduplicate.
    pub id: String,
    pub partition: String,
    pub customer: String,
    /// Set for an account's own budget.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub account: Option<String>,
    pub period: Period,
    /// Percent of the budget reached.
    pub threshold: u32,
    pub budget: Decimal,
    /// The running bill when the threshold was crossed.
    pub spent: Decimal,
    pub at: chrono::DateTime<chrono::Utc>,
}

impl Alert {
    pub fn id_of(partition: &str, customer: &str, mark: &AlertMark) -> String {
        match &mark.account {
            Some(a) => format!("{partition}/{}/{customer}/{a}/{}", mark.period, mark.threshold),
            None => format!("{partition}/{}/{customer}/{}", mark.period, mark.threshold),
        }
    }
}

struct Log {
    alerts: Vec<Arc<Alert>>,
    ids: HashSet<String>,
    file: LineLog,
}

/// A partition's alerts: the durable log, its subscribers and its webhook.
pub struct AlertBook {
    partition: String,
    /// Where the webhook's position is kept ([`delivery`]).
    documents: Documents,
    log: Mutex<Log>,
    /// The number of alerts, for subscribers to wait on.
    count: tokio::sync::watch::Sender<u64>,
}

impl AlertBook {
    /// Opens the log in `dir` (none: in memory). A last line cut short by a crash is
    /// dropped (its alert is journaled and is appended again at start).
    pub fn open(partition: &str, dir: Option<PathBuf>) -> Result<AlertBook, String> {
        let mut alerts = Vec::new();
        let (file, documents) = match &dir {
            Some(dir) => {
                let (file, lines) = LineLog::open(dir, "alerts.ndjson")?;
                for line in lines {
                    let alert: Alert = serde_json::from_slice(&line.bytes).map_err(|e| {
                        format!(
                            "{} at offset {}: a damaged alert ({e}); restore the file from a backup",
                            dir.join("alerts.ndjson").display(),
                            line.offset
                        )
                    })?;
                    alerts.push(Arc::new(alert));
                }
                (file, Documents::in_folder(dir.clone()))
            }
            None => (LineLog::in_memory("alerts.ndjson"), Documents::in_memory()),
        };
        let ids = alerts.iter().map(|a| a.id.clone()).collect();
        let (count, _) = tokio::sync::watch::channel(alerts.len() as u64);
        Ok(AlertBook {
            partition: partition.to_owned(),
            documents,
            log: Mutex::new(Log { alerts, ids, file }),
            count,
        })
    }

    /// Appends the alert for `mark` unless it is in the log already; answers it if new.
    pub fn record(&self, customer: &str, mark: &AlertMark) -> Result<Option<Arc<Alert>>, String> {
        let id = Alert::id_of(&self.partition, customer, mark);
        let mut log = self.log.lock().unwrap_or_else(|p| p.into_inner());
        if log.ids.contains(&id) {
            return Ok(None);
        }
        let alert = Arc::new(Alert {
            seq: log.alerts.len() as u64 + 1,
            id: id.clone(),
            partition: self.partition.clone(),
            customer: customer.to_owned(),
            account: mark.account.as_ref().map(|a| a.to_string()),
            period: mark.period,
            threshold: mark.threshold,
            budget: mark.budget,
            spent: mark.spent,
            at: mark.at,
        });
        let line = serde_json::to_vec(&*alert).expect("plain data");
        // On failure the log stays whole and the alert is tried again.
        log.file
            .append(&line)
            .map_err(|e| format!("the alert log: {e}"))?;
        log.ids.insert(id);
        log.alerts.push(alert.clone());
        let n = log.alerts.len() as u64;
        drop(log);
        self.count.send_replace(n);
        tracing::info!(
            partition = %self.partition, customer, account = ?alert.account, period = %alert.period,
            threshold = alert.threshold, spent = %alert.spent, budget = %alert.budget, "budget alert"
        );
        Ok(Some(alert))
    }

    /// Every alert, oldest first (of `period` only, when given).
    pub fn list(&self, period: Option<Period>) -> Vec<Arc<Alert>> {
        let log = self.log.lock().unwrap_or_else(|p| p.into_inner());
        log.alerts
            .iter()
            .filter(|a| period.is_none_or(|p| a.period == p))
            .cloned()
            .collect()
    }

    /// The alerts after `seq`.
    pub fn after(&self, seq: u64) -> Vec<Arc<Alert>> {
        let log = self.log.lock().unwrap_or_else(|p| p.into_inner());
        log.alerts.iter().skip(seq as usize).cloned().collect()
    }

    /// Changes whenever an alert is appended.
    pub fn watch(&self) -> tokio::sync::watch::Receiver<u64> {
        self.count.subscribe()
    }
}
