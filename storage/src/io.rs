//! The file layer every write goes through, with a fault-injection hook.
//!
//! The engine never writes through `std::fs` directly: it uses [`Fs`], which asks
//! the optional [`FaultInjector`] before each create, write, fsync, rename and
//! remove. Tests use the hook to make those calls fail and check that the error
//! reaches the caller and that a reopen finds a consistent database. It is a test
//! double for faults only: the bytes still go to real files.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

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
}

/// Decides whether an operation fails. Return `Err` to fail it.
pub trait FaultInjector: Send + Sync + std::fmt::Debug {
    fn before(&self, op: IoOp, path: &Path) -> std::io::Result<()>;
}

/// The engine's handle on the file system.
#[derive(Clone, Debug, Default)]
pub struct Fs {
    fault: Option<Arc<dyn FaultInjector>>,
}

impl Fs {
    pub fn new(fault: Option<Arc<dyn FaultInjector>>) -> Self {
        Self { fault }
    }

    fn check(&self, op: IoOp, path: &Path, what: &'static str) -> Result<()> {
        match &self.fault {
            Some(f) => f.before(op, path).map_err(|e| Error::io(what, path, e)),
            None => Ok(()),
        }
    }

    /// Creates (truncating) a file for writing.
    pub fn create(&self, path: &Path) -> Result<WritableFile> {
        self.check(IoOp::Create, path, "create")?;
        let file = File::create(path).map_err(|e| Error::io("create", path, e))?;
        Ok(WritableFile {
            file,
            path: path.to_path_buf(),
            fs: self.clone(),
            len: 0,
        })
    }

    pub fn rename(&self, from: &Path, to: &Path) -> Result<()> {
        self.check(IoOp::Rename, to, "rename")?;
        std::fs::rename(from, to).map_err(|e| Error::io("rename", from, e))
    }

    pub fn remove(&self, path: &Path) -> Result<()> {
        self.check(IoOp::Remove, path, "remove")?;
        match std::fs::remove_file(path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::io("remove", path, e)),
        }
    }

    /// fsyncs a directory, making creates, renames and removes in it durable.
    pub fn sync_dir(&self, dir: &Path) -> Result<()> {
        self.check(IoOp::SyncDir, dir, "fsync directory")?;
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| Error::io("fsync directory", dir, e))
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

/// A file being written, append-only.
#[derive(Debug)]
pub struct WritableFile {
    file: File,
    path: PathBuf,
    fs: Fs,
    len: u64,
}

impl WritableFile {
    pub fn write_all(&mut self, data: &[u8]) -> Result<()> {
        self.fs.check(IoOp::Write, &self.path, "write")?;
        self.file
            .write_all(data)
            .map_err(|e| Error::io("write", &self.path, e))?;
        self.len += data.len() as u64;
        Ok(())
    }

    /// fdatasync: the data (and the size) is durable when this returns.
    pub fn sync(&mut self) -> Result<()> {
        self.fs.check(IoOp::Sync, &self.path, "fsync")?;
        self.file
            .sync_data()
            .map_err(|e| Error::io("fsync", &self.path, e))
    }

    /// Extends the file to `bytes` with zeros (the write position stays at the
    /// end of the data written so far) and makes the new size durable.
    pub fn preallocate(&mut self, bytes: u64) -> Result<()> {
        self.fs.check(IoOp::Write, &self.path, "preallocate")?;
        self.file
            .set_len(bytes.max(self.len))
            .and_then(|_| self.file.sync_all())
            .map_err(|e| Error::io("preallocate", &self.path, e))
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
