//! Latency histograms of the stages a request goes through, recorded per thread and
//! merged when read.
//!
//! A [`Stage`] is a `static` where its work happens (the journal's sync, a segment's
//! handling of a delivery, …). Each thread records into its own HdrHistogram, so the
//! hot path takes no shared lock (only its own, uncontended); [`Stage::merged`] adds the
//! threads' histograms up. Values are nanoseconds, from 1 ns to a minute at 3
//! significant digits; longer times are clamped to a minute.
//!
//! The runtime knows nothing of what its users measure: it records the stages it owns
//! (`journal_append`, `fsync`, `apply`) and its users declare their own the same way.

use std::cell::RefCell;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use hdrhistogram::Histogram;

/// The largest value a stage histogram holds: a minute, in nanoseconds.
pub const MAX_NANOS: u64 = 60_000_000_000;

/// A histogram of nanoseconds with the stages' bounds.
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_NANOS, 3).expect("valid bounds")
}

type Part = Arc<Mutex<Histogram<u64>>>;

/// One stage's histograms, one per thread that recorded into it.
pub struct Stage {
    pub name: &'static str,
    /// What one value measures.
    pub what: &'static str,
    /// The stage's index in the registry, given at its first use.
    index: OnceLock<usize>,
    parts: Mutex<Vec<Part>>,
}

/// Every stage that was used or registered, in the order they first were.
static STAGES: Mutex<Vec<&'static Stage>> = Mutex::new(Vec::new());
static NEXT_INDEX: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    /// This thread's histogram of each stage, by the stage's index.
    static LOCAL: RefCell<Vec<Option<Part>>> = const { RefCell::new(Vec::new()) };
}

impl Stage {
    pub const fn new(name: &'static str, what: &'static str) -> Stage {
        Stage {
            name,
            what,
            index: OnceLock::new(),
            parts: Mutex::new(Vec::new()),
        }
    }

    /// Lists the stage (with no values yet) among [`stages`].
    pub fn register(&'static self) {
        self.index();
    }

    fn index(&'static self) -> usize {
        *self.index.get_or_init(|| {
            STAGES.lock().unwrap_or_else(|p| p.into_inner()).push(self);
            NEXT_INDEX.fetch_add(1, Ordering::Relaxed)
        })
    }

    /// Records one value.
    pub fn record(&'static self, elapsed: Duration) {
        let nanos = u64::try_from(elapsed.as_nanos())
            .unwrap_or(u64::MAX)
            .clamp(1, MAX_NANOS);
        let index = self.index();
        LOCAL.with(|local| {
            let mut local = local.borrow_mut();
            if local.len() <= index {
                local.resize(index + 1, None);
            }
            let part = local[index].get_or_insert_with(|| {
                let part: Part = Arc::new(Mutex::new(histogram()));
                self.parts
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push(part.clone());
                part
            });
            part.lock()
                .unwrap_or_else(|p| p.into_inner())
                .record(nanos)
                .expect("clamped into the bounds");
        });
    }

    /// Runs `f` and records how long it took.
    pub fn time<T>(&'static self, f: impl FnOnce() -> T) -> T {
        let started = std::time::Instant::now();
        let out = f();
        self.record(started.elapsed());
        out
    }

    /// Every thread's values added up.
    pub fn merged(&self) -> Histogram<u64> {
        let mut all = histogram();
        for part in self.parts.lock().unwrap_or_else(|p| p.into_inner()).iter() {
            all.add(&*part.lock().unwrap_or_else(|p| p.into_inner()))
                .expect("the same bounds");
        }
        all
    }
}

/// The stages used or registered so far in this process.
pub fn stages() -> Vec<&'static Stage> {
    STAGES.lock().unwrap_or_else(|p| p.into_inner()).clone()
}

/// How long a record waited from its append until it was durable (group commit
/// included): what durability costs an acknowledgement.
pub static JOURNAL_APPEND: Stage = Stage::new(
    "journal_append",
    "one journal record, from its append until it is durable",
);

/// One `fdatasync` of the file journal.
pub static FSYNC: Stage = Stage::new("fsync", "one fdatasync of the journal file");

/// A segment applying one delivery (a batch of commands for its entities).
pub static APPLY: Stage = Stage::new("apply", "a segment applying one delivered batch of commands");

#[cfg(test)]
mod tests {
    use super::*;

    static TEST_STAGE: Stage = Stage::new("test_stage", "values of this test");

    #[test]
    fn values_from_many_threads_merge() {
        let threads: Vec<_> = (1..=4u64)
            .map(|t| {
                std::thread::spawn(move || {
                    for v in 0..250u64 {
                        TEST_STAGE.record(Duration::from_micros(t * 1000 + v));
                    }
                })
            })
            .collect();
        threads.into_iter().for_each(|t| t.join().unwrap());
        let all = TEST_STAGE.merged();
        assert_eq!(all.len(), 1000);
        assert_eq!(all.min(), all.lowest_equivalent(1_000_000));
        assert_eq!(all.max(), all.highest_equivalent(4_249_000));
        assert!(stages().iter().any(|s| s.name == "test_stage"));
        // Out of bounds values are clamped, not lost.
        TEST_STAGE.record(Duration::from_secs(3600));
        TEST_STAGE.record(Duration::ZERO);
        assert_eq!(TEST_STAGE.merged().len(), 1002);
    }
}
