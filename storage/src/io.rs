//! The file layer every write goes through, with a fault-injection hook.
//!
//! The engine never writes through `std::fs` directly: it uses [`Fs`], which asks
//! the optional [`FaultInjector`] before each create, write, fsync, rename and
//! remove. Tests use the hook to make those calls fail and check that the error
//! reaches the caller and that a reopen finds a consistent database. It is a test
//! double for faults only: the bytes still go to real files.
//!
//! The optional [`PowerLoss`] layer records what each fsync made durable, so a
//! test can cut the power and see the disk a real power cut would leave
//! (see [`crate::power_loss`]).

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::MutexGuard;

use crate::power_loss::{PowerLoss, State};
use crate::{Error, Result};

/// A file-system operation the engine is about to perform.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum IoOp {
    Create,
    Write,
    Sync,
    Rename,
    Remove,
    SyncDir,
    /// A hard link (a second name for an existing file).
    Link,
    CreateDir,
}

/// Decides whether an operation fails. Return `Err` to fail it.
pub trait FaultInjector: Send + Sync + std::fmt::Debug {
    fn before(&self, op: IoOp, path: &Path) -> std::io::Result<()>;
}

/// The engine's handle on the file system.
#[derive(Clone, Debug, Default)]
pub struct Fs {
    fault: Option<Arc<dyn FaultInjector>>,
    power: Option<Arc<PowerLoss>>,
}

impl Fs {
    pub fn new(fault: Option<Arc<dyn FaultInjector>>) -> Self {
        Self { fault, power: None }
    }

    /// Records every operation in `power` (a test's simulated power cut).
    pub fn with_power_loss(mut self, power: Option<Arc<PowerLoss>>) -> Self {
        self.power = power;
        self
    }

    /// Asks the fault injector and the power-loss layer whether `op` may
    /// run. The returned guard holds the power-loss layer's lock until the
    /// caller has done the operation and recorded it: a cut cannot fall
    /// between the two.
    fn check(
        &self,
        op: IoOp,
        path: &Path,
        what: &'static str,
    ) -> Result<Option<MutexGuard<'_, State>>> {
        let guard = match &self.power {
            Some(p) => {
                let mut g = p.lock();
                g.check().map_err(|e| Error::io(what, path, e))?;
                Some(g)
            }
            None => None,
        };
        if let Some(f) = &self.fault {
            f.before(op, path).map_err(|e| Error::io(what, path, e))?;
        }
        Ok(guard)
    }

    /// Creates (truncating) a file for writing.
    pub fn create(&self, path: &Path) -> Result<WritableFile> {
        let mut power = self.check(IoOp::Create, path, "create")?;
        if let Some(s) = power.as_deref_mut() {
            s.before_create(path)
                .map_err(|e| Error::io("create", path, e))?;
        }
        let file = File::create(path).map_err(|e| Error::io("create", path, e))?;
        if let Some(s) = power.as_deref_mut() {
            s.after_create(path);
        }
        Ok(WritableFile {
            file,
            path: path.to_path_buf(),
            fs: self.clone(),
            len: 0,
        })
    }

    /// Opens a file for appending, creating it if missing (an append-only
    /// log kept across restarts, such as ingest's manifest).
    pub fn open_append(&self, path: &Path) -> Result<WritableFile> {
        let mut power = self.check(IoOp::Create, path, "open")?;
        if let Some(s) = power.as_deref_mut() {
            s.before_open(path);
        }
        let existed = path.exists();
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|e| Error::io("open", path, e))?;
        let len = file
            .metadata()
            .map_err(|e| Error::io("open", path, e))?
            .len();
        if let Some(s) = power.as_deref_mut()
            && !existed
        {
            s.after_create(path);
        }
        Ok(WritableFile {
            file,
            path: path.to_path_buf(),
            fs: self.clone(),
            len,
        })
    }

    /// Gives the file at `from` a second name `to`, failing (with
    /// `ErrorKind::AlreadyExists` as the source) if `to` exists: unlike a
    /// rename it never replaces a file. Durable once `to`'s directory is
    /// fsynced.
    pub fn hard_link(&self, from: &Path, to: &Path) -> Result<()> {
        let mut power = self.check(IoOp::Link, to, "link")?;
        if let Some(s) = power.as_deref_mut() {
            s.before_link(from, to);
        }
        std::fs::hard_link(from, to).map_err(|e| Error::io("link", to, e))?;
        if let Some(s) = power.as_deref_mut() {
            s.after_link(from, to);
        }
        Ok(())
    }

    /// Creates one directory (its parent must exist), failing with
    /// `ErrorKind::AlreadyExists` as the source if it exists. Its entry is
    /// durable once its parent is fsynced; until then a power cut removes it
    /// with everything in it.
    pub fn create_dir(&self, dir: &Path) -> Result<()> {
        let mut power = self.check(IoOp::CreateDir, dir, "create directory")?;
        if let Some(s) = power.as_deref_mut() {
            s.before_create_dir(dir);
        }
        std::fs::create_dir(dir).map_err(|e| Error::io("create directory", dir, e))?;
        if let Some(s) = power.as_deref_mut() {
            s.after_create_dir(dir);
        }
        Ok(())
    }

    pub fn rename(&self, from: &Path, to: &Path) -> Result<()> {
        let mut power = self.check(IoOp::Rename, to, "rename")?;
        if let Some(s) = power.as_deref_mut() {
            s.before_rename(from, to)
                .map_err(|e| Error::io("rename", from, e))?;
        }
        std::fs::rename(from, to).map_err(|e| Error::io("rename", from, e))?;
        if let Some(s) = power.as_deref_mut() {
            s.after_rename(from, to);
        }
        Ok(())
    }

    pub fn remove(&self, path: &Path) -> Result<()> {
        let mut power = self.check(IoOp::Remove, path, "remove")?;
        if let Some(s) = power.as_deref_mut() {
            s.before_remove(path)
                .map_err(|e| Error::io("remove", path, e))?;
        }
        match std::fs::remove_file(path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::io("remove", path, e)),
        }
    }

    /// fsyncs a directory, making creates, renames and removes in it durable.
    pub fn sync_dir(&self, dir: &Path) -> Result<()> {
        let mut power = self.check(IoOp::SyncDir, dir, "fsync directory")?;
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| Error::io("fsync directory", dir, e))?;
        if let Some(s) = power.as_deref_mut() {
            s.after_sync_dir(dir);
        }
        Ok(())
    }

    /// Cuts an existing file to `len` bytes and fsyncs it (recovery drops a
    /// torn WAL tail this way).
    pub fn truncate(&self, path: &Path, len: u64) -> Result<()> {
        let mut power = self.check(IoOp::Write, path, "truncate")?;
        std::fs::OpenOptions::new()
            .write(true)
            .open(path)
            .and_then(|f| f.set_len(len).and_then(|_| f.sync_all()))
            .map_err(|e| Error::io("truncate", path, e))?;
        if let Some(s) = power.as_deref_mut() {
            s.after_truncate(path, len);
        }
        Ok(())
    }

    /// Replaces `dir/name` atomically: write a temp file, fsync it, rename it over
    /// the target, fsync the directory. A crash leaves the old or the new
    /// content, never a mix.
    pub fn write_atomic(&self, dir: &Path, name: &str, bytes: &[u8]) -> Result<()> {
        let tmp = dir.join(format!("{name}.tmp"));
        let mut f = self.create(&tmp)?;
        f.write_all(bytes)?;
        f.sync()?;
        drop(f);
        self.rename(&tmp, &dir.join(name))?;
        self.sync_dir(dir)
    }
}

/// A file being written, append-only. It is also a [`std::io::Write`], so
/// an encoder (a Parquet writer) can write through the layer.
#[derive(Debug)]
pub struct WritableFile {
    file: File,
    path: PathBuf,
    fs: Fs,
    len: u64,
}

impl WritableFile {
    pub fn write_all(&mut self, data: &[u8]) -> Result<()> {
        // Held across the write: after a power cut no byte reaches the file.
        let _power = self.fs.check(IoOp::Write, &self.path, "write")?;
        self.file
            .write_all(data)
            .map_err(|e| Error::io("write", &self.path, e))?;
        self.len += data.len() as u64;
        Ok(())
    }

    /// fdatasync: the data (and the size) is durable when this returns.
    pub fn sync(&mut self) -> Result<()> {
        let mut power = self.fs.check(IoOp::Sync, &self.path, "fsync")?;
        self.file
            .sync_data()
            .map_err(|e| Error::io("fsync", &self.path, e))?;
        if let Some(s) = power.as_deref_mut() {
            s.after_sync(&self.path, self.len);
        }
        Ok(())
    }

    /// Extends the file to `bytes` with zeros (the write position stays at the
    /// end of the data written so far) and makes the new size durable.
    pub fn preallocate(&mut self, bytes: u64) -> Result<()> {
        let mut power = self.fs.check(IoOp::Write, &self.path, "preallocate")?;
        let size = bytes.max(self.len);
        self.file
            .set_len(size)
            .and_then(|_| self.file.sync_all())
            .map_err(|e| Error::io("preallocate", &self.path, e))?;
        if let Some(s) = power.as_deref_mut() {
            s.after_preallocate(&self.path, self.len, size);
        }
        Ok(())
    }

    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl std::io::Write for WritableFile {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        WritableFile::write_all(self, buf).map_err(|e| match &e {
            // Keep the kind (a full disk stays `StorageFull`).
            Error::Io { source, .. } => std::io::Error::new(source.kind(), e.to_string()),
            _ => std::io::Error::other(e),
        })?;
        Ok(buf.len())
    }

    /// Nothing is buffered here; durability is [`WritableFile::sync`].
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The descriptor, for `flock(2)` on a file being written.
impl std::os::fd::AsRawFd for WritableFile {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.file.as_raw_fd()
    }
}
