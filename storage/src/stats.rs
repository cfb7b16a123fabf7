//! Engine counters: what amplification the LSM pays for its write speed.
//!
//! - write amplification = bytes written to disk by flushes and compactions ÷
//!   bytes of keys and values written by users (the WAL is reported apart);
//! - read amplification = tables probed per get (a bloom negative costs no I/O
//!   but is still counted as a probe of the filter);
//! - bloom useful = probes a filter answered "no"; bloom false positives =
//!   probes it answered "maybe" for a key the table did not hold.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::sstable::Probe;

/// Live counters (atomics; updated without locks).
#[derive(Debug, Default)]
pub struct Stats {
    pub user_bytes: AtomicU64,
    pub writes: AtomicU64,
    pub wal_bytes: AtomicU64,
    pub flush_bytes: AtomicU64,
    pub flushes: AtomicU64,
    pub compaction_read_bytes: AtomicU64,
    pub compaction_write_bytes: AtomicU64,
    pub compactions: AtomicU64,
    pub trivial_moves: AtomicU64,
    pub gets: AtomicU64,
    pub tables_probed: AtomicU64,
    pub bloom_useful: AtomicU64,
    pub bloom_maybe: AtomicU64,
    pub bloom_false_positive: AtomicU64,
    pub stall_micros: AtomicU64,
}

impl Stats {
    pub fn record_probe(&self, p: Probe) {
        self.tables_probed.fetch_add(1, Ordering::Relaxed);
        match p {
            Probe::BloomNegative => {
                self.bloom_useful.fetch_add(1, Ordering::Relaxed);
            }
            Probe::Hit => {
                self.bloom_maybe.fetch_add(1, Ordering::Relaxed);
            }
            Probe::Miss { filter_said_maybe } => {
                if filter_said_maybe {
                    self.bloom_maybe.fetch_add(1, Ordering::Relaxed);
                    self.bloom_false_positive.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }

    pub fn add_stall(&self, d: Duration) {
        self.stall_micros
            .fetch_add(d.as_micros() as u64, Ordering::Relaxed);
    }

    pub(crate) fn snapshot(
        &self,
        levels: Vec<LevelStats>,
        memtable_bytes: u64,
        cache_hits: u64,
        cache_misses: u64,
        cache_bytes: u64,
    ) -> DbStats {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        DbStats {
            user_bytes_written: g(&self.user_bytes),
            writes: g(&self.writes),
            wal_bytes_written: g(&self.wal_bytes),
            flush_bytes_written: g(&self.flush_bytes),
            flushes: g(&self.flushes),
            compaction_bytes_read: g(&self.compaction_read_bytes),
            compaction_bytes_written: g(&self.compaction_write_bytes),
            compactions: g(&self.compactions),
            trivial_moves: g(&self.trivial_moves),
            gets: g(&self.gets),
            tables_probed: g(&self.tables_probed),
            bloom_useful: g(&self.bloom_useful),
            bloom_maybe: g(&self.bloom_maybe),
            bloom_false_positives: g(&self.bloom_false_positive),
            stall_micros: g(&self.stall_micros),
            block_cache_hits: cache_hits,
            block_cache_misses: cache_misses,
            block_cache_bytes: cache_bytes,
            memtable_bytes,
            levels,
        }
    }
}

/// Files and bytes in one level.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LevelStats {
    pub files: usize,
    pub bytes: u64,
}

/// A point-in-time copy of the counters, from [`crate::Db::stats`].
#[derive(Clone, Debug, Default)]
pub struct DbStats {
    pub user_bytes_written: u64,
    pub writes: u64,
    pub wal_bytes_written: u64,
    pub flush_bytes_written: u64,
    pub flushes: u64,
    pub compaction_bytes_read: u64,
    pub compaction_bytes_written: u64,
    pub compactions: u64,
    pub trivial_moves: u64,
    pub gets: u64,
    pub tables_probed: u64,
    pub bloom_useful: u64,
    pub bloom_maybe: u64,
    pub bloom_false_positives: u64,
    pub stall_micros: u64,
    pub block_cache_hits: u64,
    pub block_cache_misses: u64,
    pub block_cache_bytes: u64,
    pub memtable_bytes: u64,
    pub levels: Vec<LevelStats>,
}

impl DbStats {
    /// (flush + compaction bytes written) ÷ user bytes; 0 before any write.
    pub fn write_amplification(&self) -> f64 {
        if self.user_bytes_written == 0 {
            return 0.0;
        }
        (self.flush_bytes_written + self.compaction_bytes_written) as f64
            / self.user_bytes_written as f64
    }

    /// Tables probed per get.
    pub fn read_amplification(&self) -> f64 {
        if self.gets == 0 {
            return 0.0;
        }
        self.tables_probed as f64 / self.gets as f64
    }

    /// Bytes in all levels.
    pub fn live_bytes(&self) -> u64 {
        self.levels.iter().map(|l| l.bytes).sum()
    }

    /// Measured bloom false-positive rate: false "maybe"s over probes of keys
    /// the table did not hold.
    pub fn bloom_false_positive_rate(&self) -> f64 {
        let negatives = self.bloom_useful + self.bloom_false_positives;
        if negatives == 0 {
            return 0.0;
        }
        self.bloom_false_positives as f64 / negatives as f64
    }
}
