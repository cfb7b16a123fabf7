//! # stream: Kafka to Parquet, exactly once
//!
//! DDIA chapter 11 ("Stream Processing"; "Exactly-once semantics" and
//! "Idempotence" in its fault-tolerance section) and the Kafka Connect sink
//! pattern as code: a consumer-group consumer (`rdkafka`, librdkafka built from
//! source) decodes JSON records into Arrow columns against a declared schema,
//! writes rolling zstd Parquet part files, and commits each file (fsync,
//! rename), then the manifest, then the Kafka offsets, so a crash at any point
//! neither loses nor duplicates a record. Bad records go to a dead-letter
//! topic with their error.
//!
//! # Layout
//! - [`schema`]: the declared schema, per-record validation, Arrow builders.
//! - [`writer`]: Parquet part files (temp → fsync → link → fsync dir),
//!   written through `storage::io::Fs` (so a test can cut the power).
//! - [`manifest`]: the authoritative record of committed files: a local
//!   checksummed file, or the Raft KV cluster (one key per commit,
//!   compare-and-set on a per-partition head, fenced by an owner epoch).
//! - [`snapshot`]: dataset snapshots: the manifest frozen under a name in
//!   the KV (`datasets/<topic>/<name>`), what a training run names as its data.
//! - [`ingest`]: the consume → validate → write → commit loop, rebalances, DLQ.
//! - [`produce`]: the load generator / corpus feeder (`mlstack produce`).
//! - [`topics`]: topic creation and high watermarks over the Kafka protocol.
//! - [`broker`]: a local `tansu` broker for tests and benchmarks.
//! - [`metrics`]: the `mlstack_ingest_*` metrics.
//! - [`error`]: the crate's errors.

pub mod broker;
pub mod error;
pub mod ingest;
pub mod manifest;
pub mod metrics;
pub mod produce;
pub mod schema;
pub mod snapshot;
pub mod topics;
pub mod writer;

pub use error::{Error, Result};
