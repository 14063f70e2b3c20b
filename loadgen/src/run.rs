//! A load run against a tallyd over HTTP.
//!
//! Open loop: batch `i` is due at `start + i × batch / rate`, whatever happened to the
//! batches before it. `connections` senders take the next due batch, wait for its time,
//! send it, and record two latencies: from the *intended* time (what a client on that
//! schedule would have seen: coordinated omission corrected) and from the actual send
//! (the service time). A batch answered 429 is sent again after the server's
//! `Retry-After`, its latency still counting from its intended time; it is never
//! dropped; so is a 503 with `Retry-After` (tallyd recovering after a restart). With
//! [`LoadSpec::resend`], a batch whose answer never came (the connection failed: tallyd
//! was killed) is sent again, the same bytes and so the same event ids, until it is
//! acknowledged; tallyd deduplicates by event id, so the resent events count once. A
//! batch's latency spans all its sends. In closed loop (`rate` 0) each sender sends as
//! soon as its last batch is answered, which finds the maximum throughput. The bodies
//! are made ahead of time by a generator thread, so making them costs no latency.
//!
//! Batches are numbered in the order they leave the bodies channel (0, 1, 2, …), and the
//! result lists which were acknowledged: `--verify` replays the seeded workload and
//! counts exactly those.

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
    /// `Some(grace)`: a batch whose answer never came is sent again until acknowledged,
    /// for at most `grace` past the run's end, and a failed connection is expected (not
    /// an error). `None`: a failed connection is an error, and its batch's fate unknown.
    pub resend: Option<Duration>,
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
    /// Answers 503 with `Retry-After` (tallyd recovering), retried.
    pub unavailable: u64,
    /// Sends again after a failed connection (with [`LoadSpec::resend`]).
    pub resent: u64,
    pub errors: u64,
    /// The first few error answers, for the report.
    pub error_samples: Vec<String>,
    /// Every batch acknowledged (2xx), warm-up included, by number, ascending.
    pub acknowledged: Vec<u64>,
    /// Events of the acknowledged batches, warm-up included.
    pub acknowledged_events: u64,
    /// Events the acknowledgements counted as duplicates (a resent batch that had been
    /// applied before its answer was lost).
    pub duplicates: u64,
    /// Batches sent whose fate is unknown (no answer and no more resends, or a 5xx):
    /// tallyd may or may not have applied them.
    pub unresolved: Vec<u64>,
}

struct Shared {
    latency: Histogram<u64>,
    service: Histogram<u64>,
    intervals: Vec<Interval>,
    accepted: u64,
    offered: u64,
    too_busy: u64,
    unavailable: u64,
    resent: u64,
    errors: u64,
    error_samples: Vec<String>,
    acknowledged: Vec<u64>,
    acknowledged_events: u64,
    duplicates: u64,
    unresolved: Vec<u64>,
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
            unavailable: 0,
            resent: 0,
            errors: 0,
            error_samples: Vec::new(),
            acknowledged: Vec::new(),
            acknowledged_events: 0,
            duplicates: 0,
            unresolved: Vec::new(),
        }
    }

    fn error(&mut self, sample: String) {
        self.errors += 1;
        if self.error_samples.len() < 5 {
            self.error_samples.push(sample);
        }
    }
}

/// How a batch's sending ended.
enum Outcome {
    /// Answered 2xx, with the body (`{"accepted": n, "duplicates": m}`).
    Acknowledged(Vec<u8>),
    /// Answered 4xx: refused whole, nothing applied.
    Refused(String),
    /// A 5xx, or no answer and no more resends: applied or not, nobody knows.
    Unknown(String),
}

/// Seconds to wait from a `Retry-After` header (0.1 when absent or unreadable).
fn retry_after<S>(r: &awc::ClientResponse<S>) -> Duration {
    let secs = r
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or(0.1);
    Duration::from_secs_f64(secs.clamp(0.0, 60.0))
}

/// Sends batches from `bodies` (each a JSON array of `batch` events) per `spec`, and
/// reports progress once a second on stderr. Must run inside an actix system.
pub async fn run(spec: LoadSpec, bodies: tokio::sync::mpsc::Receiver<Vec<u8>>) -> LoadResult {
    // The receiver and the number of the next batch it gives, under one lock.
    let bodies = Arc::new(tokio::sync::Mutex::new((bodies, 0u64)));
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
    let resend_until = spec.resend.map(|grace| end + grace);
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
                let (seq, body) = {
                    let mut channel = bodies.lock().await;
                    let Some(body) = channel.0.recv().await else {
                        return;
                    };
                    channel.1 += 1;
                    (channel.1 - 1, body)
                };
                actix_rt::time::sleep_until(intended.into()).await;
                let measured = intended >= measure_from;
                if measured {
                    shared.lock().unwrap().offered += batch;
                }
                let mut sent = Instant::now();
                let outcome = loop {
                    let answer = client
                        .post(url.as_str())
                        .insert_header(("Content-Type", "application/json"))
                        .send_body(body.clone())
                        .await;
                    match answer {
                        Ok(mut r)
                            if r.status().as_u16() == 429
                                || (r.status().as_u16() == 503
                                    && r.headers().contains_key("retry-after")) =>
                        {
                            let wait = retry_after(&r);
                            let _ = r.body().await;
                            if measured {
                                let mut s = shared.lock().unwrap();
                                if r.status().as_u16() == 429 {
                                    s.too_busy += 1;
                                } else {
                                    s.unavailable += 1;
                                }
                            }
                            actix_rt::time::sleep(wait).await;
                            sent = Instant::now();
                        }
                        Ok(mut r) => {
                            let status = r.status();
                            let text = r.body().limit(1 << 20).await.unwrap_or_default().to_vec();
                            break if status.is_success() {
                                Outcome::Acknowledged(text)
                            } else {
                                let text = format!("{status}: {}", String::from_utf8_lossy(&text));
                                if status.is_client_error() {
                                    Outcome::Refused(text)
                                } else {
                                    Outcome::Unknown(text)
                                }
                            };
                        }
                        Err(e) => match resend_until {
                            Some(until) if Instant::now() < until => {
                                // tallyd went away (or is restarting): send the same batch
                                // again shortly; a copy it had applied counts as duplicates.
                                shared.lock().unwrap().resent += 1;
                                actix_rt::time::sleep(Duration::from_millis(20)).await;
                                sent = Instant::now();
                            }
                            _ => break Outcome::Unknown(e.to_string()),
                        },
                    }
                };
                let done = Instant::now();
                let mut s = shared.lock().unwrap();
                match outcome {
                    Outcome::Acknowledged(text) => {
                        s.acknowledged.push(seq);
                        s.acknowledged_events += batch;
                        let answer: serde_json::Value = serde_json::from_slice(&text).unwrap_or_default();
                        s.duplicates += answer["duplicates"].as_u64().unwrap_or(0);
                        if measured {
                            let from_intended = done.duration_since(intended).as_micros().max(1) as u64;
                            let _ = s.latency.record(from_intended);
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
                            let _ = s.intervals[second].histogram.record(from_intended);
                            s.accepted += batch;
                        }
                    }
                    Outcome::Refused(text) => {
                        if measured {
                            s.error(text);
                        }
                    }
                    Outcome::Unknown(text) => {
                        s.unresolved.push(seq);
                        if measured {
                            s.error(text);
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
                let restarts = if resend_until.is_some() {
                    format!("  503s {}  resent {}", s.unavailable, s.resent)
                } else {
                    String::new()
                };
                eprintln!(
                    "[{:>4}s] {:>9} events/s  p50 {:>8.3} ms  p99 {:>8.3} ms  429s {}{restarts}  errors {}",
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
    let mut s = std::mem::replace(&mut *shared.lock().unwrap(), Shared::new());
    s.acknowledged.sort_unstable();
    s.unresolved.sort_unstable();
    LoadResult {
        latency: s.latency,
        service: s.service,
        intervals: s.intervals,
        started: started_wall,
        offered_events: s.offered,
        accepted_events: s.accepted,
        measured,
        too_busy: s.too_busy,
        unavailable: s.unavailable,
        resent: s.resent,
        errors: s.errors,
        error_samples: s.error_samples,
        acknowledged: s.acknowledged,
        acknowledged_events: s.acknowledged_events,
        duplicates: s.duplicates,
        unresolved: s.unresolved,
    }
}
