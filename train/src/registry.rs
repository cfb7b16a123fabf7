//! The model registry in the KV cluster: each checkpoint is recorded under
//! `models/<run>/step-<n>`, and `models/<run>/latest` moves to it by
//! compare-and-set, so two writers cannot both move it and it never moves
//! backwards.

use std::path::Path;

use crate::checkpoint::TrainerState;
use crate::error::{Result, TrainError};
use crate::llama::Llama;

/// The registry entry of one checkpoint.
pub fn entry(
    state: &TrainerState,
    dir: &Path,
    llama: &Llama,
    traceparent: Option<&str>,
) -> serde_json::Value {
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
        // The training run's span, when traced: a server loading this
        // checkpoint links its load span to it.
        "traceparent": traceparent,
    })
}

/// Records the checkpoint and moves `latest` to it if it is newer.
/// `traceparent` is the training run's span context, when traced.
pub fn register(
    endpoints: &[String],
    state: &TrainerState,
    dir: &Path,
    llama: &Llama,
    traceparent: Option<&str>,
) -> Result<()> {
    let reg = |e: kvclient::ClientError| TrainError::Registry(e.to_string());
    let client = kvclient::blocking::Client::new(endpoints).map_err(reg)?;
    let value = entry(state, dir, llama, traceparent)
        .to_string()
        .into_bytes();
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

fn client(endpoints: &[String]) -> Result<kvclient::blocking::Client> {
    kvclient::blocking::Client::new(endpoints).map_err(|e| TrainError::Registry(e.to_string()))
}

fn get(c: &kvclient::blocking::Client, key: &str) -> Result<Option<serde_json::Value>> {
    let k = key.as_bytes().to_vec();
    let got = c
        .call(move |c| async move {
            c.get(&k, proto::kv::v1::ReadConsistency::Linearizable)
                .await
        })
        .map_err(|e| TrainError::Registry(format!("{key}: {e}")))?;
    match got.kv {
        None => Ok(None),
        Some(kv) => serde_json::from_slice(&kv.value)
            .map(Some)
            .map_err(|e| TrainError::Registry(format!("{key} does not parse: {e}"))),
    }
}

/// Aliases a run's models can be reached by (besides `step-<n>`).
pub const ALIASES: [&str; 2] = ["latest", "production"];

fn check_segment(what: &str, s: &str) -> Result<()> {
    if kvclient::is_key_segment(s) {
        Ok(())
    } else {
        Err(TrainError::Registry(format!(
            "{what} {s:?}: 1-128 characters of [A-Za-z0-9._-]"
        )))
    }
}

/// Every registry entry under `models/` (one run's when `run` is given), as
/// (key, entry), in key order.
pub fn list(endpoints: &[String], run: Option<&str>) -> Result<Vec<(String, serde_json::Value)>> {
    if let Some(r) = run {
        check_segment("run", r)?;
    }
    let c = client(endpoints)?;
    let prefix = match run {
        Some(r) => format!("models/{r}/"),
        None => "models/".to_string(),
    }
    .into_bytes();
    let kvs = c
        .call(move |c| async move {
            c.scan_all(&prefix, 1_000, proto::kv::v1::ReadConsistency::Linearizable)
                .await
        })
        .map_err(|e| TrainError::Registry(format!("scan models/: {e}")))?;
    kvs.into_iter()
        .map(|kv| {
            let key = String::from_utf8_lossy(&kv.key).into_owned();
            serde_json::from_slice(&kv.value)
                .map(|v| (key.clone(), v))
                .map_err(|e| TrainError::Registry(format!("{key} does not parse: {e}")))
        })
        .collect()
}

/// The entry `models/<run>/<name>` (`name`: `latest`, `production` or
/// `step-<n>`).
pub fn show(endpoints: &[String], run: &str, name: &str) -> Result<serde_json::Value> {
    check_segment("run", run)?;
    check_segment("model", name)?;
    let key = format!("models/{run}/{name}");
    get(&client(endpoints)?, &key)?
        .ok_or_else(|| TrainError::Registry(format!("{key} does not exist")))
}

/// Points `models/<run>/<alias>` at `models/<run>/step-<step>` by
/// compare-and-set against the alias's value as read: when another promoter
/// moved it in between, this one fails (re-read, decide again) instead of
/// overwriting. Returns the entry the alias held before.
pub fn promote(
    endpoints: &[String],
    run: &str,
    step: u64,
    alias: &str,
) -> Result<Option<serde_json::Value>> {
    check_segment("run", run)?;
    if !ALIASES.contains(&alias) {
        return Err(TrainError::Registry(format!(
            "alias {alias:?}: one of {ALIASES:?}"
        )));
    }
    let c = client(endpoints)?;
    let target = get(&c, &format!("models/{run}/step-{step}"))?
        .ok_or_else(|| TrainError::Registry(format!("models/{run}/step-{step} does not exist")))?;
    let alias_key = format!("models/{run}/{alias}");
    let k = alias_key.clone().into_bytes();
    let raw = c
        .call(move |c| async move {
            c.get(&k, proto::kv::v1::ReadConsistency::Linearizable)
                .await
        })
        .map_err(|e| TrainError::Registry(format!("{alias_key}: {e}")))?
        .kv
        .map(|kv| kv.value);
    let before = raw
        .as_deref()
        .map(serde_json::from_slice::<serde_json::Value>)
        .transpose()
        .ok()
        .flatten();
    let value = target.to_string().into_bytes();
    let k = alias_key.clone().into_bytes();
    let swapped = c
        .call(move |c| async move { c.cas(&k, raw.as_deref(), &value).await })
        .map_err(|e| TrainError::Registry(format!("{alias_key}: {e}")))?;
    if !swapped {
        return Err(TrainError::Registry(format!(
            "{alias_key} changed while promoting (another promoter won): read it again and decide"
        )));
    }
    Ok(before)
}

/// The checkpoint directory a `kv://models/<run>/<name>` URI names, with
/// the training run's `traceparent` when the entry has one (what the
/// loading side links its span to).
pub fn resolve(endpoints: &[String], uri: &str) -> Result<(std::path::PathBuf, Option<String>)> {
    let rest = uri.strip_prefix("kv://models/").ok_or_else(|| {
        TrainError::Registry(format!(
            "{uri:?} is not kv://models/<run>/<latest|production|step-N>"
        ))
    })?;
    let (run, name) = rest.split_once('/').ok_or_else(|| {
        TrainError::Registry(format!(
            "{uri:?} is not kv://models/<run>/<latest|production|step-N>"
        ))
    })?;
    let entry = show(endpoints, run, name)?;
    let path = entry
        .get("path")
        .and_then(serde_json::Value::as_str)
        .map(std::path::PathBuf::from)
        .ok_or_else(|| TrainError::Registry(format!("models/{run}/{name} has no path")))?;
    let traceparent = entry
        .get("traceparent")
        .and_then(serde_json::Value::as_str)
        .map(str::to_string);
    Ok((path, traceparent))
}
