//! The manifest: the authoritative list of committed part files.
//!
//! A file exists for readers once, and only once, the manifest lists it. The
//! manifest's per-partition "next offset" (last committed `last_offset + 1`) is
//! where ingest resumes; Kafka's committed offsets are only a hint that trails
//! it. Two implementations sit behind [`Manifest`]:
//! - [`LocalManifest`]: an append-only file of checksummed JSON lines, fsynced
//!   per commit, locked against a second writer;
//! - [`KvManifest`]: the Raft KV cluster (`consensus`), one key per partition
//!   updated with compare-and-set on its version, so two ingest processes that
//!   both think they own a partition cannot both commit the same range.

use crate::Error;
use crate::writer::FileCommit;
use std::collections::BTreeMap;
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};

/// What the manifest knows.
#[derive(Clone, Debug, Default)]
pub struct ManifestState {
    /// Every committed file, in commit order.
    pub files: Vec<FileCommit>,
    /// Per partition: the first offset not yet in a committed file.
    pub next_offset: BTreeMap<i32, i64>,
}

impl ManifestState {
    pub fn apply(&mut self, c: &FileCommit) {
        let next = self.next_offset.entry(c.partition).or_insert(0);
        *next = (*next).max(c.last_offset + 1);
        self.files.push(c.clone());
    }
    pub fn rows(&self) -> u64 {
        self.files.iter().map(|f| f.rows).sum()
    }
}

/// Where commits are recorded. `commit` returns only once the commit is
/// durable; it fails (and records nothing) if the commit does not start where
/// the partition's last one ended.
pub trait Manifest: Send {
    fn load(&mut self) -> Result<ManifestState, Error>;
    fn commit(&mut self, c: &FileCommit) -> Result<(), Error>;
    fn describe(&self) -> String;
}

/// `<out>/_manifest.jsonl`: one line per commit, `<crc32c hex> <json>`.
#[derive(Debug)]
pub struct LocalManifest {
    path: PathBuf,
    file: Option<std::fs::File>,
    _lock: std::fs::File,
    state: ManifestState,
}

pub const LOCAL_MANIFEST: &str = "_manifest.jsonl";

impl LocalManifest {
    /// Opens (creating) the manifest of `out` and takes its lock.
    pub fn open(out: &Path) -> Result<Self, Error> {
        std::fs::create_dir_all(out).map_err(|source| Error::Io {
            op: "create directory",
            path: out.to_path_buf(),
            source,
        })?;
        let lock_path = out.join("_manifest.lock");
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|source| Error::Io {
                op: "open",
                path: lock_path.clone(),
                source,
            })?;
        // SAFETY: flock(2) on a file descriptor we own.
        let rc = unsafe {
            libc::flock(
                std::os::fd::AsRawFd::as_raw_fd(&lock),
                libc::LOCK_EX | libc::LOCK_NB,
            )
        };
        if rc != 0 {
            return Err(Error::Locked { path: lock_path });
        }
        Ok(LocalManifest {
            path: out.join(LOCAL_MANIFEST),
            file: None,
            _lock: lock,
            state: ManifestState::default(),
        })
    }
}

fn line_for(c: &FileCommit) -> String {
    let json = serde_json::to_string(c).unwrap_or_default();
    format!("{:08x} {json}\n", crc32c::crc32c(json.as_bytes()))
}

/// Parses the manifest. A torn last line (a crash mid-append, never fsynced,
/// so never acknowledged) is dropped and truncated away; a bad line before the
/// end is corruption and stops ingest.
fn parse(path: &Path, bytes: &[u8]) -> Result<(ManifestState, usize), Error> {
    let mut state = ManifestState::default();
    let mut good_len = 0usize;
    let mut pos = 0usize;
    let lines: Vec<&[u8]> = bytes.split_inclusive(|b| *b == b'\n').collect();
    for (i, line) in lines.iter().enumerate() {
        let last = i + 1 == lines.len();
        let parsed = (|| {
            let text = std::str::from_utf8(line).ok()?;
            let text = text.strip_suffix('\n')?;
            let (crc, json) = text.split_once(' ')?;
            let crc = u32::from_str_radix(crc, 16).ok()?;
            (crc32c::crc32c(json.as_bytes()) == crc).then_some(())?;
            serde_json::from_str::<FileCommit>(json).ok()
        })();
        match parsed {
            Some(c) => {
                state.apply(&c);
                pos += line.len();
                good_len = pos;
            }
            None if last => break,
            None => {
                return Err(Error::Corrupt {
                    path: path.to_path_buf(),
                    offset: pos as u64,
                    reason: format!(
                        "manifest line {} fails its checksum or does not parse",
                        i + 1
                    ),
                });
            }
        }
    }
    Ok((state, good_len))
}

impl Manifest for LocalManifest {
    fn load(&mut self) -> Result<ManifestState, Error> {
        let bytes = match std::fs::read(&self.path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(source) => {
                return Err(Error::Io {
                    op: "read",
                    path: self.path.clone(),
                    source,
                });
            }
        };
        let (state, good_len) = parse(&self.path, &bytes)?;
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)
            .map_err(|source| Error::Io {
                op: "open",
                path: self.path.clone(),
                source,
            })?;
        if good_len < bytes.len() {
            tracing::warn!(
                path = %self.path.display(),
                dropped_bytes = bytes.len() - good_len,
                "dropping a torn last manifest line (a crash mid-commit; that file is an orphan)"
            );
            file.set_len(good_len as u64).map_err(|source| Error::Io {
                op: "truncate",
                path: self.path.clone(),
                source,
            })?;
        }
        self.file = Some(file);
        self.state = state.clone();
        Ok(state)
    }

    fn commit(&mut self, c: &FileCommit) -> Result<(), Error> {
        let expected = self
            .state
            .next_offset
            .get(&c.partition)
            .copied()
            .unwrap_or(0);
        if c.first_offset < expected {
            return Err(Error::Conflict {
                partition: c.partition,
                first_offset: c.first_offset,
                expected,
            });
        }
        let Some(file) = self.file.as_mut() else {
            return Err(Error::Io {
                op: "commit before load",
                path: self.path.clone(),
                source: std::io::Error::other("manifest not loaded"),
            });
        };
        let io = |source| Error::Io {
            op: "append",
            path: self.path.clone(),
            source,
        };
        file.write_all(line_for(c).as_bytes()).map_err(io)?;
        file.sync_data().map_err(|source| Error::Io {
            op: "fsync",
            path: self.path.clone(),
            source,
        })?;
        self.state.apply(c);
        Ok(())
    }

    fn describe(&self) -> String {
        format!("local manifest {}", self.path.display())
    }
}

/// The Raft KV cluster as the manifest: key `ingest/<group>/<topic>/<partition>`
/// holds the partition's commits as JSON, replaced with compare-and-set on the
/// key's version (etcd-style optimistic concurrency).
#[derive(Debug)]
pub struct KvManifest {
    endpoints: Vec<String>,
    prefix: String,
    /// The KV client, blocking: `Manifest` is a synchronous interface, called
    /// from inside the ingest loop and librdkafka's rebalance callbacks. It
    /// follows the leader, retries, and gives each commit one request id for
    /// all its retries (the cluster applies a retried commit once).
    client: kvclient::blocking::Client,
    /// Per partition: (version of its key, its commits).
    parts: BTreeMap<i32, (u64, Vec<FileCommit>)>,
}

/// Keys per page when the manifest is loaded.
const LOAD_PAGE: u32 = 1_000;

fn kv_err(what: &str) -> impl FnOnce(kvclient::ClientError) -> Error + '_ {
    move |e| Error::Manifest {
        reason: format!("{what}: {e}"),
    }
}

impl KvManifest {
    pub fn new(endpoints: Vec<String>, group: &str, topic: &str) -> Result<Self, Error> {
        let client = kvclient::blocking::Client::new(&endpoints).map_err(kv_err("KV client"))?;
        Ok(Self {
            endpoints,
            prefix: format!("ingest/{group}/{topic}/"),
            client,
            parts: BTreeMap::new(),
        })
    }
}

impl Manifest for KvManifest {
    fn load(&mut self) -> Result<ManifestState, Error> {
        use proto::kv::v1 as pb;
        let prefix = self.prefix.clone().into_bytes();
        let kvs = self
            .client
            .call(|c| async move {
                c.scan_all(&prefix, LOAD_PAGE, pb::ReadConsistency::Linearizable)
                    .await
            })
            .map_err(kv_err("scan manifest"))?;
        let mut state = ManifestState::default();
        self.parts.clear();
        for kv in kvs {
            let key = String::from_utf8_lossy(&kv.key).into_owned();
            let partition: i32 = key
                .rsplit('/')
                .next()
                .and_then(|p| p.parse().ok())
                .ok_or_else(|| Error::Manifest {
                    reason: format!("unexpected manifest key {key:?}"),
                })?;
            let commits: Vec<FileCommit> =
                serde_json::from_slice(&kv.value).map_err(|e| Error::Manifest {
                    reason: format!("manifest key {key:?} does not parse: {e}"),
                })?;
            for c in &commits {
                state.apply(c);
            }
            self.parts.insert(partition, (kv.version, commits));
        }
        Ok(state)
    }

    fn commit(&mut self, c: &FileCommit) -> Result<(), Error> {
        use proto::kv::v1 as pb;
        let (version, mut commits) = self
            .parts
            .get(&c.partition)
            .cloned()
            .unwrap_or((0, Vec::new()));
        let expected = commits.last().map(|l| l.last_offset + 1).unwrap_or(0);
        if c.first_offset < expected {
            return Err(Error::Conflict {
                partition: c.partition,
                first_offset: c.first_offset,
                expected,
            });
        }
        commits.push(c.clone());
        let key = format!("{}{}", self.prefix, c.partition).into_bytes();
        let value = serde_json::to_vec(&commits).unwrap_or_default();
        let req = pb::TxnRequest {
            compare: vec![pb::Compare {
                key: key.clone(),
                target: pb::compare::Target::Version as i32,
                op: pb::compare::Op::Equal as i32,
                number: version,
                value: Vec::new(),
            }],
            success: vec![
                pb::TxnOp {
                    op: Some(pb::txn_op::Op::Put(pb::PutRequest {
                        key: key.clone(),
                        value,
                        request_id: None,
                        prev_kv: false,
                    })),
                },
                pb::TxnOp {
                    op: Some(pb::txn_op::Op::Get(pb::GetRequest {
                        key: key.clone(),
                        consistency: 0,
                    })),
                },
            ],
            failure: vec![],
            // One id for every retry of this commit: the cluster applies it once.
            request_id: Some(self.client.inner().next_request_id()),
        };
        let resp = self
            .client
            .call(|c| async move { c.txn(req).await })
            .map_err(kv_err("commit to manifest"))?;
        if !resp.succeeded {
            return Err(Error::Conflict {
                partition: c.partition,
                first_offset: c.first_offset,
                expected,
            });
        }
        let new_version = resp
            .results
            .iter()
            .find_map(|r| match &r.result {
                Some(pb::txn_op_result::Result::Get(g)) => g.kv.as_ref().map(|k| k.version),
                _ => None,
            })
            .unwrap_or(version + 1);
        self.parts.insert(c.partition, (new_version, commits));
        Ok(())
    }

    fn describe(&self) -> String {
        format!(
            "KV manifest {} at {}",
            self.prefix,
            self.endpoints.join(",")
        )
    }
}

/// Removes part files and temp files that the manifest does not list
/// (orphans of a crash between rename and manifest commit, or mid-write),
/// only for `partitions` when given (other consumers may own the rest).
/// Returns the paths removed.
pub fn remove_orphans(
    out: &Path,
    topic: &str,
    state: &ManifestState,
    partitions: Option<&[i32]>,
) -> Result<Vec<PathBuf>, Error> {
    let listed: std::collections::HashSet<&str> =
        state.files.iter().map(|f| f.path.as_str()).collect();
    let root = out.join(format!("topic={topic}"));
    let mut removed = Vec::new();
    let Ok(dates) = std::fs::read_dir(&root) else {
        return Ok(removed);
    };
    for d in dates.flatten() {
        let Ok(files) = std::fs::read_dir(d.path()) else {
            continue;
        };
        let mut changed = false;
        for f in files.flatten() {
            let p = f.path();
            let name = f.file_name().to_string_lossy().into_owned();
            let is_part = name.ends_with(".parquet") || name.ends_with(".parquet.tmp");
            let partition: Option<i32> = name
                .trim_start_matches('.')
                .strip_prefix("part-")
                .and_then(|r| r.split('-').next())
                .and_then(|p| p.parse().ok());
            let mine = match (partitions, partition) {
                (None, _) => true,
                (Some(ps), Some(p)) => ps.contains(&p),
                (Some(_), None) => false,
            };
            let rel = p
                .strip_prefix(out)
                .unwrap_or(&p)
                .to_string_lossy()
                .into_owned();
            if is_part && mine && !listed.contains(rel.as_str()) {
                std::fs::remove_file(&p).map_err(|source| Error::Io {
                    op: "remove orphan",
                    path: p.clone(),
                    source,
                })?;
                removed.push(p);
                changed = true;
            }
        }
        if changed {
            crate::writer::sync_dir(&d.path())?;
        }
    }
    Ok(removed)
}

/// Reads every line of a local manifest (for tools and tests).
pub fn read_local(out: &Path) -> Result<ManifestState, Error> {
    let path = out.join(LOCAL_MANIFEST);
    let f = std::fs::File::open(&path).map_err(|source| Error::Io {
        op: "open",
        path: path.clone(),
        source,
    })?;
    let mut bytes = Vec::new();
    for line in std::io::BufReader::new(f).split(b'\n') {
        let mut l = line.map_err(|source| Error::Io {
            op: "read",
            path: path.clone(),
            source,
        })?;
        l.push(b'\n');
        bytes.extend(l);
    }
    Ok(parse(&path, &bytes)?.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn commit(p: i32, first: i64, last: i64) -> FileCommit {
        FileCommit {
            path: format!("topic=t/date=2026-11-23/part-{p}-{first}-{last}.parquet"),
            partition: p,
            first_offset: first,
            last_offset: last,
            rows: (last - first + 1) as u64,
            bytes: 100,
            crc32c: 7,
            traceparent: None,
        }
    }

    #[test]
    fn commits_survive_reopen_and_a_torn_tail_is_dropped() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let mut m = LocalManifest::open(dir.path()).expect("open");
            assert!(m.load().expect("load").files.is_empty());
            m.commit(&commit(0, 0, 9)).expect("commit");
            m.commit(&commit(1, 0, 4)).expect("commit");
            m.commit(&commit(0, 10, 19)).expect("commit");
            // Overlapping ranges are refused.
            let e = m.commit(&commit(0, 15, 30)).expect_err("overlap");
            assert!(matches!(e, Error::Conflict { expected: 20, .. }), "{e}");
            // A second writer on the same directory is refused.
            assert!(matches!(
                LocalManifest::open(dir.path()),
                Err(Error::Locked { .. })
            ));
        }
        // A crash mid-append leaves half a line.
        let path = dir.path().join(LOCAL_MANIFEST);
        let mut bytes = std::fs::read(&path).expect("read");
        bytes.extend_from_slice(b"deadbeef {\"path\":\"x");
        std::fs::write(&path, &bytes).expect("write");
        let mut m = LocalManifest::open(dir.path()).expect("reopen");
        let s = m.load().expect("load");
        assert_eq!(s.files.len(), 3);
        assert_eq!(s.next_offset[&0], 20);
        assert_eq!(s.next_offset[&1], 5);
        m.commit(&commit(1, 5, 9)).expect("commit after repair");
        drop(m);
        assert_eq!(read_local(dir.path()).expect("read").files.len(), 4);
        // A flipped byte in the middle is corruption, not silently skipped.
        let mut bytes = std::fs::read(&path).expect("read");
        bytes[12] ^= 0x20;
        std::fs::write(&path, &bytes).expect("write");
        let mut m = LocalManifest::open(dir.path()).expect("reopen");
        let e = m.load().expect_err("corrupt");
        assert!(matches!(e, Error::Corrupt { .. }), "{e}");
    }
}
