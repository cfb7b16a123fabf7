//! A running KV node: storage, openraft, the gRPC server (client API + Raft
//! transport on one port, each behind its own gate) and the metrics watcher.

use crate::batcher::{MAX_BATCH, batcher};
use crate::config::NodeConfig;
use crate::error::Error;
use crate::metrics::Metrics;
use crate::network::{NetworkFactory, RaftService};
use crate::service::KvService;
use crate::store::{Identity, LogStore, Shared, StateMachine, open_db};
use crate::types::*;
use proto::server::GrpcServer;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// A started node. Drop or [`Node::shutdown`] to stop it.
pub struct Node {
    pub id: NodeId,
    pub addr: SocketAddr,
    /// The Raft transport's own port, when it has one (`peer_listen`).
    pub peer_addr: Option<SocketAddr>,
    pub raft: Raft,
    pub shared: Arc<Shared>,
    pub metrics: Arc<Metrics>,
    stop: CancellationToken,
    grpc: Option<GrpcServer>,
    peer_grpc: Option<GrpcServer>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Node {
    /// Opens storage, starts Raft and serves gRPC on `cfg.listen`.
    pub async fn start(cfg: NodeConfig) -> Result<Node, Error> {
        cfg.validate()?;
        if let Some(t) = &cfg.tls {
            // Peers accept this node's Raft messages only under a certificate
            // naming it (network.rs, check_sender): refuse to start without.
            proto::tls::PeerVerifier::check_own_cert(&t.server.cert_pem, cfg.id).map_err(|e| {
                Error::Config {
                    reason: e.to_string(),
                }
            })?;
        }
        let identity = Identity {
            cluster: cfg.cluster.clone(),
            node_id: cfg.id,
        };
        let kv_dir = cfg.data_dir.join("kv");
        let db = {
            let dir = kv_dir.clone();
            let opts = cfg.storage.clone();
            tokio::task::spawn_blocking(move || open_db(&dir, &identity, opts))
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
        let peer_tls = match &cfg.tls {
            Some(t) => Some(t.peer_client().config().map_err(|e| Error::Config {
                reason: e.to_string(),
            })?),
            None => None,
        };
        let network = NetworkFactory::new(cfg.cluster.clone(), cfg.routes.clone(), peer_tls);
        let raft = Raft::new(cfg.id, Arc::new(raft_config), network, log, sm)
            .await
            .map_err(|e| Error::Raft {
                op: "start",
                reason: e.to_string(),
            })?;

        let (batch_tx, batch_rx) = tokio::sync::mpsc::channel(4 * MAX_BATCH);
        let mut tasks = vec![tokio::spawn(batcher(
            raft.clone(),
            batch_rx,
            cfg.inflight_batches,
        ))];
        let (reads_tx, reads_rx) =
            tokio::sync::mpsc::channel(crate::read_index::MAX_QUEUED_READERS);
        tasks.push(tokio::spawn(crate::read_index::read_index_loop(
            raft.clone(),
            reads_rx,
            cfg.proposal_timeout,
            metrics.read_index_rounds.clone(),
        )));
        let kv = KvService {
            id: cfg.id,
            batcher: batch_tx,
            reads: reads_tx,
            raft: raft.clone(),
            shared: shared.clone(),
            metrics: metrics.clone(),
            proposal_timeout: cfg.proposal_timeout,
        };
        let raft_service = RaftService {
            raft: raft.clone(),
            cluster: cfg.cluster.clone(),
            check_node_certs: cfg.tls.is_some(),
        };
        // The Raft transport's gate: with TLS, a caller must hold a
        // certificate of the cluster CA (a client certificate passes the
        // handshake, not this); without TLS only the cluster name is checked
        // (network.rs), which stops accidents, not attackers.
        let peer_gate = match &cfg.tls {
            Some(t) => Some(
                proto::tls::PeerVerifier::new(&t.cluster_ca_pem).map_err(|e| Error::Config {
                    reason: e.to_string(),
                })?,
            ),
            None => None,
        };
        let raft_gate = move |req: tonic::Request<()>| {
            if let Some(v) = &peer_gate {
                v.check(&req)?;
            }
            Ok(req)
        };
        let kv_svc = tonic::service::interceptor::InterceptedService::new(
            proto::kv::v1::kv_server::KvServer::new(kv),
            cfg.access.clone(),
        );
        let raft_svc = tonic::service::interceptor::InterceptedService::new(
            proto::raft::v1::raft_server::RaftServer::new(raft_service)
                .max_decoding_message_size(64 << 20),
            raft_gate,
        );
        let server_err = |e| match e {
            proto::Error::Bind { addr, source } => Error::Bind { addr, source },
            other => Error::Config {
                reason: format!("gRPC server: {other}"),
            },
        };
        let name = format!("kv-{}", cfg.id);
        let client_tls = cfg.tls.as_ref().map(|t| &t.server);
        let (grpc, peer_grpc) = match cfg.peer_listen {
            // One port: the client API and Raft side by side, each gated.
            None => {
                let grpc = GrpcServer::start_tls(cfg.listen, &name, None, client_tls, |r| {
                    r.add_service(kv_svc);
                    r.add_service(raft_svc);
                })
                .await
                .map_err(server_err)?;
                (grpc, None)
            }
            // Two ports (etcd's client and peer URLs): the peer port serves
            // Raft alone, and with TLS its handshake already requires a
            // certificate of the cluster CA (the gate checks it again).
            Some(peer_listen) => {
                let grpc = GrpcServer::start_tls(cfg.listen, &name, None, client_tls, |r| {
                    r.add_service(kv_svc);
                })
                .await
                .map_err(server_err)?;
                let peer_tls = cfg.tls.as_ref().map(|t| proto::tls::ServerTls {
                    cert_pem: t.server.cert_pem.clone(),
                    key_pem: t.server.key_pem.clone(),
                    client_roots_pem: Some(t.cluster_ca_pem.clone()),
                    require_client_cert: true,
                });
                let peer = GrpcServer::start_tls(
                    peer_listen,
                    &format!("{name}-peer"),
                    None,
                    peer_tls.as_ref(),
                    |r| {
                        r.add_service(raft_svc);
                    },
                )
                .await
                .map_err(server_err)?;
                (grpc, Some(peer))
            }
        };
        grpc.health
            .set_serving::<proto::kv::v1::kv_server::KvServer<KvService>>()
            .await;
        let addr = grpc.addr;
        let peer_addr = peer_grpc.as_ref().map(|p| p.addr);
        // One token stops the gRPC server(s) and the node's own tasks.
        let stop = grpc.stop_token();
        if let Some(p) = &peer_grpc {
            let (all, peer) = (stop.clone(), p.stop_token());
            tokio::spawn(async move {
                all.cancelled().await;
                peer.cancel();
            });
        }
        tasks.push(tokio::spawn(watch_metrics(
            raft.clone(),
            metrics.clone(),
            stop.clone(),
        )));
        tasks.push(tokio::spawn(crate::session_expiry::expire_sessions(
            raft.clone(),
            shared.clone(),
            cfg.session_ttl,
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
        tracing::info!(
            id = cfg.id,
            %addr,
            peer_addr = ?peer_addr,
            cluster = %cfg.cluster,
            tls = cfg.tls.is_some(),
            open = cfg.access.is_open(),
            "KV node serving"
        );
        Ok(Node {
            id: cfg.id,
            addr,
            peer_addr,
            peer_grpc,
            raft,
            shared,
            metrics,
            stop,
            grpc: Some(grpc),
            tasks,
        })
    }

    /// Stops serving and shuts Raft down.
    pub async fn shutdown(mut self) {
        self.stop.cancel();
        let _ = self.raft.shutdown().await;
        for grpc in [self.grpc.take(), self.peer_grpc.take()]
            .into_iter()
            .flatten()
        {
            if let Err(e) = grpc.stop().await {
                tracing::error!(error = %e, "KV gRPC server failed");
            }
        }
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
