//! The client API `mlstack.kv.v1.KV` on every node.
//!
//! # Where requests go
//! - Writes (`Put`, `Delete`, `Txn`) are proposed through openraft on the
//!   leader. A follower does not forward: it answers `UNAVAILABLE` with the
//!   leader's address (`x-mlstack-leader`) and id (`x-mlstack-leader-id`) in the
//!   metadata, and the client retries there. One hop fewer to reason about in
//!   the chaos drills, and the client learns the leader once.
//! - Linearizable reads run openraft's read-index protocol (the leader
//!   confirms it still leads with a quorum heartbeat, then waits until it has
//!   applied up to its commit index) and then read local state; concurrent
//!   reads share one heartbeat round ([`crate::read_index`]). Serializable
//!   reads skip both and may be stale.
//!
//! # Outcomes
//! A write that fails before it was proposed (not leader, bad input) failed; a
//! write whose proposal did not commit in time answers `DEADLINE_EXCEEDED`,
//! meaning *unknown*: it may still commit. Clients retry it with the same
//! request id, which the state machine deduplicates.

use crate::batcher::Proposal;
use crate::metrics::Metrics;
use crate::store::Shared;
use crate::types::{self, limits, *};
use kvclient::{LEADER_ADDR_HEADER, LEADER_ID_HEADER};
use openraft::error::{CheckIsLeaderError, ClientWriteError, ForwardToLeader, RaftError};
use proto::kv::v1 as pb;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tonic::{Request, Response, Status};

/// The `KV` service of one node.
#[derive(Clone)]
pub struct KvService {
    pub id: NodeId,
    /// Proposals go through the batcher ([`crate::batcher`]), not straight to Raft.
    pub batcher: tokio::sync::mpsc::Sender<Proposal>,
    /// Linearizable reads queue for a shared read-index round
    /// ([`crate::read_index`]).
    pub reads: tokio::sync::mpsc::Sender<crate::read_index::Reader>,
    pub raft: Raft,
    pub shared: Arc<Shared>,
    pub metrics: Arc<Metrics>,
    pub proposal_timeout: Duration,
}

fn not_leader(id: NodeId, f: &ForwardToLeader<NodeId, types::Node>) -> Status {
    let mut s = Status::unavailable(match (f.leader_id, &f.leader_node) {
        (Some(l), Some(n)) => format!(
            "node {id} is not the leader; leader is node {l} at {}",
            crate::member_addr::client_of(&n.addr)
        ),
        _ => format!("node {id} is not the leader and knows no leader (election in progress?)"),
    });
    // Clients are sent to the leader's client address, never its peer port.
    if let Some(n) = &f.leader_node
        && let Ok(v) = crate::member_addr::client_of(&n.addr).parse()
    {
        s.metadata_mut().insert(LEADER_ADDR_HEADER, v);
    }
    if let Some(l) = f.leader_id
        && let Ok(v) = l.to_string().parse()
    {
        s.metadata_mut().insert(LEADER_ID_HEADER, v);
    }
    s
}

fn storage_status(e: std::io::Error) -> Status {
    if e.kind() == std::io::ErrorKind::InvalidData {
        Status::data_loss(format!("state machine: {e}"))
    } else {
        Status::internal(format!("state machine: {e}"))
    }
}

fn check_key(what: &str, key: &[u8]) -> Result<(), Status> {
    if key.is_empty() {
        return Err(Status::invalid_argument(format!("{what}: key is empty")));
    }
    if key.len() > limits::MAX_KEY_BYTES {
        return Err(Status::invalid_argument(format!(
            "{what}: key is {} bytes; the limit is {}",
            key.len(),
            limits::MAX_KEY_BYTES
        )));
    }
    Ok(())
}

fn check_value(what: &str, value: &[u8]) -> Result<(), Status> {
    if value.len() > limits::MAX_VALUE_BYTES {
        return Err(Status::invalid_argument(format!(
            "{what}: value is {} bytes; the limit is {}",
            value.len(),
            limits::MAX_VALUE_BYTES
        )));
    }
    Ok(())
}

fn request_id(r: Option<pb::RequestId>) -> Option<RequestId> {
    r.map(|r| RequestId {
        client_id: r.client_id,
        seq: r.seq,
    })
}

pub(crate) fn kv_to_pb(kv: KeyValue) -> pb::KeyValue {
    pb::KeyValue {
        key: kv.key,
        value: kv.value,
        version: kv.version,
        create_revision: kv.create_revision,
        mod_revision: kv.mod_revision,
    }
}

fn txn_op(op: pb::TxnOp) -> Result<TxnOp, Status> {
    match op.op {
        Some(pb::txn_op::Op::Put(p)) => {
            check_key("txn put", &p.key)?;
            check_value("txn put", &p.value)?;
            Ok(TxnOp::Put {
                key: p.key,
                value: p.value,
                prev_kv: p.prev_kv,
            })
        }
        Some(pb::txn_op::Op::Delete(d)) => {
            check_key("txn delete", &d.key)?;
            Ok(TxnOp::Delete { key: d.key })
        }
        Some(pb::txn_op::Op::Get(g)) => {
            check_key("txn get", &g.key)?;
            Ok(TxnOp::Get { key: g.key })
        }
        None => Err(Status::invalid_argument("txn: an operation has no op set")),
    }
}

fn compare(c: pb::Compare) -> Result<Compare, Status> {
    check_key("txn compare", &c.key)?;
    let target = match pb::compare::Target::try_from(c.target) {
        Ok(pb::compare::Target::Version) => CompareTarget::Version,
        Ok(pb::compare::Target::ModRevision) => CompareTarget::ModRevision,
        Ok(pb::compare::Target::Value) => CompareTarget::Value,
        Err(_) => {
            return Err(Status::invalid_argument(format!(
                "txn compare: unknown target {}",
                c.target
            )));
        }
    };
    let op = match pb::compare::Op::try_from(c.op) {
        Ok(pb::compare::Op::Equal) => CompareOp::Equal,
        Ok(pb::compare::Op::NotEqual) => CompareOp::NotEqual,
        Ok(pb::compare::Op::Less) => CompareOp::Less,
        Ok(pb::compare::Op::Greater) => CompareOp::Greater,
        Err(_) => {
            return Err(Status::invalid_argument(format!(
                "txn compare: unknown op {}",
                c.op
            )));
        }
    };
    Ok(Compare {
        key: c.key,
        target,
        op,
        number: c.number,
        value: c.value,
    })
}

impl KvService {
    fn header(&self, revision: u64) -> Option<pb::ResponseHeader> {
        let term = self.raft.metrics().borrow().current_term;
        Some(pb::ResponseHeader {
            node_id: self.id,
            term,
            revision,
        })
    }

    /// Proposes `op` and waits for it to apply on this (leader) node.
    async fn propose(&self, op: Op, id: Option<RequestId>) -> Result<types::Response, Status> {
        let span = tracing::info_span!("kv.propose");
        // Only a sampled trace rides in the log entry: an unsampled one would
        // make every node build a non-recording `kv.apply` span per command.
        let trace = observe::carrier::inject_sampled(&span);
        let cmd = Command {
            request_id: id,
            op,
            trace,
        };
        let t0 = Instant::now();
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.batcher
            .send((cmd, tx))
            .await
            .map_err(|_| Status::unavailable(format!("node {} is shutting down", self.id)))?;
        let fut = tracing::Instrument::instrument(rx, span);
        let r = match tokio::time::timeout(self.proposal_timeout, fut).await {
            Ok(Err(_)) => {
                return Err(Status::deadline_exceeded(format!(
                    "node {} dropped the proposal while stopping; it may still commit",
                    self.id
                )));
            }
            Ok(Ok(r)) => r,
            Err(_) => {
                self.metrics.proposal_failures.inc();
                return Err(Status::deadline_exceeded(format!(
                    "proposal not committed within {:?} (quorum unreachable?); it may still \
                     commit: retry with the same request id",
                    self.proposal_timeout
                )));
            }
        };
        match r {
            Ok(resp) => {
                self.metrics.proposals.inc();
                self.metrics
                    .commit_seconds
                    .observe(t0.elapsed().as_secs_f64());
                if let OpResult::Expired { request_id } = resp.result {
                    return Err(Status::failed_precondition(format!(
                        "request id {}/{} is older than the deduplication window; it may have \
                         applied already and is not applied again",
                        request_id.client_id, request_id.seq
                    )));
                }
                Ok(resp)
            }
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => {
                self.metrics.proposal_failures.inc();
                Err(not_leader(self.id, &f))
            }
            Err(RaftError::APIError(ClientWriteError::ChangeMembershipError(e))) => {
                Err(Status::failed_precondition(e.to_string()))
            }
            Err(RaftError::Fatal(e)) => {
                self.metrics.proposal_failures.inc();
                // The node stopped while the proposal was in flight: unknown.
                Err(Status::deadline_exceeded(format!(
                    "node {} stopped with the proposal in flight ({e}); it may still commit",
                    self.id
                )))
            }
        }
    }

    /// Read index: confirm leadership with a quorum (one round shared with
    /// every read queued beside this one, [`crate::read_index`]) and wait
    /// until this node has applied up to it.
    async fn read_index(&self) -> Result<u64, Status> {
        let t0 = Instant::now();
        let timed_out = || {
            Status::unavailable(format!(
                "node {}: could not confirm leadership within {:?}",
                self.id, self.proposal_timeout
            ))
        };
        let round = async {
            let (tx, rx) = tokio::sync::oneshot::channel();
            self.reads
                .send(tx)
                .await
                .map_err(|_| Status::unavailable(format!("node {} is shutting down", self.id)))?;
            // A dropped reader: its round found no quorum in time.
            let index = rx.await.map_err(|_| timed_out())?;
            if let Ok(Some(log_id)) = &index {
                self.raft
                    .wait(None)
                    .applied_index_at_least(Some(log_id.index), "read index")
                    .await
                    .map_err(|e| {
                        Status::unavailable(format!(
                            "node {}: waiting to apply up to the read index: {e}",
                            self.id
                        ))
                    })?;
            }
            Ok::<_, Status>(index)
        };
        let r = tokio::time::timeout(self.proposal_timeout, round).await;
        self.metrics
            .read_index_seconds
            .observe(t0.elapsed().as_secs_f64());
        let r = match r {
            Err(_) => {
                return Err(Status::unavailable(format!(
                    "node {}: no read index and apply within {:?} (no quorum, or applying slowly)",
                    self.id, self.proposal_timeout
                )));
            }
            Ok(r) => r?,
        };
        match r {
            Ok(log_id) => {
                self.metrics.reads_linearizable.inc();
                Ok(log_id.map(|l| l.index).unwrap_or(0))
            }
            Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(f))) => {
                Err(not_leader(self.id, &f))
            }
            Err(RaftError::APIError(CheckIsLeaderError::QuorumNotEnough(q))) => Err(
                Status::unavailable(format!("node {}: no quorum for a read index: {q}", self.id)),
            ),
            Err(RaftError::Fatal(e)) => Err(Status::unavailable(format!(
                "node {} stopped: {e}",
                self.id
            ))),
        }
    }

    async fn consistency(&self, c: i32) -> Result<(u64, bool), Status> {
        match pb::ReadConsistency::try_from(c) {
            Ok(pb::ReadConsistency::Linearizable) => Ok((self.read_index().await?, false)),
            Ok(pb::ReadConsistency::Serializable) => {
                self.metrics.reads_serializable.inc();
                Ok((self.shared.applied_index(), true))
            }
            Err(_) => Err(Status::invalid_argument(format!(
                "unknown read consistency {c}"
            ))),
        }
    }
}

type WatchStream = Pin<Box<dyn futures::Stream<Item = Result<pb::WatchEvent, Status>> + Send>>;

#[tonic::async_trait]
impl pb::kv_server::Kv for KvService {
    async fn put(
        &self,
        request: Request<pb::PutRequest>,
    ) -> Result<Response<pb::PutResponse>, Status> {
        let r = request.into_inner();
        check_key("put", &r.key)?;
        check_value("put", &r.value)?;
        let resp = self
            .propose(
                Op::Put {
                    key: r.key,
                    value: r.value,
                    prev_kv: r.prev_kv,
                },
                request_id(r.request_id),
            )
            .await?;
        let prev = match resp.result {
            OpResult::Put { prev } => prev.map(kv_to_pb),
            _ => None,
        };
        Ok(Response::new(pb::PutResponse {
            header: self.header(resp.revision),
            prev,
        }))
    }

    async fn get(
        &self,
        request: Request<pb::GetRequest>,
    ) -> Result<Response<pb::GetResponse>, Status> {
        let r = request.into_inner();
        check_key("get", &r.key)?;
        let (rev, serializable) = self.consistency(r.consistency).await?;
        let kv = self.shared.get(&r.key).map_err(storage_status)?;
        Ok(Response::new(pb::GetResponse {
            header: self.header(rev.max(self.shared.applied_index())),
            kv: kv.map(kv_to_pb),
            serializable,
        }))
    }

    async fn delete(
        &self,
        request: Request<pb::DeleteRequest>,
    ) -> Result<Response<pb::DeleteResponse>, Status> {
        let r = request.into_inner();
        check_key("delete", &r.key)?;
        let resp = self
            .propose(Op::Delete { key: r.key }, request_id(r.request_id))
            .await?;
        let deleted = matches!(resp.result, OpResult::Delete { deleted: true });
        Ok(Response::new(pb::DeleteResponse {
            header: self.header(resp.revision),
            deleted,
        }))
    }

    async fn scan(
        &self,
        request: Request<pb::ScanRequest>,
    ) -> Result<Response<pb::ScanResponse>, Status> {
        let r = request.into_inner();
        let limit = match r.limit as usize {
            0 => limits::DEFAULT_SCAN_LIMIT,
            n if n > limits::MAX_SCAN_LIMIT => {
                return Err(Status::invalid_argument(format!(
                    "scan: limit {n} is over the maximum {}",
                    limits::MAX_SCAN_LIMIT
                )));
            }
            n => n,
        };
        let (start, end) = if !r.prefix.is_empty() {
            check_key("scan prefix", &r.prefix)?;
            let end = kvclient::client::prefix_end(&r.prefix);
            // With `start`/`end` set as well, they narrow the prefix range (paging).
            let start = if r.start > r.prefix {
                r.start
            } else {
                r.prefix
            };
            let end = if !r.end.is_empty() && (end.is_empty() || r.end < end) {
                r.end
            } else {
                end
            };
            (start, end)
        } else {
            (r.start, r.end)
        };
        if start.len() > limits::MAX_KEY_BYTES || end.len() > limits::MAX_KEY_BYTES {
            return Err(Status::invalid_argument(format!(
                "scan: bounds over the key limit of {} bytes",
                limits::MAX_KEY_BYTES
            )));
        }
        let (rev, _) = self.consistency(r.consistency).await?;
        let (kvs, more) = self
            .shared
            .scan(&start, &end, limit, limits::MAX_SCAN_BYTES, r.reverse)
            .map_err(storage_status)?;
        let next_key = match (more, kvs.last()) {
            (true, Some(last)) if !r.reverse => {
                let mut k = last.key.clone();
                k.push(0);
                k
            }
            (true, Some(last)) => last.key.clone(),
            _ => Vec::new(),
        };
        Ok(Response::new(pb::ScanResponse {
            header: self.header(rev.max(self.shared.applied_index())),
            kvs: kvs.into_iter().map(kv_to_pb).collect(),
            next_key,
            more,
        }))
    }

    async fn txn(
        &self,
        request: Request<pb::TxnRequest>,
    ) -> Result<Response<pb::TxnResponse>, Status> {
        let r = request.into_inner();
        if r.compare.len() > limits::MAX_TXN_OPS
            || r.success.len() > limits::MAX_TXN_OPS
            || r.failure.len() > limits::MAX_TXN_OPS
        {
            return Err(Status::invalid_argument(format!(
                "txn: at most {} compares and {} operations per branch",
                limits::MAX_TXN_OPS,
                limits::MAX_TXN_OPS
            )));
        }
        let op = Op::Txn {
            compare: r
                .compare
                .into_iter()
                .map(compare)
                .collect::<Result<_, _>>()?,
            success: r
                .success
                .into_iter()
                .map(txn_op)
                .collect::<Result<_, _>>()?,
            failure: r
                .failure
                .into_iter()
                .map(txn_op)
                .collect::<Result<_, _>>()?,
        };
        let resp = self.propose(op, request_id(r.request_id)).await?;
        let (succeeded, results) = match resp.result {
            OpResult::Txn { succeeded, results } => (succeeded, results),
            _ => (false, Vec::new()),
        };
        let header = self.header(resp.revision);
        let results = results
            .into_iter()
            .map(|t| pb::TxnOpResult {
                result: Some(match t {
                    TxnOpResult::Put { prev } => pb::txn_op_result::Result::Put(pb::PutResponse {
                        header,
                        prev: prev.map(kv_to_pb),
                    }),
                    TxnOpResult::Delete { deleted } => {
                        pb::txn_op_result::Result::Delete(pb::DeleteResponse { header, deleted })
                    }
                    TxnOpResult::Get { kv } => pb::txn_op_result::Result::Get(pb::GetResponse {
                        header,
                        kv: kv.map(kv_to_pb),
                        serializable: false,
                    }),
                }),
            })
            .collect();
        Ok(Response::new(pb::TxnResponse {
            header,
            succeeded,
            results,
        }))
    }

    type WatchStream = WatchStream;

    async fn watch(
        &self,
        request: Request<pb::WatchRequest>,
    ) -> Result<Response<WatchStream>, Status> {
        let r = request.into_inner();
        let start = r.start_revision;
        let (mut rx, oldest, history) = self.shared.watch(start);
        if start > 0 {
            let oldest = oldest.unwrap_or(u64::MAX);
            // Revisions before the retained history (and after the last
            // snapshot install) are gone: say so instead of skipping them.
            if start < oldest && start <= self.shared.applied_index() {
                return Err(Status::out_of_range(format!(
                    "watch: start revision {start} is older than the retained history (oldest {oldest})"
                )));
            }
        }
        let prefix = r.prefix;
        let id = self.id;
        let raft = self.raft.clone();
        let header = move |rev| {
            Some(pb::ResponseHeader {
                node_id: id,
                term: raft.metrics().borrow().current_term,
                revision: rev,
            })
        };
        let to_pb = move |ev: WatchEvent| -> pb::WatchEvent {
            let rev = ev.revision();
            match ev {
                WatchEvent::Put(kv) => pb::WatchEvent {
                    r#type: pb::watch_event::Type::Put as i32,
                    kv: Some(kv_to_pb(kv)),
                    header: header(rev),
                },
                WatchEvent::Delete { key, revision } => pb::WatchEvent {
                    r#type: pb::watch_event::Type::Delete as i32,
                    kv: Some(pb::KeyValue {
                        key,
                        mod_revision: revision,
                        ..Default::default()
                    }),
                    header: header(rev),
                },
                WatchEvent::Reset => pb::WatchEvent::default(),
            }
        };
        let stream = async_stream(move |tx| async move {
            let mut last = 0u64;
            for ev in history {
                if ev.revision() >= start.max(1) && start > 0 && ev.key().starts_with(&prefix) {
                    last = ev.revision();
                    if tx.send(Ok(to_pb(ev))).await.is_err() {
                        return;
                    }
                }
            }
            loop {
                match rx.recv().await {
                    Ok(WatchEvent::Reset) => {
                        let _ = tx
                            .send(Err(Status::aborted(
                                "watch: this node installed a snapshot; watch again from a revision",
                            )))
                            .await;
                        return;
                    }
                    Ok(ev) => {
                        // Events replayed from history are not sent twice.
                        if ev.revision() < last || !ev.key().starts_with(&prefix) {
                            continue;
                        }
                        if tx.send(Ok(to_pb(ev))).await.is_err() {
                            return;
                        }
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                        let _ = tx
                            .send(Err(Status::data_loss(format!(
                                "watch: fell {n} events behind; watch again from revision {}",
                                last + 1
                            ))))
                            .await;
                        return;
                    }
                    Err(_) => return,
                }
            }
        });
        Ok(Response::new(stream))
    }

    async fn status(
        &self,
        _request: Request<pb::StatusRequest>,
    ) -> Result<Response<pb::StatusResponse>, Status> {
        let m = self.raft.metrics().borrow().clone();
        let (applied, hash) = self.shared.state_hash().map_err(storage_status)?;
        let membership = m.membership_config.membership();
        let voters: std::collections::BTreeSet<_> = membership.voter_ids().collect();
        let members = membership
            .nodes()
            .map(|(id, n)| pb::Member {
                id: *id,
                address: n.addr.clone(),
                voter: voters.contains(id),
            })
            .collect();
        let leader_address = m
            .current_leader
            .and_then(|l| {
                membership
                    .get_node(&l)
                    .map(|n| crate::member_addr::client_of(&n.addr).to_string())
            })
            .unwrap_or_default();
        Ok(Response::new(pb::StatusResponse {
            node_id: self.id,
            leader_id: m.current_leader.unwrap_or(0),
            leader_address,
            term: m.current_term,
            commit_index: (self.metrics.commit_index.get() as u64).max(applied),
            applied_index: applied,
            members,
            state_hash: hash,
        }))
    }

    async fn add_learner(
        &self,
        request: Request<pb::AddLearnerRequest>,
    ) -> Result<Response<pb::MembershipResponse>, Status> {
        proto::access::Access::admin(&request, "add-learner")?;
        let r = request.into_inner();
        if r.id == 0 {
            return Err(Status::invalid_argument(
                "add learner: node id 0 is reserved",
            ));
        }
        crate::config::parse_peers(&format!("{}={}", r.id, r.address))
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        // Blocking: returns once the learner has caught up with the log.
        let res = self
            .raft
            .add_learner(r.id, openraft::BasicNode::new(&r.address), true)
            .await;
        self.membership_result(res)
    }

    async fn change_membership(
        &self,
        request: Request<pb::ChangeMembershipRequest>,
    ) -> Result<Response<pb::MembershipResponse>, Status> {
        proto::access::Access::admin(&request, "change-membership")?;
        let r = request.into_inner();
        if r.voters.is_empty() {
            return Err(Status::invalid_argument(
                "change membership: the voter set is empty",
            ));
        }
        let known: std::collections::BTreeSet<NodeId> = self
            .raft
            .metrics()
            .borrow()
            .membership_config
            .membership()
            .nodes()
            .map(|(id, _)| *id)
            .collect();
        if let Some(unknown) = r.voters.iter().find(|v| !known.contains(v)) {
            return Err(Status::invalid_argument(format!(
                "change membership: node {unknown} is not a member or learner; add it as a learner first (members: {known:?})"
            )));
        }
        let voters: std::collections::BTreeSet<NodeId> = r.voters.into_iter().collect();
        // retain=false: removed voters leave the cluster instead of lingering
        // as learners.
        let res = self.raft.change_membership(voters, false).await;
        self.membership_result(res)
    }

    async fn transfer_leader(
        &self,
        request: Request<pb::TransferLeaderRequest>,
    ) -> Result<Response<pb::TransferLeaderResponse>, Status> {
        proto::access::Access::admin(&request, "transfer-leader")?;
        Err(Status::unimplemented(
            "leader transfer: openraft 0.9 has no leader-transfer API (it arrives in 0.10); \
             stop the leader or let its lease lapse instead",
        ))
    }
}

impl KvService {
    fn membership_result(
        &self,
        res: Result<
            openraft::raft::ClientWriteResponse<TypeConfig>,
            RaftError<NodeId, ClientWriteError<NodeId, types::Node>>,
        >,
    ) -> Result<Response<pb::MembershipResponse>, Status> {
        match res {
            Ok(resp) => {
                let members = resp
                    .membership
                    .as_ref()
                    .map(|m| {
                        let voters: std::collections::BTreeSet<_> = m.voter_ids().collect();
                        m.nodes()
                            .map(|(id, n)| pb::Member {
                                id: *id,
                                address: n.addr.clone(),
                                voter: voters.contains(id),
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                Ok(Response::new(pb::MembershipResponse {
                    header: self.header(resp.log_id.index),
                    members,
                }))
            }
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => {
                Err(not_leader(self.id, &f))
            }
            Err(RaftError::APIError(ClientWriteError::ChangeMembershipError(e))) => Err(
                Status::failed_precondition(format!("membership change refused: {e}")),
            ),
            Err(RaftError::Fatal(e)) => Err(Status::unavailable(format!(
                "node {} stopped: {e}",
                self.id
            ))),
        }
    }
}

/// A boxed stream fed by a task through a bounded channel.
fn async_stream<F, Fut>(f: F) -> WatchStream
where
    F: FnOnce(tokio::sync::mpsc::Sender<Result<pb::WatchEvent, Status>>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel(256);
    tokio::spawn(f(tx));
    Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))
}

impl std::fmt::Debug for KvService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KvService").finish_non_exhaustive()
    }
}
