//! A `tallyd` process for end-to-end tests, and a minimal HTTP/1.1 client for it.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub const TALLYD: &str = env!("CARGO_BIN_EXE_tallyd");

/// The clock every tallyd of the tests reads (`TALLYD_TEST_NOW`), unless a test sets its
/// own: two days into December 2026, so November (the period the tests pin open) has
/// ended and its late usage is still within the grace window (3 days), as on the day of a
/// month's bill run. A test never depends on the day it runs; `.ci/run` proves it by
/// running them all again with the machine's clock 400 days ahead. A test that means to
/// read the real clock sets `TALLYD_TEST_NOW` to "" (see tests/daemon.rs).
pub const TEST_NOW: &str = "2026-12-02T12:00:00Z";

/// A folder removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
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

/// A tallyd started on a free loopback port, killed on drop.
pub struct Daemon {
    pub child: Child,
    pub addr: String,
    /// The folder removed when the daemon is dropped, if it owns one.
    pub dir: Option<TempDir>,
    /// Every line tallyd logged so far.
    pub log: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

/// An HTTP response: status, content type, body.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub content_type: String,
    pub headers: String,
    pub body: String,
}

impl Response {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }
}

impl Daemon {
    /// Starts tallyd on port 0 and waits for its "listening on ADDR" and "start-up
    /// finished" lines (no sleeps).
    pub fn start(tag: &str) -> Daemon {
        Self::start_with(tag, None)
    }

    /// Same, with a configuration file overriding the embedded default.
    pub fn start_with(tag: &str, config: Option<&str>) -> Daemon {
        let dir = TempDir::new(tag);
        let mut d = Self::start_at(&dir.0, config);
        d.dir = Some(dir);
        d
    }

    /// Starts tallyd on the folder `at` (its data in `at/data`), which outlives it: for
    /// restarts on the same data.
    pub fn start_at(at: &std::path::Path, config: Option<&str>) -> Daemon {
        Self::start_at_with_env(at, config, &[])
    }

    /// Same, with extra environment variables (test hooks).
    pub fn start_at_with_env(at: &std::path::Path, config: Option<&str>, env: &[(&str, &str)]) -> Daemon {
        let mut command = Command::new(TALLYD);
        if !env.iter().any(|(name, _)| *name == "TALLYD_TEST_NOW") {
            command.env("TALLYD_TEST_NOW", TEST_NOW);
        }
        command.envs(env.iter().copied());
        command
            .args(["--listen", "127.0.0.1:0", "--data-dir"])
            .arg(at.join("data"));
        if let Some(text) = config {
            let file = at.join("config.toml");
            std::fs::write(&file, text).unwrap();
            command.arg("--config").arg(file);
        }
        let mut child = command
            .env("RUST_LOG", "info")
            .stderr(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let stderr = BufReader::new(child.stderr.take().unwrap());
        let mut addr = None;
        let mut lines = stderr.lines();
        let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        // tallyd listens first and recovers after: wait for both lines.
        for line in lines.by_ref() {
            let line = line.unwrap();
            log.lock().unwrap().push(line.clone());
            if let Some(rest) = line.split("listening on ").nth(1) {
                addr = Some(rest.split_whitespace().next().unwrap().to_string());
            }
            if line.contains("start-up finished") {
                break;
            }
        }
        // Keep draining the log so the daemon never blocks on a full pipe.
        let keep = log.clone();
        std::thread::spawn(move || {
            lines
                .map_while(Result::ok)
                .for_each(|l| keep.lock().unwrap().push(l))
        });
        Daemon {
            child,
            addr: addr.expect("tallyd logs `listening on ADDR`"),
            dir: None,
            log,
        }
    }

    pub fn request(&self, method: &str, path: &str, content_type: &str, body: &str) -> Response {
        self.request_as(None, method, path, content_type, body)
    }

    /// A request with `Authorization: Bearer <token>` when a token is given.
    pub fn request_as(
        &self,
        token: Option<&str>,
        method: &str,
        path: &str,
        content_type: &str,
        body: &str,
    ) -> Response {
        let mut s = TcpStream::connect(&self.addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let auth = token
            .map(|t| format!("Authorization: Bearer {t}\r\n"))
            .unwrap_or_default();
        write!(
            s,
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n{auth}Content-Type: {content_type}\r\nContent-Length: {}\r\n\r\n{body}",
            self.addr,
            body.len()
        )
        .unwrap();
        let mut response = String::new();
        s.read_to_string(&mut response).unwrap();
        let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
        let status = head[9..12].parse().unwrap();
        let content_type = head
            .lines()
            .find_map(|l| {
                l.to_ascii_lowercase()
                    .strip_prefix("content-type: ")
                    .map(str::to_owned)
            })
            .unwrap_or_default();
        let body = if head.to_ascii_lowercase().contains("transfer-encoding: chunked") {
            dechunk(body)
        } else {
            body.to_string()
        };
        Response {
            status,
            content_type,
            headers: head.to_string(),
            body,
        }
    }

    /// The status line and headers of a GET whose body never ends (a stream).
    pub fn head_of(&self, path: &str) -> String {
        let mut s = TcpStream::connect(&self.addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        write!(s, "GET {path} HTTP/1.1\r\nHost: {}\r\n\r\n", self.addr).unwrap();
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") && s.read(&mut byte).unwrap() == 1 {
            head.push(byte[0]);
        }
        String::from_utf8_lossy(&head).into_owned()
    }

    /// Stops tallyd with SIGTERM and asserts that it exits 0 (it drains, snapshots and
    /// stops).
    pub fn stop(mut self) {
        let pid = self.child.id().to_string();
        assert!(Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success());
        let exit = self.child.wait().unwrap();
        assert!(exit.success(), "tallyd exits 0 after SIGTERM: {exit}");
    }

    /// Polls bill run `id` (`<partition>-<YYYY-MM>`) until it is done; answers its final
    /// view.
    pub fn wait_for_bill_run(&self, id: &str) -> serde_json::Value {
        let partition = &id[..id.len() - "-YYYY-MM".len()];
        for _ in 0..2000 {
            let (status, body) = self.get(&format!("/v1/partitions/{partition}/bill-runs/{id}"));
            assert_eq!(status, 200, "{body}\n{}", self.log.lock().unwrap().join("\n"));
            let run: serde_json::Value = serde_json::from_str(&body).unwrap();
            match run["state"].as_str().unwrap() {
                "done" => return run,
                "running" => std::thread::sleep(Duration::from_millis(5)),
                other => panic!("bill run {other}: {run}"),
            }
        }
        panic!("the bill run did not finish");
    }

    pub fn get(&self, path: &str) -> (u16, String) {
        let r = self.request("GET", path, "application/json", "");
        (r.status, r.body)
    }

    pub fn post(&self, path: &str, body: &str) -> Response {
        self.request("POST", path, "application/json", body)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The body of a `Transfer-Encoding: chunked` response.
fn dechunk(mut rest: &str) -> String {
    let mut out = String::new();
    while let Some((size, after)) = rest.split_once("\r\n") {
        let size = usize::from_str_radix(size.trim(), 16).expect("a chunk size");
        if size == 0 {
            break;
        }
        out.push_str(&after[..size]);
        rest = &after[size + 2..];
    }
    out
}
