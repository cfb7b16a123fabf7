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
//! The chaos drills ([`chaos`]) start a real cluster of child processes behind
//! fault-injecting TCP proxies, record every client operation, and check the
//! history with a linearizability checker ([`linearizability`], Porcupine's
//! algorithm).
//!
//! # Layout
//! - [`types`]: the replicated commands, responses and openraft's type config.
//! - [`store`]: the Raft log and the state machine in one LSM per node (group
//!   commit, atomic apply, snapshots from an LSM snapshot, deduplication).
//! - [`network`]: the Raft transport over gRPC (streamed snapshots).
//! - [`service`]: the client API `mlstack.kv.v1.KV` (read index, leader hints).
//! - [`node`]: starting a node from its configuration.
//! - [`client`]: the Rust client (leader following, retries with request ids).
//! - [`metrics`]: `mlstack_kv_*` Prometheus metrics.
//! - [`linearizability`]: the history checker.
//! - [`proxy`]: the fault-injecting TCP proxy.
//! - [`cluster`]: a local cluster of `mlstack kv serve` child processes.
//! - [`chaos`]: the drills and their workload.
//! - [`bench`]: `mlstack kv bench`.
//! - [`error`]: the crate's errors.

pub mod bench;
pub mod chaos;
pub mod client;
pub mod cluster;
pub mod error;
pub mod linearizability;
pub mod metrics;
pub mod network;
pub mod node;
pub mod proxy;
pub mod service;
pub mod store;
pub mod types;

pub use client::Client;
pub use error::{ClientError, Error};
pub use node::{Node, NodeConfig, parse_peers};
