//! The ingest loop: consume, validate, write, commit: in that order.
//!
//! # The commit protocol (why a record lands exactly once)
//! For each Kafka partition, one part file per date is open (a record's date
//! is part of its file's path), at most
//! [`IngestConfig::max_open_files_per_partition`] of them. Together they hold
//! one contiguous offset range of the partition. When one rolls (max rows,
//! max bytes or max age), ingest rolls all of that partition's files:
//! 1. closes each, fsyncs it, links it to its final deterministic name
//!    `part-<partition>-<first>-<last>.parquet` and fsyncs the directory;
//! 2. records them in the manifest as one commit (durable before `commit`
//!    returns; all or nothing);
//! 3. only then commits `last + 1` to Kafka (asynchronously: it is a hint).
//!
//! Committing a partition's files together is what keeps the manifest's
//! invariant (per partition, commits are contiguous offset ranges and the
//! next offset is the last commit's `last + 1`) when records of different
//! dates interleave: each file's own range may interleave with another's of
//! the same commit, but the commit's range does not. Kafka Connect's S3 and
//! HDFS sinks do the same (one writer per encoded partition of a Kafka
//! partition, all committed at once); they bound nothing, though, and with
//! `rotate.interval.ms` they roll on every change of encoded partition (one
//! file per record for alternating timestamps). Here a record whose date
//! would open one file too many rolls the partition's open files first
//! (counted in `mlstack_ingest_forced_rolls_total`): memory and open files
//! stay bounded, and only input cycling through more dates than the bound
//! degrades to small files.
//!
//! On start and on every partition assignment ingest claims the partitions
//! in the manifest (fencing any previous owner), reads the manifest, removes
//! part files it does not list (orphans of a crash between 1 and 2), seeks
//! each assigned partition to the manifest's next offset, and skips any
//! record below it (Kafka's committed offset may trail the manifest after a
//! crash between 2 and 3). Before partitions are revoked in a rebalance, their
//! open files are committed the same way.
//!
//! # Zombies
//! A consumer that stalls (GC pause, SIGSTOP) after step 1 can resume after
//! the group gave its partition to another consumer, which has already
//! removed the stalled one's file as an orphan. Its commit must then fail, or
//! the manifest would list a missing file. This is Kafka Connect's zombie
//! fencing (KIP-618 for exactly-once sources; the transactional producer's
//! epoch for sinks writing to Kafka): the newest owner bumps an epoch and
//! every commit carries the epoch it was made under. Here the epoch is the
//! version of the partition's owner key in the KV manifest, bumped by
//! [`Manifest::claim`] on assignment *before* orphans are removed; a commit
//! compares it, and a deposed owner gets [`Error::Fenced`], removes its own
//! files and ignores the partition until the group assigns it again.
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
use std::collections::{BTreeMap, BTreeSet};
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
    /// At most this many part files (one per date) open per partition. A
    /// record whose date has no open file when this many are open rolls and
    /// commits all of the partition's open files first. Each open file holds
    /// up to a row group of rows in memory and one file descriptor; the
    /// bound is what keeps producer-controlled timestamps from making
    /// either unbounded. 0 counts as 1.
    pub max_open_files_per_partition: usize,
    /// Test failpoint: after the N-th roll's files are renamed, and before
    /// their manifest commit, the process stops itself (SIGSTOP), as a GC
    /// pause would: the window in which a zombie's commit must be fenced.
    pub stop_after_rename: Option<u64>,
    /// The file layer part files are written through (tests put a
    /// simulated power cut in it, `storage::power_loss`).
    pub fs: storage::io::Fs,
}

/// The default of [`IngestConfig::max_open_files_per_partition`]: a
/// partition's stream normally spans one date, two around midnight; late
/// records a few more.
pub const DEFAULT_MAX_OPEN_FILES_PER_PARTITION: usize = 8;

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
            max_open_files_per_partition: DEFAULT_MAX_OPEN_FILES_PER_PARTITION,
            stop_after_rename: None,
            fs: storage::io::Fs::default(),
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
    /// Commits refused because another consumer had claimed the partition.
    pub fenced_commits: u64,
    /// Records of a partition this consumer was fenced from, not written.
    pub skipped_fenced: u64,
    /// Rolls forced by the bound on open files per partition.
    pub forced_rolls: u64,
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
    /// Per partition: its open files, one per date, oldest opened first.
    /// Together they cover one contiguous offset range.
    open: BTreeMap<i32, Vec<PartFile>>,
    /// Partitions whose commit was fenced: another consumer owns them now.
    /// Their records are ignored until the group assigns them here again.
    fenced: BTreeSet<i32>,
    /// Rolls whose files were renamed (for the test failpoint).
    renamed: u64,
    metrics: Metrics,
    summary: Summary,
}

impl State {
    /// The last offset partition `p`'s open files cover.
    fn open_last(&self, p: i32) -> Option<i64> {
        self.open
            .get(&p)
            .and_then(|fs| fs.iter().map(|f| f.last_offset).max())
    }

    /// Closes and commits partition `p`'s open files as one commit (steps 1
    /// and 2). `Ok(None)` when nothing was open, or when the commit was
    /// fenced: then the files are removed and `p` is ignored from now on.
    fn commit_partition(&mut self, p: i32) -> Result<Option<Vec<FileCommit>>> {
        let files = self.open.remove(&p).unwrap_or_default();
        if files.is_empty() {
            return Ok(None);
        }
        let t0 = Instant::now();
        let first = files.iter().map(|f| f.first_offset).min().unwrap_or(0);
        let last = files.iter().map(|f| f.last_offset).max().unwrap_or(0);
        let span = tracing::info_span!(
            "stream.commit",
            partition = p,
            first_offset = first,
            last_offset = last,
            files = files.len(),
            rows = files.iter().map(|f| f.total_rows).sum::<u64>()
        );
        {
            use tracing_opentelemetry::OpenTelemetrySpanExt;
            for l in files.iter().flat_map(|f| f.links.iter()).take(128) {
                span.add_link(l.clone());
            }
        }
        let _g = span.enter();
        let ts: Vec<i64> = files
            .iter()
            .flat_map(|f| f.record_ts_ms.iter().copied())
            .collect();
        let mut finished = Vec::with_capacity(files.len());
        for f in files {
            finished.push(f.finish(&self.cfg.out, &self.cfg.topic)?);
        }
        self.renamed += 1;
        if self.cfg.stop_after_rename == Some(self.renamed) {
            tracing::warn!(
                partition = p,
                "failpoint: stopping after rename, before the manifest commit"
            );
            // SAFETY: raise(3) with a valid signal number.
            unsafe {
                libc::raise(libc::SIGSTOP);
            }
        }
        let commits = finished;
        match self.manifest.commit(&commits) {
            Ok(()) => {}
            Err(e @ Error::Fenced { .. }) => {
                // A zombie: the partition's new owner may already have
                // removed these files as orphans and be rewriting the same
                // records under the same names. Leave every file alone: an
                // unlisted file is invisible to readers (they go through the
                // manifest) and the owner's next orphan removal takes it,
                // whereas deleting by name, even after an inode check, can
                // hit the owner's committed file if the file system reused
                // the freed inode number for it.
                tracing::warn!(error = %e, files = commits.len(), "fenced: another consumer owns this partition now; this commit's files are left unlisted for the owner's orphan removal, and the partition's records are ignored until it is assigned here again");
                self.fenced.insert(p);
                self.metrics.fenced_commits.inc();
                self.summary.fenced_commits += 1;
                return Ok(None);
            }
            Err(e) => return Err(e),
        }
        for c in &commits {
            self.mstate.apply(c);
        }
        let now_ms = chrono::Utc::now().timestamp_millis();
        let keep = self.cfg.keep_latency_samples;
        for t in ts {
            let ms = (now_ms - t).max(0) as f64;
            self.metrics.e2e_latency_seconds.observe(ms / 1000.0);
            if keep && self.summary.e2e_ms.len() < 10_000_000 {
                self.summary.e2e_ms.push(ms);
            }
        }
        let commit_secs = t0.elapsed().as_secs_f64();
        self.metrics.commit_seconds.observe(commit_secs);
        if keep {
            self.summary.commit_ms.push(commit_secs * 1e3);
        }
        for commit in &commits {
            self.metrics.files_written.inc();
            self.metrics.file_bytes.inc_by(commit.bytes);
            self.metrics.rows_written.inc_by(commit.rows);
            self.summary.files += 1;
            self.summary.file_bytes += commit.bytes;
            self.summary.rows_written += commit.rows;
            tracing::debug!(path = %commit.path, rows = commit.rows, "committed part file");
        }
        Ok(Some(commits))
    }

    /// Commits each partition's open files, in order; stops at the first error.
    fn commit_partitions(&mut self, parts: Vec<i32>) -> Result<Vec<FileCommit>> {
        let mut commits = Vec::new();
        for p in parts {
            if let Some(c) = self.commit_partition(p)? {
                commits.extend(c);
            }
        }
        Ok(commits)
    }

    /// Kafka offsets to commit after `commits`: per partition, the last
    /// offset committed plus one.
    fn offsets_tpl(&self, commits: &[FileCommit]) -> TopicPartitionList {
        let mut next: BTreeMap<i32, i64> = BTreeMap::new();
        for c in commits {
            let n = next.entry(c.partition).or_insert(0);
            *n = (*n).max(c.last_offset + 1);
        }
        let mut tpl = TopicPartitionList::new();
        for (p, o) in next {
            let _ = tpl.add_partition_offset(&self.cfg.topic, p, Offset::Offset(o));
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
                Ok(Some(c)) => commits.extend(c),
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
        let parts: Vec<i32> = tpl
            .elements_for_topic(&self.topic)
            .iter()
            .map(|e| e.partition())
            .collect();
        // Fence the previous owners first: once our claim is in, no commit
        // of theirs can list a file, so the manifest read next is final for
        // everything before our own commits, and the orphans removed below
        // cannot be listed afterwards by a consumer that stalled.
        if let Err(e) = st.manifest.claim(&parts) {
            *self.error.lock().unwrap_or_else(|p| p.into_inner()) =
                Some(format!("claiming partitions {parts:?} on assignment: {e}"));
            return;
        }
        for p in &parts {
            st.fenced.remove(p);
        }
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
    let mut mstate = manifest.load()?;
    // With a manifest only this process writes (the local one, locked),
    // every orphan is ours to remove now. With a shared one, only orphans of
    // partitions this process has claimed are (on assignment, or below for
    // --assign-all): another consumer may be between its rename and its
    // commit.
    let removed = if manifest.shared() {
        Vec::new()
    } else {
        remove_orphans(&cfg.out, &cfg.topic, &mstate, None)?
    };
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
        mstate: std::mem::take(&mut mstate),
        open: BTreeMap::new(),
        fenced: BTreeSet::new(),
        renamed: 0,
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
        let mut st = state.lock().unwrap_or_else(|p| p.into_inner());
        // Claim, then read where the previous owner got to, then remove its
        // orphans (as on a group assignment).
        st.manifest.claim(&parts)?;
        st.mstate = st.manifest.load()?;
        if st.manifest.shared() {
            let removed = remove_orphans(&cfg.out, &cfg.topic, &st.mstate, Some(&parts))?;
            st.summary.orphans_removed += removed.len() as u64;
        }
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
                let due: Vec<i32> = st
                    .open
                    .iter()
                    .filter(|(_, fs)| fs.iter().any(|f| f.should_roll(&cfg.roll)))
                    .map(|(p, _)| *p)
                    .collect();
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
                    let tpl = state.lock().unwrap_or_else(|p| p.into_inner()).offsets_tpl(&c);
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
) -> Result<Option<Vec<FileCommit>>> {
    let p = m.partition();
    let offset = m.offset();
    let payload = m.payload().unwrap_or_default();
    metrics.records_in.inc();
    metrics.bytes_in.inc_by(payload.len() as u64);
    let ts_ms = m.timestamp().to_millis();
    let validated = {
        let mut st = state.lock().unwrap_or_else(|p| p.into_inner());
        st.summary.records += 1;
        if st.fenced.contains(&p) {
            // Another consumer owns this partition now; whoever is assigned
            // it next reads these records from the manifest's next offset.
            st.summary.skipped_fenced += 1;
            return Ok(None);
        }
        let next = st.mstate.next_offset.get(&p).copied().unwrap_or(0);
        let open_last = st.open_last(p).unwrap_or(i64::MIN);
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
            return finish_record(&mut st, p, offset, values, ts_ms, m, &date);
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
    if st.fenced.contains(&p) {
        return Ok(None);
    }
    // The offset is done even though it has no row: an open file covers it
    // (the partition's commit covers the union of its files' ranges).
    let files = st.open.entry(p).or_default();
    if files.is_empty() {
        let date = date_of(ts_ms.unwrap_or_else(|| chrono::Utc::now().timestamp_millis()));
        files.push(PartFile::create(
            &cfg.fs,
            &cfg.out,
            &cfg.topic,
            &date,
            p,
            offset,
            &cfg.schema,
            &cfg.roll,
        )?);
    }
    if let Some(f) = files.iter_mut().max_by_key(|f| f.last_offset) {
        f.skip(offset);
    }
    Ok(None)
}

/// Appends a validated record to its partition's file for `date`, opening
/// that file if needed. Returns the partition's commit if it rolled.
#[allow(clippy::too_many_arguments)]
fn finish_record(
    st: &mut State,
    p: i32,
    offset: i64,
    values: Vec<crate::schema::Value>,
    ts_ms: Option<i64>,
    m: &BorrowedMessage<'_>,
    date: &str,
) -> Result<Option<Vec<FileCommit>>> {
    let mut rolled: Option<Vec<FileCommit>> = None;
    let has_date = st
        .open
        .get(&p)
        .is_some_and(|fs| fs.iter().any(|f| f.date == date));
    if !has_date {
        let bound = st.cfg.max_open_files_per_partition.max(1);
        if st.open.get(&p).map_or(0, Vec::len) >= bound {
            // Beyond the bound: roll and commit all of the partition's open
            // files, then open this date's. Rolling only the oldest file is
            // not possible: its records interleave with the others' and a
            // commit must cover a contiguous range.
            tracing::debug!(
                partition = p,
                date,
                bound,
                "open-file bound reached; rolling the partition"
            );
            st.metrics.forced_rolls.inc();
            st.summary.forced_rolls += 1;
            rolled = st.commit_partition(p)?;
            if st.fenced.contains(&p) {
                return Ok(rolled);
            }
        }
        let f = PartFile::create(
            &st.cfg.fs,
            &st.cfg.out,
            &st.cfg.topic,
            date,
            p,
            offset,
            &st.cfg.schema,
            &st.cfg.roll,
        )?;
        st.open.entry(p).or_default().push(f);
    }
    let key = m.key().map(|k| String::from_utf8_lossy(k).into_owned());
    let links_cap = 128;
    let roll = {
        let Some(f) = st
            .open
            .get_mut(&p)
            .and_then(|fs| fs.iter_mut().find(|f| f.date == date))
        else {
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
    if roll && let Some(c) = st.commit_partition(p)? {
        rolled.get_or_insert_with(Vec::new).extend(c);
    }
    Ok(rolled)
}
