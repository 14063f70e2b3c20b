//! The `loadgen` command line.

#![forbid(unsafe_code)]

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use chrono::{TimeZone, Utc};
use clap::{Parser, Subcommand};
use loadgen::workload::{MeterKind, MeterShape, Workload, WorkloadSpec};
use tallyman::config::Settings;
use tallyman::domain::meter::Aggregation;
use tallyman::domain::Period;

/// Tallyman's load generator: a seeded billing workload for tallyd, sent open loop at a
/// target rate (or closed loop to find the maximum), with HdrHistogram latency reports.
#[derive(Debug, Parser)]
#[command(name = "loadgen", version, about, long_about = None, args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Debug, clap::Args)]
struct RunArgs {
    /// tallyd's base URL, e.g. http://127.0.0.1:8080.
    #[arg(long, conflicts_with = "spawn")]
    target: Option<String>,
    /// Start a tallyd (the binary beside loadgen) on a temporary data folder.
    #[arg(long)]
    spawn: bool,
    #[arg(long, default_value_t = 10_000)]
    accounts: usize,
    #[arg(long, default_value_t = 2_000)]
    customers: usize,
    /// Events per second offered (open loop); 0 sends as fast as answers come back
    /// (closed loop), to find the maximum throughput.
    #[arg(long, default_value_t = 100_000)]
    rate: u64,
    /// Seconds measured, after the warm-up.
    #[arg(long, default_value_t = 10)]
    duration: u64,
    /// Seconds sent but not measured, first.
    #[arg(long, default_value_t = 2)]
    warmup: u64,
    /// Events per request.
    #[arg(long, default_value_t = 1000)]
    batch: usize,
    #[arg(long, default_value_t = 4)]
    connections: usize,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Folder for latency.hgrm, latency.hlog, summary.json and latency.svg.
    #[arg(long, default_value = "loadgen-out")]
    out: PathBuf,
    /// The customers exist already: do not create them.
    #[arg(long)]
    no_seed: bool,
    #[arg(long, default_value = "aws")]
    partition: String,
    /// The billing period the events fall in (YYYY-MM), which tallyd must have open.
    /// Default: with --target, the target's open period (asked); with --spawn or
    /// --in-process, 2026-11 (the engine loadgen starts opens the period it is given).
    #[arg(long)]
    period: Option<Period>,
    /// tallyd configuration to take the catalog from (default: the embedded one).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    #[arg(long, default_value_t = 1.1)]
    family_skew: f64,
    #[arg(long, default_value_t = 1.0)]
    traffic_skew: f64,
    #[arg(long, default_value = "standard")]
    profile: String,
    /// At the end, close the period with a bill run and compare every customer's invoice
    /// with loadgen's own computation from the acknowledged events (verify.json in --out);
    /// exit 1 on any mismatch.
    #[arg(long)]
    verify: bool,
    /// SIGKILL and restart the spawned tallyd at seeded random moments of the run;
    /// unanswered batches are resent until acknowledged (needs --spawn).
    #[arg(long, requires = "spawn")]
    chaos: bool,
    /// Drive an engine inside loadgen through its Rust API, with no HTTP (durable, on a
    /// temporary folder, as tallyd would run on the same configuration): the engine's
    /// ceiling, with the same reports.
    #[arg(long, conflicts_with_all = ["target", "spawn", "chaos"])]
    in_process: bool,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Write a workload to files: customers.ndjson (for the bulk customer API) and
    /// usage.ndjson (for the ingest API). The same seed writes the same bytes.
    Generate(Generate),
}

#[derive(Debug, clap::Args)]
struct Generate {
    #[arg(long, default_value_t = 10_000)]
    accounts: usize,
    #[arg(long, default_value_t = 2_000)]
    customers: usize,
    /// Number of usage events to write.
    #[arg(long, default_value_t = 100_000)]
    events: u64,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// The billing period the events fall in (YYYY-MM). Default: the current month in
    /// UTC, the one a tallyd on its embedded default has open.
    #[arg(long)]
    period: Option<Period>,
    /// Zipf exponent of family sizes.
    #[arg(long, default_value_t = 1.1)]
    family_skew: f64,
    /// Zipf exponent of per-account traffic.
    #[arg(long, default_value_t = 1.0)]
    traffic_skew: f64,
    /// tallyd configuration to take the catalog from (default: the embedded one).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// The partition whose catalog the events use.
    #[arg(long, default_value = "aws")]
    partition: String,
    /// The billing profile of the generated customers.
    #[arg(long, default_value = "standard")]
    profile: String,
    /// Folder to write into (created if missing).
    #[arg(long, default_value = "loadgen-out")]
    out: PathBuf,
}

/// The period a run's events fall in: `--period`, else the target's open period, else the
/// one the engine loadgen starts is given.
fn run_period(run: &RunArgs) -> Result<Period, String> {
    const SPAWNED: &str = "2026-11";
    match (run.period, &run.target) {
        (Some(period), _) => Ok(period),
        (None, Some(target)) => {
            let client = awc::Client::builder()
                .timeout(std::time::Duration::from_secs(30))
                .finish();
            actix_rt::System::new().block_on(loadgen::check::open_period(&client, target, &run.partition))
        }
        (None, None) => Ok(SPAWNED.parse().expect("a period")),
    }
}

fn main() -> ExitCode {
    let Cli { command, run } = Cli::parse();
    let result = match command {
        Some(Command::Generate(g)) => generate(g),
        None => run_load(run),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("loadgen: {e}");
            ExitCode::from(2)
        }
    }
}

/// A load run: exit 0 when it ran clean, 1 on errors or a mismatch.
fn run_load(run: RunArgs) -> Result<ExitCode, String> {
    let period = run_period(&run)?;
    let meters = meters(run.config.as_deref(), &run.partition, period)?;
    let clean = loadgen::cli::load(loadgen::cli::Load {
        target: run.target,
        spawn: run.spawn,
        accounts: run.accounts,
        customers: run.customers,
        rate: run.rate,
        duration: run.duration,
        warmup: run.warmup,
        batch: run.batch,
        connections: run.connections,
        seed: run.seed,
        out: run.out,
        no_seed: run.no_seed,
        partition: run.partition.clone(),
        period,
        family_skew: run.family_skew,
        traffic_skew: run.traffic_skew,
        profile: run.profile,
        meters,
        verify: run.verify,
        chaos: run.chaos,
        in_process: run.in_process,
        config: run.config.clone(),
    })?;
    Ok(if clean {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn meters(
    config: Option<&std::path::Path>,
    partition: &str,
    period: Period,
) -> Result<Vec<MeterShape>, String> {
    let settings = Settings::load(config)
        .and_then(|s| s.validate())
        .map_err(|e| e.to_string())?;
    let partition = settings
        .partitions
        .iter()
        .find(|p| p.id == partition)
        .ok_or_else(|| format!("no partition {partition:?} in the configuration"))?;
    let catalog = &partition.catalog;
    let period_start = period.first_day();
    Ok(catalog
        .meters()
        .filter(|(id, _)| {
            catalog
                .version_at(period_start)
                .is_some_and(|v| catalog.plan(v, *id).is_some())
        })
        .map(|(_, m)| MeterShape {
            name: m.name.to_string(),
            kind: match &m.aggregation {
                Aggregation::Sum => MeterKind::Sum,
                Aggregation::Count => MeterKind::Count,
                Aggregation::Max | Aggregation::Latest => MeterKind::Level,
                Aggregation::UniqueCount { dimension } => MeterKind::Distinct {
                    dimension: dimension.clone(),
                },
            },
        })
        .collect())
}

fn generate(g: Generate) -> Result<ExitCode, String> {
    let period = g
        .period
        .unwrap_or_else(|| Period::containing(Utc::now().date_naive()));
    let midnight =
        |d: chrono::NaiveDate| Utc.from_utc_datetime(&d.and_hms_opt(0, 0, 0).expect("midnight exists"));
    let spec = WorkloadSpec {
        accounts: g.accounts,
        customers: g.customers,
        seed: g.seed,
        family_skew: g.family_skew,
        traffic_skew: g.traffic_skew,
        period_start: midnight(period.first_day()),
        period_end: midnight(period.end()),
        profile: g.profile.clone(),
    };
    let mut workload = Workload::new(spec, meters(g.config.as_deref(), &g.partition, period)?)?;
    std::fs::create_dir_all(&g.out).map_err(|e| format!("cannot create {}: {e}", g.out.display()))?;
    let open = |name: &str| {
        let path = g.out.join(name);
        File::create(&path)
            .map(BufWriter::new)
            .map_err(|e| format!("cannot write {}: {e}", path.display()))
    };
    let io = |e: std::io::Error| e.to_string();
    let mut customers = open("customers.ndjson")?;
    for c in workload.customers() {
        serde_json::to_writer(&mut customers, c).map_err(|e| e.to_string())?;
        customers.write_all(b"\n").map_err(io)?;
    }
    customers.flush().map_err(io)?;
    let mut usage = open("usage.ndjson")?;
    for _ in 0..g.events {
        serde_json::to_writer(&mut usage, &workload.next_event()).map_err(|e| e.to_string())?;
        usage.write_all(b"\n").map_err(io)?;
    }
    usage.flush().map_err(io)?;
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "wrote {} customers ({} accounts) and {} events to {}",
        g.customers,
        g.accounts,
        g.events,
        g.out.display()
    )
    .map_err(io)?;
    Ok(ExitCode::SUCCESS)
}
