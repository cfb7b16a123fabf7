//! The storage engine's errors. Every variant names the file (and offset) or the
//! limit involved, so an operator can act on it without a debugger.

use std::path::PathBuf;

/// Errors from the LSM engine.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An operating-system call failed.
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Bytes on disk do not match their checksum or their format.
    #[error("corruption in {file} at offset {offset}: {reason}")]
    Corruption {
        file: PathBuf,
        offset: u64,
        reason: String,
    },
    /// A key over [`crate::Options::max_key_bytes`].
    #[error("key is {len} bytes; the limit is {max}")]
    KeyTooLarge { len: usize, max: usize },
    /// A value over [`crate::Options::max_value_bytes`].
    #[error("value is {len} bytes; the limit is {max}")]
    ValueTooLarge { len: usize, max: usize },
    /// A write batch over [`crate::Options::max_batch_bytes`].
    #[error("write batch is {len} bytes; the limit is {max}")]
    BatchTooLarge { len: usize, max: usize },
    /// Another process (or another `Db` in this process) holds the directory.
    #[error("database {dir} is locked by another process (LOCK held)")]
    Locked { dir: PathBuf },
    /// The directory holds no database and `create_if_missing` is off, or it
    /// holds something that is not an mlstack database.
    #[error("no database in {dir}: {reason}")]
    NotFound { dir: PathBuf, reason: String },
    /// Options that cannot work together.
    #[error("invalid options: {0}")]
    InvalidOptions(String),
    /// A background flush or compaction failed. Writes are refused until the
    /// database is reopened (which recovers from the WAL and manifest); reads
    /// keep working.
    #[error("background {job} failed, writes refused until reopen: {reason}")]
    Background { job: &'static str, reason: String },
    /// The database is shutting down.
    #[error("database is closed")]
    Closed,
}

/// `Result` with [`Error`].
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            op,
            path: path.into(),
            source,
        }
    }

    pub(crate) fn corruption(
        file: impl Into<PathBuf>,
        offset: u64,
        reason: impl Into<String>,
    ) -> Self {
        Self::Corruption {
            file: file.into(),
            offset,
            reason: reason.into(),
        }
    }

    /// True for [`Error::Corruption`].
    pub fn is_corruption(&self) -> bool {
        matches!(self, Self::Corruption { .. })
    }
}
