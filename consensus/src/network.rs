//! The Raft transport: openraft's RPCs over tonic gRPC (`mlstack.raft.v1.Raft`).
//!
//! One lazily-connected HTTP/2 channel per peer is shared by every replication
//! stream to it (connection reuse; tonic reconnects on failure). Each RPC runs
//! under openraft's time budget (`RPCOption::hard_ttl`). Snapshots go as one
//! client-streaming call in CRC-checked chunks; the follower installs only a
//! complete stream (see [`RaftService::install_snapshot`]).

use crate::types::*;
use openraft::error::{
    Fatal, InstallSnapshotError, NetworkError, PayloadTooLarge, RPCError, RaftError, RemoteError,
    ReplicationClosed, StreamingError, Unreachable,
};
use openraft::network::{Backoff, RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    SnapshotResponse, VoteRequest, VoteResponse,
};
use openraft::{OptionalSend, Snapshot, SnapshotMeta, StorageIOError, Vote};
use proto::raft::v1 as pb;
use proto::raft::v1::raft_client::RaftClient;
use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};
use tonic::transport::Channel;

/// Largest AppendEntries payload sent in one RPC (see `append_entries`).
pub const MAX_APPEND_BYTES: usize = 128 << 10;

/// Snapshot chunk size on the wire.
pub const SNAPSHOT_CHUNK_BYTES: usize = 1 << 20;

fn encode<T: serde::Serialize>(v: &T) -> Vec<u8> {
    bincode::serialize(v).unwrap_or_default()
}

fn io(kind: std::io::ErrorKind, msg: String) -> std::io::Error {
    std::io::Error::new(kind, msg)
}

/// Builds one [`Network`] per peer; shares channels between them.
#[derive(Clone, Debug)]
pub struct NetworkFactory {
    cluster: String,
    /// Dial overrides (`--route`): where *this* node connects to reach a peer,
    /// instead of the address in the membership. The chaos drills put a
    /// fault-injecting proxy on every link this way.
    routes: Arc<BTreeMap<NodeId, String>>,
    channels: Arc<Mutex<HashMap<(NodeId, String), Channel>>>,
    /// TLS to the peers (the cluster CA, this node's certificate); `None`:
    /// plaintext.
    tls: Option<tonic::transport::ClientTlsConfig>,
}

impl NetworkFactory {
    pub fn new(
        cluster: String,
        routes: BTreeMap<NodeId, String>,
        tls: Option<tonic::transport::ClientTlsConfig>,
    ) -> Self {
        Self {
            cluster,
            routes: Arc::new(routes),
            channels: Default::default(),
            tls,
        }
    }

    fn channel(&self, target: NodeId, addr: &str) -> Result<Channel, std::io::Error> {
        let addr = self.routes.get(&target).map(String::as_str).unwrap_or(addr);
        // A member with a peer port is stored as CLIENT+PEER: Raft dials PEER.
        let addr = crate::member_addr::peer_of(addr);
        let mut map = self.channels.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = map.get(&(target, addr.to_string())) {
            return Ok(c.clone());
        }
        // With TLS the peer's server certificate must name node-<target>,
        // not just the host dialled: every node certificate carries the same
        // host names, and without this any node's key could answer as any
        // other node (fake vote grants or append acknowledgements, a false
        // quorum). The receiving side checks the same binding (check_sender).
        let tls = self
            .tls
            .clone()
            .map(|t| t.domain_name(format!("node-{target}")));
        let ch = proto::server::endpoint_of(addr, tls.as_ref())
            .map_err(|e| {
                io(
                    std::io::ErrorKind::InvalidInput,
                    format!("peer {target} address {addr:?}: {e}"),
                )
            })?
            .connect_timeout(Duration::from_millis(500))
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(5))
            .keep_alive_timeout(Duration::from_secs(2))
            .connect_lazy();
        map.insert((target, addr.to_string()), ch.clone());
        Ok(ch)
    }
}

impl RaftNetworkFactory<TypeConfig> for NetworkFactory {
    type Network = Network;

    async fn new_client(&mut self, target: NodeId, node: &Node) -> Network {
        Network {
            target,
            cluster: self.cluster.clone(),
            client: self.channel(target, &node.addr).map(RaftClient::new),
        }
    }
}

/// The connection to one peer.
#[derive(Debug)]
pub struct Network {
    target: NodeId,
    cluster: String,
    client: Result<RaftClient<Channel>, std::io::Error>,
}

type RpcErr<E = openraft::error::Infallible> = RPCError<NodeId, Node, RaftError<NodeId, E>>;

impl Network {
    fn client(&self) -> Result<RaftClient<Channel>, Unreachable> {
        match &self.client {
            Ok(c) => Ok(c.clone()),
            Err(e) => Err(Unreachable::new(&io(e.kind(), e.to_string()))),
        }
    }

    /// One unary call with a deadline; transport failures become
    /// `Unreachable` (back off) and a missing answer `NetworkError` (retry).
    async fn unary<Resp, E>(
        &self,
        method: &'static str,
        payload: Vec<u8>,
        ttl: Duration,
    ) -> Result<Resp, RpcErr<E>>
    where
        Resp: serde::de::DeserializeOwned,
        E: std::error::Error + serde::de::DeserializeOwned,
    {
        let mut client = self.client().map_err(RPCError::Unreachable)?;
        let mut request = tonic::Request::new(pb::RaftMessage {
            payload,
            cluster: self.cluster.clone(),
        });
        request.set_timeout(ttl);
        let call = async {
            match method {
                "append" => client.append_entries(request).await,
                _ => client.vote(request).await,
            }
        };
        let resp = match tokio::time::timeout(ttl, call).await {
            Err(_) => {
                return Err(RPCError::Network(NetworkError::new(&io(
                    std::io::ErrorKind::TimedOut,
                    format!("{method} to node {} timed out after {ttl:?}", self.target),
                ))));
            }
            Ok(Err(status)) => return Err(status_to_rpc(self.target, method, status)),
            Ok(Ok(r)) => r.into_inner(),
        };
        let decoded: Result<Resp, RaftError<NodeId, E>> = bincode::deserialize(&resp.payload)
            .map_err(|e| {
                RPCError::Network(NetworkError::new(&io(
                    std::io::ErrorKind::InvalidData,
                    format!("decoding {method} answer from node {}: {e}", self.target),
                )))
            })?;
        decoded.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

fn status_to_rpc<E: std::error::Error>(
    target: NodeId,
    method: &str,
    s: tonic::Status,
) -> RpcErr<E> {
    let e = io(
        std::io::ErrorKind::ConnectionRefused,
        format!("{method} to node {target}: {} {}", s.code(), s.message()),
    );
    match s.code() {
        tonic::Code::Unavailable | tonic::Code::Unknown | tonic::Code::FailedPrecondition => {
            RPCError::Unreachable(Unreachable::new(&e))
        }
        _ => RPCError::Network(NetworkError::new(&e)),
    }
}

impl RaftNetwork<TypeConfig> for Network {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RpcErr> {
        let payload = encode(&rpc);
        // openraft gives an AppendEntries one heartbeat interval (50 ms) to
        // complete, including the follower's fsync. A lagging follower's
        // catch-up batch (up to `max_payload_entries` entries, each possibly a
        // batch of client writes) can take longer: then every retry times out
        // the same way and the follower never catches up. Ask openraft to
        // split big payloads instead (it retries at once with fewer entries).
        let n = rpc.entries.len() as u64;
        if payload.len() > MAX_APPEND_BYTES && n > 1 {
            let fit = (n * MAX_APPEND_BYTES as u64 / payload.len() as u64).clamp(1, n - 1);
            return Err(RPCError::PayloadTooLarge(
                PayloadTooLarge::new_entries_hint(fit),
            ));
        }
        self.unary("append", payload, option.hard_ttl()).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RpcErr> {
        self.unary("vote", encode(&rpc), option.hard_ttl()).await
    }

    async fn install_snapshot(
        &mut self,
        _rpc: InstallSnapshotRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<InstallSnapshotResponse<NodeId>, RpcErr<InstallSnapshotError>> {
        // Never used: `full_snapshot` below streams whole snapshots.
        Err(RPCError::Network(NetworkError::new(&io(
            std::io::ErrorKind::Unsupported,
            "chunk-by-chunk install_snapshot is not used; snapshots stream via full_snapshot"
                .into(),
        ))))
    }

    async fn full_snapshot(
        &mut self,
        vote: Vote<NodeId>,
        snapshot: Snapshot<TypeConfig>,
        cancel: impl Future<Output = ReplicationClosed> + OptionalSend + 'static,
        option: RPCOption,
    ) -> Result<SnapshotResponse<NodeId>, StreamingError<TypeConfig, Fatal<NodeId>>> {
        let mut client = self.client()?;
        let header = encode(&(vote, snapshot.meta.clone()));
        let chunks = snapshot_chunks(snapshot.snapshot, header, self.cluster.clone(), self.target)
            .await
            .map_err(|e| {
                StreamingError::StorageError(StorageIOError::read_snapshot(None, &e).into())
            })?;
        let ttl = option.hard_ttl().max(Duration::from_secs(10));
        let mut request = tonic::Request::new(chunks);
        request.set_timeout(ttl);
        let target = self.target;
        let call = client.install_snapshot(request);
        let resp = tokio::select! {
            closed = cancel => return Err(StreamingError::Closed(closed)),
            r = tokio::time::timeout(ttl, call) => r,
        };
        let resp = match resp {
            Err(_) => {
                return Err(StreamingError::Network(NetworkError::new(&io(
                    std::io::ErrorKind::TimedOut,
                    format!("snapshot to node {target} timed out after {ttl:?}"),
                ))));
            }
            Ok(Err(s)) => {
                return Err(StreamingError::Unreachable(Unreachable::new(&io(
                    std::io::ErrorKind::ConnectionRefused,
                    format!("snapshot to node {target}: {} {}", s.code(), s.message()),
                ))));
            }
            Ok(Ok(r)) => r.into_inner(),
        };
        let decoded: Result<SnapshotResponse<NodeId>, Fatal<NodeId>> =
            bincode::deserialize(&resp.payload).map_err(|e| {
                StreamingError::Network(NetworkError::new(&io(
                    std::io::ErrorKind::InvalidData,
                    format!("decoding snapshot answer from node {target}: {e}"),
                )))
            })?;
        decoded.map_err(|e| StreamingError::RemoteError(RemoteError::new(target, e)))
    }

    fn backoff(&self) -> Backoff {
        // Short and steady: a healed link is used again within 100 ms.
        Backoff::new(std::iter::repeat(Duration::from_millis(100)))
    }
}

/// The leader's side of a snapshot stream: `SNAPSHOT_CHUNK_BYTES` chunks read
/// from the snapshot file as gRPC asks for them (one chunk in memory at a
/// time), each with its CRC32C, the first with the vote and meta, the last
/// marked `done`. A read error ends the stream without `done`, which the
/// follower refuses ("ended before its last chunk").
async fn snapshot_chunks(
    mut file: Box<crate::store::SnapshotData>,
    header: Vec<u8>,
    cluster: String,
    target: NodeId,
) -> std::io::Result<impl futures::Stream<Item = pb::SnapshotChunk> + Send + 'static> {
    file.seek(std::io::SeekFrom::Start(0)).await?;
    let total = file.len().await?;
    struct State {
        file: Box<crate::store::SnapshotData>,
        header: Option<Vec<u8>>,
        sent: u64,
        total: u64,
        cluster: String,
        target: NodeId,
    }
    let state = State {
        file,
        header: Some(header),
        sent: 0,
        total,
        cluster,
        target,
    };
    Ok(futures::stream::unfold(state, |mut s| async move {
        // After the first chunk, nothing left means the stream is complete.
        if s.header.is_none() && s.sent == s.total {
            return None;
        }
        let n = (s.total - s.sent).min(SNAPSHOT_CHUNK_BYTES as u64) as usize;
        let mut data = vec![0u8; n];
        if let Err(e) = s.file.read_exact(&mut data).await {
            tracing::warn!(target = s.target, sent = s.sent, error = %e, "reading the snapshot to send");
            return None;
        }
        s.sent += n as u64;
        let chunk = pb::SnapshotChunk {
            header: s.header.take().unwrap_or_default(),
            crc32c: crc32c::crc32c(&data),
            data,
            done: s.sent == s.total,
            cluster: s.cluster.clone(),
        };
        Some((chunk, s))
    }))
}

/// The server side of the transport: hands decoded messages to openraft.
#[derive(Clone)]
pub struct RaftService {
    pub raft: Raft,
    pub cluster: String,
    /// With TLS: a message's sender (the candidate of a vote, the leader of
    /// an append or a snapshot) must be the node the caller's certificate
    /// names ([`proto::tls::PeerVerifier::check_node`]). The gate in front
    /// (`node.rs`) has already checked that the certificate is the cluster
    /// CA's; this binds it to one node id.
    pub check_node_certs: bool,
}

impl RaftService {
    /// The caller's certificate chain, when sender checks are on (taken
    /// before the request is consumed).
    fn certs<T>(
        &self,
        request: &tonic::Request<T>,
    ) -> Option<std::sync::Arc<Vec<tonic::transport::CertificateDer<'static>>>> {
        if self.check_node_certs {
            request.peer_certs()
        } else {
            None
        }
    }

    /// `PERMISSION_DENIED` unless the certificate names `sender`.
    fn check_sender(
        &self,
        certs: Option<&[tonic::transport::CertificateDer<'static>]>,
        sender: Option<NodeId>,
    ) -> Result<(), tonic::Status> {
        if !self.check_node_certs {
            return Ok(());
        }
        let sender = sender.ok_or_else(|| {
            tonic::Status::permission_denied("a Raft message that names no sending node")
        })?;
        proto::tls::PeerVerifier::check_node(certs.unwrap_or(&[]), sender)
    }
}

fn check_cluster(ours: &str, theirs: &str) -> Result<(), tonic::Status> {
    if ours != theirs {
        return Err(tonic::Status::failed_precondition(format!(
            "peer belongs to cluster {theirs:?}, this node to {ours:?}"
        )));
    }
    Ok(())
}

fn bad_payload(what: &str, e: bincode::Error) -> tonic::Status {
    tonic::Status::invalid_argument(format!("decoding {what}: {e}"))
}

#[tonic::async_trait]
impl pb::raft_server::Raft for RaftService {
    async fn append_entries(
        &self,
        request: tonic::Request<pb::RaftMessage>,
    ) -> Result<tonic::Response<pb::RaftMessage>, tonic::Status> {
        let certs = self.certs(&request);
        let m = request.into_inner();
        check_cluster(&self.cluster, &m.cluster)?;
        let req: AppendEntriesRequest<TypeConfig> =
            bincode::deserialize(&m.payload).map_err(|e| bad_payload("append-entries", e))?;
        self.check_sender(
            certs.as_deref().map(Vec::as_slice),
            req.vote.leader_id().voted_for(),
        )?;
        let r = self.raft.append_entries(req).await;
        Ok(tonic::Response::new(pb::RaftMessage {
            payload: encode(&r),
            cluster: self.cluster.clone(),
        }))
    }

    async fn vote(
        &self,
        request: tonic::Request<pb::RaftMessage>,
    ) -> Result<tonic::Response<pb::RaftMessage>, tonic::Status> {
        let certs = self.certs(&request);
        let m = request.into_inner();
        check_cluster(&self.cluster, &m.cluster)?;
        let req: VoteRequest<NodeId> =
            bincode::deserialize(&m.payload).map_err(|e| bad_payload("vote", e))?;
        self.check_sender(
            certs.as_deref().map(Vec::as_slice),
            req.vote.leader_id().voted_for(),
        )?;
        let r = self.raft.vote(req).await;
        Ok(tonic::Response::new(pb::RaftMessage {
            payload: encode(&r),
            cluster: self.cluster.clone(),
        }))
    }

    async fn install_snapshot(
        &self,
        request: tonic::Request<tonic::Streaming<pb::SnapshotChunk>>,
    ) -> Result<tonic::Response<pb::RaftMessage>, tonic::Status> {
        let certs = self.certs(&request);
        let mut stream = request.into_inner();
        let mut header: Option<(Vote<NodeId>, SnapshotMeta<NodeId, Node>)> = None;
        // The stream goes to a temporary file in the snapshot directory
        // (`StateMachine::begin_receiving_snapshot`), never whole into
        // memory; dropped on any early return below, the file is removed.
        let mut data: Option<Box<crate::store::SnapshotData>> = None;
        let mut received: usize = 0;
        let mut done = false;
        while let Some(chunk) = stream.message().await? {
            check_cluster(&self.cluster, &chunk.cluster)?;
            if data.is_none() {
                let h: (Vote<NodeId>, SnapshotMeta<NodeId, Node>) =
                    bincode::deserialize(&chunk.header)
                        .map_err(|e| bad_payload("snapshot header", e))?;
                // Checked on the first chunk, before anything is written.
                self.check_sender(
                    certs.as_deref().map(Vec::as_slice),
                    h.0.leader_id().voted_for(),
                )?;
                header = Some(h);
                let f = self.raft.begin_receiving_snapshot().await.map_err(|e| {
                    tonic::Status::unavailable(format!("receiving a snapshot: {e}"))
                })?;
                data = Some(f);
            }
            let Some(file) = data.as_mut() else {
                return Err(tonic::Status::internal(
                    "no snapshot file after the first chunk",
                ));
            };
            let crc = crc32c::crc32c(&chunk.data);
            if crc != chunk.crc32c {
                return Err(tonic::Status::data_loss(format!(
                    "snapshot chunk at byte {received} checksum mismatch: sent {:08x}, received {crc:08x}",
                    chunk.crc32c
                )));
            }
            if received.saturating_add(chunk.data.len()) > crate::types::limits::MAX_SNAPSHOT_BYTES
            {
                return Err(tonic::Status::resource_exhausted(format!(
                    "snapshot stream passes {} bytes, the limit (MAX_SNAPSHOT_BYTES); nothing installed",
                    crate::types::limits::MAX_SNAPSHOT_BYTES
                )));
            }
            file.write_all(&chunk.data).await.map_err(|e| {
                tonic::Status::internal(format!(
                    "writing snapshot byte {received} to {}: {e}",
                    file.path().display()
                ))
            })?;
            received += chunk.data.len();
            if chunk.done {
                done = true;
                break;
            }
        }
        let (Some((vote, meta)), Some(mut data), true) = (header, data, done) else {
            // A cut-off stream installs nothing: the old state stays.
            return Err(tonic::Status::aborted(
                "snapshot stream ended before its last chunk; nothing installed",
            ));
        };
        // Durable and whole before openraft sees it: a damaged or forged file
        // is refused here, with the old state kept (and the file removed).
        data.check(&meta).await.map_err(|e| {
            tonic::Status::data_loss(format!("snapshot of {received} bytes refused: {e}"))
        })?;
        let snapshot = Snapshot {
            meta,
            snapshot: data,
        };
        let r = self.raft.install_full_snapshot(vote, snapshot).await;
        Ok(tonic::Response::new(pb::RaftMessage {
            payload: encode(&r),
            cluster: self.cluster.clone(),
        }))
    }
}

impl std::fmt::Debug for RaftService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RaftService").finish_non_exhaustive()
    }
}
