//! The one result shape every benchmark reports (`docs/ARCHITECTURE.md`,
//! "Benchmarks"): flat rows of `{system, workload, metric, value, unit}`, one
//! per figure, under the component, the bench's name, the machine and the
//! configuration. Peers measured in the same run are rows with their own
//! `system`, so a reader (or a script) compares like with like.

use std::path::Path;

/// One figure. `metric` is snake_case with its unit last
/// (`ops_per_sec`, `latency_p99_ms`, `decode_tokens_per_sec`).
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Row {
    pub system: String,
    pub workload: String,
    pub metric: String,
    pub value: f64,
    pub unit: String,
}

impl Row {
    pub fn new(system: &str, workload: &str, metric: &str, value: f64, unit: &str) -> Self {
        Self {
            system: system.into(),
            workload: workload.into(),
            metric: metric.into(),
            value,
            unit: unit.into(),
        }
    }
}

/// A benchmark's report: what was measured, where, with which settings.
#[derive(Clone, Debug)]
pub struct Report {
    /// The component measured (`storage`, `kv`, `stream`, `infer`).
    pub component: &'static str,
    /// The benchmark's name (`lsm`, `cluster`, `ingest`, `engine`, `serve`).
    pub bench: &'static str,
    /// Every setting a reader needs to reproduce the run.
    pub config: serde_json::Value,
    pub results: Vec<Row>,
}

impl Report {
    /// The JSON document, with the machine it ran on.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "component": self.component,
            "bench": self.bench,
            "machine": observe::machine::describe(),
            "config": self.config,
            "results": self.results,
        })
    }

    /// Writes the JSON document to `path` (creating its directory).
    pub fn write(&self, path: &Path) -> std::io::Result<()> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        let text = serde_json::to_string_pretty(&self.to_json()).map_err(std::io::Error::other)?;
        std::fs::write(path, text + "\n")
    }

    /// The value of one figure, if it was measured.
    pub fn get(&self, system: &str, workload: &str, metric: &str) -> Option<f64> {
        find(&self.results, system, workload, metric)
    }
}

/// The value of the row (`system`, `workload`, `metric`), if any.
pub fn find(rows: &[Row], system: &str, workload: &str, metric: &str) -> Option<f64> {
    rows.iter()
        .find(|r| r.system == system && r.workload == workload && r.metric == metric)
        .map(|r| r.value)
}

/// The last component of `path` (a model file's name in a report's config).
pub fn file_name(path: &Path) -> String {
    path.file_name()
        .map_or_else(String::new, |n| n.to_string_lossy().into_owned())
}

/// `v` with `prec` decimals, or `-` when it was not measured.
pub fn cell(v: Option<f64>, prec: usize) -> String {
    v.map_or_else(|| "-".into(), |v| format!("{v:.prec$}"))
}

/// The median of `v` (the upper one of an even count); NaN when empty.
pub fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// The index of the `p`-quantile (0..=1) in a sorted slice of `len`
/// samples, by nearest rank; `None` when there are none.
pub fn rank(len: usize, p: f64) -> Option<usize> {
    (len > 0).then(|| ((len - 1) as f64 * p.clamp(0.0, 1.0)).round() as usize)
}

/// The `p`-quantile (0..=1) of `sorted` by nearest rank; NaN when empty.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    rank(sorted.len(), p).map_or(f64::NAN, |i| sorted[i])
}

/// One row per (system, workload, metric) of `rows`, whose value is the
/// median over the repeats, plus `<metric>_spread` rows (max − min over the
/// repeats, same unit) where there was more than one repeat: this machine's
/// speed drifts, and a reader needs to see by how much.
pub fn medians(rows: &[Row]) -> Vec<Row> {
    let mut out: Vec<Row> = Vec::new();
    let mut spreads: Vec<Row> = Vec::new();
    for row in rows {
        let same = |o: &&Row| {
            o.system == row.system && o.workload == row.workload && o.metric == row.metric
        };
        if out.iter().any(|o| same(&o)) {
            continue;
        }
        let vals: Vec<f64> = rows.iter().filter(same).map(|o| o.value).collect();
        if vals.len() > 1 {
            let (lo, hi) = vals
                .iter()
                .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &v| {
                    (lo.min(v), hi.max(v))
                });
            spreads.push(Row {
                metric: format!("{}_spread", row.metric),
                value: hi - lo,
                ..row.clone()
            });
        }
        out.push(Row {
            value: median(vals),
            ..row.clone()
        });
    }
    out.extend(spreads);
    out
}

/// The plain listing: one line per row.
pub fn listing(rows: &[Row]) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{:<16} {:<22} {:<30} {:>12}",
        "system", "workload", "metric", "value"
    );
    for r in rows {
        let _ = writeln!(
            s,
            "{:<16} {:<22} {:<30} {:>12.2} {}",
            r.system, r.workload, r.metric, r.value, r.unit
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians_group_by_figure_and_report_the_spread() {
        let rows = vec![
            Row::new("a", "w", "ops_per_sec", 10.0, "ops/s"),
            Row::new("b", "w", "ops_per_sec", 1.0, "ops/s"),
            Row::new("a", "w", "ops_per_sec", 30.0, "ops/s"),
            Row::new("a", "w", "ops_per_sec", 20.0, "ops/s"),
        ];
        let m = medians(&rows);
        assert_eq!(find(&m, "a", "w", "ops_per_sec"), Some(20.0));
        assert_eq!(find(&m, "b", "w", "ops_per_sec"), Some(1.0));
        assert_eq!(find(&m, "a", "w", "ops_per_sec_spread"), Some(20.0));
        assert_eq!(find(&m, "b", "w", "ops_per_sec_spread"), None);
    }

    #[test]
    fn percentile_is_nearest_rank_and_nan_when_empty() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 0.5), 51.0);
        assert_eq!(percentile(&v, 0.99), 99.0);
        assert_eq!(percentile(&v, 1.0), 100.0);
        assert!(percentile(&[], 0.5).is_nan());
        assert!(median(vec![]).is_nan());
    }

    #[test]
    fn json_follows_the_convention() {
        let r = Report {
            component: "c",
            bench: "b",
            config: serde_json::json!({"k": 1}),
            results: vec![Row::new("s", "w", "m_ms", 1.5, "ms")],
        };
        let j = r.to_json();
        assert_eq!(j["component"], "c");
        assert_eq!(j["bench"], "b");
        assert!(j["machine"].is_object());
        assert_eq!(j["results"][0]["system"], "s");
        assert_eq!(j["results"][0]["value"], 1.5);
        assert_eq!(j["results"][0]["unit"], "ms");
    }
}
