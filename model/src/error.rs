//! The crate's errors: a model description or checkpoint that cannot be used.

use std::path::PathBuf;

use crate::gguf::GgufError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Gguf(#[from] GgufError),
    /// A hyperparameter is absent or unusable.
    #[error("model config {key:?}: {reason}")]
    Config { key: String, reason: String },
    /// A tensor is absent, misshapen or of an unsupported type.
    #[error("tensor {name:?}: {reason}")]
    Tensor { name: String, reason: String },
    #[error("reading {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A safetensors file does not parse or cannot be written.
    #[error("safetensors {path}: {reason}")]
    Safetensors { path: PathBuf, reason: String },
}

impl Error {
    pub fn tensor(name: &str, reason: impl Into<String>) -> Self {
        Error::Tensor {
            name: name.to_string(),
            reason: reason.into(),
        }
    }
}
