//! Dataset snapshots: the ingest manifest's committed files and Kafka offset
//! ranges, frozen under one name in the KV cluster, so a training run can
//! say exactly what it read (what DVC's `dvc add` + tag gives a dataset).
//!
//! ```text
//! ingest/<group>/<topic>/<partition>/c/<first offset>  (the live manifest: one key per commit)
//!            │ mlstack datasets snapshot --name S
//!            ▼
//! datasets/<topic>/<S> = {files: [path, crc32c, partition, first..last offset, rows], ...}
//! ```
//!
//! A snapshot is created with compare-and-set on "key absent": it is
//! immutable, and two creators of the same name cannot both win. Its files
//! are the Parquet files under the ingest output directory; each carries the
//! CRC32C the trainer checks before reading it.

use std::collections::BTreeMap;

use crate::Error;
use crate::manifest::{KvManifest, Manifest};
use crate::writer::FileCommit;

/// A frozen dataset.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Snapshot {
    pub name: String,
    pub topic: String,
    pub group: String,
    pub files: Vec<FileCommit>,
    /// Per partition: the first and last Kafka offset the files cover.
    pub offsets: BTreeMap<i32, (i64, i64)>,
    pub rows: u64,
    pub bytes: u64,
    pub unix_time: u64,
    /// The W3C `traceparent` of the span that created it, when its trace
    /// was sampled: what a training run's span links to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
}

/// The snapshot's KV key: `datasets/<topic>/<name>`.
pub fn key(topic: &str, name: &str) -> String {
    format!("datasets/{topic}/{name}")
}

fn check_name(what: &str, s: &str) -> Result<(), Error> {
    if kvclient::is_key_segment(s) {
        Ok(())
    } else {
        Err(Error::Manifest {
            reason: format!(
                "{what} {s:?}: 1-128 characters of [A-Za-z0-9._-] (it becomes part of a KV key)"
            ),
        })
    }
}

fn kv_err(what: &'static str) -> impl FnOnce(kvclient::ClientError) -> Error {
    move |e| Error::Manifest {
        reason: format!("{what}: {e}"),
    }
}

/// Waits until the KV manifest of (`group`, `topic`) covers every record
/// the broker holds: for each partition, the first offset not yet in a
/// committed file has reached the high watermark read when the wait began
/// (consumer lag zero, in Kafka Connect's terms). A snapshot taken after
/// this holds everything produced before it. Fails naming the lag at
/// `timeout`.
pub fn wait_caught_up(
    endpoints: &[String],
    group: &str,
    topic: &str,
    brokers: &str,
    timeout: std::time::Duration,
    mut progress: impl FnMut(&str),
) -> Result<(), Error> {
    let start = std::time::Instant::now();
    // The broker's answer is retried within `timeout` (it may be starting
    // or briefly unreachable, as in a compose stack coming up).
    let targets = loop {
        match crate::topics::high_watermarks(brokers, topic, std::time::Duration::from_secs(10)) {
            Ok(t) => break t,
            Err(e) if start.elapsed() >= timeout => return Err(e),
            Err(e) => {
                progress(&format!(
                    "reading {topic}'s high watermarks at {brokers}: {e}; retrying"
                ));
                std::thread::sleep(std::time::Duration::from_secs(1));
            }
        }
    };
    let mut m = KvManifest::new(endpoints.to_vec(), group, topic)?;
    let mut last_report = None::<std::time::Instant>;
    loop {
        let state = m.load()?;
        // lag per partition: records the broker had that no committed file covers.
        let lag: BTreeMap<i32, i64> = targets
            .iter()
            .map(|(p, high)| {
                let next = state.next_offset.get(p).copied().unwrap_or(0);
                (*p, high.saturating_sub(next).max(0))
            })
            .filter(|(_, l)| *l > 0)
            .collect();
        if lag.is_empty() {
            return Ok(());
        }
        let describe = || {
            lag.iter()
                .map(|(p, l)| format!("p{p}: {l}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        if start.elapsed() >= timeout {
            return Err(Error::Manifest {
                reason: format!(
                    "ingest/{group}/{topic} did not catch up with {brokers} in {:.0} s: records not yet in a committed file: {}",
                    timeout.as_secs_f64(),
                    describe()
                ),
            });
        }
        if last_report.is_none_or(|t| t.elapsed() >= std::time::Duration::from_secs(5)) {
            progress(&format!(
                "waiting for ingest to catch up; lag {}",
                describe()
            ));
            last_report = Some(std::time::Instant::now());
        }
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
}

/// Freezes the KV manifest of (`group`, `topic`) as snapshot `name`. Fails
/// when the manifest is empty or the name is taken.
pub fn create(
    endpoints: &[String],
    group: &str,
    topic: &str,
    name: &str,
) -> Result<Snapshot, Error> {
    check_name("snapshot name", name)?;
    check_name("topic", topic)?;
    let span = tracing::info_span!(
        "dataset.snapshot",
        dataset = %key(topic, name),
        files = tracing::field::Empty,
        rows = tracing::field::Empty
    );
    let _entered = span.enter();
    let mut m = KvManifest::new(endpoints.to_vec(), group, topic)?;
    let state = m.load()?;
    // The snapshot's span links to each file's commit span (at most the
    // SDK's 128 links per span).
    for tp in state
        .files
        .iter()
        .filter_map(|f| f.traceparent.as_deref())
        .take(128)
    {
        observe::link(&span, tp);
    }
    span.record("files", state.files.len());
    span.record("rows", state.rows());
    if state.files.is_empty() {
        return Err(Error::Manifest {
            reason: format!(
                "ingest/{group}/{topic} lists no committed files: nothing to snapshot (has ingest run?)"
            ),
        });
    }
    let mut offsets: BTreeMap<i32, (i64, i64)> = BTreeMap::new();
    for f in &state.files {
        let e = offsets
            .entry(f.partition)
            .or_insert((f.first_offset, f.last_offset));
        e.0 = e.0.min(f.first_offset);
        e.1 = e.1.max(f.last_offset);
    }
    let snap = Snapshot {
        name: name.to_string(),
        topic: topic.to_string(),
        group: group.to_string(),
        rows: state.rows(),
        bytes: state.files.iter().map(|f| f.bytes).sum(),
        files: state.files,
        offsets,
        unix_time: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
        traceparent: observe::traceparent_of(&span),
    };
    let value = serde_json::to_vec(&snap).map_err(|e| Error::Manifest {
        reason: e.to_string(),
    })?;
    let client = kvclient::blocking::Client::new(endpoints).map_err(kv_err("KV client"))?;
    let k = key(topic, name).into_bytes();
    let created = client
        .call(move |c| async move { c.cas(&k, None, &value).await })
        .map_err(kv_err("create snapshot"))?;
    if !created {
        return Err(Error::SnapshotExists {
            key: key(topic, name),
        });
    }
    Ok(snap)
}

/// Reads snapshot `name` of `topic`.
pub fn load(endpoints: &[String], topic: &str, name: &str) -> Result<Snapshot, Error> {
    check_name("snapshot name", name)?;
    check_name("topic", topic)?;
    let client = kvclient::blocking::Client::new(endpoints).map_err(kv_err("KV client"))?;
    let k = key(topic, name).into_bytes();
    let got = client
        .call(move |c| async move {
            c.get(&k, proto::kv::v1::ReadConsistency::Linearizable)
                .await
        })
        .map_err(kv_err("read snapshot"))?;
    let kv = got.kv.ok_or_else(|| Error::Manifest {
        reason: format!("{} does not exist", key(topic, name)),
    })?;
    serde_json::from_slice(&kv.value).map_err(|e| Error::Manifest {
        reason: format!("{} does not parse: {e}", key(topic, name)),
    })
}

/// Every snapshot of `topic` (all topics when `None`), by key.
pub fn list(endpoints: &[String], topic: Option<&str>) -> Result<Vec<Snapshot>, Error> {
    let client = kvclient::blocking::Client::new(endpoints).map_err(kv_err("KV client"))?;
    let prefix = match topic {
        Some(t) => format!("datasets/{t}/"),
        None => "datasets/".to_string(),
    }
    .into_bytes();
    let kvs = client
        .call(move |c| async move {
            c.scan_all(&prefix, 1_000, proto::kv::v1::ReadConsistency::Linearizable)
                .await
        })
        .map_err(kv_err("list snapshots"))?;
    kvs.iter()
        .map(|kv| {
            serde_json::from_slice(&kv.value).map_err(|e| Error::Manifest {
                reason: format!("{} does not parse: {e}", String::from_utf8_lossy(&kv.key)),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_that_would_escape_the_key_space_are_refused() {
        for bad in ["", "a/b", "..", "x y", &"n".repeat(129)] {
            assert!(check_name("snapshot name", bad).is_err(), "{bad:?}");
        }
        for good in ["v1", "shakespeare-2026.11.30", "a_b"] {
            assert!(check_name("snapshot name", good).is_ok(), "{good:?}");
        }
    }
}
