//! Tallyman: an actor-based, in-memory usage-billing engine.
//!
//! Layers, with arrows pointing one way: `api → engine → {domain, actors}`, and
//! `domain → compact`. [`domain`] holds the billing rules as pure functions;
//! [`compact`] packs their state in memory (every `unsafe` is there); the actor runtime
//! lives in the `tallyman-actors` crate and knows nothing of billing; [`engine`] joins
//! the two; [`api`] is the HTTP face; [`config`] reads settings; [`report`] renders
//! latency histograms as tables and files (for `tallyd report` and `loadgen`);
//! [`store`] keeps what the engine keeps besides its journal; [`webhook`] carries
//! alerts out over HTTP (the engine does no network I/O of its own).

pub mod api;
pub mod compact;
pub mod config;
pub mod domain;
pub mod engine;
pub mod report;
pub mod store;
pub mod webhook;
