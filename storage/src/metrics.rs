//! Prometheus export of [`crate::DbStats`].
//!
//! `storage` does not depend on `observe` (`docs/ARCHITECTURE.md`: storage sits at the
//! bottom of the graph); instead it offers a `prometheus` collector that reads
//! the engine's counters at scrape time, and the process registers it in
//! `observe::registry()`:
//!
//! ```ignore
//! observe::registry().register(Box::new(storage::metrics::DbCollector::new(db.clone(), "kv")))?;
//! ```

use std::sync::{Arc, Weak};

use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::{Counter, Gauge, GaugeVec, IntCounter, Opts};

use crate::{Db, DbStats};

/// Reads a [`Db`]'s stats on every scrape. Holds a weak reference: a scrape
/// after the database is closed returns nothing rather than keeping it open.
#[derive(Debug)]
pub struct DbCollector {
    db: Weak<Db>,
    descs: Vec<Desc>,
    label: String,
}

const COUNTERS: &[(&str, &str)] = &[
    (
        "mlstack_storage_user_bytes_total",
        "Bytes of keys and values written by users.",
    ),
    (
        "mlstack_storage_wal_bytes_total",
        "Bytes appended to the write-ahead log.",
    ),
    (
        "mlstack_storage_flush_bytes_total",
        "Bytes of L0 tables written by memtable flushes.",
    ),
    (
        "mlstack_storage_compaction_read_bytes_total",
        "Bytes of tables read by compactions.",
    ),
    (
        "mlstack_storage_compaction_write_bytes_total",
        "Bytes of tables written by compactions.",
    ),
    ("mlstack_storage_flushes_total", "Memtable flushes."),
    (
        "mlstack_storage_compactions_total",
        "Compactions that rewrote data.",
    ),
    (
        "mlstack_storage_trivial_moves_total",
        "Compactions that moved a file down without rewriting it.",
    ),
    ("mlstack_storage_gets_total", "Point lookups."),
    (
        "mlstack_storage_tables_probed_total",
        "Tables probed by point lookups (read amplification = this / gets).",
    ),
    (
        "mlstack_storage_bloom_useful_total",
        "Probes a bloom filter answered 'not here' (I/O saved).",
    ),
    (
        "mlstack_storage_bloom_false_positives_total",
        "Probes a bloom filter answered 'maybe' for an absent key.",
    ),
    (
        "mlstack_storage_block_cache_hits_total",
        "Block cache hits.",
    ),
    (
        "mlstack_storage_block_cache_misses_total",
        "Block cache misses.",
    ),
];

/// Every series, with values from `s`. The one list of names and help texts:
/// `new` takes the descriptors from it (with zero stats), `collect` the values.
fn build(label: &str, s: &DbStats) -> Vec<Box<dyn Collector>> {
    let opts = |name: &str, help: &str| Opts::new(name, help).const_label("db", label);
    let counters = [
        s.user_bytes_written,
        s.wal_bytes_written,
        s.flush_bytes_written,
        s.compaction_bytes_read,
        s.compaction_bytes_written,
        s.flushes,
        s.compactions,
        s.trivial_moves,
        s.gets,
        s.tables_probed,
        s.bloom_useful,
        s.bloom_false_positives,
        s.block_cache_hits,
        s.block_cache_misses,
    ];
    let mut out: Vec<Box<dyn Collector>> = Vec::new();
    for ((name, help), v) in COUNTERS.iter().zip(counters) {
        if let Ok(c) = IntCounter::with_opts(opts(name, help)) {
            c.inc_by(v);
            out.push(Box::new(c));
        }
    }
    if let Ok(c) = Counter::with_opts(opts(
        "mlstack_storage_stall_seconds_total",
        "Time writers spent stalled by L0 or flush backlog.",
    )) {
        c.inc_by(s.stall_micros as f64 / 1e6);
        out.push(Box::new(c));
    }
    for (name, help, v) in [
        (
            "mlstack_storage_write_amplification",
            "(flush + compaction bytes written) / user bytes.",
            s.write_amplification(),
        ),
        (
            "mlstack_storage_memtable_bytes",
            "Bytes in the memtable and immutable memtables.",
            s.memtable_bytes as f64,
        ),
        (
            "mlstack_storage_block_cache_bytes",
            "Bytes held by the block cache.",
            s.block_cache_bytes as f64,
        ),
    ] {
        if let Ok(g) = Gauge::with_opts(opts(name, help)) {
            g.set(v);
            out.push(Box::new(g));
        }
    }
    if let Ok(g) = GaugeVec::new(
        opts("mlstack_storage_level_bytes", "Bytes of tables per level."),
        &["level"],
    ) {
        for (i, l) in s.levels.iter().enumerate() {
            g.with_label_values(&[&i.to_string()]).set(l.bytes as f64);
        }
        out.push(Box::new(g));
    }
    out
}

impl DbCollector {
    /// `db_label` becomes the `db` label on every series (e.g. `kv-1`).
    pub fn new(db: &Arc<Db>, db_label: &str) -> Self {
        let descs = build(db_label, &DbStats::default())
            .iter()
            .flat_map(|c| c.desc().into_iter().cloned().collect::<Vec<_>>())
            .collect();
        Self {
            db: Arc::downgrade(db),
            descs,
            label: db_label.to_string(),
        }
    }
}

impl Collector for DbCollector {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let Some(db) = self.db.upgrade() else {
            return Vec::new();
        };
        build(&self.label, &db.stats())
            .iter()
            .flat_map(|c| c.collect())
            .collect()
    }
}
