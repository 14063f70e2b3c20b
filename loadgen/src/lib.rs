//! `loadgen`: Tallyman's load generator.
//!
//! It knows the billing workload (customers with linked accounts, skewed traffic, meters
//! from the catalog) and, being seeded, replays it exactly. Its checks of tallyd's answers
//! are its own simple re-computation, never the engine's pricing code.

#![forbid(unsafe_code)]

pub mod chaos;
pub mod check;
pub mod cli;
pub mod daemon;
pub mod inprocess;
pub mod plan;
pub mod report;
pub mod run;
pub mod verify;
pub mod workload;
