//! Read-index coalescing: many linearizable reads, one leadership check.
//!
//! A linearizable read needs a read index: the leader's commit index at a
//! moment it has confirmed, by a heartbeat round answered by a quorum, that it
//! still leads (Raft thesis §6.4; openraft's `get_read_log_id`). One round per
//! read costs every concurrent read a heartbeat broadcast and a quorum of
//! answers. etcd coalesces them (`linearizableReadLoop` in its server): reads
//! that arrive while a round is in flight wait for the next round, and that
//! one round serves them all. This loop does the same.
//!
//! Why a read never joins a round already in flight: that round may have
//! taken its commit index before a write the reader has already seen
//! acknowledged, and would then serve a stale value. A round that starts
//! after the read arrived has an index at or past every write acknowledged
//! before the read arrived, which is what linearizability asks.
//!
//! The wait for the local state machine to apply up to the index stays with
//! each reader (`service.rs`), so a slow apply does not hold up the next round.

use crate::types::{Node, NodeId, Raft};
use openraft::LogId;
use openraft::error::{CheckIsLeaderError, RaftError};
use prometheus::IntCounter;
use std::time::Duration;

/// A round's answer: the read index, or why this node could not give one.
pub type ReadIndex =
    Result<Option<LogId<NodeId>>, RaftError<NodeId, CheckIsLeaderError<NodeId, Node>>>;

/// A reader waiting for the next round.
pub type Reader = tokio::sync::oneshot::Sender<ReadIndex>;

/// Readers that may queue for the next round; more wait to enqueue.
pub const MAX_QUEUED_READERS: usize = 4096;

/// The loop: take every queued reader, run one round, answer them all.
/// A round that takes longer than `round_timeout` (no quorum) is abandoned:
/// its readers' channels drop and each answers `UNAVAILABLE`; the next
/// round starts with the readers queued meanwhile.
pub async fn read_index_loop(
    raft: Raft,
    mut rx: tokio::sync::mpsc::Receiver<Reader>,
    round_timeout: Duration,
    rounds: IntCounter,
) {
    while let Some(first) = rx.recv().await {
        // Everyone queued now arrived before this round starts.
        let mut readers = vec![first];
        while let Ok(r) = rx.try_recv() {
            readers.push(r);
        }
        // A reader that gave up while queued needs no round.
        readers.retain(|r| !r.is_closed());
        if readers.is_empty() {
            continue;
        }
        rounds.inc();
        if let Ok(r) = tokio::time::timeout(round_timeout, raft.get_read_log_id()).await {
            let index = r.map(|(read_log_id, _applied)| read_log_id);
            for reader in readers {
                let _ = reader.send(index.clone());
            }
        }
    }
}
