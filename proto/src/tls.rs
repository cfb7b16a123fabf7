//! TLS for mlstack's gRPC servers and clients: rustls through tonic's TLS
//! support, with PEM files as etcd takes them (`--cert-file`, `--key-file`,
//! `--trusted-ca-file`, `--peer-trusted-ca-file`).
//!
//! Two certificate authorities, as in etcd's security model:
//! - the **cluster CA** signs node certificates. A node presents its
//!   certificate as a server (to clients and peers) and as a client (to
//!   peers), and the Raft transport accepts only callers whose certificate
//!   chains to this CA ([`PeerVerifier`]);
//! - the **client CA** signs client certificates: they open the client API
//!   and nothing else, because a client certificate does not chain to the
//!   cluster CA.
//!
//! The TLS layer of a node accepts certificates from either CA (or none, when
//! client certificates are optional); what a connection may call is decided
//! per service, after the handshake ([`PeerVerifier`], [`crate::access`]).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::{CertificateDer, UnixTime, pem::PemObject};
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::ClientCertVerifier;
use tonic::transport::{Certificate, ClientTlsConfig, Identity, ServerTlsConfig};

/// A TLS file that could not be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("reading {what} {path}: {source}")]
    Read {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{what}: {reason}")]
    Invalid { what: &'static str, reason: String },
}

/// Reads a PEM file, checking it holds at least one PEM block.
pub fn read_pem(what: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    let pem = std::fs::read(path).map_err(|source| TlsError::Read {
        what,
        path: path.to_path_buf(),
        source,
    })?;
    if !pem.windows(11).any(|w| w == b"-----BEGIN ") {
        return Err(TlsError::Invalid {
            what,
            reason: format!("{} holds no PEM block", path.display()),
        });
    }
    Ok(pem)
}

fn certs(what: &'static str, pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Invalid {
            what,
            reason: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::Invalid {
            what,
            reason: "no CERTIFICATE block".into(),
        });
    }
    Ok(certs)
}

/// A server's TLS: its certificate and key, and the CAs whose client
/// certificates the handshake accepts.
#[derive(Clone)]
pub struct ServerTls {
    pub cert_pem: Vec<u8>,
    pub key_pem: Vec<u8>,
    /// Every CA a client certificate may chain to (PEM blocks concatenated);
    /// `None`: clients present no certificate.
    pub client_roots_pem: Option<Vec<u8>>,
    /// Refuse a handshake without a client certificate (else the services
    /// decide, see [`crate::access`]).
    pub require_client_cert: bool,
}

impl std::fmt::Debug for ServerTls {
    // Never print the private key.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerTls")
            .field("client_roots", &self.client_roots_pem.is_some())
            .field("require_client_cert", &self.require_client_cert)
            .finish_non_exhaustive()
    }
}

impl ServerTls {
    /// A server's certificate and key from PEM files (`--tls-cert`,
    /// `--tls-key`), with no client certificates. Parsed and matched now, so
    /// a bad file fails at start-up naming itself, not at the first
    /// handshake.
    pub fn from_files(cert: &Path, key: &Path) -> Result<Self, TlsError> {
        let tls = ServerTls {
            cert_pem: read_pem("--tls-cert", cert)?,
            key_pem: read_pem("--tls-key", key)?,
            client_roots_pem: None,
            require_client_cert: false,
        };
        tls.rustls_config()?;
        Ok(tls)
    }

    /// tonic's server configuration; the certificates are checked here so a
    /// bad file fails at start-up, naming itself.
    pub fn config(&self) -> Result<ServerTlsConfig, TlsError> {
        certs("server certificate", &self.cert_pem)?;
        let mut c =
            ServerTlsConfig::new().identity(Identity::from_pem(&self.cert_pem, &self.key_pem));
        if let Some(roots) = &self.client_roots_pem {
            certs("client CA", roots)?;
            c = c
                .client_ca_root(Certificate::from_pem(roots))
                .client_auth_optional(!self.require_client_cert);
        }
        Ok(c)
    }

    /// The same certificate and key as a rustls server configuration, for an
    /// HTTPS port beside the gRPC one (the inference server's OpenAI API):
    /// ring's crypto, TLS 1.2 and 1.3, ALPN `h2` then `http/1.1`. Client
    /// certificates are not asked for; that port's clients carry API keys.
    pub fn rustls_config(&self) -> Result<Arc<rustls::ServerConfig>, TlsError> {
        use rustls::pki_types::PrivateKeyDer;
        let chain = certs("server certificate", &self.cert_pem)?;
        let key = PrivateKeyDer::from_pem_slice(&self.key_pem).map_err(|e| TlsError::Invalid {
            what: "server key",
            reason: e.to_string(),
        })?;
        let invalid = |e: rustls::Error| TlsError::Invalid {
            what: "server certificate and key",
            reason: e.to_string(),
        };
        let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(invalid)?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(invalid)?;
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }
}

/// A client's TLS: the CA that signs the servers' certificates, and the
/// client's own certificate when the server asks for one.
#[derive(Clone)]
pub struct ClientTls {
    pub ca_pem: Vec<u8>,
    /// (certificate, key) PEM.
    pub identity: Option<(Vec<u8>, Vec<u8>)>,
}

impl std::fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientTls")
            .field("identity", &self.identity.is_some())
            .finish_non_exhaustive()
    }
}

impl ClientTls {
    pub fn config(&self) -> Result<ClientTlsConfig, TlsError> {
        certs("CA", &self.ca_pem)?;
        let mut c = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(&self.ca_pem));
        if let Some((cert, key)) = &self.identity {
            certs("client certificate", cert)?;
            c = c.identity(Identity::from_pem(cert, key));
        }
        Ok(c)
    }
}

/// A rustls client configuration trusting only the CAs in `ca_pem` (ring's
/// crypto, TLS 1.2 and 1.3): for HTTPS clients (`reqwest`'s
/// `use_preconfigured_tls`), as [`ClientTls`] is for gRPC ones.
pub fn rustls_client_config(ca_pem: &[u8]) -> Result<rustls::ClientConfig, TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    for c in certs("CA", ca_pem)? {
        roots.add(c).map_err(|e| TlsError::Invalid {
            what: "CA",
            reason: e.to_string(),
        })?;
    }
    Ok(rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| TlsError::Invalid {
        what: "client TLS",
        reason: e.to_string(),
    })?
    .with_root_certificates(roots)
    .with_no_client_auth())
}

/// Checks that a caller's certificate chains to the cluster CA: the gate of
/// the Raft transport. The TLS handshake already verified the chain against
/// *every* accepted CA; this re-verifies it against the cluster CA alone, so
/// a client certificate (client CA) cannot speak Raft.
#[derive(Clone)]
pub struct PeerVerifier {
    verifier: Arc<dyn ClientCertVerifier>,
}

impl std::fmt::Debug for PeerVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerVerifier").finish_non_exhaustive()
    }
}

impl PeerVerifier {
    /// A verifier trusting only the CAs in `cluster_ca_pem`.
    pub fn new(cluster_ca_pem: &[u8]) -> Result<Self, TlsError> {
        let mut roots = rustls::RootCertStore::empty();
        for c in certs("cluster CA", cluster_ca_pem)? {
            roots.add(c).map_err(|e| TlsError::Invalid {
                what: "cluster CA",
                reason: e.to_string(),
            })?;
        }
        let verifier = WebPkiClientVerifier::builder_with_provider(
            Arc::new(roots),
            Arc::new(rustls::crypto::ring::default_provider()),
        )
        .build()
        .map_err(|e| TlsError::Invalid {
            what: "cluster CA",
            reason: e.to_string(),
        })?;
        Ok(Self { verifier })
    }

    /// Verifies a certificate chain (leaf first) against the cluster CA.
    pub fn verify_chain(&self, chain: &[CertificateDer<'_>]) -> Result<(), String> {
        let (leaf, intermediates) = chain
            .split_first()
            .ok_or_else(|| "no client certificate".to_string())?;
        self.verifier
            .verify_client_cert(leaf, intermediates, UnixTime::now())
            .map(|_| ())
            .map_err(|e| format!("certificate not signed by the cluster CA: {e}"))
    }

    /// Checks that the certificate `chain` (leaf first, already verified by
    /// [`PeerVerifier::check`]) names node `id`: its subject alternative
    /// names hold the DNS name `node-<id>`, as `mlstack certs generate`
    /// writes them. So a node's certificate speaks Raft as that node only: a
    /// stolen key of node 2 cannot campaign, lead or send snapshots as node
    /// 3 (etcd's `--peer-cert-allowed-hostname`, fixed to the node's id).
    pub fn check_node(chain: &[CertificateDer<'_>], id: u64) -> Result<(), tonic::Status> {
        let name = format!("node-{id}");
        let denied = |why: String| {
            tonic::Status::permission_denied(format!(
                "a Raft message from node {id} needs a certificate naming {name}: {why}"
            ))
        };
        let leaf = chain
            .first()
            .ok_or_else(|| denied("no certificate".into()))?;
        let cert = webpki::EndEntityCert::try_from(leaf)
            .map_err(|e| denied(format!("unreadable certificate: {e}")))?;
        let server_name = rustls::pki_types::ServerName::try_from(name.as_str())
            .map_err(|e| denied(e.to_string()))?;
        cert.verify_is_valid_for_subject_name(&server_name)
            .map_err(|_| denied("the caller's certificate names another node".into()))
    }

    /// Start-up's check of a node's own certificate (PEM): it must name
    /// `node-<id>`, or every Raft message it sends would be refused.
    pub fn check_own_cert(cert_pem: &[u8], id: u64) -> Result<(), TlsError> {
        let chain = certs("--tls-cert", cert_pem)?;
        Self::check_node(&chain, id).map_err(|s| TlsError::Invalid {
            what: "--tls-cert",
            reason: format!(
                "{} (use node-{id}.pem from `mlstack certs generate` for --id {id})",
                s.message()
            ),
        })
    }

    /// The gate for one request: `UNAUTHENTICATED` without a certificate
    /// from the cluster CA.
    pub fn check<T>(&self, request: &tonic::Request<T>) -> Result<(), tonic::Status> {
        let chain = request.peer_certs().ok_or_else(|| {
            tonic::Status::unauthenticated(
                "the Raft transport needs a peer certificate signed by the cluster CA",
            )
        })?;
        self.verify_chain(&chain)
            .map_err(|e| tonic::Status::unauthenticated(format!("Raft peer refused: {e}")))
    }
}
