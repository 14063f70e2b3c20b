//! The `loadgen` command line.

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

/// Tallyman's load generator: a seeded billing workload for tallyd.
#[derive(Debug, Parser)]
#[command(name = "loadgen", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
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
    /// The billing period the events fall in (YYYY-MM).
    #[arg(long, default_value = "2026-11")]
    period: Period,
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

fn main() -> ExitCode {
    let Cli { command } = Cli::parse();
    let result = match command {
        Command::Generate(g) => generate(g),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("loadgen: {e}");
            ExitCode::from(2)
        }
    }
}

fn meters(g: &Generate) -> Result<Vec<MeterShape>, String> {
    let settings = Settings::load(g.config.as_deref())
        .and_then(|s| s.validate())
        .map_err(|e| e.to_string())?;
    let partition = settings
        .partitions
        .iter()
        .find(|p| p.id == g.partition)
        .ok_or_else(|| format!("no partition {:?} in the configuration", g.partition))?;
    let catalog = &partition.catalog;
    let period_start = g.period.first_day();
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

fn generate(g: Generate) -> Result<(), String> {
    let midnight =
        |d: chrono::NaiveDate| Utc.from_utc_datetime(&d.and_hms_opt(0, 0, 0).expect("midnight exists"));
    let spec = WorkloadSpec {
        accounts: g.accounts,
        customers: g.customers,
        seed: g.seed,
        family_skew: g.family_skew,
        traffic_skew: g.traffic_skew,
        period_start: midnight(g.period.first_day()),
        period_end: midnight(g.period.end()),
        profile: g.profile.clone(),
    };
    let mut workload = Workload::new(spec, meters(&g)?)?;
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
    .map_err(io)
}
