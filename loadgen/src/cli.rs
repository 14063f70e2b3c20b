//! `loadgen` without a subcommand: a load run, from the workload to the reports.
//!
//! It starts tallyd when asked (`--spawn`), waits until it is ready, creates the
//! workload's customers through the bulk API (with a progress line), sends the usage
//! (see [`crate::run`]), and writes the reports (see [`crate::report`]).

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use chrono::{TimeZone, Utc};
use tallyman::domain::Period;

use crate::report::{write_hgrm, write_hlog, write_svg, Percentiles};
use crate::run::{run, LoadSpec};
use crate::workload::{MeterShape, Workload, WorkloadSpec};

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
    /// Flags of API.md that are not built yet, given anyway.
    pub unbuilt: Vec<&'static str>,
}

/// A tallyd started by loadgen, stopped (SIGTERM) when dropped.
struct Spawned {
    child: Child,
    _dir: TempDir,
}

struct TempDir(PathBuf);
impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
    }
}

/// Starts the tallyd beside this binary on a temporary folder, with the workload's
/// period open; answers it and its base URL once it listens.
fn spawn(period: Period, partition: &str) -> Result<(Spawned, String), String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let tallyd = exe.with_file_name("tallyd");
    if !tallyd.exists() {
        return Err(format!(
            "--spawn needs tallyd beside loadgen ({}): build it with `cargo build --release --bin tallyd`",
            tallyd.display()
        ));
    }
    let dir = std::env::temp_dir().join(format!("loadgen-tallyd-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let config = dir.join("config.toml");
    std::fs::write(
        &config,
        format!(
            "[[partitions]]\nid = \"{partition}\"\ncurrency = \"USD\"\ncatalog = \"cloud-usd\"\nopen_period = \"{period}\"\n"
        ),
    )
    .map_err(|e| e.to_string())?;
    let mut child = Command::new(&tallyd)
        .args(["--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.join("data"))
        .arg("--config")
        .arg(&config)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", tallyd.display()))?;
    let stderr = child.stderr.take().expect("piped");
    let mut lines = BufReader::new(stderr).lines();
    let mut addr = None;
    for line in lines.by_ref() {
        let line = line.map_err(|e| e.to_string())?;
        if let Some(rest) = line.split("listening on ").nth(1) {
            addr = rest.split_whitespace().next().map(str::to_owned);
        }
        if line.contains("start-up finished") {
            break;
        }
    }
    // Keep reading, so tallyd never blocks on a full pipe.
    std::thread::spawn(move || lines.map_while(Result::ok).for_each(drop));
    let addr = addr.ok_or("the spawned tallyd never said where it listens")?;
    eprintln!("loadgen: spawned tallyd on {addr} (data in {})", dir.display());
    Ok((
        Spawned {
            child,
            _dir: TempDir(dir),
        },
        format!("http://{addr}"),
    ))
}

/// Runs the load and writes the reports; answers whether it ran clean (no errors).
pub fn load(l: Load) -> Result<bool, String> {
    if let Some(flag) = l.unbuilt.first() {
        return Err(format!("{flag} is not built yet (see the open loadgen issue)"));
    }
    if l.batch == 0 || l.connections == 0 {
        return Err("--batch and --connections must be at least 1".into());
    }
    let (spawned, target) = match (&l.target, l.spawn) {
        (Some(t), false) => (None, t.clone()),
        (None, true) => {
            let (s, url) = spawn(l.period, &l.partition)?;
            (Some(s), url)
        }
        _ => return Err("give --target URL or --spawn".into()),
    };
    let midnight = |d: chrono::NaiveDate| Utc.from_utc_datetime(&d.and_hms_opt(0, 0, 0).expect("midnight"));
    let mut workload = Workload::new(
        WorkloadSpec {
            accounts: l.accounts,
            customers: l.customers,
            seed: l.seed,
            family_skew: l.family_skew,
            traffic_skew: l.traffic_skew,
            period_start: midnight(l.period.first_day()),
            period_end: midnight(l.period.end()),
            profile: l.profile.clone(),
        },
        l.meters.clone(),
    )?;
    std::fs::create_dir_all(&l.out).map_err(|e| format!("cannot create {}: {e}", l.out.display()))?;
    let system = actix_rt::System::new();
    let result = system.block_on(async {
        let client = awc::Client::builder().timeout(Duration::from_secs(120)).finish();
        wait_ready(&client, &target).await?;
        if !l.no_seed {
            seed(&client, &target, &l.partition, &workload).await?;
        }
        // Bodies are made ahead of the schedule, on a thread of their own.
        let (tx, rx) = tokio::sync::mpsc::channel::<Vec<u8>>(256);
        let batch = l.batch;
        let generator = std::thread::spawn(move || loop {
            let mut body = Vec::with_capacity(batch * 160);
            body.push(b'[');
            for i in 0..batch {
                if i > 0 {
                    body.push(b',');
                }
                serde_json::to_writer(&mut body, &workload.next_event()).expect("plain data");
            }
            body.push(b']');
            if tx.blocking_send(body).is_err() {
                return;
            }
        });
        eprintln!(
            "loadgen: {} events/s{} in batches of {} over {} connections, {} s warm-up, {} s measured",
            l.rate,
            if l.rate == 0 { " (closed loop)" } else { "" },
            l.batch,
            l.connections,
            l.warmup,
            l.duration
        );
        let result = run(
            LoadSpec {
                target: target.clone(),
                partition: l.partition.clone(),
                rate: l.rate,
                batch: l.batch,
                connections: l.connections,
                warmup: Duration::from_secs(l.warmup),
                duration: Duration::from_secs(l.duration),
            },
            rx,
        )
        .await;
        let _ = generator.join();
        Ok::<_, String>(result)
    })?;
    drop(spawned);

    let secs = result.measured.as_secs_f64().max(1e-9);
    let latency = Percentiles::of(&result.latency);
    let service = Percentiles::of(&result.service);
    let mut table = String::new();
    table.push_str(&latency.table("latency (from intended send)"));
    table.push_str(&service.table("service time (from send)"));
    print!("{table}");
    println!(
        "offered {:.0} events/s, accepted {:.0} events/s; {} answered 429 (retried), {} errors",
        result.offered_events as f64 / secs,
        result.accepted_events as f64 / secs,
        result.too_busy,
        result.errors
    );
    for e in &result.error_samples {
        println!("  error: {e}");
    }
    let path = |name: &str| l.out.join(name);
    let mut hgrm = Vec::new();
    write_hgrm(&result.latency, &mut hgrm).map_err(|e| e.to_string())?;
    std::fs::write(path("latency.hgrm"), hgrm).map_err(|e| e.to_string())?;
    let mut service_hgrm = Vec::new();
    write_hgrm(&result.service, &mut service_hgrm).map_err(|e| e.to_string())?;
    std::fs::write(path("service.hgrm"), service_hgrm).map_err(|e| e.to_string())?;
    let mut hlog = Vec::new();
    write_hlog(&result.intervals, result.started, &mut hlog)?;
    std::fs::write(path("latency.hlog"), hlog).map_err(|e| e.to_string())?;
    let summary = serde_json::json!({
        "target": target,
        "partition": l.partition,
        "accounts": l.accounts,
        "customers": l.customers,
        "seed": l.seed,
        "batch": l.batch,
        "connections": l.connections,
        "mode": if l.rate == 0 { "closed-loop" } else { "open-loop" },
        "offered_events_per_s": result.offered_events as f64 / secs,
        "accepted_events_per_s": result.accepted_events as f64 / secs,
        "measured_s": secs,
        "answered_429": result.too_busy,
        "errors": result.errors,
        "latency_ms": latency,
        "service_ms": service,
    });
    std::fs::write(
        path("summary.json"),
        serde_json::to_vec_pretty(&summary).expect("plain data"),
    )
    .map_err(|e| e.to_string())?;
    write_svg(
        &[
            ("latency (intended)", &result.latency),
            ("service time", &result.service),
        ],
        &path("latency.svg"),
    )?;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(
        out,
        "reports: {}/{{latency.hgrm, service.hgrm, latency.hlog, summary.json, latency.svg}}",
        l.out.display()
    );
    Ok(result.errors == 0)
}

/// Waits until tallyd answers `/ready` (it listens before it has recovered).
async fn wait_ready(client: &awc::Client, target: &str) -> Result<(), String> {
    let url = format!("{}/ready", target.trim_end_matches('/'));
    for _ in 0..600 {
        if let Ok(r) = client.get(url.as_str()).send().await {
            if r.status().is_success() {
                return Ok(());
            }
        }
        actix_rt::time::sleep(Duration::from_millis(100)).await;
    }
    Err(format!("{target} did not become ready within a minute"))
}

/// Creates the workload's customers through the bulk API, 5,000 a request, with a
/// progress line.
async fn seed(
    client: &awc::Client,
    target: &str,
    partition: &str,
    workload: &Workload,
) -> Result<(), String> {
    let url = format!(
        "{}/v1/partitions/{partition}/customers/bulk",
        target.trim_end_matches('/')
    );
    let customers = workload.customers();
    let mut done = 0;
    for chunk in customers.chunks(5000) {
        let mut body = Vec::new();
        for c in chunk {
            serde_json::to_writer(&mut body, c).expect("plain data");
            body.push(b'\n');
        }
        let mut r = client
            .post(url.as_str())
            .insert_header(("Content-Type", "application/x-ndjson"))
            .send_body(body)
            .await
            .map_err(|e| format!("creating customers: {e}"))?;
        if !r.status().is_success() {
            let text = r.body().await.unwrap_or_default();
            return Err(format!(
                "creating customers: {} {}",
                r.status(),
                String::from_utf8_lossy(&text)
            ));
        }
        done += chunk.len();
        eprint!(
            "\rloadgen: creating customers {done}/{} ({:.0}%)",
            customers.len(),
            done as f64 * 100.0 / customers.len() as f64
        );
    }
    eprintln!();
    Ok(())
}
