//! `mlstack datasets ...` and `mlstack models ...`: the lineage records in
//! the KV cluster (dataset snapshots, the model registry), thin wiring into
//! `stream::snapshot` and `train::registry`.

use crate::Error;
use crate::cli::{DatasetsCommand, ModelsCommand};

fn pretty<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_string_pretty(v).unwrap_or_default()
}

pub fn datasets(cmd: &DatasetsCommand) -> Result<(), Error> {
    match cmd {
        DatasetsCommand::Snapshot(a) => {
            if let Some(brokers) = &a.caught_up_with {
                stream::snapshot::wait_caught_up(
                    &a.cluster.kv,
                    &a.group,
                    &a.topic,
                    brokers,
                    a.wait,
                    |m| eprintln!("{m}"),
                )?;
            }
            let (s, verb) =
                match stream::snapshot::create(&a.cluster.kv, &a.group, &a.topic, &a.name) {
                    Ok(s) => (s, "created"),
                    Err(stream::Error::SnapshotExists { .. }) if a.exist_ok => (
                        stream::snapshot::load(&a.cluster.kv, &a.topic, &a.name)?,
                        "exists (kept)",
                    ),
                    Err(e) => return Err(e.into()),
                };
            println!(
                "{verb} {}: {} files, {} rows, {:.1} MB",
                stream::snapshot::key(&a.topic, &a.name),
                s.files.len(),
                s.rows,
                s.bytes as f64 / 1e6
            );
            for (p, (first, last)) in &s.offsets {
                println!("  partition {p}: offsets {first}..={last}");
            }
        }
        DatasetsCommand::Show(a) => {
            println!(
                "{}",
                pretty(&stream::snapshot::load(&a.cluster.kv, &a.topic, &a.name)?)
            );
        }
        DatasetsCommand::List(a) => {
            for s in stream::snapshot::list(&a.cluster.kv, a.topic.as_deref())? {
                println!(
                    "{:<40} {:>4} files {:>8} rows  group {}",
                    stream::snapshot::key(&s.topic, &s.name),
                    s.files.len(),
                    s.rows,
                    s.group
                );
            }
        }
    }
    Ok(())
}

fn reg(e: train::TrainError) -> Error {
    Error::Train(e.to_string())
}

pub fn models(cmd: &ModelsCommand) -> Result<(), Error> {
    match cmd {
        ModelsCommand::List(a) => {
            for (key, v) in train::registry::list(&a.cluster.kv, a.run.as_deref()).map_err(reg)? {
                println!(
                    "{key:<40} step {:>6}  loss {:>7}  val {:>7}  dataset {}",
                    v["step"],
                    v["train_loss"]
                        .as_f64()
                        .map_or("-".into(), |x| format!("{x:.4}")),
                    v["val_loss"]
                        .as_f64()
                        .map_or("-".into(), |x| format!("{x:.4}")),
                    v["dataset_version"].as_str().unwrap_or("-"),
                );
            }
        }
        ModelsCommand::Show(a) => {
            let entry = train::registry::show(&a.cluster.kv, &a.run, &a.name).map_err(reg)?;
            println!("{}", pretty(&entry));
            // From the model back to the data: the snapshot it was trained on.
            if let Some(ds) = entry["dataset_version"].as_str()
                && let Some(rest) = ds.strip_prefix("datasets/")
                && let Some((topic, name)) = rest.split_once('/')
            {
                let s = stream::snapshot::load(&a.cluster.kv, topic, name)?;
                println!(
                    "trained on {ds}: {} rows in {} files",
                    s.rows,
                    s.files.len()
                );
                for (p, (first, last)) in &s.offsets {
                    println!("  topic {topic} partition {p}: Kafka offsets {first}..={last}");
                }
                for f in &s.files {
                    println!(
                        "  {} (offsets {}..={}, {} rows, crc32c {:08x})",
                        f.path, f.first_offset, f.last_offset, f.rows, f.crc32c
                    );
                }
            }
        }
        ModelsCommand::Promote(a) => {
            let before =
                train::registry::promote(&a.cluster.kv, &a.run, a.step, &a.alias).map_err(reg)?;
            println!(
                "models/{}/{} → step-{} (was {})",
                a.run,
                a.alias,
                a.step,
                before
                    .as_ref()
                    .map_or("unset".to_string(), |b| format!("step-{}", b["step"]))
            );
        }
    }
    Ok(())
}
