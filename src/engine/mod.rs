//! The billing engine: joins the domain to the actor runtime.
//!
//! It owns the running partitions — their catalogs, customers, directories and actor
//! runtimes — and is the only layer that sees both `domain` and `tallyman-actors`. It
//! checks and resolves usage before anything is journaled (a bad event rejects its whole
//! batch and changes nothing), routes each customer's events to the customer's account
//! actor, and prices running bills with the domain's functions. The HTTP API talks to it
//! and never to the domain's state directly.

#![forbid(unsafe_code)]

pub mod account;
pub mod alerts;
pub mod bill_run;
pub mod codec;
pub mod customers;
pub mod stats;

mod bills;
mod budgets;
mod errors;
mod ingest;
mod loops;
mod open;
mod partition;
mod publish;
mod registry;
mod views;

/// A segment's arbiter, state and counters, as the runtime reports them.
pub use tallyman_actors::partition::SegmentInfo;

/// An invoice as stored and served.
pub use crate::store::invoices::InvoiceDocument;
use crate::store::invoices::InvoiceStore;
use account::{AlertMark, MeteredEvent, PricingView};
pub use account::{
    CustomerAnswer, CustomerCommand, CustomerEntity, CustomerKey, CustomerQuery, CustomerReply,
};
use alerts::AlertBook;
use bill_run::{BillRun, PeriodState};

pub use errors::{EngineError, EventError};
use loops::budget_loop;
use loops::memory_release_loop;
use loops::snapshot_loop;
use loops::SnapshotCadence;
use open::created_partitions;
use open::open_partition;
use open::published_versions;
use open::start_partition_tasks;
use open::Opening;
use partition::days;
use partition::Hashing;
pub use partition::PartitionEngine;
use registry::runtime_config;
pub use registry::{Engine, EngineOptions, JournalMode};
pub use views::{
    summarize, AccountStatement, Counters, DeadLetterView, IngestSummary, PartitionSummary, SegmentView,
};
