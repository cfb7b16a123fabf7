//! # proto: mlstack's wire contracts
//!
//! Every component talks to another only through a gRPC API defined here, so each
//! can run as its own process or container (see `docs/ARCHITECTURE.md`, "Crates, and who depends on
//! whom"). Packages are versioned (`mlstack.kv.v1`, `mlstack.infer.v1`, ...): a
//! breaking change gets a new package, never an edit in place.
//!
//! The `.proto` files are compiled at build time by `protox`, a pure-Rust protobuf
//! compiler, and `tonic-prost-build` (see `build.rs`): building mlstack needs no
//! system `protoc`.
//!
//! Every mlstack gRPC server starts through [`server::GrpcServer`], which mounts
//! the standard services beside the component's own: gRPC health checking
//! (`grpc.health.v1`), server reflection (v1 and v1alpha), so `grpcurl`,
//! `grpcio` and other clients work without the `.proto` files, and `Diag`
//! ([`diag_service`]), a relayable ping that checks a chain of servers and the
//! trace propagation between them in one call.
//!
//! # Layout
//! - [`diag::v1`]: `Diag.Ping`, a relayable ping every server mounts (liveness and
//!   trace-propagation checks).
//! - [`kv::v1`]: the Raft KV client API (`consensus`).
//! - [`raft::v1`]: the Raft peer transport between KV nodes (`consensus`).
//! - [`infer::v1`]: the inference API (`infer`).
//! - [`server`]: [`server::GrpcServer`], the one gRPC server start-up (health,
//!   reflection, `Diag`, trace context, drain on stop), and the client
//!   [`server::channel`].
//! - [`http_server`]: [`http_server::HttpServer`], the one HTTP(S) server
//!   start-up beside a gRPC port (the OpenAI API, the trace query port).
//! - [`diag_service`]: the `Diag` service every server mounts.
//! - [`tls`]: TLS for servers and clients (rustls through tonic), and
//!   [`tls::PeerVerifier`], the Raft transport's check that a caller holds a
//!   certificate of the cluster CA.
//! - [`auth`]: API keys (`Authorization: Bearer`), shared by the inference
//!   server and the KV nodes.
//! - [`access`]: [`access::Access`], the interceptor that requires the
//!   configured credentials (client certificate, key) and says who is admin.
//! - [`certs`]: `mlstack certs generate`, a development PKI (`rcgen`).
//! - [`trace_receiver`]: [`trace_receiver::TraceReceiver`], OpenTelemetry's
//!   OTLP `TraceService/Export` (a contract of the field, not ours) writing to
//!   `observe`'s span store, with the `/api/traces` query port
//!   (`mlstack trace serve`).
//! - [`FILE_DESCRIPTOR_SET`]: the encoded descriptors of all the above.

pub mod diag {
    /// `mlstack.diag.v1`
    pub mod v1 {
        #![allow(missing_docs, clippy::all, missing_debug_implementations)]
        tonic::include_proto!("mlstack.diag.v1");
    }
}

pub mod kv {
    /// `mlstack.kv.v1`
    pub mod v1 {
        #![allow(missing_docs, clippy::all, missing_debug_implementations)]
        tonic::include_proto!("mlstack.kv.v1");
    }
}

pub mod raft {
    /// `mlstack.raft.v1`
    pub mod v1 {
        #![allow(missing_docs, clippy::all, missing_debug_implementations)]
        tonic::include_proto!("mlstack.raft.v1");
    }
}

pub mod infer {
    /// `mlstack.infer.v1`
    pub mod v1 {
        #![allow(missing_docs, clippy::all, missing_debug_implementations)]
        tonic::include_proto!("mlstack.infer.v1");
    }
}

pub mod access;
pub mod auth;
pub mod certs;
pub mod diag_service;
pub mod http_server;
pub mod server;
pub mod tls;
pub mod trace_receiver;

/// Encoded `FileDescriptorSet` of every mlstack `.proto`, for server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/mlstack_descriptor.bin"));

/// Errors from the shared gRPC wiring.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The reflection service could not be built from the embedded descriptors.
    #[error("building gRPC reflection service: {source}")]
    Reflection {
        #[from]
        source: tonic_reflection::server::Error,
    },
    /// A client could not reach an endpoint.
    #[error("connecting to {endpoint}: {source}")]
    Connect {
        endpoint: String,
        #[source]
        source: tonic::transport::Error,
    },
    /// A TLS file or setting could not be used.
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    /// An endpoint string is not a valid URI.
    #[error("invalid endpoint {endpoint:?}: {reason}")]
    InvalidEndpoint { endpoint: String, reason: String },
    /// A server could not bind its address.
    #[error("binding gRPC on {addr}: {source}")]
    Bind {
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
    /// An HTTP port beside a gRPC server (the trace query port) could not bind.
    #[error("binding HTTP on {addr}: {source}")]
    BindHttp {
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
    /// A server stopped with an error.
    #[error("gRPC server on {addr}: {reason}")]
    Serve {
        addr: std::net::SocketAddr,
        reason: String,
    },
}
