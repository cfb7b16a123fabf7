//! etcd as the peer of `mlstack kv bench`: a cluster of Debian's `etcd`
//! (`etcd-server`, 3.4.23) processes on loopback, driven over etcd's own gRPC
//! API (`etcdserverpb.KV`, compiled from etcd's `.proto` files in
//! `proto/etcd/` by `build.rs`) by the same load generator as mlstack.
//!
//! Settings, beside mlstack's (`kv.rs`):
//!
//! | setting | mlstack | etcd |
//! |---|---|---|
//! | durability | log fsynced per append (group commit) | WAL fsynced per Raft `Ready` (group commit) |
//! | election timeout | random in [150, 300) ms | `--election-timeout=150` (random in [150, 300) ms) |
//! | heartbeat | 50 ms | `--heartbeat-interval=30` (etcd refuses an election timeout under 5 heartbeats) |
//! | puts, linearizable gets | sent to the leader | sent to the leader (a follower would forward them) |
//! | serializable gets | spread over every node | spread over every node (`serializable: true`) |
//!
//! Everything else is etcd's default (snapshot count, bbolt backend, batch
//! interval): what a user who installs the package runs.

use chaos::Error;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tonic::transport::{Channel, Endpoint};

/// etcd's v3 API, generated from `proto/etcd/` (client code only).
pub mod api {
    pub mod mvccpb {
        #![allow(missing_docs, clippy::all, missing_debug_implementations)]
        tonic::include_proto!("mvccpb");
    }
    pub mod authpb {
        #![allow(missing_docs, clippy::all, missing_debug_implementations)]
        tonic::include_proto!("authpb");
    }
    pub mod etcdserverpb {
        #![allow(missing_docs, clippy::all, missing_debug_implementations)]
        tonic::include_proto!("etcdserverpb");
    }
}

use api::etcdserverpb::{
    PutRequest, RangeRequest, StatusRequest, kv_client::KvClient,
    maintenance_client::MaintenanceClient,
};

/// etcd's heartbeat and election timeout, in ms (see the module's table).
pub const HEARTBEAT_MS: u64 = 30;
pub const ELECTION_TIMEOUT_MS: u64 = 150;

fn err(reason: impl Into<String>) -> Error {
    Error::Drill {
        drill: "etcd".into(),
        reason: reason.into(),
    }
}

/// `etcd` on `PATH` (the CLI's `--etcd-bin`, which also reads
/// `MLSTACK_ETCD_BIN`, names another).
pub fn find_binary() -> Result<PathBuf, Error> {
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|d| d.join("etcd"))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            err(
                "no `etcd` on PATH: install Debian's etcd-server (apt-get install etcd-server), \
                 pass --etcd-bin (MLSTACK_ETCD_BIN), or run with --systems mlstack",
            )
        })
}

/// `etcd --version`'s first line (`etcd Version: 3.4.23`).
pub fn version(binary: &Path) -> Result<String, Error> {
    let out = Command::new(binary)
        .arg("--version")
        .output()
        .map_err(|e| err(format!("running {} --version: {e}", binary.display())))?;
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .next()
        .unwrap_or("")
        .trim()
        .to_string())
}

/// One etcd member: its name, ports and process.
#[derive(Debug)]
struct Member {
    name: String,
    client_port: u16,
    peer_port: u16,
    child: Option<Child>,
}

/// A running etcd cluster. Dropping it kills every member.
#[derive(Debug)]
pub struct EtcdCluster {
    binary: PathBuf,
    dir: PathBuf,
    members: Vec<Member>,
}

impl EtcdCluster {
    /// Starts `nodes` members under `dir` and waits for a leader. A start in
    /// which a member exits (most often: a port taken between picking it and
    /// etcd binding it) is retried with fresh ports and empty data, up to
    /// three times.
    pub async fn start(binary: &Path, dir: &Path, nodes: usize) -> Result<Self, Error> {
        let mut last = String::new();
        for attempt in 0..3 {
            let adir = dir.join(format!("etcd-{attempt}"));
            let mut c = Self::spawn_all(binary, &adir, nodes)?;
            match c.wait_ready(Duration::from_secs(30)).await {
                Ok(()) => return Ok(c),
                Err(why) => {
                    last = why;
                    c.stop();
                }
            }
        }
        Err(err(format!("cluster did not start in 3 attempts: {last}")))
    }

    fn spawn_all(binary: &Path, dir: &Path, nodes: usize) -> Result<Self, Error> {
        std::fs::create_dir_all(dir)
            .map_err(|e| err(format!("creating {}: {e}", dir.display())))?;
        // Every port is held until all are picked, so no two members (client
        // and peer ports of three members) are handed the same one.
        let held: Vec<TcpListener> = (0..2 * nodes)
            .map(|_| TcpListener::bind("127.0.0.1:0"))
            .collect::<Result<_, _>>()
            .map_err(|e| err(format!("binding a free port: {e}")))?;
        let ports: Vec<u16> = held
            .iter()
            .map(|l| l.local_addr().map(|a| a.port()))
            .collect::<Result<_, _>>()
            .map_err(|e| err(format!("reading a bound port: {e}")))?;
        drop(held);
        let members = (0..nodes)
            .map(|i| Member {
                name: format!("n{}", i + 1),
                client_port: ports[2 * i],
                peer_port: ports[2 * i + 1],
                child: None,
            })
            .collect();
        let mut c = Self {
            binary: binary.to_path_buf(),
            dir: dir.to_path_buf(),
            members,
        };
        for i in 0..nodes {
            c.spawn(i)?;
        }
        Ok(c)
    }

    fn initial_cluster(&self) -> String {
        self.members
            .iter()
            .map(|m| format!("{}=http://127.0.0.1:{}", m.name, m.peer_port))
            .collect::<Vec<_>>()
            .join(",")
    }

    fn log_path(&self, i: usize) -> PathBuf {
        self.dir.join(format!("{}.log", self.members[i].name))
    }

    /// (Re)starts member `i`. On a restart etcd finds its data directory and
    /// ignores the `--initial-*` flags, rejoining as the same member.
    pub fn spawn(&mut self, i: usize) -> Result<(), Error> {
        let initial_cluster = self.initial_cluster();
        let m = &self.members[i];
        let client = format!("http://127.0.0.1:{}", m.client_port);
        let peer = format!("http://127.0.0.1:{}", m.peer_port);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path(i))
            .map_err(|e| err(format!("opening {}: {e}", self.log_path(i).display())))?;
        let log2 = log
            .try_clone()
            .map_err(|e| err(format!("opening {}: {e}", self.log_path(i).display())))?;
        let child = Command::new(&self.binary)
            .args(["--name", &m.name])
            .arg("--data-dir")
            .arg(self.dir.join(&m.name))
            .args(["--listen-client-urls", &client])
            .args(["--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer])
            .args(["--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &initial_cluster])
            .args(["--initial-cluster-state", "new"])
            .args(["--initial-cluster-token", "mlstack-bench"])
            .args(["--heartbeat-interval", &HEARTBEAT_MS.to_string()])
            .args(["--election-timeout", &ELECTION_TIMEOUT_MS.to_string()])
            .args(["--logger", "zap", "--log-level", "warn"])
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log2))
            .spawn()
            .map_err(|e| err(format!("spawning {}: {e}", self.binary.display())))?;
        self.members[i].child = Some(child);
        Ok(())
    }

    /// Each member's client URL, in member order.
    pub fn client_endpoints(&self) -> Vec<String> {
        self.members
            .iter()
            .map(|m| format!("http://127.0.0.1:{}", m.client_port))
            .collect()
    }

    /// Waits until every member runs and they agree on a leader; the error
    /// carries each member's log tail.
    async fn wait_ready(&mut self, timeout: Duration) -> Result<(), String> {
        let t0 = Instant::now();
        loop {
            for i in 0..self.members.len() {
                if let Some(c) = self.members[i].child.as_mut()
                    && let Ok(Some(status)) = c.try_wait()
                {
                    return Err(format!(
                        "member {} exited ({status}); {}",
                        self.members[i].name,
                        self.log_tails()
                    ));
                }
            }
            if self.converged().await.is_some() {
                return Ok(());
            }
            if t0.elapsed() > timeout {
                return Err(format!(
                    "no leader within {timeout:?}; {}",
                    self.log_tails()
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn log_tails(&self) -> String {
        let mut out = format!("etcd logs are in {}", self.dir.display());
        for (i, m) in self.members.iter().enumerate() {
            let text = std::fs::read_to_string(self.log_path(i)).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            let tail = &lines[lines.len().saturating_sub(6)..];
            out.push_str(&format!("\n--- {}.log\n{}", m.name, tail.join("\n")));
        }
        out
    }

    /// The member index of the leader, when every running member answers
    /// `Maintenance.Status` and they name the same leader.
    async fn converged(&self) -> Option<usize> {
        let mut leader = None;
        let mut leader_index = None;
        for (i, m) in self.members.iter().enumerate() {
            m.child.as_ref()?;
            let ep = format!("http://127.0.0.1:{}", m.client_port);
            let s = status(&ep).await.ok()?;
            if s.leader == 0 || leader.is_some_and(|l| l != s.leader) {
                return None;
            }
            leader = Some(s.leader);
            if s.header.as_ref().map(|h| h.member_id) == Some(s.leader) {
                leader_index = Some(i);
            }
        }
        leader_index
    }

    /// Waits until the running members agree on a leader; returns its index.
    pub async fn wait_converged(&self, timeout: Duration) -> Result<usize, Error> {
        let t0 = Instant::now();
        loop {
            if let Some(i) = self.converged().await {
                return Ok(i);
            }
            if t0.elapsed() > timeout {
                return Err(err(format!(
                    "no agreed leader within {timeout:?}; {}",
                    self.log_tails()
                )));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// SIGKILL member `i` (no chance to flush anything).
    pub fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.members[i].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Kills every member.
    pub fn stop(&mut self) {
        for i in 0..self.members.len() {
            self.kill(i);
        }
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A lazily connected channel to one etcd client URL (one HTTP/2
/// connection; the load generator shares it among up to 16 tasks, as it does
/// mlstack's).
pub fn channel(endpoint: &str, timeout: Duration) -> Result<Channel, Error> {
    Ok(Endpoint::from_shared(endpoint.to_string())
        .map_err(|e| err(format!("endpoint {endpoint}: {e}")))?
        .connect_timeout(timeout)
        .timeout(timeout)
        .connect_lazy())
}

async fn status(endpoint: &str) -> Result<api::etcdserverpb::StatusResponse, Error> {
    let ch = channel(endpoint, Duration::from_millis(500))?;
    MaintenanceClient::new(ch)
        .status(StatusRequest {})
        .await
        .map(|r| r.into_inner())
        .map_err(|s| err(format!("status of {endpoint}: {s}")))
}

/// One etcd KV connection, as the load generator uses it.
#[derive(Clone, Debug)]
pub struct Kv {
    client: KvClient<Channel>,
}

impl Kv {
    pub fn new(endpoint: &str, timeout: Duration) -> Result<Self, Error> {
        Ok(Self {
            client: KvClient::new(channel(endpoint, timeout)?),
        })
    }

    pub async fn put(&self, key: &[u8], value: &[u8]) -> Result<(), tonic::Status> {
        // tonic clients take `&mut self`; a clone shares the channel.
        let mut c = self.client.clone();
        c.put(PutRequest {
            key: key.to_vec(),
            value: value.to_vec(),
            ..Default::default()
        })
        .await
        .map(|_| ())
    }

    /// A point read; whether the key was found. `serializable` answers from
    /// the member's own state (no read-index round), like mlstack's
    /// `ReadConsistency::Serializable`.
    pub async fn get(&self, key: &[u8], serializable: bool) -> Result<bool, tonic::Status> {
        let mut c = self.client.clone();
        c.range(RangeRequest {
            key: key.to_vec(),
            serializable,
            ..Default::default()
        })
        .await
        .map(|r| !r.into_inner().kvs.is_empty())
    }
}
