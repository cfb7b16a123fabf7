//! The snapshot file: one format on disk and on the wire, written and read
//! a record at a time, so no snapshot is ever held whole in memory (etcd
//! streams its `.snap.db` file the same way; openraft's "generic snapshot
//! data" chapter describes a file as the snapshot's data).
//!
//! ```text
//!   magic     b"MLSNAP02"                       8 bytes
//!   meta_len  u32 LE, meta (bincode SnapshotMeta) ≤ MAX_META_BYTES
//!   records   { 1u8, key_len u32 LE, value_len u32 LE, key, value }*
//!   trailer   0u8, record count u64 LE, crc32c u32 LE of every byte before it
//! ```
//!
//! A reader trusts nothing in the file until the trailer checks: lengths
//! are bounded before anything is allocated, and a caller applies what it
//! read only once [`SnapshotReader::next_record`] has returned `None` (the trailer,
//! the count and the checksum verified, and nothing after them).

use super::*;
use std::io::{Read, Write};
use std::pin::Pin;
use std::task::{Context, Poll};

const MAGIC: &[u8; 8] = b"MLSNAP02";
const TAG_RECORD: u8 = 1;
const TAG_END: u8 = 0;
/// A snapshot's metadata is a log id and a membership: kilobytes at most.
const MAX_META_BYTES: u32 = 1 << 20;
/// Keys and values in the state key spaces are bounded by the KV's limits
/// (`MAX_VALUE_BYTES` is 1 MiB, plus the record's encoding); a forged file
/// cannot make a reader allocate more than this for one record.
pub(super) const MAX_RECORD_BYTES: u32 = 16 << 20;

fn bad(what: String) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, what)
}

/// Writes a snapshot file a record at a time, keeping the running checksum.
pub(super) struct SnapshotWriter<W: Write> {
    out: W,
    crc: u32,
    records: u64,
}

impl<W: Write> SnapshotWriter<W> {
    pub(super) fn new(out: W, meta: &SnapshotMeta<NodeId, Node>) -> std::io::Result<Self> {
        let mut w = Self {
            out,
            crc: 0,
            records: 0,
        };
        let meta = encode(meta);
        let len = u32::try_from(meta.len())
            .ok()
            .filter(|l| *l <= MAX_META_BYTES)
            .ok_or_else(|| bad(format!("snapshot meta of {} bytes", meta.len())))?;
        w.put(MAGIC)?;
        w.put(&len.to_le_bytes())?;
        w.put(&meta)?;
        Ok(w)
    }

    fn put(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.crc = crc32c::crc32c_append(self.crc, bytes);
        self.out.write_all(bytes)
    }

    pub(super) fn record(&mut self, key: &[u8], value: &[u8]) -> std::io::Result<()> {
        let len = |b: &[u8]| {
            u32::try_from(b.len())
                .ok()
                .filter(|l| *l <= MAX_RECORD_BYTES)
                .ok_or_else(|| bad(format!("snapshot record part of {} bytes", b.len())))
        };
        let (kl, vl) = (len(key)?, len(value)?);
        self.put(&[TAG_RECORD])?;
        self.put(&kl.to_le_bytes())?;
        self.put(&vl.to_le_bytes())?;
        self.put(key)?;
        self.put(value)?;
        self.records += 1;
        Ok(())
    }

    /// Writes the trailer; returns the output (to flush and fsync) and the
    /// number of records.
    pub(super) fn finish(mut self) -> std::io::Result<(W, u64)> {
        self.put(&[TAG_END])?;
        self.put(&self.records.to_le_bytes())?;
        let crc = self.crc;
        self.out.write_all(&crc.to_le_bytes())?;
        Ok((self.out, self.records))
    }
}

/// Reads a snapshot file a record at a time, checking bounds as it goes and
/// the count and checksum at the end.
pub(super) struct SnapshotReader<R: Read> {
    r: R,
    crc: u32,
    records: u64,
    meta: SnapshotMeta<NodeId, Node>,
    done: bool,
}

impl<R: Read> SnapshotReader<R> {
    /// Reads the header: the magic and the metadata.
    pub(super) fn open(r: R) -> std::io::Result<Self> {
        let mut s = Self {
            r,
            crc: 0,
            records: 0,
            meta: SnapshotMeta::default(),
            done: false,
        };
        let magic: [u8; 8] = s.take_array("magic")?;
        if &magic != MAGIC {
            // Its own kind: start-up moves a file of another format aside
            // (`open_snapshot_dir`) instead of refusing to start.
            return Err(std::io::Error::new(
                std::io::ErrorKind::Unsupported,
                format!(
                    "not a snapshot file of this version: magic {magic:02x?}, expected {MAGIC:02x?}"
                ),
            ));
        }
        let len = u32::from_le_bytes(s.take_array("meta length")?);
        if len > MAX_META_BYTES {
            return Err(bad(format!(
                "snapshot meta of {len} bytes passes the limit of {MAX_META_BYTES}"
            )));
        }
        let meta = s.take_vec(len, "meta")?;
        s.meta = decode("snapshot meta", &meta)?;
        Ok(s)
    }

    pub(super) fn meta(&self) -> &SnapshotMeta<NodeId, Node> {
        &self.meta
    }

    fn take_array<const N: usize>(&mut self, what: &str) -> std::io::Result<[u8; N]> {
        let mut b = [0u8; N];
        self.r.read_exact(&mut b).map_err(|e| truncated(e, what))?;
        self.crc = crc32c::crc32c_append(self.crc, &b);
        Ok(b)
    }

    fn take_vec(&mut self, len: u32, what: &str) -> std::io::Result<Vec<u8>> {
        let mut b = vec![0u8; len as usize];
        self.r.read_exact(&mut b).map_err(|e| truncated(e, what))?;
        self.crc = crc32c::crc32c_append(self.crc, &b);
        Ok(b)
    }

    /// The next record, or `None` once the trailer has been read and checked.
    /// An error means the file is damaged (or forged): apply none of it.
    pub(super) fn next_record(&mut self) -> std::io::Result<Option<(Vec<u8>, Vec<u8>)>> {
        if self.done {
            return Ok(None);
        }
        let [tag] = self.take_array::<1>("record tag")?;
        match tag {
            TAG_RECORD => {
                let kl = u32::from_le_bytes(self.take_array("key length")?);
                let vl = u32::from_le_bytes(self.take_array("value length")?);
                if kl > MAX_RECORD_BYTES || vl > MAX_RECORD_BYTES {
                    return Err(bad(format!(
                        "snapshot record {} of {kl}+{vl} bytes passes the limit of {MAX_RECORD_BYTES}",
                        self.records
                    )));
                }
                let k = self.take_vec(kl, "key")?;
                let v = self.take_vec(vl, "value")?;
                self.records += 1;
                Ok(Some((k, v)))
            }
            TAG_END => {
                let count = u64::from_le_bytes(self.take_array("record count")?);
                let computed = self.crc;
                let mut stored = [0u8; 4];
                self.r
                    .read_exact(&mut stored)
                    .map_err(|e| truncated(e, "checksum"))?;
                let stored = u32::from_le_bytes(stored);
                if stored != computed {
                    return Err(bad(format!(
                        "snapshot checksum mismatch: stored {stored:08x}, computed {computed:08x}"
                    )));
                }
                if count != self.records {
                    return Err(bad(format!(
                        "snapshot trailer counts {count} records, the file holds {}",
                        self.records
                    )));
                }
                let mut extra = [0u8; 1];
                if self.r.read(&mut extra)? != 0 {
                    return Err(bad("bytes after the snapshot's trailer".into()));
                }
                self.done = true;
                Ok(None)
            }
            t => Err(bad(format!(
                "snapshot record {} has tag {t}, neither a record nor the trailer",
                self.records
            ))),
        }
    }
}

fn truncated(e: std::io::Error, what: &str) -> std::io::Error {
    if e.kind() == std::io::ErrorKind::UnexpectedEof {
        bad(format!("snapshot file ends inside its {what}"))
    } else {
        e
    }
}

/// Reads a whole snapshot file, checking every record, the count and the
/// checksum; returns its metadata.
pub(super) fn verify_snapshot_file(path: &Path) -> std::io::Result<SnapshotMeta<NodeId, Node>> {
    let f = std::fs::File::open(path)?;
    let mut r = SnapshotReader::open(std::io::BufReader::with_capacity(1 << 20, f))?;
    while r.next_record()?.is_some() {}
    Ok(r.meta().clone())
}

/// openraft's `SnapshotData`: an open snapshot file. The leader streams
/// `current.snap` from it; a follower writes a received stream into a
/// temporary file in the snapshot directory, which the install renames to
/// `current.snap`. A temporary file that is never installed (a cut-off or
/// refused stream) is removed when this is dropped.
pub struct SnapshotData {
    file: tokio::fs::File,
    path: PathBuf,
    temp: bool,
}

impl SnapshotData {
    pub(super) fn new(file: tokio::fs::File, path: PathBuf, temp: bool) -> Self {
        Self { file, path, temp }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The file now has a permanent name: keep it when dropped.
    pub(super) fn keep(&mut self, path: PathBuf) {
        self.path = path;
        self.temp = false;
    }

    /// Flushes tokio's write buffer and fsyncs the file.
    pub async fn sync(&mut self) -> std::io::Result<()> {
        use tokio::io::AsyncWriteExt;
        self.file.flush().await?;
        self.file.sync_all().await
    }

    /// For a received file: fsyncs it and reads it end to end (every record,
    /// the count, the checksum; off the async workers), and checks that it
    /// carries `meta`. A leader is told at once that its stream was bad,
    /// rather than openraft's state-machine worker failing on it.
    pub async fn check(&mut self, meta: &SnapshotMeta<NodeId, Node>) -> std::io::Result<()> {
        self.sync().await?;
        let path = self.path.clone();
        let found = tokio::task::spawn_blocking(move || verify_snapshot_file(&path))
            .await
            .map_err(std::io::Error::other)??;
        if found != *meta {
            return Err(bad(format!(
                "the file carries snapshot {:?}, its stream's header says {:?}",
                found.signature(),
                meta.signature()
            )));
        }
        Ok(())
    }

    /// The file's length in bytes.
    pub async fn len(&self) -> std::io::Result<u64> {
        Ok(self.file.metadata().await?.len())
    }
}

impl Drop for SnapshotData {
    fn drop(&mut self) {
        if self.temp {
            // Best effort: `StateMachine::open` removes leftovers too.
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

impl std::fmt::Debug for SnapshotData {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SnapshotData")
            .field("path", &self.path)
            .field("temp", &self.temp)
            .finish()
    }
}

// The async I/O traits openraft requires of `SnapshotData`, passed to the file.
impl tokio::io::AsyncRead for SnapshotData {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.file).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for SnapshotData {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.file).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.file).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.file).poll_shutdown(cx)
    }
}

impl tokio::io::AsyncSeek for SnapshotData {
    fn start_seek(mut self: Pin<&mut Self>, position: std::io::SeekFrom) -> std::io::Result<()> {
        Pin::new(&mut self.file).start_seek(position)
    }

    fn poll_complete(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<u64>> {
        Pin::new(&mut self.file).poll_complete(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta() -> SnapshotMeta<NodeId, Node> {
        SnapshotMeta {
            snapshot_id: "3-17-0".into(),
            ..Default::default()
        }
    }

    fn file(records: &[(&[u8], &[u8])]) -> Vec<u8> {
        let mut w = SnapshotWriter::new(Vec::new(), &meta()).expect("header");
        for (k, v) in records {
            w.record(k, v).expect("record");
        }
        w.finish().expect("trailer").0
    }

    fn read_all(bytes: &[u8]) -> std::io::Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let mut r = SnapshotReader::open(bytes)?;
        let mut out = Vec::new();
        while let Some(kv) = r.next_record()? {
            out.push(kv);
        }
        Ok(out)
    }

    #[test]
    fn records_round_trip_with_their_meta() {
        let recs: [(&[u8], &[u8]); 3] = [(b"s/a", b"1"), (b"s/b", b""), (b"d/x", &[7; 300])];
        let bytes = file(&recs);
        assert_eq!(
            SnapshotReader::open(&bytes[..]).expect("open").meta(),
            &meta()
        );
        let got = read_all(&bytes).expect("read");
        let want: Vec<_> = recs.iter().map(|(k, v)| (k.to_vec(), v.to_vec())).collect();
        assert_eq!(got, want);
        assert_eq!(read_all(&file(&[])).expect("empty"), vec![]);
    }

    #[test]
    fn every_flipped_byte_and_every_truncation_is_refused() {
        let bytes = file(&[(b"s/a", b"one"), (b"s/b", b"two")]);
        for i in 0..bytes.len() {
            let mut b = bytes.clone();
            b[i] ^= 0x40;
            assert!(read_all(&b).is_err(), "a flip at byte {i} was read");
            assert!(read_all(&bytes[..i]).is_err(), "a cut at byte {i} was read");
        }
        let mut longer = bytes.clone();
        longer.push(0);
        let e = read_all(&longer).expect_err("trailing byte");
        assert!(
            e.to_string().contains("after the snapshot's trailer"),
            "{e}"
        );
    }

    #[test]
    fn a_forged_length_is_refused_before_anything_is_allocated() {
        let mut b = MAGIC.to_vec();
        b.extend_from_slice(&u32::MAX.to_le_bytes());
        let e = SnapshotReader::open(&b[..]).err().expect("huge meta");
        assert!(e.to_string().contains("passes the limit"), "{e}");
        let mut b = file(&[]);
        let trailer = b.len() - 13;
        b.truncate(trailer);
        b.push(TAG_RECORD);
        b.extend_from_slice(&u32::MAX.to_le_bytes());
        b.extend_from_slice(&0u32.to_le_bytes());
        let e = read_all(&b).expect_err("huge key");
        assert!(e.to_string().contains("passes the limit"), "{e}");
    }
}
