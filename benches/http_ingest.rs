//! HTTP ingest throughput and latency, from a client on the same machine.
//!
//! `cargo bench --bench http_ingest` starts the release `tallyd` on a free loopback port
//! (one partition, 100,000 accounts in 20,000 customers created through the bulk API),
//! then, for batches of 100 and of 1,000 events, sends pre-serialised JSON batches over
//! 4 keep-alive connections for a fixed number of batches and prints events/s and the
//! latency percentiles (HdrHistogram) of the requests. Until loadgen drives tallyd over
//! HTTP, this small client is the measure.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::Instant;

use hdrhistogram::Histogram;

const ACCOUNTS: usize = 100_000;
const CUSTOMERS: usize = 20_000;
const CONNECTIONS: usize = 4;

const CONFIG: &str = r#"
[server]
listen = "127.0.0.1:0"
data_dir = "./data"
http_workers = 2

[limits]
max_body_bytes = 16777216
max_events_per_request = 10000
max_customers_per_request = 100000

[[partitions]]
id = "aws"
currency = "USD"
catalog = "cloud-usd"
open_period = "2026-11"
"#;

struct Connection {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
    host: String,
}

impl Connection {
    fn open(addr: &str) -> Connection {
        let s = TcpStream::connect(addr).unwrap();
        s.set_nodelay(true).unwrap();
        Connection {
            reader: BufReader::new(s.try_clone().unwrap()),
            writer: s,
            host: addr.to_string(),
        }
    }

    /// One request on the kept-alive connection; returns the status and the body.
    fn post(&mut self, path: &str, content_type: &str, body: &[u8]) -> (u16, String) {
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: {}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\r\n",
            self.host,
            body.len()
        );
        self.writer.write_all(head.as_bytes()).unwrap();
        self.writer.write_all(body).unwrap();
        let mut status_line = String::new();
        self.reader.read_line(&mut status_line).unwrap();
        let status: u16 = status_line[9..12].parse().unwrap();
        let mut length = 0usize;
        loop {
            let mut line = String::new();
            self.reader.read_line(&mut line).unwrap();
            if line == "\r\n" {
                break;
            }
            if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                length = v.trim().parse().unwrap();
            }
        }
        let mut body = vec![0; length];
        self.reader.read_exact(&mut body).unwrap();
        (status, String::from_utf8_lossy(&body).into_owned())
    }
}

fn account(i: usize) -> String {
    format!("{:012}", 100_000_000_000u64 + i as u64)
}

/// splitmix64, so that every run sends the same batches.
fn next(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn batches(count: usize, size: usize, seed: u64, first_id: u64) -> Vec<Vec<u8>> {
    let meters = [
        "ec2.instance_hours",
        "s3.storage_gb_month",
        "data_transfer_out.gb",
        "lambda.requests",
    ];
    let mut state = seed;
    let mut id = first_id;
    (0..count)
        .map(|_| {
            let mut body = String::from("[");
            for i in 0..size {
                id += 1;
                let r = next(&mut state);
                if i > 0 {
                    body.push(',');
                }
                body.push_str(&format!(
                    r#"{{"id":"e{id}","account":"{}","meter":"{}","quantity":"{}.{:03}","time":"2026-11-{:02}T{:02}:00:00Z"}}"#,
                    account((r % ACCOUNTS as u64) as usize),
                    meters[(r >> 20) as usize % meters.len()],
                    (r >> 24) % 100,
                    (r >> 32) % 1000,
                    1 + (r >> 40) % 28,
                    (r >> 48) % 24
                ));
            }
            body.push(']');
            body.into_bytes()
        })
        .collect()
}

fn run(addr: &str, size: usize, total_batches: usize, first_id: u64) {
    let all = batches(total_batches, size, size as u64, first_id);
    let per_connection = total_batches / CONNECTIONS;
    let mut chunks: Vec<Vec<Vec<u8>>> = Vec::new();
    let mut all = all.into_iter();
    for _ in 0..CONNECTIONS {
        chunks.push(all.by_ref().take(per_connection).collect());
    }
    let started = Instant::now();
    let threads: Vec<_> = chunks
        .into_iter()
        .map(|chunk| {
            let addr = addr.to_string();
            std::thread::spawn(move || {
                let mut c = Connection::open(&addr);
                let mut h = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap();
                let mut refused = 0;
                for body in &chunk {
                    loop {
                        let t = Instant::now();
                        let (status, reply) = c.post("/v1/partitions/aws/usage", "application/json", body);
                        h.record(t.elapsed().as_micros().max(1) as u64).unwrap();
                        match status {
                            200 => break,
                            429 => refused += 1,
                            _ => panic!("{status}: {reply}"),
                        }
                    }
                }
                (h, refused)
            })
        })
        .collect();
    let mut h = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap();
    let mut refused = 0;
    for t in threads {
        let (part, r) = t.join().unwrap();
        h.add(part).unwrap();
        refused += r;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let events = (per_connection * CONNECTIONS * size) as f64;
    println!(
        "batches of {size}: {:.0} events/s ({} batches over {CONNECTIONS} connections in {elapsed:.2} s, {refused} answered 429); \
         request latency p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms, max {:.2} ms",
        events / elapsed,
        per_connection * CONNECTIONS,
        h.value_at_quantile(0.5) as f64 / 1000.0,
        h.value_at_quantile(0.9) as f64 / 1000.0,
        h.value_at_quantile(0.99) as f64 / 1000.0,
        h.value_at_quantile(0.999) as f64 / 1000.0,
        h.max() as f64 / 1000.0
    );
}

fn main() {
    let dir = std::env::temp_dir().join(format!("tallyd-http-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("config.toml");
    std::fs::write(&config, CONFIG).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_tallyd"))
        .arg("--config")
        .arg(&config)
        .arg("--data-dir")
        .arg(dir.join("data"))
        .env("RUST_LOG", "warn,tallyman::api=info,tallyd=info")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    // tallyd listens first and recovers after: wait for both lines.
    let mut addr = None;
    for line in lines.by_ref() {
        let line = line.unwrap();
        if let Some(rest) = line.split("listening on ").nth(1) {
            addr = Some(rest.split_whitespace().next().unwrap().to_string());
        }
        if line.contains("start-up finished") {
            break;
        }
    }
    let addr = addr.expect("tallyd logs `listening on ADDR`");
    std::thread::spawn(move || lines.for_each(drop));

    // Customers, through the bulk API.
    let mut ndjson = String::new();
    for c in 0..CUSTOMERS {
        let members: Vec<String> = (0..ACCOUNTS / CUSTOMERS)
            .map(|a| account(c * (ACCOUNTS / CUSTOMERS) + a))
            .collect();
        ndjson.push_str(&format!(
            "{{\"id\":\"cust-{c}\",\"payer\":\"{}\",\"accounts\":{:?}}}\n",
            members[0], members
        ));
    }
    let mut conn = Connection::open(&addr);
    let (status, body) = conn.post(
        "/v1/partitions/aws/customers/bulk",
        "application/x-ndjson",
        ndjson.as_bytes(),
    );
    assert_eq!(status, 200, "{body}");
    println!("tallyd on {addr}: {CUSTOMERS} customers, {ACCOUNTS} accounts created");

    run(&addr, 1000, 400, 0); // warm-up
    run(&addr, 100, 8_000, 10_000_000);
    run(&addr, 1000, 2_000, 20_000_000);
    let _ = child.kill();
    let _ = child.wait();
    let _ = std::fs::remove_dir_all(&dir);
}
