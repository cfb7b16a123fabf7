//! `mlstack ingest bench`: the broker's ceiling against the full ingest path,
//! and end-to-end latency at a fixed produce rate, in one run.
//!
//! 1. Pre-produce `volume` bytes of ~1 KiB JSON records over 3 partitions.
//! 2. `raw-consumer`: a consumer-group consumer that only counts bytes: what
//!    the broker can deliver on this machine.
//! 3. `mlstack`: the full ingest path (decode, Arrow, Parquet with zstd,
//!    fsync, rename, manifest, offset commit) over the same records.
//! 4. `latency_at_10mbps`: first `raw-consumer`, a consumer that only notes
//!    record timestamp → receipt at the fixed produce rate (the broker's
//!    delivery floor); then ingest running at the same rate, measuring record
//!    timestamp → file commit for every record.

use crate::report::{self, Report, Row};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Message;
use std::path::PathBuf;
use std::time::{Duration, Instant};
use stream::broker::Tansu;
use stream::error::{Result, kafka};
use stream::ingest::{self, FETCH_WAIT_MAX_MS, IngestConfig};
use stream::manifest::LocalManifest;
use stream::metrics::Metrics;
use stream::produce::{self, ProduceConfig, Source};

#[derive(Clone, Debug)]
pub struct BenchConfig {
    /// An existing broker; `None` = start tansu under `dir`.
    pub brokers: Option<String>,
    pub volume_bytes: u64,
    pub record_bytes: usize,
    pub partitions: u32,
    pub latency_rate_bytes_per_sec: u64,
    pub latency_duration: Duration,
    pub dir: PathBuf,
}

fn row(system: &str, workload: &str, metric: &str, value: f64, unit: &str) -> Row {
    Row::new(system, workload, metric, value, unit)
}

/// A consumer that does nothing but read: the same fetch settings as ingest's,
/// in a fresh group so it starts from the beginning.
fn raw_consumer(brokers: &str, topic: &str, group_prefix: &str) -> Result<StreamConsumer> {
    let c: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set(
            "group.id",
            format!("{group_prefix}-{}", rand::random::<u32>()),
        )
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .set("fetch.max.bytes", "52428800")
        .set("fetch.wait.max.ms", FETCH_WAIT_MAX_MS)
        .set("max.partition.fetch.bytes", "10485760")
        .create()
        .map_err(kafka("create consumer"))?;
    c.subscribe(&[topic]).map_err(kafka("subscribe"))?;
    Ok(c)
}

async fn raw_consume(brokers: &str, topic: &str, records: u64) -> Result<(f64, u64)> {
    let c = raw_consumer(brokers, topic, "raw")?;
    let mut n = 0u64;
    let mut bytes = 0u64;
    let mut t0 = None;
    while n < records {
        let m = c.recv().await.map_err(kafka("consume"))?;
        t0.get_or_insert_with(Instant::now);
        bytes += m.payload().map(|p| p.len()).unwrap_or(0) as u64;
        n += 1;
    }
    let secs = t0.map(|t| t.elapsed().as_secs_f64()).unwrap_or(1.0);
    Ok((secs, bytes))
}

/// Delivery latency at a fixed produce rate: record timestamp → receipt by a
/// consumer that does nothing else. This is the floor under ingest's
/// end-to-end latency on this broker and machine (producer batching, the
/// broker's write and fetch paths), measured the same way as ingest's.
async fn raw_latency(brokers: &str, topic: &str, records: u64) -> Result<Vec<f64>> {
    let c = raw_consumer(brokers, topic, "raw-lat")?;
    let mut lat_ms = Vec::with_capacity(records as usize);
    while (lat_ms.len() as u64) < records {
        let m = c.recv().await.map_err(kafka("consume"))?;
        if let Some(ts) = m.timestamp().to_millis() {
            let now = chrono::Utc::now().timestamp_millis();
            lat_ms.push((now - ts).max(0) as f64);
        }
    }
    Ok(lat_ms)
}

/// Runs ingest until it has read `records`; returns the seconds it took and
/// its summary.
async fn ingest_until(cfg: IngestConfig, records: u64) -> Result<(f64, ingest::Summary)> {
    let metrics = Metrics::new();
    let m2 = metrics.clone();
    let manifest = Box::new(LocalManifest::open(&cfg.out)?);
    let t0 = Instant::now();
    let stop = async move {
        while m2.records_in.get() < records {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    let summary = ingest::run(cfg, manifest, metrics.clone(), stop).await?;
    Ok((t0.elapsed().as_secs_f64(), summary))
}

/// The `p`-quantile of `sorted`; 0 when there were no samples.
fn pct(sorted: &[f64], p: f64) -> f64 {
    report::rank(sorted.len(), p).map_or(0.0, |i| sorted[i])
}

/// `<metric>_p50_ms` and `<metric>_p99_ms` rows of `samples_ms`.
fn percentile_rows(
    system: &str,
    workload: &str,
    metric: &str,
    mut samples_ms: Vec<f64>,
) -> [Row; 2] {
    samples_ms.sort_by(f64::total_cmp);
    [(50, 0.5), (99, 0.99)].map(|(name, p)| {
        row(
            system,
            workload,
            &format!("{metric}_p{name}_ms"),
            pct(&samples_ms, p),
            "ms",
        )
    })
}

/// One fixed-rate phase: `consumer` is already running; give it 3 s to join
/// its group, produce `count` generated records at `rate` records/s, then wait
/// for the consumer to finish.
async fn at_fixed_rate<T>(
    brokers: &str,
    topic: &str,
    count: u64,
    rate: u64,
    record_bytes: usize,
    id_prefix: &str,
    consumer: tokio::task::JoinHandle<Result<T>>,
) -> Result<(produce::ProduceSummary, T)> {
    tokio::time::sleep(Duration::from_secs(3)).await;
    let p = produce::run(&ProduceConfig {
        brokers: brokers.into(),
        topic: topic.into(),
        source: Source::Generate {
            count,
            record_bytes,
        },
        rate,
        id_prefix: id_prefix.into(),
    })
    .await?;
    let t = consumer.await.map_err(|e| stream::Error::Config {
        reason: e.to_string(),
    })??;
    Ok((p, t))
}

/// Runs the benchmark; `progress` gets a line per step.
pub async fn run(cfg: &BenchConfig, mut progress: impl FnMut(&str)) -> Result<Vec<Row>> {
    let mut broker = None;
    let brokers = match &cfg.brokers {
        Some(b) => b.clone(),
        None => {
            let t = Tansu::start(&cfg.dir.join("broker"))?;
            let a = t.addr.clone();
            broker = Some(t);
            a
        }
    };
    let topic = format!("bench-{}", rand::random::<u32>());
    if let Some(t) = &broker {
        t.create_topic(&topic, cfg.partitions)?;
        t.create_topic(&format!("{topic}.dlq"), 1)?;
    }
    let count = (cfg.volume_bytes / cfg.record_bytes.max(1) as u64).max(1);
    progress(&format!(
        "producing {count} records of ~{} bytes to {topic}",
        cfg.record_bytes
    ));
    let prod = produce::run(&ProduceConfig {
        brokers: brokers.clone(),
        topic: topic.clone(),
        source: Source::Generate {
            count,
            record_bytes: cfg.record_bytes,
        },
        rate: 0,
        id_prefix: "bench".into(),
    })
    .await?;
    progress(&format!(
        "produced {:.0} MB at {:.1} MB/s",
        prod.bytes as f64 / 1e6,
        prod.mb_per_sec
    ));
    let mut rows = vec![row(
        "producer",
        "produce",
        "mb_per_sec",
        prod.mb_per_sec,
        "MB/s",
    )];

    progress("raw consumer (counts bytes only)");
    let (raw_secs, raw_bytes) = raw_consume(&brokers, &topic, count).await?;
    let raw_mb = raw_bytes as f64 / 1e6 / raw_secs;
    rows.push(row("raw-consumer", "ingest", "mb_per_sec", raw_mb, "MB/s"));
    rows.push(row(
        "raw-consumer",
        "ingest",
        "records_per_sec",
        count as f64 / raw_secs,
        "records/s",
    ));

    progress("full ingest path");
    let out = cfg.dir.join("out");
    let mut icfg = IngestConfig::new(
        &brokers,
        &topic,
        &format!("ingest-{}", rand::random::<u32>()),
        out.clone(),
    );
    icfg.roll.max_age = Duration::from_secs(5);
    let (secs, summary) = ingest_until(icfg, count).await?;
    let mb = raw_bytes as f64 / 1e6 / secs;
    rows.push(row("mlstack", "ingest", "mb_per_sec", mb, "MB/s"));
    rows.push(row(
        "mlstack",
        "ingest",
        "records_per_sec",
        count as f64 / secs,
        "records/s",
    ));
    rows.push(row(
        "mlstack",
        "ingest",
        "ratio_to_raw_consumer",
        mb / raw_mb,
        "x",
    ));
    rows.push(row(
        "mlstack",
        "ingest",
        "files",
        summary.files as f64,
        "count",
    ));
    rows.push(row(
        "mlstack",
        "ingest",
        "mean_file_mb",
        summary.file_bytes as f64 / 1e6 / summary.files.max(1) as f64,
        "MB",
    ));
    rows.push(row(
        "mlstack",
        "ingest",
        "compression_ratio",
        raw_bytes as f64 / summary.file_bytes.max(1) as f64,
        "x",
    ));
    let _ = std::fs::remove_dir_all(&out);

    // Latency at a fixed rate, with the default roll age.
    let rate_records = (cfg.latency_rate_bytes_per_sec / cfg.record_bytes.max(1) as u64).max(1);
    let lat_count = (rate_records as f64 * cfg.latency_duration.as_secs_f64()) as u64;

    // First the floor: the same rate into a consumer that only timestamps.
    let raw_topic = format!("{topic}-rawlat");
    if let Some(t) = &broker {
        t.create_topic(&raw_topic, cfg.partitions)?;
    }
    progress(&format!(
        "delivery latency floor: raw consumer at {rate_records} records/s for {:?}",
        cfg.latency_duration
    ));
    let raw = {
        let (b, t) = (brokers.clone(), raw_topic.clone());
        tokio::spawn(async move { raw_latency(&b, &t, lat_count).await })
    };
    let (_, raw_lat) = at_fixed_rate(
        &brokers,
        &raw_topic,
        lat_count,
        rate_records,
        cfg.record_bytes,
        "rawlat",
        raw,
    )
    .await?;
    rows.extend(percentile_rows(
        "raw-consumer",
        "latency_at_10mbps",
        "e2e_latency",
        raw_lat,
    ));

    let lat_topic = format!("{topic}-lat");
    if let Some(t) = &broker {
        t.create_topic(&lat_topic, cfg.partitions)?;
        t.create_topic(&format!("{lat_topic}.dlq"), 1)?;
    }
    progress(&format!(
        "latency: {rate_records} records/s (~{:.0} MB/s) for {:?}, default roll age",
        cfg.latency_rate_bytes_per_sec as f64 / 1e6,
        cfg.latency_duration
    ));
    let out = cfg.dir.join("out-lat");
    let mut icfg = IngestConfig::new(
        &brokers,
        &lat_topic,
        &format!("lat-{}", rand::random::<u32>()),
        out.clone(),
    );
    icfg.keep_latency_samples = true;
    let ingest = tokio::spawn(ingest_until(icfg, lat_count));
    let (p, (_, lat_summary)) = at_fixed_rate(
        &brokers,
        &lat_topic,
        lat_count,
        rate_records,
        cfg.record_bytes,
        "lat",
        ingest,
    )
    .await?;
    rows.push(row(
        "producer",
        "latency_at_10mbps",
        "mb_per_sec",
        p.mb_per_sec,
        "MB/s",
    ));
    rows.extend(percentile_rows(
        "mlstack",
        "latency_at_10mbps",
        "e2e_latency",
        lat_summary.e2e_ms,
    ));
    // Where ingest's share goes: each file waits up to the roll age, then its
    // commit (encode, fsync, check, rename, manifest) runs on the consume loop.
    rows.extend(percentile_rows(
        "mlstack",
        "latency_at_10mbps",
        "file_commit",
        lat_summary.commit_ms,
    ));
    let _ = std::fs::remove_dir_all(&out);
    drop(broker);
    Ok(rows)
}

/// The human table: one line per figure.
pub fn table(rows: &[Row]) -> String {
    report::listing(rows)
}

/// The report in the benchmark JSON convention.
pub fn report(cfg: &BenchConfig, rows: Vec<Row>) -> Report {
    Report {
        component: "stream",
        bench: "ingest",
        config: serde_json::json!({
            "volume_bytes": cfg.volume_bytes, "record_bytes": cfg.record_bytes,
            "partitions": cfg.partitions, "latency_rate_bytes_per_sec": cfg.latency_rate_bytes_per_sec,
            "latency_duration_s": cfg.latency_duration.as_secs_f64(),
            "broker": if cfg.brokers.is_some() { "external" } else { "tansu 0.6.0 (sqlite), same machine" },
            "parquet": "zstd, 65,536-row groups, roll at 1,000,000 rows / 128 MiB / age (5 s throughput, 1 s latency)",
        }),
        results: rows,
    }
}
