//! The Rust client: follows leader hints, retries, and tags writes with request
//! ids so a retry never applies twice.
//!
//! # Retry rules
//! - `UNAVAILABLE` with a leader hint: go to the leader (by id when the client
//!   knows which endpoint is which node, else by address) and retry at once.
//! - `UNAVAILABLE` without a hint, or a transport failure: try the next
//!   endpoint after a short backoff (an election is usually in progress).
//! - `DEADLINE_EXCEEDED` and other "don't know" answers: the write may have
//!   been proposed. Retry with the *same* request id; the state machine answers
//!   a duplicate with the first application's response.
//! - Input errors (`INVALID_ARGUMENT`, `FAILED_PRECONDITION`, ...) return at once.
//!
//! When the overall deadline passes the error says whether any attempt may have
//! applied ([`ClientError::outcome_unknown`]); the chaos drills record those
//! operations as *unknown* in the history.

use crate::error::ClientError;
use crate::security::{Outgoing, Security};
use crate::{LEADER_ADDR_HEADER, LEADER_ID_HEADER, NodeId};
use proto::kv::v1 as pb;
use proto::kv::v1::kv_client::KvClient;
use std::collections::HashMap;
use std::sync::RwLock;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

/// Per-attempt and overall time limits.
#[derive(Clone, Copy, Debug)]
pub struct Timeouts {
    pub attempt: Duration,
    pub overall: Duration,
    pub backoff: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            attempt: Duration::from_secs(2),
            overall: Duration::from_secs(10),
            backoff: Duration::from_millis(25),
        }
    }
}

/// A KV cluster client. Cheap to share (`Arc`) between tasks: requests
/// multiplex over one HTTP/2 connection per endpoint.
#[derive(Debug)]
pub struct Client {
    endpoints: RwLock<Vec<(String, Stub)>>,
    /// Endpoint index of node id, when known (chaos drills go through proxies,
    /// so the leader's advertised address is not an endpoint).
    ids: RwLock<HashMap<NodeId, usize>>,
    preferred: AtomicUsize,
    client_id: u64,
    seq: AtomicU64,
    pub timeouts: Timeouts,
    /// TLS and the key every call carries ([`Security`]).
    wire: Wire,
}

/// How a stub reaches a node: TLS (or not) and what every call carries.
#[derive(Clone, Debug, Default)]
struct Wire {
    tls: Option<tonic::transport::ClientTlsConfig>,
    outgoing: Outgoing,
}

/// The client stub: every call carries the caller's trace context
/// (`traceparent`), so a request's trace continues on the leader, and the
/// API key when one is configured.
type Stub = KvClient<InterceptedService<Channel, Outgoing>>;

impl Wire {
    fn new(security: &Security) -> Result<Self, ClientError> {
        if security.token.is_some() && security.tls.is_none() {
            return Err(ClientError::Security {
                var: "MLSTACK_KV_TOKEN",
                reason: "a key is never sent in plaintext: set MLSTACK_KV_CA to the cluster CA"
                    .into(),
            });
        }
        let tls = match &security.tls {
            Some(t) => Some(t.config().map_err(|e| ClientError::Security {
                var: "MLSTACK_KV_CA",
                reason: e.to_string(),
            })?),
            None => None,
        };
        Ok(Self {
            tls,
            outgoing: Outgoing {
                authorization: security.authorization(),
            },
        })
    }

    fn stub(&self, endpoint: &str) -> Result<Stub, ClientError> {
        let ch = proto::server::channel_tls(endpoint, self.tls.as_ref()).map_err(|e| {
            ClientError::Endpoint {
                endpoint: endpoint.to_string(),
                reason: e.to_string(),
            }
        })?;
        Ok(KvClient::with_interceptor(ch, self.outgoing.clone())
            .max_decoding_message_size(64 << 20))
    }
}

enum Attempt<T> {
    Done(T),
    Fatal(ClientError),
    Retry {
        hint: bool,
        maybe_applied: bool,
        last: String,
    },
}

impl Client {
    /// A client over `endpoints` (`host:port`), any of the cluster's nodes,
    /// with the credentials the environment names ([`Security::from_env`]).
    pub fn new<S: AsRef<str>>(endpoints: &[S]) -> Result<Self, ClientError> {
        Self::with_security(endpoints, &Security::from_env()?)
    }

    /// A client with explicit credentials.
    pub fn with_security<S: AsRef<str>>(
        endpoints: &[S],
        security: &Security,
    ) -> Result<Self, ClientError> {
        if endpoints.is_empty() {
            return Err(ClientError::NoEndpoints);
        }
        let wire = Wire::new(security)?;
        let eps = endpoints
            .iter()
            .map(|e| Ok((e.as_ref().to_string(), wire.stub(e.as_ref())?)))
            .collect::<Result<Vec<_>, ClientError>>()?;
        Ok(Self {
            wire,
            endpoints: RwLock::new(eps),
            ids: RwLock::new(HashMap::new()),
            preferred: AtomicUsize::new(0),
            client_id: rand::random::<u64>() | 1,
            seq: AtomicU64::new(1),
            timeouts: Timeouts::default(),
        })
    }

    /// Says which node each endpoint reaches (same order as `endpoints`).
    pub fn with_node_ids(self, ids: &[NodeId]) -> Self {
        *self.ids.write().unwrap_or_else(|p| p.into_inner()) =
            ids.iter().enumerate().map(|(i, id)| (*id, i)).collect();
        self
    }

    pub fn with_timeouts(mut self, t: Timeouts) -> Self {
        self.timeouts = t;
        self
    }

    pub fn client_id(&self) -> u64 {
        self.client_id
    }

    /// A fresh request id for a write.
    pub fn next_request_id(&self) -> pb::RequestId {
        pb::RequestId {
            client_id: self.client_id,
            seq: self.seq.fetch_add(1, Ordering::Relaxed),
        }
    }

    fn endpoint(&self, idx: usize) -> (usize, String, Stub) {
        let eps = self.endpoints.read().unwrap_or_else(|p| p.into_inner());
        let i = idx % eps.len();
        (i, eps[i].0.clone(), eps[i].1.clone())
    }

    /// Points the client at the leader named in `status`'s metadata.
    fn follow_hint(&self, status: &tonic::Status) -> bool {
        let md = status.metadata();
        if let Some(id) = md
            .get(LEADER_ID_HEADER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<NodeId>().ok())
            && let Some(&i) = self.ids.read().unwrap_or_else(|p| p.into_inner()).get(&id)
        {
            self.preferred.store(i, Ordering::Relaxed);
            return true;
        }
        let Some(addr) = md.get(LEADER_ADDR_HEADER).and_then(|v| v.to_str().ok()) else {
            return false;
        };
        if !self
            .ids
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .is_empty()
        {
            // Endpoints are mapped by id and the id was unknown: don't dial the
            // raw address (it bypasses the drill's proxies).
            return false;
        }
        let mut eps = self.endpoints.write().unwrap_or_else(|p| p.into_inner());
        if let Some(i) = eps.iter().position(|(e, _)| e == addr) {
            self.preferred.store(i, Ordering::Relaxed);
            return true;
        }
        match self.wire.stub(addr) {
            Ok(c) => {
                eps.push((addr.to_string(), c));
                self.preferred.store(eps.len() - 1, Ordering::Relaxed);
                true
            }
            Err(_) => false,
        }
    }

    /// Runs `call` against the preferred endpoint until it succeeds, fails
    /// definitely, or the overall deadline passes.
    async fn retry<T, F, Fut>(
        &self,
        op: &'static str,
        write: bool,
        call: F,
    ) -> Result<T, ClientError>
    where
        F: Fn(Stub) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let start = Instant::now();
        let mut attempts = 0u32;
        let mut maybe_applied = false;
        loop {
            attempts += 1;
            let (idx, endpoint, client) = self.endpoint(self.preferred.load(Ordering::Relaxed));
            let outcome = match tokio::time::timeout(self.timeouts.attempt, call(client)).await {
                Ok(Ok(r)) => Attempt::Done(r.into_inner()),
                Err(_) => Attempt::Retry {
                    hint: false,
                    maybe_applied: write,
                    last: format!("{endpoint}: no answer within {:?}", self.timeouts.attempt),
                },
                Ok(Err(s)) => {
                    let last = format!("{endpoint}: {:?}: {}", s.code(), s.message());
                    match s.code() {
                        tonic::Code::Unavailable => {
                            let is_not_leader = s.message().contains("is not the leader");
                            Attempt::Retry {
                                hint: self.follow_hint(&s),
                                // "not the leader" is answered before proposing;
                                // a broken connection may have carried the write.
                                maybe_applied: write && !is_not_leader,
                                last,
                            }
                        }
                        tonic::Code::DeadlineExceeded
                        | tonic::Code::Cancelled
                        | tonic::Code::Unknown
                        | tonic::Code::Internal
                        | tonic::Code::Aborted => Attempt::Retry {
                            hint: false,
                            maybe_applied: write,
                            last,
                        },
                        code => Attempt::Fatal(ClientError::Status {
                            op,
                            code,
                            message: s.message().to_string(),
                        }),
                    }
                }
            };
            match outcome {
                Attempt::Done(t) => return Ok(t),
                Attempt::Fatal(e) => {
                    // A definite answer after an attempt that may have applied
                    // (e.g. an expired request id) is still "unknown".
                    if maybe_applied {
                        return Err(ClientError::Unavailable {
                            op,
                            attempts,
                            elapsed_ms: start.elapsed().as_millis() as u64,
                            last: e.to_string(),
                            maybe_applied,
                        });
                    }
                    return Err(e);
                }
                Attempt::Retry {
                    hint,
                    maybe_applied: m,
                    last,
                } => {
                    maybe_applied |= m;
                    if start.elapsed() >= self.timeouts.overall {
                        return Err(ClientError::Unavailable {
                            op,
                            attempts,
                            elapsed_ms: start.elapsed().as_millis() as u64,
                            last,
                            maybe_applied,
                        });
                    }
                    if !hint {
                        self.preferred.store(idx + 1, Ordering::Relaxed);
                        tokio::time::sleep(self.timeouts.backoff).await;
                    }
                }
            }
        }
    }

    pub async fn put(&self, key: &[u8], value: &[u8]) -> Result<pb::PutResponse, ClientError> {
        let req = pb::PutRequest {
            key: key.to_vec(),
            value: value.to_vec(),
            request_id: Some(self.next_request_id()),
            prev_kv: false,
        };
        self.retry("put", true, |mut c| {
            let req = req.clone();
            async move { c.put(req).await }
        })
        .await
    }

    pub async fn get(
        &self,
        key: &[u8],
        consistency: pb::ReadConsistency,
    ) -> Result<pb::GetResponse, ClientError> {
        let req = pb::GetRequest {
            key: key.to_vec(),
            consistency: consistency as i32,
        };
        self.retry("get", false, |mut c| {
            let req = req.clone();
            async move { c.get(req).await }
        })
        .await
    }

    pub async fn delete(&self, key: &[u8]) -> Result<pb::DeleteResponse, ClientError> {
        let req = pb::DeleteRequest {
            key: key.to_vec(),
            request_id: Some(self.next_request_id()),
        };
        self.retry("delete", true, |mut c| {
            let req = req.clone();
            async move { c.delete(req).await }
        })
        .await
    }

    pub async fn scan(&self, req: pb::ScanRequest) -> Result<pb::ScanResponse, ClientError> {
        self.retry("scan", false, |mut c| {
            let req = req.clone();
            async move { c.scan(req).await }
        })
        .await
    }

    /// Every key with `prefix`, page by page (each page one [`Client::scan`] of
    /// up to `page` keys, continuing at the previous page's `next_key`), so a
    /// caller never depends on the server's per-response limit.
    pub async fn scan_all(
        &self,
        prefix: &[u8],
        page: u32,
        consistency: pb::ReadConsistency,
    ) -> Result<Vec<pb::KeyValue>, ClientError> {
        let mut out = Vec::new();
        let mut start = Vec::new();
        loop {
            // With a prefix, `start` narrows the prefix's range (the server's
            // paging rule): the next page begins at the last page's `next_key`.
            let req = pb::ScanRequest {
                prefix: prefix.to_vec(),
                start: start.clone(),
                limit: page,
                consistency: consistency as i32,
                ..Default::default()
            };
            let r = self.scan(req).await?;
            out.extend(r.kvs);
            if !r.more || r.next_key.is_empty() {
                return Ok(out);
            }
            start = r.next_key;
        }
    }

    /// A transaction; a request id is filled in when absent.
    pub async fn txn(&self, mut req: pb::TxnRequest) -> Result<pb::TxnResponse, ClientError> {
        if req.request_id.is_none() {
            req.request_id = Some(self.next_request_id());
        }
        self.retry("txn", true, |mut c| {
            let req = req.clone();
            async move { c.txn(req).await }
        })
        .await
    }

    /// Compare-and-set on the value: writes `new` if the key currently holds
    /// `expected` (`None` = the key must not exist). Returns whether it did.
    pub async fn cas(
        &self,
        key: &[u8],
        expected: Option<&[u8]>,
        new: &[u8],
    ) -> Result<bool, ClientError> {
        let compare = match expected {
            Some(v) => pb::Compare {
                key: key.to_vec(),
                target: pb::compare::Target::Value as i32,
                op: pb::compare::Op::Equal as i32,
                number: 0,
                value: v.to_vec(),
            },
            None => pb::Compare {
                key: key.to_vec(),
                target: pb::compare::Target::Version as i32,
                op: pb::compare::Op::Equal as i32,
                number: 0,
                value: Vec::new(),
            },
        };
        let r = self
            .txn(pb::TxnRequest {
                compare: vec![compare],
                success: vec![pb::TxnOp {
                    op: Some(pb::txn_op::Op::Put(pb::PutRequest {
                        key: key.to_vec(),
                        value: new.to_vec(),
                        request_id: None,
                        prev_kv: false,
                    })),
                }],
                failure: vec![],
                request_id: None,
            })
            .await?;
        Ok(r.succeeded)
    }

    /// Status of the node behind endpoint `idx` (no retries, no redirects).
    pub async fn status_of(&self, idx: usize) -> Result<pb::StatusResponse, ClientError> {
        let (_, endpoint, mut c) = self.endpoint(idx);
        match tokio::time::timeout(self.timeouts.attempt, c.status(pb::StatusRequest {})).await {
            Ok(Ok(r)) => Ok(r.into_inner()),
            Ok(Err(s)) => Err(ClientError::Status {
                op: "status",
                code: s.code(),
                message: format!("{endpoint}: {}", s.message()),
            }),
            Err(_) => Err(ClientError::Status {
                op: "status",
                code: tonic::Code::DeadlineExceeded,
                message: format!("{endpoint}: no answer within {:?}", self.timeouts.attempt),
            }),
        }
    }

    pub fn endpoint_count(&self) -> usize {
        self.endpoints
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .len()
    }

    /// Finds the current leader by asking every endpoint; returns its status.
    pub async fn leader_status(&self) -> Result<pb::StatusResponse, ClientError> {
        let start = Instant::now();
        loop {
            for i in 0..self.endpoint_count() {
                if let Ok(s) = self.status_of(i).await
                    && s.leader_id != 0
                    && s.leader_id == s.node_id
                {
                    self.preferred.store(i, Ordering::Relaxed);
                    return Ok(s);
                }
            }
            if start.elapsed() > self.timeouts.overall {
                return Err(ClientError::Unavailable {
                    op: "status",
                    attempts: 1,
                    elapsed_ms: start.elapsed().as_millis() as u64,
                    last: "no endpoint reports itself leader".into(),
                    maybe_applied: false,
                });
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Admin: add a learner (via the leader).
    pub async fn add_learner(
        &self,
        id: NodeId,
        address: &str,
    ) -> Result<pb::MembershipResponse, ClientError> {
        let req = pb::AddLearnerRequest {
            id,
            address: address.to_string(),
        };
        self.retry("add-learner", false, |mut c| {
            let req = req.clone();
            async move { c.add_learner(req).await }
        })
        .await
    }

    /// Admin: set the voters (via the leader).
    pub async fn change_membership(
        &self,
        voters: &[NodeId],
    ) -> Result<pb::MembershipResponse, ClientError> {
        let req = pb::ChangeMembershipRequest {
            voters: voters.to_vec(),
        };
        self.retry("change-membership", false, |mut c| {
            let req = req.clone();
            async move { c.change_membership(req).await }
        })
        .await
    }

    /// Replays a raw put with a given request id (tests of deduplication).
    pub async fn put_with_id(
        &self,
        key: &[u8],
        value: &[u8],
        id: pb::RequestId,
    ) -> Result<pb::PutResponse, ClientError> {
        let req = pb::PutRequest {
            key: key.to_vec(),
            value: value.to_vec(),
            request_id: Some(id),
            prev_kv: true,
        };
        self.retry("put", true, |mut c| {
            let req = req.clone();
            async move { c.put(req).await }
        })
        .await
    }
}

/// The first key after every key that starts with `prefix` (etcd's
/// `GetPrefixRangeEnd`); empty (= the end of the key space) when no such key
/// exists (an empty prefix, or one of only `0xff` bytes).
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    Vec::new()
}

#[cfg(test)]
mod tests {
    use super::prefix_end;

    #[test]
    fn a_key_without_tls_is_refused_not_sent_in_plaintext() {
        let plaintext_key = crate::Security {
            tls: None,
            token: Some("sk-app-0123456789abcdefgh".into()),
        };
        let e = super::Client::with_security(&["127.0.0.1:1"], &plaintext_key)
            .expect_err("a key without TLS");
        assert!(e.to_string().contains("MLSTACK_KV_CA"), "{e}");
    }

    #[test]
    fn prefix_end_is_the_successor_of_every_key_with_the_prefix() {
        assert_eq!(prefix_end(b"ab"), b"ac".to_vec());
        assert_eq!(prefix_end(b"a\xff"), b"b".to_vec());
        assert_eq!(prefix_end(b"\xff\xff"), Vec::<u8>::new());
        assert_eq!(prefix_end(b""), Vec::<u8>::new());
        assert!(b"abzzz".as_slice() < prefix_end(b"ab").as_slice());
    }
}
