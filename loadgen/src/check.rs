//! The `--verify` run against a tallyd: the HTTP side of [`crate::verify`].
//!
//! Before the load it reads the partition (its currency and open period) and the price
//! list in force for the period; after it, it replays the seeded workload and folds the
//! acknowledged batches (and only those) into a [`Ledger`], closes the period with a bill
//! run, reads every invoice, compares them with the oracle's bills, and writes
//! `verify.json`. Closing the period is what makes the invoices, so a verified run
//! leaves the period closed. `--in-process` uses the same replay, invoice reading and
//! judgement, with the engine's API in place of HTTP.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde::Serialize;
use tallyman::domain::Period;

use crate::verify::{compare, expected_bills, invoice_figures, BillFigures, Ledger, Mismatch, PriceList};
use crate::workload::{MeterShape, Workload, WorkloadSpec};

/// What the oracle needs from tallyd before the load.
pub struct Setup {
    pub partition: String,
    pub period: Period,
    pub prices: PriceList,
    pub currency: String,
}

/// The outcome of a verification, as written to `verify.json`.
#[derive(Debug, Serialize)]
pub struct Verdict {
    pub partition: String,
    pub period: String,
    pub currency: String,
    pub customers: usize,
    /// Invoices of the workload's customers.
    pub invoices: usize,
    /// Invoices of other customers of the partition (not checked).
    pub other_invoices: usize,
    pub acknowledged_batches: usize,
    pub acknowledged_events: u64,
    /// What the check covered, per meter: how many customers it charged, and the
    /// largest family quantity (to see which tiers were reached).
    pub meters: BTreeMap<String, Coverage>,
    /// Sum of the expected totals, and of the workload's customers' invoiced ones.
    pub expected_total: String,
    pub invoiced_total: String,
    pub mismatches: Vec<Mismatch>,
}

/// One meter's part in a verification.
#[derive(Debug, Default, Serialize)]
pub struct Coverage {
    /// Customers whose expected line is above zero.
    pub customers_charged: usize,
    pub largest_quantity: rust_decimal::Decimal,
    pub largest_line: rust_decimal::Decimal,
}

async fn get_json(client: &awc::Client, url: &str) -> Result<serde_json::Value, String> {
    let mut r = client
        .get(url)
        .send()
        .await
        .map_err(|e| format!("GET {url}: {e}"))?;
    let body = r
        .body()
        .limit(64 << 20)
        .await
        .map_err(|e| format!("GET {url}: {e}"))?;
    if !r.status().is_success() {
        return Err(format!(
            "GET {url}: {} {}",
            r.status(),
            String::from_utf8_lossy(&body)
        ));
    }
    serde_json::from_slice(&body).map_err(|e| format!("GET {url}: {e}"))
}

/// The open period of `partition` at `target`: the period a run's events must fall in.
pub async fn open_period(client: &awc::Client, target: &str, partition: &str) -> Result<Period, String> {
    let base = target.trim_end_matches('/');
    let partitions = get_json(client, &format!("{base}/v1/partitions")).await?;
    partitions
        .as_array()
        .and_then(|ps| ps.iter().find(|p| p["id"] == partition))
        .ok_or_else(|| format!("tallyd at {base} has no partition {partition:?}"))?["open_period"]
        .as_str()
        .and_then(|p| p.parse().ok())
        .ok_or_else(|| format!("tallyd at {base} names no open period for {partition:?}"))
}

/// Reads the partition and its price list; refuses what the oracle does not model (a
/// period that is not the open one, a price change inside the period).
pub async fn prepare(
    client: &awc::Client,
    target: &str,
    partition: &str,
    period: Period,
) -> Result<Setup, String> {
    let base = target.trim_end_matches('/');
    let partitions = get_json(client, &format!("{base}/v1/partitions")).await?;
    let p = partitions
        .as_array()
        .and_then(|ps| ps.iter().find(|p| p["id"] == partition))
        .ok_or_else(|| format!("--verify: tallyd has no partition {partition:?}"))?;
    let open = p["open_period"].as_str().unwrap_or_default();
    if open != period.to_string() {
        return Err(format!(
            "--verify: partition {partition:?} has {open} open, not the workload's period {period} (give --period {open})"
        ));
    }
    let currency = p["currency"]
        .as_str()
        .ok_or("--verify: the partition has no currency")?
        .to_string();
    let at = |day: chrono::NaiveDate| format!("{base}/v1/partitions/{partition}/catalog?at={day}");
    let first = get_json(client, &at(period.first_day())).await?;
    let last = get_json(client, &at(period.last_day())).await?;
    if first["effective_from"] != last["effective_from"] {
        return Err(format!(
            "--verify: the catalog changes inside {period} (a version from {}); the check models one version per period",
            last["effective_from"]
        ));
    }
    Ok(Setup {
        partition: partition.to_string(),
        period,
        prices: PriceList::from_catalog_json(&first)?,
        currency,
    })
}

/// Replays the seeded workload and folds the batches numbered in `acknowledged`
/// (ascending) into a ledger: batch `k` is events `k × batch … (k + 1) × batch − 1` of
/// the stream, as the generator made them. The events of `refused` (a batch's number and
/// positions in it, ascending) were refused when applied and are left out.
pub fn replay(
    spec: WorkloadSpec,
    meters: Vec<MeterShape>,
    batch: usize,
    acknowledged: &[u64],
    refused: &[(u64, Vec<u32>)],
    prices: PriceList,
) -> Result<Ledger, String> {
    let refused: std::collections::HashMap<u64, &[u32]> =
        refused.iter().map(|(seq, at)| (*seq, at.as_slice())).collect();
    let mut workload = Workload::new(spec, meters)?;
    let mut ledger = Ledger::new(prices);
    let mut next = 0u64;
    for &seq in acknowledged {
        while next < seq {
            for _ in 0..batch {
                workload.next_event();
            }
            next += 1;
        }
        let left_out = refused.get(&seq).copied().unwrap_or(&[]);
        for i in 0..batch {
            let event = workload.next_event();
            if !left_out.contains(&(i as u32)) {
                ledger.record(&event)?;
            }
        }
        next += 1;
    }
    Ok(ledger)
}

/// Closes `period` with a bill run and waits until it is done.
pub async fn bill_run(
    client: &awc::Client,
    target: &str,
    partition: &str,
    period: Period,
) -> Result<(), String> {
    let base = target.trim_end_matches('/');
    let url = format!("{base}/v1/partitions/{partition}/bill-runs");
    let mut r = client
        .post(url.as_str())
        .send_json(&serde_json::json!({ "period": period.to_string() }))
        .await
        .map_err(|e| format!("POST {url}: {e}"))?;
    let body = r.body().await.map_err(|e| format!("POST {url}: {e}"))?;
    if !r.status().is_success() {
        return Err(format!(
            "POST {url}: {} {}",
            r.status(),
            String::from_utf8_lossy(&body)
        ));
    }
    let run: serde_json::Value = serde_json::from_slice(&body).map_err(|e| e.to_string())?;
    let id = run["id"].as_str().ok_or("the bill run has no id")?.to_string();
    let started = Instant::now();
    loop {
        let run = get_json(client, &format!("{url}/{id}")).await?;
        match run["state"].as_str() {
            Some("done") => {
                eprintln!(
                    "loadgen: bill run {id} done: {} invoices, {} billed",
                    run["invoices"], run["total_billed"]
                );
                return Ok(());
            }
            Some("running") if started.elapsed() < Duration::from_secs(1800) => {
                actix_rt::time::sleep(Duration::from_millis(50)).await;
            }
            _ => return Err(format!("bill run {id}: {run}")),
        }
    }
}

/// Reads every invoice of `period` (NDJSON, streamed) as figures, by customer.
pub async fn invoices(
    client: &awc::Client,
    target: &str,
    partition: &str,
    period: Period,
) -> Result<BTreeMap<String, BillFigures>, String> {
    let url = format!(
        "{}/v1/partitions/{partition}/invoices?period={period}",
        target.trim_end_matches('/')
    );
    let mut r = client
        .get(url.as_str())
        .send()
        .await
        .map_err(|e| format!("GET {url}: {e}"))?;
    if !r.status().is_success() {
        let body = r.body().await.unwrap_or_default();
        return Err(format!(
            "GET {url}: {} {}",
            r.status(),
            String::from_utf8_lossy(&body)
        ));
    }
    let mut out = BTreeMap::new();
    let mut pending: Vec<u8> = Vec::new();
    while let Some(chunk) = r.next().await {
        pending.extend_from_slice(&chunk.map_err(|e| format!("GET {url}: {e}"))?);
        if let Some(at) = pending.iter().rposition(|&b| b == b'\n') {
            add_invoices(&pending[..at], period, &mut out)?;
            pending.drain(..=at);
        }
    }
    add_invoices(&pending, period, &mut out)?;
    Ok(out)
}

/// Reads invoices of `period` from NDJSON (whole lines) into `out`, by customer.
pub fn add_invoices(
    ndjson: &[u8],
    period: Period,
    out: &mut BTreeMap<String, BillFigures>,
) -> Result<(), String> {
    for line in ndjson.split(|&b| b == b'\n') {
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let v: serde_json::Value =
            serde_json::from_slice(line).map_err(|e| format!("an invoice line: {e}"))?;
        let (customer, figures) = invoice_figures(&v)?;
        if out.insert(customer.clone(), figures).is_some() {
            return Err(format!("two invoices of {period} for customer {customer}"));
        }
    }
    Ok(())
}

/// Compares the oracle's bills with the invoices; writes `verify.json` into `out`.
pub fn judge(
    ledger: &Ledger,
    customers: &[crate::workload::CustomerRecord],
    invoices: &BTreeMap<String, BillFigures>,
    setup: &Setup,
    acknowledged_batches: usize,
    out: &Path,
) -> Result<Verdict, String> {
    let expected = expected_bills(ledger, customers, &setup.currency)?;
    let mut meters: BTreeMap<String, Coverage> = BTreeMap::new();
    for bill in expected.values() {
        for (meter, line) in &bill.lines {
            let c = meters.entry(meter.clone()).or_default();
            c.customers_charged += usize::from(!line.is_zero());
            c.largest_line = c.largest_line.max(*line);
            c.largest_quantity = c.largest_quantity.max(bill.quantities[meter]);
        }
    }
    let verdict = Verdict {
        meters,
        partition: setup.partition.clone(),
        period: setup.period.to_string(),
        currency: setup.currency.clone(),
        customers: expected.len(),
        invoices: invoices.keys().filter(|c| expected.contains_key(*c)).count(),
        other_invoices: invoices.keys().filter(|c| !expected.contains_key(*c)).count(),
        acknowledged_batches,
        acknowledged_events: ledger.events(),
        expected_total: expected
            .values()
            .map(|b| b.total)
            .sum::<rust_decimal::Decimal>()
            .to_string(),
        invoiced_total: invoices
            .iter()
            .filter(|(c, _)| expected.contains_key(*c))
            .map(|(_, b)| b.total)
            .sum::<rust_decimal::Decimal>()
            .to_string(),
        mismatches: compare(&expected, invoices),
    };
    let path = out.join("verify.json");
    std::fs::write(&path, serde_json::to_vec_pretty(&verdict).expect("plain data"))
        .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    Ok(verdict)
}
