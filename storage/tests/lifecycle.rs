//! File lifetimes and background behaviour: tables stay on disk while a reader
//! still needs them, compressed tables read back, the interval fsync thread
//! reports failures, and writers stall instead of letting L0 grow without bound.

use std::ops::Bound;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use storage::io::{FaultInjector, IoOp};
use storage::{Compression, Db, Error, Options, ReadOptions, SyncPolicy};

fn tables_on_disk(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .expect("list")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".sst"))
        .collect();
    v.sort();
    v
}

#[test]
fn compacted_tables_outlive_the_iterators_reading_them() {
    let d = tempfile::tempdir().expect("tempdir");
    // No background compaction: only the explicit one below replaces tables.
    let opts = Options {
        l0_compaction_trigger: 100,
        l0_slowdown_trigger: 100,
        l0_stop_trigger: 100,
        ..Options::small_for_tests()
    };
    let db = Db::open(d.path(), opts).expect("open");
    for i in 0..3000u32 {
        db.put(format!("k{i:05}"), format!("v{i}")).expect("put");
    }
    db.flush().expect("flush");
    let before = tables_on_disk(d.path());
    assert!(before.len() > 1, "expected several L0 tables: {before:?}");
    // The iterator pins the current version: its tables must stay.
    let mut it = db
        .range(
            Bound::Unbounded,
            Bound::Unbounded,
            false,
            &ReadOptions::default(),
        )
        .expect("iterator");
    let first = it.next().expect("an entry").expect("ok");
    assert_eq!(first.0, b"k00000");
    db.compact_range(None, None).expect("compact");
    let during = tables_on_disk(d.path());
    for t in &before {
        assert!(
            during.contains(t),
            "{t} deleted while an iterator still reads it"
        );
    }
    // The iterator still reads every entry from the old files.
    assert_eq!(it.count() + 1, 3000);
    // Once it is gone, the replaced tables are deleted.
    let after = tables_on_disk(d.path());
    let live: Vec<String> = db
        .tables()
        .iter()
        .map(|(_, r)| format!("{:06}.sst", r.number))
        .collect();
    assert_eq!(
        after,
        {
            let mut l = live.clone();
            l.sort();
            l
        },
        "obsolete tables left behind"
    );
    assert!(
        before.iter().any(|t| !after.contains(t)),
        "compaction replaced nothing"
    );
}

#[test]
fn lz4_compressed_tables_read_back_and_take_less_space() {
    let d1 = tempfile::tempdir().expect("tempdir");
    let d2 = tempfile::tempdir().expect("tempdir");
    let mut sizes = Vec::new();
    for (dir, compression) in [
        (d1.path(), Compression::None),
        (d2.path(), Compression::Lz4),
    ] {
        let db = Db::open(
            dir,
            Options {
                compression,
                ..Options::small_for_tests()
            },
        )
        .expect("open");
        for i in 0..5000u32 {
            // Compressible values.
            db.put(
                format!("key{i:06}"),
                format!("value {i} {}", "abc".repeat(20)),
            )
            .expect("put");
        }
        db.compact_range(None, None).expect("compact");
        db.verify().expect("verify");
        for i in (0..5000u32).step_by(37) {
            assert_eq!(
                db.get(format!("key{i:06}")).expect("get"),
                Some(format!("value {i} {}", "abc".repeat(20)).into_bytes())
            );
        }
        sizes.push(db.stats().live_bytes());
    }
    assert!(sizes[1] * 2 < sizes[0], "lz4 tables not smaller: {sizes:?}");
}

#[derive(Debug, Default)]
struct FailSyncs(AtomicBool);

impl FaultInjector for FailSyncs {
    fn before(&self, op: IoOp, path: &Path) -> std::io::Result<()> {
        if self.0.load(Ordering::SeqCst)
            && op == IoOp::Sync
            && path.to_string_lossy().ends_with(".log")
        {
            return Err(std::io::Error::other("injected fsync failure"));
        }
        Ok(())
    }
}

#[test]
fn the_interval_sync_thread_fsyncs_and_reports_failures() {
    let d = tempfile::tempdir().expect("tempdir");
    let fault = Arc::new(FailSyncs::default());
    let db = Db::open(
        d.path(),
        Options {
            sync_policy: SyncPolicy::Interval(Duration::from_millis(20)),
            fault_injector: Some(fault.clone()),
            ..Options::small_for_tests()
        },
    )
    .expect("open");
    db.put(b"a", b"1").expect("put");
    fault.0.store(true, Ordering::SeqCst);
    // Within a few intervals the background fsync fails and writes are refused.
    let mut refused = false;
    for _ in 0..200 {
        std::thread::sleep(Duration::from_millis(10));
        if let Err(e) = db.put(b"b", b"2") {
            assert!(matches!(e, Error::Background { .. }), "{e:?}");
            refused = true;
            break;
        }
    }
    assert!(
        refused,
        "the interval fsync never ran or its failure was lost"
    );
    assert_eq!(db.get(b"a").expect("reads still work"), Some(b"1".to_vec()));
}

#[test]
fn writers_stall_rather_than_let_l0_grow_without_bound() {
    let d = tempfile::tempdir().expect("tempdir");
    let opts = Options {
        write_buffer_bytes: 4096,
        l0_compaction_trigger: 2,
        l0_slowdown_trigger: 3,
        l0_stop_trigger: 4,
        ..Options::small_for_tests()
    };
    let db = Db::open(d.path(), opts.clone()).expect("open");
    let mut max_l0 = 0;
    for i in 0..20_000u32 {
        db.put(format!("k{:06}", (i * 7919) % 20_000), [7u8; 40])
            .expect("put");
        if i % 500 == 0 {
            max_l0 = max_l0.max(db.stats().levels[0].files);
        }
    }
    let s = db.stats();
    assert!(s.stall_micros > 0, "writers never stalled: {s:?}");
    // Bounded by the stop trigger plus the memtables that may be flushing.
    assert!(
        max_l0 <= opts.l0_stop_trigger + opts.max_immutable_memtables + 1,
        "L0 reached {max_l0} files"
    );
}
