//! Spans kept in the project's own LSM engine (`storage`), keyed so that one
//! trace is one prefix scan, as Jaeger's Badger store keys them.
//!
//! ```text
//! s/<trace id, 32 hex>/<span id, 16 hex>   → the span with its resource and scope
//!                                            (protobuf `ResourceSpans` holding one span)
//! r/<start, unix ns, 20 digits>/<trace id> → a root span's name (the recent-traces list)
//! ```
//!
//! Each span keeps its whole OTLP form (attributes, events, links, status),
//! so nothing the exporter sent is lost between receiving and showing.
//! Writes are not fsynced one by one (`SyncPolicy::Interval`, 1 s): a trace
//! store trades the last second of spans on a power cut for not putting an
//! fsync on every export, as Jaeger's Badger store does by default.

use std::path::{Path, PathBuf};

use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::common::v1::{InstrumentationScope, KeyValue};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};
use prost::Message;

use crate::Error;

/// One span as stored, with the resource it came from.
#[derive(Clone, Debug, PartialEq)]
pub struct StoredSpan {
    /// `service.name` of the exporting process.
    pub service_name: String,
    /// `service.instance.id` of the exporting process.
    pub instance_id: String,
    /// `service.version` of the exporting process.
    pub service_version: String,
    /// The span as the exporter sent it.
    pub span: Span,
}

impl StoredSpan {
    pub fn trace_id_hex(&self) -> String {
        hex(&self.span.trace_id)
    }
    pub fn span_id_hex(&self) -> String {
        hex(&self.span.span_id)
    }
    /// Empty for a root span.
    pub fn parent_span_id_hex(&self) -> String {
        hex(&self.span.parent_span_id)
    }
    pub fn duration_ms(&self) -> f64 {
        self.span
            .end_time_unix_nano
            .saturating_sub(self.span.start_time_unix_nano) as f64
            / 1e6
    }
    /// A span attribute rendered as text (strings bare, numbers and booleans
    /// in their usual form), or `None` when absent.
    pub fn attribute(&self, key: &str) -> Option<String> {
        attribute(&self.span.attributes, key)
    }
}

/// Lowercase hex of an id.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// `key`'s value among `attrs`, as text.
pub fn attribute(attrs: &[KeyValue], key: &str) -> Option<String> {
    any_value_text(attrs.iter().find(|kv| kv.key == key)?.value.as_ref()?)
}

/// An attribute value as text (strings bare, numbers and booleans in their
/// usual form, anything else in its debug form).
pub fn any_value_text(v: &opentelemetry_proto::tonic::common::v1::AnyValue) -> Option<String> {
    match v.value.as_ref()? {
        Value::StringValue(s) => Some(s.clone()),
        Value::IntValue(i) => Some(i.to_string()),
        Value::DoubleValue(d) => Some(d.to_string()),
        Value::BoolValue(b) => Some(b.to_string()),
        other => Some(format!("{other:?}")),
    }
}

/// One trace in the recent list.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct TraceSummary {
    pub trace_id: String,
    /// The root span's name.
    pub root: String,
    pub start_unix_ns: u64,
}

/// The span store: an LSM database in one directory, opened by one process
/// at a time (the engine's `LOCK`).
pub struct SpanStore {
    db: storage::Db,
    dir: PathBuf,
}

impl std::fmt::Debug for SpanStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SpanStore").field("dir", &self.dir).finish()
    }
}

fn store_err(dir: &Path) -> impl Fn(storage::Error) -> Error + '_ {
    move |e| Error::TraceStore {
        dir: dir.to_path_buf(),
        reason: e.to_string(),
    }
}

fn span_key(trace_id: &[u8], span_id: &[u8]) -> Vec<u8> {
    format!("s/{}/{}", hex(trace_id), hex(span_id)).into_bytes()
}

/// A trace id as given on a command line: 32 hex digits, any case.
pub fn parse_trace_id(s: &str) -> Result<String, Error> {
    let t = s.trim().to_ascii_lowercase();
    if t.len() == 32 && t.bytes().all(|b| b.is_ascii_hexdigit()) && t != "0".repeat(32) {
        Ok(t)
    } else {
        Err(Error::BadTraceId { value: s.into() })
    }
}

impl SpanStore {
    /// Opens (or creates) the store in `dir`: a receiver's.
    pub fn open(dir: &Path) -> Result<Self, Error> {
        Self::open_with(dir, true)
    }

    /// Opens the store in `dir` only if one is there: a reader's (`trace
    /// show` with a mistyped `--data` must not create an empty store).
    pub fn open_existing(dir: &Path) -> Result<Self, Error> {
        // Checked here: the engine makes the directory (and its LOCK) before
        // it finds no database in it.
        if !dir.is_dir() {
            return Err(Error::TraceStore {
                dir: dir.to_path_buf(),
                reason: "no trace store here (no such directory); has a receiver or the demo run?"
                    .into(),
            });
        }
        Self::open_with(dir, false)
    }

    fn open_with(dir: &Path, create: bool) -> Result<Self, Error> {
        let opts = storage::Options {
            create_if_missing: create,
            sync_policy: storage::SyncPolicy::Interval(std::time::Duration::from_secs(1)),
            // Spans are small and written in batches of up to 512: a small
            // memtable keeps the store's memory modest beside the demo.
            write_buffer_bytes: 8 << 20,
            block_cache_bytes: 8 << 20,
            ..storage::Options::default()
        };
        let db = storage::Db::open(dir, opts).map_err(|e| Error::TraceStore {
            dir: dir.to_path_buf(),
            reason: match e {
                storage::Error::Locked { .. } => format!(
                    "{e}; while a receiver (`mlstack trace serve`, a running demo) holds it, \
                     read through its query port (--query http://HOST:PORT, printed at its start)"
                ),
                storage::Error::NotFound { .. } => {
                    format!("no trace store here ({e}); has a receiver or the demo run?")
                }
                e => e.to_string(),
            },
        })?;
        Ok(Self {
            db,
            dir: dir.to_path_buf(),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Stores spans (each with its resource and scope) in one write.
    pub fn put(
        &self,
        spans: &[(Option<&Resource>, Option<&InstrumentationScope>, &Span)],
    ) -> Result<(), Error> {
        let mut batch = storage::WriteBatch::new();
        for (resource, scope, span) in spans {
            let one = ResourceSpans {
                resource: resource.cloned(),
                scope_spans: vec![ScopeSpans {
                    scope: scope.cloned(),
                    spans: vec![(*span).clone()],
                    schema_url: String::new(),
                }],
                schema_url: String::new(),
            };
            batch.put(span_key(&span.trace_id, &span.span_id), one.encode_to_vec());
            if span.parent_span_id.is_empty() {
                batch.put(
                    format!(
                        "r/{:020}/{}",
                        span.start_time_unix_nano,
                        hex(&span.trace_id)
                    ),
                    span.name.as_bytes(),
                );
            }
        }
        self.db
            .write(batch, &storage::WriteOptions::default())
            .map_err(store_err(&self.dir))
    }

    fn decode(&self, key: &[u8], value: &[u8]) -> Result<StoredSpan, Error> {
        let rs = ResourceSpans::decode(value).map_err(|e| Error::TraceStore {
            dir: self.dir.clone(),
            reason: format!("{}: {e}", String::from_utf8_lossy(key)),
        })?;
        let res = rs.resource.map(|r| r.attributes).unwrap_or_default();
        let span = rs
            .scope_spans
            .into_iter()
            .flat_map(|s| s.spans)
            .next()
            .ok_or_else(|| Error::TraceStore {
                dir: self.dir.clone(),
                reason: format!("{} holds no span", String::from_utf8_lossy(key)),
            })?;
        Ok(StoredSpan {
            service_name: attribute(&res, "service.name").unwrap_or_default(),
            instance_id: attribute(&res, "service.instance.id").unwrap_or_default(),
            service_version: attribute(&res, "service.version").unwrap_or_default(),
            span,
        })
    }

    fn scan(&self, prefix: &[u8]) -> Result<Vec<StoredSpan>, Error> {
        let mut out = Vec::new();
        for kv in self
            .db
            .prefix(prefix, false, &storage::ReadOptions::default())
            .map_err(store_err(&self.dir))?
        {
            let (k, v) = kv.map_err(store_err(&self.dir))?;
            out.push(self.decode(&k, &v)?);
        }
        Ok(out)
    }

    /// Every span of one trace, in span-id order (sort for display).
    pub fn trace(&self, trace_id: &str) -> Result<Vec<StoredSpan>, Error> {
        let t = parse_trace_id(trace_id)?;
        self.scan(format!("s/{t}/").as_bytes())
    }

    /// One span, when stored.
    pub fn span(&self, trace_id: &[u8], span_id: &[u8]) -> Result<Option<StoredSpan>, Error> {
        let k = span_key(trace_id, span_id);
        match self.db.get(&k).map_err(store_err(&self.dir))? {
            Some(v) => self.decode(&k, &v).map(Some),
            None => Ok(None),
        }
    }

    /// Every stored span (tests and small stores).
    pub fn all(&self) -> Result<Vec<StoredSpan>, Error> {
        self.scan(b"s/")
    }

    /// The `limit` most recent traces by root-span start, newest first.
    pub fn recent(&self, limit: usize) -> Result<Vec<TraceSummary>, Error> {
        let mut out = Vec::new();
        for kv in self
            .db
            .prefix(b"r/", true, &storage::ReadOptions::default())
            .map_err(store_err(&self.dir))?
            .take(limit)
        {
            let (k, v) = kv.map_err(store_err(&self.dir))?;
            let key = String::from_utf8_lossy(&k);
            let mut parts = key.splitn(3, '/').skip(1);
            let (Some(start), Some(trace)) = (parts.next(), parts.next()) else {
                continue;
            };
            out.push(TraceSummary {
                trace_id: trace.to_string(),
                root: String::from_utf8_lossy(&v).into_owned(),
                start_unix_ns: start.parse().unwrap_or(0),
            });
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn span(trace: u8, id: u8, parent: Option<u8>, name: &str) -> Span {
        Span {
            trace_id: vec![trace; 16],
            span_id: vec![id; 8],
            parent_span_id: parent.map(|p| vec![p; 8]).unwrap_or_default(),
            name: name.into(),
            start_time_unix_nano: 1_000 * u64::from(id),
            end_time_unix_nano: 1_000 * u64::from(id) + 500,
            ..Default::default()
        }
    }

    #[test]
    fn a_trace_is_one_prefix_and_survives_reopening() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let store = SpanStore::open(dir.path()).expect("open");
            let (a, b, c) = (
                span(1, 1, None, "root"),
                span(1, 2, Some(1), "child"),
                span(2, 3, None, "other"),
            );
            store
                .put(&[(None, None, &a), (None, None, &b), (None, None, &c)])
                .expect("put");
        }
        let store = SpanStore::open_existing(dir.path()).expect("reopen");
        let t1 = store.trace(&hex(&[1; 16])).expect("trace");
        assert_eq!(
            t1.iter().map(|s| s.span.name.as_str()).collect::<Vec<_>>(),
            ["root", "child"]
        );
        assert_eq!(t1[1].parent_span_id_hex(), hex(&[1; 8]));
        let recent = store.recent(10).expect("recent");
        assert_eq!(recent.len(), 2);
        assert_eq!(recent[0].root, "other", "newest first: {recent:?}");
        assert!(store.span(&[2; 16], &[3; 8]).expect("get").is_some());
        assert!(store.span(&[2; 16], &[4; 8]).expect("get").is_none());
    }

    #[test]
    fn a_reader_never_creates_a_store() {
        let dir = tempfile::tempdir().expect("tempdir");
        let missing = dir.path().join("no-store");
        let e = SpanStore::open_existing(&missing).expect_err("nothing there");
        assert!(e.to_string().contains("no trace store here"), "{e}");
        assert!(!missing.exists(), "the reader made {}", missing.display());
    }

    #[test]
    fn trace_ids_are_checked() {
        assert!(parse_trace_id("ABCDEF0123456789abcdef0123456789").is_ok());
        for bad in ["", "xyz", &"0".repeat(32), &"a".repeat(31), &"g".repeat(32)] {
            assert!(
                matches!(parse_trace_id(bad), Err(Error::BadTraceId { .. })),
                "{bad:?}"
            );
        }
    }
}
