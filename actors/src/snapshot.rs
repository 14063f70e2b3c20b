//! Snapshots: a segment's entities as of a journal position.
//!
//! A segment is rebuilt from its latest snapshot plus the journal after the snapshot's
//! LSN; one entity is rebuilt the same way after a panic. [`SnapshotStore`] is the
//! interface; [`MemorySnapshots`] keeps them in memory, and
//! [`crate::file_snapshots::FileSnapshots`] writes them to files.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::entity::Entity;
use crate::journal::Lsn;

/// The entities of one segment as of `lsn`: every journal record up to `lsn` for this
/// segment is reflected, and none after it.
pub struct SegmentSnapshot<E: Entity> {
    pub lsn: Lsn,
    pub entities: HashMap<E::Key, E::Snapshot>,
}

/// A segment's entities, visited one by one while a snapshot is written.
pub type EntityIter<'a, E> = dyn Iterator<Item = (&'a <E as Entity>::Key, &'a E)> + 'a;

/// A read-only function over one segment's entities (given the segment's index).
pub type VisitOnce<E> = Box<dyn FnOnce(u32, &mut EntityIter<'_, E>) + Send>;
/// A read-only function over each segment's entities, shared by all segments.
pub type VisitEach<E> = Arc<dyn Fn(u32, &mut EntityIter<'_, E>) + Send + Sync>;

/// Where segment snapshots are kept.
pub trait SnapshotStore<E: Entity>: Send + Sync + 'static {
    /// Saves the entities of `segment` as of `lsn`, and returns once the snapshot is
    /// durable. Answers the LSN after which the journal must keep this segment's records
    /// so that every snapshot still kept can be recovered from.
    fn save(&self, segment: u32, lsn: Lsn, entities: &mut EntityIter<'_, E>) -> Result<Lsn, String>;
    /// The latest good snapshot of `segment`, if any. An error means snapshots exist
    /// but none can be read: recovering without them would lose state.
    fn load(&self, segment: u32) -> Result<Option<Arc<SegmentSnapshot<E>>>, String>;
}

/// Snapshots in memory.
pub struct MemorySnapshots<E: Entity> {
    latest: Mutex<HashMap<u32, Arc<SegmentSnapshot<E>>>>,
}

impl<E: Entity> Default for MemorySnapshots<E> {
    fn default() -> Self {
        MemorySnapshots {
            latest: Mutex::new(HashMap::new()),
        }
    }
}

impl<E: Entity> SnapshotStore<E> for MemorySnapshots<E> {
    fn save(&self, segment: u32, lsn: Lsn, entities: &mut EntityIter<'_, E>) -> Result<Lsn, String> {
        let snapshot = SegmentSnapshot {
            lsn,
            entities: entities.map(|(k, e)| (k.clone(), e.snapshot())).collect(),
        };
        let mut latest = self.latest.lock().unwrap_or_else(|p| p.into_inner());
        if latest.get(&segment).is_none_or(|s| s.lsn <= lsn) {
            latest.insert(segment, Arc::new(snapshot));
        }
        Ok(lsn)
    }

    fn load(&self, segment: u32) -> Result<Option<Arc<SegmentSnapshot<E>>>, String> {
        Ok(self
            .latest
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&segment)
            .cloned())
    }
}
