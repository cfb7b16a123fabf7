//! Raft's log and state machine, both persisted in one `storage` LSM per node.
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
use std::io::Cursor;
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

/// How many recent responses are kept per client for deduplication. A retry
/// older than this is refused (`OpResult::Expired`), never applied twice.
pub const DEDUP_WINDOW: usize = 4096;
/// Recent watch events kept for `Watch { start_revision }` catch-up.
const WATCH_HISTORY: usize = 8192;

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
pub fn open_db(dir: &Path, identity: &Identity) -> Result<Arc<Db>, OpenError> {
    let db = Db::open(dir, storage::Options::default()).map_err(|source| OpenError::Db {
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

struct LogMeta {
    last_purged: Option<LogId<NodeId>>,
    last_log: Option<LogId<NodeId>>,
}

/// The Raft log (`RaftLogStorage`), in the `l/` key space.
#[derive(Clone)]
pub struct LogStore {
    db: Arc<Db>,
    meta: Arc<Mutex<LogMeta>>,
    syncer: std::sync::mpsc::Sender<(LogFlushed<TypeConfig>, Instant)>,
    metrics: Arc<Metrics>,
}

impl Debug for LogStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogStore").finish_non_exhaustive()
    }
}

impl LogStore {
    pub fn open(db: Arc<Db>, metrics: Arc<Metrics>) -> Result<Self, std::io::Error> {
        let last_purged: Option<LogId<NodeId>> = match db.get(KEY_PURGED).map_err(io_err)? {
            Some(b) => Some(decode("purged log id", &b)?),
            None => None,
        };
        let last_log = match db
            .prefix(LOG_PREFIX, true, &ReadOptions::default())
            .map_err(io_err)?
            .next()
        {
            Some(kv) => {
                let (_, v) = kv.map_err(io_err)?;
                let e: Entry<TypeConfig> = decode("log entry", &v)?;
                Some(e.log_id)
            }
            None => last_purged,
        };
        let (tx, rx) = std::sync::mpsc::channel::<(LogFlushed<TypeConfig>, Instant)>();
        // Weak: the syncer must not keep the database (and its LOCK) open
        // after the node shut down.
        let sync_db = Arc::downgrade(&db);
        let sync_metrics = metrics.clone();
        std::thread::Builder::new()
            .name("raft-log-sync".into())
            .spawn(move || {
                // Group commit: block for one callback, take every other one
                // queued meanwhile, one fsync covers them all.
                while let Ok(first) = rx.recv() {
                    let mut group = vec![first];
                    while let Ok(more) = rx.try_recv() {
                        group.push(more);
                    }
                    let r = match sync_db.upgrade() {
                        Some(db) => db.sync_wal(),
                        None => Err(storage::Error::Closed),
                    };
                    sync_metrics.log_fsyncs.inc();
                    for (cb, t0) in group {
                        sync_metrics
                            .log_flush_seconds
                            .observe(t0.elapsed().as_secs_f64());
                        cb.log_io_completed(match &r {
                            Ok(()) => Ok(()),
                            Err(e) => Err(std::io::Error::other(e.to_string())),
                        });
                    }
                }
            })?;
        Ok(Self {
            db,
            meta: Arc::new(Mutex::new(LogMeta {
                last_purged,
                last_log,
            })),
            syncer: tx,
            metrics,
        })
    }

    fn meta(&self) -> std::sync::MutexGuard<'_, LogMeta> {
        self.meta.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn write_sync(&self, b: WriteBatch) -> Result<(), std::io::Error> {
        self.db
            .write(b, &WriteOptions { sync: true })
            .map_err(io_err)
    }

    fn update_log_size(&self) {
        let m = self.meta();
        let last = m.last_log.map(|l| l.index).unwrap_or(0);
        let first = m.last_purged.map(|l| l.index).unwrap_or(0);
        self.metrics
            .log_entries
            .set(last.saturating_sub(first) as i64);
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry<TypeConfig>>, SE> {
        let lo = match range.start_bound() {
            Bound::Included(&i) => i,
            Bound::Excluded(&i) => i + 1,
            Bound::Unbounded => 0,
        };
        let hi = match range.end_bound() {
            Bound::Included(&i) => Some(i.saturating_add(1)),
            Bound::Excluded(&i) => Some(i),
            Bound::Unbounded => None,
        };
        let lo_k = log_key(lo);
        let hi_k = hi.map(log_key);
        let upper = match &hi_k {
            Some(k) => Bound::Excluded(&k[..]),
            None => Bound::Excluded(&b"l0"[..]), // the byte after '/'
        };
        let it = self
            .db
            .range(
                Bound::Included(&lo_k[..]),
                upper,
                false,
                &ReadOptions::default(),
            )
            .map_err(|e| StorageIOError::read_logs(&io_err(e)))?;
        let mut out = Vec::new();
        for kv in it {
            let (_, v) = kv.map_err(|e| StorageIOError::read_logs(&io_err(e)))?;
            let e: Entry<TypeConfig> =
                decode("log entry", &v).map_err(|e| StorageIOError::read_logs(&e))?;
            out.push(e);
        }
        Ok(out)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, SE> {
        let m = self.meta();
        Ok(LogState {
            last_purged_log_id: m.last_purged,
            last_log_id: m.last_log,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<(), SE> {
        // Synced before returning: openraft answers vote requests only after
        // this, so a node cannot vote twice in one term across a crash.
        let mut b = WriteBatch::new();
        b.put(KEY_VOTE, encode(vote));
        self.write_sync(b)
            .map_err(|e| StorageIOError::write_vote(&e).into())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, SE> {
        match self
            .db
            .get(KEY_VOTE)
            .map_err(|e| StorageIOError::read_vote(&io_err(e)))?
        {
            Some(b) => Ok(Some(
                decode("vote", &b).map_err(|e| StorageIOError::read_vote(&e))?,
            )),
            None => Ok(None),
        }
    }

    async fn save_committed(&mut self, committed: Option<LogId<NodeId>>) -> Result<(), SE> {
        let mut b = WriteBatch::new();
        b.put(KEY_COMMITTED, encode(&committed));
        // Unsynced: losing it only means re-learning the commit index.
        self.db
            .write(b, &WriteOptions::default())
            .map_err(|e| StorageIOError::write(&io_err(e)).into())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId<NodeId>>, SE> {
        match self
            .db
            .get(KEY_COMMITTED)
            .map_err(|e| StorageIOError::read(&io_err(e)))?
        {
            Some(b) => Ok(decode("committed log id", &b).map_err(|e| StorageIOError::read(&e))?),
            None => Ok(None),
        }
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> Result<(), SE>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let t0 = Instant::now();
        let mut b = WriteBatch::new();
        let mut last = None;
        let mut n = 0u64;
        // The append joins the trace of the first client command in the batch
        // and links the others, so a request's trace shows the log write that
        // carried it (on the leader and, through replication, on followers).
        let mut traces = Vec::new();
        for e in entries {
            if let EntryPayload::Normal(cmd) = &e.payload
                && !cmd.trace.is_empty()
                && traces.len() < 32
            {
                traces.push(observe::propagation::carrier::extract(
                    cmd.trace.iter().map(|(k, v)| (k.as_str(), v.as_slice())),
                ));
            }
            b.put(log_key(e.log_id.index), encode(&e));
            last = Some(e.log_id);
            n += 1;
        }
        if n == 0 {
            callback.log_io_completed(Ok(()));
            return Ok(());
        }
        let span = tracing::info_span!("kv.append", entries = n);
        {
            use opentelemetry::trace::TraceContextExt;
            use tracing_opentelemetry::OpenTelemetrySpanExt;
            let mut it = traces.into_iter();
            if let Some(first) = it.next() {
                let _ = span.set_parent(first);
            }
            for cx in it {
                span.add_link(cx.span().span_context().clone());
            }
        }
        let _g = span.enter();
        self.db
            .write(b, &WriteOptions::default())
            .map_err(|e| StorageIOError::write_logs(&io_err(e)))?;
        self.meta().last_log = last;
        self.metrics.log_appended.inc_by(n);
        self.update_log_size();
        // The entries are readable now; durability is the syncer's job.
        self.syncer.send((callback, t0)).map_err(|_| {
            StorageIOError::write_logs(&std::io::Error::other("log syncer stopped"))
        })?;
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> Result<(), SE> {
        // Delete [log_id.index, last]: conflicting entries from an old leader.
        let last = self.meta().last_log.map(|l| l.index).unwrap_or(0);
        let mut b = WriteBatch::new();
        for i in log_id.index..=last {
            b.delete(log_key(i));
        }
        self.write_sync(b)
            .map_err(|e| StorageIOError::write_logs(&e))?;
        let mut m = self.meta();
        m.last_log = if log_id.index == 0 {
            m.last_purged
        } else {
            // The entry before the truncation point is the new last one.
            drop(m);
            let prev = self
                .db
                .get(log_key(log_id.index - 1))
                .map_err(|e| StorageIOError::read_logs(&io_err(e)))?;
            m = self.meta();
            match prev {
                Some(v) => Some(
                    decode::<Entry<TypeConfig>>("log entry", &v)
                        .map_err(|e| StorageIOError::read_logs(&e))?
                        .log_id,
                ),
                None => m.last_purged,
            }
        };
        drop(m);
        self.update_log_size();
        Ok(())
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> Result<(), SE> {
        // openraft purges only up to what a snapshot covers (and at most
        // `max_in_snapshot_log_to_keep` behind it), so a lagging follower can
        // always be served either from the log or from the snapshot.
        let first = self.meta().last_purged.map(|l| l.index + 1).unwrap_or(0);
        let mut b = WriteBatch::new();
        b.put(KEY_PURGED, encode(&log_id));
        for i in first..=log_id.index {
            b.delete(log_key(i));
        }
        self.write_sync(b)
            .map_err(|e| StorageIOError::write_logs(&e))?;
        let mut m = self.meta();
        m.last_purged = Some(log_id);
        if m.last_log.is_none_or(|l| l.index < log_id.index) {
            m.last_log = Some(log_id);
        }
        drop(m);
        self.update_log_size();
        Ok(())
    }
}

// ---------------------------------------------------------------------------
// State machine
// ---------------------------------------------------------------------------

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct Applied {
    last_applied: Option<LogId<NodeId>>,
    membership: StoredMembership<NodeId, Node>,
}

/// The latest snapshot: its metadata and bytes (shared, not copied per reader).
type StoredSnapshot = (SnapshotMeta<NodeId, Node>, Arc<Vec<u8>>);

/// The serialized form of a snapshot: the raw `s/` and `d/` key spaces.
#[derive(Serialize, Deserialize)]
struct SnapshotBody {
    entries: Vec<(Vec<u8>, Vec<u8>)>,
}

/// State shared between the state machine, its snapshot builder and the gRPC
/// read path.
#[derive(Debug)]
pub struct Shared {
    pub db: Arc<Db>,
    applied: Mutex<Applied>,
    /// Per client: retained seqs (for pruning) and the lowest retained seq.
    dedup: Mutex<HashMap<u64, BTreeSet<u64>>>,
    watch_tx: broadcast::Sender<WatchEvent>,
    history: Mutex<VecDeque<WatchEvent>>,
    snapshot_dir: PathBuf,
    current_snapshot: Mutex<Option<StoredSnapshot>>,
    metrics: Arc<Metrics>,
    snapshot_seq: std::sync::atomic::AtomicU64,
}

impl Shared {
    fn applied(&self) -> std::sync::MutexGuard<'_, Applied> {
        self.applied.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Last applied log index (the revision reads are served at).
    pub fn applied_index(&self) -> u64 {
        self.applied().last_applied.map(|l| l.index).unwrap_or(0)
    }

    /// Reads a key from the applied state.
    pub fn get(&self, key: &[u8]) -> Result<Option<KeyValue>, std::io::Error> {
        match self.db.get(data_key(key)).map_err(io_err)? {
            Some(b) => Ok(Some(decode("key record", &b)?)),
            None => Ok(None),
        }
    }

    /// Entries in `[start, end)` (empty `end` = unbounded), at most `limit`;
    /// the bool says whether more remain.
    pub fn scan(
        &self,
        start: &[u8],
        end: &[u8],
        limit: usize,
        reverse: bool,
    ) -> Result<(Vec<KeyValue>, bool), std::io::Error> {
        let lo = data_key(start);
        let hi = if end.is_empty() {
            b"s0".to_vec() // the byte after '/'
        } else {
            data_key(end)
        };
        let it = self
            .db
            .range(
                Bound::Included(&lo[..]),
                Bound::Excluded(&hi[..]),
                reverse,
                &ReadOptions::default(),
            )
            .map_err(io_err)?;
        let mut out = Vec::new();
        for kv in it {
            let (_, v) = kv.map_err(io_err)?;
            if out.len() == limit {
                return Ok((out, true));
            }
            out.push(decode("key record", &v)?);
        }
        Ok((out, false))
    }

    /// Subscribes to applied changes plus the retained recent history.
    pub fn watch(&self) -> (broadcast::Receiver<WatchEvent>, Vec<WatchEvent>) {
        // Subscribe under the history lock (apply pushes history under it and
        // sends after): every event is either in the copy or on the channel.
        let h = self.history.lock().unwrap_or_else(|p| p.into_inner());
        let rx = self.watch_tx.subscribe();
        (rx, h.iter().cloned().collect())
    }

    /// Hash of the applied state (every `s/` record) with the applied index,
    /// read from one LSM snapshot so the two agree.
    pub fn state_hash(&self) -> Result<(u64, String), std::io::Error> {
        use std::hash::{Hash, Hasher};
        let snap = self.db.snapshot();
        let ro = ReadOptions {
            snapshot: Some(&snap),
        };
        let applied: Applied = match self.db.get_opt(KEY_APPLIED, &ro).map_err(io_err)? {
            Some(b) => decode("applied state", &b)?,
            None => Applied::default(),
        };
        // SipHash with fixed zero keys: the same in every process of this build.
        let mut h = std::hash::DefaultHasher::new();
        for kv in self.db.prefix(DATA_PREFIX, false, &ro).map_err(io_err)? {
            let (k, v) = kv.map_err(io_err)?;
            k.hash(&mut h);
            v.hash(&mut h);
        }
        Ok((
            applied.last_applied.map(|l| l.index).unwrap_or(0),
            format!("{:016x}", h.finish()),
        ))
    }

    pub fn membership(&self) -> StoredMembership<NodeId, Node> {
        self.applied().membership.clone()
    }
}

/// The KV state machine (`RaftStateMachine`).
#[derive(Clone, Debug)]
pub struct StateMachine {
    pub shared: Arc<Shared>,
}

impl StateMachine {
    pub fn open(
        db: Arc<Db>,
        snapshot_dir: PathBuf,
        metrics: Arc<Metrics>,
    ) -> Result<Self, std::io::Error> {
        std::fs::create_dir_all(&snapshot_dir)?;
        let applied: Applied = match db.get(KEY_APPLIED).map_err(io_err)? {
            Some(b) => decode("applied state", &b)?,
            None => Applied::default(),
        };
        let mut dedup: HashMap<u64, BTreeSet<u64>> = HashMap::new();
        for kv in db
            .prefix(DEDUP_PREFIX, false, &ReadOptions::default())
            .map_err(io_err)?
        {
            let (k, _) = kv.map_err(io_err)?;
            if k.len() == 18 {
                let c = u64::from_be_bytes(k[2..10].try_into().unwrap_or_default());
                let s = u64::from_be_bytes(k[10..18].try_into().unwrap_or_default());
                dedup.entry(c).or_default().insert(s);
            }
        }
        let current_snapshot = load_snapshot_file(&snapshot_dir)?;
        let (watch_tx, _) = broadcast::channel(4096);
        Ok(Self {
            shared: Arc::new(Shared {
                db,
                applied: Mutex::new(applied),
                dedup: Mutex::new(dedup),
                watch_tx,
                history: Mutex::new(VecDeque::new()),
                snapshot_dir,
                current_snapshot: Mutex::new(current_snapshot),
                metrics,
                snapshot_seq: Default::default(),
            }),
        })
    }
}

const SNAPSHOT_FILE: &str = "current.snap";

#[derive(Serialize, Deserialize)]
struct SnapshotFile {
    meta: SnapshotMeta<NodeId, Node>,
    crc32c: u32,
    data: Vec<u8>,
}

fn load_snapshot_file(dir: &Path) -> Result<Option<StoredSnapshot>, std::io::Error> {
    let path = dir.join(SNAPSHOT_FILE);
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let f: SnapshotFile = decode("snapshot file", &bytes)?;
    let crc = crc32c::crc32c(&f.data);
    if crc != f.crc32c {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!(
                "snapshot {} checksum mismatch: stored {:08x}, computed {crc:08x}",
                path.display(),
                f.crc32c
            ),
        ));
    }
    Ok(Some((f.meta, Arc::new(f.data))))
}

/// temp file → fsync → rename → fsync directory.
fn save_snapshot_file(
    dir: &Path,
    meta: &SnapshotMeta<NodeId, Node>,
    data: &[u8],
) -> Result<(), std::io::Error> {
    use std::io::Write;
    let f = SnapshotFile {
        meta: meta.clone(),
        crc32c: crc32c::crc32c(data),
        data: data.to_vec(),
    };
    let tmp = dir.join(format!("{SNAPSHOT_FILE}.tmp"));
    {
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(&encode(&f))?;
        file.sync_all()?;
    }
    std::fs::rename(&tmp, dir.join(SNAPSHOT_FILE))?;
    std::fs::File::open(dir)?.sync_all()?;
    Ok(())
}

/// Applies one command to the overlay + batch; returns the result and the
/// watch events it produced.
struct Applier<'a> {
    shared: &'a Shared,
    overlay: HashMap<Vec<u8>, Option<KeyValue>>,
    batch: WriteBatch,
    events: Vec<WatchEvent>,
}

impl Applier<'_> {
    fn read(&mut self, key: &[u8]) -> Result<Option<KeyValue>, std::io::Error> {
        if let Some(v) = self.overlay.get(key) {
            return Ok(v.clone());
        }
        let v = self.shared.get(key)?;
        self.overlay.insert(key.to_vec(), v.clone());
        Ok(v)
    }

    fn put(
        &mut self,
        key: &[u8],
        value: &[u8],
        rev: u64,
    ) -> Result<Option<KeyValue>, std::io::Error> {
        let prev = self.read(key)?;
        let kv = KeyValue {
            key: key.to_vec(),
            value: value.to_vec(),
            version: prev.as_ref().map(|p| p.version + 1).unwrap_or(1),
            create_revision: prev.as_ref().map(|p| p.create_revision).unwrap_or(rev),
            mod_revision: rev,
        };
        self.batch.put(data_key(key), encode(&kv));
        self.overlay.insert(key.to_vec(), Some(kv.clone()));
        self.events.push(WatchEvent::Put(kv));
        Ok(prev)
    }

    fn delete(&mut self, key: &[u8], rev: u64) -> Result<bool, std::io::Error> {
        let prev = self.read(key)?;
        if prev.is_none() {
            return Ok(false);
        }
        self.batch.delete(data_key(key));
        self.overlay.insert(key.to_vec(), None);
        self.events.push(WatchEvent::Delete {
            key: key.to_vec(),
            revision: rev,
        });
        Ok(true)
    }

    fn compare(&mut self, c: &Compare) -> Result<bool, std::io::Error> {
        let cur = self.read(&c.key)?;
        Ok(match c.target {
            CompareTarget::Version => {
                c.op.holds(&cur.as_ref().map(|k| k.version).unwrap_or(0), &c.number)
            }
            CompareTarget::ModRevision => c.op.holds(
                &cur.as_ref().map(|k| k.mod_revision).unwrap_or(0),
                &c.number,
            ),
            // A missing key has no value: every value comparison on it fails.
            CompareTarget::Value => match &cur {
                Some(kv) => c.op.holds(kv.value.as_slice(), c.value.as_slice()),
                None => false,
            },
        })
    }

    fn apply_op(&mut self, op: &Op, rev: u64) -> Result<OpResult, std::io::Error> {
        Ok(match op {
            Op::Put {
                key,
                value,
                prev_kv,
            } => {
                let prev = self.put(key, value, rev)?;
                OpResult::Put {
                    prev: prev.filter(|_| *prev_kv),
                }
            }
            Op::Delete { key } => OpResult::Delete {
                deleted: self.delete(key, rev)?,
            },
            // Batches are unpacked by `apply_command`, never reach here.
            Op::Batch(_) => OpResult::None,
            Op::Txn {
                compare,
                success,
                failure,
            } => {
                let mut ok = true;
                for c in compare {
                    if !self.compare(c)? {
                        ok = false;
                        break;
                    }
                }
                let branch = if ok { success } else { failure };
                let mut results = Vec::with_capacity(branch.len());
                for t in branch {
                    results.push(match t {
                        TxnOp::Put {
                            key,
                            value,
                            prev_kv,
                        } => {
                            let prev = self.put(key, value, rev)?;
                            TxnOpResult::Put {
                                prev: prev.filter(|_| *prev_kv),
                            }
                        }
                        TxnOp::Delete { key } => TxnOpResult::Delete {
                            deleted: self.delete(key, rev)?,
                        },
                        TxnOp::Get { key } => TxnOpResult::Get {
                            kv: self.read(key)?,
                        },
                    });
                }
                OpResult::Txn {
                    succeeded: ok,
                    results,
                }
            }
        })
    }
}

/// Applies one client command (or each command of a proposal batch), with
/// request-id deduplication.
// The error is openraft's `StorageError`, which the trait methods return as is.
#[allow(clippy::result_large_err)]
fn apply_command(
    shared: &Shared,
    ap: &mut Applier<'_>,
    dedup: &mut HashMap<u64, BTreeSet<u64>>,
    fresh: &mut HashMap<RequestId, Response>,
    cmd: Command,
    log_id: LogId<NodeId>,
) -> Result<Response, SE> {
    let rev = log_id.index;
    let err = |e: std::io::Error| StorageIOError::apply(log_id, &e);
    if let Op::Batch(cmds) = cmd.op {
        // Commands the leader batched into one entry: each keeps its own
        // request id, answer and trace.
        let mut results = Vec::with_capacity(cmds.len());
        for c in cmds {
            results.push(apply_command(shared, ap, dedup, fresh, c, log_id)?);
        }
        return Ok(Response {
            revision: rev,
            result: OpResult::Batch(results),
        });
    }
    let span = if cmd.trace.is_empty() {
        tracing::Span::none()
    } else {
        let span = tracing::info_span!("kv.apply", revision = rev);
        use tracing_opentelemetry::OpenTelemetrySpanExt;
        let _ = span.set_parent(observe::propagation::carrier::extract(
            cmd.trace.iter().map(|(k, v)| (k.as_str(), v.as_slice())),
        ));
        span
    };
    let _g = span.enter();
    let Some(id) = cmd.request_id else {
        return Ok(Response {
            revision: rev,
            result: ap.apply_op(&cmd.op, rev).map_err(err)?,
        });
    };
    if let Some(r) = fresh.get(&id) {
        return Ok(r.clone());
    }
    let seen = dedup.get(&id.client_id);
    if seen.is_some_and(|q| q.contains(&id.seq)) {
        // A retry of an applied write: answer what the first application
        // answered.
        shared.metrics.dedup_hits.inc();
        return Ok(
            match shared.db.get(dedup_key(id)).map_err(|e| err(io_err(e)))? {
                Some(b) => decode("dedup response", &b).map_err(err)?,
                None => Response::default(),
            },
        );
    }
    let floor = seen.and_then(|q| q.first().copied());
    if floor.is_some_and(|f| id.seq < f) && seen.is_some_and(|q| q.len() >= DEDUP_WINDOW) {
        return Ok(Response {
            revision: rev,
            result: OpResult::Expired { request_id: id },
        });
    }
    let r = Response {
        revision: rev,
        result: ap.apply_op(&cmd.op, rev).map_err(err)?,
    };
    ap.batch.put(dedup_key(id), encode(&r));
    let q = dedup.entry(id.client_id).or_default();
    q.insert(id.seq);
    if q.len() > DEDUP_WINDOW
        && let Some(old) = q.pop_first()
    {
        ap.batch.delete(dedup_key(RequestId {
            client_id: id.client_id,
            seq: old,
        }));
    }
    fresh.insert(id, r.clone());
    Ok(r)
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = Self;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId<NodeId>>, StoredMembership<NodeId, Node>), SE> {
        let a = self.shared.applied();
        Ok((a.last_applied, a.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Response>, SE>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let t0 = Instant::now();
        let shared = &*self.shared;
        let mut ap = Applier {
            shared,
            overlay: HashMap::new(),
            batch: WriteBatch::new(),
            events: Vec::new(),
        };
        let mut applied = shared.applied().clone();
        let mut out = Vec::new();
        let mut dedup = shared.dedup.lock().unwrap_or_else(|p| p.into_inner());
        // Responses decided in this batch, for duplicates within the batch.
        let mut fresh: HashMap<RequestId, Response> = HashMap::new();
        for entry in entries {
            applied.last_applied = Some(entry.log_id);
            let resp = match entry.payload {
                EntryPayload::Blank => Response::default(),
                EntryPayload::Membership(m) => {
                    applied.membership = StoredMembership::new(Some(entry.log_id), m);
                    Response::default()
                }
                EntryPayload::Normal(cmd) => {
                    apply_command(shared, &mut ap, &mut dedup, &mut fresh, cmd, entry.log_id)?
                }
            };
            out.push(resp);
        }
        drop(dedup);
        // The applied pointer goes in the same batch as the changes it covers:
        // after a crash either both are there or neither.
        ap.batch.put(KEY_APPLIED, encode(&applied));
        let Applier { batch, events, .. } = ap;
        shared
            .db
            .write(batch, &WriteOptions::default())
            .map_err(|e| StorageIOError::write_state_machine(&io_err(e)))?;
        *shared.applied() = applied.clone();
        {
            let mut h = shared.history.lock().unwrap_or_else(|p| p.into_inner());
            for ev in &events {
                if h.len() == WATCH_HISTORY {
                    h.pop_front();
                }
                h.push_back(ev.clone());
            }
        }
        for ev in events {
            // No receivers is fine.
            let _ = shared.watch_tx.send(ev);
        }
        let m = &shared.metrics;
        m.apply_seconds.observe(t0.elapsed().as_secs_f64());
        m.applied_entries.inc_by(out.len() as u64);
        m.applied_index
            .set(applied.last_applied.map(|l| l.index).unwrap_or(0) as i64);
        Ok(out)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, SE> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, Node>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), SE> {
        let t0 = Instant::now();
        let data = snapshot.into_inner();
        let sig = Some(meta.signature());
        let body: SnapshotBody = decode("snapshot", &data)
            .map_err(|e| StorageIOError::read_snapshot(sig.clone(), &e))?;
        let shared = &*self.shared;
        let werr = |e: std::io::Error| StorageIOError::write_snapshot(sig.clone(), &e);
        // One batch: delete the old state, write the new one and the applied
        // pointer. The WAL makes it atomic, so a crash mid-install leaves the
        // old state (and openraft will send the snapshot again).
        let mut b = WriteBatch::new();
        for prefix in [DATA_PREFIX, DEDUP_PREFIX] {
            for kv in shared
                .db
                .prefix(prefix, false, &ReadOptions::default())
                .map_err(|e| werr(io_err(e)))?
            {
                let (k, _) = kv.map_err(|e| werr(io_err(e)))?;
                b.delete(k);
            }
        }
        let mut dedup: HashMap<u64, BTreeSet<u64>> = HashMap::new();
        for (k, v) in &body.entries {
            if !(k.starts_with(DATA_PREFIX) || k.starts_with(DEDUP_PREFIX)) {
                return Err(werr(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("snapshot holds a key outside the state key spaces: {k:?}"),
                ))
                .into());
            }
            if k.starts_with(DEDUP_PREFIX) && k.len() == 18 {
                let c = u64::from_be_bytes(k[2..10].try_into().unwrap_or_default());
                let s = u64::from_be_bytes(k[10..18].try_into().unwrap_or_default());
                dedup.entry(c).or_default().insert(s);
            }
            b.put(k, v);
        }
        let applied = Applied {
            last_applied: meta.last_log_id,
            membership: meta.last_membership.clone(),
        };
        b.put(KEY_APPLIED, encode(&applied));
        // Big snapshots may exceed the per-batch limit of the LSM: write in the
        // LSM's own max batch size is 64 MiB by default, ample for a metadata
        // store; a larger state is refused with the engine's typed error.
        shared
            .db
            .write(b, &WriteOptions { sync: true })
            .map_err(|e| werr(io_err(e)))?;
        save_snapshot_file(&shared.snapshot_dir, meta, &data).map_err(werr)?;
        *shared.applied() = applied;
        *shared.dedup.lock().unwrap_or_else(|p| p.into_inner()) = dedup;
        *shared
            .current_snapshot
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some((meta.clone(), Arc::new(data)));
        {
            let mut h = shared.history.lock().unwrap_or_else(|p| p.into_inner());
            h.clear();
        }
        let _ = shared.watch_tx.send(WatchEvent::Reset);
        shared.metrics.snapshots_installed.inc();
        shared
            .metrics
            .snapshot_install_seconds
            .observe(t0.elapsed().as_secs_f64());
        shared
            .metrics
            .applied_index
            .set(meta.last_log_id.map(|l| l.index).unwrap_or(0) as i64);
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, SE> {
        let cur = self
            .shared
            .current_snapshot
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        Ok(cur.map(|(meta, data)| Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data.as_ref().clone())),
        }))
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachine {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, SE> {
        let t0 = Instant::now();
        let shared = &*self.shared;
        // One LSM snapshot: the applied pointer and the state are read as of
        // the same instant, while apply keeps running.
        let snap = shared.db.snapshot();
        let ro = ReadOptions {
            snapshot: Some(&snap),
        };
        let rerr = |e: std::io::Error| StorageIOError::read_state_machine(&e);
        let applied: Applied = match shared
            .db
            .get_opt(KEY_APPLIED, &ro)
            .map_err(|e| rerr(io_err(e)))?
        {
            Some(b) => decode("applied state", &b).map_err(rerr)?,
            None => Applied::default(),
        };
        let mut entries = Vec::new();
        for prefix in [DATA_PREFIX, DEDUP_PREFIX] {
            for kv in shared
                .db
                .prefix(prefix, false, &ro)
                .map_err(|e| rerr(io_err(e)))?
            {
                entries.push(kv.map_err(|e| rerr(io_err(e)))?);
            }
        }
        drop(snap);
        let data = encode(&SnapshotBody { entries });
        let seq = shared
            .snapshot_seq
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let meta = SnapshotMeta {
            last_log_id: applied.last_applied,
            last_membership: applied.membership.clone(),
            snapshot_id: format!(
                "{}-{}-{seq}",
                applied.last_applied.map(|l| l.leader_id.term).unwrap_or(0),
                applied.last_applied.map(|l| l.index).unwrap_or(0)
            ),
        };
        save_snapshot_file(&shared.snapshot_dir, &meta, &data)
            .map_err(|e| StorageIOError::write_snapshot(Some(meta.signature()), &e))?;
        *shared
            .current_snapshot
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some((meta.clone(), Arc::new(data.clone())));
        let m = &shared.metrics;
        m.snapshots_built.inc();
        m.snapshot_bytes.set(data.len() as i64);
        m.snapshot_build_seconds.observe(t0.elapsed().as_secs_f64());
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        })
    }
}

/// For tests and the CLI: the ids of a membership's voters and all nodes.
pub fn members(m: &StoredMembership<NodeId, Node>) -> (Vec<NodeId>, BTreeMap<NodeId, Node>) {
    let voters = m.voter_ids().collect();
    let nodes = m.nodes().map(|(id, n)| (*id, n.clone())).collect();
    (voters, nodes)
}
