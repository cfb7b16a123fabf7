//! Iterators: a merge across the memtable, immutable memtables and every table
//! that may hold a key in range, collapsed to the newest visible version of each
//! user key.
//!
//! Each source walks its own structure in one direction (forward or reverse)
//! from a seek target. [`Merge`] repeatedly takes the smallest (forward) or
//! largest (reverse) internal key among the sources' heads: with a handful of
//! sources (one memtable, a few immutables, the L0 files, one cursor per deeper
//! level) a linear scan of the heads beats a heap's bookkeeping.
//!
//! [`DbIter`] turns internal entries into user entries. Forward, a user key's
//! versions arrive newest first: the first one at or below the snapshot wins.
//! Reverse, they arrive oldest first: the last visible one wins, so the iterator
//! holds one pending entry until the user key changes.

use std::collections::VecDeque;
use std::ops::Bound;
use std::sync::Arc;

use crate::key::{self, Kind};
use crate::memtable::Memtable;
use crate::sstable::Table;
use crate::version::{FileMeta, NUM_LEVELS, Version};
use crate::{Error, Result};

type Entry = (Vec<u8>, Vec<u8>);

/// One ordered stream of internal entries.
pub(crate) trait Source: Send {
    fn peek(&self) -> Option<&Entry>;
    fn advance(&mut self) -> Result<()>;
}

/// Reads a memtable in chunks (see [`Memtable::chunk`]).
pub(crate) struct MemSource {
    mem: Arc<Memtable>,
    buf: VecDeque<Entry>,
    reverse: bool,
    exhausted: bool,
}

const MEM_CHUNK: usize = 64;

impl MemSource {
    pub fn new(mem: Arc<Memtable>, target: Option<&[u8]>, reverse: bool) -> Self {
        let bound = match target {
            Some(k) => Bound::Included(k),
            None => Bound::Unbounded,
        };
        let chunk = mem.chunk(bound, reverse, MEM_CHUNK);
        Self {
            exhausted: chunk.len() < MEM_CHUNK,
            buf: chunk.into(),
            mem,
            reverse,
        }
    }
}

impl Source for MemSource {
    fn peek(&self) -> Option<&Entry> {
        self.buf.front()
    }

    fn advance(&mut self) -> Result<()> {
        let Some((last, _)) = self.buf.pop_front() else {
            return Ok(());
        };
        if self.buf.is_empty() && !self.exhausted {
            let chunk = self
                .mem
                .chunk(Bound::Excluded(&last), self.reverse, MEM_CHUNK);
            self.exhausted = chunk.len() < MEM_CHUNK;
            self.buf = chunk.into();
        }
        Ok(())
    }
}

/// Walks one table block by block.
pub(crate) struct TableSource {
    table: Arc<Table>,
    reverse: bool,
    block: usize,
    entries: Vec<Entry>,
    pos: usize,
}

impl TableSource {
    /// Positioned at the first entry >= `target` (forward) or the last entry
    /// <= `target` (reverse); at the first / last entry when `target` is None.
    pub fn new(table: Arc<Table>, target: Option<&[u8]>, reverse: bool) -> Result<Self> {
        let n = table.num_blocks();
        let block = match (target, reverse) {
            (None, false) => 0,
            (None, true) => n.saturating_sub(1),
            (Some(t), false) => table.block_for(t),
            (Some(t), true) => table.block_for(t).min(n.saturating_sub(1)),
        };
        let mut s = Self {
            table,
            reverse,
            block,
            entries: Vec::new(),
            pos: 0,
        };
        if block >= n {
            return Ok(s); // forward past the end: empty
        }
        s.load(block)?;
        match (target, reverse) {
            (None, false) => s.pos = 0,
            (None, true) => s.pos = s.entries.len().saturating_sub(1),
            (Some(t), false) => {
                s.pos = s
                    .entries
                    .partition_point(|(k, _)| key::compare(k, t) == std::cmp::Ordering::Less);
                if s.pos == s.entries.len() {
                    s.next_block()?;
                }
            }
            (Some(t), true) => {
                let after = s
                    .entries
                    .partition_point(|(k, _)| key::compare(k, t) != std::cmp::Ordering::Greater);
                if after == 0 {
                    s.prev_block()?;
                } else {
                    s.pos = after - 1;
                }
            }
        }
        Ok(s)
    }

    fn load(&mut self, block: usize) -> Result<()> {
        self.block = block;
        self.entries = self.table.block_entries(block)?;
        if let Some((k, _)) = self.entries.iter().find(|(k, _)| key::parse(k).is_none()) {
            return Err(Error::corruption(
                self.table.path(),
                0,
                format!("malformed internal key {k:?} in block {block}"),
            ));
        }
        Ok(())
    }

    fn next_block(&mut self) -> Result<()> {
        loop {
            if self.block + 1 >= self.table.num_blocks() {
                self.entries.clear();
                self.pos = 0;
                return Ok(());
            }
            self.load(self.block + 1)?;
            self.pos = 0;
            if !self.entries.is_empty() {
                return Ok(());
            }
        }
    }

    fn prev_block(&mut self) -> Result<()> {
        loop {
            if self.block == 0 {
                self.entries.clear();
                self.pos = 0;
                return Ok(());
            }
            self.load(self.block - 1)?;
            if !self.entries.is_empty() {
                self.pos = self.entries.len() - 1;
                return Ok(());
            }
        }
    }
}

impl Source for TableSource {
    fn peek(&self) -> Option<&Entry> {
        self.entries.get(self.pos)
    }

    fn advance(&mut self) -> Result<()> {
        if self.entries.is_empty() {
            return Ok(());
        }
        if self.reverse {
            if self.pos == 0 {
                self.prev_block()
            } else {
                self.pos -= 1;
                Ok(())
            }
        } else {
            self.pos += 1;
            if self.pos >= self.entries.len() {
                self.next_block()
            } else {
                Ok(())
            }
        }
    }
}

/// Concatenates the non-overlapping tables of one level (L1+).
pub(crate) struct LevelSource {
    files: Vec<Arc<FileMeta>>,
    idx: usize,
    cur: Option<TableSource>,
    reverse: bool,
}

impl LevelSource {
    pub fn new(files: Vec<Arc<FileMeta>>, target: Option<&[u8]>, reverse: bool) -> Result<Self> {
        let idx = match (target, reverse) {
            (None, false) => 0,
            (None, true) => files.len().wrapping_sub(1),
            (Some(t), false) => files
                .partition_point(|f| key::compare(&f.rec.largest, t) == std::cmp::Ordering::Less),
            // Last file whose smallest key is <= target.
            (Some(t), true) => files
                .partition_point(|f| {
                    key::compare(&f.rec.smallest, t) != std::cmp::Ordering::Greater
                })
                .wrapping_sub(1),
        };
        let mut s = Self {
            files,
            idx,
            cur: None,
            reverse,
        };
        if let Some(f) = s.files.get(idx) {
            s.cur = Some(TableSource::new(f.table.clone(), target, reverse)?);
            s.skip_exhausted()?;
        }
        Ok(s)
    }

    fn skip_exhausted(&mut self) -> Result<()> {
        while self.cur.as_ref().is_some_and(|c| c.peek().is_none()) {
            self.idx = if self.reverse {
                self.idx.wrapping_sub(1)
            } else {
                self.idx + 1
            };
            self.cur = match self.files.get(self.idx) {
                Some(f) => Some(TableSource::new(f.table.clone(), None, self.reverse)?),
                None => None,
            };
        }
        Ok(())
    }
}

impl Source for LevelSource {
    fn peek(&self) -> Option<&Entry> {
        self.cur.as_ref().and_then(|c| c.peek())
    }

    fn advance(&mut self) -> Result<()> {
        if let Some(c) = &mut self.cur {
            c.advance()?;
        }
        self.skip_exhausted()
    }
}

/// Merges sources into one ordered stream.
pub(crate) struct Merge {
    sources: Vec<Box<dyn Source>>,
    reverse: bool,
}

impl Merge {
    pub fn new(sources: Vec<Box<dyn Source>>, reverse: bool) -> Self {
        Self { sources, reverse }
    }

    /// Sources over `mem`, `imms` and the tables of `version` that can hold keys
    /// in [lo, hi] (user keys; None = unbounded), positioned at `target`.
    pub fn over(
        mems: &[Arc<Memtable>],
        version: &Version,
        lo: Option<&[u8]>,
        hi: Option<&[u8]>,
        target: Option<&[u8]>,
        reverse: bool,
    ) -> Result<Self> {
        let mut sources: Vec<Box<dyn Source>> = Vec::new();
        for m in mems {
            sources.push(Box::new(MemSource::new(m.clone(), target, reverse)));
        }
        for f in version.levels[0].iter().filter(|f| f.overlaps(lo, hi)) {
            sources.push(Box::new(TableSource::new(
                f.table.clone(),
                target,
                reverse,
            )?));
        }
        for level in 1..NUM_LEVELS {
            let files = version.overlapping(level, lo, hi);
            if !files.is_empty() {
                sources.push(Box::new(LevelSource::new(files, target, reverse)?));
            }
        }
        Ok(Self::new(sources, reverse))
    }

    pub fn next_entry(&mut self) -> Result<Option<Entry>> {
        let mut best: Option<usize> = None;
        for (i, s) in self.sources.iter().enumerate() {
            let Some((k, _)) = s.peek() else { continue };
            best = match best {
                None => Some(i),
                Some(b) => {
                    let bk = &self.sources[b].peek().map(|e| &e.0);
                    let ord = bk.map(|bk| key::compare(k, bk));
                    let better = match ord {
                        Some(std::cmp::Ordering::Less) => !self.reverse,
                        Some(std::cmp::Ordering::Greater) => self.reverse,
                        _ => false,
                    };
                    if better { Some(i) } else { Some(b) }
                }
            };
        }
        let Some(i) = best else { return Ok(None) };
        let entry = self.sources[i].peek().cloned();
        self.sources[i].advance()?;
        Ok(entry)
    }
}

/// Anything an iterator must keep alive (the version's files, a snapshot).
pub(crate) type Pin = Box<dyn std::any::Any + Send + Sync>;

/// An iterator over user keys in a range, at one snapshot, in one direction.
pub struct DbIter {
    merge: Merge,
    seq: u64,
    lower: Bound<Vec<u8>>,
    upper: Bound<Vec<u8>>,
    reverse: bool,
    last_user: Option<Vec<u8>>,
    pending: Option<(Vec<u8>, Kind, Vec<u8>)>,
    done: bool,
    _pins: Vec<Pin>,
}

impl std::fmt::Debug for DbIter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DbIter")
            .field("seq", &self.seq)
            .field("lower", &self.lower)
            .field("upper", &self.upper)
            .field("reverse", &self.reverse)
            .finish()
    }
}

impl DbIter {
    pub(crate) fn new(
        mems: &[Arc<Memtable>],
        version: &Version,
        seq: u64,
        lower: Bound<Vec<u8>>,
        upper: Bound<Vec<u8>>,
        reverse: bool,
        pins: Vec<Pin>,
    ) -> Result<Self> {
        let as_opt = |b: &Bound<Vec<u8>>| match b {
            Bound::Included(k) | Bound::Excluded(k) => Some(k.clone()),
            Bound::Unbounded => None,
        };
        let (lo, hi) = (as_opt(&lower), as_opt(&upper));
        // Forward: the first version of the lower key. Reverse: the last
        // version of the upper key (trailer 0 sorts after all its versions).
        let target = if reverse {
            hi.as_ref().map(|k| key::make_ikey(k, 0, Kind::Delete))
        } else {
            lo.as_ref()
                .map(|k| key::make_ikey(k, key::MAX_SEQ, Kind::Put))
        };
        let merge = Merge::over(
            mems,
            version,
            lo.as_deref(),
            hi.as_deref(),
            target.as_deref(),
            reverse,
        )?;
        Ok(Self {
            merge,
            seq,
            lower,
            upper,
            reverse,
            last_user: None,
            pending: None,
            done: false,
            _pins: pins,
        })
    }

    fn below_lower(&self, uk: &[u8]) -> bool {
        match &self.lower {
            Bound::Included(k) => uk < k.as_slice(),
            Bound::Excluded(k) => uk <= k.as_slice(),
            Bound::Unbounded => false,
        }
    }

    fn above_upper(&self, uk: &[u8]) -> bool {
        match &self.upper {
            Bound::Included(k) => uk > k.as_slice(),
            Bound::Excluded(k) => uk >= k.as_slice(),
            Bound::Unbounded => false,
        }
    }

    fn next_forward(&mut self) -> Result<Option<(Vec<u8>, Vec<u8>)>> {
        while let Some((ik, v)) = self.merge.next_entry()? {
            let Some((uk, seq, kind)) = key::parse(&ik) else {
                continue;
            };
            if seq > self.seq || self.last_user.as_deref() == Some(uk) {
                continue;
            }
            self.last_user = Some(uk.to_vec());
            if self.below_lower(uk) {
                continue;
            }
            if self.above_upper(uk) {
                return Ok(None);
            }
            if kind == Kind::Put {
                return Ok(Some((uk.to_vec(), v)));
            }
        }
        Ok(None)
    }

    fn next_reverse(&mut self) -> Result<Option<(Vec<u8>, Vec<u8>)>> {
        loop {
            let next = self.merge.next_entry()?;
            let parsed = next.as_ref().and_then(|(ik, _)| key::parse(ik));
            let stop = match &parsed {
                None => true,
                Some((uk, _, _)) => self.below_lower(uk),
            };
            if stop {
                // End of range: emit what is pending, then finish.
                self.done = true;
                return Ok(match self.pending.take() {
                    Some((uk, Kind::Put, v)) => Some((uk, v)),
                    _ => None,
                });
            }
            let (Some((uk, seq, kind)), Some((_, v))) = (parsed, next.as_ref()) else {
                continue;
            };
            if seq > self.seq || self.above_upper(uk) {
                continue;
            }
            match &mut self.pending {
                // An older-to-newer walk: a later visible version replaces it.
                Some((puk, pkind, pv)) if puk.as_slice() == uk => {
                    *pkind = kind;
                    *pv = v.clone();
                }
                _ => {
                    let prev = self.pending.replace((uk.to_vec(), kind, v.clone()));
                    if let Some((puk, Kind::Put, pv)) = prev {
                        return Ok(Some((puk, pv)));
                    }
                }
            }
        }
    }
}

impl Iterator for DbIter {
    type Item = Result<(Vec<u8>, Vec<u8>)>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        let r = if self.reverse {
            self.next_reverse()
        } else {
            self.next_forward()
        };
        match r {
            Ok(Some(kv)) => Some(Ok(kv)),
            Ok(None) => {
                self.done = true;
                None
            }
            Err(e) => {
                self.done = true;
                Some(Err(e))
            }
        }
    }
}
