//! End to end: the `loadgen` binary with `--verify` (and `--chaos`) against a real tallyd.
//!
//! tallyd is the binary built beside loadgen (`cargo test --workspace` builds both into
//! the same target folder; with `cargo test -p loadgen` alone, build it first with
//! `cargo build --bin tallyd`). Runs are small and seeded.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;

use loadgen::daemon::Daemon;

const LOADGEN: &str = env!("CARGO_BIN_EXE_loadgen");

fn tallyd() -> PathBuf {
    let path = Path::new(LOADGEN).with_file_name("tallyd");
    assert!(
        path.exists(),
        "these tests run the tallyd built beside loadgen ({}): run `cargo build --bin tallyd` or `cargo test --workspace`",
        path.display()
    );
    path
}

/// A folder removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        let p = std::env::temp_dir().join(format!("loadgen-test-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs loadgen with `args`; answers its exit code and its standard output.
fn loadgen(args: &[&str]) -> (i32, String) {
    let output = Command::new(LOADGEN)
        .args(args)
        .env("LOADGEN_TALLYD", tallyd())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr);
    eprintln!("{stderr}");
    (output.status.code().unwrap_or(-1), stdout)
}

fn read_json(path: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())))
        .unwrap()
}

/// The workload of these tests: 300 accounts in 60 customers (a few large families),
/// 2,000 events a second in batches of 50 on two connections.
const WORKLOAD: &[&str] = &[
    "--accounts",
    "300",
    "--customers",
    "60",
    "--rate",
    "2000",
    "--batch",
    "50",
    "--connections",
    "2",
];

/// Runs loadgen with `args` and the tests' workload, its reports in `out`; answers its
/// exit code, its standard output and its `verify.json` (null when it wrote none).
fn run_workload(args: &[&str], out: &Path) -> (i32, String, serde_json::Value) {
    let mut all = args.to_vec();
    all.extend_from_slice(WORKLOAD);
    all.extend_from_slice(&["--out", out.to_str().unwrap()]);
    let (code, stdout) = loadgen(&all);
    let verdict = out.join("verify.json");
    let verdict = if verdict.exists() {
        read_json(&verdict)
    } else {
        serde_json::Value::Null
    };
    (code, stdout, verdict)
}

/// `loadgen --in-process --verify` with `config` (written to `out`), `seed`, no warmup
/// and `seconds` of load; its output goes to `out`'s folder `out`.
fn verify_in_process(
    out: &TempDir,
    config: &str,
    seed: &str,
    seconds: &str,
) -> (i32, String, serde_json::Value) {
    let file = out.0.join("config.toml");
    std::fs::write(&file, config).unwrap();
    let args = [
        "--in-process",
        "--verify",
        "--config",
        file.to_str().unwrap(),
        "--seed",
        seed,
        "--warmup",
        "0",
        "--duration",
        seconds,
    ];
    run_workload(&args, &out.0.join("out"))
}

#[test]
fn spawn_verify_matches_every_customer() {
    let out = TempDir::new("verify");
    let (code, stdout, verdict) = run_workload(
        &[
            "--spawn",
            "--verify",
            "--seed",
            "7",
            "--warmup",
            "1",
            "--duration",
            "2",
        ],
        &out.0,
    );
    assert_eq!(code, 0, "{stdout}");
    assert!(stdout.contains("verify: all 60 customers match"), "{stdout}");
    assert_eq!(verdict["mismatches"], serde_json::json!([]), "{verdict}");
    assert_eq!(verdict["customers"], 60);
    // 3 s at 2,000 events/s: about 6,000 events in 120 batches of 50, all acknowledged
    // and all counted; they reach most customers, so there are invoices to compare.
    let events = verdict["acknowledged_events"].as_u64().unwrap();
    assert_eq!(events, verdict["acknowledged_batches"].as_u64().unwrap() * 50);
    assert!((5_000..=6_100).contains(&events), "{events} events");
    assert!(verdict["invoices"].as_u64().unwrap() >= 40, "{verdict}");
    assert_eq!(verdict["expected_total"], verdict["invoiced_total"]);
    assert_ne!(verdict["expected_total"], "0");
    let summary = read_json(&out.0.join("summary.json"));
    assert_eq!(summary["verify"]["mismatches"], 0);
    assert_eq!(summary["duplicates"], 0, "nothing was sent twice");
}

#[test]
fn chaos_kills_tallyd_and_verify_still_matches() {
    let out = TempDir::new("chaos");
    let (code, stdout, verdict) = run_workload(
        &[
            "--spawn",
            "--chaos",
            "--verify",
            "--seed",
            "11",
            "--warmup",
            "0",
            "--duration",
            "7",
        ],
        &out.0,
    );
    assert_eq!(code, 0, "{stdout}");
    let summary = read_json(&out.0.join("summary.json"));
    // Kills come 0.5 to 3 s after each start-up, so a 7 s run sees at least two.
    let kills = summary["chaos"]["kills"].as_array().unwrap();
    assert!(kills.len() >= 2, "{summary}");
    assert_eq!(summary["errors"], 0, "{summary}");
    assert_eq!(verdict["mismatches"], serde_json::json!([]), "{verdict}");
    assert_eq!(verdict["customers"], 60);
    assert!(
        verdict["acknowledged_events"].as_u64().unwrap() >= 5_000,
        "{verdict}"
    );
    assert_eq!(verdict["expected_total"], verdict["invoiced_total"]);
    assert!(stdout.contains("verify: all 60 customers match"), "{stdout}");
}

#[test]
fn in_process_verify_matches_with_the_same_reports() {
    let out = TempDir::new("in-process");
    let (code, stdout, verdict) = run_workload(
        &[
            "--in-process",
            "--verify",
            "--seed",
            "5",
            "--warmup",
            "1",
            "--duration",
            "2",
        ],
        &out.0,
    );
    assert_eq!(code, 0, "{stdout}");
    assert!(stdout.contains("verify: all 60 customers match"), "{stdout}");
    assert_eq!(verdict["mismatches"], serde_json::json!([]), "{verdict}");
    // 3 s at one batch of 50 every 25 ms: 120 batches, every one acknowledged.
    assert_eq!(verdict["acknowledged_events"], 6_000, "{verdict}");
    assert_eq!(verdict["expected_total"], verdict["invoiced_total"]);
    let summary = read_json(&out.0.join("summary.json"));
    assert_eq!(summary["target"], "in-process");
    assert_eq!(summary["errors"], 0);
    // Two measured seconds of 2,000 events/s (±1 batch at the edges; lower when this
    // test shares the 2 cores with the others of this file, which run beside it).
    let accepted = summary["accepted_events_per_s"].as_f64().unwrap();
    assert!((1_600.0..=2_100.0).contains(&accepted), "{accepted}");
    for report in ["latency.hgrm", "service.hgrm", "latency.hlog", "latency.svg"] {
        assert!(out.0.join(report).metadata().unwrap().len() > 0, "{report}");
    }
}

/// A catalog whose tier bounds, allowances and packages are small enough for a few
/// thousand events to cross them all (the embedded catalog's are cloud-sized).
const SMALL_CATALOG: &str = r#"
[[partitions]]
id = "aws"
currency = "USD"
catalog = "small"

[[catalogs.small]]
effective_from = "2026-11-01"

[[catalogs.small.meters]]
name = "compute.hours"
aggregation = "sum"
price = { model = "graduated", tiers = [
  { up_to = "500", unit_price = "0.05", flat_fee = "1.50" },
  { up_to = "2000", unit_price = "0.04", flat_fee = "2.25" },
  { unit_price = "0.0333" },
] }

[[catalogs.small.meters]]
name = "requests"
aggregation = "sum"
free_allowance = "300"
price = { model = "package", package_size = "250", package_price = "0.17" }

[[catalogs.small.meters]]
name = "api.calls"
aggregation = "count"
free_allowance = "20"
price = { model = "volume", tiers = [
  { up_to = "50", unit_price = "0.013" },
  { up_to = "200", unit_price = "0.011", flat_fee = "0.5" },
  { unit_price = "0.007" },
] }

[[catalogs.small.meters]]
name = "disk.gb"
aggregation = "max"
price = { model = "volume", tiers = [
  { up_to = "1500", unit_price = "0.10" },
  { unit_price = "0.085", flat_fee = "3" },
] }

[[catalogs.small.meters]]
name = "users"
aggregation = "unique_count"
dimension = "user"
free_allowance = "25"
price = { model = "graduated", tiers = [
  { up_to = "100", unit_price = "0.0055" },
  { unit_price = "0.0046" },
] }

[[catalogs.small.meters]]
name = "seats"
aggregation = "latest"
price = { model = "per_unit", unit_price = "0.333" }
"#;

#[test]
fn in_process_verify_crosses_every_tier_of_a_small_catalog() {
    let out = TempDir::new("small-catalog");
    let (code, stdout, verdict) = verify_in_process(&out, SMALL_CATALOG, "9", "3");
    assert_eq!(code, 0, "{stdout}");
    assert_eq!(verdict["mismatches"], serde_json::json!([]), "{verdict}");
    // The largest families went past the last bound of every plan: graduated past 2000
    // (both flat fees), packages past the 300 free, volume past 200 calls and 1500 GB,
    // distinct users past 100.
    let largest = |meter: &str| -> f64 {
        verdict["meters"][meter]["largest_quantity"]
            .as_str()
            .unwrap_or_else(|| panic!("{meter}: {verdict}"))
            .parse()
            .unwrap()
    };
    assert!(largest("compute.hours") > 2000.0, "{verdict}");
    assert!(largest("requests") > 300.0 + 250.0, "{verdict}");
    assert!(largest("api.calls") > 200.0, "{verdict}");
    assert!(largest("disk.gb") > 1500.0, "{verdict}");
    assert!(largest("users") > 100.0, "{verdict}");
    assert!(
        verdict["meters"]["seats"]["customers_charged"].as_u64().unwrap() >= 40,
        "{verdict}"
    );
}

/// A POST with a JSON or NDJSON body; answers the status and the body.
fn post(addr: &str, path: &str, content_type: &str, body: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    write!(
        s,
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut response = String::new();
    s.read_to_string(&mut response).unwrap();
    let status = response[9..12].parse().unwrap();
    let body = response.split_once("\r\n\r\n").map_or("", |(_, b)| b).to_string();
    (status, body)
}

#[test]
fn verify_reports_a_bill_the_oracle_does_not_expect_and_exits_non_zero() {
    let out = TempDir::new("mismatch");
    let out_dir = out.0.to_str().unwrap();
    // The customers are made here (the same seed makes the same families as the run's),
    // and the largest family gets a 10% discount the workload knows nothing of: its
    // invoice is 10% lower than loadgen's own bill.
    let (code, stdout) = loadgen(&[
        "generate",
        "--accounts",
        "300",
        "--customers",
        "60",
        "--events",
        "0",
        "--seed",
        "7",
        "--out",
        out_dir,
    ]);
    assert_eq!(code, 0, "{stdout}");
    let daemon = Daemon::start_binary(tallyd(), "2026-11".parse().unwrap(), "aws", "").unwrap();
    let addr = daemon.url().trim_start_matches("http://").to_string();
    let customers = std::fs::read_to_string(out.0.join("customers.ndjson")).unwrap();
    let (status, body) = post(
        &addr,
        "/v1/partitions/aws/customers/bulk",
        "application/x-ndjson",
        &customers,
    );
    assert!((200..300).contains(&status), "{status} {body}");
    let (status, body) = post(
        &addr,
        "/v1/partitions/aws/customers/cust-00000000/discounts",
        "application/json",
        r#"{"id": "surprise", "percent": "10", "meters": null}"#,
    );
    assert!((200..300).contains(&status), "{status} {body}");

    let target = daemon.url();
    let (code, stdout, verdict) = run_workload(
        &[
            "--target",
            &target,
            "--no-seed",
            "--verify",
            "--seed",
            "7",
            "--warmup",
            "0",
            "--duration",
            "2",
        ],
        &out.0,
    );
    assert_eq!(code, 1, "a mismatch exits 1: {stdout}");
    assert!(stdout.contains("MISMATCHES in 1 of 60 customers"), "{stdout}");
    let mismatches = verdict["mismatches"].as_array().unwrap();
    assert!(
        mismatches.iter().all(|m| m["customer"] == "cust-00000000"),
        "{verdict}"
    );
    let total = mismatches
        .iter()
        .find(|m| m["figure"] == "total")
        .expect("the total differs");
    // The invoice is the expected total less its 10% discount (rounded per line, so
    // within a cent per line of 90%).
    let expected: f64 = total["expected"].as_str().unwrap().parse().unwrap();
    let got: f64 = total["got"].as_str().unwrap().parse().unwrap();
    assert!(expected > 0.0, "{total}");
    assert!((got - expected * 0.9).abs() <= 0.1, "{total}");
    // The lines and accounts are before discounts: they match.
    assert!(
        mismatches.iter().all(|m| m["figure"] == "total"),
        "only the total differs: {verdict}"
    );
}

#[test]
fn in_process_verify_leaves_out_the_events_refused_past_an_accounts_limit() {
    let out = TempDir::new("event-limit");
    // The hot accounts of the Zipf traffic go past 20 events, so some events of some
    // batches are refused when applied: the rest of those batches counts, and the oracle
    // leaves the refused ones out.
    let config = format!("{SMALL_CATALOG}\n[limits]\nmax_events_per_account = 20\n");
    let (code, stdout, verdict) = verify_in_process(&out, &config, "4", "2");
    assert_eq!(code, 0, "{stdout}");
    assert_eq!(verdict["mismatches"], serde_json::json!([]), "{verdict}");
    let summary = read_json(&out.0.join("out").join("summary.json"));
    assert!(summary["refused_events"].as_u64().unwrap() > 0, "{summary}");
}
