//! The coordinated-omission correction against a synthetic server that stalls on purpose:
//! one request held for a second holds up every batch due meanwhile, and their latency
//! (from the intended send time) shows it, while the service time shows one slow request.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::time::Duration;

use loadgen::run::{run, Http, LoadSpec};

/// Answers every request at once, except the `stall_at`-th, held for `stall`.
fn synthetic_server(stall_at: usize, stall: Duration) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let served = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { continue };
            let served = served.clone();
            let _ = stream.set_nodelay(true);
            // A thread per connection, so a new connection never waits for an old one.
            std::thread::spawn(move || {
                let mut reader = BufReader::new(stream);
                // Keep-alive: requests one after another on the connection.
                loop {
                    let mut length = 0usize;
                    let mut any = false;
                    loop {
                        let mut line = String::new();
                        if reader.read_line(&mut line).unwrap_or(0) == 0 {
                            break;
                        }
                        any = true;
                        if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                            length = v.trim().parse().unwrap();
                        }
                        if line == "\r\n" {
                            break;
                        }
                    }
                    if !any {
                        break;
                    }
                    let mut body = vec![0; length];
                    if reader.read_exact(&mut body).is_err() {
                        break;
                    }
                    let n = served.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
                    if n == stall_at {
                        std::thread::sleep(stall);
                    }
                    let answer = r#"{"accepted":10,"duplicates":0}"#;
                    // One write: small writes would meet Nagle and delayed acknowledgements.
                    let response = format!(
                        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{answer}",
                        answer.len()
                    );
                    let _ = reader.get_mut().write_all(response.as_bytes());
                }
            });
        }
    });
    format!("http://{addr}")
}

#[test]
fn a_stall_shows_in_the_latency_from_the_intended_time_not_only_in_one_request() {
    let target = synthetic_server(50, Duration::from_secs(1));
    let (tx, rx) = tokio::sync::mpsc::channel(1024);
    std::thread::spawn(move || while tx.blocking_send(b"[]".to_vec()).is_ok() {});
    // 100 batches a second (every 10 ms) on one connection, for 3 s: 300 batches, of
    // which the ~100 due during the stall wait for it.
    let result = actix_rt::System::new().block_on(run(
        LoadSpec {
            rate: 1000,
            batch: 10,
            connections: 1,
            warmup: Duration::ZERO,
            duration: Duration::from_secs(3),
            resend: None,
        },
        Http::new(&target, "aws", 1),
        rx,
    ));
    assert_eq!(result.errors, 0);
    let n = result.latency.len();
    assert!((295..=300).contains(&n), "{n} batches measured");
    assert_eq!(result.service.len(), n);
    let ms = |us: u64| us / 1000;
    // Two thirds of the batches were due outside the stall and were answered at once.
    assert!(
        ms(result.latency.value_at_quantile(0.5)) < 100,
        "p50 {}",
        result.latency.value_at_quantile(0.5)
    );
    // Corrected: the stalled request waited ~1 s, the ~100 behind it from ~990 ms down
    // to ~0, so about a third of all batches waited, a sixth over half a second.
    assert!(ms(result.latency.max()) >= 950, "max {}", result.latency.max());
    assert!(
        ms(result.latency.value_at_quantile(0.80)) >= 300,
        "p80 {}",
        result.latency.value_at_quantile(0.80)
    );
    // Uncorrected service time: one slow request, the rest quick.
    assert!(ms(result.service.max()) >= 950);
    assert!(
        ms(result.service.value_at_quantile(0.99)) < 100,
        "service p99 {}",
        result.service.value_at_quantile(0.99)
    );
    // One histogram per second.
    assert!(result.intervals.len() >= 3, "{}", result.intervals.len());
}
