//! The metrics HTTP server over real TCP: `/readyz` follows the readiness flag,
//! `/healthz` answers, `/metrics` exposes registered and process metrics.

use observe::{MetricsServer, Readiness};

async fn get(url: &str) -> (u16, String) {
    let resp = reqwest::get(url)
        .await
        .expect("HTTP request to the metrics server");
    let status = resp.status().as_u16();
    (status, resp.text().await.expect("body"))
}

#[tokio::test]
async fn readyz_flips_from_503_to_200_when_the_component_is_ready() {
    let ready = Readiness::new();
    let server = MetricsServer::start(
        "127.0.0.1:0".parse().expect("addr"),
        observe::registry().clone(),
        ready.clone(),
    )
    .await
    .expect("metrics server starts");
    let base = format!("http://{}", server.local_addr());

    assert_eq!(get(&format!("{base}/readyz")).await.0, 503);
    assert_eq!(get(&format!("{base}/healthz")).await.0, 200);
    ready.set_ready(true);
    assert_eq!(
        get(&format!("{base}/readyz")).await,
        (200, "ready\n".into())
    );
    ready.set_ready(false);
    assert_eq!(get(&format!("{base}/readyz")).await.0, 503);
    server.stop().await;
}

#[tokio::test]
async fn metrics_exposes_registered_and_process_metrics() {
    let counter = observe::metrics::register(
        prometheus::IntCounterVec::new(
            prometheus::Opts::new("mlstack_test_events_total", "Events seen by the test."),
            &["kind"],
        )
        .expect("valid metric"),
    )
    .expect("first registration succeeds");
    counter.with_label_values(&["a"]).inc_by(3);

    // A second registration under the same name is a typed error, not a panic.
    let dup = observe::metrics::register(
        prometheus::IntCounter::new("mlstack_test_events_total", "dup").expect("valid"),
    );
    assert!(
        matches!(dup, Err(observe::Error::Register { .. })),
        "{dup:?}"
    );

    let server = MetricsServer::start(
        "127.0.0.1:0".parse().expect("addr"),
        observe::registry().clone(),
        Readiness::new(),
    )
    .await
    .expect("metrics server starts");
    let (status, body) = get(&format!("http://{}/metrics", server.local_addr())).await;
    assert_eq!(status, 200);
    assert!(
        body.contains("mlstack_test_events_total{kind=\"a\"} 3"),
        "counter missing from exposition:\n{body}"
    );
    assert!(
        body.contains("process_resident_memory_bytes"),
        "process metrics missing:\n{body}"
    );
    server.stop().await;
}

#[tokio::test]
async fn binding_a_taken_port_is_a_typed_error() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("addr");
    let err = MetricsServer::start(addr, observe::registry().clone(), Readiness::new())
        .await
        .expect_err("port is taken");
    assert!(matches!(err, observe::Error::Bind { .. }), "{err:?}");
    assert!(err.to_string().contains(&addr.to_string()), "{err}");
}
