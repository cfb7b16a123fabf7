//! `mlstack infer bench-serve`: one load generator against the OpenAI-style
//! HTTP API of mlstack's server and of llama.cpp's own C++ server
//! (`llama-server` with parallel slots and continuous batching: what a user
//! would run instead), same GGUF, same threads, the same KV-cache budget.
//!
//! At each fixed concurrency c, c workers send streaming `/v1/completions`
//! requests back to back (2·c requests, at least 8) drawn from one seeded
//! synthetic distribution (prompts of 16–64 words, about 25–100 tokens;
//! 32–128 output tokens; greedy). Per request: time to first token (first streamed text), the gaps
//! between streamed tokens, tokens out. Per level: output tokens/s of the
//! requests that succeeded (goodput), the failed requests and their rate,
//! requests/s, TTFT and inter-token latency p50/p99, and for mlstack the KV
//! utilization. Both servers stay up for the whole run and the systems
//! alternate: the first level runs mlstack first, the next the peer first,
//! and so on (this machine's speed drifts); the idle server waits.

use std::sync::Arc;
use std::time::{Duration, Instant};

use infer::engine_loop::{ServeConfig, ServeMetrics};
use infer::generate::Engine;

use crate::report::{self, Report, Row, cell};

const WORDS: &[&str] = &[
    "storage",
    "engine",
    "writes",
    "sorted",
    "runs",
    "to",
    "disk",
    "and",
    "merges",
    "them",
    "in",
    "the",
    "background",
    "while",
    "readers",
    "see",
    "a",
    "consistent",
    "snapshot",
    "of",
    "every",
    "key",
    "consensus",
    "replicates",
    "log",
    "entries",
    "across",
    "machines",
    "so",
    "that",
    "one",
    "failure",
    "loses",
    "nothing",
    "inference",
    "servers",
    "batch",
    "requests",
    "together",
];

#[derive(Clone, Debug)]
pub struct ServeBenchConfig {
    pub concurrency: Vec<usize>,
    pub systems: Vec<String>,
    pub seed: u64,
    pub threads: usize,
    pub model_path: std::path::PathBuf,
    pub serve: ServeConfig,
    /// The peer's binary (`scripts/peers/llama-server.sh` builds it).
    pub llama_server_bin: Option<std::path::PathBuf>,
}

/// The seeded request mix: (prompt text, max_tokens).
pub fn workload(seed: u64, n: usize) -> Vec<(String, usize)> {
    let mut s = seed | 1;
    let mut next = move || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        s
    };
    (0..n)
        .map(|_| {
            let words = 16 + (next() % 49) as usize;
            let text: Vec<&str> = (0..words)
                .map(|_| WORDS[(next() % WORDS.len() as u64) as usize])
                .collect();
            (text.join(" "), 32 + (next() % 97) as usize)
        })
        .collect()
}

fn pct(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    report::percentile(v, p)
}

/// One streamed request: (ttft, inter-token gaps, output tokens).
async fn one(
    client: &reqwest::Client,
    base: &str,
    prompt: &str,
    max_tokens: usize,
) -> Result<(f64, Vec<f64>, usize), String> {
    let t0 = Instant::now();
    let mut resp = client
        .post(format!("{base}/v1/completions"))
        .json(
            &serde_json::json!({"model": "m", "prompt": prompt, "max_tokens": max_tokens,
                                  "temperature": 0, "stream": true}),
        )
        .send()
        .await
        .map_err(|e| e.to_string())?;
    if !resp.status().is_success() {
        return Err(format!(
            "HTTP {}: {}",
            resp.status(),
            resp.text().await.unwrap_or_default()
        ));
    }
    let (mut buf, mut ttft, mut last, mut gaps, mut tokens) =
        (String::new(), None, t0, Vec::new(), 0usize);
    // A request succeeds only when its stream ends properly: a chunk with a
    // finish_reason. An error event (both servers send `data: {"error": ...}`
    // when a request fails mid-stream) or a stream cut short is a failure.
    let mut finished = false;
    while let Some(chunk) = resp.chunk().await.map_err(|e| e.to_string())? {
        buf.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = buf.find("\n\n") {
            let event: String = buf.drain(..end + 2).collect();
            let Some(data) = event.lines().find_map(|l| l.strip_prefix("data: ")) else {
                continue;
            };
            if data.trim() == "[DONE]" {
                continue;
            }
            let v: serde_json::Value =
                serde_json::from_str(data).map_err(|e| format!("{e}: {data}"))?;
            if !v["error"].is_null() {
                return Err(format!("error event: {}", v["error"]));
            }
            let Some(choice) = v["choices"].get(0) else {
                return Err(format!("event without choices: {data}"));
            };
            // One event per token; the closing event counts only if it has text.
            let has_text = choice["text"].as_str().is_some_and(|t| !t.is_empty());
            if choice["finish_reason"].is_null() || has_text {
                tokens += 1;
                let now = Instant::now();
                match ttft {
                    None => ttft = Some((now - t0).as_secs_f64() * 1e3),
                    Some(_) => gaps.push((now - last).as_secs_f64() * 1e3),
                }
                last = now;
            }
            if !choice["finish_reason"].is_null() {
                finished = true;
            }
        }
    }
    match (finished, ttft) {
        (true, Some(ttft)) => Ok((ttft, gaps, tokens)),
        (true, None) => Err("the stream finished without any text".into()),
        (false, _) => Err(format!(
            "the stream ended after {tokens} tokens without a finish_reason"
        )),
    }
}

/// The load generator's HTTP client: a new connection per request. With
/// pooled keep-alive connections, a request can go out on a connection the
/// server is closing at that moment (llama-server's HTTP library ends a
/// keep-alive connection after 5 requests) and fail with "error sending
/// request" through no fault of the server; a fresh connection costs a
/// loopback handshake (well under a millisecond), the same for both systems.
fn load_client() -> Result<reqwest::Client, String> {
    reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        // A server that stops answering fails its requests instead of
        // hanging the run (the slowest request measured took ~20 s).
        .timeout(Duration::from_secs(300))
        .build()
        .map_err(|e| e.to_string())
}

async fn level(
    system: &str,
    base: &str,
    c: usize,
    reqs: &[(String, usize)],
    util: Option<&infer::engine_loop::ServingHandle>,
) -> Result<Vec<Row>, String> {
    let client = load_client()?;
    let queue = Arc::new(std::sync::Mutex::new(std::collections::VecDeque::from(
        reqs.to_vec(),
    )));
    let t0 = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..c {
        let (client, base, queue) = (client.clone(), base.to_string(), queue.clone());
        workers.push(tokio::spawn(async move {
            let mut out = Vec::new();
            loop {
                let next = queue.lock().expect("queue").pop_front();
                let Some((p, m)) = next else { break };
                out.push(one(&client, &base, &p, m).await);
            }
            Ok::<_, String>(out)
        }));
    }
    // Sample KV utilization while the level runs.
    let mut samples = Vec::new();
    while !workers.iter().all(|w| w.is_finished()) {
        if let Some(h) = util {
            let s = h.stats();
            if s.running > 0 {
                samples.push(s.kv_utilization);
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut results = Vec::new();
    let mut errors = 0;
    for w in workers {
        for r in w.await.map_err(|e| e.to_string())?? {
            match r {
                Ok(r) => results.push(r),
                Err(e) => {
                    errors += 1;
                    tracing::warn!(system, error = %e, "request failed");
                }
            }
        }
    }
    let secs = t0.elapsed().as_secs_f64();
    let mut ttft: Vec<f64> = results.iter().map(|r| r.0).collect();
    let mut itl: Vec<f64> = results.iter().flat_map(|r| r.1.iter().copied()).collect();
    let tokens: usize = results.iter().map(|r| r.2).sum();
    let workload = format!("concurrency_{c}");
    let row =
        |metric: &str, value: f64, unit: &str| Row::new(system, &workload, metric, value, unit);
    let attempted = results.len() + errors;
    let mut rows = vec![
        row("requests", results.len() as f64, "count"),
        // Failed requests (HTTP error or a broken stream) are counted here and
        // in the error rate; the latency and throughput figures are goodput,
        // over the requests that succeeded.
        row("errors", errors as f64, "count"),
        row(
            "error_rate",
            errors as f64 / attempted.max(1) as f64,
            "fraction",
        ),
        row("output_tokens_per_sec", tokens as f64 / secs, "tokens/s"),
        row(
            "requests_per_sec",
            results.len() as f64 / secs,
            "requests/s",
        ),
        row("ttft_p50_ms", pct(&mut ttft, 0.5), "ms"),
        row("ttft_p99_ms", pct(&mut ttft, 0.99), "ms"),
        row("itl_p50_ms", pct(&mut itl, 0.5), "ms"),
        row("itl_p99_ms", pct(&mut itl, 0.99), "ms"),
    ];
    if util.is_some() {
        // Mean over the level of token slots used / slots allocated.
        let mean = samples.iter().sum::<f64>() / samples.len().max(1) as f64;
        rows.push(row("kv_utilization", mean, "fraction"));
    }
    Ok(rows)
}

/// llama-server's settings for a KV budget of `kv_cache_bytes`: its total
/// context in tokens, at the model's f16 bytes per token (keys and values of
/// every layer), so both servers hold the same number of cached tokens.
pub fn llama_server_ctx(config: &infer::model::Config, kv_cache_bytes: usize) -> usize {
    let per_token = 2 * config.n_layers * config.kv_dim() * 2;
    kv_cache_bytes / per_token.max(1)
}

/// A running `llama-server`, killed on drop.
struct LlamaServer {
    child: tokio::process::Child,
    base: String,
}

impl LlamaServer {
    /// Starts `bin` on a free port with `slots` parallel slots sharing one
    /// unified KV cache of `ctx` tokens (as mlstack's paged cache is shared),
    /// continuous batching, `threads` threads; waits for `/health`.
    async fn start(
        bin: &std::path::Path,
        model: &std::path::Path,
        threads: usize,
        slots: usize,
        ctx: usize,
    ) -> Result<LlamaServer, String> {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
            l.local_addr().map_err(|e| e.to_string())?.port()
        };
        let log = tempfile::NamedTempFile::new().map_err(|e| e.to_string())?;
        let (log_file, log_path) = log.keep().map_err(|e| e.to_string())?;
        let mut child = tokio::process::Command::new(bin)
            .arg("--model")
            .arg(model)
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .args([
                "--threads",
                &threads.to_string(),
                "--threads-batch",
                &threads.to_string(),
            ])
            .args([
                "--parallel",
                &slots.to_string(),
                "--cont-batching",
                "--kv-unified",
            ])
            .args(["--ctx-size", &ctx.to_string()])
            .stdout(std::process::Stdio::null())
            .stderr(log_file)
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| {
                format!(
                    "starting {}: {e} (build it with scripts/peers/llama-server.sh)",
                    bin.display()
                )
            })?;
        let base = format!("http://127.0.0.1:{port}");
        let client = reqwest::Client::new();
        let tail = |p: &std::path::Path| {
            std::fs::read_to_string(p)
                .unwrap_or_default()
                .lines()
                .rev()
                .take(5)
                .collect::<Vec<_>>()
                .join(" | ")
        };
        for _ in 0..240 {
            if client
                .get(format!("{base}/health"))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success())
            {
                let _ = std::fs::remove_file(&log_path);
                return Ok(LlamaServer { child, base });
            }
            if let Ok(Some(status)) = child.try_wait() {
                return Err(format!(
                    "llama-server exited ({status}): {}",
                    tail(&log_path)
                ));
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        Err(format!(
            "llama-server did not become healthy within 60 s: {}",
            tail(&log_path)
        ))
    }
}

/// Runs the benchmark.
pub async fn run(engine: Arc<Engine>, cfg: &ServeBenchConfig) -> Result<Report, String> {
    let mut rows = Vec::new();
    let n_for = |c: usize| (2 * c).max(8);
    let slots = cfg.concurrency.iter().copied().max().unwrap_or(1).max(1);
    let ctx = llama_server_ctx(&engine.model.config, cfg.serve.kv_cache_bytes);

    // Both servers up first; each level then runs them one after the other.
    let mut mlstack = None;
    if cfg.systems.iter().any(|s| s == "mlstack") {
        let registry = prometheus::Registry::new();
        let metrics = ServeMetrics::new(&registry).map_err(|e| e.to_string())?;
        let (handle, _thread) =
            infer::engine_loop::start(engine.clone(), cfg.serve.clone(), metrics);
        let any = "127.0.0.1:0".parse().expect("addr");
        let servers = infer::api::start(handle.clone(), "bench".into(), any, any, None, None)
            .await
            .map_err(|e| e.to_string())?;
        let base = format!("http://{}", servers.http_addr);
        // Warm-up: one request (page in, thread pool up).
        one(&load_client()?, &base, "warm up", 4).await?;
        mlstack = Some((handle, servers, base));
    }
    let mut peer = None;
    if cfg.systems.iter().any(|s| s == "llama-server") {
        let bin = cfg
            .llama_server_bin
            .as_deref()
            .ok_or("no llama-server binary: build it with scripts/peers/llama-server.sh and pass --llama-server-bin")?;
        let p = LlamaServer::start(bin, &cfg.model_path, cfg.threads, slots, ctx).await?;
        one(&load_client()?, &p.base, "warm up", 4).await?;
        peer = Some(p);
    }
    for (i, &c) in cfg.concurrency.iter().enumerate() {
        let reqs = workload(cfg.seed ^ c as u64, n_for(c));
        let mut order: Vec<&str> = vec!["mlstack", "llama-server"];
        if i % 2 == 1 {
            order.reverse();
        }
        for system in order {
            let level_rows = match (system, &mlstack, &peer) {
                ("mlstack", Some((handle, _, base)), _) => {
                    level(system, base, c, &reqs, Some(handle)).await?
                }
                ("llama-server", _, Some(p)) => level(system, &p.base, c, &reqs, None).await?,
                _ => continue,
            };
            eprintln!(
                "{system} concurrency {c}: {} tokens/s, {} errors",
                cell(
                    report::find(
                        &level_rows,
                        system,
                        &format!("concurrency_{c}"),
                        "output_tokens_per_sec"
                    ),
                    1
                ),
                cell(
                    report::find(&level_rows, system, &format!("concurrency_{c}"), "errors"),
                    0
                ),
            );
            rows.extend(level_rows);
        }
    }
    if let Some((handle, servers, _)) = mlstack {
        servers.stop().await;
        handle.shutdown();
    }
    if let Some(mut p) = peer {
        let _ = p.child.kill().await;
    }
    let notes = vec![
        format!(
            "{} threads each; requests per level = max(2 x concurrency, 8)",
            cfg.threads
        ),
        format!(
            "KV budget {} MiB each: mlstack's paged cache; llama-server --ctx-size {ctx} tokens (unified, shared by {slots} slots)",
            cfg.serve.kv_cache_bytes >> 20
        ),
        "systems alternate per level; failed requests count as errors, figures are goodput"
            .to_string(),
    ];
    let model = report::file_name(&cfg.model_path);
    Ok(Report {
        component: "infer",
        bench: "serve",
        config: serde_json::json!({
            "model": model,
            "threads": cfg.threads,
            "seed": cfg.seed,
            "concurrency": cfg.concurrency,
            "requests_per_level": "max(2 x concurrency, 8)",
            "request": "streaming /v1/completions, greedy, 16-64-word prompts, 32-128 output tokens",
            "kv_cache_bytes": cfg.serve.kv_cache_bytes,
            "llama_server": {"parallel": slots, "ctx_size": ctx, "kv_unified": true, "cont_batching": true},
            "notes": notes,
        }),
        results: rows,
    })
}

/// The human table: one line per (system, concurrency level).
pub fn table(r: &Report) -> String {
    let c = &r.config;
    let mut s = format!(
        "model {} | {} threads | seed {}\n\n{:<18} {:<16} {:>6} {:>9} {:>9} {:>10} {:>10} {:>9} {:>9} {:>8}\n",
        c["model"].as_str().unwrap_or("?"),
        c["threads"],
        c["seed"],
        "system",
        "workload",
        "errors",
        "out t/s",
        "req/s",
        "ttft p50",
        "ttft p99",
        "itl p50",
        "itl p99",
        "kv util"
    );
    for row in r
        .results
        .iter()
        .filter(|x| x.metric == "output_tokens_per_sec")
    {
        let get = |m: &str| r.get(&row.system, &row.workload, m).unwrap_or(f64::NAN);
        s += &format!(
            "{:<18} {:<16} {:>6} {:>9.1} {:>9.2} {:>8.0}ms {:>8.0}ms {:>7.1}ms {:>7.1}ms {:>8}\n",
            row.system,
            row.workload,
            get("errors"),
            row.value,
            get("requests_per_sec"),
            get("ttft_p50_ms"),
            get("ttft_p99_ms"),
            get("itl_p50_ms"),
            get("itl_p99_ms"),
            r.get(&row.system, &row.workload, "kv_utilization")
                .map_or("-".into(), |u| format!("{:.1}%", u * 100.0))
        );
    }
    for n in c["notes"].as_array().into_iter().flatten() {
        s += &format!("note: {}\n", n.as_str().unwrap_or_default());
    }
    s
}
