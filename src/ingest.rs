//! `mlstack ingest ...` and `mlstack produce`: thin wiring into `stream`.

use crate::Error;
use crate::cli::{
    IngestBenchArgs, IngestCommand, IngestCreateTopicArgs, IngestRunArgs, ProduceArgs,
};

/// The test failpoint's environment variable (see
/// [`stream::ingest::IngestConfig::stop_after_rename`]).
const STOP_AFTER_RENAME_ENV: &str = "MLSTACK_INGEST_FAILPOINT_STOP_AFTER_RENAME";

fn stream_err(e: stream::Error) -> Error {
    Error::Stream(e)
}

pub async fn run(cmd: &IngestCommand) -> Result<(), Error> {
    match cmd {
        IngestCommand::Run(a) => ingest(a).await,
        IngestCommand::Bench(a) => bench(a).await,
        IngestCommand::CreateTopic(a) => create_topic(a).await,
    }
}

/// `mlstack ingest create-topic`: retried while the broker is unreachable
/// (a compose init job may start before the broker listens), so it fails
/// only at --timeout, with the last error.
async fn create_topic(a: &IngestCreateTopicArgs) -> Result<(), Error> {
    let start = std::time::Instant::now();
    let per_try =
        std::time::Duration::from_secs(10).min(a.timeout.max(std::time::Duration::from_secs(1)));
    loop {
        match stream::topics::create(&a.brokers, &a.topic, a.partitions, a.replication, per_try)
            .await
        {
            Ok(created) => {
                let what = match created {
                    stream::topics::Created::Created => "created",
                    stream::topics::Created::Existed => "exists (left as it is)",
                };
                println!(
                    "topic {} at {}: {what}; partitions: {}",
                    a.topic,
                    a.brokers,
                    stream::topics::high_watermarks(&a.brokers, &a.topic, per_try)
                        .map(|w| w.len().to_string())
                        .unwrap_or_else(|e| format!("unknown ({e})"))
                );
                return Ok(());
            }
            // A bad argument will not get better by waiting; only the
            // broker's errors (unreachable, not ready) are retried.
            Err(e @ stream::Error::Config { .. }) => return Err(stream_err(e)),
            Err(e) if start.elapsed() + std::time::Duration::from_secs(1) >= a.timeout => {
                return Err(stream_err(e));
            }
            Err(e) => {
                tracing::info!(error = %e, "broker not ready; retrying");
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            }
        }
    }
}

async fn ingest(a: &IngestRunArgs) -> Result<(), Error> {
    let mut cfg = stream::ingest::IngestConfig::new(&a.brokers, &a.topic, &a.group, a.out.clone());
    if let Some(s) = &a.schema {
        cfg.schema = stream::schema::RecordSchema::from_file(s).map_err(stream_err)?;
    }
    cfg.roll = stream::writer::RollPolicy {
        max_rows: a.max_rows.max(1),
        max_bytes: a.max_bytes.max(1),
        max_age: a.max_age,
        row_group_rows: a.row_group_rows.max(1),
    };
    cfg.max_record_bytes = a.max_record_bytes;
    if let Some(d) = &a.dlq_topic {
        cfg.dlq_topic = d.clone();
    }
    cfg.kv_endpoints = a.kv.clone();
    cfg.assign_all = a.assign_all;
    cfg.max_open_files_per_partition = a.max_open_files_per_partition;
    // A test failpoint, not a flag: `tests/tests/ingest_fencing.rs` stops an
    // ingest between a file's rename and its manifest commit (a zombie).
    if let Ok(n) = std::env::var(STOP_AFTER_RENAME_ENV) {
        cfg.stop_after_rename = Some(n.trim().parse().map_err(|_| {
            Error::Stream(stream::Error::Config {
                reason: format!("{STOP_AFTER_RENAME_ENV}={n:?}: expected a roll count (1, 2, ...)"),
            })
        })?);
    }
    let manifest: Box<dyn stream::manifest::Manifest> = if a.kv.is_empty() {
        Box::new(
            stream::manifest::LocalManifest::open_with(&a.out, cfg.fs.clone())
                .map_err(stream_err)?,
        )
    } else {
        Box::new(
            stream::manifest::KvManifest::new(a.kv.clone(), &a.group, &a.topic)
                .map_err(stream_err)?,
        )
    };
    let metrics = stream::metrics::Metrics::new();
    metrics
        .register()
        .map_err(|e| Error::Stream(stream::Error::Metrics(e.to_string())))?;
    let component = crate::component::Component::start(a.metrics_listen).await?;
    component.ready(serde_json::json!({"out": a.out.display().to_string(), "topic": a.topic}));
    // Ingest commits what it holds when the signal comes, so the loop itself
    // waits for it (not `Component::wait_for_signal`).
    let summary = stream::ingest::run(cfg, manifest, metrics, observe::shutdown_signal())
        .await
        .map_err(stream_err)?;
    component.stop().await;
    eprintln!("{}", serde_json::to_string(&summary).unwrap_or_default());
    Ok(())
}

/// `mlstack produce`.
pub async fn produce(a: &ProduceArgs) -> Result<(), Error> {
    let source = match &a.file {
        Some(f) => stream::produce::Source::File(f.clone()),
        None => stream::produce::Source::Generate {
            count: a.count,
            record_bytes: a.record_bytes,
        },
    };
    let span = tracing::info_span!("stream.produce", topic = %a.topic);
    let cfg = stream::produce::ProduceConfig {
        brokers: a.brokers.clone(),
        topic: a.topic.clone(),
        source,
        rate: a.rate,
        id_prefix: a
            .id_prefix
            .clone()
            .unwrap_or_else(|| format!("{:08x}", rand_u32())),
    };
    let summary = tracing::Instrument::instrument(stream::produce::run(&cfg), span)
        .await
        .map_err(stream_err)?;
    println!("{}", serde_json::to_string(&summary).unwrap_or_default());
    Ok(())
}

fn rand_u32() -> u32 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u32(std::process::id());
    h.finish() as u32
}

async fn bench(a: &IngestBenchArgs) -> Result<(), Error> {
    let dir = tempfile::tempdir().map_err(|e| Error::Bench(format!("temp dir: {e}")))?;
    let cfg = bench::ingest::BenchConfig {
        brokers: a.brokers.clone(),
        volume_bytes: a.volume_mb << 20,
        record_bytes: a.record_bytes.max(64),
        partitions: a.partitions.max(1),
        latency_rate_bytes_per_sec: a.latency_rate_mb * 1_000_000,
        latency_duration: a.latency_duration,
        dir: dir.path().to_path_buf(),
    };
    let rows = bench::ingest::run(&cfg, |m| eprintln!("[ingest bench] {m}"))
        .await
        .map_err(stream_err)?;
    print!("{}", bench::ingest::table(&rows));
    crate::write_bench_report(&a.out, &bench::ingest::report(&cfg, rows))
}
