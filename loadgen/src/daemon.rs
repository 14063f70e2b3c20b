//! A tallyd that loadgen started (`--spawn`): its process, its temporary data folder,
//! and its address, which stays the same across restarts.
//!
//! It is started from the `tallyd` binary beside loadgen's own (or `$LOADGEN_TALLYD`),
//! on a fresh folder with the workload's period open. `--chaos` kills it (SIGKILL, no
//! warning) and starts it again on the same data and address; a start is over once
//! tallyd has logged `start-up finished` (it has recovered and is ready). Dropping it
//! stops tallyd with SIGTERM and removes the folder.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tallyman::domain::Period;

/// A tallyd started by loadgen, stopped (SIGTERM) and its folder removed when dropped.
pub struct Daemon {
    tallyd: PathBuf,
    dir: PathBuf,
    config: PathBuf,
    /// `127.0.0.1:PORT`, chosen by the first start and kept by restarts.
    addr: String,
    child: Option<Child>,
}

impl Daemon {
    /// Starts tallyd on a temporary folder with `period` open in `partition` (catalog
    /// `cloud-usd`, USD); `extra_config` is appended to its configuration file. Answers
    /// once tallyd is ready.
    pub fn start(period: Period, partition: &str, extra_config: &str) -> Result<Daemon, String> {
        let tallyd = match std::env::var_os("LOADGEN_TALLYD") {
            Some(path) => PathBuf::from(path),
            None => std::env::current_exe()
                .map_err(|e| e.to_string())?
                .with_file_name("tallyd"),
        };
        Daemon::start_binary(tallyd, period, partition, extra_config)
    }

    /// [`Daemon::start`] with the binary at `tallyd`.
    pub fn start_binary(
        tallyd: PathBuf,
        period: Period,
        partition: &str,
        extra_config: &str,
    ) -> Result<Daemon, String> {
        if !tallyd.exists() {
            return Err(format!(
                "--spawn needs tallyd beside loadgen ({}) or at $LOADGEN_TALLYD: build it with `cargo build --release --bin tallyd`",
                tallyd.display()
            ));
        }
        static STARTED: AtomicU64 = AtomicU64::new(0);
        let dir = std::env::temp_dir().join(format!(
            "loadgen-tallyd-{}-{}",
            std::process::id(),
            STARTED.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        let config = dir.join("config.toml");
        std::fs::write(
            &config,
            format!(
                "[[partitions]]\nid = \"{partition}\"\ncurrency = \"USD\"\ncatalog = \"cloud-usd\"\nopen_period = \"{period}\"\n{extra_config}"
            ),
        )
        .map_err(|e| e.to_string())?;
        let mut daemon = Daemon {
            tallyd,
            dir,
            config,
            addr: "127.0.0.1:0".into(),
            child: None,
        };
        daemon.launch()?;
        eprintln!(
            "loadgen: spawned tallyd on {} (data in {})",
            daemon.addr,
            daemon.dir.display()
        );
        Ok(daemon)
    }

    /// tallyd's base URL.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Kills tallyd with SIGKILL (it gets no chance to flush, snapshot or answer) and
    /// waits until it is gone.
    pub fn kill(&mut self) -> Result<(), String> {
        if let Some(mut child) = self.child.take() {
            child.kill().map_err(|e| format!("cannot kill tallyd: {e}"))?;
            child.wait().map_err(|e| e.to_string())?;
        }
        Ok(())
    }

    /// Starts tallyd again on the same data and address; answers once it is ready.
    pub fn restart(&mut self) -> Result<(), String> {
        self.kill()?;
        // The address was just released; a bind can still fail for a moment.
        let mut last = String::new();
        for _ in 0..50 {
            match self.launch() {
                Ok(()) => return Ok(()),
                Err(e) if e.contains("in use") => {
                    last = e;
                    std::thread::sleep(Duration::from_millis(100));
                }
                Err(e) => return Err(e),
            }
        }
        Err(last)
    }

    /// Runs the binary and reads its log until `start-up finished`.
    fn launch(&mut self) -> Result<(), String> {
        let mut child = Command::new(&self.tallyd)
            .args(["--listen", &self.addr, "--data-dir"])
            .arg(self.dir.join("data"))
            .arg("--config")
            .arg(&self.config)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", self.tallyd.display()))?;
        let stderr = child.stderr.take().expect("piped");
        let mut lines = BufReader::new(stderr).lines();
        let mut addr = None;
        let mut ready = false;
        let mut tail = Vec::new();
        for line in lines.by_ref() {
            let line = line.map_err(|e| e.to_string())?;
            if let Some(rest) = line.split("listening on ").nth(1) {
                addr = rest.split_whitespace().next().map(str::to_owned);
            }
            if line.contains("start-up finished") {
                ready = true;
                break;
            }
            tail.push(line);
            if tail.len() > 20 {
                tail.remove(0);
            }
        }
        if !ready {
            let status = child.wait().map_err(|e| e.to_string())?;
            return Err(format!(
                "tallyd stopped during start-up ({status}); its last lines:\n{}",
                tail.join("\n")
            ));
        }
        // Keep reading, so tallyd never blocks on a full pipe.
        std::thread::spawn(move || lines.map_while(Result::ok).for_each(drop));
        self.addr = addr.ok_or("tallyd never said where it listens")?;
        self.child = Some(child);
        Ok(())
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
