//! `mlstack kv bench`: throughput and latency of a local cluster on loopback,
//! and leader-failover time.
//!
//! Every workload runs `clients` concurrent tasks for `duration` against a
//! cluster of `mlstack kv serve` processes (fsync on, as in production):
//! - `put`: 100-byte values on a 10,000-key space (through the leader);
//! - `get_linearizable`: read index on the leader, then a local read;
//! - `get_serializable`: local reads spread over every node;
//! - `failover`: SIGKILL the leader, time to the first successful write
//!   (median of `failover_trials`), with 150–300 ms election timeouts.

use crate::report::{self, Report, Row};
use chaos::Error;
use chaos::cluster::{ClusterSpec, LocalCluster};
use kvclient::{Client, Timeouts};
use proto::kv::v1 as pb;
use rand::Rng;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

#[derive(Clone, Debug)]
pub struct BenchConfig {
    pub nodes: u64,
    pub clients: Vec<usize>,
    pub duration: Duration,
    pub value_bytes: usize,
    pub keys: usize,
    pub failover_trials: usize,
    pub binary: PathBuf,
    pub dir: PathBuf,
    /// Benchmark an existing cluster at these endpoints instead of starting
    /// one (no failover trials then: the benchmark does not own the nodes).
    pub endpoints: Vec<String>,
}

/// The workload name of `work` at `clients` concurrent clients (`put_c64`):
/// the client count is part of what was run, so it is part of the name.
pub fn workload_name(work: &str, clients: usize) -> String {
    format!("{work}_c{clients}")
}

/// The `p`-quantile of latencies in µs, as ms; 0 when nothing succeeded.
fn pct(sorted_us: &[u32], p: f64) -> f64 {
    report::rank(sorted_us.len(), p).map_or(0.0, |i| f64::from(sorted_us[i]) / 1000.0)
}

#[derive(Clone, Copy, PartialEq)]
enum Work {
    Put,
    GetLinearizable,
    GetSerializable,
}

impl Work {
    fn name(self) -> &'static str {
        match self {
            Work::Put => "put",
            Work::GetLinearizable => "get_linearizable",
            Work::GetSerializable => "get_serializable",
        }
    }
}

async fn run_workload(
    endpoints: &[String],
    work: Work,
    clients: usize,
    cfg: &BenchConfig,
) -> Result<(f64, Vec<u32>, u64), Error> {
    let endpoints = endpoints.to_vec();
    let n = endpoints.len();
    // One connection per 16 tasks (HTTP/2 multiplexes the rest), rotated so
    // serializable reads spread over every node.
    let pools: Vec<Arc<Client>> = (0..clients.div_ceil(16).max(n))
        .map(|i| {
            let mut eps = endpoints.clone();
            eps.rotate_left(i % n);
            Client::new(&eps).map(Arc::new)
        })
        .collect::<Result<_, _>>()?;
    // Writes find the leader once, up front.
    for p in &pools {
        if work != Work::GetSerializable {
            let _ = p.leader_status().await;
        }
    }
    let stop = Arc::new(AtomicBool::new(false));
    let value = vec![b'v'; cfg.value_bytes];
    let mut tasks = Vec::new();
    for t in 0..clients {
        let client = pools[t % pools.len()].clone();
        let stop = stop.clone();
        let value = value.clone();
        let keys = cfg.keys;
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::with_capacity(1 << 14);
            let mut errors = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let key = format!("key{:06}", rand::rng().random_range(0..keys));
                let t0 = Instant::now();
                let ok = match work {
                    Work::Put => client.put(key.as_bytes(), &value).await.is_ok(),
                    Work::GetLinearizable => client
                        .get(key.as_bytes(), pb::ReadConsistency::Linearizable)
                        .await
                        .is_ok(),
                    Work::GetSerializable => client
                        .get(key.as_bytes(), pb::ReadConsistency::Serializable)
                        .await
                        .is_ok(),
                };
                if ok {
                    lat.push(t0.elapsed().as_micros().min(u32::MAX as u128) as u32);
                } else {
                    errors += 1;
                }
            }
            (lat, errors)
        }));
    }
    let t0 = Instant::now();
    tokio::time::sleep(cfg.duration).await;
    stop.store(true, Ordering::Relaxed);
    let mut all = Vec::new();
    let mut errors = 0;
    for t in tasks {
        let (l, e) = t.await.map_err(|e| Error::Drill {
            drill: "bench".into(),
            reason: e.to_string(),
        })?;
        all.extend(l);
        errors += e;
    }
    let secs = t0.elapsed().as_secs_f64();
    all.sort_unstable();
    Ok((all.len() as f64 / secs, all, errors))
}

/// Runs every workload; `progress` gets a line per step.
pub async fn run(cfg: &BenchConfig, mut progress: impl FnMut(&str)) -> Result<Vec<Row>, Error> {
    let mut cluster = if cfg.endpoints.is_empty() {
        Some(
            LocalCluster::start(ClusterSpec {
                nodes: cfg.nodes,
                binary: cfg.binary.clone(),
                dir: cfg.dir.clone(),
                proxies: false,
                extra_args: vec![],
            })
            .await?,
        )
    } else {
        None
    };
    let endpoints = match &cluster {
        Some(c) => c.client_endpoints(),
        None => cfg.endpoints.clone(),
    };
    let mut rows = Vec::new();
    let row = |workload: &str, metric: &str, value: f64, unit: &str| {
        Row::new("mlstack", workload, metric, value, unit)
    };
    // Preload the key space so reads find values.
    {
        progress(&format!("preloading {} keys", cfg.keys));
        let c = Arc::new(Client::new(&endpoints)?);
        let mut tasks = Vec::new();
        for t in 0..16 {
            let c = c.clone();
            let keys = cfg.keys;
            let value = vec![b'v'; cfg.value_bytes];
            tasks.push(tokio::spawn(async move {
                for k in (t..keys).step_by(16) {
                    c.put(format!("key{k:06}").as_bytes(), &value).await?;
                }
                Ok::<(), kvclient::ClientError>(())
            }));
        }
        for t in tasks {
            t.await.map_err(|e| Error::Drill {
                drill: "bench".into(),
                reason: e.to_string(),
            })??;
        }
    }
    for &clients in &cfg.clients {
        for work in [Work::Put, Work::GetLinearizable, Work::GetSerializable] {
            progress(&format!(
                "{} with {clients} clients for {:?}",
                work.name(),
                cfg.duration
            ));
            let (ops, lat, errors) = run_workload(&endpoints, work, clients, cfg).await?;
            let w = &workload_name(work.name(), clients);
            rows.push(row(w, "ops_per_sec", ops, "ops/s"));
            rows.push(row(w, "latency_p50_ms", pct(&lat, 0.5), "ms"));
            rows.push(row(w, "latency_p99_ms", pct(&lat, 0.99), "ms"));
            rows.push(row(w, "latency_p999_ms", pct(&lat, 0.999), "ms"));
            rows.push(row(w, "errors", errors as f64, "count"));
        }
    }
    // Failover: kill the leader, time the first successful write.
    let mut times = Vec::new();
    let trials = if cluster.is_some() {
        cfg.failover_trials
    } else {
        0
    };
    for trial in 0..trials {
        let Some(cluster) = cluster.as_mut() else {
            break;
        };
        let leader = cluster.wait_leader(Duration::from_secs(10)).await?;
        let client = cluster.client(Timeouts {
            attempt: Duration::from_millis(300),
            overall: Duration::from_secs(30),
            backoff: Duration::from_millis(5),
        })?;
        client.put(b"failover", b"warm").await?;
        cluster.kill(leader);
        let t0 = Instant::now();
        client
            .put(b"failover", format!("trial{trial}").as_bytes())
            .await?;
        let ms = t0.elapsed().as_secs_f64() * 1000.0;
        progress(&format!(
            "failover trial {trial}: node {leader} killed, first write after {ms:.0} ms"
        ));
        times.push(ms);
        cluster.spawn(leader)?;
        cluster.wait_converged(Duration::from_secs(30)).await?;
    }
    if !times.is_empty() {
        times.sort_by(f64::total_cmp);
        rows.push(row(
            "failover",
            "failover_ms",
            report::median(times.clone()),
            "ms",
        ));
        rows.push(row(
            "failover",
            "failover_max_ms",
            times[times.len() - 1],
            "ms",
        ));
    }
    if let Some(c) = cluster.as_mut() {
        c.stop();
    }
    Ok(rows)
}

/// The human table.
pub fn table(rows: &[Row]) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{:<22} {:>12} {:>9} {:>9} {:>9} {:>7}",
        "workload", "ops/s", "p50 ms", "p99 ms", "p999 ms", "errors"
    );
    let get = |w: &str, m: &str| report::find(rows, "mlstack", w, m).unwrap_or(0.0);
    for r in rows.iter().filter(|r| r.metric == "ops_per_sec") {
        let w = &r.workload;
        let _ = writeln!(
            s,
            "{:<22} {:>12.0} {:>9.2} {:>9.2} {:>9.2} {:>7}",
            w,
            r.value,
            get(w, "latency_p50_ms"),
            get(w, "latency_p99_ms"),
            get(w, "latency_p999_ms"),
            get(w, "errors")
        );
    }
    if let Some(median) = report::find(rows, "mlstack", "failover", "failover_ms") {
        let _ = writeln!(
            s,
            "failover (kill -9 leader → first successful write): median {median:.0} ms, max {:.0} ms",
            get("failover", "failover_max_ms")
        );
    }
    s
}

/// The report in the benchmark JSON convention.
pub fn report(cfg: &BenchConfig, rows: Vec<Row>) -> Report {
    Report {
        component: "kv",
        bench: "cluster",
        config: serde_json::json!({
            "nodes": cfg.nodes, "existing_cluster": !cfg.endpoints.is_empty(), "clients": cfg.clients, "duration_s": cfg.duration.as_secs_f64(),
            "value_bytes": cfg.value_bytes, "keys": cfg.keys, "failover_trials": cfg.failover_trials,
            "election_timeout_ms": [150, 300], "heartbeat_ms": 50, "fsync": "group commit per append",
            "transport": "loopback gRPC, nodes and clients on the same machine",
            "workload_names": "<operation>_c<concurrent clients>",
        }),
        results: rows,
    }
}
