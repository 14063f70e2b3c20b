//! A load run against a tallyd over HTTP.
//!
//! Open loop: batch `i` is due at `start + i × batch / rate`, whatever happened to the
//! batches before it. `connections` senders take the next due batch, wait for its time,
//! send it, and record two latencies: from the *intended* time (what a client on that
//! schedule would have seen: coordinated omission corrected) and from the actual send
//! (the service time). A batch answered 429 is sent again after the server's
//! `Retry-After`, its latency still counting from its intended time; it is never
//! dropped. In closed loop (`rate` 0) each sender sends as soon as its last batch is
//! answered, which finds the maximum throughput. The bodies are made ahead of time by a
//! generator thread, so making them costs no latency.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use crate::report::{histogram, Interval};

/// What to send, how fast, for how long.
#[derive(Clone, Debug)]
pub struct LoadSpec {
    pub target: String,
    pub partition: String,
    /// Events per second offered; 0 for closed loop.
    pub rate: u64,
    pub batch: usize,
    pub connections: usize,
    pub warmup: Duration,
    pub duration: Duration,
}

/// What a run measured.
pub struct LoadResult {
    /// From the intended send time, microseconds (after the warm-up).
    pub latency: Histogram<u64>,
    /// From the actual send, microseconds (after the warm-up).
    pub service: Histogram<u64>,
    /// One latency histogram per second of the measured part.
    pub intervals: Vec<Interval>,
    pub started: std::time::SystemTime,
    /// Events offered and accepted (or duplicate) during the measured part.
    pub offered_events: u64,
    pub accepted_events: u64,
    pub measured: Duration,
    pub too_busy: u64,
    pub errors: u64,
    /// The first few error answers, for the report.
    pub error_samples: Vec<String>,
}

struct Shared {
    latency: Histogram<u64>,
    service: Histogram<u64>,
    intervals: Vec<Interval>,
    accepted: u64,
    offered: u64,
    too_busy: u64,
    errors: u64,
    error_samples: Vec<String>,
}

impl Shared {
    fn new() -> Shared {
        Shared {
            latency: histogram(),
            service: histogram(),
            intervals: Vec::new(),
            accepted: 0,
            offered: 0,
            too_busy: 0,
            errors: 0,
            error_samples: Vec::new(),
        }
    }
}

/// Sends batches from `bodies` (each a JSON array of `batch` events) per `spec`, and
/// reports progress once a second on stderr. Must run inside an actix system.
pub async fn run(spec: LoadSpec, bodies: tokio::sync::mpsc::Receiver<Vec<u8>>) -> LoadResult {
    let bodies = Arc::new(tokio::sync::Mutex::new(bodies));
    let total_time = spec.warmup + spec.duration;
    let interval = if spec.rate == 0 {
        None
    } else {
        Some(Duration::from_secs_f64(spec.batch as f64 / spec.rate as f64))
    };
    let started_wall = std::time::SystemTime::now();
    let start = Instant::now();
    let measure_from = start + spec.warmup;
    let end = start + total_time;
    let next = Arc::new(AtomicU64::new(0));
    let shared = Arc::new(Mutex::new(Shared::new()));
    let url = format!(
        "{}/v1/partitions/{}/usage",
        spec.target.trim_end_matches('/'),
        spec.partition
    );
    let client = awc::Client::builder()
        .timeout(Duration::from_secs(60))
        .connector(awc::Connector::new().limit(spec.connections))
        .finish();
    let mut senders = Vec::new();
    for _ in 0..spec.connections {
        let (client, url, next, shared, bodies) = (
            client.clone(),
            url.clone(),
            next.clone(),
            shared.clone(),
            bodies.clone(),
        );
        let batch = spec.batch as u64;
        senders.push(actix_rt::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let intended = match interval {
                    Some(every) => start + every.mul_f64(i as f64),
                    None => Instant::now(),
                };
                if intended >= end {
                    return;
                }
                let Some(body) = bodies.lock().await.recv().await else {
                    return;
                };
                actix_rt::time::sleep_until(intended.into()).await;
                let measured = intended >= measure_from;
                if measured {
                    shared.lock().unwrap().offered += batch;
                }
                let mut sent = Instant::now();
                loop {
                    let answer = client
                        .post(url.as_str())
                        .insert_header(("Content-Type", "application/json"))
                        .send_body(body.clone())
                        .await;
                    match answer {
                        Ok(mut r) if r.status().as_u16() == 429 => {
                            let wait = r
                                .headers()
                                .get("retry-after")
                                .and_then(|v| v.to_str().ok())
                                .and_then(|v| v.parse::<f64>().ok())
                                .unwrap_or(0.1);
                            let _ = r.body().await;
                            if measured {
                                shared.lock().unwrap().too_busy += 1;
                            }
                            actix_rt::time::sleep(Duration::from_secs_f64(wait)).await;
                            sent = Instant::now();
                        }
                        Ok(mut r) => {
                            let ok = r.status().is_success();
                            let text = r.body().limit(1 << 20).await.unwrap_or_default();
                            let done = Instant::now();
                            if !measured {
                                break;
                            }
                            let mut s = shared.lock().unwrap();
                            if ok {
                                let _ = s
                                    .latency
                                    .record(done.duration_since(intended).as_micros().max(1) as u64);
                                let _ = s
                                    .service
                                    .record(done.duration_since(sent).as_micros().max(1) as u64);
                                let second = done.duration_since(measure_from).as_secs() as usize;
                                while s.intervals.len() <= second {
                                    let n = s.intervals.len();
                                    s.intervals.push(Interval {
                                        start_secs: n as f64,
                                        histogram: histogram(),
                                    });
                                }
                                let _ = s.intervals[second]
                                    .histogram
                                    .record(done.duration_since(intended).as_micros().max(1) as u64);
                                s.accepted += batch;
                            } else {
                                s.errors += 1;
                                if s.error_samples.len() < 5 {
                                    s.error_samples.push(String::from_utf8_lossy(&text).into_owned());
                                }
                            }
                            break;
                        }
                        Err(e) => {
                            if measured {
                                let mut s = shared.lock().unwrap();
                                s.errors += 1;
                                if s.error_samples.len() < 5 {
                                    s.error_samples.push(e.to_string());
                                }
                            }
                            break;
                        }
                    }
                }
            }
        }));
    }
    // The live line, once a second.
    let live = {
        let shared = shared.clone();
        actix_rt::spawn(async move {
            let mut last = 0u64;
            let mut tick = actix_rt::time::interval(Duration::from_secs(1));
            tick.tick().await;
            loop {
                tick.tick().await;
                let s = shared.lock().unwrap();
                let rate = s.accepted - last;
                last = s.accepted;
                eprintln!(
                    "[{:>4}s] {:>9} events/s  p50 {:>8.3} ms  p99 {:>8.3} ms  429s {}  errors {}",
                    start.elapsed().as_secs(),
                    rate,
                    s.latency.value_at_quantile(0.5) as f64 / 1000.0,
                    s.latency.value_at_quantile(0.99) as f64 / 1000.0,
                    s.too_busy,
                    s.errors
                );
            }
        })
    };
    for s in senders {
        let _ = s.await;
    }
    live.abort();
    let measured = start.elapsed().saturating_sub(spec.warmup);
    let s = std::mem::replace(&mut *shared.lock().unwrap(), Shared::new());
    LoadResult {
        latency: s.latency,
        service: s.service,
        intervals: s.intervals,
        started: started_wall,
        offered_events: s.offered,
        accepted_events: s.accepted,
        measured,
        too_busy: s.too_busy,
        errors: s.errors,
        error_samples: s.error_samples,
    }
}
