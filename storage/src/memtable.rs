//! The memtable: the newest writes, in a lock-free concurrent skiplist ordered by
//! internal key. Readers never block writers; a memtable is append-only (each
//! write adds a new version), so a reader holding an `Arc<Memtable>` sees a
//! consistent prefix filtered by its snapshot sequence number.

use std::ops::Bound;
use std::sync::atomic::{AtomicUsize, Ordering};

use crossbeam_skiplist::SkipMap;

use crate::key::{self, InternalKey, Kind};

/// Per-entry bookkeeping charged to the size estimate (skiplist node, Vec headers).
const ENTRY_OVERHEAD: usize = 64;

/// The outcome of a point lookup in one structure.
#[derive(Debug, PartialEq, Eq)]
pub enum Lookup {
    /// The newest visible version is a put.
    Found(Vec<u8>),
    /// The newest visible version is a delete: stop looking.
    Deleted,
    /// No visible version here: look in older structures.
    Absent,
}

#[derive(Debug)]
pub struct Memtable {
    map: SkipMap<InternalKey, Vec<u8>>,
    approx_bytes: AtomicUsize,
    /// The WAL file holding this memtable's writes; deletable once it is flushed.
    wal_number: u64,
}

impl Memtable {
    pub fn new(wal_number: u64) -> Self {
        Self {
            map: SkipMap::new(),
            approx_bytes: AtomicUsize::new(0),
            wal_number,
        }
    }

    pub fn wal_number(&self) -> u64 {
        self.wal_number
    }

    pub fn insert(&self, user_key: &[u8], seq: u64, kind: Kind, value: &[u8]) {
        let ikey = key::make_ikey(user_key, seq, kind);
        self.approx_bytes
            .fetch_add(ikey.len() + value.len() + ENTRY_OVERHEAD, Ordering::Relaxed);
        self.map.insert(InternalKey(ikey), value.to_vec());
    }

    pub fn approx_bytes(&self) -> usize {
        self.approx_bytes.load(Ordering::Relaxed)
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// The newest version of `user_key` with sequence number <= `seq`.
    pub fn get(&self, user_key: &[u8], seq: u64) -> Lookup {
        let target = InternalKey(key::seek_key(user_key, seq));
        let Some(entry) = self.map.lower_bound(Bound::Included(&target)) else {
            return Lookup::Absent;
        };
        match key::parse(&entry.key().0) {
            Some((uk, _, kind)) if uk == user_key => match kind {
                Kind::Put => Lookup::Found(entry.value().clone()),
                Kind::Delete => Lookup::Deleted,
            },
            _ => Lookup::Absent,
        }
    }

    /// Up to `max` entries in order after `from` (forward) or before it
    /// (reverse), cloned. Iterators call this in batches: an `Arc<Memtable>` can
    /// then be read without a self-referential borrow, at one skiplist seek per
    /// batch.
    pub fn chunk(
        &self,
        from: Bound<&InternalKey>,
        reverse: bool,
        max: usize,
    ) -> Vec<(Vec<u8>, Vec<u8>)> {
        let map_entry = |e: crossbeam_skiplist::map::Entry<'_, InternalKey, Vec<u8>>| {
            (e.key().0.clone(), e.value().clone())
        };
        if reverse {
            self.map
                .range::<InternalKey, _>((Bound::Unbounded, from))
                .rev()
                .take(max)
                .map(map_entry)
                .collect()
        } else {
            self.map
                .range::<InternalKey, _>((from, Bound::Unbounded))
                .take(max)
                .map(map_entry)
                .collect()
        }
    }

    /// Every entry in internal-key order (used by flush).
    pub fn iter(&self) -> impl Iterator<Item = (Vec<u8>, Vec<u8>)> + '_ {
        self.map
            .iter()
            .map(|e| (e.key().0.clone(), e.value().clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn get_sees_the_newest_version_at_or_below_the_snapshot() {
        let m = Memtable::new(1);
        m.insert(b"k", 1, Kind::Put, b"v1");
        m.insert(b"k", 3, Kind::Delete, b"");
        m.insert(b"k", 5, Kind::Put, b"v5");
        m.insert(b"j", 9, Kind::Put, b"other");
        assert_eq!(m.get(b"k", 0), Lookup::Absent);
        assert_eq!(m.get(b"k", 1), Lookup::Found(b"v1".to_vec()));
        assert_eq!(m.get(b"k", 4), Lookup::Deleted);
        assert_eq!(m.get(b"k", 100), Lookup::Found(b"v5".to_vec()));
        assert_eq!(m.get(b"ka", 100), Lookup::Absent);
    }

    #[test]
    fn chunks_walk_both_directions() {
        let m = Memtable::new(1);
        for (i, k) in [b"a", b"b", b"c", b"d"].iter().enumerate() {
            m.insert(*k, i as u64 + 1, Kind::Put, b"");
        }
        let fwd = m.chunk(Bound::Unbounded, false, 3);
        assert_eq!(fwd.len(), 3);
        let last = InternalKey(fwd[2].0.clone());
        let rest = m.chunk(Bound::Excluded(&last), false, 3);
        assert_eq!(rest.len(), 1);
        assert_eq!(key::user_key(&rest[0].0), b"d");
        let rev = m.chunk(Bound::Excluded(&last), true, 10);
        let keys: Vec<_> = rev.iter().map(|(k, _)| key::user_key(k).to_vec()).collect();
        assert_eq!(keys, vec![b"b".to_vec(), b"a".to_vec()]);
    }
}
