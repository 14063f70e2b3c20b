//! A journal in segmented files with group commit.
//!
//! Every record is `len: u32 | crc32c: u32 | lsn: u64 | payload`, little-endian, the
//! checksum covering the LSN and the payload. Files are named by the first LSN they hold
//! and rotate past a configured size.
//!
//! One writer thread owns the open file. Appends queue up while it writes and syncs the
//! previous batch; it then takes everything queued as the next batch: one `fdatasync`
//! covers all of them, with no timer anywhere. Callbacks run after the sync, in LSN order.
//!
//! On open, every file is read and checked. A record cut short at the end of the last file
//! (a crash mid-write) is a torn tail: it is truncated, and the file and offset are logged.
//! A record that fails its checksum anywhere else refuses the open, naming the file and
//! offset and what to do; nothing is skipped silently.
//!
//! A failed write or sync answers every record of its batch with an error (none of them
//! is acknowledged), cuts the file back to the last good record, and the next batch tries
//! again: the journal resumes on its own once the disk does.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use crate::journal::{Journal, JournalError, Lsn, OnDurable};

const HEADER: usize = 16;
/// Largest payload accepted, as a guard against reading garbage lengths.
pub const MAX_RECORD: usize = 256 << 20;

/// How records become bytes and back.
pub trait Codec<R>: Send + Sync + 'static {
    fn encode(&self, record: &R, out: &mut Vec<u8>);
    fn decode(&self, bytes: &[u8]) -> Result<R, String>;
    /// About how many bytes `record` encodes to, so that its buffer is allocated once
    /// (growing a 100 KB record from a small buffer copies it several times over).
    fn size_hint(&self, _record: &R) -> usize {
        256
    }
}

/// When the writer syncs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FsyncPolicy {
    /// `fdatasync` after every batch, before any record of it is acknowledged.
    EveryBatch,
    /// Never sync (the OS writes back when it likes): for tests and benchmarks only.
    Never,
}

/// Test hook: returns an error to fail the next write or sync.
pub type FaultHook = Arc<dyn Fn() -> Option<io::Error> + Send + Sync>;

#[derive(Clone)]
pub struct FileJournalConfig {
    pub dir: PathBuf,
    /// A new file starts once the current one is past this size.
    pub segment_bytes: u64,
    pub fsync: FsyncPolicy,
    pub fault: Option<FaultHook>,
}

/// Counters of the writer, for metrics and benchmarks.
#[derive(Debug, Default)]
pub struct JournalStats {
    pub records: AtomicU64,
    pub batches: AtomicU64,
    pub syncs: AtomicU64,
    pub sync_ns: AtomicU64,
    pub failures: AtomicU64,
}

struct Pending<R> {
    lsn: Lsn,
    /// The whole record, header and payload, encoded by the appender.
    bytes: Vec<u8>,
    record: Arc<R>,
    on_durable: OnDurable<R>,
    /// When it was appended.
    queued: std::time::Instant,
}

/// The journal.
pub struct FileJournal<R: Send + Sync + 'static> {
    dir: PathBuf,
    codec: Arc<dyn Codec<R>>,
    /// Assigns LSNs and queues in one step, so the queue is in LSN order.
    queue: Mutex<(Lsn, Option<Sender<Pending<R>>>)>,
    writer: Mutex<Option<JoinHandle<()>>>,
    stats: Arc<JournalStats>,
    /// The LSN up to which every `on_durable` has been called.
    durable: Arc<AtomicU64>,
    /// Held while the skip marks file is written.
    skips: Mutex<()>,
}

/// The file of skip marks: `(lsn: u64, index: u32, crc32c: u32)` little-endian, 16 bytes
/// each, appended and synced one call at a time.
const SKIPS_FILE: &str = "skipped.marks";
const MARK: usize = 16;

fn encode_mark(lsn: Lsn, index: u32) -> [u8; MARK] {
    let mut out = [0u8; MARK];
    out[0..8].copy_from_slice(&lsn.to_le_bytes());
    out[8..12].copy_from_slice(&index.to_le_bytes());
    let crc = crc32c::crc32c(&out[0..12]);
    out[12..16].copy_from_slice(&crc.to_le_bytes());
    out
}

/// Reads the skip marks; a torn last mark (a crash mid-append) is left out, a damaged one
/// before it refuses, naming the file and offset.
fn read_marks(path: &Path) -> Result<Vec<(Lsn, u32)>, JournalError> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(JournalError::Unavailable(format!("{}: {e}", path.display()))),
    };
    parse_marks(path, &bytes)
}

/// Opens the skip marks at start: checks them, and cuts a torn last mark off (so the
/// next append starts on a whole mark).
fn open_marks(path: &Path) -> Result<(), JournalError> {
    let err = |e: io::Error| JournalError::Unavailable(format!("{}: {e}", path.display()));
    if !path.exists() {
        return Ok(());
    }
    let marks = read_marks(path)?;
    let whole = (marks.len() * MARK) as u64;
    let file = OpenOptions::new().write(true).open(path).map_err(err)?;
    if file.metadata().map_err(err)?.len() > whole {
        tracing::warn!(file = %path.display(), offset = whole, "torn last skip mark cut off");
        file.set_len(whole).and_then(|()| file.sync_all()).map_err(err)?;
    }
    Ok(())
}

fn parse_marks(path: &Path, bytes: &[u8]) -> Result<Vec<(Lsn, u32)>, JournalError> {
    let mut marks = Vec::with_capacity(bytes.len() / MARK);
    for (i, chunk) in bytes.chunks(MARK).enumerate() {
        let last = (i + 1) * MARK >= bytes.len();
        let whole = chunk.len() == MARK
            && u32::from_le_bytes(chunk[12..16].try_into().expect("4 bytes"))
                == crc32c::crc32c(&chunk[0..12]);
        if !whole {
            if last {
                tracing::warn!(file = %path.display(), offset = i * MARK, "torn last skip mark ignored");
                break;
            }
            return Err(JournalError::Corrupt(format!(
                "{} is damaged at offset {}: a skip mark fails its checksum before the end of the file. \
                 Restore the file from a replica or backup; deleting it lets refused commands be applied on replay",
                path.display(),
                i * MARK
            )));
        }
        marks.push((
            u64::from_le_bytes(chunk[0..8].try_into().expect("8 bytes")),
            u32::from_le_bytes(chunk[8..12].try_into().expect("4 bytes")),
        ));
    }
    Ok(marks)
}

/// A file of the journal: its path and the first LSN it holds.
#[derive(Clone, Debug)]
struct Segment {
    path: PathBuf,
    first: Lsn,
}

fn segment_path(dir: &Path, first: Lsn) -> PathBuf {
    dir.join(format!("journal-{first:020}.log"))
}

fn segments(dir: &Path) -> io::Result<Vec<Segment>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if let Some(first) = name
            .strip_prefix("journal-")
            .and_then(|n| n.strip_suffix(".log"))
            .and_then(|n| n.parse::<Lsn>().ok())
        {
            out.push(Segment { path, first });
        }
    }
    out.sort_by_key(|s| s.first);
    Ok(out)
}

fn checksum(lsn: Lsn, payload: &[u8]) -> u32 {
    crc32c::crc32c_append(crc32c::crc32c(&lsn.to_le_bytes()), payload)
}

/// What reading one file found.
enum Scan {
    /// Every record read was whole and good.
    Clean,
    /// The file ends inside a record that starts at `at`.
    Torn { at: u64, why: &'static str },
}

/// Reads the records of a file in order, calling `visit(lsn, payload)` for each good one.
fn scan(path: &Path, mut visit: impl FnMut(Lsn, &[u8]) -> bool) -> Result<Scan, JournalError> {
    let mut bytes = Vec::new();
    File::open(path)
        .and_then(|mut f| f.read_to_end(&mut bytes))
        .map_err(|e| JournalError::Unavailable(format!("cannot read {}: {e}", path.display())))?;
    let mut at = 0usize;
    while at < bytes.len() {
        if bytes.len() - at < HEADER {
            return Ok(Scan::Torn {
                at: at as u64,
                why: "header cut short",
            });
        }
        let len = u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes")) as usize;
        let crc = u32::from_le_bytes(bytes[at + 4..at + 8].try_into().expect("4 bytes"));
        let lsn = u64::from_le_bytes(bytes[at + 8..at + 16].try_into().expect("8 bytes"));
        let end = at + HEADER + len;
        if len > MAX_RECORD || end > bytes.len() {
            if end > bytes.len() && len <= MAX_RECORD {
                return Ok(Scan::Torn {
                    at: at as u64,
                    why: "payload cut short",
                });
            }
            return Err(corrupt(path, at as u64, "impossible record length"));
        }
        let payload = &bytes[at + HEADER..end];
        if checksum(lsn, payload) != crc {
            if end == bytes.len() {
                // The last record of the file: a write the crash interrupted.
                return Ok(Scan::Torn {
                    at: at as u64,
                    why: "checksum of the last record",
                });
            }
            return Err(corrupt(path, at as u64, "checksum mismatch"));
        }
        if !visit(lsn, payload) {
            return Ok(Scan::Clean);
        }
        at = end;
    }
    Ok(Scan::Clean)
}

fn corrupt(path: &Path, offset: u64, what: &str) -> JournalError {
    JournalError::Corrupt(format!(
        "{what} in {} at byte offset {offset}: the journal is damaged before its tail. \
         Nothing was skipped. Restore the file from a replica or backup; or, accepting the loss \
         of every record from this offset on, truncate the file to {offset} bytes and delete \
         the later journal files, then start again",
        path.display()
    ))
}

impl<R: Send + Sync + 'static> FileJournal<R> {
    /// Opens (or creates) the journal in `config.dir`, checking every record, truncating a
    /// torn tail, and refusing a damaged one. Starts the writer thread.
    pub fn open(config: FileJournalConfig, codec: Arc<dyn Codec<R>>) -> Result<FileJournal<R>, JournalError> {
        let io = |e: io::Error| JournalError::Unavailable(format!("{}: {e}", config.dir.display()));
        std::fs::create_dir_all(&config.dir).map_err(io)?;
        let files = segments(&config.dir).map_err(io)?;
        let mut last = 0;
        for (i, file) in files.iter().enumerate() {
            // A file is named by the first LSN it will hold, so LSNs go on from there even
            // when truncation has left only an empty last file.
            last = last.max(file.first - 1);
            let is_last = i + 1 == files.len();
            match scan(&file.path, |lsn, _| {
                last = last.max(lsn);
                true
            })? {
                Scan::Clean => {}
                Scan::Torn { at, why } if is_last => {
                    tracing::warn!(file = %file.path.display(), offset = at, why, "torn tail record truncated");
                    OpenOptions::new()
                        .write(true)
                        .open(&file.path)
                        .and_then(|f| f.set_len(at).and_then(|()| f.sync_all()))
                        .map_err(io)?;
                }
                Scan::Torn { at, .. } => {
                    return Err(corrupt(&file.path, at, "a record cut short before the last file"))
                }
            }
        }
        // Damaged skip marks refuse to start, as damaged records do.
        open_marks(&config.dir.join(SKIPS_FILE))?;
        let current = match files.last() {
            Some(f) => f.path.clone(),
            None => segment_path(&config.dir, last + 1),
        };
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&current)
            .map_err(io)?;
        let size = file.metadata().map_err(io)?.len();
        let stats = Arc::new(JournalStats::default());
        let (tx, rx) = mpsc::channel();
        let durable = Arc::new(AtomicU64::new(last));
        let writer = Writer::<R> {
            durable: durable.clone(),
            config: config.clone(),
            file,
            size,
            last,
            stats: stats.clone(),
            _records: std::marker::PhantomData,
        };
        let handle = std::thread::Builder::new()
            .name("journal-writer".into())
            .spawn(move || writer.run(rx))
            .map_err(io)?;
        Ok(FileJournal {
            dir: config.dir,
            codec,
            queue: Mutex::new((last, Some(tx))),
            writer: Mutex::new(Some(handle)),
            stats,
            durable,
            skips: Mutex::new(()),
        })
    }

    pub fn stats(&self) -> &JournalStats {
        &self.stats
    }

    /// Drops the skip marks of records before `first` (the first record the journal
    /// still holds), rewriting the file atomically when any go.
    fn forget_marks_before(&self, first: Lsn) {
        let _one = self.skips.lock().unwrap_or_else(|p| p.into_inner());
        let path = self.dir.join(SKIPS_FILE);
        let Ok(marks) = read_marks(&path) else { return };
        if marks.iter().all(|m| m.0 >= first) {
            return;
        }
        let keep: Vec<u8> = marks
            .iter()
            .filter(|m| m.0 >= first)
            .flat_map(|&(l, i)| encode_mark(l, i))
            .collect();
        let tmp = self.dir.join(format!("{SKIPS_FILE}.tmp"));
        let written = std::fs::write(&tmp, &keep)
            .and_then(|()| File::open(&tmp).and_then(|f| f.sync_all()))
            .and_then(|()| std::fs::rename(&tmp, &path))
            .and_then(|()| File::open(&self.dir).and_then(|d| d.sync_all()));
        if let Err(e) = written {
            tracing::warn!(file = %path.display(), error = %e, "cannot drop old skip marks; they stay");
        }
    }

    /// Stops the writer after it has written and synced everything queued.
    pub fn close(&self) {
        self.queue.lock().unwrap_or_else(|p| p.into_inner()).1 = None;
        if let Some(h) = self.writer.lock().unwrap_or_else(|p| p.into_inner()).take() {
            let _ = h.join();
        }
    }
}

impl<R: Send + Sync + 'static> Drop for FileJournal<R> {
    fn drop(&mut self) {
        self.close();
    }
}

struct Writer<R> {
    config: FileJournalConfig,
    file: File,
    size: u64,
    /// The LSN of the last record written.
    last: Lsn,
    stats: Arc<JournalStats>,
    durable: Arc<AtomicU64>,
    _records: std::marker::PhantomData<fn(R)>,
}

impl<R: Send + Sync + 'static> Writer<R> {
    fn run(mut self, rx: Receiver<Pending<R>>) {
        let mut buf = Vec::new();
        let mut batch: VecDeque<Pending<R>> = VecDeque::new();
        while let Ok(first) = rx.recv() {
            batch.push_back(first);
            // Everything queued while the previous batch was being synced joins this one.
            while let Ok(more) = rx.try_recv() {
                batch.push_back(more);
            }
            buf.clear();
            for p in &batch {
                buf.extend_from_slice(&p.bytes);
            }
            let result = self.write(&buf);
            self.stats.batches.fetch_add(1, Ordering::Relaxed);
            match result {
                Ok(()) => {
                    self.last = batch.back().map_or(self.last, |p| p.lsn);
                    self.stats
                        .records
                        .fetch_add(batch.len() as u64, Ordering::Relaxed);
                    for p in batch.drain(..) {
                        crate::latency::JOURNAL_APPEND.record(p.queued.elapsed());
                        (p.on_durable)(Ok(p.lsn), p.record);
                    }
                    self.durable.store(self.last, Ordering::Release);
                    if self.size >= self.config.segment_bytes {
                        if let Err(e) = self.rotate(self.last + 1) {
                            tracing::error!(error = %e, "cannot start a new journal file; staying on the current one");
                        }
                    }
                }
                Err(e) => {
                    self.stats.failures.fetch_add(1, Ordering::Relaxed);
                    tracing::error!(error = %e, records = batch.len(), "journal write failed; the batch is not acknowledged");
                    // Cut back to the last good record so the file stays well formed.
                    if let Err(e) = self.file.set_len(self.size) {
                        tracing::error!(error = %e, "cannot cut the journal file back; starting a new one");
                        let next = batch.back().map_or(self.last + 1, |p| p.lsn + 1);
                        let _ = self.rotate(next);
                    }
                    let reason = format!("the journal could not write or sync: {e}");
                    let failed = batch.back().map_or(0, |p| p.lsn);
                    for p in batch.drain(..) {
                        (p.on_durable)(Err(JournalError::Unavailable(reason.clone())), p.record);
                    }
                    // Nothing of the batch is in the journal, and nothing was delivered.
                    self.durable.fetch_max(failed, Ordering::Release);
                }
            }
        }
    }

    fn write(&mut self, buf: &[u8]) -> io::Result<()> {
        if let Some(fault) = self.config.fault.as_ref().and_then(|f| f()) {
            return Err(fault);
        }
        self.file.write_all(buf)?;
        if self.config.fsync == FsyncPolicy::EveryBatch {
            let started = std::time::Instant::now();
            if let Some(fault) = self.config.fault.as_ref().and_then(|f| f()) {
                return Err(fault);
            }
            self.file.sync_data()?;
            crate::latency::FSYNC.record(started.elapsed());
            self.stats.syncs.fetch_add(1, Ordering::Relaxed);
            self.stats
                .sync_ns
                .fetch_add(started.elapsed().as_nanos() as u64, Ordering::Relaxed);
        }
        self.size += buf.len() as u64;
        Ok(())
    }

    /// Starts a new file whose first record will be `first`.
    fn rotate(&mut self, first: Lsn) -> io::Result<()> {
        let path = segment_path(&self.config.dir, first);
        self.file = OpenOptions::new().create(true).append(true).open(&path)?;
        self.size = self.file.metadata()?.len();
        File::open(&self.config.dir)?.sync_all()?;
        Ok(())
    }
}

impl<R: Send + Sync + 'static> Journal<R> for FileJournal<R> {
    fn append(&self, record: Arc<R>, on_durable: OnDurable<R>) {
        // Encoding and checksumming happen here, on the appender's thread, so that many
        // appenders share the work; only the LSN is written under the lock.
        let mut bytes = Vec::with_capacity(HEADER + self.codec.size_hint(&record));
        bytes.extend_from_slice(&[0; HEADER]);
        self.codec.encode(&record, &mut bytes);
        let len = bytes.len() - HEADER;
        if len > MAX_RECORD {
            // It could be written but never read back: refuse it, nothing appended.
            on_durable(
                Err(JournalError::Unavailable(format!(
                    "a record of {len} bytes is over the journal's limit of {MAX_RECORD}"
                ))),
                record,
            );
            return;
        }
        let payload_crc = crc32c::crc32c(&bytes[HEADER..]);
        let mut queue = self.queue.lock().unwrap_or_else(|p| p.into_inner());
        queue.0 += 1;
        let lsn = queue.0;
        let crc = crate::crc::combine(crc32c::crc32c(&lsn.to_le_bytes()), payload_crc, len);
        bytes[0..4].copy_from_slice(&(len as u32).to_le_bytes());
        bytes[4..8].copy_from_slice(&crc.to_le_bytes());
        bytes[8..16].copy_from_slice(&lsn.to_le_bytes());
        let pending = Pending {
            lsn,
            bytes,
            record,
            on_durable,
            queued: std::time::Instant::now(),
        };
        let sent = match &queue.1 {
            Some(tx) => tx.send(pending).map_err(|e| e.0),
            None => Err(pending),
        };
        if let Err(p) = sent {
            (p.on_durable)(
                Err(JournalError::Unavailable("the journal is closed".into())),
                p.record,
            );
        }
    }

    fn replay(&self, after: Lsn, visit: &mut dyn FnMut(Lsn, &Arc<R>) -> bool) -> Result<(), JournalError> {
        let files = segments(&self.dir).map_err(|e| JournalError::Unavailable(e.to_string()))?;
        // Truncation only drops files whose records every segment has moved past, so a
        // reader asking for older records has lost its snapshot: never replay partially.
        if files.first().is_some_and(|f| f.first > after + 1) {
            return Err(JournalError::NotRetained { from: after + 1 });
        }
        let mut go_on = true;
        let mut failure = None;
        for (i, file) in files.iter().enumerate() {
            // Skip files that end before `after`.
            if files.get(i + 1).is_some_and(|next| next.first <= after + 1) {
                continue;
            }
            scan(&file.path, |lsn, payload| {
                if lsn <= after {
                    return true;
                }
                match self.codec.decode(payload) {
                    Ok(record) => {
                        go_on = visit(lsn, &Arc::new(record));
                        go_on
                    }
                    Err(e) => {
                        failure = Some(JournalError::Corrupt(format!(
                            "record {lsn} in {} does not decode: {e}",
                            file.path.display()
                        )));
                        false
                    }
                }
            })?;
            if let Some(e) = failure.take() {
                return Err(e);
            }
            if !go_on {
                break;
            }
        }
        Ok(())
    }

    fn mark_skipped(&self, marks: &[(Lsn, u32)]) -> Result<(), JournalError> {
        let _one = self.skips.lock().unwrap_or_else(|p| p.into_inner());
        let bytes: Vec<u8> = marks.iter().flat_map(|&(l, i)| encode_mark(l, i)).collect();
        let path = self.dir.join(SKIPS_FILE);
        let created = !path.exists();
        let mut file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| JournalError::Unavailable(format!("{}: {e}", path.display())))?;
        let before = file.metadata().map(|m| m.len());
        file.write_all(&bytes)
            .and_then(|()| file.sync_data())
            .map_err(|e| {
                // Cut a partial write back, so the file stays whole marks.
                if let Ok(len) = before {
                    let _ = file.set_len(len);
                }
                JournalError::Unavailable(format!("{}: {e}", path.display()))
            })?;
        if created {
            // The file's name must be durable too.
            File::open(&self.dir)
                .and_then(|d| d.sync_all())
                .map_err(|e| JournalError::Unavailable(format!("{}: {e}", self.dir.display())))?;
        }
        Ok(())
    }

    fn skipped(&self) -> Result<Vec<(Lsn, u32)>, JournalError> {
        let _one = self.skips.lock().unwrap_or_else(|p| p.into_inner());
        read_marks(&self.dir.join(SKIPS_FILE))
    }

    fn truncate(&self, upto: Lsn) {
        let Ok(files) = segments(&self.dir) else { return };
        // A file can go when the next one starts at or before `upto + 1`: all its records
        // are at most `upto`. The last file always stays.
        for pair in files.windows(2) {
            if pair[1].first <= upto + 1 {
                if let Err(e) = std::fs::remove_file(&pair[0].path) {
                    tracing::warn!(file = %pair[0].path.display(), error = %e, "cannot delete a journal file");
                }
            }
        }
        // Marks go with the records they are about, never before.
        if let Some(first) = segments(&self.dir).ok().and_then(|f| f.first().map(|f| f.first)) {
            self.forget_marks_before(first);
        }
    }

    fn last_lsn(&self) -> Lsn {
        self.queue.lock().unwrap_or_else(|p| p.into_inner()).0
    }

    fn durable_lsn(&self) -> Lsn {
        self.durable.load(Ordering::Acquire)
    }

    fn close(&self) {
        FileJournal::close(self)
    }
}
