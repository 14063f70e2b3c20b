//! The journal: the ordered, numbered record of every command batch, appended before the
//! batch is applied, and read back to rebuild state.
//!
//! [`Journal`] is the interface the runtime needs; anything that can append records in
//! order, say when they are durable, and read them back from a sequence number can stand
//! behind it: the in-memory [`MemoryJournal`] here, a local file journal with group
//! commit, or a replicated stream such as NATS JetStream.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

/// A log sequence number: the position of a record in its journal. Starts at 1; only grows.
pub type Lsn = u64;

/// Why the journal could not do what was asked.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum JournalError {
    /// Writing or syncing failed: nothing of this record is acknowledged.
    #[error("the journal is unavailable: {0}")]
    Unavailable(String),
    /// A record is damaged before the tail; the message names the file, the offset and
    /// what to do. Nothing is ever skipped silently.
    #[error("the journal is corrupt: {0}")]
    Corrupt(String),
    /// Records the caller needs have been discarded (or were never kept).
    #[error("the journal no longer holds records from LSN {from}")]
    NotRetained { from: Lsn },
}

/// Called once a record is durable (or has failed), in LSN order.
pub type OnDurable<R> = Box<dyn FnOnce(Result<Lsn, JournalError>, Arc<R>) + Send>;

/// An ordered, numbered log of records.
pub trait Journal<R>: Send + Sync + 'static {
    /// Appends `record`, then calls `on_durable` with its LSN once it is durable. Calls of
    /// `on_durable` happen in LSN order, so a caller that delivers records from it
    /// delivers them in journal order.
    fn append(&self, record: Arc<R>, on_durable: OnDurable<R>);
    /// Visits every retained record with an LSN above `after`, in order, until `visit`
    /// returns `false`.
    fn replay(&self, after: Lsn, visit: &mut dyn FnMut(Lsn, &Arc<R>) -> bool) -> Result<(), JournalError>;
    /// Lets go of the records with an LSN up to `upto`: every snapshot has moved past them.
    fn truncate(&self, upto: Lsn);
    /// The LSN of the last record appended (0 when none).
    fn last_lsn(&self) -> Lsn;
    /// The LSN up to which every record has been handed to its `on_durable` (0 when
    /// none): whatever a caller delivers from `on_durable` has been delivered up to here.
    fn durable_lsn(&self) -> Lsn;
    /// Finishes what was appended and stops taking appends (which then fail).
    fn close(&self) {}
    /// Records, durably before returning, that the commands at these `(lsn, index)`
    /// positions are never to be applied: they were refused (or dead-lettered) after
    /// they were journaled, and their callers were told so. A journal that does not
    /// outlive the process need not keep them.
    fn mark_skipped(&self, _marks: &[(Lsn, u32)]) -> Result<(), JournalError> {
        Ok(())
    }
    /// The marks recorded by [`Journal::mark_skipped`] for records still retained.
    fn skipped(&self) -> Result<Vec<(Lsn, u32)>, JournalError> {
        Ok(Vec::new())
    }
}

/// A journal in memory: for tests, and for runs that need no durability.
pub struct MemoryJournal<R> {
    inner: Mutex<MemoryInner<R>>,
    retain: bool,
    /// Skip marks, kept as long as the journal (apart from `inner`: marks are made while
    /// `append` holds it, from `on_durable`).
    marks: Mutex<Vec<(Lsn, u32)>>,
}

struct MemoryInner<R> {
    /// LSN of `records[0]`.
    first: Lsn,
    records: VecDeque<Arc<R>>,
    last: Lsn,
}

impl<R> MemoryJournal<R> {
    /// A journal that keeps every record until truncated.
    pub fn new() -> Self {
        Self::with_retention(true)
    }

    /// A journal that numbers records but keeps none: nothing can be replayed from it, so
    /// a panic or a crash loses state. For measuring the runtime without a journal.
    pub fn discarding() -> Self {
        Self::with_retention(false)
    }

    fn with_retention(retain: bool) -> Self {
        MemoryJournal {
            inner: Mutex::new(MemoryInner {
                first: 1,
                records: VecDeque::new(),
                last: 0,
            }),
            retain,
            marks: Mutex::new(Vec::new()),
        }
    }
}

impl<R> Default for MemoryJournal<R> {
    fn default() -> Self {
        Self::new()
    }
}

impl<R: Send + Sync + 'static> Journal<R> for MemoryJournal<R> {
    fn append(&self, record: Arc<R>, on_durable: OnDurable<R>) {
        // The lock is held across `on_durable` so that deliveries happen in LSN order.
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        inner.last += 1;
        let lsn = inner.last;
        if self.retain {
            inner.records.push_back(record.clone());
        } else {
            inner.first = lsn + 1;
        }
        on_durable(Ok(lsn), record);
    }

    fn replay(&self, after: Lsn, visit: &mut dyn FnMut(Lsn, &Arc<R>) -> bool) -> Result<(), JournalError> {
        let inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if after + 1 < inner.first && after < inner.last {
            return Err(JournalError::NotRetained { from: after + 1 });
        }
        let skip = (after + 1).saturating_sub(inner.first) as usize;
        for (i, record) in inner.records.iter().enumerate().skip(skip) {
            if !visit(inner.first + i as Lsn, record) {
                break;
            }
        }
        Ok(())
    }

    fn truncate(&self, upto: Lsn) {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        while inner.first <= upto && inner.records.pop_front().is_some() {
            inner.first += 1;
        }
        let first = inner.first;
        self.marks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|m| m.0 >= first);
    }

    fn mark_skipped(&self, marks: &[(Lsn, u32)]) -> Result<(), JournalError> {
        if self.retain {
            self.marks
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .extend_from_slice(marks);
        }
        Ok(())
    }

    fn skipped(&self) -> Result<Vec<(Lsn, u32)>, JournalError> {
        Ok(self.marks.lock().unwrap_or_else(|p| p.into_inner()).clone())
    }

    fn last_lsn(&self) -> Lsn {
        self.inner.lock().unwrap_or_else(|p| p.into_inner()).last
    }

    fn durable_lsn(&self) -> Lsn {
        // `on_durable` runs under the lock, inside `append`.
        self.last_lsn()
    }
}
