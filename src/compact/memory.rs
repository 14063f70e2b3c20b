//! The process's allocator, and giving the memory it holds free back to the system.
//!
//! Owns the `#[global_allocator]` of every binary built on the engine (`tallyd`, the
//! benches, the tests), so that benchmarks measure what runs, and the process's use of
//! transparent huge pages. It never decides *when* to give memory back, nor whether to
//! use huge pages: the engine does, from `runtime.memory_release_interval_secs` and
//! `runtime.transparent_huge_pages`.

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
/// resident for as long as it stays quiet; this purges what the arenas hold free and
/// the calling thread's free pages (collecting on the arbiter threads as well gave back
/// nothing more at 1M accounts).
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

/// Whether the kernel may back this process's memory with transparent huge pages
/// (2 MiB) from now on; memory already so backed stays. `true` also clears a refusal
/// inherited from the parent process; the choice passes on to child processes.
///
/// mimalloc asks for them for its arenas (where the system leaves it to programs, as
/// with `madvise`). They save the hot path's random reads most misses of the address
/// translation cache, but a 2 MiB page is resident whole as soon as one byte of it is
/// used: the allocator's partly used pages then hold far more memory. Measured at 1M
/// accounts (BENCHMARKS.md): off, 28 bytes an account less, about 5% more CPU per event.
///
/// Linux only (`prctl(PR_SET_THP_DISABLE)`); elsewhere it does nothing. An error (a
/// kernel without the call) is returned for the caller to log: the process runs either
/// way.
pub fn use_transparent_huge_pages(enabled: bool) -> std::io::Result<()> {
    #[cfg(target_os = "linux")]
    {
        let none: libc::c_ulong = 0;
        // SAFETY: PR_SET_THP_DISABLE takes integer arguments only and changes nothing
        // but the kernel's choice of page size for this process.
        let r = unsafe {
            libc::prctl(
                libc::PR_SET_THP_DISABLE,
                libc::c_ulong::from(!enabled),
                none,
                none,
                none,
            )
        };
        if r != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = enabled;
    Ok(())
}

/// Whether transparent huge pages are turned off for this process (Linux), `None`
/// where that cannot be asked.
pub fn transparent_huge_pages_disabled() -> Option<bool> {
    #[cfg(target_os = "linux")]
    {
        let none: libc::c_ulong = 0;
        // SAFETY: PR_GET_THP_DISABLE takes no pointers and only reads a flag.
        let r = unsafe { libc::prctl(libc::PR_GET_THP_DISABLE, none, none, none, none) };
        if r >= 0 {
            return Some(r == 1);
        }
    }
    None
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

    /// Turned off and on again, as the kernel reports it.
    #[cfg(target_os = "linux")]
    #[test]
    fn huge_pages_turn_off_and_on() {
        let before = super::transparent_huge_pages_disabled();
        super::use_transparent_huge_pages(false).unwrap();
        assert_eq!(super::transparent_huge_pages_disabled(), Some(true));
        super::use_transparent_huge_pages(true).unwrap();
        assert_eq!(super::transparent_huge_pages_disabled(), Some(false));
        if before == Some(true) {
            super::use_transparent_huge_pages(false).unwrap();
        }
    }
}
