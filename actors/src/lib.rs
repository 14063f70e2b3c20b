//! Tallyman's actor runtime. It knows nothing about billing: it hosts entities of any
//! kind ([`entity::Entity`]) and gives them a home on many cores, a journal, snapshots,
//! supervision and load balancing.
//!
//! - A [`partition::Partition`] owns a fixed number of segments; a key belongs to one
//!   segment for ever (by hash). Its supervisor actor starts segments on the arbiters of
//!   an [`arbiters::ArbiterPool`], restarts them from snapshot + journal when they die, and
//!   moves them between arbiters without losing, duplicating or reordering anything.
//! - A [`segment::Segment`] actor hosts many entities as plain records (one actix actor
//!   per entity would cost kilobytes each), applies commands in journal order, and
//!   catches panics per command.
//! - The [`router::Router`] actor measures segment load and rebalances arbiters.
//! - [`journal::Journal`] and [`snapshot::SnapshotStore`] are the persistence interfaces.
//! - [`latency`] keeps per-stage latency histograms, per thread, merged when read.

#![forbid(unsafe_code)]

pub mod arbiters;
pub mod crc;
pub mod entity;
pub mod file_journal;
pub mod file_snapshots;
pub mod journal;
pub mod latency;
pub mod partition;
pub mod router;
pub mod segment;
pub mod snapshot;
pub mod supervision;

pub use arbiters::ArbiterPool;
pub use entity::{Batch, Entity};
pub use file_snapshots::{FileSnapshots, FileSnapshotsConfig, SnapshotCodec};
pub use journal::{Journal, JournalError, Lsn, MemoryJournal};
pub use partition::{Partition, PartitionConfig, SubmitError};
pub use router::{RebalanceConfig, Router};
pub use segment::{Failure, FaultHook};
pub use snapshot::{MemorySnapshots, SnapshotStore};
pub use supervision::SupervisionConfig;
