//! The Raft log store: entries, vote and purge state in the LSM, with one
//! fsync shared by every append queued meanwhile (the syncer thread).

use super::*;

pub(super) struct LogMeta {
    pub(super) last_purged: Option<LogId<NodeId>>,
    pub(super) last_log: Option<LogId<NodeId>>,
}

/// The Raft log (`RaftLogStorage`), in the `l/` key space.
#[derive(Clone)]
pub struct LogStore {
    pub(super) db: Arc<Db>,
    pub(super) meta: Arc<Mutex<LogMeta>>,
    pub(super) syncer: std::sync::mpsc::Sender<(LogFlushed<TypeConfig>, Instant)>,
    pub(super) metrics: Arc<Metrics>,
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

    pub(super) fn meta(&self) -> std::sync::MutexGuard<'_, LogMeta> {
        self.meta.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(super) fn write_sync(&self, b: WriteBatch) -> Result<(), std::io::Error> {
        self.db
            .write(b, &WriteOptions { sync: true })
            .map_err(io_err)
    }

    pub(super) fn update_log_size(&self) {
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
