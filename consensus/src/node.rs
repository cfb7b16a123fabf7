//! A running KV node: storage, openraft, the gRPC server (client API + Raft
//! transport on one port) and the metrics watcher.

use crate::error::Error;
use crate::metrics::Metrics;
use crate::network::{NetworkFactory, RaftService};
use crate::service::KvService;
use crate::store::{Identity, LogStore, Shared, StateMachine, open_db};
use crate::types::*;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Everything `mlstack kv serve` configures.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    pub id: NodeId,
    /// Where to listen (client API and Raft transport share the port).
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    /// The initial members and their advertised addresses (`--peers`).
    pub peers: BTreeMap<NodeId, String>,
    /// Dial overrides for peer links (`--route`), used by the chaos proxies.
    pub routes: BTreeMap<NodeId, String>,
    /// Initialize the cluster with `peers` as voters if it never was.
    pub init: bool,
    /// Cluster name: stored in the data directory and checked on every peer
    /// message.
    pub cluster: String,
    pub heartbeat_ms: u64,
    pub election_min_ms: u64,
    pub election_max_ms: u64,
    /// Build a snapshot after this many applied entries since the last one.
    pub snapshot_every: u64,
    /// Entries kept in the log behind the snapshot (lagging followers catch up
    /// from the log while they are within this distance).
    pub keep_logs: u64,
    /// A proposal not committed within this answers `DEADLINE_EXCEEDED`
    /// (outcome unknown; the client retries with the same request id).
    pub proposal_timeout: Duration,
    /// Proposal batches in flight at once (see [`crate::service::batcher`]).
    pub inflight_batches: usize,
    /// Register metrics in the process-wide registry (off for in-process
    /// multi-node tests, where names would collide).
    pub register_metrics: bool,
}

impl NodeConfig {
    /// Defaults for node `id` of `peers`.
    pub fn new(
        id: NodeId,
        listen: SocketAddr,
        data_dir: PathBuf,
        peers: BTreeMap<NodeId, String>,
    ) -> Self {
        Self {
            id,
            listen,
            data_dir,
            peers,
            routes: BTreeMap::new(),
            init: false,
            cluster: "mlstack-kv".into(),
            heartbeat_ms: 50,
            election_min_ms: 150,
            election_max_ms: 300,
            snapshot_every: 10_000,
            keep_logs: 1_000,
            proposal_timeout: Duration::from_secs(5),
            inflight_batches: 1,
            register_metrics: true,
        }
    }

    fn validate(&self) -> Result<(), Error> {
        let bad = |reason: String| Err(Error::Config { reason });
        if self.id == 0 {
            return bad("node id 0 is reserved; ids start at 1".into());
        }
        if self.init && !self.peers.contains_key(&self.id) {
            return bad(format!(
                "--init needs this node ({}) in --peers (got ids {:?})",
                self.id,
                self.peers.keys().collect::<Vec<_>>()
            ));
        }
        for (id, addr) in self.routes.iter() {
            if !self.peers.contains_key(id) && !self.peers.is_empty() {
                return bad(format!(
                    "--route names node {id} ({addr}), which is not in --peers"
                ));
            }
        }
        if self.election_min_ms <= self.heartbeat_ms || self.election_max_ms <= self.election_min_ms
        {
            return bad(format!(
                "timeouts must satisfy heartbeat < election-min < election-max (got {} < {} < {})",
                self.heartbeat_ms, self.election_min_ms, self.election_max_ms
            ));
        }
        if self.cluster.is_empty() {
            return bad("cluster name is empty".into());
        }
        Ok(())
    }
}

/// Parses `1=host:port,2=host:port` into ids and addresses.
pub fn parse_peers(s: &str) -> Result<BTreeMap<NodeId, String>, Error> {
    let mut out = BTreeMap::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let Some((id, addr)) = part.split_once('=') else {
            return Err(Error::Config {
                reason: format!("peer {part:?} is not ID=HOST:PORT"),
            });
        };
        let id: NodeId = id.trim().parse().map_err(|_| Error::Config {
            reason: format!("peer {part:?}: {id:?} is not a node id (a positive integer)"),
        })?;
        if id == 0 {
            return Err(Error::Config {
                reason: format!("peer {part:?}: node id 0 is reserved"),
            });
        }
        let addr = addr.trim();
        let hostport = addr.rsplit("://").next().unwrap_or(addr);
        let valid = hostport
            .rsplit_once(':')
            .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok());
        if !valid {
            return Err(Error::Config {
                reason: format!("peer {part:?}: {addr:?} is not HOST:PORT"),
            });
        }
        if out.insert(id, addr.to_string()).is_some() {
            return Err(Error::Config {
                reason: format!("node id {id} appears twice in the peer list"),
            });
        }
    }
    Ok(out)
}

/// A started node. Drop or [`Node::shutdown`] to stop it.
pub struct Node {
    pub id: NodeId,
    pub addr: SocketAddr,
    pub raft: Raft,
    pub shared: Arc<Shared>,
    pub metrics: Arc<Metrics>,
    stop: CancellationToken,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Node {
    /// Opens storage, starts Raft and serves gRPC on `cfg.listen`.
    pub async fn start(cfg: NodeConfig) -> Result<Node, Error> {
        cfg.validate()?;
        let identity = Identity {
            cluster: cfg.cluster.clone(),
            node_id: cfg.id,
        };
        let kv_dir = cfg.data_dir.join("kv");
        let db = {
            let dir = kv_dir.clone();
            tokio::task::spawn_blocking(move || open_db(&dir, &identity))
                .await
                .map_err(|e| Error::Config {
                    reason: format!("opening storage: {e}"),
                })??
        };
        let metrics = Arc::new(Metrics::new());
        if cfg.register_metrics {
            metrics.register().map_err(|e| Error::Config {
                reason: format!("registering metrics: {e}"),
            })?;
            // The node's LSM counters (compactions, cache hits, ...) too.
            observe::registry()
                .register(Box::new(storage::metrics::DbCollector::new(&db, "kv")))
                .map_err(|e| Error::Config {
                    reason: format!("registering storage metrics: {e}"),
                })?;
        }
        let io = |op: &'static str, path: PathBuf| move |source| Error::Io { op, path, source };
        let log =
            LogStore::open(db.clone(), metrics.clone()).map_err(io("open log", kv_dir.clone()))?;
        let sm = StateMachine::open(db.clone(), cfg.data_dir.join("snapshot"), metrics.clone())
            .map_err(io("open state machine", kv_dir.clone()))?;
        let shared = sm.shared.clone();

        let raft_config = openraft::Config {
            cluster_name: cfg.cluster.clone(),
            heartbeat_interval: cfg.heartbeat_ms,
            election_timeout_min: cfg.election_min_ms,
            election_timeout_max: cfg.election_max_ms,
            snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(cfg.snapshot_every),
            max_in_snapshot_log_to_keep: cfg.keep_logs,
            install_snapshot_timeout: 5_000,
            // Entries may be batches of client writes: keep payloads modest
            // (the transport splits any that are still too big).
            max_payload_entries: 256,
            ..Default::default()
        }
        .validate()
        .map_err(|e| Error::Config {
            reason: format!("raft config: {e}"),
        })?;
        let network = NetworkFactory::new(cfg.cluster.clone(), cfg.routes.clone());
        let raft = Raft::new(cfg.id, Arc::new(raft_config), network, log, sm)
            .await
            .map_err(|e| Error::Raft {
                op: "start",
                reason: e.to_string(),
            })?;

        let listener = tokio::net::TcpListener::bind(cfg.listen)
            .await
            .map_err(|source| Error::Bind {
                addr: cfg.listen,
                source,
            })?;
        let addr = listener.local_addr().map_err(|source| Error::Bind {
            addr: cfg.listen,
            source,
        })?;
        let stop = CancellationToken::new();
        let (mut routes, health) = proto::server::standard_routes().map_err(|e| Error::Config {
            reason: format!("gRPC routes: {e}"),
        })?;
        let (batch_tx, batch_rx) = tokio::sync::mpsc::channel(4 * crate::service::MAX_BATCH);
        let mut tasks = vec![tokio::spawn(crate::service::batcher(
            raft.clone(),
            batch_rx,
            cfg.inflight_batches,
        ))];
        let kv = KvService {
            id: cfg.id,
            batcher: batch_tx,
            raft: raft.clone(),
            shared: shared.clone(),
            metrics: metrics.clone(),
            proposal_timeout: cfg.proposal_timeout,
        };
        routes.add_service(proto::kv::v1::kv_server::KvServer::new(kv));
        routes.add_service(
            proto::raft::v1::raft_server::RaftServer::new(RaftService {
                raft: raft.clone(),
                cluster: cfg.cluster.clone(),
            })
            .max_decoding_message_size(64 << 20),
        );
        health
            .set_serving::<proto::kv::v1::kv_server::KvServer<KvService>>()
            .await;
        let incoming =
            tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
        let grpc_stop = stop.clone();
        tasks.push(tokio::spawn(async move {
            let r = tonic::transport::Server::builder()
                .trace_fn(observe::grpc::server_span)
                .add_routes(routes.routes())
                .serve_with_incoming_shutdown(incoming, grpc_stop.cancelled_owned())
                .await;
            if let Err(e) = r {
                tracing::error!(error = %e, "KV gRPC server failed");
            }
        }));
        tasks.push(tokio::spawn(watch_metrics(
            raft.clone(),
            metrics.clone(),
            stop.clone(),
        )));

        if cfg.init {
            let initialized = raft.is_initialized().await.map_err(|e| Error::Raft {
                op: "is_initialized",
                reason: e.to_string(),
            })?;
            if !initialized {
                let members: BTreeMap<NodeId, Node_> = cfg
                    .peers
                    .iter()
                    .map(|(id, a)| (*id, openraft::BasicNode::new(a)))
                    .collect();
                raft.initialize(members).await.map_err(|e| Error::Raft {
                    op: "initialize",
                    reason: e.to_string(),
                })?;
                tracing::info!(peers = ?cfg.peers, "initialized a new cluster");
            }
        }
        tracing::info!(id = cfg.id, %addr, cluster = %cfg.cluster, "KV node serving");
        Ok(Node {
            id: cfg.id,
            addr,
            raft,
            shared,
            metrics,
            stop,
            tasks,
        })
    }

    /// Stops serving and shuts Raft down.
    pub async fn shutdown(mut self) {
        self.stop.cancel();
        let _ = self.raft.shutdown().await;
        for t in self.tasks.drain(..) {
            let _ = t.await;
        }
        // openraft's replication tasks and gRPC connections drop their handles
        // to the store shortly after; wait for them so the data directory's
        // LOCK is free when this returns (a restart in the same process).
        let t0 = std::time::Instant::now();
        // Both the log store (holding the Db) and the state machine (holding
        // `Shared`, which holds the Db) must be gone.
        while (Arc::strong_count(&self.shared.db) > 1 || Arc::strong_count(&self.shared) > 1)
            && t0.elapsed() < Duration::from_secs(10)
        {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

type Node_ = openraft::BasicNode;

impl Drop for Node {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Mirrors openraft's metrics into Prometheus and logs leader changes.
async fn watch_metrics(raft: Raft, m: Arc<Metrics>, stop: CancellationToken) {
    let mut rx = raft.metrics();
    let mut leader = None;
    loop {
        let cur = rx.borrow_and_update().clone();
        m.term.set(cur.current_term as i64);
        m.is_leader.set(i64::from(
            cur.current_leader == Some(cur.id) && cur.state.is_leader(),
        ));
        if cur.current_leader != leader {
            if cur.current_leader.is_some() {
                m.leader_changes.inc();
                tracing::info!(leader = ?cur.current_leader, term = cur.current_term, "leader changed");
            }
            leader = cur.current_leader;
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            r = rx.changed() => if r.is_err() { return },
        }
    }
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node").finish_non_exhaustive()
    }
}
