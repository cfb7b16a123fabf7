//! `mlstack train bench`: the trainer's step on the `small` config, the
//! parallel layouts side by side, against JAX (jax.jit, XLA CPU) on the same
//! model, batch and cores, in the same run.
//!
//! Each configuration runs as its own processes (`mlstack train run`, or
//! `train launch` for the data-parallel ones) so nothing is shared between
//! them; the order of the configurations rotates between repeats (this VM's
//! speed drifts) and each figure is the median over repeats with its spread.
//! Every run gets the same FP32 peak (one FMA probe at the start) for MFU.
//! A run that fails is an error, never a dropped row.

use std::path::PathBuf;
use std::process::Command;

use crate::report::{Report, Row, cell, medians};

#[derive(Clone, Debug)]
pub struct TrainBenchConfig {
    /// The `mlstack` executable to run.
    pub exe: PathBuf,
    /// The corpus (`--data` of `train run`).
    pub data: PathBuf,
    /// Where runs write their checkpoints and token cache.
    pub work_dir: PathBuf,
    pub model: String,
    /// Sequences per step (the global batch).
    pub batch: usize,
    pub seq_len: usize,
    /// Timed steps per run (plus one untimed first step).
    pub steps: u64,
    pub repeats: usize,
    /// Cores for every configuration.
    pub threads: usize,
    /// The JAX peer's script (skipped, and said so, when absent).
    pub jax_script: Option<PathBuf>,
}

/// One configuration: a name and the `mlstack` arguments that run it.
struct Setup {
    workload: &'static str,
    launch_dp: Option<usize>,
    /// Tensor-parallel ranks per replica (with `launch_dp`).
    tp: usize,
    /// Cores it uses (its MFU is against the peak of these).
    cores: usize,
    args: Vec<String>,
}

fn setups(c: &TrainBenchConfig) -> Vec<Setup> {
    let half = (c.batch / 2).max(1).to_string();
    let full = c.batch.to_string();
    let t = c.threads.to_string();
    let one = "1".to_string();
    vec![
        Setup {
            workload: "tp2",
            launch_dp: Some(1),
            tp: 2,
            cores: 2,
            args: vec![
                "--threads".into(),
                "1".into(),
                "--micro-batch".into(),
                full.clone(),
            ],
        },
        Setup {
            workload: "dp1",
            launch_dp: None,
            tp: 1,
            cores: c.threads,
            args: vec![
                "--threads".into(),
                t.clone(),
                "--micro-batch".into(),
                full.clone(),
            ],
        },
        Setup {
            workload: "dp1_1thread",
            launch_dp: None,
            tp: 1,
            cores: 1,
            args: vec![
                "--threads".into(),
                one.clone(),
                "--micro-batch".into(),
                full.clone(),
            ],
        },
        Setup {
            workload: "dp2",
            launch_dp: Some(2),
            tp: 1,
            cores: 2,
            args: vec![
                "--threads".into(),
                one.clone(),
                "--micro-batch".into(),
                half.clone(),
            ],
        },
        Setup {
            workload: "dp2_zero1",
            launch_dp: Some(2),
            tp: 1,
            cores: 2,
            args: vec![
                "--threads".into(),
                one,
                "--micro-batch".into(),
                half,
                "--zero1".into(),
            ],
        },
        Setup {
            workload: "dp1_recompute",
            launch_dp: None,
            tp: 1,
            cores: c.threads,
            args: vec![
                "--threads".into(),
                t,
                "--micro-batch".into(),
                full,
                "--recompute".into(),
            ],
        },
    ]
}

/// One run of one configuration; its summary JSON (rank 0's under launch).
fn run_mlstack(
    c: &TrainBenchConfig,
    s: &Setup,
    peak_gflops: f64,
    rep: usize,
) -> Result<serde_json::Value, String> {
    let mut args: Vec<String> = Vec::new();
    match s.launch_dp {
        Some(dp) => args.extend([
            "train".into(),
            "launch".into(),
            "--dp".into(),
            dp.to_string(),
            "--tp".into(),
            s.tp.to_string(),
            "--".into(),
        ]),
        None => args.extend(["train".into(), "run".into()]),
    }
    let out = c.work_dir.join("checkpoints");
    args.extend(
        [
            "--model",
            &c.model,
            "--data",
            c.data.to_str().unwrap_or_default(),
            "--out",
            out.to_str().unwrap_or_default(),
            "--run",
            &format!("bench-{}-{rep}", s.workload),
            "--steps",
            &(c.steps + 1).to_string(),
            "--seq-len",
            &c.seq_len.to_string(),
            "--warmup",
            "2",
            "--eval-windows",
            "1",
            "--keep",
            "1",
            "--peak-gflops",
            &peak_gflops.to_string(),
            "--no-progress",
            "--json",
        ]
        .map(String::from),
    );
    args.extend(s.args.iter().cloned());
    let o = Command::new(&c.exe)
        .args(&args)
        .output()
        .map_err(|e| format!("{}: {e}", c.exe.display()))?;
    let stdout = String::from_utf8_lossy(&o.stdout);
    if !o.status.success() {
        return Err(format!(
            "mlstack {} failed ({}):\n{}",
            args.join(" "),
            o.status,
            String::from_utf8_lossy(&o.stderr)
        ));
    }
    let line = stdout
        .lines()
        .map(|l| l.strip_prefix("[rank 0] ").unwrap_or(l))
        .find(|l| l.starts_with('{'))
        .ok_or_else(|| format!("no summary line in: {stdout}"))?;
    serde_json::from_str(line).map_err(|e| format!("summary: {e}: {line}"))
}

fn run_jax(c: &TrainBenchConfig, script: &std::path::Path) -> Result<serde_json::Value, String> {
    // The same cores as the Rust runs: taskset to the first `threads` CPUs.
    let cpus = format!("0-{}", c.threads.max(1) - 1);
    let o = Command::new("taskset")
        .args(["-c", &cpus, "python3"])
        .arg(script)
        .args([
            "--config",
            &c.model,
            "--batch",
            &c.batch.to_string(),
            "--seq",
            &c.seq_len.to_string(),
            "--steps",
            &c.steps.to_string(),
        ])
        .output()
        .map_err(|e| format!("taskset python3 {}: {e}", script.display()))?;
    if !o.status.success() {
        return Err(format!(
            "JAX peer failed ({}):\n{}",
            o.status,
            String::from_utf8_lossy(&o.stderr)
        ));
    }
    let stdout = String::from_utf8_lossy(&o.stdout);
    let line = stdout
        .lines()
        .rfind(|l| l.starts_with('{'))
        .ok_or("no JSON from the JAX peer")?;
    serde_json::from_str(line).map_err(|e| format!("JAX summary: {e}: {line}"))
}

/// Runs every configuration `repeats` times (rotating the order) and the
/// JAX peer beside them. `flops_per_token` is the trainer's count for the
/// model at this sequence length; `peak_flops` the probe's FLOP/s.
pub fn run(c: &TrainBenchConfig, flops_per_token: f64, peak_flops: f64) -> Result<Report, String> {
    let setups = setups(c);
    let n = setups.len() + usize::from(c.jax_script.is_some());
    let peak_gflops = peak_flops / 1e9;
    let mut rows = Vec::new();
    for rep in 0..c.repeats {
        for k in 0..n {
            let i = (k + rep) % n;
            if i == setups.len() {
                let script = c.jax_script.as_ref().expect("n counts it");
                let j = run_jax(c, script)?;
                let tps = j["tokens_per_sec"].as_f64().unwrap_or(f64::NAN);
                eprintln!("[bench] repeat {rep}: jax dp1 {tps:.0} tokens/s");
                rows.push(Row::new("jax", "dp1", "tokens_per_sec", tps, "tokens/s"));
                rows.push(Row::new(
                    "jax",
                    "dp1",
                    "ms_per_step",
                    j["ms_per_step"].as_f64().unwrap_or(f64::NAN),
                    "ms",
                ));
                rows.push(Row::new(
                    "jax",
                    "dp1",
                    "mfu_percent",
                    100.0 * tps * flops_per_token / peak_flops,
                    "%",
                ));
                continue;
            }
            let s = &setups[i];
            // The probe measured `threads` cores; a run on fewer is held to
            // their share of it.
            let share = s.cores as f64 / c.threads.max(1) as f64;
            let j = run_mlstack(c, s, peak_gflops * share, rep)?;
            let f = |k: &str| j[k].as_f64().unwrap_or(f64::NAN);
            eprintln!(
                "[bench] repeat {rep}: mlstack {} {:.0} tokens/s, mfu {:.1}%",
                s.workload,
                f("tokens_per_sec"),
                100.0 * f("mfu")
            );
            let w = s.workload;
            rows.push(Row::new(
                "mlstack",
                w,
                "tokens_per_sec",
                f("tokens_per_sec"),
                "tokens/s",
            ));
            rows.push(Row::new(
                "mlstack",
                w,
                "ms_per_step",
                f("ms_per_step"),
                "ms",
            ));
            rows.push(Row::new("mlstack", w, "mfu_percent", 100.0 * f("mfu"), "%"));
            rows.push(Row::new(
                "mlstack",
                w,
                "activation_mb",
                f("activation_bytes") / 1e6,
                "MB",
            ));
            rows.push(Row::new(
                "mlstack",
                w,
                "optimizer_state_mb_per_rank",
                f("optimizer_bytes") / 1e6,
                "MB",
            ));
            if s.tp > 1 {
                rows.push(Row::new(
                    "mlstack",
                    w,
                    "tp_allreduce_mb_per_step",
                    f("tp_allreduce_bytes_per_step") / 1e6,
                    "MB",
                ));
            }
            if s.launch_dp.is_some_and(|dp| dp > 1) {
                let dp = s.launch_dp.unwrap_or(1) as f64;
                rows.push(Row::new(
                    "mlstack",
                    w,
                    "allreduce_mb_per_step",
                    f("allreduce_bytes_per_step") / 1e6,
                    "MB",
                ));
                rows.push(Row::new(
                    "mlstack",
                    w,
                    "ring_lower_bound_mb_per_step",
                    2.0 * (dp - 1.0) / dp * 4.0 * f("n_params") / 1e6,
                    "MB",
                ));
            }
        }
    }
    let mut results = medians(&rows);
    let get = |s: &str, w: &str| crate::report::find(&results, s, w, "tokens_per_sec");
    let mut derived = Vec::new();
    if let (Some(dp2), Some(dp1)) = (get("mlstack", "dp2"), get("mlstack", "dp1")) {
        derived.push(Row::new(
            "mlstack",
            "dp2",
            "scaling_vs_dp1_same_cores_percent",
            100.0 * dp2 / dp1,
            "%",
        ));
    }
    if let (Some(dp2), Some(t1)) = (get("mlstack", "dp2"), get("mlstack", "dp1_1thread")) {
        derived.push(Row::new(
            "mlstack",
            "dp2",
            "strong_scaling_efficiency_percent",
            100.0 * dp2 / (2.0 * t1),
            "%",
        ));
    }
    if let (Some(m), Some(j)) = (get("mlstack", "dp1"), get("jax", "dp1")) {
        derived.push(Row::new("mlstack", "dp1", "speed_vs_jax_ratio", m / j, "x"));
    }
    derived.push(Row::new(
        "machine",
        "fma_probe",
        "peak_gflops",
        peak_gflops,
        "GFLOP/s",
    ));
    results.extend(derived);
    Ok(Report {
        component: "train",
        bench: "step",
        config: serde_json::json!({
            "model": c.model, "global_batch": c.batch, "seq_len": c.seq_len, "timed_steps": c.steps,
            "repeats": c.repeats, "threads": c.threads, "flops_per_token": flops_per_token,
            "peak_gflops": peak_gflops, "data": c.data,
            "jax": if c.jax_script.is_some() { "jax.jit on CPU, taskset to the same cores" } else { "skipped: no script" },
            "order": "configurations rotate between repeats; medians with _spread rows",
        }),
        results,
    })
}

/// The table printed after the run.
pub fn table(r: &Report) -> String {
    let c = &r.config;
    let mut s = format!(
        "model {} | global batch {}×{} | {} cores | peak {:.0} GFLOP/s | median of {}\n\n{:<16} {:<8} {:>10} {:>10} {:>8} {:>12} {:>12}\n",
        c["model"].as_str().unwrap_or("?"),
        c["global_batch"],
        c["seq_len"],
        c["threads"],
        c["peak_gflops"].as_f64().unwrap_or(f64::NAN),
        c["repeats"],
        "workload",
        "system",
        "tokens/s",
        "ms/step",
        "MFU %",
        "act. MB",
        "opt. MB/rank"
    );
    for (sys, w) in [
        ("mlstack", "dp1"),
        ("jax", "dp1"),
        ("mlstack", "dp1_1thread"),
        ("mlstack", "dp2"),
        ("mlstack", "dp2_zero1"),
        ("mlstack", "dp1_recompute"),
        ("mlstack", "tp2"),
    ] {
        let g = |m: &str| r.get(sys, w, m);
        s += &format!(
            "{w:<16} {sys:<8} {:>10} {:>10} {:>8} {:>12} {:>12}\n",
            cell(g("tokens_per_sec"), 0),
            cell(g("ms_per_step"), 0),
            cell(g("mfu_percent"), 1),
            cell(g("activation_mb"), 0),
            cell(g("optimizer_state_mb_per_rank"), 0),
        );
    }
    for (w, m, label) in [
        ("dp1", "speed_vs_jax_ratio", "mlstack / JAX at DP1"),
        (
            "dp2",
            "scaling_vs_dp1_same_cores_percent",
            "DP2 / DP1 (same cores), %",
        ),
        (
            "dp2",
            "strong_scaling_efficiency_percent",
            "DP2 / (2 × DP1 on 1 core), %",
        ),
        (
            "dp2",
            "allreduce_mb_per_step",
            "all-reduce MB per step (DP2)",
        ),
        (
            "dp2",
            "ring_lower_bound_mb_per_step",
            "ring bound 2(N−1)/N × grad MB",
        ),
        (
            "tp2",
            "tp_allreduce_mb_per_step",
            "TP2 all-reduce MB per step",
        ),
    ] {
        s += &format!("{label:<34} {}\n", cell(r.get("mlstack", w, m), 2));
    }
    s
}
