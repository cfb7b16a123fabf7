//! `mlstack demo`: the whole data path, one step feeding the next.
//!
//! ```text
//! [1] KV cluster (3 Raft nodes, in process) ── the metadata store
//! [2] Kafka-protocol broker (tansu, a child process)
//! [3] mlstack produce: the Shakespeare corpus → topic, trace context in each record's headers
//! [4] ingest: topic → Parquet part files, each commit recorded in the KV manifest
//! [5] dataset snapshot: the manifest frozen at datasets/<topic>/<snapshot>
//! [6] train: reads the snapshot, trains for a fixed budget, checkpoints, registers
//!     models/<run>/step-<n> and moves models/<run>/latest (compare-and-set)
//! [7] infer: resolves kv://models/<run>/latest, serves it; a gRPC and an
//!     OpenAI HTTP client ask it a question
//! [8] summary (text, or --json)
//! ```
//!
//! The screen shows the demo's own progress; every component's log lines go
//! to the log file it names (an `ERROR` on screen means the demo failed).
//! Each step checks what it needs and fails naming the missing piece. What
//! the demo starts lives in this process (the KV nodes, ingest, the trainer,
//! the inference server) or is a child killed on drop (the broker), so
//! Ctrl-C or a failed step leaves nothing running. A second run reuses the
//! installed broker binary and the token cache (keyed by the corpus's
//! content), and says so.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tracing::Instrument;

use crate::Error;
use crate::cli::DemoArgs;

const TOPIC: &str = "corpus";
const GROUP: &str = "mlstack-ingest";

fn step(json: bool, n: usize, msg: impl AsRef<str>) {
    if !json {
        println!("[{n}/8] {}", msg.as_ref());
    }
}

fn demo_err(what: &str) -> impl FnOnce(String) -> Error + '_ {
    move |e| Error::DemoCheck(format!("{what}: {e}"))
}

/// Where the demo keeps what a second run can reuse.
pub fn cache_dir() -> PathBuf {
    std::env::var_os("MLSTACK_DEMO_DIR")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cache/mlstack/demo")))
        .unwrap_or_else(|| PathBuf::from(".mlstack-demo"))
}

/// Runs the pipeline; prints progress, then the summary.
pub async fn run(
    args: &DemoArgs,
    log_file: &Path,
    traces: &crate::demo::Traces,
) -> Result<serde_json::Value, Error> {
    let json = args.json;
    let t_all = Instant::now();
    let root = tracing::info_span!("demo.pipeline");
    let trace_id = root.in_scope(observe::current_trace_id);
    let cache = cache_dir();
    std::fs::create_dir_all(&cache).map_err(|e| demo_err("cache dir")(e.to_string()))?;
    let work = tempfile::tempdir().map_err(|e| demo_err("work dir")(e.to_string()))?;
    // One /metrics for the whole demo: every component in this process
    // registers its mlstack_* series in observe's registry.
    let readiness = observe::Readiness::new();
    let metrics_server = observe::MetricsServer::start(
        args.metrics_listen,
        observe::registry().clone(),
        readiness.clone(),
    )
    .await?;
    readiness.set_ready(true);
    let metrics_url = format!("http://{}/metrics", metrics_server.local_addr());
    if !json {
        println!(
            "mlstack demo: Kafka → Parquet → train → registry → serve, one step feeding the next"
        );
        println!("      component logs: {}", log_file.display());
        println!("      metrics (mlstack_kv_*, _ingest_*, _train_*, _infer_*): {metrics_url}");
        println!("      cache (reused between runs): {}", cache.display());
        match traces {
            crate::demo::Traces::Kept { dir, query } => println!(
                "      traces: kept by the demo's own OTLP receiver in {}{}",
                dir.display(),
                query
                    .as_ref()
                    .map(|q| format!(" (while it runs: mlstack trace list --query {q})"))
                    .unwrap_or_default()
            ),
            crate::demo::Traces::Exported(Some(ep)) => {
                println!("      traces: exported over OTLP to {ep}")
            }
            crate::demo::Traces::Exported(None) => println!("      traces: not exported"),
            crate::demo::Traces::NotKept(why) => println!("      traces: not kept ({why})"),
        }
    }

    // [1] the KV cluster.
    let t = Instant::now();
    let cluster = crate::kv::LocalCluster::start(3, &work.path().join("kv"), true)
        .instrument(root.clone())
        .await?;
    let kv = cluster.endpoints();
    step(
        json,
        1,
        format!(
            "KV cluster: 3 Raft nodes at {} (leader {}), {:.1} s",
            kv.join(", "),
            cluster.leader().await?,
            t.elapsed().as_secs_f64()
        ),
    );

    // [2] the broker.
    let t = Instant::now();
    let broker_dir = work.path().join("broker");
    std::fs::create_dir_all(&broker_dir).map_err(|e| demo_err("broker dir")(e.to_string()))?;
    let broker = stream::broker::Tansu::start(&broker_dir).map_err(|e| {
        Error::DemoCheck(format!(
            "the Kafka broker: {e} (scripts/demo.sh installs tansu)"
        ))
    })?;
    broker
        .create_topic(TOPIC, 2)
        .map_err(|e| Error::DemoCheck(format!("creating topic {TOPIC}: {e}")))?;
    step(
        json,
        2,
        format!(
            "broker: tansu 0.6.0 at {} (topic {TOPIC}, 2 partitions), {:.1} s",
            broker.addr,
            t.elapsed().as_secs_f64()
        ),
    );

    // [3] produce the corpus.
    let t = Instant::now();
    let corpus = cache.join("shakespeare.jsonl");
    let corpus_reused = corpus.exists();
    crate::train::shakespeare_jsonl(&corpus)?;
    let produced = stream::produce::run(&stream::produce::ProduceConfig {
        brokers: broker.addr.clone(),
        topic: TOPIC.into(),
        source: stream::produce::Source::File(corpus.clone()),
        rate: 0,
        id_prefix: "shk".into(),
    })
    .instrument(tracing::info_span!(parent: &root, "stream.produce", topic = TOPIC))
    .await
    .map_err(Error::Stream)?;
    step(
        json,
        3,
        format!(
            "produced {} records ({:.1} MB) of Shakespeare{} in {:.1} s, trace context in every record's headers",
            produced.records,
            produced.bytes as f64 / 1e6,
            if corpus_reused {
                " (corpus file reused)"
            } else {
                ""
            },
            t.elapsed().as_secs_f64()
        ),
    );

    // [4] ingest into Parquet with the KV manifest, until every record is in a committed file.
    let t = Instant::now();
    let out = work.path().join("parquet");
    let mut icfg = stream::ingest::IngestConfig::new(&broker.addr, TOPIC, GROUP, out.clone());
    icfg.kv_endpoints = kv.clone();
    icfg.assign_all = true;
    icfg.roll.max_age = Duration::from_secs(2);
    let manifest =
        stream::manifest::KvManifest::new(kv.clone(), GROUP, TOPIC).map_err(Error::Stream)?;
    let metrics = stream::metrics::Metrics::new();
    if let Err(e) = metrics.register() {
        tracing::warn!(error = %e, "ingest metrics already registered");
    }
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let ingest = tokio::spawn(
        stream::ingest::run(icfg, Box::new(manifest), metrics.clone(), async move {
            let _ = stop_rx.await;
        })
        .instrument(tracing::info_span!(parent: &root, "stream.ingest", topic = TOPIC)),
    );
    let deadline = Instant::now() + Duration::from_secs(120);
    while metrics.records_in.get() < produced.records {
        if Instant::now() > deadline || ingest.is_finished() {
            return Err(Error::DemoCheck(format!(
                "ingest consumed {} of {} records in 120 s",
                metrics.records_in.get(),
                produced.records
            )));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let _ = stop_tx.send(());
    let isum = ingest
        .await
        .map_err(|e| demo_err("ingest task")(e.to_string()))?
        .map_err(Error::Stream)?;
    step(
        json,
        4,
        format!(
            "ingest: {} rows in {} Parquet files ({:.1} MB), each commit in the KV manifest ingest/{GROUP}/{TOPIC}/*, {:.1} s",
            isum.rows_written,
            isum.files,
            isum.file_bytes as f64 / 1e6,
            t.elapsed().as_secs_f64()
        ),
    );

    // [5] the dataset snapshot.
    // One name per run, short and sortable: the second of its start.
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let snap_name = format!("demo-{stamp}");
    let (kv2, name2, r) = (kv.clone(), snap_name.clone(), root.clone());
    // Blocking work runs in the root span's scope: a blocking thread has no
    // current span of its own, and the step's span is made inside.
    let snapshot = tokio::task::spawn_blocking(move || {
        r.in_scope(|| stream::snapshot::create(&kv2, GROUP, TOPIC, &name2))
    })
    .await
    .map_err(|e| demo_err("snapshot task")(e.to_string()))?
    .map_err(Error::Stream)?;
    step(
        json,
        5,
        format!(
            "snapshot {}: {} files, {} rows, offsets {}",
            stream::snapshot::key(TOPIC, &snap_name),
            snapshot.files.len(),
            snapshot.rows,
            snapshot
                .offsets
                .iter()
                .map(|(p, (a, b))| format!("p{p}:{a}..{b}"))
                .collect::<Vec<_>>()
                .join(" ")
        ),
    );

    // [6] train on the snapshot, checkpoint, register.
    let t = Instant::now();
    let run_name = format!("demo-{stamp}");
    let mut rc = train::trainer::RunConfig::new(
        &run_name,
        &args.model,
        train::data::Source::Snapshot {
            dir: out.clone(),
            endpoints: kv.clone(),
            topic: TOPIC.into(),
            name: snap_name.clone(),
        },
    );
    // Checkpoints outlive the demo (the KV cluster does not): serve one
    // later with `mlstack infer generate --model <path>`.
    rc.out = cache.join("checkpoints");
    rc.keep = 1;
    rc.cache_dir = cache.join("token-cache");
    rc.hyper.max_steps = args.train_steps;
    rc.hyper.micro_batch = 8;
    rc.hyper.seq_len = 128;
    rc.hyper.lr = 3e-3;
    rc.hyper.warmup_steps = 5;
    rc.threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    rc.time_budget = Some(args.train_seconds);
    rc.eval_windows = 16;
    rc.kv = Some(kv.clone());
    let r = root.clone();
    let summary = tokio::task::spawn_blocking(move || r.in_scope(|| train::trainer::run(&rc)))
        .await
        .map_err(|e| demo_err("train task")(e.to_string()))?
        .map_err(|e| Error::Train(e.to_string()))?;
    step(
        json,
        6,
        format!(
            "trained {} ({:.1} M parameters) {} steps, {} tokens, loss {:.3} → {:.3} (val {}), {:.0} tokens/s, MFU {:.1}%, token cache {}; registered models/{run_name}/step-{}, {:.1} s",
            summary.model,
            summary.n_params as f64 / 1e6,
            summary.steps,
            summary.tokens,
            summary.losses.first().copied().unwrap_or(f32::NAN),
            summary.final_loss,
            summary.val_loss.map_or("-".into(), |v| format!("{v:.3}")),
            summary.tokens_per_sec,
            100.0 * summary.mfu,
            if summary.token_cache_hit {
                "reused"
            } else {
                "written"
            },
            summary.steps,
            t.elapsed().as_secs_f64()
        ),
    );

    // [7] serve what the registry says is latest; ask over gRPC and HTTP.
    let uri = format!("kv://models/{run_name}/latest");
    let (kv3, uri3) = (kv.clone(), uri.clone());
    let (path, trained_by) =
        tokio::task::spawn_blocking(move || train::registry::resolve(&kv3, &uri3))
            .await
            .map_err(|e| demo_err("resolve task")(e.to_string()))?
            .map_err(|e| Error::Train(e.to_string()))?;
    let served = crate::demo::serve_and_ask(&path, &uri, trained_by)
        .instrument(tracing::info_span!(parent: &root, "infer.serve", model = %uri))
        .await?;
    step(
        json,
        7,
        format!(
            "infer: {uri} → {}; gRPC answer in {:.0} ms (TTFT {:.0} ms, {:.0} tokens/s), OpenAI HTTP answer in {:.0} ms",
            path.display(),
            served.grpc_total_ms,
            served.ttft_ms,
            served.tokens_per_sec,
            served.http_total_ms
        ),
    );
    if !args.linger_seconds.is_zero() {
        if !json {
            println!(
                "      holding {metrics_url} for {:.0} s (--linger-seconds)",
                args.linger_seconds.as_secs_f64()
            );
        }
        tokio::time::sleep(args.linger_seconds).await;
    }
    // What the one endpoint says, per component, before it stops.
    let exposition = reqwest::get(&metrics_url)
        .await
        .map_err(|e| Error::Http {
            url: metrics_url.clone(),
            reason: e.to_string(),
        })?
        .text()
        .await
        .map_err(|e| Error::Http {
            url: metrics_url.clone(),
            reason: e.to_string(),
        })?;
    let series: serde_json::Map<String, serde_json::Value> = [
        "mlstack_kv_",
        "mlstack_ingest_",
        "mlstack_train_",
        "mlstack_infer_",
    ]
    .iter()
    .map(|p| {
        let n = exposition.lines().filter(|l| l.starts_with(p)).count();
        (p.trim_end_matches('_').to_string(), n.into())
    })
    .collect();
    metrics_server.stop().await;
    drop(broker);
    cluster.shutdown().await;

    let report = serde_json::json!({
        "trace_id": trace_id,
        "traces": traces.json(trace_id.as_deref()),
        "log_file": log_file,
        "metrics": {"url": metrics_url, "series": series},
        "seconds": t_all.elapsed().as_secs_f64(),
        "kv": {"nodes": 3, "endpoints": kv},
        "broker": {"addr": "stopped", "topic": TOPIC},
        "produce": {"records": produced.records, "bytes": produced.bytes, "corpus_reused": corpus_reused},
        "ingest": {"rows": isum.rows_written, "files": isum.files, "bytes": isum.file_bytes},
        "snapshot": {"key": stream::snapshot::key(TOPIC, &snap_name), "files": snapshot.files.len(), "rows": snapshot.rows,
                     "offsets": snapshot.offsets.iter().map(|(p, (a, b))| serde_json::json!({"partition": p, "first": a, "last": b})).collect::<Vec<_>>()},
        "train": {"run": run_name, "model": summary.model, "parameters": summary.n_params, "steps": summary.steps,
                  "tokens": summary.tokens, "first_loss": summary.losses.first(), "final_loss": summary.final_loss,
                  "val_loss": summary.val_loss, "tokens_per_sec": summary.tokens_per_sec, "mfu": summary.mfu,
                  "token_cache_reused": summary.token_cache_hit, "checkpoint": summary.checkpoint},
        "serve": {"model": uri, "path": path, "question": served.question, "grpc_answer": served.grpc_answer,
                  "http_answer": served.http_answer, "ttft_ms": served.ttft_ms, "tokens_per_sec": served.tokens_per_sec},
    });
    Ok(report)
}
