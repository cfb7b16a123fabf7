//! The database: its state, the public API and the read path (memtable →
//! immutables → L0 → L1..). The other concepts have a file each:
//! - [`write`]: group commit into the WAL and memtable, rotation, interval sync;
//! - [`recovery`]: manifest and WAL replay on open;
//! - [`compaction`]: the flush and compaction threads.
//!
//! # Locks, and why each exists
//! - `writers` (+ `writer_cv`): the group-commit queue. The first writer to find
//!   no active leader becomes the leader, takes every queued batch, and commits
//!   them with one WAL write (and at most one fsync); the others sleep until
//!   their result is set. Only the leader ever touches the WAL or rotates the
//!   memtable, so the WAL needs no further ordering.
//! - `state`: the mutable metadata (memtables, version, manifest, file numbers).
//!   Held briefly: never across table I/O, only across manifest appends.
//! - `wal`: the current WAL writer; taken by the leader (after it released
//!   `state`) and by the interval-sync thread. Order when both: `state` → `wal`.
//! - `current`: the readers' view (memtable, immutables, version) as one `Arc`,
//!   swapped whole; a read clones the `Arc` and then never takes a lock.
//! - `compaction`: serialises compactions (background thread and
//!   `compact_range`) so no two merge the same files.

use std::collections::{BTreeMap, VecDeque};
use std::fs::File;
use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use parking_lot::{Condvar, Mutex, RwLock};

use crate::batch::WriteBatch;
use crate::io::Fs;
use crate::iter::{DbIter, Pin};
use crate::key::{self};
use crate::memtable::{Lookup, Memtable};
use crate::options::{Options, SyncPolicy, WriteOptions};
use crate::sstable::cache::BlockCache;
use crate::stats::{DbStats, LevelStats, Stats};
use crate::version::{FileMeta, FileRecord, NUM_LEVELS, Version};
use crate::wal::WalWriter;
use crate::{Error, Result};

mod compaction;
mod recovery;
mod write;

use compaction::Compaction;
use recovery::recover;

const CURRENT: &str = "CURRENT";
const LOCK: &str = "LOCK";

fn manifest_name(number: u64) -> String {
    format!("MANIFEST-{number:06}")
}

/// What readers see: swapped whole on every memtable switch or version change.
#[derive(Debug)]
struct SuperVersion {
    mem: Arc<Memtable>,
    /// Newest first.
    imms: Vec<Arc<Memtable>>,
    version: Arc<Version>,
}

#[derive(Debug)]
struct State {
    mem: Arc<Memtable>,
    /// Oldest first (the flush order).
    imms: VecDeque<Arc<Memtable>>,
    version: Arc<Version>,
    manifest: WalWriter,
    next_file: u64,
    /// Highest sequence number handed to a write group.
    last_seq: u64,
    bg_error: Option<String>,
    compact_pointer: [Vec<u8>; NUM_LEVELS],
}

#[derive(Debug)]
struct WriteRequest {
    batch: WriteBatch,
    sync: bool,
    /// Switch the memtable even if it is not full (`Db::flush`).
    force_rotate: bool,
}

/// A follower's request, waiting in the queue for a leader to commit it.
#[derive(Debug)]
struct PendingWrite {
    req: WriteRequest,
    result: Mutex<Option<Result<()>>>,
}

#[derive(Debug, Default)]
struct WriterQueue {
    queue: Vec<Arc<PendingWrite>>,
    /// The previous group's vector, kept for its capacity.
    spare: Vec<Arc<PendingWrite>>,
    leader_active: bool,
}

#[derive(Debug)]
struct Inner {
    dir: PathBuf,
    opts: Options,
    fs: Fs,
    cache: Arc<BlockCache>,
    _lock: File,
    current: RwLock<Arc<SuperVersion>>,
    /// Every write with a sequence number <= this is in a memtable.
    visible_seq: AtomicU64,
    state: Mutex<State>,
    bg_cv: Condvar,
    writers: Mutex<WriterQueue>,
    writer_cv: Condvar,
    wal: Mutex<WalWriter>,
    snapshots: Mutex<BTreeMap<u64, usize>>,
    compaction: Mutex<()>,
    stats: Stats,
    shutdown: AtomicBool,
}

/// An LSM-tree key-value store. `Send + Sync`: share it behind an `Arc`.
#[derive(Debug)]
pub struct Db {
    inner: Arc<Inner>,
    threads: Vec<JoinHandle<()>>,
}

/// A consistent read view: every read through it sees the database as of the
/// moment it was taken. Compactions keep the versions it can see until it is
/// dropped.
#[derive(Debug)]
pub struct Snapshot {
    seq: u64,
    // Weak: a snapshot outliving its `Db` must not keep the database (and its
    // LOCK) open.
    inner: std::sync::Weak<Inner>,
}

impl Snapshot {
    pub fn sequence(&self) -> u64 {
        self.seq
    }
}

impl Drop for Snapshot {
    fn drop(&mut self) {
        let Some(inner) = self.inner.upgrade() else {
            return;
        };
        let mut s = inner.snapshots.lock();
        if let Some(c) = s.get_mut(&self.seq) {
            *c -= 1;
            if *c == 0 {
                s.remove(&self.seq);
            }
        }
    }
}

/// Options for reads.
#[derive(Clone, Copy, Debug, Default)]
pub struct ReadOptions<'a> {
    /// Read as of this snapshot; `None` = the latest committed state.
    pub snapshot: Option<&'a Snapshot>,
}

fn dup_error(e: &Error) -> Error {
    match e {
        Error::Io { op, path, source } => Error::Io {
            op,
            path: path.clone(),
            source: std::io::Error::new(source.kind(), source.to_string()),
        },
        Error::Corruption {
            file,
            offset,
            reason,
        } => Error::Corruption {
            file: file.clone(),
            offset: *offset,
            reason: reason.clone(),
        },
        Error::Background { job, reason } => Error::Background {
            job,
            reason: reason.clone(),
        },
        Error::Closed => Error::Closed,
        other => Error::Background {
            job: "write",
            reason: other.to_string(),
        },
    }
}

impl Db {
    /// Opens (or creates) the database in `dir`, recovering from the manifest
    /// and the WAL.
    pub fn open(dir: impl AsRef<Path>, opts: Options) -> Result<Db> {
        opts.validate()?;
        let dir = dir.as_ref().to_path_buf();
        let fs = Fs::new(opts.fault_injector.clone()).with_power_loss(opts.power_loss.clone());
        if !dir.is_dir() {
            std::fs::create_dir_all(&dir).map_err(|e| Error::io("create directory", &dir, e))?;
            // The new directory's entry in its parent must be durable before
            // anything in it is counted on (a power cut could drop the whole
            // directory otherwise).
            if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
                fs.sync_dir(parent)?;
            }
        }
        let lock_path = dir.join(LOCK);
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| Error::io("open lock file", &lock_path, e))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => return Err(Error::Locked { dir }),
            Err(std::fs::TryLockError::Error(e)) => {
                return Err(Error::io("lock", &lock_path, e));
            }
        }
        let cache = Arc::new(BlockCache::new(opts.block_cache_bytes));
        let recovered = recover(&dir, &opts, &fs, &cache)?;
        let mem = Arc::new(Memtable::new(recovered.wal.number()));
        let version = Arc::new(recovered.version);
        let sv = Arc::new(SuperVersion {
            mem: mem.clone(),
            imms: Vec::new(),
            version: version.clone(),
        });
        let inner = Arc::new(Inner {
            dir,
            fs,
            cache,
            _lock: lock,
            current: RwLock::new(sv),
            visible_seq: AtomicU64::new(recovered.last_seq),
            state: Mutex::new(State {
                mem,
                imms: VecDeque::new(),
                version,
                manifest: recovered.manifest,
                next_file: recovered.next_file,
                last_seq: recovered.last_seq,
                bg_error: None,
                compact_pointer: Default::default(),
            }),
            bg_cv: Condvar::new(),
            writers: Mutex::new(WriterQueue::default()),
            writer_cv: Condvar::new(),
            wal: Mutex::new(recovered.wal),
            snapshots: Mutex::new(BTreeMap::new()),
            compaction: Mutex::new(()),
            stats: Stats::default(),
            shutdown: AtomicBool::new(false),
            opts,
        });
        let mut threads = Vec::new();
        let spawn = |name: &str, f: fn(&Inner)| -> Result<JoinHandle<()>> {
            let i = inner.clone();
            std::thread::Builder::new()
                .name(name.to_string())
                .spawn(move || f(&i))
                .map_err(|e| Error::io("spawn thread", &inner.dir, e))
        };
        threads.push(spawn("lsm-flush", Inner::flush_loop)?);
        threads.push(spawn("lsm-compact", Inner::compaction_loop)?);
        if let SyncPolicy::Interval(_) = inner.opts.sync_policy {
            threads.push(spawn("lsm-wal-sync", Inner::sync_loop)?);
        }
        // Recovery may have left enough L0 files to compact.
        inner.bg_cv.notify_all();
        Ok(Db { inner, threads })
    }

    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    /// The file layer this database writes through: files kept beside the
    /// database (a Raft snapshot) share its fault and power-loss hooks.
    pub fn fs(&self) -> &Fs {
        &self.inner.fs
    }

    pub fn put(&self, key: impl AsRef<[u8]>, value: impl AsRef<[u8]>) -> Result<()> {
        let (key, value) = (key.as_ref(), value.as_ref());
        let mut b = WriteBatch::with_capacity(key.len() + value.len() + 16);
        b.put(key, value);
        self.write(b, &WriteOptions::default())
    }

    pub fn delete(&self, key: impl AsRef<[u8]>) -> Result<()> {
        let key = key.as_ref();
        let mut b = WriteBatch::with_capacity(key.len() + 8);
        b.delete(key);
        self.write(b, &WriteOptions::default())
    }

    /// Applies `batch` atomically: after a crash either all of it or none of it
    /// is present. With `opts.sync` (or `SyncPolicy::Always`) it returns only
    /// once the WAL holding it is fsynced.
    pub fn write(&self, batch: WriteBatch, opts: &WriteOptions) -> Result<()> {
        let o = &self.inner.opts;
        if batch.encoded_len() > o.max_batch_bytes {
            return Err(Error::BatchTooLarge {
                len: batch.encoded_len(),
                max: o.max_batch_bytes,
            });
        }
        for (_, k, v) in batch.iter() {
            if k.len() > o.max_key_bytes {
                return Err(Error::KeyTooLarge {
                    len: k.len(),
                    max: o.max_key_bytes,
                });
            }
            if v.len() > o.max_value_bytes {
                return Err(Error::ValueTooLarge {
                    len: v.len(),
                    max: o.max_value_bytes,
                });
            }
        }
        if batch.is_empty() {
            return Ok(());
        }
        self.inner.submit(batch, opts.sync, false)
    }

    /// Makes every write that has returned so far durable by fsyncing the WAL.
    ///
    /// Unsynced writes followed by one `sync_wal` share a single fsync: this is
    /// how a Raft log store group-commits (entries readable at once, durable when
    /// the shared fsync returns). Older WALs were synced when they were rotated
    /// out, so only the current one needs it.
    pub fn sync_wal(&self) -> Result<()> {
        // Under the WAL lock: every write that returned has flushed its records
        // to the file while holding this lock, so the fsync covers them all.
        self.inner.wal.lock().sync()
    }

    pub fn get(&self, key: impl AsRef<[u8]>) -> Result<Option<Vec<u8>>> {
        self.get_opt(key, &ReadOptions::default())
    }

    /// Point lookup: newest structure first, stopping at the first version
    /// visible at the read's sequence number.
    pub fn get_opt(
        &self,
        key: impl AsRef<[u8]>,
        opts: &ReadOptions<'_>,
    ) -> Result<Option<Vec<u8>>> {
        let key = key.as_ref();
        // Sequence first, then the view: the view is at least as new as the
        // sequence, so every write the sequence covers is in it.
        let seq = self.read_seq(opts);
        let sv = self.inner.current.read().clone();
        let stats = &self.inner.stats;
        stats.gets.fetch_add(1, Ordering::Relaxed);
        for m in std::iter::once(&sv.mem).chain(sv.imms.iter()) {
            match m.get(key, seq) {
                Lookup::Found(v) => return Ok(Some(v)),
                Lookup::Deleted => return Ok(None),
                Lookup::Absent => {}
            }
        }
        let v = &sv.version;
        let probe = |f: &FileMeta| -> Result<Option<Option<Vec<u8>>>> {
            let (lookup, p) = f.table.get(key, seq)?;
            stats.record_probe(p);
            Ok(match lookup {
                Lookup::Found(v) => Some(Some(v)),
                Lookup::Deleted => Some(None),
                Lookup::Absent => None,
            })
        };
        for f in &v.levels[0] {
            if f.smallest_user() <= key
                && key <= f.largest_user()
                && let Some(r) = probe(f)?
            {
                return Ok(r);
            }
        }
        for files in v.levels.iter().skip(1) {
            let i = files.partition_point(|f| f.largest_user() < key);
            if let Some(f) = files.get(i)
                && f.smallest_user() <= key
                && let Some(r) = probe(f)?
            {
                return Ok(r);
            }
        }
        Ok(None)
    }

    /// The sequence a read sees: its snapshot's, or the latest visible one.
    fn read_seq(&self, opts: &ReadOptions<'_>) -> u64 {
        match opts.snapshot {
            Some(s) => s.seq,
            None => self.inner.visible_seq.load(Ordering::Acquire),
        }
    }

    /// A consistent read view as of now.
    pub fn snapshot(&self) -> Snapshot {
        let mut s = self.inner.snapshots.lock();
        // Under the snapshot lock, so a compaction computing the oldest live
        // snapshot sees this one or a sequence no older than it.
        let seq = self.inner.visible_seq.load(Ordering::Acquire);
        *s.entry(seq).or_insert(0) += 1;
        Snapshot {
            seq,
            inner: Arc::downgrade(&self.inner),
        }
    }

    /// Entries with `lower <= key < upper` style bounds, forward (or reverse).
    pub fn range(
        &self,
        lower: Bound<&[u8]>,
        upper: Bound<&[u8]>,
        reverse: bool,
        opts: &ReadOptions<'_>,
    ) -> Result<DbIter> {
        let seq = self.read_seq(opts);
        let sv = self.inner.current.read().clone();
        let mut mems = vec![sv.mem.clone()];
        mems.extend(sv.imms.iter().cloned());
        let pins: Vec<Pin> = vec![Box::new(sv.clone())];
        DbIter::new(
            &mems,
            &sv.version,
            seq,
            lower.map(|b| b.to_vec()),
            upper.map(|b| b.to_vec()),
            reverse,
            pins,
        )
    }

    /// Every entry whose key starts with `prefix`.
    pub fn prefix(&self, prefix: &[u8], reverse: bool, opts: &ReadOptions<'_>) -> Result<DbIter> {
        let end = key::prefix_successor(prefix);
        let upper = match &end {
            Some(e) => Bound::Excluded(e.as_slice()),
            None => Bound::Unbounded,
        };
        self.range(Bound::Included(prefix), upper, reverse, opts)
    }

    /// Writes the memtable (and any immutable ones) to L0 and waits until they
    /// are on disk.
    pub fn flush(&self) -> Result<()> {
        self.inner.submit(WriteBatch::new(), false, true)?;
        let mut st = self.inner.state.lock();
        loop {
            if let Some(e) = &st.bg_error {
                return Err(Error::Background {
                    job: "flush",
                    reason: e.clone(),
                });
            }
            if st.imms.is_empty() {
                return Ok(());
            }
            self.inner.bg_cv.wait(&mut st);
        }
    }

    /// Compacts every table overlapping [start, end] (None = unbounded) down to
    /// the deepest level that holds data, dropping overwritten versions and
    /// tombstones no snapshot needs.
    pub fn compact_range(&self, start: Option<&[u8]>, end: Option<&[u8]>) -> Result<()> {
        self.flush()?;
        let deepest = {
            let st = self.inner.state.lock();
            (0..NUM_LEVELS)
                .rev()
                .find(|l| !st.version.levels[*l].is_empty())
                .unwrap_or(0)
        };
        for level in 0..NUM_LEVELS - 1 {
            let _guard = self.inner.compaction.lock();
            let c = {
                let st = self.inner.state.lock();
                let inputs = st.version.overlapping(level, start, end);
                if inputs.is_empty() || level >= deepest.max(1) {
                    continue;
                }
                Compaction::new(&st.version, level, inputs)
            };
            self.inner.run_compaction(c)?;
        }
        Ok(())
    }

    /// Blocks until no flush is pending and no level is over its compaction
    /// trigger (or a background error stops the work). Benchmarks call it
    /// before measuring write and space amplification.
    pub fn wait_for_background(&self) -> Result<()> {
        loop {
            {
                let mut st = self.inner.state.lock();
                if let Some(e) = &st.bg_error {
                    return Err(Error::Background {
                        job: "background",
                        reason: e.clone(),
                    });
                }
                let idle = st.imms.is_empty() && !self.inner.needs_compaction(&st.version);
                if !idle {
                    self.inner.bg_cv.notify_all();
                    self.inner
                        .bg_cv
                        .wait_for(&mut st, Duration::from_millis(50));
                    continue;
                }
            }
            // Idle by the numbers; make sure no compaction is mid-install.
            if self.inner.compaction.try_lock().is_some() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Counters and the level shape.
    pub fn stats(&self) -> DbStats {
        let st = self.inner.state.lock();
        let levels = (0..NUM_LEVELS)
            .map(|l| LevelStats {
                files: st.version.levels[l].len(),
                bytes: st.version.level_bytes(l),
            })
            .collect();
        let memtable_bytes =
            st.mem.approx_bytes() + st.imms.iter().map(|m| m.approx_bytes()).sum::<usize>();
        drop(st);
        self.inner.stats.snapshot(
            levels,
            memtable_bytes as u64,
            self.inner.cache.hits(),
            self.inner.cache.misses(),
            self.inner.cache.used_bytes() as u64,
        )
    }

    /// Reads every table block and checks checksums, order and level shape.
    pub fn verify(&self) -> Result<(usize, u64)> {
        let v = self.inner.current.read().version.clone();
        v.check_invariants()
            .map_err(|r| Error::corruption(&self.inner.dir, 0, r))?;
        let (mut blocks, mut entries) = (0, 0);
        for files in &v.levels {
            for f in files {
                let (b, e) = f.table.verify()?;
                blocks += b;
                entries += e;
            }
        }
        Ok((blocks, entries))
    }

    /// The live table files, by level (for inspection tools).
    pub fn tables(&self) -> Vec<(usize, FileRecord)> {
        let v = self.inner.current.read().version.clone();
        v.levels
            .iter()
            .enumerate()
            .flat_map(|(l, fs)| fs.iter().map(move |f| (l, f.rec.clone())))
            .collect()
    }

    /// The highest sequence number visible to reads.
    pub fn latest_sequence(&self) -> u64 {
        self.inner.visible_seq.load(Ordering::Acquire)
    }
}

impl Drop for Db {
    fn drop(&mut self) {
        self.inner.shutdown.store(true, Ordering::Release);
        {
            // Wake background threads under the lock they wait with, so none
            // misses the flag between its check and its wait.
            let _st = self.inner.state.lock();
            self.inner.bg_cv.notify_all();
        }
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        if let Err(e) = self.inner.wal.lock().sync() {
            tracing::warn!(error = %e, "syncing the WAL on close");
        }
    }
}

impl Inner {
    fn level_target_bytes(&self, level: usize) -> u64 {
        let mut t = self.opts.l1_target_bytes;
        for _ in 1..level {
            t = t.saturating_mul(self.opts.level_size_ratio);
        }
        t
    }

    fn install_super_version(&self, st: &State) {
        let sv = Arc::new(SuperVersion {
            mem: st.mem.clone(),
            imms: st.imms.iter().rev().cloned().collect(),
            version: st.version.clone(),
        });
        *self.current.write() = sv;
    }

    fn set_bg_error(&self, job: &'static str, e: &Error) {
        tracing::error!(job, error = %e, "background job failed; writes are refused until reopen");
        let mut st = self.state.lock();
        st.bg_error.get_or_insert_with(|| format!("{job}: {e}"));
        self.bg_cv.notify_all();
    }
}
