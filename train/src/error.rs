//! The trainer's error type: every failure names what it was doing and on what.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config {key}: {reason}")]
    Config { key: String, reason: String },
    #[error("model: {0}")]
    Model(#[from] model::Error),
    #[error("tokenizer: {0}")]
    Tokenizer(#[from] model::tokenizer::TokenizerError),
    #[error("dataset {source_name}: {reason}")]
    Data { source_name: String, reason: String },
    #[error("checkpoint {path}: {reason}")]
    Checkpoint { path: PathBuf, reason: String },
    /// A collective failed because a peer died, hung past the timeout, or
    /// sent something that is not the protocol.
    #[error("rank {rank}: {op} with rank {peer} failed: {reason}")]
    Collective {
        rank: usize,
        peer: usize,
        op: &'static str,
        reason: String,
    },
    #[error("rendezvous at {addr}: {reason}")]
    Rendezvous { addr: String, reason: String },
    #[error("KV registry: {0}")]
    Registry(String),
    #[error("launch: {0}")]
    Launch(String),
    #[error("plot: {0}")]
    Plot(String),
    #[error("metrics: {0}")]
    Metrics(String),
    /// The loss became NaN or infinite: training cannot continue from here.
    #[error("step {step}: loss is {loss} (diverged)")]
    Diverged { step: u64, loss: f32 },
}

pub type Result<T, E = TrainError> = std::result::Result<T, E>;

pub(crate) fn io(
    op: &'static str,
    path: impl Into<PathBuf>,
) -> impl FnOnce(std::io::Error) -> TrainError {
    let path = path.into();
    move |source| TrainError::Io { op, path, source }
}

pub(crate) fn config_err(key: &str, reason: impl Into<String>) -> TrainError {
    TrainError::Config {
        key: key.to_string(),
        reason: reason.into(),
    }
}
