//! # kvclient: the one client of the Raft KV cluster
//!
//! Every component that keeps metadata in the KV cluster (the `mlstack kv` CLI,
//! ingest's manifest, the trainer's model registry, the chaos drills and the
//! benchmark) talks to it through this crate, the way every Kubernetes
//! component talks to etcd through `clientv3`. It depends only on `proto` (the
//! wire contract) and `observe` (trace context on every call), never on the
//! server (`consensus`), so a component links the client without linking Raft.
//!
//! What a Raft client has to get right (Ongaro's thesis, §6.2–6.3): find the
//! leader and follow its hints, retry through elections, and tag each write
//! with a request id so a retry of an already-applied write is answered from
//! the server's deduplication table instead of applying twice.
//!
//! # Layout
//! - [`client`]: [`Client`], the async client: leader hints, retries with a
//!   deadline, request ids, compare-and-set, a paging scan ([`Client::scan_all`]).
//! - [`blocking`]: [`blocking::Client`], the same client for synchronous callers
//!   (librdkafka's rebalance callbacks), driven on a runtime thread of its own.
//! - [`error`]: [`ClientError`], and whether a failed write may have applied.
//! - [`security`]: [`Security`], TLS and the API key from `MLSTACK_KV_*`
//!   (as `etcdctl` reads `ETCDCTL_*`).
//! - [`LEADER_ADDR_HEADER`], [`LEADER_ID_HEADER`]: the leader hint a follower
//!   attaches to `UNAVAILABLE`; the server (`consensus::service`) sets them.

pub mod blocking;
pub mod client;
pub mod error;
pub mod security;

pub use client::{Client, Timeouts};
pub use error::ClientError;
pub use security::Security;

/// Whether `s` may be one `/`-separated segment of a key that names a
/// user's thing (`datasets/<topic>/<name>`, `models/<run>/<name>`): 1–128
/// characters of `[A-Za-z0-9._-]`, not `.` or `..`, so a name can neither
/// reach into another key's space nor be empty.
pub fn is_key_segment(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && s != "."
        && s != ".."
}

/// A Raft node id, as the cluster's membership names it.
pub type NodeId = u64;

/// Metadata key carrying the leader's address on `UNAVAILABLE`.
pub const LEADER_ADDR_HEADER: &str = "x-mlstack-leader";
/// Metadata key carrying the leader's node id on `UNAVAILABLE`.
pub const LEADER_ID_HEADER: &str = "x-mlstack-leader-id";
