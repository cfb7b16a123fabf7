//! The ingest loop: consume, validate, write, commit: in that order.
//!
//! # The commit protocol (why a record lands exactly once)
//! For each Kafka partition one part file is open. When it rolls (max rows,
//! max bytes or max age), ingest:
//! 1. closes it, fsyncs it, renames it to its final deterministic name
//!    `part-<partition>-<first>-<last>.parquet` and fsyncs the directory;
//! 2. records the commit in the manifest (durable before `commit` returns);
//! 3. only then commits `last + 1` to Kafka (asynchronously: it is a hint).
//!
//! On start and on every partition assignment ingest reads the manifest,
//! removes part files it does not list (orphans of a crash between 1 and 2),
//! seeks each assigned partition to the manifest's next offset, and skips any
//! record below it (Kafka's committed offset may trail the manifest after a
//! crash between 2 and 3). Before partitions are revoked in a rebalance, their
//! open files are committed the same way.
//!
//! Bad records (not JSON, schema mismatch, oversized) go to `<topic>.dlq`
//! with their original bytes and headers plus `error`/`error-kind`/`source-*`
//! headers, *before* the file covering their offset commits, so none is
//! dropped silently. The DLQ is at-least-once: a crash between the DLQ send
//! and the file commit sends that record again.

use crate::error::{Error, Result, kafka};
use crate::manifest::{Manifest, ManifestState, remove_orphans};
use crate::metrics::Metrics;
use crate::schema::{Meta, RecordSchema};
use crate::writer::{FileCommit, PartFile, RollPolicy, date_of};
use rdkafka::client::ClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer,
};
use rdkafka::message::{BorrowedMessage, Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::statistics::Statistics;
use rdkafka::{Offset, TopicPartitionList};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Everything `mlstack ingest run` configures.
#[derive(Clone, Debug)]
pub struct IngestConfig {
    pub brokers: String,
    pub topic: String,
    pub group: String,
    pub out: PathBuf,
    pub schema: RecordSchema,
    pub roll: RollPolicy,
    pub max_record_bytes: usize,
    /// Dead-letter topic (default `<topic>.dlq`).
    pub dlq_topic: String,
    /// Raft KV endpoints for the manifest; empty = the local manifest file.
    pub kv_endpoints: Vec<String>,
    /// librdkafka statistics interval (consumer lag metrics).
    pub stats_interval: Duration,
    /// Static group membership (`group.instance.id`, KIP-345): a restarted
    /// ingest takes its predecessor's place in the group at once. Off by
    /// default: with tansu 0.6.0 it made the group rebalance every session
    /// timeout (see README).
    pub instance_id: Option<String>,
    /// Assign every partition of the topic to this process directly instead
    /// of joining the group's partition assignment (offsets are still
    /// committed under `group`). For a single ingest per topic; it does not
    /// depend on the broker's group coordinator, which in tansu 0.6.0 can
    /// keep rebalancing for a long time after members are SIGKILLed.
    pub assign_all: bool,
    /// Keep every record's end-to-end latency and every file's commit time in
    /// the [`Summary`] (the benchmark's percentiles). Off for `ingest run`: a
    /// long-running ingest would keep a sample per record; the
    /// `mlstack_ingest_*` histograms cover it there.
    pub keep_latency_samples: bool,
}

impl IngestConfig {
    pub fn new(brokers: &str, topic: &str, group: &str, out: PathBuf) -> Self {
        Self {
            brokers: brokers.into(),
            topic: topic.into(),
            group: group.into(),
            out,
            schema: RecordSchema::default(),
            roll: RollPolicy::default(),
            max_record_bytes: 1 << 20,
            dlq_topic: format!("{topic}.dlq"),
            kv_endpoints: Vec::new(),
            stats_interval: Duration::from_secs(1),
            instance_id: None,
            assign_all: false,
            keep_latency_samples: false,
        }
    }
}

/// What a run did.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Summary {
    pub records: u64,
    pub rows_written: u64,
    pub dlq_records: u64,
    pub files: u64,
    pub file_bytes: u64,
    pub skipped_replayed: u64,
    pub orphans_removed: u64,
    /// Record timestamp → file commit, per record (ms); only with
    /// [`IngestConfig::keep_latency_samples`].
    #[serde(skip)]
    pub e2e_ms: Vec<f64>,
    /// Per file commit (encode, fsync, read-back check, rename, manifest), ms;
    /// only with [`IngestConfig::keep_latency_samples`].
    #[serde(skip)]
    pub commit_ms: Vec<f64>,
}

struct State {
    cfg: IngestConfig,
    manifest: Box<dyn Manifest>,
    mstate: ManifestState,
    open: BTreeMap<i32, PartFile>,
    metrics: Metrics,
    summary: Summary,
}

impl State {
    /// Closes and commits partition `p`'s open file (steps 1 and 2).
    fn commit_partition(&mut self, p: i32) -> Result<Option<FileCommit>> {
        let Some(file) = self.open.remove(&p) else {
            return Ok(None);
        };
        let t0 = Instant::now();
        let span = tracing::info_span!(
            "stream.commit",
            partition = p,
            first_offset = file.first_offset,
            last_offset = file.last_offset,
            rows = file.total_rows
        );
        {
            use tracing_opentelemetry::OpenTelemetrySpanExt;
            for l in &file.links {
                span.add_link(l.clone());
            }
        }
        let _g = span.enter();
        let ts = file.record_ts_ms.clone();
        let commit = file.finish(&self.cfg.out, &self.cfg.topic)?;
        self.manifest.commit(&commit)?;
        self.mstate.apply(&commit);
        let now_ms = chrono::Utc::now().timestamp_millis();
        let keep = self.cfg.keep_latency_samples;
        for t in ts {
            let ms = (now_ms - t).max(0) as f64;
            self.metrics.e2e_latency_seconds.observe(ms / 1000.0);
            if keep && self.summary.e2e_ms.len() < 10_000_000 {
                self.summary.e2e_ms.push(ms);
            }
        }
        self.metrics.files_written.inc();
        self.metrics.file_bytes.inc_by(commit.bytes);
        self.metrics.rows_written.inc_by(commit.rows);
        let commit_secs = t0.elapsed().as_secs_f64();
        self.metrics.commit_seconds.observe(commit_secs);
        if keep {
            self.summary.commit_ms.push(commit_secs * 1e3);
        }
        self.summary.files += 1;
        self.summary.file_bytes += commit.bytes;
        self.summary.rows_written += commit.rows;
        tracing::debug!(path = %commit.path, rows = commit.rows, "committed part file");
        Ok(Some(commit))
    }

    /// Commits each partition's open file, in order; stops at the first error.
    fn commit_partitions(&mut self, parts: Vec<i32>) -> Result<Vec<FileCommit>> {
        let mut commits = Vec::new();
        for p in parts {
            if let Some(c) = self.commit_partition(p)? {
                commits.push(c);
            }
        }
        Ok(commits)
    }

    fn offsets_tpl(&self, commits: &[FileCommit]) -> TopicPartitionList {
        let mut tpl = TopicPartitionList::new();
        for c in commits {
            let _ = tpl.add_partition_offset(
                &self.cfg.topic,
                c.partition,
                Offset::Offset(c.last_offset + 1),
            );
        }
        tpl
    }
}

/// librdkafka's `fetch.wait.max.ms`: how long the broker may hold a fetch
/// that has nothing new. librdkafka's default is 500 ms; tansu 0.6 holds an
/// empty fetch for the whole wait, so at a steady trickle a record arriving
/// just after a fetch went out waited up to 500 ms before it was even read
/// (the bench's raw consumer measured p50 510 ms record → receipt at 10 MB/s).
/// 100 ms costs a few more fetch requests per second and takes that wait off
/// every record's latency.
pub const FETCH_WAIT_MAX_MS: &str = "100";

/// The consumer context: rebalance hooks and librdkafka statistics.
struct Ctx {
    state: Arc<Mutex<State>>,
    metrics: Metrics,
    topic: String,
    error: Arc<Mutex<Option<String>>>,
}

impl ClientContext for Ctx {
    fn stats(&self, s: Statistics) {
        for (t, topic) in &s.topics {
            for (p, part) in &topic.partitions {
                if *p >= 0 && part.consumer_lag >= 0 {
                    self.metrics
                        .consumer_lag
                        .with_label_values(&[t.as_str(), &p.to_string()])
                        .set(part.consumer_lag);
                }
            }
        }
    }
}

impl ConsumerContext for Ctx {
    fn pre_rebalance(&self, base: &BaseConsumer<Self>, r: &Rebalance<'_>) {
        let Rebalance::Revoke(tpl) = r else { return };
        // Commit what we hold for the revoked partitions before they move:
        // the next owner resumes exactly after our last committed file.
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let mut commits = Vec::new();
        for e in tpl.elements_for_topic(&self.topic) {
            match st.commit_partition(e.partition()) {
                Ok(Some(c)) => commits.push(c),
                Ok(None) => {}
                Err(err) => {
                    *self.error.lock().unwrap_or_else(|p| p.into_inner()) = Some(format!(
                        "committing partition {} on revoke: {err}",
                        e.partition()
                    ));
                }
            }
        }
        if !commits.is_empty() {
            let tpl = st.offsets_tpl(&commits);
            if let Err(e) = base.commit(&tpl, CommitMode::Sync) {
                tracing::warn!(error = %e, "offset commit on revoke failed (the manifest is authoritative)");
            }
        }
    }

    fn post_rebalance(&self, base: &BaseConsumer<Self>, r: &Rebalance<'_>) {
        let Rebalance::Assign(tpl) = r else { return };
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        // Re-read the manifest: with a shared (KV) manifest another consumer
        // may have committed these partitions since we last looked.
        match st.manifest.load() {
            Ok(m) => st.mstate = m,
            Err(e) => {
                *self.error.lock().unwrap_or_else(|p| p.into_inner()) =
                    Some(format!("reloading the manifest on assignment: {e}"));
                return;
            }
        }
        let mut seek = TopicPartitionList::new();
        let mut any = false;
        for e in tpl.elements() {
            let off = if e.topic() == self.topic {
                st.mstate.next_offset.get(&e.partition()).copied()
            } else {
                None
            };
            let _ = match off {
                Some(o) => {
                    any = true;
                    seek.add_partition_offset(e.topic(), e.partition(), Offset::Offset(o))
                }
                None => seek.add_partition_offset(e.topic(), e.partition(), Offset::Stored),
            };
        }
        if any {
            // Start where the manifest says, not where Kafka's committed
            // offset says. (Records below it are skipped anyway.)
            if let Err(e) = base.assign(&seek) {
                tracing::warn!(error = %e, "re-assigning with manifest offsets failed; relying on the replay filter");
            }
        }
        let parts: Vec<i32> = tpl
            .elements_for_topic(&self.topic)
            .iter()
            .map(|e| e.partition())
            .collect();
        let (out, topic) = (st.cfg.out.clone(), st.cfg.topic.clone());
        let mstate = st.mstate.clone();
        match remove_orphans(&out, &topic, &mstate, Some(&parts)) {
            Ok(removed) => st.summary.orphans_removed += removed.len() as u64,
            Err(e) => tracing::warn!(error = %e, "removing orphans on assignment"),
        }
        tracing::info!(partitions = ?parts, next = ?st.mstate.next_offset, "partitions assigned");
    }
}

/// Runs ingest until `stop` resolves; then commits every open file.
pub async fn run(
    cfg: IngestConfig,
    manifest: Box<dyn Manifest>,
    metrics: Metrics,
    stop: impl std::future::Future<Output = ()>,
) -> Result<Summary> {
    let mut manifest = manifest;
    let mstate = manifest.load()?;
    let removed = remove_orphans(&cfg.out, &cfg.topic, &mstate, None)?;
    if !removed.is_empty() {
        tracing::info!(
            count = removed.len(),
            "removed orphan part files the manifest does not list"
        );
    }
    tracing::info!(manifest = %manifest.describe(), files = mstate.files.len(), next = ?mstate.next_offset, "manifest loaded");
    let state = Arc::new(Mutex::new(State {
        cfg: cfg.clone(),
        manifest,
        mstate,
        open: BTreeMap::new(),
        metrics: metrics.clone(),
        summary: Summary {
            orphans_removed: removed.len() as u64,
            ..Default::default()
        },
    }));
    let error = Arc::new(Mutex::new(None));
    let ctx = Ctx {
        state: state.clone(),
        metrics: metrics.clone(),
        topic: cfg.topic.clone(),
        error: error.clone(),
    };
    let mut client_config = ClientConfig::new();
    if let Some(id) = &cfg.instance_id {
        client_config.set("group.instance.id", id);
    }
    let consumer: StreamConsumer<Ctx> = client_config
        .set("bootstrap.servers", &cfg.brokers)
        .set("group.id", &cfg.group)
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .set("enable.partition.eof", "false")
        .set(
            "statistics.interval.ms",
            cfg.stats_interval.as_millis().to_string(),
        )
        .set("session.timeout.ms", "6000")
        .set("fetch.max.bytes", "52428800")
        .set("fetch.wait.max.ms", FETCH_WAIT_MAX_MS)
        .set("max.partition.fetch.bytes", "10485760")
        .create_with_context(ctx)
        .map_err(kafka("create consumer"))?;
    if cfg.assign_all {
        let md = consumer
            .fetch_metadata(Some(&cfg.topic), Duration::from_secs(30))
            .map_err(kafka("fetch topic metadata"))?;
        let parts: Vec<i32> = md
            .topics()
            .iter()
            .filter(|t| t.name() == cfg.topic)
            .flat_map(|t| t.partitions().iter().map(|p| p.id()))
            .collect();
        if parts.is_empty() {
            return Err(Error::Config {
                reason: format!("topic {} has no partitions (does it exist?)", cfg.topic),
            });
        }
        let st = state.lock().unwrap_or_else(|p| p.into_inner());
        let mut tpl = TopicPartitionList::new();
        for p in &parts {
            // The manifest says where to start; a partition it never saw
            // starts at the group's committed offset, else the beginning.
            let off = match st.mstate.next_offset.get(p) {
                Some(o) => Offset::Offset(*o),
                None => Offset::Stored,
            };
            let _ = tpl.add_partition_offset(&cfg.topic, *p, off);
        }
        drop(st);
        consumer.assign(&tpl).map_err(kafka("assign"))?;
        tracing::info!(partitions = ?parts, "assigned every partition directly (--assign-all)");
    } else {
        consumer
            .subscribe(&[&cfg.topic])
            .map_err(kafka("subscribe"))?;
    }
    let dlq: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &cfg.brokers)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .create()
        .map_err(kafka("create DLQ producer"))?;

    let mut tick = tokio::time::interval(
        Duration::from_millis(100)
            .min(cfg.roll.max_age / 2)
            .max(Duration::from_millis(10)),
    );
    tokio::pin!(stop);
    loop {
        if let Some(e) = error.lock().unwrap_or_else(|p| p.into_inner()).take() {
            return Err(Error::Config { reason: e });
        }
        tokio::select! {
            _ = &mut stop => break,
            _ = tick.tick() => {
                // Age-based rolls: commit files whose age is up.
                let mut st = state.lock().unwrap_or_else(|p| p.into_inner());
                let due: Vec<i32> = st.open.iter().filter(|(_, f)| f.should_roll(&cfg.roll)).map(|(p, _)| *p).collect();
                let commits = st.commit_partitions(due)?;
                if !commits.is_empty() {
                    let tpl = st.offsets_tpl(&commits);
                    drop(st);
                    consumer.commit(&tpl, CommitMode::Async).map_err(kafka("commit offsets"))?;
                }
            }
            m = consumer.recv() => {
                let m = match m {
                    Ok(m) => m,
                    Err(e) => {
                        // Broker restarts and rebalances surface here; librdkafka
                        // reconnects by itself.
                        tracing::warn!(error = %e, "consume error (retrying)");
                        continue;
                    }
                };
                if m.topic() != cfg.topic {
                    continue;
                }
                let commit = handle(&state, &m, &cfg, &metrics, &dlq).await?;
                if let Some(c) = commit {
                    let tpl = state.lock().unwrap_or_else(|p| p.into_inner()).offsets_tpl(&[c]);
                    consumer.commit(&tpl, CommitMode::Async).map_err(kafka("commit offsets"))?;
                }
            }
        }
    }
    // Shut down: commit every open file, then the offsets (synchronously).
    let mut st = state.lock().unwrap_or_else(|p| p.into_inner());
    let parts: Vec<i32> = st.open.keys().copied().collect();
    let commits = st.commit_partitions(parts)?;
    if !commits.is_empty() {
        let tpl = st.offsets_tpl(&commits);
        if let Err(e) = consumer.commit(&tpl, CommitMode::Sync) {
            tracing::warn!(error = %e, "final offset commit failed (the manifest is authoritative)");
        }
    }
    Ok(st.summary.clone())
}

/// One record: skip if already committed, else validate and append (or
/// dead-letter). Returns a commit when the partition's file rolled.
async fn handle(
    state: &Arc<Mutex<State>>,
    m: &BorrowedMessage<'_>,
    cfg: &IngestConfig,
    metrics: &Metrics,
    dlq: &FutureProducer,
) -> Result<Option<FileCommit>> {
    let p = m.partition();
    let offset = m.offset();
    let payload = m.payload().unwrap_or_default();
    metrics.records_in.inc();
    metrics.bytes_in.inc_by(payload.len() as u64);
    let ts_ms = m.timestamp().to_millis();
    let validated = {
        let mut st = state.lock().unwrap_or_else(|p| p.into_inner());
        st.summary.records += 1;
        let next = st.mstate.next_offset.get(&p).copied().unwrap_or(0);
        let open_last = st.open.get(&p).map(|f| f.last_offset).unwrap_or(i64::MIN);
        if offset < next || offset <= open_last {
            // Already in a committed (or the open) file: a replay.
            st.summary.skipped_replayed += 1;
            metrics.replayed_skipped.inc();
            return Ok(None);
        }
        cfg.schema.validate(payload, cfg.max_record_bytes)
    };
    let bad = match validated {
        Ok(values) => {
            let mut st = state.lock().unwrap_or_else(|p| p.into_inner());
            let date = date_of(ts_ms.unwrap_or_else(|| chrono::Utc::now().timestamp_millis()));
            // A new day starts a new file (the date is part of the path).
            if st.open.get(&p).is_some_and(|f| f.date != date) {
                let c = st.commit_partition(p)?;
                if c.is_some() {
                    return finish_record(&mut st, p, offset, values, ts_ms, m, &date, c);
                }
            }
            return finish_record(&mut st, p, offset, values, ts_ms, m, &date, None);
        }
        Err(e) => e,
    };
    // Dead-letter: original bytes and headers, plus why and from where.
    let kind = bad.kind();
    let reason = bad.to_string();
    let mut headers = OwnedHeaders::new();
    if let Some(h) = m.headers() {
        for x in h.iter() {
            headers = headers.insert(Header {
                key: x.key,
                value: x.value,
            });
        }
    }
    let (p_s, o_s) = (p.to_string(), offset.to_string());
    headers = headers
        .insert(Header {
            key: "error",
            value: Some(reason.as_str()),
        })
        .insert(Header {
            key: "error-kind",
            value: Some(kind),
        })
        .insert(Header {
            key: "source-topic",
            value: Some(cfg.topic.as_str()),
        })
        .insert(Header {
            key: "source-partition",
            value: Some(p_s.as_str()),
        })
        .insert(Header {
            key: "source-offset",
            value: Some(o_s.as_str()),
        });
    let mut rec = FutureRecord::<[u8], [u8]>::to(&cfg.dlq_topic)
        .payload(payload)
        .headers(headers);
    if let Some(k) = m.key() {
        rec = rec.key(k);
    }
    dlq.send(rec, Duration::from_secs(30))
        .await
        .map_err(|(e, _)| Error::Kafka {
            op: "send to the dead-letter topic",
            source: e,
        })?;
    metrics.dlq_records.with_label_values(&[kind]).inc();
    tracing::debug!(partition = p, offset, %reason, "record sent to the dead-letter topic");
    let mut st = state.lock().unwrap_or_else(|p| p.into_inner());
    st.summary.dlq_records += 1;
    // The offset is done even though it has no row: the open file covers it.
    if let std::collections::btree_map::Entry::Vacant(slot) = st.open.entry(p) {
        let date = date_of(ts_ms.unwrap_or_else(|| chrono::Utc::now().timestamp_millis()));
        slot.insert(PartFile::create(
            &cfg.out,
            &cfg.topic,
            &date,
            p,
            offset,
            &cfg.schema,
            &cfg.roll,
        )?);
    }
    if let Some(f) = st.open.get_mut(&p) {
        f.skip(offset);
    }
    Ok(None)
}

#[allow(clippy::too_many_arguments)]
fn finish_record(
    st: &mut State,
    p: i32,
    offset: i64,
    values: Vec<crate::schema::Value>,
    ts_ms: Option<i64>,
    m: &BorrowedMessage<'_>,
    date: &str,
    rolled: Option<FileCommit>,
) -> Result<Option<FileCommit>> {
    if !st.open.contains_key(&p) {
        let f = PartFile::create(
            &st.cfg.out,
            &st.cfg.topic,
            date,
            p,
            offset,
            &st.cfg.schema,
            &st.cfg.roll,
        )?;
        st.open.insert(p, f);
    }
    let key = m.key().map(|k| String::from_utf8_lossy(k).into_owned());
    let links_cap = 128;
    let roll = {
        let Some(f) = st.open.get_mut(&p) else {
            return Ok(rolled);
        };
        f.push(
            values,
            &Meta {
                partition: p,
                offset,
                timestamp_ms: ts_ms,
                key,
            },
        )?;
        if f.links.len() < links_cap
            && let Some(h) = m.headers()
        {
            use opentelemetry::trace::TraceContextExt;
            let cx = observe::propagation::carrier::extract(
                h.iter().filter_map(|x| x.value.map(|v| (x.key, v))),
            );
            let sc = cx.span().span_context().clone();
            // Only sampled contexts name spans a trace store can hold (an
            // unsampled producer sends one context, never exported, for all).
            if sc.is_sampled() && !f.links.contains(&sc) {
                f.links.push(sc);
            }
        }
        f.should_roll(&st.cfg.roll)
    };
    if roll {
        let c = st.commit_partition(p)?;
        return Ok(c.or(rolled));
    }
    Ok(rolled)
}
