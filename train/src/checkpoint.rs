//! Checkpoints: `checkpoints/<run>/step-<n>/` is a Hugging Face Llama
//! directory that `infer` loads unchanged, plus what resuming needs.
//!
//! ```text
//! step-<n>/
//!   model.safetensors        F32, Hugging Face names and Q/K row order
//!   config.json              LlamaForCausalLM
//!   tokenizer.json, tokenizer_config.json, generation_config.json
//!   optimizer.safetensors    Adam's exp_avg / exp_avg_sq over the flat buffer
//!   trainer_state.json       step, loader position, hyperparameters, losses, lineage
//! latest                     "step-<n>": the newest complete checkpoint
//! ```
//!
//! Written as `step-<n>.tmp/`, every file fsynced, renamed to `step-<n>/`,
//! the run directory fsynced, then `latest` replaced atomically: a crash at
//! any point leaves the previous checkpoint and a `latest` naming it.

use std::path::{Path, PathBuf};

use crate::configs::Hyper;
use crate::data::LoaderPos;
use crate::error::{Result, TrainError, io};
use crate::fsio::{sync_dir, sync_tree, write_atomic};
use crate::llama::Llama;

/// What resuming needs besides the tensors, and the lineage a registry entry
/// quotes.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct TrainerState {
    pub run: String,
    pub step: u64,
    pub loader: LoaderPos,
    pub hyper: Hyper,
    /// The named config (`tiny`, `small`, `smollm2-135m`).
    pub model: String,
    pub tied: bool,
    pub dataset_version: String,
    pub tokens_seen: u64,
    pub train_loss: f32,
    pub val_loss: Option<f32>,
    pub dp: usize,
    /// Tensor-parallel ranks per replica (the checkpoint itself is whole).
    #[serde(default = "one")]
    pub tp: usize,
    pub zero1: bool,
    pub unix_time: u64,
    pub code_version: String,
}

fn one() -> usize {
    1
}

fn ck_err(path: &Path, reason: impl Into<String>) -> TrainError {
    TrainError::Checkpoint {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

/// The tensors of `params` under their Hugging Face names.
pub fn named_tensors(llama: &Llama, params: &[f32]) -> Vec<(String, Vec<usize>, Vec<f32>)> {
    llama
        .layout
        .entries
        .iter()
        .map(|e| {
            (
                e.name.clone(),
                e.shape.clone(),
                params[e.offset..e.offset + e.len].to_vec(),
            )
        })
        .collect()
}

/// Writes step `state.step` under `run_dir` and moves `latest` to it; keeps
/// the newest `keep` checkpoints. Returns the checkpoint's directory.
pub fn save(
    run_dir: &Path,
    llama: &Llama,
    params: &[f32],
    moments: (&[f32], &[f32]),
    tokenizer: &model::tokenizer::Tokenizer,
    state: &TrainerState,
    keep: usize,
) -> Result<PathBuf> {
    std::fs::create_dir_all(run_dir).map_err(io("create", run_dir))?;
    let name = format!("step-{}", state.step);
    let tmp = run_dir.join(format!("{name}.tmp"));
    let dst = run_dir.join(&name);
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(io("remove", &tmp))?;
    }
    model::safetensors::write_dir(
        &tmp,
        &llama.config,
        llama.tied,
        &named_tensors(llama, params),
    )?;
    tokenizer.save_hf(&tmp)?;
    let gen_cfg = serde_json::json!({
        "bos_token_id": tokenizer.bos_id(),
        "eos_token_id": tokenizer.eos_ids(),
        "max_length": llama.config.context_length,
    });
    std::fs::write(tmp.join("generation_config.json"), gen_cfg.to_string())
        .map_err(io("write", tmp.join("generation_config.json")))?;
    let n = moments.0.len();
    model::safetensors::write_file(
        &tmp.join("optimizer.safetensors"),
        &[
            ("exp_avg".to_string(), vec![n], moments.0.to_vec()),
            ("exp_avg_sq".to_string(), vec![n], moments.1.to_vec()),
        ],
    )?;
    let st = serde_json::to_vec_pretty(state).map_err(|e| ck_err(&tmp, e.to_string()))?;
    std::fs::write(tmp.join("trainer_state.json"), st)
        .map_err(io("write", tmp.join("trainer_state.json")))?;
    sync_tree(&tmp)?;
    if dst.exists() {
        // A checkpoint of this step from an earlier, interrupted attempt.
        std::fs::remove_dir_all(&dst).map_err(io("remove", &dst))?;
    }
    std::fs::rename(&tmp, &dst).map_err(io("rename", &dst))?;
    sync_dir(run_dir)?;
    write_atomic(&run_dir.join("latest"), name.as_bytes())?;
    prune(run_dir, keep)?;
    Ok(dst)
}

/// Steps with a complete checkpoint under `run_dir`, ascending.
pub fn steps(run_dir: &Path) -> Result<Vec<u64>> {
    let mut v = Vec::new();
    let rd = match std::fs::read_dir(run_dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(v),
        Err(e) => return Err(io("list", run_dir)(e)),
    };
    for e in rd {
        let e = e.map_err(io("list", run_dir))?;
        if let Some(s) = e.file_name().to_str().and_then(|n| n.strip_prefix("step-"))
            && let Ok(step) = s.parse::<u64>()
        {
            v.push(step);
        }
    }
    v.sort_unstable();
    Ok(v)
}

fn prune(run_dir: &Path, keep: usize) -> Result<()> {
    let all = steps(run_dir)?;
    if keep == 0 || all.len() <= keep {
        return Ok(());
    }
    for s in &all[..all.len() - keep] {
        let p = run_dir.join(format!("step-{s}"));
        std::fs::remove_dir_all(&p).map_err(io("remove", &p))?;
    }
    sync_dir(run_dir)
}

/// The directory `latest` names, if any.
pub fn latest(run_dir: &Path) -> Result<Option<PathBuf>> {
    let p = run_dir.join("latest");
    match std::fs::read_to_string(&p) {
        Ok(s) => {
            let name = s.trim();
            if !name.starts_with("step-") || name.contains('/') {
                return Err(ck_err(&p, format!("names {name:?}, not a step directory")));
            }
            Ok(Some(run_dir.join(name)))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io("read", &p)(e)),
    }
}

/// A checkpoint read back for resuming.
#[derive(Debug)]
pub struct Loaded {
    pub params: Vec<f32>,
    pub m: Vec<f32>,
    pub v: Vec<f32>,
    pub state: TrainerState,
}

/// Reads `dir` back into `llama`'s layout.
pub fn load(dir: &Path, llama: &Llama) -> Result<Loaded> {
    let mut ck = model::safetensors::read_dir(dir)?;
    if ck.config != llama.config {
        return Err(ck_err(
            dir,
            format!(
                "config {:?} differs from the run's {:?}",
                ck.config, llama.config
            ),
        ));
    }
    let mut params = vec![0f32; llama.layout.total];
    for e in &llama.layout.entries {
        let v = ck.take(&e.name, &e.shape)?;
        params[e.offset..e.offset + e.len].copy_from_slice(&v);
    }
    let mut opt = model::safetensors::read_file(&dir.join("optimizer.safetensors"))?;
    let n = llama.layout.total;
    let mut take = |name: &str| -> Result<Vec<f32>> {
        match opt.remove(name) {
            Some((s, v)) if s == [n] => Ok(v),
            Some((s, _)) => Err(ck_err(dir, format!("{name}: shape {s:?}, expected [{n}]"))),
            None => Err(ck_err(dir, format!("optimizer.safetensors has no {name}"))),
        }
    };
    let (m, v) = (take("exp_avg")?, take("exp_avg_sq")?);
    let sp = dir.join("trainer_state.json");
    let state: TrainerState = serde_json::from_slice(&std::fs::read(&sp).map_err(io("read", &sp))?)
        .map_err(|e| ck_err(&sp, e.to_string()))?;
    Ok(Loaded {
        params,
        m,
        v,
        state,
    })
}
