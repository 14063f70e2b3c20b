//! The file journal's group commit on this disk: `cargo bench -p tallyman-actors --bench journal`.
//!
//! Appenders (closed loop: each waits for its record to be durable before sending the
//! next) write records the size of a batch of 1,000 usage events (64 KiB) with an
//! `fdatasync` per batch, for a fixed number of records. Prints records/s, MB/s, syncs/s,
//! records per sync and the mean sync time, for 1, 4 and 16 appenders.

use std::sync::atomic::Ordering;
use std::sync::{mpsc, Arc};
use std::time::Instant;

use tallyman_actors::file_journal::{Codec, FileJournal, FileJournalConfig, FsyncPolicy};
use tallyman_actors::journal::Journal;

struct Bytes;
impl Codec<Vec<u8>> for Bytes {
    fn encode(&self, record: &Vec<u8>, out: &mut Vec<u8>) {
        out.extend_from_slice(record);
    }
    fn decode(&self, bytes: &[u8]) -> Result<Vec<u8>, String> {
        Ok(bytes.to_vec())
    }
}

fn run(appenders: usize, records_each: usize) {
    let dir = std::env::temp_dir().join(format!(
        "tallyman-journal-bench-{}-{appenders}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    let journal = Arc::new(
        FileJournal::open(
            FileJournalConfig {
                dir: dir.clone(),
                segment_bytes: 256 << 20,
                fsync: FsyncPolicy::EveryBatch,
                fault: None,
            },
            Arc::new(Bytes),
        )
        .unwrap(),
    );
    let record = Arc::new(vec![7u8; 64 << 10]);
    let started = Instant::now();
    let threads: Vec<_> = (0..appenders)
        .map(|_| {
            let journal = journal.clone();
            let record = record.clone();
            std::thread::spawn(move || {
                for _ in 0..records_each {
                    let (tx, rx) = mpsc::channel();
                    journal.append(
                        record.clone(),
                        Box::new(move |r, _| {
                            tx.send(r.is_ok()).unwrap();
                        }),
                    );
                    assert!(rx.recv().unwrap());
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let secs = started.elapsed().as_secs_f64();
    let s = journal.stats();
    let records = s.records.load(Ordering::Relaxed) as f64;
    let syncs = s.syncs.load(Ordering::Relaxed) as f64;
    println!(
        "{appenders:>2} appenders: {:.0} records/s ({:.0} MB/s; as batches of 1000 events: {:.0} events/s), \
         {:.0} syncs/s, {:.1} records per sync, mean sync {:.2} ms",
        records / secs,
        records * 65536.0 / secs / 1e6,
        records * 1000.0 / secs,
        syncs / secs,
        records / syncs,
        s.sync_ns.load(Ordering::Relaxed) as f64 / syncs / 1e6
    );
    drop(journal);
    let _ = std::fs::remove_dir_all(&dir);
}

fn main() {
    run(1, 500);
    run(4, 500);
    run(16, 200);
}
