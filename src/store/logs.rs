//! Append-only logs kept by name, behind [`LogBackend`]: files in a folder, or byte
//! buffers in memory (a replicated stream, for cluster mode). What is appended is
//! durable before the append answers, and an append that fails leaves nothing of
//! itself; a log is only ever cut back to drop a tail torn by a crash. The invoice
//! store and the line log are built on it.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::PathBuf;
use std::sync::Mutex;

use super::StoreError;

/// Where append-only logs are kept.
pub trait LogBackend: Send + Sync {
    /// The names of the logs there are, in no particular order.
    fn names(&self) -> Result<Vec<String>, StoreError>;
    /// A log's whole content (empty if there is no such log).
    fn read_all(&self, name: &str) -> Result<Vec<u8>, StoreError>;
    /// `len` bytes of a log from `offset` (which the caller knows are there).
    fn read_at(&self, name: &str, offset: u64, len: usize) -> Result<Vec<u8>, StoreError>;
    /// Appends `bytes` to a log `size` bytes long (made if missing), durably before it
    /// answers. On failure the log is cut back to `size`.
    fn append(&self, name: &str, size: u64, bytes: &[u8]) -> Result<(), StoreError>;
    /// Cuts a log back to `len` bytes, durably: to drop a tail torn by a crash.
    fn truncate(&self, name: &str, len: u64) -> Result<(), StoreError>;
    /// The log's name as an operator finds it (a path, for a folder).
    fn where_(&self, name: &str) -> String;
}

/// Logs as the files of a folder, made at the first append.
pub struct FolderLogs {
    dir: PathBuf,
    /// The files appended to, kept open.
    open: Mutex<HashMap<String, File>>,
}

impl FolderLogs {
    pub fn new(dir: PathBuf) -> FolderLogs {
        FolderLogs {
            dir,
            open: Mutex::default(),
        }
    }

    fn io(&self, doing: &'static str, name: &str) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
        let path = self.where_(name);
        move |error| StoreError::Io { doing, path, error }
    }

    /// The file `name`, open for appending (made, and the folder synced, if new).
    fn appending<'a>(
        &self,
        open: &'a mut HashMap<String, File>,
        name: &str,
    ) -> Result<&'a mut File, StoreError> {
        if !open.contains_key(name) {
            std::fs::create_dir_all(&self.dir).map_err(self.io("make the folder of", name))?;
            let file = OpenOptions::new()
                .create(true)
                .append(true)
                .open(self.dir.join(name))
                .map_err(self.io("open", name))?;
            File::open(&self.dir)
                .and_then(|d| d.sync_all())
                .map_err(self.io("sync the folder of", name))?;
            open.insert(name.to_owned(), file);
        }
        Ok(open.get_mut(name).expect("opened"))
    }
}

impl LogBackend for FolderLogs {
    fn names(&self) -> Result<Vec<String>, StoreError> {
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(self.io("list", "")(e)),
        };
        let mut names = Vec::new();
        for entry in entries {
            let entry = entry.map_err(self.io("list", ""))?;
            if entry.file_type().is_ok_and(|t| t.is_file()) {
                names.extend(entry.file_name().into_string().ok());
            }
        }
        Ok(names)
    }

    fn read_all(&self, name: &str) -> Result<Vec<u8>, StoreError> {
        let read = super::files::read_if_exists(&self.dir.join(name)).map_err(self.io("read", name))?;
        Ok(read.unwrap_or_default())
    }

    fn read_at(&self, name: &str, offset: u64, len: usize) -> Result<Vec<u8>, StoreError> {
        let mut buf = vec![0; len];
        File::open(self.dir.join(name))
            .and_then(|mut f| {
                f.seek(SeekFrom::Start(offset))?;
                f.read_exact(&mut buf)
            })
            .map_err(self.io("read", name))?;
        Ok(buf)
    }

    fn append(&self, name: &str, size: u64, bytes: &[u8]) -> Result<(), StoreError> {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let file = self.appending(&mut open, name)?;
        if let Err(e) = file.write_all(bytes).and_then(|()| file.sync_data()) {
            let _ = file.set_len(size);
            return Err(self.io("write", name)(e));
        }
        Ok(())
    }

    fn truncate(&self, name: &str, len: u64) -> Result<(), StoreError> {
        OpenOptions::new()
            .write(true)
            .open(self.dir.join(name))
            .and_then(|f| f.set_len(len).and_then(|()| f.sync_all()))
            .map_err(self.io("truncate", name))
    }

    fn where_(&self, name: &str) -> String {
        self.dir.join(name).display().to_string()
    }
}

/// Logs in memory, gone with the process.
#[derive(Default)]
pub struct MemoryLogs {
    logs: Mutex<HashMap<String, Vec<u8>>>,
}

impl LogBackend for MemoryLogs {
    fn names(&self) -> Result<Vec<String>, StoreError> {
        Ok(self
            .logs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .keys()
            .cloned()
            .collect())
    }

    fn read_all(&self, name: &str) -> Result<Vec<u8>, StoreError> {
        let logs = self.logs.lock().unwrap_or_else(|p| p.into_inner());
        Ok(logs.get(name).cloned().unwrap_or_default())
    }

    fn read_at(&self, name: &str, offset: u64, len: usize) -> Result<Vec<u8>, StoreError> {
        let logs = self.logs.lock().unwrap_or_else(|p| p.into_inner());
        let log = logs.get(name).map_or(&[][..], Vec::as_slice);
        let start = usize::try_from(offset).unwrap_or(usize::MAX);
        log.get(start..start.saturating_add(len))
            .map(<[u8]>::to_vec)
            .ok_or_else(|| StoreError::Damaged {
                path: self.where_(name),
                reason: format!(
                    "{len} bytes at offset {offset} are past its end ({} bytes)",
                    log.len()
                ),
            })
    }

    fn append(&self, name: &str, size: u64, bytes: &[u8]) -> Result<(), StoreError> {
        let mut logs = self.logs.lock().unwrap_or_else(|p| p.into_inner());
        let log = logs.entry(name.to_owned()).or_default();
        assert_eq!(log.len() as u64, size, "appended at its end");
        log.extend_from_slice(bytes);
        Ok(())
    }

    fn truncate(&self, name: &str, len: u64) -> Result<(), StoreError> {
        let mut logs = self.logs.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(log) = logs.get_mut(name) {
            log.truncate(usize::try_from(len).unwrap_or(usize::MAX));
        }
        Ok(())
    }

    fn where_(&self, name: &str) -> String {
        format!("(memory) {name}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_log_reads_back_what_was_appended_in_a_folder_and_in_memory() {
        let dir = std::env::temp_dir().join(format!("tallyman-logs-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let backends: [Box<dyn LogBackend>; 2] = [
            Box::new(FolderLogs::new(dir.clone())),
            Box::new(MemoryLogs::default()),
        ];
        for logs in &backends {
            assert!(logs.names().unwrap().is_empty());
            assert!(logs.read_all("2026-11.ndjson").unwrap().is_empty());
            logs.append("2026-11.ndjson", 0, b"one\n").unwrap();
            logs.append("2026-11.ndjson", 4, b"two\nthr").unwrap();
            assert_eq!(logs.read_at("2026-11.ndjson", 4, 3).unwrap(), b"two");
            // A torn tail dropped: 8 bytes of whole lines are kept.
            logs.truncate("2026-11.ndjson", 8).unwrap();
            assert_eq!(logs.read_all("2026-11.ndjson").unwrap(), b"one\ntwo\n");
            assert_eq!(logs.names().unwrap(), ["2026-11.ndjson"]);
            assert!(logs.read_at("2026-11.ndjson", 6, 8).is_err(), "past the end");
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
