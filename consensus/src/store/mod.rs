//! Raft's log and state machine, both persisted in one `storage` LSM per node.
//! One concept a file: [`log`] (the Raft log store and its group-committed
//! fsync), [`state_machine`] (atomic apply, deduplication, watches, installing
//! a snapshot), [`snapshot`] (building snapshots, the snapshot directory) and
//! [`snapshot_file`] (the snapshot's streamed file format); this file holds
//! the key spaces they share and opening the node's LSM.
//!
//! # Key spaces
//! ```text
//!   m/identity   cluster name + node id (refuse another cluster's directory)
//!   m/vote       the vote (fsynced before any RPC answer that depends on it)
//!   m/committed  last committed log id (an optimisation, not needed for safety)
//!   m/purged     last purged log id
//!   l/<be64 idx> log entry (bincode)
//!   a/applied    last applied log id + membership, written in the SAME batch as
//!                the state changes of the entries it covers (atomic apply)
//!   s/<key>      KeyValue record (bincode)
//!   d/<be64 client><be64 seq>  deduplicated response of a client write
//! ```
//!
//! # Durability and group commit
//! `append` writes the entries to the LSM unsynced (so they are readable at
//! once, as openraft requires) and hands openraft's `LogFlushed` callback to the
//! syncer thread. The syncer drains every callback queued meanwhile, runs one
//! `Db::sync_wal` (one fsync) and only then completes them: many appends share
//! one fsync, and openraft never counts an entry as flushed before it is on disk.
//! The state machine's batches are not synced: they sit in the same WAL before
//! any later log append, and the log can replay them after a crash anyway.

use crate::metrics::Metrics;
use crate::types::*;
use openraft::storage::{LogFlushed, LogState, RaftLogStorage, RaftStateMachine, Snapshot};
use openraft::{
    Entry, EntryPayload, LogId, OptionalSend, RaftLogReader, RaftSnapshotBuilder, SnapshotMeta,
    StorageError, StorageIOError, StoredMembership, Vote,
};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;
use storage::{Db, ReadOptions, WriteBatch, WriteOptions};
use tokio::sync::broadcast;

type SE = StorageError<NodeId>;

const KEY_IDENTITY: &[u8] = b"m/identity";
const KEY_VOTE: &[u8] = b"m/vote";
const KEY_COMMITTED: &[u8] = b"m/committed";
const KEY_PURGED: &[u8] = b"m/purged";
const KEY_APPLIED: &[u8] = b"a/applied";
const LOG_PREFIX: &[u8] = b"l/";
pub(crate) const DATA_PREFIX: &[u8] = b"s/";
const DEDUP_PREFIX: &[u8] = b"d/";
/// The key spaces a snapshot carries: the data, the deduplication answers
/// and the client sessions.
const STATE_PREFIXES: [&[u8]; 3] = [DATA_PREFIX, DEDUP_PREFIX, sessions::SESSION_PREFIX];

/// How many recent responses are kept per client for deduplication. A retry
/// older than this is refused (`OpResult::Expired`), never applied twice.
pub const DEDUP_WINDOW: usize = 4096;
/// Recent watch events kept for `Watch { start_revision }` catch-up: at
/// most this many ...
const WATCH_HISTORY: usize = 8192;
/// ... and at most this many bytes of keys and values (8,192 events of
/// 1 MiB values would be 8 GiB in memory).
pub const WATCH_HISTORY_BYTES: usize = 64 << 20;

fn log_key(index: u64) -> [u8; 10] {
    let mut k = [0u8; 10];
    k[..2].copy_from_slice(LOG_PREFIX);
    k[2..].copy_from_slice(&index.to_be_bytes());
    k
}

pub(crate) fn data_key(key: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(2 + key.len());
    k.extend_from_slice(DATA_PREFIX);
    k.extend_from_slice(key);
    k
}

fn dedup_key(id: RequestId) -> [u8; 18] {
    let mut k = [0u8; 18];
    k[..2].copy_from_slice(DEDUP_PREFIX);
    k[2..10].copy_from_slice(&id.client_id.to_be_bytes());
    k[10..].copy_from_slice(&id.seq.to_be_bytes());
    k
}

fn encode<T: Serialize>(v: &T) -> Vec<u8> {
    // bincode cannot fail on these plain data types (no maps with non-string
    // keys limits, no custom serializers that error).
    bincode::serialize(v).unwrap_or_default()
}

fn decode<T: for<'de> Deserialize<'de>>(what: &str, bytes: &[u8]) -> Result<T, std::io::Error> {
    bincode::deserialize(bytes).map_err(|e| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("decoding {what} ({} bytes): {e}", bytes.len()),
        )
    })
}

fn io_err(e: storage::Error) -> std::io::Error {
    std::io::Error::other(e.to_string())
}

/// Who this data directory belongs to.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    pub cluster: String,
    pub node_id: NodeId,
}

/// Errors opening a node's store.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("opening the LSM in {dir}: {source}")]
    Db {
        dir: PathBuf,
        #[source]
        source: storage::Error,
    },
    #[error(
        "data directory {dir} belongs to cluster {found_cluster:?} node {found_node}, \
         not cluster {cluster:?} node {node}; refusing to start"
    )]
    WrongIdentity {
        dir: PathBuf,
        found_cluster: String,
        found_node: NodeId,
        cluster: String,
        node: NodeId,
    },
    #[error("reading {what} in {dir}: {source}")]
    Corrupt {
        dir: PathBuf,
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
}

/// Opens (or creates) a node's LSM and checks it belongs to `identity`.
pub fn open_db(
    dir: &Path,
    identity: &Identity,
    opts: storage::Options,
) -> Result<Arc<Db>, OpenError> {
    let db = Db::open(dir, opts).map_err(|source| OpenError::Db {
        dir: dir.to_path_buf(),
        source,
    })?;
    let corrupt = |what, source| OpenError::Corrupt {
        dir: dir.to_path_buf(),
        what,
        source,
    };
    match db
        .get(KEY_IDENTITY)
        .map_err(|e| corrupt("identity", io_err(e)))?
    {
        Some(bytes) => {
            let found: Identity = decode("identity", &bytes).map_err(|e| corrupt("identity", e))?;
            if &found != identity {
                return Err(OpenError::WrongIdentity {
                    dir: dir.to_path_buf(),
                    found_cluster: found.cluster,
                    found_node: found.node_id,
                    cluster: identity.cluster.clone(),
                    node: identity.node_id,
                });
            }
        }
        None => {
            let mut b = WriteBatch::new();
            b.put(KEY_IDENTITY, encode(identity));
            db.write(b, &WriteOptions { sync: true })
                .map_err(|source| OpenError::Db {
                    dir: dir.to_path_buf(),
                    source,
                })?;
        }
    }
    Ok(Arc::new(db))
}

// ---------------------------------------------------------------------------
// Log store
// ---------------------------------------------------------------------------

mod log;
mod sessions;
mod snapshot;
mod snapshot_file;
mod state_machine;

pub use log::LogStore;
pub use sessions::MAX_SESSIONS;
use sessions::Sessions;
pub use snapshot_file::SnapshotData;
pub use state_machine::{Shared, StateMachine};

/// For tests and the CLI: the ids of a membership's voters and all nodes.
pub fn members(m: &StoredMembership<NodeId, Node>) -> (Vec<NodeId>, BTreeMap<NodeId, Node>) {
    let voters = m.voter_ids().collect();
    let nodes = m.nodes().map(|(id, n)| (*id, n.clone())).collect();
    (voters, nodes)
}
