//! The Kubernetes manifests under `deploy/k8s/`, validated offline (no
//! cluster runs here): every object against the Kubernetes OpenAPI schemas
//! in strict mode (PyPI `kubernetes-validate`, installed by the test
//! command), and the cross-object checks a schema cannot make (references
//! resolve, images pinned, the KV StatefulSet's peers match its replicas and
//! headless Service): `tests/python/k8s_check.py`.

use std::path::Path;
use std::process::Command;

#[test]
fn the_kubernetes_manifests_validate_against_the_schemas() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("repository root");
    let out = Command::new("python3")
        .arg(repo.join("tests/python/k8s_check.py"))
        .arg(repo.join("deploy/k8s"))
        .args(["--kubernetes-version", "1.30.0"])
        .output()
        .expect("running tests/python/k8s_check.py");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "deploy/k8s does not validate:\n{stdout}{stderr}"
    );
    assert!(stdout.contains(" 0 problems"), "{stdout}");
}
