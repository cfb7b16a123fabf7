//! `mlstack produce`: feed a corpus file or generated records into a topic.
//!
//! Generated records follow the corpus schema: `{"id", "text", "ts"}` with
//! `text` padded so the JSON is about `record_bytes` long. Every record
//! carries a `traceparent` header, so ingest's file commits link back to it:
//! when the run's trace is sampled (exported), each of the first
//! [`MAX_RECORD_SPANS`] records gets its own `stream.produce.record` span,
//! from send to the broker's acknowledgement, with the partition and offset
//! it landed at; the rest, and every record of an unsampled run, carry the
//! run's context.

use crate::error::{Result, kafka};
use rdkafka::config::ClientConfig;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use std::time::{Duration, Instant};

/// What to send.
#[derive(Clone, Debug)]
pub enum Source {
    /// One record per non-empty line of a JSONL file (sent as is).
    File(std::path::PathBuf),
    /// `count` generated records of about `record_bytes`.
    Generate { count: u64, record_bytes: usize },
}

#[derive(Clone, Debug)]
pub struct ProduceConfig {
    pub brokers: String,
    pub topic: String,
    pub source: Source,
    /// Records per second; 0 = as fast as the broker takes them.
    pub rate: u64,
    /// Prefix of generated ids (unique per run by default).
    pub id_prefix: String,
}

#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct ProduceSummary {
    pub records: u64,
    pub bytes: u64,
    pub seconds: f64,
    pub mb_per_sec: f64,
    pub first_id: String,
    pub last_id: String,
}

const WORDS: &[&str] = &[
    "the",
    "model",
    "reads",
    "tokens",
    "from",
    "a",
    "stream",
    "of",
    "records",
    "and",
    "writes",
    "parquet",
    "files",
    "that",
    "training",
    "jobs",
    "scan",
    "in",
    "order",
    "raft",
    "keeps",
    "manifests",
    "consistent",
    "while",
    "kafka",
    "retains",
    "every",
    "offset",
];

/// A generated record of about `bytes` bytes.
pub fn generated_record(id: &str, bytes: usize, rng: &mut impl rand::Rng) -> Vec<u8> {
    let ts = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let overhead = 32 + id.len() + ts.len();
    let mut text = String::with_capacity(bytes);
    while text.len() + overhead < bytes {
        if !text.is_empty() {
            text.push(' ');
        }
        text.push_str(WORDS[rng.random_range(0..WORDS.len())]);
    }
    serde_json::to_vec(&serde_json::json!({"id": id, "text": text, "ts": ts})).unwrap_or_default()
}

pub fn producer(brokers: &str) -> Result<FutureProducer> {
    ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "5")
        .set("batch.size", "1000000")
        .set("queue.buffering.max.kbytes", "262144")
        .set("message.timeout.ms", "60000")
        .create()
        .map_err(kafka("create producer"))
}

/// How many records of one run get a span of their own.
pub const MAX_RECORD_SPANS: usize = 10_000;

/// Sends every record, waiting for each acknowledgement (in flight: up to
/// 10,000 at a time); returns when all are acknowledged.
pub async fn run(cfg: &ProduceConfig) -> Result<ProduceSummary> {
    let p = producer(&cfg.brokers)?;
    let run_span = tracing::Span::current();
    let per_record_spans = observe::traceparent_of(&run_span).is_some();
    let run_trace = observe::carrier::inject();
    let mut rng = rand::rng();
    let mut summary = ProduceSummary::default();
    let t0 = Instant::now();
    let mut inflight = futures::stream::FuturesUnordered::new();
    let lines: Box<dyn Iterator<Item = std::result::Result<Vec<u8>, crate::Error>>> =
        match &cfg.source {
            Source::File(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| crate::Error::Io {
                    op: "read corpus",
                    path: path.clone(),
                    source,
                })?;
                let lines: Vec<Vec<u8>> = text
                    .lines()
                    .filter(|l| !l.trim().is_empty())
                    .map(|l| l.as_bytes().to_vec())
                    .collect();
                Box::new(lines.into_iter().map(Ok))
            }
            Source::Generate {
                count,
                record_bytes,
            } => {
                let (count, bytes, prefix) = (*count, *record_bytes, cfg.id_prefix.clone());
                Box::new((0..count).map(move |i| {
                    let id = format!("{prefix}-{i}");
                    Ok(generated_record(&id, bytes, &mut rand::rng()))
                }))
            }
        };
    let _ = &mut rng;
    use futures::StreamExt;
    for (i, rec) in lines.enumerate() {
        let rec = rec?;
        if cfg.rate > 0 {
            // Pace to the rate: record i is due at i / rate seconds.
            let due = t0 + Duration::from_secs_f64(i as f64 / cfg.rate as f64);
            tokio::time::sleep_until(due.into()).await;
        }
        if i == 0 {
            summary.first_id = extract_id(&rec);
        }
        summary.last_id = extract_id(&rec);
        summary.bytes += rec.len() as u64;
        summary.records += 1;
        let key = format!("{}", i % 1024);
        // The first MAX_RECORD_SPANS records get a span each; past that a
        // run's spans would outgrow the exporter's queue (65,536) and be
        // dropped, so the rest carry the run's context.
        let mut record_span = (per_record_spans && i < MAX_RECORD_SPANS).then(|| {
            tracing::info_span!(
                parent: &run_span,
                "stream.produce.record",
                otel.kind = "producer",
                messaging.destination.name = %cfg.topic,
                messaging.kafka.message.key = %key,
                messaging.kafka.destination.partition = tracing::field::Empty,
                messaging.kafka.message.offset = tracing::field::Empty,
            )
        });
        let trace = match &record_span {
            Some(span) => {
                use tracing_opentelemetry::OpenTelemetrySpanExt;
                observe::carrier::inject_context(&span.context())
            }
            None => run_trace.clone(),
        };
        let mut headers = OwnedHeaders::new();
        for (k, v) in &trace {
            headers = headers.insert(Header {
                key: k.as_str(),
                value: Some(v.as_slice()),
            });
        }
        // `send_result` enqueues without borrowing past this call; the
        // returned future resolves on the broker's acknowledgement.
        loop {
            match p.send_result(
                FutureRecord::to(&cfg.topic)
                    .payload(&rec)
                    .key(&key)
                    .headers(headers.clone()),
            ) {
                Ok(fut) => {
                    // The record's span ends when the broker acknowledges it.
                    let span = record_span.take();
                    inflight.push(async move {
                        let r = fut.await;
                        if let (Some(span), Ok(Ok(d))) = (&span, &r) {
                            span.record("messaging.kafka.destination.partition", d.partition);
                            span.record("messaging.kafka.message.offset", d.offset);
                        }
                        r
                    });
                    break;
                }
                Err((
                    rdkafka::error::KafkaError::MessageProduction(
                        rdkafka::types::RDKafkaErrorCode::QueueFull,
                    ),
                    _,
                )) => {
                    // The local queue is full: wait for acknowledgements.
                    match inflight.next().await {
                        Some(r) => check(r)?,
                        None => tokio::time::sleep(Duration::from_millis(1)).await,
                    }
                }
                Err((e, _)) => {
                    return Err(crate::Error::Kafka {
                        op: "produce",
                        source: e,
                    });
                }
            }
        }
        while inflight.len() >= 10_000 {
            if let Some(r) = inflight.next().await {
                check(r)?;
            }
        }
    }
    while let Some(r) = inflight.next().await {
        check(r)?;
    }
    p.flush(Duration::from_secs(30)).map_err(kafka("flush"))?;
    summary.seconds = t0.elapsed().as_secs_f64();
    summary.mb_per_sec = summary.bytes as f64 / 1e6 / summary.seconds.max(1e-9);
    Ok(summary)
}

fn check(
    r: std::result::Result<
        rdkafka::producer::future_producer::OwnedDeliveryResult,
        futures::channel::oneshot::Canceled,
    >,
) -> Result<()> {
    match r {
        Ok(Ok(_)) => Ok(()),
        Ok(Err((e, _))) => Err(crate::Error::Kafka {
            op: "produce",
            source: e,
        }),
        Err(_) => Err(crate::Error::Kafka {
            op: "produce",
            source: rdkafka::error::KafkaError::Canceled,
        }),
    }
}

fn extract_id(rec: &[u8]) -> String {
    serde_json::from_slice::<serde_json::Value>(rec)
        .ok()
        .and_then(|v| v.get("id").and_then(|i| i.as_str()).map(str::to_string))
        .unwrap_or_default()
}
