//! Rolling Parquet part files: temp name → fsync → rename → fsync directory.
//!
//! One open file per Kafka partition and date. A file holds records of its
//! partition between offsets `[first, last]`; a partition's open files are
//! committed together, as one contiguous range (records sent to the DLQ
//! inside it are simply in no file), so the manifest can say "everything
//! before `last + 1` is done" and a replay normally rewrites the same file:
//! names are deterministic, `part-<partition>-<first>-<last>.parquet`, under a Hive-style
//! directory `topic=<T>/date=<YYYY-MM-DD>/` that DuckDB, pyarrow and Spark read
//! as partition columns.

use crate::Error;
use crate::schema::{Meta, RecordSchema, Rows, Value};
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;
use storage::io::{Fs, WritableFile};

/// When to close a file.
#[derive(Clone, Copy, Debug)]
pub struct RollPolicy {
    pub max_rows: usize,
    pub max_bytes: u64,
    pub max_age: std::time::Duration,
    pub row_group_rows: usize,
}

impl Default for RollPolicy {
    fn default() -> Self {
        Self {
            max_rows: 1_000_000,
            max_bytes: 128 << 20,
            max_age: std::time::Duration::from_secs(1),
            row_group_rows: 64 * 1024,
        }
    }
}

/// A closed, durable part file, as the manifest records it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct FileCommit {
    /// Path relative to the output directory.
    pub path: String,
    pub partition: i32,
    pub first_offset: i64,
    pub last_offset: i64,
    pub rows: u64,
    pub bytes: u64,
    /// CRC32C of the whole file.
    pub crc32c: u32,
    /// The W3C `traceparent` of the commit's span when its trace was
    /// sampled: what a dataset snapshot's span links to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
}

/// A file being written for one partition.
pub struct PartFile {
    pub partition: i32,
    pub date: String,
    pub first_offset: i64,
    pub last_offset: i64,
    pub opened: Instant,
    rows: Rows,
    writer: ArrowWriter<BufWriter<WritableFile>>,
    /// The file layer every write, fsync, link and directory goes through
    /// (a test's power-loss layer sits in it).
    fs: Fs,
    tmp: PathBuf,
    /// This writer's unique token (pid-counter), for a fallback final name.
    token: String,
    /// Rows written (flushed + pending).
    pub total_rows: u64,
    /// Kafka timestamps of the rows, for the end-to-end latency histogram.
    pub record_ts_ms: Vec<i64>,
    /// Trace contexts of records that carried one (capped), for span links.
    pub links: Vec<opentelemetry::trace::SpanContext>,
    row_group_rows: usize,
}

impl std::fmt::Debug for PartFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PartFile")
            .field("partition", &self.partition)
            .field("first_offset", &self.first_offset)
            .field("last_offset", &self.last_offset)
            .finish_non_exhaustive()
    }
}

fn io<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> Error + 'a {
    move |source| Error::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// The file layer's error as this crate's (every `Fs` failure is an I/O
/// error naming its operation and path).
pub(crate) fn fs_err(e: storage::Error) -> Error {
    match e {
        storage::Error::Io { op, path, source } => Error::Io { op, path, source },
        other => Error::Io {
            op: "file layer",
            path: PathBuf::new(),
            source: std::io::Error::other(other.to_string()),
        },
    }
}

/// Whether a file-layer error is "it exists already".
fn already_exists(e: &storage::Error) -> bool {
    matches!(e, storage::Error::Io { source, .. } if source.kind() == std::io::ErrorKind::AlreadyExists)
}

static TMP_COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// `topic=T/date=D`.
pub fn dir_for(topic: &str, date: &str) -> PathBuf {
    PathBuf::from(format!("topic={topic}")).join(format!("date={date}"))
}

/// The final name of a part file.
pub fn file_name(partition: i32, first: i64, last: i64) -> String {
    format!("part-{partition}-{first}-{last}.parquet")
}

/// The UTC date of a millisecond timestamp.
pub fn date_of(ts_ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ts_ms)
        .map(|t| t.format("%Y-%m-%d").to_string())
        .unwrap_or_else(|| "1970-01-01".into())
}

/// Creates `dir` and its missing parents, fsyncing each new directory's
/// parent: a file renamed into `date=D/` is only as durable as the entry of
/// `date=D` itself in `topic=T/` (and so on up).
pub(crate) fn create_dir_durable(fs: &Fs, dir: &Path) -> Result<(), Error> {
    if dir.as_os_str().is_empty() || dir.is_dir() {
        return Ok(());
    }
    if let Some(parent) = dir.parent() {
        create_dir_durable(fs, parent)?;
    }
    match fs.create_dir(dir) {
        Ok(()) => {}
        // Another writer of the same output created it meanwhile and may
        // not have fsynced its parent yet: fsync it here too.
        Err(e) if already_exists(&e) => {}
        Err(e) => return Err(fs_err(e)),
    }
    let parent = match dir.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    fs.sync_dir(parent).map_err(fs_err)
}

/// Whether a live process holds `path` locked (an open part file's temp
/// file, see [`PartFile::create`]).
pub fn locked_by_a_writer(path: &Path) -> bool {
    let Ok(f) = File::open(path) else {
        return false;
    };
    let fd = std::os::fd::AsRawFd::as_raw_fd(&f);
    // SAFETY: flock(2) on a file descriptor we own; released when `f` closes.
    let rc = unsafe { libc::flock(fd, libc::LOCK_EX | libc::LOCK_NB) };
    rc != 0
}

/// fsync a directory so a rename or removal in it is durable (orphan
/// removal's; part files go through their [`Fs`]).
pub fn sync_dir(dir: &Path) -> Result<(), Error> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io("fsync directory", dir))
}

impl PartFile {
    /// Opens `<out>/topic=T/date=D/.part-<p>-<first>.parquet.tmp`, writing
    /// through `fs`.
    #[allow(clippy::too_many_arguments)]
    pub fn create(
        fs: &Fs,
        out: &Path,
        topic: &str,
        date: &str,
        partition: i32,
        first_offset: i64,
        schema: &RecordSchema,
        policy: &RollPolicy,
    ) -> Result<PartFile, Error> {
        let dir = out.join(dir_for(topic, date));
        create_dir_durable(fs, &dir)?;
        // The temp name is this writer's own (pid and a counter): with a
        // shared output directory a deposed owner and the new one may write
        // the same range at once, and must not write or rename each other's
        // file. Orphan removal still knows it by its `.part-<p>-` prefix.
        let n = TMP_COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let token = format!("{}-{n}", std::process::id());
        let tmp = dir.join(format!(
            ".part-{partition}-{first_offset}.{token}.parquet.tmp"
        ));
        let file = fs.create(&tmp).map_err(fs_err)?;
        // Held until the file is closed in `finish` (or this process dies):
        // orphan removal skips a temp file someone holds locked, so a
        // consumer that is only paused keeps its open file, and its commit is
        // then fenced instead of failing on a vanished file.
        // SAFETY: flock(2) on a file descriptor we own.
        unsafe {
            libc::flock(
                std::os::fd::AsRawFd::as_raw_fd(&file),
                libc::LOCK_EX | libc::LOCK_NB,
            );
        }
        let props = WriterProperties::builder()
            .set_compression(Compression::ZSTD(ZstdLevel::default()))
            .set_max_row_group_row_count(Some(policy.row_group_rows))
            .build();
        let writer = ArrowWriter::try_new(
            BufWriter::with_capacity(1 << 20, file),
            schema.arrow_schema(),
            Some(props),
        )
        .map_err(|e| Error::Parquet {
            path: tmp.clone(),
            reason: e.to_string(),
        })?;
        Ok(PartFile {
            partition,
            date: date.to_string(),
            first_offset,
            last_offset: first_offset - 1,
            opened: Instant::now(),
            rows: Rows::new(schema),
            writer,
            fs: fs.clone(),
            tmp,
            token,
            total_rows: 0,
            record_ts_ms: Vec::new(),
            links: Vec::new(),
            row_group_rows: policy.row_group_rows,
        })
    }

    /// Adds one record. `offset` must be greater than every offset before it.
    pub fn push(&mut self, values: Vec<Value>, meta: &Meta) -> Result<(), Error> {
        assert!(
            meta.offset > self.last_offset,
            "offsets must increase within a part file: {} after {}",
            meta.offset,
            self.last_offset
        );
        self.rows.push(values, meta);
        self.last_offset = meta.offset;
        self.total_rows += 1;
        if let Some(t) = meta.timestamp_ms {
            self.record_ts_ms.push(t);
        }
        if self.rows.len() >= self.row_group_rows.min(8192) {
            self.flush_rows()?;
        }
        Ok(())
    }

    /// Marks `offset` as covered without a row (a record sent to the DLQ).
    pub fn skip(&mut self, offset: i64) {
        if offset > self.last_offset {
            self.last_offset = offset;
        }
    }

    fn flush_rows(&mut self) -> Result<(), Error> {
        if self.rows.is_empty() {
            return Ok(());
        }
        let batch = self.rows.finish().map_err(|e| Error::Parquet {
            path: self.tmp.clone(),
            reason: e.to_string(),
        })?;
        self.writer.write(&batch).map_err(|e| Error::Parquet {
            path: self.tmp.clone(),
            reason: e.to_string(),
        })
    }

    /// Bytes written so far (encoded and buffered).
    pub fn bytes(&self) -> u64 {
        (self.writer.bytes_written() + self.writer.in_progress_size()) as u64
    }

    /// Whether the policy says this file is done.
    pub fn should_roll(&self, policy: &RollPolicy) -> bool {
        self.total_rows as usize >= policy.max_rows
            || self.bytes() >= policy.max_bytes
            || (self.total_rows > 0 && self.opened.elapsed() >= policy.max_age)
    }

    /// Closes the file: footer, fsync, rename to its final name, fsync the
    /// directory. Returns what the manifest records. A file with no rows (every
    /// record went to the DLQ) is still committed: it proves the range is done.
    ///
    /// The final name is taken without replacing anything (a hard link, then
    /// the temp name is removed): if the deterministic name exists, it is a
    /// file this process did not write (another consumer's, possibly listed
    /// in the manifest), so this one gets the name with its writer token
    /// appended instead of overwriting it.
    pub fn finish(mut self, out: &Path, topic: &str) -> Result<FileCommit, Error> {
        self.flush_rows()?;
        let tmp = self.tmp.clone();
        let perr = |e: parquet::errors::ParquetError| Error::Parquet {
            path: tmp.clone(),
            reason: e.to_string(),
        };
        let mut buf = self.writer.into_inner().map_err(perr)?;
        buf.flush().map_err(io("write", &tmp))?;
        let mut file = buf.into_inner().map_err(|e| Error::Io {
            op: "flush",
            path: tmp.clone(),
            source: e.into_error(),
        })?;
        file.sync().map_err(fs_err)?;
        // `file` (and with it the flock orphan removal respects) stays open
        // until the final name exists: dropped here, a new owner's orphan
        // removal could delete the temp file between the unlock and the
        // link.
        let bytes_on_disk = std::fs::read(&tmp).map_err(io("read back", &tmp))?;
        // Check the file on the way to the manifest: a footer that does not
        // parse or a row count that differs would be committed forever.
        let reader = parquet::file::reader::SerializedFileReader::new(bytes::Bytes::from(
            bytes_on_disk.clone(),
        ))
        .map_err(perr)?;
        let rows_in_file = parquet::file::reader::FileReader::metadata(&reader)
            .file_metadata()
            .num_rows() as u64;
        if rows_in_file != self.total_rows {
            return Err(Error::Parquet {
                path: tmp.clone(),
                reason: format!(
                    "file holds {rows_in_file} rows, {} were written",
                    self.total_rows
                ),
            });
        }
        let dir = dir_for(topic, &self.date);
        let mut rel = dir.join(file_name(
            self.partition,
            self.first_offset,
            self.last_offset,
        ));
        let mut fin = out.join(&rel);
        let fs = &self.fs;
        match fs.hard_link(&tmp, &fin) {
            Ok(()) => {}
            Err(e) if already_exists(&e) => {
                rel = dir.join(format!(
                    "part-{}-{}-{}.{}.parquet",
                    self.partition, self.first_offset, self.last_offset, self.token
                ));
                fin = out.join(&rel);
                tracing::warn!(path = %fin.display(), "the part file's name is taken (another consumer's file); using the writer's own name");
                fs.hard_link(&tmp, &fin).map_err(fs_err)?;
            }
            // A file system without hard links: rename (which replaces).
            // Any other failure (a full disk, a dead one) is the error.
            Err(storage::Error::Io { source, .. })
                if matches!(
                    source.kind(),
                    std::io::ErrorKind::Unsupported | std::io::ErrorKind::PermissionDenied
                ) =>
            {
                fs.rename(&tmp, &fin).map_err(fs_err)?
            }
            Err(e) => return Err(fs_err(e)),
        }
        drop(file);
        // (A missing temp file, after the rename above, is no error.)
        fs.remove(&tmp).map_err(fs_err)?;
        if let Some(dir) = fin.parent() {
            fs.sync_dir(dir).map_err(fs_err)?;
        }
        let commit = FileCommit {
            path: rel.to_string_lossy().into_owned(),
            partition: self.partition,
            first_offset: self.first_offset,
            last_offset: self.last_offset,
            rows: self.total_rows,
            bytes: bytes_on_disk.len() as u64,
            crc32c: crc32c::crc32c(&bytes_on_disk),
            traceparent: observe::traceparent_of(&tracing::Span::current()),
        };
        Ok(commit)
    }
}
