//! Bill runs end to end over HTTP: closing a period writes numbered invoices whose
//! numbers are worked out by hand; the run is idempotent; usage of the closed period is
//! refused while the next period streams in; credits carry their balance over; and all
//! of it survives a restart. (A crash in the middle of a run is in tests/crash.rs.)

mod common;

use common::{Daemon, TempDir};
use serde_json::{json, Value};

const CONFIG: &str = r#"
[[partitions]]
id = "aws"
currency = "USD"
catalog = "cloud-usd"
open_period = "2026-11"
"#;

fn post(d: &Daemon, path: &str, body: Value) -> Value {
    let r = d.post(path, &body.to_string());
    assert!(
        r.status == 200 || r.status == 201 || r.status == 202,
        "{path}: {}",
        r.body
    );
    r.json()
}

fn get(d: &Daemon, path: &str) -> Value {
    let (status, body) = d.get(path);
    assert_eq!(status, 200, "{path}: {body}");
    serde_json::from_str(&body).unwrap()
}

fn usage(id: &str, account: &str, meter: &str, quantity: &str, time: &str) -> Value {
    json!({"id": id, "account": account, "meter": meter, "quantity": quantity, "time": time})
}

#[test]
fn a_bill_run_closes_the_period_with_invoices_worked_out_by_hand() {
    let dir = TempDir::new("bill-run-flow");
    // Past November's grace window for late usage (3 days).
    let now = [("TALLYD_TEST_NOW", "2026-12-10T00:00:00Z")];
    let d = Daemon::start_at_with_env(&dir.0, Some(CONFIG), &now);
    let customers = "/v1/partitions/aws/customers";
    post(
        &d,
        customers,
        json!({"id": "acme", "payer": "111111111111", "accounts": ["111111111111", "222222222222"],
               "credits": [{"id": "promo-7", "amount": "50.00", "expires": "2027-06-30", "meters": ["ec2.instance_hours"]}]}),
    );
    post(
        &d,
        customers,
        json!({"id": "bigco", "payer": "333333333333", "profile": "enterprise"}),
    );
    post(&d, customers, json!({"id": "idle", "payer": "444444444444"}));
    post(&d, customers, json!({"id": "newco", "payer": "555555555555"}));
    let r = post(
        &d,
        "/v1/partitions/aws/usage",
        json!([
            usage(
                "e1",
                "111111111111",
                "ec2.instance_hours",
                "720",
                "2026-11-03T10:00:00Z"
            ),
            usage(
                "e2",
                "222222222222",
                "data_transfer_out.gb",
                "4196",
                "2026-11-04T10:00:00Z"
            ),
        ]),
    );
    assert_eq!(r, json!({"accepted": 2, "duplicates": 0}));
    // Account 222222222222 moves to newco mid-period, with its usage.
    let r = d.request(
        "PUT",
        "/v1/partitions/aws/customers/newco/accounts/222222222222",
        "application/json",
        "",
    );
    assert_eq!(r.status, 200, "{}", r.body);

    let run = post(&d, "/v1/partitions/aws/bill-runs", json!({"period": "2026-11"}));
    assert_eq!(run["id"], "aws-2026-11");
    assert_eq!(run["customers_total"], 4, "{run}");
    let run = d.wait_for_bill_run("aws-2026-11");
    // acme: 720 h × 0.0416 = 29.952 → 29.95; the credit (instance hours only) pays all
    //       of it and keeps 50.00 − 29.95 = 20.05; total 0.00 — still an invoice: usage.
    // bigco: no usage; the enterprise minimum commitment 1000.00 is charged in full.
    // idle: no usage and nothing its profile charges: no invoice.
    // newco: 4196 GB out, the first 100 free: 4096 × 0.09 = 368.64.
    assert_eq!(run["invoices"], 3, "{run}");
    assert_eq!(run["customers_total"], 4);
    assert_eq!(run["customers_done"], 4);
    assert_eq!(run["total_billed"], "1368.64");
    assert!(run["compute_us"]["p99"].as_f64().unwrap() > 0.0, "{run}");

    let (status, ndjson) = d.get("/v1/partitions/aws/invoices?period=2026-11");
    assert_eq!(status, 200);
    let invoices: Vec<Value> = ndjson.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let numbers: Vec<&str> = invoices.iter().map(|i| i["number"].as_str().unwrap()).collect();
    assert_eq!(
        numbers,
        ["aws-2026-11-000001", "aws-2026-11-000002", "aws-2026-11-000003"]
    );
    let of = |c: &str| invoices.iter().find(|i| i["customer"] == c).unwrap().clone();
    let acme = of("acme");
    assert_eq!(acme["lines"][0]["amount"], "29.95");
    assert_eq!(
        acme["credits"][0],
        json!({"id": "promo-7", "amount": "29.95", "remaining": "20.05"})
    );
    assert_eq!(acme["total"], "0.00");
    assert_eq!(acme["period"], "2026-11");
    assert_eq!(acme["currency"], "USD");
    let bigco = of("bigco");
    assert_eq!(bigco["commitment"]["amount"], "1000.00");
    assert_eq!(bigco["total"], "1000.00");
    let newco = of("newco");
    assert_eq!(newco["accounts"][0]["account"], "222222222222");
    assert_eq!(newco["total"], "368.64");
    assert!(invoices.iter().all(|i| i["customer"] != "idle"));
    // One by number, and by customer.
    let number = acme["number"].as_str().unwrap();
    assert_eq!(get(&d, &format!("/v1/partitions/aws/invoices/{number}")), acme);
    let (_, by_customer) = d.get("/v1/partitions/aws/invoices?customer=acme");
    assert_eq!(serde_json::from_str::<Value>(by_customer.trim()).unwrap(), acme);
    let (status, _) = d.get("/v1/partitions/aws/invoices/aws-2026-11-000004");
    assert_eq!(status, 404);

    // The period is closed: late usage is refused, naming it; December is open.
    let r = d.post(
        "/v1/partitions/aws/usage",
        &json!([usage(
            "late",
            "111111111111",
            "ec2.instance_hours",
            "1",
            "2026-11-30T23:00:00Z"
        )])
        .to_string(),
    );
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(
        r.body.contains("falls in period 2026-11, which is closed"),
        "{}",
        r.body
    );
    let r = post(
        &d,
        "/v1/partitions/aws/usage",
        json!([usage(
            "d1",
            "111111111111",
            "ec2.instance_hours",
            "100",
            "2026-12-02T00:00:00Z"
        )]),
    );
    assert_eq!(r["accepted"], 1);
    // December: 100 h × 0.0400 (December's price) = 4.00, paid by the credit's 20.05.
    let bill = get(&d, "/v1/partitions/aws/customers/acme/bill");
    assert_eq!(bill["period"], "2026-12");
    assert_eq!(bill["subtotal"], "4.00");
    assert_eq!(
        bill["credits"][0],
        json!({"id": "promo-7", "amount": "4.00", "remaining": "16.05"})
    );
    assert_eq!(bill["total"], "0.00");
    // Posting the customer's terms again keeps the credit's balance: it is a grant.
    post(
        &d,
        customers,
        json!({"id": "acme", "payer": "111111111111", "accounts": ["111111111111"],
               "credits": [{"id": "promo-7", "amount": "50.00", "expires": "2027-06-30", "meters": ["ec2.instance_hours"]}]}),
    );
    let bill = get(&d, "/v1/partitions/aws/customers/acme/bill");
    assert_eq!(bill["credits"][0]["remaining"], "16.05", "{bill}");
    // Nothing of January yet, and no run for a period that is not open.
    let r = d.post(
        "/v1/partitions/aws/usage",
        &json!([usage(
            "j1",
            "111111111111",
            "ec2.instance_hours",
            "1",
            "2027-01-02T00:00:00Z"
        )])
        .to_string(),
    );
    assert!(r.body.contains("which is not open yet"), "{}", r.body);
    let r = d.post("/v1/partitions/aws/bill-runs", r#"{"period": "2026-10"}"#);
    assert_eq!(r.status, 409, "{}", r.body);

    // Again: the same run, the same invoices.
    let again = post(&d, "/v1/partitions/aws/bill-runs", json!({"period": "2026-11"}));
    assert_eq!(again["state"], "done");
    assert_eq!(again["invoices"], 3);
    assert_eq!(d.get("/v1/partitions/aws/invoices?period=2026-11").1, ndjson);

    // All of it survives a restart, even one after a crash between the run's summary
    // and the period state (which then still says November is closing).
    d.stop();
    std::fs::write(
        dir.0.join("data/aws/periods.json"),
        r#"{"open": "2026-12", "closing": "2026-11"}"#,
    )
    .unwrap();
    let d = Daemon::start_at_with_env(&dir.0, Some(CONFIG), &now);
    let run = get(&d, "/v1/partitions/aws/bill-runs/aws-2026-11");
    assert_eq!(
        (run["state"].as_str(), run["invoices"].as_u64()),
        (Some("done"), Some(3))
    );
    assert_eq!(run["total_billed"], "1368.64");
    assert_eq!(d.get("/v1/partitions/aws/invoices?period=2026-11").1, ndjson);
    let partitions = get(&d, "/v1/partitions");
    assert_eq!(partitions[0]["open_period"], "2026-12");
    let bill = get(&d, "/v1/partitions/aws/customers/acme/bill");
    assert_eq!(
        (bill["period"].as_str(), bill["total"].as_str()),
        (Some("2026-12"), Some("0.00"))
    );
    assert_eq!(bill["credits"][0]["remaining"], "16.05");
    // December can be closed: nothing is left "closing". acme (4.00, paid by its
    // credit) and bigco (its 1000.00 commitment) get invoices.
    post(&d, "/v1/partitions/aws/bill-runs", json!({"period": "2026-12"}));
    let run = d.wait_for_bill_run("aws-2026-12");
    assert_eq!(
        (run["invoices"].as_u64(), run["total_billed"].as_str()),
        (Some(2), Some("1000.00")),
        "{run}"
    );
}

#[test]
fn a_period_closed_without_invoices_is_still_closed_after_a_restart() {
    let dir = TempDir::new("no-invoices");
    let d = Daemon::start_at(&dir.0, Some(CONFIG));
    post(
        &d,
        "/v1/partitions/aws/customers",
        json!({"id": "idle", "payer": "444444444444"}),
    );
    post(&d, "/v1/partitions/aws/bill-runs", json!({"period": "2026-11"}));
    assert_eq!(d.wait_for_bill_run("aws-2026-11")["invoices"], 0);
    d.stop();
    let d = Daemon::start_at(&dir.0, Some(CONFIG));
    let run = get(&d, "/v1/partitions/aws/bill-runs/aws-2026-11");
    assert_eq!(
        (run["state"].as_str(), run["invoices"].as_u64()),
        (Some("done"), Some(0))
    );
    assert_eq!(get(&d, "/v1/partitions")[0]["open_period"], "2026-12");
}

#[test]
fn late_usage_within_the_grace_window_is_an_adjustment_on_the_next_invoice() {
    let dir = TempDir::new("late-usage");
    // Grace: 3 days after November, so until 2026-12-04; it is 2 December.
    let d = Daemon::start_at_with_env(
        &dir.0,
        Some(CONFIG),
        &[("TALLYD_TEST_NOW", "2026-12-02T12:00:00Z")],
    );
    post(
        &d,
        "/v1/partitions/aws/customers",
        json!({"id": "acme", "payer": "111111111111", "accounts": ["111111111111", "222222222222"]}),
    );
    let on_time = usage(
        "e2",
        "222222222222",
        "data_transfer_out.gb",
        "4196",
        "2026-11-04T10:00:00Z",
    );
    post(&d, "/v1/partitions/aws/usage", json!([on_time]));
    post(&d, "/v1/partitions/aws/bill-runs", json!({"period": "2026-11"}));
    // November: 4196 GB, the first 100 free: 4096 × 0.09 = 368.64.
    let run = d.wait_for_bill_run("aws-2026-11");
    assert_eq!(run["total_billed"], "368.64");

    // 1000 GB of November arrive late. Re-rated, 5196 GB: 5096 × 0.09 = 458.64, so the
    // adjustment is 458.64 − 368.64 = 90.00. The on-time event sent again is a
    // duplicate, late or not; so is the late one sent twice.
    let late = usage(
        "late-1",
        "222222222222",
        "data_transfer_out.gb",
        "1000",
        "2026-11-30T23:00:00Z",
    );
    let r = post(&d, "/v1/partitions/aws/usage", json!([late, on_time, late]));
    assert_eq!(r, json!({"accepted": 1, "duplicates": 2}));
    // December: 100 h × 0.0400 = 4.00, plus the adjustment: 94.00.
    post(
        &d,
        "/v1/partitions/aws/usage",
        json!([usage(
            "d1",
            "111111111111",
            "ec2.instance_hours",
            "100",
            "2026-12-02T00:00:00Z"
        )]),
    );
    let bill = get(&d, "/v1/partitions/aws/customers/acme/bill");
    assert_eq!(
        bill["adjustments"],
        json!([{"period": "2026-11", "meter": "data_transfer_out.gb", "quantity": "1000",
                "invoiced": "368.64", "rerated": "458.64", "amount": "90.00"}])
    );
    assert_eq!(
        (bill["subtotal"].as_str(), bill["total"].as_str()),
        (Some("94.00"), Some("94.00"))
    );
    // The November invoice never changes.
    let (_, november) = d.get("/v1/partitions/aws/invoices?period=2026-11");
    assert!(!november.contains("late-1") && november.contains("368.64"));

    // December's invoice carries it, and then it is done: no more late November usage.
    post(&d, "/v1/partitions/aws/bill-runs", json!({"period": "2026-12"}));
    let run = d.wait_for_bill_run("aws-2026-12");
    assert_eq!(run["total_billed"], "94.00");
    let (_, december) = d.get("/v1/partitions/aws/invoices?period=2026-12");
    let invoice: Value = serde_json::from_str(december.trim()).unwrap();
    assert_eq!(invoice["adjustments"][0]["amount"], "90.00");
    assert_eq!(invoice["total"], "94.00");
    let r = d.post(
        "/v1/partitions/aws/usage",
        &json!([usage(
            "late-2",
            "222222222222",
            "data_transfer_out.gb",
            "1",
            "2026-11-30T23:00:00Z"
        )])
        .to_string(),
    );
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(
        r.body.contains("late usage is accepted for 2026-12 only"),
        "{}",
        r.body
    );
}

#[test]
fn late_usage_after_the_grace_window_is_refused_naming_the_period() {
    let dir = TempDir::new("late-refused");
    let d = Daemon::start_at_with_env(
        &dir.0,
        Some(CONFIG),
        &[("TALLYD_TEST_NOW", "2026-12-10T00:00:00Z")],
    );
    post(
        &d,
        "/v1/partitions/aws/customers",
        json!({"id": "acme", "payer": "111111111111"}),
    );
    post(
        &d,
        "/v1/partitions/aws/usage",
        json!([usage(
            "e1",
            "111111111111",
            "ec2.instance_hours",
            "1",
            "2026-11-04T10:00:00Z"
        )]),
    );
    post(&d, "/v1/partitions/aws/bill-runs", json!({"period": "2026-11"}));
    d.wait_for_bill_run("aws-2026-11");
    let r = d.post(
        "/v1/partitions/aws/usage",
        &json!([usage(
            "late",
            "111111111111",
            "ec2.instance_hours",
            "1",
            "2026-11-30T23:00:00Z"
        )])
        .to_string(),
    );
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(
        r.body.contains("falls in period 2026-11, which is closed; its late usage was accepted until 2026-12-04 (late_grace_days = 3)"),
        "{}",
        r.body
    );
    // Nothing changed.
    let bill = get(&d, "/v1/partitions/aws/customers/acme/bill");
    assert_eq!(bill["total"], "0.00");
}

#[test]
fn a_new_client_partition_is_onboarded_through_the_api_without_a_restart() {
    let dir = TempDir::new("onboarding");
    let d = Daemon::start_at(&dir.0, Some(CONFIG));
    post(
        &d,
        "/v1/partitions/aws/customers",
        json!({"id": "acme", "payer": "111111111111"}),
    );
    let eu = json!({
        "id": "eu", "currency": "EUR", "open_period": "2026-11",
        "catalog": [{"effective_from": "2026-11-01", "meters": [
            {"name": "vm.hours", "aggregation": "sum", "unit": "hours",
             "price": {"model": "per_unit", "unit_price": "0.05"}}]}]
    });
    let created = post(&d, "/v1/partitions", eu.clone());
    assert_eq!(created["id"], "eu");
    assert_eq!(created["currency"], "EUR");
    assert_eq!(created["open_period"], "2026-11");
    // Bad specs are refused, naming the field; a second "eu" is a conflict.
    assert_eq!(d.post("/v1/partitions", &eu.to_string()).status, 409);
    let mut bad = eu.clone();
    bad["id"] = json!("../etc");
    let r = d.post("/v1/partitions", &bad.to_string());
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(r.body.contains("id"), "{}", r.body);
    bad["id"] = json!("eu2");
    bad["currency"] = json!("EUX");
    let r = d.post("/v1/partitions", &bad.to_string());
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(r.body.contains("currency"), "{}", r.body);

    // It works at once, in its own currency; the partition that ran before still does.
    post(
        &d,
        "/v1/partitions/eu/customers",
        json!({"id": "bmw", "payer": "de-1"}),
    );
    let r = post(
        &d,
        "/v1/partitions/eu/usage",
        json!([usage("v1", "de-1", "vm.hours", "100", "2026-11-05T08:00:00Z")]),
    );
    assert_eq!(r["accepted"], 1);
    // 100 h × 0.05 = 5.00 EUR.
    let bill = get(&d, "/v1/partitions/eu/customers/bmw/bill");
    assert_eq!(
        (bill["currency"].as_str(), bill["total"].as_str()),
        (Some("EUR"), Some("5.00"))
    );
    let r = post(
        &d,
        "/v1/partitions/aws/usage",
        json!([usage(
            "a1",
            "111111111111",
            "ec2.instance_hours",
            "10",
            "2026-11-05T08:00:00Z"
        )]),
    );
    assert_eq!(r["accepted"], 1);

    // It is there after a restart, with its customers and usage.
    d.stop();
    let d = Daemon::start_at(&dir.0, Some(CONFIG));
    let bill = get(&d, "/v1/partitions/eu/customers/bmw/bill");
    assert_eq!(bill["total"], "5.00");
    let ids: Vec<String> = get(&d, "/v1/partitions")
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(ids, ["aws", "eu"]);
}

/// A partition whose months are Tokyo's (UTC+9, no daylight saving), open in December
/// 2026: its year ends nine hours before UTC's.
const TOKYO: &str = r#"
[[partitions]]
id = "apac"
currency = "USD"
catalog = "cloud-usd"
time_zone = "Asia/Tokyo"
open_period = "2026-12"
"#;

#[test]
fn a_year_end_bill_run_in_a_time_zone_ahead_of_utc() {
    let dir = TempDir::new("year-end");
    // 2 January 2027, 12:00 in Tokyo: December has ended there and its late usage is
    // accepted until the end of 4 January (late_grace_days = 3).
    let now = [("TALLYD_TEST_NOW", "2027-01-02T03:00:00Z")];
    let d = Daemon::start_at_with_env(&dir.0, Some(TOKYO), &now);
    post(
        &d,
        "/v1/partitions/apac/customers",
        json!({"id": "acme", "payer": "111111111111"}),
    );
    let hours = |id: &str, quantity: &str, time: &str| {
        json!([usage(id, "111111111111", "ec2.instance_hours", quantity, time)])
    };
    // 19:00 on 31 December in Tokyo: December's.
    post(
        &d,
        "/v1/partitions/apac/usage",
        hours("dec-1", "100", "2026-12-31T10:00:00Z"),
    );
    // 01:00 on 1 January 2027 in Tokyo, still 31 December in UTC: January's, not open yet.
    let january = hours("jan-1", "50", "2026-12-31T16:00:00Z");
    let r = d.post("/v1/partitions/apac/usage", &january.to_string());
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(
        r.body.contains("falls in period 2027-01, which is not open yet"),
        "{}",
        r.body
    );

    // Closing December opens January of the next year. 100 h × 0.0400 = 4.00.
    post(&d, "/v1/partitions/apac/bill-runs", json!({"period": "2026-12"}));
    let run = d.wait_for_bill_run("apac-2026-12");
    assert_eq!(run["total_billed"], "4.00");
    let invoice = get(&d, "/v1/partitions/apac/invoices/apac-2026-12-000001");
    assert_eq!(invoice["total"], "4.00");
    assert_eq!(get(&d, "/v1/partitions")[0]["open_period"], "2027-01");

    // January's event is taken now; 23:00 on 31 December in Tokyo is late December usage.
    // January: 50 h × 0.0400 = 2.00; the adjustment: December re-rated, 125 h × 0.0400 =
    // 5.00, less the 4.00 invoiced = 1.00; the running bill: 3.00.
    post(&d, "/v1/partitions/apac/usage", january);
    post(
        &d,
        "/v1/partitions/apac/usage",
        hours("dec-late", "25", "2026-12-31T14:00:00Z"),
    );
    let bill = get(&d, "/v1/partitions/apac/customers/acme/bill");
    assert_eq!(bill["period"], "2027-01");
    assert_eq!(bill["adjustments"][0]["amount"], "1.00", "{bill}");
    assert_eq!(bill["total"], "3.00", "{bill}");
    d.stop();

    // 5 January 00:00 in Tokyo (still 4 January in UTC): December's grace is over there.
    let now = [("TALLYD_TEST_NOW", "2027-01-04T15:00:00Z")];
    let d = Daemon::start_at_with_env(&dir.0, Some(TOKYO), &now);
    let r = d.post(
        "/v1/partitions/apac/usage",
        &hours("dec-later", "1", "2026-12-31T14:00:00Z").to_string(),
    );
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(
        r.body.contains("its late usage was accepted until 2027-01-04"),
        "{}",
        r.body
    );
    assert_eq!(
        get(&d, "/v1/partitions/apac/customers/acme/bill")["total"],
        "3.00"
    );
}
