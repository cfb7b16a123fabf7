//! `mlstack lsm bench`: this engine, fjall and RocksDB side by side, same
//! workloads, one after the other: the two Rust engines in this process,
//! RocksDB through its own `db_bench` ([`crate::rocksdb`], which states its
//! flags and where its workloads differ).
//!
//! Workloads (db_bench's names): `fillseq`, `fillrandom` (N keys, 16-byte keys,
//! 100-byte values, WAL on, no per-write fsync), `fillsync` (fsync on every
//! write), `readrandom` (hits), `readmissing`, `seekrandom` (seek + 100 nexts),
//! `readwhilewriting` (50/50 reads and writes on 2 threads).
//!
//! Fairness rules:
//! - Durability is the same: every write reaches the OS before the call returns
//!   (mlstack's WAL writes each group; fjall is asked to `persist(Buffer)` after
//!   each insert), and `fillsync` fsyncs every write in both
//!   (`WriteOptions { sync: true }` / `persist(SyncData)`).
//! - Values are random bytes, so fjall's default lz4 compression gains nothing
//!   and mlstack's (off by default) loses nothing.
//! - Write amplification is measured identically for both from the process's
//!   `/proc/self/io` `wchar` (bytes passed to write(2)) over the fill and the
//!   close, divided by the bytes of keys and values written; space
//!   amplification is the directory's allocated size (blocks, so sparse
//!   preallocated journals count only what was written) after close over the
//!   same.
//! - The same block cache on both sides (mlstack's default, 64 MiB), and
//!   both settle before the read phases (mlstack waits for flushes and
//!   compactions; fjall waits for outstanding flushes, its only public signal
//!   of background work).
//! - The order of the systems alternates between repeats; figures are
//!   medians over repeats, with their spread.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

use storage::{Db, Options, ReadOptions, WriteBatch, WriteOptions};

use crate::report::{self, Report, Row, cell};

/// What to run.
#[derive(Clone, Debug)]
pub struct Config {
    pub dir: PathBuf,
    pub num_keys: u64,
    pub num_reads: u64,
    pub num_seeks: u64,
    pub num_sync_writes: u64,
    pub mixed_ops_per_thread: u64,
    pub repeats: usize,
    pub seed: u64,
    pub systems: Vec<String>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            dir: std::env::temp_dir().join("mlstack-lsm-bench"),
            num_keys: 1_000_000,
            num_reads: 1_000_000,
            num_seeks: 100_000,
            num_sync_writes: 10_000,
            mixed_ops_per_thread: 250_000,
            repeats: 3,
            seed: 42,
            systems: vec!["mlstack".into(), "fjall".into()],
        }
    }
}

/// The workloads, in db_bench's names and the table's order.
pub const WORKLOADS: [&str; 7] = [
    "fillseq",
    "fillrandom",
    "fillsync",
    "readrandom",
    "readmissing",
    "seekrandom",
    "readwhilewriting",
];

pub const KEY_BYTES: usize = 16;
pub const VALUE_BYTES: usize = 100;

trait Engine: Sync {
    fn put(&self, k: &[u8], v: &[u8], sync: bool) -> Result<(), String>;
    /// Value length, so neither engine pays for a copy the other avoids.
    fn get_len(&self, k: &[u8]) -> Result<Option<usize>, String>;
    /// Seek to `k` and read up to `n` entries; returns how many were read.
    fn seek_next(&self, k: &[u8], n: usize) -> Result<usize, String>;
    /// Let background work finish where the engine offers a way.
    fn settle(&self) -> Result<(), String>;
}

struct Mine(Db);

impl Engine for Mine {
    fn put(&self, k: &[u8], v: &[u8], sync: bool) -> Result<(), String> {
        let mut b = WriteBatch::new();
        b.put(k, v);
        self.0
            .write(b, &WriteOptions { sync })
            .map_err(|e| e.to_string())
    }
    fn get_len(&self, k: &[u8]) -> Result<Option<usize>, String> {
        self.0
            .get(k)
            .map(|v| v.map(|v| v.len()))
            .map_err(|e| e.to_string())
    }
    fn seek_next(&self, k: &[u8], n: usize) -> Result<usize, String> {
        let it = self
            .0
            .range(
                std::ops::Bound::Included(k),
                std::ops::Bound::Unbounded,
                false,
                &ReadOptions::default(),
            )
            .map_err(|e| e.to_string())?;
        let mut c = 0;
        for kv in it.take(n) {
            kv.map_err(|e| e.to_string())?;
            c += 1;
        }
        Ok(c)
    }
    fn settle(&self) -> Result<(), String> {
        self.0.wait_for_background().map_err(|e| e.to_string())
    }
}

struct Fjall {
    db: fjall::Database,
    ks: fjall::Keyspace,
}

impl Engine for Fjall {
    fn put(&self, k: &[u8], v: &[u8], sync: bool) -> Result<(), String> {
        self.ks.insert(k, v).map_err(|e| e.to_string())?;
        let mode = if sync {
            fjall::PersistMode::SyncData
        } else {
            fjall::PersistMode::Buffer
        };
        self.db.persist(mode).map_err(|e| e.to_string())
    }
    fn get_len(&self, k: &[u8]) -> Result<Option<usize>, String> {
        self.ks
            .get(k)
            .map(|v| v.map(|v| v.len()))
            .map_err(|e| e.to_string())
    }
    fn seek_next(&self, k: &[u8], n: usize) -> Result<usize, String> {
        let mut c = 0;
        for g in self.ks.range(k.to_vec()..).take(n) {
            g.into_inner().map_err(|e| e.to_string())?;
            c += 1;
        }
        Ok(c)
    }
    fn settle(&self) -> Result<(), String> {
        // Wait until no flush is outstanding: fjall's one public signal of
        // background work. It has none for compactions, which may still run
        // during the read phase (mlstack's settle waits for both).
        while self.db.outstanding_flushes() > 0 {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        Ok(())
    }
}

fn open(system: &str, dir: &Path) -> Result<Box<dyn Engine>, String> {
    match system {
        "mlstack" => Ok(Box::new(Mine(
            Db::open(dir, Options::default()).map_err(|e| e.to_string())?,
        ))),
        "fjall" => {
            // The same block cache as mlstack's (fjall's default is 32 MiB).
            let db = fjall::Database::builder(dir)
                .cache_size(Options::default().block_cache_bytes as u64)
                .open()
                .map_err(|e| e.to_string())?;
            let ks = db
                .keyspace("bench", fjall::KeyspaceCreateOptions::default)
                .map_err(|e| e.to_string())?;
            Ok(Box::new(Fjall { db, ks }))
        }
        other => Err(format!(
            "unknown system {other:?} (expected mlstack or fjall)"
        )),
    }
}

fn key(id: u64) -> [u8; KEY_BYTES] {
    let mut k = [0u8; KEY_BYTES];
    let s = format!("{id:016}");
    k.copy_from_slice(s.as_bytes());
    k
}

/// A key that sorts among the present keys but is never written.
fn missing_key(id: u64) -> [u8; KEY_BYTES] {
    let mut k = key(id);
    k[KEY_BYTES - 1] = b'm';
    k
}

struct Values(Vec<u8>);

impl Values {
    fn new(seed: u64) -> Self {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        Values((0..1 << 20).map(|_| rng.random()).collect())
    }
    fn get(&self, id: u64) -> &[u8] {
        let off =
            (id.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 45) as usize % (self.0.len() - VALUE_BYTES);
        &self.0[off..off + VALUE_BYTES]
    }
}

fn wchar() -> u64 {
    std::fs::read_to_string("/proc/self/io")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("wchar:").and_then(|v| v.trim().parse().ok()))
        })
        .unwrap_or(0)
}

pub(crate) fn dir_bytes(dir: &Path) -> u64 {
    let mut total = 0;
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            match e.metadata() {
                Ok(m) if m.is_dir() => total += dir_bytes(&p),
                // Allocated blocks, not apparent length: preallocated (sparse)
                // journals would otherwise count as data.
                Ok(m) => total += std::os::unix::fs::MetadataExt::blocks(&m) * 512,
                Err(_) => {}
            }
        }
    }
    total
}

struct Timing {
    ops: u64,
    elapsed: Duration,
    hist: Histogram<u64>,
}

impl Timing {
    fn rows(&self, system: &str, workload: &str) -> Vec<Row> {
        let r = |metric: &str, value: f64, unit: &str| Row {
            system: system.into(),
            workload: workload.into(),
            metric: metric.into(),
            value,
            unit: unit.into(),
        };
        vec![
            r(
                "ops_per_sec",
                self.ops as f64 / self.elapsed.as_secs_f64(),
                "ops/s",
            ),
            r(
                "latency_p50_us",
                self.hist.value_at_quantile(0.50) as f64 / 1e3,
                "us",
            ),
            r(
                "latency_p99_us",
                self.hist.value_at_quantile(0.99) as f64 / 1e3,
                "us",
            ),
        ]
    }
}

fn hist() -> Histogram<u64> {
    // 1 ns .. 100 s at 3 significant digits.
    Histogram::new_with_bounds(1, 100_000_000_000, 3)
        .unwrap_or_else(|_| Histogram::new(3).unwrap_or_else(|_| unreachable!()))
}

fn timed(
    ids: impl Iterator<Item = u64>,
    mut op: impl FnMut(u64) -> Result<(), String>,
) -> Result<Timing, String> {
    let mut h = hist();
    let start = Instant::now();
    let mut ops = 0;
    for id in ids {
        let t = Instant::now();
        op(id)?;
        let _ = h.record(t.elapsed().as_nanos().max(1) as u64);
        ops += 1;
    }
    Ok(Timing {
        ops,
        elapsed: start.elapsed(),
        hist: h,
    })
}

pub(crate) fn fresh(dir: &Path) -> Result<(), String> {
    if dir.exists() {
        std::fs::remove_dir_all(dir).map_err(|e| format!("clearing {}: {e}", dir.display()))?;
    }
    std::fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))
}

/// One repeat of every workload for one system.
fn run_system(system: &str, cfg: &Config, vals: &Values, perm: &[u64]) -> Result<Vec<Row>, String> {
    let mut rows = Vec::new();
    let base = cfg.dir.join(system);
    let logical = cfg.num_keys * (KEY_BYTES + VALUE_BYTES) as u64;
    let amp_rows = |rows: &mut Vec<Row>, workload: &str, written: u64, dir: &Path| {
        for (metric, v) in [
            ("write_amplification", written as f64 / logical as f64),
            (
                "space_amplification",
                dir_bytes(dir) as f64 / logical as f64,
            ),
        ] {
            rows.push(Row {
                system: system.into(),
                workload: workload.into(),
                metric: metric.into(),
                value: v,
                unit: "x".into(),
            });
        }
    };

    // fillseq
    let dir = base.join("fillseq");
    fresh(&dir)?;
    let w0 = wchar();
    let e = open(system, &dir)?;
    let t = timed(0..cfg.num_keys, |id| e.put(&key(id), vals.get(id), false))?;
    drop(e);
    rows.extend(t.rows(system, "fillseq"));
    amp_rows(&mut rows, "fillseq", wchar() - w0, &dir);
    fresh(&dir)?;

    // fillrandom
    let dir = base.join("fillrandom");
    fresh(&dir)?;
    let w0 = wchar();
    let e = open(system, &dir)?;
    let t = timed(perm.iter().copied(), |id| {
        e.put(&key(id), vals.get(id), false)
    })?;
    e.settle()?;
    drop(e);
    rows.extend(t.rows(system, "fillrandom"));
    amp_rows(&mut rows, "fillrandom", wchar() - w0, &dir);

    // Reads on the fillrandom data, reopened and settled.
    let e = open(system, &dir)?;
    e.settle()?;
    let mut rng = rand::rngs::StdRng::seed_from_u64(cfg.seed ^ 1);
    let read_ids: Vec<u64> = (0..cfg.num_reads)
        .map(|_| rng.random_range(0..cfg.num_keys))
        .collect();
    let t = timed(read_ids.iter().copied(), |id| {
        match e.get_len(&key(id))? {
            Some(VALUE_BYTES) => Ok(()),
            other => Err(format!("{system}: readrandom key {id} returned {other:?}")),
        }
    })?;
    rows.extend(t.rows(system, "readrandom"));
    let t = timed(
        read_ids.iter().take(cfg.num_reads as usize / 2).copied(),
        |id| match e.get_len(&missing_key(id))? {
            None => Ok(()),
            Some(_) => Err(format!("{system}: readmissing key {id} was found")),
        },
    )?;
    rows.extend(t.rows(system, "readmissing"));
    let t = timed(
        read_ids.iter().take(cfg.num_seeks as usize).copied(),
        |id| {
            let n = e.seek_next(&key(id), 100)?;
            let want = 100.min((cfg.num_keys - id) as usize);
            if n == want {
                Ok(())
            } else {
                Err(format!("{system}: seek at {id} read {n} of {want}"))
            }
        },
    )?;
    rows.extend(t.rows(system, "seekrandom"));

    // readwhilewriting: 2 threads, each op a read or a write with p = 0.5.
    let engine: &dyn Engine = e.as_ref();
    let start = Instant::now();
    let results: Vec<Result<Histogram<u64>, String>> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..2u64)
            .map(|t| {
                s.spawn(move || {
                    let mut rng = rand::rngs::StdRng::seed_from_u64(cfg.seed ^ (10 + t));
                    let mut h = hist();
                    for _ in 0..cfg.mixed_ops_per_thread {
                        let id = rng.random_range(0..cfg.num_keys);
                        let t0 = Instant::now();
                        if rng.random_bool(0.5) {
                            engine.get_len(&key(id))?;
                        } else {
                            engine.put(&key(id), vals.get(id ^ 1), false)?;
                        }
                        let _ = h.record(t0.elapsed().as_nanos().max(1) as u64);
                    }
                    Ok(h)
                })
            })
            .collect();
        hs.into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err("reader thread panicked".into()))
            })
            .collect()
    });
    let elapsed = start.elapsed();
    let mut h = hist();
    for r in results {
        let _ = h.add(r?);
    }
    rows.extend(
        Timing {
            ops: 2 * cfg.mixed_ops_per_thread,
            elapsed,
            hist: h,
        }
        .rows(system, "readwhilewriting"),
    );
    drop(e);
    fresh(&dir)?;

    // fillsync
    let dir = base.join("fillsync");
    fresh(&dir)?;
    let e = open(system, &dir)?;
    let t = timed(
        perm.iter().take(cfg.num_sync_writes as usize).copied(),
        |id| e.put(&key(id), vals.get(id), true),
    )?;
    drop(e);
    rows.extend(t.rows(system, "fillsync"));
    fresh(&dir)?;
    Ok(rows)
}

/// The bloom filter's false-positive rate measured on a real table set: keys
/// absent from the database, probed after a full compaction.
fn bloom_rows(cfg: &Config, vals: &Values) -> Result<Vec<Row>, String> {
    let dir = cfg.dir.join("bloom");
    fresh(&dir)?;
    let n = (cfg.num_keys / 5).max(10_000);
    let db = Arc::new(Db::open(&dir, Options::default()).map_err(|e| e.to_string())?);
    for id in 0..n {
        db.put(key(id * 2), vals.get(id))
            .map_err(|e| e.to_string())?;
    }
    db.compact_range(None, None).map_err(|e| e.to_string())?;
    let before = db.stats();
    for id in 0..n {
        db.get(key(id * 2 + 1)).map_err(|e| e.to_string())?;
    }
    let after = db.stats();
    let fp = after.bloom_false_positives - before.bloom_false_positives;
    let useful = after.bloom_useful - before.bloom_useful;
    drop(db);
    fresh(&dir)?;
    Ok(vec![Row::new(
        "mlstack",
        "readmissing",
        "bloom_false_positive_rate",
        fp as f64 / (fp + useful).max(1) as f64,
        "fraction",
    )])
}

/// Runs every workload for every system `repeats` times and returns medians,
/// plus mlstack's ratio to each peer for throughput.
pub fn run(cfg: &Config, mut progress: impl FnMut(&str)) -> Result<Vec<Row>, String> {
    let vals = Values::new(cfg.seed);
    let mut perm: Vec<u64> = (0..cfg.num_keys).collect();
    perm.shuffle(&mut rand::rngs::StdRng::seed_from_u64(cfg.seed));
    let mut all: Vec<Row> = Vec::new();
    for r in 0..cfg.repeats.max(1) {
        // The order alternates between repeats (mlstack first, then last), so
        // neither system always runs on a cold or a warm machine.
        let mut order: Vec<&String> = cfg.systems.iter().collect();
        if r % 2 == 1 {
            order.reverse();
        }
        for system in order {
            progress(&format!(
                "repeat {}/{}: {system}",
                r + 1,
                cfg.repeats.max(1)
            ));
            if system == "rocksdb" {
                all.extend(crate::rocksdb::run_system(cfg)?);
            } else {
                all.extend(run_system(system, cfg, &vals, &perm)?);
            }
        }
    }
    let mut out = report::medians(&all);
    for peer in cfg.systems.iter().filter(|s| *s != "mlstack") {
        let ratios: Vec<Row> = out
            .iter()
            .filter(|r| r.system == "mlstack" && r.metric == "ops_per_sec")
            .filter_map(|m| {
                let p = out.iter().find(|p| {
                    p.system == *peer && p.workload == m.workload && p.metric == "ops_per_sec"
                })?;
                Some(Row {
                    system: "mlstack".into(),
                    workload: m.workload.clone(),
                    metric: format!("ops_per_sec_ratio_to_{peer}"),
                    value: m.value / p.value,
                    unit: "x".into(),
                })
            })
            .collect();
        out.extend(ratios);
    }
    if cfg.systems.iter().any(|s| s == "mlstack") {
        progress("bloom false-positive rate");
        out.extend(bloom_rows(cfg, &vals)?);
    }
    let _ = std::fs::remove_dir_all(&cfg.dir);
    Ok(out)
}

/// The report in the benchmark JSON convention.
pub fn report(cfg: &Config, rows: Vec<Row>) -> Report {
    Report {
        component: "storage",
        bench: "lsm",
        config: serde_json::json!({
            "num_keys": cfg.num_keys, "key_bytes": KEY_BYTES, "value_bytes": VALUE_BYTES,
            "num_reads": cfg.num_reads, "num_seeks": cfg.num_seeks, "seek_nexts": 100,
            "num_sync_writes": cfg.num_sync_writes, "mixed_ops_per_thread": cfg.mixed_ops_per_thread,
            "mixed_threads": 2, "repeats": cfg.repeats, "seed": cfg.seed, "statistic": "median",
            "durability": "every write reaches the OS (no fsync) except fillsync (fsync per write)",
            "fjall_version": "3.1.13", "block_cache_bytes": Options::default().block_cache_bytes,
            "rocksdb": {"tool": "db_bench 7.8.3 (Debian rocksdb-tools)",
                        "flags": crate::rocksdb::common_flags(cfg).join(" "),
                        "fillrandom_is": "filluniquerandom (each key once)",
                        "write_amplification": "(rocksdb.wal.bytes + flush.write.bytes + compact.write.bytes) / logical",
                        "readwhilewriting": "reads of 1 reader thread while 1 writer writes (reads_per_sec_with_one_writer)"},
            "order": "alternating between repeats",
        }),
        results: rows,
    }
}

/// The human table: one line per workload, systems side by side (those
/// present in `rows`), mlstack's ratio to each peer.
pub fn table(rows: &[Row]) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    let get = |sys: &str, w: &str, m: &str| report::find(rows, sys, w, m);
    let systems: Vec<&str> = ["mlstack", "rocksdb", "fjall"]
        .into_iter()
        .filter(|sys| rows.iter().any(|r| r.system == *sys))
        .collect();
    let peers: Vec<&str> = systems
        .iter()
        .copied()
        .filter(|p| *p != "mlstack")
        .collect();
    let _ = write!(s, "{:<17}", "workload");
    for sys in &systems {
        let _ = write!(s, " {:>13}", format!("{sys} op/s"));
    }
    for p in &peers {
        let _ = write!(s, " {:>10}", format!("vs {p}"));
    }
    for sys in &systems {
        let _ = write!(s, " {:>13}", format!("{sys} p99us"));
    }
    for sys in &systems {
        let _ = write!(s, " {:>11}", format!("{sys} WA"));
    }
    s.push('\n');
    for w in WORKLOADS {
        let _ = write!(s, "{w:<17}");
        for sys in &systems {
            let ops = get(sys, w, "ops_per_sec").or(get(sys, w, "reads_per_sec_with_one_writer"));
            let _ = write!(s, " {:>13}", cell(ops, 0));
        }
        for p in &peers {
            let _ = write!(
                s,
                " {:>10}",
                cell(get("mlstack", w, &format!("ops_per_sec_ratio_to_{p}")), 2)
            );
        }
        for sys in &systems {
            let p99 = get(sys, w, "latency_p99_us").or(get(sys, w, "read_latency_p99_us"));
            let _ = write!(s, " {:>13}", cell(p99, 1));
        }
        for sys in &systems {
            let _ = write!(s, " {:>11}", cell(get(sys, w, "write_amplification"), 2));
        }
        s.push('\n');
    }
    if systems.contains(&"rocksdb") {
        s.push_str("rocksdb readwhilewriting: reads/s of one reader beside one writer (db_bench), not comparable\n");
    }
    let _ = writeln!(
        s,
        "space amplification after fillrandom: {}",
        systems
            .iter()
            .map(|sys| format!(
                "{sys} {}",
                cell(get(sys, "fillrandom", "space_amplification"), 2)
            ))
            .collect::<Vec<_>>()
            .join(", ")
    );
    if let Some(fpr) = get("mlstack", "readmissing", "bloom_false_positive_rate") {
        let _ = writeln!(
            s,
            "bloom false-positive rate at 10 bits/key: {:.3}%",
            fpr * 100.0
        );
    }
    s
}
