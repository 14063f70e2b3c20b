//! Hashing for keys that are uniform hashes already (fingerprints of event ids): the
//! tables of the packed state use it rather than hashing a hash again.

use std::hash::{BuildHasher, Hasher};

/// Hashing for keys that are already uniform hashes (fingerprints): the key's low
/// 64 bits are the hash. Deterministic, and far cheaper than hashing them again.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Prehashed;

/// The [`Hasher`] of [`Prehashed`].
#[derive(Default)]
pub struct PrehashedHasher(u64);

impl BuildHasher for Prehashed {
    type Hasher = PrehashedHasher;
    fn build_hasher(&self) -> PrehashedHasher {
        PrehashedHasher(0)
    }
}

impl Hasher for PrehashedHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        // Not used by fingerprint keys; fold anything else in FNV-1a style.
        for &b in bytes {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x100_0000_01b3);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 ^= n;
    }
    fn write_u128(&mut self, n: u128) {
        self.0 ^= n as u64;
    }
}
