//! Prometheus metrics of a KV node (`mlstack_kv_*`).
//!
//! Metrics are created per node and registered in the process registry by
//! [`Metrics::register`]; tests that run several nodes in one process keep
//! them unregistered (the registry refuses duplicate names).

use prometheus::{Histogram, HistogramOpts, IntCounter, IntGauge, Opts};

fn counter(name: &str, help: &str) -> IntCounter {
    // Names and help strings are constants, so construction cannot fail.
    IntCounter::with_opts(Opts::new(name, help)).unwrap_or_else(|_| unreachable!())
}
fn gauge(name: &str, help: &str) -> IntGauge {
    IntGauge::with_opts(Opts::new(name, help)).unwrap_or_else(|_| unreachable!())
}
fn histogram(name: &str, help: &str, buckets: &[f64]) -> Histogram {
    Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets.to_vec()))
        .unwrap_or_else(|_| unreachable!())
}

const LATENCY_BUCKETS: &[f64] = &[
    0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];

/// Every metric a node exports.
#[derive(Debug)]
pub struct Metrics {
    pub proposals: IntCounter,
    pub proposal_failures: IntCounter,
    pub commit_seconds: Histogram,
    pub apply_seconds: Histogram,
    pub applied_entries: IntCounter,
    pub applied_index: IntGauge,
    pub commit_index: IntGauge,
    pub term: IntGauge,
    pub is_leader: IntGauge,
    pub leader_changes: IntCounter,
    pub log_entries: IntGauge,
    pub log_appended: IntCounter,
    pub log_fsyncs: IntCounter,
    pub log_flush_seconds: Histogram,
    pub snapshots_built: IntCounter,
    pub snapshots_installed: IntCounter,
    pub snapshot_bytes: IntGauge,
    pub snapshot_build_seconds: Histogram,
    pub snapshot_install_seconds: Histogram,
    pub reads_linearizable: IntCounter,
    pub reads_serializable: IntCounter,
    pub read_index_seconds: Histogram,
    pub read_index_rounds: IntCounter,
    pub dedup_hits: IntCounter,
    pub sessions: IntGauge,
    pub sessions_expired: IntCounter,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        Self {
            proposals: counter(
                "mlstack_kv_proposals_total",
                "Writes proposed to Raft by this node as leader.",
            ),
            proposal_failures: counter(
                "mlstack_kv_proposal_failures_total",
                "Proposals that failed (not leader, quorum lost, shutdown).",
            ),
            commit_seconds: histogram(
                "mlstack_kv_commit_latency_seconds",
                "Proposal to applied-and-answered latency on the leader.",
                LATENCY_BUCKETS,
            ),
            apply_seconds: histogram(
                "mlstack_kv_apply_latency_seconds",
                "Time to apply one batch of committed entries to the state machine.",
                LATENCY_BUCKETS,
            ),
            applied_entries: counter(
                "mlstack_kv_applied_entries_total",
                "Log entries applied to the state machine.",
            ),
            applied_index: gauge("mlstack_kv_applied_index", "Last applied log index."),
            commit_index: gauge(
                "mlstack_kv_commit_index",
                "Last committed log index known to this node.",
            ),
            term: gauge("mlstack_kv_term", "Current Raft term."),
            is_leader: gauge("mlstack_kv_is_leader", "1 while this node is the leader."),
            leader_changes: counter(
                "mlstack_kv_leader_changes_total",
                "Times this node saw the leader change.",
            ),
            log_entries: gauge(
                "mlstack_kv_log_entries",
                "Entries in the log (last index minus last purged).",
            ),
            log_appended: counter(
                "mlstack_kv_log_appended_entries_total",
                "Entries appended to the local log.",
            ),
            log_fsyncs: counter(
                "mlstack_kv_log_fsyncs_total",
                "Group-commit fsyncs of the log.",
            ),
            log_flush_seconds: histogram(
                "mlstack_kv_log_flush_latency_seconds",
                "Append to durable (fsync done) latency per append call.",
                LATENCY_BUCKETS,
            ),
            snapshots_built: counter(
                "mlstack_kv_snapshots_built_total",
                "Snapshots built from the state machine.",
            ),
            snapshots_installed: counter(
                "mlstack_kv_snapshots_installed_total",
                "Snapshots received from a leader and installed.",
            ),
            snapshot_bytes: gauge(
                "mlstack_kv_snapshot_bytes",
                "Size of the last built snapshot.",
            ),
            snapshot_build_seconds: histogram(
                "mlstack_kv_snapshot_build_seconds",
                "Time to build a snapshot.",
                LATENCY_BUCKETS,
            ),
            snapshot_install_seconds: histogram(
                "mlstack_kv_snapshot_install_seconds",
                "Time to install a received snapshot.",
                LATENCY_BUCKETS,
            ),
            reads_linearizable: counter(
                "mlstack_kv_reads_linearizable_total",
                "Reads served after a read-index quorum check.",
            ),
            reads_serializable: counter(
                "mlstack_kv_reads_serializable_total",
                "Reads served from local state without a quorum check.",
            ),
            read_index_rounds: counter(
                "mlstack_kv_read_index_rounds_total",
                "Leadership-confirming heartbeat rounds run for linearizable reads (concurrent reads share one).",
            ),
            read_index_seconds: histogram(
                "mlstack_kv_read_index_latency_seconds",
                "Time from a linearizable read's arrival to its read index being applied locally: queueing for a shared heartbeat round, the round, and the wait for apply.",
                LATENCY_BUCKETS,
            ),
            dedup_hits: counter(
                "mlstack_kv_dedup_hits_total",
                "Retried writes answered from the deduplication table instead of applied again.",
            ),
            sessions: gauge(
                "mlstack_kv_sessions",
                "Clients with deduplication state (see the session TTL).",
            ),
            sessions_expired: counter(
                "mlstack_kv_sessions_expired_total",
                "Client sessions dropped by a leader-proposed expiry or the session bound.",
            ),
        }
    }

    /// Registers every metric in the process-wide registry.
    pub fn register(&self) -> Result<(), observe::Error> {
        macro_rules! reg {
            ($($f:ident),*) => { $( observe::metrics::register(self.$f.clone())?; )* };
        }
        reg!(
            proposals,
            proposal_failures,
            commit_seconds,
            apply_seconds,
            applied_entries,
            applied_index,
            commit_index,
            term,
            is_leader,
            leader_changes,
            log_entries,
            log_appended,
            log_fsyncs,
            log_flush_seconds,
            snapshots_built,
            snapshots_installed,
            snapshot_bytes,
            snapshot_build_seconds,
            snapshot_install_seconds,
            reads_linearizable,
            reads_serializable,
            read_index_seconds,
            read_index_rounds,
            dedup_hits,
            sessions,
            sessions_expired
        );
        Ok(())
    }
}
