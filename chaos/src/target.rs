//! What a drill needs from the cluster under test: a way to hurt each node
//! and the network, to heal them, and to ask who leads. Two clusters provide
//! it: [`crate::cluster::LocalCluster`] (child processes behind TCP proxies)
//! and [`crate::docker::DockerCluster`] (the compose stack's containers,
//! faults made with `docker` and `iptables`, as Jepsen does against etcd).
//! The drill, its workload, the history and the checker are the same for
//! both ([`crate::drills::run_on`]).

use std::future::Future;
use std::time::Duration;

use kvclient::{Client, Timeouts};

use crate::NodeId;
use crate::error::Error;

/// A degraded network, as applied: what the drill's report calls it.
#[derive(Clone, Copy, Debug)]
pub enum Degradation {
    /// Delay (with jitter) on every link.
    Delay { delay: Duration, jitter: Duration },
    /// Random loss of this fraction of packets on every peer and client link.
    Loss { probability: f64 },
}

impl Degradation {
    pub fn kind(self) -> &'static str {
        match self {
            Degradation::Delay { .. } => "slow-network",
            Degradation::Loss { .. } => "lossy-network",
        }
    }
}

pub trait Target {
    /// The node ids, ascending.
    fn ids(&self) -> Vec<NodeId>;
    /// Kills node `id` without warning (SIGKILL).
    fn kill(&mut self, id: NodeId) -> Result<(), Error>;
    /// Starts node `id` again on its data.
    fn restart(&mut self, id: NodeId) -> Result<(), Error>;
    /// Freezes node `id` with its connections open.
    fn pause(&mut self, id: NodeId) -> Result<(), Error>;
    fn resume(&mut self, id: NodeId) -> Result<(), Error>;
    /// Cuts every link between `side` and the other nodes, and the clients'
    /// links to `side` when `clients` is set.
    fn partition(&mut self, side: &[NodeId], clients: bool) -> Result<(), Error>;
    /// Degrades every link; `severity` in 0..1 picks how badly.
    fn degrade(&mut self, severity: f64) -> Result<Degradation, Error>;
    /// Clears every network fault.
    fn heal_network(&mut self) -> Result<(), Error>;
    /// Heals the network, resumes paused nodes and restarts dead ones.
    fn heal_all(&mut self) -> Result<(), Error>;
    /// A client that knows which endpoint is which node.
    fn client(&self, timeouts: Timeouts) -> Result<Client, Error>;
    /// The node that reports itself leader with the highest term.
    fn wait_leader(&self, timeout: Duration) -> impl Future<Output = Result<NodeId, Error>> + Send;
    /// Every node at the same applied index and state hash.
    fn wait_converged(
        &self,
        timeout: Duration,
    ) -> impl Future<Output = Result<(u64, String), Error>> + Send;
    /// Ends the drill's hold on the cluster (a local cluster is killed; a
    /// compose stack is left running, healed).
    fn stop(&mut self);
    /// Where to look after a failure (node logs, data).
    fn describe(&self) -> String;
}

/// The node reporting itself leader with the highest term, asking each node
/// `ids[i]` through endpoint `i` of `direct` (a client that bypasses the
/// faults); nodes for which `skip` holds (dead, frozen) are not asked.
pub(crate) async fn leader_of(
    direct: &Client,
    ids: &[NodeId],
    skip: impl Fn(NodeId) -> bool,
) -> Option<NodeId> {
    let mut best: Option<(u64, NodeId)> = None;
    for (i, &id) in ids.iter().enumerate() {
        if skip(id) {
            continue;
        }
        if let Ok(s) = direct.status_of(i).await
            && s.leader_id == s.node_id
            && best.is_none_or(|(t, _)| s.term > t)
        {
            best = Some((s.term, id));
        }
    }
    best.map(|(_, id)| id)
}

/// Polls [`leader_of`] until a leader shows or `timeout` passes; `where_`
/// says where to look when none does.
pub(crate) async fn wait_leader_of(
    direct: &Client,
    ids: &[NodeId],
    skip: impl Fn(NodeId) -> bool,
    timeout: Duration,
    where_: &str,
) -> Result<NodeId, Error> {
    let t0 = std::time::Instant::now();
    loop {
        if let Some(l) = leader_of(direct, ids, &skip).await {
            return Ok(l);
        }
        if t0.elapsed() > timeout {
            return Err(Error::Drill {
                drill: "cluster".into(),
                reason: format!("no leader within {timeout:?}; {where_}"),
            });
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until every node reports the same applied index and state hash.
pub(crate) async fn wait_converged_of(
    direct: &Client,
    ids: &[NodeId],
    timeout: Duration,
) -> Result<(u64, String), Error> {
    let t0 = std::time::Instant::now();
    let mut last = String::new();
    loop {
        let mut seen = std::collections::BTreeMap::new();
        for (i, &id) in ids.iter().enumerate() {
            match direct.status_of(i).await {
                Ok(s) => {
                    seen.insert(id, (s.applied_index, s.state_hash));
                }
                Err(e) => last = format!("node {id}: {e}"),
            }
        }
        if seen.len() == ids.len() {
            let first = seen.values().next().cloned().unwrap_or_default();
            if seen.values().all(|v| *v == first) {
                return Ok(first);
            }
            last = format!("{seen:?}");
        }
        if t0.elapsed() > timeout {
            return Err(Error::Drill {
                drill: "cluster".into(),
                reason: format!("nodes did not converge within {timeout:?}: {last}"),
            });
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
