//! The latency of each stage a request goes through, as served at `/v1/stats/latency`.
//!
//! The runtime records its own stages (`journal_append`, `fsync`, `apply`); the stages
//! of the engine and the API are declared here: `parse` (a request body to checked
//! events), `query` (a running bill, from the request to the answer) and
//! `bill_run_customer` (pricing one customer in a bill run). Each is recorded per thread
//! and merged when read (see `tallyman_actors::latency`).

use base64::Engine as _;
use hdrhistogram::serialization::{Serializer, V2DeflateSerializer};
use serde::Serialize;
use tallyman_actors::latency::{self, Stage};

/// Parsing and checking one ingest request's body.
pub static PARSE: Stage = Stage::new("parse", "parsing and checking one ingest request's events");
/// A running-bill query, from the engine's call to the answer (mailbox wait included).
pub static QUERY: Stage = Stage::new("query", "one running-bill query, queued and priced");
/// Pricing one customer's bill of the period in a bill run.
pub static BILL_RUN_CUSTOMER: Stage =
    Stage::new("bill_run_customer", "pricing one customer's bill in a bill run");

/// Lists every stage, so that a report shows them all from the start.
pub fn register_all() {
    for stage in [
        &PARSE,
        &latency::JOURNAL_APPEND,
        &latency::FSYNC,
        &latency::APPLY,
        &QUERY,
        &BILL_RUN_CUSTOMER,
    ] {
        stage.register();
    }
}

/// The percentiles of a histogram of nanoseconds, in microseconds.
#[derive(Clone, Debug, Serialize, serde::Deserialize, schemars::JsonSchema)]
pub struct Micros {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
    pub mean: f64,
}

fn micros(ns: u64) -> f64 {
    ns as f64 / 1000.0
}

impl Micros {
    pub fn of(h: &hdrhistogram::Histogram<u64>) -> Micros {
        Micros {
            p50: micros(h.value_at_quantile(0.5)),
            p90: micros(h.value_at_quantile(0.9)),
            p99: micros(h.value_at_quantile(0.99)),
            p999: micros(h.value_at_quantile(0.999)),
            max: micros(h.max()),
            mean: h.mean() / 1000.0,
        }
    }
}

/// One stage's latency: percentiles in microseconds, and the whole histogram.
#[derive(Clone, Debug, Serialize, serde::Deserialize, schemars::JsonSchema)]
pub struct StageLatency {
    pub stage: String,
    /// What one value measures.
    pub what: String,
    pub count: u64,
    #[serde(flatten)]
    pub times: Micros,
    pub p9999: f64,
    /// The histogram of nanoseconds in HdrHistogram's compressed V2 encoding, base64:
    /// what an interval log line carries, readable by any HdrHistogram library.
    pub histogram: String,
}

/// `GET /v1/stats/latency`.
#[derive(Clone, Debug, Serialize, serde::Deserialize, schemars::JsonSchema)]
pub struct LatencyReport {
    /// The unit of the percentiles (the histograms are in nanoseconds).
    pub unit: String,
    pub stages: Vec<StageLatency>,
}

/// Every stage's latency since the process started.
pub fn latency_report() -> LatencyReport {
    let stages = latency::stages()
        .into_iter()
        .map(|stage| {
            let h = stage.merged();
            let mut bytes = Vec::new();
            V2DeflateSerializer::new()
                .serialize(&h, &mut bytes)
                .expect("a histogram encodes into memory");
            StageLatency {
                stage: stage.name.to_owned(),
                what: stage.what.to_owned(),
                count: h.len(),
                times: Micros::of(&h),
                p9999: micros(h.value_at_quantile(0.9999)),
                histogram: base64::engine::general_purpose::STANDARD.encode(bytes),
            }
        })
        .collect();
    LatencyReport {
        unit: "microseconds".to_owned(),
        stages,
    }
}

/// Reads a stage's histogram (nanoseconds) back from its encoding.
pub fn decode_histogram(encoded: &str) -> Result<hdrhistogram::Histogram<u64>, String> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .map_err(|e| format!("not base64: {e}"))?;
    hdrhistogram::serialization::Deserializer::new()
        .deserialize(&mut bytes.as_slice())
        .map_err(|e| format!("not an HdrHistogram: {e:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_report_carries_every_stage_and_its_histogram_reads_back() {
        register_all();
        for us in 1..=100u64 {
            QUERY.record(std::time::Duration::from_micros(us));
        }
        let report = latency_report();
        let names: Vec<&str> = report.stages.iter().map(|s| s.stage.as_str()).collect();
        for stage in [
            "parse",
            "journal_append",
            "fsync",
            "apply",
            "query",
            "bill_run_customer",
        ] {
            assert!(names.contains(&stage), "{names:?}");
        }
        let query = report.stages.iter().find(|s| s.stage == "query").unwrap();
        assert!(query.count >= 100);
        let h = decode_histogram(&query.histogram).unwrap();
        assert_eq!(h.len(), query.count);
        assert!(query.times.p50 > 0.0 && query.times.max >= 100.0, "{query:?}");
    }
}
