//! `--chaos`: kills the spawned tallyd (SIGKILL) at seeded random moments of a load run
//! and starts it again on the same data and address.
//!
//! It runs on a thread of its own, so a restart never holds up the senders (they see
//! failed connections and 503s meanwhile, and resend; see [`crate::run`]). The gaps
//! between one start-up and the next kill are drawn from the run's seed, so the same
//! seed kills at the same points of the schedule. The spawned tallyd snapshots every
//! couple of seconds under chaos, so kills land before, between and during snapshots,
//! and recoveries read snapshots as well as the journal.

use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

use crate::daemon::Daemon;

/// Configuration added to the spawned tallyd under chaos.
pub const CONFIG: &str = "[runtime]\nsnapshot_interval_secs = 2\n";

/// Shortest and longest time from a start-up to the next kill, in milliseconds.
const GAP_MS: (u64, u64) = (500, 3_000);

/// One kill and the restart after it.
#[derive(Clone, Debug, Serialize)]
pub struct Kill {
    /// Seconds from the start of the run to the SIGKILL.
    pub at_s: f64,
    /// Milliseconds from the SIGKILL until the new tallyd was ready.
    pub down_ms: f64,
}

/// The chaos thread of a run.
pub struct Chaos {
    stop: mpsc::Sender<()>,
    thread: JoinHandle<Result<Vec<Kill>, String>>,
}

impl Chaos {
    /// Starts killing and restarting `daemon` at seeded moments until `run_for` has
    /// passed (no kill is started later) or [`Chaos::finish`] is called.
    pub fn start(daemon: Arc<Mutex<Daemon>>, seed: u64, run_for: Duration) -> Chaos {
        let (stop, stopped) = mpsc::channel::<()>();
        let thread = std::thread::spawn(move || {
            // Its own stream, apart from the workload's: ASCII "chaos" mixed into the seed.
            let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x63_6861_6f73);
            let start = Instant::now();
            let end = start + run_for;
            let mut kills = Vec::new();
            loop {
                let gap = Duration::from_millis(rng.random_range(GAP_MS.0..=GAP_MS.1));
                if Instant::now() + gap >= end {
                    break;
                }
                match stopped.recv_timeout(gap) {
                    Err(mpsc::RecvTimeoutError::Timeout) => {}
                    Ok(()) | Err(mpsc::RecvTimeoutError::Disconnected) => return Ok(kills),
                }
                let killed = Instant::now();
                let mut d = daemon.lock().unwrap();
                d.kill()?;
                eprintln!(
                    "loadgen: chaos: killed tallyd (SIGKILL) at {:.1} s",
                    killed.duration_since(start).as_secs_f64()
                );
                d.restart()
                    .map_err(|e| format!("chaos: tallyd did not come back: {e}"))?;
                let down = killed.elapsed();
                eprintln!("loadgen: chaos: tallyd ready again after {} ms", down.as_millis());
                kills.push(Kill {
                    at_s: killed.duration_since(start).as_secs_f64(),
                    down_ms: down.as_secs_f64() * 1000.0,
                });
            }
            let _ = stopped.recv();
            Ok(kills)
        });
        Chaos { stop, thread }
    }

    /// Stops killing (a restart under way is finished first) and answers the kills made.
    pub fn finish(self) -> Result<Vec<Kill>, String> {
        let _ = self.stop.send(());
        self.thread
            .join()
            .map_err(|_| "the chaos thread panicked".to_string())?
    }
}
