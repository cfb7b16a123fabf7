//! A local cluster of `mlstack kv serve` child processes, optionally with a
//! fault-injecting [`Proxy`] on every link: used by the chaos drills, the
//! benchmark and the cross-component tests.
//!
//! # Wiring with proxies
//! ```text
//!   client ──► C(i) ──► node i            one client proxy per node
//!   node i ──► P(i→j) ──► node j          one proxy per directed peer link
//! ```
//! Node *i* is started with `--route j=P(i→j)` for every peer *j*, so its
//! outgoing Raft traffic to *j* crosses that link's proxy while the membership
//! keeps the nodes' real addresses. Cutting P(i→j) and P(j→i) partitions the
//! pair; cutting every link of *i* plus C(i) isolates it.

use crate::NodeId;
use crate::error::Error;
use crate::proxy::Proxy;
use kvclient::{Client, Timeouts};
use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// How to start a cluster.
#[derive(Clone, Debug)]
pub struct ClusterSpec {
    pub nodes: u64,
    /// The `mlstack` binary (usually `std::env::current_exe()`).
    pub binary: PathBuf,
    /// Parent of the nodes' data directories and logs.
    pub dir: PathBuf,
    pub proxies: bool,
    /// Extra `kv serve` flags for every node.
    pub extra_args: Vec<String>,
}

/// A running local cluster. Dropping it kills every node.
#[derive(Debug)]
pub struct LocalCluster {
    pub spec: ClusterSpec,
    /// A unique cluster name: nodes of two local clusters that happen to be
    /// handed the same port refuse each other's Raft messages.
    pub name: String,
    pub addrs: BTreeMap<NodeId, SocketAddr>,
    peer_proxies: BTreeMap<(NodeId, NodeId), Proxy>,
    client_proxies: BTreeMap<NodeId, Proxy>,
    children: BTreeMap<NodeId, Child>,
    paused: BTreeSet<NodeId>,
}

/// Why a cluster start failed.
enum Started {
    /// A node process exited (most often: its port was taken).
    NodeExited(String),
    /// Every node runs and none became leader in time.
    NoLeader(String),
    Client(Error),
}

fn drill_err(reason: impl Into<String>) -> Error {
    Error::Drill {
        drill: "cluster".into(),
        reason: reason.into(),
    }
}

impl LocalCluster {
    /// Starts every node (node 1 initializes the cluster) and waits for a
    /// leader.
    ///
    /// The nodes' ports are picked by binding port 0 and closing the socket
    /// just before the node starts, so another process (a proxy, a node's
    /// metrics server, a parallel test) can take one in between; the node then
    /// exits with "address in use". A start in which a node exits is retried
    /// with fresh ports and empty data directories, up to three times; a start
    /// in which every node runs and no leader shows is not retried (that is a
    /// bug to see), and the error carries the tail of every node's log.
    pub async fn start(spec: ClusterSpec) -> Result<LocalCluster, Error> {
        if spec.nodes == 0 || spec.nodes > 9 {
            return Err(drill_err(format!(
                "--nodes {} (1..=9 supported)",
                spec.nodes
            )));
        }
        std::fs::create_dir_all(&spec.dir).map_err(|source| Error::Io {
            op: "create",
            path: spec.dir.clone(),
            source,
        })?;
        const ATTEMPTS: u32 = 3;
        for attempt in 1..=ATTEMPTS {
            let mut c = Self::start_once(spec.clone()).await?;
            match c.wait_started(Duration::from_secs(20)).await {
                Ok(_) => return Ok(c),
                Err(Started::NodeExited(why)) if attempt < ATTEMPTS => {
                    tracing::warn!(attempt, %why, "a node exited while the cluster started; retrying with fresh ports");
                    c.stop();
                    for id in c.ids() {
                        let _ = std::fs::remove_dir_all(c.spec.dir.join(format!("node-{id}")));
                    }
                }
                Err(Started::NodeExited(why) | Started::NoLeader(why)) => {
                    return Err(drill_err(why));
                }
                Err(Started::Client(e)) => return Err(e),
            }
        }
        unreachable!("the last attempt returns")
    }

    /// Picks ports, starts the proxies and spawns every node.
    async fn start_once(spec: ClusterSpec) -> Result<LocalCluster, Error> {
        let io = |source| Error::Io {
            op: "bind a free port",
            path: PathBuf::new(),
            source,
        };
        // Held until the proxies are bound, so no proxy is handed a node's
        // port.
        let mut held = Vec::new();
        let mut addrs = BTreeMap::new();
        for id in 1..=spec.nodes {
            let l = std::net::TcpListener::bind("127.0.0.1:0").map_err(io)?;
            addrs.insert(id, l.local_addr().map_err(io)?);
            held.push(l);
        }
        let mut peer_proxies = BTreeMap::new();
        let mut client_proxies = BTreeMap::new();
        if spec.proxies {
            let any: SocketAddr = ([127, 0, 0, 1], 0).into();
            for (&to, addr) in &addrs {
                client_proxies.insert(to, Proxy::start(any, addr.to_string()).await.map_err(io)?);
                for &from in addrs.keys().filter(|&&f| f != to) {
                    peer_proxies.insert(
                        (from, to),
                        Proxy::start(any, addr.to_string()).await.map_err(io)?,
                    );
                }
            }
        }
        drop(held);
        let mut c = LocalCluster {
            name: format!("local-{}-{:08x}", std::process::id(), rand::random::<u32>()),
            spec,
            addrs,
            peer_proxies,
            client_proxies,
            children: BTreeMap::new(),
            paused: BTreeSet::new(),
        };
        for id in 1..=c.spec.nodes {
            c.spawn(id)?;
        }
        Ok(c)
    }

    /// Waits for a leader while watching that every node is still running.
    async fn wait_started(&mut self, timeout: Duration) -> Result<NodeId, Started> {
        let direct = self.direct_client().map_err(Started::Client)?;
        let t0 = std::time::Instant::now();
        loop {
            for (&id, child) in self.children.iter_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    return Err(Started::NodeExited(format!(
                        "node {id} exited ({status}) while the cluster started; {}",
                        self.log_tails()
                    )));
                }
            }
            if let Some(l) = crate::target::leader_of(&direct, &self.ids(), |_| false).await {
                return Ok(l);
            }
            if t0.elapsed() > timeout {
                return Err(Started::NoLeader(format!(
                    "no leader within {timeout:?}; {}",
                    self.log_tails()
                )));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The last lines of every node's log, and where the logs are.
    fn log_tails(&self) -> String {
        let mut out = format!("node logs are in {}", self.spec.dir.display());
        for id in self.ids() {
            let text = std::fs::read_to_string(self.log_path(id)).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            let tail = &lines[lines.len().saturating_sub(8)..];
            out.push_str(&format!(
                "\n--- node-{id}.log (last {} lines)\n{}",
                tail.len(),
                tail.join("\n")
            ));
        }
        out
    }

    pub fn ids(&self) -> Vec<NodeId> {
        self.addrs.keys().copied().collect()
    }

    fn log_path(&self, id: NodeId) -> PathBuf {
        self.spec.dir.join(format!("node-{id}.log"))
    }

    /// (Re)starts node `id` as a child process.
    pub fn spawn(&mut self, id: NodeId) -> Result<(), Error> {
        let peers = self
            .addrs
            .iter()
            .map(|(i, a)| format!("{i}={a}"))
            .collect::<Vec<_>>()
            .join(",");
        let mut cmd = Command::new(&self.spec.binary);
        cmd.args(["kv", "serve", "--id", &id.to_string()])
            .args(["--cluster", &self.name])
            .args(["--listen", &self.addrs[&id].to_string()])
            .arg("--data-dir")
            .arg(self.spec.dir.join(format!("node-{id}")))
            .args(["--peers", &peers])
            .args(["--metrics-listen", "127.0.0.1:0"]);
        if id == 1 {
            cmd.arg("--init");
        }
        let routes: Vec<String> = self
            .peer_proxies
            .iter()
            .filter(|((from, _), _)| *from == id)
            .map(|((_, to), p)| format!("{to}={}", p.listen))
            .collect();
        if !routes.is_empty() {
            cmd.args(["--route", &routes.join(",")]);
        }
        cmd.args(&self.spec.extra_args);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path(id))
            .map_err(|source| Error::Io {
                op: "open node log",
                path: self.log_path(id),
                source,
            })?;
        let log2 = log.try_clone().map_err(|source| Error::Io {
            op: "open node log",
            path: self.log_path(id),
            source,
        })?;
        cmd.stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log2));
        if std::env::var_os("RUST_LOG").is_none() {
            cmd.env("RUST_LOG", "warn,consensus=info");
        }
        let child = cmd.spawn().map_err(|source| Error::Io {
            op: "spawn",
            path: self.spec.binary.clone(),
            source,
        })?;
        self.children.insert(id, child);
        Ok(())
    }

    pub fn is_running(&self, id: NodeId) -> bool {
        self.children.contains_key(&id)
    }

    /// SIGKILL: no shutdown path runs and the process's memory is lost, but
    /// the kernel's page cache survives, so data written and not yet fsynced
    /// is still read back after the restart. This tests crash recovery of the
    /// process, not durability against power loss.
    pub fn kill(&mut self, id: NodeId) {
        if let Some(mut c) = self.children.remove(&id) {
            if self.paused.remove(&id) {
                signal(&c, libc::SIGCONT);
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGSTOP: the process freezes with its sockets open (a GC pause, a VM
    /// stall): peers see silence, not a closed connection.
    pub fn pause(&mut self, id: NodeId) {
        if let Some(c) = self.children.get(&id)
            && self.paused.insert(id)
        {
            signal(c, libc::SIGSTOP);
        }
    }

    pub fn resume(&mut self, id: NodeId) {
        if let Some(c) = self.children.get(&id)
            && self.paused.remove(&id)
        {
            signal(c, libc::SIGCONT);
        }
    }

    /// Cuts every link between `side` and the other nodes, and the client
    /// links of `side` when `clients` is set.
    pub fn partition(&self, side: &[NodeId], clients: bool) {
        for ((from, to), p) in &self.peer_proxies {
            if side.contains(from) != side.contains(to) {
                p.set_cut(true);
            }
        }
        if clients {
            for id in side {
                if let Some(p) = self.client_proxies.get(id) {
                    p.set_cut(true);
                }
            }
        }
    }

    /// Delay and jitter on every link (peer and client).
    pub fn set_delay(&self, delay: Duration, jitter: Duration) {
        for p in self
            .peer_proxies
            .values()
            .chain(self.client_proxies.values())
        {
            p.set_delay(delay, jitter);
        }
    }

    /// Clears every network fault.
    pub fn heal_network(&self) {
        for p in self
            .peer_proxies
            .values()
            .chain(self.client_proxies.values())
        {
            p.heal();
        }
    }

    /// Heals the network, resumes paused nodes and restarts dead ones.
    pub fn heal_all(&mut self) -> Result<(), Error> {
        self.heal_network();
        for id in self.paused.clone() {
            self.resume(id);
        }
        for id in self.ids() {
            if !self.is_running(id) {
                self.spawn(id)?;
            }
        }
        Ok(())
    }

    /// Where clients connect (the client proxies when there are proxies).
    pub fn client_endpoints(&self) -> Vec<String> {
        self.addrs
            .iter()
            .map(|(id, a)| match self.client_proxies.get(id) {
                Some(p) => p.listen.to_string(),
                None => a.to_string(),
            })
            .collect()
    }

    /// A client that knows which endpoint is which node.
    pub fn client(&self, timeouts: Timeouts) -> Result<Client, Error> {
        // The local cluster speaks plaintext whatever MLSTACK_KV_* says.
        Ok(
            Client::with_security(&self.client_endpoints(), &kvclient::Security::default())?
                .with_node_ids(&self.ids())
                .with_timeouts(timeouts),
        )
    }

    /// A client that talks to the nodes directly (bypassing proxies).
    fn direct_client(&self) -> Result<Client, Error> {
        let eps: Vec<String> = self.addrs.values().map(|a| a.to_string()).collect();
        Ok(Client::with_security(&eps, &kvclient::Security::default())?
            .with_node_ids(&self.ids())
            .with_timeouts(Timeouts {
                attempt: Duration::from_millis(500),
                overall: Duration::from_secs(2),
                backoff: Duration::from_millis(20),
            }))
    }

    /// The node reporting itself leader with the highest term, asked
    /// directly (not through the proxies).
    pub async fn leader(&self) -> Option<NodeId> {
        let c = self.direct_client().ok()?;
        crate::target::leader_of(&c, &self.ids(), |id| {
            !self.is_running(id) || self.paused.contains(&id)
        })
        .await
    }

    pub async fn wait_leader(&self, timeout: Duration) -> Result<NodeId, Error> {
        let c = self.direct_client()?;
        crate::target::wait_leader_of(
            &c,
            &self.ids(),
            |id| !self.is_running(id) || self.paused.contains(&id),
            timeout,
            &format!("node logs are in {}", self.spec.dir.display()),
        )
        .await
    }

    /// Waits until every node reports the same applied index and state hash.
    pub async fn wait_converged(&self, timeout: Duration) -> Result<(u64, String), Error> {
        let c = self.direct_client()?;
        crate::target::wait_converged_of(&c, &self.ids(), timeout).await
    }

    /// Kills every node.
    pub fn stop(&mut self) {
        for id in self.ids() {
            self.kill(id);
        }
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        self.stop();
    }
}

impl crate::target::Target for LocalCluster {
    fn ids(&self) -> Vec<NodeId> {
        LocalCluster::ids(self)
    }
    fn kill(&mut self, id: NodeId) -> Result<(), Error> {
        LocalCluster::kill(self, id);
        Ok(())
    }
    fn restart(&mut self, id: NodeId) -> Result<(), Error> {
        self.spawn(id)
    }
    fn pause(&mut self, id: NodeId) -> Result<(), Error> {
        LocalCluster::pause(self, id);
        Ok(())
    }
    fn resume(&mut self, id: NodeId) -> Result<(), Error> {
        LocalCluster::resume(self, id);
        Ok(())
    }
    fn partition(&mut self, side: &[NodeId], clients: bool) -> Result<(), Error> {
        LocalCluster::partition(self, side, clients);
        Ok(())
    }
    /// 5 to 40 ms of delay, half of it as jitter, on every proxy.
    fn degrade(&mut self, severity: f64) -> Result<crate::target::Degradation, Error> {
        let delay = Duration::from_millis(5 + (35.0 * severity.clamp(0.0, 1.0)) as u64);
        let jitter = delay / 2;
        self.set_delay(delay, jitter);
        Ok(crate::target::Degradation::Delay { delay, jitter })
    }
    fn heal_network(&mut self) -> Result<(), Error> {
        LocalCluster::heal_network(self);
        Ok(())
    }
    fn heal_all(&mut self) -> Result<(), Error> {
        LocalCluster::heal_all(self)
    }
    fn client(&self, timeouts: Timeouts) -> Result<Client, Error> {
        LocalCluster::client(self, timeouts)
    }
    fn wait_leader(
        &self,
        timeout: Duration,
    ) -> impl std::future::Future<Output = Result<NodeId, Error>> + Send {
        LocalCluster::wait_leader(self, timeout)
    }
    fn wait_converged(
        &self,
        timeout: Duration,
    ) -> impl std::future::Future<Output = Result<(u64, String), Error>> + Send {
        LocalCluster::wait_converged(self, timeout)
    }
    fn stop(&mut self) {
        LocalCluster::stop(self);
    }
    fn describe(&self) -> String {
        self.spec.dir.display().to_string()
    }
}

fn signal(c: &Child, sig: libc::c_int) {
    // SAFETY: kill(2) with a pid we spawned and still own (not yet waited).
    unsafe {
        libc::kill(c.id() as libc::pid_t, sig);
    }
}
