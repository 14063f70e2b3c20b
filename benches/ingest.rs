//! In-process ingest through the actor runtime (no HTTP, no durable journal).
//!
//! `cargo bench --bench ingest` runs three phases on 2 arbiters and prints a report:
//! 1. load: 1M accounts in 200k customers (Zipf family sizes), then 5M usage events
//!    with Zipf-skewed traffic, generated on the fly in batches of 1000; resident memory
//!    growth per account;
//! 2. throughput: 2M more events, generated beforehand, ingested in batches of 1000
//!    with 4 batches in flight: events per second;
//! 3. rebalancing: traffic only for customers whose segments start on arbiter 0, then
//!    rounds of the router's rebalancer: per-arbiter busy time before and after.
//!
//! A last phase runs the bill run that closes the period for every customer.
//!
//! Sizes can be scaled down for a quick look: `cargo bench --bench ingest -- --accounts 100000`.
//! `--events-per-account N` sets the load (5 by default); `--load-only` stops after its
//! memory report (with `--features system-allocator`, for heaptrack); `--scale` keeps only the load,
//! the restarts and the bill run, for the largest sizes:
//! `cargo bench --bench ingest -- --durable --scale --accounts 21000000 --events-per-account 2
//! --data DIR` loads and snapshots, then `cargo bench --bench ingest -- --recover --data DIR
//! --accounts 21000000` measures a cold start in a fresh process and the bill run.
//! With `-- --durable`, the journal is the file journal with an `fdatasync` before every
//! acknowledgement (16 batches in flight so that group commit has something to group),
//! and a fourth phase measures cold restarts: from the journal alone, then (after timing
//! a snapshot) from snapshots, checking that a sample of bills comes back the same.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Zipf};
use rust_decimal::Decimal;
use tallyman::config::{Settings, Validated};
use tallyman::domain::{Currency, Customer, CustomerSpec, UsageEvent};
use tallyman::engine::{Engine, EngineOptions, JournalMode, PartitionEngine};
use tallyman_actors::latency::FSYNC;
use tallyman_actors::router::RebalanceNow;

struct Args {
    accounts: usize,
    customers: usize,
    load_events: usize,
    timed_events: usize,
    batch: usize,
    in_flight: usize,
    /// Journal to files, synced before every acknowledgement.
    durable: bool,
    /// Load and snapshot only (for the largest sizes); the cold restart and the bill
    /// run are measured by a second process with `--recover`.
    scale: bool,
    /// Stop after the load and its memory report (for `heaptrack`: what is still
    /// allocated at exit is then what the load keeps).
    load_only: bool,
    /// Keep the engine's files in this folder (and start from them with `--recover`).
    data: Option<std::path::PathBuf>,
    /// Start on the files of `--data` (a cold restart in a fresh process), then run the
    /// bill run.
    recover: bool,
}

fn args() -> Args {
    let mut a = Args {
        accounts: 1_000_000,
        customers: 200_000,
        load_events: 5_000_000,
        timed_events: 2_000_000,
        batch: 1000,
        in_flight: 32,
        durable: false,
        scale: false,
        load_only: false,
        data: None,
        recover: false,
    };
    let argv: Vec<String> = std::env::args().collect();
    let value = |name: &str| {
        argv.iter()
            .position(|x| x == name)
            .and_then(|i| argv.get(i + 1))
            .and_then(|v| v.parse::<usize>().ok())
    };
    if let Some(v) = value("--accounts") {
        a.customers = (v / 5).max(1);
        a.accounts = v;
        a.load_events = v * 5;
        a.timed_events = v * 2;
    }
    if let Some(v) = value("--events-per-account") {
        a.load_events = a.accounts * v;
    }
    if argv.iter().any(|x| x == "--scale") {
        a.scale = true;
    }
    if argv.iter().any(|x| x == "--load-only") {
        a.load_only = true;
    }
    if let Some(i) = argv.iter().position(|x| x == "--data") {
        a.data = argv.get(i + 1).map(std::path::PathBuf::from);
    }
    if argv.iter().any(|x| x == "--recover") {
        a.recover = true;
        a.durable = true;
    }
    if let Some(v) = value("--batch") {
        a.batch = v;
    }
    if argv.iter().any(|x| x == "--durable") {
        a.durable = true;
    }
    if let Some(v) = value("--timed-events") {
        a.timed_events = v;
    }
    if let Some(v) = value("--in-flight") {
        a.in_flight = v.max(1);
    }
    a
}

fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

/// CPU seconds so far per thread of this process, by thread name.
fn thread_cpu() -> Vec<(String, f64)> {
    let mut out = Vec::new();
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return out;
    };
    for task in tasks.flatten() {
        let stat = std::fs::read_to_string(task.path().join("stat")).unwrap_or_default();
        // pid (comm) state … utime stime are fields 14 and 15; comm may hold spaces.
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        let fields: Vec<&str> = stat[close + 2..].split_whitespace().collect();
        let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<f64>().ok()).unwrap_or(0.0);
        // Fields after the comm start at field 3 (state), so utime (14) is index 11.
        // Both are in clock ticks, which Linux reports at USER_HZ = 100 a second.
        out.push((
            format!(
                "{}:{}",
                &stat[open + 1..close],
                task.file_name().to_string_lossy()
            ),
            (ticks(11) + ticks(12)) / 100.0,
        ));
    }
    out
}

/// Each thread's share of a core between two `thread_cpu` readings over `seconds`.
fn cpu_shares(before: &[(String, f64)], after: &[(String, f64)], seconds: f64) -> String {
    let mut shares: Vec<(String, f64)> = after
        .iter()
        .map(|(name, t)| {
            let t0 = before.iter().find(|(n, _)| n == name).map_or(0.0, |(_, t0)| *t0);
            (name.clone(), (t - t0) / seconds)
        })
        .filter(|(_, s)| *s >= 0.02)
        .collect();
    shares.sort_by(|a, b| b.1.total_cmp(&a.1));
    let total: f64 = shares.iter().map(|(_, s)| s).sum();
    let each: Vec<String> = shares
        .iter()
        .map(|(n, s)| format!("{n} {:.0}%", s * 100.0))
        .collect();
    format!("{:.0}% of a core in all ({})", total * 100.0, each.join(", "))
}

fn settings() -> Validated {
    let mut s = Settings::load(None).unwrap();
    s.runtime.arbiters = 2;
    s.runtime.segments = 16;
    s.runtime.mailbox_capacity = 4096;
    s.runtime.rebalance_interval_secs = 0;
    s.runtime.snapshot_interval_secs = 0;
    s.runtime.rebalance_max_moves = 4;
    s.partitions.truncate(1);
    s.partitions[0].customers = None;
    s.partitions[0].open_period = Some("2026-11".into());
    s.validate().unwrap()
}

/// Customers with Zipf-sized families, and a traffic law over accounts.
struct Workload {
    rng: ChaCha8Rng,
    customers: Vec<Vec<String>>,
    accounts: Vec<String>,
    traffic: Zipf<f64>,
    /// Traffic rank → account index (ranks shuffled over accounts).
    by_rank: Vec<u32>,
    meters: Vec<(String, Option<String>)>,
    next_id: u64,
}

impl Workload {
    fn new(a: &Args, meters: Vec<(String, Option<String>)>) -> Workload {
        let mut rng = ChaCha8Rng::seed_from_u64(42);
        let mut sizes = vec![1usize; a.customers];
        let family = Zipf::new(a.customers as f64, 1.1).unwrap();
        for _ in a.customers..a.accounts {
            // Families are capped at 1000 accounts; past that, a random family grows.
            let mut c = family.sample(&mut rng) as usize - 1;
            while sizes[c] >= 1000 {
                c = rng.random_range(0..a.customers);
            }
            sizes[c] += 1;
        }
        let mut next = 0u64;
        let customers: Vec<Vec<String>> = sizes
            .iter()
            .map(|&n| {
                (0..n)
                    .map(|_| {
                        next += 1;
                        format!("{:012}", 100_000_000_000u64 + next)
                    })
                    .collect()
            })
            .collect();
        let accounts: Vec<String> = customers.iter().flatten().cloned().collect();
        let mut by_rank: Vec<u32> = (0..a.accounts as u32).collect();
        for i in (1..by_rank.len()).rev() {
            by_rank.swap(i, rng.random_range(0..=i));
        }
        Workload {
            rng,
            customers,
            accounts,
            traffic: Zipf::new(a.accounts as f64, 1.0).unwrap(),
            by_rank,
            meters,
            next_id: 0,
        }
    }

    fn event_for(&mut self, account: usize) -> UsageEvent {
        self.next_id += 1;
        let (meter, dimension) = &self.meters[self.rng.random_range(0..self.meters.len())];
        UsageEvent {
            id: format!("evt-{:012}", self.next_id),
            account: self.accounts[account].clone(),
            meter: meter.clone(),
            quantity: Decimal::new(self.rng.random_range(1..100_000), 3),
            time: chrono::DateTime::from_timestamp(1_793_491_200 + self.rng.random_range(0..2_592_000), 0)
                .unwrap(),
            dimensions: dimension
                .iter()
                .map(|d| (d.clone(), format!("u{}", self.rng.random_range(0..1000))))
                .collect(),
        }
    }

    fn batch(&mut self, size: usize) -> Vec<UsageEvent> {
        (0..size)
            .map(|_| {
                let rank = self.traffic.sample(&mut self.rng) as usize - 1;
                let account = self.by_rank[rank] as usize;
                self.event_for(account)
            })
            .collect()
    }
}

/// Ingests `batches`, keeping `in_flight` of them in progress; returns events ingested.
/// Each batch is its own task: a future that is only queued makes no progress, so
/// awaiting them in turn would keep one in flight, whatever `in_flight` says.
async fn ingest_all(
    p: &Arc<PartitionEngine>,
    batches: impl Iterator<Item = Vec<UsageEvent>>,
    in_flight: usize,
) -> u64 {
    let mut pending = VecDeque::new();
    let mut done = 0u64;
    for batch in batches {
        let p = p.clone();
        pending.push_back(actix_rt::spawn(async move { p.ingest(batch).await }));
        if pending.len() >= in_flight {
            done += pending
                .pop_front()
                .unwrap()
                .await
                .unwrap()
                .expect("ingest")
                .accepted;
        }
    }
    while let Some(f) = pending.pop_front() {
        done += f.await.unwrap().expect("ingest").accepted;
    }
    done
}

/// Busy nanoseconds per arbiter so far.
fn busy_per_arbiter(engine: &Engine) -> Vec<u64> {
    let mut busy = vec![0u64; engine.arbiters()];
    for s in engine.segments() {
        if let Some(a) = s.arbiter {
            busy[a] += s.busy_ns;
        }
    }
    busy
}

fn fractions(before: &[u64], after: &[u64], seconds: f64) -> Vec<String> {
    before
        .iter()
        .zip(after)
        .map(|(b, a)| format!("{:.0}%", (a - b) as f64 / 1e9 / seconds * 100.0))
        .collect()
}

async fn run() {
    let a = args();
    let settings = settings();
    let usd = Currency::from_code("USD").unwrap();
    let journal_dir = a.data.clone().unwrap_or_else(|| {
        std::env::temp_dir().join(format!("tallyman-ingest-bench-{}", std::process::id()))
    });
    if a.recover {
        recover(&settings, &journal_dir, a.accounts).await;
        return;
    }
    let journal = if a.durable {
        JournalMode::File {
            dir: journal_dir.clone(),
            fsync: true,
            file_bytes: 128 << 20,
        }
    } else {
        JournalMode::Discarded
    };
    println!(
        "journal: {}",
        if a.durable {
            "files, fdatasync before every acknowledgement"
        } else {
            "none (records numbered, not kept)"
        }
    );
    let engine = Engine::start(
        &settings,
        EngineOptions {
            journal,
            ..EngineOptions::default()
        },
    )
    .await
    .unwrap();
    let partition = engine.partition("aws").unwrap();
    let p: &PartitionEngine = &partition;
    let catalog = p.catalog();
    let meters: Vec<(String, Option<String>)> = catalog
        .meters()
        .map(|(_, m)| (m.name.to_string(), m.aggregation.dimension().map(str::to_owned)))
        .collect();
    let mut w = Workload::new(&a, meters);
    // Memory is counted from here: the engine is up and the workload's own tables exist.
    let rss0 = rss_bytes();
    println!(
        "workload: {} accounts in {} customers (largest family {}), {} meters, batches of {}",
        a.accounts,
        a.customers,
        w.customers.iter().map(Vec::len).max().unwrap_or(0),
        w.meters.len(),
        a.batch
    );

    // Phase 1: load.
    let started = Instant::now();
    for (chunk_index, chunk) in w.customers.chunks(1000).enumerate() {
        let customers: Vec<Customer> = chunk
            .iter()
            .enumerate()
            .map(|(i, members)| {
                let spec = CustomerSpec::new(
                    format!("cust-{:08}", chunk_index * 1000 + i),
                    members[0].clone(),
                    members.clone(),
                    "standard",
                );
                Customer::from_spec(spec, usd).unwrap()
            })
            .collect();
        p.upsert_customers(customers).await.unwrap();
    }
    let customers_loaded = started.elapsed();
    let rss1 = rss_bytes();
    let started = Instant::now();
    let batches = a.load_events / a.batch;
    let batch_size = a.batch;
    let loaded = ingest_all(&partition, (0..batches).map(|_| w.batch(batch_size)), a.in_flight).await;
    let load_time = started.elapsed();
    let rss2 = rss_bytes();
    // What the load freed (grown tables, applied batches), given back as the daemon's
    // timer would within `memory_release_interval_secs`.
    let released = Instant::now();
    tallyman::compact::memory::release_free_memory();
    let release_time = released.elapsed();
    let rss3 = rss_bytes();
    println!(
        "load: customers in {:.1} s; {} events in {:.1} s ({:.0} events/s, generation included)",
        customers_loaded.as_secs_f64(),
        loaded,
        load_time.as_secs_f64(),
        loaded as f64 / load_time.as_secs_f64()
    );
    println!(
        "memory: {:.0} MiB resident after load; {:.0} bytes per account for customers and directory, {:.0} bytes per account in all",
        rss2 as f64 / 1048576.0,
        (rss1 - rss0) as f64 / a.accounts as f64,
        (rss2 - rss0) as f64 / a.accounts as f64
    );
    println!(
        "memory once freed memory is given back ({:.1} ms): {:.0} MiB resident; {:.0} bytes per account in all",
        release_time.as_secs_f64() * 1000.0,
        rss3 as f64 / 1048576.0,
        (rss3 - rss0) as f64 / a.accounts as f64
    );
    if a.load_only {
        std::process::exit(0);
    }

    if !a.scale {
        // Phase 2: throughput, with the events generated beforehand.
        let timed: Vec<Vec<UsageEvent>> = (0..a.timed_events / a.batch).map(|_| w.batch(a.batch)).collect();
        println!("throughput: {} events generated; ingesting", a.timed_events);
        let cpu0 = thread_cpu();
        let syncs0 = FSYNC.merged().len();
        let started = Instant::now();
        let ingested = ingest_all(&partition, timed.into_iter(), a.in_flight).await;
        let elapsed = started.elapsed();
        let secs = elapsed.as_secs_f64();
        println!(
            "throughput: {} events in {:.2} s: {:.0} events/s ({} in flight); cpu: {}",
            ingested,
            secs,
            ingested as f64 / secs,
            a.in_flight,
            cpu_shares(&cpu0, &thread_cpu(), secs)
        );
        if a.durable {
            let syncs = FSYNC.merged().len() - syncs0;
            println!(
                "fsyncs: {} in {:.2} s: {:.0} per second, {:.0} events per fsync",
                syncs,
                secs,
                syncs as f64 / secs,
                ingested as f64 / syncs.max(1) as f64
            );
        }

        // Phase 3: a skewed load that the rebalancer evens out.
        let segments = p.runtime().segment_count();
        let placement: Vec<Option<usize>> = engine.segments().iter().map(|s| s.arbiter).collect();
        let hot: Vec<usize> = (0..w.accounts.len())
            .filter(|&i| {
                let customer = p.customer_of(&w.accounts[i]).unwrap();
                let segment = p.runtime().segment_of(&customer);
                placement[segment as usize] == Some(0)
            })
            .collect();
        let skewed = |n: usize, w: &mut Workload| -> Vec<Vec<UsageEvent>> {
            (0..n)
                .map(|_| {
                    (0..a.batch)
                        .map(|_| {
                            let account = hot[w.rng.random_range(0..hot.len())];
                            w.event_for(account)
                        })
                        .collect()
                })
                .collect()
        };
        let window = |engine: &Engine, batches: Vec<Vec<UsageEvent>>| {
            let before = busy_per_arbiter(engine);
            let started = Instant::now();
            let partition = partition.clone();
            async move {
                ingest_all(&partition, batches.into_iter(), a.in_flight).await;
                (before, started.elapsed().as_secs_f64())
            }
        };
        let router = engine.router().clone();
        router.send(RebalanceNow).await.unwrap();
        let (b0, secs) = window(&engine, skewed(300, &mut w)).await;
        let before = fractions(&b0, &busy_per_arbiter(&engine), secs);
        let mut moved = 0;
        for _ in 0..6 {
            let started = router.send(RebalanceNow).await.unwrap();
            // Let the moves finish before sampling again.
            while engine.segments().iter().any(|s| s.state == "moving") {
                actix_rt::time::sleep(Duration::from_millis(1)).await;
            }
            moved += started;
            window(&engine, skewed(100, &mut w)).await;
        }
        let (b1, secs) = window(&engine, skewed(300, &mut w)).await;
        let after = fractions(&b1, &busy_per_arbiter(&engine), secs);
        println!(
        "rebalancing ({} segments, hot traffic on the segments of arbiter 0): busy per arbiter before {:?}, after {} moves {:?}",
        segments, before, moved, after
    );
    }
    if a.scale {
        let started = Instant::now();
        p.snapshot().await.unwrap();
        println!(
            "snapshot of {} accounts: {:.2} s, {:.0} MiB ({:.0} bytes per account); journal left {:.0} MiB",
            a.accounts,
            started.elapsed().as_secs_f64(),
            disk_bytes(&journal_dir.join("aws/snapshots")) as f64 / 1048576.0,
            disk_bytes(&journal_dir.join("aws/snapshots")) as f64 / a.accounts as f64,
            disk_bytes(&journal_dir.join("aws/journal")) as f64 / 1048576.0
        );
        engine.stop();
        return;
    }
    let engine = if a.durable {
        restarts(&settings, engine, &journal_dir, &w).await
    } else {
        engine
    };
    bill_run(&engine, &journal_dir, a.accounts).await;
    engine.stop();
    if a.data.is_none() {
        let _ = std::fs::remove_dir_all(&journal_dir);
    }
}

/// `--recover`: a cold start of a fresh process on the files of `--data`, then the bill
/// run.
async fn recover(settings: &Validated, dir: &std::path::Path, accounts: usize) {
    let rss0 = rss_bytes();
    let started = Instant::now();
    let engine = Engine::start(
        settings,
        EngineOptions {
            journal: JournalMode::File {
                dir: dir.to_path_buf(),
                fsync: true,
                file_bytes: 128 << 20,
            },
            ..EngineOptions::default()
        },
    )
    .await
    .unwrap();
    let elapsed = started.elapsed();
    let found = engine.partition("aws").unwrap().summary().accounts;
    println!(
        "cold start of a fresh process on {} ({} accounts): {:.2} s; {:.0} MiB resident ({:.0} bytes per account)",
        dir.display(),
        found,
        elapsed.as_secs_f64(),
        (rss_bytes() - rss0) as f64 / 1048576.0,
        (rss_bytes() - rss0) as f64 / found.max(1) as f64
    );
    bill_run(&engine, dir, accounts).await;
    engine.stop();
}

/// Phase 5: the bill run that closes the period for every customer, invoices written
/// (and, when durable, synced) before each customer is closed.
async fn bill_run(engine: &Engine, dir: &std::path::Path, accounts: usize) {
    let p = engine.partition_handle("aws").unwrap();
    let rss0 = rss_bytes();
    let started = Instant::now();
    let period = p.period();
    let run = p.start_bill_run(period).await.unwrap();
    let mut peak = rss0;
    let view = loop {
        let view = p.bill_run(&run.id).unwrap();
        peak = peak.max(rss_bytes());
        if view.state != "running" {
            break view;
        }
        actix_rt::time::sleep(Duration::from_millis(10)).await;
    };
    let elapsed = started.elapsed();
    assert_eq!(view.state, "done", "{view:?}");
    let compute = view.compute_us.clone().unwrap();
    println!(
        "bill run: {} customers ({} accounts), {} invoices, {} billed, in {:.2} s ({:.0} accounts/s); \
         per customer p50 {:.1} µs, p99 {:.1} µs, max {:.0} µs; invoices file {:.0} MiB; peak RSS +{:.0} MiB",
        view.customers_done,
        accounts,
        view.invoices,
        view.total_billed,
        elapsed.as_secs_f64(),
        accounts as f64 / elapsed.as_secs_f64(),
        compute.p50,
        compute.p99,
        compute.max,
        disk_bytes(&dir.join("aws/invoices")) as f64 / 1048576.0,
        (peak.saturating_sub(rss0)) as f64 / 1048576.0,
    );
}

/// Size of the files under `dir`, in bytes.
fn disk_bytes(dir: &std::path::Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .map(|e| match e.metadata() {
                    Ok(m) if m.is_dir() => disk_bytes(&e.path()),
                    Ok(m) => m.len(),
                    Err(_) => 0,
                })
                .sum()
        })
        .unwrap_or(0)
}

/// Phase 4 (durable only): cold restarts on the same files, from the journal alone and
/// then from snapshots; each restart must give back the same bills.
async fn restarts(settings: &Validated, engine: Engine, dir: &std::path::Path, w: &Workload) -> Engine {
    let options = || EngineOptions {
        journal: JournalMode::File {
            dir: dir.to_path_buf(),
            fsync: true,
            file_bytes: 128 << 20,
        },
        ..EngineOptions::default()
    };
    // A sample of customers whose bills must survive every restart.
    let sample: Vec<String> = (0..w.customers.len())
        .step_by((w.customers.len() / 200).max(1))
        .map(|i| format!("cust-{i:08}"))
        .collect();
    async fn bills(engine: &Engine, sample: &[String]) -> Vec<rust_decimal::Decimal> {
        let p = engine.partition("aws").unwrap();
        let mut out = Vec::new();
        for c in sample {
            out.push(p.customer_bill(c).await.unwrap().total);
        }
        out
    }
    let before = bills(&engine, &sample).await;
    let accounts = engine.partition("aws").unwrap().summary().accounts;
    engine.stop();
    drop(engine);
    let journal_bytes = disk_bytes(&dir.join("aws/journal"));

    let started = Instant::now();
    let engine = Engine::start(settings, options()).await.unwrap();
    let from_journal = started.elapsed();
    assert_eq!(engine.partition("aws").unwrap().summary().accounts, accounts);
    assert_eq!(
        bills(&engine, &sample).await,
        before,
        "the same bills after a restart from the journal"
    );
    println!(
        "restart from the journal alone ({:.0} MiB): {:.2} s",
        journal_bytes as f64 / 1048576.0,
        from_journal.as_secs_f64()
    );

    let started = Instant::now();
    let p = engine.partition("aws").unwrap();
    p.snapshot().await.unwrap();
    let snapshot_time = started.elapsed();
    let snapshot_bytes = disk_bytes(&dir.join("aws/snapshots"));
    println!(
        "snapshot of {} accounts: {:.2} s, {:.0} MiB ({:.0} bytes per account); journal left {:.0} MiB",
        accounts,
        snapshot_time.as_secs_f64(),
        snapshot_bytes as f64 / 1048576.0,
        snapshot_bytes as f64 / accounts as f64,
        disk_bytes(&dir.join("aws/journal")) as f64 / 1048576.0
    );
    engine.stop();
    drop(engine);

    let started = Instant::now();
    let engine = Engine::start(settings, options()).await.unwrap();
    let from_snapshot = started.elapsed();
    assert_eq!(
        bills(&engine, &sample).await,
        before,
        "the same bills after a restart from snapshots"
    );
    println!(
        "restart from snapshots: {:.2} s for {} accounts",
        from_snapshot.as_secs_f64(),
        accounts
    );
    engine
}

fn main() {
    // `RUST_LOG=info` shows the engine's own timings (recovery per segment and partition).
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    actix_rt::System::new().block_on(run());
}
