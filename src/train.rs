//! `mlstack train ...`: run, launch, plot, bench.

use std::path::PathBuf;
use std::time::Duration;

use train::configs::Hyper;
use train::data::Source;
use train::trainer::{Init, RunConfig};

use crate::Error;
use crate::cli::{TrainLaunchArgs, TrainPlotArgs, TrainRunArgs};

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
    let data = match (&a.kv_manifest, &a.snapshot_files) {
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
    eprintln!(
        "[launch] {} ranks, rendezvous {master}: {} {}",
        a.dp,
        exe.display(),
        args.join(" ")
    );
    train::dist::launch::launch(&exe, &args, a.dp, &master).map_err(terr)
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
