//! File snapshots with real files: the round trip, keeping the newest two, falling back
//! from a damaged snapshot to the older one, refusing when none can be read, and the
//! leftovers of a crash mid-write.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use tallyman_actors::file_snapshots::{FileSnapshots, FileSnapshotsConfig, SnapshotCodec};
use tallyman_actors::snapshot::SnapshotStore;
use tallyman_actors::Entity;

/// A number per key.
#[derive(Debug)]
struct Value(u64);

impl Entity for Value {
    type Key = u64;
    type Command = u64;
    type Reply = ();
    type Query = ();
    type Answer = u64;
    type Snapshot = u64;

    fn shard(key: &u64) -> u64 {
        *key
    }
    fn create(_: &u64) -> Self {
        Value(0)
    }
    fn apply(&mut self, n: &u64) {
        self.0 += n;
    }
    fn query(&self, _: &()) -> u64 {
        self.0
    }
    fn snapshot(&self) -> u64 {
        self.0
    }
    fn restore(s: &u64) -> Self {
        Value(*s)
    }
}

struct Le;
impl SnapshotCodec<Value> for Le {
    fn encode(&self, key: &u64, entity: &Value, out: &mut Vec<u8>) {
        out.extend_from_slice(&key.to_le_bytes());
        out.extend_from_slice(&entity.0.to_le_bytes());
    }
    fn decode(&self, bytes: &[u8]) -> Result<(u64, u64), String> {
        if bytes.len() != 16 {
            return Err(format!("{} bytes, not 16", bytes.len()));
        }
        let k = u64::from_le_bytes(bytes[..8].try_into().unwrap());
        let v = u64::from_le_bytes(bytes[8..].try_into().unwrap());
        Ok((k, v))
    }
}

struct Dir(PathBuf);
impl Dir {
    fn new(tag: &str) -> Dir {
        let p = std::env::temp_dir().join(format!("tallyman-snapshots-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        Dir(p)
    }
    fn files(&self) -> Vec<String> {
        let mut f: Vec<String> = std::fs::read_dir(&self.0)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
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

fn open(dir: &Dir) -> FileSnapshots<Value> {
    FileSnapshots::open(
        FileSnapshotsConfig {
            dir: dir.0.clone(),
            keep: 2,
            fsync: true,
        },
        Arc::new(Le),
    )
    .unwrap()
}

fn save(store: &FileSnapshots<Value>, segment: u32, lsn: u64, values: &[(u64, u64)]) -> u64 {
    let entities: HashMap<u64, Value> = values.iter().map(|&(k, v)| (k, Value(v))).collect();
    store.save(segment, lsn, &mut entities.iter()).unwrap()
}

fn load(store: &FileSnapshots<Value>, segment: u32) -> Option<(u64, Vec<(u64, u64)>)> {
    store.load(segment).unwrap().map(|s| {
        let mut v: Vec<(u64, u64)> = s.entities.iter().map(|(k, v)| (*k, *v)).collect();
        v.sort();
        (s.lsn, v)
    })
}

fn flip_byte(path: PathBuf, at: usize) {
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[at] ^= 0x20;
    std::fs::write(&path, bytes).unwrap();
}

#[test]
fn a_snapshot_reads_back_as_written_and_segments_stay_apart() {
    let dir = Dir::new("roundtrip");
    let store = open(&dir);
    assert_eq!(load(&store, 0), None, "no snapshot yet");
    assert_eq!(save(&store, 0, 7, &[(1, 10), (2, 20)]), 7);
    assert_eq!(save(&store, 1, 9, &[(3, 30)]), 9);
    assert_eq!(save(&store, 2, 9, &[]), 9, "an empty segment has a snapshot too");
    // Reopening (a restart) finds them.
    let store = open(&dir);
    assert_eq!(load(&store, 0), Some((7, vec![(1, 10), (2, 20)])));
    assert_eq!(load(&store, 1), Some((9, vec![(3, 30)])));
    assert_eq!(load(&store, 2), Some((9, vec![])));
}

#[test]
fn the_newest_two_are_kept_and_the_journal_must_cover_the_older() {
    let dir = Dir::new("keep");
    let store = open(&dir);
    assert_eq!(save(&store, 0, 10, &[(1, 1)]), 10);
    // Two kept: the journal must hold what follows the older of them.
    assert_eq!(save(&store, 0, 20, &[(1, 2)]), 10);
    assert_eq!(save(&store, 0, 30, &[(1, 3)]), 20);
    assert_eq!(
        dir.files(),
        vec![
            "00000-00000000000000000020.snap",
            "00000-00000000000000000030.snap"
        ]
    );
    assert_eq!(load(&store, 0), Some((30, vec![(1, 3)])));
}

#[test]
fn a_damaged_newest_snapshot_falls_back_to_the_older_one() {
    let dir = Dir::new("fallback");
    let store = open(&dir);
    save(&store, 0, 10, &[(1, 1), (2, 2)]);
    save(&store, 0, 20, &[(1, 5), (2, 6)]);
    // A bit flip inside the first entity of the newest snapshot.
    flip_byte(dir.0.join("00000-00000000000000000020.snap"), 8 + 12 + 4 + 3);
    assert_eq!(load(&store, 0), Some((10, vec![(1, 1), (2, 2)])));

    // A snapshot cut short (its rename happened, its data did not all reach the disk)
    // is damaged too.
    save(&store, 0, 30, &[(1, 9)]);
    let newest = dir.0.join("00000-00000000000000000030.snap");
    let len = std::fs::metadata(&newest).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&newest)
        .unwrap()
        .set_len(len - 3)
        .unwrap();
    // The older kept one is now the one at LSN 20 (damaged), then none: refused, naming
    // both files, never an empty state.
    let err = store.load(0).err().expect("no snapshot can be read");
    assert!(err.contains("00000-00000000000000000030.snap"), "{err}");
    assert!(err.contains("00000-00000000000000000020.snap"), "{err}");
    assert!(err.contains("checksum"), "{err}");
}

#[test]
fn a_write_interrupted_by_a_crash_leaves_the_previous_snapshot_in_force() {
    let dir = Dir::new("crash");
    let store = open(&dir);
    save(&store, 3, 10, &[(1, 1)]);
    // What a crash between writing and renaming leaves behind.
    std::fs::write(
        dir.0.join("00003-00000000000000000020.snap.tmp"),
        b"TLYSNAP1 half",
    )
    .unwrap();
    let store = open(&dir);
    assert_eq!(
        dir.files(),
        vec!["00003-00000000000000000010.snap"],
        "the leftover is removed"
    );
    assert_eq!(load(&store, 3), Some((10, vec![(1, 1)])));
}
