//! `loadgen` without a subcommand: a load run, from the workload to the reports.
//!
//! It starts tallyd when asked (`--spawn`, see [`crate::daemon`]), waits until it is
//! ready, creates the workload's customers through the bulk API (with a progress line),
//! sends the usage (see [`crate::run`]) while `--chaos` kills and restarts tallyd (see
//! [`crate::chaos`]), checks the bills with `--verify` (see [`crate::check`]), and writes
//! the reports (see [`crate::report`]).

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{TimeZone, Utc};

use crate::chaos::{Chaos, Kill};
use crate::daemon::Daemon;
pub use crate::plan::Load;
use crate::plan::{generator, ledger, schedule};
use crate::report::{write_hgrm, write_hlog, write_svg, Percentiles};
use crate::run::{run, Http, LoadResult};
use crate::workload::{EventRecord, Workload, WorkloadSpec};

/// Runs the load and writes the reports; answers whether it ran clean (no errors, and
/// with `--verify`, no mismatch).
pub fn load(l: Load) -> Result<bool, String> {
    if l.batch == 0 || l.connections == 0 {
        return Err("--batch and --connections must be at least 1".into());
    }
    if l.chaos && !l.spawn {
        return Err("--chaos needs --spawn: loadgen kills and restarts the tallyd it started".into());
    }
    if l.in_process && (l.target.is_some() || l.spawn) {
        return Err("--in-process drives an engine inside loadgen: give neither --target nor --spawn".into());
    }
    let midnight = |d: chrono::NaiveDate| Utc.from_utc_datetime(&d.and_hms_opt(0, 0, 0).expect("midnight"));
    let spec = WorkloadSpec {
        accounts: l.accounts,
        customers: l.customers,
        seed: l.seed,
        family_skew: l.family_skew,
        traffic_skew: l.traffic_skew,
        period_start: midnight(l.period.first_day()),
        period_end: midnight(l.period.end()),
        profile: l.profile.clone(),
    };
    let workload = Workload::new(spec.clone(), l.meters.clone())?;
    std::fs::create_dir_all(&l.out).map_err(|e| format!("cannot create {}: {e}", l.out.display()))?;
    let system = actix_rt::System::new();
    let (target, result, kills, verdict) = if l.in_process {
        let (result, verdict) = system.block_on(crate::inprocess::drive(&l, spec, workload))?;
        ("in-process".to_string(), result, None, verdict)
    } else {
        let (daemon, target) = match (&l.target, l.spawn) {
            (Some(t), false) => (None, t.clone()),
            (None, true) => {
                let extra = if l.chaos { crate::chaos::CONFIG } else { "" };
                let d = Daemon::start(l.period, &l.partition, extra)?;
                let url = d.url();
                (Some(Arc::new(Mutex::new(d))), url)
            }
            _ => return Err("give --target URL, --spawn or --in-process".into()),
        };
        let (result, kills, verdict) =
            system.block_on(over_http(&l, daemon.clone(), &target, spec, workload))?;
        drop(daemon);
        (target, result, kills, verdict)
    };
    report(&l, &target, result, kills, verdict)
}

/// A batch as tallyd's usage route takes it: a JSON array.
fn json_array(events: Vec<EventRecord>) -> Vec<u8> {
    let mut body = Vec::with_capacity(events.len() * 160);
    serde_json::to_writer(&mut body, &events).expect("plain data");
    body
}

/// A run against tallyd over HTTP (started by loadgen or not), with chaos and the
/// verification when asked.
async fn over_http(
    l: &Load,
    daemon: Option<Arc<Mutex<Daemon>>>,
    target: &str,
    spec: WorkloadSpec,
    workload: Workload,
) -> Result<(LoadResult, Option<Vec<Kill>>, Option<crate::check::Verdict>), String> {
    let client = awc::Client::builder().timeout(Duration::from_secs(120)).finish();
    wait_ready(&client, target).await?;
    let setup = if l.verify {
        Some(crate::check::prepare(&client, target, &l.partition, l.period).await?)
    } else {
        None
    };
    if !l.no_seed {
        seed(&client, target, &l.partition, &workload).await?;
    }
    let customers = if l.verify {
        workload.customers().to_vec()
    } else {
        Vec::new()
    };
    let (rx, generator) = generator(workload, l.batch, json_array);
    let spec_of_run = schedule(l);
    let chaos = match (&daemon, l.chaos) {
        (Some(d), true) => Some(Chaos::start(
            d.clone(),
            l.seed,
            Duration::from_secs(l.warmup + l.duration),
        )),
        _ => None,
    };
    let result = run(spec_of_run, Http::new(target, &l.partition, l.connections), rx).await;
    let _ = generator.join();
    let kills = chaos.map(Chaos::finish).transpose()?;
    let verdict = match setup {
        Some(setup) => {
            let ledger = ledger(l, spec, &result, &setup)?;
            crate::check::bill_run(&client, target, &l.partition, l.period).await?;
            let invoices = crate::check::invoices(&client, target, &l.partition, l.period).await?;
            Some(crate::check::judge(
                &ledger,
                &customers,
                &invoices,
                &setup,
                result.acknowledged.len(),
                &l.out,
            )?)
        }
        None => None,
    };
    Ok((result, kills, verdict))
}

/// Prints the tables and writes the reports; answers whether the run was clean.
fn report(
    l: &Load,
    target: &str,
    result: LoadResult,
    kills: Option<Vec<Kill>>,
    verdict: Option<crate::check::Verdict>,
) -> Result<bool, String> {
    let secs = measured_secs(&result);
    let latency = Percentiles::of(&result.latency);
    let service = Percentiles::of(&result.service);
    print_tables(&result, &latency, &service, secs, kills.as_deref());
    write_histograms(l, &result)?;
    let summary = summary(l, target, &result, &kills, &verdict, latency, service);
    std::fs::write(
        l.out.join("summary.json"),
        serde_json::to_vec_pretty(&summary).expect("plain data"),
    )
    .map_err(|e| e.to_string())?;
    write_svg(
        &[
            ("latency (intended)", &result.latency),
            ("service time", &result.service),
        ],
        &l.out.join("latency.svg"),
    )?;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(
        out,
        "reports: {}/{{latency.hgrm, service.hgrm, latency.hlog, summary.json, latency.svg{}}}",
        l.out.display(),
        if verdict.is_some() { ", verify.json" } else { "" }
    );
    let verified = match &verdict {
        Some(v) => print_verdict(&mut out, l, v),
        None => true,
    };
    Ok(result.errors == 0 && verified)
}

/// The latency tables, the throughput line, what chaos did, and the first errors.
fn print_tables(
    result: &LoadResult,
    latency: &Percentiles,
    service: &Percentiles,
    secs: f64,
    kills: Option<&[Kill]>,
) {
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
    if let Some(kills) = kills {
        println!(
            "chaos: tallyd killed {} times (down {} ms at most); {} sends after a failed connection, {} answered 503 (recovering), {} events acknowledged as duplicates",
            kills.len(),
            kills.iter().map(|k| k.down_ms).fold(0.0, f64::max).round(),
            result.resent,
            result.unavailable,
            result.duplicates
        );
    }
    for e in &result.error_samples {
        println!("  error: {e}");
    }
}

/// `latency.hgrm`, `service.hgrm` and `latency.hlog` (one histogram a second).
fn write_histograms(l: &Load, result: &LoadResult) -> Result<(), String> {
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
    Ok(())
}

/// The measured part of the run, in seconds (never 0).
fn measured_secs(result: &LoadResult) -> f64 {
    result.measured.as_secs_f64().max(1e-9)
}

/// `summary.json`: the run's settings and figures.
fn summary(
    l: &Load,
    target: &str,
    result: &LoadResult,
    kills: &Option<Vec<Kill>>,
    verdict: &Option<crate::check::Verdict>,
    latency: Percentiles,
    service: Percentiles,
) -> serde_json::Value {
    let secs = measured_secs(result);
    serde_json::json!({
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
        "answered_503": result.unavailable,
        "resent": result.resent,
        "acknowledged_events": result.acknowledged_events,
        "duplicates": result.duplicates,
        "errors": result.errors,
        "refused_events": result.refused.iter().map(|(_, at)| at.len()).sum::<usize>(),
        "chaos": kills.as_ref().map(|k| serde_json::json!({ "kills": k })),
        "verify": verdict.as_ref().map(|v| serde_json::json!({
            "customers": v.customers,
            "invoices": v.invoices,
            "mismatches": v.mismatches.len(),
        })),
        "latency_ms": latency,
        "service_ms": service,
    })
}

/// What `--verify` found, with the first mismatches; answers whether all matched.
fn print_verdict(out: &mut impl Write, l: &Load, v: &crate::check::Verdict) -> bool {
    if v.mismatches.is_empty() {
        let _ = writeln!(
            out,
            "verify: all {} customers match ({} invoices, {} acknowledged events, {} {} billed)",
            v.customers, v.invoices, v.acknowledged_events, v.invoiced_total, v.currency
        );
        return true;
    }
    let customers: std::collections::BTreeSet<&str> =
        v.mismatches.iter().map(|m| m.customer.as_str()).collect();
    let _ = writeln!(
        out,
        "verify: {} MISMATCHES in {} of {} customers (expected {} in all, invoiced {}); all of them in {}",
        v.mismatches.len(),
        customers.len(),
        v.customers,
        v.expected_total,
        v.invoiced_total,
        l.out.join("verify.json").display()
    );
    for m in v.mismatches.iter().take(20) {
        let _ = writeln!(
            out,
            "  {} {}: expected {}, got {}",
            m.customer, m.figure, m.expected, m.got
        );
    }
    false
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
