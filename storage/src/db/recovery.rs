//! Opening a database after a clean close or a crash: manifest replay, WAL
//! replay, and the switch to a fresh manifest (see [`recover`]).

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use crate::batch::decode_wal_payload;
use crate::io::Fs;
use crate::memtable::Memtable;
use crate::options::Options;
use crate::sstable::cache::BlockCache;
use crate::sstable::{Table, sst_path};
use crate::version::{FileMeta, FileRecord, Version, VersionEdit};
use crate::wal::{WalWriter, read_wal, wal_path};
use crate::{Error, Result};

use super::compaction::{record_of, write_table};
use super::*;

/// What recovery hands to `open`.
pub(super) struct Recovered {
    pub(super) version: Version,
    pub(super) manifest: WalWriter,
    pub(super) wal: WalWriter,
    pub(super) next_file: u64,
    pub(super) last_seq: u64,
}

/// Recovery = manifest replay + WAL replay.
///
/// 1. `CURRENT` names the manifest; replaying its edits gives the table set,
///    the first live WAL number, the next file number and the last sequence.
/// 2. WALs numbered >= that log number are replayed in order into a memtable
///    (a torn tail is cut off; corruption before the tail is an error).
/// 3. That memtable is written to an L0 table, a new WAL is created, and a
///    fresh manifest holding the whole version is written and switched to
///    atomically through `CURRENT`.
/// 4. Only then are the old WALs, old manifests and orphan tables removed: a
///    crash at any step leaves the previous `CURRENT` valid.
pub(super) fn recover(
    dir: &Path,
    opts: &Options,
    fs: &Fs,
    cache: &Arc<BlockCache>,
) -> Result<Recovered> {
    let current_path = dir.join(CURRENT);
    let mut files: BTreeMap<u64, (usize, FileRecord)> = BTreeMap::new();
    let (mut log_number, mut next_file, mut last_seq) = (0u64, 2u64, 0u64);
    match std::fs::read_to_string(&current_path) {
        Ok(name) => {
            let name = name.trim();
            if !name.starts_with("MANIFEST-") || name.contains('/') {
                return Err(Error::corruption(
                    &current_path,
                    0,
                    format!("CURRENT names {name:?}, not a manifest"),
                ));
            }
            let mpath = dir.join(name);
            let contents = read_wal(&mpath).map_err(|e| match e {
                Error::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound => {
                    Error::corruption(&current_path, 0, format!("CURRENT names missing {name}"))
                }
                other => other,
            })?;
            for (off, payload) in &contents.records {
                let edit = VersionEdit::decode(payload)
                    .map_err(|r| Error::corruption(&mpath, *off, format!("version edit: {r}")))?;
                if let Some(n) = edit.log_number {
                    log_number = n;
                }
                if let Some(n) = edit.next_file {
                    next_file = next_file.max(n);
                }
                if let Some(n) = edit.last_seq {
                    last_seq = last_seq.max(n);
                }
                for (_, number) in &edit.deleted {
                    files.remove(number);
                }
                for (level, rec) in &edit.added {
                    files.insert(rec.number, (*level, rec.clone()));
                }
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if !opts.create_if_missing {
                return Err(Error::NotFound {
                    dir: dir.to_path_buf(),
                    reason: "no CURRENT file and create_if_missing is off".into(),
                });
            }
        }
        Err(e) => return Err(Error::io("read", &current_path, e)),
    }

    // Open every table the manifest lists.
    let mut added = Vec::new();
    for (number, (level, rec)) in &files {
        let path = sst_path(dir, *number);
        let table = Arc::new(Table::open(&path, *number, cache.clone())?);
        if table.file_bytes() != rec.file_bytes {
            return Err(Error::corruption(
                &path,
                0,
                format!(
                    "manifest says {} bytes, file has {}",
                    rec.file_bytes,
                    table.file_bytes()
                ),
            ));
        }
        added.push((
            *level,
            Arc::new(FileMeta::new(rec.clone(), table, fs.clone())),
        ));
        next_file = next_file.max(number + 1);
    }
    let mut version = Version::default().apply(&VersionEdit::default(), &added);

    // Replay WALs >= log_number, oldest first.
    let mut entries = std::fs::read_dir(dir)
        .map_err(|e| Error::io("list", dir, e))?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect::<Vec<_>>();
    entries.sort();
    let mut wals: Vec<u64> = entries
        .iter()
        .filter_map(|n| n.strip_suffix(".log").and_then(|s| s.parse().ok()))
        .collect();
    wals.sort_unstable();
    let mem = Memtable::new(0);
    for &n in &wals {
        next_file = next_file.max(n + 1);
        if n < log_number {
            continue;
        }
        let path = wal_path(dir, n);
        let contents = read_wal(&path)?;
        for (off, payload) in &contents.records {
            let (seq, batch) = decode_wal_payload(payload).ok_or_else(|| {
                Error::corruption(&path, *off, "WAL record is not a valid write batch")
            })?;
            for (i, (kind, k, v)) in batch.iter().enumerate() {
                mem.insert(k, seq + i as u64, *kind, v);
            }
            last_seq = last_seq.max(seq + batch.len().saturating_sub(1) as u64);
        }
        if contents.torn_bytes > 0 || contents.preallocated_bytes > 0 {
            if contents.torn_bytes > 0 {
                tracing::warn!(
                    wal = %path.display(),
                    valid_bytes = contents.valid_len,
                    torn_bytes = contents.torn_bytes,
                    "cutting a torn WAL tail"
                );
            }
            fs.truncate(&path, contents.valid_len)?;
        }
    }

    let mut edit = VersionEdit::default();
    if !mem.is_empty() {
        let number = next_file;
        next_file += 1;
        let info = write_table(dir, opts, fs, number, mem.iter().map(Ok))?;
        fs.sync_dir(dir)?;
        let table = Arc::new(Table::open(&sst_path(dir, number), number, cache.clone())?);
        let rec = record_of(&info);
        edit.added.push((0, rec.clone()));
        version = version.apply(
            &edit,
            &[(0, Arc::new(FileMeta::new(rec, table, fs.clone())))],
        );
    }

    // New WAL, new manifest holding the whole version, then CURRENT.
    let wal_number = next_file;
    let manifest_number = next_file + 1;
    next_file += 2;
    let wal = WalWriter::create_preallocated(fs, dir, wal_number)?;
    let mpath = dir.join(manifest_name(manifest_number));
    let mut manifest = WalWriter::create_at(fs, &mpath, manifest_number)?;
    let full = VersionEdit {
        log_number: Some(wal_number),
        next_file: Some(next_file),
        last_seq: Some(last_seq),
        deleted: Vec::new(),
        added: version
            .levels
            .iter()
            .enumerate()
            .flat_map(|(l, fs)| fs.iter().map(move |f| (l, f.rec.clone())))
            .collect(),
    };
    manifest.add_record(&full.encode());
    manifest.sync()?;
    fs.sync_dir(dir)?;
    fs.write_atomic(
        dir,
        CURRENT,
        format!("{}\n", manifest_name(manifest_number)).as_bytes(),
    )?;

    // Garbage: WALs replayed into the new table, old manifests, orphan tables,
    // temp files.
    let live: std::collections::HashSet<u64> = version
        .levels
        .iter()
        .flat_map(|l| l.iter().map(|f| f.rec.number))
        .collect();
    for name in &entries {
        let path = dir.join(name);
        let remove = if let Some(n) = name
            .strip_suffix(".log")
            .and_then(|s| s.parse::<u64>().ok())
        {
            n < wal_number
        } else if let Some(n) = name
            .strip_suffix(".sst")
            .and_then(|s| s.parse::<u64>().ok())
        {
            !live.contains(&n)
        } else {
            (name.starts_with("MANIFEST-") && Some(&path) != Some(&mpath)) || name.ends_with(".tmp")
        };
        if remove {
            fs.remove(&path)?;
        }
    }
    Ok(Recovered {
        version,
        manifest,
        wal,
        next_file,
        last_seq,
    })
}
