//! `/metrics` in the Prometheus text format: ingest counters, queue depths, restarts,
//! rebalances, and the latency of every route as a histogram.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::middleware::Next;
use actix_web::{web, Error, HttpResponse};
use dashmap::DashMap;

use super::Ready;
use crate::engine::Engine;

/// Upper bounds of the latency buckets, in seconds.
const BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];

#[derive(Default)]
struct RouteStats {
    /// Requests per bucket (not cumulative); the last slot is +Inf.
    buckets: [AtomicU64; BUCKETS.len() + 1],
    sum_us: AtomicU64,
    count: AtomicU64,
}

/// Per-route request statistics, shared by every HTTP worker.
#[derive(Default)]
pub struct HttpMetrics {
    /// By (method, route pattern, status class).
    routes: DashMap<(String, String, &'static str), RouteStats, foldhash::fast::RandomState>,
}

impl HttpMetrics {
    fn record(&self, method: &str, route: &str, status: u16, seconds: f64) {
        let class = match status {
            200..=299 => "2xx",
            400..=499 => "4xx",
            500..=599 => "5xx",
            _ => "other",
        };
        let key = (method.to_owned(), route.to_owned(), class);
        let stats = self.routes.entry(key).or_default();
        let slot = BUCKETS
            .iter()
            .position(|&b| seconds <= b)
            .unwrap_or(BUCKETS.len());
        stats.buckets[slot].fetch_add(1, Ordering::Relaxed);
        stats.sum_us.fetch_add((seconds * 1e6) as u64, Ordering::Relaxed);
        stats.count.fetch_add(1, Ordering::Relaxed);
    }
}

/// The middleware that times every request.
pub async fn time(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<impl MessageBody>, Error> {
    let started = Instant::now();
    let metrics = req.app_data::<web::Data<HttpMetrics>>().cloned();
    let method = req.method().to_string();
    let route = req.match_pattern().unwrap_or_else(|| "unmatched".into());
    let response = next.call(req).await;
    if let Some(m) = metrics {
        let status = match &response {
            Ok(r) => r.status().as_u16(),
            Err(e) => e.as_response_error().status_code().as_u16(),
        };
        m.record(&method, &route, status, started.elapsed().as_secs_f64());
    }
    response
}

fn escape(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"")
}

/// Writes one metric family: its help, its type, then its samples, together.
fn family(out: &mut String, name: &str, kind: &str, help: &str, samples: impl IntoIterator<Item = String>) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
    for sample in samples {
        out.push_str(name);
        out.push_str(&sample);
        out.push('\n');
    }
}

/// `GET /metrics`.
pub async fn render(engine: Ready, http: web::Data<HttpMetrics>) -> HttpResponse {
    let mut out = String::new();
    ingest_counters(&mut out, &engine);
    segment_load(&mut out, &engine);
    supervision(&mut out, &engine);
    request_latency(&mut out, &http);
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4")
        .body(out)
}

/// Usage events applied, duplicate and rejected, by partition.
fn ingest_counters(out: &mut String, engine: &Engine) {
    let partitions: Vec<(String, crate::engine::Counters)> = engine
        .partitions()
        .iter()
        .map(|p| (escape(&p.id), p.counters()))
        .collect();
    let per_partition = |f: fn(&crate::engine::Counters) -> u64| {
        partitions
            .iter()
            .map(move |(p, c)| format!("{{partition=\"{p}\"}} {}", f(c)))
            .collect::<Vec<_>>()
    };
    family(
        out,
        "tallyman_events_accepted_total",
        "counter",
        "Usage events applied.",
        per_partition(|c| c.accepted),
    );
    family(
        out,
        "tallyman_events_duplicate_total",
        "counter",
        "Usage events not applied again: their id was seen this period.",
        per_partition(|c| c.duplicates),
    );
    family(
        out,
        "tallyman_events_rejected_total",
        "counter",
        "Usage events in batches refused as invalid.",
        per_partition(|c| c.rejected),
    );
}

/// Each segment's mailbox depth and busy time, labelled with its arbiter.
fn segment_load(out: &mut String, engine: &Engine) {
    let segments = engine.segments();
    let labels = |s: &crate::engine::SegmentInfo| {
        format!(
            "partition=\"{}\",segment=\"{}\",arbiter=\"{}\"",
            escape(&s.partition),
            s.segment,
            s.arbiter.map_or("none".into(), |a| a.to_string())
        )
    };
    family(
        out,
        "tallyman_segment_mailbox_depth",
        "gauge",
        "Messages admitted to a segment and not yet handled.",
        segments
            .iter()
            .map(|s| format!("{{{}}} {}", labels(s), s.inflight)),
    );
    family(
        out,
        "tallyman_segment_busy_seconds_total",
        "counter",
        "Time a segment spent handling messages.",
        segments
            .iter()
            .map(|s| format!("{{{}}} {}", labels(s), s.busy_ns as f64 / 1e9)),
    );
}

/// Segment moves and restarts, and the dead letters.
fn supervision(out: &mut String, engine: &Engine) {
    let (moves, restarts) = engine.moves_and_restarts();
    family(
        out,
        "tallyman_rebalance_moves_total",
        "counter",
        "Segments moved between arbiters.",
        [format!(" {moves}")],
    );
    family(
        out,
        "tallyman_segment_restarts_total",
        "counter",
        "Segments restarted by supervision.",
        [format!(" {restarts}")],
    );
    family(
        out,
        "tallyman_dead_letters",
        "gauge",
        "Commands in the dead-letter queues.",
        [format!(" {}", engine.dead_letters().len())],
    );
}

/// The latency histogram of every route.
fn request_latency(out: &mut String, http: &HttpMetrics) {
    let mut samples = Vec::new();
    for entry in http.routes.iter() {
        let ((method, route, class), stats) = entry.pair();
        let labels = format!(
            "method=\"{}\",route=\"{}\",status=\"{class}\"",
            escape(method),
            escape(route)
        );
        let mut cumulative = 0;
        for (i, bound) in BUCKETS.iter().enumerate() {
            cumulative += stats.buckets[i].load(Ordering::Relaxed);
            samples.push(format!("_bucket{{{labels},le=\"{bound}\"}} {cumulative}"));
        }
        cumulative += stats.buckets[BUCKETS.len()].load(Ordering::Relaxed);
        samples.push(format!("_bucket{{{labels},le=\"+Inf\"}} {cumulative}"));
        samples.push(format!(
            "_sum{{{labels}}} {}",
            stats.sum_us.load(Ordering::Relaxed) as f64 / 1e6
        ));
        samples.push(format!(
            "_count{{{labels}}} {}",
            stats.count.load(Ordering::Relaxed)
        ));
    }
    family(
        out,
        "tallyman_http_request_duration_seconds",
        "histogram",
        "HTTP request latency by route.",
        samples,
    );
}
