//! Proposal batching: many client writes, one Raft log entry.

use crate::types::{self, *};
use openraft::error::{ClientWriteError, RaftError};

type WriteResult =
    Result<types::Response, RaftError<NodeId, ClientWriteError<NodeId, types::Node>>>;

/// A command waiting to be proposed, with where its answer goes.
pub type Proposal = (Command, tokio::sync::oneshot::Sender<WriteResult>);

/// Most commands packed into one log entry.
pub const MAX_BATCH: usize = 256;
/// Most key + value bytes packed into one log entry.
pub const MAX_BATCH_BYTES: usize = 64 << 10;

fn command_bytes(c: &Command) -> usize {
    match &c.op {
        Op::Put { key, value, .. } => key.len() + value.len(),
        Op::Delete { key } => key.len(),
        Op::Txn {
            success, failure, ..
        } => success
            .iter()
            .chain(failure)
            .map(|t| match t {
                TxnOp::Put { key, value, .. } => key.len() + value.len(),
                TxnOp::Delete { key } | TxnOp::Get { key } => key.len(),
            })
            .sum(),
        Op::Batch(cmds) => cmds.iter().map(command_bytes).sum(),
        Op::ExpireSessions { .. } => 8,
    }
}

/// Proposal batching: every command queued while the previous proposal was
/// being handed to Raft goes into the next log entry together.
///
/// Under load the queue fills while Raft's core is busy, so batches grow by
/// themselves; with one client a batch is one command and adds no wait (no
/// timer: the batcher never holds a command back to fill a batch). Each batch
/// is proposed from its own task, so up to `max_inflight` batches pipeline;
/// while they are all in flight, arrivals queue and the next batch grows (on a
/// CPU-bound 2-core machine one in flight measured best: fewer, larger
/// entries). One entry per batch means one append,
/// one fsync and one replication round for up to [`MAX_BATCH`] client writes,
/// the difference between thousands and tens of thousands of writes/s on a
/// small machine.
pub async fn batcher(
    raft: Raft,
    mut rx: tokio::sync::mpsc::Receiver<Proposal>,
    max_inflight: usize,
) {
    let inflight = std::sync::Arc::new(tokio::sync::Semaphore::new(max_inflight.max(1)));
    loop {
        // Wait for a free pipeline slot *before* taking commands: while every
        // slot is busy, arrivals queue up and the next batch grows.
        let Ok(permit) = inflight.clone().acquire_owned().await else {
            return;
        };
        let Some(first) = rx.recv().await else {
            return;
        };
        let mut bytes = command_bytes(&first.0);
        let mut batch = vec![first];
        // Bounded by count and bytes: one entry must replicate (and fsync on
        // the follower) within openraft's AppendEntries timeout.
        while batch.len() < MAX_BATCH && bytes < MAX_BATCH_BYTES {
            match rx.try_recv() {
                Ok(p) => {
                    bytes += command_bytes(&p.0);
                    batch.push(p);
                }
                Err(_) => break,
            }
        }
        let raft = raft.clone();
        tokio::spawn(async move {
            let _permit = permit;
            if batch.len() == 1 {
                let Some((cmd, tx)) = batch.pop() else { return };
                let _ = tx.send(raft.client_write(cmd).await.map(|r| r.data));
                return;
            }
            let (cmds, txs): (Vec<Command>, Vec<_>) = batch.into_iter().unzip();
            let cmd = Command {
                request_id: None,
                op: Op::Batch(cmds),
                trace: Vec::new(),
            };
            match raft.client_write(cmd).await {
                Ok(r) => match r.data.result {
                    OpResult::Batch(results) => {
                        for (tx, res) in txs.into_iter().zip(results) {
                            let _ = tx.send(Ok(res));
                        }
                    }
                    other => {
                        tracing::error!(?other, "a batch applied to a non-batch answer");
                    }
                },
                Err(e) => {
                    for tx in txs {
                        let _ = tx.send(Err(e.clone()));
                    }
                }
            }
        });
    }
}
