//! `mlstack kv bench`: throughput and latency of a local cluster on loopback,
//! and leader-failover time, for mlstack and for etcd (`etcd.rs`) in the same
//! run, driven by the same load generator.
//!
//! Every workload runs `clients` concurrent tasks for `duration` against a
//! cluster of `mlstack kv serve` processes, and of `etcd` processes (fsync on
//! for both, as in production):
//! - `put`: 100-byte values on a 10,000-key space (through the leader);
//! - `get_linearizable`: read index on the leader, then a local read;
//! - `get_serializable`: local reads spread over every node;
//! - `failover`: SIGKILL the leader, time to the first successful write
//!   (median of `failover_trials`), with 150–300 ms election timeouts.
//!
//! Both clusters run for the whole benchmark (the idle one costs each side
//! the same heartbeats), and the systems alternate: the first workload runs
//! mlstack then etcd, the next etcd then mlstack, and so on, so neither always
//! meets a cooler or warmer machine. A failed request counts in `errors` and
//! not in the throughput or the latencies. One difference in the clients:
//! mlstack's (`kvclient`, the one every mlstack component uses) retries a
//! failed attempt within its time limits, as etcd's own Go client does; the
//! etcd side here is a plain gRPC stub that does not, so an etcd error is
//! counted at once where mlstack's would first be retried. In a steady run
//! neither side should see one (the leader is found before the clock starts).

use crate::etcd::{self, EtcdCluster};
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

/// The systems this benchmark can run.
pub const SYSTEMS: &[&str] = &["mlstack", "etcd"];

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
    /// Benchmark an existing mlstack cluster at these endpoints instead of
    /// starting one (no mlstack failover trials then: the benchmark does not
    /// own the nodes).
    pub endpoints: Vec<String>,
    /// Which of [`SYSTEMS`] to run, in the first workload's order.
    pub systems: Vec<String>,
    /// The `etcd` binary, when etcd runs.
    pub etcd_binary: Option<PathBuf>,
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

fn bench_err(reason: impl Into<String>) -> Error {
    Error::Drill {
        drill: "bench".into(),
        reason: reason.into(),
    }
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

/// One client connection of either system, as the load generator uses it.
#[derive(Clone)]
enum Conn {
    Mlstack(Arc<Client>),
    Etcd(etcd::Kv),
}

impl Conn {
    /// One request; `Ok(found)` for a read, `Ok(true)` for a write.
    async fn op(&self, work: Work, key: &[u8], value: &[u8]) -> Result<bool, String> {
        let e = |e: &dyn std::fmt::Display| e.to_string();
        match (self, work) {
            (Conn::Mlstack(c), Work::Put) => {
                c.put(key, value).await.map(|_| true).map_err(|x| e(&x))
            }
            (Conn::Mlstack(c), Work::GetLinearizable) => c
                .get(key, pb::ReadConsistency::Linearizable)
                .await
                .map(|r| r.kv.is_some())
                .map_err(|x| e(&x)),
            (Conn::Mlstack(c), Work::GetSerializable) => c
                .get(key, pb::ReadConsistency::Serializable)
                .await
                .map(|r| r.kv.is_some())
                .map_err(|x| e(&x)),
            (Conn::Etcd(c), Work::Put) => c.put(key, value).await.map(|_| true).map_err(|x| e(&x)),
            (Conn::Etcd(c), Work::GetLinearizable) => c.get(key, false).await.map_err(|x| e(&x)),
            (Conn::Etcd(c), Work::GetSerializable) => c.get(key, true).await.map_err(|x| e(&x)),
        }
    }
}

/// A system under test: its cluster (when the benchmark owns it) and how to
/// reach it.
enum Sut {
    Mlstack {
        cluster: Option<LocalCluster>,
        endpoints: Vec<String>,
    },
    Etcd(EtcdCluster),
}

impl Sut {
    fn name(&self) -> &'static str {
        match self {
            Sut::Mlstack { .. } => "mlstack",
            Sut::Etcd(_) => "etcd",
        }
    }

    /// The connections for `clients` tasks of `work`: one per 16 tasks (HTTP/2
    /// multiplexes the rest) and at least one per node. Writes and
    /// linearizable reads go to the leader; serializable reads are rotated
    /// over every node.
    async fn conns(&self, work: Work, clients: usize) -> Result<Vec<Conn>, Error> {
        match self {
            Sut::Mlstack { endpoints, .. } => {
                let n = endpoints.len();
                let pools: Vec<Arc<Client>> = (0..clients.div_ceil(16).max(n))
                    .map(|i| {
                        let mut eps = endpoints.clone();
                        eps.rotate_left(i % n);
                        Client::new(&eps).map(Arc::new)
                    })
                    .collect::<Result<_, _>>()?;
                // Writes find the leader once, up front.
                if work != Work::GetSerializable {
                    for p in &pools {
                        let _ = p.leader_status().await;
                    }
                }
                Ok(pools.into_iter().map(Conn::Mlstack).collect())
            }
            Sut::Etcd(cluster) => {
                let endpoints = cluster.client_endpoints();
                let n = endpoints.len();
                let leader = cluster.wait_converged(Duration::from_secs(10)).await?;
                (0..clients.div_ceil(16).max(n))
                    .map(|i| {
                        let ep = if work == Work::GetSerializable {
                            &endpoints[i % n]
                        } else {
                            &endpoints[leader]
                        };
                        etcd::Kv::new(ep, Duration::from_secs(5)).map(Conn::Etcd)
                    })
                    .collect()
            }
        }
    }

    /// One failover trial: SIGKILL the leader, the time to the first
    /// successful write, then the old leader restarted and the cluster
    /// converged again. `None` when the benchmark does not own the nodes.
    async fn failover_trial(&mut self, trial: usize) -> Result<Option<(String, f64)>, Error> {
        let value = format!("trial{trial}");
        match self {
            Sut::Mlstack { cluster: None, .. } => Ok(None),
            Sut::Mlstack {
                cluster: Some(cluster),
                ..
            } => {
                let leader = cluster.wait_leader(Duration::from_secs(10)).await?;
                let client = cluster.client(FAILOVER_TIMEOUTS)?;
                client.put(b"failover", b"warm").await?;
                cluster.kill(leader);
                let t0 = Instant::now();
                client.put(b"failover", value.as_bytes()).await?;
                let ms = t0.elapsed().as_secs_f64() * 1000.0;
                cluster.spawn(leader)?;
                cluster.wait_converged(Duration::from_secs(30)).await?;
                Ok(Some((format!("node {leader}"), ms)))
            }
            Sut::Etcd(cluster) => {
                let leader = cluster.wait_converged(Duration::from_secs(10)).await?;
                let endpoints = cluster.client_endpoints();
                let kvs: Vec<etcd::Kv> = endpoints
                    .iter()
                    .map(|ep| etcd::Kv::new(ep, FAILOVER_TIMEOUTS.attempt))
                    .collect::<Result<_, _>>()?;
                kvs[leader]
                    .put(b"failover", b"warm")
                    .await
                    .map_err(|s| bench_err(format!("etcd warm-up write: {s}")))?;
                cluster.kill(leader);
                // The same retry policy as mlstack's client: start where the
                // leader was, try the next member after each failed attempt.
                let t0 = Instant::now();
                let mut i = leader;
                while kvs[i].put(b"failover", value.as_bytes()).await.is_err() {
                    if t0.elapsed() > FAILOVER_TIMEOUTS.overall {
                        return Err(bench_err(format!(
                            "etcd: no successful write within {:?} of killing its leader",
                            FAILOVER_TIMEOUTS.overall
                        )));
                    }
                    tokio::time::sleep(FAILOVER_TIMEOUTS.backoff).await;
                    i = (i + 1) % kvs.len();
                }
                let ms = t0.elapsed().as_secs_f64() * 1000.0;
                cluster.spawn(leader)?;
                cluster.wait_converged(Duration::from_secs(30)).await?;
                Ok(Some((format!("member n{}", leader + 1), ms)))
            }
        }
    }

    fn stop(&mut self) {
        match self {
            Sut::Mlstack {
                cluster: Some(c), ..
            } => c.stop(),
            Sut::Mlstack { cluster: None, .. } => {}
            Sut::Etcd(c) => c.stop(),
        }
    }
}

/// A failover's client: 100 ms per attempt, 5 ms between attempts, 30 s in
/// all (both systems). The attempt limit is the measurement's resolution: a
/// write sent to a member that still believes in the dead leader is
/// forwarded to it (etcd) or held, and goes unanswered, so an attempt after
/// the kill can cost a whole attempt limit on either system.
const FAILOVER_TIMEOUTS: Timeouts = Timeouts {
    attempt: Duration::from_millis(100),
    overall: Duration::from_secs(30),
    backoff: Duration::from_millis(5),
};

async fn run_workload(
    sut: &Sut,
    work: Work,
    clients: usize,
    cfg: &BenchConfig,
) -> Result<(f64, Vec<u32>, u64), Error> {
    let pools = sut.conns(work, clients).await?;
    let stop = Arc::new(AtomicBool::new(false));
    let value = vec![b'v'; cfg.value_bytes];
    let mut tasks = Vec::new();
    for t in 0..clients {
        let conn = pools[t % pools.len()].clone();
        let stop = stop.clone();
        let value = value.clone();
        let keys = cfg.keys;
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::with_capacity(1 << 14);
            let mut errors = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let key = format!("key{:06}", rand::rng().random_range(0..keys));
                let t0 = Instant::now();
                if conn.op(work, key.as_bytes(), &value).await.is_ok() {
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
        let (l, e) = t.await.map_err(|e| bench_err(e.to_string()))?;
        all.extend(l);
        errors += e;
    }
    let secs = t0.elapsed().as_secs_f64();
    all.sort_unstable();
    Ok((all.len() as f64 / secs, all, errors))
}

/// Writes every key once (16 writers), then reads the first back: a read
/// workload on an empty store would measure misses.
async fn preload(sut: &Sut, cfg: &BenchConfig) -> Result<(), Error> {
    let conns = sut.conns(Work::Put, 16).await?;
    let mut tasks = Vec::new();
    for t in 0..16 {
        let c = conns[t % conns.len()].clone();
        let keys = cfg.keys;
        let value = vec![b'v'; cfg.value_bytes];
        tasks.push(tokio::spawn(async move {
            for k in (t..keys).step_by(16) {
                c.op(Work::Put, format!("key{k:06}").as_bytes(), &value)
                    .await?;
            }
            Ok::<(), String>(())
        }));
    }
    for t in tasks {
        t.await
            .map_err(|e| bench_err(e.to_string()))?
            .map_err(|e| bench_err(format!("{}: preloading: {e}", sut.name())))?;
    }
    let found = conns[0]
        .op(Work::GetLinearizable, b"key000000", &[])
        .await
        .map_err(|e| bench_err(format!("{}: reading back: {e}", sut.name())))?;
    if !found {
        return Err(bench_err(format!(
            "{}: key000000 is missing after the preload",
            sut.name()
        )));
    }
    Ok(())
}

/// A system this benchmark can run.
#[derive(Clone, Copy)]
enum System {
    Mlstack,
    Etcd,
}

/// `cfg.systems` by name, refused as a whole (before anything starts) when
/// empty or when one is unknown.
fn parse_systems(names: &[String]) -> Result<Vec<System>, Error> {
    if names.is_empty() {
        return Err(bench_err("no systems to run"));
    }
    names
        .iter()
        .map(|name| match name.as_str() {
            "mlstack" => Ok(System::Mlstack),
            "etcd" => Ok(System::Etcd),
            other => Err(bench_err(format!(
                "unknown system {other:?}; the systems are {}",
                SYSTEMS.join(", ")
            ))),
        })
        .collect()
}

/// Starts each of `systems`, in order.
async fn start(cfg: &BenchConfig, systems: &[System]) -> Result<Vec<Sut>, Error> {
    let mut suts = Vec::new();
    for system in systems {
        match system {
            System::Mlstack => {
                let cluster = if cfg.endpoints.is_empty() {
                    Some(
                        LocalCluster::start(ClusterSpec {
                            nodes: cfg.nodes,
                            binary: cfg.binary.clone(),
                            dir: cfg.dir.join("mlstack"),
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
                suts.push(Sut::Mlstack { cluster, endpoints });
            }
            System::Etcd => {
                let binary = match &cfg.etcd_binary {
                    Some(b) => b.clone(),
                    None => etcd::find_binary()?,
                };
                let nodes = usize::try_from(cfg.nodes)
                    .map_err(|_| bench_err(format!("{} nodes", cfg.nodes)))?;
                suts.push(Sut::Etcd(
                    EtcdCluster::start(&binary, &cfg.dir.join("etcd"), nodes).await?,
                ));
            }
        }
    }
    Ok(suts)
}

/// Runs every workload on every system, alternating their order; `progress`
/// gets a line per step.
pub async fn run(cfg: &BenchConfig, mut progress: impl FnMut(&str)) -> Result<Vec<Row>, Error> {
    let systems = parse_systems(&cfg.systems)?;
    let mut suts = start(cfg, &systems).await?;
    let mut rows = Vec::new();
    for sut in &suts {
        progress(&format!("{}: preloading {} keys", sut.name(), cfg.keys));
        preload(sut, cfg).await?;
    }
    // `turn` flips the order after every step: A,B then B,A.
    let mut turn = 0usize;
    let mut order = |n: usize| {
        let mut o: Vec<usize> = (0..n).collect();
        if turn % 2 == 1 {
            o.reverse();
        }
        turn += 1;
        o
    };
    for &clients in &cfg.clients {
        for work in [Work::Put, Work::GetLinearizable, Work::GetSerializable] {
            for i in order(suts.len()) {
                let sut = &suts[i];
                progress(&format!(
                    "{}: {} with {clients} clients for {:?}",
                    sut.name(),
                    work.name(),
                    cfg.duration
                ));
                let (ops, lat, errors) = run_workload(sut, work, clients, cfg).await?;
                let w = &workload_name(work.name(), clients);
                let row = |metric: &str, value: f64, unit: &str| {
                    Row::new(sut.name(), w, metric, value, unit)
                };
                rows.push(row("ops_per_sec", ops, "ops/s"));
                rows.push(row("latency_p50_ms", pct(&lat, 0.5), "ms"));
                rows.push(row("latency_p99_ms", pct(&lat, 0.99), "ms"));
                rows.push(row("latency_p999_ms", pct(&lat, 0.999), "ms"));
                rows.push(row("errors", errors as f64, "count"));
            }
        }
    }
    // Failover: kill the leader, time the first successful write.
    let mut times: Vec<Vec<f64>> = vec![Vec::new(); suts.len()];
    for trial in 0..cfg.failover_trials {
        for i in order(suts.len()) {
            let sut = &mut suts[i];
            if let Some((who, ms)) = sut.failover_trial(trial).await? {
                progress(&format!(
                    "{}: failover trial {trial}: {who} killed, first write after {ms:.0} ms",
                    sut.name()
                ));
                times[i].push(ms);
            }
        }
    }
    for (sut, mut t) in suts.iter().zip(times) {
        if t.is_empty() {
            continue;
        }
        t.sort_by(f64::total_cmp);
        let max = t[t.len() - 1];
        rows.push(Row::new(
            sut.name(),
            "failover",
            "failover_ms",
            report::median(t),
            "ms",
        ));
        rows.push(Row::new(
            sut.name(),
            "failover",
            "failover_max_ms",
            max,
            "ms",
        ));
    }
    for sut in &mut suts {
        sut.stop();
    }
    Ok(rows)
}

/// The human table: a line per workload and system, with each other
/// system's throughput as a multiple of the first one's (`vs`).
pub fn table(rows: &[Row]) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{:<22} {:<8} {:>10} {:>9} {:>9} {:>9} {:>7} {:>6}",
        "workload", "system", "ops/s", "p50 ms", "p99 ms", "p999 ms", "errors", "vs"
    );
    let mut systems: Vec<&str> = Vec::new();
    for r in rows {
        if !systems.contains(&r.system.as_str()) {
            systems.push(&r.system);
        }
    }
    let mut workloads: Vec<&str> = Vec::new();
    for r in rows.iter().filter(|r| r.metric == "ops_per_sec") {
        if !workloads.contains(&r.workload.as_str()) {
            workloads.push(&r.workload);
        }
    }
    for w in workloads {
        let first = report::find(rows, systems[0], w, "ops_per_sec");
        for sys in &systems {
            let Some(ops) = report::find(rows, sys, w, "ops_per_sec") else {
                continue;
            };
            let get = |m: &str| report::find(rows, sys, w, m).unwrap_or(0.0);
            let vs = match first {
                Some(f) if f > 0.0 => format!("{:.2}x", ops / f),
                _ => "-".into(),
            };
            let _ = writeln!(
                s,
                "{:<22} {:<8} {:>10.0} {:>9.2} {:>9.2} {:>9.2} {:>7} {:>6}",
                w,
                sys,
                ops,
                get("latency_p50_ms"),
                get("latency_p99_ms"),
                get("latency_p999_ms"),
                get("errors"),
                vs
            );
        }
    }
    for sys in &systems {
        if let Some(median) = report::find(rows, sys, "failover", "failover_ms") {
            let max = report::find(rows, sys, "failover", "failover_max_ms").unwrap_or(0.0);
            let _ = writeln!(
                s,
                "failover {sys} (kill -9 leader → first successful write): median {median:.0} ms, max {max:.0} ms"
            );
        }
    }
    s
}

/// The report in the benchmark JSON convention.
pub fn report(cfg: &BenchConfig, rows: Vec<Row>) -> Report {
    let etcd = cfg.etcd_binary.as_ref().map(|b| {
        serde_json::json!({
            "binary": b.display().to_string(),
            "version": etcd::version(b).unwrap_or_default(),
            "heartbeat_ms": etcd::HEARTBEAT_MS,
            "election_timeout_ms": [etcd::ELECTION_TIMEOUT_MS, 2 * etcd::ELECTION_TIMEOUT_MS],
            "fsync": "WAL fsync per Raft Ready (group commit)",
            "flags": "--heartbeat-interval 30 --election-timeout 150, the rest etcd's defaults",
        })
    });
    Report {
        component: "kv",
        bench: "cluster",
        config: serde_json::json!({
            "systems": cfg.systems, "order": "alternating per workload and failover trial",
            "nodes": cfg.nodes, "existing_cluster": !cfg.endpoints.is_empty(), "clients": cfg.clients, "duration_s": cfg.duration.as_secs_f64(),
            "value_bytes": cfg.value_bytes, "keys": cfg.keys, "failover_trials": cfg.failover_trials,
            "election_timeout_ms": [150, 300], "heartbeat_ms": 50, "fsync": "group commit per append",
            "etcd": etcd,
            "transport": "loopback gRPC, nodes and clients on the same machine",
            "connections": "one HTTP/2 connection per 16 clients, at least one per node",
            "workload_names": "<operation>_c<concurrent clients>",
        }),
        results: rows,
    }
}
