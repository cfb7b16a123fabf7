//! Failed writes and fsyncs, injected through the engine's file layer: the
//! error reaches the caller, later writes are refused rather than appended after
//! a hole, reads keep working, and a reopen finds every acknowledged write.

use std::collections::BTreeMap;
use std::io;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};

use storage::io::{FaultInjector, IoOp};
use storage::{Db, Error, Options, WriteOptions};

/// Fails `op` on paths containing `needle`, after `successes` more matching calls,
/// once armed. Every later matching call fails too (a dead disk stays dead).
#[derive(Debug)]
struct Fault {
    op: IoOp,
    needle: &'static str,
    successes: AtomicI64,
    armed: AtomicBool,
    fired: AtomicBool,
    /// Only on this thread (the engine names its threads `lsm-flush`,
    /// `lsm-compact`, `lsm-wal-sync`).
    thread: Option<&'static str>,
}

impl Fault {
    fn new(op: IoOp, needle: &'static str, successes: i64) -> Arc<Fault> {
        Arc::new(Fault {
            op,
            needle,
            successes: AtomicI64::new(successes),
            armed: AtomicBool::new(false),
            fired: AtomicBool::new(false),
            thread: None,
        })
    }
    fn on_thread(op: IoOp, needle: &'static str, thread: &'static str) -> Arc<Fault> {
        let mut f = Arc::into_inner(Fault::new(op, needle, 0)).expect("sole owner");
        f.thread = Some(thread);
        Arc::new(f)
    }
    fn arm(&self) {
        self.armed.store(true, Ordering::SeqCst);
    }
}

impl FaultInjector for Fault {
    fn before(&self, op: IoOp, path: &Path) -> io::Result<()> {
        if self.armed.load(Ordering::SeqCst)
            && op == self.op
            && path.to_string_lossy().contains(self.needle)
            && self
                .thread
                .is_none_or(|t| std::thread::current().name() == Some(t))
            && self.successes.fetch_sub(1, Ordering::SeqCst) <= 0
        {
            self.fired.store(true, Ordering::SeqCst);
            return Err(io::Error::other(format!("injected {op:?} failure")));
        }
        Ok(())
    }
}

fn opts(fault: Option<Arc<Fault>>) -> Options {
    Options {
        fault_injector: fault.map(|f| f as Arc<dyn FaultInjector>),
        ..Options::small_for_tests()
    }
}

fn k(i: u32) -> Vec<u8> {
    format!("key{i:06}").into_bytes()
}
fn v(i: u32) -> Vec<u8> {
    format!("value{i}-{}", "y".repeat(30)).into_bytes()
}

/// Reopens without faults; every acknowledged key must hold its value, and
/// `unknown` keys (writes that failed) may hold either outcome.
fn reopen_and_check(dir: &Path, acked: &BTreeMap<Vec<u8>, Vec<u8>>, unknown: &[Vec<u8>]) {
    let db = Db::open(dir, opts(None)).expect("reopen without faults");
    for (key, val) in acked {
        if unknown.contains(key) {
            continue;
        }
        assert_eq!(
            db.get(key).expect("get").as_ref(),
            Some(val),
            "lost {key:?}"
        );
    }
    db.verify().expect("tables verify after reopen");
}

/// Opens a database with `fault` (not yet armed) and writes `n` acknowledged keys.
fn open_with_acked(dir: &Path, fault: &Arc<Fault>, n: u32) -> (Db, BTreeMap<Vec<u8>, Vec<u8>>) {
    let db = Db::open(dir, opts(Some(fault.clone()))).expect("open");
    let mut acked = BTreeMap::new();
    for i in 0..n {
        db.put(k(i), v(i)).expect("put");
        acked.insert(k(i), v(i));
    }
    (db, acked)
}

#[test]
fn a_failed_wal_fsync_reaches_the_syncing_writer() {
    let d = tempfile::tempdir().expect("tempdir");
    let fault = Fault::new(IoOp::Sync, ".log", 0);
    let (db, acked) = open_with_acked(d.path(), &fault, 100);
    fault.arm();
    let mut b = storage::WriteBatch::new();
    b.put(k(1000), v(1000));
    let err = db
        .write(b, &WriteOptions { sync: true })
        .expect_err("fsync fails");
    assert!(matches!(&err, Error::Io { op: "fsync", .. }), "{err:?}");
    // No write may land after a WAL that failed mid-way.
    let err = db
        .put(k(1001), v(1001))
        .expect_err("writes are refused after a WAL failure");
    assert!(matches!(err, Error::Background { .. }), "{err:?}");
    // Reads keep working.
    assert_eq!(db.get(k(5)).expect("get"), Some(v(5)));
    assert!(fault.fired.load(Ordering::SeqCst));
    drop(db);
    reopen_and_check(d.path(), &acked, &[k(1000)]);
}

#[test]
fn a_failed_wal_write_loses_only_the_failed_write() {
    let d = tempfile::tempdir().expect("tempdir");
    let fault = Fault::new(IoOp::Write, ".log", 0);
    let (db, acked) = open_with_acked(d.path(), &fault, 100);
    fault.arm();
    let err = db.put(k(500), v(500)).expect_err("WAL write fails");
    assert!(matches!(&err, Error::Io { op: "write", .. }), "{err:?}");
    assert!(db.put(k(501), v(501)).is_err());
    drop(db);
    reopen_and_check(d.path(), &acked, &[]);
    let db = Db::open(d.path(), opts(None)).expect("reopen");
    assert_eq!(
        db.get(k(500)).expect("get"),
        None,
        "a write whose WAL append failed appeared"
    );
}

#[test]
fn a_failed_flush_is_reported_and_the_wal_still_holds_the_data() {
    let d = tempfile::tempdir().expect("tempdir");
    let fault = Fault::new(IoOp::Create, ".sst", 0);
    let (db, acked) = open_with_acked(d.path(), &fault, 50);
    fault.arm();
    let err = db.flush().expect_err("flush cannot create its table");
    assert!(
        matches!(err, Error::Background { job: "flush", .. }),
        "{err:?}"
    );
    assert!(matches!(
        db.put(k(99), v(99)),
        Err(Error::Background { .. })
    ));
    assert_eq!(db.get(k(7)).expect("reads still work"), Some(v(7)));
    drop(db);
    reopen_and_check(d.path(), &acked, &[]);
}

#[test]
fn a_failed_manifest_fsync_during_flush_keeps_the_old_version() {
    let d = tempfile::tempdir().expect("tempdir");
    let fault = Fault::new(IoOp::Sync, "MANIFEST", 0);
    let (db, acked) = open_with_acked(d.path(), &fault, 50);
    fault.arm();
    assert!(
        db.flush().is_err(),
        "flush must report the manifest failure"
    );
    drop(db);
    reopen_and_check(d.path(), &acked, &[]);
}

#[test]
fn a_failing_disk_during_compaction_stops_writes_and_loses_nothing() {
    let d = tempfile::tempdir().expect("tempdir");
    // Flushes succeed; every table write by the compaction thread fails.
    let fault = Fault::on_thread(IoOp::Write, ".sst", "lsm-compact");
    let db = Db::open(d.path(), opts(Some(fault.clone()))).expect("open");
    fault.arm();
    let mut acked = BTreeMap::new();
    let mut failed_at = None;
    for i in 0..20_000 {
        match db.put(k(i % 3000), v(i)) {
            Ok(()) => {
                acked.insert(k(i % 3000), v(i));
            }
            Err(e) => {
                assert!(matches!(e, Error::Background { .. }), "{e:?}");
                failed_at = Some(i);
                break;
            }
        }
    }
    assert!(
        failed_at.is_some(),
        "the injected disk failure never reached a writer"
    );
    let stats = db.stats();
    assert!(
        stats.flushes >= 3,
        "flushes should have succeeded: {stats:?}"
    );
    assert_eq!(stats.compactions, 0, "no compaction can have succeeded");
    assert!(fault.fired.load(Ordering::SeqCst));
    drop(db);
    reopen_and_check(d.path(), &acked, &[]);
}

#[test]
fn a_failed_current_switch_fails_open_and_the_next_open_recovers() {
    let d = tempfile::tempdir().expect("tempdir");
    let mut acked = BTreeMap::new();
    {
        let db = Db::open(d.path(), opts(None)).expect("open");
        for i in 0..30 {
            db.put(k(i), v(i)).expect("put");
            acked.insert(k(i), v(i));
        }
    }
    let fault = Fault::new(IoOp::Rename, "CURRENT", 0);
    fault.arm();
    let err = Db::open(d.path(), opts(Some(fault))).expect_err("CURRENT cannot be switched");
    assert!(matches!(err, Error::Io { op: "rename", .. }), "{err:?}");
    reopen_and_check(d.path(), &acked, &[]);
}

#[test]
fn a_second_open_of_the_same_directory_is_refused() {
    let d = tempfile::tempdir().expect("tempdir");
    let _db = Db::open(d.path(), opts(None)).expect("open");
    let err = Db::open(d.path(), opts(None)).expect_err("LOCK is held");
    assert!(matches!(err, Error::Locked { .. }), "{err:?}");
}

#[test]
fn oversized_keys_and_values_are_refused_with_the_limit() {
    let d = tempfile::tempdir().expect("tempdir");
    let o = Options {
        max_key_bytes: 16,
        max_value_bytes: 64,
        ..opts(None)
    };
    let db = Db::open(d.path(), o).expect("open");
    match db.put(vec![b'k'; 17], b"v") {
        Err(Error::KeyTooLarge { len: 17, max: 16 }) => {}
        other => panic!("{other:?}"),
    }
    match db.put(b"k", vec![0u8; 65]) {
        Err(e @ Error::ValueTooLarge { len: 65, max: 64 }) => {
            assert!(e.to_string().contains("64"), "{e}");
        }
        other => panic!("{other:?}"),
    }
    // Nothing was written by the refused calls.
    assert_eq!(db.get(b"k").expect("get"), None);
}
