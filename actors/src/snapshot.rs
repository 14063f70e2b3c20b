//! Snapshots: a segment's entities as of a journal position.
//!
//! A segment is rebuilt from its latest snapshot plus the journal after the snapshot's
//! LSN; one entity is rebuilt the same way after a panic. [`SnapshotStore`] is the
//! interface; [`MemorySnapshots`] keeps them in memory (a durable store writes files).

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

/// Where segment snapshots are kept.
pub trait SnapshotStore<E: Entity>: Send + Sync + 'static {
    fn save(&self, segment: u32, snapshot: SegmentSnapshot<E>);
    /// The latest snapshot of `segment`, if any.
    fn load(&self, segment: u32) -> Option<Arc<SegmentSnapshot<E>>>;
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
    fn save(&self, segment: u32, snapshot: SegmentSnapshot<E>) {
        let mut latest = self.latest.lock().unwrap_or_else(|p| p.into_inner());
        if latest.get(&segment).is_none_or(|s| s.lsn <= snapshot.lsn) {
            latest.insert(segment, Arc::new(snapshot));
        }
    }

    fn load(&self, segment: u32) -> Option<Arc<SegmentSnapshot<E>>> {
        self.latest
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&segment)
            .cloned()
    }
}
