//! Ingest's file commit under a power cut (issue 15, section 4).
//!
//! A SIGKILL leaves the page cache, so ingest's kill tests cannot see a
//! missing fsync. Here the part files and the local manifest are written
//! through `storage::io::Fs` with a `storage::power_loss::PowerLoss` layer,
//! and the power goes after the k-th file operation, for every k from 0
//! until a run completes: each step of the commit (create the `date=`
//! directory, write, fsync, link to the final name, remove the temp name,
//! fsync the directory, append to the manifest, fsync it) is a cut point.
//! After each cut the disk holds only what an fsync made durable, and:
//! - every commit the manifest acknowledged (`commit` returned) is listed;
//! - every listed file exists with the bytes, CRC32C and row count it was
//!   committed with;
//! - ingest resumes: orphans are removed, and the next commit starts where
//!   the manifest says.
//!
//! Each fsync of the commit path is needed for one of these; removing any one
//! (the file's, the directory's after the link, the new `date=` directory's
//! parent's, the manifest's, or the new manifest's directory's) makes this
//! test fail.

use std::path::Path;
use std::sync::Arc;

use parquet::file::reader::{FileReader, SerializedFileReader};
use storage::io::Fs;
use storage::power_loss::PowerLoss;
use stream::manifest::{LocalManifest, Manifest, remove_orphans};
use stream::schema::{Meta, RecordSchema, Value};
use stream::writer::{FileCommit, PartFile, RollPolicy};

const TOPIC: &str = "events";
/// Commits per run; the dates alternate, so new `date=` directories appear
/// mid-run as well as at the start.
const COMMITS: i64 = 4;
const ROWS: i64 = 5;
const DATES: [&str; 3] = ["2026-11-29", "2026-11-29", "2026-11-30"];

/// Writes and commits [`COMMITS`] one-file commits of partition 0 starting
/// at offset `first`; returns the commits the manifest acknowledged before
/// the first error (the power going).
fn commit_files(fs: &Fs, out: &Path, first: i64) -> Vec<FileCommit> {
    let mut acked = Vec::new();
    let Ok(mut m) = LocalManifest::open_with(out, fs.clone()) else {
        return acked;
    };
    if m.load().is_err() {
        return acked;
    }
    let schema = RecordSchema::default();
    let policy = RollPolicy::default();
    for c in 0..COMMITS {
        let start = first + c * ROWS;
        let date = DATES[(c as usize) % DATES.len()];
        let mut run = || -> Result<FileCommit, stream::Error> {
            let mut f = PartFile::create(fs, out, TOPIC, date, 0, start, &schema, &policy)?;
            for o in start..start + ROWS {
                let values = vec![
                    Value::Str(format!("r{o}")),
                    Value::Str(format!("record {o}")),
                    Value::TsMs(1_764_460_800_000 + o),
                ];
                let meta = Meta {
                    partition: 0,
                    offset: o,
                    timestamp_ms: Some(1_764_460_800_000 + o),
                    key: None,
                };
                f.push(values, &meta)?;
            }
            let commit = f.finish(out, TOPIC)?;
            m.commit(std::slice::from_ref(&commit))?;
            Ok(commit)
        };
        match run() {
            Ok(commit) => acked.push(commit),
            Err(_) => break,
        }
    }
    acked
}

/// Checks the directory after a cut: every acknowledged commit listed,
/// every listed file whole; returns the manifest's next offset.
fn check_after_cut(out: &Path, acked: &[FileCommit], cut_at: u64) -> i64 {
    let mut m = LocalManifest::open(out).expect("reopen the manifest");
    let state = m
        .load()
        .unwrap_or_else(|e| panic!("cut at op {cut_at}: load: {e}"));
    for a in acked {
        assert!(
            state.files.contains(a),
            "cut at op {cut_at}: the acknowledged commit of {} is not in the manifest ({} listed)",
            a.path,
            state.files.len()
        );
    }
    let mut next = 0;
    for f in &state.files {
        let path = out.join(&f.path);
        let bytes = std::fs::read(&path).unwrap_or_else(|e| {
            panic!("cut at op {cut_at}: listed file {} is missing: {e}", f.path)
        });
        assert_eq!(
            (bytes.len() as u64, crc32c::crc32c(&bytes)),
            (f.bytes, f.crc32c),
            "cut at op {cut_at}: listed file {} is not the file committed",
            f.path
        );
        let reader = SerializedFileReader::new(bytes::Bytes::from(bytes))
            .unwrap_or_else(|e| panic!("cut at op {cut_at}: {}: {e}", f.path));
        assert_eq!(reader.metadata().file_metadata().num_rows() as u64, f.rows);
        assert_eq!(
            f.first_offset, next,
            "cut at op {cut_at}: a gap before {}",
            f.path
        );
        next = f.last_offset + 1;
    }
    assert_eq!(state.next_offset.get(&0).copied().unwrap_or(0), next);
    next
}

#[test]
fn a_power_cut_at_every_step_of_the_file_commit_loses_no_acknowledged_file() {
    // Into a new output directory, and into one whose `topic=/date=`
    // directories exist already (then no directory fsync of the file path
    // happens to cover the manifest's own new entry).
    sweep(false);
    sweep(true);
}

fn sweep(dirs_exist: bool) {
    let mut cuts = 0u64;
    let mut dropped = 0usize;
    for k in 0.. {
        let dir = tempfile::tempdir().expect("tempdir");
        let out = dir.path().join("out");
        if dirs_exist {
            for date in DATES {
                let d = out
                    .join(format!("topic={TOPIC}"))
                    .join(format!("date={date}"));
                std::fs::create_dir_all(&d).expect("mkdir");
            }
            for d in [
                dir.path().to_path_buf(),
                out.clone(),
                out.join(format!("topic={TOPIC}")),
            ] {
                std::fs::File::open(&d)
                    .and_then(|f| f.sync_all())
                    .expect("fsync dir");
            }
        }
        let power = Arc::new(PowerLoss::new());
        power.power_off_after(k);
        let fs = Fs::new(None).with_power_loss(Some(power.clone()));
        let acked = commit_files(&fs, &out, 0);
        if !power.is_off() {
            // The whole run fit in k operations: every cut point was tried.
            assert_eq!(acked.len() as i64, COMMITS);
            break;
        }
        assert!(k < 10_000, "the run never completes");
        let report = power.cut().expect("cut");
        dropped += report.files_dropped + report.dirs_dropped;
        cuts += 1;
        if !out.join(stream::manifest::LOCAL_MANIFEST).exists() {
            // The cut fell before the manifest existed (or took it).
            assert!(
                acked.is_empty(),
                "cut at op {k}: the manifest is gone with {} acknowledged commits",
                acked.len()
            );
            continue;
        }
        let next = check_after_cut(&out, &acked, k);
        // Resume as ingest does: remove what the manifest does not list,
        // then commit from its next offset, without the layer.
        let state = {
            let mut m = LocalManifest::open(&out).expect("reopen");
            m.load().expect("load")
        };
        remove_orphans(&out, TOPIC, &state, None).expect("orphans");
        let more = commit_files(&Fs::default(), &out, next);
        assert_eq!(more.len() as i64, COMMITS, "cut at op {k}: resume");
        let end = check_after_cut(&out, &[acked, more].concat(), k);
        assert_eq!(end, next + COMMITS * ROWS);
    }
    eprintln!(
        "directories exist: {dirs_exist}: {cuts} cut points; the cuts dropped {dropped} files and directories"
    );
    // The sweep is only worth something if cuts fell in the commit path and
    // dropped what was not yet durable.
    assert!(cuts >= 25, "only {cuts} cut points");
    assert!(dropped > 0, "no cut dropped anything");
}
