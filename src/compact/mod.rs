//! How the engine's state is packed in memory, and every `unsafe` of the crate: the
//! containers that keep millions of accounts in a few hundred bytes each, the prefetch
//! hint, and the allocator.
//!
//! It knows no billing: it names nothing of [`crate::domain`] or above (tests/tidy.rs
//! checks it). Each container is tested against the plain collection it stands for, and
//! runs under valgrind with `--features system-allocator`.

pub mod id_table;
pub mod memory;
pub mod prehashed;
pub mod short_id;
pub mod thin_block;

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
