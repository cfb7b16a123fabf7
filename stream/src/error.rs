//! The stream crate's errors, with the file, partition or offset involved.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("schema {path}: {reason}")]
    Schema { path: PathBuf, reason: String },
    #[error("parquet {path}: {reason}")]
    Parquet { path: PathBuf, reason: String },
    #[error("manifest {path} is corrupt at byte {offset}: {reason}")]
    Corrupt {
        path: PathBuf,
        offset: u64,
        reason: String,
    },
    #[error("{path} is locked: another ingest process writes this output directory")]
    Locked { path: PathBuf },
    /// A commit that does not start where the partition's last one ended:
    /// another consumer committed this range first.
    #[error(
        "partition {partition}: commit starts at offset {first_offset}, the manifest expects {expected} or later"
    )]
    Conflict {
        partition: i32,
        first_offset: i64,
        expected: i64,
    },
    /// A commit by a deposed owner: another consumer claimed the partition
    /// (bumped its owner key) after this one did, so this one's files must
    /// not be listed (the new owner may already have removed them as
    /// orphans and be rewriting the same records).
    #[error(
        "partition {partition}: fenced: this consumer's epoch is {epoch}, the partition's is now {current} (owner: {owner}); its commit of offsets {first_offset}..={last_offset} was refused"
    )]
    Fenced {
        partition: i32,
        epoch: u64,
        current: u64,
        owner: String,
        first_offset: i64,
        last_offset: i64,
    },
    #[error("KV manifest: {reason}")]
    Manifest { reason: String },
    /// Snapshots are immutable: a name is created once.
    #[error("{key} exists: snapshots are immutable, pick another name")]
    SnapshotExists { key: String },
    #[error("kafka {op}: {source}")]
    Kafka {
        op: &'static str,
        #[source]
        source: rdkafka::error::KafkaError,
    },
    #[error("configuration: {reason}")]
    Config { reason: String },
    #[error("metrics: {0}")]
    Metrics(String),
}

pub type Result<T> = std::result::Result<T, Error>;

/// Wraps a librdkafka error with the operation that failed (`.map_err(kafka("subscribe"))`).
pub fn kafka(op: &'static str) -> impl FnOnce(rdkafka::error::KafkaError) -> Error {
    move |source| Error::Kafka { op, source }
}
