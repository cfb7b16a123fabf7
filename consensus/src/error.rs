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
    Client(#[from] ClientError),
    /// A chaos drill or benchmark could not run (not a verdict: violations are
    /// reported in the drill's result).
    #[error("drill {drill}: {reason}")]
    Drill { drill: String, reason: String },
}

/// Errors of the Rust client ([`crate::client::Client`]).
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("no endpoints given")]
    NoEndpoints,
    #[error("endpoint {endpoint:?}: {reason}")]
    Endpoint { endpoint: String, reason: String },
    /// The server answered with a definite error (the write did not apply).
    #[error("{op}: {code:?}: {message}")]
    Status {
        op: &'static str,
        code: tonic::Code,
        message: String,
    },
    /// Every attempt failed or timed out: a write may or may not have applied.
    #[error("{op}: gave up after {attempts} attempts over {elapsed_ms} ms: {last}")]
    Unavailable {
        op: &'static str,
        attempts: u32,
        elapsed_ms: u64,
        last: String,
        /// True when some attempt may have reached a leader and been proposed.
        maybe_applied: bool,
    },
}

impl ClientError {
    /// Whether a write that returned this error may still have applied.
    pub fn outcome_unknown(&self) -> bool {
        matches!(
            self,
            ClientError::Unavailable {
                maybe_applied: true,
                ..
            }
        )
    }

    pub fn code(&self) -> Option<tonic::Code> {
        match self {
            ClientError::Status { code, .. } => Some(*code),
            _ => None,
        }
    }
}
