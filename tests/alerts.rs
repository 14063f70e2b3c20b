//! Budget alerts end to end: each threshold fires once per period, also across a
//! restart; alerts are listed, streamed over Server-Sent Events, and reach a webhook
//! that fails at first, in order, none lost.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{Daemon, TempDir};
use serde_json::{json, Value};

/// A webhook receiver: answers 500 to its first `failures` requests, then 200; keeps
/// the alerts it answered 200 to.
struct Webhook {
    url: String,
    received: Arc<Mutex<Vec<Value>>>,
}

impl Webhook {
    fn start(failures: usize) -> Webhook {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        let received: Arc<Mutex<Vec<Value>>> = Default::default();
        let keep = received.clone();
        std::thread::spawn(move || {
            let mut seen = 0;
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                let mut reader = BufReader::new(stream);
                let mut length = 0usize;
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 {
                        break;
                    }
                    if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                        length = v.trim().parse().unwrap();
                    }
                    if line == "\r\n" {
                        break;
                    }
                }
                let mut body = vec![0; length];
                if reader.read_exact(&mut body).is_err() {
                    continue;
                }
                seen += 1;
                let status = if seen <= failures {
                    "500 Internal Server Error"
                } else {
                    keep.lock().unwrap().push(serde_json::from_slice(&body).unwrap());
                    "200 OK"
                };
                let _ = write!(
                    reader.get_mut(),
                    "HTTP/1.1 {status}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                );
            }
        });
        Webhook { url, received }
    }
}

fn config(webhook: &str) -> String {
    format!(
        r#"
[alerts]
check_interval_ms = 5
webhook_url = "{webhook}"
webhook_max_backoff_ms = 20

[[partitions]]
id = "aws"
currency = "USD"
catalog = "cloud-usd"
open_period = "2026-11"
"#
    )
}

fn usage(d: &Daemon, id: &str, account: &str, meter: &str, quantity: &str) {
    let body = json!([{"id": id, "account": account, "meter": meter, "quantity": quantity,
                       "time": "2026-11-03T10:00:00Z"}]);
    let r = d.post("/v1/partitions/aws/usage", &body.to_string());
    assert_eq!(r.status, 200, "{}", r.body);
}

/// Waits until the partition lists `n` alerts; returns them.
fn alerts(d: &Daemon, n: usize) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (status, body) = d.get("/v1/partitions/aws/alerts");
        assert_eq!(status, 200, "{body}");
        let list: Vec<Value> = serde_json::from_str(&body).unwrap();
        assert!(list.len() <= n, "more alerts than expected: {list:?}");
        if list.len() == n {
            return list;
        }
        assert!(Instant::now() < deadline, "waiting for {n} alerts, have {list:?}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn budget_alerts_fire_once_per_threshold_across_a_restart_and_reach_the_webhook() {
    let dir = TempDir::new("alerts");
    let webhook = Webhook::start(2);
    let config = config(&webhook.url);
    let d = Daemon::start_at(&dir.0, Some(&config));
    let r = d.post(
        "/v1/partitions/aws/customers",
        &json!({"id": "acme", "payer": "111111111111", "accounts": ["222222222222"],
                "budget": {"amount": "100.00", "thresholds": [50, 80, 100]},
                "account_budgets": {"222222222222": {"amount": "10.00", "thresholds": [100]}}})
        .to_string(),
    );
    assert_eq!(r.status, 201, "{}", r.body);
    let hours = "ec2.instance_hours";
    let gb = "data_transfer_out.gb";
    // 720 h × 0.0416 = 29.95: under 50% of 100.00.
    usage(&d, "e1", "111111111111", hours, "720");
    // 1320 h: 54.91, past 50%.
    usage(&d, "e2", "111111111111", hours, "600");
    let list = alerts(&d, 1);
    assert_eq!(list[0]["threshold"], 50);
    assert_eq!(list[0]["spent"], "54.91");
    assert_eq!(list[0]["id"], "aws/2026-11/acme/50");
    // 200 GB on 222222222222, 100 free: 9.00 for the account (under its 10.00) and
    // 63.91 in all; then 20 GB more: 10.80, the account's 100%.
    usage(&d, "e3", "222222222222", gb, "200");
    usage(&d, "e4", "222222222222", gb, "20");
    let list = alerts(&d, 2);
    assert_eq!(
        (
            list[1]["account"].as_str(),
            list[1]["threshold"].as_u64(),
            list[1]["spent"].as_str()
        ),
        (Some("222222222222"), Some(100), Some("10.80"))
    );

    // After a restart, nothing fires twice; the next thresholds fire once each.
    d.stop();
    let d = Daemon::start_at(&dir.0, Some(&config));
    // 1720 h: 71.55 + 10.80 = 82.35, past 80%.
    usage(&d, "e5", "111111111111", hours, "400");
    let list = alerts(&d, 3);
    assert_eq!(
        (list[2]["threshold"].as_u64(), list[2]["spent"].as_str()),
        (Some(80), Some("82.35"))
    );
    // 2220 h: 92.35 + 10.80 = 103.15, past 100%.
    usage(&d, "e6", "111111111111", hours, "500");
    let list = alerts(&d, 4);
    assert_eq!(
        (list[3]["threshold"].as_u64(), list[3]["spent"].as_str()),
        (Some(100), Some("103.15"))
    );
    let seqs: Vec<u64> = list.iter().map(|a| a["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, [1, 2, 3, 4]);

    // Server-Sent Events from after the second alert.
    let mut s = TcpStream::connect(&d.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "GET /v1/partitions/aws/alerts/stream HTTP/1.1\r\nHost: x\r\nLast-Event-ID: 2\r\n\r\n"
    )
    .unwrap();
    let mut text = String::new();
    let mut buf = [0u8; 4096];
    while text.matches("event: alert").count() < 2 {
        let n = s.read(&mut buf).unwrap();
        assert!(n > 0, "the stream ended: {text}");
        text.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    assert!(text.contains("content-type: text/event-stream"), "{text}");
    assert!(text.contains("id: 3\nevent: alert\ndata: {"), "{text}");
    assert!(text.contains("id: 4\nevent: alert"), "{text}");
    assert!(!text.contains("id: 2\n"), "{text}");

    // The webhook failed twice and then got every alert, in order, once.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let got: Vec<u64> = webhook
            .received
            .lock()
            .unwrap()
            .iter()
            .map(|a| a["seq"].as_u64().unwrap())
            .collect();
        if got.len() >= 4 {
            assert_eq!(got, [1, 2, 3, 4]);
            break;
        }
        assert!(Instant::now() < deadline, "webhook got {got:?}");
        std::thread::sleep(Duration::from_millis(10));
    }
}
