//! The prefetch notes of a usage event: where its account likely is in its customer,
//! and which links of the chain of reads were asked for.

/// The positions a prefetch note says an account likely is at (see
/// [`CustomerEntity::prefetch`]; empty without a note).
pub(super) fn likely_positions(note: u64) -> std::ops::Range<usize> {
    (note & 0xffff) as usize..(note >> 16 & 0xffff) as usize
}

/// A prefetch note's flag: the account's usage block was asked for.
pub(super) const USAGE_ASKED: u64 = 1 << 33;

/// A prefetch note's flag: the line of the event's id in the block was asked for.
pub(super) const IDS_ASKED: u64 = 1 << 34;

/// The note of [`CustomerEntity::prefetch`] that says an account likely is at `likely`
/// (never 0: the flag bit says a guess was made; positions fit 16 bits).
pub(super) fn note_of(likely: std::ops::Range<usize>) -> u64 {
    1 << 32 | (likely.end as u64) << 16 | likely.start as u64
}
