//! The directory (account → its customer): lookups, the customer list, and its
//! rebuild from the recovered segments.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::domain::AccountId;

use crate::engine::{days, AlertMark, CustomerKey, EngineError, PartitionEngine};

impl PartitionEngine {
    /// The customer that owns `account`.
    pub fn customer_of(&self, account: &str) -> Option<CustomerKey> {
        self.directory.get(account).map(|n| self.customers.key(*n))
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

    /// Rebuilds who owns which account (and the latest usage date) from the journal:
    /// the directory is a projection of the journal's customer commands.
    /// Fills the directory from the customers the segments hold after recovery.
    pub(in crate::engine) async fn rebuild_directory(&self) -> Result<(), EngineError> {
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
                self.watch_budgets(&key);
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
}
