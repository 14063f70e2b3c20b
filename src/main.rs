//! `tallyd`: the Tallyman daemon and its command-line tools.

#![forbid(unsafe_code)]

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use clap::{Parser, Subcommand};
use tallyman::config::{Settings, Validated};
use tallyman::engine::{summarize, Engine, EngineOptions, JournalMode};

/// Tallyman's daemon: streams metered usage into running bills and closes billing periods.
#[derive(Debug, Parser)]
#[command(name = "tallyd", version, about, long_about = None)]
struct Cli {
    /// A TOML file overriding the embedded default configuration.
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    /// The address to listen on (overrides server.listen), e.g. 127.0.0.1:8080.
    #[arg(long, global = true, value_name = "ADDR")]
    listen: Option<String>,
    /// The data folder (overrides server.data_dir).
    #[arg(long, global = true, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Validate the configuration and catalogs, print a summary, and exit.
    CheckConfig,
    /// Fetch a running daemon's latency per stage and render it: a table, and with
    /// --out an .hgrm per stage, latency.svg and latency.json.
    Report {
        /// The daemon's base URL, e.g. http://127.0.0.1:8080.
        #[arg(long, value_name = "URL")]
        url: String,
        /// A folder for the files (created if missing).
        #[arg(long, value_name = "DIR")]
        out: Option<PathBuf>,
        /// A bearer token with the read scope, when the daemon has auth on.
        #[arg(long, env = "TALLYD_TOKEN", hide_env_values = true)]
        token: Option<String>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(Command::Report { url, out, token }) = &cli.command {
        return match report(url, out.as_deref(), token.as_deref()) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("tallyd report: {e}");
                ExitCode::from(1)
            }
        };
    }
    let settings = match load(&cli) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("tallyd: {e}");
            return ExitCode::from(2);
        }
    };
    match cli.command {
        Some(Command::CheckConfig) => check_config(&settings),
        Some(Command::Report { .. }) => unreachable!("handled before the configuration is read"),
        None => run(settings),
    }
}

/// `tallyd report`: the daemon's stage histograms as a table and files.
fn report(url: &str, out: Option<&std::path::Path>, token: Option<&str>) -> Result<(), String> {
    use tallyman::engine::stats::{decode_histogram, LatencyReport};
    let base = url.trim_end_matches('/');
    let url = if base.ends_with("/v1/stats/latency") {
        base.to_owned()
    } else {
        format!("{base}/v1/stats/latency")
    };
    let body = actix_rt::System::new().block_on(async {
        let mut request = awc::Client::default().get(&url);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let mut response = request.send().await.map_err(|e| format!("GET {url}: {e}"))?;
        let body = response
            .body()
            .limit(64 << 20)
            .await
            .map_err(|e| format!("GET {url}: {e}"))?;
        if !response.status().is_success() {
            return Err(format!(
                "GET {url}: {} {}",
                response.status(),
                String::from_utf8_lossy(&body)
            ));
        }
        Ok(body)
    })?;
    let report: LatencyReport =
        serde_json::from_slice(&body).map_err(|e| format!("GET {url}: not a latency report: {e}"))?;
    let mut table = format!(
        "{:<20} {:>10} {:>10} {:>10} {:>10} {:>10} {:>10} {:>10}\n",
        "stage (µs)", "count", "p50", "p90", "p99", "p99.9", "p99.99", "max"
    );
    for s in &report.stages {
        table.push_str(&format!(
            "{:<20} {:>10} {:>10.1} {:>10.1} {:>10.1} {:>10.1} {:>10.1} {:>10.1}\n",
            s.stage, s.count, s.times.p50, s.times.p90, s.times.p99, s.times.p999, s.p9999, s.times.max
        ));
    }
    print!("{table}");
    let Some(dir) = out else {
        return Ok(());
    };
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let write = |name: &str, bytes: &[u8]| {
        std::fs::write(dir.join(name), bytes).map_err(|e| format!("{}: {e}", dir.join(name).display()))
    };
    write("latency.json", &body)?;
    write("latency.txt", table.as_bytes())?;
    let mut series = Vec::new();
    for s in &report.stages {
        let h = decode_histogram(&s.histogram).map_err(|e| format!("stage {}: {e}", s.stage))?;
        let mut hgrm = Vec::new();
        tallyman::report::write_hgrm_unit(&h, 1e6, &mut hgrm).map_err(|e| e.to_string())?;
        write(&format!("{}.hgrm", s.stage), &hgrm)?;
        if !h.is_empty() {
            series.push((s.stage.as_str(), h));
        }
    }
    let series: Vec<(&str, &hdrhistogram::Histogram<u64>)> = series.iter().map(|(n, h)| (*n, h)).collect();
    tallyman::report::write_svg_unit(&series, 1e6, &dir.join("latency.svg"))?;
    println!(
        "wrote latency.json, latency.txt, latency.svg and one .hgrm per stage (values in ms) to {}",
        dir.display()
    );
    Ok(())
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
    let mut out = std::io::stdout().lock();
    let report = (|| -> std::io::Result<()> {
        writeln!(out, "configuration OK")?;
        writeln!(out, "listen: {}", settings.listen)?;
        writeln!(out, "data dir: {}", settings.data_dir.display())?;
        writeln!(
            out,
            "journal: {:?}{}",
            settings.journal.mode,
            if settings.journal.fsync {
                ", synced before every acknowledgement"
            } else {
                ", NOT synced"
            }
        )?;
        writeln!(out, "profiles:")?;
        let r = &settings.runtime;
        writeln!(
            out,
            "runtime: {} arbiter(s) (0 = one per core), {} segments per partition, mailbox {}",
            r.arbiters, r.segments, r.mailbox_capacity
        )?;
        for p in settings.profiles.values() {
            let steps: Vec<&str> = p.steps.iter().map(|s| s.name()).collect();
            let commitment = p
                .minimum_commitment
                .map(|c| format!(" (minimum commitment {c})"))
                .unwrap_or_default();
            writeln!(out, "  {}: {}{commitment}", p.name, steps.join(" → "))?;
        }
        writeln!(out, "partitions:")?;
        for p in settings.partitions.iter().map(|p| summarize(p, r.segments)) {
            writeln!(
                out,
                "  {}: {} ({}), periods in {}, catalog {} with {} version(s), {} customer(s), {} account(s)",
                p.id,
                p.currency,
                p.rounding,
                p.time_zone,
                p.catalog,
                p.catalog_versions,
                p.customers,
                p.accounts
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

/// What the engine is started with besides its settings: the journal, the webhook's
/// transport, and the test hooks read from the environment.
fn engine_options(settings: &Validated) -> EngineOptions {
    let journal = journal_mode(settings);
    EngineOptions {
        journal,
        // A crash test's hook (see tests/bill_run.rs); never set in production.
        fault_abort_after_invoice_batches: std::env::var("TALLYD_TEST_ABORT_BILL_RUN_AFTER")
            .ok()
            .and_then(|v| v.parse().ok()),
        // A test's fixed clock for grace windows (RFC 3339); never set in production.
        now: std::env::var("TALLYD_TEST_NOW").ok().and_then(|v| v.parse().ok()),
        webhook: webhook(&settings.alerts),
        ..EngineOptions::default()
    }
}

/// The webhook's transport, when `alerts.webhook_url` is set.
fn webhook(
    alerts: &tallyman::config::AlertSettings,
) -> Option<Arc<dyn tallyman::engine::alerts::AlertTransport>> {
    (!alerts.webhook_url.is_empty()).then(|| {
        let timeout = std::time::Duration::from_millis(alerts.webhook_timeout_ms);
        Arc::new(tallyman::webhook::HttpWebhook::new(
            alerts.webhook_url.clone(),
            timeout,
        )) as _
    })
}

/// Sets up logging: to stderr, filtered by `RUST_LOG` (default `info`).
fn init_tracing() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

/// Creates the data folder and takes its lock, held as long as the file is open; the
/// exit code when it cannot.
fn lock_data_folder(settings: &Validated) -> Result<std::fs::File, ExitCode> {
    if let Err(e) = std::fs::create_dir_all(&settings.data_dir) {
        tracing::error!(data_dir = %settings.data_dir.display(), error = %e, "cannot create the data folder");
        return Err(ExitCode::from(2));
    }
    // One tallyd per data folder: two writers would interleave their journals.
    let lock_path = settings.data_dir.join("tallyd.lock");
    match std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
    {
        Ok(file) => match file.try_lock() {
            Ok(()) => Ok(file),
            Err(_) => {
                tracing::error!(
                    data_dir = %settings.data_dir.display(),
                    "another tallyd is using this data folder; stop it, or give this one its own --data-dir"
                );
                Err(ExitCode::from(2))
            }
        },
        Err(e) => {
            tracing::error!(file = %lock_path.display(), error = %e, "cannot open the lock file");
            Err(ExitCode::from(2))
        }
    }
}

/// Logs what the configuration says, and whether authentication is on.
fn log_configuration(settings: &Validated) {
    tracing::info!(
        listen = %settings.listen,
        data_dir = %settings.data_dir.display(),
        profiles = settings.profiles.len(),
        arbiters = settings.runtime.arbiters,
        segments = settings.runtime.segments,
        "configuration loaded"
    );
    if settings.auth.enabled {
        tracing::info!(tokens = settings.auth.tokens.len(), "authentication on");
    } else {
        tracing::warn!(
            listen = %settings.listen,
            "AUTHENTICATION IS OFF: every request is allowed. This is for local use only \
             (tallyd refuses a non-loopback address this way); set [auth] enabled = true and configure tokens"
        );
    }
}

/// Where the engine keeps its journal, per the configuration.
fn journal_mode(settings: &Validated) -> JournalMode {
    match settings.journal.mode {
        tallyman::config::JournalKind::File => JournalMode::File {
            dir: settings.data_dir.clone(),
            fsync: settings.journal.fsync,
            file_bytes: settings.journal.file_bytes,
        },
        tallyman::config::JournalKind::Memory => JournalMode::Retained,
    }
}

/// Starts the engine (recovering every partition) and logs what it loaded.
async fn start_engine(
    settings: Validated,
    options: EngineOptions,
    started: Instant,
) -> Result<Arc<Engine>, String> {
    let engine = Engine::start(&settings, options)
        .await
        .map_err(|e| format!("cannot start the engine: {e}"))?;
    for p in engine.partition_summaries() {
        tracing::info!(
            partition = %p.id,
            currency = %p.currency,
            rounding = %p.rounding,
            catalog = %p.catalog,
            catalog_versions = p.catalog_versions,
            meters = p.meters.len(),
            segments = p.segments,
            customers = p.customers,
            accounts = p.accounts,
            "partition loaded"
        );
    }
    tracing::info!(
        elapsed_ms = started.elapsed().as_millis() as u64,
        arbiters = engine.arbiters(),
        "engine recovered"
    );
    Ok(Arc::new(engine))
}

/// What serving came to: once it stopped, the engine snapshotted and stopped; the exit
/// code when it could not serve.
async fn shut_down(served: std::io::Result<Option<Arc<Engine>>>, settings: &Validated) -> Result<(), u8> {
    match served {
        Ok(engine) => {
            if let Some(engine) = engine {
                // Requests have drained and every acknowledged batch is journaled;
                // a snapshot now makes the next start replay little.
                let _ = engine.snapshot_all().await;
                engine.stop();
            }
            Ok(())
        }
        Err(e) => {
            tracing::error!(listen = %settings.listen, error = %e, "tallyd stops");
            Err(2)
        }
    }
}

fn run(settings: Validated) -> ExitCode {
    init_tracing();
    let started = Instant::now();
    let _lock = match lock_data_folder(&settings) {
        Ok(lock) => lock,
        Err(code) => return code,
    };
    log_configuration(&settings);
    let system = actix_rt::System::new();
    let result = system.block_on(async {
        let options = engine_options(&settings);
        // The HTTP server listens at once (/health answers, /ready says 503); the engine
        // recovers meanwhile and takes traffic when it is done.
        let startup = start_engine(settings.clone(), options, started);
        let served = tallyman::api::serve(
            startup,
            settings.auth.clone(),
            settings.limits.clone(),
            settings.listen,
            settings.http_workers,
        )
        .await;
        shut_down(served, &settings).await
    });
    match result {
        Ok(()) => {
            tracing::info!("stopped");
            ExitCode::SUCCESS
        }
        Err(code) => ExitCode::from(code),
    }
}
