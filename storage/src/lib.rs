//! # storage: a log-structured merge-tree key-value engine
//!
//! DDIA chapter 3 ("Storage and Retrieval", *SSTables and LSM-Trees*) as a
//! running engine, in the line of LevelDB and RocksDB: writes are appended to a
//! write-ahead log and inserted into an in-memory sorted table; full memtables
//! are written out as immutable sorted files (SSTables) in level 0; background
//! leveled compaction merges them down into levels 1..6, each ten times larger
//! than the one above. Reads consult the newest structure first. It is the log
//! and state-machine store under every Raft node of `consensus`.
//!
//! Background: O'Neil et al., "The Log-Structured Merge-Tree" (1996); the
//! LevelDB implementation notes (`doc/impl.md`); RocksDB's wiki on leveled
//! compaction and write stalls.
//!
//! ```no_run
//! # fn main() -> storage::Result<()> {
//! let db = storage::Db::open("/tmp/db", storage::Options::default())?;
//! db.put(b"k", b"v")?;
//! assert_eq!(db.get(b"k")?, Some(b"v".to_vec()));
//! let snap = db.snapshot();
//! db.delete(b"k")?;
//! let old = db.get_opt(b"k", &storage::ReadOptions { snapshot: Some(&snap) })?;
//! assert_eq!(old, Some(b"v".to_vec()));
//! # Ok(()) }
//! ```
//!
//! # Layout
//! - [`db`]: [`Db`]: the API, reads, snapshots; `db/write.rs` group commit,
//!   memtable rotation and write stalls; `db/recovery.rs` manifest and WAL
//!   replay; `db/compaction.rs` the flush and compaction threads.
//! - [`batch`]: [`WriteBatch`] and its WAL encoding.
//! - [`wal`]: the write-ahead log (framing, torn-tail vs corruption).
//! - [`memtable`]: the concurrent skiplist memtable.
//! - [`sstable`]: table format, data/index blocks, bloom filter, block cache.
//! - [`version`]: versions, version edits, the manifest encoding.
//! - [`iter`]: merging iterators and [`DbIter`].
//! - [`key`]: internal keys (user key + sequence + kind) and their order.
//! - [`io`]: the file layer with its fault-injection hook.
//! - [`power_loss`]: a simulated power cut: drops what no fsync covered.
//! - [`stats`], [`metrics`]: counters and their Prometheus collector.
//! - [`coding`], [`options`], [`error`].

pub mod batch;
pub mod coding;
pub mod db;
pub mod error;
pub mod io;
pub mod iter;
pub mod key;
pub mod memtable;
pub mod metrics;
pub mod options;
pub mod power_loss;
pub mod sstable;
pub mod stats;
pub mod version;
pub mod wal;

pub use batch::WriteBatch;
pub use db::{Db, ReadOptions, Snapshot};
pub use error::{Error, Result};
pub use iter::DbIter;
pub use options::{Compression, Options, SyncPolicy, WriteOptions};
pub use stats::DbStats;
