//! The file journal with real files: replay after reopening, group commit, a torn tail,
//! a damaged record, disk faults, truncation.

use std::io;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::Arc;

use tallyman_actors::file_journal::{Codec, FaultHook, FileJournal, FileJournalConfig, FsyncPolicy};
use tallyman_actors::journal::{Journal, JournalError, Lsn};

struct Text;
impl Codec<String> for Text {
    fn encode(&self, record: &String, out: &mut Vec<u8>) {
        out.extend_from_slice(record.as_bytes());
    }
    fn decode(&self, bytes: &[u8]) -> Result<String, String> {
        String::from_utf8(bytes.to_vec()).map_err(|e| e.to_string())
    }
}

struct Dir(PathBuf);
impl Dir {
    fn new(tag: &str) -> Dir {
        let p = std::env::temp_dir().join(format!("tallyman-journal-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        Dir(p)
    }
    fn files(&self) -> Vec<PathBuf> {
        let mut f: Vec<PathBuf> = std::fs::read_dir(&self.0)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        f.sort();
        f
    }
}
impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn open(
    dir: &Dir,
    segment_bytes: u64,
    fault: Option<FaultHook>,
) -> Result<FileJournal<String>, JournalError> {
    FileJournal::open(
        FileJournalConfig {
            dir: dir.0.clone(),
            segment_bytes,
            fsync: FsyncPolicy::EveryBatch,
            fault,
        },
        Arc::new(Text),
    )
}

/// Appends and waits until durable; the LSN or the error.
fn append(j: &FileJournal<String>, text: &str) -> Result<Lsn, JournalError> {
    let (tx, rx) = mpsc::channel();
    j.append(
        Arc::new(text.to_string()),
        Box::new(move |r, _| {
            tx.send(r).unwrap();
        }),
    );
    rx.recv().unwrap()
}

fn all(j: &FileJournal<String>, after: Lsn) -> Vec<(Lsn, String)> {
    let mut out = Vec::new();
    j.replay(after, &mut |lsn, r| {
        out.push((lsn, r.to_string()));
        true
    })
    .unwrap();
    out
}

#[test]
fn records_survive_a_reopen_in_order_across_files() {
    let dir = Dir::new("reopen");
    {
        let j = open(&dir, 64, None).unwrap();
        for i in 0..20 {
            assert_eq!(append(&j, &format!("record {i}")).unwrap(), i + 1);
        }
    }
    assert!(dir.files().len() > 1, "small files rotate");
    let j = open(&dir, 64, None).unwrap();
    let records = all(&j, 0);
    assert_eq!(records.len(), 20);
    assert_eq!(records[7], (8, "record 7".to_string()));
    assert_eq!(all(&j, 15).len(), 5, "replay starts after the LSN asked for");
    assert_eq!(append(&j, "after").unwrap(), 21, "LSNs go on after a reopen");
    // Truncation drops whole files whose records are all covered: with three records a
    // file, truncating up to LSN 10 drops the files of 1–3, 4–6 and 7–9 and keeps 10–12.
    j.truncate(10);
    let left = all(&j, 9);
    assert_eq!(left.first().unwrap().0, 10, "{:?}", dir.files());
    assert_eq!(left.last().unwrap().1, "after");
    // Asking for what was dropped is an error, never a partial replay.
    assert_eq!(
        j.replay(0, &mut |_, _| true),
        Err(JournalError::NotRetained { from: 1 })
    );
}

#[test]
fn lsns_go_on_after_truncation_left_only_an_empty_file() {
    let dir = Dir::new("empty-last");
    // One-byte files: every record is followed by a new, empty file.
    let j = open(&dir, 1, None).unwrap();
    for i in 0..5 {
        append(&j, &format!("record {i}")).unwrap();
    }
    // Closing waits for the writer, which starts a new file after each record.
    drop(j);
    let j = open(&dir, 1, None).unwrap();
    j.truncate(5);
    drop(j);
    assert_eq!(dir.files().len(), 1, "only the empty last file is left");
    let j = open(&dir, 1, None).unwrap();
    assert_eq!(j.last_lsn(), 5);
    assert_eq!(
        append(&j, "next").unwrap(),
        6,
        "never an LSN a snapshot has already covered"
    );
}

#[test]
fn concurrent_appends_share_syncs() {
    let dir = Dir::new("group");
    let j = Arc::new(open(&dir, 1 << 30, None).unwrap());
    let threads: Vec<_> = (0..8)
        .map(|t| {
            let j = j.clone();
            std::thread::spawn(move || {
                for i in 0..200 {
                    append(&j, &format!("{t}-{i}")).unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let s = j.stats();
    let (records, syncs) = (s.records.load(Ordering::Relaxed), s.syncs.load(Ordering::Relaxed));
    assert_eq!(records, 1600);
    assert!(
        syncs < records,
        "group commit: {syncs} syncs for {records} records"
    );
    let lsns: Vec<Lsn> = all(&j, 0).iter().map(|r| r.0).collect();
    assert_eq!(
        lsns,
        (1..=1600).collect::<Vec<_>>(),
        "LSNs are dense and in order"
    );
}

#[test]
fn a_torn_tail_is_truncated_and_logged() {
    let dir = Dir::new("torn");
    {
        let j = open(&dir, 1 << 30, None).unwrap();
        for i in 0..5 {
            append(&j, &format!("record {i}")).unwrap();
        }
    }
    // Cut the last record midway, as a crash during its write would.
    let file = dir.files().pop().unwrap();
    let len = std::fs::metadata(&file).unwrap().len();
    let f = std::fs::OpenOptions::new().write(true).open(&file).unwrap();
    f.set_len(len - 3).unwrap();
    let j = open(&dir, 1 << 30, None).unwrap();
    let records = all(&j, 0);
    assert_eq!(records.len(), 4, "the torn record is gone, the others stay");
    assert_eq!(append(&j, "next").unwrap(), 5, "its LSN is free again");
    assert_eq!(all(&j, 0).len(), 5);
}

#[test]
fn a_damaged_record_before_the_tail_refuses_to_open() {
    let dir = Dir::new("flip");
    {
        let j = open(&dir, 1 << 30, None).unwrap();
        for i in 0..5 {
            append(&j, &format!("record {i}")).unwrap();
        }
    }
    let file = dir.files().pop().unwrap();
    let mut bytes = std::fs::read(&file).unwrap();
    // Record 2 starts after two records of 16 + 8 bytes; flip a bit in its payload.
    bytes[2 * 24 + 16 + 3] ^= 0x10;
    std::fs::write(&file, &bytes).unwrap();
    let err = open(&dir, 1 << 30, None).err().expect("refused");
    let text = err.to_string();
    assert!(
        text.contains("checksum mismatch") && text.contains("offset 48"),
        "{text}"
    );
    assert!(text.contains("Nothing was skipped"), "{text}");
}

#[test]
fn a_failing_disk_acknowledges_nothing_and_recovers() {
    let dir = Dir::new("fault");
    let failing = Arc::new(AtomicBool::new(false));
    let f = failing.clone();
    let fault: FaultHook = Arc::new(move || {
        f.load(Ordering::SeqCst)
            .then(|| io::Error::other("no space left on device (injected)"))
    });
    let j = open(&dir, 1 << 30, Some(fault)).unwrap();
    append(&j, "before").unwrap();
    failing.store(true, Ordering::SeqCst);
    let err = append(&j, "lost").unwrap_err();
    assert!(err.to_string().contains("no space left"), "{err}");
    failing.store(false, Ordering::SeqCst);
    append(&j, "after").unwrap();
    let texts: Vec<String> = all(&j, 0).into_iter().map(|r| r.1).collect();
    assert_eq!(
        texts,
        ["before", "after"],
        "the failed record was never acknowledged nor kept"
    );
    drop(j);
    let j = open(&dir, 1 << 30, None).unwrap();
    assert_eq!(all(&j, 0).len(), 2);
}

#[test]
fn skip_marks_survive_a_reopen_and_go_with_truncation() {
    let dir = Dir::new("marks");
    {
        // Small files: three records each (LSNs 1–3, 4–6).
        let j = open(&dir, 64, None).unwrap();
        for i in 0..6 {
            append(&j, &format!("record {i}")).unwrap();
        }
        j.mark_skipped(&[(2, 0), (2, 3)]).unwrap();
        j.mark_skipped(&[(5, 1)]).unwrap();
    }
    let marks = dir.0.join("skipped.marks");
    let j = open(&dir, 64, None).unwrap();
    assert_eq!(j.skipped().unwrap(), [(2, 0), (2, 3), (5, 1)]);
    // Truncating up to LSN 2 keeps the file of 1–3 (3 is still needed): the marks stay.
    j.truncate(2);
    assert_eq!(j.skipped().unwrap(), [(2, 0), (2, 3), (5, 1)]);
    // Up to 3, the file of 1–3 goes, and the marks about its records with it.
    j.truncate(3);
    assert_eq!(j.skipped().unwrap(), [(5, 1)]);
    drop(j);
    // A mark torn by a crash mid-append is cut off at the next start, so marks appended
    // after it read back whole.
    let bytes = std::fs::read(&marks).unwrap();
    std::fs::write(&marks, [&bytes[..], &bytes[..7]].concat()).unwrap();
    let j = open(&dir, 64, None).unwrap();
    assert_eq!(j.skipped().unwrap(), [(5, 1)]);
    j.mark_skipped(&[(6, 0)]).unwrap();
    drop(j);
    let j = open(&dir, 64, None).unwrap();
    assert_eq!(j.skipped().unwrap(), [(5, 1), (6, 0)]);
    drop(j);
    // A damaged mark before the end refuses to open, naming the file and offset.
    let mut bytes = std::fs::read(&marks).unwrap();
    bytes[3] ^= 0x40;
    std::fs::write(&marks, &bytes).unwrap();
    let err = open(&dir, 64, None).err().unwrap();
    assert!(
        matches!(&err, JournalError::Corrupt(m) if m.contains("skipped.marks") && m.contains("offset 0")),
        "{err:?}"
    );
}
