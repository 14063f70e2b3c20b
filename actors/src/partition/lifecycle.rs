//! A segment's life: launching it (recovered from snapshot and journal, or handed its
//! state), restarting it within the restart intensity or marking it failed, moving it
//! between arbiters, and the supervisor actor that hears when one went away.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use actix::prelude::*;
use tokio::sync::oneshot;

use super::delivery::refuse;
use super::{Alert, Partition, SlotState};
use crate::entity::Entity;
use crate::segment::{Handoff, Origin, Segment, SegmentDown, SegmentState};

impl<E: Entity> Partition<E> {
    /// Starts a segment actor on the slot's arbiter with `state`, or recovered from
    /// snapshot + journal, then releases the traffic buffered meanwhile.
    pub(super) async fn launch(self: Arc<Self>, segment: u32, state: Option<SegmentState<E>>) {
        let slot = &self.slots[segment as usize];
        let (arbiter, generation) = {
            let mut state = slot.state.lock().unwrap_or_else(|p| p.into_inner());
            let (arbiter, generation, queue) = match std::mem::replace(
                &mut *state,
                SlotState::Failed {
                    reason: String::new(),
                },
            ) {
                SlotState::Active {
                    arbiter, generation, ..
                } => (arbiter, generation + 1, VecDeque::new()),
                SlotState::Buffering {
                    arbiter,
                    generation,
                    queue,
                } => (arbiter, generation + 1, queue),
                SlotState::Failed { .. } => (segment as usize % self.pool.len(), 1, VecDeque::new()),
            };
            *state = SlotState::Buffering {
                queue,
                arbiter,
                generation,
            };
            (arbiter, generation)
        };
        let origin = match state {
            Some(state) => Origin::Handed(state),
            None => {
                let partition = self.clone();
                Origin::Recover {
                    stop_at: Box::new(move || partition.first_buffered(segment)),
                }
            }
        };
        match self.spawn_segment(segment, generation, arbiter, origin).await {
            Some(addr) => self.activate(segment, addr, arbiter, generation),
            None => self.report_down(segment, generation, "recovery failed"),
        }
    }

    /// Tells the supervisor that the slot's actor of `generation` is gone, so that it is
    /// restarted (within the restart intensity) rather than left buffering.
    fn report_down(&self, segment: u32, generation: u64, reason: &str) {
        tracing::error!(partition = %self.env.partition, segment, %reason, "segment actor did not start");
        if let Some(supervisor) = self.supervisor.get() {
            supervisor.do_send(SegmentDown {
                segment,
                generation,
                reason: reason.into(),
            });
        }
    }

    /// Starts a segment actor on `arbiter` and waits until it holds its state; `None`
    /// when it never came up (its recovery panicked, or its arbiter died first).
    async fn spawn_segment(
        &self,
        segment: u32,
        generation: u64,
        arbiter: usize,
        origin: Origin<E>,
    ) -> Option<Addr<Segment<E>>> {
        let env = self.env.clone();
        let stats = self.slots[segment as usize].stats.clone();
        let capacity = self.capacity;
        let supervisor = self.supervisor.get().map(|s| s.clone().recipient());
        let (ready_tx, ready_rx) = oneshot::channel();
        let handle = self.pool.handle(arbiter);
        let addr = Segment::start_in_arbiter(&handle, move |ctx: &mut Context<Segment<E>>| {
            ctx.set_mailbox_capacity(capacity + 64);
            let segment = Segment::new(segment, generation, env, stats, capacity, supervisor, origin);
            let _ = ready_tx.send(());
            segment
        });
        ready_rx.await.ok().map(|()| addr)
    }

    /// Restarts a segment whose actor went away, unless it restarted too often lately.
    async fn restart(self: Arc<Self>, segment: u32, generation: u64, reason: String) {
        if self.stopping.load(Ordering::Acquire) {
            return;
        }
        let slot = &self.slots[segment as usize];
        let _op = slot.operation.lock().await;
        let current = match &*slot.state.lock().unwrap_or_else(|p| p.into_inner()) {
            SlotState::Active { generation, .. } | SlotState::Buffering { generation, .. } => *generation,
            SlotState::Failed { .. } => return,
        };
        if current != generation {
            return; // An older actor; the slot has moved on.
        }
        let allowed = slot
            .intensity
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .allow(Instant::now());
        if !allowed {
            let s = &self.env.supervision;
            let message = format!(
                "segment {segment} restarted more than {} times in {:?} (last: {reason}); marked failed, its traffic is refused",
                s.max_restarts, s.restart_window
            );
            tracing::error!(partition = %self.env.partition, segment, %message, "segment failed");
            slot.failed.store(true, Ordering::Release);
            let old = std::mem::replace(
                &mut *slot.state.lock().unwrap_or_else(|p| p.into_inner()),
                SlotState::Failed {
                    reason: message.clone(),
                },
            );
            if let SlotState::Buffering { queue, .. } = old {
                queue
                    .into_iter()
                    .for_each(|e| refuse(&self.env.dead_letters, e, &message));
            }
            self.alerts.lock().unwrap_or_else(|p| p.into_inner()).push(Alert {
                partition: self.env.partition.clone(),
                segment,
                message,
            });
            return;
        }
        self.restarts.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(partition = %self.env.partition, segment, %reason, "restarting segment from snapshot and journal");
        // A dead arbiter is replaced by the pool when the segment is spawned on it.
        self.clone().launch(segment, None).await;
    }

    /// Moves a segment to `to` (an arbiter index) without losing, duplicating or
    /// reordering anything: buffer its traffic, let it finish its mailbox, hand its state
    /// to a new actor on the target arbiter, swap the address, release the buffer.
    pub async fn move_segment(self: Arc<Self>, segment: u32, to: usize) -> Result<(), String> {
        if to >= self.pool.len() {
            return Err(format!("no arbiter {to}; the pool has {}", self.pool.len()));
        }
        let slot = &self.slots[segment as usize];
        let _op = slot.operation.lock().await;
        let (old, from, generation) = {
            let mut state = slot.state.lock().unwrap_or_else(|p| p.into_inner());
            match &*state {
                SlotState::Active {
                    addr,
                    arbiter,
                    generation,
                } if *arbiter != to => {
                    let taken = (addr.clone(), *arbiter, *generation);
                    *state = SlotState::Buffering {
                        queue: VecDeque::new(),
                        arbiter: *arbiter,
                        generation: *generation,
                    };
                    taken
                }
                SlotState::Active { .. } => return Ok(()),
                _ => return Err(format!("segment {segment} is not running")),
            }
        };
        let started = Instant::now();
        let (tx, rx) = oneshot::channel();
        let handed = match old.send(Handoff(tx)).await {
            Ok(()) => rx.await.ok(),
            Err(_) => None,
        };
        let Some(state) = handed else {
            // The actor died meanwhile: its SegmentDown triggers a restart, which
            // recovers from snapshot and journal and releases the buffer.
            return Err(format!(
                "segment {segment} stopped during the move; it is being restarted"
            ));
        };
        let generation = generation + 1;
        let Some(addr) = self
            .spawn_segment(segment, generation, to, Origin::Handed(state))
            .await
        else {
            // The handed state is gone with the failed start: recover from the journal.
            if let SlotState::Buffering { generation: g, .. } =
                &mut *slot.state.lock().unwrap_or_else(|p| p.into_inner())
            {
                *g = generation;
            }
            self.report_down(segment, generation, "the moved segment did not start");
            return Err(format!(
                "segment {segment} did not start on arbiter {to}; it is being recovered"
            ));
        };
        self.activate(segment, addr, to, generation);
        self.moves.fetch_add(1, Ordering::Relaxed);
        tracing::info!(
            partition = %self.env.partition, segment, from, to,
            elapsed_us = started.elapsed().as_micros() as u64, "segment moved"
        );
        Ok(())
    }
}

/// The partition's supervisor: restarts segments that go away.
pub struct PartitionSupervisor<E: Entity> {
    pub(super) partition: Arc<Partition<E>>,
}

impl<E: Entity> Actor for PartitionSupervisor<E> {
    type Context = Context<Self>;
}

impl<E: Entity> Handler<SegmentDown> for PartitionSupervisor<E> {
    type Result = ();

    fn handle(&mut self, msg: SegmentDown, _: &mut Context<Self>) {
        let partition = self.partition.clone();
        actix_rt::spawn(partition.restart(msg.segment, msg.generation, msg.reason));
    }
}
