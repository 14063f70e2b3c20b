//! What a load run is, apart from where it goes: its settings ([`Load`]), the schedule
//! they give, the thread that makes batches ahead of it, and the oracle's ledger of a
//! finished run. The run over HTTP (`cli`) and the run in process (`inprocess`) both
//! start from here.

use std::path::PathBuf;
use std::time::Duration;

use tallyman::domain::Period;

use crate::run::{LoadResult, LoadSpec};
use crate::workload::{EventRecord, MeterShape, Workload, WorkloadSpec};

/// How long a batch is resent under `--chaos` after the run's end, at most.
const RESEND_GRACE: Duration = Duration::from_secs(60);

/// A load run's settings.
pub struct Load {
    pub target: Option<String>,
    pub spawn: bool,
    pub accounts: usize,
    pub customers: usize,
    pub rate: u64,
    pub duration: u64,
    pub warmup: u64,
    pub batch: usize,
    pub connections: usize,
    pub seed: u64,
    pub out: PathBuf,
    pub no_seed: bool,
    pub partition: String,
    pub period: Period,
    pub family_skew: f64,
    pub traffic_skew: f64,
    pub profile: String,
    pub meters: Vec<MeterShape>,
    /// Compare every customer's invoice with loadgen's own computation.
    pub verify: bool,
    /// Kill and restart the spawned tallyd during the run.
    pub chaos: bool,
    /// Drive an engine inside loadgen, with no HTTP.
    pub in_process: bool,
    /// tallyd configuration (the catalog, and the engine of `--in-process`).
    pub config: Option<PathBuf>,
}

/// Makes the batches ahead of the schedule, on a thread of their own: `make` turns each
/// `batch` events of the stream into one batch, in order.
pub(crate) fn generator<B: Send + 'static>(
    mut workload: Workload,
    batch: usize,
    make: fn(Vec<EventRecord>) -> B,
) -> (tokio::sync::mpsc::Receiver<B>, std::thread::JoinHandle<()>) {
    let (tx, rx) = tokio::sync::mpsc::channel::<B>(256);
    let thread = std::thread::spawn(move || loop {
        let events = (0..batch).map(|_| workload.next_event()).collect();
        if tx.blocking_send(make(events)).is_err() {
            return;
        }
    });
    (rx, thread)
}

/// The schedule of `l`, and its progress line.
pub(crate) fn schedule(l: &Load) -> LoadSpec {
    eprintln!(
        "loadgen: {} events/s{} in batches of {} over {} connections, {} s warm-up, {} s measured{}",
        l.rate,
        if l.rate == 0 { " (closed loop)" } else { "" },
        l.batch,
        l.connections,
        l.warmup,
        l.duration,
        if l.chaos { ", tallyd killed at random" } else { "" }
    );
    LoadSpec {
        rate: l.rate,
        batch: l.batch,
        connections: l.connections,
        warmup: Duration::from_secs(l.warmup),
        duration: Duration::from_secs(l.duration),
        resend: l.chaos.then_some(RESEND_GRACE),
    }
}

/// The oracle's ledger of a finished run: the acknowledged batches of the replayed
/// workload. A batch of unknown fate makes the check impossible.
pub(crate) fn ledger(
    l: &Load,
    spec: WorkloadSpec,
    result: &LoadResult,
    setup: &crate::check::Setup,
) -> Result<crate::verify::Ledger, String> {
    if !result.unresolved.is_empty() {
        return Err(format!(
            "--verify cannot conclude: {} batches were sent but never answered (their fate is unknown; the first: {:?})",
            result.unresolved.len(),
            &result.unresolved[..result.unresolved.len().min(5)]
        ));
    }
    eprintln!(
        "loadgen: verify: replaying {} acknowledged batches",
        result.acknowledged.len()
    );
    crate::check::replay(
        spec,
        l.meters.clone(),
        l.batch,
        &result.acknowledged,
        &result.refused,
        setup.prices.clone(),
    )
}
