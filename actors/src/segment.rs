//! The segment actor: one actix actor hosting many entities as plain records.
//!
//! A segment applies command batches in journal order, answers queries, takes snapshots,
//! and hands its whole state over when it moves to another arbiter. Each command runs
//! inside `catch_unwind`: when one panics, only its entity is rebuilt (from the latest
//! snapshot plus the journal), the command is retried a bounded number of times, then
//! dead-lettered, and the other entities carry on. A segment that cannot rebuild, or
//! dies with its arbiter thread, tells its partition supervisor, which restarts it.

use std::hash::BuildHasher;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use actix::prelude::*;
use tokio::sync::oneshot;

use crate::entity::{Batch, Entity};
use crate::journal::{Journal, Lsn};
use crate::snapshot::{SnapshotStore, VisitOnce};
use crate::supervision::{DeadLetters, SupervisionConfig};

/// Test-only fault injection: when it returns `true` for a command's key and LSN, the
/// command panics instead of being applied (the first time it is tried).
pub type FaultHook<K> = Arc<dyn Fn(&K, Lsn) -> bool + Send + Sync>;

/// Why a command or query did not succeed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Failure {
    /// The command kept panicking and is in the dead-letter queue.
    DeadLettered { reason: String },
    /// The command was already applied by a restarted segment's recovery; sending the
    /// batch again is safe and reports its events as duplicates.
    Replayed,
    /// The query panicked.
    Panicked { reason: String },
    /// The segment is marked failed (it restarted too often) and takes no traffic.
    Unavailable { reason: String },
}

/// What the partition shares with each of its segment actors.
pub struct SegmentEnv<E: Entity> {
    pub partition: String,
    pub segments: u32,
    pub journal: Arc<dyn Journal<Batch<E>>>,
    pub snapshots: Arc<dyn SnapshotStore<E>>,
    pub dead_letters: Arc<DeadLetters<E>>,
    pub supervision: SupervisionConfig,
    pub fault_hook: Option<FaultHook<E::Key>>,
}

impl<E: Entity> SegmentEnv<E> {
    /// The segment that owns `key`, for ever.
    pub fn segment_of(&self, key: &E::Key) -> u32 {
        (E::shard(key) % u64::from(self.segments)) as u32
    }
}

/// Load counters of one segment, read by the router.
#[derive(Debug, Default)]
pub struct SegmentStats {
    /// Commands and queries handled.
    pub handled: AtomicU64,
    /// Nanoseconds spent handling them.
    pub busy_ns: AtomicU64,
    /// Messages admitted and not yet handled: the mailbox depth.
    pub inflight: AtomicUsize,
}

/// A place in a segment's bounded mailbox, released when the message is dropped.
pub struct Permit {
    stats: Arc<SegmentStats>,
}

impl Permit {
    /// Takes a place if fewer than `capacity` messages are in flight.
    pub fn try_acquire(stats: &Arc<SegmentStats>, capacity: usize) -> Option<Permit> {
        stats
            .inflight
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < capacity).then_some(n + 1)
            })
            .ok()
            .map(|_| Permit { stats: stats.clone() })
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.stats.inflight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Outcome of each command of a delivery, in the delivery's order.
pub type Outcomes<R> = Vec<Result<R, Failure>>;

/// Commands of one journal record for this segment: `record[i]` for each `i` in `items`.
pub struct Deliver<E: Entity> {
    pub lsn: Lsn,
    pub record: Arc<Batch<E>>,
    pub items: Vec<u32>,
    pub reply: oneshot::Sender<Outcomes<E::Reply>>,
    pub permit: Permit,
}

impl<E: Entity> Message for Deliver<E> {
    type Result = ();
}

/// A query for one entity; `None` when the entity does not exist.
pub struct Ask<E: Entity> {
    pub key: E::Key,
    pub query: E::Query,
    pub reply: oneshot::Sender<Result<Option<E::Answer>, Failure>>,
    pub permit: Permit,
}

impl<E: Entity> Message for Ask<E> {
    type Result = ();
}

/// Asks the segment to save a snapshot; replies with the LSN after which the journal
/// must keep its records (see [`SnapshotStore::save`]). The LSN given is the
/// journal's durable LSN at sending: every record up to it has been delivered before
/// this message, so the snapshot reflects the journal up to it (or to later ones applied).
pub struct TakeSnapshot(pub Lsn);
impl Message for TakeSnapshot {
    type Result = Result<Lsn, String>;
}

/// Runs a read-only function over every entity of the segment, on the segment's own
/// thread and between two messages, so it sees a consistent state. A panic in it is
/// caught and answered as an error; the segment goes on.
pub struct Visit<E: Entity>(pub VisitOnce<E>);
impl<E: Entity> Message for Visit<E> {
    type Result = Result<(), String>;
}

/// Asks the segment to hand over its state and stop: the last message it handles
/// before a move. Every message queued before it is handled first.
pub struct Handoff<E: Entity>(pub oneshot::Sender<SegmentState<E>>);

/// How many commands a segment prefetches for at a time (see [`Entity::prefetch`]):
/// enough to keep the processor's outstanding misses busy, few enough that the first
/// lines fetched are still in the cache when their command is applied.
const PREFETCH_GROUP: usize = 16;

/// The map of a segment's entities (a fast hash, seeded per process).
pub type Entities<E> = hashbrown::HashMap<<E as Entity>::Key, E, foldhash::fast::RandomState>;

/// A segment's state in transit between two actors.
pub struct SegmentState<E: Entity> {
    pub entities: Entities<E>,
    /// The LSN of the last record delivered to the segment.
    pub applied: Lsn,
}

impl<E: Entity> Message for Handoff<E> {
    type Result = ();
}

/// Sent to the supervisor when a segment actor goes away without handing off.
#[derive(Message)]
#[rtype(result = "()")]
pub struct SegmentDown {
    pub segment: u32,
    pub generation: u64,
    pub reason: String,
}

/// The actor.
pub struct Segment<E: Entity> {
    index: u32,
    generation: u64,
    env: Arc<SegmentEnv<E>>,
    stats: Arc<SegmentStats>,
    state: SegmentState<E>,
    capacity: usize,
    supervisor: Option<Recipient<SegmentDown>>,
    /// Set once the actor stops on purpose (handoff, or escalation already reported).
    quiet: bool,
}

/// How a new segment actor gets its state.
pub enum Origin<E: Entity> {
    /// Handed over by the previous actor of a move.
    Handed(SegmentState<E>),
    /// Recovered from the latest snapshot plus the journal, stopping before `stop_at`
    /// (the first LSN waiting in the slot's buffer) when it gives one.
    Recover {
        stop_at: Box<dyn Fn() -> Option<Lsn> + Send>,
    },
}

impl<E: Entity> Segment<E> {
    pub fn new(
        index: u32,
        generation: u64,
        env: Arc<SegmentEnv<E>>,
        stats: Arc<SegmentStats>,
        capacity: usize,
        supervisor: Option<Recipient<SegmentDown>>,
        origin: Origin<E>,
    ) -> Self {
        let state = match origin {
            Origin::Handed(state) => state,
            Origin::Recover { stop_at } => recover(index, &env, stop_at.as_ref()),
        };
        Segment {
            index,
            generation,
            env,
            stats,
            state,
            capacity,
            supervisor,
            quiet: false,
        }
    }

    /// Runs the entity's prefetch rounds over a group of commands (see
    /// [`Entity::prefetch`]). The lookups of the first round are independent of each
    /// other, so the processor overlaps their misses too.
    /// `hashes[j]` is the hash of `group[j]`'s key in the map of entities.
    /// Answers the notes the rounds left, one per command.
    fn prefetch(&self, record: &Batch<E>, group: &[u32], hashes: &[u64]) -> [u64; PREFETCH_GROUP] {
        let mut found: [Option<&E>; PREFETCH_GROUP] = [None; PREFETCH_GROUP];
        for ((slot, &i), &hash) in found.iter_mut().zip(group).zip(hashes) {
            *slot = record.get(i as usize).and_then(|(key, _)| {
                let entry = self.state.entities.raw_entry().from_key_hashed_nocheck(hash, key);
                entry.map(|(_, entity)| entity)
            });
        }
        let mut notes = [0u64; PREFETCH_GROUP];
        for round in 0..E::PREFETCH_ROUNDS {
            for ((entity, note), &i) in found.iter().zip(&mut notes).zip(group) {
                if let (Some(entity), Some((_, command))) = (entity, record.get(i as usize)) {
                    entity.prefetch(command, round, note);
                }
            }
        }
        notes
    }

    /// Applies command `index` of `record`, whose key hashes to `hash` in the map of
    /// entities, with the note its prefetch left (see [`Entity::apply_noted`]).
    fn apply_one(
        &mut self,
        lsn: Lsn,
        record: &Arc<Batch<E>>,
        index: u32,
        hash: u64,
        note: u64,
    ) -> Result<E::Reply, Failure> {
        let (key, command) = &record[index as usize];
        let mut attempts = 0u32;
        loop {
            let (_, entity) = self
                .state
                .entities
                .raw_entry_mut()
                .from_key_hashed_nocheck(hash, key)
                .or_insert_with(|| (key.clone(), E::create(key)));
            let inject = attempts == 0 && self.env.fault_hook.as_ref().is_some_and(|hook| hook(key, lsn));
            let result = catch_unwind(AssertUnwindSafe(|| {
                if inject {
                    panic!("injected fault (key {key:?}, lsn {lsn})");
                }
                entity.apply_noted(command, note)
            }));
            let reason = match result {
                Ok(reply) => return Ok(reply),
                Err(panic) => panic_message(panic.as_ref()),
            };
            attempts += 1;
            tracing::warn!(
                partition = %self.env.partition, segment = self.index, lsn, key = ?key, attempts, %reason,
                "command panicked; rebuilding its entity"
            );
            match rebuild::<E>(&self.env, self.index, key, lsn, index) {
                Ok(entity) => {
                    self.state.entities.insert(key.clone(), entity);
                }
                Err(e) => {
                    // The entity cannot be trusted: take it out and let the supervisor
                    // restart the whole segment from its snapshot and the journal.
                    self.state.entities.remove(key);
                    panic!("entity {key:?} of segment {} cannot be rebuilt: {e}", self.index);
                }
            }
            if attempts > self.env.supervision.max_retries {
                tracing::error!(
                    partition = %self.env.partition, segment = self.index, lsn, key = ?key, %reason,
                    "command dead-lettered after {attempts} attempts"
                );
                self.env
                    .dead_letters
                    .push(self.index, lsn, record.clone(), index, reason.clone(), attempts);
                return Err(Failure::DeadLettered { reason });
            }
        }
    }
}

impl<E: Entity> Actor for Segment<E> {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        // Permits bound the data messages; leave room for control messages.
        ctx.set_mailbox_capacity(self.capacity + 64);
    }
}

impl<E: Entity> Drop for Segment<E> {
    fn drop(&mut self) {
        if self.quiet {
            return;
        }
        let reason = if std::thread::panicking() {
            "its arbiter thread panicked"
        } else {
            "it stopped"
        };
        if let Some(supervisor) = &self.supervisor {
            supervisor.do_send(SegmentDown {
                segment: self.index,
                generation: self.generation,
                reason: reason.into(),
            });
        }
    }
}

impl<E: Entity> Handler<Deliver<E>> for Segment<E> {
    type Result = ();

    fn handle(&mut self, msg: Deliver<E>, _: &mut Context<Self>) {
        let started = Instant::now();
        let outcomes = if msg.lsn <= self.state.applied {
            msg.items.iter().map(|_| Err(Failure::Replayed)).collect()
        } else {
            let mut outcomes: Outcomes<E::Reply> = Vec::with_capacity(msg.items.len());
            for group in msg.items.chunks(PREFETCH_GROUP) {
                // Each key is hashed once, for the prefetch's lookup and the apply's.
                let mut hashes = [0u64; PREFETCH_GROUP];
                for (hash, &i) in hashes.iter_mut().zip(group) {
                    *hash = self.state.entities.hasher().hash_one(&msg.record[i as usize].0);
                }
                // A prefetch must not panic; if one did, the commands go without notes
                // (hints only), so the segment and its arbiter live on.
                let notes = if E::PREFETCH_ROUNDS > 0 {
                    catch_unwind(AssertUnwindSafe(|| self.prefetch(&msg.record, group, &hashes)))
                        .unwrap_or_else(|panic| {
                            tracing::warn!(
                                partition = %self.env.partition, segment = self.index,
                                reason = %panic_message(panic.as_ref()),
                                "a prefetch panicked; applying without its notes"
                            );
                            [0; PREFETCH_GROUP]
                        })
                } else {
                    [0; PREFETCH_GROUP]
                };
                for ((&i, &hash), &note) in group.iter().zip(&hashes).zip(&notes) {
                    outcomes.push(self.apply_one(msg.lsn, &msg.record, i, hash, note));
                }
            }
            self.state.applied = msg.lsn;
            outcomes
        };
        self.stats
            .handled
            .fetch_add(msg.items.len() as u64, Ordering::Relaxed);
        let busy = started.elapsed();
        crate::latency::APPLY.record(busy);
        self.stats
            .busy_ns
            .fetch_add(busy.as_nanos() as u64, Ordering::Relaxed);
        // The mailbox place is given back before the answer, so a caller that sends its
        // next message as soon as it is answered finds the place free.
        drop(msg.permit);
        let _ = msg.reply.send(outcomes);
    }
}

impl<E: Entity> Handler<Ask<E>> for Segment<E> {
    type Result = ();

    fn handle(&mut self, msg: Ask<E>, _: &mut Context<Self>) {
        let started = Instant::now();
        let answer = match self.state.entities.get(&msg.key) {
            None => Ok(None),
            Some(entity) => catch_unwind(AssertUnwindSafe(|| entity.query(&msg.query)))
                .map(Some)
                .map_err(|p| Failure::Panicked {
                    reason: panic_message(p.as_ref()),
                }),
        };
        self.stats.handled.fetch_add(1, Ordering::Relaxed);
        self.stats
            .busy_ns
            .fetch_add(started.elapsed().as_nanos() as u64, Ordering::Relaxed);
        drop(msg.permit);
        let _ = msg.reply.send(answer);
    }
}

impl<E: Entity> Handler<TakeSnapshot> for Segment<E> {
    type Result = Result<Lsn, String>;

    fn handle(&mut self, msg: TakeSnapshot, _: &mut Context<Self>) -> Result<Lsn, String> {
        let started = Instant::now();
        let lsn = self.state.applied.max(msg.0);
        let keep_after = self
            .env
            .snapshots
            .save(self.index, lsn, &mut self.state.entities.iter())?;
        tracing::debug!(
            partition = %self.env.partition, segment = self.index, lsn,
            entities = self.state.entities.len(),
            elapsed_ms = started.elapsed().as_millis() as u64, "snapshot saved"
        );
        Ok(keep_after)
    }
}

impl<E: Entity> Handler<Visit<E>> for Segment<E> {
    type Result = Result<(), String>;

    fn handle(&mut self, msg: Visit<E>, _: &mut Context<Self>) -> Result<(), String> {
        let started = Instant::now();
        let index = self.index;
        let entities = &self.state.entities;
        let result = catch_unwind(AssertUnwindSafe(move || (msg.0)(index, &mut entities.iter())))
            .map_err(|p| format!("visiting segment {index} panicked: {}", panic_message(p.as_ref())));
        self.stats
            .busy_ns
            .fetch_add(started.elapsed().as_nanos() as u64, Ordering::Relaxed);
        result
    }
}

impl<E: Entity> Handler<Handoff<E>> for Segment<E> {
    type Result = ();

    fn handle(&mut self, msg: Handoff<E>, ctx: &mut Context<Self>) {
        let state = std::mem::replace(
            &mut self.state,
            SegmentState {
                entities: Entities::<E>::default(),
                applied: 0,
            },
        );
        self.quiet = true;
        let _ = msg.0.send(state);
        ctx.stop();
    }
}

/// Rebuilds one entity: its state in the latest snapshot (or a new one), then every
/// journaled command for its key after the snapshot and before `(lsn, index)`, except
/// dead-lettered ones.
fn rebuild<E: Entity>(
    env: &SegmentEnv<E>,
    segment: u32,
    key: &E::Key,
    lsn: Lsn,
    index: u32,
) -> Result<E, String> {
    let snapshot = env.snapshots.load(segment)?;
    let (from, mut entity) = match snapshot
        .as_ref()
        .and_then(|s| s.entities.get(key).map(|e| (s.lsn, e)))
    {
        Some((from, state)) => (from, E::restore(state)),
        None => (snapshot.as_ref().map_or(0, |s| s.lsn), E::create(key)),
    };
    let mut failed = None;
    env.journal
        .replay(from, &mut |at, record| {
            if at > lsn {
                return false;
            }
            for (i, (k, command)) in record.iter().enumerate() {
                if at == lsn && i as u32 >= index {
                    break;
                }
                if k == key && !env.dead_letters.is_skipped(at, i as u32) {
                    if let Err(p) = catch_unwind(AssertUnwindSafe(|| entity.apply(command))) {
                        failed = Some(format!(
                            "replaying LSN {at} panicked: {}",
                            panic_message(p.as_ref())
                        ));
                        return false;
                    }
                }
            }
            true
        })
        .map_err(|e| e.to_string())?;
    match failed {
        Some(e) => Err(e),
        None => Ok(entity),
    }
}

/// A segment's state while it is being recovered.
pub struct Recovery<E: Entity> {
    index: u32,
    started: Instant,
    state: SegmentState<E>,
    /// The LSN of the snapshot it started from (0: none).
    snapshot_lsn: Lsn,
    replayed: u64,
    /// Entities whose command panicked during replay: rebuilt at the end.
    broken: Vec<E::Key>,
}

impl<E: Entity> Recovery<E> {
    /// Starts from the segment's latest good snapshot (or from nothing). Panics when
    /// snapshots exist and none can be read: recovering without them would lose state.
    pub fn from_snapshot(index: u32, env: &SegmentEnv<E>) -> Self {
        let started = Instant::now();
        let snapshot = env
            .snapshots
            .load(index)
            .unwrap_or_else(|e| panic!("segment {index} of partition {}: {e}", env.partition));
        let mut state = SegmentState {
            entities: Entities::<E>::default(),
            applied: 0,
        };
        if let Some(s) = snapshot {
            state.applied = s.lsn;
            state.entities = match Arc::try_unwrap(s) {
                Ok(owned) => owned
                    .entities
                    .into_iter()
                    .map(|(k, e)| (k, E::restore_owned(e)))
                    .collect(),
                Err(shared) => shared
                    .entities
                    .iter()
                    .map(|(k, e)| (k.clone(), E::restore(e)))
                    .collect(),
            };
        }
        Recovery {
            index,
            started,
            snapshot_lsn: state.applied,
            state,
            replayed: 0,
            broken: Vec::new(),
        }
    }

    /// The LSN after which the journal has records this segment still needs.
    pub fn applied(&self) -> Lsn {
        self.state.applied
    }

    /// Applies this segment's commands of the journal record at `lsn` (one it has not
    /// applied yet).
    pub fn apply(&mut self, env: &SegmentEnv<E>, lsn: Lsn, record: &Arc<Batch<E>>) {
        let mut touched = false;
        for (i, (key, command)) in record.iter().enumerate() {
            if env.segment_of(key) != self.index || env.dead_letters.is_skipped(lsn, i as u32) {
                continue;
            }
            touched = true;
            let entity = self
                .state
                .entities
                .entry(key.clone())
                .or_insert_with(|| E::create(key));
            if let Err(p) = catch_unwind(AssertUnwindSafe(|| entity.apply(command))) {
                // It panicked when first applied too and would have been dead-lettered,
                // unless that was lost with the process: dead-letter it now, and rebuild
                // the entity once the journal is no longer being read.
                let reason = panic_message(p.as_ref());
                tracing::error!(
                    partition = %env.partition, segment = self.index, lsn, key = ?key, %reason,
                    "command panicked during recovery; dead-lettered"
                );
                env.dead_letters
                    .push(self.index, lsn, record.clone(), i as u32, reason, 1);
                self.broken.push(key.clone());
            }
            self.replayed += 1;
        }
        if touched {
            self.state.applied = lsn;
        }
    }

    /// Rebuilds the entities that panicked, and hands over the state.
    pub fn finish(mut self, env: &SegmentEnv<E>) -> SegmentState<E> {
        let index = self.index;
        for key in std::mem::take(&mut self.broken) {
            match rebuild::<E>(env, index, &key, self.state.applied + 1, 0) {
                Ok(entity) => {
                    self.state.entities.insert(key, entity);
                }
                Err(e) => panic!(
                    "segment {index} of partition {}: entity {key:?} cannot be rebuilt: {e}",
                    env.partition
                ),
            }
        }
        tracing::info!(
            partition = %env.partition,
            segment = index,
            snapshot_lsn = self.snapshot_lsn,
            replayed = self.replayed,
            entities = self.state.entities.len(),
            elapsed_ms = self.started.elapsed().as_millis() as u64,
            "segment recovered"
        );
        self.state
    }
}

/// Recovers every segment of a partition at once: their snapshots, loaded on as many
/// threads as there are cores, then one pass over the journal from the oldest snapshot's
/// LSN, each record applied to the segments that have not seen it. Panics (like
/// [`recover`]) rather than return partial state.
pub fn recover_all<E: Entity>(env: &SegmentEnv<E>) -> Vec<SegmentState<E>> {
    let started = Instant::now();
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(env.segments as usize);
    let mut recoveries: Vec<Recovery<E>> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|t| {
                scope.spawn(move || {
                    (t as u32..env.segments)
                        .step_by(threads)
                        .map(|i| Recovery::from_snapshot(i, env))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        let mut all: Vec<Recovery<E>> = Vec::with_capacity(env.segments as usize);
        for w in workers {
            match w.join() {
                Ok(part) => all.extend(part),
                Err(p) => std::panic::resume_unwind(p),
            }
        }
        all
    });
    recoveries.sort_by_key(|r| r.index);
    let snapshots_loaded = started.elapsed();
    let from = recoveries.iter().map(Recovery::applied).min().unwrap_or(0);
    let mut records = 0u64;
    let result = env.journal.replay(from, &mut |lsn, record| {
        records += 1;
        for (key, _) in record.iter() {
            // `apply` takes all of a segment's commands in the record and moves its
            // `applied` to `lsn`, so each segment applies a record once.
            let r = &mut recoveries[env.segment_of(key) as usize];
            if r.applied() < lsn {
                r.apply(env, lsn, record);
            }
        }
        true
    });
    if let Err(e) = result {
        panic!("partition {}: journal replay failed: {e}", env.partition);
    }
    tracing::info!(
        partition = %env.partition,
        segments = env.segments,
        snapshots_ms = snapshots_loaded.as_millis() as u64,
        journal_records = records,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "partition state recovered in one pass over the journal"
    );
    recoveries.into_iter().map(|r| r.finish(env)).collect()
}

/// Recovers a segment's state: the latest snapshot, then the journal after it.
fn recover<E: Entity>(index: u32, env: &SegmentEnv<E>, stop_at: &dyn Fn() -> Option<Lsn>) -> SegmentState<E> {
    let mut recovery = Recovery::from_snapshot(index, env);
    let result = env.journal.replay(recovery.applied(), &mut |lsn, record| {
        if stop_at().is_some_and(|stop| lsn >= stop) {
            return false;
        }
        recovery.apply(env, lsn, record);
        true
    });
    if let Err(e) = result {
        // Never serve partial state: the actor does not start, and supervision restarts
        // it (and marks it failed past the restart intensity, with an alert).
        panic!(
            "segment {index} of partition {}: journal replay failed: {e}",
            env.partition
        );
    }
    recovery.finish(env)
}

/// The message of a panic payload.
pub fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "panic with a non-string payload".into()
    }
}
