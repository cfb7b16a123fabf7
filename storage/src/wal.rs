//! The write-ahead log: every write group is appended here before it reaches the
//! memtable, so a crash loses nothing that was acknowledged.
//!
//! ```text
//! file   = record*
//! record = len u32 LE | crc u32 LE | payload[len]      crc = CRC32C(len bytes ++ payload)
//! ```
//!
//! Recovery ([`read_wal`]) replays the valid prefix. A damaged record at the end
//! of the file (a partial header, a payload cut short, or a bad checksum on the
//! last record, or zeros to the end of the file) is a torn write from a crash:
//! the tail is cut off. A bad record *followed by more data* cannot come from a
//! torn append, so it is reported as corruption with the file and offset.

use std::path::{Path, PathBuf};

use crate::coding::{crc32c, crc32c_append, get_u32, put_u32};
use crate::io::{Fs, WritableFile};
use crate::{Error, Result};

pub const HEADER_LEN: usize = 8;

/// `NNNNNN.log`
pub fn wal_path(dir: &Path, number: u64) -> PathBuf {
    dir.join(format!("{number:06}.log"))
}

/// Appends records to one WAL file. Owned by the write-group leader.
#[derive(Debug)]
pub struct WalWriter {
    file: WritableFile,
    number: u64,
    buf: Vec<u8>,
    /// Preallocation step (0 = none) and the file size allocated so far.
    prealloc_step: u64,
    allocated: u64,
}

/// The WAL grows by this much at a time when preallocating.
pub const PREALLOC_STEP: u64 = 4 << 20;

impl WalWriter {
    pub fn create(fs: &Fs, dir: &Path, number: u64) -> Result<Self> {
        Self::create_at(fs, &wal_path(dir, number), number)
    }

    /// A log at an explicit path (the manifest uses the same record framing).
    pub fn create_at(fs: &Fs, path: &Path, number: u64) -> Result<Self> {
        Ok(Self {
            file: fs.create(path)?,
            number,
            buf: Vec::with_capacity(64 << 10),
            prealloc_step: 0,
            allocated: 0,
        })
    }

    /// A WAL whose file is extended ahead of the data, [`PREALLOC_STEP`] at a
    /// time (zeros, size fsynced), so most appends do not change the file size
    /// and an fdatasync has no size update to journal. Steps, not one large
    /// extension: recovery reads the whole file, so the unused tail stays
    /// under one step. Recovery reads the zero tail as unused space.
    pub fn create_preallocated(fs: &Fs, dir: &Path, number: u64) -> Result<Self> {
        let mut w = Self::create(fs, dir, number)?;
        w.prealloc_step = PREALLOC_STEP;
        w.grow(0)?;
        Ok(w)
    }

    fn grow(&mut self, needed: u64) -> Result<()> {
        if self.prealloc_step == 0 || needed <= self.allocated && self.allocated > 0 {
            return Ok(());
        }
        let target = (needed / self.prealloc_step + 1) * self.prealloc_step;
        self.file.preallocate(target)?;
        self.allocated = target;
        Ok(())
    }

    pub fn number(&self) -> u64 {
        self.number
    }

    /// Frames `payload` into the pending buffer.
    pub fn add_record(&mut self, payload: &[u8]) {
        let len = payload.len() as u32;
        let len_bytes = len.to_le_bytes();
        let crc = crc32c_append(crc32c(&len_bytes), payload);
        self.buf.extend_from_slice(&len_bytes);
        put_u32(&mut self.buf, crc);
        self.buf.extend_from_slice(payload);
    }

    /// Frames a record whose payload the caller builds in place with `fill`
    /// (saves a copy of large batches).
    pub fn add_record_with(&mut self, fill: impl FnOnce(&mut Vec<u8>)) {
        let start = self.buf.len();
        self.buf.extend_from_slice(&[0u8; HEADER_LEN]);
        fill(&mut self.buf);
        let len = (self.buf.len() - start - HEADER_LEN) as u32;
        let len_bytes = len.to_le_bytes();
        let crc = crc32c_append(crc32c(&len_bytes), &self.buf[start + HEADER_LEN..]);
        self.buf[start..start + 4].copy_from_slice(&len_bytes);
        self.buf[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
    }

    /// Writes pending records to the OS (one write call for the whole group).
    pub fn flush(&mut self) -> Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        if let Err(e) = self.grow(self.file.len() + self.buf.len() as u64) {
            self.buf.clear();
            return Err(e);
        }
        let r = self.file.write_all(&self.buf);
        self.buf.clear();
        r
    }

    /// Flushes, then fsyncs.
    pub fn sync(&mut self) -> Result<()> {
        self.flush()?;
        self.file.sync()
    }

    pub fn len(&self) -> u64 {
        self.file.len()
    }

    pub fn is_empty(&self) -> bool {
        self.file.is_empty() && self.buf.is_empty()
    }
}

/// What recovery found in one WAL file.
#[derive(Debug)]
pub struct WalContents {
    /// (offset, payload) of each valid record, in order.
    pub records: Vec<(u64, Vec<u8>)>,
    /// Length of the valid prefix.
    pub valid_len: u64,
    /// Non-zero bytes after the valid prefix (a torn tail) that recovery cuts off.
    pub torn_bytes: u64,
    /// Zero bytes after the valid prefix: preallocated space never written.
    pub preallocated_bytes: u64,
}

/// Reads a WAL file; see the module doc for torn tail vs corruption.
pub fn read_wal(path: &Path) -> Result<WalContents> {
    let data = std::fs::read(path).map_err(|e| Error::io("read WAL", path, e))?;
    parse_wal(path, &data)
}

/// Splits a WAL's bytes into records (`path` only names the file in errors).
/// Outside bytes meet this on every recovery; `fuzz/` fuzzes it.
pub fn parse_wal(path: &Path, data: &[u8]) -> Result<WalContents> {
    let mut records = Vec::new();
    let mut pos = 0usize;
    // Compare against a zero block (memcmp) rather than byte by byte: the tail
    // of a preallocated WAL is up to one preallocation step of zeros.
    static ZEROS: [u8; 4096] = [0; 4096];
    let zero_from = |p: usize| data[p..].chunks(4096).all(|c| c == &ZEROS[..c.len()]);
    while pos < data.len() {
        // The valid prefix ends here; classify what follows.
        let stop = |records: Vec<(u64, Vec<u8>)>, pos: usize| {
            // One scan of the tail decides which of the two it is.
            let (torn_bytes, preallocated_bytes) = if zero_from(pos) {
                (0, (data.len() - pos) as u64)
            } else {
                ((data.len() - pos) as u64, 0)
            };
            WalContents {
                records,
                valid_len: pos as u64,
                torn_bytes,
                preallocated_bytes,
            }
        };
        if data.len() - pos < HEADER_LEN {
            return Ok(stop(records, pos));
        }
        let len = get_u32(data, pos).unwrap_or(0) as usize;
        let crc = get_u32(data, pos + 4).unwrap_or(0);
        let end = pos + HEADER_LEN + len;
        if end > data.len() {
            return Ok(stop(records, pos));
        }
        let payload = &data[pos + HEADER_LEN..end];
        let want = crc32c_append(crc32c(&data[pos..pos + 4]), payload);
        if want != crc {
            // A damaged record with only zeros (preallocated space) or nothing
            // after it is a torn append. Anything else is corruption.
            if end == data.len() || zero_from(end) || zero_from(pos) {
                return Ok(stop(records, pos));
            }
            return Err(Error::corruption(
                path,
                pos as u64,
                format!(
                    "WAL record checksum mismatch (stored {crc:#010x}, computed {want:#010x}, \
                     {len} byte payload) with {} bytes after it",
                    data.len() - end
                ),
            ));
        }
        records.push((pos as u64, payload.to_vec()));
        pos = end;
    }
    Ok(WalContents {
        records,
        valid_len: data.len() as u64,
        torn_bytes: 0,
        preallocated_bytes: 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, payloads: &[&[u8]]) -> PathBuf {
        let fs = Fs::default();
        let mut w = WalWriter::create(&fs, dir, 7).expect("create");
        for p in payloads {
            w.add_record(p);
        }
        w.sync().expect("sync");
        wal_path(dir, 7)
    }

    #[test]
    fn records_round_trip() {
        let d = tempfile::tempdir().expect("tempdir");
        let p = write(d.path(), &[b"one", b"", b"three"]);
        let c = read_wal(&p).expect("read");
        let got: Vec<_> = c.records.iter().map(|(_, r)| r.as_slice()).collect();
        assert_eq!(got, vec![&b"one"[..], b"", b"three"]);
        assert_eq!(c.torn_bytes, 0);
    }

    #[test]
    fn a_torn_tail_is_cut_and_reported_as_torn() {
        let d = tempfile::tempdir().expect("tempdir");
        let p = write(d.path(), &[b"one", b"two-two"]);
        let full = std::fs::read(&p).expect("read");
        for cut in 1..(HEADER_LEN + 7) {
            std::fs::write(&p, &full[..full.len() - cut]).expect("write");
            let c = read_wal(&p).expect("torn tail is not an error");
            assert_eq!(c.records.len(), 1, "cut {cut}");
            assert_eq!(c.valid_len, (HEADER_LEN + 3) as u64);
        }
        // Zeros after the valid prefix are preallocated space, not a torn tail.
        let mut z = full.clone();
        z.extend_from_slice(&[0u8; 100]);
        std::fs::write(&p, &z).expect("write");
        let c = read_wal(&p).expect("zeros");
        assert_eq!(
            (c.records.len(), c.torn_bytes, c.preallocated_bytes),
            (2, 0, 100)
        );
        // A torn record followed by preallocated zeros is still a torn tail.
        let mut t = full[..full.len() - 3].to_vec();
        t.extend_from_slice(&[0u8; 100]);
        std::fs::write(&p, &t).expect("write");
        let c = read_wal(&p).expect("torn + zeros");
        assert_eq!(c.records.len(), 1);
    }

    #[test]
    fn a_bad_record_before_the_tail_is_corruption_with_its_offset() {
        let d = tempfile::tempdir().expect("tempdir");
        let p = write(d.path(), &[b"one", b"two", b"three"]);
        let mut bytes = std::fs::read(&p).expect("read");
        let second = HEADER_LEN + 3;
        bytes[second + HEADER_LEN] ^= 0x40; // a payload byte of record 2
        std::fs::write(&p, &bytes).expect("write");
        match read_wal(&p) {
            Err(Error::Corruption { file, offset, .. }) => {
                assert_eq!(file, p);
                assert_eq!(offset, second as u64);
            }
            other => panic!("expected corruption, got {other:?}"),
        }
    }
}
