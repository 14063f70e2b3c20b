//! Invoices: immutable, numbered per partition and period without gaps, stored durably.
//!
//! A period's invoices are one NDJSON file, `<dir>/<period>.ndjson`, one invoice per line
//! in number order (`{partition}-{period}-{000001…}`); the line is the API's invoice
//! document, so a period streams straight from the file. Lines are appended in batches,
//! each synced before anything that depends on it (the customers' `Close` commands)
//! is journaled. `<dir>/<period>.done.json` marks a period whose bill run finished, with
//! its summary.
//!
//! On open, every file is read back: a last line cut short by a crash is truncated and
//! logged with its file and offset; a damaged line before it, or numbers out of
//! sequence, refuse the start. Only an index (offset and customer per invoice) stays in
//! memory. Without a folder (an in-memory engine) the lines are kept in memory.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Mutex;

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use crate::domain::invoice::{
    AccountBill, AdjustmentLine, CommitmentLine, CreditLine, DiscountLine, MeterLine,
};
use crate::domain::{Bill, Currency, Period, ShortId as CustomerKey};

use super::logs::{FolderLogs, LogBackend, MemoryLogs};
use super::Documents;

/// An invoice as stored and served: a customer's bill of a closed period, numbered.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct InvoiceDocument {
    pub number: String,
    pub customer: String,
    pub period: Period,
    pub currency: Currency,
    /// Each account's lines and total.
    pub accounts: Vec<AccountBill>,
    /// One pooled line per meter, with its tier breakdown.
    pub lines: Vec<MeterLine>,
    /// Late usage of the period before, re-rated.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub adjustments: Vec<AdjustmentLine>,
    pub discounts: Vec<DiscountLine>,
    pub credits: Vec<CreditLine>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub commitment: Option<CommitmentLine>,
    pub tax_rate: Decimal,
    pub tax: Decimal,
    pub subtotal: Decimal,
    pub total: Decimal,
}

impl InvoiceDocument {
    pub fn new(number: String, bill: Bill) -> InvoiceDocument {
        InvoiceDocument {
            number,
            customer: bill.customer,
            period: bill.period,
            currency: bill.currency,
            accounts: bill.accounts,
            lines: bill.lines,
            adjustments: bill.adjustments,
            discounts: bill.discounts,
            credits: bill.credits,
            commitment: bill.commitment,
            tax_rate: bill.tax.rate,
            tax: bill.tax.amount,
            subtotal: bill.subtotal,
            total: bill.total,
        }
    }
}

/// How an invoice encoded without its number starts.
const UNNUMBERED: &[u8] = br#"{"number":"""#;

/// Just what the index needs from a stored line.
#[derive(Deserialize)]
struct Head {
    number: String,
    customer: String,
}

/// One period's invoices.
#[derive(Default)]
struct PeriodInvoices {
    /// Offset and length of invoice `i + 1`'s line.
    lines: Vec<(u64, u32)>,
    /// Customer → index in `lines`.
    customers: HashMap<CustomerKey, u32>,
    /// Bytes of whole lines in the period's log.
    size: u64,
    /// The summary written when the bill run finished.
    done: Option<serde_json::Value>,
}

/// The invoices of one partition.
pub struct InvoiceStore {
    partition: String,
    /// A log a period, `<period>.ndjson`.
    logs: Box<dyn LogBackend>,
    /// A finished period's summary, `<period>.done.json`.
    documents: Documents,
    periods: Mutex<BTreeMap<Period, PeriodInvoices>>,
}

/// The name of a period's log of invoices.
fn log_name(period: Period) -> String {
    format!("{period}.ndjson")
}

/// The name of a finished period's summary.
fn summary_name(period: Period) -> String {
    format!("{period}.done.json")
}

fn number(partition: &str, period: Period, seq: usize) -> String {
    format!("{partition}-{period}-{seq:06}")
}

impl InvoiceStore {
    /// Opens the invoices in `dir` (created if need be), checking every line; `None`
    /// keeps them in memory.
    pub fn open(partition: &str, dir: Option<PathBuf>) -> Result<InvoiceStore, String> {
        match dir {
            Some(dir) => {
                std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
                let logs = Box::new(FolderLogs::new(dir.clone()));
                InvoiceStore::on(partition, logs, Documents::in_folder(dir))
            }
            None => InvoiceStore::on(partition, Box::new(MemoryLogs::default()), Documents::in_memory()),
        }
    }

    /// Opens the invoices kept in `logs` and `documents`, checking every line.
    pub fn on(
        partition: &str,
        logs: Box<dyn LogBackend>,
        documents: Documents,
    ) -> Result<InvoiceStore, String> {
        let mut periods = BTreeMap::new();
        let period_of =
            |name: &str, suffix: &str| name.strip_suffix(suffix).and_then(|p| p.parse::<Period>().ok());
        for name in logs.names().map_err(|e| e.to_string())? {
            if let Some(period) = period_of(&name, ".ndjson") {
                periods.insert(period, Self::load(partition, period, logs.as_ref())?);
            }
        }
        for name in documents.names().map_err(|e| e.to_string())? {
            let Some(period) = period_of(&name, ".done.json") else {
                continue;
            };
            // A period closed without a single invoice has only its summary.
            let summary = documents.read_json(&name).map_err(|e| e.to_string())?;
            periods.entry(period).or_insert_with(PeriodInvoices::default).done = summary;
        }
        Ok(InvoiceStore {
            partition: partition.to_owned(),
            logs,
            documents,
            periods: Mutex::new(periods),
        })
    }

    /// Reads a period's log back, checking every line: a torn last one is cut off.
    fn load(partition: &str, period: Period, logs: &dyn LogBackend) -> Result<PeriodInvoices, String> {
        let name = log_name(period);
        let at = |offset: u64, what: &str| format!("{} at offset {offset}: {what}", logs.where_(&name));
        let bytes = logs.read_all(&name).map_err(|e| e.to_string())?;
        let mut invoices = PeriodInvoices::default();
        let mut offset = 0usize;
        while offset < bytes.len() {
            let Some(len) = bytes[offset..].iter().position(|&b| b == b'\n') else {
                // A line cut short by a crash: its batch was never acknowledged.
                tracing::warn!(file = %logs.where_(&name), offset, "torn last invoice line truncated");
                logs.truncate(&name, offset as u64)
                    .map_err(|e| at(offset as u64, &e.to_string()))?;
                break;
            };
            let head: Head = serde_json::from_slice(&bytes[offset..offset + len]).map_err(|e| {
                at(
                    offset as u64,
                    &format!(
                        "a damaged invoice ({e}); restore the file from a backup — invoices are never skipped"
                    ),
                )
            })?;
            let expected = number(partition, period, invoices.lines.len() + 1);
            if head.number != expected {
                return Err(at(
                    offset as u64,
                    &format!("invoice {} where {expected} was expected", head.number),
                ));
            }
            invoices
                .customers
                .insert(head.customer.into(), invoices.lines.len() as u32);
            invoices.lines.push((offset as u64, len as u32));
            offset += len + 1;
        }
        invoices.size = offset as u64;
        Ok(invoices)
    }

    /// An invoice document without its number, for [`InvoiceStore::append`], which
    /// numbers it. Encoding is the costly part of writing invoices, so bill runs do it
    /// on the segments' threads, in parallel.
    pub fn encode(bill: Bill) -> Vec<u8> {
        let mut out = Vec::with_capacity(1024);
        serde_json::to_writer(&mut out, &InvoiceDocument::new(String::new(), bill)).expect("plain data");
        debug_assert!(out.starts_with(UNNUMBERED));
        out
    }

    /// Numbers the encoded invoices (`(customer, encode(bill))`) in order after the
    /// period's last one, writes them and syncs. Answers their numbers. A failure writes
    /// nothing that counts: the file is cut back to where it was.
    pub fn append(
        &self,
        period: Period,
        encoded: Vec<(CustomerKey, Vec<u8>)>,
    ) -> Result<Vec<String>, String> {
        let mut periods = self.periods.lock().unwrap_or_else(|p| p.into_inner());
        let invoices = periods.entry(period).or_default();
        if invoices.done.is_some() {
            return Err(format!("the invoices of {period} are final"));
        }
        let mut buf = Vec::with_capacity(encoded.iter().map(|(_, b)| b.len() + 32).sum());
        let mut added = Vec::with_capacity(encoded.len());
        let mut index = Vec::with_capacity(encoded.len());
        for (customer, doc) in encoded {
            let rest = doc
                .strip_prefix(UNNUMBERED)
                .ok_or("an invoice not made by InvoiceStore::encode")?;
            let seq = invoices.lines.len() + added.len() + 1;
            let number = number(&self.partition, period, seq);
            let start = buf.len();
            buf.extend_from_slice(br#"{"number":""#);
            buf.extend_from_slice(number.as_bytes());
            buf.push(b'"');
            buf.extend_from_slice(rest);
            index.push((customer, invoices.size + start as u64, (buf.len() - start) as u32));
            buf.push(b'\n');
            added.push(number);
        }
        self.logs
            .append(&log_name(period), invoices.size, &buf)
            .map_err(|e| e.to_string())?;
        for (customer, offset, len) in index {
            invoices.customers.insert(customer, invoices.lines.len() as u32);
            invoices.lines.push((offset, len));
        }
        invoices.size += buf.len() as u64;
        Ok(added)
    }

    /// Marks the period's invoices final, with the bill run's summary.
    pub fn finish(&self, period: Period, summary: serde_json::Value) -> Result<(), String> {
        self.documents
            .write(&summary_name(period), summary.to_string().as_bytes())
            .map_err(|e| e.to_string())?;
        let mut periods = self.periods.lock().unwrap_or_else(|p| p.into_inner());
        periods.entry(period).or_default().done = Some(summary);
        Ok(())
    }

    /// The summary of the period's finished bill run, if it finished.
    pub fn summary(&self, period: Period) -> Option<serde_json::Value> {
        let periods = self.periods.lock().unwrap_or_else(|p| p.into_inner());
        periods.get(&period).and_then(|p| p.done.clone())
    }

    /// Invoices written for the period, and their total.
    pub fn count(&self, period: Period) -> usize {
        let periods = self.periods.lock().unwrap_or_else(|p| p.into_inner());
        periods.get(&period).map_or(0, |p| p.lines.len())
    }

    /// The customers invoiced for `period`, with their invoice numbers.
    pub fn customers(&self, period: Period) -> HashMap<CustomerKey, u32> {
        let periods = self.periods.lock().unwrap_or_else(|p| p.into_inner());
        periods
            .get(&period)
            .map(|p| p.customers.clone())
            .unwrap_or_default()
    }

    fn read_line(&self, invoices: &PeriodInvoices, period: Period, i: usize) -> Result<Vec<u8>, String> {
        let (offset, len) = invoices.lines[i];
        self.logs
            .read_at(&log_name(period), offset, len as usize)
            .map_err(|e| e.to_string())
    }

    /// One invoice by number; `None` if there is no such invoice.
    pub fn get(&self, number: &str) -> Result<Option<InvoiceDocument>, String> {
        let Some((period, seq)) = number
            .strip_prefix(&self.partition)
            .and_then(|r| r.strip_prefix('-'))
            .and_then(|r| r.rsplit_once('-'))
            .and_then(|(p, s)| Some((p.parse::<Period>().ok()?, s.parse::<usize>().ok()?)))
        else {
            return Ok(None);
        };
        let periods = self.periods.lock().unwrap_or_else(|p| p.into_inner());
        let Some(invoices) = periods.get(&period) else {
            return Ok(None);
        };
        if seq == 0 || seq > invoices.lines.len() {
            return Ok(None);
        }
        let line = self.read_line(invoices, period, seq - 1)?;
        serde_json::from_slice(&line).map(Some).map_err(|e| e.to_string())
    }

    /// The invoice of `customer` for `period`, if any.
    pub fn of_customer(&self, period: Period, customer: &str) -> Result<Option<InvoiceDocument>, String> {
        let periods = self.periods.lock().unwrap_or_else(|p| p.into_inner());
        let Some(invoices) = periods.get(&period) else {
            return Ok(None);
        };
        let Some(&i) = invoices.customers.get(customer) else {
            return Ok(None);
        };
        let line = self.read_line(invoices, period, i as usize)?;
        serde_json::from_slice(&line).map(Some).map_err(|e| e.to_string())
    }

    /// The periods with invoices, oldest first.
    pub fn periods(&self) -> Vec<Period> {
        let periods = self.periods.lock().unwrap_or_else(|p| p.into_inner());
        periods.keys().copied().collect()
    }

    /// A period's invoices as NDJSON, `chunk` bytes (about) at a time, from `from`:
    /// answers the bytes and where the next chunk starts (`None` at the end).
    pub fn read_ndjson(
        &self,
        period: Period,
        from: u64,
        chunk: usize,
    ) -> Result<(Vec<u8>, Option<u64>), String> {
        let periods = self.periods.lock().unwrap_or_else(|p| p.into_inner());
        let Some(invoices) = periods.get(&period) else {
            return Ok((Vec::new(), None));
        };
        let end = invoices.size;
        if from >= end {
            return Ok((Vec::new(), None));
        }
        let len = (end - from).min(chunk as u64) as usize;
        let buf = self
            .logs
            .read_at(&log_name(period), from, len)
            .map_err(|e| e.to_string())?;
        let next = from + len as u64;
        Ok((buf, (next < end).then_some(next)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bill(customer: &str, total: i64) -> Bill {
        let usd = Currency::from_code("USD").unwrap();
        Bill {
            customer: customer.into(),
            period: "2026-11".parse().unwrap(),
            currency: usd,
            accounts: vec![],
            lines: vec![],
            adjustments: vec![],
            discounts: vec![],
            credits: vec![],
            commitment: None,
            tax: crate::domain::invoice::TaxLine {
                rate: Decimal::ZERO,
                base: Decimal::new(total, 2),
                amount: Decimal::new(0, 2),
            },
            subtotal: Decimal::new(total, 2),
            total: Decimal::new(total, 2),
        }
    }

    fn enc(bills: Vec<Bill>) -> Vec<(CustomerKey, Vec<u8>)> {
        bills
            .into_iter()
            .map(|b| (b.customer.as_str().into(), InvoiceStore::encode(b)))
            .collect()
    }

    #[test]
    fn invoices_are_numbered_without_gaps_and_survive_a_reopen_and_a_torn_line() {
        let dir = std::env::temp_dir().join(format!("tallyman-invoices-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let period: Period = "2026-11".parse().unwrap();
        let store = InvoiceStore::open("aws", Some(dir.clone())).unwrap();
        let first = store
            .append(period, enc(vec![bill("a", 100), bill("b", 250)]))
            .unwrap();
        let second = store.append(period, enc(vec![bill("c", 5)])).unwrap();
        assert_eq!(first, ["aws-2026-11-000001", "aws-2026-11-000002"]);
        assert_eq!(second, ["aws-2026-11-000003"]);
        let got = store.get("aws-2026-11-000002").unwrap().unwrap();
        assert_eq!((got.customer.as_str(), got.total), ("b", Decimal::new(250, 2)));
        assert_eq!(store.get("aws-2026-11-000004").unwrap(), None);
        assert_eq!(store.get("gcp-2026-11-000001").unwrap(), None);
        drop(store);

        // A crash in the middle of the next append leaves a torn line: it goes, the rest stays.
        let file = dir.join("2026-11.ndjson");
        let mut bytes = std::fs::read(&file).unwrap();
        bytes.extend_from_slice(br#"{"number":"aws-2026-11-000004","cust"#);
        std::fs::write(&file, &bytes).unwrap();
        let store = InvoiceStore::open("aws", Some(dir.clone())).unwrap();
        assert_eq!(store.count(period), 3);
        assert_eq!(
            store.of_customer(period, "c").unwrap().unwrap().number,
            "aws-2026-11-000003"
        );
        assert_eq!(
            store.append(period, enc(vec![bill("d", 1)])).unwrap(),
            ["aws-2026-11-000004"]
        );
        let (ndjson, next) = store.read_ndjson(period, 0, 1 << 20).unwrap();
        assert_eq!(next, None);
        assert_eq!(ndjson.iter().filter(|&&b| b == b'\n').count(), 4);

        // Final once finished.
        store.finish(period, serde_json::json!({"invoices": 4})).unwrap();
        assert!(store.append(period, enc(vec![bill("e", 1)])).is_err());
        drop(store);
        let store = InvoiceStore::open("aws", Some(dir.clone())).unwrap();
        assert_eq!(store.summary(period), Some(serde_json::json!({"invoices": 4})));

        // A damaged line before the end refuses the open, naming the file and offset.
        let mut bytes = std::fs::read(&file).unwrap();
        bytes[5] = b'#';
        std::fs::write(&file, &bytes).unwrap();
        let err = InvoiceStore::open("aws", Some(dir.clone())).err().unwrap();
        assert!(err.contains("2026-11.ndjson at offset 0"), "{err}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
