//! `tallyd`: the Tallyman daemon and its command-line tools.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use clap::{Parser, Subcommand};
use tallyman::config::{Settings, Validated};
use tallyman::engine::Engine;

/// Tallyman's daemon: streams metered usage into running bills and closes billing periods.
#[derive(Debug, Parser)]
#[command(name = "tallyd", version, about, long_about = None)]
struct Cli {
    /// A TOML file overriding the embedded default configuration.
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    /// The address to listen on (overrides server.listen), e.g. 127.0.0.1:8080.
    #[arg(long, value_name = "ADDR")]
    listen: Option<String>,
    /// The data folder (overrides server.data_dir).
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Validate the configuration and catalogs, print a summary, and exit.
    CheckConfig,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let settings = match load(&cli) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("tallyd: {e}");
            return ExitCode::from(2);
        }
    };
    match cli.command {
        Some(Command::CheckConfig) => check_config(&settings),
        None => run(settings),
    }
}

fn load(cli: &Cli) -> Result<Validated, tallyman::config::ConfigError> {
    let mut settings = Settings::load(cli.config.as_deref())?;
    if let Some(listen) = &cli.listen {
        settings.server.listen = listen.clone();
    }
    if let Some(dir) = &cli.data_dir {
        settings.server.data_dir = dir.clone();
    }
    settings.validate()
}

fn check_config(settings: &Validated) -> ExitCode {
    let engine = Engine::new(settings);
    let mut out = std::io::stdout().lock();
    let report = (|| -> std::io::Result<()> {
        writeln!(out, "configuration OK")?;
        writeln!(out, "listen: {}", settings.listen)?;
        writeln!(out, "data dir: {}", settings.data_dir.display())?;
        writeln!(out, "profiles:")?;
        for p in engine.profiles() {
            let steps: Vec<&str> = p.steps.iter().map(|s| s.name()).collect();
            let commitment = p
                .minimum_commitment
                .map(|c| format!(" (minimum commitment {c})"))
                .unwrap_or_default();
            writeln!(out, "  {}: {}{commitment}", p.name, steps.join(" → "))?;
        }
        writeln!(out, "partitions:")?;
        for p in engine.partition_summaries() {
            writeln!(
                out,
                "  {}: {} ({}), catalog {} with {} version(s), {} customer(s), {} account(s)",
                p.id, p.currency, p.rounding, p.catalog, p.catalog_versions, p.customers, p.accounts
            )?;
            writeln!(out, "    meters: {}", p.meters.join(", "))?;
        }
        Ok(())
    })();
    match report {
        Ok(()) => ExitCode::SUCCESS,
        Err(_) => ExitCode::FAILURE,
    }
}

fn run(settings: Validated) -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let started = Instant::now();
    if let Err(e) = std::fs::create_dir_all(&settings.data_dir) {
        tracing::error!(data_dir = %settings.data_dir.display(), error = %e, "cannot create the data folder");
        return ExitCode::from(2);
    }
    let engine = Arc::new(Engine::new(&settings));
    tracing::info!(
        listen = %settings.listen,
        data_dir = %settings.data_dir.display(),
        profiles = engine.profiles().count(),
        "configuration loaded"
    );
    for p in engine.partition_summaries() {
        tracing::info!(
            partition = %p.id,
            currency = %p.currency,
            rounding = %p.rounding,
            catalog = %p.catalog,
            catalog_versions = p.catalog_versions,
            meters = p.meters.len(),
            customers = p.customers,
            accounts = p.accounts,
            "partition loaded"
        );
    }
    tracing::info!(
        elapsed_ms = started.elapsed().as_millis() as u64,
        "start-up finished"
    );
    let system = actix_rt::System::new();
    match system.block_on(tallyman::api::serve(
        engine,
        settings.listen,
        settings.http_workers,
    )) {
        Ok(()) => {
            tracing::info!("stopped");
            ExitCode::SUCCESS
        }
        Err(e) => {
            tracing::error!(listen = %settings.listen, error = %e, "cannot serve");
            ExitCode::from(1)
        }
    }
}
