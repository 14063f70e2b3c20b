//! `--in-process`: the engine inside loadgen, driven through `tallyman::engine` with no
//! HTTP (as `benches/ingest.rs` does), to show the engine's ceiling with the same
//! schedule, latency accounting and reports as a run over HTTP.
//!
//! The engine runs as tallyd would on the same configuration: the workload's partition
//! alone, its period open, no sample customers, the configured journal (by default files
//! synced before every acknowledgement) in a temporary folder, removed at the end.
//! Events are turned into `UsageEvent`s on the generator thread, so the measured path is
//! the engine's `ingest` alone (plus one clone of each batch per send: the engine takes
//! it by value, and a batch answered "busy" is sent again). `--verify` works the same
//! way, with the bill run and the invoices read through the engine's API.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tallyman::config::{JournalKind, Settings, Validated};
use tallyman::domain::{Currency, Customer, CustomerSpec, UsageEvent};
use tallyman::engine::{Engine, EngineError, EngineOptions, JournalMode, PartitionEngine};

use crate::check::{add_invoices, judge, Setup, Verdict};
use crate::plan::{generator, ledger, schedule, Load};
use crate::run::{run, Answer, LoadResult, Sink};
use crate::verify::PriceList;
use crate::workload::{CustomerRecord, EventRecord, Workload, WorkloadSpec};

/// The engine's ingest, as a [`Sink`]: a batch is a list of usage events.
#[derive(Clone)]
pub struct EngineSink(Arc<PartitionEngine>);

impl Sink for EngineSink {
    type Batch = Vec<UsageEvent>;

    async fn send(&self, batch: &Vec<UsageEvent>) -> Answer {
        match self.0.ingest(batch.clone()).await {
            Ok(summary) => Answer::Acknowledged {
                duplicates: summary.duplicates,
                refused: Vec::new(),
            },
            // Applied but for these (past an account's event limit, or an overflow).
            Err(EngineError::NotApplied { summary, errors }) => Answer::Acknowledged {
                duplicates: summary.duplicates,
                refused: errors.iter().map(|e| e.index as u32).collect(),
            },
            // Backpressure: nothing was journaled. tallyd's clients wait for Retry-After;
            // in-process, a tenth of a second.
            Err(EngineError::Busy(_)) => Answer::TooBusy(Duration::from_millis(100)),
            // Journaled but not (all) applied, or a segment that failed: nobody knows.
            Err(e @ (EngineError::Failed(_) | EngineError::Unavailable(_))) => Answer::Unknown(e.to_string()),
            Err(e) => Answer::Refused(e.to_string()),
        }
    }
}

/// A usage event as the engine takes it.
pub fn usage_event(e: EventRecord) -> Result<UsageEvent, String> {
    Ok(UsageEvent {
        quantity: rust_decimal::Decimal::from_str(&e.quantity)
            .map_err(|err| format!("event {}: {err}", e.id))?,
        time: chrono::DateTime::parse_from_rfc3339(&e.time)
            .map_err(|err| format!("event {}: {err}", e.id))?
            .to_utc(),
        dimensions: e
            .dimensions
            .unwrap_or_default()
            .into_iter()
            .map(|(k, v)| (k, v.as_str().map_or_else(|| v.to_string(), str::to_owned)))
            .collect(),
        id: e.id,
        account: e.account,
        meter: e.meter,
    })
}

fn usage_batch(events: Vec<EventRecord>) -> Vec<UsageEvent> {
    events
        .into_iter()
        .map(|e| usage_event(e).expect("the workload makes valid events"))
        .collect()
}

/// A folder removed on drop.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs the load against an engine started here; answers what it measured and, with
/// `--verify`, the verdict. Must run inside an actix system.
pub async fn drive(
    l: &Load,
    spec: WorkloadSpec,
    workload: Workload,
) -> Result<(LoadResult, Option<Verdict>), String> {
    let dir = TempDir(std::env::temp_dir().join(format!("loadgen-engine-{}", std::process::id())));
    let _ = std::fs::remove_dir_all(&dir.0);
    let settings = settings(l)?;
    let journal = journal_mode(&settings, &dir);
    let durable = matches!(journal, JournalMode::File { fsync: true, .. });
    let engine = Engine::start(
        &settings,
        EngineOptions {
            journal,
            ..EngineOptions::default()
        },
    )
    .await
    .map_err(|e| format!("cannot start the engine: {e}"))?;
    let p = engine.partition(&l.partition).map_err(|e| e.to_string())?;
    let currency = p.summary().currency;
    eprintln!(
        "loadgen: engine in process ({} arbiters, {} segments, journal {})",
        engine.arbiters(),
        p.summary().segments,
        if durable {
            "in files, synced before every acknowledgement"
        } else {
            "not synced"
        }
    );
    let setup = if l.verify {
        Some(verify_setup(l, &p, &currency)?)
    } else {
        None
    };
    let customers = workload.customers().to_vec();
    create_customers(&p, &customers, &currency).await?;
    let (rx, thread) = generator(workload, l.batch, usage_batch);
    let result = run(schedule(l), EngineSink(p.clone()), rx).await;
    let _ = thread.join();
    let verdict = match setup {
        Some(setup) => Some(bill_and_judge(l, spec, &result, &setup, &p, &customers).await?),
        None => None,
    };
    Ok((result, verdict))
}

/// The configuration of `l`, checked: its partition alone, with no sample customers and
/// `l`'s period open.
fn settings(l: &Load) -> Result<Validated, String> {
    let mut settings = Settings::load(l.config.as_deref()).map_err(|e| e.to_string())?;
    let mut partition = settings
        .partitions
        .iter()
        .find(|p| p.id == l.partition)
        .cloned()
        .ok_or_else(|| format!("no partition {:?} in the configuration", l.partition))?;
    partition.customers = None;
    partition.open_period = Some(l.period.to_string());
    settings.partitions = vec![partition];
    settings.validate().map_err(|e| e.to_string())
}

/// The configured journal, its files in `dir`.
fn journal_mode(settings: &Validated, dir: &TempDir) -> JournalMode {
    match settings.journal.mode {
        JournalKind::File => JournalMode::File {
            dir: dir.0.clone(),
            fsync: settings.journal.fsync,
            file_bytes: settings.journal.file_bytes,
        },
        JournalKind::Memory => JournalMode::Retained,
    }
}

/// What `--verify` checks the invoices against: the partition's catalog of the period
/// (one version for all of it) and its currency.
fn verify_setup(l: &Load, p: &PartitionEngine, currency: &str) -> Result<Setup, String> {
    let catalog = |day| {
        p.catalog_at(Some(day))
            .map_err(|e| e.to_string())
            .and_then(|c| serde_json::to_value(c).map_err(|e| e.to_string()))
    };
    let (first, last) = (catalog(l.period.first_day())?, catalog(l.period.last_day())?);
    if first["effective_from"] != last["effective_from"] {
        return Err(format!(
            "--verify: the catalog changes inside {}; the check models one version per period",
            l.period
        ));
    }
    Ok(Setup {
        partition: l.partition.clone(),
        period: l.period,
        prices: PriceList::from_catalog_json(&first)?,
        currency: currency.to_owned(),
    })
}

/// Creates the workload's customers in the engine, 5,000 at a time, with a line saying
/// how long it took.
async fn create_customers(
    p: &PartitionEngine,
    customers: &[CustomerRecord],
    currency: &str,
) -> Result<(), String> {
    let code = Currency::from_code(currency).ok_or_else(|| format!("unknown currency {currency}"))?;
    let started = Instant::now();
    for chunk in customers.chunks(5000) {
        let list = chunk
            .iter()
            .map(|c| {
                let spec: CustomerSpec = serde_json::to_value(c)
                    .and_then(serde_json::from_value)
                    .map_err(|e| format!("customer {}: {e}", c.id))?;
                Customer::from_spec(spec, code).map_err(|e| format!("customer {}: {e}", c.id))
            })
            .collect::<Result<Vec<_>, String>>()?;
        p.upsert_customers(list).await.map_err(|e| e.to_string())?;
    }
    eprintln!(
        "loadgen: {} customers created in {:.1} s",
        customers.len(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// `--verify` after the run: the oracle's ledger, the period's bill run, its invoices,
/// and the verdict.
async fn bill_and_judge(
    l: &Load,
    spec: WorkloadSpec,
    result: &LoadResult,
    setup: &Setup,
    p: &Arc<PartitionEngine>,
    customers: &[CustomerRecord],
) -> Result<Verdict, String> {
    let ledger = ledger(l, spec, result, setup)?;
    let run = p.start_bill_run(l.period).await.map_err(|e| e.to_string())?;
    let started = Instant::now();
    loop {
        let view = p.bill_run(&run.id).ok_or("the bill run went missing")?;
        match view.state {
            "done" => break,
            "running" if started.elapsed() < Duration::from_secs(1800) => {
                actix_rt::time::sleep(Duration::from_millis(20)).await;
            }
            _ => return Err(format!("bill run {}: {:?}", run.id, view)),
        }
    }
    let mut ndjson = Vec::new();
    let mut from = Some(0);
    while let Some(at) = from {
        let (bytes, next) = p.invoices().read_ndjson(l.period, at, 1 << 20)?;
        ndjson.extend_from_slice(&bytes);
        from = next;
    }
    let mut invoices = BTreeMap::new();
    add_invoices(&ndjson, l.period, &mut invoices)?;
    judge(
        &ledger,
        customers,
        &invoices,
        setup,
        result.acknowledged.len(),
        &l.out,
    )
}
