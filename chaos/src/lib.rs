//! # chaos: faults against a real KV cluster, and a verdict
//!
//! Jepsen's method on one machine: start a real cluster of `mlstack kv serve`
//! processes behind fault-injecting TCP proxies, drive it with concurrent
//! clients while killing, pausing, partitioning and slowing nodes, record every
//! operation with its invocation and return times, and check the history with
//! a linearizability checker (Porcupine's algorithm: Wing & Gong's search with
//! per-key partitioning and memoisation of visited states, Lowe's P-compositionality).
//!
//! The same drills run against the `docker compose` stack's containers
//! (`mlstack chaos --docker PROJECT`), with container-level faults.
//!
//! This is a harness, not part of the server: it lives outside `consensus` so
//! that the library a node links never starts processes. The KV benchmark
//! (`bench`) starts its clusters through [`cluster`] too.
//!
//! # Layout
//! - [`cluster`]: [`cluster::LocalCluster`], a cluster of child processes with
//!   a [`proxy::Proxy`] on every link.
//! - [`proxy`]: the fault-injecting TCP proxy (cut, delay, pause).
//! - [`target`]: what a drill needs of a cluster ([`target::Target`]), and
//!   the leader and convergence polls both clusters share.
//! - [`docker`]: [`docker::DockerCluster`], the compose stack's KV containers
//!   as a target: `docker kill`/`pause`, `iptables` in each node's namespace.
//! - [`linearizability`]: the history checker.
//! - [`drills`]: the drills `mlstack chaos` runs, their workload and report.
//! - [`error`]: the drills' [`Error`] type.

pub mod cluster;
pub mod docker;
pub mod drills;
pub mod error;
pub mod linearizability;
pub mod proxy;
pub mod target;

pub use error::Error;

/// A Raft node id.
pub use kvclient::NodeId;
