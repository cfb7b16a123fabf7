//! The storage engine's counters reach Prometheus through observe: a real
//! database does real work, its collector sits in the process registry, and the
//! `/metrics` endpoint serves the values the engine counted.

use std::sync::Arc;

use storage::{Db, Options};

#[tokio::test]
async fn storage_stats_are_served_on_the_metrics_endpoint() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = Arc::new(Db::open(dir.path(), Options::small_for_tests()).expect("open"));
    for i in 0..2000u32 {
        db.put(format!("key{i:05}"), vec![7u8; 50]).expect("put");
    }
    db.flush().expect("flush");
    for i in 0..100u32 {
        assert!(db.get(format!("key{i:05}")).expect("get").is_some());
        assert!(db.get(format!("nokey{i:05}")).expect("get").is_none());
    }
    let stats = db.stats();
    assert!(stats.flushes >= 1 && stats.gets == 200, "{stats:?}");

    observe::registry()
        .register(Box::new(storage::metrics::DbCollector::new(&db, "test")))
        .expect("collector registers");
    let server = observe::MetricsServer::start(
        "127.0.0.1:0".parse().expect("addr"),
        observe::registry().clone(),
        observe::Readiness::new(),
    )
    .await
    .expect("metrics server");
    let body = reqwest::get(format!("http://{}/metrics", server.local_addr()))
        .await
        .expect("scrape")
        .text()
        .await
        .expect("body");
    let value = |name: &str| -> f64 {
        body.lines()
            .find(|l| l.starts_with(name) && l.contains("db=\"test\""))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{name} missing from:\n{body}"))
    };
    assert_eq!(value("mlstack_storage_gets_total"), 200.0);
    assert_eq!(
        value("mlstack_storage_user_bytes_total"),
        stats.user_bytes_written as f64
    );
    assert!(value("mlstack_storage_flushes_total") >= 1.0);
    assert!(value("mlstack_storage_flush_bytes_total") > 0.0);
    assert!(value("mlstack_storage_write_amplification") > 0.0);
    assert!(
        body.contains("mlstack_storage_level_bytes{db=\"test\",level=\"0\"}"),
        "{body}"
    );
    server.stop().await;
}
