//! The drills' errors: a drill that could not run (violations are a verdict in
//! the drill's report, not an error).

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A drill, the local cluster or a benchmark could not run.
    #[error("drill {drill}: {reason}")]
    Drill { drill: String, reason: String },
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Client(#[from] kvclient::ClientError),
}
