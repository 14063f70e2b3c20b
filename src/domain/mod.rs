//! The billing rules, pure and deterministic.
//!
//! This module owns money and rounding, periods, meters and their aggregation, price
//! plans, the catalog and its versions, customers, billing profiles and steps, and the
//! bill model. It must never see actix, tokio, I/O, a clock or randomness: every
//! function here is a plain function of its arguments, so every rule can be tested as
//! one, and the engine that calls it can be replayed. How its state is packed in memory
//! (and every `unsafe`) is [`crate::compact`]'s, below it; how its packed values are
//! written in snapshots and the journal is `store::formats`'s, above it, through the
//! constructors and views the types here give (`restored`, `from_parts`, `parts`, …).

#![forbid(unsafe_code)]

pub mod billing;
pub mod catalog;
pub mod customer;
pub mod error;
pub mod ids;
pub mod invoice;
pub mod meter;
pub mod money;
pub mod period;
pub mod price;
pub mod profile;
pub mod usage;

pub use crate::compact::short_id::ShortId;
pub use billing::{bill_customer, bill_customer_with, late_adjustments, BillingContext};
pub use catalog::{Catalog, CatalogVersionSpec};
pub use customer::{AccountId, Customer, CustomerSpec};
pub use error::FieldError;
pub use ids::MeterId;
pub use invoice::{Bill, Invoice};
pub use money::{Currency, Rounding, RoundingMode};
pub use period::Period;
pub use profile::{BillingProfile, BillingStep, ProfileSpec};
pub use usage::{AccountUsage, UsageEvent};
