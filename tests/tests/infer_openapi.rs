//! The inference server's OpenAPI document (`GET /openapi.json`,
//! `infer/src/openapi.json`) and a property-based run of `schemathesis`
//! (PyPI; the test command installs it) against a live `mlstack infer serve`:
//! generated valid and invalid requests for every operation, checked for no
//! 5xx answer, status codes and content types the document lists, and bodies
//! that match its schemas. A bounded number of examples (`-n`), a fixed seed.
//!
//! The server runs with an 80-token KV cache, so no generated request can
//! generate for long (larger ones are refused with 400, naming the limit).

use std::process::Command;
use std::time::Duration;

use tests::Proc;

#[test]
fn the_openapi_document_holds_and_schemathesis_finds_no_server_error() {
    let mut server = Proc::spawn_infer_server(&["--kv-cache-bytes", "2097152"]);
    let base = format!("http://{}", server.field("http"));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let doc: serde_json::Value = rt.block_on(async {
        let r = reqwest::get(format!("{base}/openapi.json"))
            .await
            .expect("GET /openapi.json");
        assert!(r.status().is_success(), "{}", r.status());
        r.json().await.expect("the document is JSON")
    });
    assert_eq!(doc["openapi"], "3.0.3");
    let paths = doc["paths"].as_object().expect("paths");
    for p in ["/v1/completions", "/v1/chat/completions", "/v1/models"] {
        assert!(paths.contains_key(p), "{p} missing from the document");
    }

    // Through the module, not the `st` script: pip may put scripts off PATH.
    let out = Command::new("python3")
        .args([
            "-c",
            "import sys; from schemathesis.cli import schemathesis; sys.argv[0] = 'st'; schemathesis()",
        ])
        .args(["run", &format!("{base}/openapi.json")])
        .args([
            "--checks",
            "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance",
        ])
        .args(["-n", "25", "--seed", "42", "--request-timeout", "60"])
        .env("NO_COLOR", "1")
        // schemathesis keeps a cache (`.schemathesis/`) in its working
        // directory: not in the repository.
        .current_dir(std::env::temp_dir())
        .output()
        .expect("running python3 (schemathesis; the test command pip-installs it)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    // The server must still answer after the run (no crash, no wedged engine).
    let alive = rt.block_on(async {
        reqwest::get(format!("{base}/v1/models"))
            .await
            .map(|r| r.status().is_success())
            .unwrap_or(false)
    });
    let status = server.terminate(Duration::from_secs(20));
    assert!(
        out.status.success(),
        "schemathesis found failures:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("passed"), "{stdout}");
    assert!(alive, "the server stopped answering after the run");
    assert!(status.success(), "server exited with {status}");
}
