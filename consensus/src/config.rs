//! A node's configuration (`mlstack kv serve`'s flags) and its validation.

use crate::error::Error;
use crate::types::NodeId;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Everything `mlstack kv serve` configures.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    pub id: NodeId,
    /// Where to listen: the client API, and the Raft transport unless
    /// `peer_listen` gives it a port of its own.
    pub listen: SocketAddr,
    /// The Raft transport's own port (etcd's `--listen-peer-urls`); with TLS
    /// it requires a certificate of the cluster CA at the handshake. This
    /// node's `peers` entry must then be `CLIENT+PEER`.
    pub peer_listen: Option<SocketAddr>,
    /// TLS on the port, and the Raft transport's peer check; `None` serves
    /// plaintext (the tests, the demo).
    pub tls: Option<NodeTls>,
    /// Who may call the client API (client certificate, API key); open by
    /// default. Membership changes need an admin key once any is required.
    pub access: proto::access::Access,
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
    /// Proposal batches in flight at once (see [`crate::batcher`]).
    pub inflight_batches: usize,
    /// Register metrics in the process-wide registry (off for in-process
    /// multi-node tests, where names would collide).
    pub register_metrics: bool,
    /// The node's LSM (the Raft log, the state machine, the dedup table).
    /// Tests hand a simulated power cut in here ([`storage::power_loss`]).
    pub storage: storage::Options,
    /// A client silent this long loses its deduplication state (its retries
    /// from before are no longer recognised). Only the leader's value
    /// matters: it proposes the expiry (`session_expiry.rs`).
    pub session_ttl: Duration,
}

/// A node's TLS (etcd's `--cert-file`, `--key-file`, `--trusted-ca-file`,
/// `--peer-trusted-ca-file`, on one port).
#[derive(Clone, Debug)]
pub struct NodeTls {
    /// The node's certificate and key (server and, to its peers, client),
    /// and the CAs a caller's certificate may chain to: the cluster CA, plus
    /// the client CA when clients present certificates.
    pub server: proto::tls::ServerTls,
    /// The cluster CA: peers' certificates must chain to it, and it signs
    /// the certificates this node checks when it dials a peer.
    pub cluster_ca_pem: Vec<u8>,
}

impl NodeTls {
    /// The configuration this node dials its peers with (its own certificate
    /// as the client identity).
    pub fn peer_client(&self) -> proto::tls::ClientTls {
        proto::tls::ClientTls {
            ca_pem: self.cluster_ca_pem.clone(),
            identity: Some((self.server.cert_pem.clone(), self.server.key_pem.clone())),
        }
    }
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
            peer_listen: None,
            tls: None,
            access: proto::access::Access::default(),
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
            storage: storage::Options::default(),
            session_ttl: Duration::from_secs(600),
        }
    }

    pub(crate) fn validate(&self) -> Result<(), Error> {
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
        if self.access.require_cert && self.tls.is_none() {
            return bad("client certificates need TLS (--tls-cert, --tls-key, --tls-ca)".into());
        }
        if self.peer_listen.is_some()
            && let Some(mine) = self.peers.get(&self.id)
            && !mine.contains(crate::member_addr::SEP)
        {
            return bad(format!(
                "--peer-listen needs this node's --peers entry as ID=CLIENT+PEER (the address peers dial), got {}={mine}",
                self.id
            ));
        }
        if self.access.keys.is_some() && self.tls.is_none() {
            // Keys would cross the network in cleartext, and the Raft
            // service beside them would stay open to anyone: no protection.
            return bad("API keys need TLS (--tls-cert, --tls-key, --tls-ca): without it the keys travel in cleartext and Raft stays open to anyone".into());
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
        // CLIENT or CLIENT+PEER (crate::member_addr): each half HOST:PORT.
        let halves: Vec<&str> = addr.split(crate::member_addr::SEP).collect();
        let hostport_ok = |a: &str| {
            let hostport = a.rsplit("://").next().unwrap_or(a);
            hostport
                .rsplit_once(':')
                .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok())
        };
        if halves.len() > 2 || !halves.iter().all(|h| hostport_ok(h)) {
            return Err(Error::Config {
                reason: format!(
                    "peer {part:?}: {addr:?} is not HOST:PORT or CLIENT_HOST:PORT+PEER_HOST:PORT"
                ),
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
