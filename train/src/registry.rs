//! The model registry in the KV cluster: each checkpoint is recorded under
//! `models/<run>/step-<n>`, and `models/<run>/latest` moves to it by
//! compare-and-set, so two writers cannot both move it and it never moves
//! backwards.

use std::path::Path;

use crate::checkpoint::TrainerState;
use crate::error::{Result, TrainError};
use crate::llama::Llama;

/// The registry entry of one checkpoint.
pub fn entry(state: &TrainerState, dir: &Path, llama: &Llama) -> serde_json::Value {
    let cfg = llama.config.to_hf(llama.tied).to_string();
    serde_json::json!({
        "run": state.run,
        "step": state.step,
        "path": std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf()),
        "train_loss": state.train_loss,
        "val_loss": state.val_loss,
        "tokens_seen": state.tokens_seen,
        "dataset_version": state.dataset_version,
        "config_hash": format!("{:08x}", crc32c::crc32c(cfg.as_bytes())),
        "model": state.model,
        "unix_time": state.unix_time,
        "code_version": state.code_version,
    })
}

/// Records the checkpoint and moves `latest` to it if it is newer.
pub fn register(
    endpoints: &[String],
    state: &TrainerState,
    dir: &Path,
    llama: &Llama,
) -> Result<()> {
    let reg = |e: kvclient::ClientError| TrainError::Registry(e.to_string());
    let client = kvclient::blocking::Client::new(endpoints).map_err(reg)?;
    let value = entry(state, dir, llama).to_string().into_bytes();
    let key = format!("models/{}/step-{}", state.run, state.step).into_bytes();
    let v = value.clone();
    client
        .call(move |c| async move { c.put(&key, &v).await.map(|_| ()) })
        .map_err(reg)?;
    let latest = format!("models/{}/latest", state.run).into_bytes();
    for _ in 0..16 {
        let k = latest.clone();
        let cur = client
            .call(move |c| async move {
                c.get(&k, proto::kv::v1::ReadConsistency::Linearizable)
                    .await
            })
            .map_err(reg)?
            .kv
            .map(|kv| kv.value);
        if let Some(cur) = &cur {
            let cur_step = serde_json::from_slice::<serde_json::Value>(cur)
                .ok()
                .and_then(|v| v.get("step").and_then(serde_json::Value::as_u64));
            if cur_step.is_some_and(|s| s >= state.step) {
                return Ok(()); // a newer checkpoint is already latest
            }
        }
        let (k, v) = (latest.clone(), value.clone());
        let swapped = client
            .call(move |c| async move { c.cas(&k, cur.as_deref(), &v).await })
            .map_err(reg)?;
        if swapped {
            return Ok(());
        }
    }
    Err(TrainError::Registry(format!(
        "models/{}/latest: compare-and-set lost 16 times in a row",
        state.run
    )))
}
