//! The process's allocator, and giving the memory it holds free back to the system.
//!
//! Owns the `#[global_allocator]` of every binary built on the engine (`tallyd`, the
//! benches, the tests), so that benchmarks measure what runs. It never decides *when*
//! to give memory back: the engine does (see `runtime.memory_release_interval_secs`).

/// mimalloc: millions of small records (account ids, usage, event-id sets) dominate
/// memory, and its size classes fit them closely (a 28-byte account id takes 32 bytes,
/// not glibc's 48); its per-thread heaps keep the ingest path's allocations off shared
/// locks. (Feature `system-allocator` leaves it out, for heaptrack and valgrind.)
#[cfg(not(feature = "system-allocator"))]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Hands the memory the allocator holds free back to the system.
///
/// Memory freed by the engine — an account's id table left behind when it grows, an
/// ingest batch once applied, a bill run's working sets — stays with mimalloc until it
/// is purged, which mimalloc does a second after the free, but only when the freeing
/// thread calls the allocator again. A daemon gone quiet after a burst would keep it
/// resident for as long as it stays quiet; this purges every arena at once.
///
/// Costs a walk over the calling thread's pages (about a millisecond for a million
/// accounts): call it from a timer, never on the ingest path.
pub fn release_free_memory() {
    #[cfg(not(feature = "system-allocator"))]
    // SAFETY: `mi_collect` takes no pointers and may be called from any thread at any
    // time; it only returns free pages to the system.
    unsafe {
        libmimalloc_sys::mi_collect(true)
    };
}

#[cfg(test)]
mod tests {
    /// Releasing leaves every live allocation intact (whatever the allocator).
    #[test]
    fn releasing_keeps_what_is_allocated() {
        let kept: Vec<Vec<u64>> = (0..1000u64).map(|i| vec![i; 64]).collect();
        let freed: Vec<Vec<u64>> = (0..1000u64).map(|i| vec![i; 512]).collect();
        drop(freed);
        super::release_free_memory();
        for (i, v) in kept.iter().enumerate() {
            assert!(v.iter().all(|&x| x == i as u64));
        }
        let again: Vec<u64> = vec![7; 1 << 16];
        assert_eq!(again.iter().sum::<u64>(), 7 << 16);
    }
}
