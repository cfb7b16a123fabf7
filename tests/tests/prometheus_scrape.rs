//! A real Prometheus server scrapes a real `mlstack diag serve` process's
//! `/metrics`, and Prometheus's HTTP query API returns the values the process
//! counted.
//!
//! Needs the `prometheus` binary (Debian package `prometheus`, installed by
//! `scripts/test.sh`) on PATH, or its path in `MLSTACK_PROMETHEUS_BIN`.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use proto::diag::v1::PingRequest;
use proto::diag::v1::diag_client::DiagClient;
use tests::{Proc, free_port};

const PINGS: u64 = 5;

struct Prometheus {
    child: std::process::Child,
    base: String,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_prometheus(dir: &std::path::Path, target: &str) -> Prometheus {
    let bin = std::env::var("MLSTACK_PROMETHEUS_BIN").unwrap_or_else(|_| "prometheus".into());
    let config = dir.join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
             scrape_configs:\n  - job_name: mlstack-diag\n    static_configs:\n      - targets: ['{target}']\n"
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
async fn wait_for_value(prom: &Prometheus, query: &str, want: f64) -> f64 {
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_scrapes_metrics_and_the_query_api_returns_them() {
    let server = Proc::spawn_diag_server(&[]);
    let mut client =
        DiagClient::new(proto::server::channel(&server.field("grpc")).expect("channel"));
    for i in 0..PINGS {
        client
            .ping(PingRequest {
                payload: format!("p{i}"),
                forward_to: vec![],
            })
            .await
            .expect("ping");
    }
    // An oversized payload is refused with INVALID_ARGUMENT and counted as an error.
    let err = client
        .ping(PingRequest {
            payload: "x".repeat(64 * 1024 + 1),
            forward_to: vec![],
        })
        .await
        .expect_err("oversized payload must be refused");
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
    assert!(
        err.message().contains("65536"),
        "limit missing: {}",
        err.message()
    );

    let dir = tempfile::tempdir().expect("tempdir");
    let prom = start_prometheus(dir.path(), &server.field("metrics"));

    wait_for_value(&prom, "up{job=\"mlstack-diag\"}", 1.0).await;
    wait_for_value(
        &prom,
        "mlstack_diag_pings_total{job=\"mlstack-diag\",outcome=\"ok\"}",
        PINGS as f64,
    )
    .await;
    wait_for_value(
        &prom,
        "mlstack_diag_pings_total{job=\"mlstack-diag\",outcome=\"error\"}",
        1.0,
    )
    .await;
    // Process metrics come along with every component's registry.
    wait_for_value(
        &prom,
        "count(process_resident_memory_bytes{job=\"mlstack-diag\"} > 0)",
        1.0,
    )
    .await;
}
