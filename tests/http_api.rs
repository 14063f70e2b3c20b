//! The HTTP API end to end: a real `tallyd` on loopback, the full flow with numbers worked
//! out by hand, and every kind of bad request, each answered with problem+json and
//! changing nothing.

mod common;

use common::{Daemon, Response};
use serde_json::{json, Value};

/// One partition with the sample catalog, its open period fixed, no sample customers,
/// and small limits so that the limit tests stay small.
const CONFIG: &str = r#"
[limits]
max_body_bytes = 4096
max_events_per_request = 5
max_customers_per_request = 100

[[partitions]]
id = "aws"
currency = "USD"
catalog = "cloud-usd"
open_period = "2026-11"
"#;

fn daemon(tag: &str) -> Daemon {
    Daemon::start_with(tag, Some(CONFIG))
}

fn event(id: &str, account: &str, meter: &str, quantity: Value) -> Value {
    json!({"id": id, "account": account, "meter": meter, "quantity": quantity, "time": "2026-11-03T10:00:00Z"})
}

fn setup(d: &Daemon) {
    let r = d.post(
        "/v1/partitions/aws/customers",
        r#"{"id": "acme", "payer": "111111111111", "accounts": ["111111111111", "222222222222"], "profile": "standard", "tax_rate": "0.0"}"#,
    );
    assert_eq!(r.status, 201, "{}", r.body);
}

fn ingest(d: &Daemon, events: &[Value]) -> Response {
    d.post(
        "/v1/partitions/aws/usage",
        &serde_json::to_string(events).unwrap(),
    )
}

fn assert_problem(r: &Response, status: u16) -> Value {
    assert_eq!(r.status, status, "{}", r.body);
    assert_eq!(r.content_type, "application/problem+json", "{}", r.headers);
    let p = r.json();
    assert_eq!(p["status"], status);
    assert!(p["type"].as_str().unwrap().starts_with("https://"));
    assert!(!p["title"].as_str().unwrap().is_empty());
    assert!(!p["detail"].as_str().unwrap().is_empty());
    p
}

fn customer_total(d: &Daemon) -> String {
    let (status, body) = d.get("/v1/partitions/aws/customers/acme/bill");
    assert_eq!(status, 200, "{body}");
    let bill: Value = serde_json::from_str(&body).unwrap();
    bill["total"].as_str().unwrap().to_string()
}

#[test]
fn full_flow_with_numbers_worked_out_by_hand() {
    let d = daemon("flow");
    setup(&d);
    // A credit of 10.00 for instance hours only.
    let r = d.post(
        "/v1/partitions/aws/customers/acme/credits",
        r#"{"id": "promo-7", "amount": "10.00", "expires": "2026-12-31", "meters": ["ec2.instance_hours"]}"#,
    );
    assert_eq!(r.status, 201, "{}", r.body);
    // 720 instance hours on the payer: 720 × 0.0416 = 29.952 → 29.95.
    // 4196 GB out on the linked account: the first 100 GB are free, 4096 × 0.09 = 368.64.
    // The first event is sent twice: it counts once.
    let events = [
        event("e1", "111111111111", "ec2.instance_hours", json!(720)),
        event("e2", "222222222222", "data_transfer_out.gb", json!("4196")),
        event("e1", "111111111111", "ec2.instance_hours", json!(720)),
    ];
    let r = ingest(&d, &events);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json(), json!({"accepted": 2, "duplicates": 1}));

    let (status, body) = d.get("/v1/partitions/aws/accounts/222222222222/bill");
    assert_eq!(status, 200, "{body}");
    let account: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(account["customer"], "acme");
    assert_eq!(account["period"], "2026-11");
    assert_eq!(account["currency"], "USD");
    assert_eq!(account["lines"][0]["meter"], "data_transfer_out.gb");
    assert_eq!(account["lines"][0]["quantity"], "4196");
    assert_eq!(account["lines"][0]["amount"], "368.64");
    assert_eq!(account["total"], "368.64");

    // Customer: subtotal 29.95 + 368.64 = 398.59; the credit pays 10.00 of the instance
    // hours (19.95 left); total 388.59; no tax.
    let (status, body) = d.get("/v1/partitions/aws/customers/acme/bill");
    assert_eq!(status, 200, "{body}");
    let bill: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(bill["subtotal"], "398.59");
    assert_eq!(bill["credits"][0]["id"], "promo-7");
    assert_eq!(bill["credits"][0]["amount"], "10.00");
    assert_eq!(bill["credits"][0]["remaining"], "0.00");
    assert_eq!(bill["tax"], "0.00");
    assert_eq!(bill["total"], "388.59");
    assert_eq!(bill["accounts"].as_array().unwrap().len(), 2);
    assert_eq!(bill["lines"][1]["tiers"][0]["kind"], "free");

    // NDJSON works too, and a 10% discount on everything applies to later bills:
    // 29.95 → 3.00 (2.995 half-even), 368.64 → 36.86; discounts 39.86;
    // the credit then pays 10.00 of 26.95; total 398.59 − 39.86 − 10.00 = 348.73.
    let r = d.post(
        "/v1/partitions/aws/customers/acme/discounts",
        r#"{"id": "edp", "percent": "10"}"#,
    );
    assert_eq!(r.status, 201, "{}", r.body);
    let ndjson = format!("{}\n", event("e3", "222222222222", "apigw.calls", json!(1)));
    let r = d.request(
        "POST",
        "/v1/partitions/aws/usage",
        "application/x-ndjson",
        &ndjson,
    );
    assert_eq!(r.json(), json!({"accepted": 1, "duplicates": 0}));
    // One API call at 0.0000035 rounds to 0.00 and changes nothing.
    assert_eq!(customer_total(&d), "348.73");

    let (status, body) = d.get("/v1/partitions");
    assert_eq!(status, 200);
    let partitions: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(partitions[0]["id"], "aws");
    assert_eq!(partitions[0]["currency"], "USD");
    assert_eq!(partitions[0]["customers"], 1);
    assert_eq!(partitions[0]["accounts"], 2);
}

#[test]
fn catalog_versions_are_published_and_read_back() {
    let d = daemon("catalog");
    let (status, body) = d.get("/v1/partitions/aws/catalog?at=2026-11-15");
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["effective_from"], "2026-11-01");
    assert_eq!(v["meters"][0]["price"]["unit_price"], "0.0416");
    let new = json!({"effective_from": "2027-01-01", "meters": [
        {"name": "ec2.instance_hours", "aggregation": "sum", "price": {"model": "per_unit", "unit_price": "0.0390"}}]});
    let r = d.request(
        "PUT",
        "/v1/partitions/aws/catalog",
        "application/json",
        &new.to_string(),
    );
    assert_eq!(r.status, 201, "{}", r.body);
    let (_, body) = d.get("/v1/partitions/aws/catalog?at=2027-01-02");
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap()["meters"][0]["price"]["unit_price"],
        "0.0390"
    );
    // Versions are only appended: an earlier date is refused, naming the field.
    let r = d.request(
        "PUT",
        "/v1/partitions/aws/catalog",
        "application/json",
        &new.to_string(),
    );
    let p = assert_problem(&r, 400);
    assert!(p["detail"].as_str().unwrap().starts_with("effective_from"), "{p}");
}

#[test]
fn every_bad_request_gets_a_problem_and_changes_nothing() {
    let d = daemon("errors");
    setup(&d);
    let good = event("g1", "111111111111", "ec2.instance_hours", json!(1));
    assert_eq!(ingest(&d, std::slice::from_ref(&good)).status, 200);
    let before = customer_total(&d);

    // Malformed JSON.
    let r = d.post("/v1/partitions/aws/usage", r#"[{"id": "x", "account": "#);
    let p = assert_problem(&r, 400);
    assert!(p["type"].as_str().unwrap().ends_with("malformed-json"));

    // Unknown account, unknown meter, and a missing field, all in one batch with a good
    // event: each error names its index and field, and nothing of the batch applies.
    let mut missing = event("m1", "111111111111", "ec2.instance_hours", json!(1));
    missing.as_object_mut().unwrap().remove("meter");
    let r = ingest(
        &d,
        &[
            event("n1", "111111111111", "ec2.instance_hours", json!(5)),
            event("u1", "999999999999", "ec2.instance_hours", json!(1)),
            event("u2", "111111111111", "ec2.nope", json!(1)),
            missing,
        ],
    );
    let p = assert_problem(&r, 400);
    let errors: Vec<(u64, &str)> = p["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["index"].as_u64().unwrap(), e["field"].as_str().unwrap()))
        .collect();
    assert_eq!(
        errors,
        [(3, "meter")],
        "syntax problems are reported before lookups"
    );
    let r = ingest(
        &d,
        &[
            event("n1", "111111111111", "ec2.instance_hours", json!(5)),
            event("u1", "999999999999", "ec2.instance_hours", json!(1)),
            event("u2", "111111111111", "ec2.nope", json!(1)),
        ],
    );
    let p = assert_problem(&r, 400);
    assert_eq!(p["errors"][0]["index"], 1);
    assert_eq!(p["errors"][0]["field"], "account");
    assert_eq!(p["errors"][1]["index"], 2);
    assert_eq!(p["errors"][1]["field"], "meter");
    assert_eq!(customer_total(&d), before, "a rejected batch changes nothing");

    // Negative, non-finite and non-numeric quantities, and a bad timestamp.
    for (quantity, needle) in [
        (json!(-1), "negative"),
        (json!("NaN"), "finite"),
        (json!("ten"), "not a decimal number"),
        (json!(true), "boolean"),
    ] {
        let r = ingest(&d, &[event("q", "111111111111", "ec2.instance_hours", quantity)]);
        let p = assert_problem(&r, 400);
        assert_eq!(p["errors"][0]["field"], "quantity");
        assert!(
            p["errors"][0]["message"].as_str().unwrap().contains(needle),
            "{p}"
        );
    }
    let mut bad_time = good.clone();
    bad_time["time"] = json!("03/11/2026 10:00");
    let p = assert_problem(&ingest(&d, &[bad_time]), 400);
    assert_eq!(p["errors"][0]["field"], "time");

    // Unknown partition.
    let r = d.post("/v1/partitions/nope/usage", "[]");
    assert_problem(&r, 404);

    // Too many events in one request (the limit here is 5).
    let six: Vec<Value> = (0..6)
        .map(|i| event(&format!("t{i}"), "111111111111", "ec2.instance_hours", json!(1)))
        .collect();
    let p = assert_problem(&ingest(&d, &six), 413);
    assert!(p["detail"].as_str().unwrap().contains("at most 5"));

    // An oversized body (the limit here is 4096 bytes).
    let big = format!("[{}]", "1,".repeat(3000) + "1");
    let p = assert_problem(&d.post("/v1/partitions/aws/usage", &big), 413);
    assert!(p["detail"].as_str().unwrap().contains("4096 bytes"));

    // Unknown customer and account in reads; unknown routes.
    assert_problem(
        &d.request(
            "GET",
            "/v1/partitions/aws/customers/nobody/bill",
            "application/json",
            "",
        ),
        404,
    );
    assert_problem(
        &d.request(
            "GET",
            "/v1/partitions/aws/accounts/000/bill",
            "application/json",
            "",
        ),
        404,
    );
    assert_problem(&d.request("GET", "/v1/nothing-here", "application/json", ""), 404);

    // An empty body is not an empty batch: it is refused, with no per-item `errors`.
    for path in ["/v1/partitions/aws/usage", "/v1/partitions/aws/customers/bulk"] {
        let p = assert_problem(&d.request("POST", path, "application/x-ndjson", " \n"), 400);
        assert_eq!(p["type"], "https://tallyman.dev/problems/empty-body", "{p}");
        assert!(p.get("errors").is_none(), "{p}");
    }

    // A path answers a method it does not have with 405 and the methods it has.
    let r = d.request("DELETE", "/v1/partitions", "application/json", "");
    assert_problem(&r, 405);
    assert!(
        r.headers.to_ascii_lowercase().contains("allow: get, post"),
        "{}",
        r.headers
    );
    let r = d.request(
        "PUT",
        "/v1/partitions/aws/customers/acme/bill",
        "application/json",
        "",
    );
    assert_problem(&r, 405);
    assert!(
        r.headers.to_ascii_lowercase().contains("allow: get\r\n"),
        "{}",
        r.headers
    );

    assert_eq!(customer_total(&d), before, "no rejected request changed anything");
}

#[test]
fn bulk_customers_all_or_nothing() {
    let d = daemon("bulk");
    let ok =
        "{\"id\": \"c1\", \"payer\": \"a1\"}\n{\"id\": \"c2\", \"payer\": \"a2\", \"accounts\": [\"a3\"]}\n";
    let r = d.request(
        "POST",
        "/v1/partitions/aws/customers/bulk",
        "application/x-ndjson",
        ok,
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json(), json!({"created": 2}));
    // The second line claims an account of c1, the third has a bad tax rate: nothing is
    // created and both are reported.
    let bad = "{\"id\": \"c3\", \"payer\": \"a4\"}\n{\"id\": \"c4\", \"payer\": \"a5\", \"tax_rate\": \"7\"}\n{\"id\": \"c5\", \"payre\": \"a6\"}\n";
    let r = d.request(
        "POST",
        "/v1/partitions/aws/customers/bulk",
        "application/x-ndjson",
        bad,
    );
    let p = assert_problem(&r, 400);
    let fields: Vec<&str> = p["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["field"].as_str().unwrap())
        .collect();
    assert_eq!(fields, ["tax_rate", "payre"]);
    let (_, body) = d.get("/v1/partitions/aws/customers");
    let list: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        list.as_array().unwrap().len(),
        2,
        "nothing of the bad batch was created"
    );
    // A JSON array on one line is accepted too.
    let r = d.post(
        "/v1/partitions/aws/customers/bulk",
        r#"[{"id": "c6", "payer": "a6"}, {"id": "c7", "payer": "a7"}]"#,
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json(), json!({"created": 2}));
    // An account that belongs to another customer is a conflict.
    let r = d.post("/v1/partitions/aws/customers", r#"{"id": "c9", "payer": "a1"}"#);
    assert_problem(&r, 409);
    let (status, body) = d.get("/v1/partitions/aws/customers/c2");
    assert_eq!(status, 200);
    let c: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(c["accounts"], json!(["a2", "a3"]));
    assert_eq!(c["profile"], "standard");
}

#[test]
fn moving_an_account_re_rates_both_customers() {
    let d = daemon("move");
    for body in [
        r#"{"id": "c1", "payer": "a1", "accounts": ["a2"]}"#,
        r#"{"id": "c2", "payer": "b1"}"#,
    ] {
        assert_eq!(d.post("/v1/partitions/aws/customers", body).status, 201);
    }
    let r = ingest(
        &d,
        &[
            event("m1", "a2", "data_transfer_out.gb", json!("4196")),
            event("m2", "b1", "data_transfer_out.gb", json!("10000")),
        ],
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let total = |c: &str| {
        let (_, body) = d.get(&format!("/v1/partitions/aws/customers/{c}/bill"));
        serde_json::from_str::<Value>(&body).unwrap()["total"]
            .as_str()
            .unwrap()
            .to_string()
    };
    // Before: c1 (4196 − 100 free) × 0.09 = 368.64; c2 (10000 − 100) × 0.09 = 891.00.
    assert_eq!((total("c1"), total("c2")), ("368.64".into(), "891.00".into()));
    let r = d.request(
        "PUT",
        "/v1/partitions/aws/customers/c2/accounts/a2",
        "application/json",
        "",
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["from"], "c1");
    // After: c1 has no usage left; c2 pools 14196 GB from the start of the period:
    // 100 free, 10240 × 0.09 = 921.60, 3856 × 0.085 = 327.76; total 1249.36.
    assert_eq!((total("c1"), total("c2")), ("0.00".into(), "1249.36".into()));
    // New usage of the moved account goes to its new customer, and a retry of an event it
    // sent before the move is still a duplicate: 3856 + 100 more GB at 0.085 = 8.50 more.
    let r = ingest(
        &d,
        &[
            event("m3", "a2", "data_transfer_out.gb", json!("100")),
            event("m1", "a2", "data_transfer_out.gb", json!("4196")),
        ],
    );
    assert_eq!(r.json(), json!({"accepted": 1, "duplicates": 1}));
    assert_eq!(total("c2"), "1257.86");
    // The payer cannot leave its customer; an account nobody has is simply added.
    let r = d.request(
        "PUT",
        "/v1/partitions/aws/customers/c2/accounts/a1",
        "application/json",
        "",
    );
    assert_problem(&r, 409);
    let r = d.request(
        "PUT",
        "/v1/partitions/aws/customers/c1/accounts/z9",
        "application/json",
        "",
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["from"], Value::Null);
    let (_, body) = d.get("/v1/partitions/aws/customers/c1");
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap()["accounts"],
        json!(["a1", "z9"])
    );
}

#[test]
fn openapi_lists_every_route_and_every_route_answers() {
    let d = daemon("openapi");
    let (status, body) = d.get("/v1/openapi.json");
    assert_eq!(status, 200);
    let doc: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(doc["openapi"], "3.1.0");
    let paths = doc["paths"].as_object().unwrap();
    // The routes of API.md that are built so far.
    for (path, method) in [
        ("/v1/partitions", "get"),
        ("/v1/partitions/{p}/catalog", "put"),
        ("/v1/partitions/{p}/catalog", "get"),
        ("/v1/partitions/{p}/customers", "post"),
        ("/v1/partitions/{p}/customers/bulk", "post"),
        ("/v1/partitions/{p}/customers/{c}", "get"),
        ("/v1/partitions/{p}/customers/{c}/accounts/{a}", "put"),
        ("/v1/partitions/{p}/customers/{c}/credits", "post"),
        ("/v1/partitions/{p}/customers/{c}/discounts", "post"),
        ("/v1/partitions/{p}/usage", "post"),
        ("/v1/partitions/{p}/accounts/{a}/bill", "get"),
        ("/v1/partitions/{p}/customers/{c}/bill", "get"),
        ("/health", "get"),
        ("/ready", "get"),
        ("/metrics", "get"),
        ("/v1/admin/segments", "get"),
        ("/v1/admin/dead-letters", "get"),
        ("/v1/admin/rebalance", "post"),
        ("/v1/admin/snapshot", "post"),
        ("/v1/partitions/{p}/bill-runs", "post"),
        ("/v1/partitions/{p}/bill-runs/{id}", "get"),
        ("/v1/partitions/{p}/invoices", "get"),
        ("/v1/partitions/{p}/invoices/{number}", "get"),
        ("/v1/partitions/{p}/alerts", "get"),
        ("/v1/partitions/{p}/alerts/stream", "get"),
    ] {
        assert!(
            paths.get(path).and_then(|p| p.get(method)).is_some(),
            "{method} {path} is not documented"
        );
    }
    // Every documented operation is routed: none answers "no route".
    for (path, item) in paths {
        for method in item.as_object().unwrap().keys() {
            let concrete = path
                .replace("{p}", "aws")
                .replace("{partition}", "aws")
                .replace("{id}", "1");
            let concrete = concrete
                .replace("{c}", "nobody")
                .replace("{a}", "000")
                .replace("{number}", "aws-2026-11-000001");
            if path.ends_with("/stream") {
                // A stream never ends: its head is enough.
                let head = d.head_of(&concrete);
                assert!(head.starts_with("HTTP/1.1 200"), "{method} {path}: {head}");
                continue;
            }
            let r = d.request(&method.to_uppercase(), &concrete, "application/json", "{}");
            assert!(!r.body.contains("no route for"), "{method} {path}: {}", r.body);
            assert_ne!(r.status, 405, "{method} {path}: {}", r.body);
        }
    }
    // A problem has `errors` only when items were refused; the dead-letter id is a number.
    let problem = &doc["components"]["schemas"]["Problem"];
    assert_eq!(problem["required"], json!(["type", "title", "status", "detail"]));
    let replay = &paths["/v1/admin/dead-letters/{partition}/{id}/replay"]["post"]["parameters"];
    assert_eq!(replay[1]["schema"]["type"], "integer", "{replay}");
    // Bodies are described by their types: a usage event's quantity takes numbers and strings.
    let quantity = &doc["components"]["schemas"]["UsageEvent"]["properties"]["quantity"];
    assert_eq!(quantity["type"], json!(["string", "number"]));
}

#[test]
fn latency_per_stage_is_served_and_rendered_by_tallyd_report() {
    let d = daemon("latency");
    setup(&d);
    let r = ingest(&d, &[event("l1", "111111111111", "ec2.instance_hours", json!(3))]);
    assert_eq!(r.status, 200, "{}", r.body);
    customer_total(&d);
    let (status, body) = d.get("/v1/stats/latency");
    assert_eq!(status, 200, "{body}");
    let report: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(report["unit"], "microseconds");
    let stages = report["stages"].as_array().unwrap();
    let stage = |name: &str| {
        stages
            .iter()
            .find(|s| s["stage"] == name)
            .unwrap_or_else(|| panic!("no stage {name}: {body}"))
    };
    // One request each went through parsing, the journal (appended, synced) and a segment,
    // and one running bill was queried; no bill run happened.
    for name in ["parse", "journal_append", "fsync", "apply", "query"] {
        let s = stage(name);
        assert!(s["count"].as_u64().unwrap() >= 1, "{name}: {s}");
        assert!(s["p50"].as_f64().unwrap() > 0.0, "{name}: {s}");
        assert!(
            s["max"].as_f64().unwrap() >= s["p50"].as_f64().unwrap(),
            "{name}: {s}"
        );
    }
    assert_eq!(stage("bill_run_customer")["count"], 0);
    let histogram = stage("fsync")["histogram"].as_str().unwrap();
    let h = tallyman::engine::stats::decode_histogram(histogram).unwrap();
    assert_eq!(h.len(), stage("fsync")["count"].as_u64().unwrap());

    // `tallyd report` renders the same numbers as a table and files.
    let out = std::env::temp_dir().join(format!("tallyd-report-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out);
    let run = std::process::Command::new(env!("CARGO_BIN_EXE_tallyd"))
        .args(["report", "--url", &format!("http://{}", d.addr), "--out"])
        .arg(&out)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(
        run.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&run.stderr)
    );
    assert!(stdout.lines().any(|l| l.starts_with("fsync ")), "{stdout}");
    for file in [
        "latency.json",
        "latency.txt",
        "latency.svg",
        "fsync.hgrm",
        "query.hgrm",
    ] {
        let bytes = std::fs::read(out.join(file)).unwrap_or_else(|e| panic!("{file}: {e}"));
        assert!(!bytes.is_empty(), "{file}");
    }
    let hgrm = std::fs::read_to_string(out.join("fsync.hgrm")).unwrap();
    assert!(hgrm.contains("#[Max     ="), "{hgrm}");
    let _ = std::fs::remove_dir_all(&out);
}

#[test]
fn an_account_past_its_event_limit_is_refused_by_name_even_after_a_restart() {
    let config = r#"
[limits]
max_events_per_account = 2

[[partitions]]
id = "aws"
currency = "USD"
catalog = "cloud-usd"
open_period = "2026-11"
"#;
    let dir = common::TempDir::new("event-limit");
    let d = Daemon::start_at(&dir.0, Some(config));
    setup(&d);
    let hours = |id: &str| event(id, "111111111111", "ec2.instance_hours", json!(10));
    assert_eq!(ingest(&d, &[hours("a"), hours("b")]).status, 200);
    let before = customer_total(&d);
    // A third distinct event of the same account is past the limit of 2: refused, named
    // by its index, with nothing of it applied.
    let r = ingest(&d, &[hours("c")]);
    let p = assert_problem(&r, 422);
    let errors = p["errors"].as_array().unwrap();
    assert_eq!((errors.len(), errors[0]["index"].clone()), (1, json!(0)), "{p}");
    assert!(
        errors[0]["message"]
            .as_str()
            .unwrap()
            .contains("limits.max_events_per_account"),
        "{p}"
    );
    assert_eq!(customer_total(&d), before, "nothing of it applied");
    // A resent event is still a duplicate; another account has its own limit, and in a
    // batch with a refused event the others apply and are counted.
    let r = ingest(&d, &[hours("a")]);
    assert_eq!(
        (r.status, r.json()["duplicates"].clone()),
        (200, json!(1)),
        "{}",
        r.body
    );
    let other = event("c", "222222222222", "ec2.instance_hours", json!(1));
    let r = ingest(&d, &[other, hours("e")]);
    let p = assert_problem(&r, 422);
    assert_eq!(
        (p["accepted"].clone(), p["duplicates"].clone()),
        (json!(1), json!(0)),
        "{p}"
    );
    assert_eq!(p["errors"][0]["index"], 1, "{p}");
    assert_ne!(customer_total(&d), before, "the other account's event applied");
    let after = customer_total(&d);
    d.stop();
    // The journal replays the same decisions.
    let d = Daemon::start_at(&dir.0, Some(config));
    assert_eq!(customer_total(&d), after);
    assert_eq!(ingest(&d, &[hours("d")]).status, 422);
    d.stop();
}
