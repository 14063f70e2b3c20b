//! Small documents kept whole, by name: each written atomically (a crash leaves the old
//! one or the new one) and read back in full. Behind [`DocumentBackend`]: a folder or
//! memory today, a replicated bucket for cluster mode.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Mutex;

use serde::de::DeserializeOwned;
use serde::Serialize;

use super::files::{read_if_exists, write_atomically};

/// Why a document could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot {doing} {path}: {error}")]
    Io {
        doing: &'static str,
        path: String,
        error: std::io::Error,
    },
    #[error("{path} is damaged ({reason}); restore it from a backup")]
    Damaged { path: String, reason: String },
}

/// Where documents are kept: a folder, memory, or (in cluster mode) a replicated
/// key-value bucket. Each write replaces the whole document atomically.
pub trait DocumentBackend: Send + Sync {
    /// The document `name`, if it exists.
    fn read(&self, name: &str) -> Result<Option<Vec<u8>>, StoreError>;
    /// Writes the document `name` whole, replacing what it was.
    fn write(&self, name: &str, bytes: &[u8]) -> Result<(), StoreError>;
    /// The names of the documents there are, in no particular order.
    fn names(&self) -> Result<Vec<String>, StoreError>;
    /// Whether documents outlive the process.
    fn is_durable(&self) -> bool;
    /// The document's name as an operator finds it (a path, for a folder).
    fn where_(&self, name: &str) -> String;
}

/// A set of named documents, with typed reads and writes over its backend.
pub struct Documents {
    backend: Box<dyn DocumentBackend>,
}

impl Documents {
    /// Documents kept by `backend`.
    pub fn on(backend: Box<dyn DocumentBackend>) -> Documents {
        Documents { backend }
    }

    /// Documents kept as files in `dir` (made at the first write).
    pub fn in_folder(dir: PathBuf) -> Documents {
        Documents::on(Box::new(Folder { dir }))
    }

    /// Documents kept in memory, gone with the process.
    pub fn in_memory() -> Documents {
        Documents::on(Box::new(Memory::default()))
    }

    /// The names of the documents there are, in no particular order.
    pub fn names(&self) -> Result<Vec<String>, StoreError> {
        self.backend.names()
    }

    /// Whether they outlive the process.
    pub fn is_durable(&self) -> bool {
        self.backend.is_durable()
    }

    fn where_(&self, name: &str) -> String {
        self.backend.where_(name)
    }

    /// The document `name`, if it exists.
    pub fn read(&self, name: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.backend.read(name)
    }

    /// Writes the document `name` whole, replacing what it was.
    pub fn write(&self, name: &str, bytes: &[u8]) -> Result<(), StoreError> {
        self.backend.write(name, bytes)
    }

    /// The document `name` read as JSON, if it exists; damaged if it does not parse.
    pub fn read_json<T: DeserializeOwned>(&self, name: &str) -> Result<Option<T>, StoreError> {
        let Some(bytes) = self.read(name)? else {
            return Ok(None);
        };
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| StoreError::Damaged {
                path: self.where_(name),
                reason: e.to_string(),
            })
    }

    /// Writes `value` as the JSON document `name` (indented, for people who look).
    pub fn write_json<T: Serialize>(&self, name: &str, value: &T) -> Result<(), StoreError> {
        let bytes = serde_json::to_vec_pretty(value).expect("documents are plain data");
        self.write(name, &bytes)
    }

    /// The document `name` as text, if it exists; damaged if it is not UTF-8.
    pub fn read_text(&self, name: &str) -> Result<Option<String>, StoreError> {
        let Some(bytes) = self.read(name)? else {
            return Ok(None);
        };
        String::from_utf8(bytes)
            .map(Some)
            .map_err(|e| StoreError::Damaged {
                path: self.where_(name),
                reason: e.to_string(),
            })
    }
}

/// Documents as the files of a folder, each written to a temporary file and renamed.
struct Folder {
    dir: PathBuf,
}

impl DocumentBackend for Folder {
    fn read(&self, name: &str) -> Result<Option<Vec<u8>>, StoreError> {
        read_if_exists(&self.dir.join(name)).map_err(|error| StoreError::Io {
            doing: "read",
            path: self.where_(name),
            error,
        })
    }

    fn write(&self, name: &str, bytes: &[u8]) -> Result<(), StoreError> {
        write_atomically(&self.dir.join(name), bytes).map_err(|error| StoreError::Io {
            doing: "write",
            path: self.where_(name),
            error,
        })
    }

    fn names(&self) -> Result<Vec<String>, StoreError> {
        let io = |error| StoreError::Io {
            doing: "list",
            path: self.dir.display().to_string(),
            error,
        };
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io(e)),
        };
        let mut names = Vec::new();
        for entry in entries {
            let entry = entry.map_err(io)?;
            let name = entry.file_name().into_string().unwrap_or_default();
            // A temporary file is a write a crash cut short, not a document.
            if entry.file_type().is_ok_and(|t| t.is_file()) && !name.ends_with(".tmp") {
                names.push(name);
            }
        }
        Ok(names)
    }

    fn is_durable(&self) -> bool {
        true
    }

    fn where_(&self, name: &str) -> String {
        self.dir.join(name).display().to_string()
    }
}

/// Documents in a map, gone with the process.
#[derive(Default)]
struct Memory {
    documents: Mutex<HashMap<String, Vec<u8>>>,
}

impl DocumentBackend for Memory {
    fn read(&self, name: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let documents = self.documents.lock().unwrap_or_else(|p| p.into_inner());
        Ok(documents.get(name).cloned())
    }

    fn write(&self, name: &str, bytes: &[u8]) -> Result<(), StoreError> {
        let mut documents = self.documents.lock().unwrap_or_else(|p| p.into_inner());
        documents.insert(name.to_owned(), bytes.to_vec());
        Ok(())
    }

    fn names(&self) -> Result<Vec<String>, StoreError> {
        let documents = self.documents.lock().unwrap_or_else(|p| p.into_inner());
        Ok(documents.keys().cloned().collect())
    }

    fn is_durable(&self) -> bool {
        false
    }

    fn where_(&self, name: &str) -> String {
        format!("(memory) {name}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn both(tag: &str) -> (Documents, Documents, PathBuf) {
        let dir = std::env::temp_dir().join(format!("tallyman-docs-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        (Documents::in_folder(dir.clone()), Documents::in_memory(), dir)
    }

    #[test]
    fn a_document_reads_back_as_written_in_a_folder_and_in_memory() {
        let (folder, memory, dir) = both("roundtrip");
        for docs in [&folder, &memory] {
            assert_eq!(docs.read("periods.json").unwrap(), None);
            docs.write_json("periods.json", &vec![1, 2, 3]).unwrap();
            assert_eq!(
                docs.read_json::<Vec<u32>>("periods.json").unwrap(),
                Some(vec![1, 2, 3])
            );
            docs.write("time_zone", b"Asia/Tokyo").unwrap();
            assert_eq!(
                docs.read_text("time_zone").unwrap().as_deref(),
                Some("Asia/Tokyo")
            );
            let mut names = docs.names().unwrap();
            names.sort();
            assert_eq!(names, ["periods.json", "time_zone"]);
        }
        assert!(folder.is_durable() && !memory.is_durable());
        // Written atomically: no temporary file is left beside it.
        let mut names: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(names, ["periods.json", "time_zone"]);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_damaged_document_is_refused_naming_its_file() {
        let (folder, _, dir) = both("damaged");
        folder.write("periods.json", b"{\"open\": ").unwrap();
        let e = folder.read_json::<serde_json::Value>("periods.json").unwrap_err();
        let message = e.to_string();
        assert!(message.contains("periods.json is damaged"), "{message}");
        assert!(message.ends_with("restore it from a backup"), "{message}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
