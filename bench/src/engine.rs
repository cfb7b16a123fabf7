//! `mlstack infer bench-engine`: prefill and decode speed of this engine and
//! of llama.cpp (its own `llama-bench`, built by scripts/peers/llama-server.sh)
//! on the same GGUF and threads, side by side in one run, plus the
//! memory-bandwidth floor for decode.
//!
//! Workloads: `prefill_128`, `prefill_1024` (prompt tokens/s of one forward
//! pass over a fresh cache) and `decode_ctx128`, `decode_ctx1024` (greedy
//! single-token steps after that prefill). Medians over repeats, with the
//! spread (max − min) beside each.
//!
//! The systems alternate: repeat 1 runs llama.cpp then mlstack, repeat 2
//! mlstack then llama.cpp, and so on, each repeat one full pass of every
//! workload, so neither system always meets the machine first (this VM's
//! speed drifts by 10–20 % between runs). llama.cpp runs in a fresh process
//! each repeat, so both systems run an unmeasured warm-up pass first
//! (llama-bench's own warm-up run of each test).

use std::process::Command;
use std::time::Instant;

use infer::generate::Engine;
use infer::sampling::argmax;

use crate::report::{self, Report, Row, cell};

/// A passage repeated into prompts of 128 and 1,024 tokens.
const TEXT: &str = "The history of computing is a story of layers. At the bottom sit transistors, switching on and off billions of times a second; above them, logic gates combine those switches into adders, multiplexers and memories. Instruction sets give the hardware a vocabulary, and compilers translate human intentions into that vocabulary. Operating systems share the machine among many programs, file systems give durable names to bytes, and networks let machines speak to one another across rooms and oceans. Each layer hides the complexity of the one beneath it, and each layer leaks a little of that complexity upward. ";

#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("mlstack engine: {0}")]
    Engine(String),
    #[error("llama.cpp: {0}")]
    Peer(String),
    #[error("unknown system {0:?} (mlstack, mlstack-avx2, llama.cpp)")]
    UnknownSystem(String),
}

#[derive(Clone, Debug)]
pub struct BenchConfig {
    pub systems: Vec<String>,
    pub decode_tokens: usize,
    pub repeats: usize,
    pub threads: usize,
    pub model_path: std::path::PathBuf,
    /// llama.cpp's `llama-bench` (the `llama.cpp` system).
    pub llama_bench_bin: Option<std::path::PathBuf>,
}

const WORKLOADS: [&str; 4] = [
    "prefill_128",
    "prefill_1024",
    "decode_ctx128",
    "decode_ctx1024",
];

/// This process's peak resident set (VmHWM), MiB.
pub fn peak_rss_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

/// Read bandwidth with all threads: the best of 5 passes summing a 512 MiB
/// buffer (far larger than any cache), GB/s.
pub fn memory_bandwidth_gbps() -> f64 {
    use rayon::prelude::*;
    let words = 512 << 20 >> 3;
    let buf: Vec<u64> = (0..words as u64).collect();
    let mut best = 0f64;
    for _ in 0..5 {
        let t = Instant::now();
        let s: u64 = buf
            .par_chunks(1 << 16)
            .map(|c| c.iter().fold(0u64, |a, &b| a.wrapping_add(b)))
            .reduce(|| 0, u64::wrapping_add);
        let secs = t.elapsed().as_secs_f64();
        std::hint::black_box(s);
        best = best.max((words * 8) as f64 / secs / 1e9);
    }
    best
}

fn prompt_ids(engine: &Engine) -> Result<Vec<u32>, BenchError> {
    let mut text = String::new();
    loop {
        text.push_str(TEXT);
        let ids = engine
            .tokenizer
            .encode(&text, false)
            .map_err(|e| BenchError::Engine(e.to_string()))?;
        if ids.len() >= 1024 {
            return Ok(ids[..1024].to_vec());
        }
    }
}

/// One pass of every workload (one sample each; `run` repeats and takes
/// the medians).
fn run_mlstack(engine: &Engine, ids: &[u32], cfg: &BenchConfig) -> Result<Vec<Row>, BenchError> {
    let err = |e: infer::model::ModelError| BenchError::Engine(e.to_string());
    // The engine's device: the CPU, or the GPU after `Engine::use_cuda`.
    let system = mlstack_system(engine);
    let mut rows = Vec::new();
    // One unmeasured pass first (a prefill and a few decode steps), as
    // llama-bench's own warm-up run does in its fresh process each repeat; on
    // a GPU it also compiles and loads the kernels.
    let mut seq = engine.session(128 + 5).map_err(err)?;
    seq.forward(&ids[..128]).map_err(err)?;
    for _ in 0..4 {
        seq.forward(&ids[..1]).map_err(err)?;
    }
    for n in [128usize, 1024] {
        let mut seq = engine.session(n + cfg.decode_tokens + 3).map_err(err)?;
        let t = Instant::now();
        // Logits come back to the host each step, so the time includes the
        // device's work (the copy waits for it).
        let logits = seq.forward(&ids[..n]).map_err(err)?;
        rows.push((format!("prefill_{n}"), n as f64 / t.elapsed().as_secs_f64()));
        let mut tok = argmax(&logits);
        if engine.cuda.is_some() {
            // The GPU's first decode step runs eagerly and its second
            // captures the CUDA graph every later step replays: both once per
            // sequence, so neither is what a decode step costs.
            for _ in 0..2 {
                tok = argmax(&seq.forward(&[tok]).map_err(err)?);
            }
        }
        let t = Instant::now();
        for _ in 0..cfg.decode_tokens {
            tok = argmax(&seq.forward(&[tok]).map_err(err)?);
        }
        rows.push((
            format!("decode_ctx{n}"),
            cfg.decode_tokens as f64 / t.elapsed().as_secs_f64(),
        ));
    }
    let mut rows: Vec<Row> = rows
        .into_iter()
        .map(|(workload, tps)| Row::new(system, &workload, "tokens_per_sec", tps, "tokens/s"))
        .collect();
    rows.push(Row::new(
        system,
        "process",
        "peak_rss_mb",
        peak_rss_mb(),
        "MiB",
    ));
    Ok(rows)
}

/// The row name of this engine: `mlstack`, or `mlstack-cuda` on a GPU.
pub fn mlstack_system(engine: &Engine) -> &'static str {
    if engine.cuda.is_some() {
        "mlstack-cuda"
    } else {
        "mlstack"
    }
}

/// One pass of every workload by llama.cpp's own `llama-bench`, in two fresh
/// processes: prompt processing of 128 and 1,024 tokens (`-p 128,1024 -n 0`,
/// one forward pass over an empty cache, as `prefill_N`), and
/// `decode_tokens` generated tokens after 128 and 1,024 tokens of context
/// (`-p 0 -n D -d 128,1024`, as `decode_ctxN`). One repetition each (`-r 1`,
/// after llama-bench's unmeasured warm-up run), the same threads; its default
/// batch sizes (2,048 / 512) and f16 KV cache. Its tokens are not the
/// prompt's (llama-bench feeds its own), which a dense model's speed does not
/// depend on. Returns the rows and llama.cpp's build.
fn run_llamacpp(cfg: &BenchConfig) -> Result<(Vec<Row>, String), BenchError> {
    let bin = cfg.llama_bench_bin.as_deref().ok_or_else(|| {
        BenchError::Peer(
            "no llama-bench: build it with scripts/peers/llama-server.sh, or pass --llama-bench-bin"
                .into(),
        )
    })?;
    let threads = cfg.threads.to_string();
    let decode = cfg.decode_tokens.to_string();
    let passes: [&[&str]; 2] = [
        &["-p", "128,1024", "-n", "0"],
        &["-p", "0", "-n", &decode, "-d", "128,1024"],
    ];
    let mut rows = Vec::new();
    let mut build = String::from("?");
    let mut peak_rss = 0f64;
    for args in passes {
        let mut cmd = Command::new(bin);
        cmd.arg("-m")
            .arg(&cfg.model_path)
            .args(["-t", &threads, "-r", "1", "-o", "json"])
            .args(args);
        let (out, rss) = output_with_peak_rss(cmd)
            .map_err(|e| BenchError::Peer(format!("running {}: {e}", bin.display())))?;
        peak_rss = peak_rss.max(rss);
        if !out.status.success() {
            return Err(BenchError::Peer(format!(
                "{} {} exited with {}: {}",
                bin.display(),
                args.join(" "),
                out.status,
                String::from_utf8_lossy(&out.stderr)
                    .lines()
                    .last()
                    .unwrap_or("")
            )));
        }
        let tests: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout)
            .map_err(|e| BenchError::Peer(format!("bad JSON from llama-bench: {e}")))?;
        for t in &tests {
            let n = |k: &str| t[k].as_u64().unwrap_or(0);
            let workload = match (n("n_prompt"), n("n_gen"), n("n_depth")) {
                (p, 0, 0) => format!("prefill_{p}"),
                (0, _, d) => format!("decode_ctx{d}"),
                other => {
                    return Err(BenchError::Peer(format!(
                        "llama-bench ran a test this benchmark did not ask for: {other:?}"
                    )));
                }
            };
            let tps = t["avg_ts"].as_f64().ok_or_else(|| {
                BenchError::Peer(format!("llama-bench's {workload} has no avg_ts: {t}"))
            })?;
            rows.push(Row::new(
                "llama.cpp",
                &workload,
                "tokens_per_sec",
                tps,
                "tokens/s",
            ));
            build = format!(
                "llama.cpp build {} ({})",
                t["build_number"],
                t["build_commit"].as_str().unwrap_or("?")
            );
        }
    }
    for w in WORKLOADS {
        if !rows.iter().any(|r| r.workload == w) {
            return Err(BenchError::Peer(format!("llama-bench gave no {w} result")));
        }
    }
    rows.push(Row::new(
        "llama.cpp",
        "process",
        "peak_rss_mb",
        peak_rss,
        "MiB",
    ));
    Ok((rows, build))
}

/// Runs `cmd` to completion, collecting its output, and its own peak
/// resident set (MiB): `VmHWM` from `/proc/<pid>/status`, read every 10 ms
/// while it runs. (getrusage's RUSAGE_CHILDREN cannot tell: a child spawned
/// from this process starts in its memory, and Linux carries that image's
/// peak across the exec into the child's maximum.) VmHWM only grows, so the
/// last read is at most 10 ms of growth short of the peak.
fn output_with_peak_rss(mut cmd: Command) -> std::io::Result<(std::process::Output, f64)> {
    use std::io::Read;
    use std::process::Stdio;
    let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn()?;
    // Drained on threads: a full pipe would stall the child.
    let drain = |r: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(mut r) = r {
                let _ = r.read_to_end(&mut buf);
            }
            buf
        })
    };
    let stdout = drain(
        child
            .stdout
            .take()
            .map(|r| Box::new(r) as Box<dyn Read + Send>),
    );
    let stderr = drain(
        child
            .stderr
            .take()
            .map(|r| Box::new(r) as Box<dyn Read + Send>),
    );
    let status_file = format!("/proc/{}/status", child.id());
    let mut peak_kb = 0f64;
    let status = loop {
        if let Some(kb) = std::fs::read_to_string(&status_file).ok().and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        }) {
            peak_kb = peak_kb.max(kb);
        }
        if let Some(status) = child.try_wait()? {
            break status;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    };
    let out = std::process::Output {
        status,
        stdout: stdout.join().unwrap_or_default(),
        stderr: stderr.join().unwrap_or_default(),
    };
    let rss = if peak_kb > 0.0 {
        peak_kb / 1024.0
    } else {
        f64::NAN
    };
    Ok((out, rss))
}

/// Runs the benchmark for the configured systems.
pub fn run(engine: &Engine, cfg: &BenchConfig) -> Result<Report, BenchError> {
    for s in &cfg.systems {
        if !["mlstack", "mlstack-avx2", "llama.cpp"].contains(&s.as_str()) {
            return Err(BenchError::UnknownSystem(s.clone()));
        }
    }
    let ids = prompt_ids(engine)?;
    // `mlstack-avx2` is the same engine with its quantized dot products
    // capped at AVX2: on a CPU with AVX-512 VNNI, what VNNI gives, measured
    // in the same run. (On a GPU the CPU kernels do not run decode.)
    let isa = kernels::qdot::qdot_isa();
    // Each repeat is one pass of every system (llama.cpp in a process of its
    // own, so mlstack's peak RSS is its own), in alternating order.
    let mut systems: Vec<&str> = ["llama.cpp", "mlstack-avx2", "mlstack"]
        .into_iter()
        .filter(|s| cfg.systems.iter().any(|x| x == s))
        .collect();
    let mut samples = Vec::new();
    let mut peer_version = None;
    for _ in 0..cfg.repeats.max(1) {
        for s in &systems {
            match *s {
                "llama.cpp" => {
                    let (r, v) = run_llamacpp(cfg)?;
                    samples.extend(r);
                    peer_version = Some(v);
                }
                "mlstack-avx2" => {
                    let capped = isa.min(kernels::qdot::QdotIsa::Avx2);
                    let prev = kernels::qdot::set_qdot_isa(capped).map_err(|best| {
                        BenchError::Engine(format!("kernels at {capped:?}: this CPU has {best:?}"))
                    })?;
                    let r = run_mlstack(engine, &ids, cfg);
                    // Restored before `?`: the next system runs on `isa`.
                    let _ = kernels::qdot::set_qdot_isa(prev);
                    samples.extend(r?.into_iter().map(|mut row| {
                        row.system = "mlstack-avx2".into();
                        row
                    }));
                }
                _ => samples.extend(run_mlstack(engine, &ids, cfg)?),
            }
        }
        systems.reverse();
    }
    let mut rows = report::medians(&samples);
    let bw = memory_bandwidth_gbps();
    let bytes = engine.model.weight_bytes();
    // Decode's ceiling: every weight is read once per token, so at most
    // bandwidth ÷ weight bytes per token.
    let floor = bw * 1e9 / bytes as f64;
    rows.push(Row::new(
        "machine",
        "memory_read",
        "bandwidth_gb_per_sec",
        bw,
        "GB/s",
    ));
    rows.push(Row::new(
        "bandwidth_floor",
        "decode",
        "tokens_per_sec",
        floor,
        "tokens/s",
    ));
    let model = report::file_name(&cfg.model_path);
    Ok(Report {
        component: "infer",
        bench: "engine",
        config: serde_json::json!({
            "model": model,
            "threads": cfg.threads,
            "decode_tokens": cfg.decode_tokens,
            "repeats": cfg.repeats,
            "statistic": "median, with <metric>_spread = max - min over the repeats",
            "order": "alternating: llama.cpp first on odd repeats, mlstack first on even ones",
            "weight_bytes_per_token": bytes,
            "llama_cpp": peer_version,
            "mlstack_system": mlstack_system(engine),
            "cpu_kernels": format!("{isa:?}"),
            "mlstack_avx2": "the mlstack engine with its quantized dot products capped at AVX2 (no VNNI)",
        }),
        results: rows,
    })
}

/// The human table.
pub fn table(r: &Report) -> String {
    let c = &r.config;
    // `mlstack` rows are `mlstack-cuda` when the engine ran on a GPU.
    let me = c["mlstack_system"].as_str().unwrap_or("mlstack");
    let get = |system: &str, workload: &str, metric: &str| {
        let system = if system == "mlstack" { me } else { system };
        r.get(system, workload, metric)
    };
    let mut s = format!(
        "model {} | {} threads | {} decode steps | median of {} (spread: max - min), systems alternating\n\n{:<16} {:>12} {:>8} {:>12} {:>8} {:>8}\n",
        c["model"].as_str().unwrap_or("?"),
        c["threads"],
        c["decode_tokens"],
        c["repeats"],
        "workload",
        "mlstack t/s",
        "spread",
        "llama.cpp",
        "spread",
        "ratio"
    );
    for w in WORKLOADS {
        let (a, b) = (
            get("mlstack", w, "tokens_per_sec"),
            get("llama.cpp", w, "tokens_per_sec"),
        );
        s += &format!(
            "{w:<16} {:>12} {:>8} {:>12} {:>8} {:>8}\n",
            cell(a, 1),
            cell(get("mlstack", w, "tokens_per_sec_spread"), 1),
            cell(b, 1),
            cell(get("llama.cpp", w, "tokens_per_sec_spread"), 1),
            ratio(a, b)
        );
    }
    s += &format!(
        "{:<16} {:>12} {:>12}\n",
        "peak_rss_mb",
        cell(get("mlstack", "process", "peak_rss_mb"), 0),
        cell(get("llama.cpp", "process", "peak_rss_mb"), 0)
    );
    if r.results.iter().any(|row| row.system == "mlstack-avx2") {
        s += &format!(
            "\nmlstack's quantized dot products: {} vs capped at AVX2 (mlstack-avx2)\n{:<16} {:>12} {:>8} {:>12} {:>8}\n",
            c["cpu_kernels"].as_str().unwrap_or("?"),
            "workload",
            "avx2 t/s",
            "spread",
            "mlstack t/s",
            "gain"
        );
        for w in WORKLOADS {
            let (a, b) = (
                get("mlstack", w, "tokens_per_sec"),
                get("mlstack-avx2", w, "tokens_per_sec"),
            );
            s += &format!(
                "{w:<16} {:>12} {:>8} {:>12} {:>8}\n",
                cell(b, 1),
                cell(get("mlstack-avx2", w, "tokens_per_sec_spread"), 1),
                cell(a, 1),
                ratio(a, b)
            );
        }
    }
    let floor = get("bandwidth_floor", "decode", "tokens_per_sec").unwrap_or(f64::NAN);
    s += &format!(
        "\ndecode floor: {:.1} MB of weights per token / {:.1} GB/s measured read bandwidth = {:.0} tokens/s at most\n",
        c["weight_bytes_per_token"].as_f64().unwrap_or(f64::NAN) / 1e6,
        get("machine", "memory_read", "bandwidth_gb_per_sec").unwrap_or(f64::NAN),
        floor
    );
    // The floor is the host's memory bandwidth: it bounds the CPU engine only.
    if let Some(d) = get("mlstack", "decode_ctx128", "tokens_per_sec").filter(|_| me == "mlstack") {
        s += &format!(
            "mlstack decode_ctx128 reaches {:.0}% of that floor\n",
            100.0 * d / floor
        );
    }
    s
}

/// `a / b` as "1.23x", or "-" when either is missing.
fn ratio(a: Option<f64>, b: Option<f64>) -> String {
    match (a, b) {
        (Some(a), Some(b)) => format!("{:.2}x", a / b),
        _ => "-".into(),
    }
}
