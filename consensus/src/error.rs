//! The crate's errors, grouped by where they arise, with context fields.

use std::net::SocketAddr;
use std::path::PathBuf;

/// Errors starting or running a node, a chaos drill or a benchmark.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Bad flags, peer lists or timeouts: a clear startup error.
    #[error("configuration: {reason}")]
    Config { reason: String },
    /// The data directory could not be opened or belongs elsewhere.
    #[error(transparent)]
    Open(#[from] crate::store::OpenError),
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("binding {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    /// openraft refused an operation.
    #[error("raft {op}: {reason}")]
    Raft { op: &'static str, reason: String },
    #[error(transparent)]
    Client(#[from] kvclient::ClientError),
    /// A chaos drill or benchmark could not run (not a verdict: violations are
    /// reported in the drill's result).
    #[error("drill {drill}: {reason}")]
    Drill { drill: String, reason: String },
}
