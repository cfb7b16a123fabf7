//! Durable file writes: what a checkpoint or cache must survive a power cut.

use std::io::Write;
use std::path::Path;

use crate::error::{Result, io};

/// fsync of a directory: makes a rename or a new entry in it durable.
pub fn sync_dir(dir: &Path) -> Result<()> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io("fsync", dir))
}

/// Writes `bytes` to `path` atomically: a temp file → fsync → rename →
/// fsync of the parent, so a crash leaves the old file or the new, never a
/// torn one. The temp name is the writer's own (process id and a counter):
/// data-parallel ranks build the same token cache at once, and with one
/// shared temp name one rank's rename took the file from under the other's.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = path.with_extension(format!("tmp.{}.{n}", std::process::id()));
    {
        let mut f = std::fs::File::create(&tmp).map_err(io("create", &tmp))?;
        f.write_all(bytes).map_err(io("write", &tmp))?;
        f.sync_all().map_err(io("fsync", &tmp))?;
    }
    std::fs::rename(&tmp, path).map_err(io("rename", path))?;
    sync_dir(path.parent().unwrap_or(Path::new(".")))
}

/// fsyncs every file directly in `dir`, then `dir` itself.
pub fn sync_tree(dir: &Path) -> Result<()> {
    for e in std::fs::read_dir(dir).map_err(io("list", dir))? {
        let p = e.map_err(io("list", dir))?.path();
        if p.is_file() {
            std::fs::File::open(&p)
                .and_then(|f| f.sync_all())
                .map_err(io("fsync", &p))?;
        }
    }
    sync_dir(dir)
}
