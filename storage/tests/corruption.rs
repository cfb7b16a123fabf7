//! Flipped bytes on disk give `Error::Corruption` naming the file and offset:
//! in a data block, the index block, the footer, the manifest and the middle of
//! the WAL. Never a panic, never wrong data.

use std::ops::Bound;
use std::path::{Path, PathBuf};

use storage::{Db, Error, Options, ReadOptions};

fn opts() -> Options {
    Options {
        write_buffer_bytes: 1 << 20,
        l0_compaction_trigger: 100,
        l0_slowdown_trigger: 100,
        l0_stop_trigger: 100,
        ..Options::small_for_tests()
    }
}

fn fill(db: &Db, n: u32) {
    for i in 0..n {
        db.put(
            format!("key{i:06}"),
            format!("value-{i}-{}", "x".repeat(40)),
        )
        .expect("put");
    }
}

fn files_with(dir: &Path, suffix: &str, prefix: &str) -> Vec<PathBuf> {
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .expect("list")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            let n = p
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            n.ends_with(suffix) && n.starts_with(prefix)
        })
        .collect();
    v.sort();
    v
}

fn flip(path: &Path, offset: u64) {
    let mut b = std::fs::read(path).expect("read");
    b[offset as usize] ^= 0x5a;
    std::fs::write(path, b).expect("write");
}

fn footer_field(path: &Path, i: usize) -> u64 {
    let b = std::fs::read(path).expect("read");
    let f = &b[b.len() - 56..];
    u64::from_le_bytes(f[i * 8..i * 8 + 8].try_into().expect("8 bytes"))
}

fn assert_corruption(r: Result<impl std::fmt::Debug, Error>, file: &Path, offset: u64) {
    match r {
        Err(Error::Corruption {
            file: f,
            offset: o,
            reason,
        }) => {
            assert_eq!(f, file, "wrong file ({reason})");
            assert_eq!(o, offset, "wrong offset ({reason})");
        }
        other => panic!(
            "expected corruption in {} at {offset}, got {other:?}",
            file.display()
        ),
    }
}

/// One flushed table of 2000 keys; returns its path.
fn one_table(dir: &Path) -> PathBuf {
    let db = Db::open(dir, opts()).expect("open");
    fill(&db, 2000);
    db.flush().expect("flush");
    drop(db);
    let t = files_with(dir, ".sst", "");
    assert_eq!(t.len(), 1, "{t:?}");
    t[0].clone()
}

#[test]
fn a_flipped_data_block_byte_is_corruption_at_that_block() {
    let d = tempfile::tempdir().expect("tempdir");
    let sst = one_table(d.path());
    flip(&sst, 20); // inside the first data block (offset 0)
    let db = Db::open(d.path(), opts()).expect("open reads only footer, index and filter");
    assert_corruption(db.get(b"key000000"), &sst, 0);
    // A scan over the block fails the same way instead of returning data.
    // (The error may surface when the iterator seeks or on its first item.)
    let first = db
        .range(
            Bound::Unbounded,
            Bound::Unbounded,
            false,
            &ReadOptions::default(),
        )
        .and_then(|mut it| it.next().expect("an item"));
    assert_corruption(first, &sst, 0);
    assert_corruption(db.verify(), &sst, 0);
    // Keys in intact blocks still read correctly.
    assert_eq!(
        db.get(b"key001999").expect("intact block"),
        Some(format!("value-1999-{}", "x".repeat(40)).into_bytes())
    );
}

#[test]
fn a_flipped_index_byte_is_corruption_at_the_index() {
    let d = tempfile::tempdir().expect("tempdir");
    let sst = one_table(d.path());
    let index_off = footer_field(&sst, 2);
    flip(&sst, index_off + 3);
    assert_corruption(Db::open(d.path(), opts()), &sst, index_off);
}

#[test]
fn a_flipped_footer_byte_is_corruption_at_the_footer() {
    let d = tempfile::tempdir().expect("tempdir");
    let sst = one_table(d.path());
    let len = std::fs::metadata(&sst).expect("stat").len();
    flip(&sst, len - 56 + 5); // a handle byte, covered by the footer checksum
    assert_corruption(Db::open(d.path(), opts()), &sst, len - 56);
    let d2 = tempfile::tempdir().expect("tempdir");
    let sst2 = one_table(d2.path());
    flip(&sst2, len - 3); // the magic number
    assert_corruption(Db::open(d2.path(), opts()), &sst2, len - 8);
}

#[test]
fn a_flipped_manifest_byte_is_corruption_in_the_manifest() {
    let d = tempfile::tempdir().expect("tempdir");
    let db = Db::open(d.path(), opts()).expect("open");
    for round in 0..3 {
        fill(&db, 100 + round);
        db.flush().expect("flush");
    }
    drop(db);
    let m = files_with(d.path(), "", "MANIFEST-");
    assert_eq!(m.len(), 1, "{m:?}");
    flip(&m[0], 12); // inside the first record's payload; more records follow
    assert_corruption(Db::open(d.path(), opts()), &m[0], 0);
}

#[test]
fn a_flipped_byte_in_the_middle_of_the_wal_is_corruption_with_its_offset() {
    let d = tempfile::tempdir().expect("tempdir");
    let db = Db::open(d.path(), opts()).expect("open");
    fill(&db, 50); // stays in the memtable and the WAL
    drop(db);
    let wal = files_with(d.path(), ".log", "");
    assert_eq!(wal.len(), 1, "{wal:?}");
    let bytes = std::fs::read(&wal[0]).expect("read");
    let first_len = u32::from_le_bytes(bytes[0..4].try_into().expect("4 bytes")) as u64;
    let second = 8 + first_len;
    flip(&wal[0], second + 8 + 2);
    assert_corruption(Db::open(d.path(), opts()), &wal[0], second);
}

#[test]
fn random_flips_never_panic_and_never_return_wrong_values() {
    let d = tempfile::tempdir().expect("tempdir");
    let sst = one_table(d.path());
    let pristine = std::fs::read(&sst).expect("read");
    let mut state = 0x2545_f491_4f6c_dd1du64;
    for _ in 0..150 {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let mut b = pristine.clone();
        let off = (state % b.len() as u64) as usize;
        b[off] ^= 1 << ((state >> 60) % 8);
        std::fs::write(&sst, &b).expect("write");
        let Ok(db) = Db::open(d.path(), opts()) else {
            continue; // refused with an error: fine
        };
        for i in (0..2000).step_by(97) {
            let k = format!("key{i:06}");
            match db.get(&k) {
                Ok(Some(v)) => assert_eq!(
                    v,
                    format!("value-{i}-{}", "x".repeat(40)).into_bytes(),
                    "wrong value for {k} after flipping byte {off}"
                ),
                Ok(None) => panic!("{k} vanished without an error after flipping byte {off}"),
                Err(e) => assert!(e.is_corruption(), "{e}"),
            }
        }
    }
}
