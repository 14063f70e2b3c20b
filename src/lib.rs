//! Tallyman: an actor-based, in-memory usage-billing engine.
//!
//! Layers, with arrows pointing one way: `api → engine → {domain, actors}`.
//! [`domain`] holds the billing rules as pure functions; the actor runtime lives in the
//! `tallyman-actors` crate and knows nothing of billing; [`engine`] joins the two;
//! [`api`] is the HTTP face; [`config`] reads settings; [`report`] renders latency
//! histograms as tables and files (for `tallyd report` and `loadgen`).

pub mod api;
pub mod config;
pub mod domain;
pub mod engine;
pub mod report;

/// The allocator of every binary built on the engine (`tallyd`, the benches, the tests),
/// so that benchmarks measure what runs. Millions of small records (account ids, usage,
/// event-id sets) dominate memory: mimalloc's size classes fit them closely (a 28-byte
/// account id takes 32 bytes, not glibc's 48) and its per-thread heaps keep the ingest
/// path's allocations off shared locks. (Feature `system-allocator` leaves it out, for
/// heaptrack and valgrind.)
#[cfg(not(feature = "system-allocator"))]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
