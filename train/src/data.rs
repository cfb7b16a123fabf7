//! The dataset: documents from ingest's Parquet (through its manifest), a
//! `.jsonl` or a `.txt` file; tokenized once into a memory-mapped cache;
//! packed into fixed-length windows; split into train and validation; read
//! in a seeded shuffled order whose position a checkpoint saves.
//!
//! ```text
//! manifest ─► part files ─► text column ─► tokenize (+EOS per document) ─► <cache>/<version>.tokens
//!                                                                            │ mmap
//!   [ train: windows of seq_len+1 tokens, stride seq_len ][ validation ] ◄───┘
//! ```

use std::path::{Path, PathBuf};

use rayon::prelude::*;

use crate::error::{Result, TrainError, io};
use crate::rng::Rng;

/// Where the documents come from.
#[derive(Clone, Debug)]
pub enum Source {
    /// An ingest output directory with its local manifest (`_manifest.jsonl`).
    LocalManifest { dir: PathBuf },
    /// An ingest output directory whose manifest is in the KV cluster
    /// (`ingest/<group>/<topic>/...`).
    KvManifest {
        dir: PathBuf,
        endpoints: Vec<String>,
        group: String,
        topic: String,
    },
    /// A list of Parquet files relative to `dir`.
    Files { dir: PathBuf, files: Vec<String> },
    /// A dataset snapshot in the KV cluster (`datasets/<topic>/<name>`): its
    /// files under `dir` (the ingest output), each checked against the
    /// CRC32C the snapshot froze.
    Snapshot {
        dir: PathBuf,
        endpoints: Vec<String>,
        topic: String,
        name: String,
    },
    /// One JSON object per line, the text under `column`.
    Jsonl(PathBuf),
    /// A plain text file: one document.
    Text(PathBuf),
}

impl Source {
    /// The source a `--data PATH` names: a directory is an ingest output, a
    /// `.jsonl` file JSON lines, anything else plain text.
    pub fn from_path(path: &Path) -> Source {
        if path.is_dir() {
            Source::LocalManifest {
                dir: path.to_path_buf(),
            }
        } else if path.extension().is_some_and(|e| e == "jsonl") {
            Source::Jsonl(path.to_path_buf())
        } else {
            Source::Text(path.to_path_buf())
        }
    }

    fn name(&self) -> String {
        match self {
            Source::LocalManifest { dir } | Source::Files { dir, .. } => dir.display().to_string(),
            Source::KvManifest { group, topic, .. } => format!("kv://ingest/{group}/{topic}"),
            Source::Snapshot { topic, name, .. } => format!("kv://datasets/{topic}/{name}"),
            Source::Jsonl(p) | Source::Text(p) => p.display().to_string(),
        }
    }

    fn err(&self, reason: impl Into<String>) -> TrainError {
        TrainError::Data {
            source_name: self.name(),
            reason: reason.into(),
        }
    }
}

/// The documents of a source and its version: a hash of exactly what was
/// read (the committed files and their checksums, or the file's bytes), so
/// the token cache and a checkpoint's lineage name one dataset.
pub fn documents(src: &Source, column: &str) -> Result<(Vec<String>, String)> {
    match src {
        Source::LocalManifest { dir } => {
            let state = stream::manifest::read_local(dir).map_err(|e| src.err(e.to_string()))?;
            parquet_documents(src, dir, &listed(&state.files), column)
        }
        Source::KvManifest {
            dir,
            endpoints,
            group,
            topic,
        } => {
            use stream::manifest::Manifest;
            let mut m = stream::manifest::KvManifest::new(endpoints.clone(), group, topic)
                .map_err(|e| src.err(e.to_string()))?;
            let state = m.load().map_err(|e| src.err(e.to_string()))?;
            parquet_documents(src, dir, &listed(&state.files), column)
        }
        Source::Snapshot {
            dir,
            endpoints,
            topic,
            name,
        } => {
            let snap = stream::snapshot::load(endpoints, topic, name)
                .map_err(|e| src.err(e.to_string()))?;
            // The reading span (the training run's) links to the span that
            // froze the snapshot: data lineage in the trace store too.
            if let Some(tp) = &snap.traceparent {
                observe::link(&tracing::Span::current(), tp);
            }
            let (docs, _) = parquet_documents(src, dir, &listed(&snap.files), column)?;
            // The version a checkpoint records is the snapshot's name: it
            // is immutable, so the name is the dataset.
            Ok((docs, stream::snapshot::key(topic, name)))
        }
        Source::Files { dir, files } => {
            let files: Vec<(String, u32)> = files
                .iter()
                .map(|p| {
                    let bytes = std::fs::read(dir.join(p)).map_err(io("read", dir.join(p)))?;
                    Ok((p.clone(), crc32c::crc32c(&bytes)))
                })
                .collect::<Result<_>>()?;
            parquet_documents(src, dir, &files, column)
        }
        Source::Jsonl(path) => {
            let bytes = std::fs::read(path).map_err(io("read", path))?;
            let text = String::from_utf8(bytes.clone()).map_err(|e| src.err(e.to_string()))?;
            let mut docs = Vec::new();
            for (i, line) in text
                .lines()
                .enumerate()
                .filter(|(_, l)| !l.trim().is_empty())
            {
                let v: serde_json::Value = serde_json::from_str(line)
                    .map_err(|e| src.err(format!("line {}: {e}", i + 1)))?;
                let t = v.get(column).and_then(|t| t.as_str()).ok_or_else(|| {
                    src.err(format!("line {}: no string field {column:?}", i + 1))
                })?;
                docs.push(t.to_string());
            }
            Ok((
                docs,
                format!("jsonl-{:08x}-{}", crc32c::crc32c(&bytes), bytes.len()),
            ))
        }
        Source::Text(path) => {
            let bytes = std::fs::read(path).map_err(io("read", path))?;
            let version = format!("text-{:08x}-{}", crc32c::crc32c(&bytes), bytes.len());
            let text = String::from_utf8(bytes).map_err(|e| src.err(e.to_string()))?;
            Ok((vec![text], version))
        }
    }
}

/// (path, CRC32C) of each committed file, as the manifest or snapshot lists them.
fn listed(files: &[stream::writer::FileCommit]) -> Vec<(String, u32)> {
    files.iter().map(|f| (f.path.clone(), f.crc32c)).collect()
}

/// The text column of each listed part file, in manifest order. Each file's
/// CRC32C is checked against the manifest's: a file changed after commit is
/// an error, not silently different data.
fn parquet_documents(
    src: &Source,
    dir: &Path,
    files: &[(String, u32)],
    column: &str,
) -> Result<(Vec<String>, String)> {
    use arrow::array::{Array, LargeStringArray, StringArray};
    if files.is_empty() {
        return Err(src.err("the manifest lists no committed files"));
    }
    let mut docs = Vec::new();
    let mut ident = String::new();
    for (rel, crc) in files {
        let path = dir.join(rel);
        let bytes = std::fs::read(&path).map_err(io("read", &path))?;
        let actual = crc32c::crc32c(&bytes);
        if actual != *crc {
            return Err(src.err(format!(
                "{rel}: CRC32C {actual:08x}, the manifest says {crc:08x}"
            )));
        }
        ident.push_str(&format!("{rel}:{crc:08x};"));
        let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(
            bytes::Bytes::from(bytes),
        )
        .and_then(|b| b.build())
        .map_err(|e| src.err(format!("{rel}: {e}")))?;
        for batch in reader {
            let batch = batch.map_err(|e| src.err(format!("{rel}: {e}")))?;
            let col = batch
                .column_by_name(column)
                .ok_or_else(|| src.err(format!("{rel}: no column {column:?}")))?;
            let push = |i: usize, s: &str, docs: &mut Vec<String>| {
                let _ = i;
                if !s.is_empty() {
                    docs.push(s.to_string());
                }
            };
            if let Some(a) = col.as_any().downcast_ref::<StringArray>() {
                for i in (0..a.len()).filter(|&i| a.is_valid(i)) {
                    push(i, a.value(i), &mut docs);
                }
            } else if let Some(a) = col.as_any().downcast_ref::<LargeStringArray>() {
                for i in (0..a.len()).filter(|&i| a.is_valid(i)) {
                    push(i, a.value(i), &mut docs);
                }
            } else {
                return Err(src.err(format!(
                    "{rel}: column {column:?} is {:?}, not a string",
                    col.data_type()
                )));
            }
        }
    }
    Ok((
        docs,
        format!(
            "parquet-{:08x}-{}",
            crc32c::crc32c(ident.as_bytes()),
            files.len()
        ),
    ))
}

/// A hash of the documents' text (CRC32C over each document and its length),
/// with the total length: the token cache's key, so two datasets with the
/// same text (a second demo run's fresh snapshot of the same corpus) share
/// one cache.
pub fn content_key(docs: &[String]) -> String {
    let mut crc = 0u32;
    let mut len = 0usize;
    for d in docs {
        crc = crc32c::crc32c_append(crc, d.as_bytes());
        crc = crc32c::crc32c_append(crc, &(d.len() as u64).to_le_bytes());
        len += d.len();
    }
    format!("text-{crc:08x}-{len}")
}

/// Token ids: documents joined, each followed by EOS.
pub fn tokenize(docs: &[String], tok: &model::tokenizer::Tokenizer) -> Result<Vec<u32>> {
    let eos = *tok
        .eos_ids()
        .first()
        .ok_or_else(|| crate::error::config_err("tokenizer", "has no EOS id"))?;
    let parts: Vec<Vec<u32>> = docs
        .par_iter()
        .map(|d| tok.encode(d, false).map_err(TrainError::from))
        .collect::<Result<_>>()?;
    let mut ids = Vec::with_capacity(parts.iter().map(Vec::len).sum::<usize>() + parts.len());
    for p in parts {
        ids.extend(p);
        ids.push(eos);
    }
    Ok(ids)
}

/// The token cache file: a 32-byte header (magic, count, CRC32C of the ids)
/// then the ids as little-endian u32, memory-mapped on read.
const MAGIC: &[u8; 8] = b"MLSTOK01";
const HEADER: usize = 32;

/// Token ids, memory-mapped from the cache or held in memory.
#[derive(Debug)]
pub enum Tokens {
    Mapped { map: memmap2::Mmap, n: usize },
    Owned(Vec<u32>),
}

impl Tokens {
    pub fn ids(&self) -> &[u32] {
        match self {
            Tokens::Owned(v) => v,
            Tokens::Mapped { map, n } => {
                let (pre, ids, _) = {
                    // SAFETY: u32 has no invalid bit patterns; align_to puts
                    // any misaligned bytes in `pre`, checked empty below.
                    unsafe { map[HEADER..HEADER + 4 * n].align_to::<u32>() }
                };
                assert!(pre.is_empty(), "the token cache is page-aligned");
                ids
            }
        }
    }
}

/// Loads `<cache_dir>/<key>.tokens` when present and intact, else runs
/// `make`, writes the file (temp → fsync → rename → fsync dir) and maps it.
/// Returns the tokens and whether the cache was hit.
pub fn cached_tokens(
    cache_dir: &Path,
    key: &str,
    make: impl FnOnce() -> Result<Vec<u32>>,
) -> Result<(Tokens, bool)> {
    let path = cache_dir.join(format!("{key}.tokens"));
    if let Some(t) = read_cache(&path)? {
        return Ok((t, true));
    }
    let ids = make()?;
    std::fs::create_dir_all(cache_dir).map_err(io("create", cache_dir))?;
    let mut bytes = Vec::with_capacity(HEADER + 4 * ids.len());
    bytes.extend_from_slice(MAGIC);
    bytes.extend_from_slice(&(ids.len() as u64).to_le_bytes());
    let body: Vec<u8> = ids.iter().flat_map(|i| i.to_le_bytes()).collect();
    bytes.extend_from_slice(&crc32c::crc32c(&body).to_le_bytes());
    bytes.resize(HEADER, 0);
    bytes.extend_from_slice(&body);
    crate::fsio::write_atomic(&path, &bytes)?;
    match read_cache(&path)? {
        Some(t) => Ok((t, false)),
        None => Err(TrainError::Data {
            source_name: path.display().to_string(),
            reason: "the token cache just written does not read back".into(),
        }),
    }
}

fn read_cache(path: &Path) -> Result<Option<Tokens>> {
    let file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io("open", path)(e)),
    };
    // SAFETY: a private read-only map of a file this process wrote through
    // an atomic rename; nothing rewrites it in place.
    let map = unsafe { memmap2::Mmap::map(&file) }.map_err(io("mmap", path))?;
    if map.len() < HEADER || &map[..8] != MAGIC {
        tracing::warn!(path = %path.display(), "token cache has a bad header; rebuilding");
        return Ok(None);
    }
    let n = u64::from_le_bytes(map[8..16].try_into().expect("8 bytes")) as usize;
    let crc = u32::from_le_bytes(map[16..20].try_into().expect("4 bytes"));
    if n.checked_mul(4).and_then(|b| b.checked_add(HEADER)) != Some(map.len())
        || crc32c::crc32c(&map[HEADER..]) != crc
    {
        tracing::warn!(path = %path.display(), "token cache is truncated or corrupt; rebuilding");
        return Ok(None);
    }
    Ok(Some(Tokens::Mapped { map, n }))
}

/// The packed dataset: training windows and validation windows.
#[derive(Debug)]
pub struct Dataset {
    pub tokens: Tokens,
    pub version: String,
    pub seq_len: usize,
    /// Tokens [0, split) train; [split, len) validate.
    pub split: usize,
}

impl Dataset {
    /// `val_fraction` of the tokens (at the end) are held out.
    pub fn new(
        tokens: Tokens,
        version: String,
        seq_len: usize,
        val_fraction: f64,
    ) -> Result<Dataset> {
        let len = tokens.ids().len();
        let split = ((len as f64) * (1.0 - val_fraction)).floor() as usize;
        let d = Dataset {
            tokens,
            version,
            seq_len,
            split,
        };
        if d.train_windows() == 0 || (val_fraction > 0.0 && d.val_windows() == 0) {
            return Err(TrainError::Data {
                source_name: d.version.clone(),
                reason: format!(
                    "{len} tokens is too few for windows of {} (train {}, validation {})",
                    seq_len + 1,
                    d.train_windows(),
                    d.val_windows()
                ),
            });
        }
        Ok(d)
    }

    pub fn train_windows(&self) -> usize {
        self.split.saturating_sub(1) / self.seq_len
    }

    pub fn val_windows(&self) -> usize {
        (self.tokens.ids().len() - self.split).saturating_sub(1) / self.seq_len
    }

    /// Train window `i`: (inputs, targets), seq_len each, targets shifted by one.
    pub fn train_window(&self, i: usize) -> (&[u32], &[u32]) {
        let s = i * self.seq_len;
        let w = &self.tokens.ids()[s..s + self.seq_len + 1];
        (&w[..self.seq_len], &w[1..])
    }

    pub fn val_window(&self, i: usize) -> (&[u32], &[u32]) {
        let s = self.split + i * self.seq_len;
        let w = &self.tokens.ids()[s..s + self.seq_len + 1];
        (&w[..self.seq_len], &w[1..])
    }
}

/// Where the loader is: a checkpoint saves it so a resumed run reads the
/// windows the uninterrupted run would have read next.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LoaderPos {
    pub epoch: u64,
    pub cursor: usize,
}

/// Shuffled windows, one epoch's permutation at a time (seed + epoch).
#[derive(Debug)]
pub struct Loader {
    seed: u64,
    pub pos: LoaderPos,
    perm: Vec<u32>,
}

impl Loader {
    pub fn new(n_windows: usize, seed: u64, pos: LoaderPos) -> Loader {
        let perm = permutation(n_windows, seed, pos.epoch);
        Loader { seed, pos, perm }
    }

    /// The window indices of the next global batch (`count` windows: every
    /// micro-batch of every rank; each rank takes its slots from this list).
    pub fn next(&mut self, count: usize) -> Vec<usize> {
        let mut out = Vec::with_capacity(count);
        while out.len() < count {
            if self.pos.cursor >= self.perm.len() {
                self.pos.epoch += 1;
                self.pos.cursor = 0;
                self.perm = permutation(self.perm.len(), self.seed, self.pos.epoch);
            }
            out.push(self.perm[self.pos.cursor] as usize);
            self.pos.cursor += 1;
        }
        out
    }
}

fn permutation(n: usize, seed: u64, epoch: u64) -> Vec<u32> {
    let mut p: Vec<u32> = (0..n as u32).collect();
    Rng::new(seed ^ epoch.wrapping_mul(0x9E37_79B9_7F4A_7C15)).shuffle(&mut p);
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loader_resumes_where_it_stopped_and_covers_each_epoch_once() {
        let mut a = Loader::new(
            10,
            5,
            LoaderPos {
                epoch: 0,
                cursor: 0,
            },
        );
        let first: Vec<usize> = a.next(7);
        let pos = a.pos.clone();
        let rest_a = a.next(9);
        let mut b = Loader::new(10, 5, pos);
        assert_eq!(b.next(9), rest_a);
        let mut epoch0: Vec<usize> = first
            .into_iter()
            .chain(rest_a[..3].iter().copied())
            .collect();
        epoch0.sort_unstable();
        assert_eq!(epoch0, (0..10).collect::<Vec<_>>());
    }

    #[test]
    fn token_cache_round_trips_and_a_corrupt_cache_is_rebuilt() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ids: Vec<u32> = (0..1000).map(|i| i * 7 % 513).collect();
        let (t, hit) = cached_tokens(dir.path(), "k", || Ok(ids.clone())).expect("write");
        assert!(!hit);
        assert_eq!(t.ids(), &ids[..]);
        let (t, hit) = cached_tokens(dir.path(), "k", || panic!("cache should hit")).expect("read");
        assert!(hit);
        assert_eq!(t.ids(), &ids[..]);
        // Flip one id's byte: the CRC catches it and the cache is rebuilt.
        let path = dir.path().join("k.tokens");
        let mut bytes = std::fs::read(&path).expect("read");
        bytes[HEADER + 5] ^= 1;
        std::fs::write(&path, bytes).expect("write");
        let (t, hit) = cached_tokens(dir.path(), "k", || Ok(ids.clone())).expect("rebuild");
        assert!(!hit);
        assert_eq!(t.ids(), &ids[..]);
    }
}
