//! Chaos drills: a real cluster, real faults, a recorded history, a verdict.
//!
//! # What a drill does
//! 1. Starts `--nodes` `mlstack kv serve` processes behind per-link proxies
//!    ([`crate::cluster`]).
//! 2. Runs `--clients` concurrent clients for `--duration`: puts of unique
//!    values, linearizable gets and compare-and-sets on a few keys, plus
//!    write-once "ack" keys. Every operation is recorded with its invocation
//!    and return times and its outcome (ok, failed, or unknown when a write
//!    timed out and may have applied).
//! 3. Meanwhile injects the drill's faults on a schedule drawn from `--seed`.
//! 4. Heals everything, then checks: (a) the history is linearizable per key
//!    ([`crate::linearizability`]), final reads included; (b) every
//!    acknowledged ack-key write is readable; (c) all nodes converge to the
//!    same applied index and state hash.

use crate::NodeId;
use crate::cluster::{ClusterSpec, LocalCluster};
use crate::error::Error;
use crate::linearizability::{self, Op, Operation, Verdict};
use crate::target::Target;
use kvclient::Timeouts;
use proto::kv::v1 as pb;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// The drills `mlstack chaos` runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Drill {
    KillLeader,
    PartitionLeader,
    PartitionRandom,
    PauseLeader,
    RollingRestart,
    SlowNetwork,
    /// A random sequence of the others, from the seed.
    All,
}

impl Drill {
    pub const EVERY: [Drill; 7] = [
        Drill::KillLeader,
        Drill::PartitionLeader,
        Drill::PartitionRandom,
        Drill::PauseLeader,
        Drill::RollingRestart,
        Drill::SlowNetwork,
        Drill::All,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Drill::KillLeader => "kill-leader",
            Drill::PartitionLeader => "partition-leader",
            Drill::PartitionRandom => "partition-random",
            Drill::PauseLeader => "pause-leader",
            Drill::RollingRestart => "rolling-restart",
            Drill::SlowNetwork => "slow-network",
            Drill::All => "all",
        }
    }
}

impl std::str::FromStr for Drill {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Drill::EVERY
            .iter()
            .copied()
            .find(|d| d.name() == s)
            .ok_or_else(|| {
                format!(
                    "unknown drill {s:?}; one of: {}",
                    Drill::EVERY.map(|d| d.name()).join(", ")
                )
            })
    }
}

/// A drill's settings.
#[derive(Clone, Debug)]
pub struct ChaosConfig {
    pub drill: Drill,
    pub nodes: u64,
    pub duration: Duration,
    pub clients: usize,
    pub seed: u64,
    pub keys: usize,
    pub binary: PathBuf,
    /// Data directories and node logs; kept after the run for inspection.
    pub dir: PathBuf,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct Outcomes {
    pub ok: u64,
    pub failed: u64,
    pub unknown: u64,
}

#[derive(Clone, Debug, Serialize)]
pub struct Fault {
    pub kind: &'static str,
    pub nodes: Vec<NodeId>,
    pub at_ms: u64,
    pub healed_ms: u64,
    /// For faults that take the leader away: fault to the first write that
    /// was invoked after it and succeeded.
    pub failover_ms: Option<u64>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Window {
    pub start_ms: u64,
    pub end_ms: u64,
}

/// The result of one drill, printed as a summary and as JSON.
#[derive(Clone, Debug, Serialize)]
pub struct ChaosReport {
    pub drill: Drill,
    pub nodes: u64,
    pub clients: usize,
    pub duration_s: f64,
    pub seed: u64,
    pub ops: BTreeMap<&'static str, Outcomes>,
    pub faults: Vec<Fault>,
    /// Stretches of more than 500 ms in which no operation succeeded.
    pub unavailability_windows: Vec<Window>,
    pub linearizable: bool,
    pub checker: BTreeMap<String, String>,
    /// Smallest failing sub-histories, one per violating key.
    pub violations: BTreeMap<String, Vec<String>>,
    pub acked_writes: u64,
    pub acked_writes_missing: Vec<String>,
    pub converged: bool,
    pub converge_error: Option<String>,
    pub applied_index: u64,
    pub state_hash: String,
    pub passed: bool,
    pub data_dir: String,
}

impl ChaosReport {
    /// A few lines for a human.
    pub fn summary(&self) -> String {
        use std::fmt::Write;
        let mut s = String::new();
        let _ = writeln!(
            s,
            "chaos {}: {} nodes, {} clients, {:.1} s, seed {}",
            self.drill.name(),
            self.nodes,
            self.clients,
            self.duration_s,
            self.seed
        );
        for (k, o) in &self.ops {
            let _ = writeln!(
                s,
                "  {k:<5} ok {:>6}  failed {:>5}  unknown {:>4}",
                o.ok, o.failed, o.unknown
            );
        }
        for f in &self.faults {
            let _ = writeln!(
                s,
                "  fault {:<17} nodes {:?} at {:>6} ms, healed {:>6} ms{}",
                f.kind,
                f.nodes,
                f.at_ms,
                f.healed_ms,
                f.failover_ms
                    .map(|m| format!(", failover {m} ms"))
                    .unwrap_or_default()
            );
        }
        let _ = writeln!(
            s,
            "  unavailable: {} windows, longest {} ms",
            self.unavailability_windows.len(),
            self.unavailability_windows
                .iter()
                .map(|w| w.end_ms - w.start_ms)
                .max()
                .unwrap_or(0)
        );
        let _ = writeln!(
            s,
            "  linearizable: {}   acked writes readable: {}/{}   converged: {} (applied {}, hash {})",
            self.linearizable,
            self.acked_writes - self.acked_writes_missing.len() as u64,
            self.acked_writes,
            self.converged,
            self.applied_index,
            self.state_hash
        );
        for (k, v) in &self.checker {
            if v != "linearizable" {
                let _ = writeln!(s, "  key {k}: {v}");
            }
        }
        for (k, ops) in &self.violations {
            let _ = writeln!(s, "  smallest failing history for key {k}:");
            for o in ops {
                let _ = writeln!(s, "    {o}");
            }
        }
        let _ = writeln!(
            s,
            "  verdict: {}",
            if self.passed { "PASS" } else { "FAIL" }
        );
        s
    }
}

/// What the workload recorded.
#[derive(Default)]
struct Recorded {
    history: Vec<Operation>,
    ops: BTreeMap<&'static str, Outcomes>,
    /// Ack keys whose write was acknowledged.
    acked: Vec<String>,
    /// Successful write completions (ns) with their invocation (ns).
    writes_ok: Vec<(u64, u64)>,
    /// Every successful completion (ns).
    ok_times: Vec<u64>,
}

fn ns(start: Instant) -> u64 {
    start.elapsed().as_nanos() as u64
}

async fn client_loop(
    client: kvclient::Client,
    prefix: Arc<str>,
    cid: u64,
    keys: usize,
    seed: u64,
    start: Instant,
    stop: Arc<AtomicBool>,
) -> Recorded {
    let mut rng =
        rand::rngs::StdRng::seed_from_u64(seed ^ (cid.wrapping_mul(0x9e37_79b9_7f4a_7c15)));
    let mut rec = Recorded::default();
    let mut last_seen: BTreeMap<String, Option<String>> = BTreeMap::new();
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        n += 1;
        let key = format!("{prefix}k{}", rng.random_range(0..keys));
        let dice: f64 = rng.random();
        let call = ns(start);
        if dice < 0.35 {
            let value = format!("c{cid}-{n}");
            let r = client.put(key.as_bytes(), value.as_bytes()).await;
            record_write(
                &mut rec,
                "put",
                &r.as_ref().map(|_| ()),
                call,
                start,
                || Operation {
                    client: cid,
                    key: key.clone(),
                    call,
                    ret: 0,
                    op: Op::Put {
                        value: value.clone(),
                    },
                },
            );
        } else if dice < 0.7 {
            let r = client
                .get(key.as_bytes(), pb::ReadConsistency::Linearizable)
                .await;
            let o = rec.ops.entry("get").or_default();
            match r {
                Ok(resp) => {
                    let ret = ns(start);
                    o.ok += 1;
                    rec.ok_times.push(ret);
                    let observed = resp
                        .kv
                        .map(|kv| String::from_utf8_lossy(&kv.value).into_owned());
                    last_seen.insert(key.clone(), observed.clone());
                    rec.history.push(Operation {
                        client: cid,
                        key,
                        call,
                        ret,
                        op: Op::Get { observed },
                    });
                }
                // A failed read has no effect: it is left out of the history.
                Err(_) => o.failed += 1,
            }
        } else if dice < 0.9 {
            let expected = last_seen.get(&key).cloned().flatten();
            let new = format!("c{cid}-{n}");
            let r = client
                .cas(
                    key.as_bytes(),
                    expected.as_deref().map(str::as_bytes),
                    new.as_bytes(),
                )
                .await;
            let ok_flag = r.as_ref().ok().copied();
            record_write(
                &mut rec,
                "cas",
                &r.as_ref().map(|_| ()),
                call,
                start,
                || Operation {
                    client: cid,
                    key: key.clone(),
                    call,
                    ret: 0,
                    op: Op::Cas {
                        expected: expected.clone(),
                        new: new.clone(),
                        succeeded: ok_flag,
                    },
                },
            );
        } else {
            let ack = format!("{prefix}ack/{cid}/{n}");
            let r = client.put(ack.as_bytes(), b"1").await;
            let o = rec.ops.entry("ack").or_default();
            match &r {
                Ok(_) => {
                    o.ok += 1;
                    let ret = ns(start);
                    rec.ok_times.push(ret);
                    rec.writes_ok.push((call, ret));
                    rec.acked.push(ack);
                }
                Err(e) if e.outcome_unknown() => o.unknown += 1,
                Err(_) => o.failed += 1,
            }
        }
    }
    rec
}

fn record_write(
    rec: &mut Recorded,
    kind: &'static str,
    r: &Result<(), &kvclient::ClientError>,
    call: u64,
    start: Instant,
    make: impl FnOnce() -> Operation,
) {
    let o = rec.ops.entry(kind).or_default();
    match r {
        Ok(()) => {
            let ret = ns(start);
            o.ok += 1;
            rec.ok_times.push(ret);
            rec.writes_ok.push((call, ret));
            let mut op = make();
            op.ret = ret;
            rec.history.push(op);
        }
        Err(e) if e.outcome_unknown() => {
            o.unknown += 1;
            let mut op = make();
            op.ret = u64::MAX;
            if let Op::Cas { succeeded, .. } = &mut op.op {
                *succeeded = None;
            }
            rec.history.push(op);
        }
        // Refused before it was proposed: it never applied.
        Err(_) => o.failed += 1,
    }
}

/// Sets the flag the workload's clients poll when dropped.
struct StopOnDrop(Arc<AtomicBool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// Runs one drill to its verdict on a local cluster of child processes
/// behind fault-injecting proxies.
pub async fn run(cfg: ChaosConfig) -> Result<ChaosReport, Error> {
    if cfg.nodes < 3 {
        return Err(Error::Drill {
            drill: cfg.drill.name().into(),
            reason: format!("--nodes {}: drills need at least 3", cfg.nodes),
        });
    }
    let mut cluster = LocalCluster::start(ClusterSpec {
        nodes: cfg.nodes,
        binary: cfg.binary.clone(),
        dir: cfg.dir.clone(),
        proxies: true,
        extra_args: vec!["--snapshot-every".into(), "2000".into()],
    })
    .await?;
    run_on(&cfg, &mut cluster).await
}

/// Runs one drill to its verdict on `cluster` (a local one, or the compose
/// stack's containers): the workload, the fault schedule, the checks.
pub async fn run_on<T: Target>(cfg: &ChaosConfig, cluster: &mut T) -> Result<ChaosReport, Error> {
    let err = |reason: String| Error::Drill {
        drill: cfg.drill.name().into(),
        reason,
    };
    let timeouts = Timeouts {
        attempt: Duration::from_millis(1000),
        overall: Duration::from_secs(4),
        backoff: Duration::from_millis(20),
    };
    // Every key of this run under its own prefix: a long-lived cluster (the
    // compose stack) still holds the keys of earlier drills, and a value an
    // earlier run wrote would read as a write this history never made.
    let prefix: Arc<str> = format!("chaos/{:016x}/", rand::random::<u64>()).into();
    let start = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    // Stops the clients however this function returns: a fault that fails
    // to apply (`?` below) must not leave them writing to the cluster.
    let _stop_on_return = StopOnDrop(stop.clone());
    let mut workers = Vec::new();
    for cid in 0..cfg.clients as u64 {
        let client = cluster.client(timeouts)?;
        workers.push(tokio::spawn(client_loop(
            client,
            prefix.clone(),
            cid + 1,
            cfg.keys.max(1),
            cfg.seed,
            start,
            stop.clone(),
        )));
    }

    // --- fault schedule ---------------------------------------------------
    let mut rng = rand::rngs::StdRng::seed_from_u64(cfg.seed);
    let mut faults: Vec<Fault> = Vec::new();
    let ms = |t: Instant| t.duration_since(start).as_millis() as u64;
    let deadline = start + cfg.duration;
    tokio::time::sleep(Duration::from_millis(800).min(cfg.duration / 4)).await;
    let mut rolling_next: NodeId = 1;
    while Instant::now() + Duration::from_millis(1500) < deadline {
        let kind = match cfg.drill {
            Drill::All => Drill::EVERY[rng.random_range(0..6)],
            d => d,
        };
        let leader = cluster.wait_leader(Duration::from_secs(10)).await?;
        // When the fault took effect: set right after each injection, since
        // a container fault (docker kill, nsenter iptables) takes tens to
        // hundreds of milliseconds to apply, and writes that completed
        // before it would count as a failover.
        let mut at = Instant::now();
        let hold = Duration::from_millis(rng.random_range(1200..2500));
        let mut degraded = None;
        let (nodes, takes_leader) = match kind {
            Drill::KillLeader => {
                cluster.kill(leader)?;
                at = Instant::now();
                tokio::time::sleep(hold).await;
                cluster.restart(leader)?;
                (vec![leader], true)
            }
            Drill::PartitionLeader => {
                cluster.partition(&[leader], true)?;
                at = Instant::now();
                tokio::time::sleep(hold).await;
                cluster.heal_network()?;
                (vec![leader], true)
            }
            Drill::PartitionRandom => {
                let mut ids = cluster.ids();
                let minority = rng.random_range(1..=((cfg.nodes as usize - 1) / 2).max(1));
                let mut side = Vec::new();
                for _ in 0..minority {
                    side.push(ids.remove(rng.random_range(0..ids.len())));
                }
                side.sort();
                let clients = rng.random_bool(0.5);
                cluster.partition(&side, clients)?;
                at = Instant::now();
                tokio::time::sleep(hold).await;
                cluster.heal_network()?;
                let took = side.contains(&leader);
                (side, took)
            }
            Drill::PauseLeader => {
                cluster.pause(leader)?;
                at = Instant::now();
                tokio::time::sleep(hold).await;
                cluster.resume(leader)?;
                (vec![leader], true)
            }
            Drill::RollingRestart => {
                let id = rolling_next;
                rolling_next = rolling_next % cfg.nodes + 1;
                cluster.kill(id)?;
                at = Instant::now();
                tokio::time::sleep(Duration::from_millis(300)).await;
                cluster.restart(id)?;
                (vec![id], id == leader)
            }
            Drill::SlowNetwork => {
                degraded = Some(cluster.degrade(rng.random())?);
                at = Instant::now();
                tokio::time::sleep(hold).await;
                cluster.heal_network()?;
                (vec![], false)
            }
            Drill::All => (vec![], false),
        };
        let healed = Instant::now();
        faults.push(Fault {
            kind: degraded.map_or(kind.name(), |d| d.kind()),
            nodes,
            at_ms: ms(at),
            healed_ms: ms(healed),
            failover_ms: takes_leader.then_some(0),
        });
        // Let the cluster recover before the next fault.
        tokio::time::sleep(Duration::from_millis(rng.random_range(800..1500))).await;
    }
    if let Some(left) = deadline.checked_duration_since(Instant::now()) {
        tokio::time::sleep(left).await;
    }
    stop.store(true, Ordering::Relaxed);
    let mut rec = Recorded::default();
    for w in workers {
        let r = w.await.map_err(|e| err(format!("client task: {e}")))?;
        rec.history.extend(r.history);
        for (k, o) in r.ops {
            let e = rec.ops.entry(k).or_default();
            e.ok += o.ok;
            e.failed += o.failed;
            e.unknown += o.unknown;
        }
        rec.acked.extend(r.acked);
        rec.writes_ok.extend(r.writes_ok);
        rec.ok_times.extend(r.ok_times);
    }
    let run_end = ns(start);

    // --- heal, then the post-conditions ------------------------------------
    cluster.heal_all()?;
    cluster.wait_leader(Duration::from_secs(20)).await?;
    let checker_client = cluster.client(Timeouts {
        attempt: Duration::from_secs(2),
        overall: Duration::from_secs(20),
        backoff: Duration::from_millis(50),
    })?;
    // Final reads join the history: an acknowledged write lost during the
    // faults shows up as a violation here.
    for k in 0..cfg.keys.max(1) {
        let key = format!("{prefix}k{k}");
        let call = ns(start);
        let r = checker_client
            .get(key.as_bytes(), pb::ReadConsistency::Linearizable)
            .await
            .map_err(|e| err(format!("final read of {key}: {e}")))?;
        rec.history.push(Operation {
            client: 0,
            key,
            call,
            ret: ns(start),
            op: Op::Get {
                observed: r
                    .kv
                    .map(|kv| String::from_utf8_lossy(&kv.value).into_owned()),
            },
        });
    }
    let mut present = BTreeSet::new();
    let ack_prefix = format!("{prefix}ack/").into_bytes();
    let mut page_start = ack_prefix.clone();
    loop {
        let r = checker_client
            .scan(pb::ScanRequest {
                prefix: ack_prefix.clone(),
                start: page_start.clone(),
                limit: 5000,
                ..Default::default()
            })
            .await
            .map_err(|e| err(format!("scanning ack keys: {e}")))?;
        present.extend(
            r.kvs
                .into_iter()
                .map(|kv| String::from_utf8_lossy(&kv.key).into_owned()),
        );
        if !r.more {
            break;
        }
        page_start = r.next_key;
    }
    let missing: Vec<String> = rec
        .acked
        .iter()
        .filter(|a| !present.contains(*a))
        .cloned()
        .collect();
    let (converged, converge_error, applied_index, state_hash) =
        match cluster.wait_converged(Duration::from_secs(30)).await {
            Ok((a, h)) => (true, None, a, h),
            Err(e) => (false, Some(e.to_string()), 0, String::new()),
        };
    cluster.stop();

    // --- derived figures -----------------------------------------------------
    rec.writes_ok.sort();
    for f in faults.iter_mut() {
        if f.failover_ms.is_some() {
            let at = f.at_ms * 1_000_000;
            f.failover_ms = rec
                .writes_ok
                .iter()
                .filter(|(call, _)| *call >= at)
                .map(|(_, ret)| *ret)
                .min()
                .map(|ret| (ret - at) / 1_000_000);
        }
    }
    rec.ok_times.sort();
    let mut windows = Vec::new();
    let mut prev = 0u64;
    for &t in rec.ok_times.iter().chain(std::iter::once(&run_end)) {
        if t.saturating_sub(prev) > 500_000_000 {
            windows.push(Window {
                start_ms: prev / 1_000_000,
                end_ms: t / 1_000_000,
            });
        }
        prev = prev.max(t);
    }

    let history = rec.history;
    let report = tokio::task::spawn_blocking(move || linearizability::check(&history))
        .await
        .map_err(|e| err(format!("checker: {e}")))?;
    let checker = report
        .keys
        .iter()
        .map(|(k, v)| {
            (
                k.clone(),
                match v {
                    Verdict::Linearizable => "linearizable".to_string(),
                    Verdict::Violation { minimal } => {
                        format!(
                            "VIOLATION ({} operations in the smallest failing history)",
                            minimal.len()
                        )
                    }
                    Verdict::Unknown { explored } => {
                        format!("undecided (search budget of {explored} states exhausted)")
                    }
                },
            )
        })
        .collect();
    let violations = report
        .violations()
        .map(|(k, ops)| (k.clone(), ops.iter().map(describe).collect()))
        .collect();
    let linearizable = report.ok();
    let passed = linearizable && missing.is_empty() && converged;
    Ok(ChaosReport {
        drill: cfg.drill,
        nodes: cfg.nodes,
        clients: cfg.clients,
        duration_s: run_end as f64 / 1e9,
        seed: cfg.seed,
        ops: rec.ops,
        faults,
        unavailability_windows: windows,
        linearizable,
        checker,
        violations,
        acked_writes: rec.acked.len() as u64,
        acked_writes_missing: missing,
        converged,
        converge_error,
        applied_index,
        state_hash,
        passed,
        data_dir: cluster.describe(),
    })
}

fn describe(o: &Operation) -> String {
    let ret = if o.unknown() {
        "unknown".to_string()
    } else {
        format!("{:.3} ms", o.ret as f64 / 1e6)
    };
    format!(
        "client {:>3} [{:.3} ms .. {ret}] {:?}",
        o.client,
        o.call as f64 / 1e6,
        o.op
    )
}
