//! A real Prometheus server scrapes a real `mlstack diag serve` process's
//! `/metrics`, and Prometheus's HTTP query API returns the values the process
//! counted.
//!
//! Needs the `prometheus` binary (Debian package `prometheus`, installed by
//! `scripts/test.sh`) on PATH, or its path in `MLSTACK_PROMETHEUS_BIN`.

use proto::diag::v1::PingRequest;
use proto::diag::v1::diag_client::DiagClient;
use tests::Proc;
use tests::prometheus::{start_prometheus, wait_for_value};

const PINGS: u64 = 5;

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
    let prom = start_prometheus(dir.path(), "mlstack-diag", &[server.field("metrics")]);

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
