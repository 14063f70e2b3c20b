//! The router actor that rebalances segments across the arbiter pool.
//!
//! Segment actors run on a pool of arbiters ([`ArbiterPool`]). The router samples every segment's load (messages handled and time busy per second,
//! mailbox depth) and, when the busiest arbiter's load exceeds the least busy one's by a
//! configured factor, moves at most a configured number of segments per round from the
//! one to the other. Moves are logged and counted.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::arbiters::ArbiterPool;
use crate::entity::Entity;
use crate::partition::{Partition, SegmentInfo};
use actix::prelude::*;

/// A future the router can wait on.
pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T>>>;

/// What the router needs of a partition: its segments' load, and a way to move one.
pub trait Balanced: 'static {
    fn segment_infos(&self) -> Vec<SegmentInfo>;
    fn move_to(&self, segment: u32, arbiter: usize) -> BoxFuture<Result<(), String>>;
}

impl<E: Entity> Balanced for Arc<Partition<E>> {
    fn segment_infos(&self) -> Vec<SegmentInfo> {
        self.segments()
    }

    fn move_to(&self, segment: u32, arbiter: usize) -> BoxFuture<Result<(), String>> {
        Box::pin(self.clone().move_segment(segment, arbiter))
    }
}

/// When and how much to rebalance.
#[derive(Clone, Debug)]
pub struct RebalanceConfig {
    /// How often loads are sampled and a round may run; `None` disables automatic rounds.
    pub interval: Option<Duration>,
    /// Rebalance when the busiest arbiter's load exceeds `factor` × the least busy one's.
    pub factor: f64,
    /// At most this many moves per round.
    pub max_moves: usize,
    /// Busy fraction (0–1) below which an arbiter is not worth unloading.
    pub min_busy: f64,
}

impl Default for RebalanceConfig {
    fn default() -> Self {
        RebalanceConfig {
            interval: Some(Duration::from_secs(5)),
            factor: 1.5,
            max_moves: 2,
            min_busy: 0.2,
        }
    }
}

/// One segment's load over the last sample.
#[derive(Clone, Debug, PartialEq)]
pub struct SegmentLoad {
    pub partition: usize,
    pub segment: u32,
    pub arbiter: usize,
    /// Fraction of the interval spent handling messages.
    pub busy: f64,
    pub messages_per_s: f64,
    pub inflight: usize,
}

/// A planned move.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Move {
    pub partition: usize,
    pub segment: u32,
    pub from: usize,
    pub to: usize,
}

/// Plans at most `config.max_moves` moves that even out the arbiters' busy time: while
/// the busiest arbiter is busier than `factor` × the least busy one, move its segment
/// whose load best halves the gap, if any segment narrows it.
pub fn plan_moves(loads: &[SegmentLoad], arbiters: usize, config: &RebalanceConfig) -> Vec<Move> {
    let mut per_arbiter = vec![0.0f64; arbiters];
    let mut placement: Vec<(usize, f64)> = Vec::with_capacity(loads.len());
    for l in loads {
        if l.arbiter < arbiters {
            per_arbiter[l.arbiter] += l.busy;
        }
        placement.push((l.arbiter, l.busy));
    }
    let mut moves = Vec::new();
    while moves.len() < config.max_moves {
        let (busiest, &high) = match per_arbiter.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)) {
            Some(x) => x,
            None => break,
        };
        let (idlest, &low) = per_arbiter
            .iter()
            .enumerate()
            .min_by(|a, b| a.1.total_cmp(b.1))
            .expect("at least one arbiter");
        if busiest == idlest || high < config.min_busy || high <= config.factor * low {
            break;
        }
        let gap = high - low;
        // The segment that leaves the two closest together; it must narrow the gap.
        let best = placement
            .iter()
            .enumerate()
            .filter(|(_, (a, busy))| *a == busiest && *busy > 0.0 && *busy < gap)
            .min_by(|x, y| ((gap / 2.0 - x.1 .1).abs()).total_cmp(&(gap / 2.0 - y.1 .1).abs()));
        let Some((i, &(_, busy))) = best else { break };
        placement[i].0 = idlest;
        per_arbiter[busiest] -= busy;
        per_arbiter[idlest] += busy;
        moves.push(Move {
            partition: loads[i].partition,
            segment: loads[i].segment,
            from: busiest,
            to: idlest,
        });
    }
    moves
}

/// The router actor.
pub struct Router {
    pool: Arc<ArbiterPool>,
    partitions: Vec<Box<dyn Balanced>>,
    config: RebalanceConfig,
    /// `(handled, busy_ns)` per (partition, segment) at the last sample.
    previous: HashMap<(usize, u32), (u64, u64)>,
    sampled_at: Instant,
    last: Vec<SegmentLoad>,
    moves: u64,
    rounds_running: bool,
}

impl Router {
    pub fn new(pool: Arc<ArbiterPool>, config: RebalanceConfig) -> Router {
        Router {
            pool,
            partitions: Vec::new(),
            config,
            previous: HashMap::new(),
            sampled_at: Instant::now(),
            last: Vec::new(),
            moves: 0,
            rounds_running: false,
        }
    }

    /// Loads since the previous sample.
    fn sample(&mut self) -> Vec<SegmentLoad> {
        let now = Instant::now();
        let seconds = now.duration_since(self.sampled_at).as_secs_f64().max(1e-6);
        self.sampled_at = now;
        let mut loads = Vec::new();
        for (p, partition) in self.partitions.iter().enumerate() {
            for info in partition.segment_infos() {
                let (handled, busy) = self
                    .previous
                    .insert((p, info.segment), (info.handled, info.busy_ns))
                    .unwrap_or((0, 0));
                let Some(arbiter) = info.arbiter else { continue };
                loads.push(SegmentLoad {
                    partition: p,
                    segment: info.segment,
                    arbiter,
                    busy: (info.busy_ns.saturating_sub(busy)) as f64 / 1e9 / seconds,
                    messages_per_s: (info.handled.saturating_sub(handled)) as f64 / seconds,
                    inflight: info.inflight,
                });
            }
        }
        self.last = loads.clone();
        loads
    }

    fn round(&mut self, ctx: &mut Context<Self>) -> usize {
        if self.rounds_running {
            return 0;
        }
        let loads = self.sample();
        let moves = plan_moves(&loads, self.pool.len(), &self.config);
        if moves.is_empty() {
            return 0;
        }
        let count = moves.len();
        self.rounds_running = true;
        let futures: Vec<(Move, BoxFuture<Result<(), String>>)> = moves
            .into_iter()
            .map(|m| {
                let fut = self.partitions[m.partition].move_to(m.segment, m.to);
                (m, fut)
            })
            .collect();
        let run = async move {
            let mut done = 0u64;
            for (m, fut) in futures {
                match fut.await {
                    Ok(()) => {
                        done += 1;
                        tracing::info!(
                            partition = m.partition,
                            segment = m.segment,
                            from = m.from,
                            to = m.to,
                            "rebalanced"
                        );
                    }
                    Err(e) => tracing::warn!(segment = m.segment, error = %e, "move failed"),
                }
            }
            done
        };
        ctx.spawn(run.into_actor(self).map(|done, router, _| {
            router.moves += done;
            router.rounds_running = false;
        }));
        count
    }
}

impl Actor for Router {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        if let Some(every) = self.config.interval {
            ctx.run_interval(every, |router, ctx| {
                router.round(ctx);
            });
        }
    }
}

/// Registers a partition with the router.
pub struct Register(pub Box<dyn Balanced + Send>);
impl Message for Register {
    type Result = ();
}

impl Handler<Register> for Router {
    type Result = ();
    fn handle(&mut self, msg: Register, _: &mut Context<Self>) {
        self.partitions.push(msg.0);
    }
}

/// Samples the load now and runs one rebalancing round; replies with the moves started.
#[derive(Message)]
#[rtype(result = "usize")]
pub struct RebalanceNow;

impl Handler<RebalanceNow> for Router {
    type Result = usize;
    fn handle(&mut self, _: RebalanceNow, ctx: &mut Context<Self>) -> usize {
        self.round(ctx)
    }
}

/// The loads of the last sample, and the moves made so far.
#[derive(Message)]
#[rtype(result = "(Vec<SegmentLoad>, u64)")]
pub struct Loads;

impl Handler<Loads> for Router {
    type Result = MessageResult<Loads>;
    fn handle(&mut self, _: Loads, _: &mut Context<Self>) -> Self::Result {
        MessageResult((self.last.clone(), self.moves))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(segment: u32, arbiter: usize, busy: f64) -> SegmentLoad {
        SegmentLoad {
            partition: 0,
            segment,
            arbiter,
            busy,
            messages_per_s: 0.0,
            inflight: 0,
        }
    }

    #[test]
    fn moves_from_the_busiest_to_the_idlest() {
        // Arbiter 0 carries 0.5 + 0.35 + 0.05 = 0.9, arbiter 1 carries 0.1: gap 0.8.
        // Moving 0.35 (closest to half the gap, 0.4) leaves 0.55 and 0.45;
        // 0.55 ≤ 1.5 × 0.45 = 0.675, so the round stops there.
        let loads = [
            load(0, 0, 0.5),
            load(1, 0, 0.35),
            load(2, 0, 0.05),
            load(3, 1, 0.1),
        ];
        let config = RebalanceConfig::default();
        let moves = plan_moves(&loads, 2, &config);
        assert_eq!(
            moves,
            [Move {
                partition: 0,
                segment: 1,
                from: 0,
                to: 1
            }]
        );
    }

    #[test]
    fn balanced_or_idle_arbiters_stay_put() {
        let config = RebalanceConfig::default();
        // Within the factor: 0.5 vs 0.4.
        assert!(plan_moves(&[load(0, 0, 0.5), load(1, 1, 0.4)], 2, &config).is_empty());
        // Unbalanced but nearly idle: 0.1 vs 0.0 is below min_busy.
        assert!(plan_moves(&[load(0, 0, 0.1), load(1, 0, 0.0)], 2, &config).is_empty());
        // One segment carrying all the load: moving it would not narrow the gap.
        assert!(plan_moves(&[load(0, 0, 0.9)], 2, &config).is_empty());
    }

    #[test]
    fn at_most_max_moves_per_round() {
        let loads: Vec<SegmentLoad> = (0..8).map(|i| load(i, 0, 0.1)).collect();
        let config = RebalanceConfig {
            max_moves: 2,
            ..RebalanceConfig::default()
        };
        assert_eq!(plan_moves(&loads, 2, &config).len(), 2);
    }
}
