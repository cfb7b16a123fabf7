//! A real Prometheus server for tests: scrapes given `/metrics` targets every
//! second; queries go through its HTTP API.
//!
//! Needs the `prometheus` binary (Debian package `prometheus`, installed by
//! `scripts/test.sh`) on PATH, or its path in `MLSTACK_PROMETHEUS_BIN`.

use crate::free_port;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[derive(Debug)]
pub struct Prometheus {
    child: std::process::Child,
    pub base: String,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn start_prometheus(dir: &std::path::Path, job: &str, targets: &[String]) -> Prometheus {
    let bin = std::env::var("MLSTACK_PROMETHEUS_BIN").unwrap_or_else(|_| "prometheus".into());
    let config = dir.join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
             scrape_configs:\n  - job_name: {job}\n    static_configs:\n      - targets: [{}]\n",
            targets
                .iter()
                .map(|t| format!("'{t}'"))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    )
    .expect("writing prometheus.yml");
    let port = free_port();
    let child = Command::new(&bin)
        .arg(format!("--config.file={}", config.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.join("tsdb").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "starting Prometheus ({bin}): {e}. Install it with `apt-get install prometheus` \
                 (scripts/test.sh does) or set MLSTACK_PROMETHEUS_BIN"
            )
        });
    Prometheus {
        child,
        base: format!("http://127.0.0.1:{port}"),
    }
}

/// Polls an instant query until its single sample equals `want` (or times out).
pub async fn wait_for_value(prom: &Prometheus, query: &str, want: f64) -> f64 {
    let http = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut last = String::new();
    while Instant::now() < deadline {
        let resp = http
            .get(format!("{}/api/v1/query", prom.base))
            .query(&[("query", query)])
            .send()
            .await;
        if let Ok(resp) = resp
            && let Ok(body) = resp.json::<serde_json::Value>().await
        {
            let value = body["data"]["result"][0]["value"][1]
                .as_str()
                .and_then(|v| v.parse::<f64>().ok());
            if value == Some(want) {
                return want;
            }
            last = body.to_string();
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    panic!("Prometheus never returned {want} for {query}; last answer: {last}");
}
