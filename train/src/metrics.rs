//! What a run reports: one `metrics.jsonl` line per step (and per
//! evaluation), and `mlstack_train_*` Prometheus gauges on the process's
//! `/metrics`.

use std::io::Write;
use std::path::Path;

use prometheus::{Gauge, IntCounter};

use crate::error::{Result, TrainError, io};

/// One step's figures.
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct StepRecord {
    pub step: u64,
    /// NaN (written as `null`) on the step-0 evaluation record.
    #[serde(deserialize_with = "nan_if_null")]
    pub loss: f32,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub val_loss: Option<f32>,
    pub lr: f32,
    pub grad_norm: f32,
    pub tokens: u64,
    pub tokens_per_sec: f64,
    pub mfu: f64,
    /// Seconds per phase of the step.
    pub data_s: f64,
    pub forward_s: f64,
    pub backward_s: f64,
    pub allreduce_s: f64,
    pub optimizer_s: f64,
    pub allreduce_bytes: u64,
}

fn nan_if_null<'de, D: serde::Deserializer<'de>>(d: D) -> std::result::Result<f32, D::Error> {
    use serde::Deserialize;
    Ok(Option::<f32>::deserialize(d)?.unwrap_or(f32::NAN))
}

/// Appends records to `<run>/metrics.jsonl` (flushed per line: a crash loses
/// at most the line being written, and a resumed run appends).
#[derive(Debug)]
pub struct JsonlLog {
    file: std::fs::File,
}

impl JsonlLog {
    pub fn open(path: &Path) -> Result<JsonlLog> {
        if let Some(d) = path.parent() {
            std::fs::create_dir_all(d).map_err(io("create", d))?;
        }
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(io("open", path))?;
        Ok(JsonlLog { file })
    }

    pub fn write(&mut self, r: &StepRecord) -> Result<()> {
        let mut line = serde_json::to_vec(r).map_err(|e| TrainError::Metrics(e.to_string()))?;
        line.push(b'\n');
        self.file
            .write_all(&line)
            .map_err(|e| TrainError::Metrics(format!("metrics.jsonl: {e}")))
    }
}

/// Reads a run's `metrics.jsonl` (for `train plot`).
pub fn read_jsonl(path: &Path) -> Result<Vec<StepRecord>> {
    let text = std::fs::read_to_string(path).map_err(io("read", path))?;
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .enumerate()
        .map(|(i, l)| {
            serde_json::from_str(l)
                .map_err(|e| TrainError::Metrics(format!("{}:{}: {e}", path.display(), i + 1)))
        })
        .collect()
}

/// The `mlstack_train_*` gauges, registered in observe's registry.
#[derive(Clone, Debug)]
pub struct Gauges {
    pub loss: Gauge,
    pub val_loss: Gauge,
    pub lr: Gauge,
    pub grad_norm: Gauge,
    pub tokens_per_sec: Gauge,
    pub mfu: Gauge,
    pub step_seconds: prometheus::GaugeVec,
    pub allreduce_bytes: IntCounter,
    pub allreduce_seconds: Gauge,
    pub steps: IntCounter,
}

impl Gauges {
    /// The process's gauges, registered on first use (a second trainer in
    /// the same process, as in the tests, shares them).
    pub fn global() -> Option<&'static Gauges> {
        static G: std::sync::OnceLock<Option<Gauges>> = std::sync::OnceLock::new();
        G.get_or_init(|| match Gauges::register() {
            Ok(g) => Some(g),
            Err(e) => {
                tracing::warn!(error = %e, "train metrics not registered");
                None
            }
        })
        .as_ref()
    }

    fn register() -> Result<Gauges> {
        let m = |e: observe::Error| TrainError::Metrics(e.to_string());
        let g = |name: &str, help: &str| {
            observe::metrics::register(
                Gauge::new(name, help).map_err(|e| TrainError::Metrics(e.to_string()))?,
            )
            .map_err(m)
        };
        Ok(Gauges {
            loss: g("mlstack_train_loss", "Training loss of the last step")?,
            val_loss: g(
                "mlstack_train_val_loss",
                "Validation loss at the last evaluation",
            )?,
            lr: g(
                "mlstack_train_learning_rate",
                "Learning rate of the last step",
            )?,
            grad_norm: g(
                "mlstack_train_grad_norm",
                "Global gradient norm before clipping",
            )?,
            tokens_per_sec: g(
                "mlstack_train_tokens_per_second",
                "Training tokens per second (all ranks)",
            )?,
            mfu: g(
                "mlstack_train_mfu_ratio",
                "Model FLOPs utilisation against the measured FP32 peak",
            )?,
            step_seconds: observe::metrics::register(
                prometheus::GaugeVec::new(
                    prometheus::Opts::new(
                        "mlstack_train_step_phase_seconds",
                        "Seconds per step phase",
                    ),
                    &["phase"],
                )
                .map_err(|e| TrainError::Metrics(e.to_string()))?,
            )
            .map_err(m)?,
            allreduce_bytes: observe::metrics::register(
                IntCounter::new(
                    "mlstack_train_allreduce_bytes_total",
                    "Bytes sent by collectives",
                )
                .map_err(|e| TrainError::Metrics(e.to_string()))?,
            )
            .map_err(m)?,
            allreduce_seconds: g(
                "mlstack_train_allreduce_seconds",
                "Seconds in collectives in the last step",
            )?,
            steps: observe::metrics::register(
                IntCounter::new("mlstack_train_steps_total", "Optimizer steps taken")
                    .map_err(|e| TrainError::Metrics(e.to_string()))?,
            )
            .map_err(m)?,
        })
    }

    pub fn record(&self, r: &StepRecord) {
        self.loss.set(f64::from(r.loss));
        if let Some(v) = r.val_loss {
            self.val_loss.set(f64::from(v));
        }
        self.lr.set(f64::from(r.lr));
        self.grad_norm.set(f64::from(r.grad_norm));
        self.tokens_per_sec.set(r.tokens_per_sec);
        self.mfu.set(r.mfu);
        for (phase, s) in [
            ("data", r.data_s),
            ("forward", r.forward_s),
            ("backward", r.backward_s),
            ("allreduce", r.allreduce_s),
            ("optimizer", r.optimizer_s),
        ] {
            self.step_seconds.with_label_values(&[phase]).set(s);
        }
        self.allreduce_bytes.inc_by(r.allreduce_bytes);
        self.allreduce_seconds.set(r.allreduce_s);
        self.steps.inc();
    }
}
