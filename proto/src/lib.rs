//! # proto: mlstack's wire contracts
//!
//! Every component talks to another only through a gRPC API defined here, so each
//! can run as its own process or container (see `ARCHITECTURE.md`, "Who depends on
//! whom"). Packages are versioned (`mlstack.kv.v1`, `mlstack.infer.v1`, ...): a
//! breaking change gets a new package, never an edit in place.
//!
//! The `.proto` files are compiled at build time by `protox`, a pure-Rust protobuf
//! compiler, and `tonic-prost-build` (see `build.rs`): building mlstack needs no
//! system `protoc`.
//!
//! Every mlstack gRPC server mounts the standard services from [`server`]:
//! gRPC health checking (`grpc.health.v1`) and server reflection (v1 and v1alpha),
//! so `grpcurl`, `grpcio` and other clients work without the `.proto` files.
//!
//! # Layout
//! - [`diag::v1`]: `Diag.Ping`, a relayable ping every server mounts (liveness and
//!   trace-propagation checks).
//! - [`kv::v1`]: the Raft KV client API (`consensus`).
//! - [`raft::v1`]: the Raft peer transport between KV nodes (`consensus`).
//! - [`infer::v1`]: the inference API (`infer`).
//! - [`server`]: health + reflection wiring shared by every server.
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

pub mod server;

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
    /// An endpoint string is not a valid URI.
    #[error("invalid endpoint {endpoint:?}: {reason}")]
    InvalidEndpoint { endpoint: String, reason: String },
}
