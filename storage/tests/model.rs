//! Model-based property test: random sequences of puts, deletes, batches, gets,
//! scans (both directions, ranges and prefixes), snapshots, reopens, flushes and
//! compactions, checked against a `BTreeMap` after every step.
//!
//! Options are tiny (16 KiB memtables, 512-byte blocks, 16 KiB files) so short
//! sequences go through flushes, L0 compactions and deeper levels.

use std::collections::BTreeMap;
use std::ops::Bound;

use proptest::prelude::*;
use storage::{Db, Options, ReadOptions, WriteBatch, WriteOptions};

type Model = BTreeMap<Vec<u8>, Vec<u8>>;

#[derive(Clone, Debug)]
enum Op {
    Put(Vec<u8>, Vec<u8>),
    Delete(Vec<u8>),
    Batch(Vec<(Vec<u8>, Option<Vec<u8>>)>),
    Get(Vec<u8>),
    Scan {
        lo: Bound<Vec<u8>>,
        hi: Bound<Vec<u8>>,
        reverse: bool,
    },
    Prefix(Vec<u8>, bool),
    TakeSnapshot,
    /// Read through the snapshot at index (mod live snapshots).
    SnapshotGet(usize, Vec<u8>),
    SnapshotScan(usize, bool),
    DropSnapshot(usize),
    Reopen,
    Flush,
    Compact,
}

fn key() -> impl Strategy<Value = Vec<u8>> {
    // A small key space with prefix relations ("a" < "a\0" < "ab"), so versions
    // pile up and prefixes/bounds hit the edge cases.
    prop_oneof![
        prop::sample::select(vec![
            b"".to_vec(),
            b"a".to_vec(),
            b"a\0".to_vec(),
            b"ab".to_vec(),
            b"abc".to_vec(),
            b"b".to_vec(),
            b"\xff".to_vec(),
            b"\xff\xff".to_vec(),
        ]),
        (0u8..40).prop_map(|i| format!("k{i:02}").into_bytes()),
    ]
}

fn value() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        8 => prop::collection::vec(any::<u8>(), 0..40),
        1 => (0usize..3000).prop_map(|n| vec![0x5a; n]),
    ]
}

fn bound() -> impl Strategy<Value = Bound<Vec<u8>>> {
    prop_oneof![
        Just(Bound::Unbounded),
        key().prop_map(Bound::Included),
        key().prop_map(Bound::Excluded),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        30 => (key(), value()).prop_map(|(k, v)| Op::Put(k, v)),
        8 => key().prop_map(Op::Delete),
        6 => prop::collection::vec((key(), prop::option::of(value())), 1..8).prop_map(Op::Batch),
        12 => key().prop_map(Op::Get),
        6 => (bound(), bound(), any::<bool>()).prop_map(|(lo, hi, reverse)| Op::Scan { lo, hi, reverse }),
        3 => (prop::sample::select(vec![b"".to_vec(), b"a".to_vec(), b"k1".to_vec(), b"\xff".to_vec()]), any::<bool>())
            .prop_map(|(p, r)| Op::Prefix(p, r)),
        3 => Just(Op::TakeSnapshot),
        4 => (any::<usize>(), key()).prop_map(|(i, k)| Op::SnapshotGet(i, k)),
        2 => (any::<usize>(), any::<bool>()).prop_map(|(i, r)| Op::SnapshotScan(i, r)),
        1 => any::<usize>().prop_map(Op::DropSnapshot),
        2 => Just(Op::Reopen),
        2 => Just(Op::Flush),
        1 => Just(Op::Compact),
    ]
}

fn in_range(k: &[u8], lo: &Bound<Vec<u8>>, hi: &Bound<Vec<u8>>) -> bool {
    let above_lo = match lo {
        Bound::Included(l) => k >= l.as_slice(),
        Bound::Excluded(l) => k > l.as_slice(),
        Bound::Unbounded => true,
    };
    let below_hi = match hi {
        Bound::Included(h) => k <= h.as_slice(),
        Bound::Excluded(h) => k < h.as_slice(),
        Bound::Unbounded => true,
    };
    above_lo && below_hi
}

fn expect_scan(
    m: &Model,
    lo: &Bound<Vec<u8>>,
    hi: &Bound<Vec<u8>>,
    reverse: bool,
) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut v: Vec<_> = m
        .iter()
        .filter(|(k, _)| in_range(k, lo, hi))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    if reverse {
        v.reverse();
    }
    v
}

fn collect(it: storage::DbIter) -> Vec<(Vec<u8>, Vec<u8>)> {
    it.collect::<Result<Vec<_>, _>>()
        .expect("iteration succeeds")
}

fn as_ref(b: &Bound<Vec<u8>>) -> Bound<&[u8]> {
    match b {
        Bound::Included(k) => Bound::Included(k.as_slice()),
        Bound::Excluded(k) => Bound::Excluded(k.as_slice()),
        Bound::Unbounded => Bound::Unbounded,
    }
}

/// Tiny levels (4 KiB L1, ratio 2, 2 KiB files) so a few hundred operations
/// build four or five levels and tombstones sit above older values.
fn tiny() -> Options {
    Options {
        write_buffer_bytes: 4096,
        block_bytes: 256,
        l0_compaction_trigger: 2,
        l1_target_bytes: 4096,
        level_size_ratio: 2,
        target_file_bytes: 2048,
        ..Options::small_for_tests()
    }
}

fn run(ops: Vec<Op>) -> Result<(), TestCaseError> {
    let dir = tempfile::tempdir().expect("tempdir");
    let opts = tiny();
    let mut db = Some(Db::open(dir.path(), opts.clone()).expect("open"));
    let mut model = Model::new();
    let mut snaps: Vec<(storage::Snapshot, Model)> = Vec::new();
    for (step, op) in ops.into_iter().enumerate() {
        let d = db.as_ref().expect("open db");
        match op {
            Op::Put(k, v) => {
                d.put(&k, &v).expect("put");
                model.insert(k, v);
            }
            Op::Delete(k) => {
                d.delete(&k).expect("delete");
                model.remove(&k);
            }
            Op::Batch(entries) => {
                let mut b = WriteBatch::new();
                for (k, v) in &entries {
                    match v {
                        Some(v) => {
                            b.put(k, v);
                        }
                        None => {
                            b.delete(k);
                        }
                    }
                }
                d.write(b, &WriteOptions::default()).expect("batch");
                for (k, v) in entries {
                    match v {
                        Some(v) => model.insert(k, v),
                        None => model.remove(&k),
                    };
                }
            }
            Op::Get(k) => {
                prop_assert_eq!(
                    d.get(&k).expect("get"),
                    model.get(&k).cloned(),
                    "step {} get {:?}",
                    step,
                    k
                );
            }
            Op::Scan { lo, hi, reverse } => {
                let got = collect(
                    d.range(as_ref(&lo), as_ref(&hi), reverse, &ReadOptions::default())
                        .expect("range"),
                );
                prop_assert_eq!(
                    got,
                    expect_scan(&model, &lo, &hi, reverse),
                    "step {} scan {:?}..{:?} rev {}",
                    step,
                    lo,
                    hi,
                    reverse
                );
            }
            Op::Prefix(p, reverse) => {
                let got = collect(
                    d.prefix(&p, reverse, &ReadOptions::default())
                        .expect("prefix"),
                );
                let mut want: Vec<_> = model
                    .iter()
                    .filter(|(k, _)| k.starts_with(&p))
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect();
                if reverse {
                    want.reverse();
                }
                prop_assert_eq!(got, want, "step {} prefix {:?}", step, p);
            }
            Op::TakeSnapshot => snaps.push((d.snapshot(), model.clone())),
            Op::SnapshotGet(i, k) if !snaps.is_empty() => {
                let (s, m) = &snaps[i % snaps.len()];
                let got = d
                    .get_opt(&k, &ReadOptions { snapshot: Some(s) })
                    .expect("get at snapshot");
                prop_assert_eq!(
                    got,
                    m.get(&k).cloned(),
                    "step {} snapshot get {:?}",
                    step,
                    k
                );
            }
            Op::SnapshotScan(i, reverse) if !snaps.is_empty() => {
                let (s, m) = &snaps[i % snaps.len()];
                let got = collect(
                    d.range(
                        Bound::Unbounded,
                        Bound::Unbounded,
                        reverse,
                        &ReadOptions { snapshot: Some(s) },
                    )
                    .expect("range"),
                );
                prop_assert_eq!(
                    got,
                    expect_scan(m, &Bound::Unbounded, &Bound::Unbounded, reverse),
                    "step {} snapshot scan",
                    step
                );
            }
            Op::DropSnapshot(i) if !snaps.is_empty() => {
                let n = snaps.len();
                snaps.remove(i % n);
            }
            Op::SnapshotGet(..) | Op::SnapshotScan(..) | Op::DropSnapshot(_) => {}
            Op::Reopen => {
                // Snapshots do not survive a restart.
                snaps.clear();
                drop(db.take());
                db = Some(Db::open(dir.path(), opts.clone()).expect("reopen"));
            }
            Op::Flush => d.flush().expect("flush"),
            Op::Compact => d.compact_range(None, None).expect("compact"),
        }
    }
    // Final full comparison, then once more after a reopen.
    let d = db.as_ref().expect("open db");
    let all = collect(
        d.range(
            Bound::Unbounded,
            Bound::Unbounded,
            false,
            &ReadOptions::default(),
        )
        .expect("range"),
    );
    prop_assert_eq!(
        all,
        expect_scan(&model, &Bound::Unbounded, &Bound::Unbounded, false)
    );
    d.verify().expect("tables verify");
    d.wait_for_background().expect("background work settles");
    let deepest = d
        .stats()
        .levels
        .iter()
        .rposition(|l| l.files > 0)
        .unwrap_or(0);
    DEEPEST.fetch_max(deepest, std::sync::atomic::Ordering::Relaxed);
    snaps.clear();
    drop(db.take());
    let d = Db::open(dir.path(), opts).expect("final reopen");
    let all = collect(
        d.range(
            Bound::Unbounded,
            Bound::Unbounded,
            true,
            &ReadOptions::default(),
        )
        .expect("range"),
    );
    prop_assert_eq!(
        all,
        expect_scan(&model, &Bound::Unbounded, &Bound::Unbounded, true)
    );
    Ok(())
}

static DEEPEST: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

proptest! {
    // 48 cases in the suite; `PROPTEST_CASES=2000` for a long soak.
    #![proptest_config(ProptestConfig {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(48),
        max_shrink_iters: 2000,
        ..ProptestConfig::default()
    })]
    #[test]
    fn engine_agrees_with_a_btreemap_at_every_step(ops in prop::collection::vec(op(), 1..250)) {
        run(ops)?;
    }
}

#[test]
fn the_model_test_reaches_deep_levels() {
    // Guards the property test's reach: if option changes stop it from building
    // levels below L1, tombstone and level logic would go untested.
    let ops: Vec<Op> = (0..600u32)
        .map(|i| {
            Op::Put(
                format!("k{:03}", (i * 37) % 400).into_bytes(),
                vec![i as u8; 60],
            )
        })
        .collect();
    run(ops).expect("model run");
    assert!(
        DEEPEST.load(std::sync::atomic::Ordering::Relaxed) >= 3,
        "never reached L3"
    );
}

#[test]
fn many_versions_and_tombstones_survive_compaction_to_the_bottom() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = Db::open(dir.path(), Options::small_for_tests()).expect("open");
    let mut model = Model::new();
    for round in 0..20u32 {
        for i in 0..300u32 {
            let k = format!("key{:04}", (i * 7 + round) % 500).into_bytes();
            if (i + round) % 5 == 0 {
                db.delete(&k).expect("delete");
                model.remove(&k);
            } else {
                let v = format!("r{round}-{i}-{}", "x".repeat((i % 50) as usize)).into_bytes();
                db.put(&k, &v).expect("put");
                model.insert(k, v);
            }
        }
    }
    db.compact_range(None, None).expect("compact");
    let stats = db.stats();
    assert!(stats.compactions > 0, "no compaction ran: {stats:?}");
    assert!(
        stats.levels[0].files == 0,
        "L0 not emptied: {:?}",
        stats.levels
    );
    let got = collect(
        db.range(
            Bound::Unbounded,
            Bound::Unbounded,
            false,
            &ReadOptions::default(),
        )
        .expect("range"),
    );
    assert_eq!(
        got,
        expect_scan(&model, &Bound::Unbounded, &Bound::Unbounded, false)
    );
    // After a full compaction only live keys remain on disk: tombstones and
    // overwritten versions were dropped at the bottom level.
    let entries: u64 = db.tables().iter().map(|(_, r)| r.entries).sum();
    assert_eq!(
        entries,
        model.len() as u64,
        "dead versions kept after full compaction"
    );
    for (k, v) in &model {
        assert_eq!(db.get(k).expect("get").as_ref(), Some(v));
    }
}
