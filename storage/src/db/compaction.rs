//! The background work: flushing immutable memtables to L0 tables, and
//! leveled compaction (picking inputs, merging, installing the result).

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crate::io::Fs;
use crate::iter::Merge;
use crate::key::{self, Kind};
use crate::memtable::Memtable;
use crate::options::Options;
use crate::sstable::{Table, TableBuilder, TableInfo, sst_path};
use crate::version::{FileMeta, FileRecord, NUM_LEVELS, Version, VersionEdit};
use crate::wal::wal_path;
use crate::{Error, Result};

use super::*;

pub(super) fn record_of(info: &TableInfo) -> FileRecord {
    FileRecord {
        number: info.number,
        file_bytes: info.file_bytes,
        entries: info.entries,
        smallest: info.smallest.clone(),
        largest: info.largest.clone(),
    }
}

/// Writes one table from an ordered stream of internal entries.
pub(super) fn write_table(
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
pub(super) struct Compaction {
    level: usize,
    inputs: Vec<Arc<FileMeta>>,
    next: Vec<Arc<FileMeta>>,
    version: Arc<Version>,
}

impl Compaction {
    /// `inputs` at `level` plus every file of `level + 1` they overlap.
    pub(super) fn new(
        version: &Arc<Version>,
        level: usize,
        inputs: Vec<Arc<FileMeta>>,
    ) -> Compaction {
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
    pub(super) fn is_base_level_for(&self, user_key: &[u8]) -> bool {
        self.version.levels[self.level + 2..]
            .iter()
            .flatten()
            .all(|f| !f.overlaps(Some(user_key), Some(user_key)))
    }
}

impl Inner {
    /// Appends `edit` to the manifest (fsynced) and installs the new version.
    pub(super) fn log_and_apply(
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

    pub(super) fn open_output(&self, info: &TableInfo) -> Result<Arc<FileMeta>> {
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

    pub(super) fn flush_loop(&self) {
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
    pub(super) fn flush_one(&self, imm: &Arc<Memtable>, number: u64) -> Result<()> {
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
    pub(super) fn pick_compaction(&self, st: &mut State) -> Option<Compaction> {
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
    pub(super) fn needs_compaction(&self, v: &Version) -> bool {
        v.levels[0].len() >= self.opts.l0_compaction_trigger
            || (1..NUM_LEVELS - 1).any(|l| v.level_bytes(l) >= self.level_target_bytes(l))
    }

    pub(super) fn compaction_loop(&self) {
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
    pub(super) fn run_compaction(&self, c: Compaction) -> Result<()> {
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
}
