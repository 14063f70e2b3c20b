//! Segment snapshots in files.
//!
//! A snapshot of segment `s` as of LSN `l` is the file `{s:05}-{l:020}.snap`:
//!
//! ```text
//! "TLYSNAP1" | segment: u32 | lsn: u64 | (len: u32 | entity)* | count: u64 | crc32c: u32
//! ```
//!
//! little-endian, the checksum covering every byte before it. A snapshot is written to a
//! temporary file, synced, renamed into place and the directory synced, so a crash leaves
//! either the whole new snapshot or none of it. The newest `keep` snapshots of a segment
//! are kept; loading falls back from a damaged one to the next older, saying so in the
//! log. Nothing here knows what an entity is: a [`SnapshotCodec`] turns them into bytes.

use std::fs::{self, File};
use std::io::{self, BufWriter, Read, Write};
use std::marker::PhantomData;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::entity::Entity;
use crate::journal::Lsn;
use crate::snapshot::{EntityIter, SegmentSnapshot, SnapshotStore};

const MAGIC: &[u8; 8] = b"TLYSNAP1";
/// Largest entity accepted, as a guard against reading garbage lengths.
const MAX_ENTITY: usize = 64 << 20;

/// How an entity becomes bytes and back.
pub trait SnapshotCodec<E: Entity>: Send + Sync + 'static {
    fn encode(&self, key: &E::Key, entity: &E, out: &mut Vec<u8>);
    fn decode(&self, bytes: &[u8]) -> Result<(E::Key, E::Snapshot), String>;
}

#[derive(Clone, Debug)]
pub struct FileSnapshotsConfig {
    pub dir: PathBuf,
    /// How many snapshots of each segment are kept (at least 1; 2 gives a fallback).
    pub keep: usize,
    /// Sync files and the directory (off only in tests and benchmarks).
    pub fsync: bool,
}

/// Snapshots in files, one per segment and LSN.
pub struct FileSnapshots<E: Entity> {
    config: FileSnapshotsConfig,
    codec: Arc<dyn SnapshotCodec<E>>,
    _entities: PhantomData<fn() -> E>,
}

/// A snapshot file and the segment and LSN its name says it holds.
#[derive(Debug)]
struct SnapshotFile {
    path: PathBuf,
    segment: u32,
    lsn: Lsn,
}

impl<E: Entity> FileSnapshots<E> {
    /// Snapshots in `config.dir`, which is created if need be. Temporary files left by a
    /// crash mid-write are removed.
    pub fn open(config: FileSnapshotsConfig, codec: Arc<dyn SnapshotCodec<E>>) -> io::Result<Self> {
        fs::create_dir_all(&config.dir)?;
        for entry in fs::read_dir(&config.dir)? {
            let path = entry?.path();
            if path.extension().is_some_and(|e| e == "tmp") {
                tracing::info!(file = %path.display(), "removing a snapshot left unfinished by a crash");
                fs::remove_file(&path)?;
            }
        }
        Ok(FileSnapshots {
            config: FileSnapshotsConfig {
                keep: config.keep.max(1),
                ..config
            },
            codec,
            _entities: PhantomData,
        })
    }

    /// The snapshot files of `segment`, newest first.
    fn files(&self, segment: u32) -> io::Result<Vec<SnapshotFile>> {
        let mut out = Vec::new();
        for entry in fs::read_dir(&self.config.dir)? {
            let path = entry?.path();
            let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
                continue;
            };
            let Some((s, l)) = name.strip_suffix(".snap").and_then(|n| n.split_once('-')) else {
                continue;
            };
            if let (Ok(s), Ok(lsn)) = (s.parse::<u32>(), l.parse::<Lsn>()) {
                if s == segment {
                    out.push(SnapshotFile {
                        path,
                        segment: s,
                        lsn,
                    });
                }
            }
        }
        out.sort_by_key(|f| std::cmp::Reverse(f.lsn));
        Ok(out)
    }

    fn write(&self, path: &Path, segment: u32, lsn: Lsn, entities: &mut EntityIter<'_, E>) -> io::Result<()> {
        let mut out = Crc32cWriter {
            inner: BufWriter::with_capacity(1 << 20, File::create(path)?),
            crc: 0,
        };
        out.write_all(MAGIC)?;
        out.write_all(&segment.to_le_bytes())?;
        out.write_all(&lsn.to_le_bytes())?;
        let mut buf = Vec::with_capacity(4096);
        let mut count = 0u64;
        for (key, entity) in entities {
            buf.clear();
            self.codec.encode(key, entity, &mut buf);
            out.write_all(&(buf.len() as u32).to_le_bytes())?;
            out.write_all(&buf)?;
            count += 1;
        }
        out.write_all(&count.to_le_bytes())?;
        let crc = out.crc;
        let mut file = out.inner.into_inner().map_err(|e| e.into_error())?;
        file.write_all(&crc.to_le_bytes())?;
        if self.config.fsync {
            file.sync_all()?;
        }
        Ok(())
    }

    fn read(&self, file: &SnapshotFile) -> Result<SegmentSnapshot<E>, String> {
        let at = |what: &str| format!("{}: {what}", file.path.display());
        let mut bytes = Vec::new();
        File::open(&file.path)
            .and_then(|mut f| f.read_to_end(&mut bytes))
            .map_err(|e| at(&e.to_string()))?;
        let header = MAGIC.len() + 12;
        if bytes.len() < header + 12 || &bytes[..MAGIC.len()] != MAGIC {
            return Err(at("not a snapshot file (bad header or too short)"));
        }
        let (body, stored) = bytes.split_at(bytes.len() - 4);
        let stored = u32::from_le_bytes(stored.try_into().expect("4 bytes"));
        if crc32c::crc32c(body) != stored {
            return Err(at("checksum mismatch"));
        }
        let segment = u32::from_le_bytes(body[8..12].try_into().expect("4 bytes"));
        let lsn = u64::from_le_bytes(body[12..20].try_into().expect("8 bytes"));
        if segment != file.segment || lsn != file.lsn {
            return Err(at(&format!(
                "holds segment {segment} at LSN {lsn}, not what its name says"
            )));
        }
        let (records, count) = body.split_at(body.len() - 8);
        let count = u64::from_le_bytes(count.try_into().expect("8 bytes"));
        let mut entities = std::collections::HashMap::with_capacity(count.min(1 << 24) as usize);
        let mut pos = header;
        while pos < records.len() {
            let len = records
                .get(pos..pos + 4)
                .map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes")) as usize)
                .ok_or_else(|| at(&format!("entity length cut short at offset {pos}")))?;
            if len > MAX_ENTITY || pos + 4 + len > records.len() {
                return Err(at(&format!("entity at offset {pos} runs past the end")));
            }
            let (key, snapshot) = self
                .codec
                .decode(&records[pos + 4..pos + 4 + len])
                .map_err(|e| at(&format!("entity at offset {pos}: {e}")))?;
            entities.insert(key, snapshot);
            pos += 4 + len;
        }
        if entities.len() as u64 != count {
            return Err(at(&format!(
                "holds {} entities, its trailer says {count}",
                entities.len()
            )));
        }
        Ok(SegmentSnapshot { lsn, entities })
    }
}

impl<E: Entity> SnapshotStore<E> for FileSnapshots<E> {
    fn save(&self, segment: u32, lsn: Lsn, entities: &mut EntityIter<'_, E>) -> Result<Lsn, String> {
        let name = format!("{segment:05}-{lsn:020}.snap");
        let path = self.config.dir.join(&name);
        let tmp = self.config.dir.join(format!("{name}.tmp"));
        let io = |e: io::Error| format!("writing snapshot {}: {e}", path.display());
        if let Err(e) = self.write(&tmp, segment, lsn, entities) {
            let _ = fs::remove_file(&tmp);
            return Err(io(e));
        }
        fs::rename(&tmp, &path).map_err(io)?;
        if self.config.fsync {
            File::open(&self.config.dir)
                .and_then(|d| d.sync_all())
                .map_err(io)?;
        }
        let files = self.files(segment).map_err(io)?;
        for old in files.iter().skip(self.config.keep) {
            if let Err(e) = fs::remove_file(&old.path) {
                tracing::warn!(file = %old.path.display(), error = %e, "cannot delete an old snapshot");
            }
        }
        // The oldest snapshot kept is the last fallback: the journal must hold what follows it.
        Ok(files
            .iter()
            .take(self.config.keep)
            .map(|f| f.lsn)
            .min()
            .unwrap_or(lsn))
    }

    fn load(&self, segment: u32) -> Result<Option<Arc<SegmentSnapshot<E>>>, String> {
        let files = self
            .files(segment)
            .map_err(|e| format!("listing snapshots in {}: {e}", self.config.dir.display()))?;
        let mut failures = Vec::new();
        for file in &files {
            match self.read(file) {
                Ok(snapshot) => {
                    if !failures.is_empty() {
                        tracing::warn!(
                            segment, file = %file.path.display(), lsn = file.lsn,
                            "recovering from an older snapshot"
                        );
                    }
                    return Ok(Some(Arc::new(snapshot)));
                }
                Err(e) => {
                    tracing::error!(segment, error = %e, "snapshot unreadable; trying an older one");
                    failures.push(e);
                }
            }
        }
        if failures.is_empty() {
            Ok(None)
        } else {
            Err(format!(
                "no snapshot of segment {segment} can be read ({}); restore one from a backup, \
                 or remove them all if the journal still starts at LSN 1",
                failures.join("; ")
            ))
        }
    }
}

/// A writer that keeps the CRC32C of everything written through it.
struct Crc32cWriter<W: Write> {
    inner: W,
    crc: u32,
}

impl<W: Write> Write for Crc32cWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.crc = crc32c::crc32c_append(self.crc, &buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}
