//! The replicated command set and openraft's type configuration.
//!
//! A [`Command`] is what the leader appends to the Raft log; every node applies
//! the same commands in the same order and so reaches the same state (the
//! replicated state machine of Raft §2). Commands carry the client's
//! [`RequestId`] so a retried write applies at most once, and the W3C trace
//! context of the request that proposed them, so the leader's append and every
//! node's apply join the client's trace.

use serde::{Deserialize, Serialize};

openraft::declare_raft_types!(
    /// openraft's type configuration for the KV cluster: `u64` node ids,
    /// `BasicNode { addr }` members, snapshots as files on disk, tokio.
    pub TypeConfig:
        D = Command,
        R = Response,
        SnapshotData = crate::store::SnapshotData,
);

/// The Raft instance type of this crate.
pub type Raft = openraft::Raft<TypeConfig>;
/// Node ids are small integers given on the command line (`--id N`).
pub type NodeId = u64;
/// A member's advertised client/peer address.
pub type Node = openraft::BasicNode;

/// Identifies one client write for deduplication: random per client process,
/// `seq` increasing per request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct RequestId {
    pub client_id: u64,
    pub seq: u64,
}

/// A replicated write.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Command {
    pub request_id: Option<RequestId>,
    pub op: Op,
    /// `traceparent`/`tracestate` of the proposing request (may be empty).
    pub trace: Vec<(String, Vec<u8>)>,
}

/// The operation of a [`Command`].
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum Op {
    Put {
        key: Vec<u8>,
        value: Vec<u8>,
        prev_kv: bool,
    },
    Delete {
        key: Vec<u8>,
    },
    Txn {
        compare: Vec<Compare>,
        success: Vec<TxnOp>,
        failure: Vec<TxnOp>,
    },
    /// Concurrent client commands the leader packed into one log entry
    /// (proposal batching: one append, one fsync, one replication round for
    /// all of them). Each keeps its request id and gets its own answer.
    Batch(Vec<Command>),
    /// Forget the deduplication state of every client whose last command is
    /// below this log index (proposed by the leader; see `store/sessions.rs`).
    ExpireSessions {
        before_index: u64,
    },
}

/// One condition of a transaction (etcd's `Compare`).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Compare {
    pub key: Vec<u8>,
    pub target: CompareTarget,
    pub op: CompareOp,
    /// For `Version` (0 = the key does not exist) and `ModRevision`.
    pub number: u64,
    /// For `Value`.
    pub value: Vec<u8>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CompareTarget {
    Version,
    ModRevision,
    Value,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CompareOp {
    Equal,
    NotEqual,
    Less,
    Greater,
}

impl CompareOp {
    /// `lhs op rhs`.
    pub fn holds<T: Ord + ?Sized>(self, lhs: &T, rhs: &T) -> bool {
        match self {
            CompareOp::Equal => lhs == rhs,
            CompareOp::NotEqual => lhs != rhs,
            CompareOp::Less => lhs < rhs,
            CompareOp::Greater => lhs > rhs,
        }
    }
}

/// An operation inside a transaction branch.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum TxnOp {
    Put {
        key: Vec<u8>,
        value: Vec<u8>,
        prev_kv: bool,
    },
    Delete {
        key: Vec<u8>,
    },
    Get {
        key: Vec<u8>,
    },
}

/// A key's record in the state machine.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyValue {
    pub key: Vec<u8>,
    pub value: Vec<u8>,
    /// Writes since the key was (re)created; 1 after the first put.
    pub version: u64,
    /// Log index of the put that created the key.
    pub create_revision: u64,
    /// Log index of the last write.
    pub mod_revision: u64,
}

/// What applying a command returned.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Response {
    /// Log index the command applied at (0 for blank and membership entries).
    pub revision: u64,
    pub result: OpResult,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub enum OpResult {
    /// Blank and membership entries.
    #[default]
    None,
    Put {
        prev: Option<KeyValue>,
    },
    Delete {
        deleted: bool,
    },
    Txn {
        succeeded: bool,
        results: Vec<TxnOpResult>,
    },
    /// The request id is older than the deduplication window still kept for its
    /// client: it may have applied already, so it is refused rather than
    /// risking a second application.
    Expired {
        request_id: RequestId,
    },
    /// The answers of an `Op::Batch`, in order.
    Batch(Vec<Response>),
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum TxnOpResult {
    Put { prev: Option<KeyValue> },
    Delete { deleted: bool },
    Get { kv: Option<KeyValue> },
}

/// A change the state machine applied, for `Watch`.
#[derive(Clone, Debug)]
pub enum WatchEvent {
    Put(KeyValue),
    /// The key and the revision of the delete.
    Delete {
        key: Vec<u8>,
        revision: u64,
    },
    /// A snapshot replaced the state: watchers must start over.
    Reset,
}

impl WatchEvent {
    pub fn revision(&self) -> u64 {
        match self {
            WatchEvent::Put(kv) => kv.mod_revision,
            WatchEvent::Delete { revision, .. } => *revision,
            WatchEvent::Reset => 0,
        }
    }
    pub fn key(&self) -> &[u8] {
        match self {
            WatchEvent::Put(kv) => &kv.key,
            WatchEvent::Delete { key, .. } => key,
            WatchEvent::Reset => &[],
        }
    }
}

/// Size limits on client input (enforced at the gRPC edge; `INVALID_ARGUMENT`).
pub mod limits {
    /// Largest key accepted.
    pub const MAX_KEY_BYTES: usize = 4 << 10;
    /// Largest value accepted.
    pub const MAX_VALUE_BYTES: usize = 1 << 20;
    /// Most operations in one transaction branch, and most compares.
    pub const MAX_TXN_OPS: usize = 128;
    /// Default and maximum page size of `Scan`.
    pub const DEFAULT_SCAN_LIMIT: usize = 1000;
    pub const MAX_SCAN_LIMIT: usize = 10_000;
    /// Keys and values in one Scan response stop at about this many bytes
    /// (the page ends early, `more` set; at least one entry per page): with
    /// 1 MiB values a 10,000-entry page would be 10 GiB, and a gRPC client
    /// refuses messages over 4 MiB by default.
    pub const MAX_SCAN_BYTES: usize = 3 << 20;
    /// Largest snapshot a node accepts from a peer. The stream goes to a
    /// file on disk, never whole into memory, but it is installed in one
    /// LSM batch, whose limit (`storage::Options::max_batch_bytes`) is the
    /// same 256 MiB: a larger state could not be installed anyway, and
    /// without the bound a peer could fill the node's disk.
    pub const MAX_SNAPSHOT_BYTES: usize = 256 << 20;
}
