//! The client's errors, with what a caller needs to decide on a retry.

/// Errors of [`crate::Client`].
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("no endpoints given")]
    NoEndpoints,
    #[error("endpoint {endpoint:?}: {reason}")]
    Endpoint { endpoint: String, reason: String },
    /// The credentials in the environment cannot be used.
    #[error("{var}: {reason}")]
    Security { var: &'static str, reason: String },
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
    /// The blocking client's runtime thread is gone (it panicked or could not start).
    #[error("KV client runtime: {reason}")]
    Runtime { reason: String },
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
