//! The identifiers every part of the domain shares, and their bounds: a meter's index
//! in its catalog, the longest accepted id, the stable fingerprint of a string.

use serde::{Deserialize, Serialize};

/// Longest accepted event id, account id, customer id or meter name, in bytes.
pub const MAX_ID_LEN: usize = 128;

/// Index of a meter within its catalog. Stable for the catalog's lifetime.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct MeterId(pub u16);

/// A stable 64-bit fingerprint of a string (xxh3): dimension values and tie-breaks.
pub fn fingerprint64(s: &str) -> u64 {
    xxhash_rust::xxh3::xxh3_64(s.as_bytes())
}
