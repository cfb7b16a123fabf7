//! `mlstack infer ...`: the inference engine from the command line.

use std::io::Write;

use ::infer::generate::Engine;
use ::infer::request::Request;
use ::infer::sampling::SamplingParams;
use model::tokenizer::ChatMessage;

use crate::Error;
use crate::cli::{InferCommand, InferGenerateArgs, InferModelArgs};

/// Loads the engine the flags name and sizes the kernel thread pool; returns
/// the model's path too (locating it may run python3, so once per command).
pub fn load(args: &InferModelArgs) -> Result<(Engine, std::path::PathBuf), Error> {
    if let Some(n) = args.threads {
        // The global pool can be sized once per process; a second call (tests
        // running several commands in one process) keeps the first size.
        if let Err(e) = rayon::ThreadPoolBuilder::new()
            .num_threads(n)
            .build_global()
        {
            tracing::debug!(error = %e, "kernel thread pool already sized");
        }
    }
    let (path, trained_by) = resolve_model(args)?;
    tracing::info!(model = %path.display(), threads = rayon::current_num_threads(), "loading model");
    let mut engine = load_engine(&path, trained_by.as_deref())?;
    if args.device == ::infer::generate::Device::Cuda {
        engine.use_cuda()?;
        if let Some(m) = &engine.cuda {
            tracing::info!(gpu = m.gpu().name(), "forward passes on CUDA");
        }
    }
    Ok((engine, path))
}

/// Loads the engine at `path` inside an `infer.load` span that links to
/// the training run which wrote the checkpoint (`trained_by`: its registry
/// entry's `traceparent`), so a trace store leads from a server back to the
/// run, the snapshot and the Kafka records.
pub fn load_engine(path: &std::path::Path, trained_by: Option<&str>) -> Result<Engine, Error> {
    let span = tracing::info_span!("infer.load", model = %path.display());
    if let Some(tp) = trained_by {
        observe::link(&span, tp);
    }
    Ok(span.in_scope(|| Engine::load(path))?)
}

/// The model file or directory `--model` names: a path, the default
/// SmolLM2 GGUF, or a registry entry `kv://models/<run>/<name>` looked up
/// in the KV cluster at `--kv`; with the training run's `traceparent` when
/// the registry entry has one.
pub fn resolve_model(args: &InferModelArgs) -> Result<(std::path::PathBuf, Option<String>), Error> {
    if let Some(m) = args.model.as_deref().and_then(|p| p.to_str())
        && m.starts_with("kv://")
    {
        if args.kv.is_empty() {
            return Err(Error::Infer(format!(
                "{m}: a kv:// model needs --kv ENDPOINTS"
            )));
        }
        let (path, trained_by) =
            train::registry::resolve(&args.kv, m).map_err(|e| Error::Infer(e.to_string()))?;
        tracing::info!(model = m, path = %path.display(), "resolved through the registry");
        return Ok((path, trained_by));
    }
    ::infer::locate_model(args.model.as_deref())
        .map(|p| (p, None))
        .map_err(Error::Infer)
}

/// [`load`] on a blocking thread, for the async commands.
async fn load_blocking(args: &InferModelArgs) -> Result<(Engine, std::path::PathBuf), Error> {
    let args = args.clone();
    tokio::task::spawn_blocking(move || load(&args))
        .await
        .map_err(|e| Error::Infer(format!("loading task failed: {e}")))?
}

pub fn run(cmd: &InferCommand) -> Result<(), Error> {
    match cmd {
        InferCommand::Generate(a) => generate(a),
        InferCommand::Serve(_) | InferCommand::Client(_) | InferCommand::BenchServe(_) => {
            unreachable!("async commands run through serve() and client()")
        }
        InferCommand::BenchEngine(a) => {
            let (engine, model_path) = load(&a.model)?;
            let report = bench::engine::run(
                &engine,
                &bench::engine::BenchConfig {
                    systems: a.systems.clone(),
                    decode_tokens: a.decode_tokens,
                    repeats: a.repeats.max(1),
                    threads: rayon::current_num_threads(),
                    model_path,
                    llama_bench_bin: llama_cpp_tool(a.llama_bench_bin.as_deref(), "llama-bench"),
                },
            )
            .map_err(|e| Error::Bench(e.to_string()))?;
            print!("{}", bench::engine::table(&report));
            crate::write_bench_report(&a.out, &report)
        }
    }
}

fn generate(a: &InferGenerateArgs) -> Result<(), Error> {
    let (engine, _) = load(&a.model)?;
    let tok = &engine.tokenizer;
    let prompt = if a.chat {
        let mut messages = Vec::new();
        if let Some(system) = &a.system {
            messages.push(ChatMessage {
                role: "system".into(),
                content: system.clone(),
            });
        }
        messages.push(ChatMessage {
            role: "user".into(),
            content: a.prompt.clone(),
        });
        // Only the template's own markers are special; the user's text is text.
        tok.encode_chat(&messages, true)
            .map_err(::infer::generate::GenerateError::from)?
    } else {
        tok.encode(&a.prompt, false)
            .map_err(::infer::generate::GenerateError::from)?
    };
    let req = Request {
        prompt,
        max_tokens: a.max_tokens,
        sampling: SamplingParams {
            temperature: a.temperature,
            top_k: a.top_k,
            top_p: a.top_p,
            min_p: a.min_p,
            repetition_penalty: a.repetition_penalty,
            seed: a.seed,
            ..SamplingParams::default()
        },
        stop: a.stop.clone(),
        ..Request::default()
    };
    let mut stdout = std::io::stdout().lock();
    let out = engine.generate(&req, |text| {
        // A closed stdout (piped into `head`) must not abort generation with a
        // panic; the error surfaces as a short write and is ignored here.
        let _ = stdout.write_all(text.as_bytes());
        let _ = stdout.flush();
    })?;
    let _ = writeln!(stdout);
    eprintln!(
        "[{} prompt tokens: prefill {:.1} tokens/s | {} generated: decode {:.1} tokens/s | finish: {:?} | {} threads]",
        out.prompt_tokens,
        out.prefill_tokens_per_sec(),
        out.tokens.len(),
        out.decode_tokens_per_sec(),
        out.finish,
        rayon::current_num_threads()
    );
    Ok(())
}

/// The API keys `--api-keys-file` or `MLSTACK_API_KEYS` name, if any.
fn api_keys(args: &crate::cli::InferServeArgs) -> Result<Option<::infer::auth::ApiKeys>, Error> {
    let keys = match (&args.api_keys_file, &args.api_keys) {
        (Some(path), _) => Some(::infer::auth::ApiKeys::from_file(path)),
        (None, Some(list)) => Some(::infer::auth::ApiKeys::from_list(list)),
        (None, None) => None,
    };
    keys.transpose().map_err(|e| Error::Infer(e.to_string()))
}

/// The serving engine (continuous batching) runs on the CPU only: with
/// `--device cuda` say so, rather than upload the weights and serve from
/// the CPU under the GPU's name. Without a GPU the error is the usual
/// "no CUDA driver".
fn refuse_cuda_serving(command: &str, model: &InferModelArgs) -> Result<(), Error> {
    if model.device != ::infer::generate::Device::Cuda {
        return Ok(());
    }
    kernels::cuda::Gpu::open(0)
        .map_err(::infer::model::ModelError::from)
        .map_err(::infer::generate::GenerateError::from)?;
    Err(Error::Infer(format!(
        "{command} --device cuda: the continuous-batching engine runs on the CPU only (multi-sequence paged attention on the GPU is not wired into the scheduler yet); use infer generate or bench-engine with --device cuda"
    )))
}

/// `mlstack infer serve`: engine thread + gRPC + HTTP + metrics until a signal.
pub async fn serve(args: &crate::cli::InferServeArgs) -> Result<(), Error> {
    refuse_cuda_serving("serve", &args.model)?;
    let (engine, path) = load_blocking(&args.model).await?;
    let model_name = path
        .file_name()
        .map_or_else(|| "model".into(), |n| n.to_string_lossy().into_owned());
    let metrics = ::infer::engine_loop::ServeMetrics::new(observe::registry())
        .map_err(|e| Error::Infer(format!("registering metrics: {e}")))?;
    let (handle, engine_thread) = ::infer::engine_loop::start(
        std::sync::Arc::new(engine),
        ::infer::engine_loop::ServeConfig {
            kv_cache_bytes: args.kv_cache_bytes,
            block_tokens: args.kv_block_tokens.max(1),
            max_batched_tokens: args.max_batched_tokens.max(1),
            max_running_seqs: args.max_running_seqs.max(1),
            max_waiting: args.max_waiting,
        },
        metrics,
    );
    let component = crate::component::Component::start(args.metrics_listen).await?;
    let keys = api_keys(args)?;
    let auth = keys
        .as_ref()
        .map_or("none".to_string(), |k| format!("{} API keys", k.len()));
    let tls = crate::server_tls(&args.tls_cert, &args.tls_key)?;
    if tls.is_none() && keys.is_some() {
        // Allowed (the tests and the demo run without certificates), but a
        // key sent in plaintext can be read by anyone on the path.
        tracing::warn!(
            "API keys are required but TLS is off (--tls-cert): keys travel in plaintext"
        );
    }
    let servers = ::infer::api::start(
        handle.clone(),
        model_name,
        args.grpc,
        args.http,
        keys.map(std::sync::Arc::new),
        tls.as_ref(),
    )
    .await
    .map_err(|e| Error::Infer(e.to_string()))?;
    component.ready(serde_json::json!({
        "grpc": servers.grpc_addr.to_string(),
        "http": servers.http_addr.to_string(),
        "tls": if tls.is_some() { "on" } else { "off" },
        "auth": auth,
        "kv_blocks": handle.stats().blocks_total,
        "kv_capacity_tokens": handle.capacity_tokens(),
    }));
    component.wait_for_signal().await;
    servers.stop().await;
    handle.shutdown();
    let _ = tokio::task::spawn_blocking(move || engine_thread.join()).await;
    component.stop().await;
    Ok(())
}

/// `mlstack infer client`: one streamed generation over gRPC.
pub async fn client(args: &crate::cli::InferClientArgs) -> Result<(), Error> {
    use proto::infer::v1 as pb;
    let tls = crate::client_tls(args.ca.as_deref())?;
    let channel = proto::server::channel_tls(&args.endpoint, tls.as_ref())?;
    let mut client = pb::inference_client::InferenceClient::with_interceptor(
        channel,
        observe::grpc::InjectContext,
    );
    let input = if args.chat {
        pb::generate_request::Input::Chat(pb::ChatList {
            messages: vec![pb::ChatMessage {
                role: "user".into(),
                content: args.prompt.clone(),
            }],
        })
    } else {
        pb::generate_request::Input::Prompt(args.prompt.clone())
    };
    let mut req = tonic::Request::new(pb::GenerateRequest {
        input: Some(input),
        max_tokens: args.max_tokens,
        sampling: Some(pb::SamplingParams {
            temperature: args.temperature,
            seed: args.seed,
            ..Default::default()
        }),
        stop: vec![],
        priority: 0,
    });
    req.set_timeout(args.timeout);
    if let Some(key) = &args.api_key {
        let v = format!("Bearer {key}")
            .parse()
            .map_err(|_| Error::Infer("--api-key: not a valid metadata value".into()))?;
        req.metadata_mut().insert("authorization", v);
    }
    let mut stream = client
        .generate(req)
        .await
        .map_err(|s| Error::rpc("Inference.Generate", &args.endpoint, s))?
        .into_inner();
    let mut stdout = std::io::stdout().lock();
    while let Some(msg) = stream
        .message()
        .await
        .map_err(|s| Error::rpc("Inference.Generate", &args.endpoint, s))?
    {
        let _ = stdout.write_all(msg.text_delta.as_bytes());
        let _ = stdout.flush();
        if let Some(u) = msg.usage {
            let _ = writeln!(stdout);
            eprintln!(
                "[{} prompt tokens, {} generated | queue {:.1} ms, first token {:.1} ms, total {:.1} ms | finish: {:?}]",
                u.prompt_tokens,
                u.completion_tokens,
                u.queue_ms,
                u.time_to_first_token_ms,
                u.total_ms,
                pb::FinishReason::try_from(msg.finish_reason)
                    .unwrap_or(pb::FinishReason::Unspecified)
            );
        }
    }
    Ok(())
}

/// One of llama.cpp's programs (`llama-server`, `llama-bench`): the path
/// given, else where scripts/peers/llama-server.sh builds them, else the PATH.
fn llama_cpp_tool(given: Option<&std::path::Path>, name: &str) -> Option<std::path::PathBuf> {
    if let Some(p) = given {
        return Some(p.to_path_buf());
    }
    let home = std::env::var_os("HOME").map(std::path::PathBuf::from);
    let cached = home.map(|h| h.join(".cache/mlstack/llama-server-0.3.36").join(name));
    if let Some(c) = cached.filter(|c| c.is_file()) {
        return Some(c);
    }
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(name))
            .find(|p| p.is_file())
    })
}

/// `mlstack infer bench-serve`: the load generator against both servers.
pub async fn bench_serve(args: &crate::cli::InferBenchServeArgs) -> Result<(), Error> {
    for s in &args.systems {
        if s != "mlstack" && s != "llama-server" {
            return Err(Error::Bench(format!(
                "unknown system {s:?} (mlstack, llama-server)"
            )));
        }
    }
    refuse_cuda_serving("bench-serve", &args.model)?;
    let (engine, model_path) = load_blocking(&args.model).await?;
    let cfg = bench::serve::ServeBenchConfig {
        concurrency: args.concurrency.clone(),
        systems: args.systems.clone(),
        seed: args.seed,
        threads: rayon::current_num_threads(),
        model_path,
        serve: ::infer::engine_loop::ServeConfig {
            kv_cache_bytes: args.kv_cache_bytes,
            ..Default::default()
        },
        llama_server_bin: llama_cpp_tool(args.llama_server_bin.as_deref(), "llama-server"),
    };
    let report = bench::serve::run(std::sync::Arc::new(engine), &cfg)
        .await
        .map_err(Error::Bench)?;
    print!("{}", bench::serve::table(&report));
    crate::write_bench_report(&args.out, &report)
}
