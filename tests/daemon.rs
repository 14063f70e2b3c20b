//! `tallyd` as a user meets it: a real process, real flags, real HTTP on loopback.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const TALLYD: &str = env!("CARGO_BIN_EXE_tallyd");

/// A tallyd started on a free loopback port, killed on drop.
struct Daemon {
    child: Child,
    addr: String,
    _dir: TempDir,
}

struct TempDir(std::path::PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        let p = std::env::temp_dir().join(format!("tallyd-test-{tag}-{}", std::process::id()));
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

impl Daemon {
    /// Starts tallyd on port 0 and waits for its "listening on ADDR" line (no sleeps).
    fn start(tag: &str) -> Daemon {
        let dir = TempDir::new(tag);
        let mut child = Command::new(TALLYD)
            .args(["--listen", "127.0.0.1:0", "--data-dir"])
            .arg(dir.0.join("data"))
            .env("RUST_LOG", "info")
            .stderr(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let stderr = BufReader::new(child.stderr.take().unwrap());
        let mut addr = None;
        let mut lines = stderr.lines();
        for line in lines.by_ref() {
            let line = line.unwrap();
            if let Some(rest) = line.split("listening on ").nth(1) {
                addr = Some(rest.split_whitespace().next().unwrap().to_string());
                break;
            }
        }
        // Keep draining the log so the daemon never blocks on a full pipe.
        std::thread::spawn(move || lines.for_each(drop));
        Daemon {
            child,
            addr: addr.expect("tallyd logs `listening on ADDR`"),
            _dir: dir,
        }
    }

    fn get(&self, path: &str) -> (u16, String) {
        let mut s = TcpStream::connect(&self.addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
            self.addr
        )
        .unwrap();
        let mut response = String::new();
        s.read_to_string(&mut response).unwrap();
        let status = response[9..12].parse().unwrap();
        let body = response.split("\r\n\r\n").nth(1).unwrap_or("").to_string();
        (status, body)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn serves_health_and_ready() {
    let d = Daemon::start("health");
    assert_eq!(d.get("/health"), (200, r#"{"status":"ok"}"#.to_string()));
    let (status, body) = d.get("/ready");
    assert_eq!(status, 200);
    assert!(body.contains(r#""ready":true"#), "{body}");
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
        text.contains("aws: USD (half_even), catalog cloud-usd with 2 version(s)"),
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
