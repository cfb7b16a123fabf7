//! A three-node cluster over mutual TLS, with client certificates and API
//! keys required: replication works over TLS; a forged `Vote`,
//! `AppendEntries` or `InstallSnapshot` from a process without a cluster
//! certificate, or with another node's, is refused and changes nothing; a
//! client without credentials
//! is refused; a key without the admin grant cannot change membership.
//! (Plaintext clusters are every other test.)

use consensus::types::TypeConfig;
use consensus::{Node, NodeConfig};
use kvclient::{Client, ClientError, Security, Timeouts};
use openraft::Vote;
use openraft::raft::{AppendEntriesRequest, VoteRequest};
use proto::kv::v1 as pb;
use proto::raft::v1 as raftpb;
use proto::tls::{ClientTls, ServerTls};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

const ADMIN_KEY: &str = "sk-admin-0123456789abcdef";
const APP_KEY: &str = "sk-app-0123456789abcdefgh";

fn pem(dir: &Path, name: &str) -> Vec<u8> {
    std::fs::read(dir.join(name)).expect(name)
}

fn pki(dir: &Path, clients: &[&str]) {
    proto::certs::generate(&proto::certs::CertsSpec {
        out: dir.to_path_buf(),
        hosts: vec!["127.0.0.1".into()],
        nodes: 3,
        clients: clients.iter().map(|c| c.to_string()).collect(),
        servers: vec![],
    })
    .expect("certs generate");
}

struct TlsCluster {
    _dir: tempfile::TempDir,
    pki: std::path::PathBuf,
    /// Client addresses.
    peers: BTreeMap<u64, String>,
    /// Raft's own ports, when the cluster has them.
    peer_ports: BTreeMap<u64, String>,
    nodes: BTreeMap<u64, Node>,
}

/// A port held by a listener until the node that uses it starts. Chosen
/// below Linux's ephemeral range (32768–60999): a port from bind(0) is also
/// what the kernel hands outgoing connections as their source port, and
/// one of those (another test's) took a node's port between the drop and
/// the node's bind ("Address already in use").
fn free_addr() -> (String, std::net::TcpListener) {
    loop {
        let port = rand::random_range(20_000..32_000u16);
        if let Ok(l) = std::net::TcpListener::bind(("127.0.0.1", port)) {
            return (l.local_addr().expect("addr").to_string(), l);
        }
    }
}

impl TlsCluster {
    async fn start() -> TlsCluster {
        Self::start_with(false).await
    }

    /// With `peer_ports`, Raft gets a port of its own on every node.
    async fn start_with(peer_ports: bool) -> TlsCluster {
        let dir = tempfile::tempdir().expect("tempdir");
        let pki_dir = dir.path().join("pki");
        pki(&pki_dir, &["app"]);
        let keys = Arc::new(
            proto::auth::ApiKeys::parse(&format!("{ADMIN_KEY} ops admin\n{APP_KEY} app\n"), "t")
                .expect("keys"),
        );
        // Each node's ports stay held until just before that node starts.
        let mut held: BTreeMap<u64, Vec<std::net::TcpListener>> = BTreeMap::new();
        let mut peers = BTreeMap::new();
        let mut raft_ports = BTreeMap::new();
        for id in 1..=3u64 {
            let (a, l) = free_addr();
            peers.insert(id, a);
            held.entry(id).or_default().push(l);
            if peer_ports {
                let (a, l) = free_addr();
                raft_ports.insert(id, a);
                held.entry(id).or_default().push(l);
            }
        }
        // The membership: CLIENT, or CLIENT+PEER (consensus::member_addr).
        let members: BTreeMap<u64, String> = peers
            .iter()
            .map(|(id, a)| match raft_ports.get(id) {
                Some(p) => (*id, format!("{a}+{p}")),
                None => (*id, a.clone()),
            })
            .collect();
        let cluster_ca = pem(&pki_dir, "ca.pem");
        let mut roots = cluster_ca.clone();
        roots.extend(pem(&pki_dir, "client-ca.pem"));
        let mut nodes = BTreeMap::new();
        for id in 1..=3u64 {
            let mut cfg = NodeConfig::new(
                id,
                peers[&id].parse().expect("addr"),
                dir.path().join(format!("n{id}")),
                members.clone(),
            );
            cfg.peer_listen = raft_ports.get(&id).map(|p| p.parse().expect("addr"));
            cfg.init = id == 1;
            cfg.register_metrics = false;
            cfg.tls = Some(consensus::config::NodeTls {
                server: ServerTls {
                    cert_pem: pem(&pki_dir, &format!("node-{id}.pem")),
                    key_pem: pem(&pki_dir, &format!("node-{id}.key")),
                    client_roots_pem: Some(roots.clone()),
                    require_client_cert: false,
                },
                cluster_ca_pem: cluster_ca.clone(),
            });
            cfg.access = proto::access::Access {
                keys: Some(keys.clone()),
                require_cert: true,
            };
            drop(held.remove(&id));
            nodes.insert(id, Node::start(cfg).await.expect("node starts"));
        }
        TlsCluster {
            _dir: dir,
            pki: pki_dir,
            peers,
            peer_ports: raft_ports,
            nodes,
        }
    }

    fn client(&self, cert: Option<&str>, token: Option<&str>) -> Client {
        let identity = cert.map(|c| {
            (
                pem(&self.pki, &format!("{c}.pem")),
                pem(&self.pki, &format!("{c}.key")),
            )
        });
        let security = Security {
            tls: Some(ClientTls {
                ca_pem: pem(&self.pki, "ca.pem"),
                identity,
            }),
            token: token.map(str::to_string),
        };
        let eps: Vec<&String> = self.peers.values().collect();
        Client::with_security(&eps, &security)
            .expect("client")
            .with_timeouts(Timeouts {
                attempt: Duration::from_secs(2),
                overall: Duration::from_secs(4),
                backoff: Duration::from_millis(50),
            })
    }

    async fn leader(&self) -> u64 {
        let t0 = Instant::now();
        loop {
            for n in self.nodes.values() {
                if n.raft.metrics().borrow().current_leader == Some(n.id) {
                    return n.id;
                }
            }
            assert!(t0.elapsed() < Duration::from_secs(10), "no leader in 10 s");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn terms(&self) -> BTreeMap<u64, u64> {
        self.nodes
            .iter()
            .map(|(id, n)| (*id, n.raft.metrics().borrow().current_term))
            .collect()
    }

    /// A Raft client to node `id` dialling with `tls` (plaintext when `None`).
    fn raft_client(
        &self,
        id: u64,
        tls: Option<ClientTls>,
    ) -> raftpb::raft_client::RaftClient<tonic::transport::Channel> {
        let cfg = tls.map(|t| t.config().expect("tls config"));
        let ch = proto::server::channel_tls(&self.peers[&id], cfg.as_ref()).expect("channel");
        raftpb::raft_client::RaftClient::new(ch)
    }

    fn tls_as(&self, pki: &Path, who: Option<&str>) -> ClientTls {
        ClientTls {
            ca_pem: pem(&self.pki, "ca.pem"),
            identity: who.map(|w| (pem(pki, &format!("{w}.pem")), pem(pki, &format!("{w}.key")))),
        }
    }
}

fn code(r: Result<impl std::fmt::Debug, ClientError>) -> Option<tonic::Code> {
    match r {
        Ok(v) => panic!("expected a refusal, got {v:?}"),
        Err(e) => e.code(),
    }
}

/// A vote for `candidate` in a term far ahead (a follower inside its leader
/// lease declines it, so it moves no term even when it reaches Raft).
fn forged_vote(candidate: u64, term: u64) -> Vec<u8> {
    bincode::serialize(&VoteRequest::<u64>::new(Vote::new(term, candidate), None))
        .expect("encode vote")
}

/// A heartbeat from a "leader" of a term far ahead: a follower that
/// accepts it moves to that term and follows the forger.
fn forged_append(leader: u64, term: u64) -> Vec<u8> {
    bincode::serialize(&AppendEntriesRequest::<TypeConfig> {
        vote: Vote::new_committed(term, leader),
        prev_log_id: None,
        entries: vec![],
        leader_commit: None,
    })
    .expect("encode append-entries")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn mutual_tls_keeps_forged_peers_and_uncredentialed_clients_out() {
    let c = TlsCluster::start().await;
    let leader = c.leader().await;

    // Replication over mutual TLS, a client with a certificate and a key.
    let app = c.client(Some("client-app"), Some(APP_KEY));
    app.put(b"k", b"v1").await.expect("put over TLS");
    let got = app
        .get(b"k", pb::ReadConsistency::Linearizable)
        .await
        .expect("get over TLS");
    assert_eq!(got.kv.map(|kv| kv.value), Some(b"v1".to_vec()));

    // Clients missing a credential are refused, and nothing is written.
    let no_key = c.client(Some("client-app"), None);
    assert_eq!(
        code(no_key.put(b"k", b"x").await),
        Some(tonic::Code::Unauthenticated)
    );
    let bad_key = c.client(Some("client-app"), Some("sk-guess-0123456789abcdef"));
    assert_eq!(
        code(bad_key.put(b"k", b"x").await),
        Some(tonic::Code::Unauthenticated)
    );
    let no_cert = c.client(None, Some(APP_KEY));
    assert_eq!(
        code(no_cert.put(b"k", b"x").await),
        Some(tonic::Code::Unauthenticated)
    );
    let plaintext =
        Client::with_security(&c.peers.values().collect::<Vec<_>>(), &Security::default())
            .expect("client")
            .with_timeouts(Timeouts {
                attempt: Duration::from_millis(500),
                overall: Duration::from_secs(2),
                backoff: Duration::from_millis(50),
            });
    assert!(
        plaintext.put(b"k", b"x").await.is_err(),
        "plaintext to a TLS port"
    );

    // Membership: the app key is no admin; the admin key is.
    let voters: Vec<u64> = c.peers.keys().copied().collect();
    assert_eq!(
        code(app.change_membership(&voters).await),
        Some(tonic::Code::PermissionDenied)
    );
    assert_eq!(
        code(app.add_learner(9, "127.0.0.1:1").await),
        Some(tonic::Code::PermissionDenied)
    );
    let admin = c.client(Some("client-app"), Some(ADMIN_KEY));
    admin
        .change_membership(&voters)
        .await
        .expect("the admin key changes membership");

    // Forged Raft traffic at a follower, far ahead in term.
    let follower = *c
        .peers
        .keys()
        .find(|&&id| id != leader)
        .expect("a follower");
    let before = c.terms();
    let far = before.values().max().copied().unwrap_or(0) + 100;
    let rogue_dir = tempfile::tempdir().expect("tempdir");
    pki(rogue_dir.path(), &[]);
    let message = |payload: Vec<u8>| raftpb::RaftMessage {
        payload,
        cluster: "mlstack-kv".into(),
    };
    // (a) a client certificate: it passes the handshake (client CA), not the
    //     Raft gate; the payload is never decoded (garbage gets the same
    //     answer as a well-formed vote).
    for payload in [forged_vote(leader, far), b"garbage".to_vec()] {
        let mut rc = c.raft_client(follower, Some(c.tls_as(&c.pki, Some("client-app"))));
        let e = rc.vote(message(payload.clone())).await.expect_err("vote");
        assert_eq!(e.code(), tonic::Code::Unauthenticated, "{e}");
        let e = rc
            .append_entries(message(payload))
            .await
            .expect_err("append");
        assert_eq!(e.code(), tonic::Code::Unauthenticated, "{e}");
    }
    let mut rc = c.raft_client(follower, Some(c.tls_as(&c.pki, Some("client-app"))));
    let chunk = raftpb::SnapshotChunk {
        cluster: "mlstack-kv".into(),
        data: vec![0; 16],
        crc32c: crc32c::crc32c(&[0; 16]),
        done: true,
        ..Default::default()
    };
    let e = rc
        .install_snapshot(tokio_stream::iter(vec![chunk]))
        .await
        .expect_err("snapshot");
    assert_eq!(e.code(), tonic::Code::Unauthenticated, "{e}");
    // (b) TLS without any certificate.
    let e = c
        .raft_client(follower, Some(c.tls_as(&c.pki, None)))
        .append_entries(message(forged_append(leader, far)))
        .await
        .expect_err("append-entries without a certificate");
    assert_eq!(e.code(), tonic::Code::Unauthenticated, "{e}");
    // (c) a node certificate of another CA: the handshake itself fails.
    assert!(
        c.raft_client(follower, Some(c.tls_as(rogue_dir.path(), Some("node-1"))))
            .append_entries(message(forged_append(leader, far)))
            .await
            .is_err(),
        "a rogue CA's node certificate"
    );
    // (d) plaintext.
    assert!(
        c.raft_client(follower, None)
            .append_entries(message(forged_append(leader, far)))
            .await
            .is_err(),
        "plaintext Raft to a TLS port"
    );
    // (e) a real node certificate of the cluster CA, speaking as another
    //     node: node `other`'s key cannot lead, campaign or send a snapshot
    //     as the leader (the certificate names node-<other>).
    let other = *c
        .peers
        .keys()
        .find(|&&id| id != leader && id != follower)
        .expect("a third node");
    let as_other = || {
        c.raft_client(
            follower,
            Some(c.tls_as(&c.pki, Some(&format!("node-{other}")))),
        )
    };
    let e = as_other()
        .append_entries(message(forged_append(leader, far)))
        .await
        .expect_err("append-entries as another node");
    assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e}");
    assert!(e.message().contains(&format!("node-{leader}")), "{e}");
    let e = as_other()
        .vote(message(forged_vote(leader, far)))
        .await
        .expect_err("vote as another node");
    assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e}");
    let header = bincode::serialize(&(
        Vote::new_committed(far, leader),
        openraft::SnapshotMeta::<u64, openraft::BasicNode>::default(),
    ))
    .expect("header");
    let chunk = raftpb::SnapshotChunk {
        cluster: "mlstack-kv".into(),
        header,
        data: vec![0; 16],
        crc32c: crc32c::crc32c(&[0; 16]),
        done: true,
    };
    let e = as_other()
        .install_snapshot(tokio_stream::iter(vec![chunk]))
        .await
        .expect_err("snapshot as another node");
    assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e}");
    // (Terms may move on their own under load, by an election; never to
    // the forged one, 100 terms ahead.)
    let now = c.terms();
    assert!(
        now.values().all(|&t| t < far),
        "a refused vote moved a term to {far}: before {before:?}, after {now:?}"
    );

    // The control: the same heartbeat with the leader's own certificate
    // reaches Raft and moves the follower to the forged term (so the
    // refusals above were the gates', and this is the attack they stop).
    c.raft_client(
        follower,
        Some(c.tls_as(&c.pki, Some(&format!("node-{leader}")))),
    )
    .append_entries(message(forged_append(leader, far)))
    .await
    .expect("a cluster certificate speaks Raft");
    // (openraft publishes the new term in its metrics a moment later.)
    let t0 = Instant::now();
    while c.nodes[&follower].raft.metrics().borrow().current_term < far {
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "the accepted heartbeat did not move the follower's term to {far}: {:?}",
            c.terms()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    // (f) The dialling side: a node's Raft client accepts a peer's server
    //     certificate only if it names the node it meant to reach. Dialling
    //     the follower's address as node `other` (as a node key holder in
    //     the middle would answer for it) fails at the handshake; dialled as
    //     itself, the follower answers (the control: a stale vote, declined).
    {
        use openraft::network::RPCOption;
        use openraft::{RaftNetwork, RaftNetworkFactory};
        let tls = c
            .tls_as(&c.pki, Some(&format!("node-{leader}")))
            .config()
            .expect("tls");
        let mut factory = consensus::network::NetworkFactory::new(
            "mlstack-kv".into(),
            BTreeMap::new(),
            Some(tls),
        );
        let at_follower = openraft::BasicNode::new(c.peers[&follower].clone());
        let stale = || VoteRequest::<u64>::new(Vote::new(0, leader), None);
        let opt = || RPCOption::new(Duration::from_secs(3));
        let answer = factory
            .new_client(follower, &at_follower)
            .await
            .vote(stale(), opt())
            .await
            .expect("the follower, dialled as itself, answers");
        assert!(!answer.vote_granted, "{answer:?}");
        let e = factory
            .new_client(other, &at_follower)
            .await
            .vote(stale(), opt())
            .await
            .expect_err("a server certificate naming another node was accepted");
        let _ = e;
    }

    // Diag answers on the TLS port but does not relay: it sits outside the
    // gates, and a relay would dial anywhere in plaintext.
    let mut diag = proto::diag::v1::diag_client::DiagClient::new(
        proto::server::channel_tls(
            &c.peers[&leader],
            Some(&c.tls_as(&c.pki, None).config().expect("tls")),
        )
        .expect("channel"),
    );
    diag.ping(proto::diag::v1::PingRequest::default())
        .await
        .expect("a plain ping is answered");
    let e = diag
        .ping(proto::diag::v1::PingRequest {
            forward_to: vec!["127.0.0.1:1".into()],
            ..Default::default()
        })
        .await
        .expect_err("a relay");
    assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e}");

    for (_, n) in c.nodes {
        n.shutdown().await;
    }
}

/// A node started with another node's certificate refuses to start, naming
/// the certificate it needs: its peers would refuse every Raft message it
/// sent (the certificate names the sender).
#[tokio::test]
async fn a_node_refuses_a_certificate_that_names_another_node() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pki_dir = dir.path().join("pki");
    pki(&pki_dir, &[]);
    let (addr, held) = free_addr();
    drop(held);
    let mut cfg = NodeConfig::new(
        1,
        addr.parse().expect("addr"),
        dir.path().join("n1"),
        BTreeMap::from([(1, addr.clone())]),
    );
    cfg.register_metrics = false;
    cfg.tls = Some(consensus::config::NodeTls {
        server: ServerTls {
            cert_pem: pem(&pki_dir, "node-2.pem"),
            key_pem: pem(&pki_dir, "node-2.key"),
            client_roots_pem: None,
            require_client_cert: false,
        },
        cluster_ca_pem: pem(&pki_dir, "ca.pem"),
    });
    let e = match Node::start(cfg).await {
        Ok(_) => panic!("a node started under node-2's certificate as node 1"),
        Err(e) => e.to_string(),
    };
    assert!(e.contains("node-1"), "{e}");
}

/// Raft on a port of its own (etcd's peer URLs): the cluster replicates over
/// it, the client port no longer speaks Raft at all, the peer port's TLS
/// handshake refuses a client certificate, and clients are sent to the
/// leader's client address (never its peer port).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_separate_peer_port_carries_raft_and_the_client_port_does_not() {
    let c = TlsCluster::start_with(true).await;
    let leader = c.leader().await;
    let follower = *c
        .peers
        .keys()
        .find(|&&id| id != leader)
        .expect("a follower");
    assert_eq!(
        c.nodes[&follower].peer_addr.map(|a| a.to_string()).as_ref(),
        c.peer_ports.get(&follower)
    );

    // A client that knows only a follower's client address reaches the
    // leader through the hint, and the write replicates over the peer ports.
    let only_follower = Client::with_security(
        &[&c.peers[&follower]],
        &Security {
            tls: Some(c.tls_as(&c.pki, Some("client-app"))),
            token: Some(APP_KEY.into()),
        },
    )
    .expect("client");
    only_follower
        .put(b"k", b"v")
        .await
        .expect("put via the hint");
    let status = only_follower.status_of(0).await.expect("status");
    assert_eq!(status.node_id, follower);
    assert_eq!(
        status.leader_address, c.peers[&leader],
        "hint is the client address"
    );
    assert!(
        status.members.iter().all(|m| m.address.contains('+')),
        "members carry both addresses: {:?}",
        status.members
    );

    let far = c.terms().values().max().copied().unwrap_or(0) + 100;
    let message = |payload: Vec<u8>| raftpb::RaftMessage {
        payload,
        cluster: "mlstack-kv".into(),
    };
    // The client port: no Raft service, even for a node certificate.
    let e = c
        .raft_client(follower, Some(c.tls_as(&c.pki, Some("node-2"))))
        .append_entries(message(forged_append(leader, far)))
        .await
        .expect_err("Raft on the client port");
    assert_eq!(e.code(), tonic::Code::Unimplemented, "{e}");
    // The peer port: a client certificate fails the handshake itself.
    let peer_ch = |tls: ClientTls| {
        raftpb::raft_client::RaftClient::new(
            proto::server::channel_tls(&c.peer_ports[&follower], Some(&tls.config().expect("tls")))
                .expect("channel"),
        )
    };
    assert!(
        peer_ch(c.tls_as(&c.pki, Some("client-app")))
            .append_entries(message(forged_append(leader, far)))
            .await
            .is_err(),
        "a client certificate on the peer port"
    );
    assert!(c.terms().values().all(|&t| t < far), "{:?}", c.terms());
    // The leader's node certificate speaks Raft there (the control).
    peer_ch(c.tls_as(&c.pki, Some(&format!("node-{leader}"))))
        .append_entries(message(forged_append(leader, far)))
        .await
        .expect("a node certificate on the peer port");

    for (_, n) in c.nodes {
        n.shutdown().await;
    }
}
