//! TLS from the command line, as a user turns it on: `mlstack certs
//! generate`, `kv serve --tls-cert ... --client-ca ... --api-keys-file`, and
//! the `kv` commands with `MLSTACK_KV_CA`/`_CERT`/`_KEY`/`_TOKEN`.

use std::path::Path;
use tests::{run_mlstack, run_mlstack_env, spawn_kv_node_with};

const ADMIN_KEY: &str = "sk-admin-0123456789abcdef";
const APP_KEY: &str = "sk-app-0123456789abcdefgh";

/// `mlstack ARGS` with `env`, and with every MLSTACK_KV_* variable the test
/// does not set removed (the caller's shell must not leak in).
fn mlstack_env(args: &[&str], env: &[(&str, String)]) -> (bool, String, String) {
    run_mlstack_env(
        args,
        &[
            "MLSTACK_KV_CA",
            "MLSTACK_KV_CERT",
            "MLSTACK_KV_KEY",
            "MLSTACK_KV_TOKEN",
        ],
        env,
    )
}

fn creds(pki: &Path, cert: Option<&str>, token: Option<&str>) -> Vec<(&'static str, String)> {
    let p = |f: &str| pki.join(f).to_string_lossy().into_owned();
    let mut env = vec![("MLSTACK_KV_CA", p("ca.pem"))];
    if let Some(c) = cert {
        env.push(("MLSTACK_KV_CERT", p(&format!("{c}.pem"))));
        env.push(("MLSTACK_KV_KEY", p(&format!("{c}.key"))));
    }
    if let Some(t) = token {
        env.push(("MLSTACK_KV_TOKEN", t.to_string()));
    }
    env
}

#[test]
fn certs_generate_then_a_tls_node_admits_only_credentialed_clients() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = dir.path().join("pki");
    let pki_s = pki.to_string_lossy().into_owned();
    let (ok, stdout, stderr) = run_mlstack(
        &[
            "certs",
            "generate",
            "--out",
            &pki_s,
            "--nodes",
            "1",
            "--clients",
            "app",
        ],
        &[],
    );
    assert!(ok, "certs generate: {stderr}");
    for f in [
        "ca.pem",
        "ca.key",
        "client-ca.pem",
        "node-1.pem",
        "node-1.key",
        "client-app.pem",
    ] {
        assert!(stdout.contains(f), "{f} not listed: {stdout}");
        assert!(pki.join(f).is_file(), "{f} not written");
    }
    let (ok, _, stderr) = run_mlstack(&["certs", "generate", "--out", &pki_s], &[]);
    assert!(!ok && stderr.contains("never replaces a CA"), "{stderr}");

    let keys = dir.path().join("kv-keys");
    std::fs::write(&keys, format!("{ADMIN_KEY} ops admin\n{APP_KEY} app\n")).expect("keys");
    let p = |f: &str| pki.join(f).to_string_lossy().into_owned();
    let (node_cert, node_key, ca, client_ca) = (
        p("node-1.pem"),
        p("node-1.key"),
        p("ca.pem"),
        p("client-ca.pem"),
    );
    let keys_s = keys.to_string_lossy().into_owned();
    let (_node, addr) = spawn_kv_node_with(
        dir.path(),
        "tls-cli",
        &[
            "--tls-cert",
            &node_cert,
            "--tls-key",
            &node_key,
            "--tls-ca",
            &ca,
            "--client-ca",
            &client_ca,
            "--api-keys-file",
            &keys_s,
        ],
    );
    let ep = ["--endpoints", addr.as_str()];
    let put = |env: &[(&str, String)]| {
        mlstack_env(&["kv", "put", ep[0], ep[1], "greeting", "hello"], env)
    };

    let (ok, _, stderr) = put(&creds(&pki, Some("client-app"), Some(APP_KEY)));
    assert!(ok, "put with certificate and key: {stderr}");
    let (ok, stdout, stderr) = mlstack_env(
        &["kv", "get", ep[0], ep[1], "greeting"],
        &creds(&pki, Some("client-app"), Some(APP_KEY)),
    );
    assert!(ok && stdout.contains("hello"), "get: {stdout} {stderr}");

    let (ok, _, stderr) = put(&creds(&pki, Some("client-app"), None));
    assert!(
        !ok && stderr.contains("Unauthenticated") && stderr.contains("API key"),
        "no key: {stderr}"
    );
    let (ok, _, stderr) = put(&creds(&pki, None, Some(APP_KEY)));
    assert!(
        !ok && stderr.contains("Unauthenticated") && stderr.contains("client certificate"),
        "no certificate: {stderr}"
    );
    let (ok, _, stderr) = put(&[]);
    assert!(!ok, "plaintext to a TLS node: {stderr}");
    let (ok, _, stderr) = put(&[("MLSTACK_KV_CERT", p("client-app.pem"))]);
    assert!(
        !ok && stderr.contains("MLSTACK_KV_KEY"),
        "a certificate without its key is named: {stderr}"
    );

    let (ok, _, stderr) = mlstack_env(
        &["kv", "members", ep[0], ep[1], "--voters", "1"],
        &creds(&pki, Some("client-app"), Some(APP_KEY)),
    );
    assert!(
        !ok && stderr.contains("PermissionDenied"),
        "app key changed membership: {stderr}"
    );
    let (ok, stdout, stderr) = mlstack_env(
        &["kv", "members", ep[0], ep[1], "--voters", "1"],
        &creds(&pki, Some("client-app"), Some(ADMIN_KEY)),
    );
    assert!(
        ok && stdout.contains("voter"),
        "admin key: {stdout} {stderr}"
    );
}
