//! How the domain's packed values are written in snapshots (MessagePack) and journaled
//! commands (JSON, account hand-overs): customers, meter aggregates and their distinct
//! values, an account's usage. Each is written as the plain struct or enum it was
//! before it was packed, through a mirror here, and read back through the domain's
//! constructors.
//!
//! Each format stays readable forever: snapshots and journals already written hold it.
//! A change of format writes a new form and still reads the old; `tests/golden.rs` holds
//! the bytes of each, and a golden file is never re-blessed to accept a change.

pub mod aggregate;
pub mod customer;
pub mod usage;
