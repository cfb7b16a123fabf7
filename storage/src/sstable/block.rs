//! Data and index blocks: sorted entries with key prefix compression and restart
//! points (LevelDB's block format).
//!
//! ```text
//! block   = entry* | restart u32 LE * n | n u32 LE
//! entry   = varint shared | varint unshared | varint value_len | key[shared..] | value
//! ```
//!
//! `shared` is how many leading bytes the key shares with the previous key. Every
//! `restart_interval` entries the key is stored whole (`shared = 0`) and its
//! offset recorded as a restart point, so a lookup binary-searches the restart
//! points and then scans at most one interval.

use std::cmp::Ordering;

use crate::coding::{get_u32, get_varint, put_u32, put_varint};

/// Builds one block. Keys must be added in increasing order of the comparator
/// the reader will use.
#[derive(Debug)]
pub struct BlockBuilder {
    buf: Vec<u8>,
    restarts: Vec<u32>,
    counter: usize,
    restart_interval: usize,
    last_key: Vec<u8>,
    entries: usize,
}

impl BlockBuilder {
    pub fn new(restart_interval: usize) -> Self {
        Self {
            buf: Vec::with_capacity(8 << 10),
            restarts: vec![0],
            counter: 0,
            restart_interval: restart_interval.max(1),
            last_key: Vec::new(),
            entries: 0,
        }
    }

    pub fn add(&mut self, key: &[u8], value: &[u8]) {
        let shared = if self.counter < self.restart_interval {
            key.iter()
                .zip(self.last_key.iter())
                .take_while(|(a, b)| a == b)
                .count()
        } else {
            self.restarts.push(self.buf.len() as u32);
            self.counter = 0;
            0
        };
        put_varint(&mut self.buf, shared as u64);
        put_varint(&mut self.buf, (key.len() - shared) as u64);
        put_varint(&mut self.buf, value.len() as u64);
        self.buf.extend_from_slice(&key[shared..]);
        self.buf.extend_from_slice(value);
        self.last_key.clear();
        self.last_key.extend_from_slice(key);
        self.counter += 1;
        self.entries += 1;
    }

    /// Size of the block if finished now.
    pub fn estimated_len(&self) -> usize {
        self.buf.len() + self.restarts.len() * 4 + 4
    }

    pub fn is_empty(&self) -> bool {
        self.entries == 0
    }

    pub fn last_key(&self) -> &[u8] {
        &self.last_key
    }

    /// The finished block bytes; the builder is reset for the next block.
    pub fn finish(&mut self) -> Vec<u8> {
        let mut out = std::mem::take(&mut self.buf);
        for r in &self.restarts {
            put_u32(&mut out, *r);
        }
        put_u32(&mut out, self.restarts.len() as u32);
        self.restarts = vec![0];
        self.counter = 0;
        self.last_key.clear();
        self.entries = 0;
        out
    }
}

/// A parsed block, read-only.
#[derive(Debug)]
pub struct Block {
    data: Vec<u8>,
    restarts_off: usize,
    n_restarts: usize,
}

/// Decoding failure inside a block: a reason; the table adds file and offset.
pub type BlockResult<T> = Result<T, String>;

/// An owned (key, value) pair.
pub type Entry = (Vec<u8>, Vec<u8>);

impl Block {
    pub fn parse(data: Vec<u8>) -> BlockResult<Block> {
        let len = data.len();
        let n = get_u32(
            &data,
            len.checked_sub(4).ok_or("block shorter than 4 bytes")?,
        )
        .ok_or("block shorter than 4 bytes")? as usize;
        let restarts_bytes = n
            .checked_mul(4)
            .and_then(|b| b.checked_add(4))
            .ok_or("restart count overflows")?;
        if n == 0 || restarts_bytes > len {
            return Err(format!("bad restart count {n} for a {len} byte block"));
        }
        let restarts_off = len - restarts_bytes;
        let block = Block {
            data,
            restarts_off,
            n_restarts: n,
        };
        for i in 0..n {
            if block.restart(i) as usize > restarts_off {
                return Err(format!("restart {i} points past the entries"));
            }
        }
        Ok(block)
    }

    pub fn size(&self) -> usize {
        self.data.len()
    }

    fn restart(&self, i: usize) -> u32 {
        get_u32(&self.data, self.restarts_off + 4 * i).unwrap_or(0)
    }

    /// Decodes the entry at `off` into `key` (which holds the previous key for
    /// prefix sharing). Returns (value start, value end, next offset).
    fn decode_at(&self, off: usize, key: &mut Vec<u8>) -> BlockResult<(usize, usize, usize)> {
        let d = &self.data[..self.restarts_off];
        let mut p = off;
        let bad = || format!("malformed entry at block offset {off}");
        let shared = get_varint(d, &mut p).ok_or_else(bad)? as usize;
        let unshared = get_varint(d, &mut p).ok_or_else(bad)? as usize;
        let vlen = get_varint(d, &mut p).ok_or_else(bad)? as usize;
        if shared > key.len() {
            return Err(format!(
                "entry at block offset {off} shares {shared} bytes with a {} byte key",
                key.len()
            ));
        }
        let kend = p.checked_add(unshared).ok_or_else(bad)?;
        let vend = kend.checked_add(vlen).ok_or_else(bad)?;
        if vend > d.len() {
            return Err(bad());
        }
        key.truncate(shared);
        key.extend_from_slice(&d[p..kend]);
        Ok((kend, vend, vend))
    }

    /// The first entry whose key is >= `target` under `cmp`, if any.
    pub fn seek(
        &self,
        target: &[u8],
        cmp: impl Fn(&[u8], &[u8]) -> Ordering,
    ) -> BlockResult<Option<Entry>> {
        // Binary search for the last restart point whose key is < target.
        let (mut lo, mut hi) = (0usize, self.n_restarts - 1);
        let mut key = Vec::new();
        while lo < hi {
            let mid = (lo + hi).div_ceil(2);
            key.clear();
            self.decode_at(self.restart(mid) as usize, &mut key)?;
            if cmp(&key, target) == Ordering::Less {
                lo = mid;
            } else {
                hi = mid - 1;
            }
        }
        let mut off = self.restart(lo) as usize;
        key.clear();
        while off < self.restarts_off {
            let (vs, ve, next) = self.decode_at(off, &mut key)?;
            if cmp(&key, target) != Ordering::Less {
                return Ok(Some((key, self.data[vs..ve].to_vec())));
            }
            off = next;
        }
        Ok(None)
    }

    /// Every entry, in order.
    pub fn entries(&self) -> BlockResult<Vec<Entry>> {
        let mut out = Vec::new();
        let mut key = Vec::new();
        let mut off = 0;
        while off < self.restarts_off {
            let (vs, ve, next) = self.decode_at(off, &mut key)?;
            out.push((key.clone(), self.data[vs..ve].to_vec()));
            off = next;
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn build(n: usize, interval: usize) -> (Block, Vec<Entry>) {
        let mut b = BlockBuilder::new(interval);
        let mut want = Vec::new();
        for i in 0..n {
            let k = format!("key{:05}", i * 2).into_bytes();
            let v = format!("v{i}").into_bytes();
            b.add(&k, &v);
            want.push((k, v));
        }
        (Block::parse(b.finish()).expect("parses"), want)
    }

    #[test]
    fn entries_round_trip_and_seek_finds_the_first_not_less() {
        for interval in [1, 3, 16] {
            let (block, want) = build(100, interval);
            assert_eq!(block.entries().expect("entries"), want);
            let cmp = |a: &[u8], b: &[u8]| a.cmp(b);
            for i in 0..100 {
                let exact = format!("key{:05}", i * 2);
                let got = block.seek(exact.as_bytes(), cmp).expect("seek");
                assert_eq!(got.as_ref().map(|e| &e.0), Some(&want[i].0));
                let between = format!("key{:05}", i * 2 + 1);
                let got = block.seek(between.as_bytes(), cmp).expect("seek");
                assert_eq!(got.map(|e| e.0), want.get(i + 1).map(|e| e.0.clone()));
            }
            assert_eq!(
                block.seek(b"a", cmp).expect("seek").map(|e| e.0),
                Some(want[0].0.clone())
            );
        }
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        for bytes in [
            vec![],
            vec![1, 2, 3],
            vec![0xff; 16],
            vec![5, 0, 0, 0, 1, 0, 0, 0],
        ] {
            if let Ok(b) = Block::parse(bytes) {
                let _ = b.entries();
                let _ = b.seek(b"x", |a: &[u8], b: &[u8]| a.cmp(b));
            }
        }
    }
}
