//! Write batches: several puts and deletes applied atomically, with consecutive
//! sequence numbers, as one WAL record.
//!
//! ```text
//! batch rep = entry*
//! entry     = kind u8 | varint key_len | key | (varint value_len | value, puts only)
//! WAL payload of a batch = first seq u64 LE | count u32 LE | batch rep
//! ```

use crate::coding::{get_bytes, put_bytes, put_u32, put_u64};
use crate::key::Kind;

/// An ordered set of writes applied atomically by [`crate::Db::write`].
#[derive(Clone, Debug, Default)]
pub struct WriteBatch {
    rep: Vec<u8>,
    count: u32,
    user_bytes: usize,
}

impl WriteBatch {
    pub fn new() -> Self {
        Self::default()
    }

    /// A batch whose encoding needs no reallocation up to `bytes`.
    pub fn with_capacity(bytes: usize) -> Self {
        Self {
            rep: Vec::with_capacity(bytes),
            ..Self::default()
        }
    }

    pub fn put(&mut self, key: impl AsRef<[u8]>, value: impl AsRef<[u8]>) -> &mut Self {
        let (key, value) = (key.as_ref(), value.as_ref());
        self.rep.push(Kind::Put as u8);
        put_bytes(&mut self.rep, key);
        put_bytes(&mut self.rep, value);
        self.count += 1;
        self.user_bytes += key.len() + value.len();
        self
    }

    pub fn delete(&mut self, key: impl AsRef<[u8]>) -> &mut Self {
        let key = key.as_ref();
        self.rep.push(Kind::Delete as u8);
        put_bytes(&mut self.rep, key);
        self.count += 1;
        self.user_bytes += key.len();
        self
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.count as usize
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Bytes of keys and values (what "bytes written by users" counts).
    pub fn user_bytes(&self) -> usize {
        self.user_bytes
    }

    /// Encoded size.
    pub fn encoded_len(&self) -> usize {
        self.rep.len() + 12
    }

    pub fn clear(&mut self) {
        self.rep.clear();
        self.count = 0;
        self.user_bytes = 0;
    }

    /// The entries in order.
    pub fn iter(&self) -> BatchIter<'_> {
        BatchIter {
            rep: &self.rep,
            pos: 0,
        }
    }

    /// Appends the WAL payload for this batch starting at sequence `seq`.
    pub(crate) fn encode_wal_payload(&self, seq: u64, out: &mut Vec<u8>) {
        put_u64(out, seq);
        put_u32(out, self.count);
        out.extend_from_slice(&self.rep);
    }
}

/// One decoded batch entry: (kind, key, value; empty for deletes).
pub type BatchEntry<'a> = (Kind, &'a [u8], &'a [u8]);

/// Decodes a WAL payload into (first seq, entries). `None` when malformed.
pub fn decode_wal_payload(payload: &[u8]) -> Option<(u64, Vec<BatchEntry<'_>>)> {
    let seq = crate::coding::get_u64(payload, 0)?;
    let count = crate::coding::get_u32(payload, 8)? as usize;
    let mut it = BatchIter {
        rep: payload.get(12..)?,
        pos: 0,
    };
    let mut entries = Vec::with_capacity(count.min(1 << 16));
    for _ in 0..count {
        entries.push(it.next_checked()?);
    }
    if it.pos != it.rep.len() {
        return None;
    }
    Some((seq, entries))
}

/// Iterator over a batch's entries: (kind, key, value; empty for deletes).
#[derive(Debug)]
pub struct BatchIter<'a> {
    rep: &'a [u8],
    pos: usize,
}

impl<'a> BatchIter<'a> {
    fn next_checked(&mut self) -> Option<BatchEntry<'a>> {
        let kind = Kind::from_u8(*self.rep.get(self.pos)?)?;
        self.pos += 1;
        let key = get_bytes(self.rep, &mut self.pos)?;
        let value = match kind {
            Kind::Put => get_bytes(self.rep, &mut self.pos)?,
            Kind::Delete => &[],
        };
        Some((kind, key, value))
    }
}

impl<'a> Iterator for BatchIter<'a> {
    type Item = BatchEntry<'a>;
    fn next(&mut self) -> Option<Self::Item> {
        if self.pos >= self.rep.len() {
            return None;
        }
        // A batch built through the API always decodes; stop rather than panic
        // if it somehow does not.
        self.next_checked()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_round_trips() {
        let mut b = WriteBatch::new();
        b.put(b"k1", b"v1").delete(b"k2").put(b"", b"");
        let mut out = Vec::new();
        b.encode_wal_payload(42, &mut out);
        let (seq, entries) = decode_wal_payload(&out).expect("decodes");
        assert_eq!(seq, 42);
        assert_eq!(
            entries,
            vec![
                (Kind::Put, &b"k1"[..], &b"v1"[..]),
                (Kind::Delete, &b"k2"[..], &b""[..]),
                (Kind::Put, &b""[..], &b""[..]),
            ]
        );
        assert!(decode_wal_payload(&out[..out.len() - 1]).is_none());
    }
}
