//! Entities: the state machines a segment hosts.
//!
//! An entity is a plain record keyed by `Key`, changed only by commands and read by
//! queries. The runtime journals commands before it applies them, so an entity must be
//! a deterministic function of the commands it has applied: the same commands in the
//! same order give the same state, which is how the runtime rebuilds an entity after a
//! panic and a segment after a crash.

use std::fmt::Debug;
use std::hash::Hash;

/// A keyed state machine hosted by a segment actor.
pub trait Entity: Sized + Send + Unpin + 'static {
    type Key: Clone + Eq + Hash + Debug + Send + Sync + Unpin + 'static;
    /// Changes the entity; journaled before it is applied.
    type Command: Debug + Send + Sync + 'static;
    /// What applying a command reports back.
    type Reply: Send + 'static;
    /// Reads the entity.
    type Query: Send + 'static;
    type Answer: Send + 'static;
    /// The entity's state, for snapshots, moves and rebuilds.
    type Snapshot: Clone + Send + Sync + 'static;

    /// How many rounds of [`Entity::prefetch`] a segment runs over the next few
    /// commands before it applies them (0: it applies them straight away).
    const PREFETCH_ROUNDS: usize = 0;

    /// Round `round` (from 0) of starting to fetch the memory that applying `command`
    /// will read, without waiting for it: each round may read what the round before
    /// asked for, and `note` (0 before the first round) carries what a round found to
    /// the next. A segment runs each round over a group of commands before the next
    /// round, so the memory misses of different commands overlap instead of coming one
    /// after another. Read-only, and only a hint: it must not panic, and whatever it
    /// does, applying gives the same result.
    fn prefetch(&self, _command: &Self::Command, _round: usize, _note: &mut u64) {}

    /// [`Entity::apply`], given the `note` its prefetch rounds left (0: none ran), which
    /// may save finding again what they found. Only a hint: the reply and the state
    /// after must be exactly [`Entity::apply`]'s.
    fn apply_noted(&mut self, command: &Self::Command, _note: u64) -> Self::Reply {
        self.apply(command)
    }

    /// A stable hash of the key: it picks the key's segment, for ever.
    fn shard(key: &Self::Key) -> u64;
    /// The state of a key that has seen no command yet.
    fn create(key: &Self::Key) -> Self;
    /// Applies one command. Must be deterministic; may panic (the runtime recovers).
    fn apply(&mut self, command: &Self::Command) -> Self::Reply;
    /// Answers a query without changing anything.
    fn query(&self, query: &Self::Query) -> Self::Answer;
    fn snapshot(&self) -> Self::Snapshot;
    fn restore(snapshot: &Self::Snapshot) -> Self;
    /// Same as [`Entity::restore`], from a snapshot nobody needs any more (a cold start
    /// reading files): an entity whose snapshot is itself can skip the copy.
    fn restore_owned(snapshot: Self::Snapshot) -> Self {
        Self::restore(&snapshot)
    }
}

/// What the journal records: commands for many keys, appended together.
pub type Batch<E> = Vec<(<E as Entity>::Key, <E as Entity>::Command)>;
