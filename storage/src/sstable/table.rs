use std::cmp::Ordering;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::block::{Block, BlockBuilder};
use super::bloom::{self, Bloom};
use super::cache::BlockCache;
use crate::coding::{crc32c, get_u32, get_u64, get_varint, put_u32, put_u64, put_varint};
use crate::io::{Fs, WritableFile};
use crate::key::{self, Kind};
use crate::memtable::Lookup;
use crate::options::Compression;
use crate::{Error, Result};

pub const FOOTER_LEN: usize = 56;
const MAGIC: u64 = u64::from_le_bytes(*b"mlstkSST");
const FORMAT_VERSION: u32 = 1;
const BLOCK_TRAILER: usize = 5;
const TYPE_RAW: u8 = 0;
const TYPE_LZ4: u8 = 1;

/// `NNNNNN.sst`
pub fn sst_path(dir: &Path, number: u64) -> PathBuf {
    dir.join(format!("{number:06}.sst"))
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Handle {
    offset: u64,
    size: u64,
}

/// What a finished table holds (recorded in the manifest).
#[derive(Clone, Debug)]
pub struct TableInfo {
    pub number: u64,
    pub file_bytes: u64,
    pub smallest: Vec<u8>,
    pub largest: Vec<u8>,
    pub entries: u64,
}

/// Writes one table. Entries must arrive in internal-key order.
#[derive(Debug)]
pub struct TableBuilder {
    file: WritableFile,
    number: u64,
    offset: u64,
    block_bytes: usize,
    compression: Compression,
    bloom_bits_per_key: usize,
    data: BlockBuilder,
    index: BlockBuilder,
    key_hashes: Vec<u64>,
    last_user_key: Vec<u8>,
    smallest: Vec<u8>,
    largest: Vec<u8>,
    entries: u64,
    scratch: Vec<u8>,
}

impl TableBuilder {
    pub fn create(fs: &Fs, dir: &Path, number: u64, opts: &crate::Options) -> Result<Self> {
        Ok(Self {
            file: fs.create(&sst_path(dir, number))?,
            number,
            offset: 0,
            block_bytes: opts.block_bytes,
            compression: opts.compression,
            bloom_bits_per_key: opts.bloom_bits_per_key,
            data: BlockBuilder::new(opts.block_restart_interval),
            // Index keys are looked up by binary search over a decoded vector,
            // so restarts there only cost space.
            index: BlockBuilder::new(1),
            key_hashes: Vec::new(),
            last_user_key: Vec::new(),
            smallest: Vec::new(),
            largest: Vec::new(),
            entries: 0,
            scratch: Vec::new(),
        })
    }

    pub fn add(&mut self, ikey: &[u8], value: &[u8]) -> Result<()> {
        debug_assert!(
            self.entries == 0 || key::compare(&self.largest, ikey) == Ordering::Less,
            "table keys out of order"
        );
        if self.entries == 0 {
            self.smallest = ikey.to_vec();
        }
        let uk = key::user_key(ikey);
        if self.entries == 0 || uk != self.last_user_key.as_slice() {
            self.key_hashes.push(bloom::hash(uk));
            self.last_user_key.clear();
            self.last_user_key.extend_from_slice(uk);
        }
        self.largest.clear();
        self.largest.extend_from_slice(ikey);
        self.data.add(ikey, value);
        self.entries += 1;
        if self.data.estimated_len() >= self.block_bytes {
            self.flush_data_block()?;
        }
        Ok(())
    }

    /// Bytes written so far plus the open block.
    pub fn estimated_len(&self) -> u64 {
        self.offset + self.data.estimated_len() as u64
    }

    pub fn entries(&self) -> u64 {
        self.entries
    }

    pub fn number(&self) -> u64 {
        self.number
    }

    fn write_block(&mut self, contents: &[u8], compress: bool) -> Result<Handle> {
        let (body, ty): (Vec<u8>, u8) = match (compress, self.compression) {
            (true, Compression::Lz4) => {
                let c = lz4_flex::block::compress_prepend_size(contents);
                // Keep the raw block when compression does not pay (< 12.5% saved).
                if c.len() < contents.len() - contents.len() / 8 {
                    (c, TYPE_LZ4)
                } else {
                    (contents.to_vec(), TYPE_RAW)
                }
            }
            _ => (contents.to_vec(), TYPE_RAW),
        };
        self.scratch.clear();
        self.scratch.extend_from_slice(&body);
        self.scratch.push(ty);
        let crc = crc32c(&self.scratch);
        put_u32(&mut self.scratch, crc);
        let handle = Handle {
            offset: self.offset,
            size: body.len() as u64,
        };
        let bytes = std::mem::take(&mut self.scratch);
        let r = self.file.write_all(&bytes);
        self.scratch = bytes;
        r?;
        self.offset += (body.len() + BLOCK_TRAILER) as u64;
        Ok(handle)
    }

    fn flush_data_block(&mut self) -> Result<()> {
        if self.data.is_empty() {
            return Ok(());
        }
        let last = self.data.last_key().to_vec();
        let contents = self.data.finish();
        let h = self.write_block(&contents, true)?;
        let mut v = Vec::with_capacity(10);
        put_varint(&mut v, h.offset);
        put_varint(&mut v, h.size);
        self.index.add(&last, &v);
        Ok(())
    }

    /// Writes filter, index and footer, fsyncs, and returns what the manifest
    /// records. An empty table is an error: callers never build one.
    pub fn finish(mut self) -> Result<TableInfo> {
        if self.entries == 0 {
            return Err(Error::InvalidOptions(format!(
                "table {} finished with no entries",
                self.number
            )));
        }
        self.flush_data_block()?;
        let filter = if self.bloom_bits_per_key > 0 {
            bloom::build(&self.key_hashes, self.bloom_bits_per_key)
        } else {
            Vec::new()
        };
        let fh = self.write_block(&filter, false)?;
        let index = self.index.finish();
        let ih = self.write_block(&index, false)?;
        let mut footer = Vec::with_capacity(FOOTER_LEN);
        put_u64(&mut footer, fh.offset);
        put_u64(&mut footer, fh.size);
        put_u64(&mut footer, ih.offset);
        put_u64(&mut footer, ih.size);
        put_u64(&mut footer, self.entries);
        put_u32(&mut footer, FORMAT_VERSION);
        let crc = crc32c(&footer);
        put_u32(&mut footer, crc);
        put_u64(&mut footer, MAGIC);
        debug_assert_eq!(footer.len(), FOOTER_LEN);
        self.file.write_all(&footer)?;
        self.file.sync()?;
        Ok(TableInfo {
            number: self.number,
            file_bytes: self.offset + FOOTER_LEN as u64,
            smallest: self.smallest,
            largest: self.largest,
            entries: self.entries,
        })
    }
}

/// Outcome of a table probe, for read-amplification and bloom statistics.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Probe {
    /// The bloom filter ruled the table out (no block read).
    BloomNegative,
    /// The filter said maybe and the key was found.
    Hit,
    /// The filter said maybe (or there is none) and the key was not there.
    Miss { filter_said_maybe: bool },
}

/// An open table. Index and filter stay in memory; data blocks go through the
/// shared block cache.
#[derive(Debug)]
pub struct Table {
    number: u64,
    path: PathBuf,
    file: File,
    file_bytes: u64,
    entries: u64,
    index: Vec<(Vec<u8>, Handle)>,
    bloom: Option<Bloom>,
    cache: Arc<BlockCache>,
}

fn read_exact(file: &File, path: &Path, offset: u64, len: usize) -> Result<Vec<u8>> {
    let mut buf = vec![0u8; len];
    file.read_exact_at(&mut buf, offset).map_err(|e| {
        if e.kind() == std::io::ErrorKind::UnexpectedEof {
            Error::corruption(path, offset, format!("file ends inside a {len} byte read"))
        } else {
            Error::io("read", path, e)
        }
    })?;
    Ok(buf)
}

impl Table {
    pub fn open(path: &Path, number: u64, cache: Arc<BlockCache>) -> Result<Table> {
        let file = File::open(path).map_err(|e| Error::io("open table", path, e))?;
        let file_bytes = file
            .metadata()
            .map_err(|e| Error::io("stat table", path, e))?
            .len();
        if file_bytes < FOOTER_LEN as u64 {
            return Err(Error::corruption(
                path,
                0,
                format!("{file_bytes} bytes is shorter than the footer"),
            ));
        }
        let foff = file_bytes - FOOTER_LEN as u64;
        let f = read_exact(&file, path, foff, FOOTER_LEN)?;
        let field = |i: usize| get_u64(&f, i * 8).unwrap_or(0);
        if get_u64(&f, 48) != Some(MAGIC) {
            return Err(Error::corruption(path, foff + 48, "bad table magic number"));
        }
        let stored = get_u32(&f, 44).unwrap_or(0);
        if crc32c(&f[..44]) != stored {
            return Err(Error::corruption(path, foff, "footer checksum mismatch"));
        }
        if get_u32(&f, 40) != Some(FORMAT_VERSION) {
            return Err(Error::corruption(
                path,
                foff + 40,
                format!("unsupported table format version {:?}", get_u32(&f, 40)),
            ));
        }
        let fh = Handle {
            offset: field(0),
            size: field(1),
        };
        let ih = Handle {
            offset: field(2),
            size: field(3),
        };
        for (what, h) in [("filter", fh), ("index", ih)] {
            if h.offset.saturating_add(h.size + BLOCK_TRAILER as u64) > foff {
                return Err(Error::corruption(
                    path,
                    foff,
                    format!("{what} handle {h:?} points past the data"),
                ));
            }
        }
        let mut t = Table {
            number,
            path: path.to_path_buf(),
            file,
            file_bytes,
            entries: field(4),
            index: Vec::new(),
            bloom: None,
            cache,
        };
        let filter = t.read_raw(fh)?;
        if !filter.is_empty() {
            t.bloom = Some(
                Bloom::parse(filter)
                    .ok_or_else(|| Error::corruption(path, fh.offset, "malformed bloom filter"))?,
            );
        }
        let index_block = Block::parse(t.read_raw(ih)?)
            .map_err(|r| Error::corruption(path, ih.offset, format!("index block: {r}")))?;
        let entries = index_block
            .entries()
            .map_err(|r| Error::corruption(path, ih.offset, format!("index block: {r}")))?;
        for (k, v) in entries {
            let mut p = 0;
            let h = match (get_varint(&v, &mut p), get_varint(&v, &mut p)) {
                (Some(offset), Some(size)) if offset.saturating_add(size) <= fh.offset => {
                    Handle { offset, size }
                }
                _ => {
                    return Err(Error::corruption(
                        path,
                        ih.offset,
                        "index entry with a bad block handle",
                    ));
                }
            };
            t.index.push((k, h));
        }
        if t.index.is_empty() {
            return Err(Error::corruption(
                path,
                ih.offset,
                "table has no data blocks",
            ));
        }
        Ok(t)
    }

    pub fn number(&self) -> u64 {
        self.number
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn file_bytes(&self) -> u64 {
        self.file_bytes
    }

    pub fn entries(&self) -> u64 {
        self.entries
    }

    pub fn num_blocks(&self) -> usize {
        self.index.len()
    }

    /// Reads a block's contents, verifying its checksum and decompressing.
    fn read_raw(&self, h: Handle) -> Result<Vec<u8>> {
        let len = usize::try_from(h.size).map_err(|_| {
            Error::corruption(
                &self.path,
                h.offset,
                format!("block size {} too large", h.size),
            )
        })?;
        let mut buf = read_exact(&self.file, &self.path, h.offset, len + BLOCK_TRAILER)?;
        let stored = get_u32(&buf, len + 1).unwrap_or(0);
        let computed = crc32c(&buf[..len + 1]);
        if stored != computed {
            return Err(Error::corruption(
                &self.path,
                h.offset,
                format!(
                    "block checksum mismatch (stored {stored:#010x}, computed {computed:#010x})"
                ),
            ));
        }
        let ty = buf[len];
        buf.truncate(len);
        match ty {
            TYPE_RAW => Ok(buf),
            TYPE_LZ4 => lz4_flex::block::decompress_size_prepended(&buf)
                .map_err(|e| Error::corruption(&self.path, h.offset, format!("lz4 block: {e}"))),
            other => Err(Error::corruption(
                &self.path,
                h.offset,
                format!("unknown block type {other}"),
            )),
        }
    }

    fn data_block(&self, i: usize) -> Result<Arc<Block>> {
        let h = self.index[i].1;
        let key = (self.number, h.offset);
        if let Some(b) = self.cache.get(&key) {
            return Ok(b);
        }
        let block = Block::parse(self.read_raw(h)?)
            .map_err(|r| Error::corruption(&self.path, h.offset, format!("data block: {r}")))?;
        let block = Arc::new(block);
        self.cache.insert(key, block.clone());
        Ok(block)
    }

    /// Index of the first data block whose last key is >= `target`, or
    /// `num_blocks()` when every key in the table is smaller.
    pub fn block_for(&self, target: &[u8]) -> usize {
        self.index
            .partition_point(|(last, _)| key::compare(last, target) == Ordering::Less)
    }

    /// Entries of data block `i`, decoded.
    pub fn block_entries(&self, i: usize) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let off = self.index[i].1.offset;
        self.data_block(i)?
            .entries()
            .map_err(|r| Error::corruption(&self.path, off, format!("data block: {r}")))
    }

    /// The newest version of `user_key` at or below `seq` in this table.
    pub fn get(&self, user_key: &[u8], seq: u64) -> Result<(Lookup, Probe)> {
        let maybe = match &self.bloom {
            Some(b) => {
                if !b.may_contain(bloom::hash(user_key)) {
                    return Ok((Lookup::Absent, Probe::BloomNegative));
                }
                true
            }
            None => false,
        };
        let miss = Probe::Miss {
            filter_said_maybe: maybe,
        };
        let target = key::seek_key(user_key, seq);
        let i = self.block_for(&target);
        if i == self.index.len() {
            return Ok((Lookup::Absent, miss));
        }
        let off = self.index[i].1.offset;
        let found = self
            .data_block(i)?
            .seek(&target, key::compare)
            .map_err(|r| Error::corruption(&self.path, off, format!("data block: {r}")))?;
        match found.as_ref().and_then(|(k, _)| key::parse(k)) {
            Some((uk, _, kind)) if uk == user_key => {
                let Some((_, v)) = found else {
                    return Ok((Lookup::Absent, miss));
                };
                Ok(match kind {
                    Kind::Put => (Lookup::Found(v), Probe::Hit),
                    Kind::Delete => (Lookup::Deleted, Probe::Hit),
                })
            }
            _ => Ok((Lookup::Absent, miss)),
        }
    }

    /// Reads and checks every block: (data blocks, entries).
    pub fn verify(&self) -> Result<(usize, u64)> {
        let mut n = 0u64;
        let mut prev: Option<Vec<u8>> = None;
        for i in 0..self.index.len() {
            for (k, _) in self.block_entries(i)? {
                if key::parse(&k).is_none() {
                    return Err(Error::corruption(
                        &self.path,
                        self.index[i].1.offset,
                        "entry with a malformed internal key",
                    ));
                }
                if let Some(p) = &prev
                    && key::compare(p, &k) != Ordering::Less
                {
                    return Err(Error::corruption(
                        &self.path,
                        self.index[i].1.offset,
                        "keys out of order",
                    ));
                }
                prev = Some(k);
                n += 1;
            }
        }
        if n != self.entries {
            return Err(Error::corruption(
                &self.path,
                self.file_bytes - FOOTER_LEN as u64,
                format!("footer says {} entries, blocks hold {n}", self.entries),
            ));
        }
        Ok((self.index.len(), n))
    }
}
