//! The manifest: the authoritative list of committed part files.
//!
//! A file exists for readers once, and only once, the manifest lists it. The
//! manifest's per-partition "next offset" (last committed `last_offset + 1`) is
//! where ingest resumes; Kafka's committed offsets are only a hint that trails
//! it. Two implementations sit behind [`Manifest`]:
//! - [`LocalManifest`]: an append-only file of checksummed JSON lines, fsynced
//!   per commit, locked against a second writer;
//! - [`KvManifest`]: the Raft KV cluster (`consensus`), one key per commit
//!   plus a small head key per partition whose version every commit compares
//!   (so two ingest processes that both think they own a partition cannot
//!   both commit the same range) and an owner key whose version is the
//!   partition's fencing epoch (so a deposed owner cannot commit at all).
//!
//! A *commit* is one contiguous offset range of one partition and the files
//! that hold it: usually one file, several when records of that range went
//! to different dates (one open file per date, see [`crate::ingest`]). Those
//! files' own ranges may interleave; the commit's range is their union and
//! must start at or after the end of the partition's last commit (a gap is
//! legitimate: transaction markers and compaction leave offsets with no
//! record).

use crate::Error;
use crate::writer::FileCommit;
use std::collections::BTreeMap;
use std::io::BufRead;
use std::path::{Path, PathBuf};

/// What the manifest knows.
#[derive(Clone, Debug, Default)]
pub struct ManifestState {
    /// Every committed file, in commit order per partition.
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
/// durable; it fails (and records nothing) if the commit does not start at or
/// after where the partition's last one ended ([`Error::Conflict`]) or if
/// this handle no longer owns the partition ([`Error::Fenced`]).
pub trait Manifest: Send {
    fn load(&mut self) -> Result<ManifestState, Error>;
    /// Records one commit: `files` (at least one, all of one partition)
    /// together cover the offset range from their smallest `first_offset`
    /// to their largest `last_offset`. All or nothing: a crash never leaves
    /// part of a commit recorded.
    fn commit(&mut self, files: &[FileCommit]) -> Result<(), Error>;
    /// Makes this handle the owner of `partitions`: from now on a commit to
    /// them by any handle that claimed them earlier fails with
    /// [`Error::Fenced`]. Call it when a partition is assigned, *before*
    /// loading the manifest and removing orphans.
    fn claim(&mut self, partitions: &[i32]) -> Result<(), Error>;
    /// Whether other processes may commit to this manifest at the same time
    /// (then orphans may only be removed for partitions this process owns).
    fn shared(&self) -> bool;
    fn describe(&self) -> String;
}

/// The partition and offset range `[first, last]` that a commit of `files`
/// covers. Refuses an empty commit, one that mixes partitions, and negative
/// offsets (Kafka has none; the KV key would not sort).
pub fn commit_range(files: &[FileCommit]) -> Result<(i32, i64, i64), Error> {
    let Some(head) = files.first() else {
        return Err(Error::Manifest {
            reason: "a commit must hold at least one file".into(),
        });
    };
    let mut first = head.first_offset;
    let mut last = head.last_offset;
    for f in files {
        if f.partition != head.partition {
            return Err(Error::Manifest {
                reason: format!(
                    "one commit mixes partitions {} and {} ({})",
                    head.partition, f.partition, f.path
                ),
            });
        }
        if f.first_offset < 0 || f.last_offset < f.first_offset - 1 {
            return Err(Error::Manifest {
                reason: format!(
                    "{}: offsets {}..={} are not a range",
                    f.path, f.first_offset, f.last_offset
                ),
            });
        }
        first = first.min(f.first_offset);
        last = last.max(f.last_offset);
    }
    Ok((head.partition, first, last))
}

/// `<out>/_manifest.jsonl`: one line per commit, `<crc32c hex> <json>`.
#[derive(Debug)]
pub struct LocalManifest {
    path: PathBuf,
    /// The layer the manifest's appends and fsyncs go through.
    fs: storage::io::Fs,
    file: Option<storage::io::WritableFile>,
    _lock: std::fs::File,
    state: ManifestState,
}

pub const LOCAL_MANIFEST: &str = "_manifest.jsonl";

impl LocalManifest {
    /// Opens (creating) the manifest of `out` and takes its lock.
    pub fn open(out: &Path) -> Result<Self, Error> {
        Self::open_with(out, storage::io::Fs::default())
    }

    /// [`LocalManifest::open`], writing through `fs` (a test's power-loss
    /// layer).
    pub fn open_with(out: &Path, fs: storage::io::Fs) -> Result<Self, Error> {
        // Durably: a new output directory's entry is fsynced in its parent,
        // or a power cut could take it with every commit in it.
        crate::writer::create_dir_durable(&fs, out)?;
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
            fs,
            file: None,
            _lock: lock,
            state: ManifestState::default(),
        })
    }
}

/// One manifest line per commit, so a commit of several files is one
/// checksummed line: a torn write drops all of it, never half (half would
/// move the next offset past the records of the files it lost). A one-file
/// commit is written as the bare object, as before batches existed, so older
/// readers of `_manifest.jsonl` keep working for it.
fn line_for(files: &[FileCommit]) -> String {
    let json = match files {
        [one] => serde_json::to_string(one),
        many => serde_json::to_string(many),
    }
    .unwrap_or_default();
    format!("{:08x} {json}\n", crc32c::crc32c(json.as_bytes()))
}

/// A manifest line's JSON: one file, or the files of one commit.
#[derive(serde::Deserialize)]
#[serde(untagged)]
enum LineCommit {
    One(FileCommit),
    Many(Vec<FileCommit>),
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
            match serde_json::from_str::<LineCommit>(json).ok()? {
                LineCommit::One(c) => Some(vec![c]),
                LineCommit::Many(cs) if !cs.is_empty() => Some(cs),
                LineCommit::Many(_) => None,
            }
        })();
        match parsed {
            Some(cs) => {
                for c in &cs {
                    state.apply(c);
                }
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
        let fs_err = crate::writer::fs_err;
        if good_len < bytes.len() {
            tracing::warn!(
                path = %self.path.display(),
                dropped_bytes = bytes.len() - good_len,
                "dropping a torn last manifest line (a crash mid-commit; that file is an orphan)"
            );
            self.fs
                .truncate(&self.path, good_len as u64)
                .map_err(fs_err)?;
        }
        let file = self.fs.open_append(&self.path).map_err(fs_err)?;
        // The file's name must be durable before any commit is acknowledged
        // through it (an fsync of the file does not make its directory entry
        // survive a power cut). Every start fsyncs the directory, not only
        // the one that created the file: that one may have crashed between
        // the create and the fsync.
        let dir = self.path.parent().unwrap_or(Path::new("."));
        self.fs.sync_dir(dir).map_err(fs_err)?;
        self.file = Some(file);
        self.state = state.clone();
        Ok(state)
    }

    fn commit(&mut self, files: &[FileCommit]) -> Result<(), Error> {
        let (partition, first_offset, _) = commit_range(files)?;
        let expected = self.state.next_offset.get(&partition).copied().unwrap_or(0);
        if first_offset < expected {
            return Err(Error::Conflict {
                partition,
                first_offset,
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
        file.write_all(line_for(files).as_bytes())
            .map_err(crate::writer::fs_err)?;
        file.sync().map_err(crate::writer::fs_err)?;
        for c in files {
            self.state.apply(c);
        }
        Ok(())
    }

    /// Nothing to claim: the `flock` taken in [`LocalManifest::open`] already
    /// makes this process the only writer of the directory.
    fn claim(&mut self, _partitions: &[i32]) -> Result<(), Error> {
        Ok(())
    }

    fn shared(&self) -> bool {
        false
    }

    fn describe(&self) -> String {
        format!("local manifest {}", self.path.display())
    }
}

/// The Raft KV cluster as the manifest. Under `ingest/<group>/<topic>/`:
///
/// | key | value | written |
/// |---|---|---|
/// | `<p>/c/<first offset, 20 digits>` | the commit's files, a JSON list | once, by the commit |
/// | `<p>/head` | `{"next_offset": n}` | by every commit, in the same `Txn` |
/// | `<p>/owner` | `{"owner": "...", "claimed_unix_ms": t}`; its *version* is the epoch | by [`Manifest::claim`] |
/// | `<p>` | a JSON list of files (the layout before one key per commit) | never again; still read |
///
/// A commit is one `Txn`: compare the head's version with the one this handle
/// last saw *and* the owner's version with the epoch this handle claimed; on
/// success put the commit's record and the new head. Its size does not depend
/// on how many commits came before (the old layout rewrote the partition's
/// whole list per commit: about 170 bytes a file, so the KV's 1 MiB value
/// limit stopped ingest near 6,000 files per partition, and Raft carried
/// O(n²) bytes). Loading pages through the prefix.
#[derive(Debug)]
pub struct KvManifest {
    endpoints: Vec<String>,
    prefix: String,
    /// The KV client, blocking: `Manifest` is a synchronous interface, called
    /// from inside the ingest loop and librdkafka's rebalance callbacks. It
    /// follows the leader, retries, and gives each commit one request id for
    /// all its retries (the cluster applies a retried commit once).
    client: kvclient::blocking::Client,
    /// Per partition: what this handle last saw of its head and owner keys.
    parts: BTreeMap<i32, KvPart>,
    /// Per partition: the epoch (owner key version) this handle claimed.
    claims: BTreeMap<i32, u64>,
    /// Who this handle is, as written into owner keys (for the error a
    /// fenced consumer gets, and for a person reading the KV).
    owner_id: String,
    /// Encoded size of the last commit's `Txn` request, in bytes.
    last_commit_request_bytes: usize,
}

#[derive(Clone, Copy, Debug, Default)]
struct KvPart {
    /// Version of `<p>/head` (0: absent).
    head_version: u64,
    /// The first offset not yet in a committed file.
    next: i64,
    /// Version of `<p>/owner` when last read (0: never claimed).
    owner_version: u64,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct Head {
    next_offset: i64,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct Owner {
    owner: String,
    claimed_unix_ms: i64,
}

/// Keys per page when the manifest is loaded.
const LOAD_PAGE: u32 = 1_000;

/// Partitions claimed per `Txn` (two operations each; the KV allows 128).
const CLAIMS_PER_TXN: usize = 60;

fn kv_err(what: &str) -> impl FnOnce(kvclient::ClientError) -> Error + '_ {
    move |e| Error::Manifest {
        reason: format!("{what}: {e}"),
    }
}

fn put(key: &[u8], value: Vec<u8>) -> proto::kv::v1::TxnOp {
    use proto::kv::v1 as pb;
    pb::TxnOp {
        op: Some(pb::txn_op::Op::Put(pb::PutRequest {
            key: key.to_vec(),
            value,
            request_id: None,
            prev_kv: false,
        })),
    }
}

fn get(key: &[u8]) -> proto::kv::v1::TxnOp {
    use proto::kv::v1 as pb;
    pb::TxnOp {
        op: Some(pb::txn_op::Op::Get(pb::GetRequest {
            key: key.to_vec(),
            consistency: 0,
        })),
    }
}

fn version_is(key: &[u8], version: u64) -> proto::kv::v1::Compare {
    use proto::kv::v1 as pb;
    pb::Compare {
        key: key.to_vec(),
        target: pb::compare::Target::Version as i32,
        op: pb::compare::Op::Equal as i32,
        number: version,
        value: Vec::new(),
    }
}

/// The key-values of a `Txn` response's `Get` results, in order.
fn got(resp: &proto::kv::v1::TxnResponse) -> Vec<Option<proto::kv::v1::KeyValue>> {
    use proto::kv::v1 as pb;
    resp.results
        .iter()
        .filter_map(|r| match &r.result {
            Some(pb::txn_op_result::Result::Get(g)) => Some(g.kv.clone()),
            _ => None,
        })
        .collect()
}

impl KvManifest {
    pub fn new(endpoints: Vec<String>, group: &str, topic: &str) -> Result<Self, Error> {
        // Kafka topics cannot hold '/', group ids can: one would make the
        // prefix of group "g/t", topic "x" nest inside group "g", topic "t".
        if let Some(bad) = [group, topic].into_iter().find(|s| s.contains('/')) {
            return Err(Error::Config {
                reason: format!(
                    "{bad:?}: a group or topic with '/' cannot name a KV manifest prefix"
                ),
            });
        }
        let client = kvclient::blocking::Client::new(&endpoints).map_err(kv_err("KV client"))?;
        let owner_id = format!(
            "pid {} client {:016x}",
            std::process::id(),
            client.inner().client_id()
        );
        Ok(Self {
            endpoints,
            prefix: format!("ingest/{group}/{topic}/"),
            client,
            parts: BTreeMap::new(),
            claims: BTreeMap::new(),
            owner_id,
            last_commit_request_bytes: 0,
        })
    }

    /// `ingest/<group>/<topic>/<partition>/<what>`.
    fn key(&self, partition: i32, what: &str) -> Vec<u8> {
        format!("{}{partition}/{what}", self.prefix).into_bytes()
    }

    /// The key of the commit whose range starts at `first_offset`; zero
    /// padded so that keys sort in offset order.
    pub fn commit_key(&self, partition: i32, first_offset: i64) -> String {
        format!("{}{partition}/c/{first_offset:020}", self.prefix)
    }

    /// The encoded size of the last commit's `Txn` request: constant per
    /// commit whatever the partition's history (what the 20,000-commit test
    /// checks).
    pub fn last_commit_request_bytes(&self) -> usize {
        self.last_commit_request_bytes
    }

    /// The epoch this handle holds for `partition`, if it claimed it.
    pub fn epoch(&self, partition: i32) -> Option<u64> {
        self.claims.get(&partition).copied()
    }

    /// Applies one scanned key to `state` and `self.parts`.
    fn load_key(
        &mut self,
        state: &mut ManifestState,
        kv: &proto::kv::v1::KeyValue,
    ) -> Result<(), Error> {
        let key = String::from_utf8_lossy(&kv.key).into_owned();
        let bad = |why: String| Error::Manifest {
            reason: format!("manifest key {key:?}: {why}"),
        };
        let rest = key
            .strip_prefix(&self.prefix)
            .ok_or_else(|| bad("outside the manifest's prefix".into()))?;
        let mut segs = rest.split('/');
        let partition: i32 = segs
            .next()
            .and_then(|p| p.parse().ok())
            .ok_or_else(|| bad("no partition number".into()))?;
        let files = |v: &[u8]| -> Result<Vec<FileCommit>, Error> {
            serde_json::from_slice(v).map_err(|e| bad(format!("does not parse: {e}")))
        };
        let part = self.parts.entry(partition).or_default();
        match (segs.next(), segs.next(), segs.next()) {
            // The old layout (one key per partition), or one commit record.
            (None, _, _) | (Some("c"), Some(_), None) => {
                for c in files(&kv.value)? {
                    if c.partition != partition {
                        return Err(bad(format!("lists a file of partition {}", c.partition)));
                    }
                    part.next = part.next.max(c.last_offset + 1);
                    state.apply(&c);
                }
            }
            (Some("head"), None, _) => {
                let h: Head = serde_json::from_slice(&kv.value)
                    .map_err(|e| bad(format!("does not parse: {e}")))?;
                part.head_version = kv.version;
                part.next = part.next.max(h.next_offset);
            }
            (Some("owner"), None, _) => part.owner_version = kv.version,
            _ => return Err(bad("not a key of the manifest layout".into())),
        }
        Ok(())
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
        for kv in &kvs {
            self.load_key(&mut state, kv)?;
        }
        // The head may say more than the records (it is the authority the
        // commit compares against); keep the state's view the same.
        for (p, part) in &self.parts {
            if part.next > 0 || state.next_offset.contains_key(p) {
                let n = state.next_offset.entry(*p).or_insert(0);
                *n = (*n).max(part.next);
            }
        }
        Ok(state)
    }

    fn commit(&mut self, files: &[FileCommit]) -> Result<(), Error> {
        use proto::kv::v1 as pb;
        let (partition, first_offset, last_offset) = commit_range(files)?;
        let part = self.parts.get(&partition).copied().unwrap_or_default();
        let expected = part.next;
        if first_offset < expected {
            return Err(Error::Conflict {
                partition,
                first_offset,
                expected,
            });
        }
        // The epoch this commit is fenced by: the one claimed, else the
        // owner version seen at load (a handle that never claims is still
        // fenced by anyone who claims after it loaded).
        let epoch = self
            .claims
            .get(&partition)
            .copied()
            .unwrap_or(part.owner_version);
        let head_key = self.key(partition, "head");
        let owner_key = self.key(partition, "owner");
        let record_key = self.commit_key(partition, first_offset).into_bytes();
        let record = serde_json::to_vec(files).map_err(|e| Error::Manifest {
            reason: format!("encoding the commit of partition {partition}: {e}"),
        })?;
        let head = serde_json::to_vec(&Head {
            next_offset: last_offset + 1,
        })
        .map_err(|e| Error::Manifest {
            reason: format!("encoding the head of partition {partition}: {e}"),
        })?;
        let req = pb::TxnRequest {
            compare: vec![
                version_is(&head_key, part.head_version),
                version_is(&owner_key, epoch),
            ],
            success: vec![
                put(&record_key, record),
                put(&head_key, head),
                get(&head_key),
            ],
            // On failure, read both so the error says which compare failed.
            failure: vec![get(&head_key), get(&owner_key)],
            // One id for every retry of this commit: the cluster applies it once.
            request_id: Some(self.client.inner().next_request_id()),
        };
        self.last_commit_request_bytes = prost::Message::encoded_len(&req);
        let resp = self
            .client
            .call(|c| async move { c.txn(req).await })
            .map_err(kv_err("commit to manifest"))?;
        let kvs = got(&resp);
        if !resp.succeeded {
            let head_now = kvs.first().cloned().flatten();
            let owner_now = kvs.get(1).cloned().flatten();
            let current = owner_now.as_ref().map(|k| k.version).unwrap_or(0);
            if current != epoch {
                let owner = owner_now
                    .and_then(|k| serde_json::from_slice::<Owner>(&k.value).ok())
                    .map(|o| o.owner)
                    .unwrap_or_else(|| "nobody".into());
                return Err(Error::Fenced {
                    partition,
                    epoch,
                    current,
                    owner,
                    first_offset,
                    last_offset,
                });
            }
            let expected = head_now
                .and_then(|k| serde_json::from_slice::<Head>(&k.value).ok())
                .map(|h| h.next_offset)
                .unwrap_or(expected);
            return Err(Error::Conflict {
                partition,
                first_offset,
                expected,
            });
        }
        let head_version = kvs
            .first()
            .cloned()
            .flatten()
            .map(|k| k.version)
            .unwrap_or(part.head_version + 1);
        self.parts.insert(
            partition,
            KvPart {
                head_version,
                next: last_offset + 1,
                owner_version: epoch,
            },
        );
        Ok(())
    }

    /// Bumps each partition's owner key (an unconditional put: the newest
    /// claimant wins, as a newer Kafka Connect task's transactional producer
    /// bumps the epoch and fences the older one) and remembers the version
    /// it got as this handle's epoch.
    fn claim(&mut self, partitions: &[i32]) -> Result<(), Error> {
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0);
        let value = serde_json::to_vec(&Owner {
            owner: self.owner_id.clone(),
            claimed_unix_ms: now_ms,
        })
        .map_err(|e| Error::Manifest {
            reason: format!("encoding the owner record: {e}"),
        })?;
        for chunk in partitions.chunks(CLAIMS_PER_TXN) {
            let mut success = Vec::with_capacity(chunk.len() * 2);
            for p in chunk {
                let k = self.key(*p, "owner");
                success.push(put(&k, value.clone()));
                success.push(get(&k));
            }
            let req = proto::kv::v1::TxnRequest {
                compare: vec![],
                success,
                failure: vec![],
                request_id: Some(self.client.inner().next_request_id()),
            };
            let resp = self
                .client
                .call(|c| async move { c.txn(req).await })
                .map_err(kv_err("claim partitions"))?;
            let kvs = got(&resp);
            for (p, kv) in chunk.iter().zip(kvs) {
                let epoch = kv.map(|k| k.version).ok_or_else(|| Error::Manifest {
                    reason: format!("claiming partition {p}: the owner key reads back absent"),
                })?;
                self.claims.insert(*p, epoch);
                self.parts.entry(*p).or_default().owner_version = epoch;
            }
        }
        Ok(())
    }

    fn shared(&self) -> bool {
        true
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
/// Temp files that a live writer holds locked are left alone. With a shared
/// manifest, call it only after claiming `partitions`: a final-named file
/// removed here may belong to a paused previous owner, whose commit of it
/// the claim has fenced.
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
            // A temp file a live writer holds locked is not an orphan: its
            // writer may only be paused, and will be fenced at its commit.
            let in_use = name.ends_with(".tmp") && crate::writer::locked_by_a_writer(&p);
            if is_part && mine && !in_use && !listed.contains(rel.as_str()) {
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
            m.commit(&[commit(0, 0, 9)]).expect("commit");
            m.commit(&[commit(1, 0, 4)]).expect("commit");
            m.commit(&[commit(0, 10, 19)]).expect("commit");
            // Overlapping ranges are refused.
            let e = m.commit(&[commit(0, 15, 30)]).expect_err("overlap");
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
        m.commit(&[commit(1, 5, 9)]).expect("commit after repair");
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

    #[test]
    fn a_commit_of_several_files_is_one_line_applied_whole() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut m = LocalManifest::open(dir.path()).expect("open");
        m.load().expect("load");
        m.commit(&[commit(0, 0, 9)]).expect("commit");
        // Two dates' files of one range: their own ranges interleave.
        let (mut a, mut b) = (commit(0, 10, 18), commit(0, 11, 19));
        a.path = "topic=t/date=2026-11-22/part-0-10-18.parquet".into();
        b.path = "topic=t/date=2026-11-23/part-0-11-19.parquet".into();
        m.commit(&[a.clone(), b.clone()]).expect("batch");
        // A batch must not mix partitions, nor be empty.
        assert!(m.commit(&[commit(0, 20, 21), commit(1, 0, 1)]).is_err());
        assert!(m.commit(&[]).is_err());
        drop(m);
        let text = std::fs::read_to_string(dir.path().join(LOCAL_MANIFEST)).expect("read");
        assert_eq!(text.lines().count(), 2, "{text}");
        let s = read_local(dir.path()).expect("read");
        assert_eq!(s.files, vec![commit(0, 0, 9), a, b]);
        assert_eq!(s.next_offset[&0], 20);
        // A torn batch line drops the whole batch, so the next offset stays
        // before every record of it.
        let mut bytes = text.into_bytes();
        bytes.truncate(bytes.len() - 5);
        std::fs::write(dir.path().join(LOCAL_MANIFEST), &bytes).expect("write");
        let mut m = LocalManifest::open(dir.path()).expect("reopen");
        let s = m.load().expect("load");
        assert_eq!(s.files.len(), 1);
        assert_eq!(s.next_offset[&0], 10);
    }
}
