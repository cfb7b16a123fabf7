//! `mlstack infer bench-engine`: prefill and decode speed of this engine and
//! of llama.cpp (llama-cpp-python) on the same GGUF, prompt ids and threads,
//! side by side in one run, plus the memory-bandwidth floor for decode.
//!
//! Workloads: `prefill_128`, `prefill_1024` (prompt tokens/s of one forward
//! pass over a fresh cache) and `decode_ctx128`, `decode_ctx1024` (greedy
//! single-token steps after that prefill). Medians over repeats.

use std::io::Write;
use std::process::Command;
use std::time::Instant;

use crate::generate::Engine;
use crate::model::{KvCache, Logits};
use crate::sampling::argmax;

const LLAMACPP_SCRIPT: &str = include_str!("../../scripts/reference/llamacpp_bench.py");

/// A passage repeated into prompts of 128 and 1,024 tokens.
const TEXT: &str = "The history of computing is a story of layers. At the bottom sit transistors, switching on and off billions of times a second; above them, logic gates combine those switches into adders, multiplexers and memories. Instruction sets give the hardware a vocabulary, and compilers translate human intentions into that vocabulary. Operating systems share the machine among many programs, file systems give durable names to bytes, and networks let machines speak to one another across rooms and oceans. Each layer hides the complexity of the one beneath it, and each layer leaks a little of that complexity upward. ";

#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("mlstack engine: {0}")]
    Engine(String),
    #[error("llama.cpp: {0}")]
    Peer(String),
    #[error("unknown system {0:?} (mlstack, llama.cpp)")]
    UnknownSystem(String),
}

#[derive(Clone, Debug)]
pub struct BenchConfig {
    pub systems: Vec<String>,
    pub decode_tokens: usize,
    pub repeats: usize,
    pub threads: usize,
    pub model_path: std::path::PathBuf,
}

/// One (system, workload) measurement.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Row {
    pub system: String,
    pub workload: String,
    pub tokens_per_sec: f64,
    pub peak_rss_mb: f64,
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct Report {
    pub model: String,
    pub threads: usize,
    pub decode_tokens: usize,
    pub repeats: usize,
    pub weight_bytes_per_token: usize,
    pub memory_bandwidth_gb_per_sec: f64,
    /// weight bytes per token ÷ bandwidth, as tokens/s: decode's ceiling.
    pub decode_floor_tokens_per_sec: f64,
    pub rows: Vec<Row>,
    pub peer_version: Option<String>,
}

const WORKLOADS: [&str; 4] = [
    "prefill_128",
    "prefill_1024",
    "decode_ctx128",
    "decode_ctx1024",
];

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

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

fn run_mlstack(engine: &Engine, ids: &[u32], cfg: &BenchConfig) -> Result<Vec<Row>, BenchError> {
    let m = &engine.model;
    let err = |e: crate::model::ModelError| BenchError::Engine(e.to_string());
    let mut rows = Vec::new();
    for n in [128usize, 1024] {
        let (mut pre, mut dec) = (Vec::new(), Vec::new());
        for _ in 0..cfg.repeats {
            let mut cache = KvCache::new(&m.config, n + cfg.decode_tokens + 1);
            let t = Instant::now();
            let logits = m
                .forward(&ids[..n], &mut cache, Logits::Last)
                .map_err(err)?;
            pre.push(n as f64 / t.elapsed().as_secs_f64());
            let mut tok = argmax(&logits);
            let t = Instant::now();
            for _ in 0..cfg.decode_tokens {
                tok = argmax(&m.forward(&[tok], &mut cache, Logits::Last).map_err(err)?);
            }
            dec.push(cfg.decode_tokens as f64 / t.elapsed().as_secs_f64());
        }
        rows.push((format!("prefill_{n}"), median(pre)));
        rows.push((format!("decode_ctx{n}"), median(dec)));
    }
    let rss = peak_rss_mb();
    Ok(rows
        .into_iter()
        .map(|(workload, tps)| Row {
            system: "mlstack".into(),
            workload,
            tokens_per_sec: tps,
            peak_rss_mb: rss,
        })
        .collect())
}

fn run_llamacpp(ids: &[u32], cfg: &BenchConfig) -> Result<(Vec<Row>, String), BenchError> {
    let dir = tempfile::tempdir().map_err(|e| BenchError::Peer(e.to_string()))?;
    let script = dir.path().join("llamacpp_bench.py");
    let ids_path = dir.path().join("ids.json");
    std::fs::write(&script, LLAMACPP_SCRIPT).map_err(|e| BenchError::Peer(e.to_string()))?;
    std::fs::File::create(&ids_path)
        .and_then(|mut f| f.write_all(serde_json::to_string(ids).expect("ids").as_bytes()))
        .map_err(|e| BenchError::Peer(e.to_string()))?;
    let out = Command::new("python3")
        .arg(&script)
        .arg("--model")
        .arg(&cfg.model_path)
        .args(["--threads", &cfg.threads.to_string()])
        .arg("--prompt-ids")
        .arg(&ids_path)
        .args(["--decode-tokens", &cfg.decode_tokens.to_string()])
        .args(["--repeats", &cfg.repeats.to_string()])
        .output()
        .map_err(|e| BenchError::Peer(format!("running python3: {e}")))?;
    if !out.status.success() {
        return Err(BenchError::Peer(format!(
            "the llama-cpp-python script failed (pip install llama-cpp-python; see infer/README.md): {}",
            String::from_utf8_lossy(&out.stderr)
                .lines()
                .last()
                .unwrap_or("")
        )));
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)
        .map_err(|e| BenchError::Peer(format!("bad JSON from the script: {e}")))?;
    let rss = v["peak_rss_mb"].as_f64().unwrap_or(f64::NAN);
    let rows = WORKLOADS
        .iter()
        .map(|w| Row {
            system: "llama.cpp".into(),
            workload: w.to_string(),
            tokens_per_sec: v[*w].as_f64().unwrap_or(f64::NAN),
            peak_rss_mb: rss,
        })
        .collect();
    Ok((
        rows,
        v["llama_cpp_python"].as_str().unwrap_or("?").to_string(),
    ))
}

/// Runs the benchmark for the configured systems.
pub fn run(engine: &Engine, cfg: &BenchConfig) -> Result<Report, BenchError> {
    for s in &cfg.systems {
        if s != "mlstack" && s != "llama.cpp" {
            return Err(BenchError::UnknownSystem(s.clone()));
        }
    }
    let ids = prompt_ids(engine)?;
    let mut rows = Vec::new();
    let mut peer_version = None;
    // llama.cpp first, in its own process, so mlstack's RSS is not inflated
    // by anything but itself.
    if cfg.systems.iter().any(|s| s == "llama.cpp") {
        let (r, v) = run_llamacpp(&ids, cfg)?;
        rows.extend(r);
        peer_version = Some(v);
    }
    if cfg.systems.iter().any(|s| s == "mlstack") {
        rows.extend(run_mlstack(engine, &ids, cfg)?);
    }
    let bw = memory_bandwidth_gbps();
    let bytes = engine.model.weight_bytes();
    Ok(Report {
        model: cfg
            .model_path
            .file_name()
            .map_or_else(String::new, |n| n.to_string_lossy().into_owned()),
        threads: cfg.threads,
        decode_tokens: cfg.decode_tokens,
        repeats: cfg.repeats,
        weight_bytes_per_token: bytes,
        memory_bandwidth_gb_per_sec: bw,
        decode_floor_tokens_per_sec: bw * 1e9 / bytes as f64,
        rows,
        peer_version,
    })
}

impl Report {
    fn get(&self, system: &str, workload: &str) -> Option<f64> {
        self.rows
            .iter()
            .find(|r| r.system == system && r.workload == workload)
            .map(|r| r.tokens_per_sec)
    }

    /// The human table.
    pub fn table(&self) -> String {
        let mut s = format!(
            "model {} | {} threads | {} decode steps | median of {}\n\n{:<16} {:>12} {:>12} {:>10}\n",
            self.model,
            self.threads,
            self.decode_tokens,
            self.repeats,
            "workload",
            "mlstack t/s",
            "llama.cpp",
            "ratio"
        );
        for w in WORKLOADS {
            let (a, b) = (self.get("mlstack", w), self.get("llama.cpp", w));
            let f = |v: Option<f64>| v.map_or("-".into(), |v| format!("{v:.1}"));
            let ratio = match (a, b) {
                (Some(a), Some(b)) => format!("{:.2}x", a / b),
                _ => "-".into(),
            };
            s += &format!("{w:<16} {:>12} {:>12} {:>10}\n", f(a), f(b), ratio);
        }
        let rss = |sys: &str| {
            self.rows
                .iter()
                .find(|r| r.system == sys)
                .map_or("-".into(), |r| format!("{:.0}", r.peak_rss_mb))
        };
        s += &format!(
            "{:<16} {:>12} {:>12}\n",
            "peak_rss_mb",
            rss("mlstack"),
            rss("llama.cpp")
        );
        s += &format!(
            "\ndecode floor: {:.1} MB of weights per token / {:.1} GB/s measured read bandwidth = {:.0} tokens/s at most\n",
            self.weight_bytes_per_token as f64 / 1e6,
            self.memory_bandwidth_gb_per_sec,
            self.decode_floor_tokens_per_sec
        );
        if let Some(d) = self.get("mlstack", "decode_ctx128") {
            s += &format!(
                "mlstack decode_ctx128 reaches {:.0}% of that floor\n",
                100.0 * d / self.decode_floor_tokens_per_sec
            );
        }
        s
    }

    pub fn json(&self) -> String {
        serde_json::to_string_pretty(self).expect("report serializes")
    }
}
