//! The client's credentials: TLS (the CA that signs the nodes' certificates,
//! and a client certificate when the cluster asks for one) and an API key.
//!
//! Every program that talks to the KV (the CLI, ingest, the trainer's
//! registry, the inference server) reads them from the environment, as
//! `etcdctl` reads `ETCDCTL_CACERT`, `ETCDCTL_CERT`, `ETCDCTL_KEY`:
//!
//! | variable | what |
//! |---|---|
//! | `MLSTACK_KV_CA` | PEM of the cluster CA; setting it turns TLS on |
//! | `MLSTACK_KV_CERT`, `MLSTACK_KV_KEY` | the client certificate and key (both or neither) |
//! | `MLSTACK_KV_TOKEN` | an API key, sent as `authorization: Bearer <key>` |
//!
//! Unset, the client speaks plaintext without credentials, as before.

use crate::error::ClientError;
use std::path::PathBuf;
use tonic::metadata::{Ascii, MetadataValue};

/// A client's credentials.
#[derive(Clone, Default)]
pub struct Security {
    pub tls: Option<proto::tls::ClientTls>,
    pub token: Option<String>,
}

impl std::fmt::Debug for Security {
    // Never print the key.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Security")
            .field("tls", &self.tls)
            .field("token", &self.token.as_ref().map(|_| "<set>"))
            .finish()
    }
}

/// A variable's value; set but empty is an error (an unsubstituted compose
/// variable must not turn TLS off quietly).
fn var(name: &'static str) -> Result<Option<String>, ClientError> {
    match std::env::var(name) {
        Ok(v) if v.trim().is_empty() => Err(ClientError::Security {
            var: name,
            reason: "set but empty (unset it to go without)".into(),
        }),
        Ok(v) => Ok(Some(v)),
        Err(_) => Ok(None),
    }
}

impl Security {
    /// The credentials the `MLSTACK_KV_*` variables name.
    pub fn from_env() -> Result<Self, ClientError> {
        let bad = |var: &'static str, reason: String| ClientError::Security { var, reason };
        let read =
            |var_name: &'static str, what: &'static str| -> Result<Option<Vec<u8>>, ClientError> {
                match var(var_name)? {
                    None => Ok(None),
                    Some(p) => proto::tls::read_pem(what, &PathBuf::from(p))
                        .map(Some)
                        .map_err(|e| bad(var_name, e.to_string())),
                }
            };
        let ca = read("MLSTACK_KV_CA", "cluster CA")?;
        let cert = read("MLSTACK_KV_CERT", "client certificate")?;
        let key = read("MLSTACK_KV_KEY", "client key")?;
        let identity = match (cert, key) {
            (Some(c), Some(k)) => Some((c, k)),
            (None, None) => None,
            _ => {
                return Err(bad(
                    "MLSTACK_KV_CERT",
                    "MLSTACK_KV_CERT and MLSTACK_KV_KEY go together".into(),
                ));
            }
        };
        let tls = match (ca, identity) {
            (Some(ca_pem), identity) => Some(proto::tls::ClientTls { ca_pem, identity }),
            (None, Some(_)) => {
                return Err(bad(
                    "MLSTACK_KV_CA",
                    "a client certificate needs TLS: set MLSTACK_KV_CA to the cluster CA".into(),
                ));
            }
            (None, None) => None,
        };
        let token = var("MLSTACK_KV_TOKEN")?;
        if let Some(t) = &token {
            Self::header(t).map_err(|reason| bad("MLSTACK_KV_TOKEN", reason))?;
        }
        Ok(Self { tls, token })
    }

    fn header(token: &str) -> Result<MetadataValue<Ascii>, String> {
        format!("Bearer {}", token.trim())
            .parse()
            .map_err(|_| "the key must be printable ASCII".to_string())
    }

    /// The `authorization` value to send, if any.
    pub(crate) fn authorization(&self) -> Option<MetadataValue<Ascii>> {
        self.token.as_deref().and_then(|t| Self::header(t).ok())
    }
}

/// What every call carries: the caller's trace context, and the key.
#[derive(Clone, Debug, Default)]
pub struct Outgoing {
    pub(crate) authorization: Option<MetadataValue<Ascii>>,
}

impl tonic::service::Interceptor for Outgoing {
    fn call(&mut self, request: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        let mut request = observe::grpc::InjectContext.call(request)?;
        if let Some(a) = &self.authorization {
            request.metadata_mut().insert("authorization", a.clone());
        }
        Ok(request)
    }
}
