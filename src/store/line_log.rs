//! An append-only log of lines (NDJSON) on a [`LogBackend`]: each append durable before
//! it is answered, a last line cut short by a crash truncated when the log is opened
//! again, the lines before it handed back whole.

use std::path::Path;

use super::logs::{FolderLogs, LogBackend, MemoryLogs};

/// One log of lines, open for appending.
pub struct LineLog {
    logs: Box<dyn LogBackend>,
    name: String,
    /// Bytes of whole lines in the log.
    size: u64,
}

/// A line read back, with where it starts in its log.
pub struct Line {
    pub offset: u64,
    pub bytes: Vec<u8>,
}

impl LineLog {
    /// A log kept in memory, gone with the process.
    pub fn in_memory(name: &str) -> LineLog {
        LineLog::on(Box::new(MemoryLogs::default()), name)
            .expect("a new log in memory has nothing to read")
            .0
    }

    /// Opens `dir/name` (made at the first append) and reads back its whole lines.
    pub fn open(dir: &Path, name: &str) -> Result<(LineLog, Vec<Line>), String> {
        LineLog::on(Box::new(FolderLogs::new(dir.to_path_buf())), name)
    }

    /// Opens the log `name` of `logs` and reads back its whole lines; a torn last line
    /// is cut off, and said so in the log.
    pub fn on(logs: Box<dyn LogBackend>, name: &str) -> Result<(LineLog, Vec<Line>), String> {
        let bytes = logs.read_all(name).map_err(|e| e.to_string())?;
        let mut lines = Vec::new();
        let mut good = 0u64;
        for line in bytes.split_inclusive(|&b| b == b'\n') {
            if !line.ends_with(b"\n") {
                tracing::warn!(file = %logs.where_(name), offset = good, "torn last line truncated");
                logs.truncate(name, good).map_err(|e| e.to_string())?;
                break;
            }
            lines.push(Line {
                offset: good,
                bytes: line[..line.len() - 1].to_vec(),
            });
            good += line.len() as u64;
        }
        let log = LineLog {
            logs,
            name: name.to_owned(),
            size: good,
        };
        Ok((log, lines))
    }

    /// Appends `line` (a newline is added), durably. On failure the partial line is
    /// cut back, so the log stays whole and the append may be tried again.
    pub fn append(&mut self, line: &[u8]) -> Result<(), String> {
        debug_assert!(!line.contains(&b'\n'), "one line at a time");
        let mut bytes = Vec::with_capacity(line.len() + 1);
        bytes.extend_from_slice(line);
        bytes.push(b'\n');
        self.logs
            .append(&self.name, self.size, &bytes)
            .map_err(|e| e.to_string())?;
        self.size += bytes.len() as u64;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::fs::OpenOptions;
    use std::io::Write;

    use super::*;

    #[test]
    fn lines_come_back_whole_and_a_torn_last_one_is_cut_off() {
        let dir = std::env::temp_dir().join(format!("tallyman-line-log-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        {
            let (mut log, lines) = LineLog::open(&dir, "alerts.ndjson").unwrap();
            assert!(lines.is_empty());
            log.append(b"{\"seq\":1}").unwrap();
            log.append(b"{\"seq\":2}").unwrap();
        }
        // A crash in the middle of a third line.
        let path = dir.join("alerts.ndjson");
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(b"{\"se").unwrap();
        drop(f);
        let (mut log, lines) = LineLog::open(&dir, "alerts.ndjson").unwrap();
        let read: Vec<(u64, &[u8])> = lines.iter().map(|l| (l.offset, &l.bytes[..])).collect();
        assert_eq!(read, [(0, &b"{\"seq\":1}"[..]), (10, &b"{\"seq\":2}"[..])]);
        log.append(b"{\"seq\":3}").unwrap();
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "{\"seq\":1}\n{\"seq\":2}\n{\"seq\":3}\n"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
