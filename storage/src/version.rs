//! Versions: which tables make up the database, level by level, and the edits
//! that move from one version to the next.
//!
//! A [`Version`] is immutable. Readers take an `Arc` of the current one and keep
//! reading its files while flushes and compactions install newer versions: that
//! is why readers never wait for compaction. A table's file is deleted only when
//! it has left the current version *and* the last `Arc` to its [`FileMeta`] is
//! dropped (no reader, iterator or compaction still uses it).
//!
//! ```text
//! version edit = field*
//! field        = 1 varint log_number | 2 varint next_file | 3 varint last_seq
//!              | 4 varint level varint number                    (table removed)
//!              | 5 varint level varint number varint bytes varint entries
//!                  bytes smallest bytes largest                   (table added)
//! ```
//! The manifest file (`MANIFEST-NNNNNN`) is a sequence of edits in WAL framing;
//! `CURRENT` names the live manifest.

use std::cmp::Ordering;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering as AtomicOrdering};

use crate::coding::{get_bytes, get_varint, put_bytes, put_varint};
use crate::io::Fs;
use crate::key;
use crate::sstable::Table;

pub const NUM_LEVELS: usize = 7;

/// A table as the manifest records it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileRecord {
    pub number: u64,
    pub file_bytes: u64,
    pub entries: u64,
    pub smallest: Vec<u8>,
    pub largest: Vec<u8>,
}

/// A live table: its record plus the open reader.
#[derive(Debug)]
pub struct FileMeta {
    pub rec: FileRecord,
    pub table: Arc<Table>,
    obsolete: AtomicBool,
    fs: Fs,
    path: PathBuf,
}

impl FileMeta {
    pub fn new(rec: FileRecord, table: Arc<Table>, fs: Fs) -> Self {
        let path = table.path().to_path_buf();
        Self {
            rec,
            table,
            obsolete: AtomicBool::new(false),
            fs,
            path,
        }
    }

    /// Marks the file for deletion once the last reference goes.
    pub fn mark_obsolete(&self) {
        self.obsolete.store(true, AtomicOrdering::Release);
    }

    pub fn smallest_user(&self) -> &[u8] {
        key::user_key(&self.rec.smallest)
    }

    pub fn largest_user(&self) -> &[u8] {
        key::user_key(&self.rec.largest)
    }

    /// Whether the file's user-key range intersects [lo, hi] (None = unbounded).
    pub fn overlaps(&self, lo: Option<&[u8]>, hi: Option<&[u8]>) -> bool {
        let below = hi.is_some_and(|hi| self.smallest_user() > hi);
        let above = lo.is_some_and(|lo| self.largest_user() < lo);
        !(below || above)
    }
}

impl Drop for FileMeta {
    fn drop(&mut self) {
        if self.obsolete.load(AtomicOrdering::Acquire) {
            // Nothing can read the file any more. A failed delete leaves an
            // orphan that the next open removes.
            if let Err(e) = self.fs.remove(&self.path) {
                tracing::warn!(error = %e, "deleting obsolete table");
            }
        }
    }
}

/// The set of live tables. L0 is newest first and may overlap; L1+ are sorted
/// by smallest key and do not overlap within a level.
#[derive(Clone, Debug, Default)]
pub struct Version {
    pub levels: [Vec<Arc<FileMeta>>; NUM_LEVELS],
}

impl Version {
    pub fn level_bytes(&self, level: usize) -> u64 {
        self.levels[level].iter().map(|f| f.rec.file_bytes).sum()
    }

    pub fn total_bytes(&self) -> u64 {
        (0..NUM_LEVELS).map(|l| self.level_bytes(l)).sum()
    }

    /// Files of `level` whose user-key range meets [lo, hi].
    pub fn overlapping(
        &self,
        level: usize,
        lo: Option<&[u8]>,
        hi: Option<&[u8]>,
    ) -> Vec<Arc<FileMeta>> {
        self.levels[level]
            .iter()
            .filter(|f| f.overlaps(lo, hi))
            .cloned()
            .collect()
    }

    /// Applies an edit; `added` holds the opened files the edit adds.
    pub fn apply(&self, edit: &VersionEdit, added: &[(usize, Arc<FileMeta>)]) -> Version {
        let mut v = self.clone();
        for (level, number) in &edit.deleted {
            v.levels[*level].retain(|f| f.rec.number != *number);
        }
        for (level, f) in added {
            v.levels[*level].push(f.clone());
        }
        v.levels[0].sort_by_key(|f| std::cmp::Reverse(f.rec.number));
        for level in v.levels.iter_mut().skip(1) {
            level.sort_by(|a, b| key::compare(&a.rec.smallest, &b.rec.smallest));
        }
        v
    }

    /// Checks the level invariants (used by tests and `verify`).
    pub fn check_invariants(&self) -> Result<(), String> {
        for (l, files) in self.levels.iter().enumerate().skip(1) {
            for w in files.windows(2) {
                if key::compare(&w[0].rec.largest, &w[1].rec.smallest) != Ordering::Less
                    || w[0].largest_user() >= w[1].smallest_user()
                {
                    return Err(format!(
                        "L{l} files {} and {} overlap",
                        w[0].rec.number, w[1].rec.number
                    ));
                }
            }
        }
        Ok(())
    }
}

/// A change to the version set, as logged in the manifest.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct VersionEdit {
    pub log_number: Option<u64>,
    pub next_file: Option<u64>,
    pub last_seq: Option<u64>,
    pub deleted: Vec<(usize, u64)>,
    pub added: Vec<(usize, FileRecord)>,
}

impl VersionEdit {
    pub fn encode(&self) -> Vec<u8> {
        let mut b = Vec::new();
        let opt = |tag: u64, v: Option<u64>, b: &mut Vec<u8>| {
            if let Some(v) = v {
                put_varint(b, tag);
                put_varint(b, v);
            }
        };
        opt(1, self.log_number, &mut b);
        opt(2, self.next_file, &mut b);
        opt(3, self.last_seq, &mut b);
        for (level, number) in &self.deleted {
            put_varint(&mut b, 4);
            put_varint(&mut b, *level as u64);
            put_varint(&mut b, *number);
        }
        for (level, f) in &self.added {
            put_varint(&mut b, 5);
            put_varint(&mut b, *level as u64);
            put_varint(&mut b, f.number);
            put_varint(&mut b, f.file_bytes);
            put_varint(&mut b, f.entries);
            put_bytes(&mut b, &f.smallest);
            put_bytes(&mut b, &f.largest);
        }
        b
    }

    /// `Err(reason)` when malformed.
    pub fn decode(b: &[u8]) -> Result<VersionEdit, String> {
        let mut e = VersionEdit::default();
        let mut p = 0;
        let level = |v: u64| -> Result<usize, String> {
            usize::try_from(v)
                .ok()
                .filter(|l| *l < NUM_LEVELS)
                .ok_or_else(|| format!("level {v} out of range"))
        };
        while p < b.len() {
            let tag = get_varint(b, &mut p).ok_or("truncated tag")?;
            let mut num = || get_varint(b, &mut p).ok_or(format!("truncated field {tag}"));
            match tag {
                1 => e.log_number = Some(num()?),
                2 => e.next_file = Some(num()?),
                3 => e.last_seq = Some(num()?),
                4 => {
                    let l = level(num()?)?;
                    e.deleted.push((l, num()?));
                }
                5 => {
                    let l = level(num()?)?;
                    let (number, file_bytes, entries) = (num()?, num()?, num()?);
                    let smallest = get_bytes(b, &mut p)
                        .ok_or("truncated smallest key")?
                        .to_vec();
                    let largest = get_bytes(b, &mut p)
                        .ok_or("truncated largest key")?
                        .to_vec();
                    if key::parse(&smallest).is_none() || key::parse(&largest).is_none() {
                        return Err(format!("table {number} has malformed bounds"));
                    }
                    e.added.push((
                        l,
                        FileRecord {
                            number,
                            file_bytes,
                            entries,
                            smallest,
                            largest,
                        },
                    ));
                }
                other => return Err(format!("unknown field tag {other}")),
            }
        }
        Ok(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn edits_round_trip_and_garbage_is_rejected() {
        let e = VersionEdit {
            log_number: Some(4),
            next_file: Some(9),
            last_seq: Some(1234),
            deleted: vec![(0, 3), (1, 5)],
            added: vec![(
                2,
                FileRecord {
                    number: 8,
                    file_bytes: 4096,
                    entries: 10,
                    smallest: key::make_ikey(b"a", 1, key::Kind::Put),
                    largest: key::make_ikey(b"z", 2, key::Kind::Delete),
                },
            )],
        };
        assert_eq!(VersionEdit::decode(&e.encode()), Ok(e.clone()));
        let enc = e.encode();
        for cut in 1..enc.len() {
            let _ = VersionEdit::decode(&enc[..cut]); // no panic
        }
        assert!(VersionEdit::decode(&[9, 9]).is_err());
        assert!(
            VersionEdit::decode(&[4, 50, 1]).is_err(),
            "level 50 accepted"
        );
    }
}
