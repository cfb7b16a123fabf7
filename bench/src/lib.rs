//! # bench: every component measured against what a user would pick instead
//!
//! In the spirit of RocksDB's `tools/db_bench`: the benchmarks live outside the
//! libraries they measure (so no library links a peer or a load generator),
//! each drives its component through the interface a user has, runs the peer
//! on the same work in the same run, and reports in one shape ([`report`]).
//! The `mlstack <component> bench` subcommands call these.
//!
//! # Layout
//! - [`report`]: [`report::Row`], [`report::Report`] (the JSON convention),
//!   medians with the spread, percentiles, table cells.
//! - [`lsm`]: `mlstack lsm bench`, the storage engine against fjall and RocksDB.
//! - [`rocksdb`]: RocksDB's `db_bench` as the storage peer: flags, runs, its
//!   output parsed into rows.
//! - [`kv`]: `mlstack kv bench`, the Raft KV cluster: puts, linearizable and
//!   serializable gets, leader failover, against etcd.
//! - [`etcd`]: etcd as the KV peer: a local cluster of `etcd` processes and
//!   a client of its gRPC API (etcd's `.proto` files, compiled by `build.rs`).
//! - [`ingest`]: `mlstack ingest bench`, Kafka → Parquet against a raw consumer.
//! - [`engine`]: `mlstack infer bench-engine`, prefill and decode against llama.cpp.
//! - [`serve`]: `mlstack infer bench-serve`, the serving load generator against
//!   llama.cpp's C++ `llama-server` (parallel slots, the same KV budget).
//! - [`kernels`]: `mlstack kernels bench`, every CUDA kernel against its CPU
//!   reference, then timed beside a device copy (on a GPU only).
//! - [`train`]: `mlstack train bench`, the training step (DP1, DP2, ZeRO-1,
//!   recomputation, TP2) against JAX.

pub mod engine;
pub mod etcd;
pub mod ingest;
pub mod kernels;
pub mod kv;
pub mod lsm;
pub mod report;
pub mod rocksdb;
pub mod serve;
pub mod train;

pub use report::{Report, Row};
