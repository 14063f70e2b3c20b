//! An append-only log of lines (NDJSON): each append synced before it is answered, a
//! last line cut short by a crash truncated when the log is opened again, the lines
//! before it handed back whole. Without a folder it keeps nothing (an in-memory engine
//! holds what it needs itself).

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

/// One log file, open for appending.
pub struct LineLog {
    file: Option<(File, PathBuf)>,
    /// Bytes of whole lines in the file.
    size: u64,
}

/// A line read back, with where it starts in its file.
pub struct Line {
    pub offset: u64,
    pub bytes: Vec<u8>,
}

impl LineLog {
    /// A log that keeps nothing.
    pub fn in_memory() -> LineLog {
        LineLog { file: None, size: 0 }
    }

    /// Opens `dir/name` (made if missing) and reads back its whole lines; a torn last
    /// line is cut off, and said so in the log.
    pub fn open(dir: &Path, name: &str) -> Result<(LineLog, Vec<Line>), String> {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let path = dir.join(name);
        let bytes = super::files::read_if_exists(&path)
            .map_err(|e| format!("{}: {e}", path.display()))?
            .unwrap_or_default();
        let mut lines = Vec::new();
        let mut good = 0u64;
        for line in bytes.split_inclusive(|&b| b == b'\n') {
            if !line.ends_with(b"\n") {
                tracing::warn!(file = %path.display(), offset = good, "torn last line truncated");
                break;
            }
            lines.push(Line {
                offset: good,
                bytes: line[..line.len() - 1].to_vec(),
            });
            good += line.len() as u64;
        }
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| format!("{}: {e}", path.display()))?;
        file.set_len(good)
            .map_err(|e| format!("{}: {e}", path.display()))?;
        Ok((
            LineLog {
                file: Some((file, path)),
                size: good,
            },
            lines,
        ))
    }

    /// Appends `line` (a newline is added) and syncs it. On failure the partial line is
    /// cut back, so the log stays whole and the append may be tried again.
    pub fn append(&mut self, line: &[u8]) -> Result<(), String> {
        debug_assert!(!line.contains(&b'\n'), "one line at a time");
        let Some((file, path)) = self.file.as_mut() else {
            return Ok(());
        };
        let mut bytes = Vec::with_capacity(line.len() + 1);
        bytes.extend_from_slice(line);
        bytes.push(b'\n');
        if let Err(e) = file.write_all(&bytes).and_then(|()| file.sync_data()) {
            let _ = file.set_len(self.size);
            return Err(format!("writing {}: {e}", path.display()));
        }
        self.size += bytes.len() as u64;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
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
