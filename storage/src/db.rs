//! The database: the write path (group commit into the WAL and memtable), the
//! read path (memtable → immutables → L0 → L1..), recovery, and the background
//! flush and compaction threads.
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
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex, RwLock};

use crate::batch::{WriteBatch, decode_wal_payload};
use crate::io::Fs;
use crate::iter::{DbIter, Merge, Pin};
use crate::key::{self, Kind};
use crate::memtable::{Lookup, Memtable};
use crate::options::{Options, SyncPolicy, WriteOptions};
use crate::sstable::cache::BlockCache;
use crate::sstable::{Table, TableBuilder, TableInfo, sst_path};
use crate::stats::{DbStats, LevelStats, Stats};
use crate::version::{FileMeta, FileRecord, NUM_LEVELS, Version, VersionEdit};
use crate::wal::{WalWriter, read_wal, wal_path};
use crate::{Error, Result};

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
        let fs = Fs::new(opts.fault_injector.clone());
        std::fs::create_dir_all(&dir).map_err(|e| Error::io("create directory", &dir, e))?;
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

/// What recovery hands to `open`.
struct Recovered {
    version: Version,
    manifest: WalWriter,
    wal: WalWriter,
    next_file: u64,
    last_seq: u64,
}

/// Recovery = manifest replay + WAL replay.
///
/// 1. `CURRENT` names the manifest; replaying its edits gives the table set,
///    the first live WAL number, the next file number and the last sequence.
/// 2. WALs numbered >= that log number are replayed in order into a memtable
///    (a torn tail is cut off; corruption before the tail is an error).
/// 3. That memtable is written to an L0 table, a new WAL is created, and a
///    fresh manifest holding the whole version is written and switched to
///    atomically through `CURRENT`.
/// 4. Only then are the old WALs, old manifests and orphan tables removed: a
///    crash at any step leaves the previous `CURRENT` valid.
fn recover(dir: &Path, opts: &Options, fs: &Fs, cache: &Arc<BlockCache>) -> Result<Recovered> {
    let current_path = dir.join(CURRENT);
    let mut files: BTreeMap<u64, (usize, FileRecord)> = BTreeMap::new();
    let (mut log_number, mut next_file, mut last_seq) = (0u64, 2u64, 0u64);
    match std::fs::read_to_string(&current_path) {
        Ok(name) => {
            let name = name.trim();
            if !name.starts_with("MANIFEST-") || name.contains('/') {
                return Err(Error::corruption(
                    &current_path,
                    0,
                    format!("CURRENT names {name:?}, not a manifest"),
                ));
            }
            let mpath = dir.join(name);
            let contents = read_wal(&mpath).map_err(|e| match e {
                Error::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound => {
                    Error::corruption(&current_path, 0, format!("CURRENT names missing {name}"))
                }
                other => other,
            })?;
            for (off, payload) in &contents.records {
                let edit = VersionEdit::decode(payload)
                    .map_err(|r| Error::corruption(&mpath, *off, format!("version edit: {r}")))?;
                if let Some(n) = edit.log_number {
                    log_number = n;
                }
                if let Some(n) = edit.next_file {
                    next_file = next_file.max(n);
                }
                if let Some(n) = edit.last_seq {
                    last_seq = last_seq.max(n);
                }
                for (_, number) in &edit.deleted {
                    files.remove(number);
                }
                for (level, rec) in &edit.added {
                    files.insert(rec.number, (*level, rec.clone()));
                }
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if !opts.create_if_missing {
                return Err(Error::NotFound {
                    dir: dir.to_path_buf(),
                    reason: "no CURRENT file and create_if_missing is off".into(),
                });
            }
        }
        Err(e) => return Err(Error::io("read", &current_path, e)),
    }

    // Open every table the manifest lists.
    let mut added = Vec::new();
    for (number, (level, rec)) in &files {
        let path = sst_path(dir, *number);
        let table = Arc::new(Table::open(&path, *number, cache.clone())?);
        if table.file_bytes() != rec.file_bytes {
            return Err(Error::corruption(
                &path,
                0,
                format!(
                    "manifest says {} bytes, file has {}",
                    rec.file_bytes,
                    table.file_bytes()
                ),
            ));
        }
        added.push((
            *level,
            Arc::new(FileMeta::new(rec.clone(), table, fs.clone())),
        ));
        next_file = next_file.max(number + 1);
    }
    let mut version = Version::default().apply(&VersionEdit::default(), &added);

    // Replay WALs >= log_number, oldest first.
    let mut entries = std::fs::read_dir(dir)
        .map_err(|e| Error::io("list", dir, e))?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect::<Vec<_>>();
    entries.sort();
    let mut wals: Vec<u64> = entries
        .iter()
        .filter_map(|n| n.strip_suffix(".log").and_then(|s| s.parse().ok()))
        .collect();
    wals.sort_unstable();
    let mem = Memtable::new(0);
    for &n in &wals {
        next_file = next_file.max(n + 1);
        if n < log_number {
            continue;
        }
        let path = wal_path(dir, n);
        let contents = read_wal(&path)?;
        for (off, payload) in &contents.records {
            let (seq, batch) = decode_wal_payload(payload).ok_or_else(|| {
                Error::corruption(&path, *off, "WAL record is not a valid write batch")
            })?;
            for (i, (kind, k, v)) in batch.iter().enumerate() {
                mem.insert(k, seq + i as u64, *kind, v);
            }
            last_seq = last_seq.max(seq + batch.len().saturating_sub(1) as u64);
        }
        if contents.torn_bytes > 0 || contents.preallocated_bytes > 0 {
            if contents.torn_bytes > 0 {
                tracing::warn!(
                    wal = %path.display(),
                    valid_bytes = contents.valid_len,
                    torn_bytes = contents.torn_bytes,
                    "cutting a torn WAL tail"
                );
            }
            let f = std::fs::OpenOptions::new()
                .write(true)
                .open(&path)
                .map_err(|e| Error::io("open WAL for truncation", &path, e))?;
            f.set_len(contents.valid_len)
                .and_then(|_| f.sync_all())
                .map_err(|e| Error::io("truncate torn WAL tail", &path, e))?;
        }
    }

    let mut edit = VersionEdit::default();
    if !mem.is_empty() {
        let number = next_file;
        next_file += 1;
        let info = write_table(dir, opts, fs, number, mem.iter().map(Ok))?;
        fs.sync_dir(dir)?;
        let table = Arc::new(Table::open(&sst_path(dir, number), number, cache.clone())?);
        let rec = record_of(&info);
        edit.added.push((0, rec.clone()));
        version = version.apply(
            &edit,
            &[(0, Arc::new(FileMeta::new(rec, table, fs.clone())))],
        );
    }

    // New WAL, new manifest holding the whole version, then CURRENT.
    let wal_number = next_file;
    let manifest_number = next_file + 1;
    next_file += 2;
    let wal = WalWriter::create_preallocated(fs, dir, wal_number)?;
    let mpath = dir.join(manifest_name(manifest_number));
    let mut manifest = WalWriter::create_at(fs, &mpath, manifest_number)?;
    let full = VersionEdit {
        log_number: Some(wal_number),
        next_file: Some(next_file),
        last_seq: Some(last_seq),
        deleted: Vec::new(),
        added: version
            .levels
            .iter()
            .enumerate()
            .flat_map(|(l, fs)| fs.iter().map(move |f| (l, f.rec.clone())))
            .collect(),
    };
    manifest.add_record(&full.encode());
    manifest.sync()?;
    fs.sync_dir(dir)?;
    fs.write_atomic(
        dir,
        CURRENT,
        format!("{}\n", manifest_name(manifest_number)).as_bytes(),
    )?;

    // Garbage: WALs replayed into the new table, old manifests, orphan tables,
    // temp files.
    let live: std::collections::HashSet<u64> = version
        .levels
        .iter()
        .flat_map(|l| l.iter().map(|f| f.rec.number))
        .collect();
    for name in &entries {
        let path = dir.join(name);
        let remove = if let Some(n) = name
            .strip_suffix(".log")
            .and_then(|s| s.parse::<u64>().ok())
        {
            n < wal_number
        } else if let Some(n) = name
            .strip_suffix(".sst")
            .and_then(|s| s.parse::<u64>().ok())
        {
            !live.contains(&n)
        } else {
            (name.starts_with("MANIFEST-") && Some(&path) != Some(&mpath)) || name.ends_with(".tmp")
        };
        if remove {
            fs.remove(&path)?;
        }
    }
    Ok(Recovered {
        version,
        manifest,
        wal,
        next_file,
        last_seq,
    })
}

fn record_of(info: &TableInfo) -> FileRecord {
    FileRecord {
        number: info.number,
        file_bytes: info.file_bytes,
        entries: info.entries,
        smallest: info.smallest.clone(),
        largest: info.largest.clone(),
    }
}

/// Writes one table from an ordered stream of internal entries.
fn write_table(
    dir: &Path,
    opts: &Options,
    fs: &Fs,
    number: u64,
    entries: impl Iterator<Item = Result<(Vec<u8>, Vec<u8>)>>,
) -> Result<TableInfo> {
    let mut b = TableBuilder::create(fs, dir, number, opts)?;
    for e in entries {
        let (k, v) = e?;
        b.add(&k, &v)?;
    }
    b.finish()
}

/// One compaction's inputs.
#[derive(Debug)]
struct Compaction {
    level: usize,
    inputs: Vec<Arc<FileMeta>>,
    next: Vec<Arc<FileMeta>>,
    version: Arc<Version>,
}

impl Compaction {
    /// `inputs` at `level` plus every file of `level + 1` they overlap.
    fn new(version: &Arc<Version>, level: usize, inputs: Vec<Arc<FileMeta>>) -> Compaction {
        let lo = inputs
            .iter()
            .map(|f| f.smallest_user())
            .min()
            .map(<[u8]>::to_vec);
        let hi = inputs
            .iter()
            .map(|f| f.largest_user())
            .max()
            .map(<[u8]>::to_vec);
        let next = version.overlapping(level + 1, lo.as_deref(), hi.as_deref());
        Compaction {
            level,
            inputs,
            next,
            version: version.clone(),
        }
    }

    /// True when no level below the output can hold `user_key`: a tombstone for
    /// it has nothing left to hide and may be dropped.
    fn is_base_level_for(&self, user_key: &[u8]) -> bool {
        self.version.levels[self.level + 2..]
            .iter()
            .flatten()
            .all(|f| !f.overlaps(Some(user_key), Some(user_key)))
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

    /// Group commit: queue this write; the first writer without a leader leads.
    ///
    /// Fast path: with no leader and nobody queued, the writer leads at once
    /// and commits its own request from the stack. Otherwise it queues an
    /// `Arc` and sleeps; when the leader finishes, the first writer still
    /// queued becomes the next leader and takes everything queued meanwhile,
    /// so under load one WAL write (and fsync) covers many writers.
    fn submit(&self, batch: WriteBatch, sync: bool, force_rotate: bool) -> Result<()> {
        let req = WriteRequest {
            batch,
            sync,
            force_rotate,
        };
        let mut q = self.writers.lock();
        if !q.leader_active && q.queue.is_empty() {
            q.leader_active = true;
            drop(q);
            let r = self.commit_group(&[&req]);
            // No follower's result was set: wake only writers queued meanwhile.
            self.finish_leading(false);
            return r;
        }
        let me = Arc::new(PendingWrite {
            req,
            result: Mutex::new(None),
        });
        q.queue.push(me.clone());
        loop {
            if let Some(r) = me.result.lock().take() {
                return r;
            }
            if !q.leader_active {
                break;
            }
            self.writer_cv.wait(&mut q);
        }
        q.leader_active = true;
        let spare = std::mem::take(&mut q.spare);
        let mut group = std::mem::replace(&mut q.queue, spare);
        drop(q);
        let reqs: Vec<&WriteRequest> = group.iter().map(|w| &w.req).collect();
        let r = self.commit_group(&reqs);
        drop(reqs);
        for w in &group {
            if !Arc::ptr_eq(w, &me) {
                *w.result.lock() = Some(match &r {
                    Ok(()) => Ok(()),
                    Err(e) => Err(dup_error(e)),
                });
            }
        }
        group.clear();
        let mut q = self.writers.lock();
        q.spare = group;
        drop(q);
        // Followers whose results were just set are asleep on the condvar and
        // must be woken even when nobody new is queued.
        self.finish_leading(true);
        r
    }

    /// Hands leadership on: wakes followers (whose results are set) and any
    /// queued writer, one of which becomes the next leader.
    fn finish_leading(&self, followers_done: bool) {
        let mut q = self.writers.lock();
        q.leader_active = false;
        if followers_done || !q.queue.is_empty() {
            self.writer_cv.notify_all();
        }
    }

    /// The leader's work for one group: make room, assign sequence numbers, one
    /// WAL write (+ fsync if any writer asked), memtable inserts, then publish
    /// the new visible sequence number.
    fn commit_group(&self, group: &[&WriteRequest]) -> Result<()> {
        let force = group.iter().any(|w| w.force_rotate);
        let sync = self.opts.sync_policy == SyncPolicy::Always || group.iter().any(|w| w.sync);
        let count: u64 = group.iter().map(|w| w.batch.len() as u64).sum();
        let mut st = self.state.lock();
        self.make_room(&mut st, force)?;
        let first_seq = st.last_seq + 1;
        st.last_seq += count;
        let mem = st.mem.clone();
        drop(st);
        if count == 0 {
            return Ok(());
        }
        {
            let mut wal = self.wal.lock();
            let mut seq = first_seq;
            let before = wal.len();
            for w in group.iter().filter(|w| !w.batch.is_empty()) {
                wal.add_record_with(|buf| w.batch.encode_wal_payload(seq, buf));
                seq += w.batch.len() as u64;
            }
            let written = wal
                .flush()
                .and_then(|_| if sync { wal.sync() } else { Ok(()) });
            if let Err(e) = written {
                // The WAL may now end in a partial record. Refuse further writes
                // so nothing is appended after it; reopening cuts the torn tail.
                self.set_bg_error("WAL write", &e);
                return Err(e);
            }
            self.stats
                .wal_bytes
                .fetch_add(wal.len() - before, Ordering::Relaxed);
        }
        let mut seq = first_seq;
        let mut user_bytes = 0u64;
        for w in group {
            for (kind, k, v) in w.batch.iter() {
                mem.insert(k, seq, kind, v);
                seq += 1;
            }
            user_bytes += w.batch.user_bytes() as u64;
        }
        self.stats
            .user_bytes
            .fetch_add(user_bytes, Ordering::Relaxed);
        self.stats.writes.fetch_add(count, Ordering::Relaxed);
        self.visible_seq.store(seq - 1, Ordering::Release);
        Ok(())
    }

    /// Ensures the memtable has room, stalling writers while L0 or the
    /// immutable-memtable queue is over its limit.
    fn make_room(&self, st: &mut parking_lot::MutexGuard<'_, State>, force: bool) -> Result<()> {
        let mut slowed = false;
        let mut force = force;
        loop {
            if let Some(e) = &st.bg_error {
                return Err(Error::Background {
                    job: "background",
                    reason: e.clone(),
                });
            }
            if self.shutdown.load(Ordering::Acquire) {
                return Err(Error::Closed);
            }
            let l0 = st.version.levels[0].len();
            let need_rotate = force || st.mem.approx_bytes() >= self.opts.write_buffer_bytes;
            if l0 >= self.opts.l0_slowdown_trigger && !slowed && !force {
                // Spread the delay over many writes rather than stopping
                // later: gives compaction a share of the CPU.
                let t = Instant::now();
                parking_lot::MutexGuard::unlocked(st, || {
                    std::thread::sleep(Duration::from_millis(1))
                });
                self.stats.add_stall(t.elapsed());
                slowed = true;
                continue;
            }
            if need_rotate
                && (st.imms.len() >= self.opts.max_immutable_memtables
                    || l0 >= self.opts.l0_stop_trigger)
            {
                let t = Instant::now();
                self.bg_cv.notify_all();
                self.bg_cv.wait_for(st, Duration::from_millis(100));
                self.stats.add_stall(t.elapsed());
                continue;
            }
            if need_rotate {
                if !st.mem.is_empty() {
                    self.rotate(st)?;
                }
                force = false;
                continue;
            }
            return Ok(());
        }
    }

    /// Switches to a new WAL and memtable; the old memtable waits for flush.
    fn rotate(&self, st: &mut State) -> Result<()> {
        let number = st.next_file;
        st.next_file += 1;
        let new_wal = WalWriter::create_preallocated(&self.fs, &self.dir, number)?;
        {
            let mut wal = self.wal.lock();
            wal.sync()?;
            *wal = new_wal;
        }
        let old = std::mem::replace(&mut st.mem, Arc::new(Memtable::new(number)));
        st.imms.push_back(old);
        self.install_super_version(st);
        self.bg_cv.notify_all();
        Ok(())
    }

    /// Appends `edit` to the manifest (fsynced) and installs the new version.
    fn log_and_apply(
        &self,
        st: &mut State,
        mut edit: VersionEdit,
        added: &[(usize, Arc<FileMeta>)],
    ) -> Result<()> {
        edit.next_file = Some(st.next_file);
        edit.last_seq = Some(st.last_seq);
        st.manifest.add_record(&edit.encode());
        st.manifest.sync()?;
        st.version = Arc::new(st.version.apply(&edit, added));
        Ok(())
    }

    fn open_output(&self, info: &TableInfo) -> Result<Arc<FileMeta>> {
        let table = Table::open(
            &sst_path(&self.dir, info.number),
            info.number,
            self.cache.clone(),
        )?;
        Ok(Arc::new(FileMeta::new(
            record_of(info),
            Arc::new(table),
            self.fs.clone(),
        )))
    }

    fn flush_loop(&self) {
        loop {
            let (imm, number) = {
                let mut st = self.state.lock();
                loop {
                    if self.shutdown.load(Ordering::Acquire) {
                        return;
                    }
                    if st.bg_error.is_none() && !st.imms.is_empty() {
                        break;
                    }
                    self.bg_cv.wait(&mut st);
                }
                let number = st.next_file;
                st.next_file += 1;
                (st.imms[0].clone(), number)
            };
            if let Err(e) = self.flush_one(&imm, number) {
                self.set_bg_error("flush", &e);
            }
        }
    }

    /// Memtable → L0 table → manifest edit → drop the memtable's WAL.
    fn flush_one(&self, imm: &Arc<Memtable>, number: u64) -> Result<()> {
        let t = Instant::now();
        let info = write_table(&self.dir, &self.opts, &self.fs, number, imm.iter().map(Ok))?;
        self.fs.sync_dir(&self.dir)?;
        let meta = self.open_output(&info)?;
        let mut st = self.state.lock();
        // Writes after this memtable live in the next WAL.
        let log_number = st
            .imms
            .get(1)
            .map(|m| m.wal_number())
            .unwrap_or_else(|| st.mem.wal_number());
        let edit = VersionEdit {
            log_number: Some(log_number),
            added: vec![(0, meta.rec.clone())],
            ..Default::default()
        };
        self.log_and_apply(&mut st, edit, &[(0, meta)])?;
        st.imms.pop_front();
        // Counters move with the version, under the same lock, so stats never
        // show a table without the flush that wrote it.
        self.stats
            .flush_bytes
            .fetch_add(info.file_bytes, Ordering::Relaxed);
        self.stats.flushes.fetch_add(1, Ordering::Relaxed);
        self.install_super_version(&st);
        self.bg_cv.notify_all();
        drop(st);
        self.fs.remove(&wal_path(&self.dir, imm.wal_number()))?;
        tracing::debug!(
            table = number,
            bytes = info.file_bytes,
            ms = t.elapsed().as_millis() as u64,
            "flushed memtable to L0"
        );
        Ok(())
    }

    /// Chooses the next compaction: L0 by file count, else the level whose size
    /// is furthest over its target, one file at a time round-robin.
    fn pick_compaction(&self, st: &mut State) -> Option<Compaction> {
        let v = &st.version;
        if v.levels[0].len() >= self.opts.l0_compaction_trigger {
            return Some(Compaction::new(v, 0, v.levels[0].clone()));
        }
        let (mut best, mut best_score) = (0, 1.0f64);
        for level in 1..NUM_LEVELS - 1 {
            let score = v.level_bytes(level) as f64 / self.level_target_bytes(level) as f64;
            if score >= best_score {
                best = level;
                best_score = score;
            }
        }
        if best == 0 {
            return None;
        }
        let files = &v.levels[best];
        let ptr = &st.compact_pointer[best];
        let f = files
            .iter()
            .find(|f| ptr.is_empty() || key::compare(&f.rec.smallest, ptr).is_gt())
            .or_else(|| files.first())?
            .clone();
        st.compact_pointer[best] = f.rec.largest.clone();
        Some(Compaction::new(v, best, vec![f]))
    }

    /// Whether some level is over its trigger (no side effects).
    fn needs_compaction(&self, v: &Version) -> bool {
        v.levels[0].len() >= self.opts.l0_compaction_trigger
            || (1..NUM_LEVELS - 1).any(|l| v.level_bytes(l) >= self.level_target_bytes(l))
    }

    fn compaction_loop(&self) {
        loop {
            {
                let mut st = self.state.lock();
                if self.shutdown.load(Ordering::Acquire) {
                    return;
                }
                if st.bg_error.is_some() || !self.needs_compaction(&st.version) {
                    self.bg_cv.wait_for(&mut st, Duration::from_millis(200));
                    continue;
                }
            }
            // Taken only while compacting, so `compact_range` can run between jobs.
            let _guard = self.compaction.lock();
            let c = {
                let mut st = self.state.lock();
                if self.shutdown.load(Ordering::Acquire) {
                    return;
                }
                if st.bg_error.is_some() {
                    continue;
                }
                self.pick_compaction(&mut st)
            };
            let Some(c) = c else { continue };
            if let Err(e) = self.run_compaction(c)
                && !matches!(e, Error::Closed)
            {
                self.set_bg_error("compaction", &e);
            }
        }
    }

    /// Merges the inputs into new tables at `level + 1` and installs the result.
    fn run_compaction(&self, c: Compaction) -> Result<()> {
        let t = Instant::now();
        let out_level = c.level + 1;
        let mut edit = VersionEdit::default();
        for f in &c.inputs {
            edit.deleted.push((c.level, f.rec.number));
        }
        for f in &c.next {
            edit.deleted.push((out_level, f.rec.number));
        }
        // Trivial move: one file with nothing to merge against moves down by a
        // manifest edit alone (no rewrite, no write amplification).
        if c.inputs.len() == 1 && c.next.is_empty() {
            let f = c.inputs[0].clone();
            edit.added.push((out_level, f.rec.clone()));
            let mut st = self.state.lock();
            self.log_and_apply(&mut st, edit, &[(out_level, f)])?;
            self.stats.trivial_moves.fetch_add(1, Ordering::Relaxed);
            self.install_super_version(&st);
            self.bg_cv.notify_all();
            return Ok(());
        }
        // The oldest sequence any reader may still ask for.
        let smallest_snapshot = {
            let s = self.snapshots.lock();
            s.keys()
                .next()
                .copied()
                .unwrap_or_else(|| self.visible_seq.load(Ordering::Acquire))
        };
        let mut sources: Vec<Box<dyn crate::iter::Source>> = Vec::new();
        let read_bytes: u64 = c
            .inputs
            .iter()
            .chain(&c.next)
            .map(|f| f.rec.file_bytes)
            .sum();
        for f in c.inputs.iter().chain(&c.next) {
            sources.push(Box::new(crate::iter::TableSource::new(
                f.table.clone(),
                None,
                false,
            )?));
        }
        let mut merge = Merge::new(sources, false);
        let mut outputs: Vec<TableInfo> = Vec::new();
        let mut builder: Option<TableBuilder> = None;
        let mut cur_user: Option<Vec<u8>> = None;
        let mut last_seq_for_key = u64::MAX;
        let mut last_added_user: Vec<u8> = Vec::new();
        let mut n = 0u64;
        let result: Result<()> = (|| {
            while let Some((ik, v)) = merge.next_entry()? {
                n += 1;
                if n.is_multiple_of(4096) && self.shutdown.load(Ordering::Acquire) {
                    return Err(Error::Closed);
                }
                let (uk, seq, kind) = key::parse(&ik).ok_or_else(|| {
                    Error::corruption(&self.dir, 0, "compaction input has a malformed key")
                })?;
                if cur_user.as_deref() != Some(uk) {
                    cur_user = Some(uk.to_vec());
                    last_seq_for_key = u64::MAX;
                }
                // LevelDB's rule: an entry is dropped when a newer version of the
                // same key is already visible to every reader, or when it is a
                // tombstone visible to every reader with nothing below to hide.
                let drop_it = last_seq_for_key <= smallest_snapshot
                    || (kind == Kind::Delete
                        && seq <= smallest_snapshot
                        && c.is_base_level_for(uk));
                last_seq_for_key = seq;
                if drop_it {
                    continue;
                }
                // Cut files only between user keys, so a key's versions never
                // straddle two files of one level.
                if let Some(b) = &builder
                    && b.estimated_len() >= self.opts.target_file_bytes
                    && uk != last_added_user.as_slice()
                    && let Some(b) = builder.take()
                {
                    outputs.push(b.finish()?);
                }
                if builder.is_none() {
                    let number = {
                        let mut st = self.state.lock();
                        st.next_file += 1;
                        st.next_file - 1
                    };
                    builder = Some(TableBuilder::create(
                        &self.fs, &self.dir, number, &self.opts,
                    )?);
                }
                if let Some(b) = &mut builder {
                    b.add(&ik, &v)?;
                }
                last_added_user.clear();
                last_added_user.extend_from_slice(uk);
            }
            if let Some(b) = builder.take()
                && b.entries() > 0
            {
                outputs.push(b.finish()?);
            }
            Ok(())
        })();
        if let Err(e) = result {
            // Outputs never reached the manifest: remove them now (the next open
            // would remove them as orphans anyway).
            for o in &outputs {
                let _ = self.fs.remove(&sst_path(&self.dir, o.number));
            }
            if let Some(b) = builder {
                let _ = self.fs.remove(&sst_path(&self.dir, b.number()));
            }
            return Err(e);
        }
        self.fs.sync_dir(&self.dir)?;
        let mut added = Vec::new();
        let mut written = 0u64;
        for o in &outputs {
            written += o.file_bytes;
            edit.added.push((out_level, record_of(o)));
            added.push((out_level, self.open_output(o)?));
        }
        let mut st = self.state.lock();
        self.log_and_apply(&mut st, edit, &added)?;
        for f in c.inputs.iter().chain(&c.next) {
            f.mark_obsolete();
        }
        self.stats.compactions.fetch_add(1, Ordering::Relaxed);
        self.stats
            .compaction_read_bytes
            .fetch_add(read_bytes, Ordering::Relaxed);
        self.stats
            .compaction_write_bytes
            .fetch_add(written, Ordering::Relaxed);
        self.install_super_version(&st);
        self.bg_cv.notify_all();
        drop(st);
        tracing::debug!(
            level = c.level,
            inputs = c.inputs.len() + c.next.len(),
            outputs = outputs.len(),
            read_bytes,
            written,
            ms = t.elapsed().as_millis() as u64,
            "compaction"
        );
        Ok(())
    }

    fn sync_loop(&self) {
        let SyncPolicy::Interval(every) = self.opts.sync_policy else {
            return;
        };
        loop {
            {
                let mut st = self.state.lock();
                if self.shutdown.load(Ordering::Acquire) {
                    return;
                }
                self.bg_cv.wait_for(&mut st, every);
                if self.shutdown.load(Ordering::Acquire) {
                    return;
                }
            }
            if let Err(e) = self.wal.lock().sync() {
                self.set_bg_error("WAL sync", &e);
            }
        }
    }
}
