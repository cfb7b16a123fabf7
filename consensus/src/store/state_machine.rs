//! The KV state machine: atomic apply of committed entries (state changes and
//! the applied index in one batch), request-id deduplication, watches.

use super::snapshot::*;
use super::snapshot_file::*;
use super::*;
use std::io::BufReader;

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub(super) struct Applied {
    pub(super) last_applied: Option<LogId<NodeId>>,
    pub(super) membership: StoredMembership<NodeId, Node>,
}

/// Recent applied events for watch catch-up, bounded by count
/// (`WATCH_HISTORY`) and by bytes (`WATCH_HISTORY_BYTES`): the oldest go
/// first; a watch from before them gets `OUT_OF_RANGE`.
#[derive(Debug, Default)]
pub struct History {
    events: VecDeque<WatchEvent>,
    /// Keys and values held, plus a fixed 64 bytes per event.
    bytes: usize,
}

impl History {
    fn size(ev: &WatchEvent) -> usize {
        64 + match ev {
            WatchEvent::Put(kv) => kv.key.len() + kv.value.len(),
            WatchEvent::Delete { key, .. } => key.len(),
            WatchEvent::Reset => 0,
        }
    }

    fn push(&mut self, ev: WatchEvent) {
        self.bytes += Self::size(&ev);
        self.events.push_back(ev);
        while self.events.len() > WATCH_HISTORY
            || (self.bytes > WATCH_HISTORY_BYTES && self.events.len() > 1)
        {
            if let Some(old) = self.events.pop_front() {
                self.bytes -= Self::size(&old);
            }
        }
    }
}

/// State shared between the state machine, its snapshot builder and the gRPC
/// read path.
#[derive(Debug)]
pub struct Shared {
    pub db: Arc<Db>,
    pub(super) applied: Mutex<Applied>,
    /// Client sessions: the request-deduplication table (`sessions.rs`).
    pub(super) dedup: Mutex<Sessions>,
    pub(super) watch_tx: broadcast::Sender<WatchEvent>,
    pub(super) history: Mutex<History>,
    pub(super) snapshot_dir: PathBuf,
    /// The last log id `current.snap` covers; held across its replacement
    /// (`snapshot::publish`).
    pub(super) current_snapshot: Mutex<Option<LogId<NodeId>>>,
    pub(super) metrics: Arc<Metrics>,
    pub(super) snapshot_seq: std::sync::atomic::AtomicU64,
}

impl Shared {
    /// Where this node keeps `current.snap` (and snapshots being built or
    /// received, as `*.tmp`).
    pub fn snapshot_dir(&self) -> &Path {
        &self.snapshot_dir
    }

    pub(super) fn applied(&self) -> std::sync::MutexGuard<'_, Applied> {
        self.applied.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The log index of the least recently seen client session, if any.
    pub fn oldest_session(&self) -> Option<u64> {
        self.dedup
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .oldest()
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

    /// Entries in `[start, end)` (empty `end` = unbounded), at most `limit`
    /// and, past the first, at most `max_bytes` of keys and values; the bool
    /// says whether more remain.
    pub fn scan(
        &self,
        start: &[u8],
        end: &[u8],
        limit: usize,
        max_bytes: usize,
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
        let mut out: Vec<KeyValue> = Vec::new();
        let mut bytes = 0usize;
        for kv in it {
            let (_, v) = kv.map_err(io_err)?;
            if out.len() == limit {
                return Ok((out, true));
            }
            let kv: KeyValue = decode("key record", &v)?;
            let size = kv.key.len().saturating_add(kv.value.len());
            if !out.is_empty() && bytes.saturating_add(size) > max_bytes {
                return Ok((out, true));
            }
            bytes = bytes.saturating_add(size);
            out.push(kv);
        }
        Ok((out, false))
    }

    /// Subscribes to applied changes; returns the oldest retained revision
    /// and the retained events from revision `from` on (none for `from` 0:
    /// a watch of new changes copies nothing).
    pub fn watch(
        &self,
        from: u64,
    ) -> (
        broadcast::Receiver<WatchEvent>,
        Option<u64>,
        Vec<WatchEvent>,
    ) {
        // Subscribe under the history lock (apply pushes history under it and
        // sends after): every event is either in the copy or on the channel.
        let h = self.history.lock().unwrap_or_else(|p| p.into_inner());
        let rx = self.watch_tx.subscribe();
        let oldest = h.events.front().map(WatchEvent::revision);
        let replay = if from == 0 {
            Vec::new()
        } else {
            h.events
                .iter()
                .filter(|e| e.revision() >= from)
                .cloned()
                .collect()
        };
        (rx, oldest, replay)
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
        if !snapshot_dir.is_dir() {
            std::fs::create_dir_all(&snapshot_dir)?;
            // The new directory's entry must be durable before a snapshot
            // file in it is counted on.
            if let Some(parent) = snapshot_dir.parent() {
                db.fs().sync_dir(parent).map_err(io_err)?;
            }
        }
        let applied: Applied = match db.get(KEY_APPLIED).map_err(io_err)? {
            Some(b) => decode("applied state", &b)?,
            None => Applied::default(),
        };
        let dedup = Sessions::load(&db)?;
        metrics.sessions.set(dedup.clients() as i64);
        let current = open_snapshot_dir(&snapshot_dir)?;
        if let Some(meta) = &current {
            tracing::info!(snapshot = %meta.snapshot_id, "snapshot checked");
        }
        let (watch_tx, _) = broadcast::channel(4096);
        Ok(Self {
            shared: Arc::new(Shared {
                db,
                applied: Mutex::new(applied),
                dedup: Mutex::new(dedup),
                watch_tx,
                history: Mutex::new(History::default()),
                snapshot_dir,
                current_snapshot: Mutex::new(current.and_then(|m| m.last_log_id)),
                metrics,
                snapshot_seq: Default::default(),
            }),
        })
    }
}

/// Applies one command to the overlay + batch; returns the result and the
/// watch events it produced.
pub(super) struct Applier<'a> {
    pub(super) shared: &'a Shared,
    pub(super) overlay: HashMap<Vec<u8>, Option<KeyValue>>,
    pub(super) batch: WriteBatch,
    pub(super) events: Vec<WatchEvent>,
}

impl Applier<'_> {
    pub(super) fn read(&mut self, key: &[u8]) -> Result<Option<KeyValue>, std::io::Error> {
        if let Some(v) = self.overlay.get(key) {
            return Ok(v.clone());
        }
        let v = self.shared.get(key)?;
        self.overlay.insert(key.to_vec(), v.clone());
        Ok(v)
    }

    pub(super) fn put(
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

    pub(super) fn delete(&mut self, key: &[u8], rev: u64) -> Result<bool, std::io::Error> {
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

    pub(super) fn compare(&mut self, c: &Compare) -> Result<bool, std::io::Error> {
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

    pub(super) fn apply_op(&mut self, op: &Op, rev: u64) -> Result<OpResult, std::io::Error> {
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
            // Batches and session expiry are handled by `apply_command` and
            // never reach here.
            Op::Batch(_) | Op::ExpireSessions { .. } => OpResult::None,
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
pub(super) fn apply_command(
    shared: &Shared,
    ap: &mut Applier<'_>,
    sessions: &mut Sessions,
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
            results.push(apply_command(shared, ap, sessions, fresh, c, log_id)?);
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
    if let Op::ExpireSessions { before_index } = cmd.op {
        // Decided by the log, not by this replica's clock: every replica
        // forgets the same clients at the same index.
        let n = sessions.expire_before(before_index, &mut ap.batch);
        shared.metrics.sessions_expired.inc_by(n as u64);
        return Ok(Response {
            revision: rev,
            result: OpResult::None,
        });
    }
    let Some(id) = cmd.request_id else {
        return Ok(Response {
            revision: rev,
            result: ap.apply_op(&cmd.op, rev).map_err(err)?,
        });
    };
    if let Some(r) = fresh.get(&id) {
        return Ok(r.clone());
    }
    if sessions.contains(id) {
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
    if sessions.is_pruned(id) {
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
    let evicted = sessions.record(id, rev, &mut ap.batch);
    shared.metrics.sessions_expired.inc_by(evicted as u64);
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
        shared.metrics.sessions.set(dedup.clients() as i64);
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
                h.push(ev.clone());
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

    /// A temporary file in the snapshot directory for a snapshot streamed
    /// from the leader (`network.rs` writes it; dropped unused, it is removed).
    async fn begin_receiving_snapshot(&mut self) -> Result<Box<SnapshotData>, SE> {
        let path = temp_path(&self.shared, "recv");
        let file = tokio::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .await
            .map_err(|e| StorageIOError::write_snapshot(None, &e))?;
        Ok(Box::new(SnapshotData::new(file, path, true)))
    }

    /// Installs a received snapshot file (`network.rs` has already fsynced
    /// and checked it end to end; the checks here are the backstop): read it
    /// a record at a time into one LSM batch, write the batch only once the
    /// trailer has checked, then make the file `current.snap`.
    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, Node>,
        mut snapshot: Box<SnapshotData>,
    ) -> Result<(), SE> {
        let t0 = Instant::now();
        let sig = Some(meta.signature());
        // Durable before it can be renamed to `current.snap`.
        snapshot
            .sync()
            .await
            .map_err(|e| StorageIOError::write_snapshot(sig.clone(), &e))?;
        // Reading the file and writing the LSM block: off the async workers.
        let (shared, path, m) = (
            self.shared.clone(),
            snapshot.path().to_path_buf(),
            meta.clone(),
        );
        let (applied, dedup) =
            tokio::task::spawn_blocking(move || install_file(&shared, &path, &m))
                .await
                .map_err(|e| {
                    StorageIOError::write_snapshot(sig.clone(), &std::io::Error::other(e))
                })?
                .map_err(|e| *e)?;
        let shared = &*self.shared;
        let current = shared.snapshot_dir.join(SNAPSHOT_FILE);
        // (An install is never of `current.snap` itself: openraft installs
        // only what `begin_receiving_snapshot` gave the receiver.)
        if snapshot.path() != current
            && publish(shared, snapshot.path(), meta)
                .map_err(|e| StorageIOError::write_snapshot(sig.clone(), &e))?
        {
            snapshot.keep(current);
        }
        shared.metrics.sessions.set(dedup.clients() as i64);
        *shared.applied() = applied;
        *shared.dedup.lock().unwrap_or_else(|p| p.into_inner()) = dedup;
        {
            let mut h = shared.history.lock().unwrap_or_else(|p| p.into_inner());
            *h = History::default();
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
        open_current(&self.shared)
            .await
            .map_err(|e| StorageIOError::read_snapshot(None, &e).into())
    }
}

/// Replaces the state with a snapshot file's: one LSM batch deletes the old
/// state and writes the file's records and the applied pointer. The WAL makes
/// the batch atomic, so a crash mid-install leaves the old state (and
/// openraft sends the snapshot again). Returns the new applied pointer and
/// the client sessions rebuilt from the file (the error is boxed:
/// `StorageError` is large).
fn install_file(
    shared: &Shared,
    path: &Path,
    meta: &SnapshotMeta<NodeId, Node>,
) -> Result<(Applied, Sessions), Box<SE>> {
    let sig = Some(meta.signature());
    let rerr =
        |e: std::io::Error| Box::new(SE::from(StorageIOError::read_snapshot(sig.clone(), &e)));
    let werr =
        |e: std::io::Error| Box::new(SE::from(StorageIOError::write_snapshot(sig.clone(), &e)));
    let file = std::fs::File::open(path).map_err(rerr)?;
    let mut reader = SnapshotReader::open(BufReader::with_capacity(1 << 20, file)).map_err(rerr)?;
    if reader.meta() != meta {
        return Err(rerr(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!(
                "the snapshot file's meta ({:?}) is not the one it was sent with ({:?})",
                reader.meta().signature(),
                meta.signature()
            ),
        )));
    }
    let mut b = WriteBatch::new();
    for prefix in STATE_PREFIXES {
        for kv in shared
            .db
            .prefix(prefix, false, &ReadOptions::default())
            .map_err(|e| werr(io_err(e)))?
        {
            let (k, _) = kv.map_err(|e| werr(io_err(e)))?;
            b.delete(k);
        }
    }
    // The client sessions are rebuilt from their key spaces: the dedup keys
    // (their answers are not needed for that) and the session records.
    let mut session_keys = Vec::new();
    while let Some((k, v)) = reader.next_record().map_err(rerr)? {
        if !STATE_PREFIXES.iter().any(|p| k.starts_with(p)) {
            return Err(rerr(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("snapshot holds a key outside the state key spaces: {k:?}"),
            )));
        }
        if k.starts_with(DEDUP_PREFIX) {
            session_keys.push((k.clone(), Vec::new()));
        } else if k.starts_with(sessions::SESSION_PREFIX) {
            session_keys.push((k.clone(), v.clone()));
        }
        b.put(k, v);
    }
    // Here the trailer's count and checksum have checked: nothing read from
    // a damaged or forged file reaches the LSM.
    let dedup = Sessions::from_keys(
        session_keys
            .iter()
            .map(|(k, v)| (k.as_slice(), v.as_slice())),
    );
    let applied = Applied {
        last_applied: meta.last_log_id,
        membership: meta.last_membership.clone(),
    };
    b.put(KEY_APPLIED, encode(&applied));
    // The batch is held in memory until written: the LSM's batch limit
    // (`storage::Options::max_batch_bytes`, 256 MiB) bounds the state a
    // snapshot can install; a larger one is refused with its typed error.
    shared
        .db
        .write(b, &WriteOptions { sync: true })
        .map_err(|e| werr(io_err(e)))?;
    Ok((applied, dedup))
}
