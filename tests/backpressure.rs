//! Backpressure over real HTTP: a saturated segment makes ingest answer 429 with
//! Retry-After at once, journals nothing, and takes traffic again once it drains.
//! The segment is held busy by a fault hook that blocks on a gate: no sleeps.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex};

use actix_web::{web, App, HttpServer};
use tallyman::config::{AuthConfig, Settings};
use tallyman::engine::{CustomerKey, Engine, EngineOptions};
use tallyman_actors::FaultHook;

#[derive(Default)]
struct Gate {
    open: Mutex<bool>,
    cv: Condvar,
}

fn post(addr: &str, body: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    write!(
        s,
        "POST /v1/partitions/aws/usage HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut response = String::new();
    s.read_to_string(&mut response).unwrap();
    (response[9..12].parse().unwrap(), response)
}

fn usage(id: &str) -> String {
    format!(
        r#"[{{"id": "{id}", "account": "111111111111", "meter": "ec2.instance_hours", "quantity": 1, "time": "2026-11-03T10:00:00Z"}}]"#
    )
}

#[test]
fn a_saturated_segment_answers_429_with_retry_after() {
    let mut s = Settings::load(None).unwrap();
    s.runtime.segments = 1;
    s.runtime.mailbox_capacity = 1;
    s.runtime.rebalance_interval_secs = 0;
    s.partitions.truncate(1);
    s.partitions[0].open_period = Some("2026-11".into());
    // Budget checks are background queries that take a mailbox place too; this test
    // counts the segment's one place exactly, so its customers have no budget.
    for set in s.customer_sets.values_mut() {
        for c in set.iter_mut() {
            c.budget = None;
            c.account_budgets.clear();
        }
    }
    let settings = s.validate().unwrap();

    // The first usage command to reach the segment blocks it until the gate opens.
    let gate = Arc::new(Gate::default());
    let (entered_tx, entered_rx) = mpsc::channel::<()>();
    let entered_tx = Mutex::new(Some(entered_tx));
    let g = gate.clone();
    // Armed once the server is up, so that loading the sample customers is not held.
    let armed = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let arm = armed.clone();
    let hook: FaultHook<CustomerKey> = Arc::new(move |key, _| {
        if &**key == "acme" && arm.load(std::sync::atomic::Ordering::SeqCst) {
            if let Some(tx) = entered_tx.lock().unwrap().take() {
                tx.send(()).unwrap();
                let mut open = g.open.lock().unwrap();
                while !*open {
                    open = g.cv.wait(open).unwrap();
                }
            }
        }
        false
    });
    let (addr_tx, addr_rx) = mpsc::channel::<String>();
    let (stop_tx, stop_rx) = mpsc::channel::<()>();
    let server = std::thread::spawn(move || {
        actix_rt::System::new().block_on(async move {
            let engine = Engine::start(
                &settings,
                EngineOptions {
                    fault_hook: Some(hook),
                    ..EngineOptions::default()
                },
            )
            .await
            .unwrap();
            let engine = std::sync::Arc::new(engine);
            let cell = tallyman::api::EngineCell::new();
            let _ = cell.set(engine.clone());
            let e = web::Data::new(cell);
            let limits = web::Data::new(settings.limits.clone());
            let auth = web::Data::new(AuthConfig::default());
            let server = HttpServer::new(move || {
                App::new()
                    .app_data(e.clone())
                    .app_data(limits.clone())
                    .app_data(auth.clone())
                    .configure(tallyman::api::routes)
            })
            .workers(2)
            .disable_signals()
            .bind("127.0.0.1:0")
            .unwrap();
            addr_tx.send(server.addrs()[0].to_string()).unwrap();
            let server = server.run();
            let handle = server.handle();
            actix_rt::spawn(server);
            actix_rt::task::spawn_blocking(move || stop_rx.recv())
                .await
                .unwrap()
                .unwrap();
            handle.stop(true).await;
            engine.stop();
        })
    });
    let addr = addr_rx.recv().unwrap();
    armed.store(true, std::sync::atomic::Ordering::SeqCst);
    // A: blocks the segment (it holds the segment's one mailbox place).
    let a_addr = addr.clone();
    let a = std::thread::spawn(move || post(&a_addr, &usage("a")));
    entered_rx.recv().unwrap();
    // B: refused at once, with Retry-After, as problem+json.
    let (status, response) = post(&addr, &usage("b"));
    assert_eq!(status, 429, "{response}");
    assert!(
        response.to_ascii_lowercase().contains("retry-after: 1"),
        "{response}"
    );
    assert!(response.contains("application/problem+json"), "{response}");
    // Open the gate: A completes, and B's retry goes through; B counted once.
    *gate.open.lock().unwrap() = true;
    gate.cv.notify_all();
    let (status, response) = a.join().unwrap();
    assert_eq!(status, 200, "{response}");
    let (status, response) = post(&addr, &usage("b"));
    assert_eq!(status, 200, "{response}");
    assert!(
        response.contains(r#"{"accepted":1,"duplicates":0}"#),
        "{response}"
    );
    stop_tx.send(()).unwrap();
    server.join().unwrap();
}
