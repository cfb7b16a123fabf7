//! `mlstack certs generate`: a development PKI for a KV cluster, written with
//! `rcgen` (what `cfssl` or etcd's `hack/tls-setup` produce by hand).
//!
//! ```text
//! <out>/ca.pem, ca.key                 cluster CA: signs node certificates
//! <out>/client-ca.pem, client-ca.key   client CA: signs client certificates
//! <out>/node-<i>.pem, node-<i>.key     node i: server + client auth, SANs = the hosts and node-<i>
//! <out>/server-<name>.pem, .key        a server that is no KV node (the inference server):
//!                                      server auth only, SANs = the hosts and <name>
//! <out>/client-<name>.pem, .key        client <name>: client auth, CN = name
//! ```
//!
//! A node certificate is a Raft credential (the Raft gate admits a
//! certificate of the cluster CA that names the sending node), so a server
//! that is no node gets a `server-` certificate: signed by the same CA, so
//! clients trusting `ca.pem` accept it, but without client authentication and
//! without a `node-<i>` name, so it can speak Raft to no one.
//!
//! Keys are ECDSA P-256, written mode 0600. The certificates are valid from
//! January 1 of last year for ten years: a development PKI, not one to run a
//! production cluster on (no revocation, CA keys on disk beside the rest).

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};

/// What to generate.
#[derive(Clone, Debug)]
pub struct CertsSpec {
    pub out: PathBuf,
    /// Names and addresses every node certificate is valid for (DNS names or
    /// IP addresses): where clients and peers dial the nodes.
    pub hosts: Vec<String>,
    pub nodes: u64,
    /// Client certificate names (CN); each a key segment (`[A-Za-z0-9._-]`).
    pub clients: Vec<String>,
    /// Server-only certificate names (servers that are no KV node).
    pub servers: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum CertsError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "{path} exists: certs generate never replaces a CA or a certificate (remove the directory or pick another --out)"
    )]
    Exists { path: PathBuf },
    #[error("{reason}")]
    Invalid { reason: String },
    #[error("generating {what}: {source}")]
    Rcgen {
        what: String,
        #[source]
        source: rcgen::Error,
    },
}

fn rc(what: impl Into<String>) -> impl FnOnce(rcgen::Error) -> CertsError {
    let what = what.into();
    move |source| CertsError::Rcgen { what, source }
}

fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

fn write(path: &Path, text: &str, private: bool) -> Result<(), CertsError> {
    use std::io::Write;
    let io = |source| CertsError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut o = std::fs::OpenOptions::new();
    o.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        o.mode(if private { 0o600 } else { 0o644 });
    }
    let mut f = o.open(path).map_err(io)?;
    f.write_all(text.as_bytes()).map_err(io)?;
    f.sync_all().map_err(io)
}

fn validity(p: &mut CertificateParams) {
    let year = 1970
        + (std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0)
            / 31_556_952) as i32;
    p.not_before = rcgen::date_time_ymd(year - 1, 1, 1);
    p.not_after = rcgen::date_time_ymd(year + 9, 1, 1);
}

fn ca(cn: &str) -> Result<CertifiedIssuer<'static, KeyPair>, CertsError> {
    let mut p = CertificateParams::new(Vec::<String>::new()).map_err(rc(cn))?;
    p.distinguished_name.push(DnType::CommonName, cn);
    p.distinguished_name
        .push(DnType::OrganizationName, "mlstack dev");
    p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    validity(&mut p);
    let key = KeyPair::generate().map_err(rc(cn))?;
    CertifiedIssuer::self_signed(p, key).map_err(rc(cn))
}

fn leaf(
    cn: &str,
    sans: Vec<String>,
    usages: Vec<ExtendedKeyUsagePurpose>,
    issuer: &CertifiedIssuer<'static, KeyPair>,
) -> Result<(String, String), CertsError> {
    let mut p = CertificateParams::new(sans).map_err(rc(cn))?;
    p.distinguished_name.push(DnType::CommonName, cn);
    p.distinguished_name
        .push(DnType::OrganizationName, "mlstack dev");
    p.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    p.extended_key_usages = usages;
    p.use_authority_key_identifier_extension = true;
    validity(&mut p);
    let key = KeyPair::generate().map_err(rc(cn))?;
    let cert = p.signed_by(&key, issuer).map_err(rc(cn))?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// Writes the CAs, the node and the client certificates; returns the paths
/// written.
pub fn generate(spec: &CertsSpec) -> Result<Vec<PathBuf>, CertsError> {
    if spec.nodes == 0 || spec.nodes > 64 {
        return Err(CertsError::Invalid {
            reason: format!("--nodes {} (1..=64)", spec.nodes),
        });
    }
    if spec.hosts.is_empty() {
        return Err(CertsError::Invalid {
            reason: "--hosts is empty: name where the nodes are dialled (e.g. 127.0.0.1,localhost)"
                .into(),
        });
    }
    for c in spec.clients.iter().chain(&spec.servers) {
        if !valid_name(c) {
            return Err(CertsError::Invalid {
                reason: format!("client or server name {c:?}: 1-64 characters of [A-Za-z0-9._-]"),
            });
        }
    }
    // `node-<i>` is the name that makes a certificate node i's Raft
    // credential: as a host (in every certificate) or a server name it
    // would let one certificate speak for another node.
    if let Some(h) = spec
        .hosts
        .iter()
        .chain(&spec.servers)
        .find(|h| names_a_node(h))
    {
        return Err(CertsError::Invalid {
            reason: format!(
                "{h:?} is reserved: node-<i> names node i's Raft identity, and each node certificate gets its own"
            ),
        });
    }
    std::fs::create_dir_all(&spec.out).map_err(|source| CertsError::Io {
        path: spec.out.clone(),
        source,
    })?;
    // Every name is checked before anything is written, so a refusal
    // leaves the directory as it was.
    let mut names: Vec<String> = ["ca.pem", "ca.key", "client-ca.pem", "client-ca.key"]
        .map(String::from)
        .to_vec();
    for i in 1..=spec.nodes {
        names.push(format!("node-{i}.pem"));
        names.push(format!("node-{i}.key"));
    }
    for c in &spec.clients {
        names.push(format!("client-{c}.pem"));
        names.push(format!("client-{c}.key"));
    }
    for s in &spec.servers {
        names.push(format!("server-{s}.pem"));
        names.push(format!("server-{s}.key"));
    }
    if let Some(path) = names.iter().map(|n| spec.out.join(n)).find(|p| p.exists()) {
        return Err(CertsError::Exists { path });
    }
    let mut written = Vec::new();
    let mut put = |name: String, text: &str, private: bool| -> Result<(), CertsError> {
        let p = spec.out.join(name);
        write(&p, text, private)?;
        written.push(p);
        Ok(())
    };
    let cluster = ca("mlstack cluster CA")?;
    let clients = ca("mlstack client CA")?;
    put("ca.pem".into(), &cluster.pem(), false)?;
    put("ca.key".into(), &cluster.key().serialize_pem(), true)?;
    put("client-ca.pem".into(), &clients.pem(), false)?;
    put("client-ca.key".into(), &clients.key().serialize_pem(), true)?;
    for i in 1..=spec.nodes {
        let name = format!("node-{i}");
        let mut sans = spec.hosts.clone();
        sans.push(name.clone());
        let (cert, key) = leaf(
            &name,
            sans,
            vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ],
            &cluster,
        )?;
        put(format!("{name}.pem"), &cert, false)?;
        put(format!("{name}.key"), &key, true)?;
    }
    for c in &spec.clients {
        let (cert, key) = leaf(
            c,
            Vec::new(),
            vec![ExtendedKeyUsagePurpose::ClientAuth],
            &clients,
        )?;
        put(format!("client-{c}.pem"), &cert, false)?;
        put(format!("client-{c}.key"), &key, true)?;
    }
    for name in &spec.servers {
        let mut sans = spec.hosts.clone();
        sans.push(name.clone());
        let (cert, key) = leaf(
            name,
            sans,
            vec![ExtendedKeyUsagePurpose::ServerAuth],
            &cluster,
        )?;
        put(format!("server-{name}.pem"), &cert, false)?;
        put(format!("server-{name}.key"), &key, true)?;
    }
    Ok(written)
}

/// `node-<digits>` (any case): the name that binds a certificate to node i.
fn names_a_node(name: &str) -> bool {
    name.len() > 5
        && name[..5].eq_ignore_ascii_case("node-")
        && name[5..].chars().all(|c| c.is_ascii_digit())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::PeerVerifier;
    use rustls::pki_types::{CertificateDer, pem::PemObject};

    fn chain(path: &Path) -> Vec<CertificateDer<'static>> {
        CertificateDer::pem_file_iter(path)
            .expect("open")
            .collect::<Result<_, _>>()
            .expect("pem")
    }

    #[test]
    fn node_certificates_pass_the_peer_check_and_client_certificates_do_not() {
        let dir = tempfile::tempdir().expect("tempdir");
        let spec = CertsSpec {
            out: dir.path().join("pki"),
            hosts: vec!["127.0.0.1".into(), "localhost".into()],
            nodes: 2,
            clients: vec!["app".into()],
            servers: vec!["infer".into()],
        };
        let files = generate(&spec).expect("generate");
        assert_eq!(files.len(), 4 + 4 + 2 + 2);
        let ca = std::fs::read(spec.out.join("ca.pem")).expect("ca");
        let peers = PeerVerifier::new(&ca).expect("verifier");
        peers
            .verify_chain(&chain(&spec.out.join("node-2.pem")))
            .expect("a node certificate is a peer");
        let e = peers
            .verify_chain(&chain(&spec.out.join("client-app.pem")))
            .expect_err("a client certificate is no peer");
        assert!(e.contains("cluster CA"), "{e}");
        let e = peers
            .verify_chain(&chain(&spec.out.join("client-ca.pem")))
            .expect_err("another CA's own certificate is no peer");
        assert!(e.contains("cluster CA"), "{e}");
        // A server certificate (same CA) is no Raft credential: no client
        // authentication, no node-<i> name.
        let server = chain(&spec.out.join("server-infer.pem"));
        peers
            .verify_chain(&server)
            .expect_err("a server-only certificate is no peer");
        PeerVerifier::check_node(&server, 1).expect_err("it names no node");
        PeerVerifier::check_node(&chain(&spec.out.join("node-2.pem")), 2)
            .expect("node-2 names node 2");
        PeerVerifier::check_node(&chain(&spec.out.join("node-2.pem")), 1)
            .expect_err("node-2 does not name node 1");
        for reserved in ["node-3", "NODE-12"] {
            let e = generate(&CertsSpec {
                hosts: vec!["127.0.0.1".into(), reserved.into()],
                out: dir.path().join("reserved"),
                ..spec.clone()
            })
            .expect_err("a node name as a host");
            assert!(e.to_string().contains("reserved"), "{e}");
        }
        assert!(!names_a_node("node-") && !names_a_node("node-a1") && !names_a_node("infer"));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(spec.out.join("ca.key"))
                .expect("stat")
                .permissions()
                .mode();
            assert_eq!(mode & 0o077, 0, "private keys are 0600, got {mode:o}");
        }
        let again = generate(&spec).expect_err("never replaces a CA");
        assert!(matches!(again, CertsError::Exists { .. }), "{again}");
        // Any existing file refuses the run before anything is written.
        let partial = dir.path().join("partial");
        std::fs::create_dir_all(&partial).expect("mkdir");
        std::fs::write(partial.join("node-2.pem"), "x").expect("write");
        let e = generate(&CertsSpec {
            out: partial.clone(),
            ..spec.clone()
        })
        .expect_err("an existing node certificate");
        assert!(e.to_string().contains("node-2.pem"), "{e}");
        assert!(!partial.join("ca.pem").exists(), "a CA was written anyway");
        let bad = generate(&CertsSpec {
            clients: vec!["../x".into()],
            out: dir.path().join("other"),
            ..spec
        })
        .expect_err("bad client name");
        assert!(bad.to_string().contains("client or server name"), "{bad}");
    }
}
