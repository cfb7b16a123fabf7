//! Concurrent writers and readers: group commit must complete every writer
//! (no lost wakeups), apply every write exactly once, and keep readers
//! consistent while flushes and compactions run underneath.
//!
//! A watchdog turns a hang into a failure instead of a stuck test run.

use std::sync::Arc;
use std::sync::mpsc;
use std::time::Duration;

use storage::{Db, Options, WriteBatch, WriteOptions};

const THREADS: u32 = 4;
const PER_THREAD: u32 = 3000;

fn with_watchdog(secs: u64, f: impl FnOnce() + Send + 'static) {
    let (tx, rx) = mpsc::channel();
    let h = std::thread::spawn(move || {
        f();
        let _ = tx.send(());
    });
    match rx.recv_timeout(Duration::from_secs(secs)) {
        Ok(()) => h.join().expect("worker"),
        Err(mpsc::RecvTimeoutError::Disconnected) => {
            // The closure panicked: surface its panic.
            h.join().expect("worker panicked");
        }
        Err(mpsc::RecvTimeoutError::Timeout) => panic!("no progress in {secs} s: writers hung"),
    }
}

#[test]
fn concurrent_writers_all_complete_and_every_write_lands_once() {
    with_watchdog(120, || {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = Arc::new(Db::open(dir.path(), Options::small_for_tests()).expect("open"));
        let writers: Vec<_> = (0..THREADS)
            .map(|t| {
                let db = db.clone();
                std::thread::spawn(move || {
                    for i in 0..PER_THREAD {
                        let k = format!("t{t}-{i:05}");
                        if i % 10 == 0 {
                            // Mix fsynced batches into the groups.
                            let mut b = WriteBatch::new();
                            b.put(&k, format!("v{i}"))
                                .put(format!("{k}-pair"), format!("v{i}"));
                            db.write(b, &WriteOptions { sync: i % 30 == 0 })
                                .expect("batch");
                        } else {
                            db.put(&k, format!("v{i}")).expect("put");
                        }
                    }
                })
            })
            .collect();
        // A reader alongside: every key it finds holds the value its writer wrote.
        let reader = {
            let db = db.clone();
            std::thread::spawn(move || {
                for round in 0..20u32 {
                    for t in 0..THREADS {
                        let i = (round * 131) % PER_THREAD;
                        if let Some(v) = db.get(format!("t{t}-{i:05}")).expect("get") {
                            assert_eq!(v, format!("v{i}").into_bytes());
                        }
                    }
                }
            })
        };
        for w in writers {
            w.join().expect("writer");
        }
        reader.join().expect("reader");
        let stats = db.stats();
        let expected = u64::from(THREADS * PER_THREAD + THREADS * PER_THREAD / 10);
        assert_eq!(stats.writes, expected, "each write applied exactly once");
        for t in 0..THREADS {
            for i in (0..PER_THREAD).step_by(7) {
                assert_eq!(
                    db.get(format!("t{t}-{i:05}")).expect("get"),
                    Some(format!("v{i}").into_bytes())
                );
            }
        }
        assert!(stats.flushes > 0, "the run should have flushed: {stats:?}");
        drop(db);
        let db = Db::open(dir.path(), Options::small_for_tests()).expect("reopen");
        let n = db
            .range(
                std::ops::Bound::Unbounded,
                std::ops::Bound::Unbounded,
                false,
                &Default::default(),
            )
            .expect("scan")
            .count();
        assert_eq!(n as u64, expected);
    });
}
