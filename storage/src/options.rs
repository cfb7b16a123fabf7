//! Tuning knobs. Defaults follow RocksDB's shapes scaled to a small machine.

use std::sync::Arc;
use std::time::Duration;

use crate::io::FaultInjector;
use crate::power_loss::PowerLoss;

/// When the WAL is fsynced.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SyncPolicy {
    /// Every write group is fsynced before its writers return.
    Always,
    /// Every write group reaches the OS before its writers return (a process
    /// crash loses nothing); a background thread fsyncs at least this often, which
    /// bounds what a power loss can take.
    Interval(Duration),
    /// Write groups reach the OS; fsync happens only on memtable rotation, on
    /// `WriteOptions { sync: true }` and on close.
    Never,
}

/// Block compression for SSTable data blocks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compression {
    None,
    Lz4,
}

/// Options for [`crate::Db::open`].
#[derive(Clone, Debug)]
pub struct Options {
    /// Create the database when the directory holds none.
    pub create_if_missing: bool,
    pub sync_policy: SyncPolicy,
    /// A memtable past this many bytes becomes immutable and is flushed to L0.
    pub write_buffer_bytes: usize,
    /// Writers wait when this many immutable memtables await flushing.
    pub max_immutable_memtables: usize,
    /// Target uncompressed size of an SSTable data block.
    pub block_bytes: usize,
    /// Keys between restart points in a block (prefix compression restarts).
    pub block_restart_interval: usize,
    /// Bloom filter bits per key (0 disables the filter).
    pub bloom_bits_per_key: usize,
    pub compression: Compression,
    /// Block cache capacity.
    pub block_cache_bytes: usize,
    /// L0 file count that triggers an L0 → L1 compaction.
    pub l0_compaction_trigger: usize,
    /// L0 file count at which each write group is delayed by 1 ms.
    pub l0_slowdown_trigger: usize,
    /// L0 file count at which writes wait for compaction.
    pub l0_stop_trigger: usize,
    /// Target size of L1; each deeper level is `level_size_ratio` times larger.
    pub l1_target_bytes: u64,
    pub level_size_ratio: u64,
    /// Compaction output files are cut at about this size.
    pub target_file_bytes: u64,
    pub max_key_bytes: usize,
    pub max_value_bytes: usize,
    pub max_batch_bytes: usize,
    /// Test hook: fails chosen file operations (see [`crate::io`]).
    pub fault_injector: Option<Arc<dyn FaultInjector>>,
    /// Test hook: records what each fsync made durable so a test can cut the
    /// power (see [`crate::power_loss`]).
    pub power_loss: Option<Arc<PowerLoss>>,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            create_if_missing: true,
            sync_policy: SyncPolicy::Interval(Duration::from_millis(100)),
            write_buffer_bytes: 64 << 20,
            max_immutable_memtables: 2,
            block_bytes: 4096,
            block_restart_interval: 16,
            bloom_bits_per_key: 10,
            compression: Compression::None,
            block_cache_bytes: 64 << 20,
            l0_compaction_trigger: 4,
            l0_slowdown_trigger: 12,
            l0_stop_trigger: 20,
            l1_target_bytes: 256 << 20,
            level_size_ratio: 10,
            target_file_bytes: 32 << 20,
            max_key_bytes: 64 << 10,
            max_value_bytes: 16 << 20,
            max_batch_bytes: 256 << 20,
            fault_injector: None,
            power_loss: None,
        }
    }
}

impl Options {
    /// Small buffers and files so tests exercise flushes and compactions.
    pub fn small_for_tests() -> Self {
        Self {
            write_buffer_bytes: 16 << 10,
            block_bytes: 512,
            block_cache_bytes: 256 << 10,
            l0_compaction_trigger: 3,
            l0_slowdown_trigger: 8,
            l0_stop_trigger: 12,
            l1_target_bytes: 64 << 10,
            target_file_bytes: 16 << 10,
            sync_policy: SyncPolicy::Never,
            ..Self::default()
        }
    }

    pub(crate) fn validate(&self) -> crate::Result<()> {
        let bad = |m: &str| Err(crate::Error::InvalidOptions(m.to_string()));
        if self.write_buffer_bytes < 4096 {
            return bad("write_buffer_bytes must be at least 4096");
        }
        if self.block_bytes < 64 || self.block_restart_interval == 0 {
            return bad("block_bytes must be at least 64 and block_restart_interval at least 1");
        }
        if !(self.l0_compaction_trigger <= self.l0_slowdown_trigger
            && self.l0_slowdown_trigger <= self.l0_stop_trigger
            && self.l0_compaction_trigger >= 1)
        {
            return bad(
                "need 1 <= l0_compaction_trigger <= l0_slowdown_trigger <= l0_stop_trigger",
            );
        }
        if self.level_size_ratio < 2 || self.max_immutable_memtables == 0 {
            return bad("level_size_ratio must be >= 2 and max_immutable_memtables >= 1");
        }
        Ok(())
    }
}

/// Per-write options.
#[derive(Clone, Copy, Debug, Default)]
pub struct WriteOptions {
    /// Return only after the WAL holding this write is fsynced.
    pub sync: bool,
}
