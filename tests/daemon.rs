//! `tallyd` as a user meets it: a real process, real flags, real HTTP on loopback.

mod common;

use common::{Daemon, TempDir, TALLYD};
use std::process::Command;

#[test]
fn serves_health_and_ready() {
    let d = Daemon::start("health");
    assert_eq!(d.get("/health"), (200, r#"{"status":"ok"}"#.to_string()));
    let (status, body) = d.get("/ready");
    assert_eq!(status, 200);
    assert!(body.contains(r#""ready":true"#), "{body}");
}

#[test]
fn the_embedded_default_opens_the_month_of_the_real_clock() {
    // The one test whose tallyd reads the real clock ("" unsets the tests' fixed one): with
    // no `open_period` configured, the open period is the current month (UTC). Read before
    // and after, in case the month turns meanwhile.
    let month = || tallyman::domain::Period::containing(chrono::Utc::now().date_naive()).to_string();
    let before = month();
    let dir = TempDir::new("real-clock");
    let d = Daemon::start_at_with_env(&dir.0, None, &[("TALLYD_TEST_NOW", "")]);
    let (status, body) = d.get("/v1/partitions");
    let after = month();
    assert_eq!(status, 200, "{body}");
    let partitions: serde_json::Value = serde_json::from_str(&body).unwrap();
    let open = partitions[0]["open_period"].as_str().unwrap();
    assert!(open == before || open == after, "{open}: {before}..{after}");
}

#[test]
fn the_embedded_default_opens_the_month_of_its_clock() {
    // The tests' fixed clock (common::TEST_NOW, 2 December 2026) decides the open period.
    let d = Daemon::start("fixed-clock");
    let (_, body) = d.get("/v1/partitions");
    let partitions: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(partitions[0]["open_period"], "2026-12");
    assert_eq!(partitions[1]["open_period"], "2026-12");
}

#[test]
fn admin_lists_segments_with_arbiter_and_load() {
    let d = Daemon::start("segments");
    let (status, body) = d.get("/v1/admin/segments");
    assert_eq!(status, 200, "{body}");
    let report: serde_json::Value = serde_json::from_str(&body).unwrap();
    let segments = report["segments"].as_array().unwrap();
    // Two partitions of 16 segments each, in the embedded default.
    assert_eq!(segments.len(), 32);
    assert!(segments
        .iter()
        .all(|s| s["state"] == "running" && s["arbiter"].is_u64()));
    assert_eq!(report["moves"], 0);
    let (status, body) = d.get("/v1/admin/dead-letters");
    assert_eq!((status, body.as_str()), (200, "[]"));
}

#[test]
fn metrics_in_prometheus_text() {
    let d = Daemon::start("metrics");
    assert_eq!(d.get("/health").0, 200);
    let (status, body) = d.get("/metrics");
    assert_eq!(status, 200);
    for needle in [
        "# TYPE tallyman_events_accepted_total counter",
        "tallyman_events_accepted_total{partition=\"aws\"} 0",
        "# TYPE tallyman_segment_mailbox_depth gauge",
        "tallyman_segment_restarts_total 0",
        "tallyman_rebalance_moves_total 0",
        "tallyman_http_request_duration_seconds_count{method=\"GET\",route=\"/health\",status=\"2xx\"} 1",
        "le=\"+Inf\"",
    ] {
        assert!(body.contains(needle), "missing {needle:?} in\n{body}");
    }
}

#[test]
fn sigterm_stops_it_cleanly() {
    let mut d = Daemon::start("sigterm");
    let pid = d.child.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let status = d.child.wait().unwrap();
    assert!(status.success(), "exit status after SIGTERM: {status}");
}

#[test]
fn check_config_summarises_the_embedded_default() {
    let out = Command::new(TALLYD).arg("check-config").output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("configuration OK"), "{text}");
    assert!(
        text.contains("aws: USD (half_even), periods in UTC, catalog cloud-usd with 2 version(s)"),
        "{text}"
    );
    assert!(text.contains("aws-cn: CNY"), "{text}");
    assert!(
        text.contains("enterprise: price → round → discounts → commitment → credits → tax"),
        "{text}"
    );
}

#[test]
fn invalid_configuration_is_refused_naming_the_key() {
    let dir = TempDir::new("badconfig");
    let file = dir.0.join("bad.toml");
    std::fs::write(
        &file,
        "[[partitions]]\nid = \"eu\"\ncurrency = \"EURO\"\ncatalog = \"cloud-usd\"\n",
    )
    .unwrap();
    let out = Command::new(TALLYD)
        .arg("check-config")
        .arg("--config")
        .arg(&file)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(
        err.contains("`partitions[0].currency`") && err.contains("unknown currency"),
        "{err}"
    );
    // The daemon refuses to start on it too.
    let out = Command::new(TALLYD).arg("--config").arg(&file).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn environment_overrides_reach_the_daemon() {
    let out = Command::new(TALLYD)
        .arg("check-config")
        .env("TALLY_SERVER__LISTEN", "127.0.0.1:9191")
        .output()
        .unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("listen: 127.0.0.1:9191"), "{text}");
}
