//! A partition's background loops: budget checks, snapshots by time and by events, and
//! the engine's hand-back of free memory.

use crate::engine::{CustomerKey, PartitionEngine};

/// Checks the budgets of customers with new usage, every `every`, for as long as the
/// partition exists.
pub(in crate::engine) async fn budget_loop(
    partition: std::sync::Weak<PartitionEngine>,
    every: std::time::Duration,
) {
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
pub(in crate::engine) async fn memory_release_loop(alive: std::sync::Weak<()>, every: std::time::Duration) {
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
pub(in crate::engine) struct SnapshotCadence {
    /// After this long, if anything was ingested since the last one.
    pub(in crate::engine) every: Option<std::time::Duration>,
    /// After this many events ingested (0: never by count).
    pub(in crate::engine) every_events: u64,
}

/// Takes a partition's snapshots for as long as it exists, by time and by events
/// ingested, whichever comes first.
pub(in crate::engine) async fn snapshot_loop(
    partition: std::sync::Weak<PartitionEngine>,
    cadence: SnapshotCadence,
) {
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
