//! `mlstack kv ...` and `mlstack chaos ...`: thin wiring into `consensus`.

use crate::Error;
use crate::cli::{ChaosArgs, KvCommand};
use crate::component::Component;
use consensus::{Node, NodeConfig, parse_peers};
use kvclient::Client;
use proto::kv::v1 as pb;
use std::net::SocketAddr;

fn client(endpoints: &[String]) -> Result<Client, Error> {
    Ok(Client::new(endpoints)?)
}

fn kv_err(e: kvclient::ClientError) -> Error {
    Error::KvClient(e)
}

/// Runs one `mlstack kv` subcommand.
pub async fn run(cmd: &KvCommand) -> Result<(), Error> {
    match cmd {
        KvCommand::Serve(a) => serve(a).await,
        KvCommand::Put(a) => {
            let c = client(&a.endpoints.endpoints)?;
            let r = c
                .put(a.key.as_bytes(), a.value.as_bytes())
                .await
                .map_err(kv_err)?;
            println!("OK revision {}", r.header.map(|h| h.revision).unwrap_or(0));
            Ok(())
        }
        KvCommand::Get(a) => {
            let c = client(&a.endpoints.endpoints)?;
            let consistency = if a.serializable {
                pb::ReadConsistency::Serializable
            } else {
                pb::ReadConsistency::Linearizable
            };
            let r = c.get(a.key.as_bytes(), consistency).await.map_err(kv_err)?;
            match r.kv {
                Some(kv) => {
                    println!("{}", String::from_utf8_lossy(&kv.value));
                    eprintln!(
                        "version {} create_revision {} mod_revision {}{}",
                        kv.version,
                        kv.create_revision,
                        kv.mod_revision,
                        if r.serializable {
                            " (serializable: may be stale)"
                        } else {
                            ""
                        }
                    );
                    Ok(())
                }
                None => Err(Error::KeyNotFound(a.key.clone())),
            }
        }
        KvCommand::Delete(a) => {
            let c = client(&a.endpoints.endpoints)?;
            let r = c.delete(a.key.as_bytes()).await.map_err(kv_err)?;
            println!("{}", if r.deleted { "deleted" } else { "not found" });
            Ok(())
        }
        KvCommand::Scan(a) => {
            let c = client(&a.endpoints.endpoints)?;
            let r = c
                .scan(pb::ScanRequest {
                    prefix: a.prefix.as_bytes().to_vec(),
                    limit: a.limit,
                    consistency: if a.serializable {
                        pb::ReadConsistency::Serializable as i32
                    } else {
                        pb::ReadConsistency::Linearizable as i32
                    },
                    ..Default::default()
                })
                .await
                .map_err(kv_err)?;
            for kv in &r.kvs {
                println!(
                    "{}\t{}",
                    String::from_utf8_lossy(&kv.key),
                    String::from_utf8_lossy(&kv.value)
                );
            }
            if r.more {
                eprintln!("(more keys after {})", String::from_utf8_lossy(&r.next_key));
            }
            Ok(())
        }
        KvCommand::Status(a) => {
            let c = client(&a.endpoints)?;
            println!(
                "{:<22} {:>4} {:>7} {:>6} {:>8} {:>8}  state hash",
                "endpoint", "id", "leader", "term", "commit", "applied"
            );
            let mut failed = 0;
            for (i, ep) in a.endpoints.iter().enumerate() {
                match c.status_of(i).await {
                    Ok(s) => println!(
                        "{ep:<22} {:>4} {:>7} {:>6} {:>8} {:>8}  {}",
                        s.node_id,
                        s.leader_id,
                        s.term,
                        s.commit_index,
                        s.applied_index,
                        s.state_hash
                    ),
                    Err(e) => {
                        failed += 1;
                        println!("{ep:<22} unreachable: {e}");
                    }
                }
            }
            if failed == a.endpoints.len() {
                return Err(Error::Serve {
                    what: "kv status",
                    addr: a.endpoints.join(","),
                    reason: "no endpoint answered".into(),
                });
            }
            Ok(())
        }
        KvCommand::Members(a) => {
            let c = client(&a.endpoints.endpoints)?;
            let mut members = None;
            if let Some(spec) = &a.add_learner {
                let parsed = parse_peers(spec)?;
                for (id, addr) in parsed {
                    members = Some(c.add_learner(id, &addr).await.map_err(kv_err)?.members);
                }
            }
            if !a.voters.is_empty() {
                members = Some(
                    c.change_membership(&a.voters)
                        .await
                        .map_err(kv_err)?
                        .members,
                );
            }
            let members = match members {
                Some(m) => m,
                None => c.leader_status().await.map_err(kv_err)?.members,
            };
            for m in members {
                println!(
                    "{:>4} {:<22} {}",
                    m.id,
                    m.address,
                    if m.voter { "voter" } else { "learner" }
                );
            }
            Ok(())
        }
        KvCommand::Bench(a) => bench(a).await,
    }
}

async fn serve(a: &crate::cli::KvServeArgs) -> Result<(), Error> {
    let peers = parse_peers(&a.peers)?;
    let routes = parse_peers(&a.route)?;
    let default_port = |base: u64| -> Result<SocketAddr, Error> {
        let port = u16::try_from(base + a.id).map_err(|_| {
            Error::Kv(consensus::Error::Config {
                reason: format!(
                    "node id {} too large for the default port; pass --listen",
                    a.id
                ),
            })
        })?;
        Ok(SocketAddr::from(([127, 0, 0, 1], port)))
    };
    let listen = match a.listen {
        Some(l) => l,
        None => default_port(7000)?,
    };
    let metrics_listen = match a.metrics_listen {
        Some(l) => l,
        None => default_port(9100)?,
    };
    let mut cfg = NodeConfig::new(a.id, listen, a.data_dir.clone(), peers);
    cfg.routes = routes;
    cfg.peer_listen = a.peer_listen;
    cfg.init = a.init;
    cfg.cluster = a.cluster.clone();
    cfg.heartbeat_ms = a.heartbeat_ms;
    cfg.election_min_ms = a.election_min_ms;
    cfg.election_max_ms = a.election_max_ms;
    cfg.snapshot_every = a.snapshot_every;
    cfg.keep_logs = a.keep_logs;
    cfg.session_ttl = std::time::Duration::from_secs(a.session_ttl_s);
    cfg.inflight_batches = a.inflight_batches;
    (cfg.tls, cfg.access) = security(a)?;
    let component = Component::start(metrics_listen).await?;
    let node = Node::start(cfg).await?;
    let mut ready = serde_json::json!({"id": a.id, "grpc": node.addr.to_string()});
    if let Some(p) = node.peer_addr {
        ready["peer"] = p.to_string().into();
    }
    component.ready(ready);
    component.wait_for_signal().await;
    node.shutdown().await;
    component.stop().await;
    Ok(())
}

/// The node's TLS and client access from `kv serve`'s flags.
fn security(
    a: &crate::cli::KvServeArgs,
) -> Result<(Option<consensus::config::NodeTls>, proto::access::Access), Error> {
    let pem = |what, p: &std::path::Path| proto::tls::read_pem(what, p).map_err(proto::Error::from);
    let tls = match (&a.tls_cert, &a.tls_key, &a.tls_ca) {
        (Some(cert), Some(key), Some(ca)) => {
            let cluster_ca_pem = pem("--tls-ca", ca)?;
            let mut client_roots = cluster_ca_pem.clone();
            if let Some(c) = &a.client_ca {
                client_roots.push(b'\n');
                client_roots.extend(pem("--client-ca", c)?);
            }
            Some(consensus::config::NodeTls {
                server: proto::tls::ServerTls {
                    cert_pem: pem("--tls-cert", cert)?,
                    key_pem: pem("--tls-key", key)?,
                    client_roots_pem: Some(client_roots),
                    // Optional at the handshake: clients without a
                    // certificate reach the client API when it does not
                    // require one; the Raft gate requires one regardless.
                    require_client_cert: false,
                },
                cluster_ca_pem,
            })
        }
        // clap's `requires` makes the three go together.
        _ => None,
    };
    let keys = match &a.api_keys_file {
        Some(p) => Some(std::sync::Arc::new(
            proto::auth::ApiKeys::from_file(p).map_err(|e| {
                Error::Kv(consensus::Error::Config {
                    reason: e.to_string(),
                })
            })?,
        )),
        None => None,
    };
    let access = proto::access::Access {
        keys,
        require_cert: a.client_ca.is_some(),
    };
    Ok((tls, access))
}

fn exe() -> Result<std::path::PathBuf, Error> {
    std::env::current_exe().map_err(|e| Error::Bench(format!("locating the mlstack binary: {e}")))
}

async fn bench(a: &crate::cli::KvBenchArgs) -> Result<(), Error> {
    let dir = tempfile::tempdir().map_err(|e| Error::Bench(format!("temp dir: {e}")))?;
    let cfg = bench::kv::BenchConfig {
        nodes: a.nodes,
        clients: a.clients.clone(),
        duration: a.duration,
        value_bytes: a.value_bytes,
        keys: a.keys.max(1),
        failover_trials: a.failover_trials,
        binary: exe()?,
        dir: dir.path().to_path_buf(),
        endpoints: a.endpoints.clone(),
        systems: a.systems.clone(),
        etcd_binary: if a.systems.iter().any(|s| s == "etcd") {
            Some(match &a.etcd_bin {
                Some(b) => b.clone(),
                None => bench::etcd::find_binary()?,
            })
        } else {
            None
        },
    };
    let rows = bench::kv::run(&cfg, |m| eprintln!("[kv bench] {m}")).await?;
    print!("{}", bench::kv::table(&rows));
    crate::write_bench_report(&a.out, &bench::kv::report(&cfg, rows))
}

/// `mlstack chaos <drill>`.
pub async fn chaos(a: &ChaosArgs) -> Result<(), Error> {
    let drill: chaos::drills::Drill = a.drill.parse().map_err(|reason| {
        Error::Chaos(chaos::Error::Drill {
            drill: a.drill.clone(),
            reason,
        })
    })?;
    let seed = a.seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1)
    });
    let (dir, keep) = match &a.dir {
        Some(d) => (d.clone(), true),
        // Against containers nothing is written locally: the nodes' data
        // and logs are the compose stack's.
        None if a.docker.is_some() => (std::path::PathBuf::new(), true),
        None => (
            tempfile::Builder::new()
                .prefix("mlstack-chaos-")
                .tempdir()
                .map_err(|e| Error::Bench(format!("temp dir: {e}")))?
                .keep(),
            false,
        ),
    };
    let logs = match &a.docker {
        None => dir.display().to_string(),
        Some(p) => format!("docker-compose -p {p} logs kv1 kv2 kv3"),
    };
    match &a.docker {
        None => eprintln!(
            "[chaos] {} with seed {seed}; node data and logs in {}",
            drill.name(),
            dir.display()
        ),
        Some(p) => eprintln!(
            "[chaos] {} with seed {seed} against compose project {p}'s KV containers",
            drill.name()
        ),
    }
    let cfg = chaos::drills::ChaosConfig {
        drill,
        nodes: a.nodes,
        duration: a.duration,
        clients: a.clients.max(1),
        seed,
        keys: a.keys,
        binary: exe()?,
        dir: dir.clone(),
    };
    let report = match &a.docker {
        None => chaos::drills::run(cfg).await?,
        Some(project) => {
            let mut cluster = chaos::docker::DockerCluster::connect(chaos::docker::DockerSpec {
                project: project.clone(),
                nodes: a.nodes,
                service_prefix: "kv".into(),
                port_base: 7000,
            })?;
            chaos::drills::run_on(&cfg, &mut cluster).await?
        }
    };
    print!("{}", report.summary());
    let json = serde_json::to_string_pretty(&report).unwrap_or_default();
    println!("{json}");
    if let Some(p) = &a.json {
        std::fs::write(p, &json).map_err(|e| Error::Bench(format!("{}: {e}", p.display())))?;
    }
    if report.passed {
        if !keep {
            let _ = std::fs::remove_dir_all(&dir);
        }
        Ok(())
    } else {
        Err(Error::ChaosFailed {
            drill: drill.name().into(),
            reason: format!(
                "linearizable={} missing_acks={} converged={}; seed {seed}; logs: {}",
                report.linearizable,
                report.acked_writes_missing.len(),
                report.converged,
                logs
            ),
        })
    }
}

/// What the demo's KV step measured.
#[derive(Debug)]
pub struct DemoReport {
    pub nodes: usize,
    pub leader_before: u64,
    pub leader_after: u64,
    pub writes: usize,
    pub write_ms: f64,
    pub failover_ms: f64,
    pub cas_won: bool,
    pub cas_lost: bool,
    pub read_back: String,
    pub state_hashes_equal: bool,
}

/// The demo's KV step: a three-node cluster in this process (real LSMs on
/// disk, real gRPC on loopback), a model-registry write guarded by
/// compare-and-set, a leader stopped, the first write after it timed.
pub async fn demo_step() -> Result<DemoReport, Error> {
    let dir = tempfile::tempdir().map_err(|e| Error::DemoCheck(format!("temp dir: {e}")))?;
    let mut cluster = LocalCluster::start(3, dir.path(), false).await?;
    let endpoints = cluster.endpoints();
    let client = client(&endpoints)?;
    let t0 = std::time::Instant::now();
    let writes = 200;
    for i in 0..writes {
        client
            .put(
                format!("datasets/corpus/part-{i:04}").as_bytes(),
                b"rows=1000",
            )
            .await
            .map_err(kv_err)?;
    }
    let write_ms = t0.elapsed().as_secs_f64() * 1e3;
    // A lock-free registry update: only the first of two racing writers that
    // both saw "no model yet" wins.
    let cas_won = client
        .cas(b"models/latest", None, b"step-100")
        .await
        .map_err(kv_err)?;
    let cas_lost = !client
        .cas(b"models/latest", None, b"step-200")
        .await
        .map_err(kv_err)?;
    let leader_before = client.leader_status().await.map_err(kv_err)?.node_id;
    cluster.stop_node(leader_before).await;
    let t1 = std::time::Instant::now();
    client
        .put(b"models/latest-checked", b"yes")
        .await
        .map_err(kv_err)?;
    let failover_ms = t1.elapsed().as_secs_f64() * 1e3;
    let leader_after = client.leader_status().await.map_err(kv_err)?.node_id;
    let read_back = client
        .get(b"models/latest", pb::ReadConsistency::Linearizable)
        .await
        .map_err(kv_err)?
        .kv
        .map(|kv| String::from_utf8_lossy(&kv.value).into_owned())
        .unwrap_or_default();
    // The two survivors hold the same state once both applied everything.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let hashes = loop {
        let hashes = cluster.state_hashes();
        if hashes.windows(2).all(|w| w[0] == w[1]) || std::time::Instant::now() > deadline {
            break hashes;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    let state_hashes_equal = hashes.len() == 2 && hashes[0] == hashes[1];
    cluster.shutdown().await;
    Ok(DemoReport {
        nodes: 3,
        leader_before,
        leader_after,
        writes,
        write_ms,
        failover_ms,
        cas_won,
        cas_lost,
        read_back,
        state_hashes_equal,
    })
}

/// A KV cluster of `n` nodes in this process (real LSMs under `dir`, real
/// gRPC on loopback): the demo's metadata store.
#[derive(Debug)]
pub struct LocalCluster {
    nodes: std::collections::BTreeMap<u64, Node>,
    endpoints: Vec<String>,
}

impl LocalCluster {
    /// `register_metrics`: node 1's `mlstack_kv_*` series join this
    /// process's registry (once per process).
    pub async fn start(
        n: u64,
        dir: &std::path::Path,
        register_metrics: bool,
    ) -> Result<LocalCluster, Error> {
        let mut peers = std::collections::BTreeMap::new();
        for id in 1..=n {
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .map_err(|e| Error::DemoCheck(format!("free port: {e}")))?
                .port();
            peers.insert(id, format!("127.0.0.1:{port}"));
        }
        let mut nodes = std::collections::BTreeMap::new();
        for (&id, addr) in &peers {
            let listen = addr
                .parse()
                .map_err(|e| Error::DemoCheck(format!("{addr}: {e}")))?;
            let mut cfg =
                NodeConfig::new(id, listen, dir.join(format!("node-{id}")), peers.clone());
            cfg.init = id == 1;
            cfg.register_metrics = register_metrics && id == 1;
            nodes.insert(id, Node::start(cfg).await?);
        }
        let endpoints: Vec<String> = peers.values().cloned().collect();
        let c = LocalCluster { nodes, endpoints };
        // Ready when a leader answers.
        c.leader().await?;
        Ok(c)
    }

    pub fn endpoints(&self) -> Vec<String> {
        self.endpoints.clone()
    }

    /// The leader's node id (waits for an election).
    pub async fn leader(&self) -> Result<u64, Error> {
        Ok(client(&self.endpoints)?
            .leader_status()
            .await
            .map_err(kv_err)?
            .node_id)
    }

    /// Stops node `id` (a leader failure, say).
    pub async fn stop_node(&mut self, id: u64) {
        if let Some(n) = self.nodes.remove(&id) {
            n.shutdown().await;
        }
    }

    /// The state hash of every running node (equal once all applied the same).
    pub fn state_hashes(&self) -> Vec<(u64, String)> {
        self.nodes
            .values()
            .filter_map(|n| n.shared.state_hash().ok())
            .collect()
    }

    pub async fn shutdown(self) {
        for (_, n) in self.nodes {
            n.shutdown().await;
        }
    }
}
