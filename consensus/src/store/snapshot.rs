//! Snapshots: built from an LSM snapshot of the `s/` and `d/` key spaces
//! straight into a file ([`super::snapshot_file`]'s format): temp → fsync →
//! rename to `current.snap` → fsync directory, through the LSM's file layer
//! (so a simulated power cut sees the build; a received file is written with
//! tokio's file API, outside that layer). The leader streams that file to a
//! follower; the follower writes the stream to a temporary file and installs
//! from it (`StateMachine::install_snapshot`). Building, sending and
//! receiving hold one record and one I/O buffer at a time; installing builds
//! one LSM batch (see `install_snapshot`).

use super::snapshot_file::*;
use super::state_machine::*;
use super::*;
use std::io::{BufWriter, Write};

pub(super) const SNAPSHOT_FILE: &str = "current.snap";
/// Temporary files (a snapshot being built or received) end in this.
const TEMP_SUFFIX: &str = ".tmp";
const IO_BUFFER_BYTES: usize = 1 << 20;

/// Opens the snapshot directory at start-up: removes temporary files a crash
/// left behind and checks `current.snap` end to end (a damaged snapshot is an
/// error, not a silently older state). Returns the current snapshot's meta.
pub(super) fn open_snapshot_dir(
    dir: &Path,
) -> Result<Option<SnapshotMeta<NodeId, Node>>, std::io::Error> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.extension().and_then(|e| e.to_str()) == Some(&TEMP_SUFFIX[1..]) {
            std::fs::remove_file(&path)?;
        }
    }
    let path = dir.join(SNAPSHOT_FILE);
    match verify_snapshot_file(&path) {
        Ok(meta) => Ok(Some(meta)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) if e.kind() == std::io::ErrorKind::Unsupported => {
            // A snapshot in an older format (before snapshots were files of
            // records) is moved aside, not read: the LSM holds the state it
            // covers, and openraft builds a new snapshot when one is needed.
            let aside = dir.join(format!("{SNAPSHOT_FILE}.old"));
            std::fs::rename(&path, &aside)?;
            tracing::warn!(file = %aside.display(), "moved aside a snapshot in an older format");
            Ok(None)
        }
        Err(e) => Err(std::io::Error::new(
            e.kind(),
            format!("snapshot {}: {e}", path.display()),
        )),
    }
}

/// A fresh temporary path in the snapshot directory.
pub(super) fn temp_path(shared: &Shared, what: &str) -> PathBuf {
    let seq = shared
        .snapshot_seq
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    shared
        .snapshot_dir
        .join(format!("{what}-{seq}{TEMP_SUFFIX}"))
}

/// Opens `current.snap` for a reader (a follower being sent it). The meta
/// is read through the same handle that is handed on, so the two agree even
/// if a new snapshot replaces the file meanwhile (an open file keeps its
/// contents across a rename); the sender seeks back to byte 0.
pub(super) async fn open_current(
    shared: &Shared,
) -> Result<Option<Snapshot<TypeConfig>>, std::io::Error> {
    let path = shared.snapshot_dir.join(SNAPSHOT_FILE);
    let file = match std::fs::File::open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let meta = SnapshotReader::open(std::io::BufReader::new(&file))?
        .meta()
        .clone();
    Ok(Some(Snapshot {
        meta,
        snapshot: Box::new(SnapshotData::new(
            tokio::fs::File::from_std(file),
            path,
            false,
        )),
    }))
}

/// Makes `file` the node's `current.snap` (rename, then fsync the directory)
/// unless the current one is newer. A build (its own task in openraft) and
/// an install can finish in either order: without this check an older build
/// finishing after an install would put its older file back. Returns whether
/// the file was renamed; a caller whose file lost removes it.
pub(super) fn publish(
    shared: &Shared,
    file: &Path,
    meta: &SnapshotMeta<NodeId, Node>,
) -> Result<bool, std::io::Error> {
    let mut current = shared
        .current_snapshot
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    if *current > meta.last_log_id {
        return Ok(false);
    }
    let fs = shared.db.fs();
    fs.rename(file, &shared.snapshot_dir.join(SNAPSHOT_FILE))
        .map_err(io_err)?;
    fs.sync_dir(&shared.snapshot_dir).map_err(io_err)?;
    *current = meta.last_log_id;
    Ok(true)
}

/// Writes the state as of one LSM snapshot into `current.snap`; returns its
/// meta and an open handle on the new file.
/// (The error is boxed: `StorageError` is large.)
fn build_file(
    shared: &Shared,
) -> Result<(SnapshotMeta<NodeId, Node>, std::fs::File, u64), Box<SE>> {
    // One LSM snapshot: the applied pointer and the state are read as of
    // the same instant, while apply keeps running.
    let snap = shared.db.snapshot();
    let ro = ReadOptions {
        snapshot: Some(&snap),
    };
    let rerr = |e: std::io::Error| Box::new(SE::from(StorageIOError::read_state_machine(&e)));
    let applied: Applied = match shared
        .db
        .get_opt(KEY_APPLIED, &ro)
        .map_err(|e| rerr(io_err(e)))?
    {
        Some(b) => decode("applied state", &b).map_err(rerr)?,
        None => Applied::default(),
    };
    let seq = shared
        .snapshot_seq
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let meta = SnapshotMeta {
        last_log_id: applied.last_applied,
        last_membership: applied.membership.clone(),
        snapshot_id: format!(
            "{}-{}-{seq}",
            applied.last_applied.map(|l| l.leader_id.term).unwrap_or(0),
            applied.last_applied.map(|l| l.index).unwrap_or(0)
        ),
    };
    let fs = shared.db.fs();
    let tmp = temp_path(shared, "build");
    let werr = |e: std::io::Error| StorageIOError::write_snapshot(Some(meta.signature()), &e);
    let write = || -> Result<(std::fs::File, u64), std::io::Error> {
        let out = BufWriter::with_capacity(IO_BUFFER_BYTES, fs.create(&tmp).map_err(io_err)?);
        let mut w = SnapshotWriter::new(out, &meta)?;
        for prefix in STATE_PREFIXES {
            for kv in shared.db.prefix(prefix, false, &ro).map_err(io_err)? {
                let (k, v) = kv.map_err(io_err)?;
                w.record(&k, &v)?;
            }
        }
        let (out, _records) = w.finish()?;
        let mut file = out.into_inner().map_err(|e| e.into_error())?;
        file.flush()?;
        file.sync().map_err(io_err)?;
        let bytes = file.len();
        // Opened before the rename: this handle reads the file built here
        // even if another snapshot replaces `current.snap` at once, and even
        // if a newer one already has (then the file is removed, unpublished).
        let reader = std::fs::File::open(&tmp)?;
        if !publish(shared, &tmp, &meta)? {
            std::fs::remove_file(&tmp)?;
        }
        Ok((reader, bytes))
    };
    match write() {
        Ok((reader, bytes)) => Ok((meta, reader, bytes)),
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            Err(Box::new(werr(e).into()))
        }
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachine {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, SE> {
        let t0 = Instant::now();
        // Reading the LSM and writing the file block: off the async workers.
        let sh = self.shared.clone();
        let (meta, reader, bytes) = tokio::task::spawn_blocking(move || build_file(&sh))
            .await
            .map_err(|e| StorageIOError::write_snapshot(None, &std::io::Error::other(e)))?
            .map_err(|e| *e)?;
        let shared = &*self.shared;
        let m = &shared.metrics;
        m.snapshots_built.inc();
        m.snapshot_bytes.set(bytes as i64);
        m.snapshot_build_seconds.observe(t0.elapsed().as_secs_f64());
        let path = shared.snapshot_dir.join(SNAPSHOT_FILE);
        Ok(Snapshot {
            meta,
            snapshot: Box::new(SnapshotData::new(
                tokio::fs::File::from_std(reader),
                path,
                false,
            )),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_snapshot(dir: &Path, meta: &SnapshotMeta<NodeId, Node>) -> Vec<u8> {
        let mut w = SnapshotWriter::new(Vec::new(), meta).expect("header");
        w.record(b"s/k", b"v").expect("record");
        let bytes = w.finish().expect("trailer").0;
        std::fs::write(dir.join(SNAPSHOT_FILE), &bytes).expect("write");
        bytes
    }

    #[test]
    fn start_up_removes_leftover_temporaries_and_checks_the_snapshot() {
        let dir = tempfile::tempdir().expect("tempdir");
        let meta = SnapshotMeta {
            snapshot_id: "2-9-0".into(),
            ..Default::default()
        };
        let bytes = write_snapshot(dir.path(), &meta);
        std::fs::write(dir.path().join("recv-4.tmp"), b"half a stream").expect("tmp");
        std::fs::write(dir.path().join("build-0.tmp"), b"half a build").expect("tmp");
        assert_eq!(open_snapshot_dir(dir.path()).expect("open"), Some(meta));
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .expect("dir")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from(SNAPSHOT_FILE)]);

        // A damaged snapshot stops the start, naming the file.
        let mut damaged = bytes.clone();
        let last = damaged.len() - 1;
        damaged[last] ^= 1;
        std::fs::write(dir.path().join(SNAPSHOT_FILE), &damaged).expect("write");
        let e = open_snapshot_dir(dir.path()).expect_err("damaged");
        assert!(e.to_string().contains("checksum mismatch"), "{e}");
        assert!(e.to_string().contains(SNAPSHOT_FILE), "{e}");
    }

    #[test]
    fn a_snapshot_in_an_older_format_is_moved_aside() {
        let dir = tempfile::tempdir().expect("tempdir");
        // The format before this one began with bincode's SnapshotMeta.
        let old = encode(&SnapshotMeta::<NodeId, Node>::default());
        std::fs::write(dir.path().join(SNAPSHOT_FILE), &old).expect("write");
        assert_eq!(open_snapshot_dir(dir.path()).expect("open"), None);
        let aside = dir.path().join(format!("{SNAPSHOT_FILE}.old"));
        assert_eq!(std::fs::read(aside).expect("moved aside"), old);
        assert!(!dir.path().join(SNAPSHOT_FILE).exists());
    }
}
