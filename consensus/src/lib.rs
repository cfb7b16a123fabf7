//! # consensus: a Raft-replicated key-value cluster
//!
//! DDIA chapters 5 ("Replication") and 9 ("Consistency and Consensus") as a
//! running cluster, and the Raft paper (Ongaro & Ousterhout, "In Search of an
//! Understandable Consensus Algorithm", 2014; §5 replication, §6 membership,
//! §7 snapshots, §8 client interaction) as code: `openraft` 0.9 drives the
//! protocol, the [`storage`] LSM persists each node's log and state machine,
//! tonic carries both the client API and the Raft transport. It is the stack's
//! metadata store, as etcd is Kubernetes'.
//!
//! The chaos drills (crate `chaos`) start a real cluster of child processes
//! behind fault-injecting TCP proxies, record every client operation, and check
//! the history with a linearizability checker (Porcupine's algorithm).
//!
//! # Layout
//! - [`types`]: the replicated commands, responses and openraft's type config.
//! - [`store`]: the Raft log and the state machine in one LSM per node (group
//!   commit, atomic apply, snapshots built from an LSM snapshot into files of
//!   records, deduplication).
//! - [`network`]: the Raft transport over gRPC (snapshot files streamed in chunks).
//! - [`service`]: the client API `mlstack.kv.v1.KV` (read index, leader hints).
//! - [`batcher`]: proposal batching (many client writes, one log entry).
//! - [`read_index`]: read-index coalescing (many linearizable reads, one
//!   leadership-confirming heartbeat round).
//! - [`session_expiry`]: the leader proposes the expiry of idle clients'
//!   deduplication state (`store/sessions.rs` applies it).
//! - [`config`]: a node's configuration and `--peers` parsing.
//! - [`member_addr`]: a member's `CLIENT[+PEER]` address (a peer port of its
//!   own for Raft, as etcd separates peer and client URLs).
//! - [`node`]: starting a node from its configuration, and the gates in front
//!   of its two services (TLS, API keys, the Raft peer check).
//! - [`metrics`]: `mlstack_kv_*` Prometheus metrics.
//! - [`error`]: the crate's errors.
//!
//! Outside this crate: the client in `kvclient` (it depends only on `proto`,
//! so components link it without linking Raft), the chaos drills, the local
//! process cluster and the linearizability checker in `chaos`, and
//! `mlstack kv bench` in `bench`.

pub mod batcher;
pub mod config;
pub mod error;
pub mod member_addr;
pub mod metrics;
pub mod network;
pub mod node;
pub mod read_index;
pub mod service;
pub mod session_expiry;
pub mod store;
pub mod types;

pub use config::{NodeConfig, parse_peers};
pub use error::Error;
/// The client lives in `kvclient` (it depends only on `proto`); re-exported
/// for callers that already link the server.
pub use kvclient::{Client, ClientError};
pub use node::Node;
