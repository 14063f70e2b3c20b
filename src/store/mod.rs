//! Persistence the engine calls, and the formats it writes: a partition's small
//! documents (its period state, published catalog versions, time zone, webhook position;
//! the engine's created partitions), its invoices and its alert log, each behind a
//! backend trait (a folder or memory here; a replicated store for cluster mode), and
//! how the domain's packed values are written in snapshots and journaled commands
//! (`formats`). The journal and snapshots themselves are the actor runtime's
//! (`tallyman-actors`).
//!
//! Everything here works in a folder, or in memory for an engine without one. It knows
//! nothing of the engine or the HTTP face (tests/tidy.rs checks it): the engine hands
//! it values and gets them back, and does no file I/O of its own.

#![forbid(unsafe_code)]

pub mod documents;
pub mod files;
pub mod formats;
pub mod invoices;
pub mod line_log;
pub mod logs;

pub use documents::{DocumentBackend, Documents, StoreError};
