//! Delivery to a segment's slot: sending to its actor, holding the traffic while it
//! restarts or moves, refusing it when the segment failed, and releasing what was held
//! to the slot's new actor, in order.

use std::collections::VecDeque;

use actix::prelude::*;

use super::{Envelope, Partition, SlotState};
use crate::entity::Entity;
use crate::journal::Lsn;
use crate::segment::{Failure, Segment};
use crate::supervision::DeadLetters;

impl<E: Entity> Partition<E> {
    pub(super) fn deliver(&self, segment: u32, envelope: Envelope<E>) {
        let slot = &self.slots[segment as usize];
        let mut state = slot.state.lock().unwrap_or_else(|p| p.into_inner());
        let envelope = match &mut *state {
            SlotState::Active { addr, .. } => match send(addr, envelope) {
                Ok(()) => return,
                // The actor is gone and its supervisor not yet told: hold the traffic
                // until the restart.
                Err((back, true)) => back,
                // Permits keep data messages below the mailbox's capacity, so this is a
                // bug; refuse rather than stall.
                Err((back, false)) => {
                    tracing::error!(partition = %self.env.partition, segment, "segment mailbox overflow");
                    refuse(&self.env.dead_letters, back, "the segment's mailbox overflowed");
                    return;
                }
            },
            SlotState::Buffering { queue, .. } => {
                queue.push_back(envelope);
                return;
            }
            SlotState::Failed { reason } => {
                refuse(&self.env.dead_letters, envelope, reason);
                return;
            }
        };
        if let SlotState::Active {
            arbiter, generation, ..
        } = *state
        {
            let mut queue = VecDeque::new();
            queue.push_back(envelope);
            *state = SlotState::Buffering {
                queue,
                arbiter,
                generation,
            };
        }
    }

    /// Makes `addr` the slot's actor, sending it the buffered traffic first, in order.
    pub(super) fn activate(&self, segment: u32, addr: Addr<Segment<E>>, arbiter: usize, generation: u64) {
        let slot = &self.slots[segment as usize];
        let mut state = slot.state.lock().unwrap_or_else(|p| p.into_inner());
        let mut queue = match std::mem::replace(
            &mut *state,
            SlotState::Failed {
                reason: String::new(),
            },
        ) {
            SlotState::Buffering { queue, .. } => queue,
            other => {
                *state = other;
                return;
            }
        };
        while let Some(envelope) = queue.pop_front() {
            if let Err((back, _)) = send(&addr, envelope) {
                queue.push_front(back);
                *state = SlotState::Buffering {
                    queue,
                    arbiter,
                    generation,
                };
                return;
            }
        }
        *state = SlotState::Active {
            addr,
            arbiter,
            generation,
        };
    }

    pub(super) fn first_buffered(&self, segment: u32) -> Option<Lsn> {
        let state = self.slots[segment as usize]
            .state
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        match &*state {
            SlotState::Buffering { queue, .. } => queue.iter().find_map(|e| match e {
                Envelope::Deliver(d) => Some(d.lsn),
                Envelope::Ask(_) => None,
            }),
            _ => None,
        }
    }
}

/// Sends without waiting; on failure gives the envelope back, and whether the actor is gone.
fn send<E: Entity>(addr: &Addr<Segment<E>>, envelope: Envelope<E>) -> Result<(), (Envelope<E>, bool)> {
    fn closed<M>(e: &SendError<M>) -> bool {
        matches!(e, SendError::Closed(_))
    }
    match envelope {
        Envelope::Deliver(d) => addr.try_send(d).map_err(|e| {
            let gone = closed(&e);
            (Envelope::Deliver(e.into_inner()), gone)
        }),
        Envelope::Ask(a) => addr.try_send(a).map_err(|e| {
            let gone = closed(&e);
            (Envelope::Ask(e.into_inner()), gone)
        }),
    }
}

/// Answers a message that will not be handled. A refused delivery was journaled already:
/// its commands are marked skipped, so no rebuild applies what the client saw refused.
pub(super) fn refuse<E: Entity>(dead_letters: &DeadLetters<E>, envelope: Envelope<E>, reason: &str) {
    let failure = Failure::Unavailable {
        reason: reason.to_string(),
    };
    match envelope {
        Envelope::Deliver(d) => {
            dead_letters.skip(d.lsn, &d.items);
            let _ = d
                .reply
                .send(d.items.iter().map(|_| Err(failure.clone())).collect());
        }
        Envelope::Ask(a) => {
            let _ = a.reply.send(Err(failure));
        }
    }
}
