//! The training loop.
//!
//! One optimizer step, on every rank:
//! 1. data: the loader yields the global batch's window indices (the same
//!    list on every rank, from the shared seed); rank r takes, for
//!    micro-batch m, slots (m·world + r)·B .. +B. So the step's batch does
//!    not depend on how it is split over ranks and micro-batches.
//! 2. forward and backward per micro-batch, the loss of each token scaled by
//!    1/(tokens in the global batch): the accumulated gradient is exactly
//!    the gradient of the global batch's mean loss (the scale the
//!    build-nanogpt bug report was about).
//! 3. communication: on the last micro-batch each layer's gradient is handed
//!    to a communication thread as the backward finishes it, bucketed to
//!    ~`bucket_mb` and ring all-reduced while the backward goes on with the
//!    layers below (PyTorch DDP's overlap). Under ZeRO-1 the gradient is
//!    reduce-scattered instead: each rank gets the sum of its shard only.
//! 4. optimizer: global gradient norm (over shards: one scalar all-reduce),
//!    clip, AdamW with the scheduled learning rate; under ZeRO-1 each rank
//!    updates its shard and the parameters are all-gathered.

use std::ops::Range;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use model::tokenizer::Tokenizer;

use crate::checkpoint::{self, TrainerState};
use crate::configs::{Hyper, model_config};
use crate::data::{self, Dataset, Loader, LoaderPos, Source};
use crate::dist::group::ProcessGroup;
use crate::error::{Result, TrainError, config_err};
use crate::llama::{Acts, Llama};
use crate::metrics::{Gauges, JsonlLog, StepRecord};
use crate::optim::{AdamW, clip_factor, lr_at, sum_squares};

/// Where the starting weights come from.
#[derive(Clone, Debug)]
pub enum Init {
    /// A named config, randomly initialised from the seed.
    Scratch(String),
    /// The SmolLM2 GGUF at this path, dequantized (`smollm2-135m`).
    Gguf(PathBuf),
}

/// Everything a run needs.
#[derive(Clone, Debug)]
pub struct RunConfig {
    pub run: String,
    /// Checkpoints go to `<out>/<run>/step-<n>/`.
    pub out: PathBuf,
    pub init: Init,
    pub hyper: Hyper,
    pub data: Source,
    pub column: String,
    pub cache_dir: PathBuf,
    pub val_fraction: f64,
    /// Evaluate every this many steps (0: only at the end).
    pub eval_every: u64,
    pub eval_windows: usize,
    /// Checkpoint every this many steps (0: only at the end).
    pub ckpt_every: u64,
    pub keep: usize,
    pub resume: bool,
    pub recompute: bool,
    pub zero1: bool,
    /// Tensor-parallel ranks per model replica (Megatron); the data-parallel
    /// degree is `world / tp`. Rank r is tensor rank r mod tp of replica r / tp.
    pub tp: usize,
    pub threads: usize,
    pub rank: usize,
    pub world: usize,
    pub rendezvous: String,
    pub token: u64,
    pub collective_timeout: Duration,
    pub bucket_mb: f64,
    /// KV endpoints: register each checkpoint under `models/<run>/...`.
    pub kv: Option<Vec<String>>,
    pub progress: bool,
    /// The FP32 peak MFU is against (FLOP/s); measured when `None`.
    pub peak_flops: Option<f64>,
    /// Stop (as if killed) after this step: for the resume tests.
    pub stop_after: Option<u64>,
    /// Stop after this much wall time, checkpointing first.
    pub time_budget: Option<Duration>,
    /// Fault injection for the failure tests (`MLSTACK_TRAIN_FAULT`).
    pub fault: Option<Fault>,
}

/// A fault a rank injects into itself at the start of a step: the test
/// double behind the "a rank dies / hangs" tests, never set in normal runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fault {
    pub kind: FaultKind,
    pub rank: usize,
    pub step: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FaultKind {
    /// The process exits at once (status 17), as if killed.
    Exit,
    /// The process stops answering (sleeps), as if hung.
    Hang,
}

impl std::str::FromStr for Fault {
    type Err = TrainError;
    /// `exit:RANK:STEP` or `hang:RANK:STEP`.
    fn from_str(s: &str) -> Result<Fault> {
        let bad = || {
            config_err(
                "MLSTACK_TRAIN_FAULT",
                format!("{s:?} is not exit|hang:RANK:STEP"),
            )
        };
        let mut it = s.split(':');
        let kind = match it.next() {
            Some("exit") => FaultKind::Exit,
            Some("hang") => FaultKind::Hang,
            _ => return Err(bad()),
        };
        let rank = it.next().and_then(|r| r.parse().ok()).ok_or_else(bad)?;
        let step = it.next().and_then(|r| r.parse().ok()).ok_or_else(bad)?;
        Ok(Fault { kind, rank, step })
    }
}

impl RunConfig {
    /// Defaults for a run named `run` reading `data`.
    pub fn new(run: &str, model: &str, data: Source) -> RunConfig {
        RunConfig {
            run: run.to_string(),
            out: PathBuf::from("checkpoints"),
            init: Init::Scratch(model.to_string()),
            hyper: Hyper::default(),
            data,
            column: "text".into(),
            cache_dir: PathBuf::from("checkpoints/.token-cache"),
            val_fraction: 0.05,
            eval_every: 0,
            eval_windows: 8,
            ckpt_every: 0,
            keep: 3,
            resume: false,
            recompute: false,
            zero1: false,
            tp: 1,
            threads: 1,
            rank: 0,
            world: 1,
            rendezvous: "127.0.0.1:29500".into(),
            token: 0,
            collective_timeout: Duration::from_secs(60),
            bucket_mb: 25.0,
            kv: None,
            progress: false,
            peak_flops: None,
            stop_after: None,
            time_budget: None,
            fault: None,
        }
    }
}

/// What a run did.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Summary {
    pub run: String,
    pub model: String,
    pub n_params: usize,
    pub steps: u64,
    pub first_step: u64,
    pub tokens: u64,
    pub losses: Vec<f32>,
    pub final_loss: f32,
    pub val_loss: Option<f32>,
    /// Validation loss before the first step (with `eval_every`).
    pub val_loss_at_start: Option<f32>,
    pub tokens_per_sec: f64,
    pub ms_per_step: f64,
    pub mfu: f64,
    pub peak_gflops: f64,
    pub allreduce_bytes_per_step: f64,
    /// Bytes the tensor-parallel all-reduces sent per step (activations).
    pub tp_allreduce_bytes_per_step: f64,
    pub activation_bytes: usize,
    pub optimizer_bytes: usize,
    pub checkpoint: Option<PathBuf>,
    pub dataset_version: String,
    pub token_cache_hit: bool,
    pub train_windows: usize,
}

/// The model, its tokenizer and starting parameters.
pub fn build_model(init: &Init, seed: u64) -> Result<(Llama, Vec<f32>, Tokenizer, String)> {
    match init {
        Init::Gguf(path) => {
            let (llama, p, tok) = crate::init::from_gguf(path)?;
            Ok((llama, p, tok, "smollm2-135m".into()))
        }
        Init::Scratch(name) => {
            let config = model_config(name)?;
            let tok = default_tokenizer()?.truncated(config.vocab_size)?;
            let llama = Llama::new(config, true);
            let p = llama.init(seed);
            Ok((llama, p, tok, name.clone()))
        }
    }
}

/// SmolLM2's tokenizer, from the GGUF the project already uses.
pub fn default_tokenizer() -> Result<Tokenizer> {
    let path = model::locate::locate_model(None).map_err(|e| config_err("tokenizer", e))?;
    let file = model::gguf::GgufFile::open(&path).map_err(model::Error::from)?;
    Ok(Tokenizer::from_gguf(&file.header)?)
}

/// A raw pointer into the gradient buffer, for the communication thread.
struct GradPtr(*mut f32);
// SAFETY: sent to one scoped thread that only touches ranges the backward
// has finished with (see `step`), and joined before the buffer is used again.
unsafe impl Send for GradPtr {}

/// Runs training as configured; every rank calls this.
pub fn run(cfg: &RunConfig) -> Result<Summary> {
    // One span over the whole run: the data read links from it (to a
    // dataset snapshot's span), the steps and registrations hang below it,
    // and the registry entry stores its context for the serving side.
    let span = tracing::info_span!(
        "train.run",
        run = %cfg.run,
        rank = cfg.rank,
        world = cfg.world,
        steps = tracing::field::Empty,
        final_loss = tracing::field::Empty
    );
    let summary = span.in_scope(|| run_in_span(cfg, &span))?;
    span.record("steps", summary.steps);
    span.record("final_loss", f64::from(summary.final_loss));
    Ok(summary)
}

fn run_in_span(cfg: &RunConfig, run_span: &tracing::Span) -> Result<Summary> {
    let h = cfg.hyper.clone();
    if h.micro_batch == 0 || h.seq_len == 0 || h.grad_accum == 0 {
        return Err(config_err(
            "batch",
            "micro_batch, seq_len and grad_accum must be positive",
        ));
    }
    crate::ops::set_threads(cfg.threads);
    let (full_llama, mut params, tokenizer, model_name) = build_model(&cfg.init, h.seed)?;
    let tp = cfg.tp.max(1);
    if !cfg.world.is_multiple_of(tp) {
        return Err(config_err(
            "tp",
            format!("{tp} does not divide the world size {}", cfg.world),
        ));
    }
    if tp > 1 && cfg.zero1 {
        return Err(config_err(
            "zero1",
            "ZeRO-1 with tensor parallelism is not built",
        ));
    }
    let (dp_rank, tp_rank) = (cfg.rank / tp, cfg.rank % tp);
    let llama = if tp > 1 {
        Llama::new(
            crate::dist::tensor::local_config(&full_llama.config, tp)?,
            full_llama.tied,
        )
    } else {
        full_llama.clone()
    };
    if h.seq_len > llama.config.context_length {
        return Err(config_err(
            "seq_len",
            format!(
                "{} exceeds the model's context length {}",
                h.seq_len, llama.config.context_length
            ),
        ));
    }
    let rank0 = cfg.rank == 0;
    let say = |msg: String| {
        if rank0 {
            eprintln!("[train] {msg}");
        }
    };

    // Data: documents → tokens (cached by dataset version and vocabulary).
    let t_data = Instant::now();
    let (docs_version, docs) = {
        let (docs, version) = data::documents(&cfg.data, &cfg.column)?;
        (version, docs)
    };
    let key = format!(
        "{}-vocab{}",
        data::content_key(&docs),
        tokenizer.vocab_size()
    );
    let (tokens, hit) =
        data::cached_tokens(&cfg.cache_dir, &key, || data::tokenize(&docs, &tokenizer))?;
    drop(docs);
    let n_tokens = tokens.ids().len();
    let ds = Dataset::new(tokens, docs_version.clone(), h.seq_len, cfg.val_fraction)?;
    say(format!(
        "dataset {docs_version}: {n_tokens} tokens ({} train windows of {}, {} validation), token cache {} ({:.1} s)",
        ds.train_windows(),
        h.seq_len,
        ds.val_windows(),
        if hit { "hit" } else { "written" },
        t_data.elapsed().as_secs_f64()
    ));

    // The groups: with tp = 1 one data-parallel group on the rendezvous;
    // with a (dp × tp) mesh a tensor group and a data group per rank, both
    // joined through the one rendezvous (`ProcessGroup::connect_mesh`).
    let (mut group, llama) = if tp == 1 {
        let g = ProcessGroup::connect(
            cfg.rank,
            cfg.world,
            &cfg.rendezvous,
            cfg.token,
            cfg.collective_timeout,
        )?;
        (g, llama)
    } else {
        let (tp_group, dp_group) = ProcessGroup::connect_mesh(
            cfg.rank,
            cfg.world,
            tp,
            &cfg.rendezvous,
            cfg.token,
            cfg.collective_timeout,
        )?;
        let mut l = llama;
        l.tp = Some(std::sync::Arc::new(crate::dist::tensor::TpGroup::new(
            tp_group,
        )));
        (dp_group, l)
    };
    if tp > 1 {
        // Every tensor rank starts from its shard of the same full model.
        params =
            crate::dist::tensor::shard(&full_llama.layout, &params, &llama.layout, tp_rank, tp);
    }
    let world = group.world;
    let total = llama.layout.total;
    let opt_range = if cfg.zero1 {
        group.owned_chunk(total)
    } else {
        0..total
    };
    let mut opt = AdamW::new(&llama.layout, opt_range.clone());
    let run_dir = cfg.out.join(&cfg.run);

    // Resume: parameters, moments, step and loader position.
    let mut start = 0u64;
    let mut loader_pos = LoaderPos {
        epoch: 0,
        cursor: 0,
    };
    let mut tokens_seen = 0u64;
    if cfg.resume
        && let Some(dir) = checkpoint::latest(&run_dir)?
    {
        let mut ld = checkpoint::load(&dir, &full_llama)?;
        if tp > 1 {
            let sh = |v: &[f32]| {
                crate::dist::tensor::shard(&full_llama.layout, v, &llama.layout, tp_rank, tp)
            };
            ld.params = sh(&ld.params);
            ld.m = sh(&ld.m);
            ld.v = sh(&ld.v);
        }
        if ld.state.hyper.micro_batch * ld.state.hyper.grad_accum * ld.state.dp
            != h.micro_batch * h.grad_accum * world
        {
            return Err(config_err(
                "resume",
                "the global batch differs from the checkpoint's",
            ));
        }
        params = ld.params;
        opt.m.copy_from_slice(&ld.m[opt_range.clone()]);
        opt.v.copy_from_slice(&ld.v[opt_range.clone()]);
        start = ld.state.step;
        loader_pos = ld.state.loader.clone();
        tokens_seen = ld.state.tokens_seen;
        say(format!("resumed from {} at step {start}", dir.display()));
    }
    // Every rank starts from rank 0's weights (they agree already when all
    // initialise from one seed; a broadcast makes it a guarantee).
    group.broadcast(&mut params, 0)?;

    let peak = match cfg.peak_flops {
        Some(p) => p,
        None => crate::mfu::peak_flops(cfg.threads * cfg.world),
    };
    let (b, t) = (h.micro_batch, h.seq_len);
    let global = b * h.grad_accum * world;
    let tokens_per_step = (global * t) as u64;
    // Model FLOPs (MFU's numerator) are the full model's: the head each
    // tensor rank repeats is overhead, not model work.
    let flops_per_step = full_llama.flops_per_token(t) * tokens_per_step as f64;
    let mut acts = llama.acts(b, t, cfg.recompute);
    let mut grads = vec![0f32; total];
    let mut loader = Loader::new(ds.train_windows(), h.seed, loader_pos);
    let mut log = if rank0 {
        Some(JsonlLog::open(&run_dir.join("metrics.jsonl"))?)
    } else {
        None
    };
    let gauges = Gauges::global();
    let bar = (rank0 && cfg.progress).then(|| {
        let pb = indicatif::ProgressBar::new(h.max_steps);
        pb.set_style(
            indicatif::ProgressStyle::with_template("{bar:30} step {pos}/{len} {msg} eta {eta}")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        pb.set_position(start);
        pb
    });
    say(format!(
        "{model_name}: {} parameters, {world} rank(s) × {} thread(s), global batch {global}×{t} = {tokens_per_step} tokens, \
         {:.1} MFLOP/token, peak {:.1} GFLOP/s{}{}",
        full_llama.n_params(),
        cfg.threads,
        llama.flops_per_token(t) / 1e6,
        peak / 1e9,
        if cfg.zero1 { ", ZeRO-1" } else { "" },
        if cfg.recompute { ", recompute" } else { "" },
    ));

    // The validation loss before the first step: the "before" of a
    // fine-tune, the starting point of a curve.
    let mut val_at_start = None;
    if cfg.eval_every > 0 && start == 0 {
        let v = evaluate(&llama, &params, &ds, cfg.eval_windows, b, &mut acts);
        say(format!("step 0 val {v:.4}"));
        val_at_start = Some(v);
        if let Some(l) = log.as_mut() {
            l.write(&StepRecord {
                step: 0,
                val_loss: Some(v),
                loss: f32::NAN,
                ..StepRecord::default()
            })?;
        }
    }
    let bucket_elems = ((cfg.bucket_mb * 1e6 / 4.0) as usize).max(1);
    let started = Instant::now();
    let mut losses = Vec::new();
    let mut step_times = Vec::new();
    let mut comm_bytes = Vec::new();
    let mut tp_bytes = Vec::new();
    let mut last_val = None;
    let mut last_ck = None;
    let mut step = start;
    let mut last_mfu = 0.0;
    let mut last_tps = 0.0;
    while step < h.max_steps {
        if let Some(f) = &cfg.fault
            && f.rank == group.rank
            && f.step == step + 1
        {
            eprintln!(
                "[train] rank {}: injected fault {:?} at step {}",
                f.rank, f.kind, f.step
            );
            match f.kind {
                FaultKind::Exit => std::process::exit(17),
                FaultKind::Hang => loop {
                    std::thread::sleep(Duration::from_secs(3600));
                },
            }
        }
        let t0 = Instant::now();
        // One span per step, a child per phase (data, forward, backward,
        // allreduce, optimizer): the trace shows where a slow step went.
        let step_span = tracing::info_span!("train_step", step = step + 1, rank = group.rank);
        let _step_guard = step_span.enter();
        let idx = loader.next(global);
        let mut rec = StepRecord {
            step: step + 1,
            ..StepRecord::default()
        };
        grads.iter_mut().for_each(|g| *g = 0.0);
        let scale = 1.0 / (global * t) as f32;
        let bytes_before = group.stats.bytes_sent;
        let tp_before = llama.tp.as_ref().map_or(0, |t| t.stats().bytes_sent);
        let comm_before = group.stats.seconds;
        let mut loss_sum = 0f64;
        let mut tok = vec![0u32; b * t];
        let mut tgt = vec![0u32; b * t];
        for m in 0..h.grad_accum {
            let td = Instant::now();
            let data_span = tracing::info_span!("data", micro_batch = m).entered();
            let slots = (m * world + dp_rank) * b;
            for (i, &w) in idx[slots..slots + b].iter().enumerate() {
                let (x, y) = ds.train_window(w);
                tok[i * t..(i + 1) * t].copy_from_slice(x);
                tgt[i * t..(i + 1) * t].copy_from_slice(y);
            }
            drop(data_span);
            rec.data_s += td.elapsed().as_secs_f64();
            let tf = Instant::now();
            tracing::info_span!("forward", micro_batch = m)
                .in_scope(|| llama.forward(&params, &tok, &mut acts));
            rec.forward_s += tf.elapsed().as_secs_f64();
            let tb = Instant::now();
            let bwd_span = tracing::info_span!("backward", micro_batch = m).entered();
            let overlap = m + 1 == h.grad_accum && world > 1 && !cfg.zero1;
            if overlap {
                loss_sum += backward_overlapped(
                    &llama,
                    &params,
                    &mut grads,
                    &tok,
                    &tgt,
                    &mut acts,
                    scale,
                    &mut group,
                    bucket_elems,
                )?;
            } else {
                loss_sum += llama.backward(
                    &params,
                    &mut grads,
                    &tok,
                    &tgt,
                    &mut acts,
                    scale,
                    &mut |_, _| {},
                );
            }
            drop(bwd_span);
            rec.backward_s += tb.elapsed().as_secs_f64();
        }
        if let Some(e) = llama.tp.as_ref().and_then(|t| t.take_error()) {
            return Err(e);
        }
        let ar_span = tracing::info_span!("allreduce").entered();
        // (the overlapped all-reduce's time is inside backward_s; the
        // collectives' own clock is group.stats.seconds)
        let tc = Instant::now();
        let mut loss_buf = [loss_sum as f32];
        if cfg.zero1 {
            group.reduce_scatter(&mut grads)?;
        }
        group.all_reduce(&mut loss_buf)?;
        let sq = match &llama.tp {
            None => global_sum_squares(&mut group, &grads, cfg.zero1)?,
            // Tensor parallel: the split tensors' squares summed over the
            // tensor ranks, the replicated ones (equal on every rank) once.
            Some(tpg) => {
                let split = crate::dist::tensor::split_ranges(&llama.layout);
                let split_sq: f64 = split.iter().map(|r| sum_squares(&grads[r.clone()])).sum();
                let all_sq = sum_squares(&grads);
                let mut buf = [split_sq as f32];
                tpg.with(|g| g.all_reduce(&mut buf))?;
                (all_sq - split_sq) + f64::from(buf[0])
            }
        };
        let _ = tc;
        rec.allreduce_s = group.stats.seconds - comm_before;
        let loss = loss_buf[0] / (global * t) as f32;
        if !loss.is_finite() {
            return Err(TrainError::Diverged {
                step: step + 1,
                loss,
            });
        }
        drop(ar_span);
        let norm = sq.sqrt();
        let to = Instant::now();
        let opt_span = tracing::info_span!("optimizer").entered();
        let lr = lr_at(&h, step);
        let clip = clip_factor(norm, h.grad_clip);
        let r = opt.range.clone();
        opt.step(&h, &mut params[r.clone()], &grads[r], lr, clip, step + 1);
        if cfg.zero1 {
            group.all_gather(&mut params)?;
        }
        drop(opt_span);
        rec.optimizer_s = to.elapsed().as_secs_f64();
        step += 1;
        tokens_seen += tokens_per_step;
        let dt = t0.elapsed().as_secs_f64();
        step_times.push(dt);
        let step_bytes = group.stats.bytes_sent - bytes_before;
        comm_bytes.push(step_bytes as f64);
        tp_bytes.push((llama.tp.as_ref().map_or(0, |t| t.stats().bytes_sent) - tp_before) as f64);
        losses.push(loss);
        rec.loss = loss;
        rec.lr = lr;
        rec.grad_norm = norm as f32;
        rec.tokens = tokens_seen;
        rec.tokens_per_sec = tokens_per_step as f64 / dt;
        rec.mfu = flops_per_step / dt / peak;
        rec.allreduce_bytes = step_bytes;
        last_mfu = rec.mfu;
        last_tps = rec.tokens_per_sec;

        let out_of_time = cfg.time_budget.is_some_and(|b| started.elapsed() >= b);
        let last = step == h.max_steps || cfg.stop_after == Some(step) || out_of_time;
        if (cfg.eval_every > 0 && step.is_multiple_of(cfg.eval_every)) || last {
            let v = evaluate(&llama, &params, &ds, cfg.eval_windows, b, &mut acts);
            rec.val_loss = Some(v);
            last_val = Some(v);
        }
        if let Some(g) = gauges {
            g.record(&rec);
        }
        if let Some(l) = log.as_mut() {
            l.write(&rec)?;
        }
        let msg = format!(
            "loss {loss:.4}{} lr {lr:.2e} |g| {norm:.3} {:.0} tok/s mfu {:.1}%",
            rec.val_loss
                .map(|v| format!(" val {v:.4}"))
                .unwrap_or_default(),
            rec.tokens_per_sec,
            100.0 * rec.mfu
        );
        match &bar {
            Some(pb) => {
                pb.set_position(step);
                pb.set_message(msg);
            }
            None => {
                if rank0 && (step == start + 1 || step.is_multiple_of(10) || last) {
                    eprintln!("[train] step {step}/{} {msg}", h.max_steps);
                }
            }
        }
        let ck_now = (cfg.ckpt_every > 0 && step.is_multiple_of(cfg.ckpt_every)) || last;
        if ck_now {
            // ZeRO-1: gather the moments' shards so the checkpoint is whole
            // (and loadable at any world size).
            let (m_full, v_full) = gather_moments(&mut group, &opt, total)?;
            // Tensor parallel: the replica's shards gathered into the full
            // model (every replica holds the same values; replica 0 saves).
            let (params_out, m_out, v_out) = match &llama.tp {
                Some(tpg) if dp_rank == 0 => {
                    let g = |v: &[f32]| gather_tp(tpg, &full_llama, &llama, v);
                    (g(&params)?, g(&m_full)?, g(&v_full)?)
                }
                _ => (params.clone(), m_full, v_full),
            };
            if rank0 {
                let state = TrainerState {
                    run: cfg.run.clone(),
                    step,
                    loader: loader.pos.clone(),
                    hyper: h.clone(),
                    model: model_name.clone(),
                    tied: full_llama.tied,
                    dataset_version: docs_version.clone(),
                    tokens_seen,
                    train_loss: loss,
                    val_loss: last_val,
                    dp: world,
                    tp,
                    zero1: cfg.zero1,
                    unix_time: std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map(|d| d.as_secs())
                        .unwrap_or(0),
                    code_version: env!("CARGO_PKG_VERSION").to_string(),
                };
                let dir = checkpoint::save(
                    &run_dir,
                    &full_llama,
                    &params_out,
                    (&m_out, &v_out),
                    &tokenizer,
                    &state,
                    cfg.keep,
                )?;
                if let Some(eps) = &cfg.kv {
                    let traceparent = observe::traceparent_of(run_span);
                    tracing::info_span!("train.register", step).in_scope(|| {
                        crate::registry::register(
                            eps,
                            &state,
                            &dir,
                            &full_llama,
                            traceparent.as_deref(),
                        )
                    })?;
                }
                last_ck = Some(dir);
            }
        }
        if last {
            break;
        }
    }
    if let Some(pb) = &bar {
        pb.finish();
    }
    let n = step_times.len().max(1) as f64;
    // Steady state: the first step (allocation, page faults) is left out of
    // the mean when there are others.
    let steady: Vec<f64> = if step_times.len() > 1 {
        step_times[1..].to_vec()
    } else {
        step_times.clone()
    };
    let ms = 1e3 * steady.iter().sum::<f64>() / steady.len().max(1) as f64;
    Ok(Summary {
        run: cfg.run.clone(),
        model: model_name,
        n_params: full_llama.n_params(),
        steps: step,
        first_step: start,
        tokens: tokens_seen,
        final_loss: losses.last().copied().unwrap_or(f32::NAN),
        losses,
        val_loss: last_val,
        val_loss_at_start: val_at_start,
        tokens_per_sec: if ms > 0.0 {
            tokens_per_step as f64 / (ms / 1e3)
        } else {
            last_tps
        },
        ms_per_step: ms,
        mfu: if ms > 0.0 {
            flops_per_step / (ms / 1e3) / peak
        } else {
            last_mfu
        },
        peak_gflops: peak / 1e9,
        allreduce_bytes_per_step: comm_bytes.iter().sum::<f64>() / n,
        tp_allreduce_bytes_per_step: tp_bytes.iter().sum::<f64>() / n,
        activation_bytes: acts.bytes(),
        optimizer_bytes: 8 * opt.m.len(),
        checkpoint: last_ck,
        dataset_version: docs_version,
        token_cache_hit: hit,
        train_windows: ds.train_windows(),
    })
}

/// The last micro-batch's backward with its all-reduce overlapped: ranges
/// the backward has finished are gathered into buckets of at least
/// `bucket_elems` and all-reduced by a communication thread while the
/// backward continues below them.
#[allow(clippy::too_many_arguments)]
fn backward_overlapped(
    llama: &Llama,
    params: &[f32],
    grads: &mut [f32],
    tok: &[u32],
    tgt: &[u32],
    acts: &mut Acts,
    scale: f32,
    group: &mut ProcessGroup,
    bucket_elems: usize,
) -> Result<f64> {
    let (tx, rx) = std::sync::mpsc::channel::<(GradPtr, Range<usize>)>();
    std::thread::scope(|s| {
        let comm = s.spawn(move || -> Result<()> {
            for (ptr, r) in rx {
                // SAFETY: `r` is a range of the gradient buffer the backward
                // reported finished: it never writes there again this step,
                // and the buffer outlives the scope (joined below).
                let g = unsafe { std::slice::from_raw_parts_mut(ptr.0.add(r.start), r.len()) };
                group.all_reduce(g)?;
            }
            Ok(())
        });
        // The layout is ordered so that ranges finish from the end of the
        // buffer towards its start: a bucket is one contiguous span.
        let mut pending: Option<Range<usize>> = None;
        let mut send_err = false;
        let loss = llama.backward(params, grads, tok, tgt, acts, scale, &mut |r, g| {
            let span = match pending.take() {
                Some(p) if r.end == p.start => r.start..p.end,
                Some(p) => {
                    // Not adjacent (cannot happen with this layout): flush.
                    send_err |= tx.send((GradPtr(g.as_mut_ptr()), p)).is_err();
                    r
                }
                None => r,
            };
            if span.len() >= bucket_elems {
                send_err |= tx.send((GradPtr(g.as_mut_ptr()), span)).is_err();
            } else {
                pending = Some(span);
            }
        });
        if let Some(p) = pending.take() {
            send_err |= tx.send((GradPtr(grads.as_mut_ptr()), p)).is_err();
        }
        drop(tx);
        let res = comm
            .join()
            .unwrap_or_else(|_| Err(TrainError::Launch("communication thread panicked".into())));
        res?;
        if send_err {
            return Err(TrainError::Launch(
                "the communication thread stopped early".into(),
            ));
        }
        Ok(loss)
    })
}

/// Σ g² over the whole gradient, computed the same way with or without
/// ZeRO-1 so the two runs clip identically: one f64 partial per ring chunk,
/// summed in chunk order. Under ZeRO-1 each rank holds only its chunk's
/// reduced gradient, so the partials are exchanged: each f64's 64 bits
/// travel as two f32 bit patterns through an all-gather (a copy, no
/// arithmetic), arriving exact.
fn global_sum_squares(group: &mut ProcessGroup, grads: &[f32], zero1: bool) -> Result<f64> {
    use crate::dist::group::chunk;
    let w = group.world;
    let part = |i: usize| sum_squares(&grads[chunk(grads.len(), w, i)]);
    if !zero1 || w == 1 {
        return Ok((0..w).map(part).sum());
    }
    let own = (group.rank + 1) % w;
    let mut words = vec![0f32; 2 * w];
    let bits = part(own).to_bits();
    words[2 * own] = f32::from_bits(bits as u32);
    words[2 * own + 1] = f32::from_bits((bits >> 32) as u32);
    group.all_gather(&mut words)?;
    Ok((0..w)
        .map(|i| {
            let lo = u64::from(words[2 * i].to_bits());
            let hi = u64::from(words[2 * i + 1].to_bits());
            f64::from_bits(lo | (hi << 32))
        })
        .sum())
}

/// The full-model buffer from the tensor ranks' local buffers `local`
/// (parameters or a moment): one all-gather, each rank's buffer at its
/// owned chunk, then [`crate::dist::tensor::unshard`].
fn gather_tp(
    tpg: &crate::dist::tensor::TpGroup,
    full: &Llama,
    local: &Llama,
    buf: &[f32],
) -> Result<Vec<f32>> {
    let (t, n) = (tpg.size, local.layout.total);
    let mut all = vec![0f32; t * n];
    // all_gather: rank r contributes chunk (r + 1) mod t.
    let own = (tpg.rank + 1) % t;
    all[own * n..(own + 1) * n].copy_from_slice(buf);
    tpg.with(|g| g.all_gather(&mut all))?;
    let locals: Vec<&[f32]> = (0..t)
        .map(|r| &all[((r + 1) % t) * n..((r + 1) % t + 1) * n])
        .collect();
    Ok(crate::dist::tensor::unshard(
        &full.layout,
        &local.layout,
        &locals,
    ))
}

/// Full Adam moments (every rank's shard) for a checkpoint.
fn gather_moments(
    group: &mut ProcessGroup,
    opt: &AdamW,
    total: usize,
) -> Result<(Vec<f32>, Vec<f32>)> {
    let mut m = vec![0f32; total];
    let mut v = vec![0f32; total];
    m[opt.range.clone()].copy_from_slice(&opt.m);
    v[opt.range.clone()].copy_from_slice(&opt.v);
    if opt.range.len() != total {
        group.all_gather(&mut m)?;
        group.all_gather(&mut v)?;
    }
    Ok((m, v))
}

/// Mean loss over the first `windows` validation windows, `batch` at a time.
pub fn evaluate(
    llama: &Llama,
    params: &[f32],
    ds: &Dataset,
    windows: usize,
    batch: usize,
    acts: &mut Acts,
) -> f32 {
    let n = windows.min(ds.val_windows());
    if n == 0 {
        return f32::NAN;
    }
    let t = ds.seq_len;
    let mut sum = 0f64;
    let mut count = 0usize;
    let mut tok = vec![0u32; batch * t];
    let mut tgt = vec![0u32; batch * t];
    for first in (0..n).step_by(batch) {
        // A short last batch repeats window `first` to fill the shape; only
        // the real windows count.
        let real = batch.min(n - first);
        for i in 0..batch {
            let (x, y) = ds.val_window(first + i.min(real - 1));
            tok[i * t..(i + 1) * t].copy_from_slice(x);
            tgt[i * t..(i + 1) * t].copy_from_slice(y);
        }
        llama.loss(params, &tok, &tgt, acts);
        sum += acts.losses[..real * t]
            .iter()
            .map(|&x| f64::from(x))
            .sum::<f64>();
        count += real * t;
    }
    (sum / count as f64) as f32
}
