//! Ingest: an event batch checked and resolved (on time or late) against the open
//! period and the directory, routed to its customers, submitted and tallied.

use crate::domain::usage::event_fingerprint;
use crate::domain::{AccountId, Catalog, Period, UsageEvent};

use crate::engine::{
    days, CustomerCommand, CustomerKey, CustomerReply, EngineError, EventError, IngestSummary, MeteredEvent,
    PartitionEngine,
};

impl PartitionEngine {
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

    /// How many directory lookups ahead [`Self::routes`] asks for the lines of.
    pub(in crate::engine) const ROUTE_AHEAD: usize = 8;

    /// Each account's entry in the directory (its id and customer), in order.
    ///
    /// The lookups are grouped by the directory's shard and each group runs under one
    /// read lock. `DashMap::get` takes and releases its shard's lock for every lookup,
    /// and each of those atomic instructions waits for the memory reads before it, so a
    /// batch's lookups, each a likely cache miss, ran one after another. Without locking
    /// between them, the processor overlaps them.
    pub(in crate::engine) fn routes<'a>(
        &self,
        accounts: impl Iterator<Item = &'a str>,
    ) -> Vec<Option<(AccountId, CustomerKey)>> {
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
    pub(in crate::engine) fn resolve(
        &self,
        events: Vec<UsageEvent>,
    ) -> Result<Vec<(CustomerKey, CustomerCommand)>, EngineError> {
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
            let late = !open.contains(date);
            if late {
                if let Err(why) = self.accepts_late(date, open) {
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

    /// Whether usage dated `date`, outside the `open` period, is taken as late usage
    /// of the period before it (closed, within its grace days); why not, if not.
    #[cold]
    fn accepts_late(&self, date: chrono::NaiveDate, open: Period) -> Result<(), String> {
        let period = Period::containing(date);
        let state = self.period_state();
        let closed = state.closing == Some(period) || self.invoices.summary(period).is_some();
        if period >= open {
            Err(format!("falls in period {period}, which is not open yet"))
        } else if !closed {
            Err(format!("falls in period {period}, before the first open one"))
        } else if period != open.previous() {
            Err(format!(
                "falls in period {period}, which is closed; late usage is accepted for {} only",
                open.previous()
            ))
        } else if self.local_date(self.now()) >= self.late_until(period) {
            Err(format!(
                "falls in period {period}, which is closed; its late usage was accepted until {} (late_grace_days = {})",
                self.late_until(period),
                self.late_grace_days
            ))
        } else {
            Ok(())
        }
    }

    /// Counts a batch's outcomes. Events that did not apply make the whole answer an
    /// error that says how many did and what to do about the rest: resend (503) when
    /// they were interrupted or replayed, nothing to resend (422) when they would overflow,
    /// and look at the dead letters (500) when they panicked.
    /// The outcome of command `i` is event `i`'s: a batch is resolved whole or not at all.
    pub(in crate::engine) fn tally(
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
}
