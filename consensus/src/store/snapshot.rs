//! Snapshots: built from an LSM snapshot of the `s/` and `d/` key spaces,
//! kept in one checksummed file (temp → fsync → rename → fsync directory).

use super::state_machine::*;
use super::*;

/// The latest snapshot: its metadata and bytes (shared, not copied per reader).
pub(super) type StoredSnapshot = (SnapshotMeta<NodeId, Node>, Arc<Vec<u8>>);

/// The serialized form of a snapshot: the raw `s/` and `d/` key spaces.
#[derive(Serialize, Deserialize)]
pub(super) struct SnapshotBody {
    pub(super) entries: Vec<(Vec<u8>, Vec<u8>)>,
}

pub(super) const SNAPSHOT_FILE: &str = "current.snap";

#[derive(Serialize, Deserialize)]
pub(super) struct SnapshotFile {
    pub(super) meta: SnapshotMeta<NodeId, Node>,
    pub(super) crc32c: u32,
    pub(super) data: Vec<u8>,
}

pub(super) fn load_snapshot_file(dir: &Path) -> Result<Option<StoredSnapshot>, std::io::Error> {
    let path = dir.join(SNAPSHOT_FILE);
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let f: SnapshotFile = decode("snapshot file", &bytes)?;
    let crc = crc32c::crc32c(&f.data);
    if crc != f.crc32c {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!(
                "snapshot {} checksum mismatch: stored {:08x}, computed {crc:08x}",
                path.display(),
                f.crc32c
            ),
        ));
    }
    Ok(Some((f.meta, Arc::new(f.data))))
}

/// temp file → fsync → rename → fsync directory, through the LSM's file
/// layer (so a simulated power cut sees the snapshot file too).
pub(super) fn save_snapshot_file(
    fs: &storage::io::Fs,
    dir: &Path,
    meta: &SnapshotMeta<NodeId, Node>,
    data: &[u8],
) -> Result<(), std::io::Error> {
    let f = SnapshotFile {
        meta: meta.clone(),
        crc32c: crc32c::crc32c(data),
        data: data.to_vec(),
    };
    fs.write_atomic(dir, SNAPSHOT_FILE, &encode(&f))
        .map_err(io_err)
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachine {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, SE> {
        let t0 = Instant::now();
        let shared = &*self.shared;
        // One LSM snapshot: the applied pointer and the state are read as of
        // the same instant, while apply keeps running.
        let snap = shared.db.snapshot();
        let ro = ReadOptions {
            snapshot: Some(&snap),
        };
        let rerr = |e: std::io::Error| StorageIOError::read_state_machine(&e);
        let applied: Applied = match shared
            .db
            .get_opt(KEY_APPLIED, &ro)
            .map_err(|e| rerr(io_err(e)))?
        {
            Some(b) => decode("applied state", &b).map_err(rerr)?,
            None => Applied::default(),
        };
        let mut entries = Vec::new();
        for prefix in STATE_PREFIXES {
            for kv in shared
                .db
                .prefix(prefix, false, &ro)
                .map_err(|e| rerr(io_err(e)))?
            {
                entries.push(kv.map_err(|e| rerr(io_err(e)))?);
            }
        }
        drop(snap);
        let data = encode(&SnapshotBody { entries });
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
        save_snapshot_file(shared.db.fs(), &shared.snapshot_dir, &meta, &data)
            .map_err(|e| StorageIOError::write_snapshot(Some(meta.signature()), &e))?;
        *shared
            .current_snapshot
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some((meta.clone(), Arc::new(data.clone())));
        let m = &shared.metrics;
        m.snapshots_built.inc();
        m.snapshot_bytes.set(data.len() as i64);
        m.snapshot_build_seconds.observe(t0.elapsed().as_secs_f64());
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        })
    }
}
