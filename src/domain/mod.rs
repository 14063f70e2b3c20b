//! The billing rules, pure and deterministic.
//!
//! This module owns money and rounding, periods, meters and their aggregation, price
//! plans, the catalog and its versions, customers, billing profiles and steps, and the
//! bill model. It must never see actix, tokio, I/O, a clock or randomness: every
//! function here is a plain function of its arguments, so every rule can be tested as
//! one, and the engine that calls it can be replayed.

pub mod billing;
pub mod catalog;
pub mod customer;
pub mod id_table;
pub mod invoice;
pub mod meter;
pub mod money;
pub mod period;
pub mod price;
pub mod profile;
pub mod short_id;
pub mod thin_block;
pub mod usage;

pub use billing::{bill_customer, bill_customer_with, late_adjustments, BillingContext};
pub use catalog::{Catalog, CatalogVersionSpec, MeterId};
pub use customer::{AccountId, Customer, CustomerSpec};
pub use invoice::{Bill, Invoice};
pub use money::{Currency, Rounding, RoundingMode};
pub use period::Period;
pub use profile::{BillingProfile, BillingStep, ProfileSpec};
pub use short_id::ShortId;
pub use usage::{AccountUsage, FieldError, UsageEvent};

/// Asks the processor to start bringing the cache line at `p` in, and goes on without
/// waiting for it. Looking up the next few events' accounts this way before applying
/// them overlaps their memory misses, which would otherwise come one after another.
///
/// A hint, not a read: it changes nothing a program can observe, and any address, even
/// a dangling one, is fine.
#[inline(always)]
pub fn prefetch<T>(p: *const T) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch does not access memory architecturally and cannot fault, so
    // it is sound for any address (the pointer is never dereferenced).
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(p.cast());
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}
