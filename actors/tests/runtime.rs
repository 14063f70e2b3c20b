//! The runtime with a toy entity: moves, panics, poison, backpressure and restart
//! intensity. Deterministic: seeded randomness, and signals rather than sleeps.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tallyman_actors::journal::{Journal, MemoryJournal};
use tallyman_actors::partition::{Partition, PartitionConfig, SubmitError};
use tallyman_actors::segment::Failure;
use tallyman_actors::snapshot::MemorySnapshots;
use tallyman_actors::supervision::SupervisionConfig;
use tallyman_actors::ArbiterPool;
use tallyman_actors::{Batch, Entity};

/// A gate a command can wait on, to hold a segment busy until the test opens it.
#[derive(Debug, Default)]
struct Gate {
    open: Mutex<bool>,
    cv: Condvar,
}

impl Gate {
    fn wait(&self) {
        let mut open = self.open.lock().unwrap();
        while !*open {
            open = self.cv.wait(open).unwrap();
        }
    }
    fn open(&self) {
        *self.open.lock().unwrap() = true;
        self.cv.notify_all();
    }
}

#[derive(Clone, Debug)]
enum Cmd {
    Add(u64),
    /// Always panics.
    Poison,
    /// Blocks the segment until the gate opens.
    Hold(Arc<Gate>),
    /// Adds its number, but its prefetch panics (a broken hint).
    BadHint(u64),
}

/// A running total per key.
#[derive(Debug, Default)]
struct Counter(u64);

/// Prefetch rounds run, and rounds that did not see the note of the round before.
static PREFETCHES: AtomicU64 = AtomicU64::new(0);
static NOTES_LOST: AtomicU64 = AtomicU64::new(0);

impl Entity for Counter {
    type Key = u64;
    type Command = Cmd;
    type Reply = u64;
    type Query = ();
    type Answer = u64;
    type Snapshot = u64;

    const PREFETCH_ROUNDS: usize = 2;

    fn prefetch(&self, command: &Cmd, round: usize, note: &mut u64) {
        if matches!(command, Cmd::BadHint(_)) {
            panic!("a broken prefetch");
        }
        // Each round sees what the one before noted (0 before the first).
        if *note != round as u64 {
            NOTES_LOST.fetch_add(1, Ordering::Relaxed);
        }
        *note = round as u64 + 1;
        PREFETCHES.fetch_add(1, Ordering::Relaxed);
    }

    fn shard(key: &u64) -> u64 {
        key.wrapping_mul(0x9E37_79B9_7F4A_7C15)
    }
    fn create(_: &u64) -> Self {
        Counter(0)
    }
    fn apply(&mut self, command: &Cmd) -> u64 {
        match command {
            Cmd::Add(n) | Cmd::BadHint(n) => self.0 += n,
            Cmd::Poison => panic!("poison"),
            Cmd::Hold(gate) => gate.wait(),
        }
        self.0
    }
    fn query(&self, _: &()) -> u64 {
        self.0
    }
    fn snapshot(&self) -> u64 {
        self.0
    }
    fn restore(s: &u64) -> Self {
        Counter(*s)
    }
}

fn config(segments: u32, capacity: usize) -> PartitionConfig {
    PartitionConfig {
        name: "test".into(),
        segments,
        mailbox_capacity: capacity,
        supervision: SupervisionConfig {
            max_retries: 2,
            max_restarts: 3,
            restart_window: Duration::from_secs(3600),
            dead_letter_capacity: 100,
        },
    }
}

async fn start(
    segments: u32,
    capacity: usize,
    journal: Arc<dyn Journal<Batch<Counter>>>,
    hook: Option<tallyman_actors::FaultHook<u64>>,
) -> (Arc<Partition<Counter>>, Arc<ArbiterPool>) {
    let pool = Arc::new(ArbiterPool::new(2));
    let p = Partition::start(
        config(segments, capacity),
        journal,
        Arc::new(MemorySnapshots::default()),
        pool.clone(),
        hook,
    )
    .await;
    (p, pool)
}

async fn total(p: &Arc<Partition<Counter>>, key: u64) -> u64 {
    p.ask(key, ()).unwrap().await.unwrap().unwrap_or(0)
}

#[test]
fn random_traffic_with_moves_and_panics_matches_a_sequential_fold() {
    for seed in [1u64, 2, 3] {
        actix_rt::System::new().block_on(async move {
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            // Panic on the first try of about one record in twelve.
            let faulty: Arc<Mutex<std::collections::HashSet<u64>>> = Default::default();
            let f = faulty.clone();
            let hook: tallyman_actors::FaultHook<u64> =
                Arc::new(move |_, lsn| f.lock().unwrap().contains(&lsn));
            for lsn in 1..=400u64 {
                if rng.random_range(0..12) == 0 {
                    faulty.lock().unwrap().insert(lsn);
                }
            }
            let (p, _pool) = start(8, 1024, Arc::new(MemoryJournal::new()), Some(hook)).await;
            let mut expected: HashMap<u64, u64> = HashMap::new();
            let mut in_flight = Vec::new();
            let mut moves = Vec::new();
            for round in 0..400 {
                let batch: Batch<Counter> = (0..rng.random_range(1..20))
                    .map(|_| (rng.random_range(0..200u64), Cmd::Add(rng.random_range(1..1000))))
                    .collect();
                // The reply of each command is the key's running total: the sequential
                // fold says what it must be.
                let replies: Vec<u64> = batch
                    .iter()
                    .map(|(k, c)| {
                        let Cmd::Add(n) = c else { unreachable!() };
                        let t = expected.entry(*k).or_default();
                        *t += n;
                        *t
                    })
                    .collect();
                in_flight.push((p.submit(batch).expect("admitted"), replies));
                if rng.random_range(0..10) == 0 {
                    let segment = rng.random_range(0..8u32);
                    let to = rng.random_range(0..2usize);
                    moves.push(actix_rt::spawn(p.clone().move_segment(segment, to)));
                }
                if round % 100 == 50 {
                    // Fails while a segment is moving; the journal then keeps everything.
                    let _ = p.snapshot_all().await;
                }
                if in_flight.len() >= 16 {
                    for (pending, replies) in in_flight.drain(..) {
                        let got: Vec<u64> = pending.await.unwrap().into_iter().map(|r| r.unwrap()).collect();
                        assert_eq!(got, replies, "seed {seed}");
                    }
                }
            }
            for (pending, replies) in in_flight.drain(..) {
                let got: Vec<u64> = pending.await.unwrap().into_iter().map(|r| r.unwrap()).collect();
                assert_eq!(got, replies, "seed {seed}");
            }
            for m in moves {
                m.await.unwrap().unwrap();
            }
            for (key, want) in &expected {
                assert_eq!(total(&p, *key).await, *want, "seed {seed}, key {key}");
            }
            assert!(p.moves() > 0, "the test moved segments");
            assert!(
                p.dead_letters().is_empty(),
                "injected faults are retried, not dead-lettered"
            );
        });
    }
    // Commands for keys the segment already had were prefetched for, round after round.
    assert!(PREFETCHES.load(Ordering::Relaxed) > 0);
    assert_eq!(NOTES_LOST.load(Ordering::Relaxed), 0);
}

#[test]
fn a_poison_command_is_dead_lettered_and_nothing_else_is_lost() {
    actix_rt::System::new().block_on(async {
        let (p, _pool) = start(4, 64, Arc::new(MemoryJournal::new()), None).await;
        p.submit(vec![(7, Cmd::Add(10))]).unwrap().await.unwrap();
        let outcomes = p
            .submit(vec![
                (1, Cmd::Add(1)),
                (7, Cmd::Poison),
                (7, Cmd::Add(5)),
                (3, Cmd::Add(2)),
            ])
            .unwrap()
            .await
            .unwrap();
        assert_eq!(outcomes[0], Ok(1));
        assert!(matches!(&outcomes[1], Err(Failure::DeadLettered { reason }) if reason == "poison"));
        // Key 7 was rebuilt from the journal (its 10) before the next command applied.
        assert_eq!(outcomes[2], Ok(15));
        assert_eq!(outcomes[3], Ok(2));
        assert_eq!(p.dead_letters().len(), 1);
        let mut letters = Vec::new();
        p.dead_letters()
            .for_each(|l| letters.push((l.id, *l.key(), l.attempts)));
        assert_eq!(letters, [(1, 7, 3)], "tried once and retried twice");
        // Replaying it poisons again, and it goes back to the queue.
        let replayed = p.replay_dead_letter(1).await.unwrap();
        assert!(matches!(replayed, Err(Failure::DeadLettered { .. })));
        assert_eq!(p.dead_letters().len(), 1);
        assert_eq!(total(&p, 7).await, 15);
        // A restarted segment skips the dead-lettered command when it replays the journal.
        let segment = p.segment_of(&7);
        p.clone().move_segment(segment, 1).await.unwrap();
        assert_eq!(total(&p, 7).await, 15);
    });
}

#[test]
fn a_panicking_prefetch_costs_its_group_the_hints_and_nothing_else() {
    actix_rt::System::new().block_on(async {
        let (p, _pool) = start(1, 64, Arc::new(MemoryJournal::new()), None).await;
        p.submit(vec![(7, Cmd::Add(10))]).unwrap().await.unwrap();
        // Key 7 exists, so its commands are prefetched for, and one prefetch panics:
        // every command still applies once, in order, and the segment is not restarted.
        let outcomes = p
            .submit(vec![
                (7, Cmd::Add(1)),
                (7, Cmd::BadHint(5)),
                (8, Cmd::Add(2)),
                (7, Cmd::Add(1)),
            ])
            .unwrap()
            .await
            .unwrap();
        assert_eq!(outcomes, [Ok(11), Ok(16), Ok(2), Ok(17)]);
        assert_eq!(p.restarts(), 0);
        assert!(p.dead_letters().is_empty());
        assert_eq!(total(&p, 7).await, 17);
    });
}

#[test]
fn outcomes_answer_commands_in_submitted_order_and_the_record_groups_segments() {
    actix_rt::System::new().block_on(async {
        let journal = Arc::new(MemoryJournal::new());
        let (p, _pool) = start(4, 64, journal.clone(), None).await;
        // Keys interleaved over the segments, key 5 three times: each reply is the key's
        // running total, so it says which command it answers.
        let keys = [5u64, 1, 2, 5, 3, 4, 6, 5, 7, 8];
        let batch: Vec<(u64, Cmd)> = keys.iter().map(|&k| (k, Cmd::Add(k * 10))).collect();
        let outcomes = p.submit(batch).unwrap().await.unwrap();
        let mut running: HashMap<u64, u64> = HashMap::new();
        for (key, outcome) in keys.iter().zip(&outcomes) {
            let total = running.entry(*key).or_default();
            *total += key * 10;
            assert_eq!(outcome, &Ok(*total), "key {key}");
        }
        // The journal's record has every command once, each segment's together, and the
        // commands of a key in the order they were submitted.
        let mut record = Vec::new();
        journal
            .replay(0, &mut |_, r| {
                record = r.iter().map(|(k, _)| *k).collect();
                true
            })
            .unwrap();
        let segments: Vec<u32> = record.iter().map(|k| p.segment_of(k)).collect();
        assert!(segments.chunk_by(|a, b| a == b).count() <= 4, "{segments:?}");
        let mut sorted = record.clone();
        sorted.sort_unstable();
        let mut submitted = keys.to_vec();
        submitted.sort_unstable();
        assert_eq!(sorted, submitted);
    });
}

#[test]
fn a_full_segment_refuses_new_work_until_it_drains() {
    actix_rt::System::new().block_on(async {
        let (p, _pool) = start(1, 4, Arc::new(MemoryJournal::new()), None).await;
        let gate = Arc::new(Gate::default());
        let held = p.submit(vec![(1, Cmd::Hold(gate.clone()))]).unwrap();
        let mut admitted = vec![];
        loop {
            match p.submit(vec![(2, Cmd::Add(1))]) {
                Ok(pending) => admitted.push(pending),
                Err(SubmitError::Busy { segment, .. }) => {
                    assert_eq!(segment, 0);
                    break;
                }
                Err(e) => panic!("{e}"),
            }
        }
        assert_eq!(admitted.len(), 3, "capacity 4: the held command and three more");
        let journaled = p.journal().last_lsn();
        assert!(p.submit(vec![(2, Cmd::Add(1))]).is_err());
        assert_eq!(
            p.journal().last_lsn(),
            journaled,
            "a refused batch is not journaled"
        );
        gate.open();
        held.await.unwrap();
        for a in admitted {
            a.await.unwrap();
        }
        assert_eq!(total(&p, 2).await, 3);
        p.submit(vec![(2, Cmd::Add(1))])
            .expect("room again")
            .await
            .unwrap();
    });
}

#[test]
fn restart_intensity_marks_a_crashing_segment_failed() {
    actix_rt::System::new().block_on(async {
        // With a journal that keeps nothing, a panicking command's entity cannot be
        // rebuilt, so the segment itself crashes and is restarted by its supervisor.
        let crash = Arc::new(AtomicBool::new(true));
        let c = crash.clone();
        let hook: tallyman_actors::FaultHook<u64> = Arc::new(move |_, _| c.load(Ordering::SeqCst));
        let (p, _pool) = start(1, 64, Arc::new(MemoryJournal::discarding()), Some(hook)).await;
        let mut crashes = 0;
        while p.segments()[0].state != "failed" {
            assert!(crashes < 10, "the segment should have been marked failed by now");
            let restarts = p.restarts();
            match p.submit(vec![(1, Cmd::Add(1))]) {
                Ok(pending) => match pending.await {
                    // The segment died with the command in its mailbox …
                    Err(SubmitError::Interrupted) => crashes += 1,
                    // … or the command waited for a restart that was refused.
                    Ok(outcomes) if matches!(outcomes[..], [Err(Failure::Unavailable { .. })]) => {
                        crashes += 1
                    }
                    other => panic!("expected the segment to crash, got {other:?}"),
                },
                Err(e) => panic!("{e}"),
            }
            // Wait until the supervisor has restarted the segment, or failed it.
            loop {
                let state = p.segments()[0].state;
                if state == "failed" || (state == "running" && p.restarts() > restarts) {
                    break;
                }
                actix_rt::task::yield_now().await;
            }
        }
        // The first crash restarts the segment; with a journal that keeps nothing its
        // recovery cannot replay, so every restart fails too, until the intensity is spent.
        assert_eq!(p.restarts(), 3, "at most 3 restarts in the window");
        assert!(crashes >= 1);
        assert_eq!(p.segments()[0].state, "failed");
        let alerts = p.alerts();
        assert_eq!(alerts.len(), 1);
        assert!(alerts[0].message.contains("restarted more than 3 times"));
        crash.store(false, Ordering::SeqCst);
        assert!(matches!(
            p.submit(vec![(1, Cmd::Add(1))]),
            Err(SubmitError::Unavailable { .. })
        ));
    });
}

#[test]
fn a_dead_lettered_command_stays_unapplied_after_a_restart() {
    actix_rt::System::new().block_on(async {
        let journal: Arc<MemoryJournal<Batch<Counter>>> = Arc::new(MemoryJournal::new());
        let pool = Arc::new(ArbiterPool::new(2));
        let mut no_retries = config(2, 64);
        no_retries.supervision.max_retries = 0;
        // The command at LSN 2 panics on its first try; with no retries it is dead-lettered
        // and its caller told so.
        let hook: tallyman_actors::FaultHook<u64> = Arc::new(|_, lsn| lsn == 2);
        let first = Partition::start(
            no_retries.clone(),
            journal.clone(),
            Arc::new(MemorySnapshots::default()),
            pool.clone(),
            Some(hook),
        )
        .await;
        assert_eq!(
            first.submit(vec![(7, Cmd::Add(10))]).unwrap().await.unwrap(),
            [Ok(10)]
        );
        let refused = first.submit(vec![(7, Cmd::Add(5))]).unwrap().await.unwrap();
        assert!(
            matches!(&refused[0], Err(Failure::DeadLettered { .. })),
            "{refused:?}"
        );
        assert_eq!(total(&first, 7).await, 10);
        assert_eq!(
            journal.skipped().unwrap(),
            [(2, 0)],
            "the skip is kept in the journal"
        );
        first.stop();
        // A new partition on the same journal (a restart), with no fault: the command its
        // caller saw refused is still not applied.
        let second = Partition::start(
            no_retries,
            journal.clone(),
            Arc::new(MemorySnapshots::default()),
            pool,
            None,
        )
        .await;
        assert_eq!(total(&second, 7).await, 10);
        assert_eq!(
            second.submit(vec![(7, Cmd::Add(1))]).unwrap().await.unwrap(),
            [Ok(11)]
        );
    });
}
