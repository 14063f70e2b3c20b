//! Bill runs: closing a period for every customer of a partition.
//!
//! Starting a run closes the open period at once — under the routing lock, persisted in
//! `periods.json` — so usage of the next period streams on while the run works, and
//! usage of the closed one is refused with the period's name. The run then waits until
//! every record journaled before the close has reached its segment, and asks all the
//! segments at once (each on its own core) to price their customers' bills of the
//! period. Each segment's invoices are numbered, written and synced, and only then is a
//! `Close` command journaled for each of those customers, which lets the period's usage
//! go and keeps each credit's remaining balance. So a crash anywhere resumes at the next
//! start: customers with an invoice and no `Close` get their `Close` (from the stored
//! invoice), the others are priced again. No invoice is written twice, none is missing.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use hdrhistogram::Histogram;
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use super::account::{CustomerCommand, CustomerKey, PeriodClose, PricingView};
use super::{EngineError, PartitionEngine};
use crate::domain::{Bill, Period};
use crate::store::invoices::InvoiceStore;

/// The open period, and the one being closed (until its bill run finishes).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeriodState {
    pub open: Period,
    pub closing: Option<Period>,
}

/// Per-customer pricing time, in microseconds.
pub type ComputeTimes = super::stats::Micros;

/// A bill run as `GET …/bill-runs/{id}` shows it.
#[derive(Clone, Debug, Serialize, schemars::JsonSchema)]
pub struct BillRunView {
    pub id: String,
    pub period: Period,
    /// `running`, `done` or `failed`.
    pub state: &'static str,
    pub customers_done: u64,
    pub customers_total: u64,
    pub invoices: u64,
    pub total_billed: Decimal,
    pub elapsed_ms: u64,
    /// Customers per second so far.
    pub rate: f64,
    /// While running: the time left at the current rate.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub eta_ms: Option<u64>,
    /// Once done: how long the run took.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<u64>,
    /// Once done: how long pricing one customer took.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub compute_us: Option<ComputeTimes>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(Clone, Debug)]
enum RunState {
    Running,
    Done { duration_ms: u64 },
    Failed(String),
}

/// A bill run's progress.
pub struct BillRun {
    pub id: String,
    pub period: Period,
    started: Instant,
    customers_total: AtomicU64,
    customers_done: AtomicU64,
    invoices: AtomicU64,
    total_billed: Mutex<Decimal>,
    /// Nanoseconds per customer priced.
    compute: Mutex<Histogram<u64>>,
    state: Mutex<RunState>,
    /// A finished run read back from its summary.
    summary: Option<serde_json::Value>,
}

pub fn run_id(partition: &str, period: Period) -> String {
    format!("{partition}-{period}")
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000_000, 3).expect("valid bounds")
}

impl BillRun {
    fn new(partition: &str, period: Period) -> BillRun {
        BillRun {
            id: run_id(partition, period),
            period,
            started: Instant::now(),
            customers_total: AtomicU64::new(0),
            customers_done: AtomicU64::new(0),
            invoices: AtomicU64::new(0),
            total_billed: Mutex::new(Decimal::ZERO),
            compute: Mutex::new(histogram()),
            state: Mutex::new(RunState::Running),
            summary: None,
        }
    }

    /// A run that finished before this process started, from its stored summary.
    fn finished(partition: &str, period: Period, summary: serde_json::Value) -> BillRun {
        let mut run = BillRun::new(partition, period);
        run.summary = Some(summary);
        run
    }

    pub fn view(&self) -> BillRunView {
        if let Some(summary) = &self.summary {
            if let Ok(view) = serde_json::from_value::<StoredSummary>(summary.clone()) {
                return view.into_view(self.id.clone(), self.period);
            }
        }
        let done = self.customers_done.load(Ordering::Relaxed);
        let total = self.customers_total.load(Ordering::Relaxed).max(done);
        let state = self.state.lock().unwrap_or_else(|p| p.into_inner()).clone();
        // A finished run's rate is over its duration, not over the time since it started.
        let elapsed = match &state {
            RunState::Done { duration_ms } => std::time::Duration::from_millis(*duration_ms),
            _ => self.started.elapsed(),
        };
        let rate = done as f64 / elapsed.as_secs_f64().max(1e-3);
        let (name, eta_ms, duration_ms, error) = match &state {
            RunState::Running => (
                "running",
                (rate > 0.0).then(|| ((total - done) as f64 / rate * 1000.0) as u64),
                None,
                None,
            ),
            RunState::Done { duration_ms } => ("done", None, Some(*duration_ms), None),
            RunState::Failed(e) => ("failed", None, None, Some(e.clone())),
        };
        let compute = self.compute.lock().unwrap_or_else(|p| p.into_inner());
        BillRunView {
            id: self.id.clone(),
            period: self.period,
            state: name,
            customers_done: done,
            customers_total: total,
            invoices: self.invoices.load(Ordering::Relaxed),
            total_billed: *self.total_billed.lock().unwrap_or_else(|p| p.into_inner()),
            elapsed_ms: duration_ms.unwrap_or(elapsed.as_millis() as u64),
            rate,
            eta_ms,
            duration_ms,
            compute_us: (matches!(state, RunState::Done { .. }) && !compute.is_empty())
                .then(|| ComputeTimes::of(&compute)),
            error,
        }
    }

    fn fail(&self, why: String) {
        *self.state.lock().unwrap_or_else(|p| p.into_inner()) = RunState::Failed(why);
    }
}

/// What `<period>.done.json` holds.
#[derive(Serialize, Deserialize)]
struct StoredSummary {
    customers: u64,
    invoices: u64,
    total_billed: Decimal,
    duration_ms: u64,
    #[serde(default)]
    compute_us: Option<serde_json::Value>,
}

impl StoredSummary {
    fn into_view(self, id: String, period: Period) -> BillRunView {
        BillRunView {
            id,
            period,
            state: "done",
            customers_done: self.customers,
            customers_total: self.customers,
            invoices: self.invoices,
            total_billed: self.total_billed,
            elapsed_ms: self.duration_ms,
            rate: self.customers as f64 / (self.duration_ms.max(1) as f64 / 1000.0),
            eta_ms: None,
            duration_ms: Some(self.duration_ms),
            compute_us: self
                .compute_us
                .and_then(|v| serde_json::from_value::<ComputeTimes>(v).ok()),
            error: None,
        }
    }
}

/// A customer's invoice, priced and encoded (without its number) on its segment's thread.
struct Priced {
    customer: CustomerKey,
    /// [`InvoiceStore::encode`] of the bill.
    encoded: Vec<u8>,
    total: Decimal,
    /// `(credit id, balance left)` for the `Close` command.
    credits: Vec<(String, Decimal)>,
}

/// What one segment's visit found.
#[derive(Default)]
struct SegmentBills {
    /// Customers to invoice.
    invoices: Vec<Priced>,
    /// Customers invoiced before a crash whose `Close` may not have been applied.
    reclose: Vec<CustomerKey>,
    /// Customers with nothing to invoice: closed all the same, so that every customer
    /// moves on to the next period in step.
    nothing: Vec<CustomerKey>,
    /// Customers looked at.
    visited: u64,
    compute: Option<Histogram<u64>>,
    failures: Vec<String>,
}

/// Whether a bill is worth an invoice: usage, or a charge the profile makes anyway.
fn invoiced(bill: &Bill) -> bool {
    !bill.accounts.is_empty()
        || !bill.total.is_zero()
        || !bill.lines.is_empty()
        || !bill.adjustments.is_empty()
}

fn close_command(
    period: Period,
    late_until: chrono::NaiveDate,
    credits: impl Iterator<Item = (String, Decimal)>,
) -> CustomerCommand {
    CustomerCommand::Close(Box::new(PeriodClose {
        period,
        late_until,
        credits: credits.collect(),
    }))
}

impl PartitionEngine {
    /// Starts the bill run that closes `period` (the open period), or answers the run
    /// of that period if there is one: a run is idempotent. Ingest for the next period
    /// goes on meanwhile.
    pub async fn start_bill_run(self: &Arc<Self>, period: Period) -> Result<BillRunView, EngineError> {
        let _one = self.closing.lock().await;
        if let Some(run) = self.runs.lock().unwrap_or_else(|p| p.into_inner()).get(&period) {
            return Ok(run.view());
        }
        if let Some(summary) = self.invoices.summary(period) {
            // The run finished; if a crash came before the period state said so, say it now.
            let state = self.period_state();
            if state.closing == Some(period) {
                let done = PeriodState {
                    open: state.open,
                    closing: None,
                };
                self.save_period_state(done)?;
                *self.periods.write().unwrap_or_else(|p| p.into_inner()) = done;
            }
            let run = Arc::new(BillRun::finished(&self.id, period, summary));
            self.runs
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(period, run.clone());
            return Ok(run.view());
        }
        let state = self.period_state();
        match state.closing {
            Some(closing) if closing == period => {}
            Some(closing) => {
                return Err(EngineError::Conflict(format!(
                    "period {closing} is still being closed; start the bill run of {period} once it is done"
                )))
            }
            None if period == state.open => {
                // Close it: from here on its usage is refused and the next period's accepted.
                let _routing = self.routing.write().await;
                let next = PeriodState {
                    open: period.next(),
                    closing: Some(period),
                };
                self.save_period_state(next)?;
                *self.periods.write().unwrap_or_else(|p| p.into_inner()) = next;
                tracing::info!(partition = %self.id, %period, open = %next.open, "period closed; bill run starting");
            }
            None => {
                return Err(EngineError::Conflict(format!(
                    "period {period} cannot be billed: the open period is {}, and only it can be closed",
                    state.open
                )))
            }
        }
        let run = BillRun::new(&self.id, period);
        run.customers_total
            .store(self.customers.len() as u64, Ordering::Relaxed);
        *run.total_billed.lock().unwrap_or_else(|p| p.into_inner()) = self.rounding.round(Decimal::ZERO);
        let run = Arc::new(run);
        self.runs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(period, run.clone());
        let me = self.clone();
        let running = run.clone();
        actix_rt::spawn(async move {
            if let Err(e) = me.clone().run_bill_run(running.clone()).await {
                tracing::error!(partition = %me.id, period = %running.period, error = %e, "bill run failed; start it again to resume");
                running.fail(e);
                // A later POST resumes it.
                me.runs
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(&running.period);
            }
        });
        Ok(run.view())
    }

    /// The bill run with this id, if it ran in this process or finished before.
    pub fn bill_run(&self, id: &str) -> Option<BillRunView> {
        let period = id
            .strip_prefix(self.id.as_str())
            .and_then(|r| r.strip_prefix('-'))
            .and_then(|p| p.parse::<Period>().ok())?;
        if let Some(run) = self.runs.lock().unwrap_or_else(|p| p.into_inner()).get(&period) {
            return Some(run.view());
        }
        let summary = self.invoices.summary(period)?;
        Some(BillRun::finished(&self.id, period, summary).view())
    }

    async fn run_bill_run(self: Arc<Self>, run: Arc<BillRun>) -> Result<(), String> {
        let period = run.period;
        // Every record journaled before the close reaches its segment first.
        self.wait_until_delivered(std::time::Duration::from_secs(60))
            .await
            .map_err(|e| format!("{e}: the run resumes when started again"))?;
        let done = self.count_invoiced_before(&run)?;
        let mut priced = self.price_every_segment(period, done);
        let late_until = self.late_until(period);
        let mut batches = 0u32;
        let mut closing = Vec::new();
        while let Some(result) = priced.recv().await {
            let bills = result?;
            if let Some(first) = bills.failures.first() {
                return Err(format!(
                    "{} customer(s) could not be priced, e.g. {first}",
                    bills.failures.len()
                ));
            }
            if !bills.invoices.is_empty() {
                batches += 1;
            }
            closing.push(self.invoice_and_close(&run, bills, late_until, batches).await?);
        }
        for task in closing {
            task.await.map_err(|e| e.to_string())??;
        }
        self.finish_bill_run(&run).await
    }

    /// The customers invoiced before a crash cut the run short (with their number of
    /// invoices), counted in the run's totals.
    fn count_invoiced_before(&self, run: &BillRun) -> Result<Arc<HashMap<CustomerKey, u32>>, String> {
        run.customers_total
            .store(self.customers.len() as u64, Ordering::Relaxed);
        let done: Arc<HashMap<CustomerKey, u32>> = Arc::new(self.invoices.customers(run.period));
        let mut billed = self.rounding.round(Decimal::ZERO);
        for customer in done.keys() {
            billed += self
                .invoices
                .of_customer(run.period, customer)?
                .map_or(Decimal::ZERO, |d| d.total);
        }
        run.invoices.store(done.len() as u64, Ordering::Relaxed);
        *run.total_billed.lock().unwrap_or_else(|p| p.into_inner()) = billed;
        Ok(done)
    }

    /// Has every segment price its customers on its own thread; their bills arrive on
    /// the channel answered, a segment at a time.
    fn price_every_segment(
        self: &Arc<Self>,
        period: Period,
        done: Arc<HashMap<CustomerKey, u32>>,
    ) -> tokio::sync::mpsc::UnboundedReceiver<Result<SegmentBills, String>> {
        let view = Arc::new(PricingView {
            catalog: self.catalog(),
            rounding: self.rounding,
            period,
            profiles: self.profiles.clone(),
        });
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<Result<SegmentBills, String>>();
        for segment in 0..self.runtime.segment_count() {
            let me = self.clone();
            let (tx, view, done) = (tx.clone(), view.clone(), done.clone());
            actix_rt::spawn(async move {
                let result = me.price_segment(segment, view, done).await;
                let _ = tx.send(result);
            });
        }
        rx
    }

    /// Writes and syncs one segment's invoices (the run's `batch`-th write), then
    /// closes its customers in the background: the task answered, to be awaited before
    /// the run ends. The next segment's invoices are written meanwhile.
    async fn invoice_and_close(
        self: &Arc<Self>,
        run: &BillRun,
        mut bills: SegmentBills,
        late_until: chrono::NaiveDate,
        batch: u32,
    ) -> Result<actix_rt::task::JoinHandle<Result<(), String>>, String> {
        let period = run.period;
        bills.invoices.sort_by(|a, b| a.customer.cmp(&b.customer));
        let mut closes: Vec<(CustomerKey, CustomerCommand)> = Vec::with_capacity(bills.invoices.len());
        let mut to_write = Vec::with_capacity(bills.invoices.len());
        let mut billed = Decimal::ZERO;
        for priced in bills.invoices {
            billed += priced.total;
            closes.push((
                priced.customer.clone(),
                close_command(period, late_until, priced.credits.into_iter()),
            ));
            to_write.push((priced.customer, priced.encoded));
        }
        let written = if to_write.is_empty() {
            Vec::new()
        } else {
            let store = self.clone();
            tokio::task::spawn_blocking(move || store.invoices.append(period, to_write))
                .await
                .map_err(|e| e.to_string())??
        };
        if !written.is_empty() && self.fault_abort_after_invoice_batches == Some(batch) {
            tracing::error!(partition = %self.id, batches = batch, "test fault: aborting after writing invoices");
            std::process::abort();
        }
        for key in bills.nothing {
            closes.push((key, close_command(period, late_until, std::iter::empty())));
        }
        for key in bills.reclose {
            let stored = self.invoices.of_customer(period, &key)?;
            let credits = stored
                .into_iter()
                .flat_map(|d| d.credits)
                .map(|c| (c.id, c.remaining));
            closes.push((key, close_command(period, late_until, credits)));
        }
        let me = self.clone();
        let closing = actix_rt::spawn(async move {
            for chunk in closes.chunks(1000) {
                me.submit_closes(chunk.to_vec()).await?;
            }
            Ok::<(), String>(())
        });
        run.invoices.fetch_add(written.len() as u64, Ordering::Relaxed);
        *run.total_billed.lock().unwrap_or_else(|p| p.into_inner()) += billed;
        run.customers_done.fetch_add(bills.visited, Ordering::Relaxed);
        if let Some(h) = bills.compute {
            let _ = run.compute.lock().unwrap_or_else(|p| p.into_inner()).add(&h);
        }
        Ok(closing)
    }

    /// Every customer closed: the run's summary is written with the invoices, the
    /// period is no longer closing, and the run is done.
    async fn finish_bill_run(self: &Arc<Self>, run: &BillRun) -> Result<(), String> {
        let period = run.period;
        let duration_ms = run.started.elapsed().as_millis() as u64;
        let compute = ComputeTimes::of(&run.compute.lock().unwrap_or_else(|p| p.into_inner()));
        let invoices = self.invoices.count(period) as u64;
        let total_billed = *run.total_billed.lock().unwrap_or_else(|p| p.into_inner());
        let summary = serde_json::json!({
            "customers": run.customers_done.load(Ordering::Relaxed),
            "invoices": invoices,
            "total_billed": total_billed,
            "duration_ms": duration_ms,
            "compute_us": compute,
        });
        let store = self.clone();
        tokio::task::spawn_blocking(move || store.invoices.finish(period, summary))
            .await
            .map_err(|e| e.to_string())??;
        let state = PeriodState {
            open: self.period_state().open,
            closing: None,
        };
        self.save_period_state(state).map_err(|e| e.to_string())?;
        *self.periods.write().unwrap_or_else(|p| p.into_inner()) = state;
        *run.state.lock().unwrap_or_else(|p| p.into_inner()) = RunState::Done { duration_ms };
        tracing::info!(
            partition = %self.id, %period, invoices, %total_billed, duration_ms,
            "bill run done"
        );
        Ok(())
    }

    /// Prices the period's bill of every customer of `segment` not closed yet, on the
    /// segment's own thread; retries while the segment moves or restarts.
    async fn price_segment(
        &self,
        segment: u32,
        view: Arc<PricingView>,
        done: Arc<HashMap<CustomerKey, u32>>,
    ) -> Result<SegmentBills, String> {
        let mut last_error = String::new();
        for _ in 0..600 {
            let (tx, rx) = tokio::sync::oneshot::channel();
            let (view, done) = (view.clone(), done.clone());
            let visit = self.runtime.visit_segment(
                segment,
                Box::new(move |_, entities| {
                    let mut out = SegmentBills {
                        compute: Some(histogram()),
                        ..SegmentBills::default()
                    };
                    for (key, entity) in entities {
                        if entity.customer().is_none() || entity.is_closed(view.period) {
                            continue;
                        }
                        out.visited += 1;
                        if done.contains_key(key) {
                            out.reclose.push(key.clone());
                            continue;
                        }
                        let started = Instant::now();
                        let bill = entity.bill_of_period(&view);
                        let elapsed = started.elapsed();
                        super::stats::BILL_RUN_CUSTOMER.record(elapsed);
                        let ns = elapsed.as_nanos() as u64;
                        if let Some(h) = out.compute.as_mut() {
                            let _ = h.record(ns.max(1));
                        }
                        match bill {
                            Ok(bill) if invoiced(&bill) => out.invoices.push(Priced {
                                customer: key.clone(),
                                total: bill.total,
                                credits: bill.credits.iter().map(|c| (c.id.clone(), c.remaining)).collect(),
                                encoded: InvoiceStore::encode(bill),
                            }),
                            Ok(_) => out.nothing.push(key.clone()),
                            Err(e) => out.failures.push(format!("customer {key}: {e}")),
                        }
                    }
                    let _ = tx.send(out);
                }),
            );
            match visit {
                Ok(pending) => match pending.await {
                    Ok(()) => return rx.await.map_err(|_| "the segment dropped its bills".to_string()),
                    Err(e) => last_error = e,
                },
                Err(e) => last_error = e,
            }
            // Moving or restarting: try again shortly.
            actix_rt::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        Err(format!("segment {segment} could not be priced: {last_error}"))
    }

    /// Journals `Close` commands, waiting out backpressure.
    async fn submit_closes(&self, batch: Vec<(CustomerKey, CustomerCommand)>) -> Result<(), String> {
        let mut wait = std::time::Duration::from_millis(1);
        for _ in 0..2000 {
            match self.runtime.submit(batch.clone()) {
                Ok(pending) => {
                    let outcomes = pending.await.map_err(|e| e.to_string())?;
                    if let Some(bad) = outcomes
                        .iter()
                        .find(|o| !matches!(o, Ok(super::CustomerReply::Closed)))
                    {
                        return Err(format!("closing a customer failed: {bad:?}"));
                    }
                    return Ok(());
                }
                Err(tallyman_actors::SubmitError::Busy { .. }) => {
                    actix_rt::time::sleep(wait).await;
                    wait = (wait * 2).min(std::time::Duration::from_millis(100));
                }
                Err(e) => return Err(e.to_string()),
            }
        }
        Err("segments stayed busy; the bill run will resume".into())
    }
}
