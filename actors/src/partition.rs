//! A partition: its segments, the path that admits, journals and delivers commands to
//! them, and the supervisor actor that starts, restarts and moves them.
//!
//! Each segment sits in a [`Slot`] that is either active (an actor address), buffering
//! (during a restart or a move, traffic waits in order), or failed. Delivery happens in
//! journal order from the journal's `on_durable` callback, so every segment sees its
//! commands in LSN order, across moves and restarts.

use std::collections::VecDeque;
use std::future::Future;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use actix::prelude::*;
use tokio::sync::oneshot;

use crate::arbiters::ArbiterPool;
use crate::entity::{Batch, Entity};
use crate::journal::{Journal, JournalError, Lsn};
use crate::segment::{
    panic_message, recover_all, Ask, Deliver, Failure, FaultHook, Outcomes, Permit, Segment, SegmentEnv,
    SegmentStats, TakeSnapshot, Visit,
};
use crate::snapshot::{SnapshotStore, VisitEach, VisitOnce};
use crate::supervision::{DeadLetters, RestartIntensity, SupervisionConfig};

mod delivery;
mod lifecycle;

pub use lifecycle::PartitionSupervisor;

/// How a partition's runtime is laid out.
#[derive(Clone, Debug)]
pub struct PartitionConfig {
    pub name: String,
    /// Number of segments; fixed for the partition's life (keys map to segments by hash).
    pub segments: u32,
    /// Messages admitted per segment and not yet handled; past it, submissions are refused.
    pub mailbox_capacity: usize,
    pub supervision: SupervisionConfig,
}

/// Why a submission or a query was refused or did not complete.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SubmitError {
    /// A segment's mailbox is full: try again later. Nothing was journaled.
    #[error("segment {segment} of partition {partition} is busy; try again later")]
    Busy { partition: String, segment: u32 },
    /// A segment is marked failed. Nothing was journaled.
    #[error("segment {segment} of partition {partition} is unavailable: {reason}")]
    Unavailable {
        partition: String,
        segment: u32,
        reason: String,
    },
    /// The journal refused the batch: nothing of it is acknowledged.
    #[error("{0}")]
    Journal(JournalError),
    /// A segment went away before answering. The batch is journaled and will be applied
    /// by the segment's recovery; sending it again is safe.
    #[error("a segment restarted before answering; the batch is journaled and safe to send again")]
    Interrupted,
}

enum Envelope<E: Entity> {
    Deliver(Deliver<E>),
    Ask(Ask<E>),
}

enum SlotState<E: Entity> {
    Active {
        addr: Addr<Segment<E>>,
        arbiter: usize,
        generation: u64,
    },
    Buffering {
        queue: VecDeque<Envelope<E>>,
        arbiter: usize,
        generation: u64,
    },
    Failed {
        reason: String,
    },
}

struct Slot<E: Entity> {
    state: Mutex<SlotState<E>>,
    stats: Arc<SegmentStats>,
    failed: AtomicBool,
    /// Serialises restarts and moves of this segment.
    operation: tokio::sync::Mutex<()>,
    intensity: Mutex<RestartIntensity>,
}

/// Why a dead letter was not replayed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ReplayError {
    #[error("no dead letter {0}")]
    Unknown(u64),
    #[error("{0}")]
    Submit(SubmitError),
}

/// What one segment looks like from outside.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SegmentInfo {
    pub partition: String,
    pub segment: u32,
    /// The arbiter it runs on; `None` when it is failed.
    pub arbiter: Option<usize>,
    pub state: &'static str,
    pub handled: u64,
    pub busy_ns: u64,
    pub inflight: usize,
}

/// An alert raised by supervision (a segment marked failed).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Alert {
    pub partition: String,
    pub segment: u32,
    pub message: String,
}

/// A running partition. Cheap to share (`Arc`); every method may be called from any
/// thread inside the actix system.
pub struct Partition<E: Entity> {
    env: Arc<SegmentEnv<E>>,
    slots: Vec<Slot<E>>,
    capacity: usize,
    pool: Arc<ArbiterPool>,
    supervisor: OnceLock<Addr<PartitionSupervisor<E>>>,
    restarts: AtomicU64,
    moves: AtomicU64,
    alerts: Mutex<Vec<Alert>>,
    /// Set once the partition is shutting down: segments that stop are not restarted.
    stopping: AtomicBool,
}

impl<E: Entity> Partition<E> {
    /// Starts the partition's supervisor and its segments (each recovered from its
    /// snapshot and the journal), spread over the pool's arbiters. Must run inside an
    /// actix system; resolves once every segment is running.
    pub async fn start(
        config: PartitionConfig,
        journal: Arc<dyn Journal<Batch<E>>>,
        snapshots: Arc<dyn SnapshotStore<E>>,
        pool: Arc<ArbiterPool>,
        fault_hook: Option<FaultHook<E::Key>>,
    ) -> Arc<Partition<E>> {
        assert!(config.segments > 0, "a partition needs at least one segment");
        let env = Arc::new(SegmentEnv {
            partition: config.name.clone(),
            segments: config.segments,
            dead_letters: Arc::new(DeadLetters::kept_in(
                config.supervision.dead_letter_capacity,
                journal.clone(),
            )),
            journal,
            snapshots,
            supervision: config.supervision.clone(),
            fault_hook,
        });
        let slots = (0..config.segments)
            .map(|i| Slot {
                state: Mutex::new(SlotState::Buffering {
                    queue: VecDeque::new(),
                    arbiter: i as usize % pool.len(),
                    generation: 0,
                }),
                stats: Arc::new(SegmentStats::default()),
                failed: AtomicBool::new(false),
                operation: tokio::sync::Mutex::new(()),
                intensity: Mutex::new(RestartIntensity::new(
                    config.supervision.max_restarts,
                    config.supervision.restart_window,
                )),
            })
            .collect();
        let partition = Arc::new(Partition {
            env,
            slots,
            capacity: config.mailbox_capacity,
            pool,
            supervisor: OnceLock::new(),
            restarts: AtomicU64::new(0),
            moves: AtomicU64::new(0),
            alerts: Mutex::new(Vec::new()),
            stopping: AtomicBool::new(false),
        });
        let supervisor = PartitionSupervisor {
            partition: partition.clone(),
        }
        .start();
        let _ = partition.supervisor.set(supervisor);
        // Cold start: every segment from its snapshot, then one pass over the journal for
        // all of them, on threads of their own (this is most of a restart's time).
        let env = partition.env.clone();
        let (tx, rx) = oneshot::channel();
        let recovering = std::thread::Builder::new()
            .name(format!("recover-{}", config.name))
            .spawn(move || {
                let result = catch_unwind(AssertUnwindSafe(|| recover_all(&env)));
                let _ = tx.send(result.map_err(|p| panic_message(p.as_ref())));
            });
        let mut states = match recovering {
            Ok(_) => rx.await.unwrap_or_else(|_| Err("the recovery thread vanished".into())),
            Err(e) => Err(e.to_string()),
        }
        .unwrap_or_else(|e| {
            // Each segment then recovers on its own, and supervision reports the ones that cannot.
            tracing::error!(partition = %config.name, error = %e, "partition recovery failed; recovering segment by segment");
            Vec::new()
        })
        .into_iter();
        for segment in 0..config.segments {
            partition.clone().launch(segment, states.next()).await;
        }
        partition
    }

    /// Shuts supervision down ahead of stopping the arbiters: segments that stop from
    /// now on stay stopped.
    pub fn stop(&self) {
        self.stopping.store(true, Ordering::Release);
    }

    pub fn name(&self) -> &str {
        &self.env.partition
    }

    pub fn segment_count(&self) -> u32 {
        self.env.segments
    }

    /// The segment that owns `key`.
    pub fn segment_of(&self, key: &E::Key) -> u32 {
        self.env.segment_of(key)
    }

    pub fn dead_letters(&self) -> &DeadLetters<E> {
        &self.env.dead_letters
    }

    pub fn journal(&self) -> &Arc<dyn Journal<Batch<E>>> {
        &self.env.journal
    }

    /// Restarts done by supervision so far.
    pub fn restarts(&self) -> u64 {
        self.restarts.load(Ordering::Relaxed)
    }

    /// Segment moves done so far.
    pub fn moves(&self) -> u64 {
        self.moves.load(Ordering::Relaxed)
    }

    pub fn alerts(&self) -> Vec<Alert> {
        self.alerts.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Admits `batch` (refusing it whole when a segment it touches is full or failed),
    /// journals it, delivers each command to its segment, and resolves with each
    /// command's outcome in the batch's order.
    pub fn submit(
        self: &Arc<Self>,
        batch: Batch<E>,
    ) -> Result<impl Future<Output = Result<Outcomes<E::Reply>, SubmitError>>, SubmitError> {
        let total = batch.len();
        let groups = self.groups(&batch);
        // The record keeps each segment's commands together, in their order: a segment
        // then reads its commands one after another (which the processor fetches ahead)
        // instead of every sixteenth of them. Commands of one key keep their order, and
        // commands of different segments never depended on each other's.
        let mut commands: Vec<Option<(E::Key, E::Command)>> = batch.into_iter().map(Some).collect();
        let mut record: Batch<E> = Vec::with_capacity(total);
        let mut admitted = Vec::with_capacity(groups.len());
        let mut waits = Vec::with_capacity(groups.len());
        for (segment, items) in groups {
            let permit = self.admit(segment)?;
            let (tx, rx) = oneshot::channel();
            let start = record.len() as u32;
            record.extend(
                items
                    .iter()
                    .map(|&i| commands[i as usize].take().expect("taken once")),
            );
            admitted.push((segment, (start..record.len() as u32).collect(), tx, permit));
            waits.push((items, rx));
        }
        let batch = record;
        let (journal_tx, journal_rx) = oneshot::channel::<JournalError>();
        let partition = self.clone();
        self.env.journal.append(
            Arc::new(batch),
            Box::new(move |result, record| match result {
                Ok(lsn) => {
                    for (segment, items, reply, permit) in admitted {
                        partition.deliver(
                            segment,
                            Envelope::Deliver(Deliver {
                                lsn,
                                record: record.clone(),
                                items,
                                reply,
                                permit,
                            }),
                        );
                    }
                }
                Err(e) => {
                    let _ = journal_tx.send(e);
                }
            }),
        );
        Ok(gather(total, waits, journal_rx))
    }

    /// The commands of `batch` by segment: each segment it touches, in the order first
    /// touched, with the positions of its commands in the batch.
    fn groups(&self, batch: &Batch<E>) -> Vec<(u32, Vec<u32>)> {
        let mut group_of: Vec<Option<usize>> = vec![None; self.slots.len()];
        let mut groups: Vec<(u32, Vec<u32>)> = Vec::new();
        for (i, (key, _)) in batch.iter().enumerate() {
            let segment = self.env.segment_of(key);
            let g = *group_of[segment as usize].get_or_insert_with(|| {
                groups.push((segment, Vec::new()));
                groups.len() - 1
            });
            groups[g].1.push(i as u32);
        }
        groups
    }

    /// Asks `key`'s entity `query`; `None` when it does not exist.
    pub fn ask(
        self: &Arc<Self>,
        key: E::Key,
        query: E::Query,
    ) -> Result<impl Future<Output = Result<Option<E::Answer>, SubmitError>>, SubmitError> {
        let segment = self.env.segment_of(&key);
        let permit = self.admit(segment)?;
        let (reply, rx) = oneshot::channel();
        self.deliver(
            segment,
            Envelope::Ask(Ask {
                key,
                query,
                reply,
                permit,
            }),
        );
        let partition = self.env.partition.clone();
        Ok(async move {
            match rx.await {
                Ok(Ok(answer)) => Ok(answer),
                Ok(Err(Failure::Unavailable { reason })) => Err(SubmitError::Unavailable {
                    partition,
                    segment,
                    reason,
                }),
                Ok(Err(f)) => Err(SubmitError::Unavailable {
                    partition,
                    segment,
                    reason: format!("{f:?}"),
                }),
                Err(_) => Err(SubmitError::Interrupted),
            }
        })
    }

    fn admit(&self, segment: u32) -> Result<Permit, SubmitError> {
        let slot = &self.slots[segment as usize];
        if slot.failed.load(Ordering::Acquire) {
            let reason = match &*slot.state.lock().unwrap_or_else(|p| p.into_inner()) {
                SlotState::Failed { reason } => reason.clone(),
                _ => "restarting".into(),
            };
            return Err(SubmitError::Unavailable {
                partition: self.env.partition.clone(),
                segment,
                reason,
            });
        }
        Permit::try_acquire(&slot.stats, self.capacity).ok_or_else(|| SubmitError::Busy {
            partition: self.env.partition.clone(),
            segment,
        })
    }

    /// Snapshots every running segment, then lets the journal forget what all of them
    /// have moved past. Resolves with the LSN the journal was truncated to; an error
    /// when a segment could not be snapshotted (nothing is truncated then).
    pub async fn snapshot_all(&self) -> Result<Lsn, String> {
        // Every record up to here has been delivered (delivery happens in journal order,
        // from `on_durable`), so a segment that got none of them is still current as of it.
        let durable = self.env.journal.durable_lsn();
        let mut lowest = Lsn::MAX;
        for (segment, slot) in self.slots.iter().enumerate() {
            let addr = match &*slot.state.lock().unwrap_or_else(|p| p.into_inner()) {
                SlotState::Active { addr, .. } => addr.clone(),
                SlotState::Buffering { .. } => return Err(format!("segment {segment} is moving")),
                SlotState::Failed { reason } => {
                    return Err(format!("segment {segment} has failed: {reason}"))
                }
            };
            let keep_after = addr
                .send(TakeSnapshot(durable))
                .await
                .map_err(|_| format!("segment {segment} stopped before its snapshot"))??;
            lowest = lowest.min(keep_after);
        }
        // A segment's snapshot LSN is the last record delivered to it; records after it
        // that did not touch it are not needed by it, but may be by others, hence the minimum.
        if lowest != Lsn::MAX {
            self.env.journal.truncate(lowest);
        }
        Ok(lowest)
    }

    /// Runs `visit` over every entity of every segment, each segment on its own thread and
    /// all of them at once; resolves when all are done. Fails when a segment is not
    /// running (moving, failed, stopped) or `visit` panicked in one of them.
    pub async fn visit(&self, visit: VisitEach<E>) -> Result<(), String> {
        let mut pending = Vec::with_capacity(self.slots.len());
        for segment in 0..self.slots.len() as u32 {
            let visit = visit.clone();
            pending.push(self.visit_segment(segment, Box::new(move |s, it| visit(s, it)))?);
        }
        for reply in pending {
            reply.await?;
        }
        Ok(())
    }

    /// Queues `visit` for every entity of `segment` (at once: the future only waits for
    /// it to finish). Fails when the segment is not running.
    pub fn visit_segment(
        &self,
        segment: u32,
        visit: VisitOnce<E>,
    ) -> Result<impl Future<Output = Result<(), String>> + use<E>, String> {
        let slot = self
            .slots
            .get(segment as usize)
            .ok_or_else(|| format!("no segment {segment}"))?;
        let addr = match &*slot.state.lock().unwrap_or_else(|p| p.into_inner()) {
            SlotState::Active { addr, .. } => addr.clone(),
            SlotState::Buffering { .. } => return Err(format!("segment {segment} is moving")),
            SlotState::Failed { reason } => return Err(format!("segment {segment} has failed: {reason}")),
        };
        let reply = addr.send(Visit(visit));
        Ok(async move {
            reply
                .await
                .map_err(|_| format!("segment {segment} stopped during the visit"))?
        })
    }

    /// Every segment with its arbiter, state and load counters.
    pub fn segments(&self) -> Vec<SegmentInfo> {
        self.slots
            .iter()
            .enumerate()
            .map(|(i, slot)| {
                let (arbiter, state) = match &*slot.state.lock().unwrap_or_else(|p| p.into_inner()) {
                    SlotState::Active { arbiter, .. } => (Some(*arbiter), "running"),
                    SlotState::Buffering { arbiter, .. } => (Some(*arbiter), "moving"),
                    SlotState::Failed { .. } => (None, "failed"),
                };
                SegmentInfo {
                    partition: self.env.partition.clone(),
                    segment: i as u32,
                    arbiter,
                    state,
                    handled: slot.stats.handled.load(Ordering::Relaxed),
                    busy_ns: slot.stats.busy_ns.load(Ordering::Relaxed),
                    inflight: slot.stats.inflight.load(Ordering::Relaxed),
                }
            })
            .collect()
    }

    /// Replays dead letter `id`: its command is journaled again as a new record and
    /// applied. Resolves with the command's outcome.
    pub async fn replay_dead_letter(
        self: &Arc<Self>,
        id: u64,
    ) -> Result<Result<E::Reply, Failure>, ReplayError>
    where
        E::Key: Clone,
        E::Command: Clone,
    {
        let letter = self.env.dead_letters.take(id).ok_or(ReplayError::Unknown(id))?;
        let batch = vec![(letter.key().clone(), letter.command().clone())];
        let pending = match self.submit(batch) {
            Ok(p) => p,
            Err(e) => {
                // Nothing was journaled: the letter stays in the queue.
                self.env.dead_letters.put_back(letter);
                return Err(ReplayError::Submit(e));
            }
        };
        let mut outcomes = pending.await.map_err(ReplayError::Submit)?;
        Ok(outcomes.pop().expect("one command, one outcome"))
    }
}

/// Waits for the segments' replies to a submitted batch (`waits`: the positions of a
/// segment's commands in the batch, and its reply), and puts the outcomes back in the
/// batch's order.
async fn gather<R>(
    total: usize,
    waits: Vec<(Vec<u32>, oneshot::Receiver<Outcomes<R>>)>,
    mut journal_rx: oneshot::Receiver<JournalError>,
) -> Result<Outcomes<R>, SubmitError> {
    let mut outcomes: Vec<Option<Result<R, Failure>>> = (0..total).map(|_| None).collect();
    for (items, rx) in waits {
        match rx.await {
            Ok(results) => {
                for (i, r) in items.into_iter().zip(results) {
                    outcomes[i as usize] = Some(r);
                }
            }
            Err(_) => {
                return Err(match journal_rx.try_recv() {
                    Ok(e) => SubmitError::Journal(e),
                    Err(_) => SubmitError::Interrupted,
                })
            }
        }
    }
    Ok(outcomes
        .into_iter()
        .map(|o| o.expect("every command has an outcome"))
        .collect())
}
