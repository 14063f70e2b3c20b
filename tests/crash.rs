//! Crash tests with a real process and real files: tallyd is SIGKILLed while usage streams
//! in (one batch in flight), restarted on the same data, and every batch it did not
//! acknowledge is sent again. The bills must then equal a re-computation, through the
//! domain's functions, of every event once — for several seeds.

mod common;

use std::collections::HashMap;
use std::io::Write;
use std::net::TcpStream;

use common::{Daemon, TempDir};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::{json, Value};
use tallyman::config::Settings;
use tallyman::domain::usage::event_fingerprint;
use tallyman::domain::*;

/// Small journal files and frequent snapshots, so that snapshots, journal truncation and
/// recovery from a snapshot plus the journal after it all happen within a short stream.
const CONFIG: &str = r#"
[journal]
file_bytes = 8192

[runtime]
snapshot_every_events = 200

[[partitions]]
id = "aws"
currency = "USD"
catalog = "cloud-usd"
customers = "sample-aws"
open_period = "2026-11"
"#;

const ACCOUNTS: [&str; 6] = [
    "111111111111",
    "222222222222",
    "333333333333",
    "444444444444",
    "555555555555",
    "666666666666",
];
const METERS: [&str; 4] = [
    "ec2.instance_hours",
    "s3.storage_gb_month",
    "data_transfer_out.gb",
    "lambda.requests",
];

fn batches(seed: u64) -> Vec<Vec<Value>> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    (0..30)
        .map(|b| {
            (0..40)
                .map(|i| {
                    json!({
                        "id": format!("s{seed}-b{b}-e{i}"),
                        "account": ACCOUNTS[rng.random_range(0..ACCOUNTS.len())],
                        "meter": METERS[rng.random_range(0..METERS.len())],
                        "quantity": format!("{}.{:03}", rng.random_range(0..5000), rng.random_range(0..1000)),
                        "time": format!("2026-11-{:02}T{:02}:00:00Z", rng.random_range(1..=30), rng.random_range(0..24)),
                    })
                })
                .collect()
        })
        .collect()
}

/// The bills of every customer, computed from `events` by folding them through the domain.
fn expected(dir: &std::path::Path, events: &[Value]) -> HashMap<String, String> {
    let file = dir.join("expected.toml");
    std::fs::write(&file, CONFIG).unwrap();
    let settings = Settings::load(Some(&file)).unwrap().validate().unwrap();
    let p = &settings.partitions[0];
    let mut usage: HashMap<AccountId, AccountUsage> = HashMap::new();
    for e in events {
        let event: UsageEvent = serde_json::from_value(json!({
            "id": e["id"], "account": e["account"], "meter": e["meter"],
            "quantity": e["quantity"], "time": e["time"],
        }))
        .unwrap();
        let (meter, reading) = p.catalog.resolve(&event, event.time.date_naive()).unwrap();
        usage
            .entry(event.account.as_str().into())
            .or_default()
            .apply(event_fingerprint(&event.id), meter, &reading)
            .unwrap();
    }
    let ctx = BillingContext {
        catalog: &p.catalog,
        rounding: p.rounding,
        period: "2026-11".parse().unwrap(),
    };
    p.customers
        .iter()
        .map(|c| {
            let mine = usage.iter().filter(|(a, _)| c.accounts.contains(a));
            let bill = bill_customer(&ctx, c, &settings.profiles[c.profile.as_str()], mine);
            (c.id.to_string(), bill.total.to_string())
        })
        .collect()
}

fn post_usage(d: &Daemon, batch: &[Value]) -> Value {
    let r = d.post("/v1/partitions/aws/usage", &serde_json::to_string(batch).unwrap());
    assert_eq!(r.status, 200, "{}\n{}", r.body, d.log.lock().unwrap().join("\n"));
    r.json()
}

#[test]
fn sigkill_mid_stream_loses_nothing_acknowledged() {
    for seed in [1u64, 2, 3] {
        let dir = TempDir::new(&format!("crash-{seed}"));
        let all = batches(seed);
        let mut rng = ChaCha8Rng::seed_from_u64(seed + 100);
        let kill_at = rng.random_range(3..all.len() - 3);
        let snapshot_at = rng.random_range(1..kill_at);
        let mut acknowledged = vec![false; all.len()];
        {
            let mut d = Daemon::start_at(&dir.0, Some(CONFIG));
            for (i, batch) in all.iter().enumerate() {
                if i == snapshot_at {
                    // A snapshot mid-stream: the restart recovers from it and the journal after it.
                    let r = d.post("/v1/admin/snapshot", "");
                    assert_eq!(r.status, 200, "{}", r.body);
                }
                if i == kill_at {
                    // Send one more batch and kill tallyd without waiting for its answer.
                    let body = serde_json::to_string(batch).unwrap();
                    let mut s = TcpStream::connect(&d.addr).unwrap();
                    write!(
                        s,
                        "POST /v1/partitions/aws/usage HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                        body.len()
                    )
                    .unwrap();
                    d.child.kill().unwrap();
                    d.child.wait().unwrap();
                    break;
                }
                post_usage(&d, batch);
                acknowledged[i] = true;
            }
        }
        // Restart on the same data and send again everything not acknowledged.
        let d = Daemon::start_at(&dir.0, Some(CONFIG));
        for (i, batch) in all.iter().enumerate() {
            if !acknowledged[i] {
                let r = post_usage(&d, batch);
                let total = r["accepted"].as_u64().unwrap() + r["duplicates"].as_u64().unwrap();
                assert_eq!(total as usize, batch.len());
            }
        }
        // Everything acknowledged before the crash is there, and nothing twice.
        let events: Vec<Value> = all.iter().flatten().cloned().collect();
        for (customer, total) in expected(&dir.0, &events) {
            let (status, body) = d.get(&format!("/v1/partitions/aws/customers/{customer}/bill"));
            assert_eq!(status, 200, "{}", body);
            let bill: Value = serde_json::from_str(&body).unwrap();
            assert_eq!(
                bill["total"],
                total.as_str(),
                "seed {seed}, customer {customer}, killed at batch {kill_at}"
            );
        }
        // A retry of an acknowledged batch after the restart is all duplicates.
        let r = post_usage(&d, &all[0]);
        assert_eq!(r, json!({"accepted": 0, "duplicates": 40}), "seed {seed}");
    }
}

#[test]
fn sigterm_drains_and_loses_nothing_acknowledged() {
    let dir = TempDir::new("sigterm");
    let all = batches(9);
    let mut d = Daemon::start_at(&dir.0, Some(CONFIG));
    let addr = d.addr.clone();
    let pid = d.child.id().to_string();
    // A sender streams batches until the daemon stops answering, and says when each one
    // is acknowledged.
    let (acked_tx, acked_rx) = std::sync::mpsc::channel::<usize>();
    let sender = {
        let all = all.clone();
        std::thread::spawn(move || {
            let mut acknowledged = Vec::new();
            for (i, batch) in all.iter().enumerate() {
                let body = serde_json::to_string(batch).unwrap();
                let Ok(mut s) = TcpStream::connect(&addr) else {
                    break;
                };
                let request = format!(
                    "POST /v1/partitions/aws/usage HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                    body.len()
                );
                if s.write_all(request.as_bytes()).is_err() {
                    break;
                }
                let mut response = String::new();
                let _ = std::io::Read::read_to_string(&mut s, &mut response);
                if response.starts_with("HTTP/1.1 200") {
                    acknowledged.push(i);
                    let _ = acked_tx.send(i);
                } else {
                    break;
                }
            }
            acknowledged
        })
    };
    // Stop it while the sender is busy, once three batches have been acknowledged.
    for _ in 0..3 {
        acked_rx.recv().unwrap();
    }
    assert!(std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let exit = d.child.wait().unwrap();
    assert!(exit.success(), "tallyd exits 0 after SIGTERM: {exit}");
    let acknowledged = sender.join().unwrap();
    assert!(acknowledged.len() >= 3);
    // Everything acknowledged before the stop is there after a restart: sent again, it is
    // all duplicates.
    let d = Daemon::start_at(&dir.0, Some(CONFIG));
    for &i in &acknowledged {
        let r = post_usage(&d, &all[i]);
        assert_eq!(
            r,
            json!({"accepted": 0, "duplicates": 40}),
            "batch {i} of {acknowledged:?}"
        );
    }
}

#[test]
fn a_damaged_newest_snapshot_falls_back_to_the_older_one() {
    let dir = TempDir::new("snapshot-fallback");
    let all = batches(21);
    // Two runs, each ending in a snapshot at shutdown: two snapshots per segment.
    let d = Daemon::start_at(&dir.0, Some(CONFIG));
    for batch in &all[..15] {
        post_usage(&d, batch);
    }
    d.stop();
    let d = Daemon::start_at(&dir.0, Some(CONFIG));
    for batch in &all[15..] {
        post_usage(&d, batch);
    }
    d.stop();
    // Flip one byte in the middle of the newest snapshot of every segment.
    let snapshots = dir.0.join("data/aws/snapshots");
    let mut newest: HashMap<String, std::path::PathBuf> = HashMap::new();
    for entry in std::fs::read_dir(&snapshots).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_str().unwrap().to_string();
        let segment = name.split('-').next().unwrap().to_string();
        if newest.get(&segment).is_none_or(|p| *p < path) {
            newest.insert(segment, path);
        }
    }
    assert!(!newest.is_empty());
    let journal: Vec<String> = std::fs::read_dir(dir.0.join("data/aws/journal"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert!(
        !journal.contains(&"journal-00000000000000000001.log".to_string()),
        "the journal files the older snapshots cover were deleted: {journal:?}"
    );
    for path in newest.values() {
        let mut bytes = std::fs::read(path).unwrap();
        let middle = bytes.len() / 2;
        bytes[middle] ^= 0x01;
        std::fs::write(path, bytes).unwrap();
    }
    // The restart recovers from the older snapshots plus the journal after them (which
    // truncation kept for exactly this), says so, and the bills are whole.
    let d = Daemon::start_at(&dir.0, Some(CONFIG));
    let log = d.log.lock().unwrap().join("\n");
    assert!(log.contains("checksum mismatch"), "{log}");
    assert!(log.contains("recovering from an older snapshot"), "{log}");
    let events: Vec<Value> = all.iter().flatten().cloned().collect();
    for (customer, total) in expected(&dir.0, &events) {
        let (status, body) = d.get(&format!("/v1/partitions/aws/customers/{customer}/bill"));
        assert_eq!(status, 200, "{}", body);
        let bill: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(bill["total"], total.as_str(), "customer {customer}");
    }
    let r = post_usage(&d, &all[0]);
    assert_eq!(r, json!({"accepted": 0, "duplicates": 40}));
}

#[test]
fn a_crash_in_the_middle_of_a_bill_run_resumes_with_no_invoice_twice_or_missing() {
    let dir = TempDir::new("bill-run-crash");
    let all = batches(31);
    // The test hook aborts tallyd once the first segment's invoices are written and
    // synced, before their customers are closed: the worst moment.
    let mut d = Daemon::start_at_with_env(&dir.0, Some(CONFIG), &[("TALLYD_TEST_ABORT_BILL_RUN_AFTER", "1")]);
    for batch in &all {
        post_usage(&d, batch);
    }
    let r = d.post("/v1/partitions/aws/bill-runs", r#"{"period": "2026-11"}"#);
    assert_eq!(r.status, 202, "{}", r.body);
    let exit = d.child.wait().unwrap();
    assert!(!exit.success(), "the hook aborts tallyd: {exit}");
    let invoices = std::fs::read_to_string(dir.0.join("data/aws/invoices/2026-11.ndjson")).unwrap();
    let written_before = invoices.lines().count();
    assert!(
        written_before >= 1,
        "the first batch was written before the crash"
    );

    // The restart resumes the run by itself.
    let d = Daemon::start_at(&dir.0, Some(CONFIG));
    let run = d.wait_for_bill_run("aws-2026-11");
    let events: Vec<Value> = all.iter().flatten().cloned().collect();
    let expected = expected(&dir.0, &events);
    assert_eq!(run["invoices"], expected.len(), "{run}");
    let (status, body) = d.get("/v1/partitions/aws/invoices?period=2026-11");
    assert_eq!(status, 200, "{body}");
    let mut numbers: Vec<String> = Vec::new();
    let mut customers: Vec<String> = Vec::new();
    for line in body.lines() {
        let invoice: Value = serde_json::from_str(line).unwrap();
        let customer = invoice["customer"].as_str().unwrap().to_string();
        assert_eq!(
            invoice["total"],
            expected[&customer].as_str(),
            "customer {customer}"
        );
        numbers.push(invoice["number"].as_str().unwrap().to_string());
        customers.push(customer);
    }
    // One invoice per customer, numbered 1..n with no gap, the ones written before the
    // crash unchanged.
    customers.sort();
    customers.dedup();
    assert_eq!(customers.len(), expected.len());
    let wanted: Vec<String> = (1..=expected.len())
        .map(|i| format!("aws-2026-11-{i:06}"))
        .collect();
    assert_eq!(numbers, wanted);
    assert!(body.starts_with(invoices.as_str()));
    // The period is closed: an acknowledged batch sent again is all duplicates, never
    // billed again as late usage; the next period is open and empty.
    let r = post_usage(&d, &all[0]);
    assert_eq!(r, json!({"accepted": 0, "duplicates": 40}));
    for customer in expected.keys() {
        let (_, body) = d.get(&format!("/v1/partitions/aws/customers/{customer}/bill"));
        let bill: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(bill["period"], "2026-12");
        assert_eq!(bill["subtotal"], "0.00", "{bill}");
    }
    // Running it again returns the same run and the same invoices.
    let r = d.post("/v1/partitions/aws/bill-runs", r#"{"period": "2026-11"}"#);
    assert_eq!(r.status, 202, "{}", r.body);
    assert_eq!(r.json()["state"], "done");
    let (_, again) = d.get("/v1/partitions/aws/invoices?period=2026-11");
    assert_eq!(again, body);
}

#[test]
fn a_second_tallyd_on_the_same_data_is_refused() {
    let dir = TempDir::new("lock");
    let _first = Daemon::start_at(&dir.0, Some(CONFIG));
    let out = std::process::Command::new(common::TALLYD)
        .args(["--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.0.join("data"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(log.contains("another tallyd is using this data folder"), "{log}");
}
