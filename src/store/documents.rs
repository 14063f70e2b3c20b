//! Small documents kept whole, by name: each written atomically (a crash leaves the old
//! one or the new one) and read back in full. In a folder, or in memory.

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

/// A set of named documents: the files of a folder, or a map in memory.
pub struct Documents {
    dir: Option<PathBuf>,
    memory: Mutex<HashMap<String, Vec<u8>>>,
}

impl Documents {
    /// Documents kept as files in `dir` (made at the first write).
    pub fn in_folder(dir: PathBuf) -> Documents {
        Documents {
            dir: Some(dir),
            memory: Mutex::default(),
        }
    }

    /// Documents kept in memory, gone with the process.
    pub fn in_memory() -> Documents {
        Documents {
            dir: None,
            memory: Mutex::default(),
        }
    }

    /// Whether they outlive the process.
    pub fn is_durable(&self) -> bool {
        self.dir.is_some()
    }

    fn where_(&self, name: &str) -> String {
        match &self.dir {
            Some(dir) => dir.join(name).display().to_string(),
            None => format!("(memory) {name}"),
        }
    }

    /// The document `name`, if it exists.
    pub fn read(&self, name: &str) -> Result<Option<Vec<u8>>, StoreError> {
        match &self.dir {
            Some(dir) => read_if_exists(&dir.join(name)).map_err(|error| StoreError::Io {
                doing: "read",
                path: self.where_(name),
                error,
            }),
            None => Ok(self
                .memory
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get(name)
                .cloned()),
        }
    }

    /// Writes the document `name` whole, replacing what it was.
    pub fn write(&self, name: &str, bytes: &[u8]) -> Result<(), StoreError> {
        match &self.dir {
            Some(dir) => write_atomically(&dir.join(name), bytes).map_err(|error| StoreError::Io {
                doing: "write",
                path: self.where_(name),
                error,
            }),
            None => {
                let mut memory = self.memory.lock().unwrap_or_else(|p| p.into_inner());
                memory.insert(name.to_owned(), bytes.to_vec());
                Ok(())
            }
        }
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
