//! The compose stack's KV cluster as a drill target: faults at the container
//! level, made from the host the way Jepsen makes them against etcd.
//!
//! | fault | how |
//! |---|---|
//! | kill | `docker kill` (SIGKILL), then `docker start` on the same named volume |
//! | pause | `docker pause`: the cgroup freezer; the node keeps its TCP connections |
//! | partition | `iptables` DROP rules inside the node's network namespace, entered from the host with `nsenter -t <pid> -n` (the images need no extra privileges or tools) |
//! | lossy network | iptables' `statistic` match: a random fraction of packets dropped (this kernel has no `netem` qdisc for delay) |
//!
//! Every rule lives in one chain, `MLSTACK_CHAOS`, jumped to from `INPUT` and
//! `OUTPUT`; healing flushes it. Loopback traffic is never touched (the
//! containers' health checks use it).
//!
//! The drill's clients run on the host and reach each node at its container
//! address on the compose network (`<ip>:7000+id`), mapped by node id, so a
//! leader hint naming `kv2:7002` (a name only the containers resolve) is
//! followed by id. A client partition drops the host's traffic (the
//! network's gateway address) to the node's client port.

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;
use std::time::Duration;

use kvclient::{Client, Timeouts};

use crate::NodeId;
use crate::error::Error;
use crate::target::{Degradation, Target};

const CHAIN: &str = "MLSTACK_CHAOS";

/// Which compose stack, and how its KV services are named.
#[derive(Clone, Debug)]
pub struct DockerSpec {
    /// The compose project (`docker-compose -p NAME`, by default the
    /// directory's name).
    pub project: String,
    pub nodes: u64,
    /// Services `kv1`..`kvN`, node *i* listening on `port_base + i`.
    pub service_prefix: String,
    pub port_base: u16,
}

/// A running compose KV cluster under a drill.
#[derive(Debug)]
pub struct DockerCluster {
    spec: DockerSpec,
    /// Container id per node.
    containers: BTreeMap<NodeId, String>,
    /// Address per node (fixed at connect: a restarted container keeps its
    /// address on the compose network while no other container takes it).
    ips: BTreeMap<NodeId, String>,
    gateway: String,
    killed: BTreeSet<NodeId>,
    paused: BTreeSet<NodeId>,
}

fn err(reason: impl Into<String>) -> Error {
    Error::Drill {
        drill: "docker".into(),
        reason: reason.into(),
    }
}

/// Runs a command to completion; its stdout, or an error naming it and its stderr.
fn run(cmd: &mut Command) -> Result<String, Error> {
    let out = cmd.output().map_err(|source| Error::Io {
        op: "run",
        path: std::path::PathBuf::from(format!("{:?}", cmd.get_program())),
        source,
    })?;
    if !out.status.success() {
        return Err(err(format!(
            "{cmd:?} exited with {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn docker(args: &[&str]) -> Result<String, Error> {
    run(Command::new("docker").args(args))
}

impl DockerCluster {
    /// Finds the stack's KV containers (running or not) by their compose labels.
    pub fn connect(spec: DockerSpec) -> Result<Self, Error> {
        if !(3..=9).contains(&spec.nodes) {
            return Err(err(format!("--nodes {}: 3..=9 supported", spec.nodes)));
        }
        let mut containers = BTreeMap::new();
        for id in 1..=spec.nodes {
            let service = format!("{}{id}", spec.service_prefix);
            let found = docker(&[
                "ps",
                "-a",
                "-q",
                "--filter",
                &format!("label=com.docker.compose.project={}", spec.project),
                "--filter",
                &format!("label=com.docker.compose.service={service}"),
                // Not a one-off `docker-compose run kvN` container.
                "--filter",
                "label=com.docker.compose.oneoff=False",
            ])?;
            let c = found.lines().next().unwrap_or("").to_string();
            if c.is_empty() {
                return Err(err(format!(
                    "no container for service {service} in compose project {:?} (is the stack up? `docker-compose -p {} ps`)",
                    spec.project, spec.project
                )));
            }
            containers.insert(id, c);
        }
        let mut c = Self {
            spec,
            containers,
            ips: BTreeMap::new(),
            gateway: String::new(),
            killed: BTreeSet::new(),
            paused: BTreeSet::new(),
        };
        for id in c.ids() {
            // A node left stopped or frozen by an interrupted drill comes back first.
            match c.inspect(id, "{{.State.Status}}")?.as_str() {
                "paused" => {
                    docker(&["unpause", &c.containers[&id]])?;
                }
                "exited" | "created" => {
                    docker(&["start", &c.containers[&id]])?;
                }
                _ => {}
            }
            let ip = c.inspect(
                id,
                "{{range .NetworkSettings.Networks}}{{.IPAddress}} {{end}}",
            )?;
            let ip = ip.split_whitespace().next().unwrap_or("").to_string();
            if ip.is_empty() {
                return Err(err(format!("node {id} has no address on a network")));
            }
            c.ips.insert(id, ip);
            c.gateway = c
                .inspect(
                    id,
                    "{{range .NetworkSettings.Networks}}{{.Gateway}} {{end}}",
                )?
                .split_whitespace()
                .next()
                .unwrap_or("")
                .to_string();
            c.flush(id)?;
        }
        Ok(c)
    }

    fn inspect(&self, id: NodeId, format: &str) -> Result<String, Error> {
        docker(&["inspect", "--format", format, &self.containers[&id]])
    }

    fn port(&self, id: NodeId) -> u16 {
        self.spec
            .port_base
            .saturating_add(u16::try_from(id).unwrap_or(u16::MAX))
    }

    /// The node's client endpoints, in id order.
    pub fn endpoints(&self) -> Vec<String> {
        self.ips
            .iter()
            .map(|(id, ip)| format!("{ip}:{}", self.port(*id)))
            .collect()
    }

    /// `iptables ARGS` in node `id`'s network namespace.
    fn iptables(&self, id: NodeId, args: &[&str]) -> Result<String, Error> {
        let pid = self.inspect(id, "{{.State.Pid}}")?;
        if pid == "0" {
            return Err(err(format!("node {id} is not running")));
        }
        run(Command::new("nsenter")
            .args(["-t", &pid, "-n", "iptables", "-w"])
            .args(args))
    }

    /// The chaos chain exists and INPUT and OUTPUT jump to it (a restarted
    /// container has a fresh namespace without it).
    fn ensure_chain(&self, id: NodeId) -> Result<(), Error> {
        if self.iptables(id, &["-L", CHAIN, "-n"]).is_err() {
            self.iptables(id, &["-N", CHAIN])?;
        }
        for hook in ["INPUT", "OUTPUT"] {
            if self.iptables(id, &["-C", hook, "-j", CHAIN]).is_err() {
                self.iptables(id, &["-I", hook, "-j", CHAIN])?;
            }
        }
        Ok(())
    }

    /// Removes node `id`'s rules (nothing to do when it is not running).
    fn flush(&self, id: NodeId) -> Result<(), Error> {
        if self.killed.contains(&id) || self.inspect(id, "{{.State.Pid}}")? == "0" {
            return Ok(());
        }
        if self.iptables(id, &["-L", CHAIN, "-n"]).is_ok() {
            self.iptables(id, &["-F", CHAIN])?;
        }
        Ok(())
    }

    fn running(&self, id: NodeId) -> bool {
        !self.killed.contains(&id) && !self.paused.contains(&id)
    }

    fn direct_client(&self) -> Result<Client, Error> {
        Ok(Client::new(&self.endpoints())?
            .with_node_ids(&self.ids())
            .with_timeouts(Timeouts {
                attempt: Duration::from_millis(500),
                overall: Duration::from_secs(2),
                backoff: Duration::from_millis(20),
            }))
    }
}

impl Target for DockerCluster {
    fn ids(&self) -> Vec<NodeId> {
        self.containers.keys().copied().collect()
    }

    fn kill(&mut self, id: NodeId) -> Result<(), Error> {
        if self.paused.remove(&id) {
            docker(&["unpause", &self.containers[&id]])?;
        }
        docker(&["kill", "--signal", "KILL", &self.containers[&id]])?;
        self.killed.insert(id);
        Ok(())
    }

    fn restart(&mut self, id: NodeId) -> Result<(), Error> {
        // `docker start` of a container the restart policy already brought
        // back is a no-op.
        docker(&["start", &self.containers[&id]])?;
        self.killed.remove(&id);
        Ok(())
    }

    fn pause(&mut self, id: NodeId) -> Result<(), Error> {
        if !self.killed.contains(&id) && self.paused.insert(id) {
            docker(&["pause", &self.containers[&id]])?;
        }
        Ok(())
    }

    fn resume(&mut self, id: NodeId) -> Result<(), Error> {
        if self.paused.contains(&id) {
            docker(&["unpause", &self.containers[&id]])?;
            // Forgotten only once it is running again, so a failed unpause
            // is retried by the next heal.
            self.paused.remove(&id);
        }
        Ok(())
    }

    fn partition(&mut self, side: &[NodeId], clients: bool) -> Result<(), Error> {
        // Rules on the minority side only: dropping both directions there
        // cuts each link both ways.
        for &id in side.iter().filter(|id| self.running(**id)) {
            self.ensure_chain(id)?;
            for (&other, ip) in &self.ips {
                if side.contains(&other) {
                    continue;
                }
                self.iptables(id, &["-A", CHAIN, "-s", ip, "-j", "DROP"])?;
                self.iptables(id, &["-A", CHAIN, "-d", ip, "-j", "DROP"])?;
            }
            if clients {
                let port = self.port(id).to_string();
                self.iptables(
                    id,
                    &[
                        "-A",
                        CHAIN,
                        "-s",
                        &self.gateway,
                        "-p",
                        "tcp",
                        "--dport",
                        &port,
                        "-j",
                        "DROP",
                    ],
                )?;
                self.iptables(
                    id,
                    &[
                        "-A",
                        CHAIN,
                        "-d",
                        &self.gateway,
                        "-p",
                        "tcp",
                        "--sport",
                        &port,
                        "-j",
                        "DROP",
                    ],
                )?;
            }
        }
        Ok(())
    }

    /// 5 % to 25 % random packet loss on every node's non-loopback traffic.
    fn degrade(&mut self, severity: f64) -> Result<Degradation, Error> {
        let probability = 0.05 + 0.20 * severity.clamp(0.0, 1.0);
        let p = format!("{probability:.3}");
        for id in self.ids().into_iter().filter(|id| self.running(*id)) {
            self.ensure_chain(id)?;
            self.iptables(
                id,
                &[
                    "-A",
                    CHAIN,
                    "!",
                    "-s",
                    "127.0.0.0/8",
                    "!",
                    "-d",
                    "127.0.0.0/8",
                    "-m",
                    "statistic",
                    "--mode",
                    "random",
                    "--probability",
                    &p,
                    "-j",
                    "DROP",
                ],
            )?;
        }
        Ok(Degradation::Loss { probability })
    }

    fn heal_network(&mut self) -> Result<(), Error> {
        for id in self.ids() {
            if !self.paused.contains(&id) {
                self.flush(id)?;
            }
        }
        Ok(())
    }

    /// Best effort: every step is tried even when one fails (one node that
    /// will not unpause must not leave the others dead or cut off); the
    /// first error is returned at the end.
    fn heal_all(&mut self) -> Result<(), Error> {
        let mut first: Option<Error> = None;
        let mut note = |r: Result<(), Error>| {
            if let Err(e) = r {
                first.get_or_insert(e);
            }
        };
        for id in self.paused.clone() {
            note(self.resume(id));
        }
        for id in self.killed.clone() {
            note(self.restart(id));
        }
        for id in self.ids() {
            if !self.paused.contains(&id) {
                note(self.flush(id));
            }
        }
        first.map_or(Ok(()), Err)
    }

    fn client(&self, timeouts: Timeouts) -> Result<Client, Error> {
        Ok(Client::new(&self.endpoints())?
            .with_node_ids(&self.ids())
            .with_timeouts(timeouts))
    }

    async fn wait_leader(&self, timeout: Duration) -> Result<NodeId, Error> {
        let c = self.direct_client()?;
        crate::target::wait_leader_of(
            &c,
            &self.ids(),
            |id| !self.running(id),
            timeout,
            &format!(
                "see `docker-compose -p {} logs {}1`",
                self.spec.project, self.spec.service_prefix
            ),
        )
        .await
    }

    async fn wait_converged(&self, timeout: Duration) -> Result<(u64, String), Error> {
        let c = self.direct_client()?;
        crate::target::wait_converged_of(&c, &self.ids(), timeout).await
    }

    /// Heals and leaves the stack running.
    fn stop(&mut self) {
        if let Err(e) = self.heal_all() {
            tracing::warn!(error = %e, "healing the compose cluster after the drill");
        }
    }

    fn describe(&self) -> String {
        format!("compose project {}", self.spec.project)
    }
}

impl Drop for DockerCluster {
    /// A drill that ends early with an error leaves no node frozen, dead or
    /// cut off. (Ctrl-C kills the process without this; the next `connect`
    /// unpauses and starts the nodes and flushes their rules.)
    fn drop(&mut self) {
        self.stop();
    }
}
