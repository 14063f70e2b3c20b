//! A load run: batches sent on a schedule to a [`Sink`] (tallyd over HTTP, [`Http`], or
//! the engine in this process, see [`crate::inprocess`]), and what their answers took.
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
    /// Of those, the batches some events of which were refused when applied: the batch's
    /// number and the refused events' positions in it, by number, ascending.
    pub refused: Vec<(u64, Vec<u32>)>,
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
    refused: Vec<(u64, Vec<u32>)>,
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
            refused: Vec::new(),
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

    /// Records what came of batch `seq`; `timing` (when it was intended, last sent and
    /// answered) when it is measured.
    fn record(
        &mut self,
        seq: u64,
        outcome: Answer,
        schedule: &Schedule,
        timing: Option<(Instant, Instant, Instant)>,
    ) {
        let batch = schedule.batch;
        let measured = timing.is_some();
        match outcome {
            Answer::Acknowledged { duplicates, refused } => {
                self.acknowledged.push(seq);
                self.acknowledged_events += batch - refused.len() as u64;
                if !refused.is_empty() {
                    self.refused.push((seq, refused));
                }
                self.duplicates += duplicates;
                if let Some((intended, sent, done)) = timing {
                    let from_intended = done.duration_since(intended).as_micros().max(1) as u64;
                    let _ = self.latency.record(from_intended);
                    let _ = self
                        .service
                        .record(done.duration_since(sent).as_micros().max(1) as u64);
                    let second = done.duration_since(schedule.measure_from).as_secs() as usize;
                    while self.intervals.len() <= second {
                        let n = self.intervals.len();
                        self.intervals.push(Interval {
                            start_secs: n as f64,
                            histogram: histogram(),
                        });
                    }
                    let _ = self.intervals[second].histogram.record(from_intended);
                    self.accepted += batch;
                }
            }
            Answer::Refused(text) => {
                if measured {
                    self.error(text);
                }
            }
            Answer::Unknown(text) | Answer::Lost(text) => {
                self.unresolved.push(seq);
                if measured {
                    self.error(text);
                }
            }
            Answer::TooBusy(_) | Answer::Unavailable(_) => unreachable!("sent again above"),
        }
    }

    /// The result of a run that started at `started` and measured `measured`.
    fn into_result(mut self, started: std::time::SystemTime, measured: Duration) -> LoadResult {
        self.acknowledged.sort_unstable();
        self.refused.sort_unstable();
        self.unresolved.sort_unstable();
        LoadResult {
            latency: self.latency,
            service: self.service,
            intervals: self.intervals,
            started,
            offered_events: self.offered,
            accepted_events: self.accepted,
            measured,
            too_busy: self.too_busy,
            unavailable: self.unavailable,
            resent: self.resent,
            errors: self.errors,
            error_samples: self.error_samples,
            acknowledged: self.acknowledged,
            refused: self.refused,
            acknowledged_events: self.acknowledged_events,
            duplicates: self.duplicates,
            unresolved: self.unresolved,
        }
    }
}

/// What one send of a batch came to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Answer {
    /// Applied (2xx); `duplicates` of its events had been applied before. Or applied
    /// but for the events at `refused` (422 `events-not-applied`: refused when applied,
    /// e.g. past the account's event limit; sending them again will not help).
    Acknowledged { duplicates: u64, refused: Vec<u32> },
    /// Backpressure (429): nothing applied; send again after the wait.
    TooBusy(Duration),
    /// Recovering (503 with `Retry-After`): nothing applied; send again after the wait.
    Unavailable(Duration),
    /// Refused whole (4xx): nothing applied, and sending again will not help.
    Refused(String),
    /// A server error (5xx): applied or not, nobody knows.
    Unknown(String),
    /// No answer: the connection failed, before or after the batch was applied.
    Lost(String),
}

/// Where a run's batches go.
pub trait Sink: Clone + 'static {
    /// A batch as the sink takes it.
    type Batch: 'static;
    /// Sends `batch` once and reads the answer.
    fn send(&self, batch: &Self::Batch) -> impl std::future::Future<Output = Answer>;
}

/// tallyd's usage route over HTTP: a batch is a JSON array of events.
#[derive(Clone)]
pub struct Http {
    client: awc::Client,
    url: String,
}

impl Http {
    /// `connections` connections at most to `target`, for partition `partition`.
    pub fn new(target: &str, partition: &str, connections: usize) -> Http {
        Http {
            client: awc::Client::builder()
                .timeout(Duration::from_secs(60))
                .connector(awc::Connector::new().limit(connections))
                .finish(),
            url: format!("{}/v1/partitions/{partition}/usage", target.trim_end_matches('/')),
        }
    }
}

impl Sink for Http {
    type Batch = Vec<u8>;

    async fn send(&self, body: &Vec<u8>) -> Answer {
        let answer = self
            .client
            .post(self.url.as_str())
            .insert_header(("Content-Type", "application/json"))
            .send_body(body.clone())
            .await;
        let mut r = match answer {
            Ok(r) => r,
            Err(e) => return Answer::Lost(e.to_string()),
        };
        let status = r.status();
        // Seconds to wait from a `Retry-After` header (0.1 when absent or unreadable).
        let retry_after = r
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<f64>().ok());
        let wait = Duration::from_secs_f64(retry_after.unwrap_or(0.1).clamp(0.0, 60.0));
        let text = match r.body().limit(1 << 20).await {
            Ok(text) => text,
            Err(e) if status.is_success() => return Answer::Lost(format!("{status}, then {e}")),
            Err(_) => Default::default(),
        };
        match status.as_u16() {
            429 => Answer::TooBusy(wait),
            503 if retry_after.is_some() => Answer::Unavailable(wait),
            _ if status.is_success() => {
                let answer: serde_json::Value = serde_json::from_slice(&text).unwrap_or_default();
                Answer::Acknowledged {
                    duplicates: answer["duplicates"].as_u64().unwrap_or(0),
                    refused: Vec::new(),
                }
            }
            422 => {
                let answer: serde_json::Value = serde_json::from_slice(&text).unwrap_or_default();
                let partly = answer["type"]
                    .as_str()
                    .is_some_and(|t| t.ends_with("/events-not-applied"));
                if partly {
                    Answer::Acknowledged {
                        duplicates: answer["duplicates"].as_u64().unwrap_or(0),
                        refused: answer["errors"]
                            .as_array()
                            .into_iter()
                            .flatten()
                            .filter_map(|e| e["index"].as_u64().map(|i| i as u32))
                            .collect(),
                    }
                } else {
                    Answer::Refused(format!("{status}: {}", String::from_utf8_lossy(&text)))
                }
            }
            _ => {
                let text = format!("{status}: {}", String::from_utf8_lossy(&text));
                if status.is_client_error() {
                    Answer::Refused(text)
                } else {
                    Answer::Unknown(text)
                }
            }
        }
    }
}

/// When a run's batches are due, and until when they are sent.
#[derive(Clone, Copy)]
struct Schedule {
    /// Between two batches; `None` in closed loop.
    interval: Option<Duration>,
    start: Instant,
    /// Batches intended from here on are measured (the warm-up is over).
    measure_from: Instant,
    end: Instant,
    /// Until when a batch whose answer never came is sent again (with [`LoadSpec::resend`]).
    resend_until: Option<Instant>,
    /// Events in a batch.
    batch: u64,
}

/// The bodies channel and the number of the next batch it gives, under one lock.
type Bodies<B> = Arc<tokio::sync::Mutex<(tokio::sync::mpsc::Receiver<B>, u64)>>;

/// Sends batches from `bodies` (each of `spec.batch` events) to `sink` per `spec`, and
/// reports progress once a second on stderr. Must run inside an actix system.
pub async fn run<S: Sink>(
    spec: LoadSpec,
    sink: S,
    bodies: tokio::sync::mpsc::Receiver<S::Batch>,
) -> LoadResult {
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
    let end = start + total_time;
    let schedule = Schedule {
        interval,
        start,
        measure_from: start + spec.warmup,
        end,
        resend_until: spec.resend.map(|grace| end + grace),
        batch: spec.batch as u64,
    };
    let next = Arc::new(AtomicU64::new(0));
    let shared = Arc::new(Mutex::new(Shared::new()));
    let mut senders = Vec::new();
    for _ in 0..spec.connections {
        let (sink, next, shared, bodies) = (sink.clone(), next.clone(), shared.clone(), bodies.clone());
        senders.push(actix_rt::spawn(sender(schedule, sink, next, shared, bodies)));
    }
    let live = live_line(schedule, shared.clone());
    for s in senders {
        let _ = s.await;
    }
    live.abort();
    let measured = start.elapsed().saturating_sub(spec.warmup);
    let s = std::mem::replace(&mut *shared.lock().unwrap(), Shared::new());
    s.into_result(started_wall, measured)
}

/// One connection's sender: takes the next due batch, waits for its time, sends it
/// until it is answered, and records what came of it; until the run's end.
async fn sender<S: Sink>(
    schedule: Schedule,
    sink: S,
    next: Arc<AtomicU64>,
    shared: Arc<Mutex<Shared>>,
    bodies: Bodies<S::Batch>,
) {
    loop {
        let i = next.fetch_add(1, Ordering::Relaxed);
        let intended = match schedule.interval {
            Some(every) => schedule.start + every.mul_f64(i as f64),
            None => Instant::now(),
        };
        if intended >= schedule.end {
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
        let measured = intended >= schedule.measure_from;
        if measured {
            shared.lock().unwrap().offered += schedule.batch;
        }
        let (outcome, sent) = send_until_answered(&sink, &body, &schedule, measured, &shared).await;
        let done = Instant::now();
        let mut s = shared.lock().unwrap();
        s.record(
            seq,
            outcome,
            &schedule,
            measured.then_some((intended, sent, done)),
        );
    }
}

/// Sends `body` until it is answered: again after the server's wait when it is too busy
/// or recovering, and again shortly after a failed connection while resending is on.
/// Answers the outcome and when its last send left.
async fn send_until_answered<S: Sink>(
    sink: &S,
    body: &S::Batch,
    schedule: &Schedule,
    measured: bool,
    shared: &Mutex<Shared>,
) -> (Answer, Instant) {
    let mut sent = Instant::now();
    let outcome = loop {
        match sink.send(body).await {
            Answer::TooBusy(wait) => {
                if measured {
                    shared.lock().unwrap().too_busy += 1;
                }
                actix_rt::time::sleep(wait).await;
                sent = Instant::now();
            }
            Answer::Unavailable(wait) => {
                if measured {
                    shared.lock().unwrap().unavailable += 1;
                }
                actix_rt::time::sleep(wait).await;
                sent = Instant::now();
            }
            Answer::Lost(e) => match schedule.resend_until {
                Some(until) if Instant::now() < until => {
                    // tallyd went away (or is restarting): send the same batch
                    // again shortly; a copy it had applied counts as duplicates.
                    shared.lock().unwrap().resent += 1;
                    actix_rt::time::sleep(Duration::from_millis(20)).await;
                    sent = Instant::now();
                }
                _ => break Answer::Unknown(e),
            },
            other => break other,
        }
    };
    (outcome, sent)
}

/// The live line, once a second, on stderr.
fn live_line(schedule: Schedule, shared: Arc<Mutex<Shared>>) -> actix_rt::task::JoinHandle<()> {
    actix_rt::spawn(async move {
        let mut last = 0u64;
        let mut tick = actix_rt::time::interval(Duration::from_secs(1));
        tick.tick().await;
        loop {
            tick.tick().await;
            let s = shared.lock().unwrap();
            let rate = s.accepted - last;
            last = s.accepted;
            let restarts = if schedule.resend_until.is_some() {
                format!("  503s {}  resent {}", s.unavailable, s.resent)
            } else {
                String::new()
            };
            eprintln!(
                "[{:>4}s] {:>9} events/s  p50 {:>8.3} ms  p99 {:>8.3} ms  429s {}{restarts}  errors {}",
                schedule.start.elapsed().as_secs(),
                rate,
                s.latency.value_at_quantile(0.5) as f64 / 1000.0,
                s.latency.value_at_quantile(0.99) as f64 / 1000.0,
                s.too_busy,
                s.errors
            );
        }
    })
}
