//! Supervision policy: bounded retries of a failing command, the dead-letter queue, and
//! bounded restart intensity (at most R restarts in T seconds, OTP style).

use std::collections::{HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::entity::{Batch, Entity};
use crate::journal::{Journal, Lsn};

/// The supervision settings of a partition.
#[derive(Clone, Debug)]
pub struct SupervisionConfig {
    /// How many times a command that panicked is retried (after rebuilding its entity)
    /// before it goes to the dead-letter queue.
    pub max_retries: u32,
    /// At most this many restarts of one segment …
    pub max_restarts: usize,
    /// … within this window; past that, the segment is marked failed.
    pub restart_window: Duration,
    /// Most dead letters kept; past that the oldest are dropped (and counted).
    pub dead_letter_capacity: usize,
}

impl Default for SupervisionConfig {
    fn default() -> Self {
        SupervisionConfig {
            max_retries: 2,
            max_restarts: 5,
            restart_window: Duration::from_secs(60),
            dead_letter_capacity: 10_000,
        }
    }
}

/// Remembers recent restarts and says whether one more is allowed.
#[derive(Debug)]
pub struct RestartIntensity {
    max: usize,
    window: Duration,
    recent: VecDeque<Instant>,
}

impl RestartIntensity {
    pub fn new(max: usize, window: Duration) -> Self {
        RestartIntensity {
            max,
            window,
            recent: VecDeque::new(),
        }
    }

    /// Records a restart at `now`; `false` when it would exceed the intensity.
    pub fn allow(&mut self, now: Instant) -> bool {
        while self
            .recent
            .front()
            .is_some_and(|&t| now.duration_since(t) > self.window)
        {
            self.recent.pop_front();
        }
        if self.recent.len() >= self.max {
            return false;
        }
        self.recent.push_back(now);
        true
    }
}

/// A command that kept failing, kept so that it can be inspected and replayed.
pub struct DeadLetter<E: Entity> {
    pub id: u64,
    pub segment: u32,
    pub lsn: Lsn,
    /// The command is `record[index]`.
    pub record: Arc<Batch<E>>,
    pub index: u32,
    pub reason: String,
    pub attempts: u32,
}

impl<E: Entity> DeadLetter<E> {
    pub fn key(&self) -> &E::Key {
        &self.record[self.index as usize].0
    }
    pub fn command(&self) -> &E::Command {
        &self.record[self.index as usize].1
    }
}

/// The dead-letter queue of a partition, and the journal positions never to apply again
/// when an entity or segment is rebuilt.
pub struct DeadLetters<E: Entity> {
    inner: Mutex<DeadInner<E>>,
    capacity: usize,
    /// Where the skipped positions are kept across restarts.
    journal: Option<Arc<dyn Journal<Batch<E>>>>,
}

struct DeadInner<E: Entity> {
    letters: VecDeque<DeadLetter<E>>,
    skipped: HashSet<(Lsn, u32)>,
    next_id: u64,
    dropped: u64,
}

impl<E: Entity> DeadLetters<E> {
    pub fn new(capacity: usize) -> Self {
        DeadLetters {
            inner: Mutex::new(DeadInner {
                letters: VecDeque::new(),
                skipped: HashSet::new(),
                next_id: 1,
                dropped: 0,
            }),
            capacity,
            journal: None,
        }
    }

    /// A queue whose skipped positions are kept in `journal` (and start from the ones it
    /// kept), so that a restart never applies what a caller was told was refused.
    pub fn kept_in(capacity: usize, journal: Arc<dyn Journal<Batch<E>>>) -> Self {
        let mut letters = Self::new(capacity);
        match journal.skipped() {
            Ok(marks) => letters.lock().skipped.extend(marks),
            Err(e) => tracing::error!(error = %e, "the journal's skip marks cannot be read"),
        }
        letters.journal = Some(journal);
        letters
    }

    /// Keeps the marks durably (when there is a journal to keep them in), before any
    /// caller hears of the refusal. If they cannot be kept, the process stops here:
    /// no caller has been told, and the next start applies the commands from the journal,
    /// which is then the one truth (a resent command counts as a duplicate). Telling
    /// callers "refused" while a restart would apply the command is the one thing not done.
    fn keep(&self, marks: &[(Lsn, u32)]) {
        if let Some(journal) = &self.journal {
            if let Err(e) = journal.mark_skipped(marks) {
                tracing::error!(error = %e, marks = marks.len(),
                    "cannot keep skip marks of commands refused after they were journaled; stopping");
                std::process::abort();
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, DeadInner<E>> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn push(
        &self,
        segment: u32,
        lsn: Lsn,
        record: Arc<Batch<E>>,
        index: u32,
        reason: String,
        attempts: u32,
    ) {
        self.keep(&[(lsn, index)]);
        let mut inner = self.lock();
        let id = inner.next_id;
        inner.next_id += 1;
        inner.skipped.insert((lsn, index));
        if inner.letters.len() >= self.capacity {
            inner.letters.pop_front();
            inner.dropped += 1;
        }
        inner.letters.push_back(DeadLetter {
            id,
            segment,
            lsn,
            record,
            index,
            reason,
            attempts,
        });
    }

    /// Marks the journaled command at `(lsn, index)` as never to be applied: it was
    /// refused (its segment failed or overflowed) after it was journaled, so a rebuild
    /// must not apply what the live segment never did.
    pub(crate) fn skip(&self, lsn: Lsn, indexes: &[u32]) {
        let marks: Vec<(Lsn, u32)> = indexes.iter().map(|&i| (lsn, i)).collect();
        self.keep(&marks);
        self.lock().skipped.extend(marks);
    }

    /// Puts a letter taken for replay back at the front, when the replay could not start.
    pub(crate) fn put_back(&self, letter: DeadLetter<E>) {
        self.lock().letters.push_front(letter);
    }

    /// Whether the command at `(lsn, index)` was dead-lettered (and so is never re-applied
    /// from the journal).
    pub fn is_skipped(&self, lsn: Lsn, index: u32) -> bool {
        self.lock().skipped.contains(&(lsn, index))
    }

    /// Calls `f` on every dead letter, oldest first.
    pub fn for_each(&self, mut f: impl FnMut(&DeadLetter<E>)) {
        self.lock().letters.iter().for_each(&mut f);
    }

    /// Removes dead letter `id` and returns it (to be replayed as a new command).
    pub fn take(&self, id: u64) -> Option<DeadLetter<E>> {
        let mut inner = self.lock();
        let at = inner.letters.iter().position(|l| l.id == id)?;
        inner.letters.remove(at)
    }

    pub fn len(&self) -> usize {
        self.lock().letters.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Dead letters dropped because the queue was full.
    pub fn dropped(&self) -> u64 {
        self.lock().dropped
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restart_intensity_is_bounded_per_window() {
        let mut r = RestartIntensity::new(3, Duration::from_secs(10));
        let t0 = Instant::now();
        assert!(r.allow(t0));
        assert!(r.allow(t0 + Duration::from_secs(1)));
        assert!(r.allow(t0 + Duration::from_secs(2)));
        assert!(
            !r.allow(t0 + Duration::from_secs(3)),
            "a fourth restart within 10 s is refused"
        );
        // Once the first one is out of the window, one more is allowed.
        assert!(r.allow(t0 + Duration::from_secs(11)));
    }
}
