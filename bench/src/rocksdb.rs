//! RocksDB as a peer of `mlstack lsm bench`, measured by RocksDB's own
//! benchmark, `db_bench` (Debian's `rocksdb-tools`, 7.8.3), on the same
//! workloads and with the same settings as the other systems:
//!
//! | setting | value (both sides) |
//! |---|---|
//! | keys, values | 16-byte keys, 100-byte values, `--num` keys |
//! | durability | WAL on, no fsync per write (`--sync=0`); `fillsync` fsyncs each write |
//! | compression | none (`--compression_type=none`) |
//! | block cache | mlstack's default (`--cache_size`) |
//! | bloom filter | 10 bits per key (`--bloom_bits=10`) |
//! | memtable | mlstack's `write_buffer_bytes` (`--write_buffer_size`) |
//! | settling | the memtable flushed and compactions finished before reads (`flush,waitforcompaction`) |
//!
//! db_bench's `fillrandom` draws keys with replacement (about 63 % distinct);
//! this benchmark's `fillrandom` writes each key once, which is db_bench's
//! `filluniquerandom`, so that is what runs under the name `fillrandom`.
//! Write amplification comes from RocksDB's own statistics: (WAL bytes +
//! flush bytes + compaction bytes) / logical bytes written, over the fill,
//! the flush and the wait for compactions. Each `db_bench` run is a process,
//! so the seek and read-while-writing phases start with a cold block cache
//! (the OS page cache is warm), where the in-process engines keep theirs.

use std::path::Path;
use std::process::Command;

use crate::lsm::{Config, KEY_BYTES, VALUE_BYTES};
use crate::report::Row;

/// What one `db_bench` run printed: per benchmark, ops/s with p50 and p99
/// (microseconds), and the statistics tickers.
#[derive(Debug, Default)]
pub struct Output {
    pub benchmarks: Vec<(String, f64, Option<f64>, Option<f64>)>,
    pub tickers: std::collections::BTreeMap<String, u64>,
}

/// Parses db_bench's report: `name : X micros/op Y ops/sec ...` lines, each
/// followed (with `--histogram=1`) by a `Percentiles: P50: a P75: b P99: c`
/// line, and `--statistics` tickers `rocksdb.x COUNT : n`.
pub fn parse(text: &str) -> Output {
    let mut out = Output::default();
    // The benchmark whose percentiles come next (a `flush` or `stats` step
    // prints percentiles of its own without a throughput line: skipped).
    let mut pending: Option<usize> = None;
    for line in text.lines() {
        let line = line.trim();
        if let Some((name, rest)) = line.split_once(':')
            && rest.contains("micros/op")
            && rest.contains("ops/sec")
        {
            let words: Vec<&str> = rest.split_whitespace().collect();
            let ops = words
                .iter()
                .position(|w| *w == "ops/sec")
                .and_then(|i| i.checked_sub(1))
                .and_then(|i| words[i].parse::<f64>().ok());
            if let Some(ops) = ops {
                out.benchmarks
                    .push((name.trim().to_string(), ops, None, None));
                pending = Some(out.benchmarks.len() - 1);
            }
        } else if let Some(rest) = line.strip_prefix("Percentiles:") {
            if let Some(i) = pending.take() {
                let words: Vec<&str> = rest.split_whitespace().collect();
                let at = |label: &str| {
                    words
                        .iter()
                        .position(|w| *w == label)
                        .and_then(|i| words.get(i + 1))
                        .and_then(|v| v.parse::<f64>().ok())
                };
                out.benchmarks[i].2 = at("P50:");
                out.benchmarks[i].3 = at("P99:");
            }
        } else if let Some((name, count)) = line.split_once(" COUNT : ")
            && name.starts_with("rocksdb.")
            && let Ok(n) = count.trim().parse::<u64>()
        {
            out.tickers.insert(name.to_string(), n);
        }
    }
    out
}

/// The flags both sides share, as db_bench spells them (printed in the
/// report's config).
pub fn common_flags(cfg: &Config) -> Vec<String> {
    let o = storage::Options::default();
    vec![
        format!("--key_size={KEY_BYTES}"),
        format!("--value_size={VALUE_BYTES}"),
        format!("--num={}", cfg.num_keys),
        "--compression_type=none".into(),
        format!("--cache_size={}", o.block_cache_bytes),
        format!("--bloom_bits={}", o.bloom_bits_per_key),
        format!("--write_buffer_size={}", o.write_buffer_bytes),
        format!("--block_size={}", o.block_bytes),
        "--sync=0".into(),
        "--disable_wal=0".into(),
        "--threads=1".into(),
        "--histogram=1".into(),
        "--statistics=1".into(),
        format!("--seed={}", cfg.seed),
    ]
}

fn db_bench(dir: &Path, cfg: &Config, extra: &[String]) -> Result<Output, String> {
    let bin = std::env::var("MLSTACK_DB_BENCH").unwrap_or_else(|_| "db_bench".into());
    let out = Command::new(&bin)
        .arg(format!("--db={}", dir.display()))
        .args(common_flags(cfg))
        .args(extra)
        .output()
        .map_err(|e| {
            format!("running {bin}: {e} (apt-get install rocksdb-tools, or set MLSTACK_DB_BENCH)")
        })?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        return Err(format!(
            "{bin} {extra:?} exited with {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(parse(&stdout))
}

/// One repeat of every workload with db_bench; rows in the benchmark's names.
pub fn run_system(cfg: &Config) -> Result<Vec<Row>, String> {
    let system = "rocksdb";
    let dir = cfg.dir.join(system);
    let logical = cfg.num_keys * (KEY_BYTES + VALUE_BYTES) as u64;
    let mut rows = Vec::new();
    let take = |o: &Output, ran: &str, workload: &str, rows: &mut Vec<Row>| -> Result<(), String> {
        let (_, ops, p50, p99) = o
            .benchmarks
            .iter()
            .find(|b| b.0 == ran)
            .ok_or_else(|| format!("db_bench printed no {ran} result"))?;
        rows.push(Row::new(system, workload, "ops_per_sec", *ops, "ops/s"));
        if let Some(v) = p50 {
            rows.push(Row::new(system, workload, "latency_p50_us", *v, "us"));
        }
        if let Some(v) = p99 {
            rows.push(Row::new(system, workload, "latency_p99_us", *v, "us"));
        }
        Ok(())
    };
    let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();

    crate::lsm::fresh(&dir)?;
    let o = db_bench(&dir, cfg, &s(&["--benchmarks=fillseq"]))?;
    take(&o, "fillseq", "fillseq", &mut rows)?;

    crate::lsm::fresh(&dir)?;
    let o = db_bench(
        &dir,
        cfg,
        &[
            "--benchmarks=filluniquerandom,flush,waitforcompaction,stats,readrandom,readmissing"
                .to_string(),
            format!("--reads={}", cfg.num_reads),
        ],
    )?;
    take(&o, "filluniquerandom", "fillrandom", &mut rows)?;
    take(&o, "readrandom", "readrandom", &mut rows)?;
    take(&o, "readmissing", "readmissing", &mut rows)?;
    let t = |k: &str| o.tickers.get(k).copied().unwrap_or(0);
    let written =
        t("rocksdb.wal.bytes") + t("rocksdb.flush.write.bytes") + t("rocksdb.compact.write.bytes");
    rows.push(Row::new(
        system,
        "fillrandom",
        "write_amplification",
        written as f64 / logical as f64,
        "x",
    ));
    rows.push(Row::new(
        system,
        "fillrandom",
        "space_amplification",
        crate::lsm::dir_bytes(&dir) as f64 / logical as f64,
        "x",
    ));
    let o = db_bench(
        &dir,
        cfg,
        &[
            "--use_existing_db=1".to_string(),
            "--benchmarks=seekrandom".to_string(),
            format!("--reads={}", cfg.num_seeks),
            "--seek_nexts=100".to_string(),
        ],
    )?;
    take(&o, "seekrandom", "seekrandom", &mut rows)?;
    // db_bench's readwhilewriting counts only the reader thread's reads
    // while one writer writes flat out; the other systems' figure counts
    // reads and writes of two mixed threads. Different work, so a different
    // metric name: no ratio is made of it.
    let o = db_bench(
        &dir,
        cfg,
        &[
            "--use_existing_db=1".to_string(),
            "--benchmarks=readwhilewriting".to_string(),
            format!("--reads={}", cfg.mixed_ops_per_thread),
        ],
    )?;
    let (_, reads, _, p99) = o
        .benchmarks
        .iter()
        .find(|b| b.0 == "readwhilewriting")
        .ok_or("db_bench printed no readwhilewriting result")?;
    rows.push(Row::new(
        system,
        "readwhilewriting",
        "reads_per_sec_with_one_writer",
        *reads,
        "ops/s",
    ));
    if let Some(v) = p99 {
        rows.push(Row::new(
            system,
            "readwhilewriting",
            "read_latency_p99_us",
            *v,
            "us",
        ));
    }

    crate::lsm::fresh(&dir)?;
    // db_bench 7.8.3's fillsync writes --num keys (measured: its WAL grew
    // by --num records), each with fsync under --sync=1.
    let o = db_bench(
        &dir,
        cfg,
        &[
            "--benchmarks=fillsync".to_string(),
            "--sync=1".to_string(),
            format!("--num={}", cfg.num_sync_writes),
        ],
    )?;
    take(&o, "fillsync", "fillsync", &mut rows)?;
    crate::lsm::fresh(&dir)?;
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A db_bench 7.8.3 report, abridged: throughput lines, their
    /// percentiles, a flush step's percentiles with no throughput line, and
    /// statistics tickers.
    #[test]
    fn parses_db_bench_output() {
        let text = "\
filluniquerandom :       3.763 micros/op 265681 ops/sec 0.075 seconds 20000 operations;   29.4 MB/s
Microseconds per write:
Count: 20000 Average: 3.7 StdDev: 10.1
Percentiles: P50: 1.90 P75: 2.71 P99: 9.99 P99.9: 147.50 P99.99: 580.00
------------------------------------------------------
Interval compaction: 0.00 GB write, 0.00 MB/s write, 0.00 GB read, 0.00 MB/s read, 0.0 seconds
Percentiles: P50: 3.50 P75: 5.50 P99: 16.00 P99.9: 16.00 P99.99: 16.00
readrandom   :       5.407 micros/op 184474 ops/sec 0.027 seconds 5000 operations;   20.4 MB/s (5000 of 5000 found)
Percentiles: P50: 0.99 P75: 1.85 P99: 134.49 P99.9: 380.00 P99.99: 3004.00
rocksdb.wal.bytes COUNT : 2620000
rocksdb.flush.write.bytes COUNT : 2463372
";
        let o = parse(text);
        assert_eq!(o.benchmarks.len(), 2, "{o:?}");
        assert_eq!(o.benchmarks[0].0, "filluniquerandom");
        assert_eq!(o.benchmarks[0].1, 265681.0);
        assert_eq!(o.benchmarks[0].2, Some(1.90));
        assert_eq!(o.benchmarks[0].3, Some(9.99));
        assert_eq!(o.benchmarks[1].0, "readrandom");
        assert_eq!(o.benchmarks[1].3, Some(134.49));
        assert_eq!(o.tickers["rocksdb.wal.bytes"], 2_620_000);
        assert_eq!(o.tickers["rocksdb.flush.write.bytes"], 2_463_372);
        assert!(parse("garbage\nPercentiles: P50: 1").benchmarks.is_empty());
    }
}
